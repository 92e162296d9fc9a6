"""PPO's value model can train through a LoRA adapter plus its score head instead of every weight.

TRL's PPOTrainer trains the value model (a copy of the reward model) in full: on SmolLM2-135M that is 134.5M
trainable parameters beside the policy's 4.9M of LoRA, about 2.2 GB of fp32 weights, gradients and AdamW
moments. `value_model: lora` (the default when the stage's `peft` is LoRA-family) trains an adapter instead.
Checked here on the tiny model: it starts as the reward model scores, only the adapter and the score head
train, gradients reach both through TRL's own wrapper, the reward model is left alone, and the recipe key is
filled in and refused where it does not belong.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from test_stages import FAST, out_history, recipe_with, reward_stage, run
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from trl.experimental.ppo.ppo_trainer import PolicyAndValueWrapper

from finetune.errors import UserError
from finetune.modeling import count_parameters
from finetune.recipe import load_recipe
from finetune.stages.ppo import VALUE_LORA, lora_value_model

LORA = {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear",
        "modules_to_save": None}


def _ids(config, rows=2, length=24):
    torch.manual_seed(1)
    return torch.randint(3, config.vocab_size, (rows, length))


@pytest.mark.parametrize("peft", [LORA, None], ids=["stage-lora", "default-lora"])
def test_lora_value_model_starts_as_the_reward_model_and_trains_adapter_and_head(tiny_llama, peft):
    reward = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1)  # a new score head
    value = lora_value_model(copy.deepcopy(reward), peft)  # as PPO loads it: a second copy of the reward model
    assert type(value) is type(reward)  # the transformers model: TRL reaches into it by base_model_prefix/.score
    ids = _ids(reward.config)
    with torch.no_grad():  # LoRA's B starts at zero: the value model scores what the reward model scores
        assert torch.allclose(value(input_ids=ids).logits, reward(input_ids=ids).logits, atol=1e-6)

    trainable = {n for n, p in value.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    head = trainable - lora
    assert head and all("score" in n for n in head), head  # the score head trains in full, nothing else does
    layers = value.config.num_hidden_layers
    assert len(lora) == 2 * 7 * layers  # A and B on q, k, v, o, gate, up, down of every layer; not on `score`
    rank = (peft or VALUE_LORA)["r"]
    assert all(rank in value.get_parameter(n).shape for n in lora)
    counts = count_parameters(value)
    assert counts["trainable"] < counts["total"] / 5, counts

    # through TRL's own wrapper (what PPOTrainer trains), the value loss reaches the adapter and the head
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama)
    wrapper = PolicyAndValueWrapper(policy, value).train()
    _, values = wrapper(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    values.square().mean().backward()
    for name in lora | head:
        grad = value.get_parameter(name).grad
        assert grad is not None, name
    # B starts at zero, so the first gradient reaches B (A's waits until B has moved)
    assert all(value.get_parameter(n).grad.abs().sum() > 0 for n in lora if "lora_B" in n)
    assert all(value.get_parameter(n).grad.abs().sum() > 0 for n in head)
    assert all(p.grad is None for p in reward.parameters())  # a separate model: reward scores do not move


def _ppo(**extra):
    return {"name": "ppo", "kind": "ppo", "data": ["prompts"], "peft": {"r": 8, "dropout": 0.0}, **extra,
            "train": {"total_episodes": 16, "per_device_train_batch_size": 8, "num_ppo_epochs": 1,
                      "response_length": 8, "learning_rate": 1e-3, **FAST}}


@pytest.mark.parametrize("setting", [None, "full"])
def test_ppo_stage_records_how_its_value_model_trained(tiny_llama, write_recipe, tmp_path, setting, capsys):
    stage = _ppo(**({"value_model": setting} if setting else {}))
    out = run(recipe_with(tiny_llama, reward_stage(), stage), write_recipe, tmp_path)["ppo"]
    record = out["value_model"]
    expected = setting or "lora"  # a LoRA policy gets a LoRA value model unless the recipe says full
    assert record["train"] == expected
    if expected == "lora":
        assert record["trainable"] < record["total"] / 5, record
    else:
        assert record["trainable"] == record["total"], record
    assert f"({expected})" in capsys.readouterr().err
    logged = [h for h in out_history(tmp_path, "ppo") if "loss/value_avg" in h]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(h["loss/value_avg"])) for h in logged)
    # the trainer's own count covers policy adapter + value model: the LoRA value model cuts it
    if expected == "lora":
        assert out["parameters"]["trainable"] < out["parameters"]["total"] / 5


def test_value_model_key_is_filled_in_and_belongs_to_ppo(tiny_llama, write_recipe):
    recipe = recipe_with(tiny_llama, reward_stage(), _ppo(),
                         {**_ppo(), "name": "ppo_full", "peft": None})
    stages = {s["name"]: s for s in load_recipe(write_recipe(recipe))["stages"]}
    assert stages["ppo"]["value_model"] == "lora" and stages["ppo_full"]["value_model"] == "full"
    assert stages["sft"]["value_model"] is None

    bad = recipe_with(tiny_llama, reward_stage(value_model="lora"))
    with pytest.raises(UserError, match=re.escape("stages[1].value_model: only ppo stages train a value model")):
        load_recipe(write_recipe(bad))
    wrong = recipe_with(tiny_llama, reward_stage(), _ppo(value_model="adapter"))
    with pytest.raises(UserError, match=r"stages\[2\]\.value_model"):
        load_recipe(write_recipe(wrong))
