"""KTO, knowledge distillation and prompt learning on the real stack (TRL, peft) with tiny models.

Each kind: the loss falls, the artifact reloads and is scored on a real eval task, and its bad inputs are one
`error:` line from `finetune validate` (or from the stage, for data only a run reads).
"""

from __future__ import annotations

import json

import pytest
from conftest import DATA, REPO, sft_recipe

from finetune.cli import main
from finetune.errors import UserError
from finetune.pipeline import run_recipe
from finetune.recipe import load_recipe
from finetune.tiny import build_tiny

FAST = {"gradient_checkpointing": False, "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True}


def with_stages(model, *stages, sft_steps: int = 4) -> dict:
    """A short full SFT of `model` on 32 chat rows, then `stages`, on the shipped preference/prompt data."""
    r = sft_recipe(model, train={"max_steps": sft_steps})
    r["data"] = {"chat": {"path": str(DATA / "tiny_chat.jsonl"), "max_rows": 64},
                 "prefs": {"path": str(DATA / "tiny_prefs.jsonl"), "max_rows": 64},
                 "prompts": {"path": str(DATA / "tiny_prompts.jsonl"), "max_rows": 64}}
    r["stages"] += list(stages)
    return r


def run(recipe, write_recipe, tmp_path):
    return run_recipe(load_recipe(write_recipe(recipe)), output_dir=str(tmp_path / "run"))


def losses(tmp_path, stage: str) -> list[float]:
    rows = map(json.loads, (tmp_path / "run" / stage / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in rows if "loss" in r]


def falls(values: list[float]) -> bool:
    """The mean of the last third is below the mean of the first third (single steps are noisy)."""
    k = max(1, len(values) // 3)
    return sum(values[-k:]) / k < sum(values[:k]) / k


def evaluates(tmp_path, stage: str, manifest: dict) -> dict:
    """Reload the stage's artifact as `finetune eval` does and score it on 8 real SQuAD-style questions."""
    from finetune.eval_models import load_for_eval
    from finetune.evaluation import evaluate_task, load_task

    model, tokenizer = load_for_eval(tmp_path / "run" / stage / "model", manifest)
    result = evaluate_task(model, tokenizer, load_task("squad_v1_tiny"), tmp_path / "eval", 8, 8, 8)
    assert result["total"] == 8 and 0 <= result["f1"] <= 100
    return result


# --- KTO ---------------------------------------------------------------------------------------------------


def kto_stage(data="prefs", **train):
    return {"name": "kto", "kind": "kto", "data": [data], "peft": {"r": 8, "dropout": 0.0},
            "train": {"max_steps": 12, "per_device_train_batch_size": 8, "learning_rate": 5e-3, "beta": 0.1,
                      "max_length": 128, **FAST, **train}}


def test_kto_from_pairs_splits_them_learns_and_reloads(tiny_llama, write_recipe, tmp_path, capsys):
    out = run(with_stages(tiny_llama, kto_stage()), write_recipe, tmp_path)["kto"]
    err = capsys.readouterr().err
    assert "64 source rows -> 128 labelled completions" in err
    assert "reference: the policy with its adapter disabled" in err
    assert out["label_audit"]["desirable"] == out["label_audit"]["undesirable"] == 64
    assert out["artifact"]["adapter"] and out["init"]["stage"] == "sft"
    assert falls(losses(tmp_path, "kto")), losses(tmp_path, "kto")
    evaluates(tmp_path, "kto", out)


def _unpaired_file(tmp_path, labels=None) -> str:
    """Unpaired feedback made from the shipped pairs: one answer per prompt, alternately good and bad."""
    rows = [json.loads(line) for line in (DATA / "tiny_prefs.jsonl").read_text().splitlines()[:64]]
    out = []
    for i, r in enumerate(rows):
        good = i % 2 == 0 if labels is None else labels(i)
        out.append({"prompt": r["prompt"], "completion": r["chosen"] if i % 2 == 0 else r["rejected"],
                    "label": good})
    path = tmp_path / "feedback.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return str(path)


def test_kto_on_unpaired_feedback_and_the_audit_counts(tiny_llama, write_recipe, tmp_path):
    recipe = with_stages(tiny_llama, kto_stage("feedback"))
    recipe["data"]["feedback"] = {"path": _unpaired_file(tmp_path)}
    out = run(recipe, write_recipe, tmp_path)
    kto = out["kto"]
    assert kto["data"]["sources"]["feedback"] == {"path": recipe["data"]["feedback"]["path"], "format": "unpaired",
                                                  "kind": "chat", "rows": 64, "kept": 64, "dropped": {}}
    assert kto["label_audit"]["desirable"] == kto["label_audit"]["undesirable"] == 32
    audit = json.loads((tmp_path / "run" / "audit" / "audit.json").read_text())
    assert audit["sources"]["feedback"]["labels"] == {"desirable": 32, "undesirable": 32, "flag": None}
    assert falls(losses(tmp_path, "kto"))


@pytest.mark.parametrize(("change", "fragment"), [
    (lambda r: {**r, "label": "yes"}, "row 0: label must be true or false"),
    (lambda r: {k: v for k, v in r.items() if k != "label"}, "missing label"),
    (lambda r: {**r, "completion": 3}, "row 0: completion must be text or a list"),
])
def test_bad_unpaired_rows_are_one_line(tmp_path, change, fragment):
    from finetune.data import load_source
    from finetune.preference import unpaired

    path = tmp_path / "bad.jsonl"
    rows = [change({"prompt": "Q?", "completion": "A.", "label": True}),
            change({"prompt": "Q2?", "completion": "B.", "label": False})]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_source("bad", {"path": str(path), "format": "auto", "columns": {}, "split": "train", "subset": None,
                             "revision": None, "max_rows": None}, 0)
    with pytest.raises(UserError, match=fragment):
        unpaired(ds, "bad.jsonl")


def test_kto_with_one_label_only_is_refused(tiny_llama, write_recipe, tmp_path):
    recipe = with_stages(tiny_llama, kto_stage("feedback"))
    recipe["data"]["feedback"] = {"path": _unpaired_file(tmp_path, labels=lambda i: True)}
    with pytest.raises(UserError, match="all 64 rows are labelled desirable"):
        run(recipe, write_recipe, tmp_path)


# --- distillation ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def student(tiny_llama, tmp_path_factory):
    """Half as wide as tiny_llama, random weights, tiny_llama's own tokenizer."""
    return build_tiny(tmp_path_factory.mktemp("student") / "s", "llama", hidden=64, tokenizer=str(tiny_llama))


def distill_stage(**keys):
    train = {"max_steps": 30, "per_device_train_batch_size": 8, "learning_rate": 1e-3, "max_completion_length": 8,
             "beta": 0.0, "lr_scheduler_type": "constant", **FAST}
    return {"name": "distill", "kind": "distill", "data": ["prompts"], "teacher": "sft", **keys, "train": train}


def test_distill_teaches_a_smaller_student_and_evaluates_both(tiny_llama, student, write_recipe, tmp_path, capsys):
    recipe = with_stages(tiny_llama, distill_stage(student=str(student)))
    recipe["eval"] = {"tasks": ["squad_v1_tiny"], "limit": 8, "base": False}
    out = run(recipe, write_recipe, tmp_path)["distill"]
    assert "x smaller)" in capsys.readouterr().err
    assert out["init"]["teacher_stage"] == "sft" and out["init"]["student"]["path"] == str(student)
    assert out["teacher"]["parameters"] > 1.5 * out["student_parameters"]
    assert out["artifact"]["base"] == str(student) and not out["artifact"]["adapter"]
    assert falls(losses(tmp_path, "distill")), losses(tmp_path, "distill")
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert set(results) == {"sft", "distill-start", "distill"}  # teacher, student before and after
    comparisons = json.loads((tmp_path / "run" / "eval" / "comparisons.json").read_text())
    assert {(c["from"], c["to"]) for c in comparisons} >= {("sft", "distill"), ("distill-start", "distill")}


def test_distill_with_a_lora_student_from_the_policy(tiny_llama, write_recipe, tmp_path):
    """Without `student:` the student is the stage's `from` (self-distillation here), trained through LoRA."""
    out = run(with_stages(tiny_llama, distill_stage(peft={"r": 8, "dropout": 0.0})), write_recipe, tmp_path)
    assert out["distill"]["artifact"]["adapter"] and out["distill"]["init"]["stage"] == "sft"
    evaluates(tmp_path, "distill", out["distill"])


def validate(capsys, write_recipe, recipe) -> tuple[int, str]:
    code = main(["validate", str(write_recipe(recipe))])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(("stage", "fragment"), [
    ({"teacher": None}, "stages[1].teacher: a distill stage needs a teacher"),
    ({"teacher": "sfft"}, "'sfft' is neither an earlier stage nor an existing model folder; did you mean 'sft'?"),
    ({"train": {"max_completion_lenght": 8}},
     "stages[1].train.max_completion_lenght: unknown DistillationConfig field; did you mean 'max_completion_length'?"),
    ({"peft": {"method": "prompt_tuning"}}, "prompt_tuning trains a soft prompt in sft stages only"),
])
def test_distill_recipe_mistakes_fail_validate_in_one_line(tiny_llama, write_recipe, capsys, stage, fragment):
    code, err = validate(capsys, write_recipe, with_stages(tiny_llama, {**distill_stage(), **stage}))
    assert code == 2 and fragment in err and len(err.splitlines()) == 1, err


def test_a_soft_prompt_teacher_a_missing_student_and_reserved_names_fail_validate(tiny_llama, write_recipe,
                                                                                  capsys):
    distill = distill_stage(teacher="soft", **{"from": "sft"})
    recipe = with_stages(tiny_llama, soft_prompt_stage("prompt_tuning"), distill)
    recipe["data"]["few"] = recipe["data"]["chat"]
    code, err = validate(capsys, write_recipe, recipe)
    assert code == 2 and "stages[2].teacher: 'soft' trained a soft prompt (prompt_tuning)" in err, err
    code, err = validate(capsys, write_recipe, with_stages(tiny_llama, distill_stage(student="models/nope.gguf")))
    assert code == 2 and "stages[1].student: GGUF file 'models/nope.gguf' not found" in err, err
    code, err = validate(capsys, write_recipe, with_stages(tiny_llama, distill_stage(student="./models/nope")))
    assert code == 2 and "stages[1].student: model './models/nope' not found" in err, err
    for name in ("base", "distill-start"):
        code, err = validate(capsys, write_recipe, with_stages(tiny_llama, distill_stage(name=name)))
        assert code == 2 and f"'{name}' is reserved for evaluation labels" in err, err


def test_kto_batch_of_one_and_packed_soft_prompts_fail_validate(tiny_llama, write_recipe, capsys):
    code, err = validate(capsys, write_recipe, with_stages(tiny_llama, kto_stage(per_device_train_batch_size=1)))
    assert code == 2 and "needs at least 2 rows per device" in err, err
    stage = soft_prompt_stage("prefix_tuning")
    stage["train"]["packing"] = True
    recipe = with_stages(tiny_llama, stage)
    recipe["data"]["few"] = recipe["data"]["chat"]
    code, err = validate(capsys, write_recipe, recipe)
    assert code == 2 and "train.packing: prefix_tuning prepends virtual tokens" in err, err


def test_unpaired_columns_can_be_renamed(tmp_path):
    from finetune.data import load_source
    from finetune.preference import unpaired

    path = tmp_path / "log.jsonl"
    path.write_text('{"q": "Q?", "a": "A.", "thumbs_up": true}\n{"q": "Q2?", "a": "B.", "thumbs_up": false}\n')
    src = {"path": str(path), "format": "auto", "columns": {"prompt": "q", "completion": "a", "label": "thumbs_up"},
           "split": "train", "subset": None, "revision": None, "max_rows": None}
    rows, dropped, kind = unpaired(load_source("log", src, 0), "log.jsonl")
    assert list(rows["label"]) == [True, False] and kind == "text" and dropped == {}


def test_a_student_with_another_vocabulary_fails_validate(tiny_llama, write_recipe, tmp_path, capsys):
    other = build_tiny(tmp_path / "other", "llama", corpus=[DATA], vocab_size=1024)
    code, err = validate(capsys, write_recipe, with_stages(tiny_llama, distill_stage(student=str(other))))
    assert code == 2 and "has a vocabulary of 1024 tokens" in err and "shared vocabulary" in err, err


def test_kto_field_typos_fail_validate(tiny_llama, write_recipe, capsys):
    code, err = validate(capsys, write_recipe, with_stages(tiny_llama, kto_stage(desirable_weigth=1.0)))
    assert code == 2 and "unknown KTOConfig field; did you mean 'desirable_weight'?" in err, err


# --- prompt learning ---------------------------------------------------------------------------------------


def soft_prompt_stage(method: str, **peft):
    """A soft prompt trained on one repeated batch of 8 chat rows (on a barely trained tiny model, the loss of
    fresh batches varies more between batches than a soft prompt moves it)."""
    train = {"max_steps": 24, "per_device_train_batch_size": 8, "learning_rate": 2e-2, "max_length": 128, **FAST}
    return {"name": "soft", "kind": "sft", "from": "sft", "data": ["few"],
            "peft": {"method": method, "num_virtual_tokens": 8, **peft}, "train": train}


@pytest.mark.parametrize(("method", "peft"), [("prompt_tuning", {"init_text": "Answer the question."}),
                                              ("p_tuning", {"encoder_hidden_size": 32}),
                                              ("prefix_tuning", {})])
def test_prompt_learning_trains_a_soft_prompt_that_reloads_and_never_merges(tiny_llama, write_recipe, tmp_path,
                                                                            capsys, method, peft):
    recipe = with_stages(tiny_llama, soft_prompt_stage(method, **peft), sft_steps=20)
    recipe["data"]["few"] = {"path": str(DATA / "tiny_chat.jsonl"), "max_rows": 8}
    out = run(recipe, write_recipe, tmp_path)
    soft = out["soft"]
    config = json.loads((tmp_path / "run" / "soft" / "model" / "adapter_config.json").read_text())
    assert config["peft_type"] == method.upper() and config["num_virtual_tokens"] == 8
    hidden = 128
    expected = {"prompt_tuning": 8 * hidden, "prefix_tuning": 8 * 2 * 2 * 64}  # 2 layers x (key, value) x kv dims
    if method in expected:
        assert soft["parameters"]["trainable"] == expected[method], soft["parameters"]
    assert soft["parameters"]["trainable"] < 0.1 * soft["parameters"]["total"]
    assert falls(losses(tmp_path, "soft")), losses(tmp_path, "soft")
    evaluates(tmp_path, "soft", soft)
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "run" / "soft" / "model"), str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "is a soft prompt" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize(("change", "fragment"), [
    (lambda r: r["stages"].append({"name": "dpo", "kind": "dpo", "from": "soft", "data": ["prefs"]}),
     "stages[2].from: 'soft' trained a soft prompt (prompt_tuning), which cannot be merged"),
    (lambda r: r["stages"][1]["peft"].update(method="lora"), "peft.num_virtual_tokens: only for peft.method"),
    (lambda r: r["stages"][1]["peft"].update(method="prompt_tutning"), "did you mean 'prompt_tuning'"),
    (lambda r: r["stages"][1]["peft"].update(method="p_tuning", init_text="x"),
     "peft.init_text: only for peft.method prompt_tuning"),
])
def test_prompt_learning_mistakes_fail_validate(tiny_llama, write_recipe, capsys, change, fragment):
    recipe = with_stages(tiny_llama, soft_prompt_stage("prompt_tuning"))
    recipe["data"]["few"] = recipe["data"]["chat"]
    change(recipe)
    code, err = validate(capsys, write_recipe, recipe)
    assert code == 2 and fragment in err and len(err.splitlines()) == 1, err


def test_a_student_made_from_its_teacher_keeps_chosen_layers(tiny_llama, tmp_path, capsys):
    """`finetune student`: the teacher's own tensors for the kept layers, embeddings and head; it still runs."""
    import torch
    from transformers import AutoModelForCausalLM

    from finetune.students import kept_layers

    assert kept_layers(30, 6) == [0, 6, 12, 17, 23, 29] and kept_layers(2, 1) == [0] and kept_layers(3, 3) == [0, 1, 2]
    out = tmp_path / "student"
    assert main(["student", str(tiny_llama), str(out), "--layers", "1"]) == 0
    assert "1.0x" not in capsys.readouterr().out
    teacher = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    student = AutoModelForCausalLM.from_pretrained(str(out))
    assert student.config.num_hidden_layers == 1
    t, s = teacher.state_dict(), student.state_dict()
    assert set(s) == {k for k in t if not k.startswith("model.layers.1.")}
    assert all(torch.equal(s[k], t[k]) for k in s)
    ids = torch.tensor([[5, 6, 7]])
    assert student.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 6)
    assert main(["student", str(tiny_llama), str(out), "--layers", "1"]) == 2  # never overwrites
    assert main(["student", str(tiny_llama), str(tmp_path / "s3"), "--layers", "3"]) == 2
    assert "keep between 1 and the teacher's 2 layers" in capsys.readouterr().err


# --- preflight: a mistake in the last stage fails before the first one trains -----------------------------


def test_a_setting_trl_refuses_in_the_last_stage_fails_before_the_first_trains(tiny_llama, write_recipe, tmp_path,
                                                                              capsys):
    """GRPO's batch of 4 completions cannot be cut into groups of 3: TRL's config refuses it. Static validation
    cannot know that; the run's preflight (and `validate --deep`) builds every stage's config before training."""
    grpo = {"name": "grpo", "kind": "grpo", "data": ["prompts"], "rewards": {"length_penalty": 1.0},
            "train": {"max_steps": 1, "per_device_train_batch_size": 4, "num_generations": 3, **FAST}}
    recipe = with_stages(tiny_llama, grpo)
    recipe["data"]["prompts"]["path"] = str(REPO / "recipes" / "realdata" / "xquad" / "train_prompts.jsonl")
    path = write_recipe(recipe)
    assert main(["validate", str(path)]) == 0  # the fast check passes: the values have the right types
    capsys.readouterr()
    assert main(["validate", "--deep", str(path)]) == 2
    err = capsys.readouterr().err  # beside it, on a cold cache: datasets' "Generating train split" progress
    assert [line for line in err.splitlines() if "error" in line] == [
        "error: stage grpo: train: GRPOConfig rejected the settings: generation_batch_size (4) must be divisible "
        "by num_generations (3)."], err
    with pytest.raises(UserError, match="stage grpo: train: GRPOConfig rejected the settings"):
        run_recipe(load_recipe(path), output_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run" / "sft").exists()  # nothing trained


def test_verifiable_rewards_without_gold_answers_fail_before_training(tiny_llama, write_recipe, tmp_path):
    grpo = {"name": "grpo", "kind": "grpo", "data": ["prompts"], "rewards": {"squad_f1": 1.0},
            "train": {"max_steps": 1, "per_device_train_batch_size": 4, "num_generations": 4, **FAST}}
    with pytest.raises(UserError, match=r"stage grpo: rewards \['squad_f1'\] score against gold answers"):
        run(with_stages(tiny_llama, grpo), write_recipe, tmp_path)
    assert not (tmp_path / "run" / "sft").exists()


def test_a_missing_teacher_or_tokenizer_folder_is_one_line(tmp_path, capsys):
    assert main(["student", str(tmp_path / "nope"), str(tmp_path / "s"), "--layers", "2"]) == 2
    assert main(["tiny", "--tokenizer", str(tmp_path / "nope"), "--out", str(tmp_path / "t")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"error: {tmp_path / 'nope'}: no such model folder (a student is cut from a local teacher folder)",
        f"error: --tokenizer {tmp_path / 'nope'}: no such model folder",
    ], lines
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()
