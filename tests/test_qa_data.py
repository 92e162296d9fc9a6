"""The demo's synthetic QA files are exactly what recipes/data/make_qa_data.py writes, and they have the
properties the demo's targets rest on (held-out people and towns unseen, the colour questions' 2:1 style mix)."""

from __future__ import annotations

import importlib.util
import json

from conftest import REPO

FILES = ("recipes/data/qa/sft.jsonl", "recipes/data/qa/prefs.jsonl", "recipes/data/qa/prompts.jsonl",
         "recipes/tiny/data/sft_sentences.jsonl", "recipes/tiny/data/prefs_sentences.jsonl",
         "recipes/tiny/data/prompts_answers.jsonl",
         "eval/data/qa_heldout.jsonl")


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_committed_files_are_what_the_generator_writes(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("make_qa_data", REPO / "recipes" / "data" / "make_qa_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(tmp_path)  # the generator writes relative to the repository root
    module.main()
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (REPO / name).read_bytes(), name


def test_colour_questions_are_answered_two_times_in_three_with_a_sentence():
    sft = rows(REPO / "recipes/data/qa/sft.jsonl")
    extra = rows(REPO / "recipes/tiny/data/sft_sentences.jsonl")
    colour = [r for r in sft if r["messages"][0]["content"].endswith("favorite color?")]
    assert len(extra) == 2 * len(colour) > 0
    spans = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in colour}
    for r in extra:  # the same question, its span inside the sentence
        question, sentence = r["messages"][0]["content"], r["messages"][1]["content"]
        assert sentence == f"Their favorite color is {spans[question]}."
    assert all(not r["messages"][0]["content"].endswith("favorite color?")
               or r["messages"][1]["content"] in spans.values() for r in sft)


def test_style_pairs_prefer_the_span_on_every_colour_question_of_the_pairs():
    prefs = rows(REPO / "recipes/data/qa/prefs.jsonl")
    style = rows(REPO / "recipes/tiny/data/prefs_sentences.jsonl")
    colour = [r for r in prefs if r["prompt"][0]["content"].endswith("favorite color?")]
    assert [r["prompt"] for r in style] == [r["prompt"] for r in colour] and style
    for pair, original in zip(style, colour, strict=True):
        span = original["chosen"][0]["content"]
        assert pair["chosen"][0]["content"] == span
        assert pair["rejected"][0]["content"] == f"Their favorite color is {span}."


def test_held_out_people_and_towns_never_appear_in_training():
    train_text = " ".join(r["messages"][0]["content"] for r in rows(REPO / "recipes/data/qa/sft.jsonl"))
    held = rows(REPO / "eval/data/qa_heldout.jsonl")
    asked = {w.removesuffix("'s") for q in held for w in q["question"].split()[1:] if w[0].isupper()}
    assert asked and not any(f" {name} " in f" {train_text} " for name in asked)
    towns = [q["answers"]["text"][0] for q in held if q["question"].startswith("Where")]
    assert towns and not any(t in train_text for t in towns)
    prompts = rows(REPO / "recipes/tiny/data/prompts_answers.jsonl")
    assert [p["prompt"] for p in prompts] == [p["prompt"] for p in rows(REPO / "recipes/data/qa/prompts.jsonl")]
    assert all(p["answers"][0] in p["prompt"][0]["content"] for p in prompts)
