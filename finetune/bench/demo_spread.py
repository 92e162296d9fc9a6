"""The demo's targets across seeds and CPU kernel paths: min / median / max per target, every run listed.

    python -m finetune.bench.demo_spread [--seeds 1 2 3 4 5] [--paths native lower] [--out DIR]
    make demo-spread

A seed fixes a run on one machine, not across machines: other kernels round float sums differently, and a
target met by a hair on one CPU flips on the next. So the demo runs once per seed on this CPU's own kernels
and once per seed on the path below them (finetune.kernel_paths), each in a fresh run folder, and the table
shows how far from its target each figure stays. 10 runs take 50 (Zen 5: AVX-512 and AVX2 paths) to
about 85 minutes (Zen 3: AVX2 and plain paths) on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from finetune import demo, kernel_paths
from finetune.bench import OFFLINE_ENV, ROOT

# figure -> (label, target text, met(value)); the learning targets are demo.checks'; these are their figures.
FIGURES = {
    "em_base": ("EM before SFT", "< 5", lambda v: v < 5),
    "em_sft": ("EM after SFT", ">= 50", lambda v: v >= 50),
    "f1_sft": ("F1 after SFT", "(reported)", None),
    "reward_accuracy": ("reward model held-out accuracy", ">= 0.9", lambda v: v >= 0.9),
    "em_ppo_minus_sft": ("EM after PPO - EM after SFT", f">= -{demo.EM_SLACK:g}", lambda v: v >= -demo.EM_SLACK),
    "ppo_p": ("  its paired exact p-value (McNemar)", "(reported)", None),
    "kl_ppo": ("PPO's KL to its start (watched answers, nats)", f"> {demo.MOVED_KL:g}", lambda v: v > demo.MOVED_KL),
    "em_dpo_minus_sft": ("EM after DPO - EM after SFT", f">= -{demo.EM_SLACK:g}", lambda v: v >= -demo.EM_SLACK),
    "dpo_p": ("  its paired exact p-value (McNemar)", "(reported)", None),
    "kl_dpo": ("DPO's KL to its start (watched answers, nats)", f"> {demo.MOVED_KL:g}", lambda v: v > demo.MOVED_KL),
    "em_grpo_minus_sft": ("EM after GRPO (F1 reward) - EM after SFT", f">= +{demo.GRPO_GAIN:g}",
                          lambda v: v >= demo.GRPO_GAIN),
    "kl_grpo": ("GRPO's KL to its start (watched answers, nats)", "(reported)", None),
    "wall_s": ("wall time (s)", f"<= {demo.TIME_TARGET_S} (printed, not tested)", None),
}


def _printed_wall_time(log: Path) -> re.Match | None:
    """The demo's own "demo wall time: N s" line in its log (N in whole seconds), or None."""
    return re.search(r"demo wall time: (\d+) s", log.read_text()) if log.exists() else None


