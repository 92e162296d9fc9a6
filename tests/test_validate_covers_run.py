"""`finetune validate` covers `finetune run`: every refusal `run` can make, and which check catches it first.

The requirement: `finetune validate` runs every check a run would make before its first heavy step (eval tasks
resolved and validated, toolkit-owned `train:` keys per stage kind, links between stages), and a test enumerates
the refusals of `run` and shows each is caught by `validate`. This is that test.

1. The enumeration cannot go stale: `run_sites()` reads, with `ast`, every `UserError(...)` the modules that
   `finetune run` executes construct (`raise UserError(...)`, and the helpers that build one for a caller to
   raise, such as evaluation.missing_chat_template), and identifies each by (module, function, a fragment of its
   message source), never by line. The test fails for a site the table below does not list, and for a table
   entry that matches no site.
2. TABLE classifies each site:
   - caught("static" | "deep", case): a recipe mistake. `case(tmp_path)` writes a bad recipe (and its small
     data files, and the base model folder it needs); `finetune validate` (or `validate --deep`) must exit 2
     with exactly one `error:` line holding the same message fragment as run's refusal. For a mistake the
     static check words itself (`run` refuses at the same check, since `cmd_run` loads the recipe through it),
     `says=` is that wording. A deep case must pass plain validate (else the table should say `static`).
   - needs_the_model(reason, case): a recipe mistake that only a loaded model reveals: the SFT label audit
     (TRL tokenises the SFT data inside SFTTrainer's constructor, which needs the model) and the settings TRL
     checks only in a trainer's constructor. `run` refuses it when that stage has loaded its model, before its
     first step; `validate --deep` passes it even on a base folder with a real tokenizer (asserted, so a
     validate that learns to catch one fails here and asks for `caught(...)`).
   - at_first_load(reason, case): a base_model.path folder that holds no model or tokenizer. validate accepts
     any existing folder (tests and examples use empty ones as placeholders); `run` refuses it when the first
     stage loads the base model, before any training step, so it costs no training. `validate --deep` passes
     it (asserted).
   - not_a_recipe_mistake(reason): depends on run-time state, not on the recipe.
   - not_reachable_from_run(reason): only other commands (or no input at all) reach it; a "guard" is a check
     that an earlier check (often validate's own) always refuses first.
   - missed(level, what validate should do, case): `run` refuses it (before or during training) but neither
     validate does: a strict xfail, so fixing validate turns it into a failure that asks for `caught(...)`.
     (None is left today.)
   A site that several different recipe mistakes reach lists one entry per mistake.
3. The tokenizer-level checks of `validate --deep` (pipeline.preflight: pad/EOS, a chat template for chat data,
   the turns the template keeps, the pair and KTO label audits, the data audit's rendering of every chat row)
   run only on a base model folder with tokenizer files. Those cases get one: `base_folder(kind)`, a tokenizer
   trained by finetune.tiny.build_tokenizer (512 tokens, about a second, built once for the module) and
   saved with ChatML, without its template, without pad and EOS, with a corrupt tokenizer.json, or a
   config.json alone (a model folder without tokenizer files). No model is built: they stay out of `slow`.
4. Some caught cases also go through `finetune run`, which must refuse with the same fragment before any stage
   folder exists (RUN_KEYS: static ones before the run folder exists, deep ones in preflight).
5. Every needs_the_model and at_first_load case, and the deep cases that need a tokenizer, also go through
   `finetune run` on the tiny model (RUNS): the evidence that run refuses it, and where (before any stage
   folder, or inside the first stage's folder before it finishes). And prepare_trainable's own init_text refusal,
   which validate now reaches first for a local folder, is shown to be one line when run does reach it.

Static cases run the real CLI in a subprocess (no torch import: ~0.2 s each). Deep cases run `finetune.cli.main`
in-process, as tests/test_bad_inputs.py does (a subprocess would import torch and TRL again for every case: ~5 s);
they load no model, so they stay out of `slow` like the rest of the inner loop (about 40 s in all). The `run`
cases that reach preflight are subprocesses that import torch: marked `slow` here. The RUNS cases ask for
`tiny_llama`, which tests/conftest.py marks `slow` (about 2 minutes in all).
"""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import DATA, REPO

PKG = REPO / "finetune"
BAD = REPO / "tests" / "bad_data"
CHAT = DATA / "tiny_chat.jsonl"
ALPACA = DATA / "tiny_alpaca.json"
PREFS = DATA / "tiny_prefs.jsonl"
PROMPT_COMPLETION = DATA / "tiny_prompt_completion.csv"

# ------------------------------------------------------------------------------------ what `run` executes
# `finetune run` is cli.cmd_run: recipe.load_recipe, then pipeline.run_recipe (GGUF resolution, run folder and
# lock, preflight, the data audit, every stage module, the label audit, chat templates, model loading, watch,
# sampled pairs, evaluation with SQuAD scoring, the report). Every module under finetune/ and finetune/stages/
# is enumerated except these:
VALIDATION = {
    "recipe.py": "the static validation itself: `run` reaches it only through load_recipe, which validate runs",
    "schema.py": "the schema the static validation checks against (holds no refusal of its own)",
}
OTHER_COMMANDS = {
    "chat.py": "`finetune merge` and `finetune chat` (cli registers them through _lazy_eval_parser)",
    "review.py": "`finetune review export/import` only",
    "score.py": "`finetune score` only",
    "tiny.py": "`finetune tiny` (cli.cmd_tiny) and the benchmarks; no module on run's path imports it",
    "students.py": "`finetune student` (cli.cmd_student) only",
    "targets.py": "`make <recipe>` targets; it calls the CLI, run never calls it",
    "demo.py": "`make demo`: it calls run_recipe, but its own code is not what `finetune run` executes",
    "realmodels.py": "`make vocab` and the tests' real tokenizers; not imported by any run module",
    "kernel_paths.py": "`make test`'s second CPU kernel pass and the demo spread",
}
# finetune/bench/ (the benchmarks) is not enumerated at all: `python -m finetune.bench`, never `finetune run`.
# cli.py IS enumerated (cmd_run lives there); its refusals for other commands are marked not_reachable_from_run.


@dataclass(frozen=True)
class Site:
    module: str  # "data", "stages/sft"
    function: str  # enclosing function, with its class for methods: "TaskMetricCallback.__init__"
    source: str  # the message argument as source text (ast.unparse)
    line: int  # for the failure message only

    @property
    def fragment(self) -> str:
        """The first literal piece of the message (what a new table entry would start from)."""
        node = ast.parse(self.source, mode="eval").body
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value.strip(" :'"):
                return sub.value
        return self.source


