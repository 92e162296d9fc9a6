"""Recipes: loading, `extends:`, overrides, validation errors, defaults, and the static TRL field reader.

Everything here is fast and model-free: `base_model.path` only has to be an existing folder, so the tests use
`tmp_path`. The one slow test (`test_static_fields_match_real_trl_dataclasses`) imports trl once.

The error corpus (BAD_RECIPES) runs every malformed recipe through the real CLI, `finetune validate`, and
checks the user sees exactly one line, `error: <file>: <key>: <what is wrong>`, and no traceback.
"""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest
import yaml

from finetune.cli import main
from finetune.errors import UserError
from finetune.recipe import apply_override, load_recipe
from finetune.targets import recipe_files
from finetune.trl_fields import CONFIG_CLASSES, check_value_type, config_fields

REPO = Path(__file__).resolve().parent.parent
CHAT = REPO / "recipes" / "data" / "tiny_chat.jsonl"
ALPACA = REPO / "recipes" / "data" / "tiny_alpaca.json"

# ------------------------------------------------------------------------------------------- the corpus
# Each case(): an id, the recipe text (or {file name: text} when it needs several files, the first being the
# one validated), and the fragments the one-line error must contain. In the text, $MODEL is an existing
# folder, $CHAT the shipped chat data and $TMP the test's own folder. Stage-level cases start from GOOD.

GOOD = """
base_model: {path: $MODEL}
data:
  chat: {path: $CHAT}
stages:
  - kind: sft
    data: [chat]
"""


def stage(body: str, kind: str = "sft") -> str:
    """A recipe whose single stage is `kind: <kind>, data: [chat]` plus the YAML lines in `body`."""
    lines = "".join(f"    {line}\n" for line in dedent(body).strip().splitlines())
    return GOOD.replace("    data: [chat]\n", f"    data: [chat]\n{lines}").replace("kind: sft", f"kind: {kind}")


def case(case_id: str, content: str | dict[str, str], *fragments: str):
    """One corpus entry: the recipe file(s) and the fragments its one-line error must contain."""
    return pytest.param(content, list(fragments), id=case_id)


def top(body: str) -> str:
    """GOOD with top-level YAML lines: a top-level key given here replaces GOOD's (a repeated key is an error)."""
    body = dedent(body)
    given = {line.split(":", 1)[0] for line in body.splitlines() if line[:1].isalpha() and ":" in line}
    kept, skipping = [], False
    for line in GOOD.splitlines(keepends=True):
        if line[:1].isalpha():
            skipping = line.split(":", 1)[0] in given
        if not skipping:
            kept.append(line)
    return "".join(kept) + body


