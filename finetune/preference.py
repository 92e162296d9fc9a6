"""Preference pairs and RL prompts: detect the layout, normalise to TRL's explicit-prompt format.

Layouts accepted (after `columns:` renames):
  explicit     prompt + chosen + rejected, as text or as message lists
  implicit     chosen + rejected conversations that share a prefix (the prompt); also UltraFeedback's
               layout, where a `prompt` string sits beside conversations that already include it
  hh           "\n\nHuman: ... \n\nAssistant: ..." text in chosen/rejected (Anthropic HH style)
Every pair becomes {"prompt", "chosen", "rejected"}: conversational (messages) or text, one kind per stage.
Pairs whose answers are equal or empty are dropped and counted by reason, never silently.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from finetune.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset

HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
CHAT_ROLES = ("system", "user", "assistant", "tool")


def _is_messages(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and m.get("role") in CHAT_ROLES and isinstance(m.get("content"), str) for m in value)


def parse_hh(text: str) -> list[dict]:
    """Split "\n\nHuman: a\n\nAssistant: b" into messages; raises ValueError when it has no turns."""
    if not isinstance(text, str):
        raise ValueError(f"expected '\\n\\nHuman: ... \\n\\nAssistant: ...' text, got {type(text).__name__}")
    parts = HH_TURN.split(text if text.startswith("\n\n") else "\n\n" + text)
    if len(parts) < 3 or parts[0].strip():
        raise ValueError("not in the '\\n\\nHuman: ... \\n\\nAssistant: ...' layout")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def detect_layout(columns: list[str], first: dict, where: str) -> str:
    """The layout of a preference source, "explicit", "implicit" or "hh", from its columns and `first` row.

    Raises UserError at `where` when the `chosen` or `rejected` column is missing, or when, without a
    `prompt` column, chosen is neither a message list nor HH-style "\n\nHuman: ... \n\nAssistant: ..." text.
    """
    cols = set(columns)
    if {"chosen", "rejected"} - cols:
        raise UserError(f"{where}: preference data needs `chosen` and `rejected` columns; found {sorted(cols)} "
                        f"(map yours with `columns:`)")
    if "prompt" in cols:
        # UltraFeedback-binarised style: a prompt string next to full conversations that already hold it.
        chosen = first.get("chosen")
        if isinstance(first.get("prompt"), str) and _is_messages(chosen) and chosen and \
                chosen[0]["role"] in ("system", "user"):
            return "implicit"
        return "explicit"
    if isinstance(first["chosen"], str) and "\n\nAssistant:" in first["chosen"]:
        return "hh"
    if _is_messages(first["chosen"]):
        return "implicit"
    raise UserError(f"{where}: chosen/rejected without a prompt must be conversations (message lists) or "
                    f"'\\n\\nHuman: ... \\n\\nAssistant: ...' text")


def _split_shared_prefix(chosen: list[dict], rejected: list[dict]) -> tuple[list, list, list]:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def _answer_text(value) -> str:
    return value if isinstance(value, str) else " ".join(m["content"] for m in value)


def normalise_pair(row: dict, layout: str) -> tuple[dict | None, str | None]:
    """(pair, None) or (None, reason dropped). Raises ValueError for malformed rows."""
    if layout == "explicit":
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        if isinstance(prompt, str) != isinstance(chosen, str) or isinstance(chosen, str) != isinstance(rejected, str):
            raise ValueError("prompt, chosen and rejected must all be text or all be message lists")
        if not isinstance(prompt, str) and not all(map(_is_messages, (prompt, chosen, rejected))):
            raise ValueError(f"message lists need {{role, content}} items with role one of {', '.join(CHAT_ROLES)}")
    else:
        if layout == "hh":
            chosen_msgs, rejected_msgs = parse_hh(row["chosen"]), parse_hh(row["rejected"])
        else:
            chosen_msgs, rejected_msgs = row["chosen"], row["rejected"]
            if not (_is_messages(chosen_msgs) and _is_messages(rejected_msgs)):
                raise ValueError(f"chosen and rejected must be message lists with roles {', '.join(CHAT_ROLES)}")
        if chosen_msgs == rejected_msgs:
            return None, "chosen == rejected"
        prompt, chosen, rejected = _split_shared_prefix(chosen_msgs, rejected_msgs)
        if not prompt:
            return None, "no shared prompt"
    c, r = _answer_text(chosen).strip(), _answer_text(rejected).strip()
    if not c or not r:
        return None, "empty answer"
    if c == r:
        return None, "chosen == rejected"
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, None


def normalise_pairs(ds: Dataset, where: str) -> tuple[Dataset, dict[str, int], str]:
    """Normalise a preference dataset; returns (dataset, dropped-count by reason, kind chat|text).

    Raises UserError at `where` for a source with no rows, an unrecognised layout, a malformed row (naming
    its index), no usable pair left after drops, or text and conversational pairs mixed.
    """
    import datasets

    if len(ds) == 0:
        raise UserError(f"{where}: no rows")
    layout = detect_layout(ds.column_names, ds[0], where)
    rows, dropped = [], {}
    for i, row in enumerate(ds):
        try:
            pair, reason = normalise_pair(row, layout)
        except (ValueError, TypeError, KeyError) as e:
            raise UserError(f"{where}: row {i}: {e}") from None
        if pair is None:
            dropped[reason] = dropped.get(reason, 0) + 1
        else:
            rows.append(pair)
    if not rows:
        raise UserError(f"{where}: no usable pairs left ({', '.join(f'{n} {r}' for r, n in dropped.items())})")
    kind = "text" if isinstance(rows[0]["prompt"], str) else "chat"
    if any(isinstance(r["prompt"], str) != (kind == "text") for r in rows):
        raise UserError(f"{where}: mixes text and conversational pairs; use one layout per source")
    return datasets.Dataset.from_list(rows), dropped, kind


def prompts_only(ds: Dataset, where: str) -> tuple[Dataset, dict[str, int], str]:
    """RL prompts from a prompt set (`prompt` or `messages` minus the final answer) or from preference pairs.

    Returns (dataset of {"prompt"} rows, plus "answers" where the source has them; dropped-count by reason;
    kind chat|text). Raises UserError at `where`, naming the row, for an empty prompt, a prompt or messages
    value that is neither text nor {role, content} turns, text and conversational prompts mixed, or a source
    with neither a `prompt` nor a `messages` column nor preference pairs.
    """
    import datasets

    cols = set(ds.column_names)
    if {"chosen", "rejected"} <= cols:
        if "prompt" in cols:  # implicit layouts without a shared prompt are dropped (and counted) instead
            for i, prompt in enumerate(ds["prompt"]):
                if not prompt or (isinstance(prompt, str) and not prompt.strip()):
                    raise UserError(f"{where}: row {i}: empty prompt")
        pairs, dropped, kind = normalise_pairs(ds, where)
        return datasets.Dataset.from_list([{"prompt": p} for p in pairs["prompt"]]), dropped, kind
    rows, kinds = [], set()
    for i, row in enumerate(ds):
        if "prompt" in cols:
            prompt = row["prompt"]
        elif "messages" in cols:
            messages = row["messages"]
            if not _is_messages(messages):
                raise UserError(f"{where}: row {i}: messages must be a list of {{role, content}} turns with role "
                                f"one of {', '.join(CHAT_ROLES)}")
            prompt = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
        else:
            raise UserError(f"{where}: RL prompts need a `prompt` or `messages` column (or preference pairs); "
                            f"found {sorted(cols)}")
        if not isinstance(prompt, str) and not _is_messages(prompt):
            raise UserError(f"{where}: row {i}: a prompt must be text or a list of {{role, content}} turns with "
                            f"role one of {', '.join(CHAT_ROLES)}")
        if not prompt or (isinstance(prompt, str) and not prompt.strip()):
            raise UserError(f"{where}: row {i}: empty prompt")
        kinds.add("text" if isinstance(prompt, str) else "chat")
        if len(kinds) > 1:
            raise UserError(f"{where}: row {i}: mixes text and conversational prompts; use one layout per source")
        # gold answers travel with the prompt, for verifiable rewards (finetune.rewards)
        rows.append({"prompt": prompt, **({"answers": row["answers"]} if "answers" in cols else {})})
    kind = "text" if isinstance(rows[0]["prompt"], str) else "chat"
    return datasets.Dataset.from_list(rows), {}, kind


def unpaired(ds: Dataset, where: str) -> tuple[Dataset, dict[str, int], str]:
    """KTO rows {prompt, completion, label}: unpaired feedback as it is, or preference pairs split in two.

    Unpaired rows need `prompt`, `completion` (text, or assistant turns after a conversational prompt) and a
    boolean `label` (true = desirable). Pairs go through `normalise_pairs` and then TRL's
    `unpair_preference_dataset` (chosen -> label true, rejected -> false), so a source of N pairs gives 2N rows.
    Rows with an empty completion are dropped and counted. Returns (dataset, dropped-count by reason, kind
    chat|text). Raises UserError naming the row for a label that is not true/false, a missing column, or
    text and conversations mixed.
    """
    import datasets

    cols = set(ds.column_names)
    if {"chosen", "rejected"} <= cols:
        from trl.data_utils import unpair_preference_dataset

        pairs, dropped, kind = normalise_pairs(ds, where)
        return unpair_preference_dataset(pairs), dropped, kind
    missing = {"prompt", "completion", "label"} - cols
    if missing:
        raise UserError(f"{where}: KTO data needs `prompt`, `completion` and `label` columns (or preference pairs "
                        f"with `chosen`/`rejected`); missing {', '.join(sorted(missing))} (map yours with `columns:`)")
    rows, dropped, kinds = [], {}, set()
    for i, row in enumerate(ds):
        prompt, completion, label = row["prompt"], row["completion"], row["label"]
        if not isinstance(label, bool):
            raise UserError(f"{where}: row {i}: label must be true or false (is the answer desirable?), "
                            f"got {label!r}")
        for name, value in (("prompt", prompt), ("completion", completion)):
            if not isinstance(value, str) and not _is_messages(value):
                raise UserError(f"{where}: row {i}: {name} must be text or a list of {{role, content}} turns")
        if not prompt or (isinstance(prompt, str) and not prompt.strip()):
            raise UserError(f"{where}: row {i}: empty prompt")
        if not _answer_text(completion).strip():
            dropped["empty completion"] = dropped.get("empty completion", 0) + 1
            continue
        kinds.add("text" if isinstance(prompt, str) else "chat")
        if len(kinds) > 1 or isinstance(prompt, str) != isinstance(completion, str):
            raise UserError(f"{where}: row {i}: mixes text and conversations; use one layout per source")
        rows.append({"prompt": prompt, "completion": completion, "label": label})
    if not rows:
        raise UserError(f"{where}: no usable rows left ({', '.join(f'{n} {r}' for r, n in dropped.items())})")
    return datasets.Dataset.from_list(rows), dropped, kinds.pop()
