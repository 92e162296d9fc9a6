"""SFT stage: TRL's SFTTrainer on the recipe's instruction data, full or LoRA/QLoRA, after a label audit."""

from __future__ import annotations

from pathlib import Path

from finetune import audit, modeling, packing
from finetune.data import stage_data
from finetune.errors import UserError
from finetune.stages import common

# stage.loss -> (assistant_only_loss, completion_only_loss) for each data kind; None = not applicable.
LOSS_FLAGS = {
    "chat": {"auto": (True, None), "assistant_only": (True, None), "full": (False, None)},
    "prompt_completion": {"auto": (False, True), "completion_only": (False, True), "full": (False, False)},
    "text": {"auto": (False, None), "full": (False, None)},
}


def loss_flags(kind: str, loss: str, stage_name: str) -> dict:
    flags = LOSS_FLAGS[kind].get(loss)
    if flags is None:
        raise UserError(f"stage {stage_name}: loss '{loss}' does not apply to {kind} data; use "
                        f"{' or '.join(LOSS_FLAGS[kind])}")
    out = {"assistant_only_loss": flags[0]}
    if flags[1] is not None:
        out["completion_only_loss"] = flags[1]
    return out


def _explain(error: Exception, stage: dict) -> str | None:
    """Messages for the SFTTrainer failures that come from the chat template."""
    text = str(error)
    if "no assistant tokens" in text:
        return (f"stage {stage['name']}: label audit: a row has no supervised assistant token under the chat "
                f"template (does every conversation end with an assistant turn the template marks with "
                f"{{% generation %}}?)")
    if isinstance(error, ValueError) and ("chat template" in text.lower() or "generation" in text.lower()):
        return (f"stage {stage['name']}: assistant-only loss needs {{% generation %}} markers in the chat "
                f"template and TRL has no training template for this one; set base_model.chat_template to a "
                f"template with them, or loss: full")
    return None


def run(recipe: dict, stage: dict, init: dict, stage_dir: Path, log=print) -> dict:
    """Train one SFT stage; returns what the manifest records (artifact, data and audit reports, metrics)."""
    from trl import SFTConfig, SFTTrainer

    for owned in ("assistant_only_loss", "completion_only_loss"):
        if owned in stage["train"]:
            raise UserError(f"stage {stage['name']}: train.{owned}: set the stage's `loss:` instead")
    tokenizer = common.stage_tokenizer(recipe, init)
    data = stage_data(recipe, stage)
    for name, src in data["report"]["sources"].items():
        dropped = ", ".join(f"{n} {r}" for r, n in src["dropped"].items())
        log(f"data {name}: {src['rows']} rows, format {src['format']}" + (f", dropped {dropped}" if dropped else ""))
    common.require_chat_template(tokenizer, data, recipe, stage)
    args = common.build_config(SFTConfig, stage, recipe["seed"], stage_dir, data["eval"] is not None,
                               **loss_flags(data["kind"], stage["loss"], stage["name"]))
    source = common.start_dir(recipe, init)
    model = modeling.load_base_model(recipe["base_model"], stage["quantization"], path=source)
    model = modeling.prepare_trainable(model, stage["peft"], stage["quantization"], args.gradient_checkpointing)
    params = modeling.count_parameters(model)
    log(f"model: {params['trainable']:,} of {params['total']:,} parameters trainable")
    trainer_cls = SFTTrainer
    attention = getattr(model.config, "_attn_implementation", None)
    if packing.keeps_rows(args, attention, "padding_free" in stage["train"]):
        trainer_cls = packing.row_packed_trainer_class()
        log(f"packing: rows of <= {args.max_length} tokens kept apart, a block-diagonal mask per row "
            f"({attention} attention; flash-attention would take TRL's one-row layout)")
    trainer = common.build_trainer(trainer_cls, stage, explain=lambda e: _explain(e, stage), model=model,
                                   args=args, train_dataset=data["train"], eval_dataset=data["eval"],
                                   processing_class=tokenizer)
    report = None
    if stage["audit"]["enabled"]:
        report = audit.label_audit(trainer, data["train"], stage["audit"], tokenizer.eos_token_id)
        log(audit.format_report(report))
    result = common.train(trainer, stage_dir, log)
    trainer.save_model(str(stage_dir / "model"))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(stage_dir / "model"))
    return common.record(trainer, result, args, stage, data, tokenizer, stage_dir / "model", source,
                         stage["peft"] is not None, label_audit=report)
