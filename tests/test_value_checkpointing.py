"""PPO's value model trains with activation checkpointing when the stage asks for it.

TRL 1.12's `PolicyAndValueWrapper` (the module PPOTrainer trains) passes `gradient_checkpointing_enable` to the
policy only, so the value model, trained in full, kept every layer's activations for its backward pass; on
SmolLM2-135M with 8 prompts of about 700 tokens the PPO stage was killed for memory on a 24 GB machine.
`finetune.stages.ppo.checkpoint_value_model` turns it on there too. Counted here: the bytes autograd saves for
the backward pass during the value model's forward, before and after, on the tiny model.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from trl.experimental.ppo.ppo_trainer import PolicyAndValueWrapper

from finetune.stages.ppo import checkpoint_value_model


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


def test_value_model_keeps_only_layer_inputs_once_checkpointed(tiny_llama):
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama)
    value = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1)
    wrapper = PolicyAndValueWrapper(policy, value)
    kwargs = {"use_reentrant": False}
    wrapper.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)  # as the Trainer calls it
    wrapper.train()
    ids = torch.randint(3, policy.config.vocab_size, (4, 96))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "output_hidden_states": True}
    critic = lambda: wrapper.critic_backbone(**batch)  # noqa: E731  (what PPO's value forward runs)
    layer_inputs = value.config.num_hidden_layers * ids.numel() * value.config.hidden_size * 4

    before = saved_for_backward(critic)
    assert policy.is_gradient_checkpointing and not value.is_gradient_checkpointing  # TRL's gap, still there
    checkpoint_value_model(value, SimpleNamespace(activation_checkpointing_kwargs=kwargs))
    after = saved_for_backward(critic)

    assert value.is_gradient_checkpointing
    # byte counts follow from shapes alone, so these bounds hold on any CPU. Measured on the tiny model (2 layers,
    # 4 x 96 tokens): 10.9 MB before, 0.99 MB after, 0.39 MB of layer inputs; the rest is the embedding
    # output, the final norm's input and the score head's.
    assert after < 3 * layer_inputs, (after, layer_inputs)
    assert before > 5 * after, (before, after)
    # the policy was checkpointed by TRL's wrapper already: with its logits, it still keeps less than the
    # value model did unchecked
    assert saved_for_backward(lambda: policy(**batch)) < before
