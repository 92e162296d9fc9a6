"""Run a recipe's stages in order: hand artifacts on, skip finished stages, resume interrupted ones."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from finetune import gguf_models, runlock
from finetune import manifest as mf
from finetune.errors import UserError
from finetune.ranks import log
from finetune.recipe_types import BaseModel, Recipe, Shared, Stage
from finetune.schema import POLICY_KINDS, RUNNABLE_KINDS


def _state():
    from finetune.ranks import state

    return state()


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _source_identity(src: dict) -> dict:
    """What identifies a data source's content: file hashes for local files, id + revision for the hub."""
    p = Path(src["path"]).expanduser()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
    return {**src, "sha256": {str(f): _file_hash(f) for f in files}}


# Recipe keys added after runs existed, left out of the fingerprint while unset: adding a key to the schema
# must not turn every finished run into "run with other inputs".
LATER_KEYS = {"base_model": ("training_chat_template", "gguf_file"),
              "stage": ("rewards", "teacher", "student", "watch", "sample_pairs", "value_model",
                        "peft.num_virtual_tokens", "peft.init_text", "peft.encoder_hidden_size")}


# Later keys whose value here is what every run did before the key existed: left out at that value too.
EARLIER_BEHAVIOUR = {"value_model": "full"}


def _without_unset(section: dict, later: tuple[str, ...]) -> dict:
    """`section` without the keys of `later` that are unset (None) or at their EARLIER_BEHAVIOUR value;
    "peft.init_text" names a nested key."""
    out = {k: v for k, v in section.items()
           if not (k in later and (v is None or (k in EARLIER_BEHAVIOUR and v == EARLIER_BEHAVIOUR[k])))}
    for key in later:
        outer, _, inner = key.partition(".")
        if inner and isinstance(out.get(outer), dict) and out[outer].get(inner, 0) is None:
            out[outer] = {k: v for k, v in out[outer].items() if k != inner}
    return out


def stage_inputs(shared: Shared, stage: Stage, init: dict) -> dict:
    """Everything that decides a stage's result; its fingerprint says whether a finished stage is still valid.

    Returns {"stage", "seed", "base_model", "init", "data": {source name: its settings and file sha256s}},
    "base_model_gguf" for a base imported from GGUF, and "reads_at" for reward stages.
    Reads (hashes) every local data file the stage names.
    """
    inputs = {
        "stage": _without_unset(stage, LATER_KEYS["stage"]), "seed": shared.seed,
        "base_model": _without_unset(shared.base_model, LATER_KEYS["base_model"]), "init": init,
        "data": {name: _source_identity(shared.sources[name]) for name in stage["data"]},
    }
    if stage["kind"] == "reward":  # trained to be read at the answer's end-of-sequence token (stages.reward):
        inputs["reads_at"] = "eos"  # a reward model trained before that, at the template's last token, is redone
    gguf = gguf_models.source_of(shared.base_model["path"])
    if gguf:  # a base dequantised from a GGUF: its sha256 identifies the weights (the path alone does not)
        inputs["base_model_gguf"] = gguf
    return inputs


def _is_main_process() -> bool:
    return _state().is_main_process


def _stage_module(kind: str):
    if kind not in RUNNABLE_KINDS:
        raise UserError(f"stage kind '{kind}' is not available (available: {', '.join(RUNNABLE_KINDS)})")
    import importlib

    return importlib.import_module(f"finetune.stages.{'rloo' if kind == 'grpo' else kind}")


def _stage_runner(kind: str):
    return _stage_module(kind).run


