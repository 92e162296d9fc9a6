"""One writer per run folder: a second `finetune run` (or an eval/merge reader) of a folder being written is
refused with one line naming the holder; the first run finishes intact; a dead run's leftover is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, sft_recipe

from finetune import runlock
from finetune.errors import UserError
from finetune.manifest import MARKER


def test_second_run_into_the_same_folder_is_refused_and_the_first_finishes_intact(tiny_llama, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(sft_recipe(tiny_llama, train={"max_steps": 40}), sort_keys=False))
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "finetune", "run", str(recipe), "--output-dir", str(out)]
    first = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / runlock.HOLDER).exists():
        assert first.poll() is None and time.time() < deadline, "the first run ended before it held the folder"
        time.sleep(0.05)
    second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    reader = subprocess.run([sys.executable, "-m", "finetune", "eval", str(out), "--task", "squad_v1_tiny"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-2000:]
    for proc, says in ((second, "another finetune run is writing this folder"),
                       (reader, "a finetune run is writing this folder")):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: {out}: {says} (pid {first.pid} on host {socket.gethostname()}"), line
    assert (out / "sft" / "manifest.json").exists()
    rows = [json.loads(line) for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 41))  # one run's 40 steps, not two runs'
    assert not (out / runlock.HOLDER).exists()  # released at the end


def test_a_dead_runs_leftover_is_named_and_taken_over(tmp_path):
    (tmp_path / MARKER).write_text("{}")
    (tmp_path / runlock.HOLDER).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": 0}))
    said = []
    with runlock.hold(tmp_path, said.append):
        holder = json.loads((tmp_path / runlock.HOLDER).read_text())
        assert holder["pid"] == os.getpid()
    assert said and "pid 999999 on host elsewhere" in said[0] and "ended without releasing it" in said[0]
    runlock.refuse_if_being_written(tmp_path / "sft")  # nobody writes it now: no error


def test_reader_inside_a_folder_being_written_is_refused(tmp_path):
    (tmp_path / MARKER).write_text("{}")
    (tmp_path / "sft" / "model").mkdir(parents=True)
    code = ("import sys, time; from pathlib import Path; from finetune import runlock\n"
            "with runlock.hold(Path(sys.argv[1]), lambda m: None):\n    print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid {holder.pid} on host"):
            runlock.refuse_if_being_written(tmp_path / "sft" / "model")
    finally:
        holder.kill()
        holder.wait()
    runlock.refuse_if_being_written(tmp_path / "sft" / "model")  # the kernel released the dead holder's lock
