"""Every shipped recipe's stage fingerprints stay byte-identical across refactors.

A stage's inputs fingerprint decides whether a finished stage is reused or refused as "run with other inputs";
a refactor that changes how the recipe is represented (typed slices, key order, defaults) must not change it,
or every finished run would be refused after an upgrade. The golden file holds the fingerprints of every stage
of every shipped recipe, chained as a run chains them (each stage's `init` carries the fingerprint of the
stage it starts from). File contents are left out (data files and model folders are hashed by content in a
real run; here they hash to nothing, so the pin covers what the recipe itself decides).

Regenerate only for a deliberate change of the fingerprint (and say so in the commit):
    python -m pytest tests/test_fingerprints.py --update-fingerprints
"""

from __future__ import annotations

import json
from pathlib import Path

from finetune import manifest as mf
from finetune import pipeline
from finetune.recipe import load_recipe
from finetune.recipe_types import Shared
from finetune.targets import recipe_files

GOLDEN = Path(__file__).parent / "fixtures" / "stage_fingerprints.json"


def _fingerprints(path: Path, monkeypatch) -> dict[str, str]:
    monkeypatch.setattr(pipeline, "_source_identity", lambda src: {**src, "sha256": {}})
    monkeypatch.setattr(pipeline.gguf_models, "source_of", lambda path: None)
    recipe = load_recipe(path)
    results, out = {}, {}
    for stage in recipe["stages"]:
        init = pipeline._init_for(stage, results)
        fp = mf.inputs_fingerprint(**pipeline.stage_inputs(Shared.of(recipe), stage, init))
        results[stage["name"]] = {"artifact": {"model": f"<{stage['name']}>", "adapter": False},
                                  "inputs_fingerprint": fp}
        out[stage["name"]] = fp
    return out


def test_shipped_recipes_keep_their_stage_fingerprints(monkeypatch, request):
    got = {name: _fingerprints(path, monkeypatch) for name, path in sorted(recipe_files().items())}
    if request.config.getoption("--update-fingerprints"):
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert got == json.loads(GOLDEN.read_text())