def preflight(recipe: Recipe, data_audit: bool = False) -> None:
    """Before the first stage trains, what every stage checks before its own first heavy step: its data is
    read and normalised (bad rows, mixed kinds, an eval split that leaves nothing) and its TRL config is built
    from its `train:` block (settings TRL's config refuses, a `loss:` that does not fit the data, verifiable
    rewards without gold answers). With a base model in a local folder, its tokenizer is loaded (no model)
    and each stage that keeps it (not a distill student's, nor a stage from one) runs its tokenizer checks
    as the stage runs them: the training template, a chat template for chat data, the turns the template
    keeps, the pair and KTO label audits. Eval and watch tasks on the hub are read. With `data_audit`
    (`finetune validate --deep`; `run` audits right after this), the data audit's thresholds too, its report
    kept in a temporary folder when it refuses. So a mistake in the last stage fails before the first one
    trains, not after. Loads no model. Raises UserError naming the stage (or task)."""
    import tempfile

    from finetune.data import stage_data
    from finetune.data_audit import purpose
    from finetune.recipe import student_lineage

    shared = Shared.of(recipe)
    tokenizer = _local_tokenizer(recipe["base_model"])
    students = student_lineage(recipe["stages"])
    with tempfile.TemporaryDirectory() as tmp:
        for stage in recipe["stages"]:
            data = stage_data(shared.sources, stage, shared.seed, purpose(stage))
            args = _stage_module(stage["kind"]).config(shared, stage, data, Path(tmp) / stage["name"], None)
            if tokenizer is not None and stage["name"] not in students:
                _tokenizer_checks(stage, data, args, tokenizer, recipe["base_model"])
    if data_audit and recipe["data_audit"]["enabled"]:
        from finetune.data_audit import audit_recipe

        out = Path(tempfile.mkdtemp(prefix="finetune-audit-"))
        audit_recipe(recipe, out, log=lambda *_: None)  # a refusal names out/audit.json: it stays
        shutil.rmtree(out, ignore_errors=True)
    _check_hub_tasks(recipe)


def _check_hub_tasks(recipe: Recipe) -> None:
    """Read every eval and watch task's questions, hub datasets included (the static check reads local files
    only), as many as each will score. Raises UserError naming the task."""
    from finetune.evaluation import check_task

    limit = (recipe["eval"] or {}).get("limit")
    tasks = [(t, limit, "eval.tasks") for t in (recipe["eval"] or {}).get("tasks", [])]
    tasks += [(s["watch"]["task"], s["watch"]["questions"], f"stage {s['name']}: watch.task")
              for s in recipe["stages"] if s["watch"]]
    for task, n, where in tasks:
        try:
            check_task(task, hub=True, limit=n)
        except UserError as e:
            raise UserError(f"{where}: {e} (a run would fail there after training; drop the task to train "
                            f"without it)") from None


def _local_tokenizer(base_model: BaseModel):
    """The base model's tokenizer when it is saved in a local folder (loading it checks its pad and EOS
    tokens), else None: a hub tokenizer may be offline, a GGUF's is read when the stage imports it, and a
    folder without tokenizer files is refused when the first stage loads it, before any step."""
    from finetune import modeling
    from finetune.chat_templates import has_tokenizer

    if base_model["gguf_file"] or not has_tokenizer(base_model["tokenizer"] or base_model["path"]):
        return None
    return modeling.load_tokenizer(base_model)


def _tokenizer_checks(stage: Stage, data: dict, args, tokenizer, base_model: BaseModel) -> None:
    """The checks a stage makes with its tokenizer before it loads its model, made the same way (the same
    functions): chat data needs a chat template; SFT chat rows must keep every turn under the template that
    trains them; reward and DPO pairs, and KTO rows, pass their label audit."""
    from finetune import audit, chat_templates
    from finetune.stages import common, sft

    training = chat_templates.training_template_for(tokenizer, base_model)  # as common.stage_tokenizer does
    common.require_chat_template(tokenizer, data, base_model, stage)
    if stage["kind"] == "sft" and data["kind"] == "chat":
        sft.check_turns_kept(data["train"], training[0] if training else tokenizer.chat_template, tokenizer,
                             stage["name"])
    elif stage["kind"] in ("reward", "dpo") and not stage["sample_pairs"]:
        audit.preference_audit(data["train"], tokenizer, data["kind"], args.max_length, stage["audit"])
    elif stage["kind"] == "kto":
        audit.unpaired_audit(data["train"], tokenizer, data["kind"], args.max_length, stage["audit"])


def _learns_from(stage: Stage, stage_names: set[str]) -> list[str]:
    """The stages among `stage_names` whose artifacts `stage` starts from: its `from`, reward model and teacher.

    A distill `teacher:` that is a model folder, not a stage name, is not among them (`_init_for` reads it).
    """
    names = [stage["from"], stage["reward_model"]]
    if stage["kind"] == "distill" and stage["teacher"] in stage_names:
        names.append(stage["teacher"])
    return [n for n in names if n]


