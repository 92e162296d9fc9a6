"""Run the benchmarks and print a markdown table of their summary lines.

    python -m finetune.bench [--quick] [--threads N] [overhead packing memory generation startup]

Each benchmark runs as its own process (its output streams through); the default is all of them, in order
B1 overhead, B2 packing, B3 memory, B4 generation (eval/bench_generation.py), B5 startup. B6, the wall time of
`make demo`, is measured and printed by the demo itself.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

from finetune.bench import ROOT, offline_env

BENCHMARKS = {"overhead": "B1", "packing": "B2", "memory": "B3", "generation": "B4", "startup": "B5"}
THREADED = ("overhead", "packing", "memory")  # B1 defaults to 1 thread itself
# Wall time of a full run, from the --quick runs' per-step costs (1 thread on a loaded 2-core machine).
FULL_TIME = {"overhead": "~10 min", "packing": "~6 min", "memory": "~10 min", "generation": "~20 s",
             "startup": "~15 s"}


def command(name: str, quick: bool, threads: int | None) -> list[str]:
    """The command line that runs benchmark `name` (B4: eval/bench_generation.py; the others: their module)."""
    if name == "generation":
        rounds = ["--rounds", "1", "--copies", "1"] if quick else ["--rounds", "5"]
        return [sys.executable, "eval/bench_generation.py", *rounds]
    cmd = [sys.executable, "-m", f"finetune.bench.{name}", *(["--quick"] if quick else [])]
    if threads and name in THREADED:
        cmd += ["--threads", str(threads)]
    return cmd


def generation_row(lines: list[str]) -> list[str] | None:
    """B4's script predates the summary-line format: read its speed-up and identity lines."""
    text = "\n".join(lines)
    speed = re.search(r"speed-up batched / one-at-a-time: ([\d.]+)x\s+\(target >= ([\d.]+)x\)", text)
    same = re.search(r"predictions identical: (True|False)", text)
    if not speed:
        return None
    ok = float(speed.group(1)) >= float(speed.group(2)) and (same is None or same.group(1) == "True")
    figure = f"batched vs one-at-a-time generation; predictions identical {same.group(1) if same else '?'}"
    return ["B4", "eval generation", figure, f"{speed.group(1)}x", f">= {speed.group(2)}x, identical",
            "yes" if ok else "NO"]


def run(name: str, quick: bool, threads: int | None) -> tuple[list[str], float]:
    """Run one benchmark as a child process, streaming its output; returns (its table row, wall seconds).

    A child that fails or prints no summary line gets a "failed" row.
    """
    cmd = command(name, quick, threads)
    env = offline_env()
    if threads and name == "generation":  # B4 takes torch's thread count from the environment
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    pinned = threads and (name in THREADED or name == "generation")
    print(f"\n$ {' '.join(cmd[1:])}{f'   ({threads} thread(s))' if pinned else ''}", flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    code = proc.wait()
    elapsed = time.perf_counter() - started
    tag = BENCHMARKS[name]
    if name == "generation":
        row = generation_row(lines)
    else:
        found = [ln for ln in lines if ln.startswith(f"{tag} | ")]
        row = [c.strip() for c in found[-1].split(" | ")] if found else None
    if code != 0 or row is None:
        row = [tag, name, f"failed (exit {code}); see the output above", "-", "-", "NO"]
    return row, elapsed


def main(argv=None) -> None:
    """`python -m finetune.bench`: run the named benchmarks (default all) and print the markdown table."""
    parser = argparse.ArgumentParser(prog="python -m finetune.bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and 1 thread: proves each runs; the figures are noisy, not results")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for B1-B4 (default: torch's own, one per core; --quick: 1)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    rows = []
    for name in names:
        row, elapsed = run(name, args.quick, threads)
        rows.append((row, elapsed))
    print(f"\n## Benchmarks{' (--quick: noisy, small sizes; not results)' if args.quick else ''}\n")
    print("| | benchmark | figure | ratio | target | met? | wall |")
    print("|---|---|---|---|---|---|---|")
    for row, elapsed in rows:
        cells = [c.replace("|", "/") for c in row]
        print(f"| {' | '.join(cells)} | {elapsed:.0f} s |")
    print("| B6 | `make demo` wall time | measured and printed by the demo itself | | | | |")
    if args.quick:
        print("\nFull runs (without --quick) take about: " + ", ".join(f"{n} {FULL_TIME[n]}" for n in names)
              + " on a quiet 2-core machine.")


if __name__ == "__main__":
    main()
