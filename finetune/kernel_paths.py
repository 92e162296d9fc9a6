"""CPU kernel paths: run a command on this CPU's own kernels or on the path one level below them.

Float sums round differently under AVX-512, AVX2 and plain SSE kernels (torch's vectorised ops, oneDNN's
matmuls, MKL's GEMM), so a seeded run is repeatable on one machine, not across machines. A result that holds
only by a hair on this CPU flips on the next one. Running the numerically sensitive tests and the demo a
second time on the path below this CPU's makes such a result fail here first. Three variables choose the
path, and torch, MKL and oneDNN each read theirs at start-up:

    ATEN_CPU_CAPABILITY       torch's own vectorised kernels (softmax, attention, reductions, elementwise)
    MKL_ENABLE_INSTRUCTIONS   MKL's fp32 GEMM (Intel CPUs; MKL runs its AVX2 path on AMD whatever is set)
    ONEDNN_MAX_CPU_ISA        oneDNN's kernels (bf16 matmuls, convolutions)

    python -m finetune.kernel_paths                   # this CPU's path and the one below it
    python -m finetune.kernel_paths lower -- CMD ...  # run CMD on the path below this CPU's

Variables already set count as the machine's own path: with `ATEN_CPU_CAPABILITY=avx2
MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2` an AVX-512 machine acts as an AVX2 one throughout,
`make test` included, and its lower path is then torch's plain kernels.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys

# torch's capability name -> the variables that select the path one level below it.
LOWER = {
    "AVX512": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "AVX2": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
EXPECTED = {"avx2": "AVX2", "default": "DEFAULT"}  # what torch reports once ATEN_CPU_CAPABILITY is set
VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")
_PROBE = "import torch; print(torch.backends.cpu.get_cpu_capability())"


def capability(env: dict | None = None) -> str:
    """torch's CPU capability ('AVX512', 'AVX2', 'DEFAULT', ...) in a fresh interpreter run with `env`.

    A fresh process, because torch reads ATEN_CPU_CAPABILITY once, at import.
    """
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


@functools.cache
def paths() -> dict[str, dict]:
    """{'native': env, 'lower': env}; 'lower' is absent where no path below exists (DEFAULT).

    'native' is this process's environment as it is: the CPU's own kernels, or the path a caller chose with
    the variables (`ATEN_CPU_CAPABILITY=avx2 ...` makes an AVX-512 machine act as an AVX2 one, and 'lower'
    is then the path below AVX2). Each env is a full environment for a child process (read it, don't change
    it: the result is cached). Raises RuntimeError if torch ignores the variables (the lower path would
    silently be the native one, and the second run would prove nothing).
    """
    base = dict(os.environ)
    native = capability(base)
    found = {"native": {**base, "FINETUNE_KERNEL_PATH": f"native ({native})"}}
    if native in LOWER:
        env = {**base, **LOWER[native]}
        got = capability(env)
        want = EXPECTED[LOWER[native]["ATEN_CPU_CAPABILITY"]]
        if got != want:
            raise RuntimeError(f"ATEN_CPU_CAPABILITY={LOWER[native]['ATEN_CPU_CAPABILITY']} gave torch "
                               f"capability {got}, not {want}")
        found["lower"] = {**env, "FINETUNE_KERNEL_PATH": f"lower ({got}, below {native})"}
    return found


def describe(env: dict) -> str:
    """One line naming a path and its variables, for logs and tables."""
    set_vars = " ".join(f"{k}={env[k]}" for k in VARIABLES if k in env)
    return f"{env.get('FINETUNE_KERNEL_PATH', 'native')}{f': {set_vars}' if set_vars else ''}"


def main(argv: list[str] | None = None) -> int:
    """`python -m finetune.kernel_paths [native|lower -- CMD...]`: list the kernel paths, or run CMD on one.

    Returns CMD's exit code, or 0 when listing or when this CPU has no lower path to run on.
    """
    parser = argparse.ArgumentParser(prog="python -m finetune.kernel_paths", description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", choices=("native", "lower"), help="the path to run CMD on")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS... (the command to run)")
    args = parser.parse_args(argv)
    found = paths()
    if args.path is None:
        for name, env in found.items():
            print(f"{name}: {describe(env)}")
        if "lower" not in found:
            print("lower: none (this CPU runs torch's plain kernels already)")
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("give the command to run after --")
    env = found.get(args.path)
    if env is None:
        print("kernel path: this CPU runs torch's plain kernels, there is no path below it; not run again",
              file=sys.stderr)
        return 0
    print(f"kernel path: {describe(env)}", file=sys.stderr, flush=True)
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
