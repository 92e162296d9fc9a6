"""Load the tokenizer and model a stage trains: dtype, attention kernel, 4/8-bit quantisation, adapters."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from finetune import userfiles
from finetune.errors import UserError, first_line
from finetune.schema import BASE_MODEL

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

# base_model keys a folder found on its own (an adapter's base, a model under eval) is loaded with: the
# schema's own defaults, so the two cannot drift apart.
BASE_MODEL_DEFAULTS = {key: spec.default for key, spec in BASE_MODEL.keys.items() if key != "path"}
DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _hub_error(what: str, path: str, err: Exception) -> UserError:
    first = first_line(err)
    if not Path(path).exists():
        return UserError(f"base_model.{what} '{path}': not a local folder and could not be fetched from the hub "
                         f"({first[:160]})")
    return UserError(f"base_model.{what} '{path}': cannot load ({first[:200]})")


def load_tokenizer(base_model: dict, source: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of `source` (default: the recipe's tokenizer or model), with a pad token and chat template.

    `base_model.chat_template`, when set, replaces the tokenizer's template; a tokenizer without a pad token
    gets its EOS token as pad. Raises UserError naming the path when the tokenizer cannot be loaded (locally
    or from the hub), when the chat template file is unreadable or invalid, or when the tokenizer has neither a
    pad nor an EOS token.
    """
    from transformers import AutoTokenizer

    path = source or base_model["tokenizer"] or base_model["path"]
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=None if source else base_model["revision"],
                                            trust_remote_code=base_model["trust_remote_code"])
    except (OSError, ValueError) as e:
        raise _hub_error("tokenizer" if base_model["tokenizer"] else "path", path, e) from None
    if base_model["chat_template"]:
        tok.chat_template = userfiles.read_chat_template(base_model["chat_template"])
    if tok.pad_token is None:
        # Padding positions are masked by attention and labels, so reusing EOS as pad is safe in TRL's collators.
        if tok.eos_token is None:
            raise UserError(f"base_model.path '{path}': the tokenizer has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    return tok


def quantization_config(quant: dict | None) -> BitsAndBytesConfig | None:
    """A bitsandbytes config for QLoRA (4-bit NF4/FP4, double quantisation) or LLM.int8."""
    if not quant:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if quant["bits"] == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quant["quant_type"],
        bnb_4bit_use_double_quant=quant["double_quant"],
        bnb_4bit_compute_dtype=getattr(torch, quant["compute_dtype"]),
    )


def load_base_model(base_model: dict, quant: dict | None = None, path: str | None = None,
                    auto_class: str = "AutoModelForCausalLM", **extra) -> PreTrainedModel:
    """Load the pretrained model (optionally quantised) exactly as from the hub: `from_pretrained`."""
    import torch
    import transformers

    cls = getattr(transformers, auto_class)
    kwargs = dict(revision=base_model["revision"] if path is None else None,
                  trust_remote_code=base_model["trust_remote_code"], **extra)
    dtype = base_model["dtype"]
    kwargs["dtype"] = "auto" if dtype == "auto" else getattr(torch, DTYPES[dtype])
    if base_model["attn_implementation"]:
        kwargs["attn_implementation"] = base_model["attn_implementation"]
    qconfig = quantization_config(quant)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        if torch.cuda.is_available():
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().local_process_index}
    source = path or base_model["path"]
    try:
        model = cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise _hub_error("path", source, e) from None
    if qconfig is not None:
        _release_checkpoint(model)
        _one_4bit_kernel(model)
    contiguous_head_input(model)
    return model


