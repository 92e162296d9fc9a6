"""Confidence intervals and paired stage comparisons against references computed independently here
(statsmodels' McNemar test, numpy bootstraps, exact sign-flip enumeration), on fixed data."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar

from finetune import stats
from finetune.evaluation import compare_stages, comparison_table, results_table

RNG = np.random.default_rng(12345)
EM_A = (RNG.random(240) < 0.55).astype(float) * 100
EM_B = np.where(RNG.random(240) < 0.15, 100 - EM_A, EM_A)  # 15% of answers change
EM_B[:12] = 100  # and a few more are right, so B is better
F1_A = np.clip(EM_A + RNG.normal(0, 20, 240), 0, 100)
F1_B = np.clip(EM_B + RNG.normal(0, 20, 240), 0, 100)


def numpy_bootstrap(x, n=20_000, seed=7, paired_with=None):
    """Percentile bootstrap of the mean (or of mean(y) - mean(x) when paired), written out with numpy."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n, len(x)))
    means = x[idx].mean(axis=1) if paired_with is None else paired_with[idx].mean(axis=1) - x[idx].mean(axis=1)
    return np.percentile(means, 2.5), np.percentile(means, 97.5)


def test_bootstrap_ci_matches_a_numpy_bootstrap_and_the_normal_interval():
    for x in (EM_A, F1_A):
        low, high = stats.bootstrap_ci(x)
        ref_low, ref_high = numpy_bootstrap(x)
        assert abs(low - ref_low) < 0.8 and abs(high - ref_high) < 0.8  # Monte Carlo error of 1000 resamples
        half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
        assert abs(low - (x.mean() - half)) < 1.0 and abs(high - (x.mean() + half)) < 1.0
        assert low < x.mean() < high


def test_bootstrap_is_seeded_and_degenerate_data_is_a_point():
    assert stats.bootstrap_ci(EM_A) == stats.bootstrap_ci(EM_A)
    assert stats.bootstrap_ci(EM_A, seed=1) != stats.bootstrap_ci(EM_A, seed=2)
    assert stats.bootstrap_ci([100.0] * 10) == (100.0, 100.0)
    with pytest.raises(ValueError):
        stats.bootstrap_ci([])


def test_paired_bootstrap_matches_numpy():
    low, high = stats.paired_bootstrap_ci(F1_A, F1_B)
    ref_low, ref_high = numpy_bootstrap(F1_A, paired_with=F1_B)
    assert abs(low - ref_low) < 0.5 and abs(high - ref_high) < 0.5
    # pairing matters: the paired interval is narrower than one from independent resampling of each stage
    unpaired = 1.96 * np.sqrt(F1_A.var(ddof=1) / 240 + F1_B.var(ddof=1) / 240)
    assert high - low < 2 * unpaired


@pytest.mark.parametrize("table", [[[50, 7], [2, 40]], [[10, 0], [5, 3]], [[30, 12], [12, 30]], [[5, 1], [0, 9]]])
def test_mcnemar_exact_equals_statsmodels(table):
    # rows: A right / wrong; columns: B right / wrong
    (rr, rw), (wr, ww) = table
    a = [1] * (rr + rw) + [0] * (wr + ww)
    b = [1] * rr + [0] * rw + [1] * wr + [0] * ww
    lost, gained, p = stats.mcnemar_exact(a, b)
    assert (lost, gained) == (rw, wr)
    assert p == pytest.approx(mcnemar(np.array(table), exact=True).pvalue, rel=1e-12)


def test_sign_flip_p_equals_exact_enumeration():
    d = np.array([3.0, -1.0, 4.0, 1.5, -0.5, 9.0, 2.0, -2.5, 6.0, 0.5])
    observed = abs(d.mean())
    signs = np.array(list(itertools.product([1, -1], repeat=len(d))))
    exact = np.mean(np.abs((signs * d).mean(axis=1)) >= observed - 1e-12)
    assert stats.sign_flip_p(np.zeros_like(d), d) == pytest.approx(exact, rel=1e-9)
    assert stats.sign_flip_p(d, d) == 1.0