BAD_RECIPES = [
    # --- reading the file
    case("malformed-yaml-bracket", "base_model:\n  path: $MODEL\n  dtype: [float32\nseed: 1\n",
         "malformed YAML at line 4", "expected ',' or ']'"),
    case("malformed-yaml-tab", "seed: 1\nbase_model:\n\tpath: $MODEL\n", "malformed YAML at line 3", "'\\t'"),
    case("empty-file", "", "recipe is empty"),
    case("only-comments", "# nothing here\n", "recipe is empty"),
    # --- counts and sizes below 1
    case("eval-batch-size-zero", top("eval: {tasks: [squad_v1_tiny], batch_size: 0}\n"),
         "eval.batch_size: must be at least 1, got 0"),
    case("eval-limit-negative", top("eval: {tasks: [squad_v1_tiny], limit: -1}\n"), "eval.limit: must be at least 1"),
    case("lora-rank-zero", stage("peft: {r: 0}"), "stages[0].peft.r: must be at least 1, got 0"),
    case("max-rows-zero", GOOD.replace("  chat: {path: $CHAT}", "  chat: {path: $CHAT, max_rows: 0}"),
         "data.chat.max_rows: must be at least 1, got 0"),
    # --- YAML quirks: a repeated key would silently win; pathological structure would crash the parser
    case("duplicate-top-level-key", GOOD + "seed: 1\nseed: 2\n", "duplicate key 'seed' (lines 8 and 9)"),
    case("duplicate-train-key", stage("train: {learning_rate: 0.1, learning_rate: 0.2}"),
         "duplicate key 'learning_rate' (lines 8 and 8)"),
    case("duplicate-data-source", GOOD.replace("  chat: {path: $CHAT}\n",
                                               "  chat: {path: $CHAT}\n  chat: {path: x.json}\n"),
         "duplicate key 'chat' (lines 4 and 5)"),
    case("deep-nesting", GOOD + "seed: " + "[" * 5000 + "]" * 5000 + "\n", "malformed YAML", "nesting"),
    case("alias-bomb", GOOD + "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True)),
        "malformed YAML", "aliases are expanded"),
    case("top-level-list", "- base_model: {path: $MODEL}\n", "a recipe must be a YAML mapping, got list"),
    case("top-level-scalar", "just some words\n", "a recipe must be a YAML mapping, got str"),
    # --- required sections and keys
    case("missing-base_model", "data: {chat: {path: $CHAT}}\nstages: [{kind: sft, data: [chat]}]\n",
         "base_model.path: required key missing"),
    case("missing-base_model.path", top("base_model: {dtype: float32}\n"), "base_model.path: required key missing"),
    case("null-base_model.path", top("base_model: {path: null}\n"), "base_model.path: must not be empty"),
    case("missing-stage-kind", top("stages: [{data: [chat]}]\n"), "stages[0].kind: required key missing"),
    case("missing-data-path", top("data: {chat: {format: messages}}\n"), "data.chat.path: required key missing"),
    # --- unknown keys, with did-you-mean
    case("unknown-top-level-key", top("stagse: []\n"), "stagse: unknown key; did you mean 'stages'?"),
    case("unknown-base_model-key", top("base_model: {path: $MODEL, dtyp: float32}\n"),
         "base_model.dtyp: unknown key; did you mean 'dtype'?"),
    case("unknown-data-source-key", top("data: {chat: {path: $CHAT, fromat: messages}}\n"),
         "data.chat.fromat: unknown key; did you mean 'format'?"),
    case("unknown-stage-key", stage("eval_splt: 0.1"), "stages[0].eval_splt: unknown key; did you mean 'eval_split'?"),
    case("unknown-peft-key", stage("peft: {rank: 8}"), "stages[0].peft.rank: unknown key"),
    # --- TRL `train:` blocks, checked against the stage kind's own config dataclass
    case("sft-misspelt-trl-field", stage("train: {learnig_rate: 0.001}"),
         "stages[0].train.learnig_rate: unknown SFTConfig field; did you mean 'learning_rate'?"),
    case("dpo-misspelt-trl-field", stage("train: {betta: 0.1}", kind="dpo"),
         "stages[0].train.betta: unknown DPOConfig field; did you mean 'beta'?"),
    case("reward-sft-only-field", stage("train: {packing: true}", kind="reward"),
         "stages[0].train.packing: unknown RewardConfig field"),
    case("trl-str-for-float", stage("train: {learning_rate: fast}"),
         "stages[0].train.learning_rate: SFTConfig expects float or int, got 'fast'"),
    case("trl-bool-for-float", stage("train: {num_train_epochs: true}"),
         "stages[0].train.num_train_epochs: SFTConfig expects float or int, got True"),
    case("trl-str-for-int", stage("train: {max_steps: '10'}"), "stages[0].train.max_steps: SFTConfig expects int"),
    case("train-output_dir-owned", stage("train: {output_dir: somewhere}"),
         "stages[0].train.output_dir: set by the toolkit", "top-level `output_dir`"),
    case("train-seed-owned", stage("train: {seed: 3}"), "stages[0].train.seed: set by the toolkit"),
    case("train-not-a-mapping", stage("train: [1]"), "stages[0].train: expected mapping, got [1]"),
    # --- schema types and choices
    case("seed-not-int", top("seed: abc\n"), "seed: expected integer, got 'abc'"),
    case("seed-bool", top("seed: true\n"), "seed: expected integer, got True"),
    case("peft-r-float", stage("peft: {r: 1.5}"), "stages[0].peft.r: expected integer, got 1.5"),
    case("trust_remote_code-str", top("base_model: {path: $MODEL, trust_remote_code: 'yes'}\n"),
         "base_model.trust_remote_code: expected true/false, got 'yes'"),
    case("bad-dtype", top("base_model: {path: $MODEL, dtype: float64}\n"),
         "base_model.dtype: 'float64' is not one of auto, float32, bfloat16, float16"),
    case("bad-kind", GOOD.replace("kind: sft", "kind: sft2"),
         "stages[0].kind: 'sft2' is not one of", "did you mean 'sft'?"),
    case("bad-peft-method", stage("peft: {method: loraa}"),
         "stages[0].peft.method: 'loraa' is not one of lora, dora, rslora, prompt_tuning, p_tuning, "
         "prefix_tuning; did you mean 'lora'?"),
    case("bad-quant-bits", stage("peft: {}\nquantization: {bits: 3}"),
         "stages[0].quantization.bits: '3' is not one of 4, 8"),
    case("bad-data-format", top("data: {chat: {path: $CHAT, format: chatml}}\n"),
         "data.chat.format: 'chatml' is not one of"),
    case("stages-not-a-list", top("stages: {kind: sft, data: [chat]}\n"), "stages: expected a list, got dict"),
    case("stage-not-a-mapping", top("stages: [sft]\n"), "stages[0]: expected a mapping, got str"),
    case("data-not-a-mapping", top("data: [$CHAT]\n"), "data: expected a mapping of names, got list"),
    # --- cross-checks
    case("empty-stages", top("stages: []\n"), "stages: a recipe needs at least one stage"),
    case("unknown-data-source", GOOD.replace("data: [chat]", "data: [chta]"),
         "stages[0].data: unknown data source 'chta'; did you mean 'chat'?"),
    case("no-data-sources", GOOD.replace("data: [chat]", "data: []"), "stages[0].data: name at least one data source"),
    case("zero-mixture-weight", GOOD.replace("data: [chat]", "data: {chat: 0}"),
         "stages[0].data.chat: weight must be a positive number, got 0"),
    case("negative-mixture-weight", GOOD.replace("data: [chat]", "data: {chat: -1.5}"),
         "stages[0].data.chat: weight must be a positive number, got -1.5"),
    case("missing-data-file", top("data: {chat: {path: $TMP/missing.jsonl}}\n"),
         "data.chat.path: data '", "missing.jsonl' not found"),
    case("missing-local-model", top("base_model: {path: ./no-such-model}\n"),
         "base_model.path: model './no-such-model' not found"),
    case("missing-chat-template", top("base_model: {path: $MODEL, chat_template: $TMP/nope.jinja}\n"),
         "base_model.chat_template: file '", "nope.jinja' not found"),
    case("missing-eval-task-file", top("eval: {tasks: [$TMP/nope.yaml]}\n"), "eval.tasks[0]: task file '",
         "not found"),
    case("owned-loss-flag", stage("train: {assistant_only_loss: true}"),  # refused by validate, not at training
         "stages[0].train.assistant_only_loss: set the stage's `loss:` instead"),
    case("missing-training-chat-template", top("base_model: {path: $MODEL, training_chat_template: $TMP/no.jinja}\n"),
         "base_model.training_chat_template: file '", "no.jinja' not found"),
    case("quantization-without-peft", stage("quantization: {bits: 4}"),
         "stages[0].quantization: a quantised base can only be trained through an adapter", "peft"),
    case("duplicate-stage-names", top("stages: [{kind: sft, data: [chat]}, {kind: sft, data: [chat]}]\n"),
         "stages[1].name: duplicate stage name 'sft'"),
    case("eval_split-1.5", stage("eval_split: 1.5"), "stages[0].eval_split: use a fraction in [0, 1)"),
    case("eval_split-negative", stage("eval_split: -0.1"), "stages[0].eval_split: use a fraction in [0, 1)"),
    case("non-standard-column", top("data: {chat: {path: $CHAT, columns: {answer: reply}}}\n"),
         "data.chat.columns.answer: not a standard column", "completion"),
    case("misspelt-column", top("data: {chat: {path: $CHAT, columns: {promt: question}}}\n"),
         "data.chat.columns.promt: not a standard column", "did you mean 'prompt'?"),
    # --- extends
    case("extends-missing-file", top("extends: parent.yaml\n"),
         "extends: parent.yaml not found (paths are relative to the recipe's folder)"),
    case("extends-not-a-string", top("extends: [a.yaml]\n"), "extends: expected a path to a recipe, got list"),
    case("extends-cycle", {"a.yaml": "extends: b.yaml\nseed: 1\n", "b.yaml": "extends: a.yaml\nseed: 2\n"},
         "extends: cycle (", "a.yaml -> ", "b.yaml -> "),
    case("extends-self", {"self.yaml": top("extends: self.yaml\n")}, "extends: cycle ("),
    # --- once crashes with a traceback, now one-line errors
    case("stage-data-list-of-mappings", GOOD.replace("data: [chat]", "data: [{chat: 3}]"), "stages[0].data",
         "map names to weights"),
    case("eval_split-inf", stage("eval_split: .inf"), "stages[0].eval_split"),
    case("eval_split-nan", stage("eval_split: .nan"), "stages[0].eval_split"),
    case("non-string-column-key", top("data: {chat: {path: $CHAT, columns: {1: question}}}\n"),
         "data.chat.columns.1", "not a standard column"),
]


