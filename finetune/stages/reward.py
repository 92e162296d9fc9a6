"""Reward stage: TRL's RewardTrainer on preference pairs; the output reloads as a sequence classifier.

Where a reward model is read. A sequence classifier's reward is its logit at the last non-pad token, so the
text must end where every reader of the model will end it. TRL's PPOTrainer scores the policy's tokens up to
and including the end-of-sequence token (`stop_token: eos`), but TRL's RewardTrainer renders a conversation
with the whole chat template, which for ChatML templates (SmolLM2, Qwen) puts a newline after `<|im_end|>`:
trained that way, the model is read in PPO at a position it never learned to score. (In the demo's seed-5 run
on the AVX2 path that made the sentence "Their favorite color is brown." outscore the gold span "brown" on 16
of 16 held-out colour questions when read at `<|im_end|>`, and lose on 12 of 16 when read at the newline; PPO
duly taught the policy the sentence.) So every pair is rendered (a conversation with its chat template, cut
after its last end-of-sequence token: `end_at_eos`; plain text with the end-of-sequence token appended, as
TRL does), tokenised here and handed to TRL as `chosen_ids` / `rejected_ids`. The pairwise accuracy, PPO and
the `reward_model` reward of GRPO/RLOO (`finetune.rewards.RewardModelReward`) all read the model at that token
(`finetune.rewards.score`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from finetune import modeling
from finetune.recipe_types import Shared, Stage
from finetune.rewards import conversation_text, score, with_eos
from finetune.stages import common

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from finetune.precision import Precision


def pair_texts(pairs: Dataset, tokenizer: PreTrainedTokenizerBase, kind: str) -> tuple[list[str], list[str]]:
    """The full chosen / rejected texts a reward model is trained on and scores: prompt + answer + eos token
    for text pairs (as TRL appends it), the rendered conversation cut after its last eos token for chat pairs."""
    if kind == "text":
        eos = tokenizer.eos_token
        return ([with_eos(p + c, eos) for p, c in zip(pairs["prompt"], pairs["chosen"], strict=True)],
                [with_eos(p + r, eos) for p, r in zip(pairs["prompt"], pairs["rejected"], strict=True)])
    return ([conversation_text(p + c, tokenizer) for p, c in zip(pairs["prompt"], pairs["chosen"], strict=True)],
            [conversation_text(p + r, tokenizer) for p, r in zip(pairs["prompt"], pairs["rejected"], strict=True)])


def tokenized_pairs(pairs: Dataset | None, tokenizer: PreTrainedTokenizerBase, kind: str) -> Dataset | None:
    """Pairs in TRL's pre-tokenised layout (`chosen_ids`, `rejected_ids`, and `margin` if present): the texts
    of `pair_texts`, with the tokenizer's special tokens for text pairs (as TRL and PPO's queries add them) and
    without for chat pairs (the template writes its own). None stays None."""
    if pairs is None:
        return None
    from datasets import Dataset

    chosen, rejected = pair_texts(pairs, tokenizer, kind)
    encode = lambda texts: tokenizer(texts, add_special_tokens=kind == "text")["input_ids"]  # noqa: E731
    columns = {"chosen_ids": encode(chosen), "rejected_ids": encode(rejected)}
    if "margin" in pairs.column_names:
        columns["margin"] = pairs["margin"]
    return Dataset.from_dict(columns)


def pairwise_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: Dataset, kind: str,
                      precision: Precision | None = None) -> dict:
    """Share of pairs where chosen outscores rejected, the mean margin, and what the scores were computed in
    (`compute`: `precision`'s name, e.g. the training precision, or "as loaded" for None; `rewards.score`)."""
    chosen, rejected = pair_texts(pairs, tokenizer, kind)
    special = kind == "text"
    c, r = (score(model, tokenizer, chosen, add_special_tokens=special, precision=precision),
            score(model, tokenizer, rejected, add_special_tokens=special, precision=precision))
    wins = [a > b for a, b in zip(c, r, strict=True)]
    return {"pairs": len(wins), "accuracy": round(sum(wins) / len(wins), 4),
            "mean_margin": round(sum(a - b for a, b in zip(c, r, strict=True)) / len(wins), 4),
            "compute": precision.name if precision is not None else "as loaded"}


def _match_head_dtype(model) -> None:
    """Give the trained score head the dtype of the hidden states it receives.

    TRL 1.12 casts every trainable parameter of a quantised model to bf16 (the QLoRA recipe), the new score
    head included; but k-bit preparation keeps norms in fp32, so the head then gets fp32 inputs and the
    matmul fails. LoRA layers cast their inputs themselves; the plain head does not.
    """
    hidden_dtype = model.get_input_embeddings().weight.dtype
    for name, param in model.named_parameters():
        if param.requires_grad and "score" in name and "lora_" not in name:
            param.data = param.data.to(hidden_dtype)



def config(shared: Shared, stage: Stage, data: dict, stage_dir: Path, init: dict | None = None):
    """The stage's RewardConfig (what `run` trains with); UserError for settings TRL rejects."""
    from trl import RewardConfig

    return common.plain_config(RewardConfig, stage, shared.seed, data, stage_dir)

def run(shared: Shared, stage: Stage, init: dict, stage_dir: Path, log=print) -> dict:
    """Train one reward-model stage; returns what the manifest records (artifact, data, pair audit, metrics and
    `reward_accuracy`: pairwise accuracy of the saved model on the eval split, or the train split without one).

    With an adapter, the adapter is saved under <stage>/adapter and merged into <stage>/model. Raises
    UserError for bad data, a missing chat template, a failed pair audit or settings TRL rejects.
    """
    from trl import RewardConfig, RewardTrainer

    from finetune.artifacts import merge_adapter
    from finetune.precision import detect, of_args

    tokenizer, data, args, pair_audit = common.prepare_pairs(shared, stage, init, stage_dir, RewardConfig, log)
    model, source = common.load_policy(shared.base_model, stage, init, args.gradient_checkpointing,
                                       auto_class="AutoModelForSequenceClassification", num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    # SEQ_CLS adapters train (and save) the new score head in full alongside the LoRA weights.
    peft = modeling.peft_config(stage["peft"], task_type="SEQ_CLS") if stage["peft"] else None
    trainer = common.build_trainer(RewardTrainer, stage, model=model, args=args,
                                   train_dataset=tokenized_pairs(data["train"], tokenizer, data["kind"]),
                                   eval_dataset=tokenized_pairs(data["eval"], tokenizer, data["kind"]),
                                   processing_class=tokenizer, peft_config=peft)
    if stage["quantization"]:
        _match_head_dtype(trainer.model)
    result = common.train(trainer, stage_dir, log)
    out = stage_dir / "model"
    if peft:
        trainer.save_model(str(stage_dir / "adapter"))
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(stage_dir / "adapter"))
            merge_adapter(stage_dir / "adapter", out, shared.base_model)
    else:
        trainer.save_model(str(out))
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(out))
    trainer.accelerator.wait_for_everyone()  # the merged model is written by rank 0
    accuracy = None
    if trainer.is_world_process_zero():
        held_out = data["eval"] if data["eval"] is not None else data["train"]
        reloaded, _ = modeling.load_reward_model(out, shared.base_model, tokenizer)
        # scored in the training precision: the real recipe's 80 held-out pairs took 187 s of the stage in fp32
        # batches of 32 in file order on a bf16 CPU, 49 s so (README: "Three cuts")
        chosen = of_args(args, detect())
        accuracy = {**pairwise_accuracy(reloaded, tokenizer, held_out, data["kind"], chosen),
                    "split": "eval" if data["eval"] is not None else "train (no eval_split set)"}
        log(f"reward model pairwise accuracy on {accuracy['split']}: {accuracy['accuracy']:.3f} "
            f"({accuracy['pairs']} pairs, mean margin {accuracy['mean_margin']:+.3f}, "
            f"scored in {accuracy['compute']})")
    return common.record(trainer, result, args, stage, data, tokenizer, out, source, False,
                         reward_accuracy=accuracy, trained_with_adapter=peft is not None, label_audit=pair_audit)
