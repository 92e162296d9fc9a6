"""Human review of two stages' answers: a blind side-by-side sheet out, the raters' verdicts back in.

`finetune review export RUN --stages A B` writes SHEET.csv and SHEET.jsonl (one item per question whose two
answers differ: question, context, answer_1, answer_2 in a seeded random order, gold answers only with
--with-gold) and SHEET.key.json, the hidden key saying which stage wrote which answer. Raters fill the
`preference` column with 1, 2 or tie (and `rater` with their name, or one file per rater).

`finetune review import SHEET... --key SHEET.key.json` computes B's win/tie/loss shares against A with 95%
bootstrap intervals over items, Cohen's kappa between every two raters who rated the same items (Cohen
1960: kappa = (p_o - p_e) / (1 - p_e), p_o the observed agreement, p_e the agreement expected from each
rater's label shares), and how often the human verdict agrees with the one F1 gives (B better when its F1 is
higher), with the kappa between them.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

from finetune import squad, stats
from finetune.errors import UserError

LABELS = ("1", "2", "tie")
COLUMNS = ("item", "task", "question", "context", "answer_1", "answer_2", "gold", "preference", "rater")


def _predictions(run: Path, stage: str, task: str) -> dict[str, dict]:
    from finetune.evaluation import read_predictions

    path = run / "eval" / stage / task / "predictions.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: no predictions of stage '{stage}' on task '{task}' (was the stage evaluated?)")
    return read_predictions(path)


def _questions(task: str) -> dict[str, dict]:
    """id -> {question, context} from the task's own rows; {} when the task cannot be read here."""
    from finetune.evaluation import load_task, task_rows

    try:
        return {r["id"]: r for r in task_rows(load_task(task))}
    except UserError:
        return {}


def export_sheet(run: str | Path, stages: tuple[str, str], out: str | Path, tasks: list[str] | None = None,
                 with_gold: bool = False, include_same: bool = False, seed: int = 0) -> dict:
    """Write the blind sheet (out.csv, out.jsonl) and its key (out.key.json); returns {"items", "skipped_same"}.

    Raises UserError for a missing run/stage/task, or when any of the three files already exists (a filled
    sheet is never overwritten).
    """
    run, out = Path(run), Path(out)
    paths = [out.with_suffix(".csv"), out.with_suffix(".jsonl"), out.with_suffix(".key.json")]
    for p in paths:
        if p.exists():
            raise UserError(f"{p}: exists; choose another --out (a filled-in sheet is never overwritten)")
    a, b = stages
    if tasks is None:
        folder = run / "eval" / a
        if not folder.is_dir():
            raise UserError(f"{folder}: stage '{a}' has no evaluation in {run}")
        tasks = sorted(p.name for p in folder.iterdir() if (p / "predictions.jsonl").is_file())
    rng = random.Random(seed)
    items, key, same = [], {}, 0
    for task in tasks:
        pa, pb, questions = _predictions(run, a, task), _predictions(run, b, task), _questions(task)
        for qid in sorted(set(pa) & set(pb)):
            ra, rb = pa[qid], pb[qid]
            if not include_same and squad.normalize_answer(ra["answer"]) == squad.normalize_answer(rb["answer"]):
                same += 1
                continue
            flip = rng.random() < 0.5
            first, second = (rb, ra) if flip else (ra, rb)
            item = f"{len(items) + 1:05d}"
            q = questions.get(qid, {})
            items.append({"item": item, "task": task, "question": q.get("question", ra.get("prompt", "")),
                          "context": q.get("context", ""), "answer_1": first["answer"],
                          "answer_2": second["answer"],
                          "gold": " | ".join(ra.get("golds") or []) if with_gold else "",
                          "preference": "", "rater": ""})
            key[item] = {"task": task, "id": qid, "answer_1": b if flip else a, "answer_2": a if flip else b,
                         "f1": {a: ra["f1"], b: rb["f1"]}}
    out.parent.mkdir(parents=True, exist_ok=True)
    with paths[0].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(items)
    paths[1].write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), encoding="utf-8")
    paths[2].write_text(json.dumps({"run": str(run), "stages": [a, b], "seed": seed, "items": key},
                                   indent=1) + "\n")
    return {"items": len(items), "skipped_same": same, "files": [str(p) for p in paths]}


