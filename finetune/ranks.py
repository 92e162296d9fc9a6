"""Which process is this: the accelerate state, created the way transformers' TrainingArguments creates it.

On a machine without CUDA, `accelerate launch --multi_gpu --num_processes N` runs a real gloo job only if the
shared state is created with `cpu=True`; a plain `PartialState()` created first would pin every rank to a
single-process state (each rank training alone). So every toolkit call goes through `state()`.
"""

from __future__ import annotations


def state():
    """The process's accelerate PartialState, created with `cpu=True` when CUDA is not available."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main() -> bool:
    """Whether this is the main process (rank 0, or the only process)."""
    return state().is_main_process


def barrier() -> None:
    """Wait until every process reaches this point (a no-op with one process)."""
    state().wait_for_everyone()


def log(msg: str) -> None:
    """Progress lines on stderr (`[finetune] ...`), from the main process only when several ranks run."""
    import sys

    if is_main():
        print(f"[finetune] {msg}", file=sys.stderr, flush=True)
