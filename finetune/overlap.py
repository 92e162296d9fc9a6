"""Near-duplicates and contamination: word n-grams, MinHash with LSH buckets, and an index of eval tasks.

Used by the data audit. Text is compared as lowercased words with punctuation stripped.
"""

from __future__ import annotations

import re
import zlib

from finetune.errors import UserError

NEAR_DUP, SHINGLE = 0.9, 3  # Jaccard threshold over word 3-shingles
PERMUTATIONS, BANDS = 128, 16  # MinHash LSH: a pair at Jaccard 0.9 becomes a candidate with p > 0.9998
MAX_PAIR_CHECKS = 2_000_000  # bounds the exact Jaccard checks when LSH buckets are crowded
WORD = re.compile(r"[^\W_]+")  # letters and digits: lowercased text with punctuation stripped


def words(text: str) -> list[str]:
    """`text` as lowercased words: runs of letters and digits, punctuation and underscores dropped."""
    return WORD.findall(text.lower())


def _shingles(text: str) -> set[str]:
    w = words(text)
    return {" ".join(w[i:i + SHINGLE]) for i in range(max(1, len(w) - SHINGLE + 1))} if w else set()


def _near_pairs(sets: dict[int, set[str]]) -> tuple[list[tuple[int, int, float]], bool]:
    """Pairs (i < j) with Jaccard >= NEAR_DUP: MinHash LSH proposes candidates, exact Jaccard decides."""
    import numpy as np

    rng = np.random.default_rng(0)  # fixed permutations and crc32 shingle hashes: the same result every run
    a = rng.integers(1, 2**31, size=PERMUTATIONS, dtype=np.uint64)
    b = rng.integers(0, 2**31, size=PERMUTATIONS, dtype=np.uint64)
    prime = np.uint64(4294967311)  # > 2**32, and (a * x + b) stays below 2**64
    buckets: dict[tuple[int, bytes], list[int]] = {}
    for i, sh in sets.items():
        x = np.fromiter((zlib.crc32(s.encode()) for s in sh), dtype=np.uint64, count=len(sh))
        signature = ((x[:, None] * a + b) % prime).min(axis=0)
        for band, chunk in enumerate(signature.reshape(BANDS, -1)):
            buckets.setdefault((band, chunk.tobytes()), []).append(i)
    checked: set[tuple[int, int]] = set()
    found = []
    for members in buckets.values():
        for x, i in enumerate(members):
            for j in members[x + 1:]:
                if (i, j) in checked:
                    continue
                if len(checked) >= MAX_PAIR_CHECKS:
                    return sorted(found), True
                checked.add((i, j))
                jac = len(sets[i] & sets[j]) / len(sets[i] | sets[j])
                if jac >= NEAR_DUP:
                    found.append((i, j, round(jac, 3)))
    return sorted(found), False


SHARED_PASSAGE_WORDS = 20  # a line this long that several rows hold is a shared passage (a QA context)


def without_shared_passages(texts: list[str]) -> list[str]:
    """Each text without the lines of >= SHARED_PASSAGE_WORDS words that another text holds too.

    Reading-comprehension rows repeat one context for several questions; two rows that share a context but ask
    different questions are not duplicates, so near-duplicates are judged on what is left: the instruction,
    question and answer. A text made only of shared lines is kept whole.
    """
    from collections import Counter

    def long_lines(text: str) -> set[str]:
        return {key for line in text.splitlines() if len((key := " ".join(words(line))).split())
                >= SHARED_PASSAGE_WORDS}

    counts = Counter(line for t in texts for line in long_lines(t))
    out = []
    for t in texts:
        kept = [line for line in t.splitlines() if counts.get(" ".join(words(line)), 0) < 2]
        out.append("\n".join(kept) if any(line.strip() for line in kept) else t)
    return out


