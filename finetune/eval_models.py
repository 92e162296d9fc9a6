"""Find and load what `finetune eval` scores: a model folder, an adapter folder, a stage folder or a run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from finetune import modeling
from finetune.errors import UserError
from finetune.evaluation import check_task, evaluate_task, load_task, results_table
from finetune.manifest import read_json, write_json_atomic
from finetune.pipeline import log
from finetune.runlock import refuse_if_being_written


def targets(path: str) -> list[tuple[str, Path, dict | None]]:
    """(label, model folder, manifest or None) for every model under `path`, in pipeline order.

    A model, adapter or stage folder is one target; a run folder gives every finished policy stage (a reward
    model scores text, it does not answer questions).
    """
    from finetune.artifacts import resolve_target
    from finetune.schema import POLICY_KINDS

    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: no such model or run folder")
    if any((p / name).exists() for name in ("config.json", "adapter_config.json", "manifest.json")):
        model_dir, manifest = resolve_target(path)
        return [(manifest["stage"] if manifest else p.name, model_dir, manifest)]
    manifests = [m for d in sorted(p.iterdir()) if d.is_dir() and (m := read_json(d / "manifest.json"))]
    found = [(m["stage"], Path(m["artifact"]["model"]), m)
             for m in sorted(manifests, key=lambda m: m["timings"]["started"]) if m["kind"] in POLICY_KINDS]
    if not found:
        raise UserError(f"{path}: neither a model folder (config.json / adapter_config.json) nor a run with "
                        f"finished stages")
    return found


def load_for_eval(model_dir: Path, manifest: dict | None, base_model: dict | None = None):
    """Load a full model, or a base + adapter (quantised as it was trained), and its tokenizer."""
    base_model = {**modeling.BASE_MODEL_DEFAULTS, **(base_model or {})}
    adapter_cfg = model_dir / "adapter_config.json"
    if adapter_cfg.exists():
        base_path = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        quant = manifest["artifact"].get("quantization") if manifest else None
        model = modeling.load_base_model({**base_model, "path": base_path}, quant)
        model = modeling.load_adapter(model, model_dir)
    else:
        model = modeling.load_base_model({**base_model, "path": str(model_dir)})
    tokenizer = modeling.load_tokenizer({**base_model, "path": str(model_dir)})
    return model.eval(), tokenizer


def evaluate_models(models: list[tuple[str, object, object]], tasks: list[str], out_root: Path,
                    batch_size: int = 16, limit: int | None = None, max_new_tokens: int | None = None,
                    log=print) -> dict[str, dict[str, dict]]:
    """Score each (label, model, tokenizer) on each task; write per-task outputs and the comparison table."""
    specs = [load_task(t) for t in tasks]
    results: dict[str, dict[str, dict]] = {}
    for label, model, tokenizer in models:
        results[label] = {}
        for task in specs:
            r = evaluate_task(model, tokenizer, task, out_root / label / task["name"], batch_size, limit,
                              max_new_tokens)
            results[label][task["name"]] = r
            log(f"eval {label} / {task['name']}: EM {r['exact']:.1f}  F1 {r['f1']:.1f}  ({r['total']} questions)")
    return results


def write_summary(results: dict[str, dict[str, dict]], out_root: Path, tasks: list[str] | None = None,
                  limit: int | None = None) -> str:
    """Write results.md (our models, then the published SQuAD v1.1 systems on the same questions where a task
    asks SQuAD v1.1 dev questions) and results.json (ours) / published.json; returns the markdown table."""
    from finetune.evaluation import load_task
    from finetune.published import published_scores

    published = published_scores([load_task(t) for t in tasks], limit) if tasks else {}
    table = results_table(results)
    rules = {t: r["extraction"] for per_task in results.values() for t, r in per_task.items() if "extraction" in r}
    if rules:
        table += "\nAnswer extraction: " + "; ".join(f"{t}: {rule}" for t, rule in sorted(rules.items())) + "\n"
    if published:
        table += "\nPublished SQuAD v1.1 systems on the same questions (official leaderboard predictions):\n\n"
        table += results_table(published).replace("| stage |", "| system |", 1)
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "results.md").write_text(table)
    write_json_atomic(out_root / "results.json", results)
    if published:
        write_json_atomic(out_root / "published.json", published)
    return table


def cmd_eval(args) -> int:
    """`finetune eval MODEL_OR_RUN --task T [--task T2]`."""
    for task in args.task:  # a bad task or row fails before any model loads
        check_task(task)
    refuse_if_being_written(args.model)
    found = targets(args.model)
    out_root = Path(args.output_dir) if args.output_dir else (
        Path(args.model) / "eval" if len(found) > 1 else Path("runs") / "eval" / Path(args.model).name)
    loaded = []
    for label, model_dir, manifest in found:
        model, tokenizer = load_for_eval(model_dir, manifest)
        loaded.append((label, model, tokenizer))
    results = evaluate_models(loaded, args.task, out_root, args.batch_size, args.limit, args.max_new_tokens, log)
    print(write_summary(results, out_root, args.task, args.limit), end="")
    print(f"outputs in {out_root}", file=sys.stderr)
    return 0


def add_eval_parser(sub) -> None:
    from finetune.cli import positive_int

    p = sub.add_parser("eval", help="generate answers and score them SQuAD-style (EM/F1)")
    p.add_argument("model", help="model folder, adapter folder, a run's stage folder, or a whole run folder")
    p.add_argument("--task", action="append", required=True, help="task name (eval/tasks/<name>.yaml) or path; "
                   "repeat for several")
    p.add_argument("--output-dir", help="where predictions.jsonl, results.json and results.md go")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--limit", type=positive_int, help="score at most this many questions per task")
    p.add_argument("--max-new-tokens", type=positive_int, help="override the task's max_new_tokens")
    p.set_defaults(func=cmd_eval)
