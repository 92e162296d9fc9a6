"""The shipped XQuAD training files are what recipes/realdata/make_xquad_data.py builds, and the paragraph
conversations the real recipe's SFT trains on ask exactly the questions of the one-question rows."""

from __future__ import annotations

import importlib.util
import json

from conftest import REPO

OUT = REPO / "recipes" / "realdata" / "xquad"


def _builder():
    spec = importlib.util.spec_from_file_location("make_xquad_data", REPO / "recipes/realdata/make_xquad_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jsonl(name):
    return [json.loads(line) for line in (OUT / name).read_text(encoding="utf-8").splitlines()]


def test_shipped_training_files_are_rebuilt_exactly():
    m = _builder()
    train, held = m.split_articles(json.loads(m.XQUAD.read_text(encoding="utf-8"))["data"])
    chat, prefs, prompts = m.training_rows(train)
    built = {"train_chat.jsonl": chat, "train_prefs.jsonl": prefs, "train_prompts.jsonl": prompts,
             "train_paragraphs.jsonl": m.paragraph_conversations(train)}
    for name, rows in built.items():
        assert _jsonl(name) == rows, name


def test_paragraph_conversations_ask_the_same_questions_in_fewer_rows():
    m = _builder()
    single = _jsonl("train_chat.jsonl")
    conversations = _jsonl("train_paragraphs.jsonl")
    pairs = sorted((r["messages"][0]["content"].rsplit("\n\nQuestion: ", 1)[1], r["messages"][1]["content"])
                   for r in single)
    asked = []
    prompts = {r["messages"][0]["content"] for r in single}
    for row in conversations:
        turns = row["messages"]
        assert [t["role"] for t in turns] == ["user", "assistant"] * (len(turns) // 2)
        assert turns[0]["content"] in prompts  # the first turn is the evaluation's own prompt
        for i in range(0, len(turns), 2):
            question = turns[i]["content"].rsplit("Question: ", 1)[1]
            if i:
                assert turns[i]["content"] == m.FOLLOW_UP.format(question=question)
            asked.append((question, turns[i + 1]["content"]))
    assert sorted(asked) == pairs
    assert len(conversations) == 160 and len(single) == 833  # one row per paragraph of the 32 train articles
