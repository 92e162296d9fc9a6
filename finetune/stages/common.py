"""What every training stage shares: the TRL config, the starting model, training with resume, the record."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from finetune import modeling
from finetune.errors import UserError, first_line
from finetune.manifest import last_checkpoint, sha256_text
from finetune.recipe_types import BaseModel, Shared, Stage

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments
    from transformers.trainer_utils import TrainOutput

    from finetune.precision import Precision

RECORDED_ARGS = ("bf16", "fp16", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "max_length", "packing", "beta", "loss_type", "kl_coef",
                 "response_length", "num_ppo_epochs", "num_generations", "total_episodes")


def toolkit_defaults(train: dict, has_eval: bool) -> dict:
    """Defaults we choose where TRL's would surprise: bf16 only where the hardware runs it natively
    (`precision.training`; TRL defaults to bf16=True, which CPUs without AVX512-BF16/AMX emulate slowly),
    no external loggers."""
    from finetune import precision

    hw = precision.detect()
    chosen = precision.training(train, hw)
    defaults: dict = {"report_to": "none", "save_total_limit": 2, "bf16": chosen.bf16, "fp16": chosen.fp16}
    if not hw.cuda:
        defaults["dataloader_pin_memory"] = False
        # transformers rebuilds the process state from this flag: without it, ranks launched by
        # `accelerate launch --multi_gpu` on a CPU machine would each train alone instead of as one gloo job.
        defaults["use_cpu"] = True
    if train.get("gradient_checkpointing", True):
        defaults["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if has_eval and "eval_strategy" not in train:
        defaults["eval_strategy"] = train.get("save_strategy", "epoch") if "save_steps" not in train else "steps"
        if defaults["eval_strategy"] == "steps":
            defaults["eval_steps"] = train["save_steps"]
    return defaults


def build_config(config_cls: type[TrainingArguments], stage: Stage, seed: int, stage_dir: Path, has_eval: bool,
                 defaults: dict | None = None, **forced) -> TrainingArguments:
    """Instantiate the TRL config from the recipe's `train:` block, our defaults and values we must set.

    Precedence, lowest first: `toolkit_defaults`, `defaults`, the recipe's `train:`, `forced`; output_dir
    (<stage_dir>/checkpoints) and seed (and data_seed, where the config has it and it is unset) are always
    ours. Raises UserError naming the stage and the config class when the config rejects the settings.
    """
    train = stage["train"]
    kwargs = {**toolkit_defaults(train, has_eval), **(defaults or {}), **train, **forced,
              "output_dir": str(stage_dir / "checkpoints"), "seed": seed}
    if "data_seed" in {f for f in getattr(config_cls, "__dataclass_fields__", {})}:
        kwargs.setdefault("data_seed", seed)
    try:
        return config_cls(**kwargs)
    except (ValueError, TypeError, AssertionError) as e:
        msg = first_line(e)
        raise UserError(f"stage {stage['name']}: train: {config_cls.__name__} rejected the settings: {msg}") from None


def build_trainer(trainer_cls: type[Trainer], stage: Stage, explain=None, **kwargs) -> Trainer:
    """Construct a TRL trainer; settings it rejects while setting up become one line naming the stage.

    TRL checks some combinations only in the trainer's constructor (padding-free without packing, PPO batch
    sizes that do not divide, ...). `explain(error)` may return a more specific message. Raises UserError
    (that message, or one naming the stage and the trainer class) when the constructor raises ValueError,
    TypeError or AssertionError, or a RuntimeError that `explain` recognises; other RuntimeErrors propagate.
    With the stage's `watch:` block, a TaskMetricCallback is added to the trainer.
    """
    try:
        trainer = trainer_cls(**kwargs)
    except (ValueError, TypeError, AssertionError, RuntimeError) as e:
        specific = explain(e) if explain else None
        if specific is None and isinstance(e, RuntimeError):
            raise  # a runtime failure is ours or the stack's to fix, not a settings problem
        msg = first_line(e)
        raise UserError(specific or f"stage {stage['name']}: {trainer_cls.__name__} rejected the settings: {msg}") \
            from None
    if stage.get("watch"):  # the task metric during training (finetune.watch)
        from finetune.watch import TaskMetricCallback

        trainer.add_callback(TaskMetricCallback(stage["watch"], stage["name"], kwargs["processing_class"])
                             .bind(trainer))
    return trainer


def start_dir(base_model: BaseModel, init: dict) -> str:
    """The folder this stage starts from: the base model, the full (merged if needed) model of `from`, or a
    distill stage's `student:` folder."""
    from finetune.artifacts import full_model_dir

    if init.get("student"):  # a distill stage's own student folder
        return init["student"]["path"]
    if not init.get("artifact"):
        return base_model["path"]
    return str(full_model_dir(init["artifact"], base_model))


