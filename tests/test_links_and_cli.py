"""Stage links (`from`, `reward_model`) through `finetune validate`, and the `merge`, `chat` and `--help` commands.

The link corpus runs each malformed recipe through the real CLI and checks the one-line error. `merge` is
tested on adapters built directly with peft on the session's tiny Llama (no training): a causal-LM adapter
and a sequence-classification (reward-model) one, each perturbed so that merging is not the identity.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest
from conftest import DATA, REPO

from finetune.cli import main
from finetune.recipe import load_recipe

PREFS = DATA / "tiny_prefs.jsonl"
PROMPTS = DATA / "tiny_prompts.jsonl"
CHAT = DATA / "tiny_chat.jsonl"

# ------------------------------------------------------------------------------------------- link corpus
# Each case(): an id, the `stages:` list (YAML, indented by 2) under a recipe with data sources chat, prefs
# and prompts, and the fragments its one-line error must contain.

HEAD = f"""
base_model: {{path: $MODEL}}
data:
  chat: {{path: {DATA / 'tiny_chat.jsonl'}}}
  prefs: {{path: {PREFS}}}
  prompts: {{path: {PROMPTS}}}
stages:
"""

DATA_OF = {"sft": "chat", "reward": "prefs", "dpo": "prefs", "ppo": "prompts", "rloo": "prompts", "grpo": "prompts"}


def stage(kind: str, **keys: str) -> str:
    """One stage line: `- {kind: K, data: [...], key: value, ...}` (name defaults to the kind)."""
    extra = "".join(f", {k}: {v}" for k, v in keys.items())
    return f"  - {{kind: {kind}, data: [{DATA_OF[kind]}]{extra}}}\n"


def recipe(*stages: str) -> str:
    return HEAD + "".join(stages)


def case(case_id: str, content: str, *fragments: str):
    return pytest.param(content, list(fragments), id=case_id)


BAD_LINKS = [
    # --- from: must name an earlier stage
    case("from-later-stage", recipe(stage("sft"), stage("dpo", **{"from": "reward"}), stage("reward")),
         "stages[1].from: 'reward' is not an earlier stage", "(earlier: ['sft'])"),
    case("from-itself", recipe(stage("sft"), stage("dpo", **{"from": "dpo"})),
         "stages[1].from: 'dpo' is not an earlier stage"),
    case("from-first-stage", recipe(stage("sft", **{"from": "dpo"}), stage("dpo")),
         "stages[0].from: 'dpo' is not an earlier stage (earlier: [])"),
    case("from-misspelt", recipe(stage("sft"), stage("dpo", **{"from": "stf"})),
         "stages[1].from: 'stf' is not an earlier stage; did you mean 'sft'?"),
    case("from-unknown", recipe(stage("sft"), stage("dpo", **{"from": "pretrain"})),
         "stages[1].from: 'pretrain' is not an earlier stage (earlier: ['sft'])"),
    # --- from: a policy, never a reward model
    case("dpo-from-reward", recipe(stage("sft"), stage("reward"), stage("dpo", **{"from": "reward"})),
         "stages[2].from: 'reward' is a reward model; a dpo stage starts from a policy"),
    case("ppo-from-reward", recipe(stage("sft"), stage("reward"), stage("ppo", **{"from": "reward"})),
         "stages[2].from: 'reward' is a reward model; a ppo stage starts from a policy"),
    case("sft-from-reward", recipe(stage("sft"), stage("reward"), stage("sft", name="sft2", **{"from": "reward"})),
         "stages[2].from: 'reward' is a reward model; a sft stage starts from a policy"),
    # --- online stages need an earlier reward stage
    case("ppo-without-reward", recipe(stage("sft"), stage("ppo")),
         "stages[1]: a ppo stage needs a reward model; add a reward stage before it"),
    case("rloo-without-reward", recipe(stage("sft"), stage("rloo")), "stages[1]: a rloo stage needs a reward model"),
    case("grpo-without-reward", recipe(stage("sft"), stage("grpo")), "stages[1]: a grpo stage needs a reward model"),
    case("ppo-reward-after-it", recipe(stage("sft"), stage("ppo"), stage("reward")),
         "stages[1]: a ppo stage needs a reward model"),
    case("ppo-alone", recipe(stage("ppo")), "stages[0]: a ppo stage needs a reward model"),
    # --- reward_model: an earlier reward stage, on online stages only
    case("reward_model-names-sft", recipe(stage("sft"), stage("reward"), stage("ppo", reward_model="sft")),
         "stages[2].reward_model: 'sft' is not an earlier reward stage"),
    case("reward_model-names-later", recipe(stage("sft"), stage("rloo", reward_model="reward"), stage("reward")),
         "stages[1].reward_model: 'reward' is not an earlier reward stage"),
    case("reward_model-misspelt", recipe(stage("sft"), stage("reward"), stage("grpo", reward_model="rewad")),
         "stages[2].reward_model: 'rewad' is not an earlier reward stage; did you mean 'reward'?"),
    case("reward_model-on-sft",
         recipe(stage("sft"), stage("reward"), stage("sft", name="sft2", reward_model="reward")),
         "stages[2].reward_model: only ppo, rloo and grpo stages use a reward model"),
    case("reward_model-on-dpo", recipe(stage("sft"), stage("reward"), stage("dpo", reward_model="reward")),
         "stages[2].reward_model: only ppo, rloo and grpo stages use a reward model"),
    case("reward_model-on-reward", recipe(stage("sft"), stage("reward"), stage("reward", name="rm2",
                                                                             reward_model="reward")),
         "stages[2].reward_model: only ppo, rloo and grpo stages use a reward model"),
]


def write(tmp_path: Path, text: str, name: str = "links.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text.replace("$MODEL", str(tmp_path)), encoding="utf-8")
    return path


def validate_cli(capsys, path: Path, *overrides: str) -> tuple[int, str, str]:
    rc = main(["validate", str(path), *overrides])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(("content", "fragments"), BAD_LINKS)
def test_bad_stage_link_gives_one_line_error(content, fragments, tmp_path, capsys):
    path = write(tmp_path, content)
    rc, out, err = validate_cli(capsys, path)
    assert "Traceback" not in err
    assert (rc, out) == (2, ""), (rc, out, err)
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(f"error: {path}: "), err
    for fragment in fragments:
        assert fragment in err, f"expected {fragment!r} in {err!r}"


def test_link_corpus_sanity(tmp_path):
    ids = [c.id for c in BAD_LINKS]
    assert len(ids) == len(set(ids))
    r = load_recipe(write(tmp_path, recipe(stage("sft"), stage("reward"), stage("ppo"))))
    assert [s["name"] for s in r["stages"]] == ["sft", "reward", "ppo"]


# ------------------------------------------------------------------------------------------- link defaults
def test_tiny_ppo_defaults(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # shipped recipes name their data relative to the repository root
    path = Path("recipes/tiny/ppo.yaml")
    rc, out, err = validate_cli(capsys, path, f"base_model.path={tmp_path}")
    assert (rc, err) == (0, ""), err
    assert out.startswith(f"{path}: ok — 3 stage(s): sft (sft), reward (reward), ppo (ppo)"), out
    stages = {s["name"]: s for s in load_recipe(path, [f"base_model.path={tmp_path}"])["stages"]}
    assert stages["sft"]["from"] is None, "an sft stage starts from the base model"
    assert stages["reward"]["from"] == "sft" and stages["reward"]["reward_model"] is None
    assert (stages["ppo"]["from"], stages["ppo"]["reward_model"]) == ("sft", "reward")


def test_tiny_rloo_and_dpo_defaults(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    rloo = {s["name"]: s for s in load_recipe("recipes/tiny/rloo.yaml", [f"base_model.path={tmp_path}"])["stages"]}
    assert (rloo["rloo"]["from"], rloo["rloo"]["reward_model"]) == ("sft", "reward")
    dpo = {s["name"]: s for s in load_recipe("recipes/tiny/dpo.yaml", [f"base_model.path={tmp_path}"])["stages"]}
    assert (dpo["dpo"]["from"], dpo["dpo"]["reward_model"]) == ("sft", None)


def test_latest_policy_is_the_default_from(tmp_path):
    """sft -> dpo -> reward -> ppo: ppo starts from dpo (the latest policy), scored by reward; reward from dpo."""
    r = load_recipe(write(tmp_path, recipe(stage("sft"), stage("dpo"), stage("reward"), stage("ppo"))))
    s = {x["name"]: x for x in r["stages"]}
    assert s["dpo"]["from"] == "sft"
    assert s["reward"]["from"] == "dpo"
    assert (s["ppo"]["from"], s["ppo"]["reward_model"]) == ("dpo", "reward")


def test_explicit_links_win(tmp_path):
    """Explicit `from` and `reward_model` are kept: two reward models, ppo picks the first; rloo from ppo."""
    r = load_recipe(write(tmp_path, recipe(
        stage("sft"), stage("reward", name="rm_a"), stage("dpo"), stage("reward", name="rm_b"),
        stage("ppo", reward_model="rm_a", **{"from": "sft"}), stage("rloo"))))
    s = {x["name"]: x for x in r["stages"]}
    assert (s["ppo"]["from"], s["ppo"]["reward_model"]) == ("sft", "rm_a")
    assert (s["rloo"]["from"], s["rloo"]["reward_model"]) == ("ppo", "rm_b"), "defaults: latest policy, latest RM"
    assert s["rm_b"]["from"] == "dpo"


# ------------------------------------------------------------------------------------------- merge
def _perturb_lora_b(model) -> None:
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.1)


@pytest.fixture(scope="module")
def adapters(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    """A perturbed CAUSAL_LM and a perturbed SEQ_CLS LoRA adapter on the tiny Llama, each with its tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("adapters")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    made = {}
    for task, cls, kwargs in (("CAUSAL_LM", AutoModelForCausalLM, {}),
                              ("SEQ_CLS", AutoModelForSequenceClassification, {"num_labels": 1})):
        model = get_peft_model(cls.from_pretrained(tiny_llama, **kwargs),
                               LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type=task))
        _perturb_lora_b(model)
        made[task] = root / task.lower()
        model.save_pretrained(made[task])
        tokenizer.save_pretrained(made[task])
    return made