def _walk(node: ast.AST, module: str, scope: tuple[str, ...], sites: list[Site]) -> None:
    """Collect the UserError(...) calls under `node`; `scope` is the enclosing class and function names."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            _walk(child, module, (*scope, child.name), sites)
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):  # classes stay in the name, outer functions go
            _walk(child, module, (*[s for s in scope if s[:1].isupper()], child.name), sites)
        else:
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Name) and child.func.id == "UserError" \
                    and child.args:
                sites.append(Site(module, ".".join(scope) or "<module>", ast.unparse(child.args[0]), child.lineno))
            _walk(child, module, scope, sites)


def run_sites() -> list[Site]:
    """Every `UserError(...)` constructed in the modules `finetune run` executes."""
    excluded = set(VALIDATION) | set(OTHER_COMMANDS)
    sites: list[Site] = []
    for path in sorted([*PKG.glob("*.py"), *PKG.glob("stages/*.py")]):
        rel = path.relative_to(PKG).as_posix()
        if rel in excluded:
            continue
        module = rel.removesuffix(".py")

        _walk(ast.parse(path.read_text(encoding="utf-8")), module, (), sites)
    return sites


# ------------------------------------------------------------------------------------------ classification


@dataclass(frozen=True)
class Caught:
    level: str  # "static" (plain `finetune validate`) or "deep" (`validate --deep`)
    case: Callable[[Path], Path]
    says: str | None = None  # the fragment validate's error line holds (default: the table key's fragment)


@dataclass(frozen=True)
class Missed:
    level: str  # where validate should catch it
    should: str  # what validate should do
    case: Callable[[Path], Path]
    says: str | None = None


@dataclass(frozen=True)
class NeedsTheModel:
    reason: str  # what needs the loaded model
    case: Callable[[Path], Path]
    says: str | None = None  # the fragment run's error line holds


@dataclass(frozen=True)
class AtFirstLoad:
    reason: str
    case: Callable[[Path], Path]
    says: str | None = None


@dataclass(frozen=True)
class NotARecipeMistake:
    reason: str


@dataclass(frozen=True)
class NotReachableFromRun:
    reason: str


def caught(level: str, case, says: str | None = None) -> Caught:
    assert level in ("static", "deep")
    return Caught(level, case, says)


def missed(level: str, should: str, case, says: str | None = None) -> Missed:
    assert level in ("static", "deep")
    return Missed(level, should, case, says)


def needs_the_model(reason: str, case, says: str | None = None) -> NeedsTheModel:
    return NeedsTheModel(reason, case, says)


def at_first_load(reason: str, case, says: str | None = None) -> AtFirstLoad:
    return AtFirstLoad(reason, case, says)


def not_a_recipe_mistake(reason: str) -> NotARecipeMistake:
    return NotARecipeMistake(reason)


def not_reachable_from_run(reason: str) -> NotReachableFromRun:
    return NotReachableFromRun(reason)


# ------------------------------------------------------------------------------------------ building cases

TRAIN = {"max_steps": 1, "per_device_train_batch_size": 4, "gradient_checkpointing": False, "save_strategy": "no",
         "report_to": "none", "disable_tqdm": True}


def write_recipe(tmp: Path, stages: list[dict] | None = None, data: dict | None = None,
                 base_model: dict | None = None, model: Path | None = None, **top) -> Path:
    """A recipe on `model` (default: an empty folder, which is all validate looks at) and the shipped chat data;
    `stages` default to one SFT stage."""
    if model is None:
        model = tmp / "model"
        model.mkdir(exist_ok=True)
    doc = {"name": "bad", "seed": 1, "base_model": {"path": str(model), "dtype": "float32", **(base_model or {})},
           "data": data or {"chat": {"path": str(CHAT)}}, "stages": stages or [sft()], **top}
    path = tmp / "bad.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


# Base model folders for validate's tokenizer-level checks: tokenizer files and no weights (validate loads no
# model), built once for the module under pytest's temporary root (the fixture below sets it).
_FOLDERS: dict[str, Path] = {}
_FOLDER_ROOT: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def _base_folder_root(tmp_path_factory):
    _FOLDER_ROOT[:] = [tmp_path_factory.mktemp("base_folders")]
    yield
    _FOLDERS.clear()


def base_folder(kind: str = "chatml") -> Path:
    """A base model folder with a real tokenizer and no weights: "chatml" (a byte-level BPE tokenizer trained by
    finetune.tiny.build_tokenizer on the shipped data, 512 tokens, pad and EOS set, served with the ChatML
    template the tiny models ship), "no_template" (the same without its chat template), "no_pad_or_eos" (without
    pad and EOS tokens), "corrupt_tokenizer" (tokenizer.json is not JSON), or "weights_only" (a config.json and no
    tokenizer files: a model saved without its tokenizer). Built on first use (about a second), then shared."""
    if kind in _FOLDERS:
        return _FOLDERS[kind]
    out = _FOLDER_ROOT[0] / kind
    if kind == "chatml":
        from finetune.tiny import build_tokenizer, corpus_files

        build_tokenizer(corpus_files([str(DATA)]), vocab_size=512).save_pretrained(out)
        assert (out / "chat_template.jinja").is_file()
    elif kind == "weights_only":
        out.mkdir()
        (out / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 512}), encoding="utf-8")
    else:
        shutil.copytree(base_folder("chatml"), out)
        config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
        if kind == "no_template":
            (out / "chat_template.jinja").unlink()
            config.pop("chat_template", None)
        elif kind == "no_pad_or_eos":
            config.update(eos_token=None, pad_token=None)
        elif kind == "corrupt_tokenizer":
            (out / "tokenizer.json").write_text("{not json", encoding="utf-8")
        else:
            raise ValueError(f"no base folder kind {kind!r}")
        (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    _FOLDERS[kind] = out
    return out


def sft(**keys) -> dict:
    return {"name": "sft", "kind": "sft", "data": ["chat"], **keys, "train": {**TRAIN, **keys.get("train", {})}}


def jsonl(tmp: Path, name: str, rows: list) -> Path:
    path = tmp / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def text_file(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def one_source(tmp: Path, kind: str, path: Path, options: dict | None = None, model: Path | None = None,
               **stage) -> Path:
    """A recipe whose one stage, of `kind`, reads `path` as data source `bad` (on `model`, as write_recipe).
    Online kinds score with a verifiable reward, so they need no reward stage."""
    st = {"name": kind, "kind": kind, "data": ["bad"], "train": dict(TRAIN), **stage}
    if kind in ("grpo", "rloo") and "rewards" not in stage:
        st["rewards"] = {"length_penalty": 1}
    return write_recipe(tmp, [st], data={"bad": {"path": str(path), **(options or {})}}, model=model)


def bad_file(name: str, kind: str = "sft", **options):
    """A case: a file of tests/bad_data fed to a `kind` stage."""
    def case(tmp: Path) -> Path:
        return one_source(tmp, kind, BAD / name, options)
    case.__name__ = f"bad_data_{Path(name).stem}"
    return case


def rows(kind: str, data: list, name: str = "bad.jsonl", **stage):
    """A case: these JSON lines fed to a `kind` stage."""
    def case(tmp: Path) -> Path:
        return one_source(tmp, kind, jsonl(tmp, name, data), **stage)
    case.__name__ = f"{kind}_rows"
    return case


QA_ROWS = [{"question": "Where is Paris?", "answer": "France"}, {"question": "Where is Rome?", "answer": "Italy"}]


def task_recipe(tmp: Path, spec: dict | str, *, model: Path | None = None, base_model: dict | None = None) -> Path:
    """A recipe whose eval task is `spec` (a mapping, or raw YAML text), written beside it."""
    task = tmp / "task.yaml"
    task.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return write_recipe(tmp, model=model, base_model=base_model, eval={"tasks": [str(task)]})


def open_qa(tmp: Path, qa_rows: list | str | None = None, **spec) -> dict:
    """An open_qa task spec on `qa_rows` (JSON lines, or raw text) and the keys in `spec`."""
    data = tmp / "qa.jsonl"
    data.write_text(qa_rows if isinstance(qa_rows, str) else "".join(json.dumps(r) + "\n" for r in (
        QA_ROWS if qa_rows is None else qa_rows)), encoding="utf-8")
    return {"metric": "squad_v1", "data": str(data), "format": "open_qa", "prompt": "Q: {question}\nA:", **spec}


def task(**spec):
    """A case: an open_qa eval task with these keys (None deletes one)."""
    def case(tmp: Path) -> Path:
        body = {k: v for k, v in open_qa(tmp, **{k: v for k, v in spec.items() if v is not None}).items()
                if spec.get(k, 0) is not None}
        return task_recipe(tmp, body)
    case.__name__ = "task_" + "_".join(spec)
    return case


def qa_task(qa_rows):
    """A case: an open_qa eval task on these rows."""
    def case(tmp: Path) -> Path:
        return task_recipe(tmp, open_qa(tmp, qa_rows))
    case.__name__ = "open_qa_rows"
    return case


def squad_task(document: object):
    """A case: a squad_json eval task on this document (bytes/str are written as they are)."""
    def case(tmp: Path) -> Path:
        raw = document if isinstance(document, bytes | str) else json.dumps(document)
        data = text_file(tmp, "squad.json", raw)
        return task_recipe(tmp, {"metric": "squad_v1", "data": str(data), "format": "squad_json",
                                 "prompt": "{context}\nQ: {question}\nA:"})
    case.__name__ = "squad_file"
    return case


def squad_qa(**qa) -> dict:
    """A SQuAD document with one question, `qa` (its keys replaced, None deletes one)."""
    base = {"id": "q1", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 0}]}
    return {"data": [{"paragraphs": [{"context": "Paris.", "qas": [
        {k: v for k, v in {**base, **qa}.items() if v is not None}]}]}]}


# Chat templates. PLAIN has no {% generation %} markers; MARKED has them (and so trains as served); the others
# are each wrong in one way.
PLAIN = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
MARKED_OTHER_TEXT = ("{% for m in messages %}[{{ m['role'] }}] {% if m['role'] == 'assistant' %}{% generation %}"
                     "{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}"
                     "{% if add_generation_prompt %}[assistant] {% endif %}")
MARKED_WITHOUT_EOS = ("{% for m in messages %}<|{{ m['role'] }}|>{% if m['role'] == 'assistant' %}{% generation %}"
                      "{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}{{ eos_token }}\n"
                      "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
DROPS_SYSTEM = ("{% for m in messages %}{% if m['role'] != 'system' %}<|{{ m['role'] }}|>{{ m['content'] }}"
                "{{ eos_token }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
REFUSES_SYSTEM = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system turns') }}"
                  "{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
                  "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def templates(**files: str | bytes):
    """A case: base_model.<key> = a .jinja file with this text, for each key given."""
    def case(tmp: Path) -> Path:
        return write_recipe(tmp, base_model={k: str(text_file(tmp, f"{k}.jinja", v)) for k, v in files.items()})
    case.__name__ = "_and_".join(files)
    return case


def gguf(content: bytes | None, tokenizer: bool = False):
    """A case: base_model.gguf_file names a file with `content` (None: a file that is not there); with
    `tokenizer`, base_model.tokenizer is set too, so validate does not read the GGUF for its template."""
    def case(tmp: Path) -> Path:
        model = tmp / "model"
        model.mkdir()
        if content is not None:
            text_file(model, "model.gguf", content)
        extra = {"tokenizer": str(model)} if tokenizer else {}
        return write_recipe(tmp, base_model={"gguf_file": "model.gguf", **extra})
    case.__name__ = f"gguf_{'missing' if content is None else 'file'}{'_beside_a_tokenizer' if tokenizer else ''}"
    return case


# The cases, each a function of tmp_path that writes the bad recipe (and its data) and returns its path.
C: dict[str, Callable[[Path], Path]] = {}


def c_case(f):
    C[f.__name__] = f
    return f


@c_case
def eval_task_misspelt(tmp):  # regression: `eval.tasks: [squad_v1_tny]` trained every stage, then failed
    return write_recipe(tmp, eval={"tasks": ["squad_v1_tny"]})


@c_case
def sft_assistant_only_loss_in_train(tmp):  # regression: SFTConfig's own flag, which the stage's loss: owns
    return write_recipe(tmp, [sft(train={"assistant_only_loss": True})])


@c_case
def from_a_soft_prompt(tmp):
    return write_recipe(tmp, [sft(peft={"method": "prompt_tuning"}),
                              {"name": "dpo", "kind": "dpo", "data": ["prefs"], "train": dict(TRAIN)}],
                        data={"chat": {"path": str(CHAT)}, "prefs": {"path": str(PREFS)}})


@c_case
def hub_dataset_unreachable(tmp):
    return write_recipe(tmp, data={"chat": {"path": "nosuch-org/nosuch-dataset"}})


@c_case
def empty_csv(tmp):
    return one_source(tmp, "sft", text_file(tmp, "empty.csv", b""))


@c_case
def json_array_with_a_number(tmp):
    return one_source(tmp, "sft", text_file(tmp, "bad.json", '[{"text": "a"}, 3]'))


@c_case
def weight_gives_no_rows(tmp):
    return write_recipe(tmp, [sft(data={"chat": 1000, "alpaca": 1}, max_rows=4)],
                        data={"chat": {"path": str(CHAT)}, "alpaca": {"path": str(ALPACA)}})


@c_case
def eval_split_takes_every_row(tmp):
    return write_recipe(tmp, [sft(eval_split=100000)])


@c_case
def sources_of_two_kinds(tmp):
    return write_recipe(tmp, [sft(data=["chat", "pc"])],
                        data={"chat": {"path": str(CHAT)}, "pc": {"path": str(PROMPT_COMPLETION)}})


@c_case
def trl_rejects_the_config(tmp):
    return write_recipe(tmp, [sft(train={"lr_scheduler_type": "nonsense"})])


@c_case
def grpo_groups_do_not_divide(tmp):  # 3 completions per step cannot form groups of num_generations 4
    answered = jsonl(tmp, "answered.jsonl", [{"prompt": f"Where is city {i}?", "answers": ["France"]}
                                             for i in range(8)])
    return one_source(tmp, "grpo", answered, rewards={"squad_f1": 1},
                      train={**TRAIN, "per_device_train_batch_size": 3})


@c_case
def sample_pairs_without_answers(tmp):
    return one_source(tmp, "dpo", DATA / "tiny_prompts.jsonl", sample_pairs={"k": 2})


@c_case
def verifiable_reward_without_answers(tmp):
    return one_source(tmp, "grpo", DATA / "tiny_prompts.jsonl", rewards={"squad_f1": 1})


@c_case
def completion_only_loss_on_chat(tmp):
    return write_recipe(tmp, [sft(loss="completion_only")])


def named(name: str, case):
    case.__name__ = name
    return case


# Cases that were `missed` until validate learnt to catch them, and those only a loaded model reveals: most need a
# base model folder with a real tokenizer (base_folder), since validate runs its tokenizer checks only on one.


@c_case
def eval_data_file_missing(tmp):  # run used to fail at the first evaluation, after every stage had trained
    return task_recipe(tmp, {**open_qa(tmp), "data": str(tmp / "missing.jsonl")})


@c_case
def eval_question_without_gold(tmp):  # squad_v1 scoring refuses it, after every stage has trained
    return task_recipe(tmp, open_qa(tmp, [{"question": "Where is Paris?", "answer": []}]))


@c_case
def eval_task_without_questions(tmp):
    return task_recipe(tmp, open_qa(tmp, ""))


@c_case
def watch_task_without_questions(tmp):
    spec = tmp / "watched.yaml"
    spec.write_text(yaml.safe_dump(open_qa(tmp, "")), encoding="utf-8")
    return write_recipe(tmp, [sft(watch={"task": str(spec)})])


@c_case
def eval_chat_task_on_a_model_without_template(tmp):  # trains on prompt/completion rows, which need none
    task_recipe(tmp, {**open_qa(tmp), "chat_template": True})
    return write_recipe(tmp, [sft(data=["pc"])], data={"pc": {"path": str(PROMPT_COMPLETION)}},
                        eval={"tasks": [str(tmp / "task.yaml")]}, model=base_folder("no_template"))


@c_case
def eval_data_on_an_unreachable_hub(tmp):
    return task_recipe(tmp, {**open_qa(tmp), "data": "nosuch-org/nosuch-qa", "format": "hf_rows"})


@c_case
def training_template_without_served_template(tmp):  # a local model folder whose tokenizer has no template
    return write_recipe(tmp, model=base_folder("no_template"),
                        base_model={"training_chat_template": str(text_file(tmp, "t.jinja", MARKED_OTHER_TEXT))})


@c_case
def chat_data_on_a_model_without_template(tmp):
    return write_recipe(tmp, model=base_folder("no_template"))


@c_case
def base_model_folder_without_a_model(tmp):  # an existing folder is all validate asks of base_model.path
    return write_recipe(tmp)


@c_case
def base_model_tokenizer_unreadable(tmp):  # tokenizer.json is not JSON
    return write_recipe(tmp, model=base_folder("corrupt_tokenizer"))


@c_case
def template_drops_the_system_turn(tmp):  # tiny_chat.jsonl has system turns
    return write_recipe(tmp, model=base_folder(),
                        base_model={"chat_template": str(text_file(tmp, "t.jinja", DROPS_SYSTEM))})


@c_case
def template_fails_on_a_data_row(tmp):  # renders the plain conversation validate tries, not a system turn
    return write_recipe(tmp, model=base_folder(),
                        base_model={"chat_template": str(text_file(tmp, "t.jinja", REFUSES_SYSTEM))})


@c_case
def data_audit_threshold(tmp):  # the thresholds need no tokenizer: the case's empty folder will do
    dup = jsonl(tmp, "dup.jsonl", [{"messages": [{"role": "user", "content": "Where is Paris?"},
                                                 {"role": "assistant", "content": "In France."}]}] * 4)
    return write_recipe(tmp, data={"chat": {"path": str(dup)}}, data_audit={"max_duplicate_share": 0.1})


@c_case
def eos_never_supervised(tmp):
    return write_recipe(tmp, model=base_folder(),
                        base_model={"chat_template": str(text_file(tmp, "t.jinja", MARKED_WITHOUT_EOS))})


@c_case
def max_length_cuts_every_answer(tmp):
    return write_recipe(tmp, [sft(train={"max_length": 4})], model=base_folder())


@c_case
def max_length_cuts_some_answers(tmp):
    long = " ".join(["word"] * 300)
    data = jsonl(tmp, "chat.jsonl", [{"messages": [{"role": "user", "content": f"Question {i}?"},
                                                   {"role": "assistant", "content": long if i == 0 else "Yes."}]}
                                     for i in range(4)])
    return write_recipe(tmp, [sft(train={"max_length": 64}, audit={"max_truncated_share": 0.0})],
                        data={"chat": {"path": str(data)}}, model=base_folder())


@c_case
def pair_prompts_fill_the_window(tmp):
    return one_source(tmp, "dpo", PREFS, model=base_folder(), train={**TRAIN, "max_length": 4})


@c_case
def kto_rows_all_desirable(tmp):
    data = jsonl(tmp, "kto.jsonl", [{"prompt": f"Question {i}?", "completion": "Yes.", "label": True}
                                    for i in range(4)])
    return one_source(tmp, "kto", data, model=base_folder())


@c_case
def kto_prompts_fill_the_window(tmp):
    data = jsonl(tmp, "kto.jsonl", [{"prompt": f"Question {i}?", "completion": "Yes.", "label": i % 2 == 0}
                                    for i in range(4)])
    return one_source(tmp, "kto", data, model=base_folder(), train={**TRAIN, "max_length": 2})


@c_case
def trainer_rejects_the_settings(tmp):  # SFTConfig takes any loss_type; SFTTrainer refuses it
    return write_recipe(tmp, [sft(train={"loss_type": "nonsense"})], model=base_folder())


@c_case
def generation_block_marks_nothing(tmp):
    empty = MARKED_WITHOUT_EOS.replace("{{ m['content'] }}{% endgeneration %}",
                                       "{% endgeneration %}{{ m['content'] }}")
    return write_recipe(tmp, model=base_folder(),
                        base_model={"chat_template": str(text_file(tmp, "t.jinja", empty))})


@c_case
def init_text_without_a_tokenizer_beside_the_model(tmp):  # the model's folder has config.json, no tokenizer
    return write_recipe(tmp, [sft(peft={"method": "prompt_tuning", "init_text": "Answer the question."})],
                        model=base_folder("weights_only"), base_model={"tokenizer": str(base_folder())})


@c_case
def tokenizer_without_pad_or_eos(tmp):  # read from the tokenizer files validate opens
    return write_recipe(tmp, model=base_folder("no_pad_or_eos"))


ON_DISK_STATE = "the state of the run folder on disk, not the recipe"
HUB = ("depends on the hub being reachable and the id existing there; validate is offline by design (it notes "
       "that a hub model will be fetched)")
SCORE_ONLY = "`finetune score`'s files (predictions, no-answer probabilities); run scores its own predictions"
DEFENCE = "no input reaches it: an earlier check refuses first ({}); kept as a guard"
SFT_LABELS = ("the SFT label audit reads the input ids and labels TRL makes while SFTTrainer is built, which takes "
              "the loaded model; run refuses it after the stage loads its model, before the first step")

# (module, function, a fragment of the message's source) -> classification (or a tuple, one per distinct mistake)
TABLE: dict[tuple[str, str, str], object] = {
    # --- artifacts: stage outputs handed on
    ("artifacts", "adapter_base", "not a peft adapter folder"): not_a_recipe_mistake(
        "an earlier stage's adapter folder, written by the toolkit, is damaged or gone"),
    ("artifacts", "require_mergeable", "is a soft prompt"): caught(
        "static", C["from_a_soft_prompt"], says="trained a soft prompt (prompt_tuning), which cannot be merged"),
    ("artifacts", "merge_adapter", "output folder is not empty"): not_a_recipe_mistake(
        "the run folder's merged/ cache (or a reward stage's model/) holds stray files"),
    ("artifacts", "resolve_target", "not a model folder"): not_reachable_from_run(
        "`finetune eval`, `merge` and `chat` resolve a folder the user names; run hands artifacts on itself"),
    # --- the label audits: SFT's after the model and trainer are built, before the first step (TRL tokenises
    # the SFT rows inside SFTTrainer's constructor, which takes the model); the pair and KTO audits before the
    # model loads, and in preflight on a local tokenizer
    ("audit", "label_audit", "have no supervised token"): not_reachable_from_run(DEFENCE.format(
        "TRL's SFTTrainer raises for a chat row without assistant tokens, and build_trainer words it; prompt/"
        "completion and text rows with text always have supervised tokens")),
    ("audit", "label_audit", "token is never supervised"): needs_the_model(
        SFT_LABELS, C["eos_never_supervised"], says="the end-of-turn/EOS token is never supervised"),
    ("audit", "label_audit", "cuts away the whole answer of every row"): needs_the_model(
        SFT_LABELS, C["max_length_cuts_every_answer"], says="cuts away the whole answer of every row"),
    ("audit", "_check_truncated_share", "audit.max_truncated_share"): needs_the_model(
        SFT_LABELS, C["max_length_cuts_some_answers"], says="audit.max_truncated_share"),
    ("audit", "preference_audit", "every prompt fills the whole window"): caught(
        "deep", C["pair_prompts_fill_the_window"], says="every prompt fills the whole window"),
    ("audit", "unpaired_audit", "KTO needs both desirable"): caught(
        "deep", C["kto_rows_all_desirable"], says="KTO needs both desirable"),
    ("audit", "unpaired_audit", "every prompt fills the whole window"): caught(
        "deep", C["kto_prompts_fill_the_window"], says="every prompt fills the whole window"),
    # --- chat templates
    ("chat_templates", "check", "does not render what the model is served with"): caught(
        "static", templates(chat_template=PLAIN, training_chat_template=MARKED_OTHER_TEXT)),
    ("chat_templates", "fidelity_note", "base_model.training_chat_template: {e}"): caught(
        "static", templates(chat_template=PLAIN, training_chat_template=MARKED_OTHER_TEXT),
        says="base_model.training_chat_template: chat template:"),
    ("chat_templates", "training_template_for", "has no chat template of its own"): caught(
        "static", C["training_template_without_served_template"],
        says="base_model.training_chat_template: the model has no chat template of its own"),
    # --- the command line
    ("cli", "cmd_tiny", "must be a multiple of 4"): not_reachable_from_run("`finetune tiny --hidden`"),
    # --- training data: read, detected, normalised, mixed, split (preflight runs all of it)
    ("data", "_check_json_file", "not UTF-8 text"): caught("deep", bad_file("latin1.jsonl")),
    ("data", "_check_json_file", "file is empty (no rows)"): caught("deep", bad_file("empty.jsonl")),
    ("data", "_check_json_file", "of the JSON array must be an object"): caught(
        "deep", C["json_array_with_a_number"], says="item 1 of the JSON array must be an object"),
    ("data", "_check_json_file", "the file holds a JSON"): caught(
        "deep", bad_file("json_scalar.json"), says="the file holds a JSON int"),
    ("data", "_check_json_file", "malformed JSON ({doc.msg})"): caught(
        "deep", bad_file("array_syntax_error.json"), says="malformed JSON (Expecting property name"),
    ("data", "_check_json_file", "malformed JSON line"): caught("deep", bad_file("broken_line.jsonl")),
    ("data", "_check_json_file", "each line must be a JSON object"): caught("deep", bad_file("line_is_list.jsonl")),
    ("data", "load_source", "unsupported file type"): caught(
        "deep", bad_file("notes.txt"), says="unsupported file type '.txt'"),
    ("data", "load_source", "file is empty (no rows)"): caught("deep", C["empty_csv"]),
    ("data", "load_source", "cannot load"): caught(
        "deep", C["hub_dataset_unreachable"], says="data.chat.path: cannot load 'nosuch-org/nosuch-dataset'"),
    ("data", "load_source", "cannot read {where}"): caught(
        "deep", bad_file("header_only.csv"), says="cannot read data.bad"),
    ("data", "load_source", "has no rows"): not_reachable_from_run(DEFENCE.format(
        "datasets refuses every zero-row local file: 'corresponds to no data', 'BatchSize must be greater than 0'; "
        "only an empty hub split could get here, through the same load_source validate --deep runs")),
    ("data", "load_source", "names column(s)"): caught(
        "deep", bad_file("mapped_missing.jsonl", columns={"prompt": "question", "completion": "answer"}),
        says="columns names column(s) ['answer'] that the data lacks"),
    ("data", "detect_format", "needs column(s)"): caught(
        "deep", bad_file("alpaca_no_output.json", format="alpaca"), says="format alpaca needs column(s) ['output']"),
    ("data", "detect_format", "cannot tell the instruction format"): caught("deep", bad_file("wrong_columns.csv")),
    ("data", "normalise", "row {i}: {e}"): caught(
        "deep", bad_file("unknown_role.jsonl"), says="row 1: turn 0: role must be one of"),
    ("data", "normalise", "missing field"): not_reachable_from_run(DEFENCE.format(
        "detect_format guarantees every column the format's normaliser reads, and datasets gives every row "
        "every column")),
    ("data", "normalise", "no usable rows left"): caught(
        "deep", bad_file("no_assistant_turn.jsonl"), says="no usable rows left (3 no assistant turn)"),
    ("data", "mix", "gives it 0 of"): caught(
        "deep", C["weight_gives_no_rows"], says="data.alpaca: weight 1.0 gives it 0 of 4 rows"),
    ("data", "split", "leaves no training rows"): caught("deep", C["eval_split_takes_every_row"]),
    ("data", "stage_data", "its data sources mix kinds"): caught("deep", C["sources_of_two_kinds"]),
    # --- the data audit (run's first step after preflight; validate --deep runs it after preflight too)
    ("data_audit", "_template_error", "fails on data row {i}"): caught(
        "deep", C["template_fails_on_a_data_row"], says="the chat template fails on data row"),
    ("data_audit", "_template_error", "fails on data rows {start}"): not_reachable_from_run(DEFENCE.format(
        "the same rows rendered one at a time name the first one that fails")),
    ("data_audit", "audit_recipe", "report['errors'][0]"): caught(
        "deep", C["data_audit_threshold"], says="of rows are duplicates"),
    # --- `finetune eval` only
    ("eval_models", "targets", "no such model or run folder"): not_reachable_from_run("`finetune eval PATH`"),
    ("eval_models", "targets", "neither a model folder"): not_reachable_from_run("`finetune eval PATH`"),
    # --- eval tasks (validate loads every one and reads its local rows)
    ("evaluation", "load_task", "not found (tasks:"): caught(
        "static", C["eval_task_misspelt"], says="eval.tasks[0]: eval task 'squad_v1_tny' not found"),
    ("evaluation", "load_task", "an eval task must be a YAML mapping"): caught(
        "static", named("task_is_a_list", lambda tmp: task_recipe(tmp, "- a\n- b\n")), says="got list"),
    ("evaluation", "load_task", "unknown task key(s)"): caught(
        "static", task(promt="Q: {question}"), says="unknown task key(s) ['promt']"),
    ("evaluation", "load_task", "is required"): caught("static", task(prompt=None), says="`prompt` is required"),
    ("evaluation", "load_task", "metric must be squad_v1 or squad_v2"): caught("static", task(metric="squad_v3")),
    ("evaluation", "load_task", "format must be one of"): caught("static", task(format="csv")),
    ("evaluation", "load_task", "needs `few_shot_data`"): caught("static", task(few_shot=2), says="few_shot: 2 needs"),
    ("evaluation", "_check_task_types", "must be {what}"): caught(
        "static", task(stop="Question:"), says="stop: must be a list of non-empty strings"),
    ("evaluation", "_check_task_types", "write a literal brace"): caught(
        "static", task(prompt="Q: {question"), says="(write a literal brace as"),
    ("evaluation", "_check_task_types", "unknown placeholder"): caught(
        "static", task(prompt="{contxt}: {question}"), says="unknown placeholder {contxt}"),
    ("evaluation", "_check_answer_rule", "answer: must be a mapping"): caught("static", task(answer=3)),
    ("evaluation", "_check_answer_rule", "answer: unknown key(s)"): caught("static", task(answer={"first": True})),
    ("evaluation", "_check_answer_rule", "answer.first_line: must be true or false"): caught(
        "static", task(answer={"first_line": 1})),
    ("evaluation", "_check_answer_rule", "answer.strip_prefixes: true or a list"): caught(
        "static", task(answer={"strip_prefixes": 3})),
    ("evaluation", "_check_answer_rule", "answer.regex: must be a string"): caught(
        "static", task(answer={"regex": 3})),
    ("evaluation", "_check_answer_rule", "answer.regex: {e}"): caught(
        "static", task(answer={"regex": "("}), says="answer.regex: missing )"),
    ("evaluation", "_check_answer_rule", "answer.regex: needs a group"): caught("static", task(answer={"regex": "x"})),
    ("evaluation", "_hub_rows", "could not be loaded from the hub"): caught(  # preflight: check_task(hub=True)
        "deep", C["eval_data_on_an_unreachable_hub"], says="could not be loaded from the hub"),
    ("evaluation", "read_rows", "' not found"): caught(
        "static", C["eval_data_file_missing"], says="missing.jsonl' not found"),
    ("evaluation", "read_rows", "missing field"): caught(
        "static", squad_task(squad_qa(question=None)), says="missing field 'question'"),
    ("evaluation", "read_rows", "malformed JSON"): caught(
        "static", qa_task('{"question": "a", "answer": "b"}\n{"question": \n'), says="malformed JSON (Expecting"),
    ("evaluation", "_rows_from_records", "missing or malformed field"): caught(
        "static", qa_task([{"answer": "b"}]), says="row 0: missing or malformed field 'question' for format open_qa"),
    ("evaluation", "_check_row", "`question` must be non-empty text"): caught(
        "static", qa_task([{"question": " ", "answer": "b"}])),
    ("evaluation", "_check_row", "`context` must be text"): caught(
        "static", qa_task([{"question": "a", "context": 3, "answer": "b"}])),
    ("evaluation", "_check_row", "answers must be a list of texts"): caught(
        "static", qa_task([{"question": "a", "answer": [1]}])),
    ("evaluation", "_check_row", "`id` must be text or a number"): caught(
        "static", qa_task([{"id": True, "question": "a", "answer": "b"}])),
    ("evaluation", "check_task", "has no questions"): (
        caught("static", C["eval_task_without_questions"], says="eval.tasks[0]: eval task task: "),
        caught("static", C["watch_task_without_questions"], says="stages[0].watch.task: eval task watched: ")),
    ("evaluation", "check_task", "no_gold_message"): caught(
        "static", C["eval_question_without_gold"], says="question 0 has no gold answers; score unanswerable"),
    ("evaluation", "missing_chat_template", "chat_template: true, but the model"): caught(  # build_prompts raises it
        "static", C["eval_chat_task_on_a_model_without_template"],
        says="eval.tasks[0]: eval task task: chat_template: true, but the model's tokenizer has no chat template"),
    ("evaluation", "evaluate_task", "has no questions"): not_reachable_from_run(DEFENCE.format(
        "check_task refuses a task without questions, in validate and in preflight (hub data too); eval.limit "
        "and a task's limit are at least 1")),
    # --- GGUF base models
    ("gguf_models", "resolve_gguf", "not found in"): (
        caught("static", gguf(None), says="base_model.gguf_file: 'model.gguf' not found"),
        caught("static", gguf(None, tokenizer=True), says="base_model.gguf_file: 'model.gguf' not found")),
    ("gguf_models", "resolve_gguf", "is not a GGUF file"): (
        caught("static", gguf(b"not a gguf file"), says="is not a GGUF file (no GGUF magic bytes)"),
        caught("static", gguf(b"not a gguf file", tokenizer=True), says="is not a GGUF file (no GGUF magic bytes)")),
    ("gguf_models", "import_gguf", "exists and is not an import of"): not_a_recipe_mistake(
        "the GGUF import cache ($FINETUNE_CACHE) holds another folder under this file's sha256"),
    ("gguf_models", "import_gguf", "transformers cannot load this GGUF"): not_a_recipe_mistake(
        "a corrupt or unsupported model file; validate reads no weights (a GGUF whose metadata cannot be read is "
        "caught, see chat_template_of)"),
    ("gguf_models", "chat_template_of", "cannot read the GGUF metadata"): caught(
        "static", gguf(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)),
    # --- the run folder
    ("manifest", "claim_run_dir", "is not a folder"): not_a_recipe_mistake(
        ON_DISK_STATE + " (--output-dir is a file)"),
    ("manifest", "claim_run_dir", "holds files that are not a finetune run"): not_a_recipe_mistake(
        ON_DISK_STATE + " (someone else's files in --output-dir)"),
    # --- models and tokenizers
    ("modeling", "_hub_error", "could not be fetched from the hub"): not_a_recipe_mistake(HUB),
    ("modeling", "_hub_error", "cannot load"): (
        caught("deep", C["base_model_tokenizer_unreadable"], says="': cannot load (Expecting property name"),
        at_first_load("validate accepts any existing base_model.path folder (tests and examples use empty ones as "
                      "placeholders) and preflight loads a tokenizer only from a folder with tokenizer files; the "
                      "first stage's tokenizer load refuses it, before its model loads (only a first distill stage "
                      "with its own `student:` leaves the base to a later stage, after it has trained)",
                      C["base_model_folder_without_a_model"], says="': cannot load (")),
    ("modeling", "load_tokenizer", "neither a pad nor an EOS token"): caught(
        "deep", C["tokenizer_without_pad_or_eos"], says="the tokenizer has neither a pad nor an EOS token"),
    ("modeling", "prepare_trainable", "peft.init_text: cannot read a tokenizer"): caught(  # recipe._check_init_text
        # (a hub base model saved without tokenizer files still reaches run's own refusal: validate is offline)
        "static", C["init_text_without_a_tokenizer_beside_the_model"],
        says="stages[0].peft.init_text: cannot read a tokenizer beside the model"),
    # --- `finetune audit --redact-dir` only (run calls audit_recipe without redact_dir)
    ("pii", "redact_sources", "redacted copy of data."): not_reachable_from_run("`finetune audit --redact-dir`"),
    ("pii", "redact_sources", "share file names"): not_reachable_from_run("`finetune audit --redact-dir`"),
    ("pii", "write_redacted", "redacted copy already exists"): not_reachable_from_run("`finetune audit --redact-dir`"),
    # --- the pipeline
    ("pipeline", "_stage_module", "is not available"): not_reachable_from_run(
        "every kind the schema accepts is runnable (RUNNABLE_KINDS == STAGE_KINDS, asserted below); the schema "
        "refuses any other kind first"),
    ("pipeline", "run_recipe", "the recipe has no stage named"): not_a_recipe_mistake(
        "--only is a run option, not part of the recipe (validate takes none)"),
    ("pipeline", "_run_stages", "before it has not finished"): not_a_recipe_mistake(
        "--only needs the earlier stages' outputs in the run folder"),
    ("pipeline", "_run_stages", "this stage was run with other inputs"): not_a_recipe_mistake(
        "a finished (or checkpointed) stage in the run folder was made from other inputs"),
    ("pipeline", "_check_hub_tasks", "a run would fail there after training"): caught(  # relays check_task's
        "deep", C["eval_data_on_an_unreachable_hub"], says="could not be loaded from the hub"),
    ("pipeline", "run_data_audit", "verdict[1]"): caught(  # relays the audit's refusal to every rank
        "deep", C["data_audit_threshold"], says="of rows are duplicates"),
    ("pipeline", "_audit_in_child", "error"): caught(  # relays the refusal of the audit's child process
        "deep", C["data_audit_threshold"], says="of rows are duplicates"),
    # --- preference pairs, RL prompts, KTO rows (preflight reads them)
    ("preference", "detect_layout", "preference data needs `chosen` and `rejected`"): caught(
        "deep", bad_file("prefs_missing_rejected.jsonl", "dpo")),
    ("preference", "detect_layout", "chosen/rejected without a prompt"): caught(
        "deep", bad_file("prefs_text_no_prompt.jsonl", "dpo")),
    ("preference", "normalise_pairs", "{where}: no rows"): not_reachable_from_run(DEFENCE.format(
        "load_source refuses a source without rows")),
    ("preference", "normalise_pairs", "row {i}: {e}"): caught(
        "deep", bad_file("prefs_prompt_text_chosen_list.jsonl", "dpo"),
        says="row 0: prompt, chosen and rejected must all be text or all be message lists"),
    ("preference", "normalise_pairs", "no usable pairs left"): caught(
        "deep", bad_file("prefs_all_equal.jsonl", "reward"), says="no usable pairs left (3 chosen == rejected)"),
    ("preference", "normalise_pairs", "mixes text and conversational pairs"): caught("deep", rows("dpo", [
        {"prompt": "Q?", "chosen": "Yes.", "rejected": "No."},
        {"prompt": [{"role": "user", "content": "Q?"}], "chosen": [{"role": "assistant", "content": "Yes."}],
         "rejected": [{"role": "assistant", "content": "No."}]}])),
    ("preference", "prompts_only", "row {i}: empty prompt"): caught(  # two sites: prompt rows, and pairs' prompts
        "deep", bad_file("prompts_empty.jsonl", "grpo"), says="row 1: empty prompt"),
    ("preference", "prompts_only", "messages must be a list"): caught(
        "deep", bad_file("prompts_messages_not_list.jsonl", "grpo"), says="row 0: messages must be a list"),
    ("preference", "prompts_only", "RL prompts need a `prompt` or `messages` column"): caught(
        "deep", bad_file("prompts_no_column.jsonl", "grpo")),
    ("preference", "prompts_only", "a prompt must be text or a list"): caught(
        "deep", bad_file("prompts_not_text.jsonl", "grpo"), says="row 0: a prompt must be text or a list"),
    ("preference", "prompts_only", "mixes text and conversational prompts"): caught(
        "deep", bad_file("prompts_mixed_kinds.jsonl", "grpo")),
    ("preference", "unpaired", "KTO data needs"): caught(
        "deep", rows("kto", [{"prompt": "Q?", "completion": "A."}]), says="missing label"),
    ("preference", "unpaired", "label must be true or false"): caught(
        "deep", rows("kto", [{"prompt": "Q?", "completion": "A.", "label": "yes"}]), says="row 0: label must be"),
    ("preference", "unpaired", "must be text or a list"): caught(
        "deep", rows("kto", [{"prompt": "Q?", "completion": 3, "label": True}]), says="row 0: completion must be"),
    ("preference", "unpaired", "row {i}: empty prompt"): caught(
        "deep", rows("kto", [{"prompt": " ", "completion": "A.", "label": True}]), says="row 0: empty prompt"),
    ("preference", "unpaired", "mixes text and conversations"): caught("deep", rows("kto", [
        {"prompt": "Q?", "completion": "A.", "label": True},
        {"prompt": [{"role": "user", "content": "Q?"}], "completion": [{"role": "assistant", "content": "A."}],
         "label": False}]), says="row 1: mixes text and conversations"),
    ("preference", "unpaired", "no usable rows left"): caught(
        "deep", rows("kto", [{"prompt": "Q?", "completion": " ", "label": True}]),
        says="no usable rows left (1 empty completion)"),
    # --- one writer per run folder
    ("runlock", "_acquire", "{busy}"): not_a_recipe_mistake("another run holds the run folder's lock"),
    # --- metric-labelled DPO pairs
    ("sampled_pairs", "build", "needs an `answers` column"): caught(
        "deep", C["sample_pairs_without_answers"], says="sample_pairs scores answers against gold answers"),
    ("sampled_pairs", "build", "no prompt gave two answers"): not_a_recipe_mistake(
        "depends on what the starting policy samples"),
    # --- SQuAD scoring and files
    ("squad", "_v1_golds", "no_gold_message"): not_reachable_from_run(DEFENCE.format(
        "check_task refuses a squad_v1 question without gold answers, in validate and in preflight (hub data "
        "too); `finetune score` reaches it with a dataset file")),
    ("squad", "evaluate_v1", "the dataset has no questions"): not_reachable_from_run(DEFENCE.format(
        "evaluate_task refuses a task without questions; published_scores skips one")),
    ("squad", "_v2_core", "the dataset has no questions"): not_reachable_from_run(DEFENCE.format(
        "evaluate_task refuses a task without questions")),
    ("squad", "_v2_core", "no-answer probabilities have no entry"): not_reachable_from_run(SCORE_ONLY),
    ("squad", "per_question_scores", "unknown SQuAD version"): not_reachable_from_run(DEFENCE.format(
        "load_task refuses any other metric")),
    ("squad", "_read_json", "file not found"): not_reachable_from_run(
        "`finetune score`; run's read_rows names a missing file itself"),
    ("squad", "_read_json", "file is a directory"): not_reachable_from_run(
        "`finetune score`; run's read_rows reads only files"),
    ("squad", "_read_json", "file is not UTF-8 text"): caught(
        "static", squad_task(b'{"data": [], "t": "\xff"}'), says="dataset file is not UTF-8 text"),
    ("squad", "_read_json", "file is not valid JSON"): caught(
        "static", squad_task('{"data": ['), says="dataset file is not valid JSON"),
    ("squad", "_read_json", "cannot read {what} file"): not_a_recipe_mistake(
        "an I/O error (permissions, a failing disk) when the file is read"),
    ("squad", "_check_layout", "'data' must be a list of articles"): caught("static", squad_task({"data": 3})),
    ("squad", "_check_layout", "must be an object with a 'paragraphs' list"): caught(
        "static", squad_task({"data": [3]})),
    ("squad", "_check_layout", "must be an object with a 'qas' list"): caught(
        "static", squad_task({"data": [{"paragraphs": [3]}]})),
    ("squad", "_check_layout", "must be an object with a string 'id'"): caught(
        "static", squad_task(squad_qa(id=None))),
    ("squad", "_check_layout", "must have an 'answers' list"): caught("static", squad_task(squad_qa(answers=None))),
    ("squad", "_check_layout", "has an answer without a string 'text'"): caught(
        "static", squad_task(squad_qa(answers=[{"text": 1}]))),
    ("squad", "load_squad_dataset", "not a SQuAD dataset"): caught("static", squad_task([])),
    ("squad", "load_predictions", "predictions must be a JSON object"): not_reachable_from_run(SCORE_ONLY),
    ("squad", "load_predictions", "prediction for"): not_reachable_from_run(SCORE_ONLY),
    ("squad", "load_na_probs", "no-answer probabilities must be a JSON object"): not_reachable_from_run(SCORE_ONLY),
    ("squad", "load_na_probs", "no-answer probability for"): not_reachable_from_run(SCORE_ONLY),
    # --- what every stage shares
    ("stages/common", "build_config", "rejected the settings"): (
        caught("deep", C["trl_rejects_the_config"], says="train: SFTConfig rejected the settings"),
        caught("deep", C["grpo_groups_do_not_divide"], says="train: GRPOConfig rejected the settings")),
    ("stages/common", "build_trainer", "rejected the settings"): (
        needs_the_model("TRL checks some settings only in the trainer's constructor, which takes the loaded model "
                        "(SFTConfig takes any loss_type)", C["trainer_rejects_the_settings"],
                        says="SFTTrainer rejected the settings"),
        needs_the_model(SFT_LABELS + " (build_trainer relays sft._explain's message for a row without assistant "
                        "tokens)", C["generation_block_marks_nothing"], says="no supervised assistant token")),
    ("stages/common", "require_chat_template", "chat data needs a chat template"): caught(
        "deep", C["chat_data_on_a_model_without_template"], says="chat data needs a chat template"),
    ("stages/common", "require", "message"): not_reachable_from_run("no caller"),
    ("stages/dpo", "config", "needs an `answers` column"): caught(
        "deep", C["sample_pairs_without_answers"], says="sample_pairs scores answers against gold answers"),
    ("stages/rloo", "config", "score against gold answers"): caught(
        "deep", C["verifiable_reward_without_answers"], says="rewards ['squad_f1'] score against gold answers"),
    ("stages/sft", "loss_flags", "does not apply to"): caught(
        "deep", C["completion_only_loss_on_chat"], says="loss 'completion_only' does not apply to chat data"),
    ("stages/sft", "build", "set the stage's `loss:` instead"): caught(
        "static", C["sft_assistant_only_loss_in_train"], says="assistant_only_loss: set the stage's `loss:` instead"),
    ("stages/sft", "check_turns_kept", "the chat template leaves out"): caught(
        "deep", C["template_drops_the_system_turn"], says="the chat template leaves out the 'system' turn"),
    # --- user files
    ("userfiles", "read_text", "{what} not found"): not_a_recipe_mistake(
        "only a file that vanishes between its caller's existence check and the read"),
    ("userfiles", "read_text", "cannot read {what}"): not_a_recipe_mistake("an I/O error when the file is read"),
    ("userfiles", "read_text", "is not UTF-8: byte 0x"): caught(
        "static", templates(chat_template=b"{{ messages }}\xff"), says="chat template is not UTF-8: byte 0xff"),
    ("userfiles", "read_yaml", "malformed YAML"): caught(
        "static", named("task_yaml_malformed", lambda tmp: task_recipe(tmp, "metric: [squad_v1\n"))),
    ("userfiles", "read_chat_template", "chat template line"): caught(
        "static", templates(chat_template="{% if %}"), says="chat template line 1"),
    ("userfiles", "read_chat_template", "fails on a plain user/assistant conversation"): caught(
        "static", templates(chat_template="{{ raise_exception('no chat here') }}")),
    # --- the task metric during training
    ("watch", "TaskMetricCallback.__init__", "has no questions"): not_reachable_from_run(DEFENCE.format(
        "check_task refuses a watch task without questions, in validate and in preflight; watch.questions is "
        "at least 1")),
    ("watch", "TaskMetricCallback.bind", "the policy is sharded"): not_a_recipe_mistake(
        "FSDP / DeepSpeed ZeRO-3 come from how the run is launched (accelerate's config); a plain run never "
        "shards the policy. (validate could still refuse watch: beside train.fsdp or a ZeRO-3 train.deepspeed)"),
}
REPEATED = {("preference", "prompts_only", "row {i}: empty prompt"): 2}  # two identical messages in one function


def entries(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def says(key: tuple[str, str, str], entry) -> str:
    return entry.says or key[2]


# -------------------------------------------------------------------------------------- the enumeration


def test_every_refusal_of_run_is_in_the_table():
    """Every UserError site of the modules `run` executes matches exactly one table entry, and every entry matches
    its sites: a new refusal, or a table entry whose refusal is gone, fails here."""
    sites = run_sites()
    matches = {key: [s for s in sites if (s.module, s.function) == key[:2] and key[2] in s.source] for key in TABLE}
    unlisted = [s for s in sites if not any(s in found for found in matches.values())]
    doubly = [s for s in sites if sum(s in found for found in matches.values()) > 1]
    stale = {key: len(found) for key, found in matches.items() if len(found) != REPEATED.get(key, 1)}
    assert not unlisted, "refusals of `finetune run` missing from TABLE (classify each):\n" + "\n".join(
        f"  ({s.module!r}, {s.function!r}, {s.fragment!r})  finetune/{s.module}.py:{s.line}" for s in unlisted)
    assert not doubly, "sites matched by more than one entry:\n" + "\n".join(f"  {s}" for s in doubly)
    assert not stale, f"table entries matching no site (or another number of sites than expected): {stale}"


def test_every_module_is_enumerated_or_excluded_with_a_reason():
    """A new module is enumerated by default; the exclusions must name modules that exist."""
    names = {p.name for p in PKG.glob("*.py")}
    assert set(VALIDATION) | set(OTHER_COMMANDS) <= names, (set(VALIDATION) | set(OTHER_COMMANDS)) - names
    assert len(run_sites()) > 100  # the walk found the refusals at all


def test_the_unreachable_reasons_that_code_can_check():
    """pipeline._stage_module's refusal is unreachable because every kind is runnable; stages/common.require's
    because nothing calls it."""
    from finetune.schema import RUNNABLE_KINDS, STAGE_KINDS

    assert set(RUNNABLE_KINDS) == set(STAGE_KINDS)
    calls = [node.func for p in PKG.rglob("*.py") for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
             if isinstance(node, ast.Call)]
    callers = [f for f in calls if getattr(f, "attr", getattr(f, "id", None)) == "require"]
    assert callers == []


def test_fragments_that_validate_must_show_are_literal_text():
    """A `says` fragment is message text, not source: no placeholders."""
    for key, value in TABLE.items():
        for entry in entries(value):
            if isinstance(entry, Caught | Missed | NeedsTheModel | AtFirstLoad):
                assert "{" not in says(key, entry) or "{contxt}" in says(key, entry), (key, says(key, entry))


# ------------------------------------------------------------------------------------------ the CLI


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def finetune(*args, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "finetune", *map(str, args)], capture_output=True, text=True,
                          env=env(), timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def heavy_stack():
    """Import the stack before any case captures stderr: datasets and transformers bind their log handlers to
    the sys.stderr of their first import (see tests/test_bad_inputs.py)."""
    import datasets  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401


def validate_deep(recipe: Path) -> tuple[int, str, str]:
    """`finetune validate --deep RECIPE` through finetune.cli.main, in this process."""
    from finetune.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(["validate", "--deep", str(recipe)])
    return rc, out.getvalue(), err.getvalue()


def validate(level: str, recipe: Path, cwd: Path) -> tuple[int, str, str]:
    """`finetune validate [--deep] RECIPE` through finetune.cli.main in this process (from `cwd`): the real
    command without a fresh interpreter per case (the subprocess runs above keep the CLI's own path covered)."""
    if level == "deep":
        return validate_deep(recipe)
    from finetune.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()  # contextlib.chdir is Python 3.11+; the project supports 3.10
    try:
        os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            rc = main(["validate", str(recipe)])
    finally:
        os.chdir(here)
    return rc, out.getvalue(), err.getvalue()


def the_error_line(rc: int, out: str, err: str, fragment: str, strict: bool) -> str:
    """Exit code 2 and exactly one `error:` line holding `fragment`: all of stderr when `strict` (plain validate
    prints nothing else), else the last line, with other libraries' warnings above it allowed."""
    assert "Traceback" not in err, err[-3000:]
    assert rc == 2, f"exit code {rc}, expected 2\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-3000:]
    if strict:
        assert len(lines) == 1, err
    assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


def params(kind, level: str | None = None) -> list:
    """One pytest param per distinct (level, case, fragment) among the table's `kind` entries."""
    seen, out = set(), []
    for key, value in TABLE.items():
        for entry in entries(value):
            if not isinstance(entry, kind) or (level and entry.level != level):
                continue
            ident = (entry.level, entry.case, says(key, entry))
            if ident in seen:
                continue
            seen.add(ident)
            marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=entry.should)] \
                if isinstance(entry, Missed) else []
            out.append(pytest.param(entry.level, entry.case, says(key, entry), marks=marks,
                                    id=f"{key[0]}.{key[1]}-{entry.case.__name__}"))
    return out


