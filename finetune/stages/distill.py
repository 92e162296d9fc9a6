"""Distill stage: TRL's DistillationTrainer teaches a student (the stage's starting model, or `student:`) the
next-token distributions of a teacher (`teacher:`, an earlier policy stage or a model folder).

TRL's trainer is on-policy (generalised knowledge distillation, Agarwal et al. 2024): the student answers the
stage's prompts itself and learns the teacher's distribution over its own tokens, under the generalised
Jensen-Shannon divergence of `train.beta` (0 = forward KL, 1 = reverse KL, TRL's default). Student and teacher
must share one vocabulary; a smaller student is built with the teacher's tokenizer (`finetune tiny
--tokenizer`). Prompt-learning adapters are refused (TRL's loss bypasses the virtual tokens).
"""

from __future__ import annotations

from pathlib import Path

from finetune import modeling
from finetune.data import stage_data
from finetune.recipe_types import Shared, Stage
from finetune.stages import common


def config(shared: Shared, stage: Stage, data: dict, stage_dir: Path, init: dict | None = None):
    """The stage's DistillationConfig (what `run` trains with); UserError for settings TRL rejects."""
    from trl import DistillationConfig

    return common.plain_config(DistillationConfig, stage, shared.seed, data, stage_dir)

def run(shared: Shared, stage: Stage, init: dict, stage_dir: Path, log=print) -> dict:
    """Train one distill stage; returns what the manifest records, with the teacher's folder and size.

    Raises UserError for bad prompt data, a teacher that cannot be loaded, or settings TRL rejects (a
    vocabulary the student does not share, an adapter on `lm_head`, prompt learning).
    """
    from trl import DistillationTrainer

    from finetune.artifacts import full_model_dir

    tokenizer = common.stage_tokenizer(shared.base_model, init)
    data = stage_data(shared.sources, stage, shared.seed, "prompts")
    common.require_chat_template(tokenizer, data, shared.base_model, stage)
    for name, src in data["report"]["sources"].items():
        log(f"data {name}: {src['kept']} prompts")
    args = config(shared, stage, data, stage_dir, init)
    student, source = common.load_policy(shared.base_model, stage, init, args.gradient_checkpointing)
    teacher_dir = full_model_dir(init["teacher"], shared.base_model)
    teacher = modeling.load_base_model(shared.base_model, None, path=str(teacher_dir)).eval()
    sizes = {"student": modeling.count_parameters(student)["total"],
             "teacher": modeling.count_parameters(teacher)["total"]}
    log(f"teacher {teacher_dir} ({sizes['teacher']:,} parameters) -> student {source} "
        f"({sizes['student']:,} parameters, {sizes['teacher'] / sizes['student']:.1f}x smaller)")
    peft = modeling.peft_config(stage["peft"]) if stage["peft"] else None
    trainer = common.build_trainer(DistillationTrainer, stage, model=student, teacher_model=teacher, args=args,
                                   train_dataset=data["train"], eval_dataset=data["eval"],
                                   processing_class=tokenizer, peft_config=peft)
    result = common.train_and_save(trainer, tokenizer, stage_dir, log)
    return common.record(trainer, result, args, stage, data, tokenizer, stage_dir / "model", source,
                         peft is not None, teacher={"model": str(teacher_dir), "stage": init["teacher_stage"],
                                                    "parameters": sizes["teacher"]},
                         student_parameters=sizes["student"])
