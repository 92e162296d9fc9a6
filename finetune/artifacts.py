"""Stage outputs as inputs: merge an adapter into its base, and hand later stages a full model folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from finetune import modeling
from finetune.errors import UserError
from finetune.manifest import read_json


def adapter_base(adapter_dir: Path) -> str:
    """The base model an adapter was trained on: `base_model_name_or_path` from its adapter_config.json.

    Raises UserError naming the folder when adapter_config.json is missing, unreadable, not JSON or lacks the
    key (the folder is not a peft adapter).
    """
    cfg = adapter_dir / "adapter_config.json"
    try:
        return json.loads(cfg.read_text())["base_model_name_or_path"]
    except (OSError, KeyError, json.JSONDecodeError):
        raise UserError(f"{adapter_dir}: not a peft adapter folder "
                        f"(adapter_config.json missing or unreadable)") from None


def _head_for(adapter_dir: Path) -> tuple[str, dict]:
    """The model class an adapter belongs on: a causal LM, or a sequence classifier with its label count."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("task_type") != "SEQ_CLS":
        return "AutoModelForCausalLM", {}
    from safetensors import safe_open

    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        heads = [k for k in f.keys() if k.endswith("score.weight")]
        num_labels = f.get_slice(heads[0]).get_shape()[0] if heads else 1
    return "AutoModelForSequenceClassification", {"num_labels": num_labels}


PROMPT_LEARNING_TYPES = ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING")  # peft_type of soft-prompt adapters


def require_mergeable(adapter_dir: Path) -> None:
    """Raise UserError for a prompt-learning adapter: a soft prompt is extra input, not a weight delta, so
    there is nothing to merge; it is used by loading it with its base (eval and chat do)."""
    try:
        peft_type = json.loads((adapter_dir / "adapter_config.json").read_text()).get("peft_type")
    except (OSError, json.JSONDecodeError):
        return  # adapter_base names the unreadable file
    if peft_type in PROMPT_LEARNING_TYPES:
        raise UserError(f"{adapter_dir}: a {peft_type.lower()} adapter is a soft prompt (virtual tokens fed with "
                        f"every input), not a change to the weights, so it cannot be merged; load it with its "
                        f"base instead (finetune eval / finetune chat do)")


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base_model: dict | None = None) -> Path:
    """Merge an adapter into its full-precision base and save model + tokenizer as safetensors in out_dir.

    A QLoRA adapter is merged into the unquantised base, which is how a 4-bit-trained adapter is shipped.
    Written to a temporary folder first and renamed, so an interrupted merge never looks finished. Raises
    UserError for a non-empty `out_dir`, a folder that is not an adapter, or a prompt-learning adapter.
    """
    adapter_dir, out = Path(adapter_dir), Path(out_dir)
    require_mergeable(adapter_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: output folder is not empty; choose another (nothing was written)")
    bm = {**modeling.BASE_MODEL_DEFAULTS, **(base_model or {}), "path": adapter_base(adapter_dir)}
    auto_class, load_kwargs = _head_for(adapter_dir)
    model = modeling.load_base_model(bm, None, auto_class=auto_class, **load_kwargs)
    merged = modeling.load_adapter(model, adapter_dir).merge_and_unload()
    tokenizer = modeling.load_tokenizer({**bm, "path": str(adapter_dir)})
    if merged.config.pad_token_id is None:  # sequence classifiers find the last token through it
        merged.config.pad_token_id = tokenizer.pad_token_id
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


MERGE_PROBE = "Context: The river runs to the sea.\nQuestion: Where does the river run?"


def quantised_merge_gap(adapter_dir: str | Path, merged_dir: str | Path, quant: dict,
                        probe: str = MERGE_PROBE) -> dict:
    """How far a merged QLoRA model is from the 4-bit model that was trained and evaluated.

    The adapter learned on NF4-dequantised weights; merging adds it to the unquantised ones, so the shipped
    model is not the evaluated one. Returns {"max_abs": largest logit difference on the probe text's tokens,
    "top1_agree": share of positions whose most likely next token is the same, "tokens": probe length}.
    """
    import torch

    adapter_dir = Path(adapter_dir)
    bm = {**modeling.BASE_MODEL_DEFAULTS, "path": adapter_base(adapter_dir)}
    auto_class, kwargs = _head_for(adapter_dir)
    tokenizer = modeling.load_tokenizer({**bm, "path": str(adapter_dir)})
    ids = tokenizer(probe, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        quantised = modeling.load_adapter(modeling.load_base_model(bm, quant, auto_class=auto_class, **kwargs),
                                          adapter_dir).eval()
        a = quantised(ids.to(quantised.device)).logits.float().cpu()
        del quantised
        merged = modeling.load_base_model({**bm, "path": str(merged_dir)}, None, path=str(merged_dir),
                                          auto_class=auto_class, **kwargs).eval()
        b = merged(ids).logits.float()
    return {"max_abs": float((a - b).abs().max()), "tokens": int(ids.shape[1]),
            "top1_agree": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def full_model_dir(artifact: dict, base_model: dict | None = None) -> Path:
    """A folder holding a full model for this artifact: the model itself, or its adapter merged (cached)."""
    model_dir = Path(artifact["model"])
    if not artifact.get("adapter"):
        return model_dir
    merged = model_dir.parent / "merged"
    if not (merged / "config.json").exists():
        from finetune.ranks import barrier, is_main

        if is_main():
            merge_adapter(model_dir, merged, base_model)
        barrier()
    return merged


def resolve_target(path: str) -> tuple[Path, dict | None]:
    """A run folder, stage folder or model/adapter folder -> (model folder, stage manifest or None).

    A run folder resolves to the artifact of its most recently started stage. Raises UserError naming `path`
    when it is none of these (or a run folder with no finished stage manifests).
    """
    p = Path(path)
    if (p / "config.json").exists() or (p / "adapter_config.json").exists():
        return p, read_json(p.parent / "manifest.json")
    if (p / "manifest.json").exists():
        m = read_json(p / "manifest.json")
        return Path(m["artifact"]["model"]), m
    if p.is_dir():
        stages = [read_json(d / "manifest.json") for d in sorted(p.iterdir()) if (d / "manifest.json").exists()]
        if stages:
            last = max(stages, key=lambda m: m["timings"]["started"])
            return Path(last["artifact"]["model"]), last
    raise UserError(f"{path}: not a model folder, an adapter folder, a stage folder or a run with finished stages")
