"""Data loading, format detection, normalisation, mixing and splitting (finetune.data), and the labels TRL's
SFTTrainer builds from the normalised data, checked token by token against an independent computation.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import datasets
import pytest
from conftest import DATA, sft_recipe

from finetune.data import detect_format, fingerprint, load_source, mix, normalise, split, stage_data
from finetune.errors import UserError
from finetune.recipe import load_recipe, validate
from finetune.stages.sft import LOSS_FLAGS, loss_flags

IGNORE = -100
EOS = "<|im_end|>"


# ------------------------------------------------------------------ helpers
def source(path, **kw) -> dict:
    """A data source as `finetune.recipe.validate` resolves it (every key present)."""
    src = {"path": str(path), "format": "auto", "columns": {}, "split": "train", "subset": None,
           "revision": None, "max_rows": None}
    src.update(kw)
    return src


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path: Path, rows: list) -> Path:
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    datasets.Dataset.from_list(rows).to_csv(str(path), index=False)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


WRITERS = {"jsonl": write_jsonl, "json": write_json, "csv": write_csv, "parquet": write_parquet}


def load_norm(path: Path, fmt: str = "auto", **kw):
    """load_source -> detect_format -> normalise, as stage_data does; returns (dataset, format, dropped)."""
    ds = load_source("x", source(path, format=fmt, **kw), seed=0)
    found = detect_format(ds.column_names, fmt, str(path))
    norm, dropped = normalise(ds, found, str(path))
    return norm, found, dropped


def rows_of(ds) -> list[dict]:
    return [dict(r) for r in ds]


def col(ds, name: str) -> list:
    """A column as a plain list (datasets 4+ returns a lazy Column object)."""
    return list(ds[name])


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


# ------------------------------------------------------------------ 1. loading and format detection
@pytest.mark.parametrize("name, fmt, n", [
    ("tiny_chat.jsonl", "messages", 300),
    ("tiny_alpaca.json", "alpaca", 60),
    ("tiny_sharegpt.jsonl", "sharegpt", 60),
    ("tiny_prompt_completion.csv", "prompt_completion", 60),
    ("tiny_text.parquet", "text", 60),
])
def test_shipped_files_load_and_auto_detect(name, fmt, n):
    ds = load_source("x", source(DATA / name), seed=0)
    assert len(ds) == n
    assert detect_format(ds.column_names, "auto", name) == fmt
    norm, dropped = normalise(ds, fmt, name)
    assert len(norm) == n and dropped == {}
    kind_cols = {"messages": ["messages"], "alpaca": ["messages"], "sharegpt": ["messages"],
                 "prompt_completion": ["prompt", "completion"], "text": ["text"]}
    assert norm.column_names == kind_cols[fmt]


PC_ROWS = [{"prompt": "Question: plural of cat?\nAnswer:", "completion": " cats"},
           {"prompt": "Question: 2 + 3?\nAnswer:", "completion": " 2 + 3 = 5."},
           {"prompt": "Say \"hi\", then stop.", "completion": " hi, there"}]


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv", "parquet"])
def test_each_file_type_loads_the_same_rows(tmp_path, suffix):
    path = WRITERS[suffix](tmp_path / f"pc.{suffix}", PC_ROWS)
    ds = load_source("x", source(path), seed=0)
    assert sorted(ds.column_names) == ["completion", "prompt"]
    assert rows_of(ds) == PC_ROWS
    assert detect_format(ds.column_names, "auto", str(path)) == "prompt_completion"


@pytest.mark.parametrize("columns, fmt", [
    (["messages"], "messages"),
    (["conversations", "id"], "sharegpt"),
    (["instruction", "input", "output"], "alpaca"),
    (["instruction", "output"], "alpaca"),
    (["prompt", "completion"], "prompt_completion"),
    (["text", "meta"], "text"),
    (["messages", "text"], "messages"),  # the richer format wins
])
def test_detect_format_auto(columns, fmt):
    assert detect_format(columns, "auto", "w") == fmt


def test_detect_format_declared():
    assert detect_format(["prompt", "completion", "text"], "text", "w") == "text"
    assert detect_format(["instruction", "output"], "alpaca", "w") == "alpaca"
    with pytest.raises(UserError) as e:
        detect_format(["question", "answer"], "prompt_completion", "data.qa")
    msg_ = str(e.value)
    assert "data.qa" in msg_ and "prompt_completion" in msg_
    assert "['completion', 'prompt']" in msg_  # the missing columns
    assert "['answer', 'question']" in msg_  # the columns found
    with pytest.raises(UserError, match=r"needs column\(s\) \['output'\]; found \['input', 'instruction'\]"):
        detect_format(["instruction", "input"], "alpaca", "w")


def test_detect_format_auto_unknown_columns():
    with pytest.raises(UserError, match=r"cannot tell the instruction format from columns \['a', 'b'\]"):
        detect_format(["b", "a"], "auto", "w")


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_column_mapping_renames(tmp_path, suffix):
    rows = [{"question": "What is 1 + 1?", "answer": " 2", "id": 7}, {"question": "Q2", "answer": " A2", "id": 8}]
    path = WRITERS[suffix](tmp_path / f"qa.{suffix}", rows)
    ds = load_source("x", source(path, columns={"prompt": "question", "completion": "answer"}), seed=0)
    assert sorted(ds.column_names) == ["completion", "id", "prompt"]
    assert col(ds, "prompt") == ["What is 1 + 1?", "Q2"] and col(ds, "completion") == [" 2", " A2"]
    assert detect_format(ds.column_names, "auto", "w") == "prompt_completion"
    norm, _ = normalise(ds, "prompt_completion", "w")
    assert rows_of(norm) == [{"prompt": "What is 1 + 1?", "completion": " 2"}, {"prompt": "Q2", "completion": " A2"}]


def test_column_mapping_to_missing_column(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(UserError) as e:
        load_source("qa", source(path, columns={"prompt": "question", "completion": "reply"}), seed=0)
    text = str(e.value)
    assert "data.qa.columns" in text and "['reply']" in text
    assert "found ['question', 'answer']" in text


def test_max_rows_is_a_seeded_subset(tmp_path):
    rows = [{"text": f"row {i}"} for i in range(20)]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    a = load_source("x", source(path, max_rows=5), seed=3)
    b = load_source("x", source(path, max_rows=5), seed=3)
    c = load_source("x", source(path, max_rows=5), seed=4)
    assert len(a) == 5 and col(a, "text") == col(b, "text") and col(a, "text") != col(c, "text")
    assert set(col(a, "text")) <= {r["text"] for r in rows}
    assert len(load_source("x", source(path, max_rows=50), seed=3)) == 20


def test_missing_file_and_empty_data(tmp_path):
    with pytest.raises(UserError, match=r"data\.x\.path: cannot load"):
        load_source("x", source(tmp_path / "nope.jsonl"), seed=0)
    header_only = tmp_path / "h.csv"
    header_only.write_text("prompt,completion\n")
    with pytest.raises(UserError, match="h.csv"):
        load_source("x", source(header_only), seed=0)


def test_blank_lines_in_jsonl_are_skipped(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n\n')
    assert col(load_source("x", source(path), seed=0), "text") == ["a", "b"]


# ------------------------------------------------------------------ 2. normalisation, field by field
def test_normalise_alpaca(tmp_path):
    rows = [
        {"instruction": "Name a fruit.", "input": "", "output": "Apple."},
        {"instruction": "Translate.", "input": "hola", "output": "hello"},
        {"instruction": "Sum.", "input": "2 and 3", "output": "5", "system": "Be terse."},
        {"instruction": "Blank input.", "input": "   ", "output": "ok"},
    ]
    norm, fmt, dropped = load_norm(write_json(tmp_path / "a.json", rows))
    assert fmt == "alpaca" and dropped == {}
    assert norm.column_names == ["messages"]
    assert col(norm, "messages") == [
        [msg("user", "Name a fruit."), msg("assistant", "Apple.")],
        [msg("user", "Translate.\n\nhola"), msg("assistant", "hello")],
        [msg("system", "Be terse."), msg("user", "Sum.\n\n2 and 3"), msg("assistant", "5")],
        [msg("user", "Blank input."), msg("assistant", "ok")],
    ]


def test_normalise_alpaca_without_input_column(tmp_path):
    rows = [{"instruction": "Name a colour.", "output": "Red."}]
    norm, fmt, _ = load_norm(write_jsonl(tmp_path / "a.jsonl", rows))
    assert fmt == "alpaca"
    assert col(norm, "messages") == [[msg("user", "Name a colour."), msg("assistant", "Red.")]]


def test_normalise_sharegpt_roles(tmp_path):
    rows = [
        {"conversations": [{"from": "system", "value": "S."}, {"from": "human", "value": "Hi"},
                           {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye"},
                           {"from": "gpt", "value": "Goodbye"}]},
        {"conversations": [{"from": "user", "value": "Q"}, {"from": "assistant", "value": "A"}]},
        {"conversations": [{"from": "Human", "value": "Q"}, {"from": "ChatGPT", "value": "A"}]},
    ]
    norm, fmt, dropped = load_norm(write_jsonl(tmp_path / "s.jsonl", rows))
    assert fmt == "sharegpt" and dropped == {}
    assert norm.column_names == ["messages"]
    assert col(norm, "messages") == [
        [msg("system", "S."), msg("user", "Hi"), msg("assistant", "Hello"), msg("user", "Bye"),
         msg("assistant", "Goodbye")],
        [msg("user", "Q"), msg("assistant", "A")],
        [msg("user", "Q"), msg("assistant", "A")],
    ]


def test_sharegpt_unknown_from_names_the_row(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "robot", "value": "A"}]}]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    with pytest.raises(UserError) as e:
        load_norm(path)
    assert "s.jsonl" in str(e.value) and "row 1" in str(e.value) and "'robot'" in str(e.value)


def test_messages_pass_through_and_bad_role(tmp_path):
    good = [{"messages": [msg("system", "S"), msg("user", "U"), msg("assistant", "A")]},
            {"messages": [msg("user", "U1"), msg("assistant", "A1"), msg("user", "U2"), msg("assistant", "A2")]}]
    norm, fmt, dropped = load_norm(write_jsonl(tmp_path / "m.jsonl", good))
    assert fmt == "messages" and dropped == {} and rows_of(norm) == good
    bad = good + [{"messages": [msg("user", "U"), msg("bot", "A")]}]
    with pytest.raises(UserError) as e:
        load_norm(write_jsonl(tmp_path / "bad.jsonl", bad))
    assert "bad.jsonl" in str(e.value) and "row 2" in str(e.value) and "'bot'" in str(e.value)


def test_messages_non_string_content_is_an_error():
    ds = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "q"},
                                                   {"role": "assistant", "content": None}]}])
    with pytest.raises(UserError, match="row 0: turn 1: content must be a string"):
        normalise(ds, "messages", "w")


def test_dropped_rows_are_counted_by_reason(tmp_path):
    chat = [{"messages": [msg("user", "U"), msg("assistant", "A")]},
            {"messages": [msg("user", "U"), msg("assistant", "  ")]},
            {"messages": [msg("user", "U"), msg("assistant", "")]},
            {"messages": [msg("system", "S"), msg("user", "U")]},
            {"messages": [msg("user", "U"), msg("assistant", "A"), msg("user", "U2"), msg("assistant", "")]}]
    norm, _, dropped = load_norm(write_jsonl(tmp_path / "c.jsonl", chat))
    assert dropped == {"empty assistant turn": 3, "no assistant turn": 1}
    assert rows_of(norm) == [chat[0]]

    sgpt = [{"conversations": [{"from": "human", "value": "Q"}]},
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]
    norm, _, dropped = load_norm(write_jsonl(tmp_path / "s.jsonl", sgpt))
    assert dropped == {"no assistant turn": 1} and len(norm) == 1

    alpaca = [{"instruction": "I", "input": "", "output": ""}, {"instruction": "I", "input": "", "output": "O"}]
    norm, _, dropped = load_norm(write_json(tmp_path / "a.json", alpaca))
    assert dropped == {"empty output": 1} and len(norm) == 1

    pc = [{"prompt": "P1", "completion": "C"}, {"prompt": "P2", "completion": " "},
          {"prompt": "", "completion": "C3"}]
    norm, _, dropped = load_norm(write_jsonl(tmp_path / "pc.jsonl", pc))
    assert dropped == {"empty completion": 1}
    assert rows_of(norm) == [pc[0], pc[2]]

    text = [{"text": "hello"}, {"text": ""}, {"text": " \n "}]
    norm, _, dropped = load_norm(write_parquet(tmp_path / "t.parquet", text))
    assert dropped == {"empty text": 2} and rows_of(norm) == [{"text": "hello"}]


def test_all_rows_dropped_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": ""}, {"text": "  "}])
    with pytest.raises(UserError, match=r"t\.jsonl.*no usable rows left \(2 empty text\)"):
        load_norm(path)
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [msg("user", "U")]}])
    with pytest.raises(UserError, match=r"no usable rows left \(1 no assistant turn\)"):
        load_norm(path)


def test_normalise_wrong_types_are_errors():
    with pytest.raises(UserError, match="row 0: text must be a string"):
        normalise(datasets.Dataset.from_list([{"text": 3}]), "text", "w")
    with pytest.raises(UserError, match="row 0: prompt and completion must be strings"):
        normalise(datasets.Dataset.from_list([{"prompt": "p", "completion": 3}]), "prompt_completion", "w")
    with pytest.raises(UserError, match="row 0: messages must be a list"):
        normalise(datasets.Dataset.from_list([{"messages": "hi"}]), "messages", "w")


# ------------------------------------------------------------------ 3. malformed files
def test_jsonl_broken_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"\n{"text": "d"}\n')
    with pytest.raises(UserError) as e:
        load_source("x", source(path), seed=0)
    assert "broken.jsonl:3:" in str(e.value) and "malformed JSON" in str(e.value)


def test_jsonl_line_that_is_a_list(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n["c"]\n')
    with pytest.raises(UserError) as e:
        load_source("x", source(path), seed=0)
    assert "list.jsonl:3:" in str(e.value) and "JSON object" in str(e.value) and "list" in str(e.value)


def test_json_array_syntax_error_has_line_number(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b"},,\n  {"text": "c"}\n]\n')
    with pytest.raises(UserError) as e:
        load_source("x", source(path), seed=0)
    assert "bad.json:3:" in str(e.value) and "malformed JSON" in str(e.value)


def test_json_object_syntax_error_has_line_number(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"text": "a",\n "more": \n}\n')
    with pytest.raises(UserError, match=r"bad\.json:3: malformed JSON"):
        load_source("x", source(path), seed=0)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello\n")
    with pytest.raises(UserError, match=r"data\.txt: unsupported file type '\.txt' \(data\.x\)"):
        load_source("x", source(path), seed=0)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes('{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match="latin.jsonl: not UTF-8"):
        load_source("x", source(path), seed=0)


# Loader edge cases that once failed (each test failed before its fix).
def test_json_suffix_with_json_lines_loads(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert col(load_source("x", source(path), seed=0), "text") == ["a", "b"]


def test_json_array_after_leading_newline_loads(tmp_path):
    path = tmp_path / "lead.json"
    path.write_text('\n[\n  {"text": "a"}\n]\n')
    assert col(load_source("x", source(path), seed=0), "text") == ["a"]


def test_empty_jsonl_is_a_user_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(UserError):
        load_source("x", source(path), seed=0)


def test_column_mapping_onto_an_existing_column(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Q", "prompt": "old", "completion": "C"}])
    try:
        ds = load_source("x", source(path, columns={"prompt": "question"}), seed=0)
    except UserError:
        return  # refusing the ambiguous mapping is fine too
    assert col(ds, "prompt") == ["Q"] and "question" not in ds.column_names


def test_mix_weight_rounding_to_zero_rows_is_an_error():
    with pytest.raises(UserError, match="data.b: weight 1.0 gives it 0 of 10 rows"):
        mix({"a": (text_ds("a", 10), 100.0), "b": (text_ds("b", 10), 1.0)}, 10, seed=0)


def test_mix_without_weights_uses_every_row_once():
    mixed, counts = mix({"a": (text_ds("a", 7), None), "b": (text_ds("b", 3), None)}, None, seed=0)
    assert counts == {"a": 7, "b": 3} and sorted(col(mixed, "text")) == sorted(
        [f"a{i}" for i in range(7)] + [f"b{i}" for i in range(3)])


def test_csv_numeric_completions_stay_text(tmp_path):
    path = tmp_path / "num.csv"
    path.write_text('prompt,completion\n"2+2=", 4\n"9+9=", 18\n')
    ds = load_source("x", source(path), seed=0)
    assert col(ds, "completion") == [" 4", " 18"]


# ------------------------------------------------------------------ 4. mixtures, splits, fingerprints
def text_ds(prefix: str, n: int):
    return datasets.Dataset.from_list([{"text": f"{prefix}{i}"} for i in range(n)])


def test_mix_weights_give_shares():
    a, b = text_ds("a", 50), text_ds("b", 50)
    mixed, counts = mix({"a": (a, 3.0), "b": (b, 1.0)}, 40, seed=1)
    assert counts == {"a": 30, "b": 10} and len(mixed) == 40
    texts = col(mixed, "text")
    assert sum(t.startswith("a") for t in texts) == 30 and sum(t.startswith("b") for t in texts) == 10
    assert len(set(texts)) == 40  # no source needed repeating
    assert texts[:30] != sorted(texts)[:30]  # the mixture is shuffled, not a concatenation


def test_mix_default_total_is_sum_of_sources():
    mixed, counts = mix({"a": (text_ds("a", 7), 1.0), "b": (text_ds("b", 5), 1.0)}, None, seed=0)
    assert len(mixed) == 12 and counts == {"a": 6, "b": 6}


def test_mix_upsamples_a_small_source():
    a, b = text_ds("a", 50), text_ds("b", 4)
    mixed, counts = mix({"a": (a, 1.0), "b": (b, 1.0)}, 20, seed=2)
    assert counts == {"a": 10, "b": 10}
    bs = [t for t in col(mixed, "text") if t.startswith("b")]
    assert len(bs) == 10
    # 10 rows from 4: every row twice, two of them a third time
    freq = sorted(bs.count(t) for t in set(bs))
    assert set(bs) == {"b0", "b1", "b2", "b3"} and freq == [2, 2, 3, 3]


def test_mix_is_seeded():
    parts = {"a": (text_ds("a", 30), 2.0), "b": (text_ds("b", 30), 1.0)}
    one, _ = mix(parts, 30, seed=5)
    two, _ = mix(parts, 30, seed=5)
    other, _ = mix(parts, 30, seed=6)
    assert col(one, "text") == col(two, "text")
    assert col(one, "text") != col(other, "text")


def test_mix_total_is_exact():
    mixed, _ = mix({"a": (text_ds("a", 10), 1.0), "b": (text_ds("b", 10), 1.0)}, 5, seed=0)
    assert len(mixed) == 5


def test_split_fraction_and_count():
    ds = text_ds("r", 50)
    train, evald = split(ds, 0.1, seed=3)
    assert (len(train), len(evald)) == (45, 5)
    assert sorted(col(train, "text") + col(evald, "text")) == sorted(col(ds, "text"))
    train, evald = split(ds, 7, seed=3)
    assert (len(train), len(evald)) == (43, 7)
    train, evald = split(ds, 0.001, seed=3)  # a fraction keeps at least one eval row
    assert len(evald) == 1
    train, evald = split(ds, 0, seed=3)
    assert evald is None and len(train) == 50


def test_split_is_seeded():
    ds = text_ds("r", 40)
    a_train, a_eval = split(ds, 0.25, seed=9)
    b_train, b_eval = split(ds, 0.25, seed=9)
    _, c_eval = split(ds, 0.25, seed=10)
    assert col(a_train, "text") == col(b_train, "text") and col(a_eval, "text") == col(b_eval, "text")
    assert col(a_eval, "text") != col(c_eval, "text")


@pytest.mark.parametrize("eval_split", [10, 11, 0.99])
def test_split_leaving_no_training_rows(eval_split):
    with pytest.raises(UserError, match="leaves no training rows"):
        split(text_ds("r", 10), eval_split, seed=0)


CHAT_ROWS = [{"messages": [msg("system", "Be brief."), msg("user", "Capital of France?"),
                           msg("assistant", "Paris.")]},
             {"messages": [msg("user", "1 + 1?"), msg("assistant", "2"), msg("user", "And 2 + 2?"),
                           msg("assistant", "4")]}]


def test_fingerprint_ignores_file_type(tmp_path):
    fps = set()
    for suffix in ("jsonl", "json", "parquet"):
        norm, _, _ = load_norm(WRITERS[suffix](tmp_path / f"c.{suffix}", CHAT_ROWS))
        fps.add(fingerprint(norm))
    sharegpt = [{"conversations": [{"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]],
                                    "value": m["content"]} for m in r["messages"]]} for r in CHAT_ROWS]
    norm, _, _ = load_norm(write_jsonl(tmp_path / "s.jsonl", sharegpt))
    fps.add(fingerprint(norm))
    fps.add(fingerprint(datasets.Dataset.from_list(CHAT_ROWS)))
    assert len(fps) == 1

    pcs = {fingerprint(load_norm(WRITERS[s](tmp_path / f"pc.{s}", PC_ROWS))[0])
           for s in ("jsonl", "json", "csv", "parquet")}
    assert len(pcs) == 1


def test_fingerprint_changes_with_any_row():
    base = fingerprint(datasets.Dataset.from_list(CHAT_ROWS))
    changed = copy.deepcopy(CHAT_ROWS)
    changed[1]["messages"][3]["content"] = "5"
    assert fingerprint(datasets.Dataset.from_list(changed)) != base
    assert fingerprint(datasets.Dataset.from_list(CHAT_ROWS[::-1])) != base  # order matters
    assert fingerprint(datasets.Dataset.from_list(CHAT_ROWS[:1])) != base
    # the eval split counts too, and None (no eval split) is skipped
    train, evald = text_ds("a", 3), text_ds("b", 2)
    assert fingerprint(train, None) == fingerprint(train)
    assert fingerprint(train, evald) != fingerprint(train)


# ------------------------------------------------------------------ 5. labels, token by token
def ids_of(encoded) -> list[int]:
    """apply_chat_template(..., return_dict=True) / tokenizer(...) output -> list of ids."""
    out = encoded["input_ids"] if not isinstance(encoded, list) else encoded
    return list(out)


def chat_ids(tok, messages, **kw) -> list[int]:
    return ids_of(tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kw))


def expected_chat_labels(tok, messages) -> tuple[list[int], list[int]]:
    """Independent assistant-only mask: each assistant turn's content + <|im_end|>, found by tokenising the
    conversation up to the turn with and without it; everything else (and the "\\n" after <|im_end|>) is -100."""
    eos = tok.convert_tokens_to_ids(EOS)
    full = chat_ids(tok, messages)
    labels = [IGNORE] * len(full)
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = chat_ids(tok, messages[:k], add_generation_prompt=True)
        upto = chat_ids(tok, messages[: k + 1])
        assert upto[: len(prefix)] == prefix and full[: len(upto)] == upto
        turn = upto[len(prefix):]
        end = max(i for i, t in enumerate(turn) if t == eos) + 1
        assert tok.decode(turn[:end]) == m["content"] + EOS
        assert tok.decode(turn[end:]) == "\n"  # outside the {% generation %} block
        labels[len(prefix): len(prefix) + end] = turn[:end]
    return full, labels


def build_trainer(model_dir: Path, dataset, out: Path, **flags):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(out), max_length=None, report_to="none", bf16=False,
                     gradient_checkpointing=False, **flags)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok), tok


MASK_CHAT = {
    "messages": (["jsonl"], [
        {"messages": [msg("system", "Give short answers."), msg("user", "What is the capital of Peru?"),
                      msg("assistant", "Lima is the capital of Peru.")]},
        {"messages": [msg("user", "How many legs does a spider have?"), msg("assistant", "8"),
                      msg("user", "And a frog?"), msg("assistant", "A frog has 4 legs.")]},
        {"messages": [msg("system", "Answer in one word."), msg("user", "Opposite of hot?"),
                      msg("assistant", "Cold"), msg("user", "Opposite of up?"), msg("assistant", "Down"),
                      msg("user", "Opposite of big?"), msg("assistant", "Small.")]},
        {"messages": [msg("user", "Say something with\nnewlines."), msg("assistant", "Line one.\nLine two.\n")]},
    ]),
    "alpaca": (["json"], [
        {"instruction": "What sound does this animal make?", "input": "wolf", "output": "A wolf howls."},
        {"instruction": "Calculate 10 + 8.", "input": "", "output": "10 + 8 = 18."},
        {"instruction": "Rewrite in the past tense.", "input": "I drink tea.", "output": "I drank tea.",
         "system": "You are a careful editor."},
    ]),
    "sharegpt": (["jsonl"], [
        {"conversations": [{"from": "system", "value": "Give short answers."},
                           {"from": "human", "value": "What colour is a flamingo?"},
                           {"from": "gpt", "value": "Pink."}]},
        {"conversations": [{"from": "human", "value": "Plural of mouse?"}, {"from": "gpt", "value": "Mice."},
                           {"from": "human", "value": "Plural of goose?"}, {"from": "gpt", "value": "Geese."}]},
    ]),
}


def check_chat_labels(trainer, tok, norm):
    eos = tok.convert_tokens_to_ids(EOS)
    assert eos == tok.eos_token_id
    prepared = trainer.train_dataset
    assert len(prepared) == len(norm)
    for i, row in enumerate(norm):
        messages = row["messages"]
        full, expected = expected_chat_labels(tok, messages)
        got_ids, got = list(prepared[i]["input_ids"]), list(prepared[i]["labels"])
        assert got_ids == full, f"row {i}: input_ids differ from apply_chat_template"
        assert len(got) == len(full)
        for p, (g, x) in enumerate(zip(got, expected, strict=True)):
            assert g == x, f"row {i} token {p} {tok.convert_ids_to_tokens(full[p])!r}: label {g}, expected {x}"
        # one supervised <|im_end|> per assistant turn; the ones closing system/user turns are not
        n_assistant = sum(m["role"] == "assistant" for m in messages)
        eos_positions = [p for p, t in enumerate(full) if t == eos]
        assert len(eos_positions) == len(messages)
        supervised_eos = [p for p in eos_positions if got[p] == eos]
        assert len(supervised_eos) == n_assistant
        for p, m in zip(eos_positions, messages, strict=True):
            assert (got[p] == eos) == (m["role"] == "assistant")
        # the supervised text is exactly the assistant answers, each closed by <|im_end|>
        supervised = tok.decode([t for t in got if t != IGNORE])
        assert supervised == "".join(m["content"] + EOS for m in messages if m["role"] == "assistant")


@pytest.mark.parametrize("fmt", list(MASK_CHAT))
def test_assistant_only_labels_match_chat_template(tiny_llama, tmp_path, fmt):
    (suffix,), rows = MASK_CHAT[fmt]
    norm, found, _ = load_norm(WRITERS[suffix](tmp_path / f"{fmt}.{suffix}", rows))
    assert found == fmt
    trainer, tok = build_trainer(tiny_llama, norm, tmp_path / "out", **loss_flags("chat", "auto", "sft"))
    assert trainer.args.assistant_only_loss is True
    check_chat_labels(trainer, tok, norm)


def test_assistant_only_labels_on_shipped_chat(tiny_llama, tmp_path):
    ds = load_source("x", source(DATA / "tiny_chat.jsonl"), seed=0).select(range(40))
    norm, _ = normalise(ds, "messages", "chat")
    roles = [tuple(m["role"] for m in r) for r in col(norm, "messages")]
    assert any(r[0] == "system" for r in roles) and any(r.count("assistant") == 2 for r in roles)
    trainer, tok = build_trainer(tiny_llama, norm, tmp_path / "out", assistant_only_loss=True)
    check_chat_labels(trainer, tok, norm)


def test_full_loss_on_chat_supervises_every_token(tiny_llama, tmp_path):
    norm = datasets.Dataset.from_list(CHAT_ROWS)
    trainer, tok = build_trainer(tiny_llama, norm, tmp_path / "out", **loss_flags("chat", "full", "sft"))
    for i, row in enumerate(norm):
        full = chat_ids(tok, row["messages"])
        assert list(trainer.train_dataset[i]["input_ids"]) == full
        assert list(trainer.train_dataset[i]["labels"]) == full


def test_completion_only_labels(tiny_llama, tmp_path):
    rows = PC_ROWS + [{"prompt": "Context: Ana has 3 cats.\nQuestion: How many cats?\nAnswer:", "completion": " 3"}]
    norm, fmt, _ = load_norm(write_csv(tmp_path / "pc.csv", rows))
    assert fmt == "prompt_completion"
    flags = loss_flags("prompt_completion", "auto", "sft")
    assert flags == {"assistant_only_loss": False, "completion_only_loss": True}
    trainer, tok = build_trainer(tiny_llama, norm, tmp_path / "out", **flags)
    eos = tok.eos_token_id
    assert len(trainer.train_dataset) == len(rows)
    for i, row in enumerate(rows):
        prompt = ids_of(tok(row["prompt"]))
        full = ids_of(tok(row["prompt"] + row["completion"] + EOS))
        assert full[: len(prompt)] == prompt
        got_ids, got = list(trainer.train_dataset[i]["input_ids"]), list(trainer.train_dataset[i]["labels"])
        assert got_ids == full
        assert got == [IGNORE] * len(prompt) + full[len(prompt):]
        assert got[-1] == eos
        assert tok.decode(full[len(prompt):]) == row["completion"] + EOS
        assert tok.decode(full[: len(prompt)]) == row["prompt"]


def test_prompt_completion_full_loss(tiny_llama, tmp_path):
    norm = datasets.Dataset.from_list(PC_ROWS)
    flags = loss_flags("prompt_completion", "full", "sft")
    assert flags == {"assistant_only_loss": False, "completion_only_loss": False}
    trainer, tok = build_trainer(tiny_llama, norm, tmp_path / "out", **flags)
    for i, row in enumerate(PC_ROWS):
        full = ids_of(tok(row["prompt"] + row["completion"] + EOS))
        assert list(trainer.train_dataset[i]["input_ids"]) == full
        assert list(trainer.train_dataset[i]["labels"]) == full


def test_text_labels_are_all_tokens(tiny_llama, tmp_path):
    rows = [{"text": "Paris is the capital of France. It lies on the Seine."},
            {"text": "A frog has four legs.\nIt can jump far."}]
    norm, fmt, _ = load_norm(write_parquet(tmp_path / "t.parquet", rows))
    assert fmt == "text"
    flags = loss_flags("text", "auto", "sft")
    assert flags == {"assistant_only_loss": False}
    trainer, tok = build_trainer(tiny_llama, norm, tmp_path / "out", **flags)
    for i, row in enumerate(rows):
        full = ids_of(tok(row["text"] + EOS))
        assert list(trainer.train_dataset[i]["input_ids"]) == full
        assert list(trainer.train_dataset[i]["labels"]) == full
        assert full[-1] == tok.eos_token_id and tok.decode(full) == row["text"] + EOS


@pytest.mark.parametrize("kind, loss, expected", [
    ("chat", "auto", {"assistant_only_loss": True}),
    ("chat", "assistant_only", {"assistant_only_loss": True}),
    ("chat", "full", {"assistant_only_loss": False}),
    ("prompt_completion", "auto", {"assistant_only_loss": False, "completion_only_loss": True}),
    ("prompt_completion", "completion_only", {"assistant_only_loss": False, "completion_only_loss": True}),
    ("prompt_completion", "full", {"assistant_only_loss": False, "completion_only_loss": False}),
    ("text", "auto", {"assistant_only_loss": False}),
    ("text", "full", {"assistant_only_loss": False}),
])
def test_loss_flags_table(kind, loss, expected):
    assert loss_flags(kind, loss, "sft") == expected


@pytest.mark.parametrize("kind, loss", [("text", "assistant_only"), ("text", "completion_only"),
                                        ("chat", "completion_only"), ("prompt_completion", "assistant_only")])
def test_loss_flags_not_applicable(kind, loss):
    with pytest.raises(UserError) as e:
        loss_flags(kind, loss, "my-stage")
    text = str(e.value)
    assert "stage my-stage" in text and f"loss '{loss}'" in text and f"{kind} data" in text
    for ok in LOSS_FLAGS[kind]:
        assert ok in text


# ------------------------------------------------------------------ 6. stage_data
def resolved(model_dir: Path, sources: dict, weights: dict | None = None, **stage) -> tuple[dict, dict]:
    """A validated recipe (every default filled in) and its one SFT stage."""
    raw = sft_recipe(model_dir, sources, **stage)
    if weights:
        raw["stages"][0]["data"] = weights
    recipe = validate(raw, "test.yaml")
    return recipe, recipe["stages"][0]


def test_stage_data_mixes_chat_formats(tmp_path):
    data = {"chat": {"path": str(DATA / "tiny_chat.jsonl")},
            "alpaca": {"path": str(DATA / "tiny_alpaca.json")},
            "sharegpt": {"path": str(DATA / "tiny_sharegpt.jsonl")}}
    recipe, stage = resolved(tmp_path, data, eval_split=0.1)
    out = stage_data(recipe["data"], stage, recipe["seed"])
    assert out["kind"] == "chat"
    assert out["train"].column_names == ["messages"] and out["eval"].column_names == ["messages"]
    assert (len(out["train"]), len(out["eval"])) == (378, 42)
    report = out["report"]
    assert {n: s["format"] for n, s in report["sources"].items()} == {
        "chat": "messages", "alpaca": "alpaca", "sharegpt": "sharegpt"}
    assert {n: (s["rows"], s["kept"], s["dropped"]) for n, s in report["sources"].items()} == {
        "chat": (300, 300, {}), "alpaca": (60, 60, {}), "sharegpt": (60, 60, {})}
    assert stage["data"] == {"chat": None, "alpaca": None, "sharegpt": None}  # a plain list: no weights
    assert report["mixture"] == {"chat": 300, "alpaca": 60, "sharegpt": 60}  # a plain list: every row once
    assert (report["train_rows"], report["eval_rows"]) == (378, 42)
    assert report["fingerprint"] == fingerprint(out["train"], out["eval"])
    for row in out["train"].select(range(50)):
        roles = [m["role"] for m in row["messages"]]
        assert set(roles) <= {"system", "user", "assistant"} and "assistant" in roles
    # same recipe, same data and order
    again = stage_data(recipe["data"], stage, recipe["seed"])
    assert again["report"]["fingerprint"] == report["fingerprint"]


def test_stage_data_weights_and_max_rows(tmp_path):
    data = {"chat": {"path": str(DATA / "tiny_chat.jsonl")},
            "sharegpt": {"path": str(DATA / "tiny_sharegpt.jsonl")}}
    recipe, stage = resolved(tmp_path, data, weights={"chat": 1, "sharegpt": 1}, max_rows=200)
    out = stage_data(recipe["data"], stage, recipe["seed"])
    assert out["report"]["mixture"] == {"chat": 100, "sharegpt": 100}  # sharegpt upsampled from 60
    assert len(out["train"]) == 200 and out["eval"] is None and out["report"]["eval_rows"] == 0


def test_stage_data_reports_dropped_rows(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", CHAT_ROWS + [{"messages": [msg("user", "U"), msg("assistant", "")]}])
    recipe, stage = resolved(tmp_path, {"c": {"path": str(path)}})
    out = stage_data(recipe["data"], stage, recipe["seed"])
    assert out["report"]["sources"]["c"]["dropped"] == {"empty assistant turn": 1}
    assert out["report"]["sources"]["c"]["kept"] == 2 and len(out["train"]) == 2


def test_stage_data_rejects_mixed_kinds(tmp_path):
    data = {"chat": {"path": str(DATA / "tiny_chat.jsonl")}, "text": {"path": str(DATA / "tiny_text.parquet")}}
    recipe, stage = resolved(tmp_path, data)
    with pytest.raises(UserError, match=r"stage sft: its data sources mix kinds \(chat=chat, text=text\)"):
        stage_data(recipe["data"], stage, recipe["seed"])


def test_stage_data_from_a_recipe_file(tmp_path, write_recipe):
    qa = write_csv(tmp_path / "qa.csv", [{"question": f"Q{i}?", "answer": f" A{i}"} for i in range(10)])
    raw = sft_recipe(tmp_path, {"qa": {"path": str(qa), "columns": {"prompt": "question", "completion": "answer"}}},
                     eval_split=2)
    recipe = load_recipe(write_recipe(raw), ["seed=7"])
    out = stage_data(recipe["data"], recipe["stages"][0], recipe["seed"])
    assert out["kind"] == "prompt_completion"
    assert out["report"]["sources"]["qa"]["format"] == "prompt_completion"
    assert (len(out["train"]), len(out["eval"])) == (8, 2)
    assert sorted(col(out["train"], "prompt") + col(out["eval"], "prompt")) == sorted(f"Q{i}?" for i in range(10))
