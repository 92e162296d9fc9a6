"""The tiny pipelines end to end, reruns that train nothing, and a SIGKILLed run that resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, sft_recipe

from finetune.pipeline import run_recipe
from finetune.recipe import load_recipe
from finetune.recipe_types import Shared

SMALL = ["stages.sft.train.num_train_epochs=1", "data.chat.max_rows=48", "data.alpaca.max_rows=16",
         "data.sharegpt.max_rows=16", "eval.limit=4", "eval.tasks=[capitals_open_chat]"]
PER_RECIPE = {
    "ppo": ["data.prefs.max_rows=48", "stages.reward.train.logging_steps=1", "data.prompts.max_rows=32",
            "stages.reward.train.num_train_epochs=1",
            "stages.ppo.train.total_episodes=32", "stages.ppo.train.response_length=8"],
    "dpo": ["data.prefs.max_rows=48", "stages.dpo.train.num_train_epochs=1", "stages.dpo.train.logging_steps=1"],
    "rloo": ["data.prefs.max_rows=48", "stages.reward.train.logging_steps=1", "data.prompts.max_rows=32",
             "stages.reward.train.num_train_epochs=1",
             "stages.rloo.train.max_steps=2", "stages.rloo.train.max_completion_length=8"],
    "kto": ["data.prefs.max_rows=48", "stages.kto.train.num_train_epochs=1", "stages.kto.train.logging_steps=1"],
    "prompt-tuning": ["stages.soft-prompt.train.num_train_epochs=1", "eval.base=true"],
}
STAGES = {"ppo": ["sft", "reward", "ppo"], "dpo": ["sft", "dpo"], "rloo": ["sft", "reward", "rloo"],
          "kto": ["sft", "kto"], "prompt-tuning": ["sft", "soft-prompt"]}


@pytest.mark.parametrize("name", ["ppo", "dpo", "rloo", "kto", "prompt-tuning"])
def test_tiny_pipeline_end_to_end_then_rerun_trains_nothing(tiny_llama, tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(REPO)
    for variable in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        monkeypatch.delenv(variable, raising=False)  # run_recipe bounds them itself, not only the CLI
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)  # PPO then computes in the hardware's choice
    overrides = [f"base_model.path={tiny_llama}", *SMALL, *PER_RECIPE[name]]
    out_dir = str(tmp_path / "run")
    results = run_recipe(load_recipe(f"recipes/tiny/{name}.yaml", overrides), output_dir=out_dir)
    assert list(results) == STAGES[name]
    table = (tmp_path / "run" / "eval" / "results.md").read_text()
    for stage in ["base", *STAGES[name]]:
        assert (f"| {stage} |" in table) == (stage != "reward"), table
    if "reward" in results:
        assert 0 <= results["reward"]["reward_accuracy"]["accuracy"] <= 1
    for stage in STAGES[name]:  # RSS after collecting the last stage's garbage, before this one is measured
        assert 0 < results[stage]["memory"]["rss_at_start_mb"] <= results[stage]["memory"]["process_peak_rss_mb"]
        assert results[stage]["memory"]["kernel_caches"] == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64",
                                                             "LRU_CACHE_CAPACITY": "64"}
    assert "(" in table.splitlines()[2], "EM/F1 carry their confidence intervals"
    comparisons = json.loads((tmp_path / "run" / "eval" / "comparisons.json").read_text())
    assert [(c["from"], c["to"]) for c in comparisons] == [("base", "sft"), ("sft", STAGES[name][-1])]
    split = json.loads((tmp_path / "run" / "eval" / "contamination.json").read_text())
    assert split["base"]["capitals_open_chat"]["overlap"]["total"] == 0  # the base saw no training data
    for stage in ("sft", STAGES[name][-1]):
        parts = split[stage]["capitals_open_chat"]
        assert parts["clean"]["total"] + parts["overlap"]["total"] == 4
    check_report(tmp_path / "run", STAGES[name])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Paired comparisons between stages" in report and "## Clean vs overlapping questions" in report
    stamps = {s: (tmp_path / "run" / s / "manifest.json").stat().st_mtime_ns for s in STAGES[name]}
    check_precision(tmp_path / "run", STAGES[name], capsys.readouterr().err)
    again = run_recipe(load_recipe(f"recipes/tiny/{name}.yaml", overrides), output_dir=out_dir)
    err = capsys.readouterr().err
    assert all(f"{s}: done with unchanged inputs, skipped" in err for s in STAGES[name])
    assert "results up to date, skipped" in err and "resuming" not in err
    assert {s: (tmp_path / "run" / s / "manifest.json").stat().st_mtime_ns for s in STAGES[name]} == stamps
    assert again == results
    # the last stage's weights as a retraining with the same inputs may leave them (other code, another CPU):
    # its scores are those of the new weights, the other stages' stay cached
    from safetensors.torch import load_file, save_file

    last = STAGES[name][-1]
    weights = sorted((tmp_path / "run" / last / "model").rglob("*.safetensors"))[0]
    tensors = load_file(weights)
    first = next(iter(tensors))
    save_file({**tensors, first: tensors[first] + 1e-3}, weights, metadata={"format": "pt"})
    run_recipe(load_recipe(f"recipes/tiny/{name}.yaml", overrides), output_dir=out_dir)
    err = capsys.readouterr().err
    assert f"eval {last}: results up to date, skipped" not in err and f"{last}: done with unchanged inputs" in err
    assert all(f"eval {s}: results up to date, skipped" in err for s in ["base", *STAGES[name][:-1]] if s != "reward")


def check_precision(run_dir, stages, err):
    """Each stage computed in what this machine's hardware calls for (bf16 autocast where native, else fp32),
    said so on one log line and recorded it; evaluation generated in bf16 where native."""
    from finetune import precision

    hw = precision.detect()
    want = "bf16 autocast" if hw.cpu_bf16 else "fp32"
    for stage in stages:  # PPO too: its Accelerator gets the choice through ACCELERATE_MIXED_PRECISION
        recorded = json.loads((run_dir / stage / "manifest.json").read_text())["precision"]
        assert recorded == {"compute": want, "bf16": hw.cpu_bf16, "fp16": False, "reason": hw.cpu_reason}
    assert err.count(f"precision: {want} ({hw.cpu_reason})") == len(stages), err
    result = json.loads((run_dir / "eval" / stages[-1] / "capitals_open_chat" / "results.json").read_text())
    assert result["generation_dtype"] == ("bfloat16" if hw.cpu_bf16 else "float32")


def check_report(run_dir, stages):
    """report.md links a manifest per stage and its PNGs exist and are real, non-blank plots."""
    import matplotlib.image

    report = (run_dir / "report.md").read_text()
    for stage in stages:
        assert f"[manifest]({stage}/manifest.json)" in report
    plotted = ("reward", "ppo", "dpo", "rloo", "grpo", "kto", "distill")
    pngs = ["loss.png", "eval.png"] + [f"{s}.png" for s in stages if s in plotted]
    for png in pngs:
        assert f"(report/{png})" in report, png
        path = run_dir / "report" / png
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 400
        assert image[..., :3].std() > 0.05, f"{png} is blank"


def final_loss(run_dir):
    rows = [json.loads(line) for line in (run_dir / "sft" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r][-1]


@pytest.mark.numerics
def test_sigkill_mid_stage_then_rerun_resumes_and_matches_uninterrupted(tiny_llama, write_recipe, tmp_path):
    train = {"max_steps": 60, "save_strategy": "steps", "save_steps": 5, "save_total_limit": None,
             "per_device_train_batch_size": 4}
    path = write_recipe(sft_recipe(tiny_llama, train=train))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "finetune", "run", str(path), "--output-dir"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, str(killed)], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list((killed / "sft" / "checkpoints").glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "sft" / "manifest.json").exists()
    resumed = subprocess.run([*cmd, str(killed)], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from checkpoint-" in resumed.stderr
    straight = subprocess.run([*cmd, str(tmp_path / "straight")], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    a, b = final_loss(killed), final_loss(tmp_path / "straight")
    assert a["step"] == b["step"] == 60
    assert abs(a["loss"] - b["loss"]) < 1e-5, (a, b)  # same kernels both sides: 0.0 on both paths (2026-11-29)


# The first stage's inputs fingerprint of shipped recipes, as computed before the schema gained
# base_model.training_chat_template, base_model.gguf_file and stages[].rewards (commit b500e59): new keys left
# unset must not turn a finished run into "run with other inputs".
PINNED_FINGERPRINTS = {
    "recipes/tiny/demo.yaml": "7a18e6ea1cd261d26bc1ad3addc2c484e55f0360192205d5aafd3eb9bfdf9723",
    "recipes/tiny/ppo.yaml": "c3f7e0ac5694102178ba5404e6120dedf3b024e4ab6613a87d0e7e5b24f3481b",
    "recipes/tiny/qlora-sft.yaml": "0e1a235662340a0848b044ae02e77ab5fa38c5eef54ed07ce898923185157fb3",
}


@pytest.mark.parametrize("path", sorted(PINNED_FINGERPRINTS))
def test_run_fingerprints_survive_new_schema_keys(path, monkeypatch):
    from finetune import manifest as mf
    from finetune.pipeline import stage_inputs

    monkeypatch.chdir(REPO)
    recipe = load_recipe(path)
    init = {"stage": None, "artifact": None, "fingerprint": None, "reward_model": None, "reward_fingerprint": None}
    inputs = stage_inputs(Shared.of(recipe), recipe["stages"][0], init)
    assert mf.inputs_fingerprint(**inputs) == PINNED_FINGERPRINTS[path]


def test_only_an_early_stage_runs_it_and_evaluates_without_the_later_ones(tiny_llama, tmp_path, monkeypatch,
                                                                           capsys):
    """`--only sft` on sft -> dpo trains sft, scores it, and does not ask for dpo; `--only dpo` then reuses sft.

    Once dpo has finished, `--only sft` keeps it in the eval table while its inputs are unchanged, and leaves it
    out (its folder untouched) once sft is retrained with other inputs.
    """
    monkeypatch.chdir(REPO)
    overrides = [
        f"base_model.path={tiny_llama}",
        *SMALL,
        *PER_RECIPE["dpo"],
        "stages.sft.train.max_steps=2",
        "stages.dpo.train.max_steps=1",
    ]
    out = str(tmp_path / "run")
    first = run_recipe(load_recipe("recipes/tiny/dpo.yaml", overrides), output_dir=out, only="sft")
    assert list(first) == ["sft"] and not (tmp_path / "run" / "dpo").exists()
    assert "| sft |" in (tmp_path / "run" / "eval" / "results.md").read_text()
    second = run_recipe(load_recipe("recipes/tiny/dpo.yaml", overrides), output_dir=out, only="dpo")
    assert list(second) == ["sft", "dpo"] and second["sft"] == first["sft"]
    results_md = tmp_path / "run" / "eval" / "results.md"
    assert "| dpo |" in results_md.read_text()
    capsys.readouterr()
    third = run_recipe(load_recipe("recipes/tiny/dpo.yaml", overrides), output_dir=out, only="sft")
    assert third == second  # nothing retrained, dpo still current: scored and reported as in a full run
    assert "| dpo |" in results_md.read_text()
    assert "dpo: after --only sft, finished with unchanged inputs; not run, scored and reported" in \
        capsys.readouterr().err
    changed = [*overrides, "stages.sft.train.max_steps=3"]
    fourth = run_recipe(load_recipe("recipes/tiny/dpo.yaml", changed), output_dir=out, only="sft", force=True)
    assert list(fourth) == ["sft"] and fourth["sft"] != first["sft"]
    assert "| dpo |" not in results_md.read_text()  # trained from the old sft: not shown as if from the new
    assert "dpo: after --only sft, finished with other inputs; not run, left out of eval and report" in \
        capsys.readouterr().err
    assert (tmp_path / "run" / "dpo" / "manifest.json").exists()  # nothing a user made is deleted


KERNEL_SHAPES = """
import os, sys
from finetune.manifest import bound_kernel_caches
bound_kernel_caches()  # as the CLI does first thing; a value set in the environment wins
import torch

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

