"""Read the text files a user hands the toolkit (recipes, eval tasks and data, chat templates) one way.

Every failure is one UserError line naming the file and the line or byte. For YAML:

- YAML 1.2 scalars: `2e-5` is a float, and only true/false are booleans (YAML 1.1 reads `2e-5` as a string
  and `off`/`no`/`yes`/`on` as booleans, so `pii: off` would be False).
- Duplicate keys at any depth are errors naming both lines: PyYAML keeps the last one silently, so a second
  `learning_rate:` or a data source defined twice would win without a word. `<<:` merge keys still override.
- Bytes that are not UTF-8 are named by offset; nesting deeper than MAX_DEPTH and aliases that expand past
  MAX_NODES (a "billion laughs" file) are refused before any Python object is built.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from finetune.errors import UserError, first_line

MAX_DEPTH = 64  # far deeper than any recipe or task (recipes nest about 5 levels)
MAX_NODES = 200_000  # nodes after alias expansion


class YAML12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars and duplicate keys refused (see the module docstring)."""

    def construct_mapping(self, node, deep=False):
        """SafeLoader's mapping, after refusing a key that appears twice (a ConstructorError naming both
        lines); merge keys (`<<:`) and unhashable keys are left to SafeLoader."""
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key!r} (lines {seen[key]} and {line})", key_node.start_mark)
                    seen[key] = line
                except TypeError:  # an unhashable key; SafeConstructor reports it below
                    continue
        return super().construct_mapping(node, deep=deep)


YAML12Loader.add_constructor("tag:yaml.org,2002:map", YAML12Loader.construct_yaml_map)
YAML12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YAML12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
YAML12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _check_shape(root) -> None:
    """Depth and size after alias expansion, counted over the composed node graph (aliases are shared nodes)."""
    sizes: dict[int, int] = {}
    stack = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if depth > MAX_DEPTH:
            raise yaml.YAMLError(f"nesting deeper than {MAX_DEPTH} levels (line {node.start_mark.line + 1})")
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if done:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_NODES:
                raise yaml.YAMLError(f"more than {MAX_NODES} values once aliases are expanded "
                                     f"(line {node.start_mark.line + 1})")
        elif id(node) not in sizes:
            stack.append((node, depth, True))
            stack += [(c, depth + 1, False) for c in children if id(c) not in sizes]


def parse_yaml(text: str):
    """Parse YAML text with the toolkit's rules; raises yaml.YAMLError (RecursionError becomes one too)."""
    loader = YAML12Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_shape(node)
        return loader.construct_document(node)
    except RecursionError:
        raise yaml.YAMLError(f"nesting too deep (more than {MAX_DEPTH} levels)") from None
    finally:
        loader.dispose()


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file's contents; a missing, unreadable or non-UTF-8 file is a UserError naming it.

    A non-UTF-8 file is named with the first bad byte, its offset and its line.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read {what} ({e.strerror or e.__class__.__name__})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}: {what} is not UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start} "
                        f"(line {line}); save it as UTF-8") from None


def read_yaml(path: str | Path, what: str = "YAML file"):
    """Read and parse one YAML file; every failure is a UserError naming the file (and line or byte).

    Returns whatever the document holds (None for an empty file); callers check the shape they need.
    """
    text = read_text(path, what)
    try:
        return parse_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or (str(e).splitlines() or [e.__class__.__name__])[0]
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None


SAMPLE_CONVERSATION = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"},
                       {"role": "user", "content": "And 3 + 3?"}, {"role": "assistant", "content": "6"}]


def read_chat_template(path: str | Path) -> str:
    """A `.jinja` chat template's text, checked the way training will use it: it must be UTF-8, compile as
    Jinja (with the `{% generation %}` tag) and render a plain user/assistant conversation, with and without
    a generation prompt. Raises UserError naming the file and, for syntax errors, the line.

    Rendering goes through transformers' own `render_jinja_template`, the code `apply_chat_template` runs.
    """
    text = read_text(path, "chat template")
    import jinja2
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        for prompt in (False, True):
            render_jinja_template([SAMPLE_CONVERSATION], chat_template=text, add_generation_prompt=prompt,
                                  bos_token="<s>", eos_token="</s>")
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"{path}: chat template line {e.lineno}: {e.message}") from None
    except Exception as e:  # noqa: BLE001 - a template's own code can raise anything while rendering
        raise UserError(f"{path}: chat template fails on a plain user/assistant conversation "
                        f"({e.__class__.__name__}: {first_line(e)})") from None
    return text
