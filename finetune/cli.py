"""The `finetune` command. Heavy imports (torch, transformers, trl) happen inside the commands only."""

from __future__ import annotations

import argparse
import os
import sys

from finetune import __version__
from finetune.errors import UserError, error_line


def cmd_validate(args) -> int:
    """`finetune validate RECIPE [overrides]`: load and check a recipe without importing torch.

    `--deep` also runs the pipeline's preflight (reads every stage's data, builds its TRL config, runs the
    tokenizer checks and label audits of each stage on a local base model's tokenizer, reads hub eval data)
    and the data audit's thresholds: what `run` checks before it loads a model, except the tokenizer checks
    on a GGUF base (run imports the GGUF first). Prints a
    one-line summary, the chat template fidelity note, and a note when base_model.path is a hub id.
    """
    from finetune.recipe import load_recipe
    from finetune.schema import HUB_ID

    recipe = load_recipe(args.recipe, args.overrides)
    if args.deep:  # what `finetune run` checks before its first stage trains (imports TRL: seconds)
        from finetune.pipeline import preflight

        preflight(recipe, data_audit=True)
    stages = ", ".join(f"{s['name']} ({s['kind']})" for s in recipe["stages"])
    print(f"{args.recipe}: ok — {len(recipe['stages'])} stage(s): {stages}")
    from finetune.chat_templates import fidelity_note

    print(fidelity_note(recipe["base_model"], args.recipe))
    path = recipe["base_model"]["path"]
    if not os.path.exists(os.path.expanduser(path)) and HUB_ID.match(path):
        print(f"note: base_model.path '{path}' is not a local folder; it will be fetched from the hub")
    return 0


def cmd_run(args) -> int:
    """`finetune run RECIPE [overrides]`: validate the recipe, then run its stages and log each artifact."""
    from finetune.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)  # validate before any heavy import
    from finetune.pipeline import run_recipe
    from finetune.ranks import log

    results = run_recipe(recipe, output_dir=args.output_dir, only=args.only, force=args.force)
    for name, m in results.items():
        log(f"{name}: {m['artifact']['model']}")
    return 0


def cmd_tiny(args) -> int:
    """`finetune tiny --out DIR`: build a tiny random-weight model and BPE tokenizer offline.

    Raises UserError when `--hidden` is not a multiple of 4 (the tiny models have 4 attention heads).
    """
    from finetune.tiny import DEFAULT_CORPUS_DIRS, build_tiny

    sizes = {k: v for k, v in (("hidden", args.hidden), ("layers", args.layers)) if v is not None}
    if sizes.get("hidden", 128) % 4:
        raise UserError(f"--hidden {args.hidden}: must be a multiple of 4 (the tiny models have 4 attention heads)")
    out = build_tiny(args.out, args.arch, corpus=args.corpus or DEFAULT_CORPUS_DIRS,
                     vocab_size=args.vocab_size, seed=args.seed, overwrite=args.overwrite,
                     tokenizer=args.tokenizer, **sizes)
    print(f"built tiny {args.arch} model in {out}")
    return 0


def cmd_student(args) -> int:
    """`finetune student TEACHER OUT --layers N`: a distillation student keeping N of the teacher's layers."""
    from finetune.students import shrink

    info = shrink(args.teacher, args.out, args.layers)
    print(f"student in {args.out}: layers {info['layers']} of the teacher, {info['parameters']:,} parameters "
          f"({info['teacher_parameters'] / info['parameters']:.1f}x fewer than the teacher's "
          f"{info['teacher_parameters']:,})")
    return 0


def cmd_import_gguf(args) -> int:
    """`finetune import-gguf GGUF OUT`: dequantise a GGUF file into a safetensors model folder."""
    from finetune.gguf_models import import_gguf, resolve_gguf, sha256_file

    gguf = resolve_gguf(".", args.gguf)
    out = import_gguf(gguf, args.out, sha256_file(gguf))
    print(f"imported {gguf.name} into {out}")
    return 0


def _lazy_eval_parser(sub) -> None:
    from finetune.chat import add_parsers
    from finetune.data_audit import add_audit_parser
    from finetune.review import add_review_parser

    add_eval_parser(sub)
    add_parsers(sub)
    add_audit_parser(sub)
    add_review_parser(sub)


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (batch sizes, limits, sizes); anything else is a usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def cmd_eval(args) -> int:
    """`finetune eval MODEL_OR_RUN --task T [--task T2]`."""
    from pathlib import Path

    from finetune.eval_models import evaluate_models, load_for_eval, targets, write_summary
    from finetune.evaluation import check_task
    from finetune.ranks import log
    from finetune.runlock import refuse_if_being_written

    for task in args.task:  # a bad task or row fails before any model loads
        check_task(task)
    refuse_if_being_written(args.model)
    found = targets(args.model)
    out_root = Path(args.output_dir) if args.output_dir else (
        Path(args.model) / "eval" if len(found) > 1 else Path("runs") / "eval" / Path(args.model).name)
    loaded = []
    for label, model_dir, manifest in found:
        model, tokenizer = load_for_eval(model_dir, manifest)
        loaded.append((label, model, tokenizer))
    results = evaluate_models(loaded, args.task, out_root, args.batch_size, args.limit, args.max_new_tokens, log,
                              args.dtype)
    print(write_summary(results, out_root, args.task, args.limit), end="")
    print(f"outputs in {out_root}", file=sys.stderr)
    return 0


