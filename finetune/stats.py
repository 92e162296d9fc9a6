"""Uncertainty around EM/F1 and paired comparisons between stages on the same questions (scipy).

Scores are per question, in percent: EM 0 or 100, F1 0-100. Resampling is over questions, seeded, so a
report is reproducible to the last digit.

- `bootstrap_ci`: the percentile bootstrap confidence interval of the mean (Efron & Tibshirani 1993, ch. 13),
  `scipy.stats.bootstrap`.
- `compare`: stage B against stage A on the same questions: the mean difference with a paired bootstrap CI;
  for EM, McNemar's exact test (McNemar 1947: under "no difference" each changed answer is a gain or a loss
  with probability 1/2, a two-sided binomial test on the changed answers, `scipy.stats.binomtest`); for F1, a
  paired sign-flip permutation test of the mean difference (`scipy.stats.permutation_test`).
"""

from __future__ import annotations

import numpy as np

N_RESAMPLES = 1000
LEVEL = 0.95
ALPHA = 0.05  # a difference is called significant when the paired test's p-value is below this
SEED = 0


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def bootstrap_ci(scores, n_resamples: int = N_RESAMPLES, level: float = LEVEL,
                 seed: int = SEED) -> tuple[float, float]:
    """(low, high) percentile-bootstrap CI of the mean of `scores` (one value per question), same units.

    Raises ValueError on an empty list. All-equal scores give (value, value): no resample can differ.
    """
    from scipy.stats import bootstrap

    x = np.asarray(scores, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_ci: no scores")
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    res = bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=level, method="percentile",
                    rng=_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_bootstrap_ci(a, b, n_resamples: int = N_RESAMPLES, level: float = LEVEL,
                        seed: int = SEED) -> tuple[float, float]:
    """(low, high) paired percentile-bootstrap CI of mean(b) - mean(a): questions are resampled together."""
    from scipy.stats import bootstrap

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = b - a
    if d.size == 0:
        raise ValueError("paired_bootstrap_ci: no scores")
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    res = bootstrap((a, b), lambda x, y, axis=-1: np.mean(y, axis=axis) - np.mean(x, axis=axis), paired=True,
                    n_resamples=n_resamples, confidence_level=level, method="percentile", rng=_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mcnemar_exact(em_a, em_b) -> tuple[int, int, float]:
    """(lost, gained, two-sided p) for exact-match vectors (truthy = right) of two systems on the same questions.

    lost = right under A and wrong under B; gained = the reverse. p = 1.0 when no answer changed.
    """
    from scipy.stats import binomtest

    a, b = np.asarray(em_a, dtype=bool), np.asarray(em_b, dtype=bool)
    lost, gained = int(np.sum(a & ~b)), int(np.sum(~a & b))
    p = binomtest(lost, lost + gained, 0.5).pvalue if lost + gained else 1.0
    return lost, gained, float(p)


def sign_flip_p(a, b, n_resamples: int = 10_000, seed: int = SEED) -> float:
    """Two-sided p-value of the paired sign-flip permutation test that mean(b - a) is 0."""
    from scipy.stats import permutation_test

    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if not np.any(d):
        return 1.0
    res = permutation_test((d,), np.mean, permutation_type="samples", n_resamples=n_resamples,
                           alternative="two-sided", rng=_rng(seed))
    return float(res.pvalue)


def summarize(em, f1, seed: int = SEED) -> dict:
    """{"exact", "f1", "exact_ci", "f1_ci", "total"} for per-question EM and F1 in percent."""
    em, f1 = np.asarray(em, dtype=float), np.asarray(f1, dtype=float)
    return {"exact": float(em.mean()), "f1": float(f1.mean()), "exact_ci": list(bootstrap_ci(em, seed=seed)),
            "f1_ci": list(bootstrap_ci(f1, seed=seed)), "total": int(em.size)}


def compare(a: dict[str, dict], b: dict[str, dict], seed: int = SEED) -> dict:
    """Stage B against stage A on the questions both answered.

    a, b: question id -> {"em": 0/1 or 0/100, "f1": 0-1 or 0-100, ...} (the rows of predictions.jsonl; a
    scale of 1 is turned into percent). Returns {"questions", "delta_exact", "delta_exact_ci", "p_exact",
    "delta_f1", "delta_f1_ci", "p_f1", "lost", "gained", "significant_exact", "significant_f1"}; deltas in
    points (percent), p-values two-sided. Raises ValueError when the two share no question.
    """
    ids = sorted(set(a) & set(b))
    if not ids:
        raise ValueError("compare: the two stages share no question")

    def vec(rows: dict, key: str) -> np.ndarray:
        x = np.array([float(rows[i][key]) for i in ids])
        return x * 100 if x.max(initial=0) <= 1 else x

    em_a, em_b, f1_a, f1_b = vec(a, "em"), vec(b, "em"), vec(a, "f1"), vec(b, "f1")
    lost, gained, p_em = mcnemar_exact(em_a > 0, em_b > 0)
    p_f1 = sign_flip_p(f1_a, f1_b, seed=seed)
    return {"questions": len(ids),
            "delta_exact": float(em_b.mean() - em_a.mean()),
            "delta_exact_ci": list(paired_bootstrap_ci(em_a, em_b, seed=seed)),
            "p_exact": p_em, "significant_exact": p_em < ALPHA,
            "delta_f1": float(f1_b.mean() - f1_a.mean()),
            "delta_f1_ci": list(paired_bootstrap_ci(f1_a, f1_b, seed=seed)),
            "p_f1": p_f1, "significant_f1": p_f1 < ALPHA,
            "lost": lost, "gained": gained}


def flips(a: dict[str, dict], b: dict[str, dict]) -> list[dict]:
    """The questions whose exact match changed from A to B: {"id", "change": "right->wrong" or
    "wrong->right", "question", "golds", "answer_a", "answer_b"} (question text when the rows carry a prompt)."""
    out = []
    for i in sorted(set(a) & set(b)):
        ra, rb = a[i], b[i]
        if bool(ra["em"]) == bool(rb["em"]):
            continue
        out.append({"id": i, "change": "right->wrong" if ra["em"] else "wrong->right",
                    "question": ra.get("question") or ra.get("prompt"), "golds": ra.get("golds"),
                    "answer_a": ra.get("answer"), "answer_b": rb.get("answer")})
    return out