# ------------------------------------------------------------------------------ validate catches the mistakes


@pytest.mark.parametrize(("level", "case", "fragment"), params(Caught, "static"))
def test_validate_catches_it(level, case, fragment, tmp_path):
    recipe = case(tmp_path)
    the_error_line(*validate(level, recipe, tmp_path), fragment, strict=True)


@pytest.mark.parametrize(("level", "case", "fragment"), params(Caught, "deep"))
def test_validate_deep_catches_it(level, case, fragment, tmp_path, heavy_stack):
    recipe = case(tmp_path)
    the_error_line(*validate(level, recipe, tmp_path), fragment, strict=False)


@pytest.mark.parametrize(("level", "case", "fragment"), params(Caught, "deep"))
def test_a_deep_case_needs_deep(level, case, fragment, tmp_path):
    """A case marked deep passes plain validate: when a static check learns to catch it, the table should say
    `static` (which needs no TRL import)."""
    rc, out, err = validate("static", case(tmp_path), tmp_path)
    assert rc == 0, err


@pytest.mark.parametrize(("level", "case", "fragment"), params(Missed))
def test_validate_misses_it(level, case, fragment, tmp_path, request):
    """Refusals of `run` that validate lets through (strict xfails: each passes validate today)."""
    if level == "deep":
        request.getfixturevalue("heavy_stack")
    recipe = case(tmp_path)
    the_error_line(*validate(level, recipe, tmp_path), fragment, strict=level == "static")


