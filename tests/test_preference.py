"""Preference pairs and RL prompts: layouts, normalisation, drop counts, errors, and stage_data on pairs/prompts.

Fast and model-free. The shipped files are checked against their own raw JSON (the generator may change the
rows), and hand-written rows pin the exact normalised output field by field.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import DATA

from finetune.data import stage_data
from finetune.errors import UserError
from finetune.preference import detect_layout, normalise_pair, normalise_pairs, parse_hh, prompts_only
from finetune.recipe import load_recipe

PREFS = DATA / "tiny_prefs.jsonl"
PREFS_TEXT = DATA / "tiny_prefs_text.jsonl"
PREFS_HH = DATA / "tiny_prefs_hh.jsonl"
PREFS_IMPLICIT = DATA / "tiny_prefs_implicit.jsonl"
PROMPTS = DATA / "tiny_prompts.jsonl"
CHAT = DATA / "tiny_chat.jsonl"


def M(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def raw_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load(path: Path):
    """A JSON Lines file as `datasets` reads it (null-filled structs and all), like load_source does."""
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train")


@pytest.fixture
def jsonl(tmp_path):
    """Write rows to a .jsonl file in tmp_path and return it loaded as a Dataset (or the path, as_path=True)."""

    def write(rows: list[dict], name: str = "prefs.jsonl", as_path: bool = False):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path if as_path else load(path)

    return write


def hh_text(messages: list[dict]) -> str:
    """Messages back into Anthropic HH text: the inverse of parse_hh for stripped turns."""
    names = {"user": "Human", "assistant": "Assistant"}
    return "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in messages)


def answer_text(value) -> str:
    return value if isinstance(value, str) else " ".join(m["content"] for m in value)


# ------------------------------------------------------------------------------------------- shipped files
@pytest.mark.parametrize(("path", "layout", "kind"), [
    (PREFS, "explicit", "chat"),
    (PREFS_TEXT, "explicit", "text"),
    (PREFS_HH, "hh", "chat"),
    (PREFS_IMPLICIT, "implicit", "chat"),
], ids=["explicit-chat", "explicit-text", "hh", "implicit"])
def test_shipped_preference_file_normalises_without_drops(path, layout, kind):
    ds = load(path)
    assert detect_layout(ds.column_names, ds[0], str(path)) == layout
    pairs, dropped, got_kind = normalise_pairs(ds, str(path))
    assert (got_kind, dropped) == (kind, {})
    assert len(pairs) == len(raw_rows(path)) >= 20
    assert pairs.column_names == ["prompt", "chosen", "rejected"]
    for pair in pairs:
        for field in ("prompt", "chosen", "rejected"):
            value = pair[field]
            if kind == "text":
                assert isinstance(value, str)
            else:
                assert isinstance(value, list) and value, (field, pair)
                assert all(set(m) == {"role", "content"} and m["role"] in ("system", "user", "assistant")
                           for m in value), pair
        if kind == "chat":
            assert pair["prompt"][-1]["role"] == "user", "the prompt ends with the user turn being answered"
            assert [m["role"] for m in pair["chosen"]] == [m["role"] for m in pair["rejected"]] == ["assistant"]
        assert answer_text(pair["chosen"]).strip() != answer_text(pair["rejected"]).strip()


def test_shipped_hh_rows_field_by_field():
    """Every HH row: prompt = all turns before the differing final assistant turn, roles mapped, text stripped."""
    raw = raw_rows(PREFS_HH)
    pairs, _, _ = normalise_pairs(load(PREFS_HH), "hh")
    multi_turn = 0
    for row, pair in zip(raw, pairs, strict=True):
        n_turns = row["chosen"].count("\n\nHuman: ")
        multi_turn += n_turns > 1
        assert [m["role"] for m in pair["prompt"]] == ["user", "assistant"] * (n_turns - 1) + ["user"]
        assert all(m["content"] == m["content"].strip() and m["content"] for m in pair["prompt"])
        # Put back together, prompt + answer is the original text.
        assert hh_text(pair["prompt"] + pair["chosen"]) == row["chosen"].rstrip()
        assert hh_text(pair["prompt"] + pair["rejected"]) == row["rejected"].rstrip()
        final = row["chosen"].rsplit("\n\nAssistant: ", 1)[1].strip()
        assert pair["chosen"] == [M("assistant", final)]
    assert multi_turn >= 3, "the HH file should hold multi-turn conversations"
    assert multi_turn < len(raw), "and single-turn ones"


def test_shipped_implicit_rows_field_by_field():
    raw = raw_rows(PREFS_IMPLICIT)
    pairs, _, _ = normalise_pairs(load(PREFS_IMPLICIT), "implicit")
    for row, pair in zip(raw, pairs, strict=True):
        n = len(pair["prompt"])
        assert row["chosen"][:n] == row["rejected"][:n] == pair["prompt"]
        assert row["chosen"][n:] == pair["chosen"] and row["rejected"][n:] == pair["rejected"]
        assert row["chosen"][n] != row["rejected"][n], "the prompt is the longest shared prefix"


def test_shipped_text_rows_field_by_field():
    raw = raw_rows(PREFS_TEXT)
    pairs, _, kind = normalise_pairs(load(PREFS_TEXT), "text")
    assert kind == "text"
    assert [dict(p) for p in pairs] == [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in raw], \
        "explicit text pairs are kept exactly as written (leading spaces included)"


def test_shipped_prefs_do_not_teach_length():
    """The reward model must not be able to win by preferring the longer answer."""
    rows = raw_rows(PREFS)
    longer = sum(len(answer_text(r["chosen"])) > len(answer_text(r["rejected"])) for r in rows)
    share = longer / len(rows)
    assert 0.3 <= share <= 0.7, f"chosen is longer than rejected in {share:.0%} of {len(rows)} pairs"


# ------------------------------------------------------------------------------------------- parsing, exact rows
def test_parse_hh_single_and_multi_turn():
    assert parse_hh("\n\nHuman:  What is 2+2? \n\nAssistant: 4  ") == [M("user", "What is 2+2?"), M("assistant", "4")]
    assert parse_hh("Human: hi\n\nAssistant: hello") == [M("user", "hi"), M("assistant", "hello")], \
        "the leading blank lines are optional"
    text = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d"
    assert parse_hh(text) == [M("user", "a"), M("assistant", "b"), M("user", "c"), M("assistant", "d")]
    for bad in ("just text", "preamble\n\nHuman: a\n\nAssistant: b", ""):
        with pytest.raises(ValueError, match="Human"):
            parse_hh(bad)


def test_hh_pair_exact():
    single = {"chosen": "\n\nHuman: Capital of France?\n\nAssistant:  Paris. ",
              "rejected": "\n\nHuman: Capital of France?\n\nAssistant: Rome."}
    assert normalise_pair(single, "hh") == ({"prompt": [M("user", "Capital of France?")],
                                              "chosen": [M("assistant", "Paris.")],
                                              "rejected": [M("assistant", "Rome.")]}, None)
    turns = "\n\nHuman: 2+2?\n\nAssistant: 4\n\nHuman: and 3+3?\n\nAssistant: "
    multi = {"chosen": turns + "6", "rejected": turns + "7"}
    assert normalise_pair(multi, "hh") == ({"prompt": [M("user", "2+2?"), M("assistant", "4"), M("user", "and 3+3?")],
                                             "chosen": [M("assistant", "6")],
                                             "rejected": [M("assistant", "7")]}, None)


def test_implicit_pair_exact():
    system = M("system", "Be brief.")
    row = {"chosen": [system, M("user", "2+2?"), M("assistant", "4")],
           "rejected": [system, M("user", "2+2?"), M("assistant", "5")]}
    assert normalise_pair(row, "implicit") == ({"prompt": [system, M("user", "2+2?")],
                                                 "chosen": [M("assistant", "4")],
                                                 "rejected": [M("assistant", "5")]}, None)


def test_explicit_text_pair_exact():
    row = {"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5", "extra": 1}
    assert normalise_pair(row, "explicit") == ({"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5"}, None)


def test_detect_layout():
    assert detect_layout(["prompt", "chosen", "rejected"], {}, "w") == "explicit"
    assert detect_layout(["chosen", "rejected"], {"chosen": "\n\nHuman: a\n\nAssistant: b"}, "w") == "hh"
    assert detect_layout(["chosen", "rejected", "id"], {"chosen": [M("user", "a")]}, "w") == "implicit"
    with pytest.raises(UserError, match="must be conversations"):
        detect_layout(["chosen", "rejected"], {"chosen": "plain text"}, "w")


def test_ultrafeedback_layout_prompt_string_beside_full_conversations(jsonl):
    """HuggingFaceH4/ultrafeedback_binarized: `prompt` text, chosen/rejected conversations that include it."""
    row = {"prompt": "Name a colour.", "chosen": [M("user", "Name a colour."), M("assistant", "Blue.")],
           "rejected": [M("user", "Name a colour."), M("assistant", "Seven.")], "score_chosen": 8.0}
    pairs, dropped, kind = normalise_pairs(jsonl([row]), "w")
    assert kind == "chat" and not dropped
    assert pairs[0] == {"prompt": [M("user", "Name a colour.")], "chosen": [M("assistant", "Blue.")],
                        "rejected": [M("assistant", "Seven.")]}


# ------------------------------------------------------------------------------------------- drops and errors
def test_drops_are_counted_by_reason(jsonl):
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    ds = jsonl([good, {"prompt": "q", "chosen": "same", "rejected": " same "},
                {"prompt": "q", "chosen": "", "rejected": "b"},
                {"prompt": "q", "chosen": "a", "rejected": "   "}, good])
    pairs, dropped, kind = normalise_pairs(ds, "w")
    assert (len(pairs), kind) == (2, "text")
    assert dropped == {"chosen == rejected": 1, "empty answer": 2}


def test_implicit_drops_are_counted_by_reason(jsonl):
    def conv(question, answer):
        return [M("user", question), M("assistant", answer)]

    ds = jsonl([
        {"chosen": conv("q", "a"), "rejected": conv("q", "b")},
        {"chosen": conv("q", "a"), "rejected": conv("other q", "b")},  # no shared prompt
        {"chosen": conv("q", " "), "rejected": conv("q", "b")},  # empty answer
        {"chosen": conv("q", "a"), "rejected": conv("q", "a ")},  # equal once stripped
        {"chosen": conv("q", "a"), "rejected": conv("q", "b\n")},
    ])
    pairs, dropped, kind = normalise_pairs(ds, "w")
    assert (len(pairs), kind) == (2, "chat")
    assert dropped == {"no shared prompt": 1, "chosen == rejected": 1, "empty answer": 1}


@pytest.mark.parametrize("layout", ["implicit", "hh"])
def test_identical_conversations_count_as_equal(layout):
    conv = ([M("user", "q"), M("assistant", "a")] if layout == "implicit"
            else "\n\nHuman: q\n\nAssistant: a")
    assert normalise_pair({"chosen": conv, "rejected": conv}, layout) == (None, "chosen == rejected")


def test_all_dropped_is_an_error(jsonl):
    ds = jsonl([{"prompt": "q", "chosen": "a", "rejected": "a"}, {"prompt": "q", "chosen": "", "rejected": "b"}])
    with pytest.raises(UserError, match=r"^w: no usable pairs left \(1 chosen == rejected, 1 empty answer\)$"):
        normalise_pairs(ds, "w")


def test_no_rows_is_an_error():
    import datasets

    with pytest.raises(UserError, match="no rows"):
        normalise_pairs(datasets.Dataset.from_dict({"chosen": [], "rejected": []}), "w")


@pytest.mark.parametrize(("rows", "fragment"), [
    ([{"prompt": "q", "chosen": [M("assistant", "a")], "rejected": [M("assistant", "b")]}],
     "w: row 0: prompt, chosen and rejected must all be text or all be message lists"),
    ([{"prompt": [M("user", "q")], "chosen": [M("assistant", "a")], "rejected": [M("assistant", "b")]},
      {"prompt": [M("user", "q")], "chosen": [{"content": "a"}], "rejected": [M("assistant", "b")]}],
     "w: row 1: message lists need {role, content} items"),
    ([{"prompt": [{"content": "q"}], "chosen": [{"content": "a"}], "rejected": [{"content": "b"}]}],
     "w: row 0: message lists need {role, content} items"),
    ([{"prompt": "q", "chosen": "a", "rejected": "b"}, {"chosen": "a", "rejected": "b"}],
     "w: row 1: prompt, chosen and rejected must all be text"),
    ([{"chosen": [M("user", "q"), M("assistant", "a")], "rejected": [M("user", "q"), M("assistant", "b")]},
      {"chosen": [M("user", "q"), {"content": "a"}], "rejected": [M("user", "q"), M("assistant", "b")]}],
     "w: row 1: chosen and rejected must be message lists"),
    ([{"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"},
      {"chosen": "no turns here", "rejected": "\n\nHuman: q\n\nAssistant: b"}],
     "w: row 1: not in the"),
], ids=["text-prompt-list-answers", "missing-role-row-1", "missing-role-everywhere", "missing-prompt-row-1",
        "implicit-missing-role", "hh-not-hh"])
def test_malformed_rows_name_the_row(jsonl, rows, fragment):
    with pytest.raises(UserError) as err:
        normalise_pairs(jsonl(rows), "w")
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_hh_null_answer_names_the_row(jsonl):
    ds = jsonl([{"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"},
                {"chosen": None, "rejected": "\n\nHuman: q\n\nAssistant: b"}])
    with pytest.raises(UserError, match="w: row 1"):
        normalise_pairs(ds, "w")


def test_unknown_role_names_the_row(jsonl):
    ds = jsonl([{"prompt": [M("user", "q")], "chosen": [M("assistant", "a")], "rejected": [M("assistant", "b")]},
                {"prompt": [M("user", "q")], "chosen": [M("robot", "a")], "rejected": [M("assistant", "b")]}])
    with pytest.raises(UserError, match="w: row 1"):
        normalise_pairs(ds, "w")


def test_missing_columns_lists_found_columns(jsonl):
    with pytest.raises(UserError) as err:
        normalise_pairs(jsonl([{"question": "q", "good": "a", "bad": "b"}]), "w")
    msg = str(err.value)
    assert "needs `chosen` and `rejected` columns" in msg
    assert "found ['bad', 'good', 'question']" in msg and "columns:" in msg


# ------------------------------------------------------------------------------------------- prompts_only
def test_prompts_from_a_prompt_set():
    prompts, dropped, kind = prompts_only(load(PROMPTS), "p")
    raw = raw_rows(PROMPTS)
    assert (len(prompts), dropped, kind) == (len(raw), {}, "chat")
    assert prompts.column_names == ["prompt"]
    assert [r["prompt"] for r in prompts] == [r["prompt"] for r in raw]


def test_prompts_from_messages_drop_the_final_answer(jsonl):
    raw = raw_rows(CHAT)
    prompts, _, kind = prompts_only(load(CHAT), "chat")
    assert (len(prompts), kind) == (len(raw), "chat")
    for row, got in zip(raw, prompts, strict=True):
        assert got["prompt"] == row["messages"][:-1] and row["messages"][-1]["role"] == "assistant"
    ds = jsonl([{"messages": [M("system", "s"), M("user", "q"), M("assistant", "a")]},
                {"messages": [M("user", "q"), M("assistant", "a"), M("user", "follow-up")]}])
    assert prompts_only(ds, "w")[0]["prompt"] == [[M("system", "s"), M("user", "q")],
                                                  [M("user", "q"), M("assistant", "a"), M("user", "follow-up")]]


def test_prompts_from_text_prompts(jsonl):
    prompts, _, kind = prompts_only(jsonl([{"prompt": "Q: 1+1?\nA:", "completion": " 2"}]), "w")
    assert (prompts["prompt"], kind) == (["Q: 1+1?\nA:"], "text")


def test_prompts_from_preference_pairs():
    raw = raw_rows(PREFS_HH)
    prompts, dropped, kind = prompts_only(load(PREFS_HH), "hh")
    pairs, _, _ = normalise_pairs(load(PREFS_HH), "hh")
    assert (len(prompts), dropped, kind) == (len(raw), {}, "chat")
    assert prompts["prompt"] == pairs["prompt"]
    text, _, kind = prompts_only(load(PREFS_TEXT), "text")
    assert kind == "text" and text["prompt"] == [r["prompt"] for r in raw_rows(PREFS_TEXT)]


@pytest.mark.parametrize(("rows", "fragment"), [
    ([{"prompt": "q"}, {"prompt": "  "}], "w: row 1: empty prompt"),
    ([{"messages": [M("user", "q"), M("assistant", "a")]}, {"messages": [M("assistant", "a")]}],
     "w: row 1: empty prompt"),
    ([{"question": "q"}], "need a `prompt` or `messages` column"),
], ids=["blank-text", "answer-only-messages", "no-prompt-column"])
def test_prompts_errors(jsonl, rows, fragment):
    with pytest.raises(UserError) as err:
        prompts_only(jsonl(rows), "w")
    assert fragment in str(err.value)


def test_prompts_from_pairs_with_empty_prompt_is_an_error(jsonl):
    ds = jsonl([{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": " ", "chosen": "a", "rejected": "b"}])
    with pytest.raises(UserError, match="row 1: empty prompt"):
        prompts_only(ds, "w")


# ------------------------------------------------------------------------------------------- stage_data
def recipe_file(tmp_path: Path, data: dict, kind: str = "dpo", **stage) -> Path:
    """A one-stage recipe (model: tmp_path, never loaded) over the named sources."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "seed": 3, "base_model": {"path": str(tmp_path)},
        "data": {name: {"path": str(p)} if isinstance(p, Path) else p for name, p in data.items()},
        "stages": [{"name": "prefs", "kind": kind, "data": list(data), **stage}],
    }, sort_keys=False), encoding="utf-8")
    return path


