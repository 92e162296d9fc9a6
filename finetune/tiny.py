"""Build tiny causal LMs offline: a BPE tokenizer trained on the project's own text and random weights.

The result is saved with `save_pretrained` and is loaded back with `AutoModelForCausalLM` /
`AutoTokenizer.from_pretrained`, the same code that loads a hub model, so tests exercise the real path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.data import iter_strings
from finetune.errors import UserError, first_line

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedTokenizerBase, PreTrainedTokenizerFast

ARCHITECTURES = ("llama", "qwen2", "mistral")
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
CHAT_TEMPLATE = Path(__file__).with_name("templates") / "chatml.jinja"
# Only training text: evaluation data must not shape the vocabulary.
DEFAULT_CORPUS_DIRS = ("recipes/data",)


def corpus_files(paths: Iterable[str]) -> list[Path]:
    """Text, JSON, JSONL, CSV and Markdown files under the given files/folders, sorted for a reproducible
    tokenizer (a file named directly is taken whatever its suffix). Raises UserError naming a path that does
    not exist, or when no corpus file is found at all."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".json", ".jsonl", ".csv", ".md"))
        elif p.is_file():
            found.append(p)
        else:
            raise UserError(f"{p}: corpus file or folder not found")
    if not found:
        raise UserError(f"no corpus text found in {', '.join(map(str, paths))}; pass --corpus FILE")
    return found




def corpus_lines(files: list[Path]) -> Iterator[str]:
    """Yield the natural-language text of the corpus files (the strings inside JSON, not its syntax)."""
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        if f.suffix == ".json":
            try:
                yield from iter_strings(json.loads(text))
                continue
            except json.JSONDecodeError:
                pass
        for line in text.splitlines():
            if f.suffix == ".jsonl" and line.strip():
                try:
                    yield from iter_strings(json.loads(line))
                    continue
                except json.JSONDecodeError:
                    pass
            yield line


def build_tokenizer(files: list[Path], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with a ChatML chat template.

    Unlike GPT-2-style pre-tokenisation (where "Ġnurse" after a space and "nurse" after a newline are
    different tokens), every whitespace and punctuation character is isolated first, so a word has one
    tokenisation wherever it stands. A tiny model can then learn to copy a span from the context into its
    answer in about a minute, which it cannot when the answer's tokens differ from the context's. Decoding is
    still exact, byte for byte.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\w+ ?|[^\w\s]|\s"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus_lines(files), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>", bos_token=None,
        unk_token=None, additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
        model_max_length=1024, clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE.read_text()
    return hf


def model_config(arch: str, vocab_size: int, tokenizer: PreTrainedTokenizerBase, hidden: int = 128, layers: int = 2,
                 heads: int = 4, kv_heads: int = 2, intermediate: int = 256,
                 max_positions: int = 1024) -> PreTrainedConfig:
    """A small config of a real architecture; ids of the special tokens come from the tokenizer.

    Word embeddings are tied, there is no BOS token, and Mistral gets no sliding window. Raises UserError
    when `arch` is not one of ARCHITECTURES.
    """
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=True,  # as small real models do; lets a tiny model copy tokens it never emitted
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=None)
    raise UserError(f"unknown tiny architecture '{arch}'; choose one of {', '.join(ARCHITECTURES)}")


def build_tiny(out_dir: str | Path, arch: str = "llama", corpus: Iterable[str] = DEFAULT_CORPUS_DIRS,
               vocab_size: int = 4096, seed: int = 0, overwrite: bool = False, tokenizer: str | None = None,
               **sizes) -> Path:
    """Build and save a tiny model + tokenizer in `out_dir`; returns the folder.

    `tokenizer`: a model folder whose tokenizer (and chat template) the tiny model takes instead of training
    one, e.g. a distillation student that must share its teacher's vocabulary; `corpus` and `vocab_size`
    are then unused. Raises UserError for an unknown architecture, a folder in the way, or an unreadable
    tokenizer folder.
    """
    out = Path(out_dir)
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown tiny architecture '{arch}'; choose one of {', '.join(ARCHITECTURES)}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        if not (out / "tiny.json").exists():
            raise UserError(f"{out}: folder exists and was not made by `finetune tiny`; choose another --out")
        raise UserError(f"{out}: a tiny model is already there; pass --overwrite to rebuild it")
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if tokenizer:
        from transformers import AutoTokenizer

        if not Path(tokenizer).is_dir():
            raise UserError(f"--tokenizer {tokenizer}: no such model folder")
        try:
            source, tokenizer = tokenizer, AutoTokenizer.from_pretrained(tokenizer)
        except (OSError, ValueError) as e:
            raise UserError(f"--tokenizer {tokenizer}: cannot load a tokenizer there ({first_line(e)})") from None
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        files = []
        try:  # a model's embedding table may be padded beyond its tokenizer (Qwen2.5: 151936 rows, 151665 tokens)
            padded = json.loads((Path(source) / "config.json").read_text()).get("vocab_size") or 0
        except (OSError, ValueError):
            padded = 0
    else:
        source, files, padded = None, corpus_files(corpus), 0
        tokenizer = build_tokenizer(files, vocab_size)
    config = model_config(arch, max(len(tokenizer), padded), tokenizer, **sizes)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {"arch": arch, "vocab_size": config.vocab_size, "seed": seed, "corpus": [str(f) for f in files],
            **({"tokenizer": source} if source else {}),
            "parameters": sum(p.numel() for p in model.parameters()), **sizes}
    (out / "tiny.json").write_text(json.dumps(info, indent=2) + "\n")
    return out
