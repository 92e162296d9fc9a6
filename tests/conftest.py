"""Shared fixtures: offline environment, tiny models built once per session, recipe writing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "recipes" / "data"


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny Llama-style model + BPE tokenizer trained on the shipped data (built offline once)."""
    from finetune.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("models") / "tiny-llama", "llama",
                      corpus=[DATA], vocab_size=2048)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    from finetune.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("models") / "tiny-qwen2", "qwen2",
                      corpus=[DATA], vocab_size=2048)


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe dict (or raw text) to a YAML file in tmp_path and return its path."""

    def write(content, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


def sft_recipe(model: Path, data: dict | None = None, **stage) -> dict:
    """A minimal valid SFT recipe dict on `model` and the shipped chat data; stage keys override."""
    train = {"max_steps": 4, "per_device_train_batch_size": 8, "learning_rate": 1e-3,
             "gradient_checkpointing": False, "logging_steps": 1, "save_strategy": "no",
             "max_length": 128, "disable_tqdm": True}
    train.update(stage.pop("train", {}))
    return {
        "name": "t",
        "seed": 1,
        "base_model": {"path": str(model), "dtype": "float32"},
        "data": data or {"chat": {"path": str(DATA / "tiny_chat.jsonl")}},
        "stages": [{"name": "sft", "kind": "sft", "data": ["chat"] if not data else list(data), **stage,
                    "train": train}],
    }


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory) -> Path:
    from finetune.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("models") / "tiny-mistral", "mistral", corpus=[DATA], vocab_size=2048)


def pytest_addoption(parser):
    parser.addoption("--update-fingerprints", action="store_true",
                     help="rewrite tests/fixtures/stage_fingerprints.json (a deliberate fingerprint change only)")


def pytest_report_header(config):
    import torch

    path = os.environ.get("FINETUNE_KERNEL_PATH", "native")
    return f"cpu kernels: {path}, torch capability {torch.backends.cpu.get_cpu_capability()}"


# Fixtures that build a model or read a real tokenizer from a GGUF: a test that asks for one loads, trains or
# generates with it. Modules whose every test trains, or starts fresh interpreters.
MODEL_FIXTURES = {"tiny_llama", "tiny_qwen2", "tiny_mistral", "student", "adapters", "smollm2_tokenizer"}
SLOW_MODULES = {"test_demo", "test_real_model", "test_real_recipes", "test_distributed", "test_kernel_paths",
                "test_alignment"}


def pytest_collection_modifyitems(config, items):
    """Mark `slow` every test that loads or trains a model; `pytest -m "not slow"` is the inner loop
    (validation, data, scoring, statistics, CLI errors), `make test` runs everything."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if MODEL_FIXTURES & set(item.fixturenames) or item.get_closest_marker("numerics") or module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