def _read_sheet(path: Path) -> list[dict]:
    from finetune import userfiles

    text = userfiles.read_text(path, "review sheet")
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: line {n}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}: line {n}: an item must be a JSON object")
            rows.append(row)
        return rows
    if path.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    raise UserError(f"{path}: a review sheet is a .csv or .jsonl file")


def read_verdicts(sheets: list[str | Path], key: dict) -> dict[str, dict[str, str]]:
    """rater -> {item: "A" | "B" | "tie"} (the key turns answer 1/2 into stages A/B). A file's rows without a
    `rater` are that file's (its name). Blank preferences are skipped. Raises UserError naming the file and
    row for an unknown item or a preference other than 1, 2 or tie."""
    a, _ = key["stages"]
    out: dict[str, dict[str, str]] = {}
    for sheet in map(Path, sheets):
        for n, row in enumerate(_read_sheet(sheet), 1):
            value = str(row.get("preference") or "").strip().lower()
            if not value:
                continue
            item = str(row.get("item", "")).strip()
            if item not in key["items"]:
                raise UserError(f"{sheet}: row {n}: item {item!r} is not in the key")
            if value not in LABELS:
                raise UserError(f"{sheet}: row {n}: preference {value!r}; write 1, 2 or tie")
            rater = str(row.get("rater") or "").strip() or sheet.stem
            k = key["items"][item]
            verdict = "tie" if value == "tie" else ("A" if k[f"answer_{value}"] == a else "B")
            out.setdefault(rater, {})[item] = verdict
    if not out:
        raise UserError("no verdicts: every `preference` cell is blank")
    return out


def cohen_kappa(x: list[str], y: list[str]) -> float:
    """Cohen's kappa of two raters' labels on the same items (Cohen 1960); 1.0 when both use one label only
    and agree, nan when the expected agreement is 1 but they disagree."""
    n = len(x)
    if n == 0 or n != len(y):
        raise ValueError("cohen_kappa: two equally long, non-empty label lists")
    p_o = sum(i == j for i, j in zip(x, y, strict=True)) / n
    cx, cy = Counter(x), Counter(y)
    p_e = sum(cx[label] * cy[label] for label in set(cx) | set(cy)) / (n * n)
    if p_e == 1:
        return 1.0 if p_o == 1 else float("nan")
    return (p_o - p_e) / (1 - p_e)


def _f1_verdict(k: dict, a: str, b: str) -> str:
    fa, fb = k["f1"][a], k["f1"][b]
    return "B" if fb > fa else "A" if fa > fb else "tie"


def summarize_review(verdicts: dict[str, dict[str, str]], key: dict) -> dict:
    """Win/tie/loss of stage B against A (pooled over raters' verdicts; shares in percent with 95% bootstrap
    CIs over verdicts), kappa for every two raters with common items, and human-vs-F1 agreement."""
    a, b = key["stages"]
    pooled = [v for per in verdicts.values() for v in per.values()]
    shares = {}
    for name, label in (("win", "B"), ("tie", "tie"), ("loss", "A")):
        hits = [100.0 * (v == label) for v in pooled]
        shares[name] = {"share": sum(hits) / len(hits), "ci": list(stats.bootstrap_ci(hits)),
                        "count": int(sum(v == label for v in pooled))}
    raters = sorted(verdicts)
    kappas = []
    for i, r1 in enumerate(raters):
        for r2 in raters[i + 1:]:
            common = sorted(set(verdicts[r1]) & set(verdicts[r2]))
            if common:
                kappas.append({"raters": [r1, r2], "items": len(common),
                               "kappa": cohen_kappa([verdicts[r1][c] for c in common],
                                                    [verdicts[r2][c] for c in common])})
    human = [(v, _f1_verdict(key["items"][item], a, b)) for per in verdicts.values() for item, v in per.items()]
    agree = sum(h == f for h, f in human) / len(human)
    return {"stages": {"A": a, "B": b}, "verdicts": len(pooled), "raters": raters, **shares,
            "rater_agreement": kappas,
            "human_vs_f1": {"agreement": 100 * agree,
                            "kappa": cohen_kappa([h for h, _ in human], [f for _, f in human])}}


