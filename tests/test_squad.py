"""SQuAD scoring: finetune.squad / `finetune score` / eval/squad_metric against the official scripts.

The ``ref_*`` functions below are an independent transcription of the official
evaluate-v1.1.py and evaluate-v2.0.py (kept deliberately close to the original code).
"""

import argparse
import collections
import json
import os
import random
import re
import string
import sys
from collections import Counter
from pathlib import Path

import pytest

from finetune import squad
from finetune.errors import UserError
from finetune.score import add_score_parser

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "eval" / "data"


# ------------------------------------------------------------------ reference (official scripts)
def ref_normalize(s):
    def remove_articles(text):
        return re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def ref_f1_v1(prediction, ground_truth):
    p, g = ref_normalize(prediction).split(), ref_normalize(ground_truth).split()
    num_same = sum((Counter(p) & Counter(g)).values())
    if num_same == 0:
        return 0
    precision, recall = 1.0 * num_same / len(p), 1.0 * num_same / len(g)
    return (2 * precision * recall) / (precision + recall)


def ref_em_v1(prediction, ground_truth):
    return ref_normalize(prediction) == ref_normalize(ground_truth)


def ref_evaluate_v1(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                gts = [x["text"] for x in qa["answers"]]
                exact_match += max(ref_em_v1(predictions[qa["id"]], gt) for gt in gts)
                f1 += max(ref_f1_v1(predictions[qa["id"]], gt) for gt in gts)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def ref_get_tokens(s):
    return ref_normalize(s).split() if s else []


def ref_exact_v2(a_gold, a_pred):
    return int(ref_normalize(a_gold) == ref_normalize(a_pred))


def ref_f1_v2(a_gold, a_pred):
    gold_toks, pred_toks = ref_get_tokens(a_gold), ref_get_tokens(a_pred)
    num_same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision, recall = 1.0 * num_same / len(pred_toks), 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def ref_evaluate_v2(dataset, preds, na_probs=None, na_prob_thresh=1.0):
    """main() of evaluate-v2.0.py; needs a prediction for every question (the official crashes otherwise)."""
    has_na_file = na_probs is not None
    if not has_na_file:
        na_probs = {k: 0.0 for k in preds}
    qas = [qa for a in dataset for p in a["paragraphs"] for qa in p["qas"]]
    qid_to_has_ans = {qa["id"]: bool(qa["answers"]) for qa in qas}
    has_ans_qids = [k for k, v in qid_to_has_ans.items() if v]
    no_ans_qids = [k for k, v in qid_to_has_ans.items() if not v]
    exact_raw, f1_raw = {}, {}
    for qa in qas:
        golds = [a["text"] for a in qa["answers"] if ref_normalize(a["text"])] or [""]
        exact_raw[qa["id"]] = max(ref_exact_v2(a, preds[qa["id"]]) for a in golds)
        f1_raw[qa["id"]] = max(ref_f1_v2(a, preds[qa["id"]]) for a in golds)

    def apply(scores):
        return {
            q: float(not qid_to_has_ans[q]) if na_probs[q] > na_prob_thresh else s for q, s in scores.items()
        }

    def make_eval_dict(es, fs, qid_list=None):
        if not qid_list:
            t = len(es)
            return collections.OrderedDict(
                [("exact", 100.0 * sum(es.values()) / t), ("f1", 100.0 * sum(fs.values()) / t), ("total", t)]
            )
        t = len(qid_list)
        return collections.OrderedDict(
            [
                ("exact", 100.0 * sum(es[k] for k in qid_list) / t),
                ("f1", 100.0 * sum(fs[k] for k in qid_list) / t),
                ("total", t),
            ]
        )

    def find_best_thresh(scores):
        cur_score = best_score = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
        best_thresh = 0.0
        for qid in sorted(na_probs, key=lambda k: na_probs[k]):
            if qid not in scores:
                continue
            diff = scores[qid] if qid_to_has_ans[qid] else (-1 if preds[qid] else 0)
            cur_score += diff
            if cur_score > best_score:
                best_score, best_thresh = cur_score, na_probs[qid]
        return 100.0 * best_score / len(scores), best_thresh

    exact_thresh, f1_thresh = apply(exact_raw), apply(f1_raw)
    out_eval = make_eval_dict(exact_thresh, f1_thresh)
    for prefix, qids in (("HasAns", has_ans_qids), ("NoAns", no_ans_qids)):
        if qids:
            for k, v in make_eval_dict(exact_thresh, f1_thresh, qids).items():
                out_eval[f"{prefix}_{k}"] = v
    if has_na_file:
        out_eval["best_exact"], out_eval["best_exact_thresh"] = find_best_thresh(exact_raw)
        out_eval["best_f1"], out_eval["best_f1_thresh"] = find_best_thresh(f1_raw)
    return out_eval


# ------------------------------------------------------------------ helpers
def make_dataset(items):
    """items: [(id, [gold texts])] -> SQuAD `data` list (one article, one paragraph)."""
    qas = [
        {"id": q, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in golds]}
        for q, golds in items
    ]
    return [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]


