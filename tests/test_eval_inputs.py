"""Eval tasks, eval data and chat templates a user hands the toolkit: one `error:` line, exit 2, before any
model loads or trains. Each case is a row of the bad-input table of the issue that asked for it: a string
where a list belongs (once read letter by letter), a quoted number, a misspelt placeholder, null or
non-text answers, a SQuAD question without text, non-UTF-8 bytes, a model without a chat template."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import REPO

from finetune.cli import main

ROWS = [{"id": "q1", "context": "Brazil won the cup in 2002.", "question": "Who won?",
         "answers": {"text": ["Brazil"], "answer_start": [0]}}]


def write_task(tmp_path, rows=ROWS, data_text: bytes | None = None, **fields) -> str:
    data = tmp_path / "rows.jsonl"
    data.write_bytes(data_text if data_text is not None else "".join(json.dumps(r) + "\n" for r in rows).encode())
    task = {"metric": "squad_v1", "data": str(data), "format": "hf_rows",
            "prompt": "Context: {context}\nQuestion: {question}", **fields}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task), encoding="utf-8")
    return str(path)


def run(capsys, *args) -> tuple[int, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, err


def assert_one_line(rc: int, err: str, *fragments: str) -> None:
    assert "Traceback" not in err, err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, (rc, err)
    for fragment in fragments:
        assert fragment in err, (fragment, err)


@pytest.mark.parametrize("fields, fragments", [
    ({"stop": "Question:"}, ["stop: must be a list of non-empty strings, got 'Question:'"]),
    ({"abstain": "unanswerable"}, ["abstain: must be a list of strings, got 'unanswerable'"]),
    ({"max_new_tokens": "16"}, ["max_new_tokens: must be a whole number >= 1, got '16'"]),
    ({"max_new_tokens": 0}, ["max_new_tokens: must be a whole number >= 1, got 0"]),
    ({"few_shot": True}, ["few_shot: must be a whole number >= 0, got True"]),
    ({"chat_template": "yes"}, ["chat_template: must be true or false, got 'yes'"]),
    ({"prompt": "Context: {contxt}\nQuestion: {question}"},
     ["prompt: unknown placeholder {contxt}", "did you mean {context}?"]),
    ({"prompt": "Answer {"}, ["prompt: Single '{' encountered"]),
], ids=["stop-string", "abstain-string", "max-new-tokens-string", "max-new-tokens-zero", "few-shot-bool",
        "chat-template-string", "misspelt-placeholder", "lone-brace"])
def test_bad_task_field(fields, fragments, tmp_path, capsys):
    task = write_task(tmp_path, **fields)
    rc, err = run(capsys, "eval", str(tmp_path / "no-model-needed"), "--task", task)
    assert_one_line(rc, err, f"error: {task}: ", *fragments)


@pytest.mark.parametrize("row, fragment", [
    ({"answers": {"text": [None], "answer_start": [0]}}, "row 0: answers must be a list of texts, got [None]"),
    ({"answers": {"text": "Brazil", "answer_start": [0]}}, "row 0: answers must be a list of texts, got 'Brazil'"),
    ({"answers": {"text": [7], "answer_start": [0]}}, "row 0: answers must be a list of texts, got [7]"),
    ({"context": None}, "row 0: `context` must be text, got None"),
    ({"question": ""}, "row 0: `question` must be non-empty text"),
    ({"answers": None}, "row 0: missing or malformed field"),
], ids=["null-answer", "answer-string", "integer-answer", "null-context", "empty-question", "null-answers"])
def test_bad_eval_row_fails_before_any_model_loads(row, fragment, tmp_path, capsys):
    task = write_task(tmp_path, rows=[{**ROWS[0], **row}])
    rc, err = run(capsys, "eval", str(tmp_path / "no-model-needed"), "--task", task)
    assert_one_line(rc, err, fragment)


@pytest.mark.parametrize("answer, fragment", [(None, "row 0: answers must be a list of texts, got [None]"),
                                              (1994, "row 0: answers must be a list of texts, got [1994]")])
def test_bad_open_qa_answer(answer, fragment, tmp_path, capsys):
    data = tmp_path / "open.jsonl"
    data.write_text(json.dumps({"question": "When?", "answer": answer}) + "\n")
    task = tmp_path / "open.yaml"
    task.write_text(yaml.safe_dump({"data": str(data), "format": "open_qa", "prompt": "Q: {question}"}))
    rc, err = run(capsys, "eval", str(tmp_path / "x"), "--task", str(task))
    assert_one_line(rc, err, fragment)


def test_squad_question_without_text(tmp_path, capsys):
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": [
        {"id": "abc", "answers": [{"text": "c", "answer_start": 0}]}]}]}]}
    data = tmp_path / "squad.json"
    data.write_text(json.dumps(squad))
    task = tmp_path / "squad.yaml"
    task.write_text(yaml.safe_dump({"data": str(data), "format": "squad_json", "prompt": "{question}"}))
    rc, err = run(capsys, "eval", str(tmp_path / "x"), "--task", str(task))
    assert_one_line(rc, err, "article 0, question abc: missing field 'question'")


def test_task_and_data_that_are_not_utf8(tmp_path, capsys):
    task = write_task(tmp_path)
    with open(task, "ab") as f:
        f.write("# caf\u00e9\n".encode("latin-1"))
    rc, err = run(capsys, "eval", str(tmp_path / "x"), "--task", task)
    assert_one_line(rc, err, "eval task is not UTF-8: byte 0xe9 at offset")
    task = write_task(tmp_path, data_text=json.dumps(ROWS[0]).replace("Brazil", "Br\u00e9sil").encode("latin-1"))
    rc, err = run(capsys, "eval", str(tmp_path / "x"), "--task", task)
    assert_one_line(rc, err, "rows.jsonl: eval data is not UTF-8: byte 0xe9")


def test_duplicate_key_in_a_task(tmp_path, capsys):
    task = write_task(tmp_path)
    with open(task, "a") as f:
        f.write("metric: squad_v2\n")
    rc, err = run(capsys, "eval", str(tmp_path / "x"), "--task", task)
    assert_one_line(rc, err, "duplicate key 'metric'")


def test_recipe_naming_a_misspelt_or_broken_task_fails_validate(tiny_llama, tmp_path, capsys):
    """`finetune validate` catches what the run's eval step would refuse after every stage had trained."""
    recipe = tmp_path / "r.yaml"
    base = {"base_model": {"path": str(tiny_llama)},
            "data": {"chat": {"path": str(REPO / "recipes/data/tiny_chat.jsonl")}},
            "stages": [{"kind": "sft", "data": ["chat"]}]}
    recipe.write_text(yaml.safe_dump({**base, "eval": {"tasks": ["squad_v1_tny"]}}))
    rc, err = run(capsys, "validate", str(recipe))
    assert_one_line(rc, err, "eval.tasks[0]: eval task 'squad_v1_tny' not found")
    task = write_task(tmp_path, rows=[{**ROWS[0], "context": None}])
    recipe.write_text(yaml.safe_dump({**base, "eval": {"tasks": [task]}}))
    rc, err = run(capsys, "validate", str(recipe))
    assert_one_line(rc, err, "eval.tasks[0]:", "row 0: `context` must be text")


