"""The generative QA harness: task specs, input formats, batched generation, outputs, scoring parity."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, sft_recipe

from finetune import squad
from finetune.errors import UserError
from finetune.evaluation import _read_rows, evaluate_task, extract_answer, generate, load_task

TASKS = ["squad_v1_tiny", "squad_v2_tiny", "capitals_open_chat", "capitals_open_fewshot"]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(tiny_llama)


@pytest.mark.numerics
def test_batched_generation_equals_one_at_a_time(model_and_tokenizer, monkeypatch):
    """Left-padded batches give the greedy answers of one-at-a-time generation.

    Padding changes the matmul shapes, so the logits differ in the last bits: 8.3e-7 at most over these
    prompts, against a smallest top-1/top-2 logit gap of 0.81 along the greedy paths (both measured on the
    AVX-512 and AVX2 kernel paths, 2026-11-29). Equality of the texts therefore holds on any kernel path.
    """
    monkeypatch.chdir(REPO)
    model, tok = model_and_tokenizer
    from finetune.evaluation import build_prompts

    task = load_task("squad_v1_tiny")
    prompts = build_prompts(task, _read_rows(task["data"], task["format"]), tok)
    assert len({len(tok(p)["input_ids"]) for p in prompts}) > 3, "prompts of different lengths need padding"
    batched = generate(model, tok, prompts, 24, batch_size=16, chat=False, progress=False)
    single = [generate(model, tok, [p], 24, batch_size=1, chat=False, progress=False)[0] for p in prompts]
    assert tok.padding_side == "left"
    assert batched == single
    assert all(s.strip() for s in single), "a random model rambles: every generation is non-empty"


@pytest.mark.parametrize("name", TASKS)
def test_every_shipped_task_runs_and_matches_official_scoring(model_and_tokenizer, tmp_path, monkeypatch, name):
    monkeypatch.chdir(REPO)
    model, tok = model_and_tokenizer
    task = load_task(name)
    result = evaluate_task(model, tok, task, tmp_path, batch_size=8)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == result["total"] == len(_read_rows(task["data"], task["format"]))
    assert set(rows[0]) == {"id", "prompt", "generation", "answer", "golds", "em", "f1"}
    assert json.loads((tmp_path / "results.json").read_text())["exact"] == result["exact"]
    if task["format"] == "squad_json":  # the harness's numbers are the official script's on the same answers
        dataset = squad.load_squad_dataset(task["data"])
        predictions = {r["id"]: r["answer"] for r in rows}
        official = (squad.evaluate_v1(dataset, predictions) if task["metric"] == "squad_v1"
                    else squad.evaluate_v2(dataset, predictions))
        assert result["exact"] == official.get("exact_match", official.get("exact"))
        assert result["f1"] == official["f1"]
    if task["few_shot"]:
        assert rows[0]["prompt"].count("Question:") == task["few_shot"] + 1
    if task["chat_template"]:
        assert rows[0]["prompt"].endswith("<|im_start|>assistant\n")


def test_extract_answer_stops_and_abstains():
    v1 = {"stop": ["\n", "###"], "metric": "squad_v1", "abstain": ["unanswerable"]}
    v2 = {**v1, "metric": "squad_v2"}
    assert extract_answer(" Paris\nQuestion: next", v1) == "Paris"
    assert extract_answer(" Paris ### more", v1) == "Paris"
    assert extract_answer(" Unanswerable.", v2) == ""
    assert extract_answer(" Unanswerable.", v1) == "Unanswerable."  # v1 has no abstention


def test_input_formats(tmp_path):
    hf = tmp_path / "hf.jsonl"
    hf.write_text(json.dumps({"id": "a", "context": "Ann lives in Oslo.", "question": "Where?",
                              "answers": {"text": ["Oslo"], "answer_start": [13]}}) + "\n"
                  + json.dumps({"id": "b", "context": "x", "question": "y", "answers": {"text": [],
                                                                                       "answer_start": []}}) + "\n")
    rows = _read_rows(str(hf), "hf_rows")
    assert rows[0]["golds"] == ["Oslo"] and rows[1]["impossible"]
    nq = tmp_path / "nq.jsonl"
    nq.write_text(json.dumps({"question": "capital of Peru", "answer": ["Lima"]}) + "\n")
    assert _read_rows(str(nq), "open_qa")[0] == {"id": "0", "context": "", "question": "capital of Peru",
                                                 "golds": ["Lima"], "impossible": False}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(UserError, match="row 0: missing or malformed field 'answer'"):
        _read_rows(str(bad), "open_qa")


def test_task_spec_errors(tmp_path):
    with pytest.raises(UserError, match="eval task 'nosuch' not found"):
        load_task("nosuch")
    spec = tmp_path / "t.yaml"
    spec.write_text("data: x.json\nprompt: '{question}'\npromt: typo\n")
    with pytest.raises(UserError, match="unknown task key"):
        load_task(str(spec))
    spec.write_text("data: x.json\nprompt: '{question}'\nfew_shot: 2\n")
    with pytest.raises(UserError, match="few_shot_data"):
        load_task(str(spec))


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "finetune", *args], capture_output=True, text=True, cwd=cwd,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"}, timeout=600)


def test_finetune_eval_on_model_and_on_run(tiny_llama, write_recipe, tmp_path):
    out = run_cli("eval", str(tiny_llama), "--task", "squad_v1_tiny", "--output-dir", str(tmp_path / "e"))
    assert out.returncode == 0, out.stderr
    for name in ("predictions.jsonl", "results.json"):
        assert (tmp_path / "e" / tiny_llama.name / "squad_v1_tiny" / name).exists()
    assert "| stage |" in out.stdout and (tmp_path / "e" / "results.md").exists()

    recipe = sft_recipe(tiny_llama, train={"max_steps": 2})
    recipe["eval"] = {"tasks": ["squad_v2_tiny"], "limit": 4}
    path = write_recipe(recipe)
    out = run_cli("run", str(path), "--output-dir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    table = (tmp_path / "run" / "eval" / "results.md").read_text()
    assert "| base |" in table and "| sft |" in table
    again = run_cli("run", str(path), "--output-dir", str(tmp_path / "run"))
    assert "results up to date, skipped" in again.stderr
    out = run_cli("eval", str(tmp_path / "run" / "sft"), "--task", "squad_v1_tiny", "--limit", "3",
                  "--output-dir", str(tmp_path / "e2"))
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "e2" / "sft" / "squad_v1_tiny" / "results.json").read_text())["total"] == 3


def test_finetune_eval_bad_input_is_one_line(tmp_path):
    out = run_cli("eval", str(tmp_path / "nothing"), "--task", "squad_v1_tiny")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
