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

from finetune import squad, userfiles
from finetune.errors import UserError

TASK_DIR = Path(__file__).resolve().parent.parent / "eval" / "tasks"
TASK_KEYS = {"name", "metric", "data", "split", "subset", "format", "prompt", "chat_template", "few_shot",
             "few_shot_data", "stop", "max_new_tokens", "abstain", "system", "limit"}
FORMATS = ("squad_json", "hf_rows", "open_qa")


def load_task(name_or_path: str) -> dict:
    """Read a task spec by name (eval/tasks/<name>.yaml) or path, with defaults filled in."""
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
            "system": None, "limit": None, **spec, "path": str(path)}
    for key in ("data", "prompt"):
        if not task.get(key):
            raise UserError(f"{path}: `{key}` is required")
    _check_task_types(path, task)
    if task["metric"] not in ("squad_v1", "squad_v2"):
        raise UserError(f"{path}: metric must be squad_v1 or squad_v2, got {task['metric']!r}")
    if task["format"] not in FORMATS:
        raise UserError(f"{path}: format must be one of {', '.join(FORMATS)}, got {task['format']!r}")
    if task["few_shot"] and not task["few_shot_data"]:
        raise UserError(f"{path}: few_shot: {task['few_shot']} needs `few_shot_data` (shots come from a separate split)")
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
    "stop": ("a list of non-empty strings", lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v)),
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


def check_task(name_or_path: str) -> dict:
    """Load a task and read its local data files (rows and few-shot rows), so that a bad task or row fails
    before any model loads or trains. Hub datasets are checked when the evaluation reads them."""
    task = load_task(name_or_path)
    for key, split in (("data", task["split"]), ("few_shot_data", "train")):
        if task[key] and Path(task[key]).is_file():
            _read_rows(task[key], task["format"], split, task["subset"])
    return task


def _hub_rows(dataset_id: str, subset: str | None, split: str) -> list[dict]:
    """A hub dataset (e.g. rajpurkar/squad, split validation) as a list of rows, through `datasets`."""
    import datasets

    try:
        return list(datasets.load_dataset(dataset_id, subset, split=split))
    except Exception as e:  # noqa: BLE001 - offline and missing-dataset errors come in many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise UserError(f"eval data '{dataset_id}': not a local file and could not be loaded from the hub "
                        f"({first[:160]})") from None


def _read_rows(path: str, fmt: str, split: str = "validation", subset: str | None = None) -> list[dict]:
    """Rows {id, context, question, golds, impossible} from one of the three input formats."""
    p = Path(path)
    if not p.is_file():
        from finetune.recipe import HUB_ID

        if fmt == "squad_json" or not HUB_ID.match(path) or p.suffix:
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


def build_prompts(task: dict, rows: list[dict], tokenizer) -> list[str]:
    """Render every question (with k shots from the few-shot split) as the text the model continues."""
    if task["chat_template"] and not getattr(tokenizer, "chat_template", None):
        raise UserError(f"eval task {task['name']}: chat_template: true, but the model's tokenizer has no chat "
                        "template; set base_model.chat_template to a .jinja file, or use a task with "
                        "chat_template: false")
    shots_pool = _read_rows(task["few_shot_data"], task["format"], "train", task["subset"]) if task["few_shot"] else []
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


def extract_answer(generation: str, task: dict) -> str:
    """Cut at the first stop string; map abstention phrases to "" (no answer) for SQuAD v2."""
    cut = len(generation)
    for stop in task["stop"]:
        at = generation.find(stop)
        if at != -1:
            cut = min(cut, at)
    answer = generation[:cut].strip()
    if task["metric"] == "squad_v2" and squad.normalize_answer(answer) in {
            squad.normalize_answer(p) for p in task["abstain"]}:
        return ""
    return answer


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
             chat: bool, progress: bool = True) -> list[str]:
    """Greedy generation in left-padded batches; each output is cut at EOS, special tokens removed."""
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    outputs: list[str] = []
    steps = range(0, len(prompts), batch_size)
    for start in tqdm(steps, desc="generating", unit="batch", disable=not progress or len(steps) < 2):
        batch = prompts[start:start + batch_size]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=not chat)
        enc = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            outputs.append(tokenizer.decode(row, skip_special_tokens=True))
    return outputs


def task_rows(task: dict, limit: int | None = None) -> list[dict]:
    """The questions a task scores: {id, context, question, golds, impossible}, the first `limit` (and the
    task's own `limit`) of them. Raises UserError for a missing file or a malformed row."""
    limits = [n for n in (limit, task["limit"]) if n]
    return _read_rows(task["data"], task["format"], task["split"], task["subset"])[: min(limits, default=None)]


def official_layout(rows: list[dict]) -> list:
    """The official SQuAD `data` list for `rows` (see `_official_layout`)."""
    return _official_layout(rows)


def evaluate_task(model, tokenizer, task: dict, out_dir: Path | None, batch_size: int = 16,
                  limit: int | None = None, max_new_tokens: int | None = None) -> dict:
    """Generate and score one task; writes predictions.jsonl and results.json to out_dir when given."""
    rows = task_rows(task, limit)
    if not rows:
        raise UserError(f"eval task {task['name']}: {task['data']} has no questions")
    prompts = build_prompts(task, rows, tokenizer)
    started = time.time()
    generations = generate(model, tokenizer, prompts, max_new_tokens or task["max_new_tokens"], batch_size,
                           task["chat_template"])
    seconds = time.time() - started
    predictions = {r["id"]: extract_answer(g, task) for r, g in zip(rows, generations, strict=True)}
    dataset = _official_layout(rows)
    if task["metric"] == "squad_v1":
        scores = squad.evaluate_v1(dataset, predictions)
        result = {"exact": scores["exact_match"], "f1": scores["f1"], "total": len(rows)}
    else:
        result = dict(squad.evaluate_v2(dataset, predictions))
    per_q = {q["id"]: q for q in squad.per_question_scores(task["metric"], dataset, predictions)}
    result.update(task=task["name"], metric=task["metric"], generation_seconds=round(seconds, 3),
                  task_sha256=task["sha256"])
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as f:
            for r, prompt, gen in zip(rows, prompts, generations, strict=True):
                q = per_q[r["id"]]
                f.write(json.dumps({"id": r["id"], "prompt": prompt, "generation": gen,
                                    "answer": predictions[r["id"]], "golds": r["golds"],
                                    "em": q["em"], "f1": q["f1"]}, ensure_ascii=False) + "\n")
        (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def results_table(results: dict[str, dict[str, dict]]) -> str:
    """Markdown table: one row per evaluated model/stage, EM and F1 per task, side by side."""
    tasks = sorted({t for per_task in results.values() for t in per_task})
    head = "| stage | " + " | ".join(f"{t} EM | {t} F1" for t in tasks) + " |"
    sep = "|---|" + "---:|---:|" * len(tasks)
    lines = [head, sep]
    for stage, per_task in results.items():
        cells = []
        for t in tasks:
            r = per_task.get(t)
            cells += [f"{r['exact']:.1f}", f"{r['f1']:.1f}"] if r else ["", ""]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
