"""GGUF files as base models: dequantised once by transformers (with the `gguf` package) into an ordinary
safetensors model folder, cached by the GGUF file's sha256 so that later stages and runs load the folder.

transformers loads a GGUF (`from_pretrained(folder, gguf_file=name)`) into a normal model with float32
weights, but `save_pretrained` refuses a GGUF-loaded model; a model built from the same config, given the
loaded state dict, saves normally.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

from finetune.errors import UserError
from finetune.recipe_types import Recipe

SOURCE_FILE = "gguf_source.json"  # written into every imported folder: which GGUF it came from
IMPORT_VERSION = 2  # bumped when the imported folder changes; an older import is redone (2: no GGUF quant config)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_gguf(path: str, gguf_file: str) -> Path:
    """The GGUF file named by `base_model.gguf_file`: a file inside `path`, or a path of its own.

    Raises UserError when neither exists or the file does not start with the GGUF magic bytes.
    """
    candidates = [Path(path).expanduser() / gguf_file, Path(gguf_file).expanduser()]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise UserError(f"base_model.gguf_file: '{gguf_file}' not found in '{path}' or as a path")
    with open(found, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UserError(f"base_model.gguf_file: '{found}' is not a GGUF file (no GGUF magic bytes)")
    return found


def cache_root() -> Path:
    """Where imported GGUF models are kept: $FINETUNE_CACHE/gguf, default ~/.cache/finetune/gguf."""
    return Path(os.environ.get("FINETUNE_CACHE", Path.home() / ".cache" / "finetune")).expanduser() / "gguf"


def import_gguf(gguf: str | Path, out: str | Path, sha256: str | None = None, log=print) -> Path:
    """Dequantise `gguf` into the model folder `out` (config, safetensors weights, tokenizer with its chat
    template, generation config, and gguf_source.json with the file's name and sha256).

    The folder is written under a temporary name and renamed when complete, so a crash leaves no half model.
    Raises UserError when `out` exists and is not a folder this function wrote from the same GGUF, or when
    transformers cannot read the file.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, out = Path(gguf), Path(out)
    sha256 = sha256 or sha256_file(gguf)
    if out.exists():
        recorded = source_of(out) or {}
        if recorded.get("sha256") == sha256 and recorded.get("import_version") == IMPORT_VERSION:
            return out
        if recorded.get("sha256") == sha256:  # our own older import of the same file: redo it
            shutil.rmtree(out)
            return import_gguf(gguf, out, sha256, log)
        raise UserError(f"{out}: exists and is not an import of {gguf.name}; choose another folder (nothing "
                        f"there is overwritten)")
    log(f"importing {gguf.name} (sha256 {sha256[:12]}): dequantising to {out}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise UserError(f"{gguf}: transformers cannot load this GGUF ({first[:200]})") from None
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):  # the weights are dequantised: nothing of GGUF is left to say
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / SOURCE_FILE).write_text(json.dumps({"gguf_file": gguf.name, "sha256": sha256,
                                               "bytes": gguf.stat().st_size,
                                               "import_version": IMPORT_VERSION}, indent=2) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out


def cached_import(path: str, gguf_file: str, log=print) -> tuple[Path, str]:
    """(model folder, sha256) for `base_model.path` + `base_model.gguf_file`, importing on first use.

    The cache folder is named by the GGUF's sha256; a file lock keeps concurrent processes (ranks, runs) from
    importing the same file twice.
    """
    from filelock import FileLock

    gguf = resolve_gguf(path, gguf_file)
    sha256 = sha256_file(gguf)
    folder = cache_root() / sha256[:16]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        import_gguf(gguf, folder, sha256, log)
    return folder, sha256


def resolve_recipe(recipe: Recipe, log=print) -> Recipe:
    """The recipe with every GGUF model replaced by its imported folder: a GGUF base model (`base_model.path`
    = the cache folder, `gguf_file` = None) and a distill stage's `.gguf` teacher or student; a recipe
    without GGUF files is returned as it is."""
    bm = recipe["base_model"]
    if bm.get("gguf_file"):
        folder, _ = cached_import(bm["path"], bm["gguf_file"], log)
        recipe = {**recipe, "base_model": {**bm, "path": str(folder), "gguf_file": None}}
    stages = []
    for stage in recipe["stages"]:
        for key in ("teacher", "student"):
            if str(stage.get(key) or "").endswith(".gguf"):
                stage = {**stage, key: str(cached_import(".", stage[key], log)[0])}
        stages.append(stage)
    return {**recipe, "stages": stages}


def source_of(model_dir: str | Path) -> dict | None:
    """What gguf_source.json says about a folder this module imported ({gguf_file, sha256, bytes}), or None."""
    path = Path(model_dir).expanduser() / SOURCE_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def chat_template_of(gguf: str | Path) -> str | None:
    """The `tokenizer.chat_template` stored in a GGUF file's metadata (read without loading the tensors).

    None when the file stores no template. Raises UserError naming the file when its metadata cannot be read
    (a truncated or damaged file).
    """
    from gguf import GGUFReader

    try:
        field = GGUFReader(str(gguf)).fields.get("tokenizer.chat_template")
    except (ValueError, OSError, IndexError, KeyError) as e:  # a truncated or damaged file
        raise UserError(f"{gguf}: cannot read the GGUF metadata ({e.__class__.__name__}: {str(e)[:160]})") from None
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")
