"""B9: sampling a dpo stage's metric-labelled pairs (`sample_pairs:`) on the real model: each prompt read once
and continued k times (finetune.sampled_pairs.shared_prefill) against each prompt copied k times before its
forward pass (`num_return_sequences=k`, as before), alternated in one process (A B A B ...).

Reports prompts/s (median over rounds) and the speed-up, and, since the two compute the prompt in different
chunks (so a draw may differ where probabilities differ in the last bits), what the pairs are made of in each:
the mean SQuAD F1 of all sampled answers and the share of prompts that give a pair. Then a greedy check on
the first `--check` prompts: the shared prefill's continuations against the copied prompts' (identical unless
two tokens tie within float noise).

    .venv/bin/python -m finetune.bench.sample_pairs --model runs/smollm2-135m-squad/sft --prompts 32 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

PROMPTS = "recipes/realdata/xquad/train_prompts.jsonl"


def main(argv: list[str] | None = None) -> None:
    """B9: sample `--k` answers for `--prompts` training prompts both ways for `--rounds` rounds; print
    prompts/s, speed-up, mean F1 and pair share per variant, and the greedy identity check. Side effect: sets
    the loaded tokenizer's padding_side to "left" for the greedy check (its prompts are left-padded)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/smollm2-135m-squad/sft",
                        help="a model, adapter or stage folder (what finetune eval takes)")
    parser.add_argument("--data", default=PROMPTS, help="prompt rows with gold `answers` (jsonl)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--margin", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--check", type=int, default=8, help="prompts in the greedy identity check")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    import torch

    from finetune.eval_models import load_for_eval, targets
    from finetune.sampled_pairs import pairs_from_samples, sample, shared_prefill

    (_, model_dir, manifest), *_ = targets(args.model)
    model, tokenizer = load_for_eval(model_dir, manifest)
    with open(args.data, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][: args.prompts]
    prompts = [r["prompt"] for r in rows]
    golds = [[a] if isinstance(a, str) else list(a) for a in (r["answers"] for r in rows)]
    variants = {"prompt copied k times (before)": False, "prompt read once (shared prefill)": True}
    times: dict[str, list[float]] = {name: [] for name in variants}
    made: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, share in variants.items():
            start = time.perf_counter()
            answers = sample(model, tokenizer, prompts, args.k, args.max_new_tokens, args.temperature, seed=42,
                             batch_size=args.batch_size, share_prefill=share)
            times[name].append(time.perf_counter() - start)
            pairs, records = pairs_from_samples(prompts, golds, answers, args.margin)
            f1s = [s for rec in records for _, s in rec["samples"]]
            made[name] = {"mean_f1": round(statistics.mean(f1s), 4), "pair_share": round(len(pairs) / len(rows), 4)}

    before = statistics.median(times["prompt copied k times (before)"])
    report = {"model": str(model_dir), "prompts": len(rows), "k": args.k, "rounds": args.rounds,
              "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "variants": {}}
    print(f"B9 sampling DPO pairs: {args.model}, {len(rows)} prompts x {args.k} answers (up to {args.max_new_tokens}"
          f" tokens, temperature {args.temperature}), batch {args.batch_size}, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    for name in variants:
        med = statistics.median(times[name])
        report["variants"][name] = {"seconds": [round(t, 2) for t in times[name]],
                                    "prompts_per_second": round(len(rows) / med, 3),
                                    "speedup": round(before / med, 3), **made[name]}
        rounds = ", ".join(f"{t:.1f}" for t in times[name])
        print(f"  {name:<34} {len(rows) / med:6.3f} prompts/s  {before / med:5.2f}x  sampled-answer F1 "
              f"{made[name]['mean_f1']:.3f}  prompts giving a pair {100 * made[name]['pair_share']:.0f}%  "
              f"({rounds} s)")

    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
             for p in prompts[: args.check]]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    greedy = {"do_sample": False, "max_new_tokens": args.max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad():
        copied = model.generate(input_ids=ids.repeat_interleave(2, 0), attention_mask=mask.repeat_interleave(2, 0),
                                **greedy)
        shared = model.generate(**shared_prefill(model, ids, mask, 2), **greedy)
    same = sum(torch.equal(a, b) for a, b in zip(copied, shared, strict=True))
    report["greedy_identical"] = f"{same} of {len(copied)}"
    print(f"  greedy continuations identical, shared prefill vs copied prompts: {same} of {len(copied)}")
    print(f"B9 | sampling DPO pairs, shared prefill vs copied prompts | "
          f"{report['variants']['prompt read once (shared prefill)']['prompts_per_second']} vs "
          f"{report['variants']['prompt copied k times (before)']['prompts_per_second']} prompts/s | "
          f"{report['variants']['prompt read once (shared prefill)']['speedup']}x | faster, same greedy answers | "
          f"{'yes' if same == len(copied) else 'no'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
