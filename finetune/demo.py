"""`make demo`: the tiny demo recipe end to end, offline, then one table of EM/F1 per stage and the timing.

The demo's targets (issue: a demo that learns): held-out EM about 0 before SFT and >= 50 after it, reward
model held-out accuracy >= 0.9, EM after DPO and PPO not below SFT's, all within 10 minutes on 2 cores.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from finetune.errors import UserError

RECIPE = "recipes/tiny/demo.yaml"
TASK = "qa_heldout"


def checks(results: dict, accuracy: float | None, seconds: float) -> list[tuple[str, bool]]:
    em = {stage: r[TASK]["exact"] for stage, r in results.items() if TASK in r}
    out = [("EM before SFT is about 0 (< 5)", em.get("base", 100) < 5),
           ("EM after SFT >= 50", em.get("sft", 0) >= 50),
           ("reward model held-out accuracy >= 0.9", accuracy is not None and accuracy >= 0.9),
           ("wall time <= 10 minutes", seconds <= 600)]
    for stage in ("ppo", "dpo"):
        if stage in em:
            out.append((f"EM after {stage.upper()} not below SFT's", em[stage] >= em.get("sft", 0)))
    return out


def main(argv: list[str] | None = None) -> int:
    from finetune.pipeline import run_recipe
    from finetune.recipe import load_recipe

    started = time.time()
    try:
        recipe = load_recipe(RECIPE, argv if argv is not None else sys.argv[1:])
        manifests = run_recipe(recipe)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.time() - started
    run_dir = Path(recipe["output_dir"])
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    accuracy = (manifests.get("reward") or {}).get("reward_accuracy", {}).get("accuracy")
    print(f"\nHeld-out extractive QA ({TASK}: people, towns and pets never seen in training), EM / F1 per stage:\n")
    print((run_dir / "eval" / "results.md").read_text())
    if accuracy is not None:
        print(f"reward model pairwise accuracy on held-out pairs: {accuracy:.3f}")
    print(f"demo wall time: {seconds:.0f} s  (run folder: {run_dir}; report: {run_dir / 'report.md'})\n")
    for label, ok in checks(results, accuracy, seconds):
        print(f"  [{'ok' if ok else 'MISSED'}] {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
