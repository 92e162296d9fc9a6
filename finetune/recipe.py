"""Load a recipe YAML: `extends:`, command-line overrides, validation and defaults, before anything heavy.

Errors are `UserError`s that name the file and the dotted key, e.g.
`recipes/x.yaml: stages[0].train.learnig_rate: unknown SFTConfig field; did you mean 'learning_rate'?`
"""

from __future__ import annotations

import copy
import difflib
import json
import math
from pathlib import Path
from typing import Any

import yaml

from finetune import chat_templates, schema, userfiles
from finetune.errors import UserError
from finetune.recipe_types import Recipe
from finetune.schema import HUB_ID, REQUIRED, Key, ListOf, MapOf, Section
from finetune.trl_fields import check_value_type, config_class_name, config_fields
from finetune.userfiles import parse_yaml

DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


def did_you_mean(word: str, options) -> str:
    """`; did you mean 'x'?` for the option closest to `word` (difflib, cutoff 0.6), or "" when none is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def read_yaml(path: Path) -> dict:
    """Read one recipe YAML mapping (finetune.userfiles's rules), turning every failure into a one-line error.

    Raises UserError naming `path` when the file is unreadable or not valid YAML, is empty, or holds
    something other than a mapping.
    """
    data = userfiles.read_yaml(path, "recipe file")
    if data is None:
        raise UserError(f"{path}: recipe is empty")
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping, got {type(data).__name__}")
    return data


def merge(base: Any, over: Any) -> Any:
    """Deep-merge `over` onto `base`. Stage lists merge by stage name; other lists are replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(over, list) and all(_stage_like(s) for s in base + over):
        out = [copy.deepcopy(s) for s in base]
        names = [_stage_name(s) for s in out]
        for s in over:
            if _stage_name(s) in names:
                i = names.index(_stage_name(s))
                out[i] = merge(out[i], s)
            else:
                out.append(copy.deepcopy(s))
        return out
    return copy.deepcopy(over)


def _stage_like(x: Any) -> bool:
    return isinstance(x, dict) and ("kind" in x or "name" in x)


def _stage_name(stage: dict) -> str:
    return stage.get("name") or stage.get("kind")


def _load_with_extends(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise UserError(f"{path}: extends: cycle ({chain})")
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise UserError(f"{path}: extends: expected a path to a recipe, got {type(parent).__name__}")
    parent_path = (path.parent / parent)
    if not parent_path.exists():
        raise UserError(f"{path}: extends: {parent} not found (paths are relative to the recipe's folder)")
    return merge(_load_with_extends(parent_path, (*seen, path.resolve())), data)


def apply_override(recipe: dict, assignment: str, source: str = "command line") -> None:
    """Apply one `a.b.c=value` override in place; value is parsed as YAML (numbers, bools, lists).

    Missing sections are created; a list item is named by its index or its stage name. Raises UserError
    naming `source` and the key when the assignment has no `=` or no key, a list index is out of range, no
    stage has the given name, or the path runs through a value or ends on a list instead of a section.
    """
    if "=" not in assignment:
        raise UserError(f"{source}: override '{assignment}' must look like key.sub=value")
    dotted, raw = assignment.split("=", 1)
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = [p for p in dotted.strip().split(".") if p]
    if not parts:
        raise UserError(f"{source}: override '{assignment}' has no key")
    node: Any = recipe
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = _list_item(node, part, here, source)
        elif isinstance(node, dict):
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        else:
            raise UserError(f"{source}: override {dotted}: {'.'.join(parts[:i]) or part} is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        raise UserError(f"{source}: override {dotted}: name a key inside the list item, e.g. {dotted}.key=value")
    if not isinstance(node, dict):
        raise UserError(f"{source}: override {dotted}: parent is a value, not a section")
    node[last] = value


def _list_item(items: list, part: str, here: str, source: str) -> Any:
    if part.isdigit():
        if int(part) >= len(items):
            raise UserError(f"{source}: override {here}: index out of range (the list has {len(items)} items)")
        return items[int(part)]
    names = [_stage_name(s) for s in items if isinstance(s, dict)]
    for s in items:
        if isinstance(s, dict) and _stage_name(s) == part:
            return s
    raise UserError(f"{source}: override {here}: no stage named '{part}'{did_you_mean(part, names)}")


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "true/false", list: "list", dict: "mapping"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check(spec: Any, value: Any, key: str, file: str) -> Any:
    """Validate `value` against `spec`, returning it with defaults filled in. Raises UserError `file: key: ...`."""
    if isinstance(spec, Section):
        return _check_section(spec, value, key, file)
    if isinstance(spec, MapOf):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise UserError(f"{file}: {key}: expected a mapping of names, got {type(value).__name__}")
        return {k: _check(spec.value, v, f"{key}.{k}", file) for k, v in value.items()}
    if isinstance(spec, ListOf):
        if not isinstance(value, list):
            raise UserError(f"{file}: {key}: expected a list, got {type(value).__name__}")
        return [_check(spec.item, v, f"{key}[{i}]", file) for i, v in enumerate(value)]
    return _check_key(spec, value, key, file)


def _check_section(spec: Section, value: Any, key: str, file: str) -> dict | None:
    """A mapping with fixed keys: unknown keys refused (with a suggestion), required ones demanded, every
    missing one filled with its default (a copy). An omitted section with default None stays None."""
    if value is None:
        return None if spec.default is None else _check_section(spec, {}, key, file)
    if not isinstance(value, dict):
        raise UserError(f"{file}: {key}: expected a mapping, got {type(value).__name__}")
    for k in value:
        if k not in spec.keys:
            raise UserError(f"{file}: {_join(key, k)}: unknown key{did_you_mean(str(k), spec.keys)}")
    out = {}
    for k, sub in spec.keys.items():
        if k in value:
            out[k] = _check(sub, value[k], _join(key, k), file)
        elif isinstance(sub, Key) and sub.default is REQUIRED:
            raise UserError(f"{file}: {_join(key, k)}: required key missing ({sub.help})")
        elif isinstance(sub, Key):
            out[k] = copy.deepcopy(sub.default)
        elif isinstance(sub, Section):
            out[k] = _check_section(sub, None, _join(key, k), file)
        else:
            out[k] = {} if isinstance(sub, MapOf) else []
    return out


def _check_key(spec: Key, value: Any, key: str, file: str) -> Any:
    """A leaf value: its type (a bool is not a number), its choices and its minimum."""
    if value is None:
        if spec.default is REQUIRED:
            raise UserError(f"{file}: {key}: must not be empty ({spec.help})")
        return None
    if not isinstance(value, spec.types) or (isinstance(value, bool) and bool not in spec.types):
        raise UserError(f"{file}: {key}: expected {_type_name(spec.types)}, got {value!r}")
    if spec.choices and value not in spec.choices:
        hint = did_you_mean(str(value), [str(c) for c in spec.choices])
        raise UserError(f"{file}: {key}: '{value}' is not one of {', '.join(map(str, spec.choices))}{hint}")
    if spec.minimum is not None and value < spec.minimum:
        raise UserError(f"{file}: {key}: must be at least {spec.minimum:g}, got {value!r}")
    return value


def _join(key: str, sub: Any) -> str:
    return f"{key}.{sub}" if key else str(sub)


def _check_train_block(kind: str, train: dict, key: str, file: str) -> None:
    fields = config_fields(kind)
    cls = config_class_name(kind)
    for name, value in train.items():
        if name not in fields:
            raise UserError(f"{file}: {key}.{name}: unknown {cls} field{did_you_mean(str(name), fields)}")
        expected = check_value_type(fields[name].annotation, value)
        if expected:
            raise UserError(f"{file}: {key}.{name}: {cls} expects {expected}, got {value!r}")
    for owned in ("output_dir", "seed"):
        if owned in train:
            raise UserError(f"{file}: {key}.{owned}: set by the toolkit; use the recipe's top-level `{owned}`")
    if kind == "kto" and train.get("per_device_train_batch_size") == 1:
        raise UserError(f"{file}: {key}.per_device_train_batch_size: KTO estimates its KL term from the other "
                        f"rows of a batch, so it needs at least 2 rows per device")
    if kind == "sft":  # the stage's `loss:` sets these from the data's kind (finetune.stages.sft.LOSS_FLAGS)
        for owned in ("assistant_only_loss", "completion_only_loss"):
            if owned in train:
                raise UserError(f"{file}: {key}.{owned}: set the stage's `loss:` instead")


def _check_local_path(value: str, key: str, file: str, kind: str) -> None:
    p = Path(value).expanduser()
    if p.exists():
        return
    looks_local = value.startswith((".", "/", "~")) or p.suffix in DATA_SUFFIXES or p.suffix == ".jinja"
    if looks_local or not HUB_ID.match(value):
        raise UserError(f"{file}: {key}: {kind} '{value}' not found (relative paths are from the working directory)")


def validate(raw: dict, file: str) -> Recipe:
    """Check a merged, overridden recipe dict and return it with every default filled in.

    Static: reads the files the recipe names (chat templates, eval and watch tasks with their questions, a
    GGUF's first bytes) but no training data and no model; imports no torch. Raises UserError
    `file: key: problem` on the first mistake."""
    recipe = _check(schema.RECIPE, raw, "", file)
    if not recipe["stages"]:
        raise UserError(f"{file}: stages: a recipe needs at least one stage")
    _check_base_model(recipe["base_model"], file)
    for name, src in recipe["data"].items():
        _check_source(name, src, file)
    seen_names: set[str] = set()
    for i, stage in enumerate(recipe["stages"]):
        _check_stage(stage, f"stages[{i}]", recipe, seen_names, file)
    _resolve_stage_links(recipe["stages"], file, recipe["base_model"]["path"])
    _check_init_text(recipe["stages"], recipe["base_model"], file)
    if recipe["eval"]:
        _check_eval_tasks(recipe["eval"]["tasks"], recipe["eval"]["limit"], file)
    _check_untemplated(recipe, file)
    return recipe


def student_lineage(stages: list[dict]) -> set[str]:
    """Names of the stages whose tokenizer is a distill `student:`'s (that stage and every stage starting
    from it, `from:` by `from:`) rather than the base model's. Needs `from` resolved."""
    out: set[str] = set()
    for stage in stages:  # in order: a stage's `from` is an earlier stage
        if (stage["kind"] == "distill" and stage["student"]) or stage["from"] in out:
            out.add(stage["name"])
    return out


def _check_untemplated(recipe: dict, file: str) -> None:
    """On a base whose local tokenizer folder has no chat template (and none set), refuse what needs one
    for a model that keeps that tokenizer (not a distill student's): a training template, a chat eval task
    (the base, or any stage not from a student, is scored) and a chat watch task on such a stage."""
    from finetune.evaluation import load_task, missing_chat_template

    bm, stages = recipe["base_model"], recipe["stages"]
    if not chat_templates.untemplated_folder(bm):
        return
    students = student_lineage(stages)
    on_base = [s for s in stages if s["name"] not in students]
    if bm["training_chat_template"] and on_base:
        raise UserError(f"{file}: base_model.training_chat_template: the model has no chat template of its own to "
                        f"be served with; set base_model.chat_template too")
    scored_on_base = recipe["eval"] and (recipe["eval"]["base"] or any(s["kind"] in schema.POLICY_KINDS
                                                                        for s in on_base))
    chat_tasks = [(f"eval.tasks[{j}]", task) for j, task in enumerate(recipe["eval"]["tasks"] if scored_on_base
                                                                          else [])]
    chat_tasks += [(f"stages[{i}].watch.task", s["watch"]["task"]) for i, s in enumerate(stages)
                   if s["watch"] and s["name"] not in students]
    for key, name in chat_tasks:
        if (task := load_task(name))["chat_template"]:
            raise UserError(f"{file}: {key}: {missing_chat_template(task)}")


def _check_base_model(bm: dict, file: str) -> None:
    """The model and tokenizer exist (a local path, or what looks like a hub id), the chat templates read and
    the training template renders as the served one."""
    _check_local_path(bm["path"], "base_model.path", file, "model")
    if bm["tokenizer"]:
        _check_local_path(bm["tokenizer"], "base_model.tokenizer", file, "tokenizer")
    if bm["gguf_file"]:  # the file is read now, whether or not a separate tokenizer makes its template moot
        from finetune.gguf_models import resolve_gguf

        try:
            resolve_gguf(bm["path"], bm["gguf_file"])
        except UserError as e:
            raise UserError(f"{file}: {e}") from None
    for key in ("chat_template", "training_chat_template"):
        if not bm[key]:
            continue
        if not Path(bm[key]).is_file():
            raise UserError(f"{file}: base_model.{key}: file '{bm[key]}' not found")
        try:
            userfiles.read_chat_template(bm[key])
        except UserError as e:
            raise UserError(f"{file}: base_model.{key}: {e}") from None
    chat_templates.fidelity_note(bm, file)  # a training template that renders another text fails here


def _check_source(name: str, src: dict, file: str) -> None:
    _check_local_path(src["path"], f"data.{name}.path", file, "data")
    for col in src["columns"]:
        if col not in schema.COLUMN_TARGETS:
            raise UserError(f"{file}: data.{name}.columns.{col}: not a standard column; use one of "
                            f"{', '.join(schema.COLUMN_TARGETS)}{did_you_mean(str(col), schema.COLUMN_TARGETS)}")


def _check_stage(stage: dict, key: str, recipe: dict, seen_names: set[str], file: str) -> None:
    """One stage: its name (defaulted to the kind, unique, not reserved), its data, its `train:` block and
    the blocks of its kind. Side effects: fills `name`, turns `data` into {source: weight or None}."""
    stage["name"] = stage["name"] or stage["kind"]
    if stage["name"] == "base" or stage["name"].endswith("-start"):
        raise UserError(f"{file}: {key}.name: '{stage['name']}' is reserved for evaluation labels (the base "
                        f"model, a distilled student before training); choose another name")
    if stage["name"] in seen_names:
        raise UserError(f"{file}: {key}.name: duplicate stage name '{stage['name']}'; give each stage a name")
    seen_names.add(stage["name"])
    stage["data"] = _stage_sources(stage["data"], recipe["data"], key, file)
    stage["train"] = stage["train"] or {}
    split = stage["eval_split"]
    if not math.isfinite(split) or split < 0 or (split >= 1 and split != int(split)):
        raise UserError(f"{file}: {key}.eval_split: use a fraction in [0, 1) or a whole count of rows")
    if stage["quantization"] and not stage["peft"]:
        raise UserError(f"{file}: {key}.quantization: a quantised base can only be trained through an "
                        f"adapter; add a `peft:` block (QLoRA) or remove `quantization`")
    _check_train_block(stage["kind"], stage["train"], f"{key}.train", file)
    _check_rewards(stage, key, file)
    _check_peft(stage, key, file)
    _check_value_model(stage, key, file)
    _check_distill(stage, key, file)
    _check_watch(stage, recipe["eval"], key, file)
    _check_sample_pairs(stage, key, file)


def _stage_sources(data: list | dict, sources: dict, key: str, file: str) -> dict[str, float | None]:
    """A stage's `data:` as {source name: weight}: a list means every row once (weight None)."""
    if isinstance(data, list) and not all(isinstance(n, str) for n in data):
        raise UserError(f"{file}: {key}.data: list data source names, or map names to weights "
                        f"({{chat: 3, alpaca: 1}})")
    weighted = isinstance(data, dict)
    named = data if weighted else {n: None for n in data}
    if not named:
        raise UserError(f"{file}: {key}.data: name at least one data source")
    for src, weight in named.items():
        if src not in sources:
            raise UserError(f"{file}: {key}.data: unknown data source '{src}'{did_you_mean(str(src), sources)}")
        if weighted and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                         or not math.isfinite(weight) or weight <= 0):
            raise UserError(f"{file}: {key}.data.{src}: weight must be a positive number, got {weight!r}")
    return {k: None if v is None else float(v) for k, v in named.items()}


def _check_eval_tasks(tasks: list, limit: int | None, file: str) -> None:
    """Every eval task resolves and the questions it scores (up to `limit`) validate: a misspelt task fails
    here, not after every stage has trained."""
    from finetune.evaluation import check_task

    for j, task in enumerate(tasks):
        if not isinstance(task, str) or not task.strip():
            raise UserError(f"{file}: eval.tasks[{j}]: name a task or give a task .yaml path, got {task!r}")
        if task.endswith((".yaml", ".yml")) and not Path(task).is_file():
            raise UserError(f"{file}: eval.tasks[{j}]: task file '{task}' not found")
        try:
            check_task(task, limit=limit)
        except UserError as e:
            raise UserError(f"{file}: eval.tasks[{j}]: {e}") from None


def _check_init_text(stages: list[dict], bm: dict, file: str) -> None:
    """Prompt tuning's `init_text` is embedded with the tokenizer saved beside the model a stage starts from
    (peft reads it there, not from base_model.tokenizer): a base model folder without one, the tokenizer
    being elsewhere, is refused."""
    folder = Path(bm["path"]).expanduser()
    if bm["gguf_file"] or not bm["tokenizer"] or not (folder / "config.json").is_file() \
            or chat_templates.has_tokenizer(folder):
        return
    for i, stage in enumerate(stages):
        peft = stage["peft"]
        if peft and peft["init_text"] and not stage["from"] and not stage["student"]:
            raise UserError(f"{file}: stages[{i}].peft.init_text: cannot read a tokenizer beside the model "
                            f"'{bm['path']}' to embed the text; drop init_text or keep the tokenizer with the model")


def _check_watch(stage: dict, eval_cfg: dict | None, key: str, file: str) -> None:
    """`watch:` on policy stages only, a task that loads, sane alarm limits, and no checkpoint selection on a
    task the final evaluation also scores (that would pick the weights on the test questions)."""
    watch = stage["watch"]
    if not watch:
        return
    if stage["kind"] not in schema.POLICY_KINDS:
        raise UserError(f"{file}: {key}.watch: a {stage['kind']} stage does not answer questions; watch a policy "
                        f"stage ({', '.join(schema.POLICY_KINDS)})")
    from finetune.evaluation import check_task

    try:
        task = check_task(watch["task"], limit=watch["questions"])
    except UserError as e:
        raise UserError(f"{file}: {key}.watch.task: {e}") from None
    if watch["stop_on_alarm"] and stage["kind"] == "ppo":
        raise UserError(f"{file}: {key}.watch.stop_on_alarm: TRL's PPOTrainer runs its loop to the end whatever a "
                        f"callback asks; the alarms are still logged and recorded. Drop stop_on_alarm")
    for option, top in (("length_drift", None), ("unextractable", 1)):
        value = watch[option]
        if not math.isfinite(value) or value <= 0 or (top is not None and value > top):
            raise UserError(f"{file}: {key}.watch.{option}: use a share above 0"
                            + (" and at most 1" if top else "") + f", got {value!r}")
    if watch["select_best"] and eval_cfg:
        from finetune.evaluation import load_task

        names = set()
        for spec in eval_cfg["tasks"]:
            try:
                names.add(load_task(spec)["name"])
            except UserError:
                pass  # a bad eval task is reported by the eval.tasks check
        if task["name"] in names:
            raise UserError(f"{file}: {key}.watch.select_best: '{task['name']}' is also in eval.tasks; choosing "
                            f"weights by it would pick them on the test questions. Watch another task (or "
                            f"another split), or drop select_best")


def _check_sample_pairs(stage: dict, key: str, file: str) -> None:
    """`sample_pairs:` on dpo stages only, with a margin in (0, 1] and a positive temperature."""
    cfg = stage["sample_pairs"]
    if not cfg:
        return
    if stage["kind"] != "dpo":
        raise UserError(f"{file}: {key}.sample_pairs: only dpo stages build pairs from sampled answers")
    if stage["eval_split"]:
        raise UserError(f"{file}: {key}.eval_split: a stage with sample_pairs has no held-out pairs (they are "
                        f"sampled from the training prompts); drop eval_split, or watch a task (watch:)")
    if not math.isfinite(cfg["margin"]) or not 0 < cfg["margin"] <= 1:
        raise UserError(f"{file}: {key}.sample_pairs.margin: use an F1 difference in (0, 1], got {cfg['margin']!r}")
    if not math.isfinite(cfg["temperature"]) or cfg["temperature"] <= 0:
        raise UserError(f"{file}: {key}.sample_pairs.temperature: use a number above 0, got {cfg['temperature']!r}")


def _check_rewards(stage: dict, key: str, file: str) -> None:
    """`rewards:` only on grpo/rloo stages, known function names, finite weights, and not also in `train`."""
    from finetune.rewards import NAMES

    rewards = stage["rewards"]
    if not rewards:
        stage["rewards"] = None
        return
    if stage["kind"] not in ("grpo", "rloo"):
        raise UserError(f"{file}: {key}.rewards: only grpo and rloo stages take reward functions")
    for name, weight in rewards.items():
        if name not in NAMES:
            raise UserError(f"{file}: {key}.rewards.{name}: unknown reward; use {', '.join(NAMES)}"
                            f"{did_you_mean(str(name), NAMES)}")
        if isinstance(weight, bool) or not math.isfinite(weight):
            raise UserError(f"{file}: {key}.rewards.{name}: weight must be a number, got {weight!r}")
    if "reward_weights" in stage["train"]:
        raise UserError(f"{file}: {key}.train.reward_weights: set the weights in the stage's `rewards:`")


def _check_peft(stage: dict, key: str, file: str) -> None:
    """Prompt-learning options only with a prompt-learning method, and such methods only where they run."""
    peft = stage["peft"]
    if not peft:
        return
    prompt_learning = peft["method"] in schema.PROMPT_LEARNING_METHODS
    for option, methods in (("num_virtual_tokens", schema.PROMPT_LEARNING_METHODS), ("init_text", ("prompt_tuning",)),
                            ("encoder_hidden_size", ("p_tuning",))):
        if peft[option] is not None and peft["method"] not in methods:
            raise UserError(f"{file}: {key}.peft.{option}: only for peft.method {' or '.join(methods)}, "
                            f"not {peft['method']}")
    if prompt_learning and stage["train"].get("packing"):
        raise UserError(f"{file}: {key}.train.packing: {peft['method']} prepends virtual tokens to every row, "
                        f"which packed rows (several examples, restarting positions) cannot take; drop packing")
    if prompt_learning and stage["kind"] != "sft":
        raise UserError(f"{file}: {key}.peft.method: {peft['method']} trains a soft prompt in sft stages only "
                        f"(TRL's {stage['kind']} trainer does not run it); use lora here")


def _check_value_model(stage: dict, key: str, file: str) -> None:
    """`value_model:` on ppo stages only; there its default is filled in: lora when the stage's `peft` is
    LoRA-family (the value model then trains an adapter too, not its 135M weights), else full."""
    if stage["kind"] != "ppo":
        if stage["value_model"] is not None:
            raise UserError(f"{file}: {key}.value_model: only ppo stages train a value model")
        return
    if stage["value_model"] is None:
        lora = bool(stage["peft"]) and stage["peft"]["method"] in schema.LORA_METHODS
        stage["value_model"] = "lora" if lora else "full"


def _check_distill(stage: dict, key: str, file: str) -> None:
    """`teacher:`/`student:` belong to distill stages; a distill stage needs a teacher; paths must exist."""
    if stage["kind"] != "distill":
        for option in ("teacher", "student"):
            if stage[option] is not None:
                raise UserError(f"{file}: {key}.{option}: only distill stages take a {option}")
        return
    if not stage["teacher"]:
        raise UserError(f"{file}: {key}.teacher: a distill stage needs a teacher (an earlier stage's name or a "
                        f"model folder)")
    student = stage["student"]
    if student is not None and student.endswith(".gguf") and not Path(student).expanduser().is_file():
        raise UserError(f"{file}: {key}.student: GGUF file '{student}' not found (relative paths are from the "
                        f"working directory)")
    if student is not None:  # a folder, or a hub id (fetched like base_model.path)
        _check_local_path(student, f"{key}.student", file, "model")


def _vocab_size(path: str) -> int | None:
    """vocab_size from a local model folder's config.json (None when it cannot be read without loading)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return (config.get("text_config") or config).get("vocab_size")


def _resolve_teacher(stage: dict, earlier: dict, base_path: str, key: str, file: str) -> None:
    """A distill stage's teacher: an earlier policy stage by name, or an existing model folder / GGUF file.

    Student and teacher must share a vocabulary (TRL compares full next-token distributions); where both
    configs are on disk, their vocab sizes are compared here rather than after the teacher has loaded.
    """
    teacher = stage["teacher"]
    if teacher in earlier:
        if earlier[teacher]["kind"] not in schema.POLICY_KINDS:
            raise UserError(f"{file}: {key}.teacher: '{teacher}' is a {earlier[teacher]['kind']} stage; a teacher "
                            f"is a causal LM (a policy stage) or a model folder")
        peft = earlier[teacher]["peft"]
        if peft and peft["method"] in schema.PROMPT_LEARNING_METHODS:
            raise UserError(f"{file}: {key}.teacher: '{teacher}' trained a soft prompt ({peft['method']}), which "
                            f"cannot be merged into the weights a teacher is loaded as; use another stage")
        teacher_path = base_path if earlier[teacher]["student"] is None else earlier[teacher]["student"]
    elif Path(teacher).expanduser().exists():
        teacher_path = teacher
    else:
        raise UserError(f"{file}: {key}.teacher: '{teacher}' is neither an earlier stage nor an existing model "
                        f"folder{did_you_mean(teacher, earlier)}")
    student_path = stage["student"] or base_path
    t, s = _vocab_size(teacher_path), _vocab_size(student_path)
    if t and s and t != s:
        raise UserError(f"{file}: {key}: the student ({student_path}) has a vocabulary of {s} tokens and the teacher "
                        f"({teacher_path}) one of {t}; distillation compares next-token distributions over one "
                        f"shared vocabulary (build the student with the teacher's tokenizer)")


def _resolve_stage_links(stages: list[dict], file: str, base_path: str) -> None:
    """Fill in and check `from`, `reward_model` and `teacher`: each names an earlier stage of a fitting kind."""
    for i, stage in enumerate(stages):
        key, earlier = f"stages[{i}]", {s["name"]: s for s in stages[:i]}
        policies = [s["name"] for s in stages[:i] if s["kind"] in schema.POLICY_KINDS]
        rewards = [s["name"] for s in stages[:i] if s["kind"] == "reward"]
        if stage["from"] is not None:
            if stage["from"] not in earlier:
                raise UserError(f"{file}: {key}.from: '{stage['from']}' is not an earlier stage"
                                f"{did_you_mean(stage['from'], earlier) or f' (earlier: {list(earlier)})'}")
            if earlier[stage["from"]]["kind"] == "reward":
                raise UserError(f"{file}: {key}.from: '{stage['from']}' is a reward model; a {stage['kind']} "
                                f"stage starts from a policy ({'/'.join(schema.POLICY_KINDS)} stage)")
        elif stage["kind"] != "sft" and policies and stage["student"] is None:
            stage["from"] = policies[-1]
        if stage["student"] is not None and stage["from"] is not None:
            raise UserError(f"{file}: {key}: set `student:` or `from:`, not both (both say where the student starts)")
        start = earlier.get(stage["from"]) if stage["from"] else None
        if start and start["peft"] and start["peft"]["method"] in schema.PROMPT_LEARNING_METHODS:
            raise UserError(f"{file}: {key}.from: '{start['name']}' trained a soft prompt "
                            f"({start['peft']['method']}), "
                            f"which cannot be merged into the weights a later stage starts from; start from another "
                            f"stage or train '{start['name']}' with lora")
        if stage["kind"] == "distill":
            _resolve_teacher(stage, earlier, base_path, key, file)
        _resolve_reward_model(stage, rewards, key, file)


def _resolve_reward_model(stage: dict, rewards: list[str], key: str, file: str) -> None:
    """Fill in and check an online stage's `reward_model` (the latest earlier reward stage by default); other
    stages, and online stages whose `rewards:` leave the reward model out, must not name one."""
    uses_model = stage["kind"] == "ppo" or not stage.get("rewards") or "reward_model" in stage["rewards"]
    if stage["kind"] in schema.ONLINE_KINDS and not uses_model:
        if stage["reward_model"] is not None:
            raise UserError(f"{file}: {key}.reward_model: the stage's rewards: do not include reward_model")
    elif stage["kind"] in schema.ONLINE_KINDS:
        if stage["reward_model"] is None:
            if not rewards:
                raise UserError(f"{file}: {key}: a {stage['kind']} stage needs a reward model; add a reward "
                                f"stage before it (or name one with reward_model:)")
            stage["reward_model"] = rewards[-1]
        elif stage["reward_model"] not in rewards:
            raise UserError(f"{file}: {key}.reward_model: '{stage['reward_model']}' is not an earlier reward "
                            f"stage{did_you_mean(stage['reward_model'], rewards)}")
    elif stage["reward_model"] is not None:
        raise UserError(f"{file}: {key}.reward_model: only ppo, rloo and grpo stages use a reward model")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, extend, override and validate a recipe. Returns the resolved recipe (a plain dict, typed as
    recipe_types.Recipe). Raises UserError `file: key: problem` for the first mistake."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give a recipe .yaml file")
    raw = _load_with_extends(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    recipe = validate(raw, str(path))
    recipe["name"] = recipe["name"] or path.stem
    recipe["output_dir"] = recipe["output_dir"] or str(Path("runs") / recipe["name"])
    recipe["source"] = {"file": str(path), "overrides": list(overrides)}
    return recipe
