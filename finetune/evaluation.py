"""Generative QA evaluation: task specs (YAML) + batched greedy generation + official SQuAD scoring.

A task is data: eval/tasks/<name>.yaml names a data file and format, a prompt template, few-shot k, stop
strings and, for SQuAD v2, the phrases that mean "no answer". Every task's rows are put into the official
SQuAD layout and scored by finetune.squad, so the numbers are the official scripts' numbers.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

from finetune import squad, stats, userfiles
from finetune.errors import UserError, first_line

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TASK_DIR = Path(__file__).resolve().parent.parent / "eval" / "tasks"
TASK_KEYS = {"name", "metric", "data", "split", "subset", "format", "prompt", "chat_template", "few_shot",
             "few_shot_data", "stop", "max_new_tokens", "abstain", "system", "limit", "answer"}
FORMATS = ("squad_json", "hf_rows", "open_qa")


def load_task(name_or_path: str) -> dict:
    """Read a task spec by name (eval/tasks/<name>.yaml) or path, with defaults filled in.

    The returned dict also carries `path` and `sha256` (of the resolved spec); a shipped task's relative data
    paths are made absolute. Raises UserError naming the task file for a task that is not found, a file that
    is not a YAML mapping, unknown keys, a missing `data` or `prompt`, a field of the wrong type, an unknown
    prompt placeholder, an unknown metric or format, a malformed `answer:` block, or `few_shot` without
    `few_shot_data`.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = TASK_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TASK_DIR.glob("*.yaml")))
        raise UserError(f"eval task '{name_or_path}' not found (tasks: {known}, or a .yaml path)")
    spec = userfiles.read_yaml(path, "eval task") or {}
    if not isinstance(spec, dict):
        raise UserError(f"{path}: an eval task must be a YAML mapping, got {type(spec).__name__}")
    unknown = set(spec) - TASK_KEYS
    if unknown:
        raise UserError(f"{path}: unknown task key(s) {sorted(unknown)}; known: {sorted(TASK_KEYS)}")
    task = {"name": path.stem, "metric": "squad_v1", "format": "squad_json", "chat_template": False,
            "split": "validation", "subset": None,
            "few_shot": 0, "few_shot_data": None, "stop": ["\n"], "max_new_tokens": 32, "abstain": [],
            "system": None, "limit": None, "answer": None, **spec, "path": str(path)}
    for key in ("data", "prompt"):
        if not task.get(key):
            raise UserError(f"{path}: `{key}` is required")
    _check_task_types(path, task)
    if task["metric"] not in ("squad_v1", "squad_v2"):
        raise UserError(f"{path}: metric must be squad_v1 or squad_v2, got {task['metric']!r}")
    if task["format"] not in FORMATS:
        raise UserError(f"{path}: format must be one of {', '.join(FORMATS)}, got {task['format']!r}")
    task["answer"] = _check_answer_rule(path, task["answer"])
    if task["few_shot"] and not task["few_shot_data"]:
        raise UserError(f"{path}: few_shot: {task['few_shot']} needs `few_shot_data` "
                        f"(shots come from a separate split)")
    task["sha256"] = hashlib.sha256(json.dumps(task, sort_keys=True).encode()).hexdigest()
    if path.parent == TASK_DIR:  # a shipped task's data paths are from the project root, wherever we run
        for key in ("data", "few_shot_data"):
            local = TASK_DIR.parents[1] / str(task[key] or "")
            if task[key] and not Path(task[key]).is_absolute() and local.is_file():
                task[key] = str(local)
    return task


# key -> (what it must be, check); a string where a list is meant would be read letter by letter.
_TASK_TYPES = {
    "name": ("a string", lambda v: isinstance(v, str)),
    "data": ("a path or dataset id (string)", lambda v: isinstance(v, str)),
    "split": ("a string", lambda v: isinstance(v, str)),
    "subset": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "prompt": ("a string", lambda v: isinstance(v, str)),
    "chat_template": ("true or false", lambda v: isinstance(v, bool)),
    "few_shot": ("a whole number >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "few_shot_data": ("a path (string) or null", lambda v: v is None or isinstance(v, str)),
    "stop": ("a list of non-empty strings",
             lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v)),
    "max_new_tokens": ("a whole number >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "abstain": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "system": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "limit": ("a whole number >= 1 or null", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)
                                                                     and v >= 1)),
}
PROMPT_FIELDS = ("context", "question")  # what every format provides to the prompt template