def _init_for(stage: Stage, results: dict) -> dict:
    """What a stage starts from: the `from` stage's artifact (None: the base) and the reward model's folder."""
    src, rm = stage["from"], stage["reward_model"]
    init = {"stage": src, "artifact": results[src]["artifact"] if src else None,
            "fingerprint": results[src]["inputs_fingerprint"] if src else None,
            "reward_model": results[rm]["artifact"]["model"] if rm else None,
            "reward_fingerprint": results[rm]["inputs_fingerprint"] if rm else None}
    if stage["kind"] == "distill":  # only here, so that other stages' fingerprints stay what they were
        teacher = stage["teacher"]
        if teacher in results:
            init.update(teacher=results[teacher]["artifact"], teacher_stage=teacher,
                        teacher_fingerprint=results[teacher]["inputs_fingerprint"])
        else:
            init.update(teacher={"model": teacher, "adapter": False}, teacher_stage=None,
                        teacher_fingerprint=mf.inputs_fingerprint(teacher=_folder_identity(teacher)))
        if stage["student"]:
            init["student"] = {"path": stage["student"], "identity": _folder_identity(stage["student"])}
    return init


def _folder_identity(path: str) -> dict:
    """A model folder named in a recipe (a teacher, a student): its files' sha256, so new weights mean new inputs."""
    return {"path": path, "sha256": _source_identity({"path": path})["sha256"]}


def run_recipe(recipe: Recipe, output_dir: str | None = None, only: str | None = None,
               force: bool = False) -> dict:
    """Run (or skip, or resume) every stage of a validated recipe. Returns {stage name: manifest}.

    `only` runs that stage alone (earlier stages must have finished); `force` retrains stages whose inputs
    changed. Raises UserError when `only` names no stage of the recipe, when a stage kind is not available,
    when the output folder is not a finetune run or is locked by another run, or when preflight, the data
    audit or a stage fails on bad input.
    """
    mf.bound_kernel_caches()  # for callers other than the CLI (the demo, the Python API); the user's value wins
    run_dir = Path(output_dir or recipe["output_dir"])
    recipe = gguf_models.resolve_recipe(recipe, log)
    names = [s["name"] for s in recipe["stages"]]
    if only and only not in names:
        raise UserError(f"--only {only}: the recipe has no stage named '{only}' (stages: {', '.join(names)})")
    for stage in recipe["stages"]:
        if stage["kind"] not in RUNNABLE_KINDS:
            _stage_runner(stage["kind"])  # raises the clear error before any training
    mf.claim_run_dir(run_dir, recipe["name"], write=_is_main_process())  # someone else's folder: refused first
    _state().wait_for_everyone()
    with runlock.hold(run_dir, log) if _is_main_process() else contextlib.nullcontext():  # then a second run
        preflight(recipe if not only else {**recipe, "stages": [s for s in recipe["stages"] if s["name"] == only]})
        return _run_stages(recipe, run_dir, only, force)


@dataclass(frozen=True)
class Decision:
    """What to do with one stage of a run: see `decide`."""

    action: str  # keep | leave_out | reuse | skip | run | resume | retrain | refuse_unfinished | refuse_changed
    why: str


