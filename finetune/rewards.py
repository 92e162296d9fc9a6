"""Verifiable rewards for GRPO and RLOO, computed by the very code that scores evaluation (finetune.squad).

A stage's `rewards:` names them with weights, e.g. `{squad_f1: 1.0, squad_em: 0.5, reward_model: 0.2}`;
TRL's `reward_funcs` and `reward_weights` do the mixing. Each function has TRL's reward-function signature:
`f(prompts, completions, answers, **kwargs) -> list[float]`, where `answers` is the prompt rows' column of
gold answers (a list of strings per row) that TRL passes through from the dataset.
"""

from __future__ import annotations

from finetune import squad


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


FUNCTIONS = {"squad_f1": squad_f1, "squad_em": squad_em, "length_penalty": length_penalty}
NAMES = (*FUNCTIONS, "reward_model")  # reward_model: the trained reward model of a reward stage
NEEDS_ANSWERS = set(FUNCTIONS)
