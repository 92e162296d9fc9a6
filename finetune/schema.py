"""The recipe schema: every key a recipe may hold, its type, default and meaning.

This table is the recipe reference: README's "Recipe reference" table is rendered from it. Stage `train:`
blocks are not listed here: they are checked against the TRL config
dataclass of the stage's kind (see trl_fields.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

REQUIRED = object()
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # what a hub model or dataset id looks like


@dataclass
class Key:
    """A leaf value: allowed Python types, default, allowed choices and help text."""

    types: tuple[type, ...]
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None  # smallest allowed number (counts and sizes: 1)


@dataclass
class Section:
    """A mapping with fixed keys."""

    keys: dict[str, Any]
    help: str = ""
    default: Any = field(default_factory=dict)


@dataclass
class MapOf:
    """A mapping from user-chosen names to values of one schema."""

    value: Any
    help: str = ""


@dataclass
class ListOf:
    """A list of values of one schema."""

    item: Any
    help: str = ""


STAGE_KINDS = ("sft", "reward", "ppo", "dpo", "rloo", "grpo", "kto", "distill")
# Kinds this version can run; the others are validated but refused by `finetune run`.
RUNNABLE_KINDS = STAGE_KINDS
POLICY_KINDS = ("sft", "dpo", "ppo", "rloo", "grpo", "kto", "distill")  # stages whose output is a causal LM
ONLINE_KINDS = ("ppo", "rloo", "grpo")  # stages scored by a reward model
LORA_METHODS = ("lora", "dora", "rslora")
PROMPT_LEARNING_METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning")  # virtual tokens; nothing to merge
DATA_FORMATS = ("auto", "messages", "alpaca", "sharegpt", "prompt_completion", "text")
COLUMN_TARGETS = ("messages", "conversations", "instruction", "input", "output", "system",
                  "prompt", "completion", "text", "chosen", "rejected", "label")

BASE_MODEL = Section({
    "path": Key((str,), REQUIRED, "hub id (org/name) or local directory of a pretrained causal LM"),
    "revision": Key((str,), None, "hub revision (branch, tag or commit) to pin"),
    "dtype": Key((str,), "auto", "weights dtype", ("auto", "float32", "bfloat16", "float16")),
    "attn_implementation": Key((str,), None, "attention kernel; null lets transformers choose",
                               ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")),
    "trust_remote_code": Key((bool,), False, "run modelling code shipped with the checkpoint (off by default)"),
    "tokenizer": Key((str,), None, "tokenizer hub id or directory when it differs from `path`"),
    "gguf_file": Key((str,), None, "a GGUF file inside `path` (or a path): dequantised once, cached by sha256 "
                                          "($FINETUNE_CACHE, default ~/.cache/finetune)"),
    "chat_template": Key((str,), None, "a .jinja file that replaces the tokenizer's chat template (served and saved)"),
    "training_chat_template": Key((str,), None, "a .jinja file with {% generation %} markers for assistant-only "
                                                "loss; must render exactly as the served template"),
}, "the pretrained model every stage starts from")

DATA_SOURCE = Section({
    "path": Key((str,), REQUIRED, "a .json/.jsonl/.csv/.parquet file, a directory of them, or a hub dataset id"),
    "format": Key((str,), "auto", "instruction format; auto detects it from the columns", DATA_FORMATS),
    "columns": MapOf(Key((str,)), "rename your columns to the standard ones, e.g. {prompt: question}"),
    "split": Key((str,), "train", "split to read"),
    "subset": Key((str,), None, "hub dataset configuration name"),
    "revision": Key((str,), None, "hub dataset revision"),
    "max_rows": Key((int,), None, "read at most this many rows (after a seeded shuffle)", minimum=1),
})

PEFT = Section({
    "method": Key((str,), "lora", "adapter type: LoRA family, or prompt learning (soft prompt, no merge)",
                  LORA_METHODS + PROMPT_LEARNING_METHODS),
    "r": Key((int,), 16, "adapter rank", minimum=1),
    "alpha": Key((int, float), 32, "LoRA alpha (scaling = alpha / r, or alpha / sqrt(r) for rslora)"),
    "dropout": Key((int, float), 0.05, "dropout on the adapter input; TRL's reward, DPO, KTO and PPO trainers turn "
                                       "dropout off, and the stage logs a note then (on CPU, drawing its masks "
                                       "took 18% of a bf16 SFT step: BENCHMARKS.md, B10; the real recipe uses 0)"),
    "target_modules": Key((str, list), "all-linear", "modules to adapt; all-linear = every linear but lm_head"),
    "modules_to_save": Key((list,), None, "modules trained in full and saved with the adapter"),
    "num_virtual_tokens": Key((int,), None, "prompt learning: soft-prompt length in tokens (default 20)", minimum=1),
    "init_text": Key((str,), None, "prompt_tuning: start the soft prompt from this text's embeddings "
                                   "(default: random)"),
    "encoder_hidden_size": Key((int,), None, "p_tuning: hidden size of the prompt encoder (default: the "
                                             "model's)", minimum=1),
}, "adapter finetuning; omit (or null) for full finetuning", default=None)

QUANTIZATION = Section({
    "bits": Key((int,), 4, "4 = QLoRA (bitsandbytes NF4/FP4); 8 = LLM.int8", (4, 8)),
    "quant_type": Key((str,), "nf4", "4-bit data type", ("nf4", "fp4")),
    "double_quant": Key((bool,), True, "quantise the quantisation constants too"),
    "compute_dtype": Key((str,), "bfloat16", "dtype of the matmuls", ("float32", "bfloat16", "float16")),
}, "load the base quantised (needs `peft`); omit for full precision", default=None)

AUDIT = Section({
    "enabled": Key((bool,), True, "run the label audit before training"),
    "max_truncated_share": Key((int, float), 0.05,
                               "error when truncation cuts into the answer of more than this share of rows"),
    "require_eos": Key((bool,), True, "error when the end-of-turn/EOS token is never supervised"),
}, "the label audit before training (what is supervised, what truncation cuts)")

WATCH = Section({
    "task": Key((str,), REQUIRED, "eval task scored while training (a name under eval/tasks/ or a .yaml path)"),
    "questions": Key((int,), 32, "how many of its questions (the first N)", minimum=1),
    "every": Key((int,), 10, "score every this many optimizer steps, and before the first and after the last",
                 minimum=1),
    "select_best": Key((str,), None, "keep the weights with the best watched score instead of the last "
                                     "(the task must not be one of eval.tasks)", ("f1", "exact")),
    "length_drift": Key((int, float), 0.5, "alarm when the mean answer length (words) moves by more than this "
                                           "share of its start"),
    "unextractable": Key((int, float), 0.2, "alarm when more than this share of answers cannot be extracted "
                                            "(and more than at the start)"),
    "stop_on_alarm": Key((bool,), False, "stop training at the first alarm (the model so far is kept)"),
}, "policy stages (sft, dpo, ppo, rloo, grpo, kto, distill): EM/F1 on held-out questions during training, "
   "beside reward, KL and length; "
   "alarms when reward rises while F1 falls, lengths drift or answers stop being extractable", default=None)

SAMPLE_PAIRS = Section({
    "k": Key((int,), 4, "answers sampled per prompt from the starting policy", minimum=2),
    "margin": Key((int, float), 0.3, "keep (best, worst) when their SQuAD F1 (0-1) differs by at least this"),
    "temperature": Key((int, float), 1.0, "sampling temperature"),
    "max_new_tokens": Key((int,), 32, "longest sampled answer", minimum=1),
}, "dpo: build the pairs on-policy from prompt rows with gold `answers`: best vs worst of k sampled answers "
   "by F1, no human labels", default=None)

STAGE = Section({
    "name": Key((str,), None, "stage name, used for its run folder; defaults to the kind"),
    "kind": Key((str,), REQUIRED, "what the stage trains", STAGE_KINDS),
    "data": Key((list, dict), REQUIRED,
                "source names (every row used once), or a mapping name -> weight (a weighted mixture); kto reads "
                "unpaired rows (prompt, completion, label) or pairs, distill reads prompts"),
    "from": Key((str,), None, "earlier stage whose output this one starts from; default: the latest earlier "
                "policy stage (sft/dpo/ppo/rloo/grpo/kto/distill), or the base model for an sft stage"),
    "reward_model": Key((str,), None, "reward stage scoring ppo/rloo/grpo rollouts; default: the latest earlier one"),
    "value_model": Key((str,), None, "ppo: how the value model (a copy of the reward model) trains: lora = a "
                       "LoRA adapter (the stage's LoRA `peft`, else r 16) plus the score head; full = every weight, "
                       "as TRL does; default: lora when the stage's `peft` is LoRA-family, else full",
                       ("lora", "full")),
    "teacher": Key((str,), None, "distill: the teacher, an earlier policy stage's name or a model folder "
                                 "(or .gguf file); it must share the student's vocabulary"),
    "student": Key((str,), None, "distill: a model folder, hub id or .gguf file the student starts from instead "
                                 "of `from`, e.g. a smaller model with the same tokenizer"),
    "rewards": MapOf(Key((int, float)), "grpo/rloo: reward functions and their weights: squad_f1, squad_em, "
                     "length_penalty (need an `answers` column), reward_model; default {reward_model: 1}"),
    "watch": WATCH,
    "sample_pairs": SAMPLE_PAIRS,
    "eval_split": Key((int, float), 0, "held-out rows: a fraction (<1) or a count (>=1); 0 = none"),
    "max_rows": Key((int,), None, "total training rows of the mixture (default: sum of the sources)", minimum=1),
    "loss": Key((str,), "auto",
                "auto: assistant-only for chat data, completion-only for prompt/completion, full for text",
                ("auto", "assistant_only", "completion_only", "full")),
    "peft": PEFT,
    "quantization": QUANTIZATION,
    "audit": AUDIT,
    "train": Key((dict,), {}, "passed to the TRL config of this kind (SFTConfig, DPOConfig, ...)"),
})

DATA_AUDIT = Section({
    "enabled": Key((bool,), True, "audit every data source before training (finetune audit runs it alone)"),
    "ngram": Key((int,), 8, "n-gram length (in words) for the contamination check against eval tasks", minimum=1),
    "max_contaminated_rows": Key((int,), None, "error when more training rows overlap an eval task (null: report)"),
    "max_duplicate_share": Key((int, float), None, "error above this share of duplicate rows (null: report)"),
    "pii": Key((str,), "warn", "PII findings (e-mails, phones, card numbers, API keys)", ("off", "warn", "error")),
    "max_length_bias": Key((int, float), None,
                           "error when the share of pairs whose chosen answer is longer exceeds this (null: report)"),
}, "data audit before training: sizes, lengths, duplicates, contamination, PII, preference checks")

EVAL = Section({
    "tasks": ListOf(Key((str,)), "eval task specs: a name under eval/tasks/ or a .yaml path"),
    "base": Key((bool,), True, "also evaluate the untrained base model"),
    "batch_size": Key((int,), 16, "generation batch size", minimum=1),
    "limit": Key((int,), None, "evaluate at most this many questions per task", minimum=1),
    "max_new_tokens": Key((int,), None, "override every task's max_new_tokens", minimum=1),
    "dtype": Key((str,), "auto", "generation dtype: auto = bfloat16 where the CPU runs it natively, else as loaded",
                 ("auto", "float32", "bfloat16")),
})

RECIPE = Section({
    "extends": Key((str,), None, "a recipe this one builds on (path relative to this file)"),
    "name": Key((str,), None, "run name; defaults to the recipe file's stem"),
    "seed": Key((int,), 42, "seed for data order, splits, initialisation and training"),
    "output_dir": Key((str,), None, "where runs go; default runs/<name>"),
    "base_model": BASE_MODEL,
    "data": MapOf(DATA_SOURCE, "named data sources that stages refer to"),
    "stages": ListOf(STAGE, "stages, run in order"),
    "eval": Section(EVAL.keys, "evaluation after every stage", default=None),
    "data_audit": DATA_AUDIT,
})


def _default_text(spec: Any) -> str:
    if isinstance(spec, Section):
        return "omitted" if spec.default is None else ""
    if isinstance(spec, (MapOf, ListOf)):
        return ""
    if spec.default is REQUIRED:
        return "required"
    return "" if spec.default is None else f"`{spec.default}`"


def _help_text(spec: Any) -> str:
    text = spec.help
    if isinstance(spec, Key) and spec.choices:
        text += f" ({' / '.join(map(str, spec.choices))})"
    return text


def reference_rows(spec: Any = RECIPE, prefix: str = "") -> list[str]:
    """README's recipe reference: one markdown row `| key | default | meaning |` per key, in schema order.

    Nested keys are dotted; a named map's entries are `<name>`, a list's items `[]`. tests/test_recipe.py checks
    that README.md holds exactly these rows, so the reference cannot drift from what validation accepts.
    """
    rows: list[str] = []
    keys = spec.keys if isinstance(spec, Section) else {}
    for name, sub in keys.items():
        key = f"{prefix}{name}"
        rows.append(f"| `{key}` | {_default_text(sub)} | {_help_text(sub)} |")
        if isinstance(sub, Section):
            rows += reference_rows(sub, f"{key}.")
        elif isinstance(sub, MapOf) and isinstance(sub.value, Section):
            rows += reference_rows(sub.value, f"{key}.<name>.")
        elif isinstance(sub, ListOf) and isinstance(sub.item, Section):
            rows += reference_rows(sub.item, f"{key}[].")
    return rows


if __name__ == "__main__":  # python -m finetune.schema: the README's recipe reference table
    print("| key | default | meaning |\n|---|---|---|\n" + "\n".join(reference_rows()))