def test_stage_data_pairs_with_eval_split_and_report(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path, {"prefs": PREFS}, eval_split=40))
    out = stage_data(recipe["data"], recipe["stages"][0], recipe["seed"], "pairs")
    n = len(raw_rows(PREFS))
    assert out["kind"] == "chat"
    assert (len(out["train"]), len(out["eval"])) == (n - 40, 40)
    report = out["report"]
    assert (report["train_rows"], report["eval_rows"], report["mixture"]) == (n - 40, 40, {"prefs": n})
    assert report["sources"]["prefs"] == {"path": str(PREFS), "format": "preference", "kind": "chat",
                                          "rows": n, "kept": n, "dropped": {}}
    assert out["train"].column_names == ["prompt", "chosen", "rejected"]
    train_prompts = {json.dumps(r["prompt"]) + json.dumps(r["chosen"]) for r in out["train"]}
    assert not train_prompts & {json.dumps(r["prompt"]) + json.dumps(r["chosen"]) for r in out["eval"]}

    recipe = load_recipe(recipe_file(tmp_path, {"prefs": PREFS}, eval_split=0.1))
    out = stage_data(recipe["data"], recipe["stages"][0], recipe["seed"], "pairs")
    assert (len(out["train"]), len(out["eval"])) == (n - round(n * 0.1), round(n * 0.1))


