"""Run report: runs/<recipe>/report.md with PNG plots of every stage, the EM/F1 table and links.

Plots people look at rather than read: training loss per stage; reward and KL for PPO/RLOO/GRPO; reward
accuracy and margins for DPO and the reward model; EM/F1 per stage as bars.
"""

from __future__ import annotations

import json
from pathlib import Path

from finetune.manifest import read_json
from finetune.recipe_types import Recipe

# metric name in the trainer log -> what the plot calls it, per stage kind
CURVES = {
    "ppo": [("objective/scores", "reward"), ("objective/kl", "KL to reference")],
    "rloo": [("reward", "reward"), ("kl", "KL to reference")],
    "grpo": [("reward", "reward"), ("kl", "KL to reference")],
    "dpo": [("rewards/accuracies", "reward accuracy"), ("rewards/margins", "reward margin")],
    "reward": [("accuracy", "train accuracy"), ("margin", "train margin"), ("eval_accuracy", "eval accuracy")],
    "kto": [("rewards/chosen", "reward of desirable"), ("rewards/rejected", "reward of undesirable"),
            ("kl", "KL estimate")],
    "distill": [("entropy", "student entropy"), ("completions/mean_length", "student answer length (tokens)")],
}


def _history(stage_dir: Path) -> list[dict]:
    path = stage_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(history: list[dict], key: str) -> tuple[list, list]:
    points = [(h.get("step", i), h[key]) for i, h in enumerate(history) if isinstance(h.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def _plot_lines(path: Path, title: str, series: list[tuple[str, list, list]], ylabel: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [s for s in series if s[1]]
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    for label, xs, ys in series:
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _plot_eval(path: Path, results: dict[str, dict[str, dict]]) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(results)
    tasks = sorted({t for r in results.values() for t in r})
    if not stages or not tasks:
        return False
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.5, 2.2 + 1.1 * len(stages)) * len(tasks), 3.4),
                             dpi=110, squeeze=False)
    width = 0.38
    for ax, task in zip(axes[0], tasks, strict=True):
        em = [results[s].get(task, {}).get("exact", 0) for s in stages]
        f1 = [results[s].get(task, {}).get("f1", 0) for s in stages]
        xs = range(len(stages))
        bars = ax.bar([x - width / 2 for x in xs], em, width, label="EM")
        ax.bar([x + width / 2 for x in xs], f1, width, label="F1")
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_xticks(list(xs), stages)
        ax.set_ylim(0, 100)
        ax.set_title(task)
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(run_dir: Path, recipe: Recipe, manifests: dict[str, dict]) -> Path:
    """Write report.md and its PNGs under run_dir/report/; returns the report path."""
    figs = run_dir / "report"
    figs.mkdir(parents=True, exist_ok=True)
    lines = [f"# Run report: {recipe['name']}", "",
             f"Base model `{recipe['base_model']['path']}`, seed {recipe['seed']}, stages: "
             + " → ".join(f"{m['stage']} ({m['kind']})" for m in manifests.values()), ""]
    lines += ["| stage | kind | from | train rows | trainable params | time (s) | peak RSS (GB) | notes | manifest |",
              "|---|---|---|---:|---:|---:|---:|---|---|"]
    for name, m in manifests.items():
        peak = (m.get("memory") or {}).get("peak_rss_mb")
        lines.append(f"| {name} | {m['kind']} | {m['init']['stage'] or 'base'} | {m['data']['train_rows']} | "
                     f"{m['parameters']['trainable']:,} | {m['timings']['seconds']} | "
                     f"{f'{peak / 1024:.2f}' if peak else ''} | {'; '.join(_notes(m))} | "
                     f"[manifest]({name}/manifest.json) |")
    lines.append("")
    losses = [(name, *_series(_history(run_dir / name), "loss")) for name in manifests]
    if _plot_lines(figs / "loss.png", "training loss per stage", losses, "loss"):
        lines += ["## Training loss", "", "![training loss](report/loss.png)", ""]
    for name, m in manifests.items():
        history = _history(run_dir / name)
        curves = [(label, *_series(history, key)) for key, label in CURVES.get(m["kind"], [])]
        if _plot_lines(figs / f"{name}.png", f"{name} ({m['kind']})", curves, "value"):
            lines += [f"## {name}: {', '.join(label for label, xs, _ in curves if xs)}", "",
                      f"![{name}](report/{name}.png)", ""]
    for name, m in manifests.items():
        lines += _watch_section(figs, name, m.get("watch"))
    results = read_json(run_dir / "eval" / "results.json")
    if results:
        if _plot_eval(figs / "eval.png", results):
            lines += ["## Evaluation (EM / F1 per stage)", "", "![evaluation](report/eval.png)", ""]
        lines += [(run_dir / "eval" / "results.md").read_text(), ""]
        for stage, per_task in results.items():
            links = ", ".join(f"[{t}](eval/{stage}/{t}/predictions.jsonl)" for t in per_task)
            lines.append(f"- predictions of {stage}: {links}")
        lines.append("")
        lines += _comparisons_section(run_dir / "eval")
        if (run_dir / "eval" / "contamination.md").is_file():
            lines += ["## Clean vs overlapping questions", "",
                      "Questions whose question or context shares an n-gram with the training data of the stage "
                      "(and the stages it started from), per the data audit's overlap index, scored apart:", "",
                      (run_dir / "eval" / "contamination.md").read_text(), ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _notes(m: dict) -> list[str]:
    """The short notes of a stage's row in the report's table: reward-model accuracy, PPO reward, what the
    label audit found, the teacher, the watched F1."""
    notes = []
    if m.get("reward_accuracy"):
        notes.append(f"held-out accuracy {m['reward_accuracy']['accuracy']:.3f}")
    if (m.get("ppo") or {}).get("last"):
        notes.append(f"reward {m['ppo']['first']['objective/scores']:+.3f} → "
                     f"{m['ppo']['last']['objective/scores']:+.3f}")
    audit = m.get("label_audit") or {}
    if "supervised_share" in audit:
        notes.append(f"{audit['supervised_share']:.0%} of tokens supervised")
    if "desirable" in audit:
        notes.append(f"{audit['desirable']} desirable / {audit['undesirable']} undesirable")
    if m.get("teacher"):
        notes.append(f"teacher {m['teacher']['stage'] or m['teacher']['model']} "
                     f"({m['teacher']['parameters'] / m['student_parameters']:.1f}x the student's parameters)")
    if audit.get("pairs_answer_truncated"):
        notes.append(f"answers truncated in {audit['pairs_answer_truncated']} of {audit['pairs']} pairs")
    watched = (m.get("watch") or {}).get("points") or []
    if watched:
        notes.append(f"watched F1 {watched[0]['watch/f1']:.1f} → {watched[-1]['watch/f1']:.1f}"
                     + (f", KL to the start {watched[-1]['watch/kl']:.3g}" if "watch/kl" in watched[-1] else "")
                     + (f", {len(m['watch']['alarms'])} alarm(s)" if m["watch"]["alarms"] else ""))
    return notes


def _watch_section(figs: Path, name: str, watch: dict | None) -> list[str]:
    """The task metric during a stage (finetune.watch): held-out F1/EM and reward, the trainer's KL, the KL to
    the starting policy on the watched answers, answer length against the step, and its alarms. [] for a stage
    without `watch:`."""
    if not watch or not watch.get("points"):
        return []
    points = watch["points"]
    steps = [p["step"] for p in points]
    scores = [("held-out F1", steps, [p["watch/f1"] for p in points]),
              ("held-out EM", steps, [p["watch/exact"] for p in points])]
    others = [(label, [p["step"] for p in points if p.get(key) is not None],
               [p[key] for p in points if p.get(key) is not None])
              for key, label in (("reward", "reward"), ("kl", "KL (trainer's)"),
                                 ("watch/kl", "KL to the start (watched answers)"),
                                 ("watch/mean_words", "answer words"))]
    lines = [f"## {name}: the task metric during training ({watch['task']}, {watch['questions']} questions, "
             f"every {watch['every']} steps)", ""]
    if _plot_lines(figs / f"{name}-watch.png", f"{name}: held-out {watch['task']}", scores, "score (%)"):
        lines += [f"![{name} held-out score](report/{name}-watch.png)", ""]
    if _plot_lines(figs / f"{name}-watch-signals.png", f"{name}: reward, KL, answer length", others, "value"):
        lines += [f"![{name} reward, KL, length](report/{name}-watch-signals.png)", ""]
    if watch.get("selected_step") is not None:
        lines += [f"Kept the weights of step {watch['selected_step']} (best watched {watch['select_best']}).", ""]
    lines += [f"- **alarm** at step {a['step']}: {a['alarm']}: {a['message']}" for a in watch["alarms"]] or [
        "No alarms: the reward did not rise while held-out F1 fell, lengths held, answers stayed extractable."]
    return [*lines, ""]


def _short(text, width: int = 60) -> str:
    text = " ".join(str(text or "").split()).replace("|", "\\|")
    return text if len(text) <= width else text[:width - 1] + "…"


def _comparisons_section(eval_dir: Path, per_direction: int = 3) -> list[str]:
    """The paired stage comparisons and, for each, a few questions that flipped each way."""
    comparisons = read_json(eval_dir / "comparisons.json")
    if not comparisons:
        return []
    lines = ["## Paired comparisons between stages (same questions)", "",
             (eval_dir / "comparisons.md").read_text(), ""]
    for c in comparisons:
        folder = f"comparisons/{c['from']}_vs_{c['to']}/{c['task']}"
        flips_path = eval_dir / folder / "flips.jsonl"
        flips = ([json.loads(x) for x in flips_path.read_text(encoding="utf-8").splitlines()]
                 if flips_path.is_file() else [])
        if not flips:
            continue
        lines += [f"**{c['task']}: {c['from']} → {c['to']}**, {c['lost']} right→wrong, {c['gained']} wrong→right "
                  f"([all](eval/{folder}/flips.jsonl))", "",
                  f"| change | gold | {c['from']} | {c['to']} |", "|---|---|---|---|"]
        for change in ("right->wrong", "wrong->right"):
            for f in [f for f in flips if f["change"] == change][:per_direction]:
                lines.append(f"| {change} | {_short((f['golds'] or [''])[0], 40)} | {_short(f['answer_a'], 40)} | "
                             f"{_short(f['answer_b'], 40)} |")
        lines.append("")
    return lines
