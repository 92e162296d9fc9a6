"""Every real-model recipe runs all its stages on a tiny model of the same architecture.

The recipes name hub models and hub datasets, which cannot be fetched here. Each one is run exactly as
written except for: base_model.path (a tiny model of the same architecture), the data paths (the shipped
tiny data), and caps on steps, rows and lengths so that a CPU finishes in seconds. Chat templates, adapters,
quantisation, bf16 settings, stage wiring and TRL settings are the recipe's own.
"""

from __future__ import annotations

import pytest
from conftest import DATA, REPO

from finetune.pipeline import run_recipe
from finetune.recipe import load_recipe
from finetune.targets import recipe_files

ARCH = {"qwen2.5-0.5b": "qwen2", "qwen2.5-7b": "qwen2", "llama3.1-8b": "llama", "mistral-7b": "mistral",
        "smollm2-1.7b": "llama"}
CAPS = [
    "data.chat.max_rows=16", "data.prefs.max_rows=24",
    "stages.sft.eval_split=4", "stages.reward.eval_split=8", "stages.dpo.eval_split=4",
    "stages.ppo.max_rows=8",
    "stages.sft.train.max_steps=2", "stages.reward.train.max_steps=2", "stages.dpo.train.max_steps=2",
    "stages.sft.train.max_length=320", "stages.reward.train.max_length=320", "stages.dpo.train.max_length=320",
    "stages.sft.train.per_device_train_batch_size=2", "stages.sft.train.gradient_accumulation_steps=1",
    "stages.reward.train.per_device_train_batch_size=2", "stages.reward.train.gradient_accumulation_steps=1",
    "stages.dpo.train.per_device_train_batch_size=2", "stages.dpo.train.gradient_accumulation_steps=1",
    "stages.ppo.train.per_device_train_batch_size=2", "stages.ppo.train.gradient_accumulation_steps=1",
    "stages.ppo.train.total_episodes=4", "stages.ppo.train.response_length=8",
    "stages.ppo.train.local_rollout_forward_batch_size=2",
    "eval.tasks=[squad_v1_tiny]", "eval.limit=2",
]


def test_every_real_recipe_is_covered():
    real = {name for name in recipe_files(REPO / "recipes") if not name.startswith("tiny-")}
    assert real == set(ARCH), "add the new recipe to ARCH (and to this test's run)"


@pytest.mark.parametrize("name", sorted(ARCH))
def test_real_recipe_runs_on_a_tiny_model_of_its_architecture(name, request, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    model = request.getfixturevalue(f"tiny_{ARCH[name]}")
    overrides = [f"base_model.path={model}", f"data.chat.path={DATA / 'tiny_chat.jsonl'}",
                 f"data.prefs.path={DATA / 'tiny_prefs.jsonl'}", *CAPS]
    recipe = load_recipe(recipe_files(REPO / "recipes")[name], overrides)
    results = run_recipe(recipe, output_dir=str(tmp_path / "run"))
    assert list(results) == ["sft", "reward", "ppo", "dpo"]
    assert results["sft"]["artifact"]["adapter"] and results["sft"]["artifact"]["quantization"]["bits"] == 4
    assert results["sft"]["label_audit"]["rows_with_supervised_eos"] == results["sft"]["label_audit"]["rows"]
    assert results["dpo"]["init"]["stage"] == "sft" and results["ppo"]["init"]["reward_model"]
    assert (tmp_path / "run" / "eval" / "results.md").exists()
