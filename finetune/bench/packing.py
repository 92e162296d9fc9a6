"""B2: padded vs packed SFT on rows of widely varying length: non-pad tokens/s, and no attention leak.

Data: text rows of 10..400 tokens (random counts of the shipped tiny_text sentences, seeded). Variants, alternated
in one process, each from the same starting weights for the same number of steps:

  padded        packing=False: batches of --batch rows, padded to the longest row of each batch
  packed        the toolkit's SFT packing (finetune.packing): TRL's bfd rows of max_length tokens, kept apart
                as [rows, max_length] with a block-diagonal mask per row (what the SFT stage uses with sdpa or
                eager attention); batch size chosen so a step holds about as many non-pad tokens as a padded one
  packed_1row   TRL's own bfd layout (padding_free): the same rows joined into ONE row per step, the layout
                flash-attention varlen kernels are made for
  padding_free  padding_free=True without packing: the --batch rows concatenated into one row, no padding

Throughput = non-pad tokens trained (TRL's logged num_tokens) / time from on_train_begin to on_train_end.
Target: packed / padded >= 1.5x.

Leak check: a packed batch (from the real trainers' dataloaders, both layouts) carries position_ids that restart
at 0 for every example and no attention mask; transformers derives a block-diagonal causal mask from them. With
a fixed model, the per-token losses of each example inside the packed batch must equal those of the example
run alone within 1e-4, for the attention kernel that trains here (sdpa on CPU) and the others available. Two
controls show the check can fail: the same tokens with positions 0..N-1 (naive concatenation), and the batch
passed without use_cache=False (a KV cache disables the mask derivation in transformers 5; TRL's compute_loss
passes use_cache=False, hand-written loops may not).

    python -m finetune.bench.packing [--quick]
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import statistics
import tempfile
import time
import warnings

from finetune.bench import add_threads_arg, fmt_list, median, set_threads, summary_line

TARGET = 1.5
TOLERANCE = 1e-4
VARIANTS = ("padded", "packed", "packed_1row", "padding_free")


def build_texts(tokenizer, n: int, lo: int, hi: int, seed: int) -> list[str]:
    """n text rows whose token counts spread over lo..hi: seeded draws of the shipped sentences."""
    import pandas as pd

    sentences = []
    for text in pd.read_parquet("recipes/data/tiny_text.parquet")["text"]:
        sentences += [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    lengths = {s: len(tokenizer(s + " ")["input_ids"]) for s in sentences}
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        target, parts, size = rng.randint(lo, hi), [], 0
        while True:
            s = rng.choice(sentences)
            if parts and size + lengths[s] > target and size >= lo:
                break
            parts.append(s)
            size += lengths[s]
        rows.append(" ".join(parts))
    return rows


def make_timer():
    """A TrainerCallback whose `.seconds` is the time from on_train_begin to on_train_end."""
    from transformers import TrainerCallback

    class Window(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.begin

    return Window()


def sft_config(out_dir: str, args, **over):
    """The SFTConfig every variant trains with (fp32 on CPU, no saving or checkpointing), `over` on top."""
    from trl import SFTConfig

    settings = dict(output_dir=out_dir, seed=args.seed, data_seed=args.seed, max_steps=args.steps,
                    learning_rate=1e-3, max_length=args.max_length, bf16=False, use_cpu=True, report_to="none",
                    save_strategy="no", gradient_checkpointing=False, logging_steps=1, disable_tqdm=True,
                    dataloader_pin_memory=False)
    return SFTConfig(**{**settings, **over})


def load_model(model_dir: str, attn: str):
    """The model at `model_dir` in float32 with attention kernel `attn` (eager, sdpa, flex_attention, ...)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)


def trainer_class(variant: str):
    """The toolkit's row-packed SFTTrainer subclass for "packed"; TRL's SFTTrainer for the other variants."""
    from trl import SFTTrainer

    from finetune.packing import row_packed_trainer_class

    return row_packed_trainer_class() if variant == "packed" else SFTTrainer