def run_one(seed: int, path: str, env: dict, out: Path) -> dict:
    """One `make demo` run (python -m finetune.demo) with `seed` on kernel path `path`; its figures."""
    run_dir = out / f"{path}-seed{seed}"
    log = out / f"{path}-seed{seed}.log"
    done = _printed_wall_time(log)
    if done and (run_dir / "eval" / "results.json").exists():  # --reuse: a finished run is read, not rerun
        wall = float(done.group(1))
    else:
        started = time.perf_counter()
        with log.open("w") as f:
            code = subprocess.run([sys.executable, "-m", "finetune.demo", f"seed={seed}", f"output_dir={run_dir}"],
                                  cwd=ROOT, env={**env, **OFFLINE_ENV}, stdout=f, stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise RuntimeError(f"demo seed={seed} on the {path} path failed (exit {code}); see {log}")
        done = _printed_wall_time(log)  # the demo's own clock, as a reused run reads it; else this process's
        wall = float(done.group(1)) if done else time.perf_counter() - started
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    reward = json.loads((run_dir / "reward" / "manifest.json").read_text())["reward_accuracy"]["accuracy"]
    em = {stage: r[demo.TASK]["exact"] for stage, r in results.items()}
    sft = demo.per_question(run_dir, "sft")
    return {"seed": seed, "path": path, "kernels": kernel_paths.describe(env), "em_base": em["base"],
            "em_sft": em["sft"], "f1_sft": results["sft"][demo.TASK]["f1"], "reward_accuracy": reward,
            "em_ppo_minus_sft": round(em["ppo"] - em["sft"], 4), "em_dpo_minus_sft": round(em["dpo"] - em["sft"], 4),
            "em_grpo_minus_sft": round(em["grpo"] - em["sft"], 4) if "grpo" in em else None,
            **{f"{stage}_p": round(demo.paired_drop(sft, demo.per_question(run_dir, stage))["p"], 3)
               for stage in ("ppo", "dpo")},
            **{f"kl_{stage}": demo.final_kl(run_dir, stage) for stage in ("ppo", "dpo", "grpo")},
            "wall_s": round(wall, 1), "checks": demo.checks(results, reward, run_dir)}


def _num(key: str, value: float | None) -> str:
    """EM/F1 and seconds to one decimal (as EM is reported), accuracies and p-values to three, KL to four
    significant digits; "n/a" for a figure the run does not have (a stage that was not watched)."""
    if value is None:
        return "n/a"
    if key.startswith("kl_"):
        return format(value, ".4g")
    return format(round(value, 3 if key in ("reward_accuracy", "ppo_p", "dpo_p") else 1), "g")


def table(runs: list[dict]) -> str:
    """Markdown: one row per figure (min / median / max over the runs, met in every run?), then every run."""
    lines = [f"Demo targets over {len(runs)} runs ({len({r['seed'] for r in runs})} seeds x "
             f"{len({r['path'] for r in runs})} CPU kernel paths)\n",
             "| figure | min | median | max | target | met in every run |", "|---|---|---|---|---|---|"]
    for key, (label, target, met) in FIGURES.items():
        values = [r[key] for r in runs if r.get(key) is not None]
        if not values:
            lines.append(f"| {label} | n/a | n/a | n/a | {target} | **NO** |")
            continue
        every = "n/a" if met is None else ("yes" if len(values) == len(runs) and all(map(met, values)) else "**NO**")
        lines.append(f"| {label} | {_num(key, min(values))} | {_num(key, statistics.median(values))} | "
                     f"{_num(key, max(values))} | {target} | {every} |")
    lines += ["", "| path | seed | EM base | EM SFT | F1 SFT | reward acc. | PPO - SFT (p) | DPO - SFT (p) "
              "| KL PPO | KL DPO | GRPO - SFT | KL GRPO | wall (s) | targets |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        missed = [label for label, ok in r["checks"] if not ok]
        cells = [_num(k, r[k]) for k in ("em_base", "em_sft", "f1_sft", "reward_accuracy")]
        deltas = [("+" if r[k] >= 0 else "") + _num(k, r[k]) + f" (p {_num(p, r[p])})"
                  for k, p in (("em_ppo_minus_sft", "ppo_p"), ("em_dpo_minus_sft", "dpo_p"))]
        kls = [_num(k, r[k]) for k in ("kl_ppo", "kl_dpo")]
        grpo = r.get("em_grpo_minus_sft")
        kls += ["n/a" if grpo is None else ("+" if grpo >= 0 else "") + _num("em_grpo_minus_sft", grpo),
                _num("kl_grpo", r.get("kl_grpo"))]
        lines.append(f"| {r['path']} | {r['seed']} | {' | '.join(cells + deltas + kls)} | "
                     f"{_num('wall_s', r['wall_s'])} | "
                     f"{'all ok' if not missed else 'MISSED: ' + '; '.join(missed)} |")
    lines += ["", "Kernel paths: " + "; ".join(sorted({f"{r['path']} = {r['kernels']}" for r in runs}))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the demo once per seed on each kernel path, write spread.md and spread.json to `--out`.

    Returns 0 when every run met every target, 1 when one missed, 2 for a non-empty `--out` without `--reuse`.
    """
    parser = argparse.ArgumentParser(prog="python -m finetune.bench.demo_spread",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--paths", nargs="+", choices=("native", "lower"), default=["native", "lower"])
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the runs, logs and spread.md (default: runs/demo-spread/<time>)")
    parser.add_argument("--reuse", action="store_true",
                        help="read the runs already finished in --out instead of refusing a non-empty folder")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "runs" / "demo-spread" / datetime.now().strftime("%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()) and not args.reuse:
        print(f"error: --out {out}: folder is not empty; give a new one, or --reuse its finished runs",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    found = kernel_paths.paths()
    runs = []
    for path in args.paths:
        if path not in found:
            print(f"kernel path '{path}': none below this CPU's; skipped", flush=True)
            continue
        for seed in args.seeds:
            print(f"demo seed={seed} on {kernel_paths.describe(found[path])} ...", flush=True)
            run = run_one(seed, path, found[path], out)
            runs.append(run)
            missed = [label for label, ok in run["checks"] if not ok]
            print(f"  EM base {run['em_base']:g}, SFT {run['em_sft']:g}, reward accuracy {run['reward_accuracy']:g}, "
                  f"PPO-SFT {run['em_ppo_minus_sft']:+g} (KL {_num('kl_ppo', run['kl_ppo'])}), "
                  f"DPO-SFT {run['em_dpo_minus_sft']:+g} (KL {_num('kl_dpo', run['kl_dpo'])}), "
                  f"GRPO-SFT {_num('em_grpo_minus_sft', run['em_grpo_minus_sft'])}, {run['wall_s']:g} s"
                  f"{'' if not missed else '  MISSED: ' + '; '.join(missed)}", flush=True)
    report = table(runs)
    (out / "spread.md").write_text(report + "\n")
    (out / "spread.json").write_text(json.dumps(runs, indent=1) + "\n")
    print("\n" + report + f"\n\n(written to {out / 'spread.md'})")
    return 0 if all(ok for r in runs for _, ok in r["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
