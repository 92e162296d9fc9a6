"""`make demo`: run the tiny demo recipe end to end offline and print the EM/F1 table and the wall time."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from finetune.errors import UserError

RECIPE = "recipes/tiny/demo.yaml"


def main(argv: list[str] | None = None) -> int:
    from finetune.pipeline import run_recipe
    from finetune.recipe import load_recipe

    started = time.time()
    try:
        recipe = load_recipe(RECIPE, argv if argv is not None else sys.argv[1:])
        run_recipe(recipe)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = (Path(recipe["output_dir"]) / "eval" / "results.md").read_text()
    print("\nEM / F1 per stage (held-out tasks under eval/tasks):\n")
    print(table)
    print(f"demo wall time: {time.time() - started:.0f} s (run folder: {recipe['output_dir']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
