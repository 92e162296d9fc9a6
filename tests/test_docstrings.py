"""Docstrings say what a caller must know: read statically (ast only, nothing of finetune imported), so fast.

- A public function that raises UserError says so, and when, in its docstring ("Raises UserError ...").
- A public function that sets a tokenizer's `padding_side` names that side effect in its docstring.
- Every public module-level function and class, and every public method of a module-level class, has a
  docstring, except the few in ALLOWED (each with its reason). Functions and classes defined inside a function
  body are local helpers, not API, and are not required to have one.
- A module with an `if TYPE_CHECKING:` block has `from __future__ import annotations`, so the annotations that
  name those types stay strings and never import torch, transformers or datasets at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "finetune"

# "path/relative/to/finetune.py:Qualified.name" -> why it has no docstring. Keep it short: prefer a docstring.
ALLOWED: dict[str, str] = {}

FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _modules() -> list[tuple[str, ast.Module]]:
    return [(p.relative_to(PACKAGE).as_posix(), ast.parse(p.read_text(encoding="utf-8"), filename=str(p)))
            for p in sorted(PACKAGE.rglob("*.py"))]


def _raises_user_error(raise_node: ast.Raise) -> bool:
    """`raise UserError(...)` or `raise errors.UserError(...)` (also without a call)."""
    exc = raise_node.exc
    target = exc.func if isinstance(exc, ast.Call) else exc
    name = target.id if isinstance(target, ast.Name) else target.attr if isinstance(target, ast.Attribute) else None
    return name == "UserError"


def _sets_padding_side(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "padding_side" and isinstance(node.ctx, ast.Store)


def contract_gaps() -> list[str]:
    """Public functions (at any depth) whose docstring leaves out a UserError they raise or a padding_side
    they set."""
    gaps = []
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, FUNCTIONS) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node) or ""
            body = list(ast.walk(node))
            if any(isinstance(n, ast.Raise) and n.exc is not None and _raises_user_error(n) for n in body) \
                    and "Raise" not in doc and "UserError" not in doc:
                gaps.append(f"finetune/{rel}:{node.lineno} {node.name}: raises UserError; say when in its docstring")
            if any(_sets_padding_side(n) for n in body) and "padding_side" not in doc:
                gaps.append(f"finetune/{rel}:{node.lineno} {node.name}: sets tokenizer.padding_side; name the side "
                            f"effect in its docstring")
    return gaps


def _public_definitions(body: list[ast.stmt], prefix: str = ""):
    """(qualified name, node) of the public functions and classes in `body`, and of public class members."""
    for node in body:
        if isinstance(node, (*FUNCTIONS, ast.ClassDef)) and not node.name.startswith("_"):
            yield prefix + node.name, node
            if isinstance(node, ast.ClassDef):
                yield from _public_definitions(node.body, f"{prefix}{node.name}.")


def undocumented() -> dict[str, int]:
    """`path:qualified.name` -> line of every public definition without a docstring."""
    return {f"{rel}:{name}": node.lineno for rel, tree in _modules()
            for name, node in _public_definitions(tree.body) if not ast.get_docstring(node)}


def test_docstrings_name_user_errors_and_padding_side():
    gaps = contract_gaps()
    assert not gaps, f"{len(gaps)} docstring(s) leave out what the function does to its caller:\n" + "\n".join(gaps)


def test_public_definitions_have_docstrings():
    missing = {key: line for key, line in undocumented().items() if key not in ALLOWED}
    listing = "\n".join(f"finetune/{key.split(':')[0]}:{line} {key.split(':')[1]}" for key, line in missing.items())
    assert not missing, f"{len(missing)} public function(s)/class(es) without a docstring:\n{listing}"


def test_allow_list_is_current():
    """An entry that gained a docstring, or no longer exists, leaves the list."""
    stale = sorted(set(ALLOWED) - set(undocumented()))
    assert not stale, f"ALLOWED entries that are documented now or gone: {stale}"
    assert all(reason.strip() for reason in ALLOWED.values()), "every ALLOWED entry needs its reason"


def test_type_checking_imports_keep_annotations_lazy():
    lazy = []
    for rel, tree in _modules():
        guarded = any(isinstance(n, ast.If) and ast.unparse(n.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                      for n in tree.body)
        future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                     and any(a.name == "annotations" for a in n.names) for n in tree.body)
        if guarded and not future:
            lazy.append(f"finetune/{rel}")
    assert not lazy, f"modules with `if TYPE_CHECKING:` but no `from __future__ import annotations`: {lazy}"


def test_the_checks_see_what_they_look_for():
    """The walkers find a raise, a padding_side assignment and a missing docstring in a small sample."""
    tree = ast.parse("def f(tok):\n    tok.padding_side = 'left'\n    raise UserError('x')\n\n"
                     "class C:\n    def m(self):\n        pass\n")
    f = tree.body[0]
    assert any(_sets_padding_side(n) for n in ast.walk(f))
    assert any(isinstance(n, ast.Raise) and _raises_user_error(n) for n in ast.walk(f))
    assert [name for name, _ in _public_definitions(tree.body)] == ["f", "C", "C.m"]