def write_json(path, obj):
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return str(path)


def score_cli(capsys, *argv):
    parser = argparse.ArgumentParser(prog="finetune")
    add_score_parser(parser.add_subparsers())
    args = parser.parse_args(["score", *argv])
    assert args.func(args) == 0
    return capsys.readouterr()


# ------------------------------------------------------------------ hand-computed cases
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("don't", "dont"),
        ("U.S.A.", "usa"),
        ("1,000.5", "10005"),
        ("“Quoted”", "“quoted”"),  # curly quotes are not string.punctuation
        ("x—y", "x—y"),
        ("A—B", "—b"),  # "a" is a whole word before the em dash
        ("¿Qué?", "¿qué"),
        ("cafe\u0301", "cafe\u0301"),  # NFD kept, not composed
        ("the\u0301", "\u0301"),  # the combining accent is not a word char, so "the" is a word
        ("thé", "thé"),
        ("theater another anthem", "theater another anthem"),
        ("The end.", "end"),
        ("the-end", "theend"),  # punctuation is deleted before articles are looked for
        ("the_end", "theend"),
        ("a, the, an", ""),
        ("  The   Quick\tbrown\n\nfox ", "quick brown fox"),
        ("foo\u00a0bar\u3000baz", "foo bar baz"),
        ("ÉCOLE", "école"),
        ("'Tis", "tis"),
    ],
)
def test_normalize_answer_by_hand(raw, expected):
    assert squad.normalize_answer(raw) == expected
    assert ref_normalize(raw) == expected


@pytest.mark.parametrize(
    "pred, gold, f1",
    [
        ("x x x y", "y y", 1 / 3),  # multiset overlap 1: p=1/4, r=1/2
        ("x x y", "x y y", 2 / 3),
        ("x x", "x", 2 / 3),
        ("a a a b", "b b", 2 / 3),  # articles vanish: pred is just "b"
        ("y z", "z y", 1.0),
        ("Paris", "London", 0),
    ],
)
def test_f1_repeated_tokens(pred, gold, f1):
    assert squad.f1_v1(pred, gold) == pytest.approx(f1)
    assert squad.compute_f1(gold, pred) == pytest.approx(f1)


def test_empty_and_whitespace_predictions_v1_vs_v2():
    assert squad.f1_v1("", "") == 0 and squad.exact_match_v1("", "") is True
    assert squad.f1_v1("  ", "the") == 0 and squad.exact_match_v1("  ", "the")
    assert squad.compute_f1("", "") == 1 and squad.compute_exact("", "") == 1
    assert squad.compute_f1("the", " ") == 1  # both normalise to no tokens
    assert squad.compute_f1("x", " ") == 0 and squad.compute_f1("", "x") == 0
    assert squad.get_tokens("") == [] and squad.get_tokens("The  Cat!") == ["cat"]


