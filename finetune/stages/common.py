"""What every training stage shares: building the TRL config and the toolkit's defaults."""

from __future__ import annotations

from pathlib import Path

from finetune.errors import UserError


def toolkit_defaults(train: dict, has_eval: bool) -> dict:
    """Defaults we choose where TRL's would surprise: no bf16 without a GPU, no external loggers."""
    import torch

    defaults: dict = {"report_to": "none", "save_total_limit": 2}
    if not torch.cuda.is_available() and "bf16" not in train and "fp16" not in train:
        defaults["bf16"] = False  # TRL defaults to bf16=True, which emulates slowly on CPU
    if train.get("gradient_checkpointing", True):
        defaults["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if has_eval and "eval_strategy" not in train:
        defaults["eval_strategy"] = train.get("save_strategy", "epoch") if "save_steps" not in train else "steps"
        if defaults["eval_strategy"] == "steps":
            defaults["eval_steps"] = train["save_steps"]
    return defaults


def build_config(config_cls, stage: dict, seed: int, stage_dir: Path, has_eval: bool, **forced):
    """Instantiate the TRL config from the recipe's `train:` block, our defaults and values we must set."""
    train = stage["train"]
    kwargs = {**toolkit_defaults(train, has_eval), **train, **forced,
              "output_dir": str(stage_dir / "checkpoints"), "seed": seed}
    kwargs.setdefault("data_seed", seed)
    try:
        return config_cls(**kwargs)
    except (ValueError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise UserError(f"stage {stage['name']}: train: {config_cls.__name__} rejected the settings: {msg}") from None