def _check_task_types(path: Path, task: dict) -> None:
    """Every task field's type, and the prompt's placeholders against the fields the rows provide."""
    import string

    for key, (what, ok) in _TASK_TYPES.items():
        if not ok(task[key]):
            raise UserError(f"{path}: {key}: must be {what}, got {task[key]!r}")
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(task["prompt"]) if field is not None]
    except ValueError as e:
        raise UserError(f"{path}: prompt: {e} (write a literal brace as {{{{ or }}}})") from None
    for field in names:
        if field not in PROMPT_FIELDS:
            hint = difflib.get_close_matches(field, PROMPT_FIELDS, n=1)
            raise UserError(f"{path}: prompt: unknown placeholder {{{field}}}; the rows provide "
                            f"{', '.join('{' + f + '}' for f in PROMPT_FIELDS)}"
                            + (f"; did you mean {{{hint[0]}}}?" if hint else ""))


ANSWER_KEYS = {"first_line", "strip_prefixes", "regex"}
DEFAULT_PREFIXES = ["The answer is", "Answer:", "A:"]


def _check_answer_rule(path: Path, rule) -> dict | None:
    """The task's `answer:` block (how to pull the answer out of a chat model's generation), checked:
    first_line: true/false; strip_prefixes: true (the defaults) or a list of phrases; regex: a pattern whose
    group `answer` (or group 1) is the answer. None (no block) = no extraction beyond the stop strings."""
    import re

    if rule is None:
        return None
    if not isinstance(rule, dict) or not rule:
        raise UserError(f"{path}: answer: must be a mapping with some of {sorted(ANSWER_KEYS)}, got {rule!r}")
    unknown = set(rule) - ANSWER_KEYS
    if unknown:
        raise UserError(f"{path}: answer: unknown key(s) {sorted(unknown)}; known: {sorted(ANSWER_KEYS)}")
    out = {"first_line": rule.get("first_line", False), "strip_prefixes": rule.get("strip_prefixes", []),
           "regex": rule.get("regex")}
    if not isinstance(out["first_line"], bool):
        raise UserError(f"{path}: answer.first_line: must be true or false, got {out['first_line']!r}")
    if out["strip_prefixes"] is True:
        out["strip_prefixes"] = DEFAULT_PREFIXES
    if not isinstance(out["strip_prefixes"], list) or not all(isinstance(x, str) and x for x in out["strip_prefixes"]):
        raise UserError(f"{path}: answer.strip_prefixes: true or a list of phrases, got {out['strip_prefixes']!r}")
    if out["regex"] is not None:
        if not isinstance(out["regex"], str):
            raise UserError(f"{path}: answer.regex: must be a string, got {out['regex']!r}")
        try:
            compiled = re.compile(out["regex"])
        except re.error as e:
            raise UserError(f"{path}: answer.regex: {e}") from None
        if not compiled.groups:
            raise UserError(f"{path}: answer.regex: needs a group for the answer, (?P<answer>...) or (...)")
    return out


def describe_answer_rule(rule: dict | None) -> str:
    """One line for reports: which extraction rule a task used."""
    if not rule:
        return "none (the generation up to the first stop string)"
    parts = (["first line"] if rule["first_line"] else []) + (
        [f"strip a leading {' / '.join(repr(p) for p in rule['strip_prefixes'])}"] if rule["strip_prefixes"] else []
    ) + ([f"regex {rule['regex']!r}"] if rule["regex"] else [])
    return ", ".join(parts)


def check_task(name_or_path: str, hub: bool = False, limit: int | None = None) -> dict:
    """Load a task and read its data (rows, and few-shot rows when it takes shots), so that a bad task or row
    fails before any model loads or trains: local files always, hub datasets only with `hub` (`finetune run`'s
    preflight and `validate --deep`). `limit` is how many questions the caller scores (eval.limit,
    watch.questions), on top of the task's own limit.

    Returns the task spec. Raises UserError for everything `load_task` and `read_rows` refuse, a data file
    that does not exist, a task without questions, and, for squad_v1, a scored question without gold answers
    (which scoring would refuse after every stage has trained).
    """
    task = load_task(name_or_path)
    for key, split in (("data", task["split"]), ("few_shot_data", "train")):
        if not task[key] or (key == "few_shot_data" and not task["few_shot"]) \
                or (_on_hub(task[key], task["format"]) and not hub):
            continue
        rows = read_rows(task[key], task["format"], split, task["subset"])
        if key != "data":
            continue
        rows = rows[: min([n for n in (limit, task["limit"]) if n], default=None)]  # what task_rows scores
        if not rows:
            raise UserError(f"eval task {task['name']}: {task['data']} has no questions")
        if task["metric"] == "squad_v1":
            for row in rows:
                if not row["golds"]:
                    raise UserError(squad.no_gold_message(row["id"]))
    return task


