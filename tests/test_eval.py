"""The generative QA harness: task specs, input formats, batched generation, outputs, scoring parity."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import REPO, sft_recipe

from finetune import squad
from finetune.errors import UserError
from finetune.evaluation import evaluate_task, extract_answer, generate, load_task, read_rows

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
    prompts = build_prompts(task, read_rows(task["data"], task["format"]), tok)
    assert len({len(tok(p)["input_ids"]) for p in prompts}) > 3, "prompts of different lengths need padding"
    batched = generate(model, tok, prompts, 24, batch_size=16, chat=False, progress=False)
    single = [generate(model, tok, [p], 24, batch_size=1, chat=False, progress=False)[0] for p in prompts]
    assert tok.padding_side == "left"
    assert batched == single
    assert all(s.strip() for s in single), "a random model rambles: every generation is non-empty"


@pytest.mark.numerics
def test_batches_grouped_by_length_answer_in_prompt_order_and_count_the_wasted_work(model_and_tokenizer,
                                                                                      monkeypatch):
    """Batches of similar-length prompts (longest first) still return answers in the prompts' order, the ones
    generation one at a time gives; the stats count every generated position and the useful share of them."""
    monkeypatch.chdir(REPO)
    model, tok = model_and_tokenizer
    from finetune.evaluation import build_prompts

    task = load_task("squad_v1_tiny")
    prompts = build_prompts(task, read_rows(task["data"], task["format"]), tok)
    stats: dict = {}
    grouped = generate(model, tok, prompts, 24, batch_size=3, chat=False, progress=False, stats=stats)
    single = [generate(model, tok, [p], 24, batch_size=1, chat=False, progress=False)[0] for p in prompts]
    assert grouped == single
    assert 0 < stats["useful_tokens"] <= stats["generated_positions"] <= 24 * len(prompts)
    assert stats["wasted_share"] == round(1 - stats["useful_tokens"] / stats["generated_positions"], 4)
    one: dict = {}
    generate(model, tok, prompts[:1], 24, batch_size=1, chat=False, progress=False, stats=one)
    assert one["wasted_share"] == 0.0, "a batch of one row wastes nothing"


def test_prompts_group_by_the_start_they_share():
    """`prefix_groups`: prompts sharing >= min_shared leading tokens form one group whatever their order; each
    member keeps at least one token of its own (a prompt that is the whole shared start included); prompts
    sharing less, and lone prompts, are in no group."""
    from finetune.evaluation import prefix_groups

    start = list(range(100, 200))
    prompts = [[7, *start], [*start, 8, 9], [*start[:50], 1], [*start, 8], start, [*start[:40], 3, 4]]
    assert prefix_groups(prompts, min_shared=64) == [(99, [4, 3, 1])]
    assert prefix_groups(prompts, min_shared=40) == [(40, [5, 2, 4, 3, 1])]
    assert prefix_groups([[*start, 1], [*start, 2]], min_shared=101) == []
    assert prefix_groups([], min_shared=1) == []


@pytest.mark.numerics
def test_questions_on_one_context_read_it_once_and_answer_as_if_read_whole(model_and_tokenizer, monkeypatch):
    """The tiny dev set's 12 questions ask about 4 contexts (4, 3, 3, 2 questions): generation reads each
    context once, in batches of 5 that mix contexts and split one, and gives the answers of reading each prompt
    whole, one at a time; the stats count the prompt positions actually run through the model.

    Reading the shared start once changes the matmul shapes: along these greedy paths the logits differ by
    6.0e-7 at most from reading each prompt whole, against a smallest top-1/top-2 gap of 0.71 (measured on the
    AVX2 and plain kernel paths, 2026-12-01), so the texts are equal on any kernel path."""
    monkeypatch.chdir(REPO)
    model, tok = model_and_tokenizer
    from finetune.evaluation import build_prompts, prefix_groups

    task = load_task("squad_v1_tiny")
    prompts = build_prompts(task, read_rows(task["data"], task["format"]), tok)
    groups = prefix_groups(tok(prompts)["input_ids"])
    assert sorted(len(members) for _, members in groups) == [2, 3, 3, 4]
    stats: dict = {}
    shared = generate(model, tok, prompts, 24, batch_size=5, chat=False, progress=False, stats=stats)
    whole = [generate(model, tok, [p], 24, batch_size=1, chat=False, progress=False, share_prefixes=False)[0]
             for p in prompts]
    assert shared == whole
    assert stats["prompt_tokens"] == sum(len(ids) for ids in tok(prompts)["input_ids"])
    assert stats["prefilled_tokens"] < 0.5 * stats["prompt_tokens"]
    read_whole: dict = {}
    generate(model, tok, prompts, 24, batch_size=5, chat=False, progress=False, stats=read_whole,
             share_prefixes=False)
    assert read_whole["prefilled_tokens"] >= read_whole["prompt_tokens"]


@pytest.mark.parametrize("name", TASKS)
def test_every_shipped_task_runs_and_matches_official_scoring(model_and_tokenizer, tmp_path, monkeypatch, name):
    monkeypatch.chdir(REPO)
    model, tok = model_and_tokenizer
    task = load_task(name)
    result = evaluate_task(model, tok, task, tmp_path, batch_size=8)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == result["total"] == len(read_rows(task["data"], task["format"]))
    assert set(rows[0]) == {"id", "prompt", "generation", "answer", "extracted", "golds", "em", "f1"}
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
    rows = read_rows(str(hf), "hf_rows")
    assert rows[0]["golds"] == ["Oslo"] and rows[1]["impossible"]
    nq = tmp_path / "nq.jsonl"
    nq.write_text(json.dumps({"question": "capital of Peru", "answer": ["Lima"]}) + "\n")
    assert read_rows(str(nq), "open_qa")[0] == {"id": "0", "context": "", "question": "capital of Peru",
                                                 "golds": ["Lima"], "impossible": False}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(UserError, match="row 0: missing or malformed field 'answer'"):
        read_rows(str(bad), "open_qa")


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


def rule_task(**answer):
    from finetune.evaluation import _check_answer_rule

    return {"stop": ["\n"], "metric": "squad_v1", "abstain": [],
            "answer": _check_answer_rule(REPO / "t.yaml", answer or None)}


def test_answer_rules_extract_from_chat_style_generations():
    assert extract_answer("The answer is Paris.", rule_task()) == "The answer is Paris."  # default: none
    assert extract_answer("The answer is Paris.", rule_task(strip_prefixes=True)) == "Paris."
    assert extract_answer("answer: 1897", rule_task(strip_prefixes=True)) == "1897"
    task = rule_task(regex=r"is (?P<answer>[A-Z][a-z]+)")
    assert extract_answer("I think it is Lima, the capital.", task) == "Lima"
    assert extract_answer("no idea", task) is None  # unextractable, scored as wrong and counted
    both = {**rule_task(first_line=True, strip_prefixes=["Final:"]), "stop": []}
    assert extract_answer("Final: 42\nbecause ...", both) == "42"


@pytest.mark.parametrize("answer, message", [
    ({"regex": "("}, "answer.regex: missing ), unterminated subpattern"),
    ({"regex": "Paris"}, "answer.regex: needs a group"),
    ({"first_line": "yes"}, "answer.first_line: must be true or false"),
    ({"strip_prefixes": "Answer:"}, "answer.strip_prefixes: true or a list"),
    ({"extract": True}, "answer: unknown key(s) ['extract']"),
    ([1], "answer: must be a mapping"),
])
def test_bad_answer_rules_are_one_line(answer, message, tmp_path):
    import yaml

    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"data": "x.jsonl", "prompt": "{question}", "answer": answer}))
    with pytest.raises(UserError, match=re.escape(message)):
        load_task(str(path))


def test_generation_stops_on_every_eos_id_of_the_generation_config(model_and_tokenizer):
    """Llama 3.1 and Qwen2.5 list several end-of-sequence ids; each one ends an answer."""
    model, tok = model_and_tokenizer
    prompt = ["Context: Ana has 3 cats.\nQuestion: How many cats?"]
    free = tok(generate(model, tok, prompt, 12, 1, chat=False, progress=False)[0], add_special_tokens=False)
    raw = model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=12, do_sample=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[0].tolist()
    new = raw[len(tok(prompt[0])["input_ids"]):]
    third = new[2]
    assert third != tok.eos_token_id and free["input_ids"]
    saved = model.generation_config.eos_token_id
    try:
        model.generation_config.eos_token_id = [tok.eos_token_id, third]
        cut = generate(model, tok, prompt, 12, 1, chat=False, progress=False)[0]
    finally:
        model.generation_config.eos_token_id = saved
    assert cut == tok.decode(new[:new.index(third)], skip_special_tokens=True)


def test_stop_strings_end_generation_early_with_the_same_answer(model_and_tokenizer):
    model, tok = model_and_tokenizer
    candidates = ["Question: What is the capital of Peru?",
                  "Context: Bram likes pears.\nQuestion: What does Bram like?",
                  "Give the plural form of day.", "How many legs does a frog have?", "Opposite of hot?"]
    free = generate(model, tok, candidates, 24, 8, chat=False, progress=False)

    def piece(f: str, prompt: str) -> str | None:  # two characters of the generation, past its start, new to it
        return next((f[i:i + 2] for i in range(2, len(f) - 2) if f[i].strip() and f[i] != prompt[-1]
                     and f[i:i + 2] not in f[:i + 1]), None)

    kept = [(p, f, piece(f, p)) for p, f in zip(candidates, free, strict=True) if piece(f, p)]
    assert kept, free
    prompts, free, stops = (list(x) for x in zip(*kept, strict=True))
    from finetune.evaluation import safe_stops

    assert safe_stops(prompts, stops) == stops
    stopped = generate(model, tok, prompts, 24, 8, chat=False, progress=False, stop=stops)
    for f, s in zip(free, stopped, strict=True):
        assert f.startswith(s) and len(s) < len(f), "generation ended at a stop string, not at max_new_tokens"
        task = {"stop": stops, "metric": "squad_v1", "abstain": [], "answer": None}
        assert extract_answer(s, task) == extract_answer(f, task)


def test_a_stop_string_that_could_straddle_the_prompt_is_only_cut_after_generation():
    from finetune.evaluation import safe_stops

    assert safe_stops(["Question: x\nAnswer:\n"], ["\n\n", "\n", "###"]) == ["\n", "###"]
    assert safe_stops(["ends with #"], ["###"]) == []


def test_batched_generation_reads_the_head_weight_once_not_once_per_row(tiny_llama, monkeypatch):
    """generate()'s first step computes the head on `hidden[:, -1:, :]`, a non-contiguous view; with a frozen
    head weight (a base under an adapter, a model under evaluation) torch's matmul then copies the (hidden,
    vocab) weight once per row for a batched product (pytorch#151934, 137x slower on SmolLM2 in bf16). Models
    loaded by `modeling.load_base_model` give the head a contiguous input: no batched product over the
    vocabulary, and the same greedy answers as the model loaded plainly."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune import modeling
    from finetune.evaluation import build_prompts

    monkeypatch.chdir(REPO)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    task = load_task("squad_v1_tiny")
    prompts = build_prompts(task, read_rows(task["data"], task["format"]), tok)[:4]
    vocab = AutoModelForCausalLM.from_pretrained(tiny_llama).config.vocab_size

    def head_copies(model) -> tuple[int, list[str]]:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            texts = generate(model, tok, prompts, 4, batch_size=4, chat=False, progress=False, share_prefixes=False)
        return sum(e.name == "aten::bmm" and any(vocab in shape for shape in e.input_shapes)
                   for e in prof.events()), texts

    plain = AutoModelForCausalLM.from_pretrained(tiny_llama).eval().requires_grad_(False)
    ours = modeling.load_base_model({**modeling.BASE_MODEL_DEFAULTS, "path": str(tiny_llama)}).eval()
    ours.requires_grad_(False)
    plain_copies, plain_texts = head_copies(plain)
    ours_copies, ours_texts = head_copies(ours)
    assert plain_copies >= 1, "the plainly loaded model runs the batched product (the torch behaviour fixed here)"
    assert ours_copies == 0
    assert ours_texts == plain_texts
