"""Find personal data and secrets in training text, mask them for reports and redact them from copies.

Four kinds are looked for: e-mail addresses, phone numbers, payment-card numbers and API keys. Each detector
trades recall for few false alarms on ordinary prose: a card number must pass the Luhn check, a phone number
needs a `+`, a leading 0 or North-American grouping, and a generic key must look random (mixed characters,
high entropy), so years, prices and long words are not reported. Redacted copies of source files replace
each finding by a placeholder; they are new files, never written over an existing one.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from finetune.data import iter_strings
from finetune.errors import UserError
from finetune.recipe_types import DataSource

PLACEHOLDER = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]", "key": "[KEY]"}

EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                   r"\.[A-Za-z]{2,}\b")
# Vendor key layouts: OpenAI/Anthropic, Hugging Face, AWS access key ids, GitHub, Slack.
VENDOR_KEY = re.compile(r"""(?<![\w-])(?:
      sk-[A-Za-z0-9_-]{20,}
    | hf_[A-Za-z0-9]{30,}
    | AKIA[0-9A-Z]{16}
    | gh[pousr]_[A-Za-z0-9]{36,}
    | github_pat_[A-Za-z0-9_]{22,}
    | xox[abposr]-[A-Za-z0-9-]{10,}
    )(?![\w-])""", re.X)
GENERIC_KEY = re.compile(r"(?<![\w-])[A-Za-z0-9_-]{32,}(?![\w-])")
CARD = re.compile(r"(?<![\w-])\d[\d -]{11,22}\d(?![\w-])")
PHONES = (
    re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}(?!\w)"),  # +44 20 7946 0958, +14155552671
    # (555) 123-4567, 555-123-4567, 555.123.4567: the two separators must agree
    re.compile(r"(?<![\w(.-])(?:\(\d{3}\) ?|\d{3}([.-]))\d{3}(?(1)\1|[.-])\d{4}(?!\w)"),
    re.compile(r"(?<!\w)0\d{1,4}(?:[ .-]\d{2,4}){2,4}(?!\w)"),  # national: 020 7946 0958, 06 12 34 56 78
)


@dataclass(frozen=True)
class Finding:
    """One match: its kind, where it is in the text and the matched text (never printed unmasked)."""

    kind: str
    start: int
    end: int
    text: str


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum that every payment-card number satisfies (and ~90% of random digit strings fail)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _card_like(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    if not 13 <= len(digits) <= 19 or len(set(re.findall(r"[ -]", text))) > 1:
        return False
    groups = [len(g) for g in re.split(r"[ -]", text)]
    # Printed cards group digits 4-4-4-4(-3) or 4-6-5 (Amex); other groupings are lists of numbers.
    grouped = (len(groups) == 1 or (all(g == 4 for g in groups[:-1]) and groups[-1] <= 4)
               or groups in ([4, 6, 5], [4, 6, 4]))
    return grouped and luhn_ok(digits)


def _looks_random(token: str) -> bool:
    """Mixed letters and digits with high per-character entropy: a key, not a word, slug or number."""
    if not (re.search(r"\d", token) and re.search(r"[A-Za-z]", token)):
        return False
    counts = Counter(token)
    entropy = -sum(c / len(token) * math.log2(c / len(token)) for c in counts.values())
    return entropy >= 3.5


def _candidates(text: str) -> Iterator[Finding]:
    """Every match in priority order: a span claimed by an earlier detector is not reported again."""
    for m in EMAIL.finditer(text):
        yield Finding("email", m.start(), m.end(), m.group())
    for m in VENDOR_KEY.finditer(text):
        yield Finding("key", m.start(), m.end(), m.group())
    for m in CARD.finditer(text):
        if _card_like(m.group()):
            yield Finding("card", m.start(), m.end(), m.group())
    for pattern in PHONES:
        for m in pattern.finditer(text):
            if 9 <= len(re.sub(r"\D", "", m.group())) <= 15:
                yield Finding("phone", m.start(), m.end(), m.group())
    for m in GENERIC_KEY.finditer(text):
        if _looks_random(m.group()):
            yield Finding("key", m.start(), m.end(), m.group())


def find_pii(text: str) -> list[Finding]:
    """Non-overlapping findings in `text`, ordered by position."""
    taken: list[Finding] = []
    for f in _candidates(text):
        if all(f.end <= t.start or f.start >= t.end for t in taken):
            taken.append(f)
    return sorted(taken, key=lambda f: f.start)


def mask(secret: str) -> str:
    """Keep the first and last two characters so a finding can be located, never enough to reuse it."""
    return secret[:2] + "*" * max(1, len(secret) - 4) + secret[-2:] if len(secret) > 4 else "*" * len(secret)


def redact(text: str) -> tuple[str, int]:
    """`text` with each finding replaced by [EMAIL], [PHONE], [CARD] or [KEY]; and the count."""
    findings = find_pii(text)
    for f in reversed(findings):
        text = text[:f.start] + PLACEHOLDER[f.kind] + text[f.end:]
    return text, len(findings)


def redact_value(value):
    """Redact every string inside a JSON-like value (dict keys are left alone: they are column names)."""
    if isinstance(value, str):
        return redact(value)[0]
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    return value


def _original_rows(name: str, src: DataSource, seed: int) -> list[dict]:
    """A source's rows as stored: all rows, original columns; JSON read directly (no null-filled fields)."""
    from finetune.data import load_source

    path = Path(src["path"]).expanduser()
    if path.is_file() and path.suffix in (".json", ".jsonl"):
        text = path.read_text(encoding="utf-8-sig")
        try:
            doc = json.loads(text)
            if isinstance(doc, list):
                return doc
        except json.JSONDecodeError:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
    return list(load_source(name, {**src, "columns": {}, "max_rows": None}, seed))