def add_eval_parser(sub) -> None:
    """Add the `eval` subcommand to the `finetune` argparse subparsers `sub`."""
    p = sub.add_parser("eval", help="generate answers and score them SQuAD-style (EM/F1)")
    p.add_argument("model", help="model folder, adapter folder, a run's stage folder, or a whole run folder")
    p.add_argument("--task", action="append", required=True, help="task name (eval/tasks/<name>.yaml) or path; "
                   "repeat for several")
    p.add_argument("--output-dir", help="where predictions.jsonl, results.json and results.md go")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--limit", type=positive_int, help="score at most this many questions per task")
    p.add_argument("--max-new-tokens", type=positive_int, help="override the task's max_new_tokens")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="generation dtype (default auto: bfloat16 where the CPU runs it natively, else as loaded)")
    p.set_defaults(func=cmd_eval)


def build_parser() -> argparse.ArgumentParser:
    """The `finetune` argument parser with every subcommand; each sets `func` to its `cmd_*` handler."""
    from finetune.score import add_score_parser

    parser = argparse.ArgumentParser(
        prog="finetune", description="Recipe-driven SFT, reward modelling, PPO/DPO/RLOO/GRPO/KTO, distillation "
                                     "and SQuAD-style eval.")
    parser.add_argument("--version", action="version", version=f"finetune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a recipe's stages in order (skips finished ones, resumes interrupted)")
    p.add_argument("recipe", help="recipe .yaml file")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override recipe values")
    p.add_argument("--output-dir", help="run folder (default: the recipe's output_dir, runs/<name>)")
    p.add_argument("--only", metavar="STAGE", help="run this stage only (earlier ones must be done)")
    p.add_argument("--force", action="store_true", help="retrain stages whose inputs changed, replacing them")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a recipe (schema, TRL fields, paths) without loading a model")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.add_argument("--deep", action="store_true", help="also read every stage's data and build its TRL config, "
                   "as `finetune run` does before training (seconds: imports TRL)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("tiny", help="build a tiny random-weight model + BPE tokenizer offline")
    p.add_argument("--arch", default="llama", choices=("llama", "qwen2", "mistral"))
    p.add_argument("--out", required=True, help="folder to save the model in")
    p.add_argument("--corpus", nargs="*", help="text/JSON files or folders to train the tokenizer on "
                   "(default: recipes/data; never evaluation data)")
    p.add_argument("--vocab-size", type=positive_int, default=4096)
    p.add_argument("--tokenizer", help="take the tokenizer of this model folder instead of training one "
                   "(a distillation student shares its teacher's vocabulary)")
    p.add_argument("--hidden", type=positive_int, help="hidden size, a multiple of 4 (default 128)")
    p.add_argument("--layers", type=positive_int, help="number of layers (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="rebuild a tiny model that is already there")
    p.set_defaults(func=cmd_tiny)

    p = sub.add_parser("student", help="a distillation student: the teacher with fewer of its layers "
                                       "(DistilBERT-style initialisation)")
    p.add_argument("teacher", help="model folder of the teacher (a causal LM with model.layers)")
    p.add_argument("out", help="empty or new folder for the student")
    p.add_argument("--layers", type=positive_int, required=True, help="layers to keep, spread evenly")
    p.set_defaults(func=cmd_student)

    p = sub.add_parser("import-gguf", help="dequantise a GGUF model into a safetensors model folder (with its "
                       "tokenizer and chat template)")
    p.add_argument("gguf", help="the .gguf file")
    p.add_argument("out", help="new folder to write (an existing one is never overwritten)")
    p.set_defaults(func=cmd_import_gguf)

    add_score_parser(sub)
    _lazy_eval_parser(sub)
    return parser




def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; `key=value` overrides may also follow options (`run R --output-dir D a.b=1`)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # argparse alone only takes the overrides before options
    if extra:
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the chosen subcommand and return the exit code.

    0 on success, 2 for a UserError (printed as one `error:` line, no traceback), 130 on Ctrl-C and 141 when
    stdout's reader goes away.
    """
    from finetune.manifest import bound_kernel_caches

    bound_kernel_caches()  # before the first matmul: oneDNN reads its cache sizes once
    args = parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as e:
        print(error_line(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`finetune validate R | head -1`): stop quietly, as cat does
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141  # 128 + SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
