"""The typed recipe slices (finetune/recipe_types.py) say what validation really returns."""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin, get_type_hints, is_typeddict

import pytest

from finetune import recipe_types as rt
from finetune import schema
from finetune.recipe import load_recipe
from finetune.targets import recipe_files

SLICES = {rt.BaseModel: schema.BASE_MODEL, rt.DataSource: schema.DATA_SOURCE, rt.Peft: schema.PEFT,
          rt.Quantization: schema.QUANTIZATION, rt.Audit: schema.AUDIT, rt.Watch: schema.WATCH,
          rt.SamplePairs: schema.SAMPLE_PAIRS, rt.Stage: schema.STAGE, rt.DataAudit: schema.DATA_AUDIT,
          rt.Eval: schema.EVAL, rt.Recipe: schema.RECIPE}
ADDED_BY_VALIDATION = {rt.Recipe: {"source"}}
NORMALISED = {(rt.Stage, "data")}  # a list of source names becomes {name: None}


def conforms(value: Any, tp: Any) -> bool:
    """Whether a validated value has the declared type (TypedDicts: exactly their keys, recursively)."""
    if tp is Any:
        return True
    if is_typeddict(tp):
        hints = get_type_hints(tp)
        return isinstance(value, dict) and set(value) == set(hints) and all(
            conforms(value[k], hints[k]) for k in hints)
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin is dict:
        return isinstance(value, dict) and all(conforms(k, args[0]) and conforms(v, args[1])
                                               for k, v in value.items())
    if origin is list:
        return isinstance(value, list) and all(conforms(v, args[0]) for v in value)
    if tp in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, tp)


@pytest.mark.parametrize("typed", SLICES, ids=lambda t: t.__name__)
def test_each_slice_declares_exactly_its_schema_section(typed):
    section = SLICES[typed]
    hints = get_type_hints(typed)
    assert set(hints) == set(section.keys) | ADDED_BY_VALIDATION.get(typed, set())
    for name, spec in section.keys.items():  # every type the schema accepts is declared
        if isinstance(spec, schema.Key) and (typed, name) not in NORMALISED:
            hint = hints[name]
            declared = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
            assert all(any(t is d or get_origin(d) is t for d in declared) for t in spec.types), name


@pytest.mark.parametrize("name", sorted(recipe_files()))
def test_every_shipped_recipe_validates_into_the_declared_shapes(name):
    recipe = load_recipe(recipe_files()[name])
    assert conforms(recipe, rt.Recipe)


def test_the_checker_rejects_a_wrong_shape():
    recipe = load_recipe(recipe_files()["tiny-demo"])
    recipe["stages"][0]["peft"] = {"method": "lora"}  # keys missing
    assert not conforms(recipe, rt.Recipe)
    recipe = load_recipe(recipe_files()["tiny-demo"])
    recipe["seed"] = "42"
    assert not conforms(recipe, rt.Recipe)


def test_shared_is_the_three_parts_every_stage_reads():
    recipe = load_recipe(recipe_files()["tiny-demo"])
    shared = rt.Shared.of(recipe)
    assert (shared.base_model, shared.sources, shared.seed) == (recipe["base_model"], recipe["data"], recipe["seed"])
