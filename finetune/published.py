"""Published SQuAD v1.1 systems scored on exactly the questions a task asks, to sit beside our stages.

The official leaderboard's dev-set predictions of five systems (eval/data/squad_v1_leaderboard, restricted to
the XQuAD-en question ids) are scored by the same official SQuAD v1.1 code as our models' answers
(finetune.squad), on the same question ids; a question a system did not answer counts as wrong, as in the
official script.
"""

from __future__ import annotations

import json
from pathlib import Path

from finetune import evaluation, squad

LEADERBOARD = Path(__file__).resolve().parent.parent / "eval" / "data" / "squad_v1_leaderboard"
SYSTEMS = [  # (file, label), weakest first
    ("logistic_regression_baseline.json", "Logistic regression (Rajpurkar et al., 2016)"),
    ("match_lstm_ensemble.json", "Match-LSTM ensemble"),
    ("slqa_plus_ensemble.json", "SLQA+ ensemble"),
    ("r_net_plus_ensemble.json", "r-net+ ensemble"),
    ("bert_ensemble.json", "BERT ensemble (Devlin et al., 2018)"),
]
MIN_COVERAGE = 0.99  # a task counts as SQuAD v1.1 dev questions when the systems answer this share of its ids


def _predictions(file: str) -> dict[str, str]:
    return json.loads((LEADERBOARD / file).read_text(encoding="utf-8"))


def published_scores(tasks: list[dict], limit: int | None = None) -> dict[str, dict[str, dict]]:
    """{system label: {task name: {"exact", "f1", "total"}}} for the tasks whose questions are SQuAD v1.1
    development questions (ids the leaderboard files answer); other tasks are left out. EM/F1 in percent."""
    bert = _predictions(SYSTEMS[-1][0])
    out: dict[str, dict[str, dict]] = {label: {} for _, label in SYSTEMS}
    for task in tasks:
        if task["metric"] != "squad_v1":
            continue
        rows = evaluation.task_rows(task, limit)
        if not rows or sum(r["id"] in bert for r in rows) < MIN_COVERAGE * len(rows):
            continue
        dataset = evaluation.official_layout(rows)
        for file, label in SYSTEMS:
            preds = _predictions(file)
            scores = squad.evaluate_v1(dataset, {r["id"]: preds.get(r["id"], "") for r in rows})
            out[label][task["name"]] = {"exact": scores["exact_match"], "f1": scores["f1"], "total": len(rows),
                                        "published": True}
    return {label: per_task for label, per_task in out.items() if per_task}
