"""Human review round trip: export a blind sheet from two stages' predictions, fill it in by script as two
raters would, import it; shares, Cohen's kappa (by hand and statsmodels) and agreement with F1."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
from statsmodels.stats.inter_rater import cohens_kappa

from finetune import cli, review
from finetune.evaluation import load_task, task_rows
from finetune.squad import normalize_answer

TASK = "qa_heldout"


@pytest.fixture
def run(tmp_path):
    """A run folder with predictions of `sft` and `dpo` on the first 40 questions of a real task."""
    rows = task_rows(load_task(TASK), 40)
    rng = random.Random(3)
    for stage in ("sft", "dpo"):
        folder = tmp_path / "run" / "eval" / stage / TASK
        folder.mkdir(parents=True)
        lines = []
        for r in rows:
            right = rng.random() < (0.5 if stage == "sft" else 0.7)
            answer = r["golds"][0] if right else ("unknown" if rng.random() < 0.5 else "the " + r["golds"][0] + " x")
            f1 = 1.0 if right else (0.0 if answer == "unknown" else 0.5)
            lines.append(json.dumps({"id": r["id"], "prompt": "p", "generation": answer, "answer": answer,
                                     "golds": r["golds"], "em": float(right), "f1": f1}))
        (folder / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "run"


def test_export_is_blind_and_keyed(run, tmp_path, capsys):
    assert cli.main(["review", "export", str(run), "--stages", "sft", "dpo", "--out", str(tmp_path / "s")]) == 0
    key = json.loads((tmp_path / "s.key.json").read_text())
    with (tmp_path / "s.csv").open() as f:
        sheet = list(csv.DictReader(f))
    jsonl = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["item"] for r in sheet] == [r["item"] for r in jsonl] == sorted(key["items"])
    sft = {json.loads(x)["id"]: json.loads(x) for x in (run / "eval/sft" / TASK / "predictions.jsonl").open()}
    dpo = {json.loads(x)["id"]: json.loads(x) for x in (run / "eval/dpo" / TASK / "predictions.jsonl").open()}
    differ = [q for q in sft if normalize_answer(sft[q]["answer"]) != normalize_answer(dpo[q]["answer"])]
    assert len(sheet) == len(differ) > 5
    orders = set()
    for row in sheet:
        k = key["items"][row["item"]]
        by_stage = {"sft": sft[k["id"]]["answer"], "dpo": dpo[k["id"]]["answer"]}
        assert row["answer_1"] == by_stage[k["answer_1"]] and row["answer_2"] == by_stage[k["answer_2"]]
        assert row["question"] and row["context"] and row["gold"] == "" and row["preference"] == ""
        orders.add(k["answer_1"])
    assert orders == {"sft", "dpo"}, "the order is randomised"
    assert "sft" not in (tmp_path / "s.csv").read_text() and "dpo" not in (tmp_path / "s.csv").read_text()
    # a filled-in sheet is never overwritten
    assert cli.main(["review", "export", str(run), "--stages", "sft", "dpo", "--out", str(tmp_path / "s")]) == 2
    assert "exists" in capsys.readouterr().err


def fill(tmp_path, flip_every: int | None):
    """Rater verdicts by script: prefer the answer with the higher F1 (tie when equal); optionally reverse
    every k-th verdict (a second, noisier rater)."""
    key = json.loads((tmp_path / "s.key.json").read_text())
    with (tmp_path / "s.csv").open() as f:
        sheet = list(csv.DictReader(f))
    for n, row in enumerate(sheet):
        k = key["items"][row["item"]]
        f1 = [k["f1"][k["answer_1"]], k["f1"][k["answer_2"]]]
        pick = "tie" if f1[0] == f1[1] else "1" if f1[0] > f1[1] else "2"
        if flip_every and n % flip_every == 0 and pick != "tie":
            pick = "2" if pick == "1" else "1"
        row["preference"] = pick
    return key, sheet


def test_import_shares_kappa_and_agreement_with_f1(run, tmp_path, capsys):
    cli.main(["review", "export", str(run), "--stages", "sft", "dpo", "--out", str(tmp_path / "s")])
    key, first = fill(tmp_path, None)
    with (tmp_path / "alice.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=review.COLUMNS)
        writer.writeheader()
        writer.writerows(first)
    _, second = fill(tmp_path, 4)
    (tmp_path / "bob.jsonl").write_text("".join(json.dumps(r) + "\n" for r in second))
    out = tmp_path / "summary.json"
    assert cli.main(["review", "import", str(tmp_path / "alice.csv"), str(tmp_path / "bob.jsonl"),
                     "--key", str(tmp_path / "s.key.json"), "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    verdicts = review.read_verdicts([tmp_path / "alice.csv", tmp_path / "bob.jsonl"], key)
    assert s["raters"] == ["alice", "bob"] and s["verdicts"] == 2 * len(first)
    pooled = [v for per in verdicts.values() for v in per.values()]
    assert s["win"]["count"] == pooled.count("B") and s["loss"]["count"] == pooled.count("A")
    assert s["win"]["share"] + s["tie"]["share"] + s["loss"]["share"] == pytest.approx(100)
    assert s["win"]["ci"][0] <= s["win"]["share"] <= s["win"]["ci"][1]
    # kappa between the raters equals statsmodels' on the same contingency table
    items = sorted(verdicts["alice"])
    labels = ["A", "B", "tie"]
    table = np.zeros((3, 3))
    for i in items:
        table[labels.index(verdicts["alice"][i]), labels.index(verdicts["bob"][i])] += 1
    (pair,) = s["rater_agreement"]
    assert pair["items"] == len(items) and pair["kappa"] == pytest.approx(cohens_kappa(table).kappa)
    # alice follows F1 exactly, bob reverses every 4th verdict: pooled agreement with F1 is below 100
    flipped = sum(1 for n, r in enumerate(first) if n % 4 == 0 and r["preference"] != "tie")
    assert s["human_vs_f1"]["agreement"] == pytest.approx(100 * (2 * len(first) - flipped) / (2 * len(first)))
    assert "Cohen's kappa alice vs bob" in capsys.readouterr().out


def test_kappa_by_hand():
    x = ["A", "A", "B", "B", "tie", "A"]
    y = ["A", "B", "B", "B", "tie", "A"]
    # p_o = 5/6; p_e = (3*2 + 2*3 + 1*1) / 36 = 13/36; kappa = (30/36 - 13/36) / (23/36) = 17/23
    assert review.cohen_kappa(x, y) == pytest.approx(17 / 23)
    assert review.cohen_kappa(x, x) == 1.0


@pytest.mark.parametrize("value, message", [("3", "preference '3'; write 1, 2 or tie"),
                                            ("maybe", "preference 'maybe'")])
def test_bad_verdict_is_one_line(run, tmp_path, capsys, value, message):
    cli.main(["review", "export", str(run), "--stages", "sft", "dpo", "--out", str(tmp_path / "s")])
    _, rows = fill(tmp_path, None)
    rows[2]["preference"] = value
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert cli.main(["review", "import", str(tmp_path / "r.jsonl"), "--key", str(tmp_path / "s.key.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "r.jsonl: row 3" in err and message in err and "\n" not in err