torch.manual_seed(0)
torch.set_num_threads(2)
weight = torch.randn(1536, 576, dtype=torch.bfloat16)  # SmolLM2-135M's MLP up-projection
torch.nn.functional.linear(torch.randn(7, 576, dtype=torch.bfloat16), weight)
before = rss_mib()
for rows in range(8, 308):  # 300 sequence lengths, as real rows of 8-307 tokens bring
    torch.nn.functional.linear(torch.randn(rows, 576, dtype=torch.bfloat16), weight)
print(round(rss_mib() - before, 1))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc (Linux)")
def test_memory_kernel_caches_are_bounded_so_new_sequence_lengths_stop_growing_the_heap():
    """Each new matmul shape builds a oneDNN kernel that two caches keep (1024 entries each by default), so a
    stage over rows of varying length grows for as long as it runs. With `bound_kernel_caches` (64 entries),
    300 new shapes grew RSS by 37 MiB, not 172 (AMD EPYC, avx512_bf16); the assertion asks for under half.
    On a CPU whose bf16 matmuls skip oneDNN's caches (the AVX2 path: 0 MiB either way) there is nothing to bound."""
    from finetune.manifest import KERNEL_CACHE_VARIABLES

    def growth(**env):
        base = {k: v for k, v in os.environ.items() if k not in KERNEL_CACHE_VARIABLES}
        res = subprocess.run([sys.executable, "-c", KERNEL_SHAPES], capture_output=True, text=True, cwd=REPO,
                             env={**base, **env}, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        return float(res.stdout.split()[-1])

    unbounded = growth(ONEDNN_PRIMITIVE_CACHE_CAPACITY="1024", LRU_CACHE_CAPACITY="1024")  # oneDNN's defaults
    if unbounded < 50:
        pytest.skip(f"this CPU's bf16 matmuls do not fill oneDNN's kernel caches (+{unbounded} MiB): nothing to bound")
    bounded = growth()
    assert bounded < unbounded / 2, (bounded, unbounded)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc (Linux)")
def test_memory_a_finished_stage_freed_is_returned_before_the_next_stage_is_measured():
    """A stage's trainer and model sit in reference cycles: once the stage returns they are garbage, but
    the cyclic collector may not have run, and without it the next stage's peak RSS would count them.
    Here a 256 MiB buffer held only by a cycle is freed by `release_freed_memory` (measured: RSS falls by
    256 MiB; the assertion asks for 200), which the pipeline calls before each stage. A block this large is
    mmapped, so this checks the collection; `malloc_trim`'s share (heap pages) is not asserted."""
    import gc

    from finetune import manifest as mf

    class Node:
        pass

    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()  # the automatic collector must not free the cycle first
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a
        a.payload = bytearray(b"\x01") * (256 * 2**20)  # written, so every page is resident
        del a, b
        freed = mf.release_freed_memory()
    finally:
        if was_enabled:
            gc.enable()
    assert freed["rss_before_mb"] - freed["rss_after_mb"] > 200, freed