def _input_ids(tokenizer):
    return tokenizer("Context: Ada has a cat. Question: What animal does Ada have?", return_tensors="pt").input_ids


@pytest.mark.numerics
def test_merge_causal_lm_adapter(adapters, tiny_llama, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.modeling import load_adapter

    out = tmp_path / "merged"
    assert main(["merge", str(adapters["CAUSAL_LM"]), str(out)]) == 0
    stdout, _ = capsys.readouterr()
    assert str(out) in stdout
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= files, files
    assert "adapter_config.json" not in files and "adapter_model.safetensors" not in files
    assert not (tmp_path / ".merged.partial").exists()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = _input_ids(tokenizer)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        plain = base(ids).logits
        expected = load_adapter(base, adapters["CAUSAL_LM"]).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits
    assert (expected - plain).abs().max() > 1e-2, "the adapter must change the output for this test to mean much"
    # Merging changes the order of the sums (W + BA, then x(W + BA) instead of xW + xBA). Measured on both
    # kernel paths (AVX-512 and AVX2, 2026-11-29): 6.0e-7 at most; 1e-4 keeps 150x margin.
    torch.testing.assert_close(merged, expected, atol=1e-4, rtol=0)


@pytest.mark.numerics
def test_merge_seq_cls_adapter(adapters, tiny_llama, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finetune.modeling import load_adapter

    out = tmp_path / "merged-rm"
    assert main(["merge", str(adapters["SEQ_CLS"]), str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert not (out / "adapter_config.json").exists()

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = _input_ids(tokenizer)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1)
    with torch.no_grad():
        expected = load_adapter(base, adapters["SEQ_CLS"]).eval()(ids).logits
        merged_model = AutoModelForSequenceClassification.from_pretrained(out).eval()
        merged = merged_model(ids).logits
    # Measured on both kernel paths (AVX-512 and AVX2, 2026-11-29): 1.2e-7 at most.
    assert merged.shape == (1, 1) and merged_model.config.pad_token_id is not None
    torch.testing.assert_close(merged, expected, atol=1e-4, rtol=0)


def test_merge_into_non_empty_folder_writes_nothing(adapters, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = main(["merge", str(adapters["CAUSAL_LM"]), str(out)])
    stdout, err = capsys.readouterr()
    assert (rc, stdout) == (2, "")
    assert err.count("\n") == 1 and err.startswith(f"error: {out}: output folder is not empty"), err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"], "no partial folder left behind"


def test_merge_a_full_model_is_an_error(tiny_llama, tmp_path, capsys):
    rc = main(["merge", str(tiny_llama), str(tmp_path / "out")])
    stdout, err = capsys.readouterr()
    assert (rc, stdout) == (2, "")
    assert err.count("\n") == 1 and "holds a full model, not an adapter; nothing to merge" in err, err
    assert not (tmp_path / "out").exists()


def test_merge_from_nowhere_is_an_error(tmp_path, capsys):
    rc = main(["merge", str(tmp_path / "nope"), str(tmp_path / "out")])
    _, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'nope'}: not a model folder")


# ------------------------------------------------------------------------------------------- chat, help
def finetune(*args, stdin: str | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "finetune", *map(str, args)],
                          input=stdin if stdin is not None else "",
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def test_chat_one_prompt(tiny_llama):
    res = finetune("chat", tiny_llama, "--prompt", "What is the capital of France?", "--max-new-tokens", "5")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stdout.splitlines()) == 1, f"one answer line expected, got {res.stdout!r}"


def test_chat_interactive(tiny_llama):
    res = finetune("chat", tiny_llama, "--max-new-tokens", "3", "--system", "Be brief.", stdin="hello\n/reset\nhi\n\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("model>") == 2, res.stdout
    assert res.stdout.count("you>") == 4, "prompts: hello, /reset, hi, and the empty line that ends it"
    assert "chatting with" in res.stderr


@pytest.mark.parametrize("what", ["missing", "empty-folder", "file"])
def test_chat_on_a_non_model_is_one_line(tmp_path, capsys, what):
    target = tmp_path / "x"
    if what == "empty-folder":
        target.mkdir()
    elif what == "file":
        target.write_text("not a model")
    rc = main(["chat", str(target), "--prompt", "hi"])
    out, err = capsys.readouterr()
    assert (rc, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith(f"error: {target}: not a model folder"), err


def test_help_lists_every_command():
    res = finetune("--help", timeout=60)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    listed = set()
    for line in res.stdout.splitlines():
        words = line.split()
        if line.startswith("    ") and words:
            listed.add(words[0])
    assert {"run", "validate", "tiny", "score", "eval", "merge", "chat"} <= listed, res.stdout


def test_building_the_parser_imports_no_torch():
    code = dedent("""
        import json, sys
        from finetune.cli import build_parser
        parser = build_parser()
        parser.parse_args(["chat", "m", "--prompt", "x"])
        parser.parse_args(["merge", "a", "b"])
        print(json.dumps({m: m in sys.modules for m in ("torch", "transformers", "peft", "trl", "datasets")}))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[-1]) == dict.fromkeys(("torch", "transformers", "peft", "trl",
                                                                      "datasets"), False)