def load_policy(base_model: BaseModel, stage: Stage, init: dict, gradient_checkpointing: bool,
                **extra) -> tuple[PreTrainedModel, str]:
    """Starting model, quantised if the stage asks (QLoRA), k-bit-prepared; the adapter is left to TRL.

    Returns (model, the folder it was loaded from: see `start_dir`).
    """
    source = start_dir(base_model, init)
    model = modeling.load_base_model(base_model, stage["quantization"], path=source, **extra)
    if stage["quantization"]:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model, source


def stage_tokenizer(base_model: BaseModel, init: dict) -> PreTrainedTokenizerBase:
    """The stage's tokenizer, served with its model's chat template; the recipe's training template (if any)
    is checked to render exactly as that template before the stage trains (UserError otherwise)."""
    from finetune import chat_templates

    source = start_dir(base_model, init) if init.get("artifact") or init.get("student") else None
    tokenizer = modeling.load_tokenizer(base_model, source)
    chat_templates.training_template_for(tokenizer, base_model)
    return tokenizer


def train(trainer: Trainer, stage_dir: Path, log, resumable: bool = True,
          chosen: Precision | None = None) -> TrainOutput | None:
    """Train, resuming from the newest complete checkpoint of an interrupted run when the trainer can.
    Logs the precision it computes in first (`precision: bf16 autocast (...)`): `chosen`, or what its
    arguments say (`precision.of_args`). With `watch.select_best`, the
    best watched weights are put back into the model before it returns (finetune.watch). Returns what
    `trainer.train()` returns: a TrainOutput (None from TRL's PPOTrainer)."""
    from finetune import precision, watch

    chosen = chosen or precision.of_args(trainer.args, precision.detect())
    log(f"precision: {chosen.name} ({chosen.reason})")
    if note := dropout_note(trainer.model, type(trainer).__name__):
        log(note)
    resume = last_checkpoint(stage_dir / "checkpoints")
    if resume and resumable:
        log(f"resuming from {resume.name}")
    elif resume:
        log(f"{type(trainer).__name__} cannot resume from a checkpoint; restarting the stage")
    result = trainer.train(resume_from_checkpoint=str(resume)) if resume and resumable else trainer.train()
    watcher = watch.of(trainer)
    if watcher and (step := watcher.restore_best()) is not None:
        last = watcher.points[-1].step
        log(f"kept the weights of step {step}: the best watched {watcher.cfg['select_best']} (watch.select_best)"
            + (f", not those of the last step ({last})" if step != last else ", the last step's"))
    return result


def dropout_note(model: torch.nn.Module, trainer_name: str) -> str | None:
    """A note when the adapter's dropout (`peft.dropout`) is asked for but not applied, else None.

    TRL's reward, DPO and KTO trainers (their `disable_dropout`, default true) and PPO (always) set every
    dropout module of the model to p = 0 when they are built, the adapter's too; RLOO and GRPO default to
    keeping it. Read from the model as built, not from the trainer's name: asked = the largest `lora_dropout`
    of the peft configs in `model` (PPO's policy-and-value wrapper holds two), applied = any of its adapter
    dropout modules still with p > 0.
    """
    import torch

    configs = [c for m in model.modules() for c in (getattr(m, "peft_config", None) or {}).values()]
    asked = max((getattr(c, "lora_dropout", 0.0) or 0.0 for c in configs), default=0.0)
    drops = [m for name, m in model.named_modules() if "lora_dropout" in name and isinstance(m, torch.nn.Dropout)]
    if asked > 0 and drops and all(m.p == 0 for m in drops):
        return (f"note: peft.dropout {asked:g} is not applied: {trainer_name} turned dropout off "
                f"(TRL's disable_dropout); 0.0 says what runs")
    return None


def train_and_save(trainer: Trainer, tokenizer: PreTrainedTokenizerBase, stage_dir: Path, log) -> TrainOutput | None:
    """Train (resuming where it can), save the model to <stage>/model and, on the main process, the tokenizer
    beside it. Returns the trainer's TrainOutput."""
    result = train(trainer, stage_dir, log)
    trainer.save_model(str(stage_dir / "model"))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(stage_dir / "model"))
    return result


