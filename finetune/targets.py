"""`make <recipe>`, `make <recipe>-<stage>` and `make recipes`: make targets named after recipe files.

recipes/qwen2.5/7b.yaml is target `qwen2.5-7b`; its stages are `qwen2.5-7b-sft`, `qwen2.5-7b-dpo`, ...
Files under recipes/_base (partials for `extends:`), recipes/accelerate and recipes/templates are not recipes.
Works under `accelerate launch -m finetune.targets TARGET`, which is what the Makefile runs when
ACCELERATE_CONFIG is set.
"""

from __future__ import annotations

import sys
from pathlib import Path

from finetune.errors import UserError, error_line

ROOT = Path("recipes")
NOT_RECIPES = ("_base", "accelerate", "templates", "data")


def recipe_files(root: Path = ROOT) -> dict[str, Path]:
    """Target name -> recipe file, for every recipe under `root`."""
    found = {}
    for path in sorted(root.rglob("*.yaml")):
        rel = path.relative_to(root)
        if rel.parts[0] in NOT_RECIPES:
            continue
        found["-".join(rel.with_suffix("").parts)] = path
    return found


def resolve(target: str, root: Path = ROOT) -> tuple[Path, str | None]:
    """A make target -> (recipe file, stage name or None for the whole recipe).

    The longest recipe name that prefixes the target wins. Raises UserError naming the target when it names
    no recipe (with the closest name, if any) or a stage the recipe does not have (listing its stages).
    """
    from finetune.recipe import did_you_mean, read_yaml

    files = recipe_files(root)
    if target in files:
        return files[target], None
    for name in sorted(files, key=len, reverse=True):
        if target.startswith(name + "-"):
            stage = target[len(name) + 1:]
            stages = _stage_names(files[name], read_yaml)
            if stage in stages:
                return files[name], stage
            raise UserError(f"make {target}: recipe {name} has no stage '{stage}' (stages: {', '.join(stages)})")
    raise UserError(f"make {target}: no such recipe{did_you_mean(target, files)}; `make recipes` lists them")


def _stage_names(path: Path, read_yaml) -> list[str]:
    from finetune.recipe import load_recipe

    try:
        return [s["name"] for s in load_recipe(path)["stages"]]
    except UserError:
        return [s.get("name") or s.get("kind") for s in read_yaml(path).get("stages", [])]


def list_recipes(root: Path = ROOT) -> str:
    """The `make recipes` table: each target, its stages and base model (or "(invalid)" and the error)."""
    from finetune.recipe import load_recipe

    lines = [f"{'make target':<22} {'stages (make <target>-<stage>)':<34} base model"]
    for name, path in recipe_files(root).items():
        try:
            r = load_recipe(path)
            stages, base = ", ".join(s["name"] for s in r["stages"]), r["base_model"]["path"]
        except UserError as e:
            stages, base = "(invalid)", str(e)
        lines.append(f"{name:<22} {stages:<34} {base}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m finetune.targets TARGET [args]`: run the target's recipe (or stage, as `--only`) through the
    CLI; no target or `--list` prints the recipe table. Returns the exit code (2 for an unknown target)."""
    from finetune.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("--list", "-l"):
        print(list_recipes())
        return 0
    try:
        path, stage = resolve(args[0])
    except UserError as e:
        print(error_line(e), file=sys.stderr)
        return 2
    return cli_main(["run", str(path), *(["--only", stage] if stage else []), *args[1:]])


if __name__ == "__main__":
    sys.exit(main())