def _fill(text: str, tmp_path: Path) -> str:
    return text.replace("$MODEL", str(tmp_path)).replace("$CHAT", str(CHAT)).replace("$TMP", str(tmp_path))


def _write_case(content: str | dict[str, str], tmp_path: Path) -> Path:
    """Write the case's file(s) into tmp_path; return the recipe to validate (the first file)."""
    files = content if isinstance(content, dict) else {"bad-recipe.yaml": content}
    for name, text in files.items():
        (tmp_path / name).write_text(_fill(text, tmp_path), encoding="utf-8")
    return tmp_path / next(iter(files))


def validate_cli(capsys, recipe: Path, *overrides: str) -> tuple[int, str, str]:
    """Run `finetune validate RECIPE [OVERRIDES]` in-process; return (exit code, stdout, stderr)."""
    rc = main(["validate", str(recipe), *overrides])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, out: str, err: str, recipe: Path, fragments: list[str]) -> None:
    assert "Traceback" not in err, err
    assert rc == 2, f"expected exit code 2, got {rc}\nstdout: {out}\nstderr: {err}"
    assert out == "", f"nothing should go to stdout on an error, got {out!r}"
    assert err.endswith("\n") and err.count("\n") == 1, f"error must be exactly one line, got {err!r}"
    assert err.startswith(f"error: {recipe}: "), f"error must start with 'error: {recipe}: ', got {err!r}"
    for fragment in fragments:
        assert fragment in err, f"expected {fragment!r} in the error, got {err!r}"