def format_summary(s: dict) -> str:
    """`summarize_review`'s result for the terminal: a Markdown win/tie/loss table (shares in percent with
    95% CIs), each Cohen's kappa between raters, and the human-vs-F1 agreement."""
    a, b = s["stages"]["A"], s["stages"]["B"]
    lines = [f"{b} vs {a}: {s['verdicts']} verdicts from {len(s['raters'])} rater(s)",
             "| outcome for " + b + " | share % | 95% CI | count |", "|---|---:|---:|---:|"]
    for name in ("win", "tie", "loss"):
        r = s[name]
        lines.append(f"| {name} | {r['share']:.1f} | {r['ci'][0]:.1f}-{r['ci'][1]:.1f} | {r['count']} |")
    for k in s["rater_agreement"]:
        lines.append(f"Cohen's kappa {k['raters'][0]} vs {k['raters'][1]}: {k['kappa']:.3f} on {k['items']} items")
    h = s["human_vs_f1"]
    lines.append(f"human verdict agrees with F1's in {h['agreement']:.1f}% of verdicts (kappa {h['kappa']:.3f})")
    return "\n".join(lines) + "\n"


def cmd_review(args) -> int:
    """`finetune review export|import`: write a blind sheet for two stages, or score filled-in sheets.

    Raises UserError when `--key` is not a review key written by `finetune review export` (a JSON object with
    `stages` and `items`), and, through the helpers, for missing predictions, an existing sheet, or a sheet
    row with an unknown item or preference.
    """
    if args.action == "export":
        out = args.out or Path(args.run) / "review" / f"{args.stages[0]}_vs_{args.stages[1]}"
        done = export_sheet(args.run, tuple(args.stages), out, args.task, args.with_gold, args.all, args.seed)
        print(f"review sheet: {done['items']} items ({done['skipped_same']} questions with the same answer "
              f"left out)")
        for f in done["files"]:
            print(f"  {f}")
        return 0
    from finetune import userfiles

    key_path = Path(args.key)
    try:
        key = json.loads(userfiles.read_text(key_path, "review key"))
        if not isinstance(key, dict) or not {"stages", "items"} <= set(key):
            raise ValueError
    except (json.JSONDecodeError, ValueError):
        raise UserError(f"{key_path}: not a review key written by `finetune review export`") from None
    summary = summarize_review(read_verdicts(args.sheets, key), key)
    print(format_summary(summary), end="")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def add_review_parser(sub) -> None:
    """Add the `review` subcommand (actions `export` and `import`) to the `finetune` argparse subparsers."""
    p = sub.add_parser("review", help="human review: export a blind side-by-side sheet, import the verdicts")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    e = actions.add_parser("export", help="write a blind sheet comparing two stages of a run")
    e.add_argument("run", help="a run folder (runs/<recipe>)")
    e.add_argument("--stages", nargs=2, required=True, metavar=("A", "B"), help="the two evaluated stages")
    e.add_argument("--task", action="append", help="task(s) to take questions from (default: all evaluated)")
    e.add_argument("--out", help="sheet path without suffix (default: RUN/review/A_vs_B)")
    e.add_argument("--with-gold", action="store_true", help="show the gold answers to raters")
    e.add_argument("--all", action="store_true", help="also questions where both answers are the same")
    e.add_argument("--seed", type=int, default=0, help="seed of the answer order")
    e.set_defaults(func=cmd_review)
    i = actions.add_parser("import", help="score filled-in sheets: win/tie/loss, kappa, agreement with F1")
    i.add_argument("sheets", nargs="+", help="filled-in .csv or .jsonl sheets (one per rater, or a rater column)")
    i.add_argument("--key", required=True, help="the .key.json written by export")
    i.add_argument("--out", help="also write the summary as JSON here")
    i.set_defaults(func=cmd_review)
