"""Fuzzing the files a user hands the toolkit, through its public loaders: every input either loads into a
well-formed result or raises one UserError line; never another exception, never a multi-line message.

hypothesis generates structure-level mutations (a value swapped for another type, null, a nested list or
mapping, a deleted key) and byte-level ones (truncation, byte flips, inserted bytes, latin-1 re-encoding) of
valid inputs. Runs are derandomised (the same inputs every run) and bounded: 300 inputs per kind. The inputs
that found bugs are kept as explicit regression cases (an @example, or a test of their own at the end).
"""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import REPO
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from finetune import evaluation, squad
from finetune.errors import UserError
from finetune.recipe import load_recipe

FUZZ = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)


def paths_in(obj, prefix=()):
    """Every (path) to a value inside nested dicts/lists."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths_in(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths_in(v, (*prefix, i))


def mutate(obj, path, value, delete: bool):
    """A copy of `obj` with the value at `path` replaced by `value` (or deleted)."""
    obj = json.loads(json.dumps(obj))
    if not path:
        return value
    node = obj
    for key in path[:-1]:
        node = node[key]
    if delete and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return obj


@st.composite
def structural(draw, valid: dict):
    """`valid` with one value swapped for an arbitrary one (or deleted)."""
    path = draw(st.sampled_from(list(paths_in(valid))))
    return mutate(valid, path, draw(VALUES), draw(st.booleans()))


@st.composite
def byte_level(draw, text: str) -> bytes:
    """`text` truncated, with flipped or inserted bytes, or re-encoded as latin-1."""
    raw = text.encode("utf-8")
    op = draw(st.sampled_from(["truncate", "flip", "insert", "latin1"]))
    at = draw(st.integers(0, len(raw)))
    if op == "truncate":
        return raw[:at]
    if op == "flip":
        i = min(at, len(raw) - 1)
        return raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1:]
    if op == "insert":
        return raw[:at] + draw(st.binary(min_size=1, max_size=4)) + raw[at:]
    return (text + "# caf\u00e9\n").encode("latin-1", errors="replace")


def outcome(fn, *args):
    """Run a loader: its result, or None after one UserError line; anything else fails the test."""
    try:
        return fn(*args)
    except UserError as e:
        assert "\n" not in str(e).strip(), f"error message spans lines: {e!r}"
        return None


# ------------------------------------------------------------------------------------------------ recipes
def valid_recipe(model: str) -> dict:
    return {"name": "fuzz", "seed": 1, "base_model": {"path": model, "dtype": "float32"},
            "data": {"chat": {"path": str(REPO / "recipes/data/tiny_chat.jsonl")}},
            "stages": [{"name": "sft", "kind": "sft", "data": ["chat"], "peft": {"r": 4},
                        "train": {"learning_rate": 1e-3, "max_steps": 2}}],
            "eval": {"tasks": ["squad_v1_tiny"], "limit": 2}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Recipe validation checks only that the model folder exists; no weights are read."""
    return str(tmp_path_factory.mktemp("model"))


@FUZZ
@given(data=st.data())
@example(data=None)  # the valid recipe itself must load
@example(data="eval-task-null")  # found by this test: `eval: {tasks: [null]}` was an AttributeError
def test_fuzzed_recipes(data, model_dir, tmp_path):
    good = valid_recipe(model_dir)
    path = tmp_path / "recipe.yaml"  # one path for every example: its length must not change what is drawn
    if data is None:
        path.write_text(yaml.safe_dump(good))
        assert outcome(load_recipe, path) is not None
        return
    if data == "eval-task-null":
        path.write_text(yaml.safe_dump({**good, "eval": {"tasks": [None]}}))
        assert outcome(load_recipe, path) is None
        return
    if data.draw(st.booleans()):
        path.write_text(yaml.safe_dump(data.draw(structural(good)), allow_unicode=True))
    else:
        path.write_bytes(data.draw(byte_level(yaml.safe_dump(good, sort_keys=False))))
    recipe = outcome(load_recipe, path)
    if recipe is not None:
        assert isinstance(recipe["stages"], list) and all(isinstance(s["train"], dict) for s in recipe["stages"])


# -------------------------------------------------------------------------------------------- eval tasks
VALID_TASK = {"metric": "squad_v1", "data": "rows.jsonl", "format": "hf_rows", "prompt": "C: {context}\nQ: {question}",
              "chat_template": False, "few_shot": 0, "stop": ["\n"], "max_new_tokens": 8, "abstain": []}
ROW = {"id": "q1", "context": "Brazil won in 2002.", "question": "Who won?",
       "answers": {"text": ["Brazil"], "answer_start": [0]}}


