"""Label audit: look at the exact labels TRL will train on before any step is taken.

It catches the silent failures of SFT data: rows with no supervised token (a template or masking bug), an
end-of-turn/EOS token that is never supervised (the model never learns to stop), and truncation that cuts
answers away (TRL drops fully-masked rows without a word).
"""

from __future__ import annotations

import copy
import statistics
from typing import TYPE_CHECKING

from finetune.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase
    from trl import SFTTrainer

IGNORE = -100


def _cut_positions(length: int, max_length: int | None, mode: str) -> range:
    """Positions that truncation to max_length removes."""
    if max_length is None or length <= max_length:
        return range(0)
    return range(max_length, length) if mode == "keep_start" else range(0, length - max_length)


def tokenised_untruncated(trainer: SFTTrainer, raw_dataset: Dataset) -> Dataset:
    """Run TRL's own dataset preparation (same template, masks, EOS handling) without truncation or packing."""
    args = copy.copy(trainer.args)
    args.max_length, args.shuffle_dataset, args.use_liger_kernel = None, False, False
    return trainer._prepare_dataset(raw_dataset, trainer.processing_class, args, False, None, "label audit")


def label_audit(trainer: SFTTrainer, raw_dataset: Dataset, settings: dict, eos_token_id: int | None) -> dict:
    """Audit the labels of `raw_dataset` as `trainer` would build them; raise UserError on a failed check.

    Returns the manifest's label_audit report (rows, tokens per row, supervised share, EOS and truncation
    counts). Raises UserError when some row has no supervised token (naming up to five row indices), when
    `settings["require_eos"]` is set and the EOS token is supervised in no row, when truncation at max_length
    cuts away the whole answer of every row, or when it cuts into more answers than
    audit.max_truncated_share allows.
    """
    args = trainer.args
    prepared = tokenised_untruncated(trainer, raw_dataset)
    strategy = args.packing_strategy if args.packing else None
    # Padding-free packing strategies split or wrap long rows instead of cutting them.
    truncates = args.max_length is not None and strategy in (None, "bfd")
    mode = args.truncation_mode if not args.packing else "keep_start"
    lengths, supervised, no_label_rows, eos_rows, cut_rows, lost_rows = [], [], [], 0, [], []
    for i, labels in enumerate(prepared["labels"]):
        sup = [p for p, t in enumerate(labels) if t != IGNORE]
        lengths.append(len(labels))
        supervised.append(len(sup))
        if not sup:
            no_label_rows.append(i)
            continue
        if eos_token_id is not None and any(labels[p] == eos_token_id for p in sup):
            eos_rows += 1
        if truncates:
            cut = _cut_positions(len(labels), args.max_length, mode)
            lost = sum(1 for p in sup if p in cut)
            if lost:
                cut_rows.append(i)
            if lost == len(sup):
                lost_rows.append(i)
    n = len(lengths)
    report = {
        "rows": n,
        "tokens": {"mean": round(statistics.fmean(lengths), 1), "max": max(lengths), "min": min(lengths)},
        "supervised_tokens": sum(supervised),
        "supervised_share": round(sum(supervised) / max(1, sum(lengths)), 4),
        "rows_without_supervised_tokens": len(no_label_rows),
        "rows_with_supervised_eos": eos_rows,
        "rows_answer_truncated": len(cut_rows),
        "rows_answer_fully_truncated": len(lost_rows),
        "max_length": args.max_length,
    }
    if no_label_rows:
        rows = ", ".join(map(str, no_label_rows[:5])) + (" ..." if len(no_label_rows) > 5 else "")
        raise UserError(f"label audit: {len(no_label_rows)} of {n} training rows have no supervised token "
                        f"(rows {rows}); check the loss setting and the chat template's generation markers")
    if settings["require_eos"] and eos_token_id is not None and eos_rows == 0:
        raise UserError("label audit: the end-of-turn/EOS token is never supervised, so the model will not "
                        "learn to stop; fix the chat template (EOS inside {% generation %}) or set "
                        "audit.require_eos: false")
    if truncates and len(lost_rows) == n:
        raise UserError(f"label audit: truncation at max_length={args.max_length} cuts away the whole answer of "
                        f"every row, leaving nothing to train on; raise train.max_length")
    _check_truncated_share(len(cut_rows), n, "the answer of", "rows", args.max_length, settings)
    return report


def _check_truncated_share(cut: int, n: int, what: str, unit: str, max_length: int, settings: dict) -> None:
    share = cut / n
    if share > settings["max_truncated_share"]:
        raise UserError(f"label audit: truncation at max_length={max_length} cuts into {what} {cut} of {n} {unit} "
                        f"({share:.1%} > audit.max_truncated_share {settings['max_truncated_share']:.1%}); raise "
                        f"train.max_length or shorten the data")


