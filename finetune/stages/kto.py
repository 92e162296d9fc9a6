"""KTO stage: TRL's KTOTrainer on unpaired feedback (a completion labelled desirable or not), from a policy.

KTO (Ethayarajh et al. 2024) needs no pairs: most feedback logs hold one answer and a thumbs up or down.
Preference pairs are split in two (chosen -> desirable, rejected -> undesirable). As in DPO, with an adapter
the reference is the policy with its adapter disabled; in full finetuning TRL keeps a frozen copy.
"""

from __future__ import annotations

from pathlib import Path

from finetune import audit
from finetune.data import stage_data
from finetune.recipe_types import Shared, Stage
from finetune.stages import common


def config(shared: Shared, stage: Stage, data: dict, stage_dir: Path, init: dict | None = None):
    """The stage's KTOConfig (what `run` trains with); UserError for settings TRL rejects."""
    from trl import KTOConfig

    return common.plain_config(KTOConfig, stage, shared.seed, data, stage_dir)

def run(shared: Shared, stage: Stage, init: dict, stage_dir: Path, log=print) -> dict:
    """Train one KTO stage; returns what the manifest records (artifact, data, label audit, metrics).

    Raises UserError for bad data (see `preference.unpaired`), a label audit that fails (one label only,
    answers truncated beyond audit.max_truncated_share) or settings TRL rejects (a per-device batch of 1:
    KTO estimates its KL term from the other rows of the batch).
    """
    from trl import KTOTrainer

    tokenizer = common.stage_tokenizer(shared.base_model, init)
    data = stage_data(shared.sources, stage, shared.seed, "unpaired")
    common.require_chat_template(tokenizer, data, shared.base_model, stage)
    for name, src in data["report"]["sources"].items():
        dropped = ", ".join(f"{n} {r}" for r, n in src["dropped"].items())
        log(f"data {name}: {src['rows']} source rows -> {src['kept']} labelled completions"
            + (f", dropped {dropped}" if dropped else ""))
    args = config(shared, stage, data, stage_dir, init)
    label_audit = audit.unpaired_audit(data["train"], tokenizer, data["kind"], args.max_length, stage["audit"])
    log(f"label audit: {label_audit['desirable']} desirable and {label_audit['undesirable']} undesirable rows, "
        f"completions truncated in {label_audit['rows_answer_truncated']}")
    return common.train_against_reference(KTOTrainer, shared.base_model, stage, init, stage_dir, tokenizer, data, args,
                                          log,
                                          label_audit=label_audit)
