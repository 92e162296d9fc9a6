"""A reward model is read where it was trained: at the end-of-sequence token that ends the answer.

TRL's PPOTrainer scores a sampled response at its end-of-sequence token; TRL's RewardTrainer, left to render a
conversation itself, trains on the whole chat template, which under ChatML puts a newline after `<|im_end|>`.
The reward stage now hands TRL texts cut after that token, and GRPO/RLOO read the model the same way. These
tests pin the invariant with TRL's own reading code (`trl.experimental.utils.get_reward`); the first one fails
on the code before the change, whose training rows ended with the newline.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl.experimental.utils import get_reward

from finetune.rewards import RewardModelReward, end_at_eos
from finetune.stages.ppo import tokenize_prompts
from finetune.stages.reward import pair_texts, tokenized_pairs

PROMPT = [{"role": "user", "content": "Context: Mara has a pet cat. Hugo likes to eat rice.\n"
                                      "Question: What pet does Mara have?"}]
ANSWERS = ("cat", "Mara has a pet cat.")


@pytest.mark.parametrize(("text", "eos", "expected"), [
    ("<|im_start|>assistant\ncat<|im_end|>\n", "<|im_end|>", "<|im_start|>assistant\ncat<|im_end|>"),
    ("a<|im_end|>\nb<|im_end|>\n", "<|im_end|>", "a<|im_end|>\nb<|im_end|>"),  # the last one, not the first
    ("[INST] q [/INST] a</s>", "</s>", "[INST] q [/INST] a</s>"),  # nothing after it: unchanged
    ("no end token here", "</s>", "no end token here"),
    ("a<|im_end|>\n", None, "a<|im_end|>\n"),
])
def test_end_at_eos_cuts_after_the_last_end_token(text, eos, expected):
    assert end_at_eos(text, eos) == expected


def test_reward_training_ppo_and_grpo_read_the_reward_model_at_the_same_token(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    assert tokenizer.apply_chat_template(PROMPT, tokenize=False).endswith("<|im_end|>\n")  # ChatML's newline
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    pairs = Dataset.from_dict({"prompt": [PROMPT], "chosen": [[{"role": "assistant", "content": ANSWERS[0]}]],
                               "rejected": [[{"role": "assistant", "content": ANSWERS[1]}]]})
    trained = tokenized_pairs(pairs, tokenizer, "chat")[0]
    query = tokenize_prompts(Dataset.from_dict({"prompt": [PROMPT]}), tokenizer, "chat")[0]["input_ids"]
    grpo = RewardModelReward(model, tokenizer)
    for column, answer in zip(("chosen_ids", "rejected_ids"), ANSWERS, strict=True):
        # What PPO scores: the query, the sampled answer up to its end-of-sequence token, then padding.
        response = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert trained[column] == query + response, "the reward model trains on the tokens PPO scores"
        padded = torch.tensor([query + response + [tokenizer.pad_token_id] * 3])
        _, ppo_score, _ = get_reward(model, padded, tokenizer.pad_token_id, len(query))
        grpo_score = grpo([PROMPT], [[{"role": "assistant", "content": answer}]])[0]
        assert grpo_score == pytest.approx(ppo_score.item(), abs=1e-5)
        # ... and a reading at the template's trailing newline is a different reading (what was trained before).
        newline = tokenizer(tokenizer.apply_chat_template(PROMPT + [{"role": "assistant", "content": answer}],
                                                          tokenize=False), return_tensors="pt",
                            add_special_tokens=False)
        with torch.no_grad():
            assert abs(model(**newline).logits[0, 0].item() - ppo_score.item()) > 1e-4


def test_text_pairs_end_with_the_end_token_as_trl_appends_it(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    eos = tokenizer.eos_token
    pairs = Dataset.from_dict({"prompt": ["Q: pet? A: "], "chosen": ["cat"], "rejected": ["dog" + eos]})
    chosen, rejected = pair_texts(pairs, tokenizer, "text")
    assert chosen == ["Q: pet? A: cat" + tokenizer.eos_token] and rejected == ["Q: pet? A: dog" + tokenizer.eos_token]
    row = tokenized_pairs(pairs, tokenizer, "text")[0]
    assert row["chosen_ids"] == tokenizer(chosen[0])["input_ids"]  # with the special tokens TRL's tokenising adds