def _on_hub(path: str, fmt: str) -> bool:
    """Whether eval data `path` names a hub dataset (not a local file): read_rows fetches it with `datasets`."""
    from finetune.schema import HUB_ID

    return not Path(path).is_file() and fmt != "squad_json" and bool(HUB_ID.match(path)) and not Path(path).suffix


def missing_chat_template(task: dict) -> UserError:
    """The refusal of a `chat_template: true` task for a model whose tokenizer has no chat template."""
    return UserError(f"eval task {task['name']}: chat_template: true, but the model's tokenizer has no chat "
                     "template; set base_model.chat_template to a .jinja file, or use a task with "
                     "chat_template: false")


def _hub_rows(dataset_id: str, subset: str | None, split: str) -> list[dict]:
    """A hub dataset (e.g. rajpurkar/squad, split validation) as a list of rows, through `datasets`."""
    import datasets

    try:
        return list(datasets.load_dataset(dataset_id, subset, split=split))
    except Exception as e:  # noqa: BLE001 - offline and missing-dataset errors come in many types
        first = first_line(e)
        raise UserError(f"eval data '{dataset_id}': not a local file and could not be loaded from the hub "
                        f"({first[:160]})") from None


def read_rows(path: str, fmt: str, split: str = "validation", subset: str | None = None) -> list[dict]:
    """Rows {id, context, question, golds, impossible} from one of the three input formats.

    `path` is a local file or, for hf_rows/open_qa, a hub dataset id (read with `subset` and `split`); ids
    become strings. Raises UserError naming the file and the row (or SQuAD article and question) for a path
    that is neither a file nor a loadable hub dataset, malformed JSON (with its line), a missing field, or a
    field of the wrong type.
    """
    p = Path(path)
    if not p.is_file():
        if not _on_hub(path, fmt):
            raise UserError(f"eval data '{path}' not found")
        return _rows_from_records(_hub_rows(path, subset, split), fmt, path)
    if fmt == "squad_json":  # squad.load_squad_dataset checks the layout (lists, ids, answers) and UTF-8
        rows = []
        for a, article in enumerate(squad.load_squad_dataset(str(p))):
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    where = f"article {a}, question {qa['id']}"
                    try:
                        rows.append({"id": qa["id"], "context": paragraph["context"], "question": qa["question"],
                                     "golds": [x["text"] for x in qa["answers"]],
                                     "impossible": bool(qa.get("is_impossible"))})
                    except KeyError as e:
                        raise UserError(f"{path}: {where}: missing field {e}") from None
                    _check_row(rows[-1], path, where)
        return rows
    text = userfiles.read_text(p, "eval data")
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON ({e.msg}, line {e.lineno})") from None
    return _rows_from_records(records, fmt, path)


