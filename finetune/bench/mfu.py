"""B8: model FLOP utilisation (MFU) on CPU: a finished training stage's achieved FLOP/s against this machine's
measured dense GEMM peak, in fp32 and bf16.

The peak is measured, not looked up: the median of alternated rounds of square matmuls (torch.matmul, the
threads torch uses). Model FLOPs per trained token follow Kaplan et al. (2020) and the PaLM paper's MFU
(Chowdhery et al., 2022, appendix B): a forward pass costs 2 FLOPs per weight that multiplies (every linear
layer and the LM head; not the embedding lookup) plus the attention scores and mixing, 4 x layers x
context x width (here context = the mean example length, since packed examples attend only within
themselves). Full finetuning costs 3 forwards (forward, activation gradients, weight gradients) = 6N;
LoRA skips the frozen weights' gradients: 2 forwards = 4N (the adapter's own cost is under 1% at r 16);
gradient checkpointing recomputes the forward once more (+2N).

The LM head is counted on the supervised tokens only. PaLM's 6N counts it on every token because pretraining
supervises every token; an SFT loss reads only the answer tokens, and TRL's SFT loss (`loss_type:
chunked_nll`, its default) runs the head on those alone. Counting it on the prompt tokens too would credit
work that is neither needed nor done: SmolLM2-135M's 49k x 576 head is 21% of its matmul weights, and 2% of
the XQuAD question rows' tokens are supervised. The share is the stage's label audit's `supervised_share`;
with another `loss_type` the head counts on every token.

    .venv/bin/python -m finetune.bench.mfu runs/smollm2-135m-squad/sft
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def gemm_peak(dtype: str, n: int = 2048, rounds: int = 5, reps: int = 8) -> float:
    """Dense GEMM throughput in GFLOP/s: median over `rounds` of `reps` n x n x n matmuls in `dtype`."""
    import torch

    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    for _ in range(2):
        a @ b
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        rates.append(2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def flops_per_token(config: dict, method: str, checkpointing: bool, context: float, head_share: float = 1.0) -> float:
    """Training FLOPs per token (see the module docstring). `config` is the model's config.json; `method`
    "full" or "lora"; `context` the mean number of tokens an example attends over; `head_share` the share of
    tokens (0-1) the LM head runs on. With head_share 1 and no attention term this is 6N (full) or 4N (LoRA),
    N = the matmul weights (134.5M for SmolLM2-135M, whose head is tied to the embedding)."""
    d, layers = config["hidden_size"], config["num_hidden_layers"]
    inter, vocab = config["intermediate_size"], config["vocab_size"]
    heads, kv_heads = (
        config["num_attention_heads"],
        config.get("num_key_value_heads") or config["num_attention_heads"],
    )
    head_dim = config.get("head_dim") or d // heads
    per_layer = d * heads * head_dim + 2 * d * kv_heads * head_dim + heads * head_dim * d + 3 * d * inter
    matmul_weights = layers * per_layer + head_share * d * vocab  # the head multiplies even when tied
    forward = 2 * matmul_weights + 4 * layers * context * heads * head_dim
    passes = (3 if method == "full" else 2) + (1 if checkpointing else 0)
    return passes * forward


def stage_mfu(stage_dir: Path, peaks: dict[str, float]) -> dict:
    """Achieved training FLOP/s of a finished stage (its manifest and metrics) against `peaks` (GFLOP/s)."""
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    rows = [json.loads(x) for x in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    tokens = manifest["train_metrics"].get("num_tokens") or max(
        r["num_tokens"] for r in rows if "num_tokens" in r
    )
    seconds = manifest["train_metrics"]["train_runtime"]
    model_dir = Path(manifest["artifact"]["base"])
    config = json.loads((model_dir / "config.json").read_text())
    args = manifest["resolved_recipe"]["stages"]
    stage = next(s for s in args if s["name"] == manifest["stage"])
    method = "lora" if stage["peft"] else "full"
    checkpointing = bool(stage["train"].get("gradient_checkpointing", True))
    audit = manifest.get("label_audit") or {}
    context = (audit.get("tokens") or {}).get("mean") or 256
    head_share = 1.0
    if stage["train"].get("loss_type", "chunked_nll") == "chunked_nll" and "supervised_share" in audit:
        head_share = audit["supervised_share"]
    per_token = flops_per_token(config, method, checkpointing, context, head_share)
    achieved = tokens * per_token / seconds / 1e9
    compute = (manifest.get("precision") or {}).get("compute", "fp32")
    peak = peaks["bfloat16" if "bf16" in compute else "float32"]
    return {
        "stage": manifest["stage"],
        "method": method,
        "checkpointing": checkpointing,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": round(tokens / seconds, 1),
        "gflop_per_token": round(per_token / 1e9, 3),
        "achieved_gflops": round(achieved, 1),
        "compute": compute,
        "peak_gflops": round(peak, 1),
        "mfu": round(achieved / peak, 4),
        "context": context,
        "head_share": head_share,
    }


def main(argv: list[str] | None = None) -> None:
    """B8: measure the fp32 and bf16 GEMM peaks here, then print each finished stage's model FLOPs utilisation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "stage_dirs", nargs="+", help="finished training stage folders (runs/<recipe>/<stage>)"
    )
    parser.add_argument("--n", type=int, default=2048, help="matmul size for the peak")
    args = parser.parse_args(argv)
    import torch

    peaks = {dt: gemm_peak(dt, args.n) for dt in ("float32", "bfloat16")}
    print(
        f"B8 MFU: dense {args.n}^3 GEMM peak with {torch.get_num_threads()} threads: fp32 "
        f"{peaks['float32']:.0f} GFLOP/s, bf16 {peaks['bfloat16']:.0f} GFLOP/s"
    )
    for d in args.stage_dirs:
        r = stage_mfu(Path(d), peaks)
        print(
            f"  {r['stage']}: {r['method']}{' + checkpointing' if r['checkpointing'] else ''}, "
            f"{r['compute']}: "
            f"{r['tokens_per_second']} tokens/s x {r['gflop_per_token']} GFLOP/token = "
            f"{r['achieved_gflops']} "
            f"GFLOP/s = {100 * r['mfu']:.1f}% of the {r['peak_gflops']:.0f} GFLOP/s peak"
        )


if __name__ == "__main__":
    main()
