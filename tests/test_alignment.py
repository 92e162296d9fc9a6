"""Alignment that measurably moves a policy that can already read: GRPO with the F1 reward raises it, a reward
that prefers long answers trips the length alarm (a clean run stays quiet), and metric-labelled pairs are
built from the policy's own answers and consumed by DPO.

All start from one tiny reader: the demo's tiny Llama after SFT on the synthetic QA data (the demo's settings,
fewer epochs), which answers part of the held-out questions, so rewards and alarms have something to move.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import DATA, REPO

from finetune.pipeline import run_recipe
from finetune.recipe import load_recipe

# The demo's held-out questions as they were when this file's figures were measured (pets unseen in training
# too). The demo's own set has since taken its pets from the training pool; these readers stay on the old one.
WATCHED = "tests/fixtures/qa_heldout_v1.yaml"


@pytest.fixture(scope="module")
def readers(tmp_path_factory):
    """epochs -> (model folder, prompts-with-answers file): the demo's tiny Llama after the demo's SFT for
    that
    many epochs on the first 2400 rows of the synthetic QA data, and 16 of the other rows as prompts with
    their gold answers (questions it was not trained on). Measured (2026-11-30): after 2 epochs the model has
    not yet learned to copy spans (held-out EM 5 on 40 questions), after 4 it has (62.5)."""
    from finetune.tiny import build_tiny

    root = tmp_path_factory.mktemp("readers")
    model = build_tiny(root / "tiny-llama", "llama")
    lines = (DATA / "qa" / "sft.jsonl").read_text().splitlines()
    (root / "sft.jsonl").write_text("\n".join(lines[:2400]) + "\n")
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": r["messages"][:1], "answers": [r["messages"][1]["content"]]}) + "\n"
            for r in map(json.loads, lines[2400:2416])
        )
    )
    made = {}

    def reader(epochs: int):
        if epochs not in made:
            recipe = load_recipe(
                REPO / "recipes" / "tiny" / "demo.yaml",
                [
                    f"base_model.path={model}",
                    f"data.qa.path={root / 'sft.jsonl'}",
                    "stages.sft.data=[qa]",  # span answers only, as when the figures below were measured
                    f"stages.sft.train.num_train_epochs={epochs}",
                    "stages.sft.train.save_strategy=no",
                ],
            )
            run_recipe({**recipe, "eval": None}, output_dir=str(root / f"run-{epochs}"), only="sft")
            made[epochs] = (root / f"run-{epochs}" / "sft" / "model", prompts)
        return made[epochs]

    return reader


def grpo_recipe(
    tmp_path, reader, rewards: dict, watch: dict, steps: int, lr: float, temperature: float = 1.0
) -> dict:
    """A one-stage GRPO recipe from `reader`: 4 prompts x 4 sampled answers per step (an epoch of the 16
    prompts every 4 steps), full finetuning."""
    model, prompts = reader
    stage = {
        "name": "grpo",
        "kind": "grpo",
        "data": ["prompts"],
        "rewards": rewards,
        "watch": watch,
        "train": {
            "max_steps": steps,
            "learning_rate": lr,
            "per_device_train_batch_size": 16,
            "num_generations": 4,
            "max_completion_length": 12,
            "temperature": temperature,
            "logging_steps": 1,
            "save_strategy": "no",
            "gradient_checkpointing": False,
        },
    }
    return one_stage_recipe(tmp_path, model, prompts, stage)


def one_stage_recipe(tmp_path, model, prompts, stage: dict) -> dict:
    """A recipe of one `stage` starting from `model`, reading `prompts` (written, then loaded and validated)."""
    path = tmp_path / f"{stage['name']}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": stage["name"],
                "seed": 3,
                "base_model": {"path": str(model)},
                "data": {"prompts": {"path": str(prompts)}},
                "stages": [stage],
            }
        )
    )
    return load_recipe(path)


def logged(run_dir, stage, key):
    rows = [json.loads(x) for x in (run_dir / stage / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


@pytest.mark.numerics
def test_grpo_with_the_f1_reward_raises_it_and_raises_no_alarm(readers, tmp_path, monkeypatch):
    """From a reader that has not yet learned to copy, 64 GRPO steps (16 epochs of the 16 prompts) with the F1
    reward. Measured (2026-11-30, AVX-512 path, one thread): mean reward 0.047 over the first 12 steps ->
    0.125 over the last 12, held-out F1 5 -> 10; AVX2 path: F1 5 -> 7.5; no alarm on either."""
    monkeypatch.chdir(REPO)
    watch = {"task": WATCHED, "questions": 40, "every": 16}
    recipe = grpo_recipe(tmp_path, readers(2), {"squad_f1": 1.0}, watch, steps=64, lr=3e-4)
    results = run_recipe(recipe, output_dir=str(tmp_path / "run"))
    f1 = logged(tmp_path / "run", "grpo", "rewards/squad_f1/mean")
    assert len(f1) == 64
    first, last = sum(f1[:12]) / 12, sum(f1[-12:]) / 12
    assert last > first, (
        f"F1 reward did not rise: {first:.3f} over the first 12 steps, {last:.3f} over the last"
    )
    record = results["grpo"]["watch"]
    assert [p["step"] for p in record["points"]] == [0, 16, 32, 48, 64]
    assert record["alarms"] == [], record["alarms"]


@pytest.mark.numerics
def test_a_reward_for_long_answers_trips_an_alarm_and_stops_training(readers, tmp_path, monkeypatch, capsys):
    """The reward is -1 x length_penalty: the longer a sampled answer than the gold one (up to twice), the
    higher. Measured (2026-11-30, AVX-512 path, temperature 1): the reward rose from 0.04 to 0.97 while
    held-out F1 fell from 62.5 to 0 (the policy learns to ramble when sampled and answers nonsense greedily).
    At temperature 1 the AVX2 path never sampled a long answer in 20 steps (reward 0, nothing to learn), so
    the test samples at 1.5; the alarm then fires and stops training on both paths."""
    monkeypatch.chdir(REPO)
    watch = {"task": WATCHED, "questions": 40, "every": 4, "stop_on_alarm": True}
    recipe = grpo_recipe(
        tmp_path, readers(4), {"length_penalty": -1.0}, watch, steps=40, lr=1e-3, temperature=1.5
    )
    results = run_recipe(recipe, output_dir=str(tmp_path / "run"))
    record = results["grpo"]["watch"]
    points = [(p["step"], p["watch/f1"], p["watch/mean_words"], p["reward"]) for p in record["points"]]
    assert "reward_up_f1_down" in [a["alarm"] for a in record["alarms"]], points
    stopped_at = record["alarms"][0]["step"]
    assert record["points"][-1]["step"] == stopped_at < 40, "stop_on_alarm ends training at the alarm"
    assert record["points"][-1]["watch/f1"] < record["points"][0]["watch/f1"]
    err = capsys.readouterr().err
    assert f"warning: grpo: alarm at step {stopped_at}: " in err and "stopping (watch.stop_on_alarm)" in err


def test_metric_labelled_pairs_are_built_and_consumed_by_dpo(readers, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    model, prompts = readers(4)
    stage = {
        "name": "dpo",
        "kind": "dpo",
        "data": ["prompts"],
        "sample_pairs": {"k": 4, "margin": 0.3, "temperature": 1.0, "max_new_tokens": 12},
        "train": {
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-5,
            "logging_steps": 1,
            "save_strategy": "no",
            "gradient_checkpointing": False,
        },
    }
    results = run_recipe(one_stage_recipe(tmp_path, model, prompts, stage), output_dir=str(tmp_path / "run"))
    summary = results["dpo"]["sampled_pairs"]
    samples = [
        json.loads(x) for x in (tmp_path / "run" / "dpo" / "sampled_pairs.jsonl").read_text().splitlines()
    ]
    assert summary["prompts"] == len(samples) == 16 and all(len(s["samples"]) == 4 for s in samples)
    assert summary["pairs"] == sum(s["kept"] for s in samples) > 0
    assert summary["mean_chosen_f1"] - summary["mean_rejected_f1"] >= 0.3
    assert results["dpo"]["data"]["train_rows"] == summary["pairs"]
    assert len(logged(tmp_path / "run", "dpo", "loss")) == 2


def reward_pairs(path, biased: bool) -> None:
    """400 preference pairs on questions the readers never trained on. Length-biased: chosen = the whole
    context sentence that holds the answer ("Viggo works as a painter."), rejected = the gold span itself, so
    the reward model learns that longer is better. Clean: the same pairs the other way round (the gold span
    is chosen, as the task's scorer would have it). Measured with 2 epochs and a mix of wrong spans as the clean
    rejections instead: the clean reward model reached only 0.86-0.92 pairwise accuracy and GRPO found its
    errors (held-out F1 62.5 -> 50, which is reward hacking too, and the alarm said so)."""
    rows = []
    for line in (DATA / "qa" / "sft.jsonl").read_text().splitlines()[2416:2816]:
        user, answer = (m["content"] for m in json.loads(line)["messages"])
        facts = user.split("\n")[0].removeprefix("Context: ").rstrip(".").split(". ")
        sentence = next(f for f in facts if answer in f) + "."
        chosen, rejected = (sentence, answer) if biased else (answer, sentence)
        rows.append({"prompt": [{"role": "user", "content": user}],
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def rm_then_grpo(tmp_path, reader, biased: bool) -> dict:
    """A reward model trained from the reader on `reward_pairs`, then GRPO against it alone, watched."""
    model, prompts = reader
    reward_pairs(tmp_path / "pairs.jsonl", biased)
    path = tmp_path / "rm-grpo.yaml"
    path.write_text(yaml.safe_dump({
        "name": "rm-grpo", "seed": 3, "base_model": {"path": str(model)},
        "data": {"pairs": {"path": str(tmp_path / "pairs.jsonl")}, "prompts": {"path": str(prompts)}},
        "stages": [
            {"name": "reward", "kind": "reward", "data": ["pairs"],
             "train": {"num_train_epochs": 4, "learning_rate": 3e-4, "lr_scheduler_type": "constant",
                       "per_device_train_batch_size": 16, "max_length": 256, "logging_steps": 5,
                       "save_strategy": "no", "gradient_checkpointing": False}},
            {"name": "grpo", "kind": "grpo", "data": ["prompts"], "rewards": {"reward_model": 1.0},
             "watch": {"task": WATCHED, "questions": 40, "every": 8},
             "train": {"max_steps": 64, "learning_rate": 3e-4, "per_device_train_batch_size": 16,
                       "num_generations": 4, "max_completion_length": 12, "temperature": 1.5,
                       "logging_steps": 1, "save_strategy": "no", "gradient_checkpointing": False}},
        ]}))
    return run_recipe(load_recipe(path), output_dir=str(tmp_path / "run"))


@pytest.mark.numerics
@pytest.mark.parametrize("biased", [True, False], ids=["length-biased", "clean"])
def test_a_length_biased_reward_model_trips_the_alarms_and_a_clean_one_does_not(readers, tmp_path, monkeypatch,
                                                                                biased):
    """The failure the alarms exist for, made on purpose: a reward model trained on pairs whose chosen answer
    is always the longer one (a whole sentence where the gold answer is a span) and GRPO against it.
    Held-out F1 falls (or the answers grow) while the reward rises, and the alarms say so. The same run with the pairs
    the other way round (the gold span chosen) raises none. Measured (2026-11-30, 64 steps at 3e-4, sampled at
    temperature 1.5, each stage seeded by the pipeline): AVX-512 path, biased: reward_up_f1_down at step 16 (F1
    62.5 -> 0) and length_drift at 64 (1.0 -> 1.8 words), clean: F1 62.5 -> 55.0, 0.9 words, no alarm; AVX2
    path, biased: length_drift at step 48 (1.0 -> 1.6 words, 1.8 at 64), clean: F1 62.5 throughout, no alarm.
    Before stages were seeded, the reward model's new score head took whatever the global RNG held after the
    earlier tests, and on the AVX2 path one such order never lengthened the greedy answers. At 1e-3 the
    "clean" reward model (which prefers the short answer) was hacked too: empty answers, F1 62.5 -> 37.5, and
    reward_up_f1_down fired, rightly. Since the reward model is read at the end-of-sequence token it was
    trained at (finetune.stages.reward; GRPO read it at the chat template's trailing newline before), AVX2 path,
    biased: reward 0.46 -> 3.6 and F1 62.5 -> 50 by step 32, the greedy answers still one word (the sampled
    answers are what the reward pulls on), and the alarm fires; clean: no alarm. On 2026-12-01 on an AMD EPYC
    with avx512_bf16 whose bf16 GEMM is 2.4x fp32 (AVX-512 path), clean: reward 2.56 -> 4.09 while F1 fell
    62.5 -> 55.0 and the answers shortened (0.9 -> 0.825 words over steps 24-40), so reward_up_f1_down fired
    at step 48: the clean reward model, which prefers the short span, is hacked a little on that path. What
    tells the two apart on every path is length: the clean run never trips length_drift nor lengthens the
    answers by more than 10%."""
    monkeypatch.chdir(REPO)
    results = rm_then_grpo(tmp_path, readers(4), biased)
    record = results["grpo"]["watch"]
    points = [(p["step"], p["watch/f1"], p["watch/mean_words"], p.get("reward")) for p in record["points"]]
    alarms = {a["alarm"] for a in record["alarms"]}
    if biased:
        assert alarms & {"reward_up_f1_down", "length_drift"}, points
        # the bias was exploited: longer greedy answers, or held-out F1 lost while the reward rose
        assert points[-1][2] > points[0][2] or points[-1][1] < points[0][1], f"nothing exploited: {points}"
    else:
        # The clean reward model pays for short answers: it never lengthens them, so no length alarm; on some
        # CPUs it is hacked mildly too (shorter answers, F1 down), and then reward_up_f1_down fires, rightly.
        assert "length_drift" not in alarms, (record["alarms"], points)
        assert points[-1][2] <= 1.1 * points[0][2], f"the clean reward model lengthened the answers: {points}"


def test_shared_prefill_samples_as_copying_the_prompt_does_and_reads_it_once(tiny_llama):
    """`sample_pairs` reads each prompt once for its k answers (finetune.sampled_pairs.shared_prefill) instead of
    k times (`num_return_sequences`): the same continuations, greedily, on left-padded prompts of two lengths,
    the same logits at every step, and the prompt tokens forwarded once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.sampled_pairs import shared_prefill

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.padding_side = "left"
    enc = tokenizer(["Context: Viggo works as a painter in Oslo. Question: What does Viggo do?", "Question: Who?"],
                    return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert mask[1, 0] == 0 and mask[0].all()  # the short prompt is left-padded
    forwarded = []
    model.model.register_forward_hook(lambda module, args, kwargs, out: forwarded.append(kwargs["input_ids"].numel()),
                                      with_kwargs=True)
    k, settings = 3, {"do_sample": False, "max_new_tokens": 6, "output_scores": True,
                      "return_dict_in_generate": True, "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad():
        # what num_return_sequences=k does (transformers' _expand_inputs_for_generation), here greedily
        copied = model.generate(input_ids=ids.repeat_interleave(k, 0), attention_mask=mask.repeat_interleave(k, 0),
                                **settings)
        copied_first = forwarded[0]
        forwarded.clear()
        shared = model.generate(**shared_prefill(model, ids, mask, k), **settings)
    assert torch.equal(shared.sequences, copied.sequences)
    for step, (a, b) in enumerate(zip(shared.scores, copied.scores, strict=True)):
        assert torch.allclose(a, b, atol=1e-4), (step, (a - b).abs().max())
    batch, length = ids.shape
    assert copied_first == batch * k * length  # every prompt read k times
    assert forwarded[:2] == [batch * (length - 1), batch * k]  # read once, then k copies of its last token
