"""B11: the real recipe's DPO step with the language-model head on every position (TRL's DPOTrainer) or on the
completions' positions only (finetune.completion_logits, what the dpo stage uses).

Each variant is the real recipe's own DPO stage (`finetune run recipes/smollm2/135m-squad.yaml --only dpo`: the
SFT model of a finished run, LoRA r 16, the chosen answer's NLL added, 8 pairs a step one at a time) for
`--steps` optimiser steps in a process of its own; the variants alternate A B then B A. `trl` swaps TRL's
DPOTrainer in for the stage's trainer before the stage starts; `completion` runs the stage as committed.

Reports pairs/s (median over rounds), the speed-up, each run's peak RSS (the stage's manifest) and the first
and last logged loss, reward margin and chosen log-probability, which must agree: the two compute the same
loss from the same hidden states.

    .venv/bin/python -m finetune.bench.dpo_real --run runs/smollm2-135m-squad [--steps 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from finetune.bench import ROOT, fmt_list, median, offline_env

RECIPE = "recipes/smollm2/135m-squad.yaml"
VARIANTS = ("trl", "completion")
LOGGED = ("loss", "rewards/margins", "logps/chosen")
# the `trl` variant's process: the CLI after use_trls_trainer
AS_TRL = ("import sys; from finetune.bench.dpo_real import use_trls_trainer; use_trls_trainer(); "
          "from finetune.cli import main; sys.exit(main(sys.argv[1:]))")


def use_trls_trainer() -> None:
    """Make this process's dpo stage train with TRL's DPOTrainer (the `trl` variant). Side effect: replaces
    finetune.completion_logits.CompletionLogitsDPOTrainer, which the stage imports when it runs."""
    import trl

    from finetune import completion_logits

    completion_logits.CompletionLogitsDPOTrainer = trl.DPOTrainer


def run_variant(name: str, run: Path, steps: int, out: Path) -> Path:
    """Train variant `name` of the dpo stage for `steps` steps into run folder `out`, whose `sft` is a link to
    `run`'s finished SFT stage, and return the DPO stage folder.

    Raises RuntimeError with the run's last output lines when `finetune run` fails."""
    out.mkdir(parents=True)
    (out / "sft").symlink_to((run / "sft").resolve())
    head = [sys.executable, "-c", AS_TRL] if name == "trl" else [sys.executable, "-m", "finetune"]
    cmd = [*head, "run", RECIPE, "--only", "dpo", "--output-dir", str(out), "eval.tasks=[]", "eval.base=false",
           f"stages.dpo.train.max_steps={steps}", "stages.dpo.train.logging_steps=1"]
    done = subprocess.run(cmd, cwd=ROOT, env=offline_env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"{name}: finetune run failed ({done.returncode}):\n{tail}")
    return out / "dpo"


def measure(stage: Path) -> dict:
    """Pairs/s, seconds, peak RSS (GiB) and the first and last logged values of LOGGED from a dpo stage."""
    manifest = json.loads((stage / "manifest.json").read_text())
    metrics = manifest["train_metrics"]
    rows = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines()]
    logged = [row for row in rows if "loss" in row and "train_runtime" not in row]
    return {"seconds": metrics["train_runtime"], "pairs_per_second": metrics["train_samples_per_second"],
            "peak_rss_gb": manifest["memory"]["peak_rss_mb"] / 1024,
            "first": {k: logged[0][k] for k in LOGGED}, "last": {k: logged[-1][k] for k in LOGGED}}


def main(argv: list[str] | None = None) -> None:
    """B11: alternate the two variants' DPO runs; print pairs/s, speed-up, peak RSS and the logged values."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/smollm2-135m-squad", help="a finished run of the real recipe")
    parser.add_argument("--steps", type=int, default=6, help="optimiser steps (of 8 pairs) per run")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    run = Path(args.run)
    if not (run / "sft" / "manifest.json").is_file():
        parser.error(f"{run}: no finished sft stage; run `make smollm2-135m-squad` first")

    import torch

    print(f"B11 real-model DPO: {RECIPE} dpo stage from {run}/sft, {args.steps} steps x {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads", flush=True)
    results: dict[str, list[dict]] = {n: [] for n in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench-b11-") as tmp:
        for r in range(args.rounds):
            for name in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
                res = measure(run_variant(name, run, args.steps, Path(tmp) / f"{name}-{r}"))
                results[name].append(res)
                print(f"  round {r + 1} {name:<10} {res['pairs_per_second']:.3f} pairs/s ({res['seconds']:.1f} s), "
                      f"peak RSS {res['peak_rss_gb']:.2f} GB, first {res['first']}, last {res['last']}",
                      flush=True)
    speed = {n: median([x["pairs_per_second"] for x in results[n]]) for n in VARIANTS}
    for n in VARIANTS:
        rss = median([x["peak_rss_gb"] for x in results[n]])
        each = fmt_list([x["pairs_per_second"] for x in results[n]], ".3f")
        print(f"  {n:<10} median {speed[n]:.3f} pairs/s ({each}), peak RSS {rss:.2f} GB")
    print(f"  completion / trl: {speed['completion'] / speed['trl']:.2f}x")


if __name__ == "__main__":
    main()
