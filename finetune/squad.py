"""SQuAD v1.1 and v2.0 scoring, digit-for-digit equal to the official evaluation scripts.

This module transcribes ``evaluate-v1.1.py`` and ``evaluate-v2.0.py`` (stdlib only, so it is
cheap to import from the CLI). Sums run in the same order as the official code so that the
floating-point results match to the last digit.

Where the official scripts crash or behave oddly we chose as follows:

* v2.0, missing prediction: the official script prints ``Missing prediction for <id>`` to
  *stdout* and drops the question from the raw scores, after which the thresholding step
  looks it up and raises ``KeyError``. We print the same message to *stderr* and score the
  question as if the prediction were ``""`` (the no-answer prediction).
* v2.0, ``na_probs`` given but lacking a scored question: the official script raises
  ``KeyError``; we raise :class:`~finetune.errors.UserError` naming the question.
* v1.1, a question with no gold answers: the official script raises on ``max([])``; we raise
  ``UserError`` (unanswerable questions need ``squad_v2``).
* A dataset with no questions (official: ``ZeroDivisionError``) raises ``UserError``.
* v1.1, missing prediction: exactly as official (stderr message, scores 0, still counted).
"""

from __future__ import annotations

import json
import re
import string
import sys
from collections import Counter, OrderedDict
from collections.abc import Iterator
from typing import Any

from finetune.errors import UserError

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lowercase, delete ASCII punctuation, replace articles by a space, collapse whitespace."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


# ----------------------------------------------------------------------------- v1.1


