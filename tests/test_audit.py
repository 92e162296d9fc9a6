"""The label audit through the real pipeline on the tiny Llama: EOS supervision, truncation, masking."""

from __future__ import annotations

import json

import pytest
from conftest import sft_recipe

from finetune.audit import _cut_positions
from finetune.errors import UserError
from finetune.pipeline import run_recipe
from finetune.recipe import load_recipe
from finetune.tiny import CHAT_TEMPLATE

CHATML = CHAT_TEMPLATE.read_text()
SUPERVISED_ANSWER = "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
# The same ChatML, but the assistant's <|im_end|> is rendered after the generation block: never a label.
EOS_OUTSIDE = CHATML.replace(SUPERVISED_ANSWER,
                             "{% generation %}{{ message['content'] }}{% endgeneration %}{{ '<|im_end|>' }}")
# ChatML that only marks the conversation's last message for the loss, and only when it is an assistant turn.
LAST_ONLY = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' and loop.last %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- else %}{{ message['content'] + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


def test_templates_are_what_the_tests_think():
    assert SUPERVISED_ANSWER in CHATML, "chatml.jinja changed; update the templates in this file"
    assert EOS_OUTSIDE != CHATML and "{% generation %}" in EOS_OUTSIDE


def template_file(tmp_path, text, name="template.jinja"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run(recipe, write_recipe, tmp_path):
    return run_recipe(load_recipe(write_recipe(recipe)), output_dir=str(tmp_path / "run"))


def assert_not_trained(tmp_path):
    stage = tmp_path / "run" / "sft"
    assert not (stage / "model").exists()
    assert not (stage / "manifest.json").exists()


def manifest(tmp_path):
    return json.loads((tmp_path / "run" / "sft" / "manifest.json").read_text())


def small(recipe, rows=32):
    recipe["data"]["chat"]["max_rows"] = rows
    return recipe


# --- EOS never supervised -----------------------------------------------------------------------------


def test_eos_outside_generation_block_is_refused_before_training(tiny_llama, write_recipe, tmp_path):
    recipe = small(sft_recipe(tiny_llama, train={"max_steps": 2}))
    recipe["base_model"]["chat_template"] = template_file(tmp_path, EOS_OUTSIDE)
    with pytest.raises(UserError, match="EOS token is never supervised") as err:
        run(recipe, write_recipe, tmp_path)
    assert "audit.require_eos" in str(err.value) and "\n" not in str(err.value)
    assert_not_trained(tmp_path)


def test_eos_check_can_be_switched_off(tiny_llama, write_recipe, tmp_path):
    recipe = small(sft_recipe(tiny_llama, audit={"require_eos": False}, train={"max_steps": 2}))
    recipe["base_model"]["chat_template"] = template_file(tmp_path, EOS_OUTSIDE)
    out = run(recipe, write_recipe, tmp_path)
    report = out["sft"]["label_audit"]
    assert report["rows"] == 32 and report["rows_with_supervised_eos"] == 0
    assert report["supervised_tokens"] > 0 and report["rows_without_supervised_tokens"] == 0
    assert (tmp_path / "run" / "sft" / "model" / "model.safetensors").exists()


# --- truncation -----------------------------------------------------------------------------------------


def test_truncation_into_answers_is_refused(tiny_llama, write_recipe, tmp_path):
    recipe = small(sft_recipe(tiny_llama, train={"max_steps": 2, "max_length": 20}))
    with pytest.raises(UserError, match="truncation") as err:
        run(recipe, write_recipe, tmp_path)
    msg = str(err.value)
    assert "max_length=20" in msg and "audit.max_truncated_share" in msg and "\n" not in msg
    count = int(msg.split("cuts into the answer of ")[1].split(" of ")[0])
    assert 0.05 * 32 < count <= 32 and f"{count} of 32 rows" in msg
    assert_not_trained(tmp_path)


def test_truncation_allowed_by_share_trains_and_reports(tiny_llama, write_recipe, tmp_path):
    # 20 tokens cut into most answers and remove some entirely, yet leave rows to train on.
    recipe = small(sft_recipe(tiny_llama, audit={"max_truncated_share": 1.0},
                              train={"max_steps": 2, "max_length": 20}))
    run(recipe, write_recipe, tmp_path)
    report = manifest(tmp_path)["label_audit"]
    assert report["max_length"] == 20
    assert report["rows_answer_truncated"] > 0.05 * report["rows"]
    assert 0 <= report["rows_answer_fully_truncated"] < report["rows_answer_truncated"]
    # The audit looks at untruncated rows: their lengths go past max_length.
    assert report["tokens"]["max"] > 20
    assert (tmp_path / "run" / "sft" / "model").is_dir()


def test_truncation_that_removes_every_answer_is_a_user_error(tiny_llama, write_recipe, tmp_path):
    recipe = small(sft_recipe(tiny_llama, audit={"max_truncated_share": 1.0},
                              train={"max_steps": 2, "max_length": 12}))
    with pytest.raises(UserError, match="truncat"):
        run(recipe, write_recipe, tmp_path)
    assert_not_trained(tmp_path)


def test_default_max_length_reports_no_truncation_and_eos_everywhere(tiny_llama, write_recipe, tmp_path):
    run(small(sft_recipe(tiny_llama, train={"max_steps": 2})), write_recipe, tmp_path)
    report = manifest(tmp_path)["label_audit"]
    assert report["rows"] == 32
    assert report["rows_answer_truncated"] == 0 and report["rows_answer_fully_truncated"] == 0
    assert report["rows_with_supervised_eos"] == report["rows"]
    assert report["rows_without_supervised_tokens"] == 0
    assert 0 < report["supervised_share"] < 1
    assert report["tokens"]["min"] <= report["tokens"]["mean"] <= report["tokens"]["max"] <= 128


# --- a conversation that ends with a user turn ----------------------------------------------------------


def test_conversation_ending_with_user_turn_is_a_one_line_error(tiny_llama, write_recipe, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "How many legs does a frog have?"},
                      {"role": "assistant", "content": "A frog has 4 legs."}]},
        {"messages": [{"role": "user", "content": "What is the capital of France?"},
                      {"role": "assistant", "content": "Paris"},
                      {"role": "user", "content": "Thanks!"}]},
    ] * 4
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = sft_recipe(tiny_llama, {"chat": {"path": str(data)}}, train={"max_steps": 2})
    recipe["base_model"]["chat_template"] = template_file(tmp_path, LAST_ONLY)
    with pytest.raises(UserError, match="no supervised assistant token") as err:
        run(recipe, write_recipe, tmp_path)
    msg = str(err.value)
    assert msg.startswith("stage sft: label audit:") and "\n" not in msg
    assert err.value.__suppress_context__  # `from None`: no chained TRL traceback
    assert_not_trained(tmp_path)


