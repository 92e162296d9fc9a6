"""PPO's policy and value model train with activation checkpointing when the stage asks for it.

transformers 5 turns checkpointing on in `Trainer.train`, which TRL 1.12's PPOTrainer replaces with its own
loop, so neither model was checkpointed (and `PolicyAndValueWrapper.gradient_checkpointing_enable` reaches the
policy only); on SmolLM2-135M with 8 prompts of about 700 tokens the PPO stage was killed for memory on a 24 GB
machine. `finetune.stages.ppo.checkpoint_models` turns it on in both. Counted here: the bytes autograd saves for
the backward pass during each model's forward, before and after, on the tiny model; and which models a real
PPO stage has checkpointed when its training loop starts.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
from test_stages import recipe_with, reward_stage, run
from test_value_lora import _ppo
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from trl.experimental.ppo.ppo_trainer import PolicyAndValueWrapper, PPOTrainer

from finetune.stages.ppo import checkpoint_models


def saved_for_backward(forward) -> int:
    """Bytes of the tensors autograd keeps for the backward pass while `forward()` runs."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return total


def test_policy_and_value_model_keep_only_layer_inputs_once_checkpointed(tiny_llama):
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama)
    value = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1)
    wrapper = PolicyAndValueWrapper(policy, value).train()
    ids = torch.randint(3, policy.config.vocab_size, (4, 96))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "output_hidden_states": True}
    critic = lambda: wrapper.critic_backbone(**batch)  # noqa: E731  (what PPO's value forward runs)
    actor = lambda: wrapper.policy(**batch)  # noqa: E731  (what PPO's policy forward runs)
    layer_inputs = value.config.num_hidden_layers * ids.numel() * value.config.hidden_size * 4

    before = {"value": saved_for_backward(critic), "policy": saved_for_backward(actor)}
    assert not policy.is_gradient_checkpointing and not value.is_gradient_checkpointing
    checkpoint_models(policy, value, SimpleNamespace(activation_checkpointing_kwargs={"use_reentrant": False}))
    after = {"value": saved_for_backward(critic), "policy": saved_for_backward(actor)}

    assert policy.is_gradient_checkpointing and value.is_gradient_checkpointing
    # byte counts follow from shapes alone, so these bounds hold on any CPU. Measured on the tiny model (2 layers,
    # 4 x 96 tokens): the value model 10.9 MB before, 0.99 MB after, 0.39 MB of layer inputs; the rest is the
    # embedding output, the final norm's input and the score head's.
    assert after["value"] < 3 * layer_inputs, (after, layer_inputs)
    assert before["value"] > 5 * after["value"], (before, after)
    # the policy keeps its logits (4 x 96 x the vocabulary) either way; the layers' share goes
    assert before["policy"] - after["policy"] > before["value"] - 3 * layer_inputs, (before, after)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_ppo_stage_checkpoints_policy_and_value_model_as_the_recipe_says(tiny_llama, write_recipe, tmp_path,
                                                                         monkeypatch, checkpointing):
    # transformers 5 turns activation checkpointing on in Trainer.train, which TRL's PPOTrainer replaces with its
    # own loop: the stage has to do it, for the policy as well as the value model
    seen = {}
    original = PPOTrainer.train

    def train(self):
        seen["policy"] = self.model.policy.is_gradient_checkpointing
        seen["value"] = self.model.value_model.is_gradient_checkpointing
        return original(self)

    monkeypatch.setattr(PPOTrainer, "train", train)
    stage = _ppo()
    stage["train"] = {**stage["train"], "gradient_checkpointing": checkpointing}
    run(recipe_with(tiny_llama, reward_stage(), stage), write_recipe, tmp_path)
    assert seen == {"policy": checkpointing, "value": checkpointing}


@pytest.mark.parametrize(("train", "autocast"), [({}, True), ({"bf16": False}, False)])
def test_ppo_stage_autocasts_its_updates_and_rollout_scores_not_its_generation_where_the_hardware_runs_bf16(
        tiny_llama, write_recipe, tmp_path, monkeypatch, train, autocast):
    """TRL's PPOTrainer ignores its config's bf16: the stage hands the hardware's choice (here a CPU with native
    bf16, whatever this one has) to its Accelerator, even when a silent `accelerate launch` exported "no", and
    wraps the value and reward models in the same autocast for the rollouts. The policy's forward passes run
    under autocast in the updates only: its rollouts (generation, the reference) stay in its own dtype, so their
    KL is not rounding noise; the value and reward models always run under it. The manifest says what the
    Accelerator computed in. With the recipe's `bf16: false` nothing is autocast."""
    from finetune import precision

    native = precision.Hardware(cuda=False, cuda_bf16=False, cpu_bf16=True, cpu_reason="the CPU runs bf16 natively")
    monkeypatch.setattr(precision, "detect", lambda: native)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    calls = []  # (model, grad enabled: an update, not a rollout, autocast on) per forward of a first layer
    original = PPOTrainer.train

    def train_and_watch(self):
        models = {"policy": self.policy_model.get_base_model(), "value": self.value_model,
                  "reward": self.reward_model}
        for name, model in models.items():  # a first layer runs inside whatever wraps its model's forward
            getattr(model, model.base_model_prefix).layers[0].register_forward_hook(
                lambda module, args, output, name=name: calls.append(
                    (name, torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"))))
        return original(self)

    monkeypatch.setattr(PPOTrainer, "train", train_and_watch)
    stage = _ppo()
    stage["train"] = {**stage["train"], **train}
    run(recipe_with(tiny_llama, reward_stage(), stage), write_recipe, tmp_path)
    on = {(name, grad): set() for name, grad, _ in calls}
    for name, grad, autocast_on in calls:
        on[name, grad].add(autocast_on)
    assert on == {("policy", True): {autocast}, ("policy", False): {False}, ("value", True): {autocast},
                  ("value", False): {autocast}, ("reward", False): {autocast}}, calls
    recorded = json.loads(next(tmp_path.rglob("ppo/manifest.json")).read_text())["precision"]
    assert recorded["compute"] == ("bf16 autocast" if autocast else "fp32"), recorded
    assert os.environ["ACCELERATE_MIXED_PRECISION"] == "no"  # put back
