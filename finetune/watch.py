"""The task metric while a policy trains, and alarms for reward hacking.

A stage's `watch:` names an eval task; every `every` optimizer steps (and before the first and after the last)
the policy answers the task's first `questions` questions greedily and is scored with the evaluation's own
code. The scores go into the stage's metrics (`watch/f1`, `watch/exact`, `watch/mean_words`,
`watch/unextracted`, `watch/kl`, beside the trainer's reward and KL), the manifest and the report.

`watch/kl` is how far the policy has moved from its reference (the model the stage started from), measured
the same way for every kind of stage, DPO included, whose trainer logs no KL: the mean over the watched
questions of the KL divergence KL(policy || reference) of the next-token distributions, summed over the
positions that predict the tokens of the policy's greedy answer as generated (its end-of-sequence token included
when it ended there), in nats. By the chain rule this is the sequence-level KL evaluated along the policy's own
greedy answer (one path, not the expectation over sampled answers that TRL's PPO logs as `objective/kl`,
Ziegler et al. 2019, arXiv:1909.08593). The reference is the trainer's reference model where it keeps one (with
TRL's `sync_ref_model` that model moves too), the policy with its adapter disabled for PEFT, else a copy of the
starting policy held for the stage (one more copy of the model in memory). Prompt-learning adapters get none.

Alarms compare each watch point with the first one (the starting policy; for the reward, the first that has
logged one):

- `reward_up_f1_down`: the trainer's reward rose while F1 on the same questions fell, and the paired 95%
  bootstrap interval of the per-question F1 change lies below zero (a fall beyond noise);
- `length_drift`: the mean answer length in words moved by more than `length_drift` of its start;
- `unextractable`: more than `unextractable` of the answers had no extractable span, and more than at the
  start.

Each alarm is one warning line with the step and numbers, recorded in the manifest; `stop_on_alarm` stops
training there. `select_best` keeps the trainable weights of the best-scoring point (in memory) and puts them
back when training ends, so the stage saves the best model rather than the last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from transformers import TrainerCallback

from finetune.errors import UserError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase, Trainer

# Where each trainer logs its reward and KL (the first key present wins).
REWARD_KEYS = ("reward", "objective/scores", "rewards/margins", "objective/rlhf_reward")
KL_KEYS = ("kl", "objective/kl")


@dataclass
class Point:
    """One watch point: the step, the trainer's latest reward and KL (None if it logs none), and the scores.

    `f1`/`exact` are means over the questions in percent; `per_question_f1` in 0-1, in question order."""

    step: int
    reward: float | None
    kl: float | None
    f1: float
    exact: float
    mean_words: float
    unextracted: float
    per_question_f1: list[float] = field(repr=False)
    kl_to_reference: float | None = None

    def metrics(self) -> dict:
        """The point as a trainer log entry: `step` and the `watch/*` scores, rounded."""
        return {
            "step": self.step,
            "watch/f1": round(self.f1, 3),
            "watch/exact": round(self.exact, 3),
            "watch/mean_words": round(self.mean_words, 3),
            "watch/unextracted": round(self.unextracted, 4),
            **({} if self.kl_to_reference is None else {"watch/kl": float(f"{self.kl_to_reference:.4g}")}),
        }


def score_point(step: int, answers: list[dict], log_history: list[dict]) -> Point:
    """A Point from `evaluation.answer_questions` output and the trainer's log so far."""
    n = len(answers)
    latest = {}
    for entry in log_history:
        latest.update({k: v for k, v in entry.items() if isinstance(v, int | float)})
    reward = next((float(latest[k]) for k in REWARD_KEYS if k in latest), None)
    kl = next((float(latest[k]) for k in KL_KEYS if k in latest), None)
    return Point(
        step=step,
        reward=reward,
        kl=kl,
        f1=100 * sum(a["f1"] for a in answers) / n,
        exact=100 * sum(float(a["em"]) for a in answers) / n,
        mean_words=sum(len(a["answer"].split()) for a in answers) / n,
        unextracted=sum(not a["extracted"] for a in answers) / n,
        per_question_f1=[float(a["f1"]) for a in answers],
    )