def passing_params() -> list:
    """One pytest param per needs_the_model and at_first_load case."""
    seen, out = set(), []
    for key, value in TABLE.items():
        for entry in entries(value):
            if isinstance(entry, NeedsTheModel | AtFirstLoad) and entry.case.__name__ not in seen:
                seen.add(entry.case.__name__)
                out.append(pytest.param(entry.case, id=f"{key[0]}.{key[1]}-{entry.case.__name__}"))
    return out


@pytest.mark.parametrize("case", passing_params())
def test_validate_deep_passes_what_only_a_loaded_model_refuses(case, tmp_path, heavy_stack):
    """needs_the_model and at_first_load cases pass `validate --deep` (the needs_the_model ones on a base folder
    with a real tokenizer, so every tokenizer-level check runs on them): when validate learns to catch one, the
    table should say `caught`."""
    rc, out, err = validate_deep(case(tmp_path))
    assert rc == 0, err[-3000:]


# ---------------------------------------------------------------------------- the two regressions by name


@pytest.mark.parametrize(("override", "fragment"), [
    ("eval.tasks=[squad_v1_tny]", "eval.tasks[0]: eval task 'squad_v1_tny' not found"),
    ("stages.0.train.assistant_only_loss=true", "stages[0].train.assistant_only_loss: set the stage's `loss:`"),
])
def test_regression_typos_fail_plain_validate(override, fragment, tmp_path):
    """Both trained (or tried to) before they failed; plain `finetune validate` now refuses each in one line."""
    recipe = write_recipe(tmp_path)
    res = finetune("validate", recipe, override, cwd=tmp_path, timeout=60)
    line = the_error_line(res.returncode, res.stdout, res.stderr, fragment, strict=True)
    assert line.startswith(f"error: {recipe}: ")