@pytest.mark.parametrize(("content", "fragments"), BAD_RECIPES)
def test_bad_recipe_gives_one_line_error(content, fragments, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in a recipe are from the working directory
    recipe = _write_case(content, tmp_path)
    rc, out, err = validate_cli(capsys, recipe)
    assert_one_line_error(rc, out, err, recipe, fragments)


def test_recipe_that_is_not_utf8_names_the_byte(tmp_path, capsys):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes(_fill(GOOD, tmp_path).encode() + "# caf\u00e9\n".encode("latin-1"))
    rc, out, err = validate_cli(capsys, recipe)
    assert_one_line_error(rc, out, err, recipe, ["not UTF-8: byte 0xe9 at offset", "(line 8)"])


def test_merge_keys_still_override(tmp_path, capsys):
    recipe = tmp_path / "merge.yaml"
    text = GOOD.replace("stages:", "defaults: &d {learning_rate: 0.1, max_steps: 2}\nstages:")
    text = text.replace("    data: [chat]\n", "    data: [chat]\n    train: {<<: *d, learning_rate: 0.2}\n")
    recipe.write_text(_fill(text.replace("defaults:", "x-defaults:"), tmp_path), encoding="utf-8")
    from finetune.userfiles import read_yaml

    assert read_yaml(recipe)["stages"][0]["train"] == {"learning_rate": 0.2, "max_steps": 2}


def test_corpus_sanity(tmp_path, monkeypatch):
    """Sanity of the corpus itself: GOOD (and stage()/top() with harmless bodies) validate."""
    monkeypatch.chdir(tmp_path)
    assert len(BAD_RECIPES) >= 20
    ids = [c.id for c in BAD_RECIPES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    for text in (GOOD, stage("eval_split: 0.1"), stage("train: {beta: 0.2}", kind="dpo"), top("seed: 3\n")):
        load_recipe(_write_case(text, tmp_path))


def test_missing_recipe_file_and_directory(tmp_path, capsys):
    rc, out, err = validate_cli(capsys, tmp_path / "nope.yaml")
    assert (rc, out) == (2, "")
    assert err == f"error: {tmp_path / 'nope.yaml'}: recipe file not found\n"
    rc, out, err = validate_cli(capsys, tmp_path)
    assert (rc, out) == (2, "")
    assert err == f"error: {tmp_path}: is a directory; give a recipe .yaml file\n"


# ------------------------------------------------------------------------------------------- extends
def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def parent_recipe(model: Path) -> dict:
    return {
        "seed": 3,
        "base_model": {"path": str(model), "dtype": "float32", "trust_remote_code": True},
        "data": {"chat": {"path": str(CHAT)}, "alpaca": {"path": str(ALPACA)}},
        "stages": [{"name": "sft", "kind": "sft", "data": {"chat": 3, "alpaca": 1},
                    "peft": {"r": 8}, "train": {"learning_rate": 1.0e-3, "max_steps": 4}}],
        "eval": {"tasks": ["squad_v1_tiny"], "limit": 5},
    }


def test_extends_deep_merges(tmp_path, monkeypatch):
    """Child overrides nested keys, keeps the parent's others; stages merge by name, new ones are appended."""
    write_yaml(tmp_path / "base" / "parent.yaml", parent_recipe(tmp_path))
    child = write_yaml(tmp_path / "child.yaml", {
        "extends": "base/parent.yaml",
        "base_model": {"dtype": "bfloat16"},
        "stages": [{"name": "sft", "train": {"max_steps": 9}},
                   {"name": "prefs", "kind": "dpo", "data": ["chat"], "train": {"beta": 0.2}}],
        "eval": {"tasks": ["squad_v2_tiny"]},
    })
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # extends is relative to the recipe's folder, not the working directory

    r = load_recipe(child)
    assert r["seed"] == 3
    assert r["base_model"]["dtype"] == "bfloat16"
    assert r["base_model"]["path"] == str(tmp_path) and r["base_model"]["trust_remote_code"] is True
    assert set(r["data"]) == {"chat", "alpaca"}
    assert [(s["name"], s["kind"]) for s in r["stages"]] == [("sft", "sft"), ("prefs", "dpo")]
    sft, prefs = r["stages"]
    assert sft["train"] == {"learning_rate": 1.0e-3, "max_steps": 9}
    assert sft["peft"]["r"] == 8 and sft["data"] == {"chat": 3.0, "alpaca": 1.0}
    assert prefs["train"] == {"beta": 0.2} and prefs["peft"] is None
    assert r["eval"]["tasks"] == ["squad_v2_tiny"], "non-stage lists are replaced, not concatenated"
    assert r["eval"]["limit"] == 5
    assert r.get("extends") is None, "extends is consumed while loading"
    assert r["name"] == "child", "name defaults to the child's file stem, not the parent's"


def test_extends_chain_and_null_removes_a_section(tmp_path):
    """grandparent <- parent <- child, each relative to its own folder; `peft: null` drops the inherited adapter."""
    write_yaml(tmp_path / "a" / "b" / "grand.yaml", parent_recipe(tmp_path))
    write_yaml(tmp_path / "a" / "parent.yaml", {"extends": "b/grand.yaml", "seed": 5})
    child = write_yaml(tmp_path / "c" / "child.yaml", {
        "extends": "../a/parent.yaml", "stages": [{"name": "sft", "peft": None}]})
    r = load_recipe(child)
    assert r["seed"] == 5
    assert r["stages"][0]["peft"] is None
    assert r["stages"][0]["train"]["max_steps"] == 4


def test_extends_stage_named_by_kind_merges(tmp_path):
    """A parent stage without `name` is called by its kind, so a child's `name: sft` merges into it."""
    parent = parent_recipe(tmp_path)
    del parent["stages"][0]["name"]
    write_yaml(tmp_path / "p.yaml", parent)
    child = write_yaml(tmp_path / "c.yaml", {"extends": "p.yaml", "stages": [{"name": "sft", "eval_split": 0.2}]})
    (s,) = load_recipe(child)["stages"]
    assert s["name"] == "sft" and s["eval_split"] == 0.2 and s["train"]["max_steps"] == 4


# ------------------------------------------------------------------------------------------- overrides
@pytest.fixture
def good_recipe(tmp_path) -> Path:
    return write_yaml(tmp_path / "good.yaml", parent_recipe(tmp_path))


def test_overrides_are_parsed_as_yaml(good_recipe):
    r = load_recipe(good_recipe, ["seed=7", "stages.sft.train.learning_rate=1.0e-4", "stages.0.train.max_steps=3",
                                  "base_model.trust_remote_code=false",
                                  "stages.sft.peft.target_modules=[q_proj, v_proj]",
                                  "eval.limit=null"])
    assert r["seed"] == 7 and type(r["seed"]) is int
    train = r["stages"][0]["train"]
    assert train["learning_rate"] == pytest.approx(1e-4) and isinstance(train["learning_rate"], float)
    assert train["max_steps"] == 3 and type(train["max_steps"]) is int
    assert r["base_model"]["trust_remote_code"] is False
    assert r["stages"][0]["peft"]["target_modules"] == ["q_proj", "v_proj"]
    assert r["eval"]["limit"] is None
    assert r["source"]["overrides"][0] == "seed=7"


def test_override_exponent_without_dot_is_a_float(good_recipe):
    # YAML 1.1 reads `1e-4` as a string; recipes read it as the float everyone means.
    r = load_recipe(good_recipe, ["stages.sft.train.learning_rate=1e-4", "stages.sft.train.weight_decay=5E-2"])
    assert r["stages"][0]["train"]["learning_rate"] == pytest.approx(1e-4)
    assert r["stages"][0]["train"]["weight_decay"] == pytest.approx(5e-2)


def test_exponent_without_dot_in_recipe_file_is_a_float(tmp_path):
    path = _write_case(stage("train: {learning_rate: 2e-5}"), tmp_path)
    assert load_recipe(path)["stages"][0]["train"]["learning_rate"] == pytest.approx(2e-5)


def test_empty_train_block_means_trl_defaults(tmp_path):
    path = _write_case(stage("train:"), tmp_path)
    assert load_recipe(path)["stages"][0]["train"] == {}


def test_override_creates_sections_and_new_keys(good_recipe):
    r = load_recipe(good_recipe, ["stages.sft.quantization.bits=8", "output_dir=/tmp/elsewhere"])
    assert r["stages"][0]["quantization"]["bits"] == 8
    assert r["stages"][0]["quantization"]["quant_type"] == "nf4"
    assert r["output_dir"] == "/tmp/elsewhere"


@pytest.mark.parametrize(("override", "fragment"), [
    ("stages.sft.train.learnig_rate=0.001", "stages[0].train.learnig_rate: unknown SFTConfig field; "
                                            "did you mean 'learning_rate'?"),
    ("base_model.dtyp=float32", "base_model.dtyp: unknown key; did you mean 'dtype'?"),
    ("stages.sft.kind=dop", "stages[0].kind: 'dop' is not one of"),
    ("seed=abc", "seed: expected integer, got 'abc'"),
], ids=["trl-field", "schema-key", "choice", "type"])
def test_override_mistakes_are_caught_by_validation(good_recipe, capsys, override, fragment):
    rc, out, err = validate_cli(capsys, good_recipe, override)
    assert_one_line_error(rc, out, err, good_recipe, [fragment])


@pytest.mark.parametrize(("override", "fragment"), [
    ("seed", "override 'seed' must look like key.sub=value"),
    ("=3", "override '=3' has no key"),
    ("stages.sfx.train.max_steps=1", "override stages.sfx: no stage named 'sfx'; did you mean 'sft'?"),
    ("stages.5.train.max_steps=1", "override stages.5: index out of range (the list has 1 items)"),
    ("stages.0=1", "override stages.0: name a key inside the list item"),
    ("seed.x=1", "override seed.x: parent is a value, not a section"),
    ("seed.x.y=1", "override seed.x.y: seed is a value, not a section"),
], ids=["no-equals", "no-key", "stage-name", "stage-index", "list-item", "value-parent", "value-section"])
def test_bad_override_is_a_one_line_error(good_recipe, capsys, override, fragment):
    rc, out, err = validate_cli(capsys, good_recipe, override)
    assert "Traceback" not in err
    assert (rc, out) == (2, "")
    assert err.startswith("error: command line: ") and err.count("\n") == 1, err
    assert fragment in err, err


def test_apply_override_in_place():
    recipe = {"stages": [{"kind": "sft"}, {"name": "b", "kind": "dpo", "train": None}]}
    apply_override(recipe, "stages.b.train.beta=0.5")
    apply_override(recipe, "a.b.c=x=y")  # only the first '=' splits
    apply_override(recipe, "empty=")
    assert recipe["stages"][1]["train"] == {"beta": 0.5}
    assert recipe["a"] == {"b": {"c": "x=y"}}
    assert recipe["empty"] == ""
    with pytest.raises(UserError, match="must look like key.sub=value"):
        apply_override(recipe, "stages.b.train.beta")


# ------------------------------------------------------------------------------------------- defaults
def test_defaults_are_filled_in(tmp_path):
    recipe = write_yaml(tmp_path / "my-run.yaml", {
        "base_model": {"path": str(tmp_path)},
        "data": {"chat": {"path": str(CHAT)}},
        "stages": [{"kind": "sft", "data": ["chat"]}, {"kind": "dpo", "data": {"chat": 2}}],
    })
    r = load_recipe(recipe)
    assert r["seed"] == 42
    assert r["name"] == "my-run"
    assert r["output_dir"] == str(Path("runs") / "my-run")
    assert r["base_model"] == {"path": str(tmp_path), "revision": None, "dtype": "auto", "attn_implementation": None,
                               "trust_remote_code": False, "tokenizer": None, "chat_template": None,
                               "training_chat_template": None, "gguf_file": None}
    assert r["data"]["chat"] == {"path": str(CHAT), "format": "auto", "columns": {}, "split": "train",
                                 "subset": None, "revision": None, "max_rows": None}
    sft, dpo = r["stages"]
    assert (sft["name"], dpo["name"]) == ("sft", "dpo"), "a stage's name defaults to its kind"
    assert sft["data"] == {"chat": None} and dpo["data"] == {"chat": 2.0}
    assert sft["audit"] == {"enabled": True, "max_truncated_share": 0.05, "require_eos": True}
    assert (sft["eval_split"], sft["max_rows"], sft["loss"], sft["train"]) == (0, None, "auto", {})
    assert sft["peft"] is None and sft["quantization"] is None
    assert r["eval"] is None
    assert r["source"] == {"file": str(recipe), "overrides": []}


def test_section_defaults_when_present_but_empty(tmp_path):
    recipe = write_yaml(tmp_path / "r.yaml", {
        "base_model": {"path": str(tmp_path)}, "data": {"chat": {"path": str(CHAT)}},
        "stages": [{"kind": "sft", "data": ["chat"], "peft": {}, "quantization": {}}], "eval": {}})
    r = load_recipe(recipe)
    s = r["stages"][0]
    assert s["peft"] == {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear",
                         "modules_to_save": None, "num_virtual_tokens": None, "init_text": None,
                         "encoder_hidden_size": None}
    assert s["quantization"] == {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    assert r["eval"] == {"tasks": [], "base": True, "batch_size": 16, "limit": None, "max_new_tokens": None,
                         "dtype": "auto"}


def test_explicit_name_and_output_dir_win(tmp_path):
    data = {**parent_recipe(tmp_path), "name": "custom", "output_dir": str(tmp_path / "out")}
    r = load_recipe(write_yaml(tmp_path / "r.yaml", data))
    assert (r["name"], r["output_dir"]) == ("custom", str(tmp_path / "out"))
    data = {**parent_recipe(tmp_path), "name": "custom"}
    assert load_recipe(write_yaml(tmp_path / "r.yaml", data))["output_dir"] == str(Path("runs") / "custom")


# ------------------------------------------------------------------------------------------- shipped recipes
# Every recipe file: what `make recipes` lists (partials under _base, accelerate configs and templates are not).
SHIPPED = sorted(p.relative_to(REPO) for p in recipe_files(REPO / "recipes").values())


def _needs_built_model(path: Path) -> bool:
    """Does the recipe (or one it extends) point at a tiny model under models/ that `make tiny` builds?"""
    text = (REPO / path).read_text(encoding="utf-8")
    parent = yaml.safe_load(text).get("extends")
    return "models/" in text or (parent is not None and _needs_built_model(path.parent / parent))


@pytest.mark.parametrize("recipe", SHIPPED, ids=str)
def test_shipped_recipe_validates(recipe, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # shipped recipes name their data relative to the repository root
    overrides = [f"base_model.path={tmp_path}"] if _needs_built_model(recipe) else []
    for stage in yaml.safe_load((REPO / recipe).read_text(encoding="utf-8")).get("stages") or []:
        if str(stage.get("student", "")).startswith("models/"):  # a student `make` builds
            overrides.append(f"stages.{stage['name']}.student={tmp_path}")
    rc, out, err = validate_cli(capsys, recipe, *overrides)
    assert (rc, err) == (0, ""), err
    assert out.startswith(f"{recipe}: ok"), out


def test_some_recipes_are_shipped():
    assert len(SHIPPED) >= 3, SHIPPED


# ------------------------------------------------------------------------------------------- trl_fields
def test_static_fields_match_real_trl_dataclasses(monkeypatch):
    """The `ast` reading of every TRL config class equals dataclasses.fields() of the imported class.

    Also: every field's real default is accepted by check_value_type on its statically read annotation.
    (The only test that imports trl: ~10 s.)
    """
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    for kind, (rel, class_name) in CONFIG_CLASSES.items():
        cls = getattr(importlib.import_module(rel.removesuffix(".py").replace("/", ".")), class_name)
        real = {f.name for f in dataclasses.fields(cls) if f.init}
        static = config_fields(kind)
        assert set(static) == real, (f"{kind} ({class_name}): only in the static read: {sorted(set(static) - real)}; "
                                     f"only in the real class: {sorted(real - set(static))}")
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            default = getattr(default, "value", default)  # enums: their string value
            default = list(default) if isinstance(default, tuple) else default
            if type(default) in (int, float, str, bool, type(None), list, dict):
                problem = check_value_type(static[f.name].annotation, default)
                assert problem is None, (f"{class_name}.{f.name}: default {default!r} rejected for "
                                         f"{static[f.name].annotation!r} (expects {problem})")


@pytest.mark.parametrize(("annotation", "value", "ok"), [
    ("float", 1, True),
    ("float", 1.5, True),
    ("float", True, False),
    ("float", "fast", False),
    ("int", 2.0, False),
    ("int | None", None, True),
    ("int | None", 3, True),
    ("Optional[int]", None, True),
    ("Union[int, str]", "x", True),
    ("IntervalStrategy | str", "steps", True),
    ("None | str | list[str]", ["tensorboard"], True),
    ("None | str | list[str]", 3, False),
    ("bool", "yes", False),
    ("bool", False, True),
    ("dict | str | None", {"a": 1}, True),
    ("Literal['a', 'b']", "a", True),
    ("SomeUnknownClass", object(), True),  # unknown annotations accept anything
])
def test_check_value_type(annotation, value, ok):
    problem = check_value_type(annotation, value)
    assert (problem is None) == ok, f"check_value_type({annotation!r}, {value!r}) -> {problem!r}"


def test_check_value_type_names_what_it_expects():
    assert check_value_type("float", "fast") == "float or int"
    assert check_value_type("int | None", "x") == "int or null"


# ------------------------------------------------------------------------------------------- no heavy imports
def test_validate_does_not_import_torch(tmp_path):
    recipe = write_yaml(tmp_path / "r.yaml", parent_recipe(tmp_path))
    code = ("import sys; from finetune.cli import main; rc = main(['validate', sys.argv[1]]); "
            "print(rc, *('torch' in sys.modules, 'transformers' in sys.modules, 'trl' in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, str(recipe)], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{recipe}: ok"), proc.stdout
    assert lines[-1] == "0 False False False", (
        f"validate imported heavy modules (torch, transformers, trl): {lines[-1]}")


def test_readme_recipe_reference_is_the_schema():
    """README's recipe reference table is exactly `python -m finetune.schema`: every key validation accepts,
    with its default and meaning, and no key it does not."""
    from finetune.schema import reference_rows

    readme = (REPO / "README.md").read_text()
    start = readme.index("| key | default | meaning |")
    table = readme[start : readme.index("\n\n", start)].splitlines()[2:]
    assert table == reference_rows()
