"""B7: evaluation throughput on the real model: fp32 as before (prompts in file order), fp32 grouped by
length, fp32 with each shared context read once (`evaluation.generate`'s default: grouped by length, the
questions on one paragraph reading it once), bf16 grouped by length and bf16 with shared contexts read once
(evaluation's default where bf16 is native; left out where the CPU would emulate bf16), alternated in one
process (A B C D E A B C D E ...).

Reports questions/s (median over rounds), the share of generated positions wasted after rows stopped, whether
the fp32 variants give identical predictions, the EM/F1 difference of bf16 generation against fp32, and how
many bf16 answers shared reading changes (bf16 rounds the two layouts differently).

Two variants repeat the shared-context ones with the LM head's input left non-contiguous (as before
2026-12-02, `modeling.contiguous_head_input` undone on a copy of the model): generate()'s first step then
copied the frozen head's weight once per row (pytorch#151934).

A last variant, fp32 grouped with one new token, times the prompts' forward pass (prefill) alone, in the same
rounds. No change to how answers are decoded (dropping finished rows, another cache) can make fp32 evaluation
faster than that: `file order / prefill` bounds the fp32 speed-up of any change that still reads every
prompt whole; reading a shared context once is what gets past it. Its FLOP/s (2 x
non-embedding parameters per prompt token, attention left out, so a lower bound) is set beside the fp32 GEMM
peak measured in the same process (finetune.bench.mfu.gemm_peak).

    .venv/bin/python -m finetune.bench.eval_real --model runs/smollm2-135m-squad/sft --questions 96 --rounds 2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

PREFILL = "fp32, grouped, 1 new token (prefill)"
SHARED = "fp32, shared contexts read once"


def _head_copied_per_row(model):
    """A copy of `model` whose LM head reads generate()'s (rows, 1, hidden) slice as it comes, not made
    contiguous: the layout before `modeling.contiguous_head_input` (its pre-hook removed from the copy)."""
    from finetune.modeling import contiguous_first_input

    before = copy.deepcopy(model)
    hooks = before.get_output_embeddings()._forward_pre_hooks
    for key in [k for k, hook in hooks.items() if hook is contiguous_first_input]:
        del hooks[key]
    return before


def _padded_prompt_tokens(tokenizer, prompts: list[str], batch_size: int, chat: bool) -> int:
    """Prompt positions the grouped batches run through the model: per batch, rows x its longest prompt (the
    batches `evaluation.generate` makes when grouping by length)."""
    lengths = sorted((len(ids) for ids in tokenizer(prompts, add_special_tokens=not chat)["input_ids"]),
                     reverse=True)
    return sum(len(lengths[i:i + batch_size]) * lengths[i] for i in range(0, len(lengths), batch_size))


def _non_embedding_parameters(model) -> int:
    """Parameters outside the input embedding and the LM head (one matmul-multiply-add each per token in the
    forward pass; generate computes the head on the last prompt position only)."""
    skip = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def main(argv: list[str] | None = None) -> None:
    """B7: generate the task's questions with the variants alternately for `--rounds` rounds; print
    questions/s, speed-up, wasted share and EM/F1 per variant (and write them to `--json` if given)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="runs/smollm2-135m-squad/sft",
        help="a model, adapter or stage folder (what finetune eval takes)",
    )
    parser.add_argument("--task", default="xquad_en_heldout")
    parser.add_argument("--questions", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    import torch

    from finetune import precision
    from finetune.eval_models import load_for_eval, targets
    from finetune.evaluation import build_prompts, extract_answer, generate, load_task, task_rows

    (_, model_dir, manifest), *_ = targets(args.model)
    fp32, tokenizer = load_for_eval(model_dir, manifest)
    hardware = precision.detect()
    bf16 = None
    if hardware.cpu_bf16 or hardware.cuda_bf16:
        bf16 = copy.deepcopy(fp32)
        precision.cast_for_generation(bf16, "bfloat16")
    else:
        print(f"B7: no bf16 variant: {hardware.cpu_reason}")
    task = load_task(args.task)
    rows = task_rows(task, args.questions)
    prompts = build_prompts(task, rows, tokenizer)
    variants = {  # name: (model, grouped by length, shared starts read once)
        "fp32, file order (before)": (fp32, False, False),
        "fp32, grouped by length": (fp32, True, False),
        SHARED: (fp32, True, True),
        "fp32, shared, head copied per row": (_head_copied_per_row(fp32), True, True),
        "bf16, grouped by length": (bf16, True, False),
        "bf16, shared contexts read once": (bf16, True, True),  # evaluation's default where bf16 is native
        "bf16, shared, head copied per row": (bf16 and _head_copied_per_row(bf16), True, True),
        PREFILL: (fp32, True, False),
    }
    if bf16 is None:
        for name in [n for n in variants if n.startswith("bf16")]:
            del variants[name]
    times: dict[str, list[float]] = {name: [] for name in variants}
    outputs, waste, prefilled = {}, {}, {}
    for _ in range(args.rounds):
        for name, (model, grouped, shared) in variants.items():
            stats: dict = {}
            start = time.perf_counter()
            with torch.no_grad():
                outputs[name] = generate(
                    model,
                    tokenizer,
                    prompts,
                    1 if name == PREFILL else task["max_new_tokens"],
                    args.batch_size,
                    task["chat_template"],
                    progress=False,
                    stop=task["stop"],
                    stats=stats,
                    group_by_length=grouped,
                    share_prefixes=shared,
                )
            times[name].append(time.perf_counter() - start)
            waste[name] = stats["wasted_share"]
            prefilled[name] = (stats["prefilled_tokens"], stats["prompt_tokens"])

    from finetune import squad

    def scores(gens):
        """(EM, F1) in percent, rounded to 2 places, of one variant's generations."""
        preds = {r["id"]: extract_answer(g, task) or "" for r, g in zip(rows, gens, strict=True)}
        from finetune.evaluation import official_layout

        out = squad.evaluate_v1(official_layout(rows), preds)
        return round(out["exact_match"], 2), round(out["f1"], 2)

    base = statistics.median(times["fp32, file order (before)"])
    report = {
        "model": str(model_dir),
        "task": task["name"],
        "questions": len(rows),
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "variants": {},
    }
    print(
        f"B7 evaluation throughput: {args.model}, {len(rows)} questions of {task['name']}, batch "
        f"{args.batch_size}, {args.rounds} rounds, {torch.get_num_threads()} threads"
    )
    for name in variants:
        med = statistics.median(times[name])
        if name == PREFILL:
            continue
        em, f1 = scores(outputs[name])
        report["variants"][name] = {
            "seconds": [round(t, 2) for t in times[name]],
            "questions_per_second": round(len(rows) / med, 3),
            "speedup": round(base / med, 3),
            "wasted_share": waste[name],
            "prefilled_tokens": prefilled[name][0],
            "prompt_tokens": prefilled[name][1],
            "em": em,
            "f1": f1,
        }
        rounds = ", ".join(f"{t:.1f}" for t in times[name])
        print(
            f"  {name:<32} {len(rows) / med:6.3f} questions/s  {base / med:5.2f}x  wasted "
            f"{100 * waste[name]:4.1f}%  EM {em:5.1f} F1 {f1:5.1f}  ({rounds} s)"
        )
    prefill = statistics.median(times[PREFILL])
    tokens = _padded_prompt_tokens(tokenizer, prompts, args.batch_size, task["chat_template"])
    flops = 2 * _non_embedding_parameters(fp32) * tokens
    from finetune.bench.mfu import gemm_peak

    peak = gemm_peak("float32")
    report["prefill"] = {
        "seconds": [round(t, 2) for t in times[PREFILL]],
        "share_of_fp32_grouped": round(prefill / statistics.median(times["fp32, grouped by length"]), 3),
        "fp32_speedup_bound": round(base / prefill, 3),
        "padded_prompt_tokens": tokens,
        "gflops_lower_bound": round(flops / prefill / 1e9, 1),
        "fp32_gemm_peak_gflops": round(peak, 1),
    }
    pf = report["prefill"]
    print(
        f"  prefill alone (fp32, grouped, 1 new token): {prefill:.1f} s = {100 * pf['share_of_fp32_grouped']:.0f}% "
        f"of fp32 grouped; fp32 speed-up bound at identical arithmetic {pf['fp32_speedup_bound']:.2f}x; "
        f">= {pf['gflops_lower_bound']:.0f} GFLOP/s on {tokens} padded prompt tokens against a fp32 GEMM peak of "
        f"{pf['fp32_gemm_peak_gflops']:.0f}"
    )
    same = outputs["fp32, file order (before)"] == outputs["fp32, grouped by length"]
    same_shared = outputs["fp32, file order (before)"] == outputs[SHARED]
    differ = sum(
        a != b
        for a, b in zip(outputs["fp32, grouped by length"], outputs["bf16, grouped by length"], strict=True)
    ) if bf16 is not None else None
    report.update(fp32_identical=same, fp32_shared_identical=same_shared, bf16_answers_differing=differ)
    print(f"  fp32 predictions identical with and without grouping: {same}")
    tokens, whole = prefilled[SHARED]
    print(f"  fp32 predictions identical with shared contexts read once: {same_shared} ({tokens} of {whole} prompt "
          f"tokens run through the model, padding included)")
    if differ is not None:
        shared_differ = sum(a != b for a, b in zip(outputs["bf16, grouped by length"],
                                                   outputs["bf16, shared contexts read once"], strict=True))
        report["bf16_shared_answers_differing"] = shared_differ
        print(f"  bf16 answers that differ from fp32's: {differ} of {len(rows)}; bf16 answers that differ between "
              f"shared and whole reading: {shared_differ}")
    fixed = {"fp32": SHARED, "bf16": "bf16, shared contexts read once"}
    head = {dtype: sum(a != b for a, b in zip(outputs[f"{dtype}, shared, head copied per row"], outputs[name],
                                              strict=True))
            for dtype, name in fixed.items() if f"{dtype}, shared, head copied per row" in outputs}
    report["head_copied_answers_differing"] = head
    print("  answers that differ between the head's input made contiguous and not: "
          + ", ".join(f"{dtype} {n} of {len(rows)}" for dtype, n in head.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
