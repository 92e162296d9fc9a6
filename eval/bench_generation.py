"""Benchmark: batched vs one-at-a-time generation on the QA harness (tiny model, CPU).

Alternates the two variants (A B A B ...) in one process so machine noise hits both, reports medians, the
speed ratio, and checks the predictions are identical.   Run:  make bench-eval
"""

from __future__ import annotations

import argparse
import statistics
import time

from finetune.evaluation import build_prompts, generate, load_task, read_rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/tiny-llama")
    parser.add_argument("--task", default="squad_v1_tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--copies", type=int, default=2, help="repeat the task's questions to fill batches")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    task = load_task(args.task)
    prompts = build_prompts(task, read_rows(task["data"], task["format"]), tok) * args.copies
    times = {"one-at-a-time": [], f"batched (bs={args.batch_size})": []}
    outputs = {}
    for _ in range(args.rounds):
        for name, bs in (("one-at-a-time", 1), (f"batched (bs={args.batch_size})", args.batch_size)):
            start = time.perf_counter()
            outputs[name] = generate(model, tok, prompts, args.max_new_tokens, bs, task["chat_template"],
                                     progress=False)
            times[name].append(time.perf_counter() - start)
    single, batched = (statistics.median(t) for t in times.values())
    same = len(set(map(tuple, outputs.values()))) == 1
    print(f"B4 eval generation: {len(prompts)} questions x {args.max_new_tokens} new tokens, {args.rounds} rounds")
    for name, t in times.items():
        print(f"  {name:<22} median {statistics.median(t):7.3f} s   ({', '.join(f'{x:.3f}' for x in t)})")
    print(f"  speed-up batched / one-at-a-time: {single / batched:.2f}x   (target >= 5x)")
    print(f"  predictions identical: {same}")


if __name__ == "__main__":
    main()
