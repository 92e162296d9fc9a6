"""Row-keeping packing (finetune.packing): the collator's layout, the same training as TRL's one-row layout
(every loss and the token count), and the SFT stage choosing it for non-flash attention kernels."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import sft_recipe

from finetune import packing
from finetune.pipeline import run_recipe
from finetune.recipe import load_recipe


def test_collator_keeps_rows_restarts_positions_and_masks_example_starts():
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    trl_collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    rows = [{"input_ids": [11, 12, 13, 21, 22], "labels": [11, 12, 13, 21, 22], "seq_lengths": [3, 2]},
            {"input_ids": [31, 32, 33], "labels": [-100, 32, 33], "seq_lengths": [3]}]
    one_row = trl_collator(rows)
    assert one_row["input_ids"].shape == (1, 8)  # TRL's layout: the batch joined into one row
    batch = packing.RowPackedCollator(trl_collator)(rows)
    assert "attention_mask" not in batch  # transformers then derives the per-example mask from position_ids
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22], [31, 32, 33, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 12, 13, -100, 22], [-100, 32, 33, -100, -100]]
    assert int(batch[packing.TOKENS]) == 8
    assert trl_collator.padding_free  # the wrapped collator is a copy: TRL's own is untouched


def test_keeps_rows_only_for_bfd_packing_without_flash_attention():
    args = SimpleNamespace(packing=True, packing_strategy="bfd")
    assert packing.keeps_rows(args, "sdpa", padding_free_set=False)
    assert packing.keeps_rows(args, "eager", padding_free_set=False)
    assert not packing.keeps_rows(args, "flash_attention_2", padding_free_set=False)
    assert not packing.keeps_rows(args, "kernels-community/flash-attn3", padding_free_set=False)
    assert not packing.keeps_rows(args, "sdpa", padding_free_set=True)  # train.padding_free asks for TRL's layout
    assert not packing.keeps_rows(SimpleNamespace(packing=True, packing_strategy="wrapped"), "sdpa", False)
    assert not packing.keeps_rows(SimpleNamespace(packing=False, packing_strategy="bfd"), "sdpa", False)


@pytest.mark.numerics
def test_rows_train_exactly_like_trls_one_row_layout(tiny_llama, tmp_path):
    """Same packed examples, same loss normalisation: every logged loss, grad norm and token count equal.

    The two layouts run different matmul and attention shapes, so their float sums round differently. The
    learning rate is 0 so that every step scores its batch with the same weights: with Adam at 1e-3 a 1e-7
    rounding difference in a near-zero gradient flips the sign of that weight's update, and by step 2 the
    losses differed by 2e-4 on one AMD AVX-512 machine and not on another. Measured with lr 0 (2026-11-29,
    AMD EPYC, native AVX-512 and AVX2 kernel paths): the losses agree to the last printed digit, the grad
    norms to 3.1e-5 relative at most. The tolerances (1e-5 and 1e-3) keep 30x margin over that and still
    fail when the example-start labels are left in: that moved the first loss by 1.4e-4 relative and its
    grad norm by 4.5e-3.
    """
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    texts = [" ".join(["the river runs to the sea"] * n) for n in (2, 9, 4, 14, 1, 6, 11, 3, 7, 5, 8, 12)]
    dataset = datasets.Dataset.from_list([{"text": t} for t in texts])
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    logs = {}
    for name, cls in (("one_row", SFTTrainer), ("rows", packing.row_packed_trainer_class())):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation="sdpa")
        config = SFTConfig(output_dir=str(tmp_path / name), packing=True, max_length=64, max_steps=3,
                           per_device_train_batch_size=3, learning_rate=0.0, logging_steps=1, use_cpu=True,
                           report_to="none", save_strategy="no", seed=0, data_seed=0, disable_tqdm=True)
        trainer = cls(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        if name == "rows":
            batch = next(iter(trainer.get_train_dataloader()))
            assert batch["input_ids"].shape[0] == 3 and batch["input_ids"].shape[1] <= 64
        trainer.train()
        logs[name] = [r for r in trainer.state.log_history if "loss" in r]
    assert len(logs["rows"]) == len(logs["one_row"]) == 3
    for ours, trl_row in zip(logs["rows"], logs["one_row"], strict=True):
        assert ours["loss"] == pytest.approx(trl_row["loss"], rel=1e-5)
        assert ours["grad_norm"] == pytest.approx(trl_row["grad_norm"], rel=1e-3)
        assert ours["num_tokens"] == trl_row["num_tokens"]  # real tokens, not one row's length


def test_sft_stage_keeps_rows_with_sdpa(tiny_llama, write_recipe, tmp_path, capsys):
    recipe = sft_recipe(tiny_llama, train={"packing": True, "max_steps": 2})
    recipe["base_model"]["attn_implementation"] = "sdpa"
    run_recipe(load_recipe(write_recipe(recipe)), output_dir=str(tmp_path / "run"))
    assert "packing: rows of <= 128 tokens kept apart" in capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "run" / "sft" / "metrics.jsonl").read_text().splitlines()]
    tokens = [r["num_tokens"] for r in rows if "num_tokens" in r]
    assert len(tokens) == 2 and 0 < tokens[0] < tokens[1] <= 2 * 8 * 128
