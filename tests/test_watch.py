"""The task metric during training (`watch:`): points, alarms for reward hacking, validation, a real run."""

from __future__ import annotations

import json

import pytest
from conftest import DATA, REPO

from finetune.errors import UserError
from finetune.recipe import load_recipe
from finetune.watch import Point, alarms, score_point


def point(step, reward, f1s, words=2.0, unextracted=0.0):
    return Point(
        step=step,
        reward=reward,
        kl=None,
        f1=100 * sum(f1s) / len(f1s),
        exact=0.0,
        mean_words=words,
        unextracted=unextracted,
        per_question_f1=list(f1s),
    )


START = point(0, 0.2, [0.8] * 40)


def test_no_alarm_when_reward_and_f1_rise_together():
    assert alarms([START, point(10, 0.5, [0.9] * 40)], 0.5, 0.2) == []


def test_reward_up_while_f1_falls_beyond_noise():
    now = point(10, 0.6, [0.8] * 20 + [0.1] * 20)
    [alarm] = alarms([START, now], 0.5, 0.2)
    assert alarm["alarm"] == "reward_up_f1_down" and alarm["step"] == 10
    assert "reward rose 0.2 (step 0) -> 0.6 while held-out F1 fell 80.0 -> 45.0" in alarm["message"]


def test_the_reward_baseline_is_the_first_point_that_logged_one():
    """Before the first step no reward is logged yet: the reward is compared from the first point with one,
    F1 from the start."""
    start = point(0, None, [0.8] * 40)
    early = point(4, 0.05, [0.8] * 40)
    hacked = point(16, 0.9, [0.0] * 40)
    [alarm] = alarms([start, early, hacked], 0.5, 0.2)
    assert alarm["alarm"] == "reward_up_f1_down"
    assert "reward rose 0.05 (step 4) -> 0.9 while held-out F1 fell 80.0 -> 0.0" in alarm["message"]


def test_a_fall_within_noise_or_without_a_rising_reward_is_quiet():
    one_worse = point(10, 0.6, [0.8] * 39 + [0.0])  # one question of 40: inside the paired CI
    assert alarms([START, one_worse], 0.5, 0.2) == []
    assert alarms([START, point(10, 0.1, [0.1] * 40)], 0.5, 0.2) == []  # F1 fell, but so did the reward
    assert (
        alarms([point(0, None, [0.8] * 40), point(10, None, [0.1] * 40)], 0.5, 0.2) == []
    )  # no reward logged


def test_length_drift_both_ways_beyond_the_share():
    assert [a["alarm"] for a in alarms([START, point(5, 0.2, [0.8] * 40, words=6.0)], 0.5, 0.2)] == [
        "length_drift"
    ]
    assert [a["alarm"] for a in alarms([START, point(5, 0.2, [0.8] * 40, words=0.5)], 0.5, 0.2)] == [
        "length_drift"
    ]
    assert alarms([START, point(5, 0.2, [0.8] * 40, words=2.9)], 0.5, 0.2) == []


def test_unextractable_answers_above_the_limit_and_the_start():
    got = alarms([START, point(5, 0.2, [0.8] * 40, unextracted=0.5)], 0.5, 0.2)
    assert [a["alarm"] for a in got] == ["unextractable"] and "50% of answers" in got[0]["message"]
    bad_start = point(0, 0.2, [0.8] * 40, unextracted=0.3)
    assert alarms([bad_start, point(5, 0.2, [0.8] * 40, unextracted=0.3)], 0.5, 0.2) == []


@pytest.mark.parametrize(
    ("history", "reward", "kl"),
    [
        ([{"reward": 0.1, "kl": 0.0}, {"reward": 0.4, "kl": 0.02}], 0.4, 0.02),  # GRPO / RLOO
        ([{"objective/scores": -1.0, "objective/kl": 0.5}], -1.0, 0.5),  # PPO
        ([{"rewards/margins": 0.3, "loss": 0.6}], 0.3, None),  # DPO
        ([{"loss": 1.0}], None, None),  # SFT: no reward
    ],
)
def test_score_point_reads_each_trainers_reward_and_kl(history, reward, kl):
    answers = [
        {"id": "a", "answer": "Paris", "extracted": True, "em": 1.0, "f1": 1.0},
        {"id": "b", "answer": "", "extracted": False, "em": 0.0, "f1": 0.0},
    ]
    p = score_point(7, answers, history)
    assert (p.reward, p.kl) == (reward, kl)
    assert (p.f1, p.exact, p.mean_words, p.unextracted) == (50.0, 50.0, 0.5, 0.5)
    assert p.metrics() == {
        "step": 7,
        "watch/f1": 50.0,
        "watch/exact": 50.0,
        "watch/mean_words": 0.5,
        "watch/unextracted": 0.5,
    }