@FUZZ
@given(data=st.data())
def test_fuzzed_eval_tasks(data, tmp_path):
    folder = tmp_path
    (folder / "rows.jsonl").write_text(json.dumps(ROW) + "\n")
    task = {**VALID_TASK, "data": str(folder / "rows.jsonl")}
    path = folder / "task.yaml"
    if data.draw(st.booleans()):
        path.write_text(yaml.safe_dump(data.draw(structural(task)), allow_unicode=True))
    else:
        path.write_bytes(data.draw(byte_level(yaml.safe_dump(task, sort_keys=False))))
    loaded = outcome(evaluation.check_task, str(path))
    if loaded is not None:
        assert isinstance(loaded["stop"], list) and isinstance(loaded["max_new_tokens"], int)
        loaded["prompt"].format(context="c", question="q")  # every placeholder is one the rows provide


# --------------------------------------------------------------------------------------------- eval data
OPEN_ROW = {"id": "n1", "question": "When?", "answer": ["1994", "in 1994"]}
SQUAD = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "Brazil won.", "qas": [
    {"id": "a1", "question": "Who?", "answers": [{"text": "Brazil", "answer_start": 0}]}]}]}]}


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(["hf_rows", "open_qa", "squad_json"]))
def test_fuzzed_eval_data(data, fmt, tmp_path):
    path = tmp_path / ("data.json" if fmt == "squad_json" else "data.jsonl")
    valid = {"hf_rows": ROW, "open_qa": OPEN_ROW, "squad_json": SQUAD}[fmt]
    text = json.dumps(valid) + ("\n" if fmt != "squad_json" else "")
    if data.draw(st.booleans()):
        path.write_text(json.dumps(data.draw(structural(valid)), ensure_ascii=False))
    else:
        path.write_bytes(data.draw(byte_level(text)))
    rows = outcome(evaluation.read_rows, str(path), fmt)
    for row in rows or []:
        assert isinstance(row["id"], str) and isinstance(row["context"], str) and row["question"].strip()
        assert isinstance(row["golds"], list) and all(isinstance(g, str) for g in row["golds"])


# ------------------------------------------------------------------------------------- `finetune score`
@FUZZ
@given(data=st.data(), which=st.sampled_from(["dataset", "predictions", "na_probs"]))
def test_fuzzed_score_files(data, which, tmp_path):
    folder = tmp_path
    files = {"dataset": SQUAD, "predictions": {"a1": "Brazil"}, "na_probs": {"a1": 0.1}}
    mutated = (data.draw(structural(files[which])) if data.draw(st.booleans())
               else data.draw(byte_level(json.dumps(files[which]))))
    for name, content in files.items():
        target = folder / f"{name}.json"
        if name == which:
            target.write_bytes(mutated if isinstance(mutated, bytes) else json.dumps(mutated).encode())
        else:
            target.write_text(json.dumps(content))
    dataset = outcome(squad.load_squad_dataset, str(folder / "dataset.json"))
    predictions = outcome(squad.load_predictions, str(folder / "predictions.json"))
    na_probs = outcome(squad.load_na_probs, str(folder / "na_probs.json"))
    if dataset is not None and predictions is not None:
        scores = outcome(squad.evaluate_v1, dataset, predictions)
        assert scores is None or 0 <= scores["exact_match"] <= 100
        if na_probs is not None:
            outcome(squad.evaluate_v2, dataset, predictions, na_probs)


# ------------------------------------------------------------------------------------------ training data
CHAT_ROWS = [{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
             {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                           {"role": "assistant", "content": "4"}]}]
PAIR_ROWS = [{"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello."}],
              "rejected": [{"role": "assistant", "content": "Go away."}]}]
CSV = "prompt,completion\nWhat is 2+2?,4\nCapital of France?,Paris\n"
PARQUET = (REPO / "recipes" / "data" / "tiny_text.parquet").read_bytes()


def load_data_file(path, raw: bytes, model_dir: str, purpose: str = "sft"):
    """Write `raw` to `path` and load it as a stage's only data source, as a run would."""
    from finetune.data import stage_data

    path.write_bytes(raw)
    recipe_path = path.with_name("recipe.yaml")
    recipe_path.write_text(yaml.safe_dump({"base_model": {"path": model_dir}, "data": {"d": {"path": str(path)}},
                                           "stages": [{"kind": "dpo" if purpose == "pairs" else "sft",
                                                       "data": ["d"]}]}))
    recipe = load_recipe(recipe_path)
    return stage_data(recipe["data"], recipe["stages"][0], recipe["seed"], purpose)


@FUZZ
@given(data=st.data(), kind=st.sampled_from(["chat.jsonl", "pairs.jsonl", "alpaca.json", "prompt.csv",
                                             "text.parquet"]))
