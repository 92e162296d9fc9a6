"""B1: the toolkit's SFT stage vs a bare TRL script with identical settings (step time, peak memory, losses).

Each round runs both variants, alternating which goes first, each in its own fresh subprocess (ru_maxrss is
monotone per process) with its own fresh temp output folder:

  ours  `run_recipe` on a one-stage recipe written to a temp YAML: data audit, data loading/normalising, label
        audit, then TRL's SFTTrainer; a callback added to the trainer times the training steps only.
  bare  SFTTrainer + SFTConfig built directly: the same model folder, the same jsonl `messages` rows in the
        same order (the stage shuffles them with the recipe seed; so does this script), the same settings.

Step time = (on_train_end - on_train_begin) / steps; the median of per-step (on_step_begin..on_step_end)
times is printed beside it. Memory: the training-window peak (VmHWM reset at on_train_begin) and the process
peak (ru_maxrss), both minus the RSS right after `import torch, transformers, trl`.
Target: ours/bare <= 1.03 for step time and peak memory, and the first 3 logged losses identical.

    python -m finetune.bench.overhead [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from finetune.bench import (
    add_threads_arg,
    current_rss_mb,
    emit_json,
    fmt_list,
    median,
    process_peak_mb,
    reset_peak,
    run_child,
    set_threads,
    summary_line,
    window_peak_mb,
)

TARGET = 1.03
FIRST_LOSSES = 3


def make_timer():
    """A TrainerCallback recording the training loop's wall time, per-step times, logged losses and RSS peak."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Times the training loop only (not model loading, data preparation or the audits)."""

        def __init__(self):
            self.begin = self.end = self.step_start = None
            self.steps: list[float] = []
            self.losses: list[float] = []
            self.rss_begin = None
            self.peak_reset = False

        def on_train_begin(self, args, state, control, **kwargs):
            self.rss_begin = current_rss_mb()
            self.peak_reset = reset_peak()
            self.begin = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            self.step_start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(time.perf_counter() - self.step_start)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def on_train_end(self, args, state, control, **kwargs):
            self.end = time.perf_counter()
            self.window_peak = window_peak_mb()
            self.global_step = state.global_step

    return StepTimer()


def train_settings(args) -> dict:
    """The SFTConfig fields both variants set (ours through the recipe's `train:` block)."""
    return {"max_steps": args.steps, "per_device_train_batch_size": args.batch, "learning_rate": args.lr,
            "max_length": args.max_length, "bf16": False, "use_cpu": True, "report_to": "none",
            "save_strategy": "no", "gradient_checkpointing": False, "logging_steps": 1}


def run_ours(args, workdir: Path, timer) -> None:
    """The toolkit's variant: a one-stage SFT recipe run by `run_recipe` in `workdir`, with `timer` added to
    its SFTTrainer (SFTTrainer.__init__ is patched in this child process to add it)."""
    import trl
    import yaml

    from finetune.pipeline import run_recipe
    from finetune.recipe import load_recipe

    recipe = {"name": "bench-overhead", "seed": args.seed,
              "base_model": {"path": args.model, "dtype": "float32"},
              "data": {"rows": {"path": args.data}},
              "stages": [{"name": "sft", "kind": "sft", "data": ["rows"], "train": train_settings(args)}]}
    path = workdir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    original = trl.SFTTrainer.__init__

    def init_with_timer(self, *a, **k):
        original(self, *a, **k)
        self.add_callback(timer)

    trl.SFTTrainer.__init__ = init_with_timer
    run_recipe(load_recipe(path), output_dir=str(workdir / "run"))


