"""RLOO and GRPO stages: TRL's online RL trainers (no value model), scored by the trained reward model and/or
verifiable rewards (finetune.rewards: SQuAD F1/EM against the prompt rows' gold answers), mixed by weight.

The lighter modern alternative to PPO: several completions per prompt, baselined against each other.
"""

from __future__ import annotations

from pathlib import Path

from finetune import modeling, rewards
from finetune.data import stage_data
from finetune.errors import UserError
from finetune.recipe_types import Shared, Stage
from finetune.stages import common

ONLINE_DEFAULTS = {"max_completion_length": 32, "num_generations": 4, "log_completions": False}


def config(shared: Shared, stage: Stage, data: dict, stage_dir: Path, init: dict | None = None):
    """The stage's RLOOConfig or GRPOConfig. Raises UserError for settings TRL rejects, or for verifiable
    rewards (squad_f1, ...) on prompt data without the `answers` column they score against."""
    import trl

    weights = stage["rewards"] or {"reward_model": 1.0}
    if set(weights) & rewards.NEEDS_ANSWERS and "answers" not in data["train"].column_names:
        raise UserError(f"stage {stage['name']}: rewards {sorted(set(weights) & rewards.NEEDS_ANSWERS)} score "
                        f"against gold answers: the prompt data needs an `answers` column (a list of texts)")
    config_cls = trl.RLOOConfig if stage["kind"] == "rloo" else trl.GRPOConfig
    return common.build_config(config_cls, stage, shared.seed, stage_dir, data["eval"] is not None,
                               defaults=ONLINE_DEFAULTS)


def run(shared: Shared, stage: Stage, init: dict, stage_dir: Path, log=print) -> dict:
    """Train one RLOO or GRPO stage (by `stage["kind"]`); returns what the manifest records.

    The rewards are the stage's `rewards:` weights (default: the trained reward model alone). Raises UserError
    for bad prompt data, a missing chat template, verifiable rewards without gold answers, or settings TRL
    rejects.
    """
    import trl

    from finetune.modeling import load_reward_model

    trainer_cls = trl.RLOOTrainer if stage["kind"] == "rloo" else trl.GRPOTrainer
    tokenizer = common.stage_tokenizer(shared.base_model, init)
    data = stage_data(shared.sources, stage, shared.seed, "prompts")
    common.require_chat_template(tokenizer, data, shared.base_model, stage)
    args = config(shared, stage, data, stage_dir, init)
    weights = stage["rewards"] or {"reward_model": 1.0}
    policy, source = common.load_policy(shared.base_model, stage, init, args.gradient_checkpointing)
    funcs, processing = [], []
    for name in weights:
        if name == "reward_model":
            model, reward_tokenizer = load_reward_model(init["reward_model"], shared.base_model)
            funcs.append(rewards.RewardModelReward(model, reward_tokenizer))
            processing.append(None)
        else:
            funcs.append(rewards.FUNCTIONS[name])
            processing.append(None)
    args.reward_weights = [float(w) for w in weights.values()]
    peft = modeling.peft_config(stage["peft"]) if stage["peft"] else None
    log(f"policy from {source}; rewards " + ", ".join(
        f"{w:g} x {init['reward_model'] if n == 'reward_model' else n}" for n, w in weights.items()))
    trainer = common.build_trainer(trainer_cls, stage, model=policy, reward_funcs=funcs, args=args,
                                   train_dataset=data["train"], eval_dataset=data["eval"],
                                   processing_class=tokenizer, reward_processing_classes=processing,
                                   peft_config=peft)
    for func in funcs:  # the reward model computes where the policy does
        if isinstance(func, rewards.RewardModelReward):
            func.model.to(trainer.accelerator.device)
    result = common.train(trainer, stage_dir, log)
    trainer.save_model(str(stage_dir / "model"))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(stage_dir / "model"))
    return common.record(trainer, result, args, stage, data, tokenizer, stage_dir / "model", source,
                         peft is not None)