def test_last_only_template_trains_when_every_conversation_ends_with_the_assistant(
        tiny_llama, write_recipe, tmp_path):
    recipe = small(sft_recipe(tiny_llama, train={"max_steps": 2}))
    recipe["base_model"]["chat_template"] = template_file(tmp_path, LAST_ONLY)
    run(recipe, write_recipe, tmp_path)
    report = manifest(tmp_path)["label_audit"]
    assert report["rows_without_supervised_tokens"] == 0
    assert report["rows_with_supervised_eos"] == report["rows"]


# --- switched off ---------------------------------------------------------------------------------------


def test_audit_disabled_is_skipped(tiny_llama, write_recipe, tmp_path):
    # Even a recipe the audit would refuse trains when the audit is off.
    recipe = small(sft_recipe(tiny_llama, audit={"enabled": False}, train={"max_steps": 2, "max_length": 20}))
    run(recipe, write_recipe, tmp_path)
    data = manifest(tmp_path)
    assert "label_audit" in data and data["label_audit"] is None
    assert (tmp_path / "run" / "sft" / "model").is_dir()


# --- unit: positions truncation removes -------------------------------------------------------------------


@pytest.mark.parametrize(("length", "max_length", "mode", "expected"), [
    (10, 4, "keep_start", range(4, 10)),
    (10, 4, "keep_end", range(0, 6)),
    (10, 10, "keep_start", range(0)),
    (10, 10, "keep_end", range(0)),
    (3, 4, "keep_end", range(0)),
    (10, None, "keep_start", range(0)),
    (10, None, "keep_end", range(0)),
    (5, 1, "keep_end", range(0, 4)),
])
def test_cut_positions(length, max_length, mode, expected):
    cut = _cut_positions(length, max_length, mode)
    assert list(cut) == list(expected)
    kept = [p for p in range(length) if p not in cut]
    if max_length is not None:
        assert len(kept) == min(length, max_length)
        if length > max_length:
            assert kept == (list(range(max_length)) if mode == "keep_start"
                            else list(range(length - max_length, length)))


# ------------------------------------------------------------------ preference pairs (reward / DPO stages)
def pair_recipe(model, kind: str, **stage):
    from conftest import DATA

    train = {"max_steps": 1, "per_device_train_batch_size": 8, "gradient_checkpointing": False,
             "save_strategy": "no", **stage.pop("train", {})}
    return {"name": "p", "seed": 1, "base_model": {"path": str(model)},
            "data": {"prefs": {"path": str(DATA / "tiny_prefs.jsonl"), "max_rows": 32}},
            "stages": [{"name": kind, "kind": kind, "data": ["prefs"], **stage, "train": train}]}


@pytest.mark.parametrize("kind", ["dpo", "reward"])
def test_preference_truncation_into_answers_is_refused(tiny_llama, write_recipe, tmp_path, kind):
    with pytest.raises(UserError, match=r"cuts into the answers of \d+ of 32 pairs") as err:
        run(pair_recipe(tiny_llama, kind, train={"max_length": 30}), write_recipe, tmp_path)
    assert "audit.max_truncated_share" in str(err.value)
    assert_not_trained(tmp_path)
    with pytest.raises(UserError, match="every prompt fills the whole window"):
        run(pair_recipe(tiny_llama, kind, train={"max_length": 8}), write_recipe, tmp_path)


def test_preference_audit_report_in_manifest(tiny_llama, write_recipe, tmp_path):
    out = run(pair_recipe(tiny_llama, "dpo", audit={"max_truncated_share": 1.0}, train={"max_length": 30}),
              write_recipe, tmp_path)["dpo"]
    audit = out["label_audit"]
    assert audit["pairs"] == 32 and audit["max_length"] == 30 and audit["pairs_answer_truncated"] > 0