def test_multiple_golds_take_max_separately():
    data = make_dataset([("q1", ["x y z", "w"]), ("q2", ["x y z", "w"]), ("q3", ["the", "x"])])
    preds = {"q1": "x y", "q2": "W.", "q3": "an"}
    rows = {r["id"]: r for r in squad.per_question_scores("squad_v1", data, preds)}
    assert (rows["q1"]["em"], rows["q1"]["f1"]) == (0.0, pytest.approx(0.8))
    assert (rows["q2"]["em"], rows["q2"]["f1"]) == (1.0, 1.0)
    assert (rows["q3"]["em"], rows["q3"]["f1"]) == (1.0, 0.0)  # v1: "" == "" but F1 needs a shared token
    v2 = {r["id"]: r for r in squad.per_question_scores("squad_v2", data, preds)}
    assert v2["q3"]["golds"] == ["x"] and (v2["q3"]["em"], v2["q3"]["f1"]) == (0.0, 0.0)


def _v2_case():
    data = make_dataset([("q1", ["x"]), ("q2", []), ("q3", ["y z"])])
    return data, {"q1": "x", "q2": "w", "q3": "y"}, {"q1": 0.1, "q2": 0.9, "q3": 0.5}


def test_v2_by_hand_with_best_thresholds():
    data, preds, probs = _v2_case()
    out = squad.evaluate_v2(data, preds, probs)
    assert list(out) == [
        *("exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total"),
        *(
            "NoAns_exact",
            "NoAns_f1",
            "NoAns_total",
            "best_exact",
            "best_exact_thresh",
            "best_f1",
            "best_f1_thresh",
        ),
    ]
    assert out["exact"] == 100.0 * 1 / 3 and out["f1"] == 100.0 * (1 + 0 + 2 / 3) / 3
    assert (out["HasAns_total"], out["NoAns_total"], out["NoAns_exact"]) == (2, 1, 0.0)
    assert (out["best_exact"], out["best_exact_thresh"]) == (100.0 * 2 / 3, 0.1)
    assert (out["best_f1"], out["best_f1_thresh"]) == (100.0 * (2 + 2 / 3) / 3, 0.5)
    assert "best_exact" not in squad.evaluate_v2(data, preds)


def test_v2_threshold_is_strictly_greater():
    data, preds, probs = _v2_case()
    assert (
        squad.evaluate_v2(data, preds, probs, na_prob_thresh=0.9)["NoAns_exact"] == 0.0
    )  # 0.9 > 0.9 is false
    forced = squad.evaluate_v2(data, preds, probs, na_prob_thresh=0.5)  # only q2 (0.9) forced to ""
    assert forced["NoAns_exact"] == 100.0 and forced["HasAns_exact"] == 50.0
    forced = squad.evaluate_v2(data, preds, probs, na_prob_thresh=0.0)  # everything forced to ""
    assert (forced["exact"], forced["HasAns_f1"], forced["NoAns_f1"]) == (100.0 / 3, 0.0, 100.0)


def test_v2_article_only_gold_counts_as_has_answer_with_empty_gold():
    data = make_dataset([("q1", ["The"])])
    assert squad.evaluate_v2(data, {"q1": ""}) == {
        "exact": 100.0,
        "f1": 100.0,
        "total": 1,
        **{"HasAns_exact": 100.0, "HasAns_f1": 100.0, "HasAns_total": 1},
    }


def test_missing_predictions_warn(capsys):
    data = make_dataset([("q1", ["x"]), ("q2", ["y"]), ("q3", [])])
    assert squad.evaluate_v1(make_dataset([("q1", ["x"]), ("q2", ["y"])]), {"q1": "x"}) == {
        "exact_match": 50.0,
        "f1": 50.0,
    }
    assert "Unanswered question q2 will receive score 0." in capsys.readouterr().err
    out = squad.evaluate_v2(data, {"q1": "x"})
    assert out == ref_evaluate_v2(data, {"q1": "x", "q2": "", "q3": ""})
    err = capsys.readouterr().err
    assert "Missing prediction for q2" in err and "Missing prediction for q3" in err


def test_unscorable_inputs_raise_user_error():
    with pytest.raises(UserError, match="q1 has no gold answers"):
        squad.evaluate_v1(make_dataset([("q1", [])]), {"q1": "x"})
    with pytest.raises(UserError, match="no questions"):
        squad.evaluate_v2([], {})
    with pytest.raises(UserError, match="q2"):
        squad.evaluate_v2(make_dataset([("q1", ["x"]), ("q2", ["y"])]), {}, {"q1": 0.5})


