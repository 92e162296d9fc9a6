"""The package's layers point one way: a module imports only from its own layer or the layers below it.

Read statically (every `import`, at module level or inside a function), so a lazy import cannot hide a cycle.
Also: no import cycles at all, no module reaches into another's private names, and a stage module imports no
sibling stage (what two stages share lives in stages/common.py or below).
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "finetune"

# Lowest first. A new module must be placed here, which is the point: its layer is a decision.
LAYERS = [
    ("leaves", {"finetune", "errors", "schema", "squad", "ranks", "stats", "manifest", "userfiles", "trl_fields",
                "kernel_paths", "packing", "runlock", "stages", "bench", "precision", "recipe_types"}),
    ("data and models", {"data", "preference", "pii", "tiny", "realmodels", "gguf_models", "modeling",
                         "chat_templates", "rewards", "audit", "students", "completion_logits"}),
    ("evaluation and artifacts", {"evaluation", "overlap", "published", "score", "review", "artifacts", "watch",
                                  "sampled_pairs", "eval_models"}),
    ("validation and data audit", {"recipe", "data_audit"}),
    ("stages", {"stages.common", "stages.sft", "stages.reward", "stages.dpo", "stages.ppo", "stages.rloo",
                "stages.kto", "stages.distill"}),
    ("pipeline and report", {"pipeline", "report"}),
    ("commands", {"cli", "chat", "targets", "demo", "__main__", "bench.__main__", "bench.demo_spread",
                  "bench.memory", "bench.overhead", "bench.packing", "bench.startup", "bench.eval_real", "bench.mfu",
                  "bench.sample_pairs", "bench.sft_real", "bench.dpo_real"}),
]
LAYER_OF = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    name = ".".join(p for p in parts if p != "__init__")
    return name or "finetune"


def _target(module: str, name: str) -> str:
    """`from finetune.x import y`: the module y if it is one, else x."""
    candidate = f"{module}.{name}" if module else name
    as_path = PACKAGE.joinpath(*candidate.split("."))
    if as_path.with_suffix(".py").exists() or as_path.is_dir():
        return candidate
    return module or "finetune"


def imports() -> dict[str, list[tuple[str, str | None, int]]]:
    """module -> [(imported module, imported name or None, line)] for every finetune import in it."""
    out: dict[str, list[tuple[str, str | None, int]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        found = out.setdefault(_module_name(path), [])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "finetune":
                module = node.module.removeprefix("finetune").lstrip(".")
                for alias in node.names:
                    found.append((_target(module, alias.name), alias.name, node.lineno))
            elif isinstance(node, ast.Import):
                found += [(a.name.removeprefix("finetune").lstrip(".") or "finetune", None, node.lineno)
                          for a in node.names if a.name.split(".")[0] == "finetune"]
    return out


def test_every_module_has_a_layer():
    assert set(imports()) == set(LAYER_OF), "place new modules in LAYERS"


def test_imports_point_down_or_sideways():
    upward = [f"{m} ({LAYERS[LAYER_OF[m]][0]}) imports {t} ({LAYERS[LAYER_OF[t]][0]}) at line {line}"
              for m, found in imports().items() for t, _, line in found if LAYER_OF[t] > LAYER_OF[m]]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in found if t != m} for m, found in imports().items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [])
            assert cycle is None, " -> ".join(cycle)


def test_no_reaching_into_private_names():
    private = [f"{m} imports {name} from {t} (line {line})" for m, found in imports().items()
               for t, name, line in found if name and name.startswith("_") and not name.startswith("__") and t != m]
    for path in sorted(PACKAGE.rglob("*.py")):  # module._name attribute access on a finetune module
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and (node.module or "").startswith("finetune") for a in node.names
                   if _target((node.module or "").removeprefix("finetune").lstrip("."), a.name) != "finetune"}
        private += [f"{_module_name(path)} uses {node.value.id}.{node.attr} (line {node.lineno})"
                    for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                    and node.value.id in aliases]
    assert not private, "\n".join(private)


def test_stages_share_code_only_through_common():
    sideways = [f"{m} imports {t} (line {line})" for m, found in imports().items() if m.startswith("stages.")
                for t, _, line in found if t.startswith("stages.") and t not in ("stages.common", m)]
    assert not sideways, "\n".join(sideways)


def test_the_layer_test_would_catch_the_old_cycle():
    """The pipeline <-> eval_models cycle this test was written against: eval_models imported pipeline.log."""
    assert LAYER_OF["eval_models"] < LAYER_OF["pipeline"]
    graph = imports()
    graph["eval_models"] = [*graph["eval_models"], ("pipeline", "log", 1)]
    upward = [t for t, _, _ in graph["eval_models"] if LAYER_OF[t] > LAYER_OF["eval_models"]]
    assert upward == ["pipeline"]
