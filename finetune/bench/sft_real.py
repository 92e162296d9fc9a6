"""B10: the real model's LoRA SFT step on real rows: fp32 or bf16, padded or packed, as non-pad tokens/s and MFU.

Each variant is the real recipe's own SFT stage (`finetune run recipes/smollm2/135m-squad.yaml --only sft`,
SmolLM2-135M-Instruct, LoRA r 16, no gradient checkpointing) for `--steps` optimiser steps in a process of its
own, with these settings on top (variants alternate A B C ... then ... C B A, so machine noise hits each alike):

  fp32_padded    the 833 one-question rows (XQuAD-en training articles), 8 rows a step padded to the longest,
                 fp32: the toolkit's CPU default before the precision followed the hardware (the baseline)
  fp32_packed    the same rows packed into rows of 1024 tokens kept apart (finetune.packing), 2 rows a step
                 (about the 8 rows' tokens), fp32
  bf16_padded    fp32_padded under bf16 autocast
  bf16_packed    fp32_packed under bf16 autocast
  bf16_packed_nodrop   bf16_packed without the adapter's input dropout (peft lora_dropout 0; the other question-row
                 variants keep 0.05, the recipe's until 2026-12-02): drawing the dropout masks
                 (aten::bernoulli_, one per adapted layer) took 18% of a bf16_packed step in torch's profiler
                 on a Zen 4
  bf16_grouped_nodrop  8 rows a step padded to the longest, the rows grouped by length (transformers'
                 `train_sampling_strategy: group_by_length`, LengthGroupedSampler), bf16, no dropout: attention
                 runs over each row's own length, not over packed rows of 1024 behind a block-diagonal mask.
                 Runs `--grouped-steps` steps (default 50, one of the sampler's megabatches of 50 batches: a random
                 400 rows, sorted longest first; fewer steps would time only the megabatch's longest rows)
  recipe         the recipe as committed: one paragraph conversation a step (each context read once), in the
                 precision the hardware picks (bf16 where native)
  recipe_fp32    the recipe in fp32 (bf16: false)
  recipe_dropout the recipe with the adapter dropout of 0.05 it had until 2026-12-02 (0 since)
  recipe_mmap    the recipe with glibc's mmap threshold fixed at 1 MiB (MALLOC_MMAP_THRESHOLD_): blocks that
                 large go back to the OS when freed instead of staying in the heap (measures what the heap keeps)
  recipe_bf16w   the recipe with the frozen base weights stored in bf16 (base_model.dtype: bfloat16; peft keeps
                 the adapter in fp32) under bf16 autocast: no per-step cast of every weight, bf16 activations

Non-pad tokens/s = TRL's num_tokens / the training loop's train_runtime, from the stage's manifest; MFU as in
B8 (finetune.bench.mfu: model FLOPs per token from the architecture against the measured dense GEMM peak of
the stage's compute dtype). Peak RSS is the stage's own (its manifest). Target (issue: fast on the machine you
have): the fastest correct variant >= 3x fp32_padded's tokens/s on a CPU with native bf16; >= 50% of the bf16
GEMM peak.

    .venv/bin/python -m finetune.bench.sft_real [--steps 8] [--grouped-steps 50] [--rounds 2]
        [--variants fp32_padded,bf16_packed]
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
TARGET = 3.0
QUESTIONS = ["stages.sft.data=[squad]", "stages.sft.train.gradient_accumulation_steps=1",
             "stages.sft.peft.dropout=0.05"]
PADDED = [*QUESTIONS, "stages.sft.train.per_device_train_batch_size=8", "stages.sft.train.packing=false"]
PACKED = [*QUESTIONS, "stages.sft.train.per_device_train_batch_size=2", "stages.sft.train.packing=true"]
NO_DROPOUT = "stages.sft.peft.dropout=0"
GROUPED = [*PADDED, "stages.sft.train.train_sampling_strategy=group_by_length"]
VARIANTS = {
    "fp32_padded": [*PADDED, "stages.sft.train.bf16=false"],
    "fp32_packed": [*PACKED, "stages.sft.train.bf16=false"],
    "bf16_padded": [*PADDED, "stages.sft.train.bf16=true"],
    "bf16_packed": [*PACKED, "stages.sft.train.bf16=true"],
    "bf16_packed_nodrop": [*PACKED, "stages.sft.train.bf16=true", NO_DROPOUT],
    "bf16_grouped_nodrop": [*GROUPED, "stages.sft.train.bf16=true", NO_DROPOUT],
    "recipe": [],
    "recipe_fp32": ["stages.sft.train.bf16=false"],
    "recipe_dropout": ["stages.sft.peft.dropout=0.05"],
    "recipe_bf16w": ["base_model.dtype=bfloat16", "stages.sft.train.bf16=true"],
    "recipe_mmap": [],
}
ENV = {"recipe_mmap": {"MALLOC_MMAP_THRESHOLD_": str(2**20)}}


def run_variant(name: str, steps: int, out: Path) -> Path:
    """Train variant `name` for `steps` steps into `out` (a new run folder) and return its SFT stage folder.

    Raises RuntimeError with the run's last output lines when `finetune run` fails."""
    cmd = [sys.executable, "-m", "finetune", "run", RECIPE, "--only", "sft", "--output-dir", str(out),
           "eval.tasks=[]", "eval.base=false", f"stages.sft.train.max_steps={steps}",
           "stages.sft.train.save_strategy=no", "stages.sft.train.logging_steps=1", *VARIANTS[name]]
    env = {**offline_env(), **ENV.get(name, {})}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"{name}: finetune run failed ({done.returncode}):\n{tail}")
    return out / "sft"


