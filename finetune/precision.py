"""Which float format training and generation compute in: bf16 where this machine runs it natively, else fp32.

A CPU with AVX512-BF16 or AMX multiplies bf16 matrices about 4x faster than fp32 (2048-square GEMM on a 2-core
AMD EPYC Zen 5: 217 vs 928 GFLOP/s); one without them emulates bf16 and runs it several times slower than
fp32. So the default is read from the hardware, not assumed: bf16 autocast where bf16 is native, fp32
elsewhere. A recipe's explicit `bf16`/`fp16` (`train:`) or `eval.dtype` always wins.

`ATEN_CPU_CAPABILITY` and `ONEDNN_MAX_CPU_ISA` (finetune.kernel_paths) lower the kernels torch uses below what
the CPU has; the choice follows them, so a machine running another's kernel path also makes its choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below which bf16 matmuls are emulated.
ONEDNN_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


@dataclass(frozen=True)
class Hardware:
    """What decides the float format: CUDA (and whether it has bf16), and the CPU's native bf16."""

    cuda: bool
    cuda_bf16: bool
    cpu_bf16: bool
    cpu_reason: str


@dataclass(frozen=True)
class Precision:
    """The training precision chosen: TrainingArguments' `bf16` / `fp16` and why, for the log and manifest."""

    bf16: bool
    fp16: bool
    reason: str

    @property
    def name(self) -> str:
        """"bf16 autocast", "fp16 autocast" or "fp32"."""
        return "bf16 autocast" if self.bf16 else "fp16 autocast" if self.fp16 else "fp32"

    def record(self) -> dict:
        """What the manifest records: {"compute": `name`, "bf16", "fp16", "reason"}."""
        return {"compute": self.name, "bf16": self.bf16, "fp16": self.fp16, "reason": self.reason}

    def autocast(self, device_type: str):
        """torch's autocast context for this precision on `device_type` ("cpu", "cuda"): bf16 or fp16
        autocast, or a disabled one (the model's own dtype) for fp32."""
        import torch

        dtype = torch.float16 if self.fp16 else torch.bfloat16
        return torch.autocast(device_type, dtype=dtype, enabled=self.bf16 or self.fp16)


def cpu_native_bf16(flags: set[str], capability: str, onednn_isa: str | None) -> tuple[bool, str]:
    """Whether bf16 matmuls run natively on this CPU, and the reason in words.

    `flags`: what the CPU has among {"avx512_bf16", "amx_tile"}; `capability`: torch's ATen kernel level
    (`torch.backends.cpu.get_cpu_capability()`, e.g. "AVX512", "AVX2"); `onednn_isa`: ONEDNN_MAX_CPU_ISA
    or None. Pure: the same inputs give the same answer on any machine.
    """
    native = sorted(flags & {"avx512_bf16", "amx_tile"})
    if not native:
        return False, "the CPU has no native bf16 (no AVX512-BF16 or AMX): bf16 would be emulated"
    if capability not in ("AVX512", "AVX512_BF16", "AMX"):
        return False, f"torch runs its {capability} kernels (ATEN_CPU_CAPABILITY): bf16 would be emulated"
    if onednn_isa and onednn_isa.upper() in ONEDNN_WITHOUT_BF16:
        return False, f"oneDNN is capped at {onednn_isa.upper()} (ONEDNN_MAX_CPU_ISA): bf16 would be emulated"
    return True, f"the CPU runs bf16 natively ({', '.join(native)})"


def detect() -> Hardware:
    """Read this machine's facts from torch (cached by torch; cheap)."""
    import torch

    cuda = torch.cuda.is_available()
    flags = {
        name
        for name, probe in (
            ("avx512_bf16", torch.cpu._is_avx512_bf16_supported),
            ("amx_tile", torch.cpu._is_amx_tile_supported),
        )
        if probe()
    }
    cpu_bf16, reason = cpu_native_bf16(
        flags, torch.backends.cpu.get_cpu_capability(), os.environ.get("ONEDNN_MAX_CPU_ISA")
    )
    return Hardware(
        cuda=cuda, cuda_bf16=cuda and torch.cuda.is_bf16_supported(), cpu_bf16=cpu_bf16, cpu_reason=reason
    )


def training(train: dict, hw: Hardware) -> Precision:
    """The precision of a training stage whose `train:` block is `train` on hardware `hw`.

    An explicit `bf16` or `fp16` key wins. Otherwise: on CUDA bf16 where the GPU supports it (TRL's default)
    else fp32; on CPU bf16 autocast where it is native (`cpu_native_bf16`), else fp32.
    """
    if "bf16" in train or "fp16" in train:
        return Precision(bool(train.get("bf16")), bool(train.get("fp16")), "set by the recipe (train:)")
    if hw.cuda:
        if hw.cuda_bf16:
            return Precision(True, False, "the GPU supports bf16")
        return Precision(False, False, "the GPU has no bf16 support")
    return Precision(hw.cpu_bf16, False, hw.cpu_reason)