def test_fuzzed_training_data(data, kind, model_dir, tmp_path, monkeypatch):
    """A data file through the stage's own loading (datasets), format detection and normalisation."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / kind
    if kind == "prompt.csv":
        raw = data.draw(byte_level(CSV))
    elif kind == "text.parquet":
        raw = bytearray(PARQUET)
        for _ in range(data.draw(st.integers(1, 4))):  # flip bytes, or cut the file short
            at = data.draw(st.integers(0, len(raw) - 1))
            raw[at] ^= data.draw(st.integers(1, 255))
        raw = bytes(raw[:data.draw(st.integers(0, len(raw)))] if data.draw(st.booleans()) else raw)
    elif kind == "alpaca.json":
        rows = [{"instruction": "Add.", "input": "2+2", "output": "4"}]
        raw = (json.dumps(data.draw(structural(rows))).encode() if data.draw(st.booleans())
               else data.draw(byte_level(json.dumps(rows))))
    else:
        rows = PAIR_ROWS if kind == "pairs.jsonl" else CHAT_ROWS
        if data.draw(st.booleans()):
            mutated = data.draw(structural(rows))
            lines = mutated if isinstance(mutated, list) else [mutated]
            raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines).encode()
        else:
            raw = data.draw(byte_level("".join(json.dumps(r) + "\n" for r in rows)))
    out = outcome(load_data_file, path, raw, model_dir, "pairs" if kind == "pairs.jsonl" else "sft")
    if out is not None:
        assert len(out["train"]) > 0


@pytest.mark.parametrize("raw", [b"null\n", b"7", b"[1, 2]", b'[{"text": "a"}, "b"]'])
def test_json_documents_that_are_not_rows(raw, model_dir, tmp_path, monkeypatch):
    """Found by test_fuzzed_training_data: a JSON file holding `null` made pyarrow crash the whole process
    (a segfault, no error at all); scalars and non-object array items are now one line each."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="(holds a JSON|must be an object)"):
        load_data_file(tmp_path / "rows.jsonl", raw, model_dir)


# ---------------------------------------------------------------------------------------- chat templates
TEMPLATE = (REPO / "recipes" / "templates" / "smollm2_training.jinja").read_text()


@FUZZ
@given(data=st.data())
def test_fuzzed_chat_templates(data, tmp_path):
    """A `.jinja` template: byte-level mutations, or a Jinja delimiter/keyword removed or doubled."""
    from finetune.userfiles import read_chat_template

    if data.draw(st.booleans()):
        raw = data.draw(byte_level(TEMPLATE))
    else:
        token = data.draw(st.sampled_from(["{%", "%}", "{{", "}}", "endif", "endfor", "generation", "messages"]))
        spots = [i for i in range(len(TEMPLATE)) if TEMPLATE.startswith(token, i)]
        at = data.draw(st.sampled_from(spots))
        raw = (TEMPLATE[:at] + (token * 2 if data.draw(st.booleans()) else "") + TEMPLATE[at + len(token):]).encode()
    path = tmp_path / "t.jinja"
    path.write_bytes(raw)
    text = outcome(read_chat_template, path)
    assert text is None or isinstance(text, str)


# ------------------------------------------------------------------------------------------ command lines
ARG_TOKENS = st.one_of(
    st.sampled_from(["--output-dir", "--only", "--force", "--task", "--limit", "--batch-size", "--max-new-tokens",
                     "--per-question", "--na-prob-thresh", "-h", "--", "=", "a=b", "stages.sft.train.max_steps=2",
                     "stages.0.peft.r=0", "eval.tasks=[squad_v1_tiny]", "seed=abc", "data.chat=null", ".=1",
                     "stages.9.kind=sft", "base_model=[]", "squad_v1_tiny", "0", "-1", "1e9", "nan", ""]),
    st.text(min_size=0, max_size=12))


@FUZZ
@given(command=st.sampled_from(["validate", "score", "eval"]), args=st.lists(ARG_TOKENS, max_size=6))
@example(command="validate", args=["\n"])  # found by this test: an override holding a newline broke the line
@example(command="validate", args=["\x1e"])  # and a record separator, which str.splitlines() also breaks at
def test_fuzzed_command_lines(command, args, model_dir, tmp_path, capsys, monkeypatch):
    """Random arguments to `finetune validate / score / eval`: exit 0, or exit 2 ending in one error line."""
    from finetune.cli import main

    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(valid_recipe(model_dir)))
    argv = {"validate": [command, str(recipe)], "score": [command, "squad_v1"],
            "eval": [command, str(tmp_path / "no-model")]}[command] + args
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: usage, then its one error line (or --help, exit 0)
        code = e.code
    out, err = capsys.readouterr()
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code == 2:
        last = err.strip().split("\n")[-1]  # not splitlines(): it also breaks at \x1c-\x1e, \x85, ...
        assert last.startswith("error: ") or ": error: " in last, (argv, err)


@pytest.mark.parametrize("offset, mask", [(27, 128), (2673, 1)], ids=["string-bytes", "footer-metadata"])
def test_corrupted_parquet_is_one_line(offset, mask, model_dir, tmp_path, monkeypatch):
    """Found by test_fuzzed_training_data: one flipped byte in a Parquet file's string data was a
    UnicodeDecodeError traceback from the first row read; one in its footer, a thrift OSError traceback."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    raw = bytearray(PARQUET)
    raw[offset] ^= mask
    with pytest.raises(UserError, match="cannot read data.d"):
        load_data_file(tmp_path / "t.parquet", bytes(raw), model_dir)