def train_once(variant: str, dataset, tokenizer, args, batch: int) -> dict:
    """Train one variant `args.steps` steps at `batch` rows per step from fresh weights; returns {"tokens"
    (non-pad, TRL's num_tokens), "seconds" (the training loop), "tok_s", "steps"}."""
    from transformers import PrinterCallback

    # padding_free without packing refuses a max_length it would not enforce; the rows are shorter anyway.
    over = {"padded": {}, "packed": {"packing": True}, "packed_1row": {"packing": True},
            "padding_free": {"padding_free": True, "max_length": None}}[variant]
    with tempfile.TemporaryDirectory(prefix=f"bench-b2-{variant}-") as tmp:
        timer = make_timer()
        trainer = trainer_class(variant)(model=load_model(args.model, args.attn), processing_class=tokenizer,
                                         args=sft_config(tmp, args, per_device_train_batch_size=batch, **over),
                                         train_dataset=dataset, callbacks=[timer])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    logged = [row for row in trainer.state.log_history if "num_tokens" in row]
    tokens = float(logged[-1]["num_tokens"])
    return {"tokens": tokens, "seconds": timer.seconds, "tok_s": tokens / timer.seconds,
            "steps": trainer.state.global_step}


def per_token_losses(model, input_ids, **kwargs):
    """Per-token next-token losses, one row of them per batch row."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        logits = model(input_ids=input_ids, **kwargs).logits
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:], reduction="none")


def packed_batch(args, texts: list[str], tokenizer, variant: str) -> dict:
    """The first training batch the variant's real SFTTrainer dataloader yields for these texts."""
    import datasets

    from finetune.packing import TOKENS

    with tempfile.TemporaryDirectory(prefix="bench-b2-leak-") as tmp:
        trainer = trainer_class(variant)(
            model=load_model(args.model, "sdpa"), processing_class=tokenizer,
            train_dataset=datasets.Dataset.from_list([{"text": t} for t in texts]),
            args=sft_config(tmp, args, packing=True, per_device_train_batch_size=len(texts)))
        batch = next(iter(trainer.get_train_dataloader()))
    batch.pop(TOKENS, None)
    return batch