# --------------------------------------------------------------- run refuses the same, before any stage folder

RUN_KEYS = [  # table entries whose caught case also goes through `finetune run` (static: refused in load_recipe,
    # before the run folder exists; deep: in preflight, after the run folder is claimed and locked)
    ("evaluation", "load_task", "not found (tasks:"),  # regression: eval.tasks: [squad_v1_tny]
    ("stages/sft", "build", "set the stage's `loss:` instead"),  # regression: train.assistant_only_loss on SFT
    ("artifacts", "require_mergeable", "is a soft prompt"),
    ("evaluation", "_check_answer_rule", "answer.regex: needs a group"),
    ("chat_templates", "check", "does not render what the model is served with"),
    ("data", "split", "leaves no training rows"),
    ("stages/common", "build_config", "rejected the settings"),
    ("preference", "detect_layout", "preference data needs `chosen` and `rejected`"),
    # refused by run only after every stage had trained (or when the trainer was built), before validate
    # learnt them: now in load_recipe, on a base folder with a real tokenizer where the check reads one
    ("evaluation", "read_rows", "' not found"),
    ("evaluation", "check_task", "has no questions"),
    ("evaluation", "check_task", "no_gold_message"),
    ("evaluation", "missing_chat_template", "chat_template: true, but the model"),
    ("chat_templates", "training_template_for", "has no chat template of its own"),
    ("modeling", "prepare_trainable", "peft.init_text: cannot read a tokenizer"),
]


