"""Load instruction data through `datasets`, detect its format and normalise it to one of TRL's layouts.

Every source becomes one of three kinds, with only these columns:
  chat               {"messages": [{"role", "content"}, ...]}    (messages, alpaca, sharegpt)
  prompt_completion  {"prompt": str, "completion": str}
  text               {"text": str}
A stage's sources must share a kind. Rows that cannot be used are dropped with a count per reason, never
silently; malformed rows in JSONL files are reported with their line number.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.errors import UserError, first_line
from finetune.recipe_types import DataSource, Stage

if TYPE_CHECKING:
    from datasets import Dataset, Features

LOADERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "system": "system", "tool": "tool"}
CHAT_ROLES = ("system", "user", "assistant", "tool")
KIND_OF_FORMAT = {"messages": "chat", "alpaca": "chat", "sharegpt": "chat",
                  "prompt_completion": "prompt_completion", "text": "text"}


def _check_json_file(path: Path) -> None:
    """Fail with the file and line of the first malformed record (datasets' own error names neither).

    A file is accepted when it parses as one JSON document (array or object) or as JSON Lines, whatever its
    suffix: many datasets ship JSON Lines under `.json`.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    if not text.strip():
        raise UserError(f"{path}: file is empty (no rows)")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as whole:
        document_error = whole
    else:
        # A bare `null` or number made pyarrow's JSON reader crash the process (a segfault, found by fuzzing).
        if isinstance(document, list):
            bad = next((i for i, row in enumerate(document) if not isinstance(row, dict)), None)
            if bad is not None:
                raise UserError(f"{path}: item {bad} of the JSON array must be an object (one row), got "
                                f"{type(document[bad]).__name__}")
        elif not isinstance(document, dict):
            raise UserError(f"{path}: the file holds a JSON {type(document).__name__}; give an array of "
                            "objects or JSON Lines (one object per line)")
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as line_error:
            if text.lstrip().startswith("[") or (path.suffix == ".json" and n == 1):
                doc = document_error
                raise UserError(f"{path}:{doc.lineno}: malformed JSON ({doc.msg})") from None
            raise UserError(f"{path}:{n}: malformed JSON line ({line_error.msg} at column "
                            f"{line_error.colno})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{n}: each line must be a JSON object, got {type(row).__name__}")


def iter_strings(value, skip: tuple[str, ...] = ()) -> Iterator[str]:
    """Every string inside nested dicts and lists (the text of a JSON record), leaving out keys in `skip`."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            if k not in skip:
                yield from iter_strings(v, skip)
    elif isinstance(value, list):
        for v in value:
            yield from iter_strings(v, skip)


def _text_features(csv_path: Path) -> Features:
    import csv

    import datasets

    with csv_path.open(encoding="utf-8", newline="") as f:
        header = next(csv.reader(f), [])
    return datasets.Features({name: datasets.Value("string") for name in header})


def load_source(name: str, src: dict, seed: int) -> Dataset:
    """Load one recipe data source as a `datasets.Dataset` (local file/folder or hub id).

    The source's `columns:` mapping is applied (renamed to the toolkit's names) and, when `max_rows` is set
    and smaller, a seeded sample of that many rows is kept. Raises UserError naming the file (and line, for
    malformed JSON) or `data.<name>` for an unsupported suffix, an empty or unreadable file, a path or hub id
    that cannot be loaded, a source with no rows, or `columns:` naming a column the data lacks.
    """
    import datasets

    path = Path(src["path"]).expanduser()
    where = f"data.{name}"
    try:
        if path.is_file():
            loader = LOADERS.get(path.suffix)
            if loader is None:
                raise UserError(f"{path}: unsupported file type '{path.suffix}' ({where}); "
                                f"use {', '.join(LOADERS)}")
            if loader == "json":
                _check_json_file(path)
            elif path.stat().st_size == 0:
                raise UserError(f"{path}: file is empty (no rows)")
            # CSV cells are text: read them as such, or " 18" becomes the integer 18 and loses its space.
            extra = {"features": _text_features(path), "keep_default_na": False} if loader == "csv" else {}
            ds = datasets.load_dataset(loader, data_files=str(path), split="train", **extra)
            if loader == "parquet":  # corrupted string data reads back only as a UnicodeDecodeError per row
                ds.data.table.validate(full=True)
        elif path.is_dir():
            ds = datasets.load_dataset(str(path), split=src["split"])
        else:
            ds = datasets.load_dataset(src["path"], src["subset"], split=src["split"], revision=src["revision"])
    except UserError:
        raise
    except (datasets.exceptions.DatasetNotFoundError, FileNotFoundError, ConnectionError) as e:
        raise UserError(f"{where}.path: cannot load '{src['path']}': {first_line(e)}") from None
    except (ValueError, datasets.exceptions.DatasetGenerationError, OSError, UnicodeDecodeError) as e:
        # pyarrow's ArrowInvalid (from validate) is a ValueError
        # OSError and UnicodeDecodeError: a corrupted Parquet file (pyarrow's thrift errors, broken strings)
        cause = e.__cause__ or e
        first = first_line(cause)[:200]
        raise UserError(f"{src['path']}: cannot read {where} ({first})") from None
    if len(ds) == 0:
        raise UserError(f"{src['path']}: {where} has no rows")
    if src["columns"]:
        missing = [col for col in src["columns"].values() if col not in ds.column_names]
        if missing:
            raise UserError(f"{src['path']}: {where}.columns names column(s) {missing} that the data lacks; "
                            f"found {ds.column_names}")
        renames = {old: new for new, old in src["columns"].items() if old != new}
        # A mapped-to name that already exists is replaced by the mapped column, as the user asked.
        shadowed = [new for new in renames.values() if new in ds.column_names and new not in renames]
        ds = ds.remove_columns(shadowed).rename_columns(renames)
    if src["max_rows"] and len(ds) > src["max_rows"]:
        ds = ds.shuffle(seed=seed).select(range(src["max_rows"]))
    return ds


def detect_format(columns: list[str], declared: str, where: str) -> str:
    """Name the instruction format from the columns (or check the declared one fits them).

    Raises UserError at `where` when the declared format's columns are missing, or, for `auto`, when the
    columns match no known format.
    """
    cols = set(columns)
    needs = {"messages": {"messages"}, "sharegpt": {"conversations"}, "alpaca": {"instruction", "output"},
             "prompt_completion": {"prompt", "completion"}, "text": {"text"}}
    if declared != "auto":
        if not needs[declared] <= cols:
            raise UserError(f"{where}: format {declared} needs column(s) {sorted(needs[declared] - cols)}; "
                            f"found {sorted(cols)} (map yours with `columns:`)")
        return declared
    for fmt in ("messages", "sharegpt", "alpaca", "prompt_completion", "text"):
        if needs[fmt] <= cols:
            return fmt
    raise UserError(f"{where}: cannot tell the instruction format from columns {sorted(cols)}; expected "
                    f"messages, conversations, instruction+output, prompt+completion or text (or set `columns:`)")


def _normalise_row(row: dict, fmt: str) -> tuple[dict | None, str | None]:
    """Return (normalised row, None) or (None, reason it is dropped). Raises ValueError for malformed rows."""
    row = {k: ("" if v is None and k in ("text", "prompt", "completion", "input") else v) for k, v in row.items()}
    if fmt == "text":
        text = row["text"]
        if not isinstance(text, str):
            raise ValueError(f"text must be a string, got {type(text).__name__}")
        return ({"text": text}, None) if text.strip() else (None, "empty text")
    if fmt == "prompt_completion":
        p, c = row["prompt"], row["completion"]
        if not isinstance(p, str) or not isinstance(c, str):
            raise ValueError("prompt and completion must be strings")
        return ({"prompt": p, "completion": c}, None) if c.strip() else (None, "empty completion")
    if fmt == "alpaca":
        instruction, inp, out = row["instruction"], row.get("input") or "", row["output"]
        if not all(isinstance(x, str) for x in (instruction, inp, out)):
            raise ValueError("instruction, input and output must be strings")
        if not out.strip():
            return None, "empty output"
        user = instruction if not inp.strip() else f"{instruction}\n\n{inp}"
        messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        return {"messages": messages + [{"role": "user", "content": user},
                                        {"role": "assistant", "content": out}]}, None
    turns = row["messages"] if fmt == "messages" else row["conversations"]
    if not isinstance(turns, list):
        raise ValueError(f"{'messages' if fmt == 'messages' else 'conversations'} must be a list")
    messages = [_turn(i, turn, fmt) for i, turn in enumerate(turns)]
    answers = [m for m in messages if m["role"] == "assistant"]
    if not answers:
        return None, "no assistant turn"
    if any(not m["content"].strip() for m in answers):
        return None, "empty assistant turn"
    return {"messages": messages}, None


def _turn(i: int, turn: Any, fmt: str) -> dict:
    """One chat turn as {role, content}: a messages turn as it is, a ShareGPT turn ({from, value}) mapped.
    Raises ValueError naming the turn."""
    if not isinstance(turn, dict):
        raise ValueError(f"turn {i} must be an object")
    if fmt == "sharegpt":
        role, content = SHAREGPT_ROLES.get(str(turn.get("from")).lower()), turn.get("value")
        if role is None:
            raise ValueError(f"turn {i}: unknown 'from' value {turn.get('from')!r}")
    else:
        role, content = turn.get("role"), turn.get("content")
        if role not in CHAT_ROLES:
            raise ValueError(f"turn {i}: role must be one of {', '.join(CHAT_ROLES)}, got {role!r}")
    if not isinstance(content, str):
        raise ValueError(f"turn {i}: content must be a string")
    return {"role": role, "content": content}


def normalise(ds: Dataset, fmt: str, where: str) -> tuple[Dataset, dict[str, int]]:
    """Normalise a dataset of one format to its kind's columns; returns (dataset, dropped-count by reason).

    Raises UserError naming `where` and the row index for a malformed row (wrong type, missing field, bad
    role), and when every row is dropped (with the count per reason).
    """
    rows, dropped = [], {}
    for i, row in enumerate(ds):
        try:
            out, reason = _normalise_row(row, fmt)
        except ValueError as e:
            raise UserError(f"{where}: row {i}: {e}") from None
        except KeyError as e:
            raise UserError(f"{where}: row {i}: missing field {e}") from None
        if out is None:
            dropped[reason] = dropped.get(reason, 0) + 1
        else:
            rows.append(out)
    if not rows:
        detail = ", ".join(f"{n} {r}" for r, n in dropped.items())
        raise UserError(f"{where}: no usable rows left ({detail})")
    import datasets

    return datasets.Dataset.from_list(rows), dropped


def mix(parts: dict[str, tuple[Dataset, float | None]], total: int | None,
        seed: int) -> tuple[Dataset, dict[str, int]]:
    """Combine a stage's sources.

    Without weights (a plain list in the recipe) every row of every source is used once. With weights, source i
    gives a share weight_i / sum(weights) of `total` rows (default: the sources' row count), repeating its
    rows (seeded) when it is short; shares are rounded by largest remainder so they add up to `total`.
    Returns (mixed dataset, rows taken per source). Raises UserError naming `data.<name>` when a weight is so
    small that the source gets 0 rows.
    """
    import datasets

    if all(w is None for _, w in parts.values()):
        mixed = datasets.concatenate_datasets([ds for ds, _ in parts.values()]).shuffle(seed=seed)
        if total and total < len(mixed):
            mixed = mixed.select(range(total))
        return mixed, {name: len(ds) for name, (ds, _) in parts.items()}
    weight_sum = sum(w for _, w in parts.values())
    total = total or sum(len(ds) for ds, _ in parts.values())
    exact = {name: total * w / weight_sum for name, (_, w) in parts.items()}
    counts = {name: int(x) for name, x in exact.items()}
    by_remainder = sorted(exact, key=lambda n: exact[n] - counts[n], reverse=True)
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    pieces = []
    for name, (ds, weight) in parts.items():
        if counts[name] == 0:
            raise UserError(f"data.{name}: weight {weight} gives it 0 of {total} rows; raise its weight or max_rows")
        shuffled = ds.shuffle(seed=seed)
        full, rest = divmod(counts[name], len(ds))
        pieces += [shuffled] * full + ([shuffled.select(range(rest))] if rest else [])
    return datasets.concatenate_datasets(pieces).shuffle(seed=seed), counts


def split(ds: Dataset, eval_split: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Seeded train/eval split; eval_split is a fraction (<1) or a row count. Returns (train, eval or None).

    Raises UserError when the eval split would take every row of the mixture, leaving none to train on.
    """
    if not eval_split:
        return ds, None
    n_eval = int(eval_split) if eval_split >= 1 else max(1, round(len(ds) * eval_split))
    if n_eval >= len(ds):
        raise UserError(f"eval_split {eval_split} leaves no training rows (the mixture has {len(ds)} rows)")
    parts = ds.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def fingerprint(*datasets_: Dataset | None) -> str:
    """sha256 over the rows' canonical JSON: equal data, equal fingerprint, whatever the file layout."""
    h = hashlib.sha256()
    for ds in datasets_:
        if ds is None:
            continue
        for row in ds:
            h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
            h.update(b"\n")
    return h.hexdigest()


def stage_data(sources: Mapping[str, DataSource], stage: Stage, seed: int, purpose: str = "sft") -> dict:
    """Load, normalise, mix and split a stage's data: the `sources` its `stage["data"]` names, shuffled,
    mixed and split with `seed`.

    purpose: "sft" (instruction rows), "pairs" (preference pairs), "unpaired" (KTO's labelled completions) or
    "prompts" (prompts for online RL and distillation).

    Returns {"train": Dataset, "eval": Dataset | None, "kind": the rows' kind (chat, prompt_completion, text,
    ...), "report": {"sources": {name: rows, kept, dropped, format, kind, path}, "mixture", "train_rows",
    "eval_rows", "fingerprint"}}.

    Raises UserError naming the source (and row) for unreadable files, unknown formats, rows of the wrong
    shape, sources that mix kinds, or an eval split that leaves nothing to train on.
    """
    from finetune import preference

    parts, report, kinds = {}, {"sources": {}}, {}
    for name, weight in stage["data"].items():
        src = sources[name]
        where = f"{src['path']} (data.{name})"
        ds = load_source(name, src, seed)
        if purpose == "sft":
            fmt = detect_format(ds.column_names, src["format"], where)
            norm, dropped = normalise(ds, fmt, where)
            kind = KIND_OF_FORMAT[fmt]
        elif purpose == "pairs":
            norm, dropped, kind = preference.normalise_pairs(ds, where)
            fmt = "preference"
        elif purpose == "unpaired":
            norm, dropped, kind = preference.unpaired(ds, where)
            fmt = "unpaired"
        else:
            norm, dropped, kind = preference.prompts_only(ds, where)
            fmt = "prompts"
        kinds[name] = kind
        parts[name] = (norm, weight)
        report["sources"][name] = {"path": src["path"], "format": fmt, "kind": kind, "rows": len(ds),
                                   "kept": len(norm), "dropped": dropped}
    if len(set(kinds.values())) > 1:
        detail = ", ".join(f"{n}={k}" for n, k in kinds.items())
        raise UserError(f"stage {stage['name']}: its data sources mix kinds ({detail}); use one kind per stage")
    mixed, counts = mix(parts, stage["max_rows"], seed)
    train, evald = split(mixed, stage["eval_split"], seed)
    report.update(mixture=counts, train_rows=len(train), eval_rows=len(evald) if evald is not None else 0,
                  fingerprint=fingerprint(train, evald))
    return {"train": train, "eval": evald, "kind": next(iter(kinds.values())), "report": report}
