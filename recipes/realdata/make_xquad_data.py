"""Build the real-data splits from the shipped XQuAD-en and NQ-open files (deterministic; rerun to check).

XQuAD-en (eval/data/xquad_en/xquad.en.json, 48 articles of the SQuAD v1.1 dev set) is split **by article**
with random.Random(0): 32 articles train, 16 are held out, so no held-out question shares a paragraph with a
training question. Writes:

- eval/data/xquad_en/xquad.en.heldout.json   the held-out articles, official SQuAD JSON layout
- recipes/realdata/xquad/train_chat.jsonl        one chat row per train-article question: the eval prompt, gold answer
- recipes/realdata/xquad/train_paragraphs.jsonl  one conversation per train paragraph: its first question in the eval
                                             prompt, each further question of the paragraph as a later user turn
                                             ("Question: ..."), each answered by its gold span. Same questions and
                                             answers as train_chat.jsonl in 29% of its tokens (the context once)
- recipes/realdata/xquad/train_prefs.jsonl       preference pairs on the same prompts: chosen = the gold answer;
                                             rejected = the gold answer of another question on the same
                                             paragraph (a real span of the context that answers something else)
- recipes/realdata/xquad/train_prompts.jsonl     the prompts with their gold answers (for online RL and rewards)
- eval/data/nq_open/nq_open.shots.jsonl      100 NQ-open questions drawn with random.Random(0): few-shot examples
- eval/data/nq_open/nq_open.eval.jsonl       the other 3510, in their original order
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
XQUAD = ROOT / "eval" / "data" / "xquad_en" / "xquad.en.json"
NQ = ROOT / "eval" / "data" / "nq_open" / "nq_open.dev.jsonl"
PROMPT = "Answer the question with a short span copied from the context.\n\nContext: {context}\n\nQuestion: {question}"
FOLLOW_UP = "Question: {question}"
HELDOUT_ARTICLES = 16
NQ_SHOTS = 100


def split_articles(articles: list[dict]) -> tuple[list[dict], list[dict]]:
    """(train, held-out) articles: a seeded shuffle of the titles, the last HELDOUT_ARTICLES held out."""
    titles = sorted(a["title"] for a in articles)
    random.Random(0).shuffle(titles)
    held = set(titles[-HELDOUT_ARTICLES:])
    return [a for a in articles if a["title"] not in held], [a for a in articles if a["title"] in held]


def training_rows(articles: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    chat, prefs, prompts = [], [], []
    for article in articles:
        for paragraph in article["paragraphs"]:
            qas = paragraph["qas"]
            for i, qa in enumerate(qas):
                user = PROMPT.format(context=paragraph["context"], question=qa["question"])
                gold = qa["answers"][0]["text"]
                golds = sorted({a["text"] for a in qa["answers"]})
                chat.append({"id": qa["id"], "messages": [{"role": "user", "content": user},
                                                          {"role": "assistant", "content": gold}]})
                prompts.append({"id": qa["id"], "prompt": [{"role": "user", "content": user}], "answers": golds})
                others = [o["answers"][0]["text"] for j, o in enumerate(qas) if j != i]
                wrong = next((o for o in others if o.strip().lower() not in {g.strip().lower() for g in golds}
                              and not any(o in g or g in o for g in golds)), None)
                if wrong is not None:
                    prefs.append({"id": qa["id"], "prompt": [{"role": "user", "content": user}],
                                  "chosen": [{"role": "assistant", "content": gold}],
                                  "rejected": [{"role": "assistant", "content": wrong}]})
    return chat, prefs, prompts


def paragraph_conversations(articles: list[dict]) -> list[dict]:
    """One multi-turn chat row per paragraph: turn 1 is the eval prompt for its first question, later user turns
    ask its other questions (FOLLOW_UP); every assistant turn is that question's first gold answer.

    Args:
        articles: SQuAD-layout articles (``{"title", "paragraphs": [{"context", "qas"}]}``).
    Returns:
        ``{"id": first question's id, "messages": [...]}`` rows, one per paragraph, in file order.
    """
    rows = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            messages = []
            for i, qa in enumerate(paragraph["qas"]):
                user = (PROMPT.format(context=paragraph["context"], question=qa["question"]) if i == 0
                        else FOLLOW_UP.format(question=qa["question"]))
                messages += [{"role": "user", "content": user},
                             {"role": "assistant", "content": qa["answers"][0]["text"]}]
            rows.append({"id": paragraph["qas"][0]["id"], "messages": messages})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    data = json.loads(XQUAD.read_text(encoding="utf-8"))
    train, held = split_articles(data["data"])
    (XQUAD.parent / "xquad.en.heldout.json").write_text(
        json.dumps({"version": data["version"], "data": held}, ensure_ascii=False) + "\n", encoding="utf-8")
    chat, prefs, prompts = training_rows(train)
    out = ROOT / "recipes" / "realdata" / "xquad"
    write_jsonl(out / "train_chat.jsonl", chat)
    write_jsonl(out / "train_paragraphs.jsonl", paragraph_conversations(train))
    write_jsonl(out / "train_prefs.jsonl", prefs)
    write_jsonl(out / "train_prompts.jsonl", prompts)
    nq = [json.loads(line) for line in NQ.read_text(encoding="utf-8").splitlines() if line.strip()]
    shots = set(random.Random(0).sample(range(len(nq)), NQ_SHOTS))
    write_jsonl(NQ.parent / "nq_open.shots.jsonl", [r for i, r in enumerate(nq) if i in shots])
    write_jsonl(NQ.parent / "nq_open.eval.jsonl", [r for i, r in enumerate(nq) if i not in shots])
    n_held = sum(len(p["qas"]) for a in held for p in a["paragraphs"])
    print(f"XQuAD-en: {len(train)} train articles ({len(chat)} questions, {len(prefs)} pairs), "
          f"{len(held)} held out ({n_held} questions); NQ-open: {NQ_SHOTS} shots, {len(nq) - NQ_SHOTS} eval")


if __name__ == "__main__":
    main()
