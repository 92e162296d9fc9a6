"""DPO stage: TRL's DPOTrainer from the policy of an earlier stage (usually SFT).

With an adapter the reference is the same model with the adapter disabled, so there is no second copy;
in full finetuning TRL keeps a frozen copy of the starting policy as the reference.
"""

from __future__ import annotations

from pathlib import Path

from finetune import modeling
from finetune.stages import common


def run(recipe: dict, stage: dict, init: dict, stage_dir: Path, log=print) -> dict:
    from trl import DPOConfig, DPOTrainer

    tokenizer, data, args, pair_audit = common.prepare_pairs(recipe, stage, init, stage_dir, DPOConfig, log)
    model, source = common.load_policy(recipe, stage, init, args.gradient_checkpointing)
    peft = modeling.peft_config(stage["peft"]) if stage["peft"] else None
    trainer = common.build_trainer(DPOTrainer, stage, model=model, ref_model=None, args=args,
                                   train_dataset=data["train"], eval_dataset=data["eval"],
                                   processing_class=tokenizer, peft_config=peft)
    log(f"reference: {'the policy with its adapter disabled' if peft else 'a frozen copy of the starting policy'}")
    result = common.train(trainer, stage_dir, log)
    trainer.save_model(str(stage_dir / "model"))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(stage_dir / "model"))
    return common.record(trainer, result, args, stage, data, tokenizer, stage_dir / "model", source,
                         peft is not None, label_audit=pair_audit)