def decide(name: str, fingerprint: str, *, done: bool, done_fingerprint: str | None,
           started_fingerprint: str | None, has_checkpoint: bool, only: str | None = None,
           only_finished: bool = False, force: bool = False) -> Decision:
    """The run / skip / resume / refuse decision for one stage, from what its folder holds. Pure: no I/O.

    `fingerprint` is this run's inputs fingerprint for the stage; `done` / `done_fingerprint` come from its
    manifest.json (written last, when it finished), `started_fingerprint` from inputs.json (written when it
    started), `has_checkpoint` says whether a complete checkpoint survived. `only` is `--only STAGE` and
    `only_finished` whether that stage has already been handled in this run; `force` is `--force`.

    - keep: a stage after `--only`'s that finished with unchanged inputs: not run, but scored and reported
      beside the others, as in the full run;
    - leave_out: a stage after `--only`'s that did not finish, or finished with other inputs (an earlier
      stage it learnt from changed): neither run nor required, and left out of the eval table and report;
    - reuse: a stage before `--only`'s that finished (whatever its inputs: `--only` trusts it);
    - refuse_unfinished: a stage before `--only`'s that never finished;
    - skip: finished with the same inputs;
    - refuse_changed: finished, or stopped after a checkpoint, with other inputs, and no `--force`;
    - retrain: the same with `--force` (the folder is replaced);
    - resume: stopped after a checkpoint with the same inputs (the trainer resumes from it);
    - run: nothing kept (never started, or stopped before its first checkpoint).
    """
    if only and only_finished:
        if done and done_fingerprint == fingerprint:
            return Decision("keep", f"after --only {only}, finished with unchanged inputs")
        why = "finished with other inputs" if done else "not finished"
        return Decision("leave_out", f"after --only {only}, {why}")
    if only and name != only:
        if done:
            return Decision("reuse", f"before --only {only}, finished")
        return Decision("refuse_unfinished", f"before --only {only}, not finished")
    if done and done_fingerprint == fingerprint:
        return Decision("skip", "finished with unchanged inputs")
    # No checkpoint: nothing to keep. (An inputs.json without a fingerprint, which no version writes, now
    # resumes a surviving checkpoint where the code before this function refused it.)
    started = started_fingerprint if (done or has_checkpoint) else None
    if (done or started) and started != fingerprint:
        if force:
            return Decision("retrain", "run before with other inputs; --force")
        return Decision("refuse_changed", "run before with other inputs")
    if has_checkpoint:
        return Decision("resume", "stopped after a checkpoint, same inputs")
    return Decision("run", "nothing to keep")


def _run_stages(recipe: Recipe, run_dir: Path, only: str | None, force: bool) -> dict:
    if _is_main_process():
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump({k: v for k, v in recipe.items() if k != "source"},
                                                             sort_keys=False))
    audit_summary = run_data_audit(recipe, run_dir) if recipe["data_audit"]["enabled"] else None
    results, stage_names = {}, {s["name"] for s in recipe["stages"]}
    for stage in recipe["stages"]:
        stage_dir = run_dir / stage["name"]
        missing = [n for n in _learns_from(stage, stage_names) if n not in results]
        if only and only in results and missing:  # after --only, a stage whose start was left out: so is it
            log(f"{stage['name']}: after --only {only}, left out of eval and report ({', '.join(missing)} is)")
            continue
        init = _init_for(stage, results)
        inputs = stage_inputs(Shared.of(recipe), stage, init)
        fp = mf.inputs_fingerprint(**inputs)
        done = mf.read_json(stage_dir / "manifest.json")
        started = mf.read_json(stage_dir / "inputs.json")
        decision = decide(stage["name"], fp, done=bool(done), done_fingerprint=(done or {}).get("inputs_fingerprint"),
                          started_fingerprint=(started or {}).get("inputs_fingerprint"),
                          has_checkpoint=mf.last_checkpoint(stage_dir / "checkpoints") is not None,
                          only=only, only_finished=bool(only and only in results), force=force)
        if decision.action == "leave_out":
            log(f"{stage['name']}: {decision.why}; not run, left out of eval and report")
            continue
        if decision.action == "refuse_unfinished":
            raise UserError(f"--only {only}: stage '{stage['name']}' before it has not finished; run it first")
        if decision.action == "refuse_changed":
            changed = _changed(json.loads(json.dumps((started or {}).get("inputs") or {}, default=str)),
                               json.loads(json.dumps(inputs, default=str)))
            raise UserError(f"{stage_dir}: this stage was run with other inputs (changed: {changed}); "
                            f"pass --force to retrain it, or use another --output-dir")
        if decision.action in ("reuse", "skip", "keep"):
            if decision.action == "skip":
                log(f"{stage['name']}: done with unchanged inputs, skipped ({stage_dir})")
            if decision.action == "keep":
                log(f"{stage['name']}: {decision.why}; not run, scored and reported ({stage_dir})")
            results[stage["name"]] = done
            continue
        if decision.action == "retrain":
            if _is_main_process():
                shutil.rmtree(stage_dir)
            _state().wait_for_everyone()
        results[stage["name"]] = _run_stage(recipe, stage, init, stage_dir, fp, audit_summary, inputs)
    if recipe["eval"] and recipe["eval"]["tasks"] and _is_main_process():
        run_evals(recipe, run_dir, results)
    if _is_main_process():
        from finetune.report import write_report

        log(f"report: {write_report(run_dir, recipe, results)}")
    return results


