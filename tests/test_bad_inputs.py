"""A corpus of malformed data files, each run through `finetune run`: one `error:` line, exit 2, no traceback.

Every file lives in tests/bad_data/. Cases run in-process through `finetune.cli.main` (a subprocess costs a torch
import each); a few run the real CLI in subprocesses, started together, to prove the end-to-end behaviour.
The recipe-level corpus (malformed YAML, unknown keys, bad links) is in test_recipe.py / test_links_and_cli.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# datasets and transformers bind their log handlers to sys.stderr when first imported: import them now, at
# collection, so the handlers do not hold one test's capsys stream, closed (and then failing) in later tests.
import datasets  # noqa: F401
import pytest
import transformers  # noqa: F401
import yaml
from conftest import DATA, REPO

from finetune.cli import main

BAD = Path(__file__).resolve().parent / "bad_data"
ROLES = "role must be one of system, user, assistant, tool"
HH = "not in the '\\n\\nHuman: ... \\n\\nAssistant: ...' layout"

# (file in tests/bad_data, stage kind it feeds, fragments the error line must hold[, source options])
CASES = [
    ("broken_line.jsonl", "sft", [":3: malformed JSON line (Expecting ',' delimiter"]),
    ("line_is_list.jsonl", "sft", [":2: each line must be a JSON object, got list"]),
    ("array_syntax_error.json", "sft", [":4: malformed JSON (Expecting property name"]),
    ("empty.jsonl", "sft", ["file is empty (no rows)"]),
    ("whitespace_only.jsonl", "sft", ["file is empty (no rows)"]),
    ("latin1.jsonl", "sft", ["not UTF-8 text"]),
    ("notes.txt", "sft", ["unsupported file type '.txt' (data.bad)", ".jsonl"]),
    ("wrong_columns.csv", "sft", ["cannot tell the instruction format from columns ['answer', 'question']"]),
    ("no_text_column.parquet", "sft", ["format text needs column(s) ['text']; found ['body', 'id']"],
     {"format": "text"}),
    ("unknown_role.jsonl", "sft", [f"row 1: turn 0: {ROLES}, got 'narrator'"]),
    ("content_not_string.jsonl", "sft", ["row 2: turn 1: content must be a string"]),
    ("no_assistant_turn.jsonl", "sft", ["no usable rows left (3 no assistant turn)"]),
    ("empty_answers.jsonl", "sft", ["no usable rows left (3 empty assistant turn)"]),
    ("sharegpt_unknown_from.jsonl", "sft", ["row 1: turn 1: unknown 'from' value 'robot'"]),
    ("alpaca_no_output.json", "sft", ["format alpaca needs column(s) ['output']; found ['input', 'instruction']"],
     {"format": "alpaca"}),
    ("empty_completions.csv", "sft", ["no usable rows left (3 empty completion)"]),
    ("mapped_missing.jsonl", "sft", ["data.bad.columns names column(s) ['answer'] that the data lacks",
                                     "found ['question', 'reply']"], {"columns": {"prompt": "question",
                                                                                  "completion": "answer"}}),
    ("header_only.csv", "sft", ["cannot read data.bad"]),
    ("not_parquet.parquet", "sft", ["cannot read data.bad", "Parquet magic bytes not found"]),
    ("ragged.csv", "sft", ["cannot read data.bad", "Expected 2 fields in line 3, saw 4"]),
    ("text_not_string.jsonl", "sft", ["row 1: text must be a string, got int"]),
    ("messages_not_list.jsonl", "sft", ["row 0: messages must be a list"]),
    ("json_scalar.json", "sft", ["the file holds a JSON int; give an array of objects or JSON Lines"]),
    ("prefs_missing_rejected.jsonl", "dpo", ["preference data needs `chosen` and `rejected` columns",
                                             "found ['chosen', 'prompt']"]),
    ("prefs_all_equal.jsonl", "reward", ["no usable pairs left (3 chosen == rejected)"]),
    ("prefs_prompt_text_chosen_list.jsonl", "dpo", [
        "row 0: prompt, chosen and rejected must all be text or all be message lists"]),
    ("prefs_hh_bad_row.jsonl", "reward", [f"row 1: {HH}"]),
    ("prefs_text_no_prompt.jsonl", "dpo", ["chosen/rejected without a prompt must be conversations"]),
    ("prefs_no_shared_prompt.jsonl", "reward", ["no usable pairs left (2 no shared prompt)"]),
    ("prompts_empty.jsonl", "ppo", ["row 1: empty prompt"]),
    ("prompts_no_column.jsonl", "ppo", ["RL prompts need a `prompt` or `messages` column", "found ['question']"]),
    ("prompts_mixed_kinds.jsonl", "ppo", ["row 1:", "prompt"]),
    ("prompts_messages_not_list.jsonl", "ppo", ["row 0:", "messages"]),
    ("prompts_turn_without_role.jsonl", "ppo", ["row 0:", "role"]),
    ("prompts_not_text.jsonl", "ppo", ["row 0:", "prompt"]),
]
# Product bugs: these files crash the stage with a traceback instead of one error line.
BUGS: dict[str, str] = {}  # known product bugs, as strict xfails (all fixed so far)


def params(cases):
    out = []
    for name, kind, fragments, *options in cases:
        marks = [pytest.mark.xfail(strict=True, reason=BUGS[name])] if name in BUGS else []
        out.append(pytest.param(name, kind, fragments, options[0] if options else None, id=name, marks=marks))
    return out


TRAIN = {"max_steps": 1, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "gradient_checkpointing": False,
         "save_strategy": "no", "report_to": "none", "disable_tqdm": True}
TRAIN_ARGS = {"sft": {**TRAIN, "max_length": 128}, "dpo": {**TRAIN, "max_length": 256},
              "reward": {**TRAIN, "max_length": 256}, "ppo": {**TRAIN, "total_episodes": 4, "response_length": 4}}
# A reward stage a ppo stage can be scored by; trained once per module (see `reward_run`).
REWARD_STAGE = {"name": "rm", "kind": "reward", "data": ["prefs"], "train": TRAIN_ARGS["reward"]}
PREFS = {"path": str(DATA / "tiny_prefs.jsonl"), "max_rows": 4}


def recipe_for(model: Path, path: Path, kind: str, options: dict | None = None) -> dict:
    """The smallest recipe whose first stage to touch data is a `kind` stage reading `path` as source `bad`."""
    data = {"bad": {"path": str(path), **(options or {})}}
    stages = [{"name": kind, "kind": kind, "data": ["bad"], "train": TRAIN_ARGS[kind]}]
    if kind == "ppo":
        data["prefs"] = PREFS
        stages.insert(0, REWARD_STAGE)
    return {"name": "bad", "seed": 1, "base_model": {"path": str(model), "dtype": "float32"}, "data": data,
            "stages": stages}


def write(recipe: dict, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    path = where / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def manifests(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("manifest.json")) if run_dir.exists() else []


def check_one_error(err: str, fragments: list[str]) -> str:
    """stderr ends in exactly one `error: ` line holding every fragment, and holds no traceback."""
    assert "Traceback" not in err, err[-3000:]
    lines = err.strip().splitlines()
    assert lines, "nothing on stderr"
    last = lines[-1]
    assert last.startswith("error: "), err[-3000:]
    assert [line for line in lines if line.startswith("error")] == [last], err[-3000:]
    for fragment in fragments:
        assert fragment in last, f"{fragment!r} not in {last!r}"
    return last


@pytest.fixture(scope="module")
def reward_run(tiny_llama, tmp_path_factory) -> Path:
    """A run folder whose reward stage `rm` is done, for ppo cases to copy (their reward stage is then skipped)."""
    run_dir = tmp_path_factory.mktemp("reward-run") / "run"
    recipe = recipe_for(tiny_llama, DATA / "tiny_prompts.jsonl", "ppo")
    recipe["stages"] = [REWARD_STAGE]
    assert main(["run", str(write(recipe, run_dir.parent)), "--output-dir", str(run_dir)]) == 0
    assert manifests(run_dir) == ["rm/manifest.json"]
    return run_dir


def run_dir_for(kind: str, tmp_path: Path, request) -> Path:
    run_dir = tmp_path / "run"
    if kind == "ppo":
        shutil.copytree(request.getfixturevalue("reward_run"), run_dir)
    return run_dir


def test_corpus_is_complete():
    """Every file in bad_data/ is a case, every case names a real file, and there are enough of them."""
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names)) >= 22 and set(BUGS) <= set(names)
    assert sorted(names) == sorted(p.name for p in BAD.iterdir())


@pytest.mark.parametrize("name, kind, fragments, options", params(CASES))
def test_bad_data_file_is_one_error_line(name, kind, fragments, options, tiny_llama, tmp_path, capsys, request):
    path = BAD / name
    before = path.read_bytes()
    run_dir = run_dir_for(kind, tmp_path, request)
    done_before = manifests(run_dir)
    recipe = write(recipe_for(tiny_llama, path, kind, options), tmp_path)
    capsys.readouterr()
    assert main(["run", str(recipe), "--output-dir", str(run_dir)]) == 2
    line = check_one_error(capsys.readouterr().err, fragments)
    assert name in line  # the file at fault is named
    assert manifests(run_dir) == done_before  # nothing finished: no new manifest
    assert path.read_bytes() == before


# ------------------------------------------------------------------ the model, the mixture, the output folder
@pytest.fixture(scope="module")
def no_template_model(tiny_llama, tmp_path_factory) -> Path:
    """The tiny model with its chat template removed (as a base checkpoint that was never chat-tuned)."""
    out = tmp_path_factory.mktemp("models") / "no-template"
    shutil.copytree(tiny_llama, out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    from transformers import AutoTokenizer

    assert not AutoTokenizer.from_pretrained(out).chat_template
    return out


CHAT_SOURCES = {"sft": DATA / "tiny_chat.jsonl", "dpo": DATA / "tiny_prefs.jsonl",
                "reward": DATA / "tiny_prefs_implicit.jsonl", "ppo": DATA / "tiny_prompts.jsonl"}
@pytest.mark.parametrize("kind", ["sft", "dpo", "reward", "ppo"])
def test_chat_data_on_a_model_without_chat_template(kind, no_template_model, tmp_path, capsys):
    run_dir = tmp_path / "run"
    recipe = recipe_for(no_template_model, CHAT_SOURCES[kind], kind, {"max_rows": 4})
    if kind == "ppo":  # its reward model is trained here, on text pairs, which need no template
        recipe["data"]["prefs"] = {**PREFS, "path": str(DATA / "tiny_prefs_text.jsonl")}
    path = write(recipe, tmp_path)
    capsys.readouterr()
    assert main(["run", str(path), "--output-dir", str(run_dir)]) == 2
    line = check_one_error(capsys.readouterr().err, ["needs a chat template", "base_model.chat_template"])
    assert str(no_template_model) in line
    # Refused before any stage trains, PPO's too: run's preflight checks every stage's template on the base's
    # tokenizer (before, the reward stage ahead of PPO trained first).
    assert manifests(run_dir) == []


@pytest.mark.parametrize("kind, sources", [
    ("sft", {"chat": DATA / "tiny_chat.jsonl", "text": DATA / "tiny_text.parquet"}),
    ("dpo", {"chat": DATA / "tiny_prefs.jsonl", "text": DATA / "tiny_prefs_text.jsonl"}),
])
def test_a_stage_mixing_data_kinds(kind, sources, tiny_llama, tmp_path, capsys):
    recipe = recipe_for(tiny_llama, sources["chat"], kind)
    recipe["data"] = {name: {"path": str(path), "max_rows": 4} for name, path in sources.items()}
    recipe["stages"][0]["data"] = list(sources)
    capsys.readouterr()
    assert main(["run", str(write(recipe, tmp_path)), "--output-dir", str(tmp_path / "run")]) == 2
    check_one_error(capsys.readouterr().err, [f"stage {kind}: its data sources mix kinds (chat=chat, text=text)"])
    assert manifests(tmp_path / "run") == []


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def test_output_folder_holding_someone_elses_files_is_refused_untouched(tiny_llama, tmp_path, capsys):
    theirs = tmp_path / "theirs"
    (theirs / "drafts").mkdir(parents=True)
    (theirs / "drafts" / "thesis.tex").write_text("\\section{Results}\n")
    (theirs / ".hidden").write_bytes(b"\x00\x01")
    before = snapshot(theirs)
    recipe = write(recipe_for(tiny_llama, BAD / "broken_line.jsonl", "sft"), tmp_path)  # refused before the data
    capsys.readouterr()
    assert main(["run", str(recipe), "--output-dir", str(theirs)]) == 2
    check_one_error(capsys.readouterr().err, [str(theirs), "not a finetune run", "nothing was written"])
    assert snapshot(theirs) == before


def test_output_path_that_is_a_file_is_refused_untouched(tiny_llama, tmp_path, capsys):
    theirs = tmp_path / "results.csv"
    theirs.write_text("a,b\n1,2\n")
    recipe = write(recipe_for(tiny_llama, DATA / "tiny_chat.jsonl", "sft"), tmp_path)
    capsys.readouterr()
    assert main(["run", str(recipe), "--output-dir", str(theirs)]) == 2
    check_one_error(capsys.readouterr().err, [str(theirs), "exists and is not a folder"])
    assert theirs.read_text() == "a,b\n1,2\n"


# ------------------------------------------------------------------ the real CLI, in subprocesses
SUBPROCESS_CASES = {  # case id -> (data file, stage kind, fragments); started together, each a `python -m finetune`
    "broken_line": (BAD / "broken_line.jsonl", "sft", [":3: malformed JSON line"]),
    "prefs_missing_rejected": (BAD / "prefs_missing_rejected.jsonl", "dpo", ["needs `chosen` and `rejected`"]),
    "no_chat_template": (DATA / "tiny_chat.jsonl", "sft", ["needs a chat template", "base_model.chat_template"]),
}


@pytest.fixture(scope="module")
def cli_runs(tiny_llama, no_template_model, tmp_path_factory) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    started = {}
    for case, (path, kind, _) in SUBPROCESS_CASES.items():
        where = tmp_path_factory.mktemp(case)
        model = no_template_model if case == "no_chat_template" else tiny_llama
        recipe = write(recipe_for(model, path, kind, {"max_rows": 4} if path.parent == DATA else None), where)
        cmd = [sys.executable, "-m", "finetune", "run", str(recipe), "--output-dir", str(where / "run")]
        started[case] = (subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True), where / "run")
    done = {}
    for case, (proc, run_dir) in started.items():
        out, err = proc.communicate(timeout=300)
        done[case] = (proc.returncode, out, err, run_dir)
    return done


@pytest.mark.parametrize("case", list(SUBPROCESS_CASES))
def test_real_cli_in_a_subprocess(case, cli_runs):
    path, _, fragments = SUBPROCESS_CASES[case]
    code, out, err, run_dir = cli_runs[case]
    assert code == 2, err[-3000:]
    line = check_one_error(err, fragments)
    assert (path.name if path.parent == BAD else "base_model.chat_template") in line
    assert manifests(run_dir) == []