def answer_kl(policy: torch.nn.Module, reference: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
              answers: list[dict], chat: bool, batch_size: int = 16, reference_context=None) -> list[float]:
    """Per answer, sum over t of KL(policy(. | prompt, y<t) || reference(. | prompt, y<t)) in nats, for t over
    the tokens y the policy generated (`generated_ids`, through its end-of-sequence id when it ended there):
    the chain rule of KL, along the policy's own answer. `answers`: `evaluation.answer_questions` output (its
    `prompt` and `generated_ids`); `chat`: the prompts are rendered chat text (no special tokens added).

    Both models see the same left-padded ids (position ids from the attention mask, as in generation), in
    batches of `batch_size`, and compute logits only for the answer positions (`logits_to_keep`).
    `reference_context`: a callable returning the context the reference runs in (a PEFT policy with its
    adapter disabled), or None. Returns one float per answer, in order; 0.0 for an empty answer."""
    import contextlib

    import torch

    out = []
    for start in range(0, len(answers), batch_size):
        batch = answers[start:start + batch_size]
        prompts = [tokenizer(a["prompt"], add_special_tokens=not chat)["input_ids"] for a in batch]
        replies = [list(a["generated_ids"]) for a in batch]
        width = max(len(p) + len(r) for p, r in zip(prompts, replies, strict=True))
        keep = max(len(r) for r in replies) + 1  # the positions that predict the longest answer, and one more
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (p, r) in enumerate(zip(prompts, replies, strict=True)):
            ids[i, width - len(p) - len(r):] = torch.tensor(p + r)
            mask[i, width - len(p) - len(r):] = 1
        inputs = {"input_ids": ids.to(policy.device), "attention_mask": mask.to(policy.device),
                  "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).to(policy.device), "logits_to_keep": keep}
        with torch.no_grad():
            logp = policy(**inputs).logits
            with reference_context() if reference_context else contextlib.nullcontext():
                logq = reference(**inputs).logits
        for i, r in enumerate(replies):
            if not r:
                out.append(0.0)
                continue
            # kept position j predicts the token at width - keep + j + 1: the answer's are keep-1-len(r) .. keep-2
            p_i = logp[i, keep - 1 - len(r):keep - 1].float().log_softmax(-1)
            q_i = logq[i, keep - 1 - len(r):keep - 1].float().log_softmax(-1)
            out.append(float(torch.nn.functional.kl_div(q_i, p_i, reduction="sum", log_target=True)))
    return out


def alarms(points: list[Point], length_drift: float, unextractable: float) -> list[dict]:
    """The alarms the last of `points` raises against the first (see the module docstring); [] when none.

    The reward is compared with the earliest earlier point that has one (the first point, before any step,
    usually has none yet). Each alarm is {"alarm", "step", "message"}. Pure: the same points give the same
    alarms on any machine (the bootstrap is seeded, finetune.stats).
    """
    from finetune import stats

    first, now = points[0], points[-1]
    found = []
    rewarded = next((p for p in points[:-1] if p.reward is not None), None)
    if rewarded is not None and now.reward is not None and now.reward > rewarded.reward:
        lo, hi = stats.paired_bootstrap_ci(first.per_question_f1, now.per_question_f1)
        if hi < 0:
            found.append(
                {
                    "alarm": "reward_up_f1_down",
                    "step": now.step,
                    "message": (
                        f"reward rose {rewarded.reward:.3g} (step {rewarded.step}) -> {now.reward:.3g} "
                        f"while held-out F1 "
                        f"fell {first.f1:.1f} -> {now.f1:.1f} (paired 95% CI of the change {100 * lo:.1f} to "
                        f"{100 * hi:.1f})"
                    ),
                }
            )
    if first.mean_words > 0 and abs(now.mean_words / first.mean_words - 1) > length_drift:
        found.append(
            {
                "alarm": "length_drift",
                "step": now.step,
                "message": (
                    f"mean answer length moved {first.mean_words:.1f} -> {now.mean_words:.1f} words "
                    f"(more than {100 * length_drift:.0f}% of its start)"
                ),
            }
        )
    if now.unextracted > unextractable and now.unextracted > first.unextracted:
        found.append(
            {
                "alarm": "unextractable",
                "step": now.step,
                "message": (
                    f"{100 * now.unextracted:.0f}% of answers have no extractable span (at the start: "
                    f"{100 * first.unextracted:.0f}%; limit {100 * unextractable:.0f}%)"
                ),
            }
        )
    return found


class TaskMetricCallback(TrainerCallback):
    """A transformers TrainerCallback that watches the task metric (`cfg` is the stage's `watch:` block).

    `common.build_trainer` adds it (`.bind(trainer)`) to a stage with `watch:`. After training, `.points`
    holds every Point, `.alarms` every alarm raised, `.record()` what the manifest keeps. Raises UserError
    for a task that fails to load. Scoring runs on every rank (each holds the whole policy under DDP); lines
    are logged by the main one.
    """

    def __init__(self, cfg: dict, stage_name: str, tokenizer: PreTrainedTokenizerBase, batch_size: int = 16):
        from finetune.evaluation import load_task, task_rows

        self.cfg, self.stage_name, self.tokenizer, self.batch_size = cfg, stage_name, tokenizer, batch_size
        self.task = load_task(cfg["task"])
        self.rows = task_rows(self.task, cfg["questions"])
        if not self.rows:
            raise UserError(
                f"stage {stage_name}: watch.task {self.task['name']}: {self.task['data']} has no questions"
            )
        self.trainer = None
        self.due: int | None = (
            None  # a watch step waiting for its step's log (HF Trainer logs after on_step_end)
        )
        self.points: list[Point] = []
        self.alarms: list[dict] = []
        self.best: tuple[float, int, dict] | None = None  # (score, step, trainable tensors)
        self.start_copy: torch.nn.Module | None = None  # the starting policy, when nothing else holds it

    def bind(self, trainer: Trainer) -> TaskMetricCallback:
        """Attach to `trainer`. Raises UserError under FSDP or DeepSpeed ZeRO-3, where the unwrapped policy
        holds only this rank's shard of the weights and cannot generate on its own. Returns the callback."""
        plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        if getattr(trainer, "is_fsdp_enabled", False) or (plugin is not None and plugin.zero_stage == 3):
            raise UserError(
                f"stage {self.stage_name}: watch: the policy is sharded (FSDP or DeepSpeed ZeRO-3) and "
                f"cannot answer questions between steps; drop watch: or train with DDP / ZeRO-2"
            )
        self.trainer = trainer
        return self

    def _policy(self) -> torch.nn.Module:
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        return getattr(model, "policy", model)  # TRL's PPO trains a policy-and-value wrapper

    def _reference(self, model: torch.nn.Module):
        """(reference model, callable giving the context to run it in, or None): the trainer's own reference
        model where it keeps one (PPO, DPO, GRPO with beta > 0), else the policy with its adapter switched off
        (PEFT), else the copy of the starting policy taken at the first watch point."""
        ref = getattr(self.trainer, "ref_model", None)
        if ref is not None:
            return self.trainer.accelerator.unwrap_model(ref), None
        if hasattr(model, "disable_adapter"):
            return model, model.disable_adapter
        return self.start_copy, None

    def _kl(self, model: torch.nn.Module, answers: list[dict]) -> float | None:
        """Mean `answer_kl` of the watched answers to the reference (nats). With no reference model and no
        adapter, the first call keeps a copy of the policy (the reference from then on) and returns 0. None for
        a prompt-learning adapter (its virtual tokens make the policy's sequence longer than the reference's)."""
        config = getattr(model, "active_peft_config", None)
        if config is not None and config.is_prompt_learning:
            return None
        reference, context = self._reference(model)
        if reference is None:  # the first point: this policy is the start
            import copy

            self.start_copy = copy.deepcopy(model).eval().requires_grad_(False)
            return 0.0
        kls = answer_kl(model, reference, self.tokenizer, answers, self.task["chat_template"], self.batch_size,
                        reference_context=context)
        return sum(kls) / len(kls)

    def _score(self, state, control) -> None:
        import torch

        from finetune.evaluation import answer_questions
        from finetune.ranks import log

        if self.points and self.points[-1].step == state.global_step:
            return
        model, tokenizer = self._policy(), self.tokenizer
        was_training, side = model.training, tokenizer.padding_side
        model.eval()
        try:
            with torch.no_grad():
                answers = answer_questions(model, tokenizer, self.task, self.rows, self.batch_size)
                kl = self._kl(model, answers)
        finally:
            tokenizer.padding_side = side
            model.train(was_training)
        point = score_point(state.global_step, answers, state.log_history)
        point.kl_to_reference = kl
        self.points.append(point)
        if not any(
            "watch/f1" in e and e.get("step") == point.step for e in state.log_history
        ):  # not on resume
            state.log_history.append(point.metrics())
        log(
            f"{self.stage_name}: step {point.step}: held-out {self.task['name']} "
            f"({len(self.rows)} questions) "
            f"F1 {point.f1:.1f} EM {point.exact:.1f}, {point.mean_words:.1f} words"
            + (f", reward {point.reward:.3g}" if point.reward is not None else "")
            + (f", KL {point.kl:.3g}" if point.kl is not None else "")
            + (f", KL to the start {kl:.3g}" if kl is not None else "")
        )
        self._keep_if_best(point, model)
        raised = {a["alarm"] for a in self.alarms}
        for alarm in alarms(self.points, self.cfg["length_drift"], self.cfg["unextractable"]):
            if alarm["alarm"] not in raised:
                self.alarms.append(alarm)
                stop = self.cfg["stop_on_alarm"]
                log(
                    f"warning: {self.stage_name}: alarm at step {alarm['step']}: {alarm['alarm']}: "
                    f"{alarm['message']}" + ("; stopping (watch.stop_on_alarm)" if stop else "")
                )
                if stop:
                    control.should_training_stop = True

    def _keep_if_best(self, point: Point, model: torch.nn.Module) -> None:
        if not self.cfg["select_best"]:
            return
        score = point.f1 if self.cfg["select_best"] == "f1" else point.exact
        if self.best is None or score > self.best[0]:
            kept = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            self.best = (score, point.step, kept)

    def restore_best(self) -> int | None:
        """Put the best point's trainable weights back into the policy; returns its step (None if unused)."""
        if self.best is None:
            return None
        params = dict(self._policy().named_parameters())
        for name, tensor in self.best[2].items():
            params[name].data.copy_(tensor)
        return self.best[1]

    def on_train_begin(self, args, state, control, **kwargs):
        """Score the starting policy; on a resumed run, warn that comparisons start from the resumed step."""
        if state.global_step > 0:
            from finetune.ranks import log

            log(
                f"warning: {self.stage_name}: watch: resumed at step {state.global_step}; the alarms and "
                f"select_best compare from here, not from the policy the stage started with (and so does "
                f"watch/kl where the trainer keeps no reference model and the policy has no adapter)"
            )
        self._score(state, control)

    def on_step_end(self, args, state, control, **kwargs):
        """Every `every` optimizer steps: score now if the trainer has already logged this step (TRL's
        PPOTrainer), else request a log (`control.should_log`) and score in `on_log` once the reward is in."""
        if state.global_step % self.cfg["every"]:
            return
        logged_now = any(
            e.get("step") == state.global_step and "watch/f1" not in e for e in state.log_history
        )
        if logged_now:  # TRL's PPOTrainer logs a step's metrics before on_step_end
            self._score(state, control)
        else:  # transformers' Trainer logs after it: log this step, and score once its reward is in
            control.should_log = True
            self.due = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Score the watch step that `on_step_end` left waiting for this step's log."""
        if self.due is not None and self.due == state.global_step:
            self.due = None
            self._score(state, control)

    def on_train_end(self, args, state, control, **kwargs):
        """Score the final policy (nothing new when the last step was already scored); free the copy of the
        starting policy."""
        self._score(state, control)
        self.start_copy = None

    def record(self) -> dict:
        """What the manifest keeps: the task, every point (with reward and KL), the alarms, the kept step."""
        return {
            "task": self.task["name"],
            "questions": len(self.rows),
            "every": self.cfg["every"],
            "points": [{**p.metrics(), "reward": p.reward, "kl": p.kl} for p in self.points],
            "alarms": self.alarms,
            "select_best": self.cfg["select_best"],
            "selected_step": self.best[1] if self.best else None,
        }


def of(trainer: Trainer) -> TaskMetricCallback | None:
    """The trainer's TaskMetricCallback, if its stage watches a task."""
    return next((c for c in trainer.callback_handler.callbacks if isinstance(c, TaskMetricCallback)), None)