def run_evals(recipe: Recipe, run_dir: Path, results: dict) -> None:
    """Score the base (if asked) and every finished stage on the recipe's eval tasks; write the table."""
    from finetune.eval_models import evaluate_models, load_for_eval, write_summary
    from finetune.evaluation import load_task

    cfg, out_root = recipe["eval"], run_dir / "eval"
    tasks = [load_task(t) for t in cfg["tasks"]]
    plan = ([("base", None, None)] if cfg["base"] else []) + [
        (name, Path(m["artifact"]["model"]), m) for name, m in results.items() if m["kind"] in POLICY_KINDS]
    for name, m in results.items():  # a distilled student's own model before distillation, beside it
        if m["kind"] == "distill" and m["init"].get("student"):
            plan.insert(plan.index((name, Path(m["artifact"]["model"]), m)),
                        (start_label(name), Path(m["init"]["student"]["path"]), None))
    from finetune import precision

    choice = precision.generation_dtype(cfg["dtype"], precision.detect())[0] or "as loaded"
    table: dict[str, dict[str, dict]] = {}
    for label, model_dir, manifest in plan:
        # a stage's scores are cached by its inputs and its model's files: a stage trained again with the same
        # inputs (its folder deleted, other code) may hold other weights, and must not keep the old model's scores
        identity = mf.inputs_fingerprint(stage=manifest["inputs_fingerprint"],
                                         model=_folder_identity(str(model_dir))) \
            if manifest else mf.inputs_fingerprint(base=recipe["base_model"])
        if model_dir is not None and manifest is None:  # a distill stage's starting student
            identity = mf.inputs_fingerprint(student=_folder_identity(str(model_dir)), base=recipe["base_model"])
        cached = {t["name"]: mf.read_json(out_root / label / t["name"] / "results.json") for t in tasks}
        if all(c and c.get("model_fingerprint") == identity and c.get("task_sha256") == t["sha256"]
               and c.get("dtype_choice", "as loaded") == choice for t, c in zip(tasks, cached.values(), strict=True)):
            table[label] = cached
            log(f"eval {label}: results up to date, skipped")
            continue
        if model_dir is None:
            from finetune import modeling

            model = modeling.load_base_model(recipe["base_model"]).eval()
            tokenizer = modeling.load_tokenizer(recipe["base_model"])
        else:
            model, tokenizer = load_for_eval(model_dir, manifest, recipe["base_model"])
        scored = evaluate_models([(label, model, tokenizer)], cfg["tasks"], out_root, cfg["batch_size"],
                                 cfg["limit"], cfg["max_new_tokens"], log, cfg["dtype"])[label]
        for name, r in scored.items():
            r["model_fingerprint"] = identity
            mf.write_json_atomic(out_root / label / name / "results.json", r)
        table[label] = scored
    summary = write_summary(table, out_root, cfg["tasks"], cfg["limit"])
    log(f"eval results ({out_root / 'results.md'}):\n{summary}")
    from finetune.evaluation import compare_stages, comparison_table

    pairs = [(m["init"]["stage"] or "base", name) for name, m in results.items()
             if m["kind"] in POLICY_KINDS and m["kind"] != "distill" and (m["init"]["stage"] or cfg["base"])]
    for name, m in results.items():  # a student is compared with its teacher, and with itself before
        if m["kind"] == "distill":
            if m["init"].get("teacher_stage"):
                pairs.append((m["init"]["teacher_stage"], name))
            start = start_label(name) if m["init"].get("student") else m["init"]["stage"] or (
                "base" if cfg["base"] else None)
            if start:
                pairs.append((start, name))
    pairs = list(dict.fromkeys(pairs))  # a student starting from its own teacher is one comparison
    comparisons = compare_stages(out_root, pairs, [t["name"] for t in tasks])
    if comparisons:
        log(f"paired comparisons ({out_root / 'comparisons.md'}):\n{comparison_table(comparisons)}")
    split = contamination_split(recipe["stages"], run_dir, results, table, [t["name"] for t in tasks])
    if split:
        log(f"clean vs overlapping questions ({out_root / 'contamination.md'}):\n"
            f"{(out_root / 'contamination.md').read_text()}")


