"""Packed SFT batches that keep their rows, for attention kernels other than flash-attention.

TRL's `bfd` packing fills rows of `max_length` tokens with whole examples, then its padding-free collator joins
the whole batch into ONE row whose position ids restart at every example. Flash-attention varlen kernels skip
the attention between examples; every other kernel (sdpa and eager: the default wherever flash-attn is not
installed, and always on CPU) gets a dense block-diagonal mask over that row, so a step's attention work
grows with (batch x max_length)^2 and packing ends up slower than padding (benchmark B2).

`RowPackedSFTTrainer` keeps the packed rows apart instead: a [batch, longest row] tensor with the same
restarting position ids and no attention mask, from which transformers builds a block-diagonal mask per row.
The work is then batch x max_length^2, the examples stay isolated (B2's leak check), and the loss is TRL's:
the first token of every example is not predicted from the one before it. The logged `num_tokens` counts the
real tokens, as TRL's does.
"""

from __future__ import annotations

import dataclasses

TOKENS = "num_packed_tokens"  # the batch's real-token count, taken out before the model sees the batch


def keeps_rows(args, attn_implementation: str | None, padding_free_set: bool) -> bool:
    """Whether the SFT stage should keep packed rows apart: bfd packing, a kernel outside the flash-attention
    variants TRL's one-row layout is made for, and no explicit `train.padding_free` (which asks for it)."""
    from trl.trainer.sft_trainer import FLASH_ATTENTION_VARIANTS

    return (bool(args.packing) and args.packing_strategy in ("bfd", "bfd_split") and not padding_free_set
            and attn_implementation not in FLASH_ATTENTION_VARIANTS)


class RowPackedCollator:
    """TRL's collator without the flattening: rows padded to the longest, position ids restarting per example."""

    def __init__(self, trl_collator):
        self.inner = dataclasses.replace(trl_collator, padding_free=False, return_position_ids=True)

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.inner(examples)
        real = batch.pop("attention_mask")
        # Padding gets position 0 too (one-token "examples" that attend only to themselves), so every example
        # start (position 0) and every pad is out of the loss: no token is predicted across an example boundary.
        batch["labels"][batch["position_ids"] == 0] = -100
        batch[TOKENS] = real.sum()
        return batch


def row_packed_trainer_class():
    """SFTTrainer with the row-keeping collator (a function, so importing this module does not import trl)."""
    from trl import SFTTrainer

    class RowPackedSFTTrainer(SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)  # TRL refuses a custom collator with padding-free: swap it after
            self.data_collator = RowPackedCollator(self.data_collator)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            real = inputs.pop(TOKENS, None)
            counted = self._total_train_tokens
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if real is not None and self.model.training:  # TRL counted position_ids.size(1): one row's length
                self._total_train_tokens = counted + self.accelerator.gather_for_metrics(real).sum().item()
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return result

    return RowPackedSFTTrainer