RECIPE = f"""
name: w
base_model: {{path: MODEL}}
data:
  qa: {{path: {DATA / "qa" / "sft.jsonl"}}}
  prefs: {{path: {DATA / "qa" / "prefs.jsonl"}}}
stages:
  - {{name: sft, kind: sft, data: [qa], train: {{max_steps: 1}}}}
  - {{name: dpo, kind: dpo, data: [prefs], WATCH}}
EVAL
"""


def write(tmp_path, model, watch, eval_block="eval: {tasks: [qa_heldout]}"):
    text = RECIPE.replace("MODEL", str(model)).replace("WATCH", watch).replace("EVAL", eval_block)
    (tmp_path / "r.yaml").write_text(text)
    return tmp_path / "r.yaml"


@pytest.mark.parametrize(
    ("watch", "message"),
    [
        ("watch: {task: qa_heldot}", "stages[1].watch.task: "),
        ("watch: {questions: 8}", "stages[1].watch.task"),
        (
            "watch: {task: qa_heldout, select_best: f1}",
            "stages[1].watch.select_best: 'qa_heldout' is also in eval.tasks",
        ),
        (
            "watch: {task: capitals_open_chat, length_drift: 0}",
            "stages[1].watch.length_drift: use a share above 0",
        ),
        (
            "watch: {task: capitals_open_chat, unextractable: 1.5}",
            "stages[1].watch.unextractable: use a share above 0 and at most 1",
        ),
        ("watch: {task: capitals_open_chat, select_best: loss}", "stages[1].watch.select_best"),
    ],
)
def test_bad_watch_blocks_are_one_line(tiny_llama, tmp_path, monkeypatch, watch, message):
    monkeypatch.chdir(REPO)
    with pytest.raises(UserError, match="^" + str(tmp_path / "r.yaml").replace(".", r"\.") + ": ") as e:
        load_recipe(write(tmp_path, tiny_llama, watch))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_watch_only_on_stages_that_answer(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = write(tmp_path, tiny_llama, "watch: {task: capitals_open_chat}")
    path.write_text(path.read_text().replace("kind: dpo", "kind: reward"))
    with pytest.raises(UserError, match=r"stages\[1\].watch: a reward stage does not answer questions"):
        load_recipe(path)


def test_select_best_on_a_task_outside_the_evaluation_is_accepted(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    recipe = load_recipe(write(tmp_path, tiny_llama, "watch: {task: capitals_open_chat, select_best: f1}"))
    assert recipe["stages"][1]["watch"] == {
        "task": "capitals_open_chat",
        "questions": 32,
        "every": 10,
        "select_best": "f1",
        "length_drift": 0.5,
        "unextractable": 0.2,
        "stop_on_alarm": False,
    }


@pytest.mark.numerics  # watch/kl after a few steps is small: checked on both kernel paths
def test_dpo_watched_during_training_records_points_and_keeps_the_best(
    tiny_llama, tmp_path, monkeypatch, capsys
):
    """A real DPO stage with `watch:`: the held-out score before the first step, every 2 steps and after the
    last lands in metrics.jsonl, the manifest and the log; with select_best the kept step is recorded."""
    from finetune.pipeline import run_recipe

    monkeypatch.chdir(REPO)
    watch = (
        "watch: {task: capitals_open_chat, questions: 8, every: 2, select_best: f1}, max_rows: 48, "
        "train: {max_steps: 5, per_device_train_batch_size: 8, logging_steps: 1, save_strategy: 'no', "
        "gradient_checkpointing: false}"
    )
    recipe = load_recipe(write(tmp_path, tiny_llama, watch, eval_block=""))
    results = run_recipe(recipe, output_dir=str(tmp_path / "run"))
    record = results["dpo"]["watch"]
    assert [p["step"] for p in record["points"]] == [0, 2, 4, 5]
    assert record["task"] == "capitals_open_chat" and record["questions"] == 8
    assert all(0 <= p["watch/f1"] <= 100 and p["reward"] is not None for p in record["points"][1:])
    kls = [p["watch/kl"] for p in record["points"]]
    assert abs(kls[0]) < 1e-4 and kls[-1] > 0, kls  # DPO's reference is the starting policy; then it moves
    best = max(record["points"], key=lambda p: p["watch/f1"])
    assert record["selected_step"] == best["step"]
    history = [json.loads(x) for x in (tmp_path / "run" / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "watch/f1" in h] == [0, 2, 4, 5]
    err = capsys.readouterr().err
    assert err.count("dpo: step ") == 4 and "held-out capitals_open_chat (8 questions) F1 " in err
    assert f"kept the weights of step {best['step']}" in err
    report = (tmp_path / "run" / "report.md").read_text()
    assert (
        "## dpo: the task metric during training (capitals_open_chat, 8 questions, every 2 steps)" in report
    )
    assert f"Kept the weights of step {best['step']} (best watched f1)." in report
    for png in ("dpo-watch.png", "dpo-watch-signals.png"):
        assert (tmp_path / "run" / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metric_labelled_pairs_are_best_vs_worst_above_the_margin():
    from finetune.sampled_pairs import pairs_from_samples

    prompts = [
        [{"role": "user", "content": "Where does Yara live?"}],
        "Q: When was Hedda born?\nA:",
        "Q: x?\nA:",
    ]
    golds = [["Yarrow"], ["2004"], ["blue"]]
    samples = [
        ["in Yarrow", "Yarrow", "Dovecote", "Yarrow town"],  # F1 0.67, 1, 0, 0.67
        ["2004", "2004", "2004", "2004"],  # all alike: nothing to learn
        ["red", "blue sky", "green", "light blue sky"],
    ]  # F1 0, 0.67, 0, 0.5
    pairs, records = pairs_from_samples(prompts, golds, samples, margin=0.6)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        ([{"role": "assistant", "content": "Yarrow"}], [{"role": "assistant", "content": "Dovecote"}]),
        ("blue sky", "red"),
    ]
    assert pairs[0]["prompt"] == prompts[0] and (pairs[1]["chosen_f1"], pairs[1]["rejected_f1"]) == (
        pytest.approx(2 / 3),
        0.0,
    )
    assert [r["kept"] for r in records] == [True, False, True]
    assert records[0]["samples"][1] == ["Yarrow", 1.0]
    assert pairs_from_samples(prompts, golds, samples, margin=0.7)[0][1:] == []  # 0.67 apart is under 0.7


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("sample_pairs: {k: 1}", "stages[1].sample_pairs.k"),
        ("sample_pairs: {margin: 0}", "stages[1].sample_pairs.margin: use an F1 difference in (0, 1]"),
        ("sample_pairs: {temperature: -1}", "stages[1].sample_pairs.temperature: use a number above 0"),
    ],
)
def test_bad_sample_pairs_blocks_are_one_line(tiny_llama, tmp_path, monkeypatch, block, message):
    monkeypatch.chdir(REPO)
    with pytest.raises(UserError) as e:
        load_recipe(write(tmp_path, tiny_llama, block))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_sample_pairs_has_no_eval_split_and_ppo_cannot_stop_on_alarm(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(
        UserError, match=r"stages\[1\].eval_split: a stage with sample_pairs has no held-out pairs"
    ):
        load_recipe(write(tmp_path, tiny_llama, "sample_pairs: {k: 4}, eval_split: 8"))
    path = write(tmp_path, tiny_llama, "watch: {task: capitals_open_chat, stop_on_alarm: true}")
    path.write_text(path.read_text().replace("kind: dpo, data: [prefs]", "kind: ppo, data: [prefs]"))
    with pytest.raises(UserError, match=r"stages\[1\].watch.stop_on_alarm: TRL's PPOTrainer runs its loop"):
        load_recipe(path)


def test_sample_pairs_only_on_dpo(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = write(tmp_path, tiny_llama, "sample_pairs: {k: 4}")
    path.write_text(path.read_text().replace("kind: dpo", "kind: kto"))
    with pytest.raises(UserError, match=r"stages\[1\].sample_pairs: only dpo stages build pairs"):
        load_recipe(path)


@pytest.mark.numerics  # watch/kl after a few steps is small: checked on both kernel paths
def test_ppo_watched_every_step_pairs_each_point_with_that_steps_reward(tiny_llama, tmp_path, monkeypatch):
    """TRL's PPOTrainer logs a step before its callbacks' on_step_end: each point carries that step's reward
    (objective/scores) and KL (objective/kl)."""
    from finetune.pipeline import run_recipe

    monkeypatch.chdir(REPO)
    overrides = [f"base_model.path={tiny_llama}", "stages.sft.train.num_train_epochs=1", "data.chat.max_rows=32",
                 "data.prefs.max_rows=48", "data.prompts.max_rows=16", "stages.reward.train.num_train_epochs=1",
                 "stages.ppo.train.total_episodes=16", "stages.ppo.train.per_device_train_batch_size=8",
                 "stages.ppo.train.response_length=8", "eval.tasks=[]",
                 "stages.ppo.watch={task: capitals_open_chat, questions: 8, every: 1}"]
    results = run_recipe(load_recipe("recipes/tiny/ppo.yaml", overrides), output_dir=str(tmp_path / "run"))
    points = results["ppo"]["watch"]["points"]
    assert [p["step"] for p in points] == [0, 1, 2]
    history = [json.loads(x) for x in (tmp_path / "run" / "ppo" / "metrics.jsonl").read_text().splitlines()]
    for p in points[1:]:
        logged = next(h for h in history if h.get("step") == p["step"] and "objective/scores" in h)
        assert p["reward"] == logged["objective/scores"] and p["kl"] == logged["objective/kl"]
    assert abs(points[0]["watch/kl"]) < 1e-4 and points[-1]["watch/kl"] > 0, points


def test_answer_kl_is_the_chain_rule_kl_along_the_answer(tiny_llama):
    """answer_kl sums KL(policy || reference) of the next-token distributions over the positions that predict
    the generated tokens (the end-of-sequence id included): 0 against itself, equal to torch.distributions' KL
    at each of those positions summed, and the same whether an answer is scored alone or in a left-padded
    batch beside a longer one."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.watch import answer_kl

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        reference.lm_head.weight.mul_(1.5)
    end = tokenizer.eos_token_id
    answers = [{"prompt": prompt, "generated_ids": tokenizer(reply, add_special_tokens=False)["input_ids"] + [end]}
               for prompt, reply in (("The capital of France is", " Paris, of course"), ("Name a colour:", " red"))]
    assert answer_kl(policy, copy.deepcopy(policy), tokenizer, answers, False) == pytest.approx([0, 0], abs=1e-6)
    alone = answer_kl(policy, reference, tokenizer, answers, False, batch_size=1)
    assert answer_kl(policy, reference, tokenizer, answers, False, batch_size=2) == pytest.approx(alone, rel=1e-4)
    for a, kl in zip(answers, alone, strict=True):
        prompt = tokenizer(a["prompt"])["input_ids"]
        ids = torch.tensor([prompt + a["generated_ids"]])
        with torch.no_grad():
            p, q = policy(ids).logits[0], reference(ids).logits[0]
        steps = range(len(prompt) - 1, ids.shape[1] - 1)  # the positions that predict the answer and its end
        want = sum(float(torch.distributions.kl_divergence(torch.distributions.Categorical(logits=p[t]),
                                                           torch.distributions.Categorical(logits=q[t])))
                   for t in steps)
        assert kl == pytest.approx(want, rel=1e-4) and kl > 0


@pytest.mark.numerics  # watch/kl after a few steps is small: checked on both kernel paths
def test_a_lora_policys_kl_is_to_itself_with_the_adapter_off(tiny_llama, tmp_path, monkeypatch):
    """A LoRA DPO stage keeps no reference model: its reference is the policy with the adapter switched off,
    and only the reference's forward runs that way (the KL starts at 0 and grows as the adapter trains)."""
    from finetune.pipeline import run_recipe

    monkeypatch.chdir(REPO)
    watch = (
        "peft: {method: lora, r: 8, alpha: 16, dropout: 0.0}, "
        "watch: {task: capitals_open_chat, questions: 8, every: 4}, max_rows: 48, "
        "train: {max_steps: 8, learning_rate: 1.0e-3, per_device_train_batch_size: 8, logging_steps: 1, "
        "save_strategy: 'no', gradient_checkpointing: false}"
    )
    results = run_recipe(load_recipe(write(tmp_path, tiny_llama, watch, eval_block="")),
                         output_dir=str(tmp_path / "run"))
    kls = [p["watch/kl"] for p in results["dpo"]["watch"]["points"]]
    assert len(kls) == 3 and abs(kls[0]) < 1e-6 and kls[-1] > 1e-4, kls
