"""Preference stages on the real stack with tiny models: reward, DPO, PPO, RLOO/GRPO, and their chaining."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DATA, sft_recipe

from finetune import precision
from finetune.pipeline import run_recipe
from finetune.recipe import load_recipe

QUANT = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
FAST = {"gradient_checkpointing": False, "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True}


def recipe_with(model, *stages, sft=None):
    """An SFT stage on 32 chat rows followed by `stages`, on the shipped preference and prompt data."""
    r = sft_recipe(model, **(sft or {}))
    r["data"] = {"chat": {"path": str(DATA / "tiny_chat.jsonl"), "max_rows": 32},
                 "prefs": {"path": str(DATA / "tiny_prefs.jsonl"), "max_rows": 48},
                 "prompts": {"path": str(DATA / "tiny_prompts.jsonl"), "max_rows": 32}}
    r["stages"] += list(stages)
    return r


def reward_stage(**extra):
    train = {"max_steps": 6, "per_device_train_batch_size": 8, "learning_rate": 1e-3, "max_length": 128, **FAST}
    return {"name": "reward", "kind": "reward", "data": ["prefs"], "eval_split": 16, **extra, "train": train}


def run(recipe, write_recipe, tmp_path, name="run"):
    return run_recipe(load_recipe(write_recipe(recipe)), output_dir=str(tmp_path / name))


@pytest.mark.parametrize("variant", ["full", "lora", "qlora"])
def test_reward_stage_reloads_as_sequence_classifier_and_reports_accuracy(tiny_llama, write_recipe, tmp_path,
                                                                         variant):
    from transformers import AutoModelForSequenceClassification

    extra = {"full": {}, "lora": {"peft": {"r": 8}}, "qlora": {"peft": {"r": 8}, "quantization": QUANT}}[variant]
    out = run(recipe_with(tiny_llama, reward_stage(**extra)), write_recipe, tmp_path)["reward"]
    model = AutoModelForSequenceClassification.from_pretrained(out["artifact"]["model"])
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    assert not (tmp_path / "run" / "reward" / "model" / "adapter_config.json").exists()  # merged where needed
    acc = out["reward_accuracy"]
    assert acc["pairs"] == 16 and acc["split"] == "eval" and 0.0 <= acc["accuracy"] <= 1.0
    assert out["init"]["stage"] == "sft"
    # the reported accuracy is reproducible from the saved model alone
    from finetune.modeling import load_reward_model
    from finetune.stages.reward import pairwise_accuracy

    recipe = load_recipe(tmp_path / "recipe.yaml")
    from finetune.data import stage_data

    pairs = stage_data(recipe["data"], recipe["stages"][1], recipe["seed"], "pairs")["eval"]
    reloaded, tok = load_reward_model(out["artifact"]["model"], recipe["base_model"])
    trained_in = precision.training({}, precision.detect())  # the stage's train: block leaves it to the hardware
    assert acc["compute"] == trained_in.name
    assert pairwise_accuracy(reloaded, tok, pairs, "chat", trained_in)["accuracy"] == acc["accuracy"]


def test_dpo_lora_uses_disabled_adapter_as_reference_and_changes_the_policy(tiny_llama, write_recipe, tmp_path,
                                                                            capsys):
    """The DPO stage also says, once, that the adapter dropout it asks for is not applied (TRL's DPOTrainer
    turns dropout off); the full SFT before it has no adapter and says nothing."""
    dpo = {"name": "dpo", "kind": "dpo", "data": ["prefs"], "peft": {"r": 8, "dropout": 0.1},
           "train": {"max_steps": 4, "per_device_train_batch_size": 8, "learning_rate": 5e-3, "beta": 0.1,
                     "max_length": 128, **FAST}}
    out = run(recipe_with(tiny_llama, dpo), write_recipe, tmp_path)["dpo"]
    err = capsys.readouterr().err
    assert "reference: the policy with its adapter disabled" in err
    notes = [line for line in err.splitlines() if "is not applied" in line]
    assert len(notes) == 1 and "dpo: note: peft.dropout 0.1 is not applied: " in notes[0], notes
    assert out["artifact"]["adapter"] and out["artifact"]["base"].endswith("sft/model")
    rows = [h for h in out_history(tmp_path, "dpo") if "loss" in h]
    assert len(rows) == 4 and all("rewards/margins" in h for h in rows)


def out_history(tmp_path, stage, name="run"):
    lines = (tmp_path / name / stage / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_qlora_sft_then_qlora_dpo(tiny_qwen2, write_recipe, tmp_path):
    """A stage consuming an adapter trained on a 4-bit base: the adapter is merged, then re-quantised."""
    import bitsandbytes as bnb

    dpo = {"name": "dpo", "kind": "dpo", "data": ["prefs"], "peft": {"r": 4}, "quantization": QUANT,
           "train": {"max_steps": 2, "per_device_train_batch_size": 8, "max_length": 128, **FAST}}
    out = run(recipe_with(tiny_qwen2, dpo, sft={"peft": {"r": 4}, "quantization": QUANT}), write_recipe, tmp_path)
    merged = tmp_path / "run" / "sft" / "merged"
    assert (merged / "config.json").exists() and "quantization_config" not in json.loads(
        (merged / "config.json").read_text())
    assert out["dpo"]["artifact"]["base"] == str(merged)
    from finetune.eval_models import load_for_eval

    model, _ = load_for_eval(tmp_path / "run" / "dpo" / "model", out["dpo"])
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_ppo_updates_the_policy_and_logs_reward_and_kl(tiny_llama, write_recipe, tmp_path):
    ppo = {"name": "ppo", "kind": "ppo", "data": ["prompts"],
           "train": {"total_episodes": 32, "per_device_train_batch_size": 8, "num_ppo_epochs": 1,
                     "response_length": 12, "learning_rate": 1e-4, **FAST}}
    out = run(recipe_with(tiny_llama, reward_stage(), ppo), write_recipe, tmp_path)["ppo"]
    assert out["init"]["stage"] == "sft" and out["init"]["reward_model"].endswith("reward/model")
    before, after = _weights(tmp_path / "run" / "sft" / "model"), _weights(tmp_path / "run" / "ppo" / "model")
    assert set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before), "PPO left the policy unchanged"
    logged = [h for h in out_history(tmp_path, "ppo") if "objective/scores" in h]
    assert len(logged) == 4  # 32 episodes / batch 8
    assert all("objective/kl" in h and "objective/rlhf_reward" in h for h in logged)
    assert out["ppo"]["last"]["objective/kl"] == logged[-1]["objective/kl"]


@pytest.mark.parametrize("kind", ["rloo", "grpo"])
def test_online_rl_against_the_reward_model(tiny_llama, write_recipe, tmp_path, kind):
    online = {"name": kind, "kind": kind, "data": ["prompts"],
              "train": {"max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 4,
                        "max_completion_length": 8, "learning_rate": 1e-4, **FAST}}
    out = run(recipe_with(tiny_llama, reward_stage(), online), write_recipe, tmp_path)[kind]
    before, after = _weights(tmp_path / "run" / "sft" / "model"), _weights(tmp_path / "run" / kind / "model")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert any("reward" in k for h in out_history(tmp_path, kind) for k in h)
    assert out["init"]["reward_model"].endswith("reward/model")


@pytest.mark.numerics
def test_lora_sft_merged_for_next_stage_equals_base_plus_adapter(tiny_llama, write_recipe, tmp_path):
    from transformers import AutoModelForCausalLM

    from finetune.artifacts import full_model_dir
    from finetune.modeling import load_adapter

    recipe = sft_recipe(tiny_llama, peft={"r": 8, "dropout": 0.0}, train={"max_steps": 3, "learning_rate": 1e-2})
    out = run(recipe, write_recipe, tmp_path)["sft"]
    merged = full_model_dir(out["artifact"])
    x = torch.randint(5, 500, (2, 12))
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(merged)(x).logits
        b = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_llama), out["artifact"]["model"])(x).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_llama)(x).logits
    # Merged weights sum in another order: 4.8e-7 at most on both kernel paths (AVX-512, AVX2; 2026-11-29).
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert not torch.allclose(a, base, atol=1e-3)


def test_dropout_note_reads_the_model_as_built(tiny_llama):
    """SFT keeps the adapter's dropout (no note); TRL's own disable_dropout_in_model, as its DPO/reward trainers
    call it, turns it off (a note); dropout 0 asked gives no note."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import disable_dropout_in_model

    from finetune.stages.common import dropout_note

    def lora(p):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama)
        return get_peft_model(model, LoraConfig(r=4, lora_dropout=p, task_type="CAUSAL_LM"))

    kept = lora(0.05)
    assert dropout_note(kept, "SFTTrainer") is None
    disable_dropout_in_model(kept)
    assert dropout_note(kept, "DPOTrainer") == ("note: peft.dropout 0.05 is not applied: DPOTrainer turned dropout "
                                                "off (TRL's disable_dropout); 0.0 says what runs")
    assert dropout_note(lora(0.0), "DPOTrainer") is None
