"""Find and load what `finetune eval` scores: a model folder, an adapter folder, a stage folder or a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from finetune import modeling
from finetune.errors import UserError
from finetune.evaluation import evaluate_task, load_task, results_table
from finetune.manifest import read_json, write_json_atomic

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def targets(path: str) -> list[tuple[str, Path, dict | None]]:
    """(label, model folder, manifest or None) for every model under `path`, in pipeline order.

    A model, adapter or stage folder is one target; a run folder gives every finished policy stage (a reward
    model scores text, it does not answer questions). Raises UserError when `path` does not exist, or is
    neither a model folder nor a run with finished policy stages.
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


def load_for_eval(model_dir: Path, manifest: dict | None,
                  base_model: dict | None = None) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
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
                    log=print, dtype: str = "auto") -> dict[str, dict[str, dict]]:
    """Score each (label, model, tokenizer) on each task; write per-task outputs and the comparison table.

    `dtype` ("auto", "float32", "bfloat16"; `precision.generation_dtype`) is what each model is cast to, in
    place, before it generates; each result records it as `generation_dtype` (and the request's resolution as
    `dtype_choice`).
    """
    from finetune import precision

    specs = [load_task(t) for t in tasks]
    want, why = precision.generation_dtype(dtype, precision.detect())
    results: dict[str, dict[str, dict]] = {}
    for label, model, tokenizer in models:
        results[label] = {}
        actual = precision.cast_for_generation(model, want)
        log(f"eval {label}: generating in {actual} ({why})")
        for task in specs:
            r = evaluate_task(model, tokenizer, task, out_root / label / task["name"], batch_size, limit,
                              max_new_tokens, extra={"generation_dtype": actual, "dtype_choice": want or "as loaded"})
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
