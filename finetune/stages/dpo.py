"""DPO stage: TRL's DPOTrainer from the policy of an earlier stage (usually SFT), with the language-model head
run on the completions' positions only (finetune.completion_logits).

With an adapter the reference is the same model with the adapter disabled, so there is no second copy;
in full finetuning TRL keeps a frozen copy of the starting policy as the reference.
"""

from __future__ import annotations

from pathlib import Path

from finetune.errors import UserError
from finetune.recipe_types import Shared, Stage
from finetune.stages import common


def config(shared: Shared, stage: Stage, data: dict, stage_dir: Path, init: dict | None = None):
    """The stage's DPOConfig (what `run` trains with); UserError for settings TRL rejects, or for
    `sample_pairs` on prompt rows without the gold `answers` they are scored against."""
    from trl import DPOConfig

    if stage["sample_pairs"] and "answers" not in data["train"].column_names:
        raise UserError(f"stage {stage['name']}: sample_pairs scores answers against gold answers: the prompt data "
                        f"needs an `answers` column (a list of texts)")
    return common.plain_config(DPOConfig, stage, shared.seed, data, stage_dir)


def run(shared: Shared, stage: Stage, init: dict, stage_dir: Path, log=print) -> dict:
    """Train one DPO stage; returns what the manifest records (artifact, data, pair audit, metrics).

    On the recipe's preference pairs, or, with `sample_pairs:`, on pairs the starting policy samples and SQuAD
    F1 labels (then also the sampling summary). Raises UserError for bad data, a missing chat template, a
    failed pair audit or settings TRL rejects.
    """
    from trl import DPOConfig

    from finetune.completion_logits import CompletionLogitsDPOTrainer

    if stage["sample_pairs"]:
        return _run_on_sampled_pairs(shared, stage, init, stage_dir, log)
    tokenizer, data, args, pair_audit = common.prepare_pairs(shared, stage, init, stage_dir, DPOConfig, log)
    return common.train_against_reference(CompletionLogitsDPOTrainer, shared.base_model, stage, init, stage_dir,
                                          tokenizer, data, args, log, label_audit=pair_audit)


def _run_on_sampled_pairs(shared: Shared, stage: Stage, init: dict, stage_dir: Path, log) -> dict:
    """DPO on metric-labelled pairs (finetune.sampled_pairs): the starting policy samples answers to the
    prompt rows, SQuAD F1 against their gold answers picks (best, worst), and the same policy then trains."""
    from finetune import audit, sampled_pairs
    from finetune.completion_logits import CompletionLogitsDPOTrainer
    from finetune.data import stage_data

    tokenizer = common.stage_tokenizer(shared.base_model, init)
    data = stage_data(shared.sources, stage, shared.seed, "prompts")
    common.require_chat_template(tokenizer, data, shared.base_model, stage)
    args = config(shared, stage, data, stage_dir)
    model, _ = common.load_policy(shared.base_model, stage, init, args.gradient_checkpointing)
    pairs, summary = sampled_pairs.build(model, tokenizer, data["train"], stage["sample_pairs"], shared.seed,
                                         stage["name"], stage_dir / "sampled_pairs.jsonl", log)
    data = {**data, "train": pairs, "eval": None,
            "report": {**data["report"], "train_rows": len(pairs), "prompt_rows": data["report"]["train_rows"]}}
    pair_audit = audit.preference_audit(pairs, tokenizer, data["kind"], args.max_length, stage["audit"])
    return common.train_against_reference(CompletionLogitsDPOTrainer, shared.base_model, stage, init, stage_dir,
                                          tokenizer, data, args, log, model=model, label_audit=pair_audit,
                                          sampled_pairs=summary)
