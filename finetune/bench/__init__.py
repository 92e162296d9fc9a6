"""Benchmarks B1-B5: each alternates its variants (A B A B ...) in one run and prints medians and ratios.

    python -m finetune.bench [--quick] [overhead packing memory startup generation]

Every benchmark ends with one summary line `B<n> | name | figure | ratio | target | met` that
`python -m finetune.bench` collects into a markdown table. Helpers here stay import-light (no torch).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
JSON_TAG = "BENCH_JSON "
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def offline_env() -> dict:
    """This process's environment with OFFLINE_ENV on top (no hub access, quiet transformers), for children."""
    return {**os.environ, **OFFLINE_ENV}


def set_threads(n: int | None) -> str:
    """Pin the torch/OpenMP thread count for this process and the children it starts (None: torch's default).

    On a loaded machine, torch's default (one thread per core) can run 10x slower than one thread when
    another process holds a core, so `--quick` runs use 1 thread; record real figures on a quiet machine.
    """
    if not n:
        return f"torch default ({os.cpu_count()} cores)"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return f"{n} thread{'s' if n > 1 else ''}"


def add_threads_arg(parser) -> None:
    """Add `--threads N` (torch threads; default torch's own) to a benchmark's argparse parser."""
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own, one per core; --quick: 1)")


def median(xs) -> float:
    """The median of `xs`, or NaN when it is empty."""
    return statistics.median(xs) if xs else float("nan")


def fmt_list(xs, spec: str = ".3f") -> str:
    """`xs` formatted with `spec` and joined with ", " (the per-run figures beside a median)."""
    return ", ".join(format(x, spec) for x in xs)


def summary_line(n: int, name: str, figure: str, ratio: str, target: str, met: bool | None) -> str:
    """The one line per benchmark that `python -m finetune.bench` turns into a table row."""
    verdict = "n/a" if met is None else ("yes" if met else "NO")
    return f"B{n} | {name} | {figure} | {ratio} | {target} | {verdict}"


# --- memory probes (Linux /proc; MiB) ---------------------------------------------------------------------

def current_rss_mb() -> float:
    """Resident set size now."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def process_peak_mb() -> float:
    """Peak RSS of this process since it started (ru_maxrss is in KiB on Linux; monotone)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS, so a later phase's peak can be read alone.

    Writing 5 to /proc/self/clear_refs does this (Linux >= 4.0). ru_maxrss is not reset by it.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def window_peak_mb() -> float:
    """VmHWM: the peak RSS since the last `reset_peak()` (or since the process started)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --- subprocess plumbing ----------------------------------------------------------------------------------

def emit_json(payload: dict) -> None:
    """A child's result: one tagged JSON line on stdout."""
    print(JSON_TAG + json.dumps(payload), flush=True)


def run_child(args: list[str], timeout: float | None = None, env: dict | None = None) -> dict:
    """Run `python -m ...args` from the repository root and return the JSON its last tagged line carries."""
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env={**offline_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(JSON_TAG)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"benchmark child {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len(JSON_TAG):])