def test_chat_template_file_that_is_not_utf8(tiny_llama, tmp_path, capsys):
    template = tmp_path / "t.jinja"
    template.write_bytes("{{ 'caf\u00e9' }}".encode("latin-1"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"base_model": {"path": str(tiny_llama), "chat_template": str(template)},
                                      "data": {"chat": {"path": str(REPO / "recipes/data/tiny_chat.jsonl")}},
                                      "stages": [{"kind": "sft", "data": ["chat"]}]}))
    rc, err = run(capsys, "validate", str(recipe))
    assert_one_line(rc, err, "base_model.chat_template:", "chat template is not UTF-8: byte 0xe9 at offset 7")


def test_chat_task_on_a_model_without_chat_template(tiny_llama, tmp_path, capsys):
    import shutil

    model = tmp_path / "no-template"
    shutil.copytree(tiny_llama, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    task = write_task(tmp_path, chat_template=True)
    rc, err = run(capsys, "eval", str(model), "--task", task, "--output-dir", str(tmp_path / "out"))
    assert "Traceback" not in err
    err = err.strip().splitlines()[-1] + "\n"  # after the weight-loading progress bar: the one error line
    assert_one_line(rc, err, "chat_template: true, but the model's tokenizer has no chat template",
                    "set base_model.chat_template")


@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--batch-size", "-3"), ("--limit", "-1"),
                                           ("--max-new-tokens", "0"), ("--limit", "ten")])
