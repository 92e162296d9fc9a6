"""B5: command-line start-up time: `finetune --help`, `finetune validate <recipe>` and `trl --help`.

Each command runs --runs times, the three alternating (A B C A B C ...), as fresh processes from the venv's
console scripts; medians are reported. Targets: each of ours <= 1 s, and faster than `trl --help`.

    python -m finetune.bench.startup [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from finetune.bench import ROOT, fmt_list, median, offline_env, summary_line

TARGET_S = 1.0


def commands(recipe: str) -> dict[str, list[str]]:
    """Label -> command line of the three timed commands, from the venv's console scripts."""
    bin_dir = Path(sys.executable).parent
    return {"finetune --help": [str(bin_dir / "finetune"), "--help"],
            f"finetune validate {recipe}": [str(bin_dir / "finetune"), "validate", recipe],
            "trl --help": [str(bin_dir / "trl"), "--help"]}


def time_once(cmd: list[str]) -> float:
    """Wall seconds of one run of `cmd` from the repository root; RuntimeError when it exits non-zero."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=offline_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {(proc.stderr or proc.stdout)[-400:]}")
    return elapsed


def main(argv=None) -> None:
    """B5: time the commands alternately (after a warm-up run each) and print medians and the summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs each")
    parser.add_argument("--runs", type=int, default=None, help="runs per command (default 15; quick 3)")
    parser.add_argument("--recipe", default="recipes/tiny/demo.yaml")
    args = parser.parse_args(argv)
    runs = args.runs or (3 if args.quick else 15)
    cmds = commands(args.recipe)
    missing = [c[0] for c in cmds.values() if not Path(c[0]).exists()]
    if missing:
        raise SystemExit(f"B5: console script(s) not found: {', '.join(missing)} (is the venv installed?)")
    for cmd in cmds.values():  # one untimed run each: the first touches cold files
        time_once(cmd)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, cmd in cmds.items():
            times[name].append(time_once(cmd))
    med = {name: median(t) for name, t in times.items()}
    print(f"B5 start-up: {runs} runs each, alternating, after one untimed warm-up run each")
    for name, t in times.items():
        print(f"  {name:<42} median {med[name]:6.3f} s   ({fmt_list(t)})")
    names = list(cmds)
    trl = med[names[2]]
    ours = {n: med[n] for n in names[:2]}
    for n, t in ours.items():
        print(f"  {n:<42} {t / trl:5.2f}x trl --help   (target <= {TARGET_S:.0f} s and < trl)")
    met = all(t <= TARGET_S and t < trl for t in ours.values())
    print(summary_line(5, "CLI start-up", f"--help {ours[names[0]]:.3f} s, validate {ours[names[1]]:.3f} s, trl "
                                          f"--help {trl:.3f} s",
                       f"{max(ours.values()) / trl:.2f}x trl", f"<= {TARGET_S:.0f} s and faster than trl", met))


if __name__ == "__main__":
    main()