def format_report(report: dict) -> str:
    """One short human-readable line for the terminal."""
    return (f"label audit: {report['rows']} rows, {report['tokens']['mean']} tokens/row (max "
            f"{report['tokens']['max']}), {report['supervised_share']:.0%} supervised, EOS supervised in "
            f"{report['rows_with_supervised_eos']}/{report['rows']} rows, answers truncated in "
            f"{report['rows_answer_truncated']} rows")


def _token_counter(tokenizer: PreTrainedTokenizerBase, kind: str):
    """count(text or messages, generation_prompt=False) -> tokens, rendered as the trainers render them."""
    if kind == "text":
        def count(text: str, generation_prompt: bool = False) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    else:
        def count(messages: list, generation_prompt: bool = False) -> int:
            return len(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                                     return_dict=True)["input_ids"])
    return count


def _pair_lengths(pairs: Dataset, tokenizer: PreTrainedTokenizerBase,
                  kind: str) -> tuple[list[int], list[int], list[int]]:
    """Token lengths of prompt, prompt+chosen and prompt+rejected, rendered as the trainers render them."""
    count = _token_counter(tokenizer, kind)
    prompts, chosen, rejected = [], [], []
    for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"], strict=True):
        prompts.append(count(p, True))
        chosen.append(count(p + c))
        rejected.append(count(p + r))
    return prompts, chosen, rejected


def preference_audit(pairs: Dataset, tokenizer: PreTrainedTokenizerBase, kind: str, max_length: int | None,
                     settings: dict) -> dict:
    """Truncation audit for reward/DPO pairs: how many answers `max_length` cuts into, or cuts away.

    Returns {"pairs", "max_length", "tokens": {mean, max}, "pairs_answer_truncated",
    "pairs_answer_fully_truncated"}, lengths in tokens as the trainers render them. When the audit is enabled,
    raises UserError when every prompt alone fills max_length (no answer left to compare) or when truncation
    cuts into more pairs' answers than audit.max_truncated_share allows.
    """
    prompts, chosen, rejected = _pair_lengths(pairs, tokenizer, kind)
    n = len(prompts)
    cut = [i for i in range(n) if max_length and max(chosen[i], rejected[i]) > max_length]
    lost = [i for i in range(n) if max_length and prompts[i] >= max_length]
    report = {"pairs": n, "max_length": max_length,
              "tokens": {"mean": round(statistics.fmean(chosen + rejected), 1), "max": max(chosen + rejected)},
              "pairs_answer_truncated": len(cut), "pairs_answer_fully_truncated": len(lost)}
    if not settings["enabled"]:
        return report
    if lost and len(lost) == n:
        raise UserError(f"label audit: at max_length={max_length} every prompt fills the whole window, so no "
                        f"answer is left to compare; raise train.max_length")
    _check_truncated_share(len(cut), n, "the answers of", "pairs", max_length, settings)
    return report


def unpaired_audit(rows: Dataset, tokenizer: PreTrainedTokenizerBase, kind: str, max_length: int | None,
                   settings: dict) -> dict:
    """Truncation and label audit for KTO's unpaired rows (prompt, completion, label).

    Returns {"rows", "desirable", "undesirable", "max_length", "tokens": {mean, max}, "rows_answer_truncated",
    "rows_answer_fully_truncated"}. Raises UserError (when the audit is enabled) when every prompt fills the
    window, when truncation cuts into more completions than audit.max_truncated_share allows, or when every
    row has the same label (KTO's loss then has nothing to contrast).
    """
    count = _token_counter(tokenizer, kind)
    prompts = [count(p, True) for p in rows["prompt"]]
    full = [count(p + c) for p, c in zip(rows["prompt"], rows["completion"], strict=True)]
    n, desirable = len(full), sum(bool(x) for x in rows["label"])
    cut = sum(1 for f in full if max_length and f > max_length)
    lost = sum(1 for p in prompts if max_length and p >= max_length)
    report = {"rows": n, "desirable": desirable, "undesirable": n - desirable, "max_length": max_length,
              "tokens": {"mean": round(statistics.fmean(full), 1), "max": max(full)},
              "rows_answer_truncated": cut, "rows_answer_fully_truncated": lost}
    if not settings["enabled"]:
        return report
    if desirable in (0, n):
        raise UserError(f"label audit: all {n} rows are labelled {'desirable' if desirable else 'undesirable'}; "
                        f"KTO needs both desirable (label: true) and undesirable (label: false) completions")
    if lost == n:
        raise UserError(f"label audit: at max_length={max_length} every prompt fills the whole window, so no "
                        f"completion is left to learn from; raise train.max_length")
    _check_truncated_share(cut, n, "the completions of", "rows", max_length, settings)
    return report
