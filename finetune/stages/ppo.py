"""PPO stage: TRL's own PPOTrainer (trl.experimental.ppo, present up to trl 1.12; hence the pin).

Policy: the output of `from` (SFT). Reference: that same policy, frozen (or the policy with its adapter
disabled under LoRA). Reward model: the output of `reward_model`. Value model: initialised from that reward
model, as in the InstructGPT recipe. TRL's PPOTrainer cannot resume from a checkpoint: an interrupted PPO
stage starts again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from finetune import modeling, precision
from finetune.data import stage_data
from finetune.recipe_types import Shared, Stage
from finetune.schema import LORA_METHODS, PEFT
from finetune.stages import common

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# bf16 off in the config: TRL's PPOTrainer builds its Accelerator without the config's mixed precision (`run`
# gives it the stage's precision through ACCELERATE_MIXED_PRECISION), and with bf16 on it would cast a QLoRA
# policy's adapter to bf16.
PPO_DEFAULTS = {"stop_token": "eos", "num_sample_generations": 0, "response_length": 32, "bf16": False,
                "fp16": False}


def tokenize_prompts(prompts: Dataset, tokenizer: PreTrainedTokenizerBase, kind: str) -> Dataset:
    """PPOTrainer takes tokenised queries: the chat template with the generation prompt, or the raw text."""
    def encode(row):
        if kind == "chat":
            ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
        else:
            ids = tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]
        return {"input_ids": ids}

    return prompts.map(encode, remove_columns=prompts.column_names, desc="Tokenising prompts")


def config(shared: Shared, stage: Stage, data: dict, stage_dir: Path, init: dict | None = None):
    """The stage's PPOConfig; before the earlier stages exist (init None) the model paths are the base's.
    Raises UserError for settings TRL rejects."""
    from trl.experimental.ppo import PPOConfig

    start = common.start_dir(shared.base_model, init) if init else shared.base_model["path"]
    return common.build_config(PPOConfig, stage, shared.seed, stage_dir, False, defaults=PPO_DEFAULTS,
                               sft_model_path=start, reward_model_path=(init or {}).get("reward_model") or start)


def checkpoint_models(policy: PreTrainedModel, value_model: PreTrainedModel, args) -> None:
    """Turn on activation checkpointing in the policy and the value model, with the stage's checkpointing settings.

    transformers 5 turns checkpointing on inside `Trainer.train` (`args.activation_checkpointing`), and TRL's
    PPOTrainer (trl 1.12) replaces that method with its own loop, so neither model was checkpointed: each layer
    kept its activations for the backward pass. On SmolLM2-135M with its longest XQuAD prompts (about 700 tokens)
    each further episode in a micro-batch cost about 2.3 GB with only the value model checkpointed, and the whole
    stage peaked at 9.5 GB (7.5 GB with both); with neither, the stage was killed for memory on a 24 GB
    machine. `PolicyAndValueWrapper.gradient_checkpointing_enable` would reach the policy only.
    tests/test_value_checkpointing.py counts what autograd keeps (11x less in the value model's forward) and
    checks both models are checkpointed when the stage asks for it.
    Side effect: sets the checkpointing flags on both models' layers.
    """
    kwargs = dict(args.activation_checkpointing_kwargs or {}) or None
    for model in (policy, value_model):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)


def autocast_scoring(trainer, chosen: precision.Precision) -> None:
    """Run the value and reward scores of TRL's PPOTrainer's rollouts in `chosen` (bf16 or fp16 autocast).

    The trainer's Accelerator autocasts only the policy-and-value wrapper it prepares, which the updates call;
    the rollouts call the models themselves. The value and reward models' backbones (what TRL's `get_reward`
    calls) get their `forward` wrapped in autocast, as accelerate wraps a prepared model's; backward passes stay
    outside autocast. The policy's rollouts are left in the model's own dtype: the KL TRL logs and puts into
    the reward is the sampled tokens' log-probability at generation minus the reference's from a whole-sequence
    forward pass, two different computations whose rounding does not cancel in bf16. With both autocast, that
    KL read 0.0095 at the first update, where the policy still equals its reference, and swung between -0.05
    and +0.05 over the real recipe's 8 updates (true KL about 0.002; fp32: -4.5e-6 at the first update).
    Side effect: replaces `forward` on the two backbones.
    """
    device = trainer.accelerator.device.type
    for model in dict.fromkeys((trainer.value_model, trainer.reward_model)):
        backbone = getattr(model, model.base_model_prefix)
        backbone.forward = chosen.autocast(device)(backbone.forward)


# The value model's adapter when the stage's own `peft` is not LoRA-family: schema.PEFT's LoRA defaults, no
# dropout (TRL turns dropout off in the value model anyway).
VALUE_LORA = {**{name: PEFT.keys[name].default for name in ("method", "r", "alpha", "target_modules")},
              "dropout": 0.0, "modules_to_save": None}


def lora_value_model(value_model: PreTrainedModel, peft: dict | None) -> PreTrainedModel:
    """Train the value model through a LoRA adapter plus its score head, instead of every weight.

    TRL's PPOTrainer trains the value model (a copy of the reward model, AutoModelForSequenceClassification)
    in full: for SmolLM2-135M that is 134.5M parameters beside the policy's 4.9M of LoRA, about 2.2 GB of
    fp32 weights, gradients and AdamW moments. Here peft injects LoRA layers in place (task SEQ_CLS: every
    linear but the score head, which trains in full as a modules_to_save copy); what is returned is the
    transformers model itself, since TRL reaches into it (`base_model_prefix`, `.score`). `peft` is the stage's
    block when it is LoRA-family, else VALUE_LORA is used. The value model starts as the reward model either way.
    """
    from peft import get_peft_model

    block = {**peft, "modules_to_save": None} if peft and peft["method"] in LORA_METHODS else VALUE_LORA
    return get_peft_model(value_model, modeling.peft_config(block, task_type="SEQ_CLS")).base_model.model


def run(shared: Shared, stage: Stage, init: dict, stage_dir: Path, log=print) -> dict:
    """Train one PPO stage; returns what the manifest records (artifact, data, metrics, and `ppo`: the first
    and last logged reward score and KL).

    Raises UserError for bad prompt data, a missing chat template or settings TRL rejects. Side effect: sets
    tokenizer.padding_side to "left" (queries are generated from), and back to "right" on the main process
    before the tokenizer is saved with the model.
    """
    from accelerate.utils import patch_environment
    from trl.experimental.ppo import PPOTrainer

    from finetune.modeling import load_reward_model

    tokenizer = common.stage_tokenizer(shared.base_model, init)
    tokenizer.padding_side = "left"  # queries are generated from, so they are padded on the left
    data = stage_data(shared.sources, stage, shared.seed, "prompts")
    common.require_chat_template(tokenizer, data, shared.base_model, stage)
    train = tokenize_prompts(data["train"], tokenizer, data["kind"])
    # PPOTrainer always builds an eval loader; without an eval split, a few training prompts serve.
    evald = tokenize_prompts(data["eval"], tokenizer, data["kind"]) if data["eval"] is not None else train.select(
        range(min(8, len(train))))
    reward_dir = init["reward_model"]
    args = config(shared, stage, data, stage_dir, init)
    policy, source = common.load_policy(shared.base_model, stage, init, args.gradient_checkpointing)
    reward_model, _ = load_reward_model(reward_dir, shared.base_model, tokenizer)
    value_model, _ = load_reward_model(reward_dir, shared.base_model, tokenizer)
    if stage["value_model"] == "lora":
        value_model = lora_value_model(value_model, stage["peft"])
    if args.gradient_checkpointing:
        checkpoint_models(policy, value_model, args)
    peft = modeling.peft_config(stage["peft"]) if stage["peft"] else None
    value_params = modeling.count_parameters(value_model)
    log(f"policy from {source}; reward and value models from {reward_dir}; value model trains "
        f"{value_params['trainable']:,} of {value_params['total']:,} parameters ({stage['value_model']})")
    launched = os.environ.get(precision.MIXED_PRECISION_VARIABLE)
    asked = precision.for_ppo(stage["train"], precision.detect(), launched)
    with patch_environment(**precision.ppo_environment(asked, launched)):  # read when its Accelerator is built
        trainer = common.build_trainer(PPOTrainer, stage, args=args, processing_class=tokenizer, model=policy,
                                       ref_model=None, reward_model=reward_model, train_dataset=train,
                                       value_model=value_model, eval_dataset=evald, peft_config=peft)
    accelerator = trainer.accelerator
    chosen = precision.of_accelerator(accelerator.mixed_precision if accelerator.native_amp else "no", asked)
    if chosen.bf16 or chosen.fp16:
        autocast_scoring(trainer, chosen)
        log(f"{chosen.name} in the PPO updates' forward passes and the rollouts' value and reward scores; the "
            "rollouts' generation and reference log-probabilities in the models' own dtype, so that the KL "
            "between them is not rounding noise")
    common.train(trainer, stage_dir, log, resumable=False, chosen=chosen)
    trainer.save_model(str(stage_dir / "model"))
    if trainer.is_world_process_zero():
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(str(stage_dir / "model"))
    logged = [h for h in trainer.state.log_history if "objective/scores" in h]
    summary = {"first": {k: logged[0][k] for k in ("objective/scores", "objective/kl")} if logged else None,
               "last": {k: logged[-1][k] for k in ("objective/scores", "objective/kl")} if logged else None}
    if logged:
        log(f"reward {summary['first']['objective/scores']:+.3f} -> {summary['last']['objective/scores']:+.3f}, "
            f"KL {summary['last']['objective/kl']:.4f}")
    return common.record(trainer, None, args, stage, data, tokenizer, stage_dir / "model", source,
                         peft is not None, chosen=chosen, ppo=summary,
                         value_model={"train": stage["value_model"], **value_params})