def start_label(stage_name: str) -> str:
    """The eval label of a distill stage's student before distillation (its `student:` folder)."""
    return f"{stage_name}-start"


def contamination_split(stages: list[Stage], run_dir: Path, results: dict, table: dict, tasks: list[str]) -> dict:
    """Per evaluated stage and task, EM/F1 on the questions that share an n-gram (question or context) with
    the training data of that stage and the stages it started from (the data audit's overlap index), and on
    the rest; writes eval/contamination.json and .md. Returns {} when the data audit did not run."""
    from finetune.evaluation import clean_and_overlap, contamination_table, read_predictions

    audit = mf.read_json(run_dir / "audit" / "audit.json")
    if not audit:
        return {}
    ids_of_source: dict[str, dict[str, set[str]]] = {}
    for entry in audit["sources"].values():
        for task, ids in entry["contamination"].get("eval_ids", {}).items():
            ids_of_source.setdefault(entry["source"], {}).setdefault(task, set()).update(ids)
    by_name = {s["name"]: s for s in stages}

    def sources(name: str | None) -> set[str]:  # the stage's data and that of the stages it learnt from
        if name is None:
            return set()
        teacher = by_name[name].get("teacher")
        return set(by_name[name]["data"]) | sources(by_name[name]["from"]) | sources(
            teacher if teacher in by_name else None)

    split: dict[str, dict[str, dict]] = {}
    for label in table:
        used = sources(label if label in by_name else None)
        for task in tasks:
            path = run_dir / "eval" / label / task / "predictions.jsonl"
            if path.is_file():
                overlap = set().union(*(ids_of_source.get(src, {}).get(task, set()) for src in used))
                split.setdefault(label, {})[task] = clean_and_overlap(read_predictions(path), overlap)
    mf.write_json_atomic(run_dir / "eval" / "contamination.json", split)
    (run_dir / "eval" / "contamination.md").write_text(contamination_table(split))
    return split


def run_data_audit(recipe: Recipe, run_dir: Path) -> dict | None:
    """The data audit before any training, on rank 0; its verdict reaches every rank so all stop together.

    Skipped while its inputs (data files, eval tasks, thresholds, tokenizer) are unchanged since the last one.
    Returns the audit summary for the manifests. Raises UserError, on every rank, with the audit's message
    when a check fails or a `data_audit:` threshold is exceeded.
    """
    from accelerate.utils import broadcast_object_list

    from finetune import data_audit

    out_dir = run_dir / "audit"
    identity = mf.inputs_fingerprint(
        data={name: _source_identity(src) for name, src in recipe["data"].items()},
        stages=[(s["name"], s["kind"], s["data"], s["train"].get("max_length")) for s in recipe["stages"]],
        eval=recipe["eval"], settings=recipe["data_audit"], base=recipe["base_model"])
    verdict: list = [None, None]
    if _is_main_process():
        previous = mf.read_json(out_dir / "fingerprint.json")
        try:
            if previous and previous.get("fingerprint") == identity and (out_dir / "audit.json").exists():
                log("data audit: inputs unchanged, skipped")
                report = mf.read_json(out_dir / "audit.json")
            else:
                report = _audit_in_child(recipe, out_dir)
                mf.write_json_atomic(out_dir / "fingerprint.json", {"fingerprint": identity})
            verdict = [data_audit.summary(report), None]
        except UserError as e:
            verdict = [None, str(e)]
    if _state().num_processes > 1:
        broadcast_object_list(verdict)
    if verdict[1]:
        raise UserError(verdict[1])
    return verdict[0]