def duplicates(texts: list[str]) -> dict:
    """Exact duplicates (lowercased, whitespace collapsed) and near duplicates among the distinct rows, the
    latter judged without shared passages (`without_shared_passages`)."""
    first: dict[str, int] = {}
    exact = []
    for i, t in enumerate(texts):
        key = " ".join(t.lower().split())
        if key and key in first:
            exact.append((first[key], i))
        elif key:
            first[key] = i
    judged = without_shared_passages(texts)
    near, capped = _near_pairs({i: s for i in first.values() if (s := _shingles(judged[i]))})
    near_rows = len({j for _, j, _ in near})
    out = {"exact": len(exact), "near": near_rows, "share": round((len(exact) + near_rows) / len(texts), 4),
           "exact_examples": [list(p) for p in exact[:10]], "near_examples": [list(p) for p in near[:10]],
           "method": f"MinHash LSH over word {SHINGLE}-shingles, Jaccard >= {NEAR_DUP}, lines of >= "
                     f"{SHARED_PASSAGE_WORDS} words that several rows share (a QA context) left out"}
    if capped:
        out["note"] = f"near-duplicate search stopped after {MAX_PAIR_CHECKS:,} pair checks; a lower bound"
    return out


class EvalIndex:
    """The word n-grams of every eval question and context, and each question's gold answers."""

    def __init__(self, task_names: list[str], n: int):
        from finetune import evaluation

        self.n, self.lengths = n, {n}
        self.grams: dict[str, list[tuple[str, str, str]]] = {}
        self.golds: dict[tuple[str, str], list[str]] = {}
        self.tasks: dict[str, dict] = {}
        for spec in task_names:
            try:
                task = evaluation.load_task(spec)
                rows = evaluation.read_rows(task["data"], task["format"], task["split"], task["subset"])
            except UserError as e:  # hub data offline, a missing file: the audit goes on without this task
                self.tasks[spec] = {"status": f"skipped: {e}"}
                continue
            contexts: set[str] = set()
            for r in rows:
                self._add(r["question"], (task["name"], r["id"], "question"))
                if r["context"] and r["context"] not in contexts:  # SQuAD repeats a context per question
                    contexts.add(r["context"])
                    self._add(r["context"], (task["name"], r["id"], "context"))
                self.golds[(task["name"], r["id"])] = [" ".join(w) for g in r["golds"] if (w := words(g))]
            self.tasks[task["name"]] = {"status": "ok", "questions": len(rows)}

    def _add(self, text: str, ref: tuple[str, str, str]) -> None:
        w = words(text)
        if not w:
            return
        # A field shorter than n words is one gram: a short question can only be matched whole.
        n = min(len(w), self.n)
        grams = {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}
        self.lengths.add(n)
        for g in grams:
            self.grams.setdefault(g, []).append(ref)

    def scan(self, texts: list[str], source: str) -> dict:
        """Rows sharing a gram with an eval question/context; rows holding a question gram and its answer;
        and per task the ids of the eval questions whose question or context shares a gram with any row."""
        ok = [t for t, v in self.tasks.items() if v["status"] == "ok"]
        per_task = {t: {"rows": 0, "rows_with_answer": 0} for t in ok}
        touched: dict[str, set[str]] = {t: set() for t in ok}  # eval questions a row shares an n-gram with
        rows, rows_answer, examples = 0, 0, []
        for i, text in enumerate(texts):
            w = words(text)
            padded = f" {' '.join(w)} "
            best: dict[str, tuple[int, str, str, str]] = {}  # task -> (level, eval id, field, gram)
            for length in sorted(self.lengths, reverse=True):  # full n-grams first, for the example
                for k in range(len(w) - length + 1):
                    gram = " ".join(w[k:k + length])
                    for task, eid, field in self.grams.get(gram, ()):
                        touched[task].add(eid)
                        level = 0 if field == "context" else 1 + any(
                            f" {a} " in padded for a in self.golds[(task, eid)])
                        if level > best.get(task, (-1,))[0]:
                            best[task] = (level, eid, field if level < 2 else "question+answer", gram)
            if not best:
                continue
            rows += 1
            rows_answer += any(v[0] == 2 for v in best.values())
            for task, (level, eid, field, gram) in best.items():
                per_task[task]["rows"] += 1
                per_task[task]["rows_with_answer"] += level == 2
                if len(examples) < 20:
                    examples.append({"source": source, "row": i, "task": task, "eval_id": eid, "field": field,
                                     "ngram": gram})
        return {"rows": rows, "rows_with_answer": rows_answer, "per_task": per_task, "examples": examples,
                "eval_ids": {t: sorted(ids) for t, ids in touched.items()}}


