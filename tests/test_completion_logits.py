"""DPO with the language-model head on the completion's positions only (finetune.completion_logits) computes
TRL's DPOTrainer's loss, gradients and metrics, on a real tiny Llama and real TRL, with fewer head rows."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import DATA

from finetune.completion_logits import CompletionLogitsDPOTrainer, kept_columns


def test_kept_columns_start_one_before_the_earliest_completion_token():
    mask = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 0],
                         [0, 0, 0, 1, 1, 1, 1, 1]])
    assert kept_columns(mask) == 6  # columns 2-7: column 2's logits predict the token at column 3
    assert kept_columns(torch.zeros(2, 8, dtype=torch.long)) == 8
    assert kept_columns(torch.tensor([[1, 1, 0]])) == 3
    assert kept_columns(torch.tensor([[0, 1, 1]])) == 3


def _trainers(tiny_llama, tmp_path, peft: bool):
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    pairs = load_dataset("json", data_files=str(DATA / "tiny_prefs.jsonl"), split="train").select(range(8))
    trainers = []
    for cls in (DPOTrainer, CompletionLogitsDPOTrainer):
        torch.manual_seed(0)
        args = DPOConfig(output_dir=str(tmp_path / cls.__name__), per_device_train_batch_size=4, max_length=256,
                         loss_type=["sigmoid", "sft"], beta=0.1, report_to=[], bf16=False, use_cpu=True,
                         logging_steps=1)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
        # init_lora_weights=False: a nonzero B, so the policy differs from its reference
        config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                            init_lora_weights=False) if peft else None
        trainers.append(cls(model=model, ref_model=None, args=args, train_dataset=pairs, processing_class=tok,
                            peft_config=config))
    return trainers


@pytest.mark.parametrize("peft", [True, False], ids=["lora", "full"])
def test_the_cut_computes_trls_loss_gradients_and_metrics_with_fewer_head_rows(tiny_llama, tmp_path, peft):
    plain, cut = _trainers(tiny_llama, tmp_path, peft)
    batch = next(iter(plain.get_train_dataloader()))
    keep = kept_columns(batch["completion_mask"])
    assert keep < batch["input_ids"].shape[1] - 10, "the tiny pairs' prompts are long enough to cut"
    results = {}
    for name, trainer in (("plain", plain), ("cut", cut)):
        head_rows = []
        heads = [m.get_output_embeddings() for m in (trainer.accelerator.unwrap_model(trainer.model),
                                                      trainer.ref_model) if m is not None]  # full: a reference copy
        hooks = [h.register_forward_hook(lambda m, args, out, rows=head_rows: rows.append(args[0].shape[1]))
                 for h in heads]
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, copy.deepcopy(batch))
        loss.backward()
        for hook in hooks:
            hook.remove()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
        results[name] = (loss.item(), grads, metrics, head_rows)
    (loss, grads, metrics, rows), (cut_loss, cut_grads, cut_metrics, cut_rows) = results["plain"], results["cut"]
    width = batch["input_ids"].shape[1]
    assert rows == [width, width] and cut_rows == [keep, keep], "policy and reference heads: whole vs cut"
    assert cut_loss == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert grads.keys() == cut_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(cut_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert cut_metrics.keys() == metrics.keys()
    assert cut_metrics["num_tokens"] == metrics["num_tokens"] == batch["attention_mask"].sum().item()
    for key, value in metrics.items():
        assert cut_metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_a_batch_whose_completion_starts_at_once_is_left_to_trl(tiny_llama, tmp_path):
    _, cut = _trainers(tiny_llama, tmp_path, peft=True)
    batch = next(iter(cut.get_train_dataloader()))
    batch["completion_mask"][:, :2] = 1  # nothing to cut: the first column's logits are read
    rows = []
    lm_head = cut.accelerator.unwrap_model(cut.model).get_output_embeddings()
    hook = lm_head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[1]))
    cut.compute_loss(cut.model, batch)
    hook.remove()
    assert rows == [batch["input_ids"].shape[1]] * 2