def exact_match_v1(prediction: str, ground_truth: str) -> bool:
    """v1.1 ``exact_match_score``: normalised strings are equal (a bool, as in the official script)."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_v1(prediction: str, ground_truth: str) -> float:
    """v1.1 ``f1_score``: multiset token overlap F1; 0 when nothing is shared (even ``""`` vs ``""``)."""
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def iter_qas(dataset: list) -> Iterator[dict]:
    """Yield every question object (``qa``) of a SQuAD ``data`` list, in file order."""
    for article in dataset:
        for paragraph in article["paragraphs"]:
            yield from paragraph["qas"]


def no_gold_message(qid: str) -> str:
    """Why squad_v1 refuses a question without gold answers (the official script crashes on it)."""
    return f"question {qid} has no gold answers; score unanswerable questions with squad_v2"


def _v1_golds(qa: dict) -> list[str]:
    golds = [a["text"] for a in qa["answers"]]
    if not golds:
        raise UserError(no_gold_message(qa["id"]))
    return golds


def evaluate_v1(dataset: list, predictions: dict[str, str]) -> dict[str, float]:
    """Score like ``evaluate-v1.1.py``: ``{"exact_match": ..., "f1": ...}`` in percent.

    An unanswered question scores 0 (with the official warning on stderr). Raises ``UserError`` when the
    dataset has no questions, or when an answered question has no gold answers (the official script crashes
    on ``max([])``).
    """
    f1 = exact_match = total = 0
    for qa in iter_qas(dataset):
        total += 1
        if qa["id"] not in predictions:
            print("Unanswered question " + qa["id"] + " will receive score 0.", file=sys.stderr)
            continue
        golds = _v1_golds(qa)
        prediction = predictions[qa["id"]]
        exact_match += max(exact_match_v1(prediction, g) for g in golds)
        f1 += max(f1_v1(prediction, g) for g in golds)
    if total == 0:
        raise UserError("the dataset has no questions")
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


# ----------------------------------------------------------------------------- v2.0


def get_tokens(s: str) -> list[str]:
    """v2.0 tokenisation: normalised whitespace tokens, ``[]`` for an empty string."""
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(a_gold: str, a_pred: str) -> int:
    """v2.0 exact match as 0/1."""
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    """v2.0 F1: if either side has no tokens, 1 when both are empty and 0 otherwise."""
    gold_toks = get_tokens(a_gold)
    pred_toks = get_tokens(a_pred)
    common = Counter(gold_toks) & Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def _v2_golds(qa: dict) -> list[str]:
    golds = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])]
    # Unanswerable (or only article/punctuation answers): the only correct answer is "".
    return golds or [""]


def _v2_core(
    dataset: list,
    predictions: dict[str, str],
    na_probs: dict[str, float] | None,
    thresh: float,
    warn: bool = True,
):
    """Shared v2 pipeline: (preds, has_ans, golds, exact_raw, f1_raw, exact_thresh, f1_thresh)."""
    preds = dict(predictions)
    qid_to_has_ans: dict[str, bool] = {}
    golds: dict[str, list[str]] = {}
    exact_raw: dict[str, int] = {}
    f1_raw: dict[str, float] = {}
    for qa in iter_qas(dataset):
        qid = qa["id"]
        qid_to_has_ans[qid] = bool(qa["answers"])
        golds[qid] = _v2_golds(qa)
        if qid not in preds:
            # Official: prints to stdout and skips, then crashes later; see module docstring.
            if warn:
                print(f"Missing prediction for {qid}", file=sys.stderr)
            preds[qid] = ""
        exact_raw[qid] = max(compute_exact(a, preds[qid]) for a in golds[qid])
        f1_raw[qid] = max(compute_f1(a, preds[qid]) for a in golds[qid])
    if not exact_raw:
        raise UserError("the dataset has no questions")
    probs = na_probs if na_probs is not None else {k: 0.0 for k in preds}
    for qid in exact_raw:
        if qid not in probs:
            raise UserError(f"no-answer probabilities have no entry for question {qid}")
    exact_thresh = _apply_no_ans_threshold(exact_raw, probs, qid_to_has_ans, thresh)
    f1_thresh = _apply_no_ans_threshold(f1_raw, probs, qid_to_has_ans, thresh)
    return preds, qid_to_has_ans, golds, exact_raw, f1_raw, exact_thresh, f1_thresh


def _apply_no_ans_threshold(scores: dict, na_probs: dict, qid_to_has_ans: dict, thresh: float) -> dict:
    new_scores = {}
    for qid, s in scores.items():
        # Strictly greater: a probability equal to the threshold keeps the model's answer.
        if na_probs[qid] > thresh:
            new_scores[qid] = float(not qid_to_has_ans[qid])
        else:
            new_scores[qid] = s
    return new_scores


def _make_eval_dict(exact_scores: dict, f1_scores: dict, qid_list: list | None = None) -> OrderedDict:
    if not qid_list:
        total = len(exact_scores)
        return OrderedDict(
            [
                ("exact", 100.0 * sum(exact_scores.values()) / total),
                ("f1", 100.0 * sum(f1_scores.values()) / total),
                ("total", total),
            ]
        )
    total = len(qid_list)
    return OrderedDict(
        [
            ("exact", 100.0 * sum(exact_scores[k] for k in qid_list) / total),
            ("f1", 100.0 * sum(f1_scores[k] for k in qid_list) / total),
            ("total", total),
        ]
    )


def _find_best_thresh(preds: dict, scores: dict, na_probs: dict, qid_to_has_ans: dict) -> tuple[float, float]:
    num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    cur_score = num_no_ans
    best_score = cur_score
    best_thresh = 0.0
    # sorted() is stable, so ties keep the na_probs insertion order, as in the official script.
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            # The raw (unnormalised) prediction is tested: " " counts as an answer here.
            diff = -1 if preds[qid] else 0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


def evaluate_v2(
    dataset: list,
    predictions: dict[str, str],
    na_probs: dict[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> OrderedDict:
    """Score like ``evaluate-v2.0.py`` and return its ``out_eval`` with the same keys in the same order.

    ``na_probs`` maps question id to P(no answer); without it every probability is 0.0 and the
    ``best_*`` keys are left out, as in the official script without ``--na-prob-file``.
    """
    preds, has_ans, _, exact_raw, f1_raw, exact_thresh, f1_thresh = _v2_core(
        dataset, predictions, na_probs, na_prob_thresh
    )
    has_ans_qids = [k for k, v in has_ans.items() if v]
    no_ans_qids = [k for k, v in has_ans.items() if not v]
    out_eval = _make_eval_dict(exact_thresh, f1_thresh)
    for prefix, qids in (("HasAns", has_ans_qids), ("NoAns", no_ans_qids)):
        if qids:
            for k, v in _make_eval_dict(exact_thresh, f1_thresh, qid_list=qids).items():
                out_eval[f"{prefix}_{k}"] = v
    if na_probs is not None:
        best_exact, exact_best_thresh = _find_best_thresh(preds, exact_raw, na_probs, has_ans)
        best_f1, f1_best_thresh = _find_best_thresh(preds, f1_raw, na_probs, has_ans)
        out_eval["best_exact"] = best_exact
        out_eval["best_exact_thresh"] = exact_best_thresh
        out_eval["best_f1"] = best_f1
        out_eval["best_f1_thresh"] = f1_best_thresh
    return out_eval


# ----------------------------------------------------------------------------- per question


def per_question_scores(
    version: str,
    dataset: list,
    predictions: dict[str, str],
    na_probs: dict[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> list[dict[str, Any]]:
    """Per-question rows ``{id, prediction, golds, em, f1}`` (+ ``has_answer`` for v2) for error analysis.

    ``version`` is ``"squad_v1"`` or ``"squad_v2"``. A missing prediction shows as ``None`` (v1 scores
    it 0, v2 as ``""``) without a warning (the ``evaluate_*`` call gives that). v2 scores are after
    the no-answer threshold, i.e. what the totals average. Raises ``UserError`` for any other
    ``version``, and as the ``evaluate_*`` functions do (no questions, a v1 question without gold
    answers, a v2 question missing from ``na_probs``).
    """
    rows: list[dict[str, Any]] = []
    if version == "squad_v1":
        for qa in iter_qas(dataset):
            pred = predictions.get(qa["id"])
            if pred is None:  # unanswered: scores 0, and (as in evaluate_v1) golds are not checked
                golds, em, f1 = [a["text"] for a in qa["answers"]], False, 0
            else:
                golds = _v1_golds(qa)
                em = max(exact_match_v1(pred, g) for g in golds)
                f1 = max(f1_v1(pred, g) for g in golds)
            rows.append(
                {"id": qa["id"], "prediction": pred, "golds": golds, "em": float(em), "f1": float(f1)}
            )
        return rows
    if version != "squad_v2":
        raise UserError(f"unknown SQuAD version {version!r}; use squad_v1 or squad_v2")
    _, has_ans, golds_by_id, _, _, exact, f1s = _v2_core(
        dataset, predictions, na_probs, na_prob_thresh, False
    )
    for qid in exact:
        rows.append(
            {
                "id": qid,
                "prediction": predictions.get(qid),
                "golds": golds_by_id[qid],
                "em": float(exact[qid]),
                "f1": float(f1s[qid]),
                "has_answer": has_ans[qid],
            }
        )
    return rows


# ----------------------------------------------------------------------------- files


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: {what} file is a directory") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: {what} file is not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path}: {what} file is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None
    except OSError as e:
        raise UserError(f"{path}: cannot read {what} file ({e.strerror})") from None


def _check_layout(path: str, data: Any) -> None:
    """Check the parts of the SQuAD layout that scoring reads; the first fault is reported."""
    if not isinstance(data, list):
        raise UserError(f"{path}: 'data' must be a list of articles")
    for i, article in enumerate(data):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise UserError(f"{path}: data[{i}] must be an object with a 'paragraphs' list")
        for j, par in enumerate(article["paragraphs"]):
            where = f"data[{i}].paragraphs[{j}]"
            if not isinstance(par, dict) or not isinstance(par.get("qas"), list):
                raise UserError(f"{path}: {where} must be an object with a 'qas' list")
            for k, qa in enumerate(par["qas"]):
                where = f"data[{i}].paragraphs[{j}].qas[{k}]"
                if not isinstance(qa, dict) or not isinstance(qa.get("id"), str):
                    raise UserError(f"{path}: {where} must be an object with a string 'id'")
                answers = qa.get("answers")
                if not isinstance(answers, list):
                    raise UserError(f"{path}: {where} (id {qa['id']}) must have an 'answers' list")
                for a in answers:
                    if not isinstance(a, dict) or not isinstance(a.get("text"), str):
                        raise UserError(
                            f"{path}: {where} (id {qa['id']}) has an answer without a string 'text'"
                        )


def load_squad_dataset(path: str, expected_version: str | None = None) -> list:
    """Load the ``data`` list of a SQuAD JSON file, checking its layout.

    With ``expected_version`` (e.g. ``"1.1"``), a different ``version`` field gives the official
    v1.1 script's warning on stderr. Raises ``UserError`` naming ``path`` when the file is missing,
    unreadable, not UTF-8 or not JSON (with line and column), is not an object with a ``data`` list, or
    breaks the layout scoring reads (naming the first faulty ``data[i].paragraphs[j].qas[k]``).
    """
    obj = _read_json(path, "dataset")
    if not isinstance(obj, dict) or "data" not in obj:
        raise UserError(f"{path}: not a SQuAD dataset (expected a JSON object with a 'data' list)")
    _check_layout(path, obj["data"])
    if expected_version is not None and obj.get("version") != expected_version:
        print(
            f"Evaluation expects v-{expected_version}, but got dataset with v-{obj.get('version')}",
            file=sys.stderr,
        )
    return obj["data"]


def load_predictions(path: str) -> dict[str, str]:
    """Load a predictions JSON file: an object mapping question id to answer text.

    Raises ``UserError`` naming ``path`` when the file is missing, unreadable or not JSON, is not an
    object, or maps a question id to something other than a string.
    """
    obj = _read_json(path, "predictions")
    if not isinstance(obj, dict):
        raise UserError(f"{path}: predictions must be a JSON object mapping question id to answer text")
    for qid, text in obj.items():
        if not isinstance(text, str):
            raise UserError(f"{path}: prediction for {qid} is {type(text).__name__}, expected a string")
    return obj


def load_na_probs(path: str) -> dict[str, float]:
    """Load a no-answer probability JSON file: an object mapping question id to a number.

    Raises ``UserError`` naming ``path`` when the file is missing, unreadable or not JSON, is not an
    object, or maps a question id to something other than a number (booleans included).
    """
    obj = _read_json(path, "no-answer probability")
    if not isinstance(obj, dict):
        raise UserError(
            f"{path}: no-answer probabilities must be a JSON object mapping question id to a number"
        )
    for qid, p in obj.items():
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise UserError(
                f"{path}: no-answer probability for {qid} is {type(p).__name__}, expected a number"
            )
    return obj
