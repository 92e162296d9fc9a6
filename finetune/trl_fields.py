"""Read the fields of TRL's config dataclasses from their source, without importing them.

Importing `trl.SFTConfig` pulls in torch and transformers' TrainingArguments: about ten seconds on a small
machine. `finetune validate` must answer in well under a second, so we parse the dataclass sources with `ast`
instead. tests/test_recipe.py checks that what we parse equals `dataclasses.fields()` of the real classes,
so a TRL release that moves things breaks a test rather than a user's validation.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

# Stage kind -> (module path inside its package, class name). PPO only exists in trl.experimental up to 1.12.
CONFIG_CLASSES: dict[str, tuple[str, str]] = {
    "sft": ("trl/trainer/sft_config.py", "SFTConfig"),
    "reward": ("trl/trainer/reward_config.py", "RewardConfig"),
    "dpo": ("trl/trainer/dpo_config.py", "DPOConfig"),
    "rloo": ("trl/trainer/rloo_config.py", "RLOOConfig"),
    "grpo": ("trl/trainer/grpo_config.py", "GRPOConfig"),
    "ppo": ("trl/experimental/ppo/ppo_config.py", "PPOConfig"),
    "kto": ("trl/trainer/kto_config.py", "KTOConfig"),
    "distill": ("trl/trainer/distillation_config.py", "DistillationConfig"),
}

# Bases imported through a package's lazy __init__, where the defining file cannot be read off the import.
KNOWN_BASES = {"TrainingArguments": "transformers/training_args.py"}


@dataclass(frozen=True)
class FieldSpec:
    """One dataclass field: its name and its annotation as source text."""

    name: str
    annotation: str


def _site_root(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # top-level find_spec imports nothing
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations))).parent


def _resolve_base(module_file: Path, tree: ast.Module, base: str) -> tuple[Path, str] | None:
    if base in KNOWN_BASES:
        rel = KNOWN_BASES[base]
        return _site_root(rel.split("/")[0]) / rel, base
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == base:
            return module_file, base
        if isinstance(node, ast.ImportFrom) and any(a.name == base for a in node.names):
            if node.level:  # relative import: walk up from this file's folder
                folder = module_file.parent
                for _ in range(node.level - 1):
                    folder = folder.parent
            else:
                top = (node.module or "").split(".")[0]
                folder = _site_root(top)
            parts = (node.module or "").split(".") if node.module else []
            if not node.level:
                parts = parts  # absolute: module path from the site root
            candidate = folder.joinpath(*parts)
            for path in (candidate.with_suffix(".py"), candidate / "__init__.py"):
                if path.exists():
                    return path, base
    return None


@functools.cache
def _class_fields(module_file: Path, class_name: str) -> tuple[FieldSpec, ...]:
    tree = ast.parse(module_file.read_text(encoding="utf-8"))
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name), None)
    if cls is None:
        raise LookupError(f"class {class_name} not found in {module_file}")
    fields: dict[str, FieldSpec] = {}
    # Base fields first, so a subclass's redefinition (same name) wins, as in dataclasses.
    for base in cls.bases:
        base_name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
        resolved = _resolve_base(module_file, tree, base_name) if base_name else None
        if resolved:
            for f in _class_fields(*resolved):
                fields[f.name] = f
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            annotation = ast.unparse(node.annotation)
            if annotation.startswith(("ClassVar", "typing.ClassVar")):
                continue
            fields[node.target.id] = FieldSpec(node.target.id, annotation)
    return tuple(fields.values())


def config_fields(kind: str) -> dict[str, FieldSpec]:
    """Fields of the TRL config dataclass that a stage kind's `train:` block is passed to."""
    rel, class_name = CONFIG_CLASSES[kind]
    path = _site_root("trl") / rel
    return {f.name: f for f in _class_fields(path, class_name)}


def config_class_name(kind: str) -> str:
    """The name of the TRL config class a stage kind's `train:` block goes to, e.g. "SFTConfig" for sft."""
    return CONFIG_CLASSES[kind][1]


def _annotation_types(node: ast.expr) -> set[str] | None:
    """Python type names a YAML value may have for this annotation; None means "anything goes"."""
    if isinstance(node, ast.Constant) and node.value is None:
        return {"NoneType"}
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, right = _annotation_types(node.left), _annotation_types(node.right)
        return None if left is None or right is None else left | right
    if isinstance(node, ast.Subscript):
        head = ast.unparse(node.value).split(".")[-1]
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head in ("Optional",):
            inner = _annotation_types(args[0])
            return None if inner is None else inner | {"NoneType"}
        if head == "Union":
            out: set[str] = set()
            for a in args:
                t = _annotation_types(a)
                if t is None:
                    return None
                out |= t
            return out
        if head in ("list", "List", "tuple", "Tuple", "Sequence"):
            return {"list"}
        if head in ("dict", "Dict", "Mapping"):
            return {"dict"}
        if head == "Literal":
            return {type(a.value).__name__ for a in args if isinstance(a, ast.Constant)}
        return None
    name = ast.unparse(node).split(".")[-1]
    simple = {"int": {"int"}, "float": {"float", "int"}, "bool": {"bool"}, "str": {"str"},
              "dict": {"dict"}, "list": {"list"}, "None": {"NoneType"}}
    if name in simple:
        return simple[name]
    if name.endswith(("Strategy", "Type", "Option", "Mode", "Enum")) or name in ("SchedulerType", "OptimizerNames"):
        return {"str"}  # enums accept their string values
    return None


def check_value_type(annotation: str, value: object) -> str | None:
    """Return the expected-type text when `value` cannot fit `annotation`, else None."""
    allowed = _annotation_types(ast.parse(annotation, mode="eval").body)
    if allowed is None:
        return None
    actual = type(value).__name__
    if actual == "bool" and "bool" not in allowed:
        return " or ".join(sorted(allowed))  # YAML `yes` for an int field is a mistake, not 1
    if actual in allowed or (actual == "int" and "float" in allowed):
        return None
    return " or ".join(sorted(a if a != "NoneType" else "null" for a in allowed))
