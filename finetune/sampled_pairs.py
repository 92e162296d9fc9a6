"""Metric-labelled preference pairs: on-policy DPO data with no human labels.

A dpo stage with `sample_pairs:` reads prompt rows with gold `answers` (as GRPO does). Before training, the
starting policy samples `k` answers per prompt; each is scored with SQuAD F1 against the gold answers by the
evaluation's own scorer (finetune.rewards.squad_f1); the best and the worst answer become a pair when their
F1 differs by at least `margin` (prompts whose answers all score alike teach nothing and are dropped). This is
the "best-vs-worst of N, judged by a verifiable metric" recipe of on-policy preference data (as in RAFT,
Dong et al., 2023, and the self-rewarding / iterative DPO papers, with the metric standing in for the judge).
Every sampled answer and its score is kept in `<stage>/sampled_pairs.jsonl`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from finetune import rewards
from finetune.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    k: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int = 8,
    share_prefill: bool = True,
) -> list[list[str]]:
    """`k` sampled answers (text before the first newline, stripped) for each prompt (chat turns or text).

    Left-padded batches of `batch_size` prompts through `model.generate(do_sample=True)`, each prompt read once
    and continued k times (`shared_prefill`; `share_prefill=False` copies it k times first, as
    `num_return_sequences=k` does: benchmark B9 compares the two); seeded with `seed`, so a rerun on the same
    machine samples the same answers (and every rank of a CPU job the same).
    Side effect, undone on return: sets tokenizer.padding_side to "left" while sampling and restores the
    previous value afterwards (also when sampling fails).
    """
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return _sample_batches(model, tokenizer, prompts, k, max_new_tokens, temperature, seed, batch_size,
                               share_prefill)
    finally:
        tokenizer.padding_side = side


def _sample_batches(model, tokenizer, prompts, k, max_new_tokens, temperature, seed, batch_size, share_prefill):
    import torch
    from tqdm.auto import tqdm

    from finetune.evaluation import stop_token_ids

    eos = stop_token_ids(model, tokenizer)
    torch.manual_seed(seed)
    out: list[list[str]] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="sampling answers", unit="batch", disable=len(starts) < 2):
        batch = prompts[start : start + batch_size]
        chat = not isinstance(batch[0], str)
        texts = [
            tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if chat else p
            for p in batch
        ]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat)
        ids, mask = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
        with torch.no_grad():
            gen = model.generate(
                **(shared_prefill(model, ids, mask, k) if share_prefill
                   else {"input_ids": ids, "attention_mask": mask, "num_return_sequences": k}),
                do_sample=True,
                temperature=temperature,
                top_p=1.0,
                top_k=0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
            )
        rows = gen[:, ids.shape[1] :].tolist()
        for i in range(len(batch)):
            answers = []
            for row in rows[i * k : (i + 1) * k]:
                ends = [row.index(t) for t in eos if t in row]
                text = tokenizer.decode(row[: min(ends)] if ends else row, skip_special_tokens=True)
                answers.append(rewards.completion_text(text))
            out.append(answers)
    return out


def shared_prefill(model: PreTrainedModel, ids, mask, k: int) -> dict:
    """`generate()` inputs that continue each prompt `k` times while reading the prompt once.

    `num_return_sequences=k` copies every prompt k times before the forward pass over it (the prefill), so
    a 500-token XQuAD prompt was read 4 times to sample 4 answers of at most 32 tokens. Here the prompt's first
    L-1 tokens are read once, their key/value cache is repeated k times (transformers'
    `Cache.batch_repeat_interleave`, what beam search uses), and generation goes on from the last prompt token,
    whose logits `generate()` computes itself. Positions follow `generate()`'s own rule for left-padded rows
    (cumulative sum of the mask, less one). Shapes: `ids`, `mask` (B, L), left-padded -> input_ids and
    attention_mask (B*k, L), each prompt's k copies adjacent (as `num_return_sequences` orders them), and
    a key/value `cache` of B*k rows and L-1 positions. A one-token prompt has nothing to share: it is copied k
    times as before.
    """
    if ids.shape[1] < 2:
        return {"input_ids": ids.repeat_interleave(k, 0), "attention_mask": mask.repeat_interleave(k, 0)}
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    cache = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                  use_cache=True).cache
    cache.batch_repeat_interleave(k)
    return {"input_ids": ids.repeat_interleave(k, 0), "attention_mask": mask.repeat_interleave(k, 0),
            "cache": cache}


def pairs_from_samples(
    prompts: list, golds: list[list[str]], samples: list[list[str]], margin: float
) -> tuple[list[dict], list[dict]]:
    """(DPO pairs, every prompt's record) from sampled answers and their gold answers.

    A pair is (highest-F1 answer, lowest-F1 answer) of one prompt when their F1 (0-1) differs by >= `margin`;
    ties go to the earlier sample. Pairs are conversational ({prompt, chosen, rejected} with assistant turns)
    for chat prompts, text otherwise. Records: {prompt index, samples [(answer, f1)], kept}. Pure.
    """
    pairs, records = [], []
    for i, (prompt, gold, answers) in enumerate(zip(prompts, golds, samples, strict=True)):
        scores = rewards.squad_f1(None, answers, [gold] * len(answers))
        best = max(range(len(answers)), key=lambda j: (scores[j], -j))
        worst = min(range(len(answers)), key=lambda j: (scores[j], j))
        kept = scores[best] - scores[worst] >= margin and answers[best] != answers[worst]
        records.append(
            {
                "row": i,
                "samples": [[a, round(s, 4)] for a, s in zip(answers, scores, strict=True)],
                "kept": kept,
            }
        )
        if kept:
            chosen, rejected = answers[best], answers[worst]
            if not isinstance(prompt, str):
                chosen, rejected = (
                    [{"role": "assistant", "content": chosen}],
                    [{"role": "assistant", "content": rejected}],
                )
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": chosen,
                    "rejected": rejected,
                    "chosen_f1": scores[best],
                    "rejected_f1": scores[worst],
                }
            )
    return pairs, records


def build(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt_rows: Dataset, cfg: dict, seed: int,
          stage_name: str, out_path: Path, log) -> tuple[Dataset, dict]:
    """Sample, score and pair for a dpo stage's `sample_pairs:` block `cfg`; write every sample to `out_path`.

    Returns (datasets.Dataset of pairs, summary for the manifest). Raises UserError when the rows carry no
    `answers` or when no prompt gives a pair above the margin (DPO would have nothing to learn).
    """
    import datasets

    if "answers" not in prompt_rows.column_names:
        raise UserError(
            f"stage {stage_name}: sample_pairs scores answers against gold answers: the prompt data "
            f"needs an `answers` column (a list of texts)"
        )
    prompts = list(prompt_rows["prompt"])
    golds = [[a] if isinstance(a, str) else list(a or []) for a in prompt_rows["answers"]]
    log(
        f"sampling {cfg['k']} answers for each of {len(prompts)} prompts from the starting policy "
        f"(temperature {cfg['temperature']}, up to {cfg['max_new_tokens']} tokens)"
    )
    samples = sample(model, tokenizer, prompts, cfg["k"], cfg["max_new_tokens"], cfg["temperature"], seed)
    pairs, records = pairs_from_samples(prompts, golds, samples, cfg["margin"])
    from finetune.ranks import is_main

    if is_main():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with out_path.open("w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps({**rec, "golds": golds[rec["row"]]}, ensure_ascii=False) + "\n")
    n = len(prompts)
    summary = {
        "prompts": n,
        "k": cfg["k"],
        "margin": cfg["margin"],
        "pairs": len(pairs),
        "mean_chosen_f1": round(sum(p["chosen_f1"] for p in pairs) / len(pairs), 4) if pairs else None,
        "mean_rejected_f1": round(sum(p["rejected_f1"] for p in pairs) / len(pairs), 4) if pairs else None,
        "mean_sample_f1": round(sum(s for r in records for _, s in r["samples"]) / (n * cfg["k"]), 4),
        "file": out_path.name,
    }
    log(
        f"sampled pairs: {len(pairs)} of {n} prompts had answers at least {cfg['margin']} F1 apart "
        f"(chosen F1 {summary['mean_chosen_f1']}, rejected F1 {summary['mean_rejected_f1']}; "
        f"all samples {summary['mean_sample_f1']})"
    )
    if not pairs:
        raise UserError(
            f"stage {stage_name}: sample_pairs: no prompt gave two answers at least {cfg['margin']} F1 "
            f"apart (mean sampled F1 {summary['mean_sample_f1']}); raise k or temperature, lower the "
            f"margin, or start from a policy that sometimes answers right (see {out_path})"
        )
    return datasets.Dataset.from_list(
        [{k: v for k, v in p.items() if not k.endswith("_f1")} for p in pairs]
    ), summary
