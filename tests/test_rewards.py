"""Verifiable rewards: each equals the evaluation scorer on fixed answers; recipes name them; GRPO trains with
them on the real stack (TRL's reward_funcs/reward_weights) on a tiny model."""

from __future__ import annotations

import json
import re

import pytest
from conftest import DATA, REPO

from finetune import rewards, squad
from finetune.errors import UserError
from finetune.pipeline import run_recipe
from finetune.recipe import load_recipe

GOLDS = [["Denver Broncos", "Broncos"], ["1897"], ["the Rhine"], ["Saint Bernadette Soubirous"], []]
ANSWERS = ["Broncos", "In 1897.", "Rhine river\nand more text", [{"role": "assistant", "content": "Saint Bernadette"}],
           "anything"]


def test_rewards_equal_the_evaluation_scorer():
    dataset = [{"paragraphs": [{"context": "", "qas": [
        {"id": str(i), "question": "q", "answers": [{"text": g, "answer_start": 0} for g in golds]}]}]}
        for i, golds in enumerate(GOLDS[:4])]
    predictions = {str(i): rewards.completion_text(a) for i, a in enumerate(ANSWERS[:4])}
    per_q = squad.per_question_scores("squad_v1", dataset, predictions)
    f1 = rewards.squad_f1(None, ANSWERS, GOLDS)
    em = rewards.squad_em(None, ANSWERS, GOLDS)
    assert f1[:4] == [q["f1"] for q in per_q] and em[:4] == [q["em"] for q in per_q]
    assert 100 * sum(f1[:4]) / 4 == pytest.approx(squad.evaluate_v1(dataset, predictions)["f1"])
    assert f1[4] == em[4] == 0.0  # no gold answers: nothing to earn
    assert rewards.completion_text(ANSWERS[2]) == "Rhine river"  # cut at the first newline, as the eval's stop


def test_length_penalty():
    out = rewards.length_penalty(None, ["Denver Broncos", "the Denver Broncos football team of 2015", "x"],
                                 [["Denver Broncos"], ["Denver Broncos"], ["1897"]])
    assert out == [0.0, -1.0, 0.0]
    assert rewards.length_penalty(None, ["Denver Broncos team"], [["Denver Broncos"]]) == [-0.5]


GOOD = f"""
name: g
base_model: {{path: MODEL}}
data:
  qa: {{path: {DATA / 'qa' / 'sft.jsonl'}}}
  prompts: {{path: PROMPTS}}
stages:
  - {{name: sft, kind: sft, data: [qa], train: {{max_steps: 1}}}}
  - {{name: grpo, kind: grpo, data: [prompts], rewards: REWARDS, train: TRAIN}}
"""


def write(tmp_path, model, rewards_yaml="{squad_f1: 1.0, squad_em: 0.5}", train="{max_steps: 1}", extra=""):
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        rows = [json.loads(x) for x in (DATA / "qa" / "sft.jsonl").read_text().splitlines()[:16]]
        prompts.write_text("".join(json.dumps({"prompt": r["messages"][:1], "answers": [r["messages"][1]["content"]]})
                                   + "\n" for r in rows))
    text = GOOD.replace("MODEL", str(model)).replace("PROMPTS", str(prompts)).replace("REWARDS", rewards_yaml)
    (tmp_path / "r.yaml").write_text(text.replace("TRAIN", train) + extra)
    return tmp_path / "r.yaml"


@pytest.mark.parametrize("rewards_yaml, train, message", [
    ("{squad_f2: 1}", "{max_steps: 1}", "stages[1].rewards.squad_f2: unknown reward; use squad_f1, squad_em, "
                                        "length_penalty, reward_model; did you mean 'squad_f1'?"),
    ("{squad_f1: .nan}", "{max_steps: 1}", "stages[1].rewards.squad_f1: weight must be a number"),
    ("{squad_f1: 1}", "{reward_weights: [1.0]}", "stages[1].train.reward_weights: set the weights in the stage's"),
    ("{reward_model: 1}", "{max_steps: 1}", "stages[1]: a grpo stage needs a reward model"),
])
def test_bad_rewards_are_one_line(tiny_llama, tmp_path, rewards_yaml, train, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_recipe(write(tmp_path, tiny_llama, rewards_yaml, train))


def test_rewards_only_on_grpo_and_rloo(tiny_llama, tmp_path):
    path = write(tmp_path, tiny_llama)
    text = path.read_text().replace("{name: sft, kind: sft, data: [qa], train: {max_steps: 1}}",
                                    "{name: sft, kind: sft, data: [qa], rewards: {squad_f1: 1}}")
    path.write_text(text)
    with pytest.raises(UserError, match=r"stages\[0\].rewards: only grpo and rloo stages take reward functions"):
        load_recipe(path)


def test_grpo_trains_with_the_f1_reward_and_no_reward_model(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    train = ("{max_steps: 2, per_device_train_batch_size: 4, num_generations: 4, max_completion_length: 8, "
             "logging_steps: 1, save_strategy: 'no', gradient_checkpointing: false, report_to: none}")
    recipe = load_recipe(write(tmp_path, tiny_llama, train=train))
    assert recipe["stages"][1]["reward_model"] is None
    results = run_recipe(recipe, output_dir=str(tmp_path / "run"))
    history = [json.loads(x) for x in (tmp_path / "run" / "grpo" / "metrics.jsonl").read_text().splitlines()]
    logged = [h for h in history if "rewards/squad_f1/mean" in h]
    assert len(logged) == 2 and all(0 <= h["rewards/squad_f1/mean"] <= 1 for h in logged)
    assert all("rewards/squad_em/mean" in h for h in logged)
    assert results["grpo"]["training_args"].get("reward_weights") in (None, [1.0, 0.5])


def test_f1_reward_needs_an_answers_column(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = write(tmp_path, tiny_llama, train="{max_steps: 1, per_device_train_batch_size: 4, num_generations: 4}")
    path.write_text(path.read_text().replace(str(tmp_path / "prompts.jsonl"), str(DATA / "qa" / "prompts.jsonl")))
    with pytest.raises(UserError, match="the prompt data needs an `answers` column"):
        run_recipe(load_recipe(path), output_dir=str(tmp_path / "run"))
