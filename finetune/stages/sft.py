"""SFT stage: TRL's SFTTrainer on the recipe's instruction data, full or LoRA/QLoRA, after a label audit."""

from __future__ import annotations

from pathlib import Path

from finetune import audit, chat_templates, modeling, packing
from finetune.data import stage_data
from finetune.errors import UserError
from finetune.recipe_types import Shared, Stage
from finetune.stages import common

# stage.loss -> (assistant_only_loss, completion_only_loss) for each data kind; None = not applicable.
LOSS_FLAGS = {
    "chat": {"auto": (True, None), "assistant_only": (True, None), "full": (False, None)},
    "prompt_completion": {"auto": (False, True), "completion_only": (False, True), "full": (False, False)},
    "text": {"auto": (False, None), "full": (False, None)},
}


def loss_flags(kind: str, loss: str, stage_name: str) -> dict:
    """The SFTConfig loss flags (`assistant_only_loss`, and `completion_only_loss` where it applies) for the
    stage's `loss:` on data of `kind`. Raises UserError naming the stage when that loss does not apply to the
    kind (e.g. assistant_only on text data)."""
    flags = LOSS_FLAGS[kind].get(loss)
    if flags is None:
        raise UserError(f"stage {stage_name}: loss '{loss}' does not apply to {kind} data; use "
                        f"{' or '.join(LOSS_FLAGS[kind])}")
    out = {"assistant_only_loss": flags[0]}
    if flags[1] is not None:
        out["completion_only_loss"] = flags[1]
    return out


def _explain(error: Exception, stage: Stage) -> str | None:
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


def config(shared: Shared, stage: Stage, data: dict, stage_dir: Path, init: dict | None = None):
    """The stage's SFTConfig: its `train:` block, our defaults, and the loss flags its data kind gets.
    Raises UserError for a `loss:` that does not fit the data or settings TRL rejects."""
    from trl import SFTConfig

    return common.build_config(SFTConfig, stage, shared.seed, stage_dir, data["eval"] is not None,
                               **loss_flags(data["kind"], stage["loss"], stage["name"]))


def build(shared: Shared, stage: Stage, init: dict, stage_dir: Path, log=print) -> dict:
    """Everything up to the first step: tokenizer, data, checked chat templates, model, the TRL trainer.

    Returns {"trainer", "tokenizer", "data", "args", "source", "training_template"}; `trainer.train_dataset`
    holds the exact input ids and labels the stage trains on. Raises UserError on bad settings or data, a
    training template that renders differently from the served one, or a chat turn the template leaves out.
    Side effect: none on the tokenizer, which keeps (and is saved with) the template the model is served with.
    """
    from trl import SFTTrainer

    for owned in ("assistant_only_loss", "completion_only_loss"):
        if owned in stage["train"]:
            raise UserError(f"stage {stage['name']}: train.{owned}: set the stage's `loss:` instead")
    tokenizer = common.stage_tokenizer(shared.base_model, init)
    data = stage_data(shared.sources, stage, shared.seed)
    for name, src in data["report"]["sources"].items():
        dropped = ", ".join(f"{n} {r}" for r, n in src["dropped"].items())
        log(f"data {name}: {src['rows']} rows, format {src['format']}" + (f", dropped {dropped}" if dropped else ""))
    common.require_chat_template(tokenizer, data, shared.base_model, stage)
    args = config(shared, stage, data, stage_dir, init)
    source = common.start_dir(shared.base_model, init)
    model = modeling.load_base_model(shared.base_model, stage["quantization"], path=source)
    model = modeling.prepare_trainable(model, stage["peft"], stage["quantization"], args.gradient_checkpointing)
    params = modeling.count_parameters(model)
    log(f"model: {params['trainable']:,} of {params['total']:,} parameters trainable")
    trainer_cls = SFTTrainer
    attention = getattr(model.config, "_attn_implementation", None)
    if packing.keeps_rows(args, attention, "padding_free" in stage["train"]):
        trainer_cls = packing.row_packed_trainer_class()
        log(f"packing: rows of <= {args.max_length} tokens kept apart, a block-diagonal mask per row "
            f"({attention} attention; flash-attention would take TRL's one-row layout)")
    served = tokenizer.chat_template
    training = None
    if data["kind"] == "chat":
        training = chat_templates.training_template_for(tokenizer, shared.base_model)
        if training and args.assistant_only_loss:
            log(f"chat template: training with {training[1]}, checked to render as the model's own template")
        check_turns_kept(data["train"], training[0] if training else served, tokenizer, stage["name"])
    if training and args.assistant_only_loss:
        tokenizer.chat_template = training[0]  # TRL tokenises the data with it while the trainer is built
    try:
        trainer = common.build_trainer(trainer_cls, stage, explain=lambda e: _explain(e, stage), model=model,
                                       args=args, train_dataset=data["train"], eval_dataset=data["eval"],
                                       processing_class=tokenizer)
    finally:
        tokenizer.chat_template = served  # what is saved is what is served
    if training and args.assistant_only_loss:
        trainer.chat_template = training[0]  # for any later tokenisation (the label audit's)
    return {"trainer": trainer, "tokenizer": tokenizer, "data": data, "args": args, "source": source,
            "training_template": training if args.assistant_only_loss else None}


def run(shared: Shared, stage: Stage, init: dict, stage_dir: Path, log=print) -> dict:
    """Train one SFT stage; returns what the manifest records (artifact, data and audit reports, metrics)."""
    built = build(shared, stage, init, stage_dir, log)
    trainer, tokenizer, data, args, source = (built[k] for k in ("trainer", "tokenizer", "data", "args", "source"))
    training = built["training_template"]
    report = None
    if stage["audit"]["enabled"]:
        report = audit.label_audit(trainer, data["train"], stage["audit"], tokenizer.eos_token_id)
        log(audit.format_report(report))
    result = common.train_and_save(trainer, tokenizer, stage_dir, log)
    return common.record(trainer, result, args, stage, data, tokenizer, stage_dir / "model", source,
                         stage["peft"] is not None, label_audit=report,
                         training_chat_template=training and {"source": training[1],
                                                              "sha256": common.sha256_text(training[0])})


def check_turns_kept(dataset, template: str | None, tokenizer, stage_name: str) -> None:
    """Refuse chat rows with a turn the chat template leaves out of the text (training would silently lose it).

    Mistral-7B-Instruct-v0.3's own template, for one, shows a system prompt only before a final user turn, so
    every training conversation (which ends with the assistant) would lose its system turn. Raises UserError
    naming the first such row and turn.
    """
    if not template:
        return
    from transformers.utils.chat_template_utils import render_jinja_template

    specials = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    convs = list(dataset["messages"])
    for start in range(0, len(convs), 256):
        batch = convs[start:start + 256]
        try:
            texts, _ = render_jinja_template(batch, chat_template=template, **specials)
        except Exception:  # noqa: BLE001 - the label audit and TRL name a row the template cannot render
            return
        for j, (text, messages) in enumerate(zip(texts, batch, strict=True)):
            lost = chat_templates.dropped_turn(text, messages)
            if lost is not None:
                raise UserError(f"stage {stage_name}: data row {start + j}: the chat template leaves out the "
                                f"'{messages[lost]['role']}' turn (message {lost}), so the model would be trained "
                                f"without it; remove such turns from the data or use a template that renders them")