# ------------------------------------------------------------------ randomised against the reference
_PIECES = [
    *("x", "foo", "Bar", "theater", "another", "anthem", "the", "The", "THE", "a", "A", "an", "An"),
    *("don't", "U.S.A.", "café", "cafe\u0301", "the\u0301", "über", "İstanbul", "ß", "ﬁ", "3.14", "1,000"),
    *(".", ",", "!", "?", "-", "'", '"', "(", ")", "_", "“", "”", "—", "¿", "«", "»", "…", "$"),
]
_SEPS = ["", " ", " ", " ", "  ", "\t", "\n", "\u00a0", "\u3000"]


def _random_text(rng):
    return "".join(rng.choice(_PIECES) + rng.choice(_SEPS) for _ in range(rng.randint(0, 6)))


def test_random_strings_match_reference():
    rng = random.Random(20240611)
    for _ in range(300):
        pred, gold = _random_text(rng), _random_text(rng)
        assert squad.normalize_answer(pred) == ref_normalize(pred), repr(pred)
        assert squad.exact_match_v1(pred, gold) == ref_em_v1(pred, gold)
        assert squad.f1_v1(pred, gold) == ref_f1_v1(pred, gold)
        assert squad.compute_exact(gold, pred) == ref_exact_v2(gold, pred)
        assert squad.compute_f1(gold, pred) == ref_f1_v2(gold, pred), (pred, gold)


def test_random_datasets_match_reference():
    rng = random.Random(7)
    for _ in range(40):
        n = rng.randint(1, 25)
        golds = [[_random_text(rng) for _ in range(rng.randint(0, 3))] for _ in range(n)]
        items = [(f"q{i}", g) for i, g in enumerate(golds)]
        preds = {q: rng.choice([_random_text(rng), g[0] if g else "", "", " "]) for q, g in items}
        probs = {q: rng.choice([0.0, 0.25, 0.5, 0.5, 0.75, 1.0, rng.random()]) for q, _ in items}
        thresh = rng.choice([0.0, 0.5, 1.0, rng.random()])
        v2_data = make_dataset(items)
        assert squad.evaluate_v2(v2_data, preds) == ref_evaluate_v2(v2_data, preds)
        assert list(squad.evaluate_v2(v2_data, preds, probs, thresh).items()) == list(
            ref_evaluate_v2(v2_data, preds, probs, thresh).items()
        )
        v1_data = make_dataset([(q, g or ["fallback"]) for q, g in items])
        assert squad.evaluate_v1(v1_data, preds) == ref_evaluate_v1(v1_data, preds)


# ------------------------------------------------------------------ shipped tiny data
@pytest.mark.parametrize("name", ["squad_v1_dev_tiny.json", "squad_v2_dev_tiny.json"])
def test_tiny_data_answer_starts(name):
    obj = json.loads((DATA / name).read_text(encoding="utf-8"))
    prefix = name[6:8]
    qas = [(p["context"], qa) for a in obj["data"] for p in a["paragraphs"] for qa in p["qas"]]
    assert len(qas) >= 10 and len({qa["id"] for _, qa in qas}) == len(qas)
    for context, qa in qas:
        assert qa["id"].startswith(f"{prefix}-") and qa["question"].endswith("?")
        assert bool(qa["answers"]) != qa.get("is_impossible", False)
        for a in qa["answers"] + qa.get("plausible_answers", []):
            assert context[a["answer_start"] : a["answer_start"] + len(a["text"])] == a["text"], (qa["id"], a)
    impossible = sum(1 for _, qa in qas if not qa["answers"])
    assert impossible == 0 if prefix == "v1" else 0.25 <= impossible / len(qas) <= 0.45
    assert squad.load_squad_dataset(str(DATA / name)) == obj["data"]


# ------------------------------------------------------------------ `finetune score`
def _tiny(version):
    path = DATA / f"squad_{version}_dev_tiny.json"
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    qas = [qa for a in data for p in a["paragraphs"] for qa in p["qas"]]
    rng = random.Random(version)
    preds = {}
    for i, qa in enumerate(qas):
        gold = qa["answers"][0]["text"] if qa["answers"] else ""
        preds[qa["id"]] = [gold, gold.upper() + ".", "the " + gold + " extra", "wrong", ""][i % 5]
    probs = {qa["id"]: rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]) for qa in qas}
    return str(path), data, preds, probs


