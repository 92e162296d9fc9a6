"""Secrets in the environment never reach a run's files or output; runs record trust_remote_code and write
weights as safetensors only.

A full tiny SFT (LoRA, checkpoint every step) -> reward -> PPO -> eval pipeline runs in a subprocess that
inherits secret-looking environment variables; then every byte the run wrote is searched for them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO

SECRETS = {
    "HF_TOKEN": "hf_SECRETabc123def456ghi789jkl012mno345",
    "HUGGING_FACE_HUB_TOKEN": "hf_SECRETzyx987wvu654tsr321qpo098nml",
    "WANDB_API_KEY": "SECRETwandb0123456789abcdef0123456789abcdef",
    "OPENAI_API_KEY": "sk-SECRETproj-Abc123Def456Ghi789Jkl012",
    "MY_SERVICE_PASSWORD": "SECRET-correct-horse-battery-staple-42",
}
OVERRIDES = [
    "stages.sft.train.num_train_epochs=1", "stages.sft.train.per_device_train_batch_size=8",
    "stages.sft.train.save_strategy=steps", "stages.sft.train.save_steps=1",
    "stages.sft.peft.r=4",  # an adapter, so a later stage merges it: sft/merged/ is written too
    "data.chat.max_rows=8", "data.alpaca.max_rows=4", "data.sharegpt.max_rows=4",
    "data.prefs.max_rows=12", "stages.reward.eval_split=4", "stages.reward.train.num_train_epochs=1",
    "data.prompts.max_rows=8", "stages.ppo.train.total_episodes=4", "stages.ppo.train.per_device_train_batch_size=4",
    "stages.ppo.train.response_length=4", "stages.ppo.train.num_ppo_epochs=1",
    "eval.limit=2", "eval.max_new_tokens=4", "eval.tasks=[capitals_open_chat]",
]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".pkl")
NOT_WEIGHTS = ("training_args.bin",)  # the Trainer's pickled arguments, saved beside every model


def leaks(root: Path, secrets: dict[str, str]) -> list[str]:
    """'file: NAME' for every secret found in any file under root (raw bytes, and inside zip archives such as
    torch's .pt/.bin files, whose members may be compressed)."""
    found = []
    needles = {name: value.encode() for name, value in secrets.items()}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        blobs = [path.read_bytes()]
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                blobs += [z.read(member) for member in z.namelist()]
        for name, needle in needles.items():
            if any(needle in blob for blob in blobs):
                found.append(f"{path.relative_to(root)}: {name}")
    return found


def test_leak_scanner_finds_planted_secrets(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "plain.json").write_text(json.dumps({"token": SECRETS["HF_TOKEN"]}))
    with zipfile.ZipFile(tmp_path / "a" / "state.pt", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"x" * 1000 + SECRETS["OPENAI_API_KEY"].encode() + b"y" * 1000)
    (tmp_path / "clean.bin").write_bytes(b"\x00" * 64)
    assert leaks(tmp_path, SECRETS) == ["a/plain.json: HF_TOKEN", "a/state.pt: OPENAI_API_KEY"]


@pytest.fixture(scope="module")
def secret_run(tiny_llama, tmp_path_factory):
    """The tiny PPO pipeline run by the real CLI with secrets in its (inherited) environment."""
    run_dir = tmp_path_factory.mktemp("secrets") / "run"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in SECRETS.items():
            mp.setenv(name, value)
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        probe = subprocess.run([sys.executable, "-c", "import os; print(os.environ['MY_SERVICE_PASSWORD'])"],
                               capture_output=True, text=True, check=True)
        assert probe.stdout.strip() == SECRETS["MY_SERVICE_PASSWORD"]  # the child does see them
        cmd = [sys.executable, "-m", "finetune", "run", "recipes/tiny/ppo.yaml", "--output-dir", str(run_dir),
               f"base_model.path={tiny_llama}", *OVERRIDES]
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return run_dir, res


def test_pipeline_ran_every_stage_and_wrote_checkpoints(secret_run):
    run_dir, _ = secret_run
    for stage in ("sft", "reward", "ppo"):
        assert (run_dir / stage / "manifest.json").is_file()
    assert list((run_dir / "sft" / "checkpoints").glob("checkpoint-*/optimizer.pt"))
    assert (run_dir / "sft" / "merged" / "config.json").is_file()
    assert (run_dir / "eval" / "results.md").is_file()


def test_no_secret_in_any_file_of_the_run(secret_run):
    run_dir, _ = secret_run
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files) and any(p.name == "optimizer.pt" for p in files)
    assert leaks(run_dir, SECRETS) == []


def test_no_secret_in_the_output(secret_run):
    _, res = secret_run
    for name, value in SECRETS.items():
        assert value not in res.stdout, name
        assert value not in res.stderr, name


def test_manifests_record_trust_remote_code_off(secret_run):
    run_dir, _ = secret_run
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["base_model"]["trust_remote_code"] is False
    for stage in ("sft", "reward", "ppo"):
        manifest = json.loads((run_dir / stage / "manifest.json").read_text())
        assert manifest["resolved_recipe"]["base_model"]["trust_remote_code"] is False, stage
    for config in run_dir.rglob("config.json"):  # no checkpoint asks for remote code to be run
        assert "auto_map" not in json.loads(config.read_text()), config
    assert not [p for p in run_dir.rglob("*.py")]


def test_weights_are_safetensors_only(secret_run):
    run_dir, _ = secret_run
    folders = sorted(p for p in run_dir.rglob("*") if p.is_dir() and p.name in ("model", "merged", "adapter"))
    assert {str(p.relative_to(run_dir)) for p in folders} >= {"sft/model", "sft/merged", "reward/model", "ppo/model"}
    for folder in folders:
        weights = [p.name for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.name not in NOT_WEIGHTS]
        assert weights and all(name.endswith(".safetensors") for name in weights), (folder, weights)
    pickled = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
               if p.name.startswith(("pytorch_model", "adapter_model", "model"))
               and p.suffix in (".bin", ".pt", ".pth")]
    assert pickled == []
    assert os.path.getsize(run_dir / "sft" / "model" / "adapter_model.safetensors") > 0
