"""KTO stage: TRL's KTOTrainer on unpaired feedback (a completion labelled desirable or not), from a policy.

KTO (Ethayarajh et al. 2024) needs no pairs: most feedback logs hold one answer and a thumbs up or down.
Preference pairs are split in two (chosen -> desirable, rejected -> undesirable). As in DPO, with an adapter
the reference is the policy with its adapter disabled; in full finetuning TRL keeps a frozen copy.
"""

from __future__ import annotations

from pathlib import Path

from finetune import audit, modeling
from finetune.data import stage_data
from finetune.stages import common


def run(recipe: dict, stage: dict, init: dict, stage_dir: Path, log=print) -> dict:
    """Train one KTO stage; returns what the manifest records (artifact, data, label audit, metrics).

    Raises UserError for bad data (see `preference.unpaired`), a label audit that fails (one label only,
    answers truncated beyond audit.max_truncated_share) or settings TRL rejects (a per-device batch of 1:
    KTO estimates its KL term from the other rows of the batch).
    """
    from trl import KTOConfig, KTOTrainer

    tokenizer = common.stage_tokenizer(recipe, init)
    data = stage_data(recipe, stage, "unpaired")
    common.require_chat_template(tokenizer, data, recipe, stage)
    for name, src in data["report"]["sources"].items():
        dropped = ", ".join(f"{n} {r}" for r, n in src["dropped"].items())
        log(f"data {name}: {src['rows']} source rows -> {src['kept']} labelled completions"
            + (f", dropped {dropped}" if dropped else ""))
    args = common.build_config(KTOConfig, stage, recipe["seed"], stage_dir, data["eval"] is not None)
    label_audit = audit.unpaired_audit(data["train"], tokenizer, data["kind"], args.max_length, stage["audit"])
    log(f"label audit: {label_audit['desirable']} desirable and {label_audit['undesirable']} undesirable rows, "
        f"completions truncated in {label_audit['rows_answer_truncated']}")
    model, source = common.load_policy(recipe, stage, init, args.gradient_checkpointing)
    peft = modeling.peft_config(stage["peft"]) if stage["peft"] else None
    trainer = common.build_trainer(KTOTrainer, stage, model=model, ref_model=None, args=args,
                                   train_dataset=data["train"], eval_dataset=data["eval"],
                                   processing_class=tokenizer, peft_config=peft)
    log(f"reference: {'the policy with its adapter disabled' if peft else 'a frozen copy of the starting policy'}")
    result = common.train(trainer, stage_dir, log)
    trainer.save_model(str(stage_dir / "model"))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(stage_dir / "model"))
    return common.record(trainer, result, args, stage, data, tokenizer, stage_dir / "model", source,
                         peft is not None, label_audit=label_audit)
