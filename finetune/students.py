"""Distillation students made from their teacher: fewer layers, the teacher's weights (DistilBERT-style).

A random student has to learn the language and the task from the teacher's distributions alone. Sanh et al.
(2019, DistilBERT) start the student from the teacher instead: the same width, every other layer. The
student then shares the teacher's vocabulary by construction, which TRL's distillation needs.
"""

from __future__ import annotations

import json
from pathlib import Path

from finetune.errors import UserError, first_line


def kept_layers(total: int, keep: int) -> list[int]:
    """Indices of `keep` of `total` layers, evenly spread, first and last included.

    kept_layers(30, 6) == [0, 6, 12, 17, 23, 29]. Raises UserError unless 1 <= keep <= total.
    """
    if not 1 <= keep <= total:
        raise UserError(f"--layers {keep}: keep between 1 and the teacher's {total} layers")
    if keep == 1:
        return [0]
    return [round(i * (total - 1) / (keep - 1)) for i in range(keep)]


def shrink(teacher: str | Path, out: str | Path, layers: int) -> dict:
    """Save to `out` a copy of the causal LM at `teacher` that keeps `layers` of its decoder layers.

    The kept layers (see `kept_layers`), embeddings, final norm and LM head are the teacher's own tensors;
    the tokenizer and chat template are copied. Works for models whose decoder layers are `model.layers`
    (Llama, Qwen2, Mistral, SmolLM2). Returns {"layers": kept indices, "parameters": student count,
    "teacher_parameters": teacher count}. Raises UserError for an unreadable teacher folder, another layout,
    or an `out` folder that is not empty (nothing is overwritten).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    if not Path(teacher).is_dir():
        raise UserError(f"{teacher}: no such model folder (a student is cut from a local teacher folder)")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: output folder is not empty; choose another (nothing was written)")
    try:
        big = AutoModelForCausalLM.from_pretrained(str(teacher), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(teacher))
    except (OSError, ValueError) as e:
        raise UserError(f"{teacher}: cannot load a causal LM and tokenizer there ({first_line(e)})") from None
    decoder = getattr(getattr(big, "model", None), "layers", None)
    if decoder is None:
        raise UserError(f"{teacher}: {type(big).__name__} keeps no `model.layers`; cannot pick layers from it")
    teacher_parameters = sum(p.numel() for p in big.parameters())
    keep = kept_layers(len(decoder), layers)
    big.model.layers = torch.nn.ModuleList(decoder[i] for i in keep)
    for new_index, layer in enumerate(big.model.layers):  # the KV cache addresses layers by this index
        if hasattr(getattr(layer, "self_attn", None), "layer_idx"):
            layer.self_attn.layer_idx = new_index
    big.config.num_hidden_layers = len(keep)
    if getattr(big.config, "layer_types", None):
        big.config.layer_types = [big.config.layer_types[i] for i in keep]
    out.mkdir(parents=True, exist_ok=True)
    big.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {"teacher": str(teacher), "layers": keep, "parameters": sum(p.numel() for p in big.parameters()),
            "teacher_parameters": teacher_parameters}
    (out / "student.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