def run_params() -> list:
    out = []
    for key in RUN_KEYS:
        entry = next(e for e in entries(TABLE[key]) if isinstance(e, Caught))
        out.append(pytest.param(entry.level, entry.case, says(key, entry), id=f"{entry.level}-{entry.case.__name__}",
                                marks=[pytest.mark.slow] if entry.level == "deep" else []))
    return out


@pytest.mark.parametrize(("level", "case", "fragment"), run_params())
def test_run_refuses_it_before_any_stage_folder(level, case, fragment, tmp_path):
    recipe = case(tmp_path)
    run_dir = tmp_path / "run"
    res = finetune("run", recipe, "--output-dir", run_dir, cwd=tmp_path)
    the_error_line(res.returncode, res.stdout, res.stderr, fragment, strict=level == "static")
    made = sorted(p.name for p in run_dir.iterdir() if p.is_dir()) if run_dir.exists() else []
    assert made == [], f"run made folders before refusing: {made}"
    if level == "static":
        assert not run_dir.exists()  # refused while loading the recipe, before the run folder


# ------------------------------------------------------------- `run` on the tiny model: where it stops each case
# The cases that need a loaded model (needs_the_model, at_first_load; a `missed` one would join them) and the deep
# cases that need a real tokenizer, through `finetune run` on the tiny model (the cases are written for validate,
# which needs no weights), with where run stops: "before" any stage folder (preflight, the data audit), "in" the
# first stage's folder before it finishes (before its first step: max_steps is 1 and the run folder holds no
# finished stage), or "after" a stage has finished (its manifest is written) - i.e. after training.
RUNS = {  # case name -> (model, where run stops)
    # needs_the_model: refused once the stage has loaded its model and built its trainer, before the first step
    "eos_never_supervised": ("tiny", "in"),
    "max_length_cuts_every_answer": ("tiny", "in"),
    "max_length_cuts_some_answers": ("tiny", "in"),
    "trainer_rejects_the_settings": ("tiny", "in"),
    "generation_block_marks_nothing": ("tiny", "in"),
    # at_first_load: refused when the first stage loads the base model's tokenizer
    "base_model_folder_without_a_model": ("empty", "in"),
    # caught by validate --deep: run refuses them in preflight (or its data audit), before any stage folder
    "tokenizer_without_pad_or_eos": ("no_pad_or_eos", "before"),
    "base_model_tokenizer_unreadable": ("corrupt_tokenizer", "before"),
    "chat_data_on_a_model_without_template": ("no_template", "before"),
    "template_drops_the_system_turn": ("tiny", "before"),
    "template_fails_on_a_data_row": ("tiny", "before"),
    "pair_prompts_fill_the_window": ("tiny", "before"),
    "kto_rows_all_desirable": ("tiny", "before"),
    "kto_prompts_fill_the_window": ("tiny", "before"),
    "eval_data_on_an_unreachable_hub": ("tiny", "before"),
    "data_audit_threshold": ("empty", "before"),
}


