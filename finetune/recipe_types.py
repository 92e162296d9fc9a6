"""Typed slices of a validated recipe: what each part holds after `recipe.load_recipe` filled the defaults.

Declared beside `schema.py`, whose Sections they mirror key for key (tests/test_recipe_types.py checks the keys,
the value types and that every shipped recipe validates into exactly these shapes). They are TypedDicts, not
dataclasses: a validated recipe stays the plain dict that is written to `recipe.yaml` and hashed into every
stage's inputs fingerprint, so typing it changes no fingerprint (tests/test_fingerprints.py pins them).

Functions take the slice they use: a stage gets a `Shared` (base model, data sources, seed) and its own `Stage`,
`data.stage_data` the sources, the stage and the seed, never the whole recipe. Only the orchestrators that
really walk every part (pipeline, report, data audit, GGUF resolution) take a `Recipe`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict


class BaseModel(TypedDict):
    """`base_model:`: the pretrained model every stage starts from (schema.BASE_MODEL)."""

    path: str
    revision: str | None
    dtype: str
    attn_implementation: str | None
    trust_remote_code: bool
    tokenizer: str | None
    gguf_file: str | None
    chat_template: str | None
    training_chat_template: str | None


class DataSource(TypedDict):
    """One entry of `data:` (schema.DATA_SOURCE)."""

    path: str
    format: str
    columns: dict[str, str]
    split: str
    subset: str | None
    revision: str | None
    max_rows: int | None


class Peft(TypedDict):
    """`stages[].peft:` (schema.PEFT); a stage without it trains in full (the slice is None)."""

    method: str
    r: int
    alpha: int | float
    dropout: int | float
    target_modules: str | list
    modules_to_save: list | None
    num_virtual_tokens: int | None
    init_text: str | None
    encoder_hidden_size: int | None


class Quantization(TypedDict):
    """`stages[].quantization:` (schema.QUANTIZATION); None loads the base in full precision."""

    bits: int
    quant_type: str
    double_quant: bool
    compute_dtype: str


class Audit(TypedDict):
    """`stages[].audit:` (schema.AUDIT): the label audit before training."""

    enabled: bool
    max_truncated_share: int | float
    require_eos: bool


class Watch(TypedDict):
    """`stages[].watch:` (schema.WATCH): held-out EM/F1 while a policy stage trains."""

    task: str
    questions: int
    every: int
    select_best: str | None
    length_drift: int | float
    unextractable: int | float
    stop_on_alarm: bool


class SamplePairs(TypedDict):
    """`stages[].sample_pairs:` (schema.SAMPLE_PAIRS): DPO pairs sampled from the policy, labelled by F1."""

    k: int
    margin: int | float
    temperature: int | float
    max_new_tokens: int


# `from` is a Python keyword, hence the functional form.
Stage = TypedDict("Stage", {
    "name": str,
    "kind": str,
    "data": dict[str, Any],  # source name -> weight (None: every row once); a recipe's list becomes this
    "from": str | None,
    "reward_model": str | None,
    "teacher": str | None,
    "student": str | None,
    "rewards": dict[str, int | float] | None,
    "watch": Watch | None,
    "sample_pairs": SamplePairs | None,
    "value_model": str | None,
    "eval_split": int | float,
    "max_rows": int | None,
    "loss": str,
    "peft": Peft | None,
    "quantization": Quantization | None,
    "audit": Audit,
    "train": dict[str, Any],  # checked against the stage kind's TRL config (trl_fields.py)
})
Stage.__doc__ = "One entry of `stages:` (schema.STAGE), with `name`, `from` and `reward_model` resolved."


class DataAudit(TypedDict):
    """`data_audit:` (schema.DATA_AUDIT)."""

    enabled: bool
    ngram: int
    max_contaminated_rows: int | None
    max_duplicate_share: int | float | None
    pii: str
    max_length_bias: int | float | None


class Eval(TypedDict):
    """`eval:` (schema.EVAL); a recipe without it has None."""

    tasks: list[str]
    base: bool
    batch_size: int
    limit: int | None
    max_new_tokens: int | None
    dtype: str


class Source(TypedDict):
    """Where a validated recipe came from: its file and the command line's `key=value` overrides."""

    file: str
    overrides: list[str]


class Recipe(TypedDict):
    """A validated recipe (schema.RECIPE) plus `source`, the file and overrides it was read from."""

    extends: str | None
    name: str
    seed: int
    output_dir: str
    base_model: BaseModel
    data: dict[str, DataSource]
    stages: list[Stage]
    eval: Eval | None
    data_audit: DataAudit
    source: Source


@dataclass(frozen=True)
class Shared:
    """The parts of a recipe that every stage reads besides its own block: the base model, the named data
    sources and the seed. What a stage may touch of the recipe is exactly this (and its `Stage`)."""

    base_model: BaseModel
    sources: Mapping[str, DataSource]
    seed: int

    @classmethod
    def of(cls, recipe: Recipe) -> Shared:
        """The shared parts of a resolved recipe: its base_model, data sources and seed."""
        return cls(recipe["base_model"], recipe["data"], recipe["seed"])
