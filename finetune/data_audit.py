"""Data audit: look at every data source a recipe trains on before a model trains on it.

Per source and purpose (SFT rows, preference pairs or RL prompts) it reports sizes and drop reasons, token
lengths under the recipe's tokenizer (a histogram and the share each stage would truncate), empty and
duplicate rows, n-gram overlap with the recipe's eval tasks (contamination), PII, and for preference pairs
the length bias of the answers. `data_audit:` thresholds turn findings into errors; the rest is reported.
Row indices in the report count the rows as loaded (the file's rows, unless `max_rows` subsamples them).
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from pathlib import Path

from finetune import pii
from finetune.data import iter_strings
from finetune.errors import UserError, first_line
from finetune.overlap import EvalIndex, duplicates
from finetune.recipe_types import DataSource, Recipe, Stage
from finetune.schema import COLUMN_TARGETS, DATA_AUDIT

PURPOSE = {"sft": "sft", "reward": "pairs", "dpo": "pairs",  # stage kind -> what it reads from a source
           "ppo": "prompts", "rloo": "prompts", "grpo": "prompts", "kto": "unpaired", "distill": "prompts"}


def purpose(stage: dict) -> str:
    """What a stage reads from its sources (stage_data's `purpose`): a dpo stage that samples its own pairs
    reads prompts."""
    return "prompts" if stage.get("sample_pairs") else PURPOSE[stage["kind"]]


TRUNCATING = ("sft", "reward", "dpo", "kto")  # kinds whose TRL config cuts rows to `max_length`
TRL_DEFAULT_MAX_LENGTH = 1024  # SFTConfig, DPOConfig and RewardConfig default in trl 1.12
def row_text(row: dict) -> str:
    """All text a row trains on: the strings in its standard columns (messages, prompt, chosen, ...)."""
    return "\n".join(s for col in COLUMN_TARGETS if col in row for s in iter_strings(row[col], skip=("role", "from")))


def _audited_sources(stages: list[Stage]) -> dict[str, tuple[str, str, list[Stage]]]:
    """key -> (source, purpose, consuming stages); the key is `source:purpose` when a source serves two."""
    uses: dict[tuple[str, str], list[Stage]] = {}
    for stage in stages:
        for name in stage["data"]:
            uses.setdefault((name, purpose(stage)), []).append(stage)
    per_source = Counter(name for name, _ in uses)
    return {(name if per_source[name] == 1 else f"{name}:{purpose}"): (name, purpose, stages)
            for (name, purpose), stages in uses.items()}


def _load(name: str, src: DataSource, seed: int, purpose: str):
    """The loaded rows and their normalised form, through the same normalisers training uses."""
    from finetune import data, preference

    where = f"{src['path']} (data.{name})"
    ds = data.load_source(name, src, seed)
    if purpose == "sft":
        fmt = data.detect_format(ds.column_names, src["format"], where)
        norm, dropped = data.normalise(ds, fmt, where)
        return ds, norm, dropped, data.KIND_OF_FORMAT[fmt], fmt
    if purpose == "pairs":
        norm, dropped, kind = preference.normalise_pairs(ds, where)
        return ds, norm, dropped, kind, "preference"
    if purpose == "unpaired":
        norm, dropped, kind = preference.unpaired(ds, where)
        return ds, norm, dropped, kind, "unpaired"
    norm, dropped, kind = preference.prompts_only(ds, where)
    return ds, norm, dropped, kind, "prompts"


def _template_error(tok, convs: list, start: int, generation_prompt: bool) -> UserError:
    """One line naming the first row (from `start`) the chat template fails to render, and why."""
    for i in range(start, min(start + 256, len(convs))):
        try:
            tok.apply_chat_template(convs[i], tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as e:  # noqa: BLE001
            first = first_line(e)
            roles = "/".join(m.get("role", "?") for m in convs[i])
            return UserError(f"the chat template fails on data row {i} (roles {roles}): "
                             f"{e.__class__.__name__}: {first}")
    return UserError(f"the chat template fails on data rows {start}-{start + 255}")


def _token_lengths(tok, norm, kind: str, purpose: str) -> tuple[list[int], str]:
    """Tokens per row as the trainer sees them: chat rows through the chat template, text as is."""
    chat_ok = tok.chat_template is not None

    def chat(convs: list, generation_prompt: bool = False) -> list[int]:
        if not chat_ok:  # no template: measure "role: content" lines, close enough for lengths
            return text(["\n".join(f"{m['role']}: {m['content']}" for m in c) for c in convs])
        out = []
        for i in range(0, len(convs), 256):
            try:
                enc = tok.apply_chat_template(convs[i:i + 256], tokenize=True, return_dict=True,
                                              add_generation_prompt=generation_prompt)
            except Exception:  # noqa: BLE001 - a template's own code can raise anything: find the row
                raise _template_error(tok, convs, i, generation_prompt) from None
            out += [len(ids) for ids in enc["input_ids"]]
        return out

    def text(texts: list[str]) -> list[int]:
        return [len(ids) for i in range(0, len(texts), 1024) for ids in tok(texts[i:i + 1024])["input_ids"]]

    rendering = "text" if kind != "chat" else "chat template" if chat_ok else "'role: content' lines (no template)"
    if purpose == "pairs":  # the longer of prompt+chosen and prompt+rejected is what max_length cuts
        prompts = list(norm["prompt"])
        sides = [[p + a for p, a in zip(prompts, norm[col], strict=True)] for col in ("chosen", "rejected")]
        measured = [chat(s) if kind == "chat" else text(s) for s in sides]
        return [max(a, b) for a, b in zip(*measured, strict=True)], rendering
    if purpose == "unpaired":
        pairs = zip(norm["prompt"], norm["completion"], strict=True)
        return (chat([p + c for p, c in pairs]) if kind == "chat" else text([p + c for p, c in pairs])), rendering
    if purpose == "prompts":
        prompts = list(norm["prompt"])
        return (chat(prompts, True) if kind == "chat" else text(prompts)), rendering
    if kind == "chat":
        return chat(list(norm["messages"])), rendering
    if kind == "prompt_completion":
        return text([p + c for p, c in zip(norm["prompt"], norm["completion"], strict=True)]), rendering
    return text(list(norm["text"])), rendering


def _stats(lengths: list[int]) -> dict:
    s, n = sorted(lengths), len(lengths)

    def pct(q: float) -> int:  # nearest-rank percentile
        return s[min(n - 1, max(0, math.ceil(q * n) - 1))]

    return {"count": n, "mean": round(sum(s) / n, 1), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
            "max": s[-1]}


def _truncation(stages: list[Stage], lengths: list[int]) -> list[dict]:
    """Share of rows longer than each consuming stage's max_length (or TRL's default when unset)."""
    out = []
    for st in stages:
        entry = {"stage": st["name"], "max_length": None, "note": None}
        if st["kind"] not in TRUNCATING:
            entry["note"] = f"{st['kind']} does not cut prompts to a max_length"
        elif "max_length" in st["train"] and st["train"]["max_length"] is None:
            entry["note"] = "train.max_length: null, rows are not truncated"
        else:
            limit = st["train"].get("max_length", TRL_DEFAULT_MAX_LENGTH)
            longer = sum(n > limit for n in lengths)
            entry.update(max_length=limit, rows_longer=longer, share=round(longer / len(lengths), 4))
            if "max_length" not in st["train"]:
                entry["note"] = ("train.max_length unset: compared with TRL's default "
                                 f"{TRL_DEFAULT_MAX_LENGTH}")
        out.append(entry)
    return out


def _histogram(path: Path, key: str, lengths: list[int], truncation: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    ax.hist(lengths, bins=min(50, max(5, len(set(lengths)))), color="#4c72b0")
    off_chart = []
    for t in truncation:  # a limit far beyond the data would squash the histogram into one bar
        if t["max_length"] and t["max_length"] <= 1.5 * max(lengths):
            ax.axvline(t["max_length"], color="#c44e52", linestyle="--", label=f"{t['stage']} max_length")
        elif t["max_length"]:
            off_chart.append(f"{t['stage']} max_length {t['max_length']}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.set_title(f"{key}: tokens per row ({len(lengths)} rows)")
    ax.set_xlabel("tokens" + (f" ({', '.join(off_chart)}: off the chart)" if off_chart else ""))
    ax.set_ylabel("rows")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _pii_scan(texts: list[str]) -> dict:
    by_kind: Counter = Counter()
    rows, examples = 0, []
    for i, text in enumerate(texts):
        found = pii.find_pii(text)
        rows += bool(found)
        for f in found:
            by_kind[f.kind] += 1
            if len(examples) < 10:
                examples.append({"row": i, "kind": f.kind, "masked": pii.mask(f.text)})
    return {"total": sum(by_kind.values()), "rows": rows, "by_kind": dict(by_kind), "examples": examples}


def _preference(norm, dropped: dict) -> dict:
    """Pairs whose answers are equal, and how often the chosen answer is the longer one (ties left out)."""
    def size(v) -> int:
        return len((v if isinstance(v, str) else " ".join(m["content"] for m in v)).strip())

    sides = [(size(c), size(r)) for c, r in zip(norm["chosen"], norm["rejected"], strict=True)]
    longer, shorter = sum(c > r for c, r in sides), sum(c < r for c, r in sides)
    bias = round(longer / (longer + shorter), 4) if longer + shorter else None
    flag = None
    if bias is not None and not 0.4 <= bias <= 0.6:
        style = "verbose" if bias > 0.6 else "terse"
        flag = (f"the chosen answer is the longer one in {bias:.0%} of pairs; reward models learn length, so "
                f"a policy optimised against them learns to be {style}, not right")
    return {"pairs": len(sides), "chosen_equals_rejected": dropped.get("chosen == rejected", 0),
            "chosen_longer": longer, "rejected_longer": shorter, "ties": len(sides) - longer - shorter,
            "length_bias": bias, "flag": flag}


def _audit_source(key: str, name: str, src: DataSource, seed: int, purpose: str, stages: list[Stage], tok,
                  index: EvalIndex, settings: dict, out_dir: Path) -> dict:
    from jinja2 import TemplateError

    ds, norm, dropped, kind, fmt = _load(name, src, seed, purpose)
    texts = [row_text(r) for r in ds]
    entry = {"source": name, "purpose": purpose, "path": src["path"],
             "stages": [s["name"] for s in stages], "format": fmt, "kind": kind, "rows": len(ds),
             "kept": len(norm), "dropped": dropped, "empty_rows": sum(not t.strip() for t in texts)}
    skipped = tok if isinstance(tok, str) else None  # the tokenizer could not be loaded
    if skipped is None:
        try:
            lengths, rendering = _token_lengths(tok, norm, kind, purpose)
        except TemplateError as e:  # a template that rejects some rows: training would fail on them too
            skipped = f"the chat template fails on this data ({e})"
    if skipped:
        entry.update(tokens={"status": f"skipped: {skipped}"}, truncation=[])
    else:
        entry["tokens"] = {**_stats(lengths), "rendering": rendering}
        entry["truncation"] = _truncation(stages, lengths)
        png = out_dir / f"lengths-{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}.png"
        entry["histogram"] = _histogram(png, key, lengths, entry["truncation"]).name
    entry["duplicates"] = duplicates(texts)
    entry["contamination"] = index.scan(texts, key)
    entry["pii"] = {"status": "off"} if settings["pii"] == "off" else _pii_scan(texts)
    if purpose == "pairs":
        entry["preference"] = _preference(norm, dropped)
    if purpose == "unpaired":
        entry["labels"] = _labels(norm)
    return entry


def _labels(norm) -> dict:
    """KTO's desirable / undesirable counts; KTO weights them (desirable_weight, undesirable_weight) so that
    their weighted counts are about equal (Ethayarajh et al. 2024, KTO, section 4)."""
    desirable = sum(bool(x) for x in norm["label"])
    undesirable = len(norm) - desirable
    flag = None
    if not desirable or not undesirable:
        flag = f"every row is {'desirable' if desirable else 'undesirable'}: KTO needs both kinds"
    elif not 0.25 <= desirable / len(norm) <= 0.75:
        flag = (f"{desirable} desirable vs {undesirable} undesirable rows; set desirable_weight / undesirable_weight "
                f"so that their weighted counts are within 1:1 to 4:3 (KTO paper)")
    return {"desirable": desirable, "undesirable": undesirable, "flag": flag}


def _threshold_errors(e: dict, settings: dict) -> list[str]:
    where, errors = f"data audit: data.{e['source']} ({e['path']}, {e['purpose']})", []
    limit, rows = settings["max_contaminated_rows"], e["contamination"]["rows"]
    if limit is not None and rows > limit:
        tasks = ", ".join(t for t, v in e["contamination"]["per_task"].items() if v["rows"])
        errors.append(f"{where}: {rows} rows share {settings['ngram']}-grams with eval task(s) {tasks} "
                      f"(> data_audit.max_contaminated_rows {limit}); remove them or raise the limit")
    limit, share = settings["max_duplicate_share"], e["duplicates"]["share"]
    if limit is not None and share > limit:
        errors.append(f"{where}: {share:.1%} of rows are duplicates ({e['duplicates']['exact']} exact, "
                      f"{e['duplicates']['near']} near; > data_audit.max_duplicate_share {limit:.1%})")
    if settings["pii"] == "error" and e["pii"].get("total"):
        kinds = ", ".join(f"{n} {k}" for k, n in e["pii"]["by_kind"].items())
        errors.append(f"{where}: PII found ({kinds}) in {e['pii']['rows']} rows; redact it (finetune audit "
                      f"--redact-dir DIR) or set data_audit.pii: warn")
    limit, bias = settings["max_length_bias"], (e.get("preference") or {}).get("length_bias")
    if limit is not None and bias is not None and bias > limit:
        errors.append(f"{where}: the chosen answer is longer in {bias:.1%} of pairs "
                      f"(> data_audit.max_length_bias {limit}); reward models learn length")
    return errors


def _table(report: dict) -> list[str]:
    lines = [f"{'source':<18} {'rows':>6} {'kind':<21} {'tok p50/p99/max':>16} {'>max_len':>8} {'dups':>6} "
             f"{'contam':>6} {'pii':>5} {'len-bias':>8}"]
    for key, e in report["sources"].items():
        t = e["tokens"]
        toks = f"{t['p50']}/{t['p99']}/{t['max']}" if "p50" in t else "skipped"
        shares = [x["share"] for x in e["truncation"] if "share" in x]
        bias = (e.get("preference") or {}).get("length_bias")
        cut = f"{max(shares):.1%}" if shares else "-"
        dups = e["duplicates"]["exact"] + e["duplicates"]["near"]
        lines.append(f"{key:<18} {e['rows']:>6} {e['kind'] + ' ' + e['purpose']:<21} {toks:>16} {cut:>8} "
                     f"{dups:>6} {e['contamination']['rows']:>6} {e['pii'].get('total', 'off'):>5} "
                     f"{'-' if bias is None else f'{bias:.2f}':>8}")
    return lines


def audit_recipe(recipe: Recipe, out_dir: Path, log=print, redact_dir: Path | None = None) -> dict:
    """Audit every source the recipe's stages use; write out_dir/audit.json and the histograms.

    Raises UserError (after writing the report) when a `data_audit:` threshold is exceeded. Runs whatever
    `data_audit.enabled` says: the pipeline decides whether to call it.
    """
    from finetune.manifest import write_json_atomic
    from finetune.modeling import load_tokenizer

    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {**{k: v.default for k, v in DATA_AUDIT.keys.items()}, **(recipe.get("data_audit") or {})}
    if settings["pii"] is False:  # YAML 1.1 reads a bare `pii: off` as false
        settings["pii"] = "off"
    try:
        tok = load_tokenizer(recipe["base_model"])
    except UserError as e:  # e.g. a hub tokenizer offline: the other checks need no tokenizer
        tok = str(e)
    index = EvalIndex((recipe.get("eval") or {}).get("tasks") or [], settings["ngram"])
    report = {"recipe": recipe.get("name"), "ngram": settings["ngram"], "eval_tasks": index.tasks,
              "sources": {}, "warnings": [], "errors": []}
    for key, (name, purpose, stages) in _audited_sources(recipe["stages"]).items():
        e = report["sources"][key] = _audit_source(key, name, recipe["data"][name], recipe["seed"], purpose,
                                                   stages, tok, index, settings, out_dir)
        report["warnings"] += [f"{key}: {w}" for w in (e["tokens"].get("status"), e["duplicates"].get("note"),
                                                        (e.get("preference") or {}).get("flag"),
                                                        (e.get("labels") or {}).get("flag")) if w]
        report["warnings"] += [f"{key}: stage {t['stage']}: {t['note']}"
                               for t in e["truncation"] if t["note"]]
        if settings["pii"] == "warn" and e["pii"].get("total"):
            kinds = ", ".join(f"{n} {k}" for k, n in e["pii"]["by_kind"].items())
            report["warnings"].append(f"{key}: PII found ({kinds}); examples (masked) in audit.json, "
                                      f"redacted copies with --redact-dir")
        report["errors"] += _threshold_errors(e, settings)
    report["warnings"] += [f"eval task {t}: {v['status']}"
                           for t, v in index.tasks.items() if v["status"] != "ok"]
    report["contamination_examples"] = [x for e in report["sources"].values()
                                        for x in e["contamination"]["examples"]][:20]
    if redact_dir is not None and settings["pii"] == "off":
        report["warnings"].append("no redacted copies written: data_audit.pii is off")
    elif redact_dir is not None:
        with_pii = sorted({e["source"] for e in report["sources"].values() if e["pii"].get("total")})
        report["redacted"] = pii.redact_sources(recipe["data"], with_pii, Path(redact_dir), recipe["seed"])
    report["seconds"] = round(time.time() - started, 2)
    write_json_atomic(out_dir / "audit.json", report)
    for line in _table(report) + [f"warning: {w}" for w in report["warnings"]]:
        log(line)
    for n, path in (report.get("redacted") or {}).items():
        log(f"redacted copy of data.{n}: {path}")
    if report["errors"]:
        more = len(report["errors"]) - 1
        where = out_dir / "audit.json"
        raise UserError(report["errors"][0] + (f" (+{more} more in {where})" if more else ""))
    return report


def summary(report: dict) -> dict:
    """The few numbers a run manifest keeps: per source rows, duplicates, contamination, PII, length bias."""
    return {"sources": {key: {"rows": e["rows"],
                              "duplicates": e["duplicates"]["exact"] + e["duplicates"]["near"],
                              "contaminated_rows": e["contamination"]["rows"], "pii": e["pii"].get("total"),
                              "length_bias": (e.get("preference") or {}).get("length_bias")}
                        for key, e in report["sources"].items()},
            "errors": list(report.get("errors", []))}


def add_audit_parser(sub) -> None:
    """Register `finetune audit RECIPE [key=value ...] [--output-dir DIR] [--redact-dir DIR]`."""
    p = sub.add_parser("audit", help="audit a recipe's data: lengths, duplicates, eval contamination, PII, "
                                     "preference length bias")
    p.add_argument("recipe", help="recipe .yaml file")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override recipe values")
    p.add_argument("--output-dir", help="where audit.json and the histograms go (default: the run folder's "
                   "audit/, i.e. runs/<recipe name>/audit)")
    p.add_argument("--redact-dir", help="write JSON Lines copies of the sources with PII here, findings "
                   "replaced by [EMAIL]/[PHONE]/[CARD]/[KEY] (never overwrites)")
    p.set_defaults(func=cmd_audit)


def cmd_audit(args) -> int:
    """`finetune audit RECIPE`: audit the recipe's data and print where audit.json went.

    The report goes to `--output-dir` (default: the run folder's audit/), redacted copies to `--redact-dir`.
    """
    from finetune.gguf_models import resolve_recipe
    from finetune.recipe import load_recipe

    recipe = resolve_recipe(load_recipe(args.recipe, args.overrides))
    out_dir = Path(args.output_dir) if args.output_dir else Path(recipe["output_dir"]) / "audit"
    audit_recipe(recipe, out_dir, redact_dir=Path(args.redact_dir) if args.redact_dir else None)
    print(f"audit report: {out_dir / 'audit.json'}")
    return 0