def _audit_in_child(recipe: Recipe, out_dir: Path) -> dict:
    """`data_audit.audit_recipe` in a forked child process, its lines streamed through `log`.

    Nothing the audit allocates (tokenised lengths, n-gram indexes, matplotlib: 30-200 MiB that the allocator
    keeps) then stays resident in the process that trains next (benchmark B1). A fork inherits the imported
    modules, so this costs milliseconds; a fresh interpreter would spend about 6 s importing torch again. The
    child runs no torch op. Where fork is not the safe default (not Linux), the audit runs in this process.
    """
    import multiprocessing

    from finetune import data_audit

    if sys.platform != "linux":
        return data_audit.audit_recipe(recipe, out_dir, log=log)
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_audit_child, args=(recipe, out_dir, sender), name="data-audit")
    child.start()
    sender.close()
    error = None
    while True:
        try:
            kind, text = receiver.recv()
        except EOFError:  # the child closed its end: it is done
            break
        if kind == "log":
            log(text)
        else:
            error = text
    child.join()
    if error:
        raise UserError(error)
    if child.exitcode != 0:  # a bug: multiprocessing printed the child's traceback
        raise RuntimeError(f"the data audit process failed (exit {child.exitcode}); its traceback is above")
    return mf.read_json(out_dir / "audit.json")


def _audit_child(recipe: Recipe, out_dir: Path, pipe) -> None:
    from finetune import data_audit

    try:
        data_audit.audit_recipe(recipe, out_dir, log=lambda line: pipe.send(("log", line)))
    except UserError as e:
        pipe.send(("error", str(e)))
    finally:
        pipe.close()


def _changed(before: dict, after: dict, prefix: str = "") -> str:
    """The dotted keys whose values differ, for a refusal message ("stage.train.learning_rate, data.chat")."""
    if not before:
        return "unknown (an older run)"
    keys = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict) and prefix.count(".") < 2:
                keys.append(_changed(a, b, f"{prefix}{key}."))
            else:
                keys.append(f"{prefix}{key}")
    return ", ".join(k for k in keys if k) or "nothing visible"


def _run_stage(recipe: Recipe, stage: Stage, init: dict, stage_dir: Path, fp: str,
               audit_summary: dict | None = None, inputs: dict | None = None) -> dict:
    runner = _stage_runner(stage["kind"])
    if _is_main_process():
        stage_dir.mkdir(parents=True, exist_ok=True)
        mf.write_json_atomic(stage_dir / "inputs.json", {"inputs_fingerprint": fp, "inputs": inputs})
    _state().wait_for_everyone()
    log(f"{stage['name']}: {stage['kind']} stage -> {stage_dir}")
    from transformers import set_seed

    # Models are built before their trainer seeds itself: a reward model's new score head and a LoRA adapter's
    # initial weights come from the global RNG, which earlier stages in this process have moved. Seeded here,
    # a stage gives the same result in a full run, with --only, or rerun alone in a fresh process.
    set_seed(recipe["seed"])
    carried = mf.release_freed_memory()  # the last stage's freed model and heap, before this one is measured
    started = time.time()
    with mf.PeakMemory() as memory:
        out = runner(Shared.of(recipe), stage, init, stage_dir, log=lambda m: log(f"{stage['name']}: {m}"))
    manifest = {
        "stage": stage["name"], "kind": stage["kind"], "recipe": recipe["name"], "seed": recipe["seed"],
        "inputs_fingerprint": fp, "init": init, "resolved_recipe": {k: v for k, v in recipe.items()},
        "artifact": out.pop("artifact"), "data_fingerprint": out["data"]["fingerprint"],
        **out, "data_audit": audit_summary, "world_size": _state().num_processes,
        "packages": mf.package_versions(), "git_commit": mf.git_commit(), "host": mf.host_summary(),
        "timings": {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                    "seconds": round(time.time() - started, 2)},
        "memory": {**memory.result(), "rss_at_start_mb": carried["rss_after_mb"],
                   "kernel_caches": {name: os.environ.get(name) for name in mf.KERNEL_CACHE_VARIABLES}},
        "base_model_gguf": gguf_models.source_of(recipe["base_model"]["path"]),  # GGUF name and sha256, if any
    }
    if _is_main_process():
        history = manifest.pop("log_history", [])
        with (stage_dir / "metrics.jsonl").open("w") as f:
            for row in history:
                f.write(json.dumps(row) + "\n")
        mf.write_json_atomic(stage_dir / "manifest.json", manifest)  # last: the stage is now done
    _state().wait_for_everyone()
    peak = manifest["memory"]["peak_rss_mb"]
    log(f"{stage['name']}: done in {manifest['timings']['seconds']} s" + (f", peak RSS {peak / 1024:.2f} GB" if peak
                                                                           else ""))
    return manifest