def test_score_v1_output_and_per_question(tmp_path, capsys):
    path, data, preds, _ = _tiny("v1")
    pq, out_file = tmp_path / "pq.jsonl", tmp_path / "out.json"
    res = score_cli(
        capsys,
        "squad_v1",
        path,
        write_json(tmp_path / "p.json", preds),
        "--per-question",
        str(pq),
        "--out-file",
        str(out_file),
    )
    expected = ref_evaluate_v1(data, preds)
    assert res.out == json.dumps(expected) + "\n" and list(json.loads(res.out)) == ["exact_match", "f1"]
    assert res.err == "" and json.loads(out_file.read_text()) == expected
    rows = [json.loads(line) for line in pq.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == list(preds) and set(rows[0]) == {
        "id",
        "prediction",
        "golds",
        "em",
        "f1",
    }
    assert 100.0 * sum(r["f1"] for r in rows) / len(rows) == pytest.approx(expected["f1"])


def test_score_v2_output_order_and_values(tmp_path, capsys):
    path, data, preds, probs = _tiny("v2")
    pred_file, na_file = write_json(tmp_path / "p.json", preds), write_json(tmp_path / "na.json", probs)
    for extra, ref_args in (([], ()), (["--na-prob-file", na_file, "--na-prob-thresh", "0.5"], (probs, 0.5))):
        res = score_cli(capsys, "squad_v2", path, pred_file, *extra)
        expected = ref_evaluate_v2(data, preds, *ref_args)
        assert res.out == json.dumps(expected, indent=2) + "\n"
        assert list(json.loads(res.out, object_pairs_hook=collections.OrderedDict).items()) == list(
            expected.items()
        )
    pq = tmp_path / "pq.jsonl"
    score_cli(capsys, "squad_v2", path, pred_file, "--per-question", str(pq))
    rows = [json.loads(line) for line in pq.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 12 and sum(not r["has_answer"] for r in rows) == 4


def test_score_warnings_go_to_stderr(tmp_path, capsys):
    data = {"version": "1.0", "data": make_dataset([("q1", ["x"]), ("q2", ["y"])])}
    res = score_cli(
        capsys,
        "squad_v1",
        write_json(tmp_path / "d.json", data),
        write_json(tmp_path / "p.json", {"q1": "x"}),
    )
    assert "Evaluation expects v-1.1, but got dataset with v-1.0" in res.err
    assert "Unanswered question q2 will receive score 0." in res.err
    assert json.loads(res.out) == {"exact_match": 50.0, "f1": 50.0}
    res = score_cli(capsys, "squad_v2", str(tmp_path / "d.json"), str(tmp_path / "p.json"))
    assert "Missing prediction for q2" in res.err and json.loads(res.out)["exact"] == 50.0


@pytest.mark.parametrize(
    "which, content, message",
    [
        ("dataset", None, "dataset file not found"),
        ("dataset", "{not json", "not valid JSON"),
        ("dataset", {"version": "1.1"}, "not a SQuAD dataset"),
        ("dataset", {"data": [{"paragraphs": [{"qas": [{"id": "q1"}]}]}]}, "must have an 'answers' list"),
        (
            "dataset",
            {"data": [{"paragraphs": [{"context": "c"}]}]},
            "data[0].paragraphs[0] must be an object",
        ),
        ("dataset", {"data": []}, "no questions"),
        ("predictions", ["x"], "must be a JSON object"),
        ("predictions", {"q1": 3}, "prediction for q1 is int"),
        ("na", {"q1": "high"}, "no-answer probability for q1 is str"),
        ("na", {"other": 0.5}, "no no-answer probability for question q1"),
    ],
)
def test_score_bad_files(tmp_path, capsys, which, content, message):
    files = {
        "dataset": {"version": "1.1", "data": make_dataset([("q1", ["x"])])},
        "predictions": {"q1": "x"},
        "na": {"q1": 0.5},
    }
    paths = {}
    for key, obj in files.items():
        paths[key] = tmp_path / f"{key}.json"
        obj = content if key == which else obj
        if obj is not None:
            paths[key].write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    with pytest.raises(UserError) as exc:
        score_cli(
            capsys,
            "squad_v2",
            str(paths["dataset"]),
            str(paths["predictions"]),
            "--na-prob-file",
            str(paths["na"]),
        )
    text = str(exc.value)
    assert message in text and str(paths[which]) in text and "\n" not in text


def test_score_v1_rejects_v2_options(tmp_path, capsys):
    d = write_json(tmp_path / "d.json", {"version": "1.1", "data": make_dataset([("q1", ["x"])])})
    p = write_json(tmp_path / "p.json", {"q1": "x"})
    with pytest.raises(UserError, match="only apply to squad_v2"):
        score_cli(capsys, "squad_v1", d, p, "--na-prob-thresh", "0.5")
    with pytest.raises(UserError, match=r"q1 has no gold answers"):
        score_cli(
            capsys, "squad_v1", write_json(tmp_path / "e.json", {"data": make_dataset([("q1", [])])}), p
        )


# ------------------------------------------------------------------ eval/squad_metric via `evaluate`
@pytest.fixture(scope="module")
def evaluate_mod(tmp_path_factory):
    for var in ("HF_EVALUATE_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[var] = "1"
    if "evaluate" not in sys.modules:  # keep the module copy out of the user's cache
        os.environ.setdefault("HF_MODULES_CACHE", str(tmp_path_factory.mktemp("hf_modules")))
    return pytest.importorskip("evaluate")


def _metric_inputs(data, preds, probs):
    qas = [qa for a in data for p in a["paragraphs"] for qa in p["qas"]]
    references = [
        {
            "id": qa["id"],
            "answers": {
                "text": [a["text"] for a in qa["answers"]],
                "answer_start": [a["answer_start"] for a in qa["answers"]],
            },
        }
        for qa in qas
    ]
    predictions = [{"id": q, "prediction_text": t} for q, t in preds.items()]
    if probs is not None:
        for p in predictions:
            p["no_answer_probability"] = probs[p["id"]]
    return predictions, references


def test_evaluate_module_matches_score(evaluate_mod, tmp_path, capsys):
    metric_dir = str(REPO / "eval" / "squad_metric")
    path, data, preds, _ = _tiny("v1")
    cli = json.loads(score_cli(capsys, "squad_v1", path, write_json(tmp_path / "p1.json", preds)).out)
    metric = evaluate_mod.load(metric_dir, cache_dir=str(tmp_path / "c"))
    predictions, references = _metric_inputs(data, preds, None)
    assert metric.compute(predictions=predictions, references=references) == cli

    path, data, preds, probs = _tiny("v2")
    args = [
        path,
        write_json(tmp_path / "p2.json", preds),
        "--na-prob-file",
        write_json(tmp_path / "na.json", probs),
    ]
    metric = evaluate_mod.load(metric_dir, "squad_v2", cache_dir=str(tmp_path / "c"))
    predictions, references = _metric_inputs(data, preds, probs)
    for thresh in (1.0, 0.5):
        cli = json.loads(score_cli(capsys, "squad_v2", *args, "--na-prob-thresh", str(thresh)).out)
        got = metric.compute(predictions=predictions, references=references, no_answer_threshold=thresh)
        assert got == cli and list(got) == list(cli)


def test_score_stats_prints_the_bootstrap_intervals(tmp_path, capsys):
    from finetune import stats

    path, data, preds, _ = _tiny("v1")
    res = score_cli(capsys, "squad_v1", path, write_json(tmp_path / "p.json", preds), "--stats")
    official, line = res.out.splitlines()
    assert json.loads(official) == ref_evaluate_v1(data, preds)
    rows = squad.per_question_scores("squad_v1", data, preds)
    em_low, em_high = stats.bootstrap_ci([100 * r["em"] for r in rows])
    assert line.startswith(f"EM {json.loads(official)['exact_match']:.2f} (95% CI {em_low:.2f}-{em_high:.2f})")
    assert f"over {len(rows)} questions" in line
