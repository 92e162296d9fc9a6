"""Synthetic extractive QA for the demo: contexts of several facts, a question about one, the answer a span.

Deterministic (seeded). Training, preference and prompt files use one set of people and cities; the
held-out evaluation set uses names and cities that never appear in training, so a model can only score by
reading the context, not by remembering facts. Jobs, pets, colours, foods and years come from one pool.

Two demo-only files go beside the demo recipe (recipes/tiny/data), outside recipes/data, whose text the tiny
tokenizer is trained on: adding them there would retrain it and so change every tiny model. Every word in
them but "Their" is in sft.jsonl, and the tokenizer spells that one from pieces it has ("The" "ir").
- sft_sentences.jsonl: the colour questions of sft.jsonl twice more, answered with a sentence ("Their
  favorite color is red."). With both files, SFT answers colour questions 2 times in 3 with the sentence, the
  way chat data mixes styles; SQuAD EM scores that 0 and F1 about 0.33, which GRPO with the F1 reward can fix.
- prefs_sentences.jsonl: one pair per colour question of prefs.jsonl, the span chosen over the sentence: the
  preference data says which style is wanted, so the reward model (and with it PPO) and DPO learn it too.
- prompts_answers.jsonl: prompts.jsonl with each prompt's gold answer (for the F1 reward).

    python recipes/data/make_qa_data.py        # from the repository root
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path("recipes/data/qa")
EVAL_OUT = Path("eval/data/qa_heldout.jsonl")
# Demo-only files, outside recipes/data: the tiny tokenizer is trained on recipes/data, and these repeat its words.
DEMO_OUT = Path("recipes/tiny/data")

NAMES = ("Mara Tomas Ilse Bruno Anika Felix Greta Hugo Ida Jonas Karla Leon Mila Nora Oskar Paula Rosa Simon "
         "Tara Udo Vera Walter Yara Zeno Alma Basil Clara Dario Elsa Fabio Gina Henrik Iris Jasper Kira Lukas "
         "Marta Niko Olga Pavel Runa Sven Thea Ugo Vilma Wendel Xenia Yusuf Zora Anton Bea Cyril Dora Emil "
         "Frida Gustav Hedda Ivo Janne Kaspar Lotta Mats Nele Otto Pia Quinn Rolf Sina Tilde Ulla Viggo").split()
CITIES = ("Lindon Harwick Belmar Corvale Dunmore Eastbrook Fairhaven Glenrock Highmoor Ironvale Juniper "
          "Kestrel Larkspur Millbrook Northgate Oakridge Pinecrest Queensbury Riverton Stonefield Thornbury "
          "Umberly Valewood Westmere Yarrow Zephyr Ashford Brackley Coldwell Dovecote Elmstead Foxley Greyhaven "
          "Hollowell Ivybridge Kingsley Lowfield Marshgate Netherby Orwell").split()
JOBS = "baker teacher nurse farmer pilot painter doctor writer tailor sailor miner singer chef judge carpenter".split()
PETS = "cat dog parrot rabbit turtle hamster goat pony ferret lizard goldfish canary tortoise donkey owl".split()
COLORS = "red blue green yellow purple orange white black pink brown grey silver".split()
FOODS = "bread soup rice apples cheese pasta fish beans honey noodles plums carrots".split()

SENTENCE_ATTR, SENTENCE_COPIES = "color", 2
STYLE_SENTENCE = {"color": "Their favorite color is {v}."}
FACTS = {  # attribute -> (fact template, question templates)
    "city": ("{n} lives in {v}.", ["Where does {n} live?"]),
    "job": ("{n} works as a {v}.", ["What does {n} work as?"]),
    "pet": ("{n} has a pet {v}.", ["What pet does {n} have?"]),
    "color": ("{n}'s favorite color is {v}.", ["What is {n}'s favorite color?"]),
    "food": ("{n} likes to eat {v}.", ["What does {n} like to eat?"]),
    "year": ("{n} was born in {v}.", ["When was {n} born?"]),
}


def split_half(items, rng, share=0.75):
    items = list(items)
    rng.shuffle(items)
    cut = int(len(items) * share)
    return items[:cut], items[cut:]


def make_example(rng: random.Random, pools: dict) -> dict:
    """2-3 people, 2-4 facts, each attribute stated once; one fact is asked about.

    Returns context, question, answer and a wrong span (another value the context states).
    """
    people = rng.sample(pools["name"], rng.choice([2, 3]))
    facts = []
    for attr in rng.sample(list(FACTS), rng.randint(2, 4)):
        value = str(rng.randint(1950, 2010)) if attr == "year" else rng.choice(pools[attr])
        facts.append((rng.choice(people), attr, value))
    rng.shuffle(facts)
    person, attr, answer = rng.choice(facts)
    context = " ".join(FACTS[a][0].format(n=p, v=v) for p, a, v in facts)
    question = rng.choice(FACTS[attr][1]).format(n=person)
    # A wrong answer the context makes plausible: another value from it (preferably of the same attribute).
    same_kind = [v for p, a, v in facts if a == attr and v != answer]
    others = [v for p, a, v in facts if v != answer]
    wrong = rng.choice(same_kind or others)
    sentence = STYLE_SENTENCE.get(attr, "").format(v=answer)
    return {"context": context, "question": question, "answer": answer, "wrong": wrong, "attr": attr,
            "sentence": sentence}


def user_message(ex: dict) -> str:
    return f"Context: {ex['context']}\nQuestion: {ex['question']}"


def main() -> None:
    rng = random.Random(7)
    train_pools, eval_pools = {}, {}
    for key, values in (("name", NAMES), ("city", CITIES), ("pet", PETS)):
        train_pools[key], eval_pools[key] = split_half(values, rng)
    eval_pools["pet"] = list(PETS)  # pets are seen in training; people and towns are not
    for key, values in (("job", JOBS), ("color", COLORS), ("food", FOODS)):
        train_pools[key] = eval_pools[key] = list(values)
    for folder in (OUT, DEMO_OUT, EVAL_OUT.parent):
        folder.mkdir(parents=True, exist_ok=True)
    train = [make_example(rng, train_pools) for _ in range(3000)]
    prefs = [make_example(rng, train_pools) for _ in range(800)]
    prompts = [make_example(rng, train_pools) for _ in range(400)]
    heldout = [make_example(rng, eval_pools) for _ in range(120)]
    # 1600 more pairs from a stream of their own, so every other file stays as it was. With 800 pairs the
    # demo's reward model reached held-out accuracy 0.82-0.88 on some seeds and kernel paths; with 2400 it
    # reached 1.00 on each seed tried (make demo-spread has the whole spread).
    extra = random.Random(8)
    prefs += [make_example(extra, train_pools) for _ in range(1600)]

    def write(path: Path, rows) -> None:
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=True) + "\n")

    write(OUT / "sft.jsonl", ({"messages": [{"role": "user", "content": user_message(e)},
                                            {"role": "assistant", "content": e["answer"]}]} for e in train))
    write(OUT / "prefs.jsonl", ({"prompt": [{"role": "user", "content": user_message(e)}],
                                 "chosen": [{"role": "assistant", "content": e["answer"]}],
                                 "rejected": [{"role": "assistant", "content": e["wrong"]}]} for e in prefs))
    write(OUT / "prompts.jsonl", ({"prompt": [{"role": "user", "content": user_message(e)}]} for e in prompts))
    write(DEMO_OUT / "prompts_answers.jsonl", ({"prompt": [{"role": "user", "content": user_message(e)}],
                                           "answers": [e["answer"]]} for e in prompts))
    write(DEMO_OUT / "prefs_sentences.jsonl", ({"prompt": [{"role": "user", "content": user_message(e)}],
                                               "chosen": [{"role": "assistant", "content": e["answer"]}],
                                               "rejected": [{"role": "assistant", "content": e["sentence"]}]}
                                              for e in prefs if e["attr"] == SENTENCE_ATTR))
    sentences = [e for e in train if e["attr"] == SENTENCE_ATTR]
    write(DEMO_OUT / "sft_sentences.jsonl", ({"messages": [{"role": "user", "content": user_message(e)},
                                                      {"role": "assistant", "content": e["sentence"]}]}
                                        for e in sentences for _ in range(SENTENCE_COPIES)))
    write(EVAL_OUT, ({"id": f"qa-{i:04d}", "context": e["context"], "question": e["question"],
                      "answers": {"text": [e["answer"]], "answer_start": [e["context"].index(e["answer"])]}}
                     for i, e in enumerate(heldout)))
    seen = {w for e in train for w in e["context"].replace(".", " ").split()}
    novel = sum(e["answer"] not in seen for e in heldout)
    print(f"wrote {len(train)} sft, {len(prefs)} pairs, {len(prompts)} prompts, {len(heldout)} held-out questions "
          f"({novel} held-out answers never appear in training)")


if __name__ == "__main__":
    main()
