"""`make demo` learns: the demo recipe meets its targets, and its report renders with real plots (~2 min)."""

from __future__ import annotations

import json

import pytest
from conftest import REPO
from test_pipelines import check_report

from finetune import demo
from finetune.tiny import build_tiny


@pytest.mark.numerics
def test_demo_meets_its_targets_and_writes_its_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    model = build_tiny(tmp_path / "tiny-llama", "llama")  # exactly what `make tiny` builds
    student = build_tiny(tmp_path / "tiny-llama-student", "llama", hidden=64, layers=2, tokenizer=str(model))
    run_dir = tmp_path / "run"
    assert demo.main([f"base_model.path={model}", f"stages.distill.student={student}", f"output_dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    assert "| base |" in out and "| sft |" in out and "demo wall time" in out
    assert "MISSED" not in out, out  # the learning targets; the wall-time line is never asserted
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    em = {stage: r["qa_heldout"]["exact"] for stage, r in results.items()}
    assert em["base"] < 5 and em["sft"] >= 50 and em["distill-start"] < 5 and em["distill"] >= 25, em
    for stage in ("ppo", "dpo"):  # they move the policy, and held-out EM holds
        assert em[stage] >= em["sft"] - demo.EM_SLACK, (stage, em)
        kl = demo.final_kl(run_dir, stage)
        assert kl is not None and kl > demo.MOVED_KL, (stage, kl)
    assert em["grpo"] >= em["sft"] + demo.GRPO_GAIN, em  # the F1 reward teaches the span SFT left as a sentence
    accuracy = json.loads((run_dir / "reward" / "manifest.json").read_text())["reward_accuracy"]["accuracy"]
    assert accuracy >= 0.9
    check_report(run_dir, ["sft", "reward", "ppo", "dpo", "grpo", "distill"])


def test_paired_drop_is_mcnemars_exact_test():
    """One-sided exact McNemar: p = P(Binomial(lost + gained, 1/2) >= lost), worked out by hand below."""
    ids = [f"q{i}" for i in range(10)]
    before = dict.fromkeys(ids, 1.0)
    one_lost = {**before, "q0": 0.0}
    assert demo.paired_drop(before, one_lost) == {"lost": 1, "gained": 0, "p": 0.5}  # a single flip: noise
    five_lost = {q: 0.0 if i < 5 else 1.0 for i, q in enumerate(ids)}
    assert demo.paired_drop(before, five_lost)["p"] == 1 / 32  # 5 of 5 changes lost: significant at 0.05
    mixed_before = {q: 1.0 if i < 3 else 0.0 for i, q in enumerate(ids)}
    mixed_after = {q: 0.0 if i < 3 else (1.0 if i < 6 else 0.0) for i, q in enumerate(ids)}
    assert demo.paired_drop(mixed_before, mixed_after) == {"lost": 3, "gained": 3, "p": 42 / 64}
    assert demo.paired_drop(before, before) == {"lost": 0, "gained": 0, "p": 1.0}
