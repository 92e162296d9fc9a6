"""DPO stage: TRL's DPOTrainer from the policy of an earlier stage (usually SFT).

With an adapter the reference is the same model with the adapter disabled, so there is no second copy;
in full finetuning TRL keeps a frozen copy of the starting policy as the reference.
"""

from __future__ import annotations

from pathlib import Path

from finetune.stages import common


def config(recipe: dict, stage: dict, data: dict, stage_dir: Path, init: dict | None = None):
    """The stage's DPOConfig (what `run` trains with); UserError for settings TRL rejects."""
    from trl import DPOConfig

    return common.plain_config(DPOConfig, recipe, stage, data, stage_dir)

def run(recipe: dict, stage: dict, init: dict, stage_dir: Path, log=print) -> dict:
    from trl import DPOConfig, DPOTrainer

    tokenizer, data, args, pair_audit = common.prepare_pairs(recipe, stage, init, stage_dir, DPOConfig, log)
    return common.train_against_reference(DPOTrainer, recipe, stage, init, stage_dir, tokenizer, data, args, log,
                                          label_audit=pair_audit)