def test_bad_eval_numbers_are_usage_errors(option, value, tmp_path, capsys):
    """--batch-size 0 was a traceback after the model loaded; --limit -1 silently scored all but the last row."""
    with pytest.raises(SystemExit) as exit_:
        main(["eval", str(tmp_path), "--task", "squad_v1_tiny", option, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"finetune eval: error: argument {option}: expected a whole number "
                                            f">= 1, got {value if value == 'ten' else int(value)}").replace(
        "got ten", "got 'ten'")


def test_tiny_hidden_size_not_a_multiple_of_the_heads(tmp_path, capsys):
    rc, err = run(capsys, "tiny", "--out", str(tmp_path / "t"), "--hidden", "6")
    assert_one_line(rc, err, "--hidden 6: must be a multiple of 4")
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("template, fragment", [
    ("{% for m in messages %}{{ m.content }{% endfor %}", "chat template line 1: unexpected '}'"),
    ('{{ raise_exception("roles must alternate") }}', "fails on a plain user/assistant conversation "
                                                      "(TemplateError: roles must alternate)"),
    ("{% for m in messages %}{{ m.content.upper(1) }}{% endfor %}", "(TypeError: str.upper() takes no arguments"),
], ids=["syntax", "raises", "type-error"])
def test_broken_chat_template_fails_validate(template, fragment, tiny_llama, tmp_path, capsys):
    """These passed validate and then trained into a misleading message or the audit child's traceback."""
    (tmp_path / "t.jinja").write_text(template)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"base_model": {"path": str(tiny_llama),
                                                     "chat_template": str(tmp_path / "t.jinja")},
                                      "data": {"chat": {"path": str(REPO / "recipes/data/tiny_chat.jsonl")}},
                                      "stages": [{"kind": "sft", "data": ["chat"]}]}))
    rc, err = run(capsys, "validate", str(recipe))
    assert_one_line(rc, err, "base_model.chat_template:", fragment)


def test_chat_template_failing_on_one_data_row_names_it(tiny_llama, tmp_path, capsys):
    """A template that renders user/assistant turns but breaks on a system turn: the run names the row."""
    (tmp_path / "t.jinja").write_text(
        "{% for m in messages %}{% if m.role == 'system' %}{{ m.content.upper(1) }}{% else %}{{ m.role }}: "
        "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}"
        "{% endif %}\n{% endif %}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "base_model": {"path": str(tiny_llama), "chat_template": str(tmp_path / "t.jinja")},
        "data": {"chat": {"path": str(REPO / "recipes/data/tiny_chat.jsonl"), "max_rows": 16}},
        "stages": [{"kind": "sft", "data": ["chat"], "train": {"max_steps": 1}}]}))
    rc, err = run(capsys, "run", str(recipe), "--output-dir", str(tmp_path / "run"))
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1] + "\n"
    assert_one_line(rc, line, "the chat template fails on data row", "(roles system/user/assistant)",
                    "TypeError: str.upper() takes no arguments")