def test_stage_data_reports_drops(tmp_path, jsonl):
    path = jsonl([{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a", "rejected": "a"},
                  {"prompt": "r", "chosen": "c", "rejected": "d"}], as_path=True)
    recipe = load_recipe(recipe_file(tmp_path, {"p": path}))
    out = stage_data(recipe["data"], recipe["stages"][0], recipe["seed"], "pairs")
    assert out["report"]["sources"]["p"] | {"path": None} == {
        "path": None, "format": "preference", "kind": "text", "rows": 3, "kept": 2,
        "dropped": {"chosen == rejected": 1}}
    assert (out["report"]["train_rows"], out["report"]["eval_rows"], out["eval"]) == (2, 0, None)


def test_stage_data_pairs_of_two_kinds_is_an_error(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path, {"chat": PREFS, "text": PREFS_TEXT}))
    with pytest.raises(UserError, match=r"stage prefs: its data sources mix kinds \(chat=chat, text=text\)"):
        stage_data(recipe["data"], recipe["stages"][0], recipe["seed"], "pairs")


def test_stage_data_pairs_of_three_chat_layouts_mix(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path, {"a": PREFS, "b": PREFS_HH, "c": PREFS_IMPLICIT}, kind="reward"))
    out = stage_data(recipe["data"], recipe["stages"][0], recipe["seed"], "pairs")
    sizes = {name: len(raw_rows(p)) for name, p in (("a", PREFS), ("b", PREFS_HH), ("c", PREFS_IMPLICIT))}
    assert out["kind"] == "chat" and out["report"]["mixture"] == sizes
    assert len(out["train"]) == sum(sizes.values())


