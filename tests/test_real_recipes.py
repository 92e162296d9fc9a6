"""Every real-model recipe runs all its stages on a tiny model of the same architecture.

The recipes name hub models and hub datasets, which cannot be fetched here. Each one is run exactly as
written except for: base_model.path (a tiny model of the same architecture), the data paths (the shipped
tiny data), and caps on steps, rows and lengths so that a CPU finishes in seconds. The tiny model is served
with the recipe model's own chat template (`base_model.chat_template`), so the recipe's training template is
checked against it as on the real model. Adapters, quantisation, bf16 settings, stage wiring and TRL settings
are the recipe's own.
"""

from __future__ import annotations

import json

import pytest
from conftest import DATA, REPO

from finetune import chat_templates
from finetune.errors import UserError
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
    """Every recipe on a hub model (the CPU recipes on local models run as they are, in test_real_model.py)."""
    real = {name for name, path in recipe_files(REPO / "recipes").items()
            if not name.startswith("tiny-") and not load_recipe(path)["base_model"]["path"].startswith("models/")}
    assert real == set(ARCH), "add the new recipe to ARCH (and to this test's run)"


@pytest.mark.parametrize("name", sorted(ARCH))
def test_real_recipe_runs_on_a_tiny_model_of_its_architecture(name, request, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    model = request.getfixturevalue(f"tiny_{ARCH[name]}")
    hub_id = load_recipe(recipe_files(REPO / "recipes")[name])["base_model"]["path"]
    served, _ = chat_templates.official_template_file(hub_id)
    chat = DATA / "tiny_chat.jsonl"
    if name == "mistral-7b":
        # Mistral v0.3's template shows a system prompt only before a final user turn: rows with one are refused.
        recipe = load_recipe(recipe_files(REPO / "recipes")[name], [
            f"base_model.path={model}", f"base_model.chat_template={served}", f"data.chat.path={chat}",
            f"data.prefs.path={DATA / 'tiny_prefs.jsonl'}", *CAPS, "data.chat.max_rows=300"])
        with pytest.raises(UserError, match=r"data row \d+: the chat template leaves out the 'system' turn"):
            run_recipe(recipe, output_dir=str(tmp_path / "refused"))
        chat = tmp_path / "chat_without_system.jsonl"
        chat.write_text("".join(line for line in (DATA / "tiny_chat.jsonl").open() if '"system"' not in line))
    overrides = [f"base_model.path={model}", f"base_model.chat_template={served}", f"data.chat.path={chat}",
                 f"data.prefs.path={DATA / 'tiny_prefs.jsonl'}", *CAPS]
    if name == "llama3.1-8b":
        # Llama 3.1 ends turns with <|eot_id|>, a token the tiny tokenizer does not have, so the tiny model's EOS
        # is never supervised; the real Llama 3 tokenizer's masks are checked in test_chat_templates.py.
        overrides.append("stages.sft.audit.require_eos=false")
    recipe = load_recipe(recipe_files(REPO / "recipes")[name], overrides)
    results = run_recipe(recipe, output_dir=str(tmp_path / "run"))
    assert list(results) == ["sft", "reward", "ppo", "dpo"]
    assert results["sft"]["artifact"]["adapter"] and results["sft"]["artifact"]["quantization"]["bits"] == 4
    if name != "llama3.1-8b":
        assert results["sft"]["label_audit"]["rows_with_supervised_eos"] == results["sft"]["label_audit"]["rows"]
    assert results["sft"]["training_chat_template"]["source"] == \
        (recipe["base_model"]["training_chat_template"] or "TRL's qwen2_5_training.jinja")
    saved = (tmp_path / "run" / "sft" / "model" / "chat_template.jinja").read_text()
    assert saved == served.read_text(), "the SFT model must be saved with the template it is served with"
    assert results["dpo"]["init"]["stage"] == "sft" and results["ppo"]["init"]["reward_model"]
    assert (tmp_path / "run" / "eval" / "results.md").exists()


def test_the_sft_benchmark_variants_are_settings_of_the_real_recipe():
    """B10 (finetune.bench.sft_real) trains the real recipe's SFT stage with its variants' overrides: each
    resolves on the recipe as committed and sets the data, batch, packing and precision its name says."""
    from finetune.bench.sft_real import ENV, RECIPE, VARIANTS

    assert ENV["recipe_mmap"]["MALLOC_MMAP_THRESHOLD_"] == str(2**20)
    for name, overrides in VARIANTS.items():
        recipe = load_recipe(REPO / RECIPE, overrides)
        assert recipe["base_model"]["dtype"] == ("bfloat16" if name == "recipe_bf16w" else "float32")
        sft = next(s for s in recipe["stages"] if s["name"] == "sft")
        train = sft["train"]
        if name.startswith("recipe"):
            assert list(sft["data"]) == ["paragraphs"] and "packing" not in train
            assert train.get("bf16", True) is (name != "recipe_fp32")
            assert sft["peft"]["dropout"] == (0.05 if name == "recipe_dropout" else 0)
            continue
        precision, layout, *dropout = name.split("_")
        assert list(sft["data"]) == ["squad"] and train["gradient_accumulation_steps"] == 1
        assert train["bf16"] is (precision == "bf16") and train["packing"] is (layout == "packed")
        assert train["per_device_train_batch_size"] == (2 if layout == "packed" else 8)
        sampling = train.get("train_sampling_strategy", "random")
        assert sampling == ("group_by_length" if layout == "grouped" else "random")
        assert sft["peft"]["dropout"] == (0 if dropout == ["nodrop"] else 0.05)


def test_mfu_counts_the_lm_head_on_the_supervised_tokens_only(tmp_path):
    """B8/B10's model FLOPs: 6N / 4N with N = SmolLM2-135M's 134.5M matmul weights (its head tied), the head's
    share scaled by the label audit's supervised share, as TRL's default SFT loss (chunked_nll) runs the head;
    with `loss_type: nll` the head runs on every token and counts on every token."""
    from finetune.bench.mfu import flops_per_token, stage_mfu

    config = {"hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536, "vocab_size": 49152,
              "num_attention_heads": 9, "num_key_value_heads": 3}
    body, head = 106_168_320, 576 * 49152
    assert flops_per_token(config, "full", False, 0) == 6 * (body + head) == 6 * 134_479_872
    assert flops_per_token(config, "lora", True, 0, 0.02) == pytest.approx(6 * (body + 0.02 * head))
    attention = 4 * 30 * 244 * 576
    assert flops_per_token(config, "lora", False, 244, 0.5) == pytest.approx(2 * (2 * (body + head / 2) + attention))

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    stage = tmp_path / "sft"
    stage.mkdir()
    (stage / "metrics.jsonl").write_text(json.dumps({"num_tokens": 1000.0}) + "\n")
    for loss_type, share in ((None, 0.05), ("chunked_nll", 0.05), ("nll", 1.0)):
        train = {"gradient_checkpointing": False} | ({"loss_type": loss_type} if loss_type else {})
        (stage / "manifest.json").write_text(json.dumps({
            "stage": "sft", "artifact": {"base": str(tmp_path / "model")},
            "train_metrics": {"num_tokens": 1000.0, "train_runtime": 4.0},
            "resolved_recipe": {"stages": [{"name": "sft", "peft": {"r": 16}, "train": train}]},
            "label_audit": {"tokens": {"mean": 244.0}, "supervised_share": 0.05},
            "precision": {"compute": "bf16 autocast"}}))
        got = stage_mfu(stage, {"float32": 100.0, "bfloat16": 400.0})
        expected = flops_per_token(config, "lora", False, 244.0, share) * 1000 / 4.0 / 1e9
        assert got["head_share"] == share and got["achieved_gflops"] == round(expected, 1)
        assert got["mfu"] == round(expected / 400.0, 4)


def test_the_dpo_benchmark_variants_train_with_trls_trainer_and_with_the_stages(monkeypatch):
    """B11 (finetune.bench.dpo_real): the `trl` variant's process makes the dpo stage use TRL's DPOTrainer; the
    other runs the stage as committed, with finetune.completion_logits' subclass; its overrides resolve."""
    import trl

    from finetune import completion_logits
    from finetune.bench.dpo_real import AS_TRL, RECIPE, use_trls_trainer

    committed = completion_logits.CompletionLogitsDPOTrainer
    assert issubclass(committed, trl.DPOTrainer) and committed is not trl.DPOTrainer
    monkeypatch.setattr(completion_logits, "CompletionLogitsDPOTrainer", committed)  # put back afterwards
    use_trls_trainer()
    assert completion_logits.CompletionLogitsDPOTrainer is trl.DPOTrainer
    assert "use_trls_trainer()" in AS_TRL
    recipe = load_recipe(REPO / RECIPE, ["stages.dpo.train.max_steps=6", "stages.dpo.train.logging_steps=1"])
    assert next(s for s in recipe["stages"] if s["name"] == "dpo")["train"]["max_steps"] == 6