def main(argv: list[str] | None = None) -> None:
    """B10: measure the GEMM peaks, alternate the variants' SFT runs, print tokens/s, MFU, RSS and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps per run")
    parser.add_argument("--grouped-steps", type=int, default=50, help="optimiser steps per run of a grouped variant")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")

    import torch

    from finetune.bench.mfu import gemm_peak, stage_mfu
    from finetune.precision import detect, training

    peaks = {dt: gemm_peak(dt) for dt in ("float32", "bfloat16")}
    choice = training({}, detect())
    print(f"B10 real-model SFT: {RECIPE} sft stage, {args.steps} steps ({args.grouped_steps} grouped) x "
          f"{args.rounds} rounds, "
          f"{torch.get_num_threads()} threads; GEMM peak fp32 {peaks['float32']:.0f}, bf16 "
          f"{peaks['bfloat16']:.0f} GFLOP/s; the hardware's pick: {choice.name} ({choice.reason})", flush=True)
    results: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="bench-b10-") as tmp:
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                steps = args.grouped_steps if "grouped" in name else args.steps
                stage = run_variant(name, steps, Path(tmp) / f"{name}-{r}")
                res = stage_mfu(stage, peaks)
                manifest = json.loads((stage / "manifest.json").read_text())
                res["peak_rss_gb"] = manifest["memory"]["peak_rss_mb"] / 1024
                rows = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines()]
                res["first_loss"] = next((row["loss"] for row in rows if "loss" in row), float("nan"))
                results[name].append(res)
                print(f"  round {r + 1} {name:<12} {res['tokens_per_second']:7.1f} non-pad tokens/s "
                      f"({res['tokens']:.0f} tokens in {res['seconds']:.1f} s, {res['compute']}), MFU "
                      f"{100 * res['mfu']:.1f}%, peak RSS {res['peak_rss_gb']:.2f} GB, first loss "
                      f"{res['first_loss']:.4f}", flush=True)
    tok_s = {n: median([x["tokens_per_second"] for x in results[n]]) for n in names}
    for n in names:
        mfu = median([x["mfu"] for x in results[n]])
        each = fmt_list([x["tokens_per_second"] for x in results[n]], ".1f")
        rss = median([x["peak_rss_gb"] for x in results[n]])
        print(f"  {n:<12} median {tok_s[n]:7.1f} tokens/s ({each})"
              f", MFU {100 * mfu:.1f}% of the {results[n][0]['compute']} peak, peak RSS {rss:.2f} GB, "
              f"{results[n][0]['gflop_per_token']} GFLOP/token")
    if "fp32_padded" in tok_s:
        for n in names:
            if n != "fp32_padded":
                print(f"  {n} / fp32_padded: {tok_s[n] / tok_s['fp32_padded']:.2f}x   (target >= {TARGET}x)")


if __name__ == "__main__":
    main()
