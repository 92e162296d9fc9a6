"""`finetune merge` and `finetune chat`: ship an adapter as a full model, or talk to any stage's output."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from finetune.errors import UserError

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def cmd_merge(args) -> int:
    """`finetune merge SOURCE OUT`: merge an adapter (or a run's latest adapter) into its base as safetensors.

    For a QLoRA adapter, also prints how far the merged full-precision model's logits are from the 4-bit
    model that was trained. Raises UserError when SOURCE resolves to a full model rather than an adapter (and,
    through the helpers, when SOURCE is being written by a live run, is not a model/stage/run folder, or OUT
    is not empty).
    """
    from finetune.artifacts import merge_adapter, resolve_target
    from finetune.runlock import refuse_if_being_written

    refuse_if_being_written(args.source)
    model_dir, manifest = resolve_target(args.source)
    if not (model_dir / "adapter_config.json").exists():
        raise UserError(f"{args.source}: holds a full model, not an adapter; nothing to merge")
    out = merge_adapter(model_dir, args.out)
    print(f"merged {model_dir} into its base -> {out} (safetensors)")
    quant = ((manifest or {}).get("artifact") or {}).get("quantization")
    if quant:
        from finetune.artifacts import quantised_merge_gap

        gap = quantised_merge_gap(model_dir, out, quant)
        print(f"note: this adapter was trained on a {quant['bits']}-bit base, and the merged full-precision model "
              f"is not the model that was trained and evaluated: on a {gap['tokens']}-token probe its logits "
              f"differ by up to {gap['max_abs']:.3g} and it picks the same next token at "
              f"{100 * gap['top1_agree']:.0f}% of positions; evaluate the merged model before shipping it")
    return 0


def reply(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase, history: list[dict],
          max_new_tokens: int, temperature: float) -> str:
    """One assistant turn for the conversation so far, through the chat template.

    `temperature` 0 decodes greedily; above 0 it samples. Returns the decoded new tokens, stripped. Raises
    UserError when the tokenizer has no chat template.
    """
    import torch

    if not tokenizer.chat_template:
        raise UserError("this tokenizer has no chat template; `finetune chat` needs one")
    enc = tokenizer.apply_chat_template(history, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    sample = temperature > 0
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample,
                             temperature=temperature if sample else None, top_p=None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def cmd_chat(args) -> int:
    """`finetune chat MODEL`: answer `--prompt` once, or hold an interactive chat on stdin until an empty line.

    `/reset` clears the history (keeping the `--system` message).
    """
    from finetune.artifacts import resolve_target
    from finetune.eval_models import load_for_eval

    model_dir, manifest = resolve_target(args.model)
    model, tokenizer = load_for_eval(model_dir, manifest)
    history = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        print(reply(model, tokenizer, [*history, {"role": "user", "content": args.prompt}], args.max_new_tokens,
                    args.temperature))
        return 0
    print(f"chatting with {model_dir} — empty line or Ctrl-D to quit, /reset to start over", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        if line == "/reset":
            history = history[:1] if args.system else []
            continue
        history.append({"role": "user", "content": line})
        answer = reply(model, tokenizer, history, args.max_new_tokens, args.temperature)
        history.append({"role": "assistant", "content": answer})
        print(f"model> {answer}")
    return 0


def add_parsers(sub) -> None:
    """Add the `merge` and `chat` subcommands to the `finetune` argparse subparsers `sub`."""
    p = sub.add_parser("merge", help="merge an adapter (or a run's latest adapter) into its base as safetensors")
    p.add_argument("source", help="adapter folder, stage folder or run folder")
    p.add_argument("out", help="new folder for the merged model")
    p.set_defaults(func=cmd_merge)
    p = sub.add_parser("chat", help="chat with a model, adapter, stage or run (latest stage)")
    p.add_argument("model")
    p.add_argument("--prompt", help="ask one question, print the answer and exit")
    p.add_argument("--system", help="system message")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.set_defaults(func=cmd_chat)
