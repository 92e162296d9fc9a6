"""Tiny models: real architectures saved and reloaded like hub models, a corpus-trained tokenizer, ChatML."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DATA

from finetune.cli import main
from finetune.errors import UserError
from finetune.tiny import SPECIAL_TOKENS, build_tiny

CONVERSATION = [
    {"role": "system", "content": "Give short and correct answers."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris"},
]


@pytest.fixture(params=["llama", "qwen2"])
def tiny(request):
    """(arch, folder) for each architecture, from the session fixtures."""
    return request.param, request.getfixturevalue(f"tiny_{request.param}")


def test_reloads_like_a_hub_model(tiny):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    arch, path = tiny
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == arch
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|im_end|>"
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.pad_token_id == config.pad_token_id and tok.eos_token_id == config.eos_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    # Every special token is one token, and the embedding covers the whole vocabulary.
    for special in SPECIAL_TOKENS:
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1, special
    assert model.get_input_embeddings().num_embeddings == len(tok) == config.vocab_size


def test_chat_template_renders_chatml(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny[1])
    text = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == ("<|im_start|>system\nGive short and correct answers.<|im_end|>\n"
                    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                    "<|im_start|>assistant\nParis<|im_end|>\n")
    prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert not tok.apply_chat_template(CONVERSATION[:2], tokenize=False).endswith("<|im_start|>assistant\n")
    # The generation markers give an assistant mask covering exactly the answer and its <|im_end|>.
    out = tok.apply_chat_template(CONVERSATION, return_assistant_tokens_mask=True, return_dict=True)
    marked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(marked) == "Paris<|im_end|>"


def test_tokenizer_learned_the_corpus_and_round_trips(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny[1])
    for word in ("capital", "frog", "legs", "Question", "answer"):
        assert len(tok(word, add_special_tokens=False)["input_ids"]) <= 2, word
    # A word has the same tokens wherever it stands: after a space, after a newline, at the start.
    for word in ("capital", "Lindon", "Marshgate"):
        alone = tok(word, add_special_tokens=False)["input_ids"]
        assert tok(f"x {word}", add_special_tokens=False)["input_ids"][-len(alone):] == alone
        assert tok(f"x\n{word}", add_special_tokens=False)["input_ids"][-len(alone):] == alone
    assert tok.bos_token is None and tok("hi")["input_ids"] == tok("hi", add_special_tokens=False)["input_ids"]
    for text in ("Context: Soren has 4 brothers and 2 sisters.\nQuestion: How many sisters does Soren have?",
                 "  spaces,\ttabs and ünïcödé → 東京 🙂  ", "<|im_start|>user\nhi<|im_end|>\n"):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text


def test_generate_runs_and_stops(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny[1]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    prompt = tok.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True, return_tensors="pt",
                                     return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=5)
    n = prompt["input_ids"].shape[1]
    assert 1 <= out.shape[1] - n <= 5
    assert torch.equal(out[0, :n], prompt["input_ids"][0])
    # Greedy decoding is deterministic.
    with torch.no_grad():
        assert torch.equal(model.generate(**prompt, max_new_tokens=5), out)


def test_tiny_json_records_the_build(tiny):
    arch, path = tiny
    info = json.loads((path / "tiny.json").read_text())
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    assert info["arch"] == arch
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["vocab_size"] == model.config.vocab_size and info["seed"] == 0
    assert info["corpus"] and all(str(DATA) in f or "eval" in f for f in info["corpus"])


# --- refusals -------------------------------------------------------------------------------------------


def test_folder_with_foreign_files_is_refused_untouched(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="not made by `finetune tiny`"):
        build_tiny(out, "llama", corpus=[DATA], vocab_size=300)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "precious"


def test_rebuilding_needs_overwrite(tiny_llama):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_llama.iterdir()}
    with pytest.raises(UserError, match="--overwrite"):
        build_tiny(tiny_llama, "llama", corpus=[DATA], vocab_size=300)
    assert {p.name: p.stat().st_mtime_ns for p in tiny_llama.iterdir()} == before


def test_unknown_arch_is_refused(tmp_path):
    with pytest.raises(UserError, match="unknown tiny architecture 'gpt9'.*llama, qwen2"):
        build_tiny(tmp_path / "m", "gpt9", corpus=[DATA])
    assert not (tmp_path / "m").exists()


def test_missing_corpus_is_refused(tmp_path):
    with pytest.raises(UserError, match="nosuch.txt: corpus file or folder not found"):
        build_tiny(tmp_path / "m", "llama", corpus=[tmp_path / "nosuch.txt"])
    assert not (tmp_path / "m").exists()


def test_empty_corpus_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no corpus text found"):
        build_tiny(tmp_path / "m", "llama", corpus=[tmp_path / "empty"])


# --- reproducibility and the CLI ------------------------------------------------------------------------


def test_same_seed_gives_identical_weights_and_tokenizer(tmp_path):
    from safetensors.torch import load_file

    a = build_tiny(tmp_path / "a", "qwen2", corpus=[DATA], vocab_size=400, seed=3, hidden=32, layers=1)
    b = build_tiny(tmp_path / "b", "qwen2", corpus=[DATA], vocab_size=400, seed=3, hidden=32, layers=1)
    c = build_tiny(tmp_path / "c", "qwen2", corpus=[DATA], vocab_size=400, seed=4, hidden=32, layers=1)
    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert wa.keys() == wb.keys() and wa
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    info = json.loads((a / "tiny.json").read_text())
    assert info["hidden"] == 32 and info["layers"] == 1 and info["seed"] == 3


def test_overwrite_rebuilds(tmp_path):
    out = build_tiny(tmp_path / "m", "llama", corpus=[DATA], vocab_size=300, hidden=32, layers=1)
    build_tiny(out, "qwen2", corpus=[DATA], vocab_size=300, hidden=32, layers=1, overwrite=True)
    assert json.loads((out / "tiny.json").read_text())["arch"] == "qwen2"
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"


def test_cli_tiny(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "cli-qwen2"
    argv = ["tiny", "--arch", "qwen2", "--out", str(out), "--corpus", str(DATA), "--vocab-size", "512",
            "--hidden", "32", "--layers", "1"]
    assert main(argv) == 0
    assert f"built tiny qwen2 model in {out}" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "qwen2" and model.config.num_hidden_layers == 1
    assert model.config.vocab_size <= 512
    capsys.readouterr()
    # Again without --overwrite: a one-line error, exit 2.
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and err.count("\n") == 1