def tiny_run_params() -> list:
    seen, out = set(), []
    for key, value in TABLE.items():
        for entry in entries(value):
            name = getattr(entry, "case", None) and entry.case.__name__
            if name in RUNS and name not in seen:
                seen.add(name)
                out.append(pytest.param(entry.case, says(key, entry), *RUNS[name], id=name))
    return out


def test_every_case_that_needs_a_model_has_a_run():
    """Every needs_the_model, at_first_load and missed case goes through `run`; every RUNS name is a case of
    the table (a caught one: its fragment is validate's)."""
    needing = {e.case.__name__ for v in TABLE.values() for e in entries(v)
               if isinstance(e, NeedsTheModel | AtFirstLoad | Missed)}
    assert needing <= set(RUNS), needing - set(RUNS)
    assert {p.id for p in tiny_run_params()} == set(RUNS)


def model_variant(kind: str, tiny: Path, root: Path) -> Path | None:
    """The tiny model as the case needs it: as built, without its chat template, without its tokenizer files,
    with a tokenizer that has neither a pad nor an EOS token, or with a tokenizer.json that is not JSON (None:
    keep the case's empty folder)."""
    if kind == "empty":
        return None
    if kind == "tiny":
        return tiny
    out = root / kind
    shutil.copytree(tiny, out)
    if kind == "weights_only":
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            (out / name).unlink(missing_ok=True)
        return out
    config = json.loads((out / "tokenizer_config.json").read_text())
    if kind == "no_template":
        (out / "chat_template.jinja").unlink(missing_ok=True)
        config.pop("chat_template", None)
    elif kind == "no_pad_or_eos":
        config.update(eos_token=None, pad_token=None)
    elif kind == "corrupt_tokenizer":
        (out / "tokenizer.json").write_text("{not json")
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize(("case", "fragment", "model", "where"), tiny_run_params())
def test_run_on_the_tiny_model_refuses_it(case, fragment, model, where, tiny_llama, tmp_path):
    """`finetune run` refuses each case with the same one line, at the point RUNS names."""
    recipe = case(tmp_path)
    path = model_variant(model, tiny_llama, tmp_path / "models")
    if path is not None:
        doc = yaml.safe_load(recipe.read_text())
        doc["base_model"]["path"] = str(path)
        recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    run_dir = tmp_path / "run"
    res = finetune("run", recipe, "--output-dir", run_dir, cwd=tmp_path, timeout=600)
    the_error_line(res.returncode, res.stdout, res.stderr, fragment, strict=False)
    stages = [p for p in run_dir.iterdir() if p.is_dir() and p.name not in ("audit", "eval")] \
        if run_dir.exists() else []
    finished = [p for p in stages if (p / "manifest.json").exists()]
    assert (where, bool(stages), bool(finished)) in {("before", False, False), ("in", True, False),
                                                     ("after", True, True)}, (where, stages, finished)


