"""DPO that projects onto the vocabulary only where the loss reads: from the position before the completion on.

TRL's DPOTrainer (trl 1.12) runs the language-model head on every position of prompt + completion, for the
policy and for the reference, and then reads the log-probabilities of the completion tokens only. A SQuAD pair's
prompt is the paragraph and its question (200-700 tokens) and its completion the answer (a few tokens), so nearly
all of those logits are thrown away. On SmolLM2-135M (576-wide hidden states, 49,152-entry vocabulary) the head
is about a fifth of a forward pass's FLOPs, and its bf16 logits for a 450-token pair (2 x 450 x 49,152 values,
88 MB, plus the fp32 log-softmax TRL takes of them) are kept for the backward pass. TRL's DPOConfig had this
cut as `use_logits_to_keep` before its 1.x rewrite of the trainer (axolotl exposes it as
`dpo_use_logits_to_keep`); 1.12 has no such option.

`CompletionLogitsDPOTrainer` hands TRL's own loss the batch cut to the columns from one before the first
completion token to the end, while the model still reads the whole sequences: a forward pre-hook on the causal
language model swaps the full input ids and attention mask back in and asks for `logits_to_keep` = the number
of kept columns (transformers' argument: the head runs on the last `logits_to_keep` positions only). The
log-probabilities, losses and logged metrics are TRL's, from the same numbers up to float rounding; TRL's
`num_tokens` is kept counting the whole sequences.
"""

from __future__ import annotations

import inspect

import torch
from trl import DPOTrainer

PRECOMPUTED = ("ref_chosen_logps", "ref_rejected_logps")  # batch keys of precompute_ref_log_probs: not model inputs


def kept_columns(completion_mask: torch.Tensor) -> int:
    """How many trailing columns of a (batch, length) DPO batch the loss reads: from one before the first
    completion token (whose logits predict it) to the end; the whole length when no row has a completion token or
    it starts at column 0. `completion_mask` is TRL's 0/1 mask of completion positions, right-padded."""
    columns = completion_mask.any(dim=0).nonzero()
    if len(columns) == 0:
        return completion_mask.shape[1]
    return completion_mask.shape[1] - max(int(columns[0]) - 1, 0)


def _causal_lms(*models) -> list[torch.nn.Module]:
    """The transformers causal LMs inside `models` (a PeftModel's base model, a model as it is; None skipped),
    each once; only those whose forward takes `logits_to_keep`."""
    found = []
    for model in models:
        if model is None:
            continue
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if "logits_to_keep" in inspect.signature(base.forward).parameters and all(base is not f for f in found):
            found.append(base)
    return found


class CompletionLogitsDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer with the language-model head run only on the completion's positions (module docstring).

    Same arguments and results as DPOTrainer. Falls back to TRL's full computation where the cut saves nothing
    (the completion starts at column 0 or 1), where a model's forward has no `logits_to_keep`, and for batches
    with other model inputs than ids and masks (images).
    """

    def _compute_loss(self, model, inputs, return_outputs):
        ids, mask, completion = inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
        keep = kept_columns(completion)
        lms = _causal_lms(self.accelerator.unwrap_model(model), self.model, self.ref_model)
        plain = set(inputs) <= {"input_ids", "attention_mask", "completion_mask", *PRECOMPUTED}
        if keep == ids.shape[1] or not lms or not plain:
            return super()._compute_loss(model, inputs, return_outputs)

        def whole_sequences(module, args, kwargs):
            """Give the model the whole sequences TRL's cut batch came from, and ask for `keep` positions."""
            return args, {**kwargs, "input_ids": ids, "attention_mask": mask, "logits_to_keep": keep}

        cut = {**inputs, "input_ids": ids[:, -keep:], "attention_mask": mask[:, -keep:],
               "completion_mask": completion[:, -keep:]}
        hooks = [lm.register_forward_pre_hook(whole_sequences, with_kwargs=True) for lm in lms]
        try:
            result = super()._compute_loss(model, cut, return_outputs)
        finally:
            for hook in hooks:
                hook.remove()
        if self.model.training:  # TRL counted the cut batch's tokens; count the prompts' too, as it would
            skipped = self.accelerator.gather_for_metrics(mask[:, :-keep].sum()).sum().item()
            self._total_train_tokens += skipped
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return result