def of_args(args, hw: Hardware) -> Precision:
    """The precision TrainingArguments `args` compute in, with the hardware's reason when they are what
    `training` would choose unasked, else "set by the recipe".

    Not for a PPOConfig: TRL's PPOTrainer ignores its bf16/fp16 (`for_ppo`, `ppo_environment`).
    """
    default = training({}, hw)
    if (bool(args.bf16), bool(args.fp16)) == (default.bf16, default.fp16):
        return default
    return Precision(bool(args.bf16), bool(args.fp16), "set by the recipe (train:)")


MIXED_PRECISION_VARIABLE = "ACCELERATE_MIXED_PRECISION"


def for_ppo(train: dict, hw: Hardware, launched: str | None) -> Precision:
    """The precision a PPO stage asks of TRL's PPOTrainer (trl.experimental.ppo, trl 1.12).

    That trainer builds its own Accelerator without the config's `bf16`/`fp16`; the Accelerator reads
    ACCELERATE_MIXED_PRECISION instead. `launched` is that variable as exported, or None. A launch config that
    asks for mixed precision (any value but "no") wins; "no", which `accelerate launch` exports when its config
    is silent, counts as unset, as transformers' TrainingArguments treat it. Then the recipe's explicit
    `bf16`/`fp16`, then the hardware (`training`).
    """
    if launched and launched.lower() != "no":
        return Precision(launched.lower() == "bf16", launched.lower() == "fp16",
                         f"set by accelerate's launch config ({MIXED_PRECISION_VARIABLE}={launched})")
    return training(train, hw)


def accelerate_value(chosen: Precision) -> str:
    """`chosen` as accelerate spells it in ACCELERATE_MIXED_PRECISION: "bf16", "fp16" or "no"."""
    return "bf16" if chosen.bf16 else "fp16" if chosen.fp16 else "no"


def ppo_environment(chosen: Precision, launched: str | None) -> dict[str, str]:
    """The variables to export while TRL's PPOTrainer builds its Accelerator (with accelerate's
    `patch_environment`, which puts them back afterwards): ACCELERATE_MIXED_PRECISION as `chosen` (`for_ppo`),
    or nothing when `launched`, the value already exported, asks for mixed precision (it wins).

    Under that Accelerator the PPO updates' forward passes (policy and value model, through the wrapper it
    prepares) run under autocast; the rollouts (generation, reference, value and reward-model scores) call
    the unprepared models; the PPO stage wraps the value and reward models' in the same autocast and leaves
    generation and the reference in the models' own dtype (finetune.stages.ppo.autocast_scoring).
    """
    if launched and launched.lower() != "no":
        return {}
    return {MIXED_PRECISION_VARIABLE: accelerate_value(chosen)}


def of_accelerator(mixed_precision: str, asked: Precision) -> Precision:
    """What an Accelerator whose `mixed_precision` is "bf16", "fp16" or "no" computes in: `asked` when it
    matches, else that value with a reason that says it differs from what was asked. Pass "no" for an
    Accelerator without native autocast (`native_amp` False: fp16 asked on a CPU), which autocasts nothing."""
    if mixed_precision == accelerate_value(asked):
        return asked
    return Precision(mixed_precision == "bf16", mixed_precision == "fp16",
                     f"the Accelerator computes in {mixed_precision}, not the {asked.name} asked ({asked.reason})")


def generation_dtype(requested: str, hw: Hardware) -> tuple[str | None, str]:
    """The dtype models are cast to for evaluation (None: as loaded) and why.

    `requested` is `eval.dtype`: "auto" (bf16 where native, else as loaded), "float32" or "bfloat16".
    """
    if requested != "auto":
        return requested, "set by the recipe (eval.dtype)"
    if hw.cuda:
        return None, "as loaded (GPU)"
    return ("bfloat16", hw.cpu_reason) if hw.cpu_bf16 else (None, hw.cpu_reason)


def cast_for_generation(model, dtype: str | None):
    """Cast `model` in place to `dtype` for generation; quantised models (bitsandbytes) stay as they are.

    Returns the dtype the model now computes in, as a string ("float32", "bfloat16", ...).
    """
    import torch

    current = next(model.parameters()).dtype
    quantised = any(type(p).__name__ in ("Params4bit", "Int8Params") for p in model.parameters())
    if dtype is None or quantised:
        return str(current).removeprefix("torch.")
    if current != getattr(torch, dtype):
        model.to(getattr(torch, dtype))
    return dtype
