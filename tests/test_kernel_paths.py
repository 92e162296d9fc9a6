"""finetune.kernel_paths: the path below this CPU's kernels really runs other kernels, and commands run on it."""

from __future__ import annotations

import os
import subprocess
import sys

from finetune import kernel_paths


def test_lower_path_is_below_the_native_one_and_torch_takes_it():
    found = kernel_paths.paths()
    native = kernel_paths.capability(found["native"])
    assert found["native"]["FINETUNE_KERNEL_PATH"] == f"native ({native})"
    if native not in kernel_paths.LOWER:  # a CPU with torch's plain kernels only has no path below it
        assert "lower" not in found
        return
    lower = found["lower"]
    assert {k: lower[k] for k in kernel_paths.VARIABLES} == kernel_paths.LOWER[native]
    assert kernel_paths.capability(lower) == kernel_paths.EXPECTED[lower["ATEN_CPU_CAPABILITY"]] != native


def test_a_callers_path_is_the_native_one_and_lower_goes_below_it():
    """ATEN_CPU_CAPABILITY=avx2 ... makes an AVX-512 machine act as an AVX2 one, whose lower path is plain."""
    if kernel_paths.capability() != "AVX512":
        return  # only an AVX-512 machine can act as an AVX2 one
    probe = ("from finetune import kernel_paths as k; p = k.paths(); "
             "print(k.capability(p['native']), k.capability(p['lower']))")
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **kernel_paths.LOWER["AVX512"]},
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["AVX2", "DEFAULT"]


def test_run_a_command_on_the_lower_path():
    probe = "import os, torch; print(torch.backends.cpu.get_cpu_capability(), os.environ['FINETUNE_KERNEL_PATH'])"
    out = subprocess.run([sys.executable, "-m", "finetune.kernel_paths", "lower", "--", sys.executable, "-c", probe],
                         capture_output=True, text=True, check=True)
    found = kernel_paths.paths()
    if "lower" in found:
        expected = kernel_paths.EXPECTED[found["lower"]["ATEN_CPU_CAPABILITY"]]
        assert out.stdout.split()[0] == expected and out.stdout.split()[1] == "lower"
        assert "kernel path: lower" in out.stderr
    else:
        assert out.stdout == "" and "no path below" in out.stderr


def test_no_command_is_a_usage_error():
    out = subprocess.run([sys.executable, "-m", "finetune.kernel_paths", "lower", "--"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "give the command to run" in out.stderr