def test_run_words_the_init_text_refusal_itself(tiny_llama, tmp_path):
    """modeling.prepare_trainable's own refusal, which run still reaches where validate cannot look (a hub base
    model saved without tokenizer files, base_model.tokenizer elsewhere), is one line: with recipe._check_init_text
    switched off, run refuses the init_text case in the first stage's folder. (It used to end in a traceback:
    transformers 5 raises ValueError for a folder without tokenizer files, and prepare_trainable caught OSError.)"""
    recipe = C["init_text_without_a_tokenizer_beside_the_model"](tmp_path)
    doc = yaml.safe_load(recipe.read_text())
    doc["base_model"].update(path=str(model_variant("weights_only", tiny_llama, tmp_path / "models")),
                             tokenizer=str(tiny_llama))
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    run_dir = tmp_path / "run"
    code = ("import sys; import finetune.recipe as r; r._check_init_text = lambda *a: None; "
            "from finetune.cli import main; sys.exit(main(sys.argv[1:]))")
    res = subprocess.run([sys.executable, "-c", code, "run", str(recipe), "--output-dir", str(run_dir)],
                         capture_output=True, text=True, env=env(), timeout=600, cwd=tmp_path)
    the_error_line(res.returncode, res.stdout, res.stderr, "peft.init_text: cannot read a tokenizer beside the "
                   "model to embed the text", strict=False)
    assert (run_dir / "sft").is_dir() and not (run_dir / "sft" / "manifest.json").exists()


# ------------------------------------------------------------------ validate refuses no valid recipe (review)
# The table shows each refusal is caught; these show the new checks do not refuse what a run would accept.


def chat_task(tmp: Path, name: str = "chat_task") -> Path:
    spec = tmp / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({**open_qa(tmp), "chat_template": True}), encoding="utf-8")
    return spec


def test_a_distill_student_brings_its_own_tokenizer(tmp_path):
    """On a base whose tokenizer has no chat template, a distill stage with its own `student:` (which has one)
    may watch a chat task and train on chat data: both validates pass. The same watch on a stage that keeps
    the base's tokenizer is refused."""
    student = base_folder("chatml")
    task = chat_task(tmp_path)
    distill = {"name": "distill", "kind": "distill", "data": ["chat"], "teacher": str(student),
               "student": str(student), "watch": {"task": str(task), "questions": 2}, "train": dict(TRAIN)}
    ok = write_recipe(tmp_path, [distill], model=base_folder("no_template"))
    assert validate("static", ok, tmp_path)[0] == 0
    rc, out, err = validate_deep(ok)
    assert rc == 0, err
    bad = write_recipe(tmp_path, [sft(data=["pc"], watch={"task": str(task), "questions": 2})],
                       data={"pc": {"path": str(PROMPT_COMPLETION)}}, model=base_folder("no_template"))
    the_error_line(*validate("static", bad, tmp_path), "chat_template: true, but the model", strict=True)


def test_only_the_questions_a_task_scores_are_checked(tmp_path):
    """A squad_v1 question without gold answers beyond the task's `limit` (or eval.limit) is never scored;
    an unused few-shot file (few_shot: 0) is never read."""
    rows = [{"question": "Where is Paris?", "answer": "France"}, {"question": "Where is Rome?", "answer": []}]
    spec = {**open_qa(tmp_path, rows), "limit": 1, "few_shot": 0, "few_shot_data": str(tmp_path / "none.jsonl")}
    assert validate("static", task_recipe(tmp_path, spec), tmp_path)[0] == 0
    del spec["limit"]
    the_error_line(*validate("static", task_recipe(tmp_path, spec), tmp_path), "has no gold answers", strict=True)
    recipe = yaml.safe_load(task_recipe(tmp_path, spec).read_text())
    recipe["eval"]["limit"] = 1
    (tmp_path / "limited.yaml").write_text(yaml.safe_dump(recipe))
    assert validate("static", tmp_path / "limited.yaml", tmp_path)[0] == 0


def test_a_deep_audit_refusal_names_a_report_that_exists(tmp_path, heavy_stack):
    dup = jsonl(tmp_path, "dup.jsonl", [{"messages": [{"role": "user", "content": "Where is Paris?"},
                                                      {"role": "assistant", "content": "In France."}]}] * 4)
    dup2 = jsonl(tmp_path, "dup2.jsonl", [{"messages": [{"role": "user", "content": "Where is Rome?"},
                                                        {"role": "assistant", "content": "In Italy."}]}] * 4)
    recipe = write_recipe(tmp_path, [sft(data=["a", "b"])], data={"a": {"path": str(dup)}, "b": {"path": str(dup2)}},
                          data_audit={"max_duplicate_share": 0.1})
    rc, out, err = validate_deep(recipe)
    line = the_error_line(rc, out, err, "of rows are duplicates", strict=False)
    report = line.split(" more in ")[-1].rstrip(")")
    assert Path(report).is_file(), line
    shutil.rmtree(Path(report).parent, ignore_errors=True)