def rows(em, f1, answers=None):
    return {str(i): {"em": e / 100, "f1": f / 100, "answer": (answers or {}).get(i, f"a{i}"), "golds": [f"g{i}"],
                     "prompt": f"q{i}"} for i, (e, f) in enumerate(zip(em, f1, strict=True))}


def test_compare_and_flips_on_fixed_data():
    a, b = rows(EM_A, F1_A), rows(EM_B, F1_B)
    c = stats.compare(a, b)
    assert c["questions"] == 240
    assert c["delta_exact"] == pytest.approx(EM_B.mean() - EM_A.mean())
    assert c["delta_f1"] == pytest.approx(F1_B.mean() - F1_A.mean())
    lost = int(np.sum((EM_A > 0) & (EM_B == 0)))
    gained = int(np.sum((EM_A == 0) & (EM_B > 0)))
    assert (c["lost"], c["gained"]) == (lost, gained)
    table = np.array([[np.sum((EM_A > 0) & (EM_B > 0)), lost], [gained, np.sum((EM_A == 0) & (EM_B == 0))]])
    assert c["p_exact"] == pytest.approx(mcnemar(table, exact=True).pvalue)
    assert c["significant_exact"] == (c["p_exact"] < 0.05)
    assert c["delta_exact_ci"][0] <= c["delta_exact"] <= c["delta_exact_ci"][1]
    flipped = stats.flips(a, b)
    assert len(flipped) == lost + gained
    assert {f["change"] for f in flipped} == {"right->wrong", "wrong->right"}
    first = next(f for f in flipped if f["change"] == "right->wrong")
    assert a[first["id"]]["em"] and not b[first["id"]]["em"] and first["golds"] == [f"g{first['id']}"]


def test_no_change_is_not_significant():
    a = rows(EM_A, F1_A)
    c = stats.compare(a, a)
    assert c["p_exact"] == 1.0 and c["p_f1"] == 1.0 and not c["significant_exact"] and c["delta_f1_ci"] == [0, 0]
    with pytest.raises(ValueError):
        stats.compare(a, {"other": {"em": 1, "f1": 1}})


def test_stage_comparison_files_and_tables(tmp_path):
    for stage, (em, f1) in {"base": (EM_A, F1_A), "sft": (EM_B, F1_B)}.items():
        folder = tmp_path / stage / "t"
        folder.mkdir(parents=True)
        (folder / "predictions.jsonl").write_text("".join(json.dumps({"id": i, **r}) + "\n"
                                                          for i, r in rows(em, f1).items()))
    out = compare_stages(tmp_path, [("base", "sft")], ["t", "missing-task"])
    assert len(out) == 1 and out[0]["from"] == "base" and out[0]["to"] == "sft"
    flips = (tmp_path / "comparisons" / "base_vs_sft" / "t" / "flips.jsonl").read_text().splitlines()
    assert len(flips) == out[0]["lost"] + out[0]["gained"]
    md = (tmp_path / "comparisons.md").read_text()
    assert md == comparison_table(out) and "| t | base | sft | 240 |" in md
    assert ("*" in md.splitlines()[2]) == (out[0]["significant_exact"] or out[0]["significant_f1"])


def test_results_table_shows_the_interval():
    summary = stats.summarize(EM_A, F1_A)
    table = results_table({"sft": {"t": summary}})
    lo, hi = summary["exact_ci"]
    assert f"{summary['exact']:.1f} ({lo:.1f}-{hi:.1f})" in table


def test_clean_and_overlap_split():
    from finetune.evaluation import clean_and_overlap, contamination_table

    preds = rows(EM_A, F1_A)
    overlap = {str(i) for i in range(0, 240, 4)}
    split = clean_and_overlap(preds, overlap)
    assert split["overlap"]["total"] == 60 and split["clean"]["total"] == 180
    assert split["overlap"]["exact"] == pytest.approx(EM_A[::4].mean())
    clean = np.delete(EM_A, np.arange(0, 240, 4))
    assert split["clean"]["exact"] == pytest.approx(clean.mean())
    assert clean_and_overlap(preds, set())["overlap"] == {"total": 0}
    table = contamination_table({"sft": {"t": split}})
    assert "| sft | t | 180 |" in table and "| 60 |" in table