def train_against_reference(trainer_cls: type[Trainer], base_model: BaseModel, stage: Stage, init: dict,
                            stage_dir: Path, tokenizer: PreTrainedTokenizerBase, data: dict, args: TrainingArguments,
                            log, model: PreTrainedModel | None = None, **extra) -> dict:
    """What DPO and KTO share after their data: the policy of `from` (quantised if the stage asks), TRL's
    reference (the policy with its adapter disabled under peft, else a frozen copy), training, the record.

    `trainer_cls` is a DPOTrainer (finetune.completion_logits) or KTOTrainer; `model` the policy if already
    loaded (`load_policy`); `extra` goes into the record (the stage's label audit).
    """
    if model is None:
        model, source = load_policy(base_model, stage, init, args.gradient_checkpointing)
    else:
        source = start_dir(base_model, init)
    peft = modeling.peft_config(stage["peft"]) if stage["peft"] else None
    trainer = build_trainer(trainer_cls, stage, model=model, ref_model=None, args=args,
                            train_dataset=data["train"], eval_dataset=data["eval"],
                            processing_class=tokenizer, peft_config=peft)
    log(f"reference: {'the policy with its adapter disabled' if peft else 'a frozen copy of the starting policy'}")
    result = train_and_save(trainer, tokenizer, stage_dir, log)
    return record(trainer, result, args, stage, data, tokenizer, stage_dir / "model", source, peft is not None,
                  **extra)


def record(trainer: Trainer, result: TrainOutput | None, args: TrainingArguments, stage: Stage, data: dict,
           tokenizer: PreTrainedTokenizerBase, model_dir: Path, base: str, adapter: bool,
           chosen: Precision | None = None, **extra) -> dict:
    """What the manifest records about a finished training stage.

    `result` is None where the trainer returns no metrics worth keeping (PPO); `chosen` is the precision it
    computed in when its arguments do not say (PPO); `extra` is added as it is.
    """
    from finetune import precision, watch

    return {
        "artifact": {"model": str(model_dir), "adapter": adapter, "base": base,
                     "quantization": stage["quantization"]},
        "data": data["report"],
        "parameters": modeling.count_parameters(trainer.model),
        "train_metrics": getattr(result, "metrics", None) or {},
        "log_history": trainer.state.log_history,
        # with `chosen` (PPO) the config's bf16/fp16 are not what it computed in: `precision` says that
        "training_args": {k: v for k, v in args.to_dict().items()
                          if (k in stage["train"] or k in RECORDED_ARGS) and not (chosen and k in ("bf16", "fp16"))},
        "chat_template_sha256": sha256_text(tokenizer.chat_template),
        "precision": (chosen or precision.of_args(args, precision.detect())).record(),
        **({"watch": watcher.record()} if (watcher := watch.of(trainer)) else {}),
        **extra,
    }


def require_chat_template(tokenizer: PreTrainedTokenizerBase, data: dict, base_model: BaseModel,
                          stage: Stage) -> None:
    """Chat data needs a chat template: say so in one line instead of failing deep inside transformers.

    Raises UserError naming the stage and base_model.path when `data["kind"]` is "chat" and the tokenizer
    has no chat template.
    """
    if data["kind"] == "chat" and not tokenizer.chat_template:
        raise UserError(f"stage {stage['name']}: chat data needs a chat template, and the tokenizer of "
                        f"'{base_model['path']}' has none; set base_model.chat_template to a .jinja file")


def plain_config(config_cls: type[TrainingArguments], stage: Stage, seed: int, data: dict,
                 stage_dir: Path) -> TrainingArguments:
    """A TRL config from the stage's `train:` block and our defaults alone (reward, DPO, KTO, distill)."""
    return build_config(config_cls, stage, seed, stage_dir, data["eval"] is not None)


def prepare_pairs(shared: Shared, stage: Stage, init: dict, stage_dir: Path, config_cls: type[TrainingArguments],
                  log) -> tuple:
    """What reward and DPO stages share: tokenizer, preference pairs, the TRL config and the pair audit."""
    from finetune import audit
    from finetune.data import stage_data

    tokenizer = stage_tokenizer(shared.base_model, init)
    data = stage_data(shared.sources, stage, shared.seed, "pairs")
    require_chat_template(tokenizer, data, shared.base_model, stage)
    for name, src in data["report"]["sources"].items():
        log(f"data {name}: {src['kept']} of {src['rows']} pairs kept" + (
            f" (dropped {src['dropped']})" if src["dropped"] else ""))
    args = plain_config(config_cls, stage, shared.seed, data, stage_dir)
    pair_audit = audit.preference_audit(data["train"], tokenizer, data["kind"], args.max_length, stage["audit"])
    log(f"label audit: {pair_audit['pairs']} pairs, answers truncated in {pair_audit['pairs_answer_truncated']}")
    return tokenizer, data, args, pair_audit


def require(condition: bool, message: str) -> None:
    """Raise UserError(message) when `condition` is false: a one-line check of a stage's inputs."""
    if not condition:
        raise UserError(message)
