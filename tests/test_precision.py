"""The float format is read from the hardware: bf16 where it is native, fp32 elsewhere; the recipe wins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from finetune import precision
from finetune.precision import Hardware, cpu_native_bf16

NATIVE_CPU = Hardware(cuda=False, cuda_bf16=False, cpu_bf16=True, cpu_reason="the CPU runs bf16 natively")
AVX2_CPU = Hardware(cuda=False, cuda_bf16=False, cpu_bf16=False, cpu_reason="no native bf16")
OLD_GPU = Hardware(cuda=True, cuda_bf16=False, cpu_bf16=True, cpu_reason="the CPU runs bf16 natively")
NEW_GPU = Hardware(cuda=True, cuda_bf16=True, cpu_bf16=False, cpu_reason="no native bf16")


@pytest.mark.parametrize(
    ("flags", "capability", "isa", "native", "words"),
    [
        ({"avx512_bf16"}, "AVX512", None, True, "avx512_bf16"),
        ({"amx_tile", "avx512_bf16"}, "AVX512", None, True, "amx_tile, avx512_bf16"),
        (set(), "AVX512", None, False, "no AVX512-BF16 or AMX"),
        ({"avx512_bf16"}, "AVX2", None, False, "AVX2 kernels"),  # ATEN_CPU_CAPABILITY=avx2
        ({"avx512_bf16"}, "DEFAULT", None, False, "DEFAULT kernels"),
        ({"avx512_bf16"}, "AVX512", "AVX2", False, "capped at AVX2"),  # ONEDNN_MAX_CPU_ISA=AVX2
        ({"avx512_bf16"}, "AVX512", "avx512_core", False, "capped at AVX512_CORE"),
        ({"avx512_bf16"}, "AVX512", "AVX512_CORE_BF16", True, "avx512_bf16"),
    ],
)
def test_native_bf16_from_flags_kernels_and_caps(flags, capability, isa, native, words):
    got, reason = cpu_native_bf16(flags, capability, isa)
    assert got is native
    assert words in reason


@pytest.mark.parametrize(
    ("train", "hw", "bf16", "fp16", "why"),
    [
        ({}, NATIVE_CPU, True, False, "natively"),
        ({}, AVX2_CPU, False, False, "no native bf16"),
        ({"bf16": False}, NATIVE_CPU, False, False, "set by the recipe"),  # the recipe always wins
        ({"bf16": True}, AVX2_CPU, True, False, "set by the recipe"),
        ({"fp16": True}, NATIVE_CPU, False, True, "set by the recipe"),
        ({}, NEW_GPU, True, False, "GPU supports bf16"),
        ({}, OLD_GPU, False, False, "GPU has no bf16"),  # a CPU's bf16 says nothing about the GPU
    ],
)
def test_training_precision(train, hw, bf16, fp16, why):
    chosen = precision.training(train, hw)
    assert (chosen.bf16, chosen.fp16) == (bf16, fp16)
    assert why in chosen.reason
    assert chosen.record()["compute"] == ("bf16 autocast" if bf16 else "fp16 autocast" if fp16 else "fp32")


def test_of_args_names_the_recipe_only_when_it_differs_from_the_hardware_choice():
    assert (
        precision.of_args(SimpleNamespace(bf16=True, fp16=False), NATIVE_CPU).reason == NATIVE_CPU.cpu_reason
    )
    assert precision.of_args(SimpleNamespace(bf16=False, fp16=False), NATIVE_CPU).reason.startswith("set by")
    assert precision.of_args(SimpleNamespace(bf16=False, fp16=False), AVX2_CPU).reason == AVX2_CPU.cpu_reason


@pytest.mark.parametrize(
    ("requested", "hw", "dtype"),
    [
        ("auto", NATIVE_CPU, "bfloat16"),
        ("auto", AVX2_CPU, None),
        ("auto", NEW_GPU, None),
        ("float32", NATIVE_CPU, "float32"),
        ("bfloat16", AVX2_CPU, "bfloat16"),
    ],
)
def test_generation_dtype(requested, hw, dtype):
    assert precision.generation_dtype(requested, hw)[0] == dtype


def test_cast_for_generation_casts_a_model_and_leaves_none_alone():
    import torch

    model = torch.nn.Linear(4, 4)
    assert precision.cast_for_generation(model, None) == "float32"
    assert model.weight.dtype == torch.float32
    assert precision.cast_for_generation(model, "bfloat16") == "bfloat16"
    assert model.weight.dtype == torch.bfloat16


def test_detect_follows_the_kernel_path_variables():
    """A machine made to run AVX2 kernels (finetune.kernel_paths' variables) chooses as an AVX2 machine does:
    fp32, whatever its CPU has."""
    import os

    probe = (
        "import json; from finetune import precision; h = precision.detect(); "
        "print(json.dumps([h.cpu_bf16, h.cpu_reason]))"
    )
    env = {
        **os.environ,
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    }
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    native, reason = json.loads(out.stdout.strip().splitlines()[-1])
    assert native is False
    assert "emulated" in reason


def test_ppo_asks_for_the_hardware_choice_unless_the_launch_config_or_the_recipe_says():
    """TRL's PPOTrainer ignores its config's bf16/fp16, so the stage asks its Accelerator through
    ACCELERATE_MIXED_PRECISION: an exported value (accelerate launch) wins, then the recipe, then the hardware."""
    assert precision.for_ppo({}, NATIVE_CPU, None) == precision.training({}, NATIVE_CPU)
    assert precision.for_ppo({}, NATIVE_CPU, None).name == "bf16 autocast"
    assert precision.for_ppo({}, AVX2_CPU, None).name == "fp32"
    assert precision.for_ppo({"bf16": False}, NATIVE_CPU, None).reason.startswith("set by the recipe")
    # `accelerate launch` exports "no" when its config is silent: that counts as unset, as in TrainingArguments
    assert precision.for_ppo({"bf16": True}, AVX2_CPU, "no").name == "bf16 autocast"
    assert precision.for_ppo({}, NATIVE_CPU, "no") == precision.training({}, NATIVE_CPU)
    launched = precision.for_ppo({"bf16": False}, AVX2_CPU, "bf16")
    assert launched.name == "bf16 autocast" and "ACCELERATE_MIXED_PRECISION=bf16" in launched.reason
    assert [precision.accelerate_value(precision.Precision(b, f, "")) for b, f in
            ((True, False), (False, True), (False, False))] == ["bf16", "fp16", "no"]


def test_ppo_environment_exports_the_choice_while_the_trainer_is_built_and_puts_the_variable_back(monkeypatch):
    """A real accelerate Accelerator built inside accelerate's `patch_environment` with `ppo_environment`
    computes in the precision asked; the variable is as it was afterwards (absent, or the user's value)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import patch_environment

    def ppo_accelerator(asked, launched):
        return patch_environment(**precision.ppo_environment(asked, launched))

    monkeypatch.delenv(precision.MIXED_PRECISION_VARIABLE, raising=False)
    asked = precision.for_ppo({}, NATIVE_CPU, None)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        with ppo_accelerator(asked, None):
            accelerator = Accelerator(cpu=True)
        assert accelerator.mixed_precision == "bf16"
        assert precision.of_accelerator(accelerator.mixed_precision, asked) == asked
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert precision.MIXED_PRECISION_VARIABLE not in os.environ
    monkeypatch.setenv(precision.MIXED_PRECISION_VARIABLE, "no")  # what a silent launch config exports
    with ppo_accelerator(precision.for_ppo({}, NATIVE_CPU, "no"), "no"):
        assert os.environ[precision.MIXED_PRECISION_VARIABLE] == "bf16"
    assert os.environ[precision.MIXED_PRECISION_VARIABLE] == "no"
    monkeypatch.setenv(precision.MIXED_PRECISION_VARIABLE, "fp8")  # a launch config's own choice is left alone
    with ppo_accelerator(precision.for_ppo({}, AVX2_CPU, "fp8"), "fp8"):
        assert os.environ[precision.MIXED_PRECISION_VARIABLE] == "fp8"
    assert os.environ[precision.MIXED_PRECISION_VARIABLE] == "fp8"


def test_of_accelerator_says_when_the_accelerator_computes_in_something_else_than_asked():
    asked = precision.for_ppo({}, NATIVE_CPU, None)
    got = precision.of_accelerator("no", asked)
    assert got.name == "fp32" and "not the bf16 autocast asked" in got.reason and asked.reason in got.reason


def test_ppo_defaults_to_bf16_off():
    from finetune.stages.ppo import PPO_DEFAULTS

    assert PPO_DEFAULTS["bf16"] is False and PPO_DEFAULTS["fp16"] is False