def contiguous_first_input(module: torch.nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the module's first input, made contiguous (a no-op when it already is)."""
    return (args[0].contiguous(), *args[1:]) if args and hasattr(args[0], "contiguous") else args


def contiguous_head_input(model: torch.nn.Module) -> None:
    """Give the LM head a contiguous input, so generation's first step does not copy the head's weight per row.

    `generate()` computes the prompt's logits for its last position only (`logits_to_keep=1`): the head reads
    `hidden[:, -1:, :]`, a (rows, 1, hidden) view that is not contiguous. For such an input and a weight that
    does not require grad (a frozen base under an adapter: the generations of LoRA's GRPO and PPO, and every
    evaluated model) torch's matmul does not fold the rows into one matrix product: it expands the (hidden,
    vocab) weight to one copy per row and runs a batched product (pytorch/pytorch#151934). For SmolLM2
    (vocabulary 49,152) in bf16 at 16 rows that copies 0.9 GB and took 1.19 s, against 8.7 ms on a contiguous
    input (the same bits in bf16; in fp32 4x slower, the last bits differ): evaluation ran 1.36-1.49x faster
    with the hook, with the same answers. `contiguous_first_input` costs nothing where the input is contiguous already
    (training's full logits). Side effect: registers a forward pre-hook on `model.get_output_embeddings()`
    (when the model has one).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and contiguous_first_input not in head._forward_pre_hooks.values():
        head.register_forward_pre_hook(contiguous_first_input)


def _one_4bit_kernel(model: PreTrainedModel) -> None:
    """Make 4-bit layers compute the same way in training and inference, on every CPU.

    On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a Linear4bit's weight the first time it runs in
    eval mode without gradients: the absmax scales are rounded to bf16 and a bf16 kernel takes over. The
    repacking is undone lossily (the scales are quantised again) as soon as the model is moved or its state
    dict is read, which peft does when it loads an adapter. So the same QLoRA model answered differently
    after an evaluation than while training (logits off by up to 0.014 on the tiny test model), and only on
    such CPUs. With the repacking off, every CPU dequantises and multiplies as in training.
    """
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _release_checkpoint(model: PreTrainedModel) -> None:
    """Copy a quantised model's unquantised CPU tensors out of the memory-mapped checkpoint.

    transformers keeps same-dtype tensors (embeddings, norms) as zero-copy views into the mmapped safetensors
    file. After quantisation those few views hold the whole file mapped, and its pages, all read once for
    quantising, stay resident: about 300 MiB more RSS on a 135M-parameter model (benchmark B3). Copies let
    the mapping go. Tied parameters stay tied: each Parameter object is copied once, in place.
    """
    from bitsandbytes.nn import Int8Params, Params4bit

    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "cpu" and not isinstance(tensor, (Params4bit, Int8Params)):
            tensor.data = tensor.data.clone()


def peft_config(peft: dict, task_type: str = "CAUSAL_LM", tokenizer_path: str | None = None) -> PeftConfig:
    """The peft config of the recipe's `peft:` block.

    lora / dora / rslora: a LoraConfig (`all-linear` targets by default). prompt_tuning (Lester et al. 2021),
    p_tuning (Liu et al. 2021, an MLP prompt encoder) and prefix_tuning (Li & Liang 2021, virtual key/values in
    every layer): the matching prompt-learning config with `num_virtual_tokens` (default 20). prompt_tuning
    with `init_text` starts from that text's token embeddings, read with the tokenizer at `tokenizer_path`.
    """
    from peft import LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig

    virtual = peft.get("num_virtual_tokens") or 20
    if peft["method"] == "prompt_tuning":
        text = peft.get("init_text")
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=virtual,
                                  prompt_tuning_init="TEXT" if text else "RANDOM", prompt_tuning_init_text=text,
                                  tokenizer_name_or_path=tokenizer_path if text else None)
    if peft["method"] == "p_tuning":
        return PromptEncoderConfig(task_type=task_type, num_virtual_tokens=virtual,
                                   encoder_hidden_size=peft.get("encoder_hidden_size"))
    if peft["method"] == "prefix_tuning":
        return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=virtual)
    return LoraConfig(
        r=peft["r"], lora_alpha=peft["alpha"], lora_dropout=peft["dropout"],
        target_modules=peft["target_modules"], modules_to_save=peft["modules_to_save"],
        use_dora=peft["method"] == "dora", use_rslora=peft["method"] == "rslora", task_type=task_type,
    )


def prepare_trainable(model: PreTrainedModel, peft: dict | None, quant: dict | None, gradient_checkpointing: bool,
                      task_type: str = "CAUSAL_LM") -> PreTrainedModel | PeftModel:
    """Wrap the model for training: k-bit preparation for QLoRA, then the adapter; full finetuning otherwise.

    Raises UserError when prompt tuning's `peft.init_text` needs a tokenizer beside the model and none can be
    read.
    """
    if quant:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if peft:
        from peft import get_peft_model

        try:
            model = get_peft_model(model, peft_config(peft, task_type, getattr(model, "name_or_path", None)))
        except (OSError, ValueError) as e:  # prompt tuning's init_text reads the tokenizer from the model's folder
            if not peft.get("init_text"):  # (transformers 5 says ValueError when the folder has no tokenizer)
                raise
            raise UserError(f"peft.init_text: cannot read a tokenizer beside the model to embed the text "
                            f"({first_line(e)}); drop init_text or keep the tokenizer with the model") from None
    return model


def load_reward_model(path: str | Path, base_model: dict, tokenizer: PreTrainedTokenizerBase | None = None
                      ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A trained reward model folder -> (AutoModelForSequenceClassification with one label, in eval mode,
    tokenizer). The pad token id is set on the config: a sequence classifier finds each row's last token by it.
    Raises UserError when the folder cannot be loaded."""
    model = load_base_model({**base_model, "path": str(path)}, None, path=str(path),
                            auto_class="AutoModelForSequenceClassification", num_labels=1)
    tokenizer = tokenizer or load_tokenizer(base_model, str(path))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def count_parameters(model: torch.nn.Module) -> dict:
    """{"total": every parameter's element count, "trainable": those with requires_grad}."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def load_adapter(model: PreTrainedModel, adapter_dir: str | Path, is_trainable: bool = False) -> PeftModel:
    """Put a saved peft adapter on `model`, each tensor in the dtype it was saved in.

    TRL trains QLoRA adapters in bf16 (following the QLoRA paper) and saves them so; peft upcasts adapters to
    fp32 on load and, for quantised bases, ignores `autocast_adapter_dtype=False`. Restoring the saved dtypes
    makes the reloaded model compute exactly what the trained one did.
    """
    from peft import PeftModel
    from safetensors import safe_open

    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if weights.exists():
        with safe_open(str(weights), framework="pt") as f:
            saved = {key: f.get_slice(key).get_dtype() for key in f.keys()}
        dtypes = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
        import torch

        for name, param in peft_model.named_parameters():
            key = name.replace(".default", "")
            if key in saved and saved[key] in dtypes:
                param.data = param.data.to(getattr(torch, dtypes[saved[key]]))
    return peft_model
