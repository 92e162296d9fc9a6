"""Verifiable rewards for GRPO and RLOO, computed by the very code that scores evaluation (finetune.squad),
and how a trained reward model is read (`score` at the end-of-sequence token: finetune.stages.reward).

A stage's `rewards:` names them with weights, e.g. `{squad_f1: 1.0, squad_em: 0.5, reward_model: 0.2}`;
TRL's `reward_funcs` and `reward_weights` do the mixing. Each function has TRL's reward-function signature:
`f(prompts, completions, answers, **kwargs) -> list[float]`, where `answers` is the prompt rows' column of
gold answers (a list of strings per row) that TRL passes through from the dataset.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from finetune import squad

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from finetune.precision import Precision


def completion_text(completion) -> str:
    """The answer text of one completion: a string, or the content of a conversational completion's last
    message; cut at the first newline (the eval tasks' stop string) and stripped."""
    if isinstance(completion, list):
        completion = completion[-1]["content"] if completion else ""
    return str(completion).split("\n", 1)[0].strip()


def _golds(answers) -> list[str]:
    golds = [answers] if isinstance(answers, str) else list(answers or [])
    return [g for g in golds if isinstance(g, str)]


def squad_f1(prompts, completions, answers, **kwargs) -> list[float]:
    """SQuAD v1.1 F1 (0-1) of each completion against its row's gold answers (max over the golds), exactly as
    evaluation scores it (finetune.squad.f1_v1 on the text before the first newline); 0 without golds."""
    return [max((squad.f1_v1(completion_text(c), g) for g in _golds(a)), default=0.0)
            for c, a in zip(completions, answers, strict=True)]


def squad_em(prompts, completions, answers, **kwargs) -> list[float]:
    """SQuAD v1.1 exact match (0 or 1) of each completion against its row's gold answers."""
    return [float(max((squad.exact_match_v1(completion_text(c), g) for g in _golds(a)), default=False))
            for c, a in zip(completions, answers, strict=True)]


def length_penalty(prompts, completions, answers, **kwargs) -> list[float]:
    """Minus the share by which an answer is longer (in words) than the longest gold answer, capped at -1;
    0 for answers no longer than a gold one. Keeps a policy from padding answers to win partial F1."""
    out = []
    for c, a in zip(completions, answers, strict=True):
        longest = max((len(g.split()) for g in _golds(a)), default=0)
        extra = len(completion_text(c).split()) - longest
        out.append(-min(1.0, extra / max(1, longest)) if extra > 0 else 0.0)
    return out


def end_at_eos(text: str, eos_token: str | None) -> str:
    """`text` cut just after its last `eos_token` (unchanged when it has none, or there is no eos token).

    For a conversation rendered by a chat template this drops what the template writes after the final turn's
    end-of-sequence token (ChatML's newline after `<|im_end|>`), so the text ends where TRL's PPOTrainer ends a
    sampled response (finetune.stages.reward's docstring).
    """
    if not eos_token:
        return text
    cut = text.rfind(eos_token)
    return text if cut < 0 else text[:cut + len(eos_token)]


def with_eos(text: str, eos_token: str | None) -> str:
    """Plain text as a reward model reads it: ending with `eos_token`, appended unless already there (TRL's
    RewardTrainer rule for plain-text pairs; an eos token inside the prompt is left alone)."""
    if not eos_token or text.endswith(eos_token):
        return text
    return text + eos_token


def conversation_text(messages: list, tokenizer: PreTrainedTokenizerBase) -> str:
    """A conversation as the reward model reads it: the chat template's text up to its last end-of-sequence
    token."""
    return end_at_eos(tokenizer.apply_chat_template(messages, tokenize=False), tokenizer.eos_token)


def score(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str],
          batch_size: int = 8, add_special_tokens: bool = False, precision: Precision | None = None) -> list[float]:
    """Reward of each text (the classifier's single logit at the last non-pad token), in `texts` order.
    `add_special_tokens`: True for plain-text pairs, as they were tokenised for training (`tokenized_pairs`).

    Texts are read in batches of `batch_size` sorted by token length, longest first, so a batch pads little
    (a reward model's texts are long: a SQuAD paragraph and its question run 200 to 700 tokens); `precision`
    (finetune.precision.Precision, e.g. the one the reward stage trained in) autocasts the forward passes,
    None computes in the model's own dtype. Side effects: sets tokenizer.padding_side to "right" and puts the
    model in eval mode.
    """
    import torch

    tokenizer.padding_side = "right"
    model.eval()
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    out: list[float] = [0.0] * len(texts)
    autocast = precision.autocast(model.device.type) if precision is not None else contextlib.nullcontext()
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in index], return_tensors="pt", padding=True,
                        add_special_tokens=add_special_tokens)
        enc = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad(), autocast:
            rewards = model(**enc).logits[:, 0].float().tolist()
        for i, reward in zip(index, rewards, strict=True):
            out[i] = reward
    return out


class RewardModelReward:
    """A trained reward model as a TRL reward function, read where it was trained to be read.

    TRL scores a reward model given as `reward_funcs` on the whole chat template's text, which ends after the
    final end-of-sequence token (a newline under ChatML); the reward stage trains the model to score the text
    ending at that token (finetune.stages.reward), as PPO reads it. This renders prompt + completion the
    reward stage's way and returns the model's logit per completion (unbounded floats; higher is preferred).
    `model` must already sit on the device the policy trains on (finetune.stages.rloo moves it).
    """

    __name__ = "reward_model"  # TRL names the logged reward after it

    def __init__(self, model, tokenizer, batch_size: int = 8):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        if prompts and isinstance(prompts[0], list):  # conversational: message lists
            texts = [conversation_text(p + c, self.tokenizer) for p, c in zip(prompts, completions, strict=True)]
            return score(self.model, self.tokenizer, texts, self.batch_size)
        texts = [with_eos(p + c, self.tokenizer.eos_token) for p, c in zip(prompts, completions, strict=True)]
        return score(self.model, self.tokenizer, texts, self.batch_size, add_special_tokens=True)


FUNCTIONS = {"squad_f1": squad_f1, "squad_em": squad_em, "length_penalty": length_penalty}
NAMES = (*FUNCTIONS, "reward_model")  # reward_model: the trained reward model of a reward stage
NEEDS_ANSWERS = set(FUNCTIONS)
