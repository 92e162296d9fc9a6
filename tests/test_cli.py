"""The `finetune` command: help, validate, run end to end in a subprocess, and one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, sft_recipe

from finetune.cli import build_parser, main, parse_args
from finetune.tiny import CHAT_TEMPLATE

HEAVY = ("torch", "transformers", "trl", "datasets", "peft", "accelerate")


def env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def finetune(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "finetune", *map(str, args)], capture_output=True, text=True,
                          env=env(), timeout=timeout, cwd=REPO)


def python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=120,
                          cwd=REPO)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


# --- help and import weight -----------------------------------------------------------------------------


def test_help_in_a_subprocess():
    res = finetune("--help", timeout=60)
    assert res.returncode == 0, res.stderr
    for command in ("run", "validate", "tiny", "score"):
        assert command in res.stdout
    assert res.stderr == ""


def test_version():
    res = finetune("--version", timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("finetune ")


def test_parser_does_not_import_the_heavy_stack():
    res = python("import json, sys\nimport finetune.cli as c\nc.build_parser()\n"
                 f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == dict.fromkeys(HEAVY, False)


def test_validate_does_not_import_the_heavy_stack(tiny_llama, write_recipe):
    path = write_recipe(sft_recipe(tiny_llama))
    res = python("import json, sys\nfrom finetune.cli import main\n"
                 f"code = main(['validate', {str(path)!r}])\n"
                 f"print(json.dumps([code, {{m: m in sys.modules for m in {HEAVY!r}}}]))")
    assert res.returncode == 0, res.stderr
    code, loaded = json.loads(res.stdout.strip().splitlines()[-1])
    assert code == 0 and loaded == dict.fromkeys(HEAVY, False)


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([])
    assert exit_.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


# --- validate -------------------------------------------------------------------------------------------


def test_validate_good_recipe(tiny_llama, write_recipe, capsys):
    path = write_recipe(sft_recipe(tiny_llama))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: ok" in out and "1 stage(s): sft (sft)" in out


def test_validate_applies_overrides(tiny_llama, write_recipe, capsys):
    path = write_recipe(sft_recipe(tiny_llama))
    assert main(["validate", str(path), "stages.sft.train.max_steps=3"]) == 0
    assert main(["validate", str(path), "stages.sft.train.max_steps=many"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "max_steps" in line


def test_validate_bad_recipe(tiny_llama, write_recipe, capsys):
    recipe = sft_recipe(tiny_llama, train={"learnig_rate": 1e-3})
    path = write_recipe(recipe)
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert str(path) in line and "learnig_rate" in line and "did you mean 'learning_rate'" in line
    assert "ok" not in captured.out


def test_validate_missing_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "recipe file not found" in one_error_line(capsys.readouterr().err)


# --- run ------------------------------------------------------------------------------------------------


@pytest.fixture
def small_recipe(tiny_llama, write_recipe):
    recipe = sft_recipe(tiny_llama, train={"max_steps": 2})
    recipe["data"]["chat"]["max_rows"] = 32
    return write_recipe(recipe)


def test_run_end_to_end_in_a_subprocess(small_recipe, tmp_path):
    run_dir = tmp_path / "run"
    res = finetune("run", small_recipe, "stages.sft.train.max_steps=3", "--output-dir", run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "label audit:" in res.stderr
    manifest = json.loads((run_dir / "sft" / "manifest.json").read_text())
    resolved = manifest["resolved_recipe"]
    assert resolved["stages"][0]["train"]["max_steps"] == 3  # the override applied
    assert resolved["source"]["overrides"] == ["stages.sft.train.max_steps=3"]
    assert manifest["training_args"]["max_steps"] == 3
    assert manifest["packages"]["trl"].startswith("1.12")
    assert manifest["packages"]["torch"] and manifest["packages"]["transformers"]
    assert manifest["seed"] == 1 and manifest["stage"] == "sft" and manifest["kind"] == "sft"
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["data_fingerprint"])
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["inputs_fingerprint"])
    assert manifest["chat_template_sha256"] == hashlib.sha256(CHAT_TEMPLATE.read_bytes()).hexdigest()
    assert manifest["timings"]["seconds"] > 0 and manifest["timings"]["started"]
    assert "git_commit" in manifest
    # the CLI bounds oneDNN's kernel caches before the first matmul (finetune.manifest.bound_kernel_caches)
    assert manifest["memory"]["kernel_caches"] == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64", "LRU_CACHE_CAPACITY": "64"}
    assert manifest["label_audit"]["rows"] == 32
    rows = [json.loads(line) for line in (run_dir / "sft" / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3] and all(r["loss"] > 0 for r in losses)
    assert (run_dir / "sft" / "model" / "model.safetensors").exists()
    assert (run_dir / "recipe.yaml").exists()

    stamp = (run_dir / "sft" / "manifest.json").stat().st_mtime_ns
    again = finetune("run", small_recipe, "stages.sft.train.max_steps=3", "--output-dir", run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipped" in again.stderr
    assert (run_dir / "sft" / "manifest.json").stat().st_mtime_ns == stamp

    changed = finetune("run", small_recipe, "stages.sft.train.max_steps=2", "--output-dir", run_dir)
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    last = changed.stderr.strip().splitlines()[-1]  # progress lines (e.g. the data audit) may come first
    assert changed.stderr.count("error:") == 1 and last.startswith("error:")
    assert "changed: stage.train.max_steps" in last and "--force" in last


def test_run_overrides_after_options(small_recipe, tmp_path):
    args = parse_args(["run", str(small_recipe), "--output-dir", str(tmp_path / "run"),
                       "stages.sft.train.max_steps=3"])
    assert args.overrides == ["stages.sft.train.max_steps=3"]


def test_run_only_unknown_stage(small_recipe, tmp_path):
    res = finetune("run", small_recipe, "--output-dir", tmp_path / "run", "--only", "nosuch", timeout=120)
    assert res.returncode == 2
    line = one_error_line(res.stderr)
    assert "--only nosuch" in line and "stages: sft" in line
    assert not (tmp_path / "run").exists()


def test_run_missing_data_file(tiny_llama, write_recipe, tmp_path):
    path = write_recipe(sft_recipe(tiny_llama, {"chat": {"path": str(tmp_path / "missing.jsonl")}}))
    res = finetune("run", path, "--output-dir", tmp_path / "run", timeout=120)
    assert res.returncode == 2
    line = one_error_line(res.stderr)
    assert "missing.jsonl" in line and "not found" in line
    assert not (tmp_path / "run").exists()


def test_run_malformed_data_file_fails_in_the_stage_with_one_line(tiny_llama, write_recipe, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                    '{"messages": [oops\n')
    path = write_recipe(sft_recipe(tiny_llama, {"chat": {"path": str(data)}}))
    res = finetune("run", path, "--output-dir", tmp_path / "run")
    assert res.returncode == 2
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and f"{data}:2: malformed JSON line" in line
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "sft" / "manifest.json").exists()


def test_run_into_foreign_folder_is_refused(small_recipe, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    assert main(["run", str(small_recipe), "--output-dir", str(foreign)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "not a finetune run" in line
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert (foreign / "notes.txt").read_text() == "precious"


def test_run_into_foreign_folder_in_a_subprocess(small_recipe, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    res = finetune("run", small_recipe, "--output-dir", foreign, timeout=120)
    assert res.returncode == 2
    assert "not a finetune run" in one_error_line(res.stderr)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert (foreign / "notes.txt").read_text() == "precious"


def test_a_reader_that_closes_the_pipe_gets_no_traceback():
    """`finetune validate R | head -1`: the second line meets a closed pipe; the command stops quietly."""
    proc = subprocess.run(f"{sys.executable} -m finetune validate recipes/tiny/lora-sft.yaml | head -c 1",
                          shell=True, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
