"""``finetune score``: the official SQuAD v1.1 / v2.0 evaluation scripts as a subcommand.

Standard output is what the official script prints: one line of JSON for ``squad_v1``
(``{"exact_match": ..., "f1": ...}``) and ``json.dumps(out_eval, indent=2)`` for ``squad_v2``.
Warnings (version mismatch, missing predictions) go to stderr so stdout stays parseable.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from finetune.errors import UserError

_DEFAULT_NA_PROB_THRESH = 1.0


def add_score_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``score`` subcommand on an ``add_subparsers()`` object and return its parser."""
    p = subparsers.add_parser(
        "score",
        help="score SQuAD predictions (official v1.1 / v2.0 metrics)",
        description="Score a predictions JSON (question id -> answer text) against a SQuAD dataset JSON, "
        "with the same numbers as the official evaluate-v1.1.py / evaluate-v2.0.py scripts.",
    )
    p.add_argument("version", choices=["squad_v1", "squad_v2"], help="which official script to reproduce")
    p.add_argument("dataset", help="SQuAD-format dataset JSON ({'version': ..., 'data': [...]})")
    p.add_argument("predictions", help="predictions JSON: {question id: answer text}")
    p.add_argument(
        "--na-prob-file",
        metavar="F",
        default=None,
        help="squad_v2 only: JSON {question id: probability of no answer}; adds best_exact/best_f1",
    )
    p.add_argument(
        "--na-prob-thresh",
        metavar="T",
        type=float,
        default=None,
        help="squad_v2 only: answer '' when the no-answer probability is greater than T (default 1.0)",
    )
    p.add_argument("--out-file", metavar="F", default=None, help="also write the JSON result to this file")
    p.add_argument(
        "--per-question",
        metavar="FILE",
        default=None,
        help="write one JSON line per question (id, prediction, golds, em, f1) for error analysis",
    )
    p.add_argument(
        "--stats",
        action="store_true",
        help="also print EM/F1 with 95%% bootstrap confidence intervals over questions (seeded, 1000 resamples)",
    )
    p.set_defaults(func=run_score)
    return p


def _write_text(path: str, text: str, what: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise UserError(f"{path}: cannot write {what} ({e.strerror})") from None


def run_score(args: argparse.Namespace) -> int:
    """Run ``finetune score``: print the official JSON result, optionally write files; return 0.

    Raises UserError when --na-prob-file or --na-prob-thresh is given for squad_v1, when the no-answer
    probabilities lack a question of the dataset, when the dataset (named in the message) has no questions or
    a v1.1 question without answers, or (through the loaders) when an input file is unreadable or malformed
    or an output file cannot be written.
    """
    # Imported here so that building the CLI parser stays cheap.
    from finetune import squad

    v2 = args.version == "squad_v2"
    if not v2 and (args.na_prob_file is not None or args.na_prob_thresh is not None):
        raise UserError("--na-prob-file and --na-prob-thresh only apply to squad_v2")
    thresh = _DEFAULT_NA_PROB_THRESH if args.na_prob_thresh is None else args.na_prob_thresh

    # Only the v1.1 script checks the dataset's version field; v2.0 ignores it.
    dataset = squad.load_squad_dataset(args.dataset, expected_version=None if v2 else "1.1")
    predictions = squad.load_predictions(args.predictions)
    na_probs = squad.load_na_probs(args.na_prob_file) if args.na_prob_file else None
    if na_probs is not None:
        missing = next((qa["id"] for qa in squad.iter_qas(dataset) if qa["id"] not in na_probs), None)
        if missing is not None:
            raise UserError(f"{args.na_prob_file}: no no-answer probability for question {missing}")

    try:
        if v2:
            result: dict = squad.evaluate_v2(dataset, predictions, na_probs, thresh)
            rows = (
                squad.per_question_scores("squad_v2", dataset, predictions, na_probs, thresh)
                if args.per_question or args.stats
                else []
            )
        else:
            result = squad.evaluate_v1(dataset, predictions)
            rows = (squad.per_question_scores("squad_v1", dataset, predictions)
                    if args.per_question or args.stats else [])
    except UserError as e:
        # The remaining faults (no questions, v1 question without answers) are in the dataset.
        raise UserError(f"{args.dataset}: {e}") from None

    # v2.0 prints indented JSON but writes --out-file compactly; v1.1 has one format.
    print(json.dumps(result, indent=2) if v2 else json.dumps(result))
    if args.out_file:
        _write_text(args.out_file, json.dumps(result), "the result")
    if args.stats:
        from finetune import stats

        summary = stats.summarize([100 * r["em"] for r in rows], [100 * r["f1"] for r in rows])
        print(f"EM {summary['exact']:.2f} (95% CI {summary['exact_ci'][0]:.2f}-{summary['exact_ci'][1]:.2f}), "
              f"F1 {summary['f1']:.2f} (95% CI {summary['f1_ci'][0]:.2f}-{summary['f1_ci'][1]:.2f}) over "
              f"{summary['total']} questions (percentile bootstrap, {stats.N_RESAMPLES} resamples, seed {stats.SEED})")
    if args.per_question:
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        _write_text(args.per_question, lines, "per-question scores")
    return 0