def test_stage_data_prompts(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path, {"prompts": PROMPTS, "prefs": PREFS}))
    out = stage_data(recipe["data"], recipe["stages"][0], recipe["seed"], "prompts")
    assert out["kind"] == "chat" and out["train"].column_names == ["prompt"]
    assert out["report"]["sources"]["prompts"]["format"] == "prompts"
    assert len(out["train"]) == len(raw_rows(PROMPTS)) + len(raw_rows(PREFS))


def ppo_recipe_file(tmp_path: Path, data: dict) -> Path:
    """sft -> reward -> ppo over `data` (validation needs the reward stage before a ppo stage)."""
    path = recipe_file(tmp_path, data)
    recipe = yaml.safe_load(path.read_text())
    names = list(data)
    recipe["stages"] = [{"kind": "sft", "data": names}, {"kind": "reward", "data": names},
                        {"name": "prefs", "kind": "ppo", "data": names}]
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_stage_data_prompts_through_a_valid_ppo_recipe(tmp_path):
    recipe = load_recipe(ppo_recipe_file(tmp_path, {"prompts": PROMPTS}))
    ppo = recipe["stages"][2]
    assert (ppo["from"], ppo["reward_model"]) == ("sft", "reward")
    out = stage_data(recipe["data"], ppo, recipe["seed"], "prompts")
    assert len(out["train"]) == len(raw_rows(PROMPTS)) and out["report"]["sources"]["prompts"]["dropped"] == {}