def redact_sources(sources: Mapping[str, DataSource], names: list[str], redact_dir: Path,
                   seed: int) -> dict[str, str]:
    """Redacted copies of the named recipe sources, as JSON Lines in `redact_dir`; every target is checked
    before any is written. Returns {source name: the copy's path}. Raises UserError (writing nothing) when
    a copy already exists or two sources would share a file name."""
    targets = {n: redacted_target(sources[n]["path"], redact_dir) for n in names}
    for n, target in targets.items():
        if target.exists():
            raise UserError(f"{target}: redacted copy of data.{n} already exists; choose another "
                            f"--redact-dir (nothing was overwritten)")
    if len(set(targets.values())) < len(targets):
        raise UserError(f"{redact_dir}: PII sources {', '.join(names)} share file names; redact them into "
                        f"separate folders")
    for n, target in targets.items():
        write_redacted(_original_rows(n, sources[n], seed), target)
    return {n: str(t) for n, t in targets.items()}


def redacted_target(src_path: str, redact_dir: Path) -> Path:
    """Where the redacted copy of a source goes: the same name, as JSON Lines."""
    return redact_dir / (Path(src_path.rstrip("/")).stem + ".jsonl")


def write_redacted(rows: list[dict], target: Path) -> int:
    """Write a redacted JSON Lines copy of a source's rows; never overwrite. Returns the replacement count.

    Raises UserError naming `target` when the file already exists (nothing is written).
    """
    total, lines = 0, []
    for row in rows:
        total += sum(len(find_pii(s)) for s in iter_strings(row))
        lines.append(json.dumps(redact_value(row), ensure_ascii=False, default=str))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with target.open("x", encoding="utf-8") as f:  # "x": fail rather than replace a file that is there
            f.write("\n".join(lines) + "\n")
    except FileExistsError:
        raise UserError(f"{target}: redacted copy already exists; choose another --redact-dir (nothing was "
                        f"overwritten)") from None
    return total