def run_bare(args, workdir: Path, timer) -> None:
    """The bare-TRL variant: the same rows, model and SFTConfig settings straight into SFTTrainer, with `timer`."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = []
    with open(args.data, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                msgs = json.loads(line)["messages"]
                rows.append({"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]})
    dataset = datasets.Dataset.from_list(rows).shuffle(seed=args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    # data_seed and dataloader_pin_memory: what the toolkit sets on CPU, mirrored so the settings are identical.
    config = SFTConfig(output_dir=str(workdir / "out"), seed=args.seed, data_seed=args.seed,
                       dataloader_pin_memory=False, assistant_only_loss=True, **train_settings(args))
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    trainer.add_callback(timer)
    trainer.train()


def child(args) -> None:
    """Train one variant (`args.variant`) in this process and emit its timings, RSS and losses as tagged JSON."""
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    rss_imports = current_rss_mb()
    timer = make_timer()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench-b1-{args.variant}-") as tmp:
        (run_ours if args.variant == "ours" else run_bare)(args, Path(tmp), timer)
    steps = timer.global_step
    emit_json({
        "variant": args.variant, "steps": steps, "step_s": (timer.end - timer.begin) / steps,
        "median_step_s": median(timer.steps), "losses": timer.losses[:FIRST_LOSSES],
        "rss_imports_mb": rss_imports, "rss_train_begin_mb": timer.rss_begin,
        "window_peak_mb": timer.window_peak if timer.peak_reset else None,
        "process_peak_mb": process_peak_mb(), "wall_s": time.perf_counter() - started,
        "packages": sorted({m.split(".")[0] for m in sys.modules if not m.startswith("_")}),
    })


def parent(args) -> dict:
    """Alternate the two variants in child processes (warm-up rounds first), print the medians and ratios,
    and return {"line": the B1 summary line}."""
    common = ["--model", args.model, "--data", args.data, "--steps", str(args.steps), "--batch", str(args.batch),
              "--lr", str(args.lr), "--max-length", str(args.max_length), "--seed", str(args.seed)]
    results: dict[str, list[dict]] = {"ours": [], "bare": []}
    threads = set_threads(args.threads)
    print(f"B1 SFT overhead: {args.model}, {args.data}, {args.steps} steps x batch {args.batch}, max_length "
          f"{args.max_length}, {args.rounds} rounds (+{args.warmup} warm-up), one subprocess per variant per round, "
          f"{threads}", flush=True)
    for r in range(args.warmup + args.rounds):
        order = ("ours", "bare") if r % 2 == 0 else ("bare", "ours")
        for variant in order:
            out = run_child(["-m", "finetune.bench.overhead", "--variant", variant, *common])
            tag = "warm-up" if r < args.warmup else f"round {r - args.warmup + 1}"
            print(f"  {tag:<8} {variant:<4} step {out['step_s'] * 1e3:8.1f} ms  window peak "
                  f"{(out['window_peak_mb'] or float('nan')) - out['rss_imports_mb']:7.1f} MiB  process peak "
                  f"{out['process_peak_mb'] - out['rss_imports_mb']:7.1f} MiB  ({out['wall_s']:.1f} s)", flush=True)
            if r >= args.warmup:
                results[variant].append(out)

    def med(variant: str, key: str, minus_imports: bool = False) -> float:
        return median([(o[key] or float("nan")) - (o["rss_imports_mb"] if minus_imports else 0)
                       for o in results[variant]])

    step = {v: med(v, "step_s") for v in results}
    per_step = {v: med(v, "median_step_s") for v in results}
    window = {v: med(v, "window_peak_mb", True) for v in results}
    process = {v: med(v, "process_peak_mb", True) for v in results}
    ours_losses, bare_losses = results["ours"][0]["losses"], results["bare"][0]["losses"]
    same = (ours_losses == bare_losses and len(ours_losses) == FIRST_LOSSES
            and all(o["losses"] == ours_losses for o in results["ours"] + results["bare"]))
    held = {v: med(v, "rss_train_begin_mb", True) for v in results}
    for v in results:
        print(f"  {v:<4} step median {step[v] * 1e3:8.1f} ms  (per-step median {per_step[v] * 1e3:.1f} ms; rounds "
              f"{fmt_list([o['step_s'] * 1e3 for o in results[v]], '.1f')})")
        print(f"       peak RSS in the training window - imports {window[v]:7.1f} MiB = held at train begin "
              f"{held[v]:6.1f} + added by training {window[v] - held[v]:6.1f};  process peak - imports "
              f"{process[v]:7.1f} MiB  (RSS after imports {med(v, 'rss_imports_mb'):.0f} MiB)")
    ratio_step, ratio_window, ratio_process = (step["ours"] / step["bare"], window["ours"] / window["bare"],
                                               process["ours"] / process["bare"])
    paired = median([o["step_s"] / b["step_s"] for o, b in zip(results["ours"], results["bare"], strict=True)])
    print(f"  step time ours/bare:            {ratio_step:.3f}   (target <= {TARGET}; median of per-round ratios "
          f"{paired:.3f})")
    print(f"  per-step median ours/bare:      {per_step['ours'] / per_step['bare']:.3f}")
    print(f"  training-window peak ours/bare: {ratio_window:.3f}   (target <= {TARGET}; ours - bare = "
          f"{window['ours'] - window['bare']:+.1f} MiB, a fixed amount: the ratio shrinks with model size)")
    print(f"  process peak ours/bare:         {ratio_process:.3f}   (includes the data and label audits, "
          f"data loading and the post-training save)")
    only_ours = sorted(set(results["ours"][0]["packages"]) - set(results["bare"][0]["packages"]))
    print(f"  top-level packages only ours imported (part of what it holds at train begin): "
          f"{', '.join(only_ours) or 'none'}")
    print(f"  first {FIRST_LOSSES} losses ours: {ours_losses}")
    print(f"  first {FIRST_LOSSES} losses bare: {bare_losses}")
    print(f"  losses identical (every round, both variants): {same}")
    met = ratio_step <= TARGET and ratio_window <= TARGET and same
    line = summary_line(1, "SFT stage overhead vs bare TRL",
                        f"step {step['ours'] * 1e3:.1f} vs {step['bare'] * 1e3:.1f} ms; window peak "
                        f"{window['ours']:.0f} vs {window['bare']:.0f} MiB; process peak ratio {ratio_process:.3f}; "
                        f"losses identical {same}",
                        f"step {ratio_step:.3f}, mem {ratio_window:.3f}", f"<= {TARGET}, losses identical", met)
    print(line)
    return {"line": line}


def main(argv=None) -> None:
    """B1 entry point: the parent (both variants, 1 thread by default) or, with `--variant`, one child."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps and rounds: proves it runs, noisy figures")
    parser.add_argument("--variant", choices=("ours", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--model", default="models/tiny-llama")
    parser.add_argument("--data", default="recipes/data/qa/sft.jsonl")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 100; quick 8)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=None,
                        help="measured rounds, even so each variant goes first equally often (default 10; quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="unrecorded rounds first (default 1; quick 0)")
    add_threads_arg(parser)
    args = parser.parse_args(argv)
    if args.threads is None:  # one thread: a 2-thread step stalls whenever the VM takes either core away, and
        args.threads = 1    # the +-20% noise that makes would hide a 3% difference
    args.steps = args.steps or (8 if args.quick else 100)
    args.rounds = args.rounds or (2 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    if args.variant:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