MAPPED_ROWS = [{"question": "2+2?", "good": " 4", "bad": " 5", "prompt": "ignored"},
               {"question": "3+3?", "good": " 6", "bad": " 7", "prompt": "ignored"}]


def test_column_mapping_in_stage_data(tmp_path, jsonl):
    """data.py's rename: {chosen: good, rejected: bad, prompt: question}; an existing `prompt` is replaced."""
    path = jsonl(MAPPED_ROWS, as_path=True)
    recipe = load_recipe(recipe_file(tmp_path, {"p": path}))
    recipe["data"]["p"]["columns"] = {"chosen": "good", "rejected": "bad", "prompt": "question"}
    out = stage_data(recipe["data"], recipe["stages"][0], recipe["seed"], "pairs")
    assert [dict(r) for r in out["train"].sort("prompt")] == [
        {"prompt": "2+2?", "chosen": " 4", "rejected": " 5"}, {"prompt": "3+3?", "chosen": " 6", "rejected": " 7"}]


def test_column_mapping_through_a_recipe(tmp_path, jsonl):
    path = jsonl(MAPPED_ROWS, as_path=True)
    recipe = load_recipe(recipe_file(tmp_path, {"p": {
        "path": str(path), "columns": {"chosen": "good", "rejected": "bad", "prompt": "question"}}}))
    out = stage_data(recipe["data"], recipe["stages"][0], recipe["seed"], "pairs")
    assert sorted(out["train"]["prompt"]) == ["2+2?", "3+3?"]
