"""The data audit on planted problems: eval contamination, PII (masked, redacted), length-biased pairs,
duplicates, and the shipped clean data; `finetune audit` through its own argparse parser.

Data files are written per test from hand-made rows (the planted eval question is copied from the eval file
itself), so the tests say exactly what they plant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from conftest import DATA, REPO, sft_recipe

from finetune import pii
from finetune.data_audit import EvalIndex, add_audit_parser, audit_recipe, summary
from finetune.errors import UserError
from finetune.recipe import load_recipe

SQUAD_V1_TINY = REPO / "eval" / "data" / "squad_v1_dev_tiny.json"
EMAIL = "jane.doe@example.org"
KEY = "sk-" + "Zx81kQp0aLm3Nf7Rt2Yv9Bc4"
CARD = "4111 1111 1111 1111"  # Luhn-valid (the classic test Visa number)
NOT_A_CARD = "4111 1111 1111 1112"  # 16 digits, Luhn-invalid: must not be reported


def chat(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def shipped_rows(n: int) -> list[dict]:
    return [json.loads(line) for line in (DATA / "tiny_chat.jsonl").read_text().splitlines()[:n]]


def recipe_file(write_recipe, model, tmp_path, data: dict, stages: list[dict] | None = None,
                tasks=("squad_v1_tiny",), **audit) -> Path:
    recipe = sft_recipe(model, data={k: {"path": str(v)} for k, v in data.items()})
    if stages:
        recipe["stages"] = stages
    recipe.update(eval={"tasks": list(tasks)}, output_dir=str(tmp_path / "run"), data_audit=audit)
    return write_recipe(recipe)


def audit(path: Path, tmp_path: Path, overrides=(), **kw) -> dict:
    return audit_recipe(load_recipe(path, list(overrides)), tmp_path / "audit", log=lambda *_: None, **kw)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="finetune")
    add_audit_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


# --- detectors without a model ----------------------------------------------------------------------------


def test_pii_detectors_mask_and_redact():
    text = (f"mail {EMAIL}, key {KEY}, aws AKIAIOSFODNN7EXAMPLE, call +44 20 7946 0958 or (555) 123-4567, "
            f"card {CARD}, order {NOT_A_CARD}, born 1975 2004 1961, slug how-to-tune-a-model-in-ten-steps")
    kinds = [(f.kind, f.text) for f in pii.find_pii(text)]
    assert kinds == [("email", EMAIL), ("key", KEY), ("key", "AKIAIOSFODNN7EXAMPLE"),
                     ("phone", "+44 20 7946 0958"), ("phone", "(555) 123-4567"), ("card", CARD)]
    assert pii.luhn_ok(CARD.replace(" ", "")) and not pii.luhn_ok(NOT_A_CARD.replace(" ", ""))
    assert pii.mask(KEY) == "sk" + "*" * (len(KEY) - 4) + "c4"
    redacted, n = pii.redact(text)
    assert n == 6 and EMAIL not in redacted and KEY not in redacted and CARD not in redacted
    assert "[EMAIL]" in redacted and "[KEY]" in redacted and "[CARD]" in redacted and "[PHONE]" in redacted
    assert NOT_A_CARD in redacted and "1975 2004 1961" in redacted


def test_eval_index_short_fields_and_unloadable_tasks():
    index = EvalIndex(["capitals_open_chat", "squad_v1"], 8)  # squad_v1 reads the hub: offline in tests
    assert index.tasks["capitals_open_chat"]["status"] == "ok"
    assert index.tasks["squad_v1"]["status"].startswith("skipped: ")
    # capitals' questions are one word ("Kenya"): the whole field is the gram; the answer makes it strong.
    rows = ["What is the capital of Kenya? Nairobi.", "Kenya has lions.", "Two plus two is four."]
    found = index.scan(rows, "x")
    assert found["rows"] == 2 and found["rows_with_answer"] == 1
    assert found["examples"][0] == {"source": "x", "row": 0, "task": "capitals_open_chat",
                                    "eval_id": "cap-001", "field": "question+answer", "ngram": "kenya"}


# --- planted problems through audit_recipe ------------------------------------------------------------------


def test_planted_eval_question_is_contamination(tiny_llama, write_recipe, tmp_path):
    para = json.loads(SQUAD_V1_TINY.read_text())["data"][1]["paragraphs"][0]
    qa = para["qas"][0]
    planted = chat(f"Context: {para['context']}\nQuestion: {qa['question']}", qa["answers"][0]["text"])
    data = write_jsonl(tmp_path / "planted.jsonl", [*shipped_rows(12), planted])
    path = recipe_file(write_recipe, tiny_llama, tmp_path, {"planted": data})
    found = audit(path, tmp_path)["sources"]["planted"]["contamination"]
    assert found["rows"] == 1 and found["rows_with_answer"] == 1
    assert found["per_task"]["squad_v1_tiny"] == {"rows": 1, "rows_with_answer": 1}
    example = found["examples"][0]
    assert (example["row"], example["task"], example["eval_id"], example["field"]) == (
        12, "squad_v1_tiny", qa["id"], "question+answer")
    assert example["ngram"] == "what is the chemical formula of water"  # 7 words < n: the whole question
    limit = "data_audit.max_contaminated_rows=0"
    message = r"data\.planted .*1 rows share 8-grams with eval task\(s\) squad_v1_tiny"
    with pytest.raises(UserError, match=message):
        run_cli(["audit", str(path), limit, "--output-dir", str(tmp_path / "a")])
    assert json.loads((tmp_path / "a" / "audit.json").read_text())["errors"]  # the report is still written


def test_planted_pii_is_masked_and_redacted(tiny_llama, write_recipe, tmp_path):
    rows = [*shipped_rows(6), chat(f"Write to {EMAIL} please.", f"My key is {KEY} and card {CARD}."),
            chat(f"Order number {NOT_A_CARD}?", "Shipped.")]
    data = write_jsonl(tmp_path / "private.jsonl", rows)
    original = data.read_bytes()
    path = recipe_file(write_recipe, tiny_llama, tmp_path, {"private": data})
    lines: list[str] = []
    report = audit_recipe(load_recipe(path), tmp_path / "audit", log=lines.append,
                          redact_dir=tmp_path / "clean")
    found = report["sources"]["private"]["pii"]
    assert found["by_kind"] == {"email": 1, "key": 1, "card": 1} and found["rows"] == 1
    assert {e["masked"] for e in found["examples"]} == {pii.mask(EMAIL), pii.mask(KEY), pii.mask(CARD)}
    assert all(e["row"] == 6 for e in found["examples"])
    assert any("PII found (1 email, 1 key, 1 card)" in line for line in lines)
    written = (tmp_path / "audit" / "audit.json").read_text() + "\n".join(lines)
    for secret in (EMAIL, KEY, CARD):
        assert secret not in written
    copy = tmp_path / "clean" / "private.jsonl"
    assert data.read_bytes() == original and report["redacted"] == {"private": str(copy)}
    redacted = copy.read_text()
    assert "[EMAIL]" in redacted and "[KEY]" in redacted and "[CARD]" in redacted and NOT_A_CARD in redacted
    assert EMAIL not in redacted and KEY not in redacted and len(redacted.splitlines()) == len(rows)
    with pytest.raises(UserError, match="already exists"):
        audit(path, tmp_path, redact_dir=tmp_path / "clean")
    assert copy.read_text() == redacted and data.read_bytes() == original
    with pytest.raises(UserError, match=r"data\.private .*PII found \(1 email, 1 key, 1 card\)"):
        audit(path, tmp_path, ["data_audit.pii=error"])
    off = audit(path, tmp_path, ["data_audit.pii='off'"])  # quoted: YAML reads a bare `off` as false
    assert off["sources"]["private"]["pii"] == {"status": "off"}


def test_length_biased_pairs_are_flagged(tiny_llama, write_recipe, tmp_path):
    def pair(i, chosen, rejected):
        return {"prompt": [{"role": "user", "content": f"Question {i}: why is the sky blue?"}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}

    long = "Because sunlight is scattered by the air, and blue light is scattered far more than red light."
    rows = [pair(i, f"{long} (reason {i})", "Rayleigh.") for i in range(20)] + [pair(99, "Same.", "Same.")]
    data = write_jsonl(tmp_path / "biased.jsonl", rows)
    stages = [{"name": "dpo", "kind": "dpo", "data": ["biased"], "train": {"max_length": 16}}]
    path = recipe_file(write_recipe, tiny_llama, tmp_path, {"biased": data}, stages)
    entry = audit(path, tmp_path)["sources"]["biased"]
    pref = entry["preference"]
    assert pref["length_bias"] == 1.0 and pref["chosen_equals_rejected"] == 1 and pref["pairs"] == 20
    assert "reward models learn length" in pref["flag"]
    assert entry["truncation"][0]["max_length"] == 16 and entry["truncation"][0]["share"] == 1.0
    with pytest.raises(UserError, match=r"data\.biased .*longer in 100\.0% of pairs .*max_length_bias 0\.6"):
        audit(path, tmp_path, ["data_audit.max_length_bias=0.6"])


def test_exact_and_near_duplicates(tiny_llama, write_recipe, tmp_path):
    story = ("The old lighthouse keeper climbed the spiral stairs every evening to light the great lamp, "
             "and sailors far out at sea trusted its beam to guide them safely past the rocks")
    rows = [chat("What is two plus two?", "Four."), chat("what is  TWO plus two?", "four."),
            chat("Tell me a story.", story), chat("Tell me a story.", story + " tonight"),
            chat("Name a colour.", "Blue.")]
    data = write_jsonl(tmp_path / "dups.jsonl", rows)
    path = recipe_file(write_recipe, tiny_llama, tmp_path, {"dups": data})
    dups = audit(path, tmp_path)["sources"]["dups"]["duplicates"]
    assert (dups["exact"], dups["near"], dups["share"]) == (1, 1, 0.4)
    assert dups["exact_examples"] == [[0, 1]] and [p[:2] for p in dups["near_examples"]] == [[2, 3]]
    with pytest.raises(UserError, match=r"data\.dups .*40\.0% of rows are duplicates"):
        audit(path, tmp_path, ["data_audit.max_duplicate_share=0.1"])


# --- the shipped data, through `finetune audit` -------------------------------------------------------------


def test_shipped_data_is_clean_through_cmd_audit(tiny_llama, write_recipe, tmp_path, capsys):
    import matplotlib.image

    stages = [{"name": "sft", "kind": "sft", "data": ["chat"], "train": {"max_length": 64}},
              {"name": "reward", "kind": "reward", "data": ["prefs"]},
              {"name": "ppo", "kind": "ppo", "data": ["prefs"]}]
    path = recipe_file(write_recipe, tiny_llama, tmp_path,
                       {"chat": DATA / "tiny_chat.jsonl", "prefs": DATA / "tiny_prefs.jsonl"}, stages,
                       tasks=("squad_v1_tiny", "squad_v2_tiny"))
    assert run_cli(["audit", str(path)]) == 0
    out_dir = tmp_path / "run" / "audit"  # default: the recipe's run folder + /audit
    report = json.loads((out_dir / "audit.json").read_text())
    assert list(report["sources"]) == ["chat", "prefs:pairs", "prefs:prompts"]  # prefs: once per purpose
    assert report["errors"] == []
    assert report["eval_tasks"]["squad_v2_tiny"] == {"status": "ok", "questions": 12}
    for key, e in report["sources"].items():
        assert e["contamination"]["rows"] == 0, (key, e["contamination"]["examples"])
        assert e["pii"]["total"] == 0, (key, e["pii"]["examples"])
        assert e["empty_rows"] == 0 and e["tokens"]["count"] == e["kept"] > 0
        png = matplotlib.image.imread(out_dir / e["histogram"])
        assert png[..., :3].std() > 0.05  # bars and axes, not a blank canvas
    chat_entry, pairs = report["sources"]["chat"], report["sources"]["prefs:pairs"]
    assert chat_entry["rows"] == 300 and chat_entry["format"] == "messages" and chat_entry["kind"] == "chat"
    tokens = chat_entry["tokens"]
    assert tokens["p50"] <= tokens["p90"] <= tokens["p99"] <= tokens["max"]
    cut = chat_entry["truncation"][0]
    assert cut["max_length"] == 64 and cut["rows_longer"] > 0
    assert cut["share"] == round(cut["rows_longer"] / 300, 4)
    assert pairs["truncation"][0] == {"stage": "reward", "max_length": 1024, "rows_longer": 0, "share": 0.0,
                                      "note": "train.max_length unset: compared with TRL's default 1024"}
    assert 0.3 <= pairs["preference"]["length_bias"] <= 0.7 and pairs["preference"]["flag"] is None
    assert summary(report) == {"sources": {
        k: {"rows": e["rows"], "duplicates": e["duplicates"]["exact"] + e["duplicates"]["near"],
            "contaminated_rows": 0, "pii": 0, "length_bias": (e.get("preference") or {}).get("length_bias")}
        for k, e in report["sources"].items()}, "errors": []}
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["source", "rows", "kind"]
    assert "prefs:pairs" in table and "audit report:" in table


# --- the audit inside a run -------------------------------------------------------------------------------


def test_run_audits_in_a_child_process_and_stops_before_training(tiny_llama, write_recipe, tmp_path):
    """The pipeline runs the audit in its own process: its verdict still stops the run with one line, before
    any stage starts, and a clean audit leaves nothing of itself (matplotlib included) in the training process."""
    import subprocess
    import sys

    para = json.loads(SQUAD_V1_TINY.read_text())["data"][1]["paragraphs"][0]
    qa = para["qas"][0]
    planted = chat(f"Context: {para['context']}\nQuestion: {qa['question']}", qa["answers"][0]["text"])
    data = write_jsonl(tmp_path / "planted.jsonl", [*shipped_rows(12), planted])
    path = recipe_file(write_recipe, tiny_llama, tmp_path, {"planted": data}, max_contaminated_rows=0)
    res = subprocess.run([sys.executable, "-m", "finetune.cli", "run", str(path)], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data audit: data.planted") and "max_contaminated_rows 0" in last, res.stderr
    assert json.loads((tmp_path / "run" / "audit" / "audit.json").read_text())["errors"]
    assert not (tmp_path / "run" / "sft").exists() and not (tmp_path / "run" / "audit" / "recipe.json").exists()

    clean = recipe_file(write_recipe, tiny_llama, tmp_path, {"chat": DATA / "tiny_chat.jsonl"})
    probe = ("import sys; from pathlib import Path; from finetune.recipe import load_recipe; "
             "from finetune.pipeline import run_data_audit; "
             f"s = run_data_audit(load_recipe({str(clean)!r}), Path({str(tmp_path / 'run2')!r})); "
             "print(sorted(s['sources']), 'matplotlib' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[-2] == "['chat'] False"
    assert "source" in res.stderr and (tmp_path / "run2" / "audit" / "lengths-chat.png").exists()


def test_rows_sharing_a_context_are_judged_on_question_and_answer():
    """Real reading-comprehension rows (XQuAD-en, recipes/realdata): several questions share one context.
    Before, 241 of 829 such rows were flagged as near-duplicates of each other; they are different questions."""
    from finetune.data_audit import row_text
    from finetune.overlap import duplicates

    rows = [json.loads(x) for x in (REPO / "recipes/realdata/xquad/train_chat.jsonl").read_text().splitlines()]
    texts = [row_text(r) for r in rows]
    found = duplicates(texts)
    assert found["near"] == 0 and found["exact"] == 3  # SQuAD repeats 3 question+answer pairs verbatim
    for i, j in found["exact_examples"]:  # the same words (answers differ only in spaces around them)
        assert " ".join(texts[i].lower().split()) == " ".join(texts[j].lower().split())
    # the same question and answer on the same context, differing only in punctuation, is still a near duplicate
    user, answer = rows[0]["messages"][0]["content"], rows[0]["messages"][1]["content"]
    again = {"messages": [{"role": "user", "content": user.rstrip("?") + " ?"},
                          {"role": "assistant", "content": answer + "."}]}
    other = next(r for r in rows[1:] if r["messages"][0]["content"].split("Question:")[0]
                 == user.split("Question:")[0])  # another question on the same context
    pair = duplicates([texts[0], row_text(again), row_text(other)])
    assert (pair["exact"], pair["near"]) == (0, 1) and pair["near_examples"][0][:2] == [0, 1]