def _rows_from_records(records: list[dict], fmt: str, path: str) -> list[dict]:
    rows = []
    for i, r in enumerate(records):
        try:
            if fmt == "hf_rows":
                golds = r["answers"]["text"]  # a bare string here would be scored letter by letter
                rows.append({"id": r["id"], "context": r["context"], "question": r["question"],
                             "golds": golds, "impossible": isinstance(golds, list) and not golds})
            else:
                answers = r["answer"] if isinstance(r["answer"], list) else [r["answer"]]
                rows.append({"id": r.get("id", i), "context": r.get("context", ""),
                             "question": r["question"], "golds": answers, "impossible": False})
        except (KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{path}: row {i}: missing or malformed field {e} for format {fmt}") from None
        _check_row(rows[-1], path, f"row {i}")
    return rows


def _check_row(row: dict, path: str, where: str) -> None:
    """Types a question needs before any generation runs: text context and question, text answers."""
    if not isinstance(row["question"], str) or not row["question"].strip():
        raise UserError(f"{path}: {where}: `question` must be non-empty text, got {row['question']!r}")
    if not isinstance(row["context"], str):
        raise UserError(f"{path}: {where}: `context` must be text, got {row['context']!r}")
    if not isinstance(row["golds"], list) or not all(isinstance(g, str) for g in row["golds"]):
        raise UserError(f"{path}: {where}: answers must be a list of texts, got {row['golds']!r}")
    if isinstance(row["id"], bool) or not isinstance(row["id"], str | int):
        raise UserError(f"{path}: {where}: `id` must be text or a number, got {row['id']!r}")
    row["id"] = str(row["id"])


def _official_layout(rows: list[dict]) -> list:
    """The official SQuAD `data` list, one paragraph per question (scores do not depend on grouping)."""
    return [{"paragraphs": [{"context": r["context"], "qas": [{
        "id": r["id"], "question": r["question"], "is_impossible": r["impossible"],
        "answers": [{"text": g, "answer_start": max(0, r["context"].find(g))} for g in r["golds"]]}]}]}
        for r in rows]


def build_prompts(task: dict, rows: list[dict], tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Render every question (with k shots from the few-shot split) as the text the model continues.

    Shots are drawn with a fixed seed (0). Raises UserError when the task sets `chat_template: true` and the
    tokenizer has no chat template (and, through `read_rows`, for unreadable few-shot data).
    """
    if task["chat_template"] and not getattr(tokenizer, "chat_template", None):
        raise missing_chat_template(task)
    shots_pool = read_rows(task["few_shot_data"], task["format"], "train", task["subset"]) if task["few_shot"] else []
    rng = random.Random(0)
    prompts = []
    for r in rows:
        shots = rng.sample(shots_pool, min(task["few_shot"], len(shots_pool))) if shots_pool else []
        body = task["prompt"].format(context=r["context"], question=r["question"])
        if task["chat_template"]:
            messages = [{"role": "system", "content": task["system"]}] if task["system"] else []
            for s in shots:
                messages += [{"role": "user", "content": task["prompt"].format(**s)},
                             {"role": "assistant", "content": s["golds"][0] if s["golds"] else ""}]
            messages.append({"role": "user", "content": body})
            prompts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        else:
            shot_text = "".join(task["prompt"].format(**s) + " " + (s["golds"][0] if s["golds"] else "") + "\n\n"
                                for s in shots)
            prompts.append(shot_text + body)
    return prompts


def extract_answer(generation: str, task: dict) -> str | None:
    """Cut at the first stop string, apply the task's `answer:` rule (first line, a leading phrase such as
    "The answer is", a regex group), map abstention phrases to "" (no answer) for SQuAD v2.

    Returns None when the rule's regex finds nothing (an unextractable answer, scored as wrong).
    """
    import re

    cut = len(generation)
    for stop in task["stop"]:
        at = generation.find(stop)
        if at != -1:
            cut = min(cut, at)
    answer = generation[:cut].strip()
    rule = task.get("answer")
    if rule:
        if rule["first_line"]:
            answer = answer.split("\n", 1)[0].strip()
        for prefix in rule["strip_prefixes"]:
            if answer.lower().startswith(prefix.lower()):
                answer = answer[len(prefix):].lstrip(" :,-").strip()
                break
        if rule["regex"]:
            m = re.search(rule["regex"], answer)
            if m is None:
                return None
            answer = (m.group("answer") if "answer" in m.re.groupindex else m.group(1) or "").strip()
    if task["metric"] == "squad_v2" and squad.normalize_answer(answer) in {
            squad.normalize_answer(p) for p in task["abstain"]}:
        return ""
    return answer


def stop_token_ids(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every end-of-sequence id the model stops on: its generation config's (Llama 3.1 and Qwen2.5 list
    several) and the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = list(ids) if isinstance(ids, list | tuple) else [ids] if ids is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def safe_stops(prompts: list[str], stops: list[str]) -> list[str]:
    """The stop strings that may end generation early for these prompts: transformers matches a stop string
    across the prompt's end, so one whose beginning ends a prompt (stop "\\n\\n" after a prompt ending in "\\n")
    could stop a row before its answer. Those are left to the cut after generation."""
    return [s for s in stops if not any(p.endswith(s[:k]) for p in prompts for k in range(1, len(s)))]


SHARED_PREFIX_MIN = 64  # tokens two prompts must share before their common start is read once for both


def prefix_groups(token_ids: list[list[int]], min_shared: int = SHARED_PREFIX_MIN) -> list[tuple[int, list[int]]]:
    """Prompts that start with the same tokens: [(shared length n, prompt indices)], each group >= 2 prompts.

    QA prompts put the context before the question, so an XQuAD paragraph's questions share their first few
    hundred tokens. Prompts sorted by their token ids sit next to the ones they share most with; a run of
    neighbours stays one group while all of them share >= `min_shared` tokens. n is at most each member's
    length less one, so every member keeps a token of its own (generation starts from its logits). Prompts in
    no group are left out. Pure; `token_ids` is one list of ids per prompt.
    """
    order = sorted(range(len(token_ids)), key=lambda i: token_ids[i])
    runs: list[tuple[int, list[int]]] = []
    for i in order:
        ids = token_ids[i]
        if runs:
            n, members = runs[-1]
            first = token_ids[members[0]]
            common = next((k for k in range(min(n, len(ids))) if first[k] != ids[k]), min(n, len(ids)))
            common = min(common, len(ids) - 1)
            if common >= min_shared:
                runs[-1] = (common, [*members, i])
                continue
        runs.append((len(ids) - 1, [i]))
    return [(n, members) for n, members in runs if len(members) > 1]


def _plain_cache(model: PreTrainedModel | PeftModel) -> bool:
    """Whether the model's generation cache is transformers' DynamicCache of full-attention layers (a sliding
    window or a recurrent state cannot take a shared start copied in; those prompts are read whole)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    layers = DynamicCache(config=model.config).layers
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _batch_cache(rows: list, length: int):
    """One key/value cache for a batch from each row's own prefix cache (batch 1, DynamicCache): each layer's
    keys and values (1, heads, n, head_dim) left-padded with zeros to `length` positions (the attention mask
    hides them) and stacked in row order -> (rows, heads, length, head_dim)."""
    import torch
    from transformers import DynamicCache

    batch = DynamicCache()
    for layer in range(len(rows[0].layers)):
        keys, values = ([torch.nn.functional.pad(getattr(c.layers[layer], kind),
                                                  (0, 0, length - c.layers[layer].keys.shape[-2], 0))
                         for c in rows] for kind in ("keys", "values"))
        batch.update(torch.cat(keys), torch.cat(values), layer)
    return batch


def generate(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
             max_new_tokens: int, batch_size: int, chat: bool, progress: bool = True, stop: list[str] | None = None,
             stats: dict | None = None, group_by_length: bool = True,
             ids_out: list | None = None, share_prefixes: bool = True) -> list[str]:
    """Greedy generation in left-padded batches, in the order of `prompts`. A row stops at any of the model's
    end-of-sequence ids (`stop_token_ids`) or, while generating, at any `stop` string (transformers'
    stop_strings, those `safe_stops` allows); outputs are cut at the first end-of-sequence id, special tokens
    removed (the stop string stays: `extract_answer` cuts there). Side effect: tokenizer.padding_side = "left".

    Prompts that share a long start (`prefix_groups`: an XQuAD paragraph's questions) read it once: its
    key/value cache is computed once per group and copied into each member's row of the batch
    (`_batch_cache`), so a row is [pad][shared start][pad][own tokens] with the mask hiding the pads and
    positions from the mask (generate's own rule). The arithmetic is the unshared one up to float rounding.
    On CPU a decoding step costs about the same at 4 rows as at 16 (it reads every weight once), so batches
    hold `batch_size` rows from several groups, longest shared start first. `share_prefixes=False` reads
    every prompt whole (for benchmarks).
    The other prompts are batched longest first (as lm-evaluation-harness does), so a batch holds prompts of
    similar length and pads little (`group_by_length=False`: in the given order, for benchmarks). A finished
    row still occupies its batch until the batch's last row stops;
    `stats`, when given, receives `generated_positions` (batch rows x steps generated), `useful_tokens` (up
    to and including each row's first end-of-sequence or pad token), `wasted_share` (the rest, 0-1),
    `prompt_tokens` (the prompts' tokens) and `prefilled_tokens` (the prompt positions run through the model,
    padding included).
    `ids_out`, when given, receives per prompt (in order) the generated token ids up to and including the first
    end-of-sequence id (without the padding after a row that stopped at a stop string; all of them when the row
    never ended).
    """
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    eos_ids = stop_token_ids(model, tokenizer)
    ends_at = set(eos_ids) | ({tokenizer.pad_token_id} if tokenizer.pad_token_id is not None else set())
    encoded = tokenizer(prompts, add_special_tokens=not chat)["input_ids"] if prompts else []
    lengths = [len(ids) for ids in encoded]
    groups = prefix_groups(encoded) if share_prefixes and _plain_cache(model) else []
    grouped = {i for _, members in groups for i in members}
    order = sorted((i for i in range(len(prompts)) if i not in grouped),
                   key=lambda i: -lengths[i] if group_by_length else i)
    outputs: list[str | None] = [None] * len(prompts)
    token_ids: list[list[int] | None] = [None] * len(prompts)
    work = {"positions": 0, "useful": 0, "prefilled": 0}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]

    def run(index: list[int], **inputs) -> None:
        """Generate one batch (rows `index` of `prompts`) and file each row's text, ids and counts."""
        usable = safe_stops([prompts[i] for i in index], stop or [])
        extra = {"stop_strings": usable, "tokenizer": tokenizer} if usable else {}
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids, **extra)
        new = out[:, inputs["input_ids"].shape[1]:].tolist()
        for i, row in zip(index, new, strict=True):
            ends = [row.index(t) for t in eos_ids if t in row]
            outputs[i] = tokenizer.decode(row[: min(ends)] if ends else row, skip_special_tokens=True)
            cut = next((k for k, t in enumerate(row) if t in ends_at), None)  # an end, or the pad after a stop
            token_ids[i] = row if cut is None else row[: cut + 1] if row[cut] in eos_ids else row[:cut]
            work["useful"] += next((k + 1 for k, t in enumerate(row) if t in ends_at), len(row))
            work["positions"] += len(row)

    bar = tqdm(total=len(prompts), desc="generating", unit="question", disable=not progress or len(prompts) < 2)
    groups.sort(key=lambda g: -g[0])  # longest shared start first: a batch's caches pad little
    queue = [(g, i) for g, (_, members) in enumerate(groups) for i in members]
    caches: dict[int, object] = {}
    for start in range(0, len(queue), batch_size):
        part = queue[start:start + batch_size]
        for g in dict.fromkeys(g for g, _ in part):
            if g not in caches:
                prefix = torch.tensor([encoded[groups[g][1][0]][:groups[g][0]]], device=model.device)
                with torch.no_grad():
                    caches[g] = model(input_ids=prefix, use_cache=True, logits_to_keep=1).cache
                work["prefilled"] += groups[g][0]
        longest = max(groups[g][0] for g, _ in part)
        width = max(len(encoded[i]) - groups[g][0] for g, i in part)
        ids, mask = [], []
        for g, i in part:
            n, own = groups[g][0], encoded[i][groups[g][0]:]
            ids.append([*[pad] * (longest - n), *encoded[i][:n], *[pad] * (width - len(own)), *own])
            mask.append([0] * (longest - n) + [1] * n + [0] * (width - len(own)) + [1] * len(own))
        run([i for _, i in part], input_ids=torch.tensor(ids, device=model.device),
            attention_mask=torch.tensor(mask, device=model.device),
            cache=_batch_cache([caches[g] for g, _ in part], longest))
        work["prefilled"] += len(part) * width
        for g in {g for g, _ in part} - {g for g, _ in queue[start + batch_size:]}:
            del caches[g]
        bar.update(len(part))
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        enc = tokenizer([prompts[i] for i in index], return_tensors="pt", padding=True, add_special_tokens=not chat)
        run(index, **{k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")})
        work["prefilled"] += enc["input_ids"].numel()
        bar.update(len(index))
    bar.close()
    if stats is not None:
        positions = work["positions"]
        stats.update(generated_positions=positions, useful_tokens=work["useful"],
                     wasted_share=round(1 - work["useful"] / positions, 4) if positions else 0.0,
                     prompt_tokens=sum(lengths), prefilled_tokens=work["prefilled"])
    if ids_out is not None:
        ids_out[:] = token_ids
    return outputs


def task_rows(task: dict, limit: int | None = None) -> list[dict]:
    """The questions a task scores: {id, context, question, golds, impossible}, the first `limit` (and the
    task's own `limit`) of them. Raises UserError for a missing file or a malformed row."""
    limits = [n for n in (limit, task["limit"]) if n]
    return read_rows(task["data"], task["format"], task["split"], task["subset"])[: min(limits, default=None)]


def official_layout(rows: list[dict]) -> list:
    """The official SQuAD `data` list for `rows` (see `_official_layout`)."""
    return _official_layout(rows)


def evaluate_task(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase, task: dict,
                  out_dir: Path | None, batch_size: int = 16, limit: int | None = None,
                  max_new_tokens: int | None = None, extra: dict | None = None) -> dict:
    """Generate and score one task; writes predictions.jsonl and results.json (with `extra`'s fields, e.g.
    the generation dtype) to out_dir when given.

    Returns the results: exact and f1 (0-100) with their 95% confidence intervals, timing and extraction
    counts. Raises UserError when the task's data has no questions (and, through `task_rows` and
    `build_prompts`, for unreadable data or a missing chat template). Side effect: sets tokenizer.padding_side
    to "left" (through `generate`).
    """
    rows = task_rows(task, limit)
    if not rows:
        raise UserError(f"eval task {task['name']}: {task['data']} has no questions")
    prompts = build_prompts(task, rows, tokenizer)
    started, work = time.time(), {}
    generations = generate(model, tokenizer, prompts, max_new_tokens or task["max_new_tokens"], batch_size,
                           task["chat_template"], stop=task["stop"], stats=work)
    seconds = time.time() - started
    extracted, predictions, dataset = _extract(task, rows, generations)
    if task["metric"] == "squad_v1":
        scores = squad.evaluate_v1(dataset, predictions)
        result = {"exact": scores["exact_match"], "f1": scores["f1"], "total": len(rows)}
    else:
        result = dict(squad.evaluate_v2(dataset, predictions))
    per_q = {q["id"]: q for q in squad.per_question_scores(task["metric"], dataset, predictions)}
    ci = stats.summarize([100 * per_q[r["id"]]["em"] for r in rows], [100 * per_q[r["id"]]["f1"] for r in rows])
    result.update(exact_ci=ci["exact_ci"], f1_ci=ci["f1_ci"], task=task["name"], metric=task["metric"],
                  generation_seconds=round(seconds, 3), questions_per_second=round(len(rows) / seconds, 3),
                  wasted_token_share=work["wasted_share"], task_sha256=task["sha256"],
                  extraction=describe_answer_rule(task["answer"]),
                  unextracted=sum(a is None for a in extracted.values()), **(extra or {}))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as f:
            for r, prompt, gen in zip(rows, prompts, generations, strict=True):
                q = per_q[r["id"]]
                f.write(json.dumps({"id": r["id"], "prompt": prompt, "generation": gen,
                                    "answer": predictions[r["id"]], "extracted": extracted[r["id"]] is not None,
                                    "golds": r["golds"],
                                    "em": q["em"], "f1": q["f1"]}, ensure_ascii=False) + "\n")
        (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _extract(task: dict, rows: list[dict], generations: list[str]) -> tuple[dict, dict, list]:
    """(question id -> extracted answer or None, question id -> scored prediction, official SQuAD layout)."""
    extracted = {r["id"]: extract_answer(g, task) for r, g in zip(rows, generations, strict=True)}
    predictions = {i: a if a is not None else "" for i, a in extracted.items()}
    return extracted, predictions, _official_layout(rows)


def answer_questions(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase, task: dict,
                     rows: list[dict], batch_size: int = 16) -> list[dict]:
    """Answer `rows` of `task` greedily, quietly, and score each: [{id, answer, extracted, em, f1}] in row
    order (em/f1 in 0-1, `answer` "" where nothing was extractable), with the rendered `prompt` and the
    `generated_ids` each answer came from (up to and including the end-of-sequence id, `generate`'s
    `ids_out`). For scoring a model while it trains (finetune.watch); side effect: tokenizer.padding_side =
    "left"."""
    prompts = build_prompts(task, rows, tokenizer)
    generated_ids: list = []
    generations = generate(model, tokenizer, prompts, task["max_new_tokens"], batch_size, task["chat_template"],
                           progress=False, stop=task["stop"], ids_out=generated_ids)
    extracted, predictions, dataset = _extract(task, rows, generations)
    per_q = {q["id"]: q for q in squad.per_question_scores(task["metric"], dataset, predictions)}
    return [{"id": r["id"], "answer": predictions[r["id"]], "extracted": extracted[r["id"]] is not None,
             "em": per_q[r["id"]]["em"], "f1": per_q[r["id"]]["f1"], "prompt": prompt, "generated_ids": ids}
            for r, prompt, ids in zip(rows, prompts, generated_ids, strict=True)]


def _cell(r: dict, key: str) -> str:
    ci = r.get(f"{key}_ci")
    return f"{r[key]:.1f} ({ci[0]:.1f}-{ci[1]:.1f})" if ci else f"{r[key]:.1f}"


def results_table(results: dict[str, dict[str, dict]]) -> str:
    """Markdown table: one row per evaluated model/stage, EM and F1 per task side by side, each with its 95%
    bootstrap confidence interval over questions in brackets when the results carry one."""
    tasks = sorted({t for per_task in results.values() for t in per_task})
    head = "| stage | " + " | ".join(f"{t} EM | {t} F1" for t in tasks) + " |"
    sep = "|---|" + "---:|---:|" * len(tasks)
    lines = [head, sep]
    for stage, per_task in results.items():
        cells = []
        for t in tasks:
            r = per_task.get(t)
            cells += [_cell(r, "exact"), _cell(r, "f1")] if r else ["", ""]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def clean_and_overlap(predictions: dict[str, dict], overlap_ids: set[str]) -> dict:
    """EM/F1 (with CIs) on the clean questions and on those overlapping the training data, side by side:
    {"clean": {...}, "overlap": {...}} with "total" counts; a part with no question is {"total": 0}."""
    out = {}
    for part, keep in (("clean", lambda i: i not in overlap_ids), ("overlap", lambda i: i in overlap_ids)):
        rows = [r for i, r in predictions.items() if keep(i)]
        out[part] = stats.summarize([100 * r["em"] for r in rows], [100 * r["f1"] for r in rows]) if rows \
            else {"total": 0}
    return out


def contamination_table(split: dict[str, dict[str, dict]]) -> str:
    """Markdown: per stage and task, EM/F1 on clean and on overlapping questions, with counts."""
    def cells(r: dict) -> str:
        """`n | EM (CI) | F1 (CI)` for one part, or an empty row when it has no question."""
        return f"{r['total']} | {_cell(r, 'exact')} | {_cell(r, 'f1')}" if r["total"] else "0 | | "

    lines = ["| stage | task | clean n | clean EM | clean F1 | overlap n | overlap EM | overlap F1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for stage, per_task in split.items():
        for task, parts in per_task.items():
            lines.append(f"| {stage} | {task} | {cells(parts['clean'])} | {cells(parts['overlap'])} |")
    return "\n".join(lines) + "\n"


def compare_stages(out_root: Path, pairs: list[tuple[str, str]], tasks: list[str]) -> list[dict]:
    """Paired comparisons of evaluated stages (each (from, to) pair, each task) from their predictions.jsonl
    under out_root/<stage>/<task>/; writes out_root/comparisons/<from>_vs_<to>/<task>/flips.jsonl (the
    questions whose exact match changed, with both answers), comparisons.json and comparisons.md. Returns
    the comparisons (see `stats.compare`), each with "task", "from", "to"."""
    out = []
    for a, b in pairs:
        for task in tasks:
            pa, pb = out_root / a / task / "predictions.jsonl", out_root / b / task / "predictions.jsonl"
            if not (pa.is_file() and pb.is_file()):
                continue
            rows_a, rows_b = read_predictions(pa), read_predictions(pb)
            out.append({"task": task, "from": a, "to": b, **stats.compare(rows_a, rows_b)})
            folder = out_root / "comparisons" / f"{a}_vs_{b}" / task
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "flips.jsonl").write_text("".join(json.dumps(f, ensure_ascii=False) + "\n"
                                                        for f in stats.flips(rows_a, rows_b)), encoding="utf-8")
    if out:
        (out_root / "comparisons.json").write_text(json.dumps(out, indent=2) + "\n")
        (out_root / "comparisons.md").write_text(comparison_table(out))
    return out


def read_predictions(path: Path) -> dict[str, dict]:
    """question id -> the row of a predictions.jsonl written by `evaluate_task`."""
    return {row["id"]: row for row in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if row}


def comparison_table(comparisons: list[dict]) -> str:
    """Markdown table of paired stage comparisons (see `stats.compare`); a difference is marked with * only
    when its paired test gives p < stats.ALPHA."""
    lines = ["| task | from | to | questions | ΔEM (95% CI) | p (McNemar) | ΔF1 (95% CI) | p (sign-flip) | "
             "right→wrong | wrong→right |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in comparisons:
        mark = {k: "*" if c[f"significant_{k}"] else "" for k in ("exact", "f1")}
        lines.append(f"| {c['task']} | {c['from']} | {c['to']} | {c['questions']} | "
                     f"{c['delta_exact']:+.1f}{mark['exact']} ({c['delta_exact_ci'][0]:+.1f} to "
                     f"{c['delta_exact_ci'][1]:+.1f}) | {c['p_exact']:.3g} | {c['delta_f1']:+.1f}{mark['f1']} "
                     f"({c['delta_f1_ci'][0]:+.1f} to {c['delta_f1_ci'][1]:+.1f}) | {c['p_f1']:.3g} | "
                     f"{c['lost']} | {c['gained']} |")
    note = f"`*`: the paired test gives p < {stats.ALPHA}; without it the difference is noise."
    return "\n".join(lines) + f"\n\n{note}\n"