def leak_check(args, texts: list[str], tokenizer, impls: list[str]) -> dict:
    """Per-token losses of each example inside the packed batches (both layouts) vs run alone, per kernel."""
    import torch

    layouts = {}
    for variant in ("packed", "packed_1row"):
        batch = packed_batch(args, texts, tokenizer, variant)
        ids, pos = batch["input_ids"], batch["position_ids"]
        segments = []  # (row, start, end) of every example: a run of positions counting up from 0
        for r in range(ids.shape[0]):
            starts = (pos[r] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
            segments += [(r, s, e) for s, e in zip(starts, starts[1:], strict=False) if e - s > 1]  # not pads
        layouts[variant] = (ids, pos, segments, "attention_mask" in batch)
    ids, pos, segments, has_mask = layouts["packed"]
    out = {"examples": len(segments), "lengths": [e - s for _, s, e in segments], "shape": list(ids.shape),
           "shape_1row": list(layouts["packed_1row"][0].shape), "has_attention_mask": has_mask, "kernels": {}}

    def worst(model, ids, segments, **kwargs) -> float:
        packed = per_token_losses(model, ids, **kwargs)
        diffs = []
        for r, s, e in segments:
            alone = per_token_losses(model, ids[r:r + 1, s:e], use_cache=False)[0]
            diffs.append((packed[r, s:e - 1] - alone).abs().max().item())
        return max(diffs)

    for impl in impls:
        started = time.perf_counter()
        try:
            model = load_model(args.model, impl).eval()
            out["kernels"][impl] = {
                "max_diff": max(worst(model, i, seg, position_ids=p, use_cache=False)
                                for i, p, seg, _ in layouts.values()),
                "seconds": time.perf_counter() - started}
        except Exception as e:  # noqa: BLE001 - report any kernel that cannot run here instead of stopping
            out["kernels"][impl] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
        if impl == "sdpa" and "error" not in out["kernels"][impl]:
            naive = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
            out["control_naive"] = worst(model, ids, segments, position_ids=naive, use_cache=False)
            out["control_cache"] = worst(model.train(), ids, segments, position_ids=pos)
    return out


def matmul_params(model_dir: str) -> tuple[int, int]:
    """Weights every token multiplies through: the decoder layers' projections, and the LM head."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    h, kv = c.hidden_size, c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    return c.num_hidden_layers * (2 * h * h + 2 * h * kv + 3 * h * c.intermediate_size), h * c.vocab_size


def simulated_padding(lengths: list[int], batch: int, seed: int) -> tuple[float, float]:
    """Padded steps on seeded random batches: the share of computed tokens that are padding, and the mean
    number of attention scores (query x key pairs) a step computes."""
    order = lengths[:]
    random.Random(seed).shuffle(order)
    chunks = [order[i:i + batch] for i in range(0, len(order), batch)]
    computed = sum(max(c) * len(c) for c in chunks)
    return 1 - sum(lengths) / computed, statistics.fmean(len(c) * max(c) ** 2 for c in chunks)


def main(argv=None) -> None:
    """B2: alternate the variants' training runs, print non-pad tokens/s, then the leak check per attention
    kernel (with its two controls) and the summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps, 1 round: proves it runs, noisy figures")
    parser.add_argument("--model", default="models/tiny-llama")
    parser.add_argument("--attn", default="sdpa", help="attention kernel for the throughput runs")
    parser.add_argument("--rows", type=int, default=None, help="dataset rows (default 1024; quick 160)")
    parser.add_argument("--min-tokens", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=400)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16, help="rows per padded step")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 30; quick 4)")
    parser.add_argument("--rounds", type=int, default=None, help="default 3; quick 1")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--kernels", default=None,
                        help="attention kernels for the leak check (default eager,sdpa,flex_attention; quick "
                             "eager,sdpa: flex_attention compiles for about a minute on CPU)")
    add_threads_arg(parser)
    args = parser.parse_args(argv)
    args.rows = args.rows or (160 if args.quick else 1024)
    args.steps = args.steps or (4 if args.quick else 30)
    args.rounds = args.rounds or (1 if args.quick else 3)
    kernels = (args.kernels or ("eager,sdpa" if args.quick else "eager,sdpa,flex_attention")).split(",")
    threads = set_threads(args.threads if args.threads is not None else (1 if args.quick else None))

    import datasets
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    # Quiet: TRL's flash-attention warnings (the leak check below answers them) and progress bars.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    logging.getLogger("trl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    texts = build_texts(tokenizer, args.rows, args.min_tokens, args.max_tokens, args.seed)
    lengths = [len(tokenizer(t)["input_ids"]) + 1 for t in texts]  # + EOS, which TRL appends
    mean_len = statistics.fmean(lengths)
    rows = max(1, round(args.batch * mean_len / args.max_length))
    dataset = datasets.Dataset.from_list([{"text": t} for t in texts])
    batches = {"padded": args.batch, "packed": rows, "packed_1row": rows, "padding_free": args.batch}
    print(f"B2 packing: {args.model} ({args.attn}), {len(texts)} text rows of {min(lengths)}..{max(lengths)} "
          f"tokens (median {statistics.median(lengths):.0f}, mean {mean_len:.0f}), max_length {args.max_length}, "
          f"{args.steps} steps x {args.rounds} rounds, {threads}")
    pad_share, padded_scores = simulated_padding(lengths, args.batch, args.seed)
    flat = args.batch * mean_len
    print(f"  batch sizes: padded {args.batch} rows, packed and packed_1row {rows} rows of <= {args.max_length} "
          f"tokens (~{flat:.0f} non-pad tokens/step each), padding_free {args.batch} rows; padded steps compute "
          f"~{pad_share:.0%} padding (simulated)")
    print(f"  attention scores per step (dense kernels, i.e. not flash-attention varlen): padded ~"
          f"{padded_scores / 1e6:.1f} M; packed, {rows} rows of <= {args.max_length}, ~"
          f"{rows * args.max_length ** 2 / 1e6:.1f} M; packed_1row / padding_free, one row of ~{flat:.0f} tokens, ~"
          f"{flat ** 2 / 1e6:.1f} M", flush=True)
    body, head = matmul_params(args.model)
    ceiling = (body / (1 - pad_share) + head) / (body + head)
    print(f"  matmul weights per token: body {body / 1e6:.2f} M, LM head {head / 1e6:.2f} M "
          f"({head / (body + head):.0%}); "
          f"TRL's chunked_nll loss runs the head on supervised tokens only, so packing saves only the body's "
          f"padding: ceiling ~{ceiling:.2f}x before attention", flush=True)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            res = train_once(variant, dataset, tokenizer, args, batches[variant])
            runs[variant].append(res)
            print(f"  round {r + 1} {variant:<12} {res['tok_s']:8.0f} non-pad tokens/s  ({res['tokens']:.0f} tokens "
                  f"in {res['seconds']:.2f} s, {res['steps']} steps)", flush=True)
    tok_s = {v: median([x["tok_s"] for x in runs[v]]) for v in VARIANTS}
    for v in VARIANTS:
        print(f"  {v:<12} median {tok_s[v]:8.0f} tokens/s  ({fmt_list([x['tok_s'] for x in runs[v]], '.0f')})")
    ratio = tok_s["packed"] / tok_s["padded"]
    print(f"  packed / padded:       {ratio:.2f}x   (target >= {TARGET}x)")
    print(f"  packed_1row / padded:  {tok_s['packed_1row'] / tok_s['padded']:.2f}x   (TRL's layout: with {args.attn}, "
          f"one row's dense block-diagonal mask grows with the square of the step's tokens)")
    print(f"  padding_free / padded: {tok_s['padding_free'] / tok_s['padded']:.2f}x")

    rng = random.Random(args.seed + 1)
    sample = sorted(rng.sample(texts, 8), key=len)
    leak = leak_check(args, sample, tokenizer, kernels)
    print(f"  leak check: {leak['examples']} examples ({fmt_list(leak['lengths'], 'd')} tokens) in packed batches "
          f"of shape {leak['shape']} (packed) and {leak['shape_1row']} (packed_1row) from the trainers' dataloaders "
          f"(attention_mask in batch: {leak['has_attention_mask']}); max |per-token loss packed - alone|:")
    verdicts = {}
    for impl, res in leak["kernels"].items():
        if "error" in res:
            print(f"    {impl:<15} cannot run here: {res['error']}")
            continue
        verdicts[impl] = res["max_diff"] <= TOLERANCE
        print(f"    {impl:<15} {res['max_diff']:.2e}  {'PASS' if verdicts[impl] else 'FAIL (leaks across rows)'}"
              f"  ({res['seconds']:.1f} s)")
    if "control_naive" in leak:
        print(f"    control, positions 0..N-1 (no resets): {leak['control_naive']:.2e}  "
              f"({'leaks, as expected' if leak['control_naive'] > TOLERANCE else 'NO LEAK: the check has no power'})")
        cache = "leaks: a KV cache turns off the packed-mask derivation" if leak["control_cache"] > TOLERANCE \
            else "isolated"
        print(f"    control, TRL batch without use_cache=False: {leak['control_cache']:.2e}  ({cache})")
    no_leak = bool(verdicts) and verdicts.get(args.attn, False)
    print(f"  no leak with {args.attn} (the kernel used for training here): {no_leak}")
    met = ratio >= TARGET and no_leak
    print(summary_line(2, "packing vs padding",
                       f"packed {tok_s['packed']:.0f} vs padded {tok_s['padded']:.0f} tok/s (TRL one-row "
                       f"{tok_s['packed_1row']:.0f}, padding_free {tok_s['padding_free']:.0f}); leak check "
                       + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in verdicts.items()),
                       f"{ratio:.2f}x", f">= {TARGET}x, no leak (1e-4)", met))


if __name__ == "__main__":
    main()
