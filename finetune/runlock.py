"""One writer per run folder: `finetune run` holds an exclusive lock on it for the life of the run.

Without it, two runs of one recipe into one folder both trained the same stage at once and both exited 0;
whichever finished last owned the model, checkpoints and manifest. The lock is `filelock`'s (an OS file lock
on Linux and macOS), so the kernel releases it when its process dies, however it dies: a lock can't outlive
its run. A small JSON file beside it names the holder (pid, host, start time) for the refusal message; one
left behind by a killed run is named as such and replaced.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from finetune.errors import UserError

LOCK = ".finetune.lock"
HOLDER = ".finetune.lock.json"


def _holder(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / HOLDER).read_text())
    except (OSError, ValueError):
        return None


def _describe(holder: dict | None) -> str:
    if not holder:
        return "holder unknown"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')}, since {started}"


def _acquire(folder: Path, busy: str, advice: str):
    """The folder's lock, taken without waiting; UserError `<folder>: <busy> (<holder>); <advice>` if held."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(folder / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(f"{folder}: {busy} ({_describe(_holder(folder))}); {advice}") from None
    return lock


@contextmanager
def hold(run_dir: Path, log=print):
    """Hold the run folder's lock while the block runs; UserError if another process holds it.

    The folder must exist (manifest.claim_run_dir makes it). Raises UserError naming the holder's pid and host.
    """
    lock = _acquire(run_dir, "another finetune run is writing this folder",
                    "wait for it to finish, or use another --output-dir")
    try:
        stale = _holder(run_dir)
        if stale:
            log(f"a run that held {run_dir} ({_describe(stale)}) ended without releasing it; taking it over")
        (run_dir / HOLDER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                  "started": time.time()}) + "\n")
        yield
    finally:
        (run_dir / HOLDER).unlink(missing_ok=True)
        lock.release()


def refuse_if_being_written(path: str | Path) -> None:
    """For readers (eval, merge): UserError if `path` is, or is inside, a run folder a live run is writing."""
    from finetune.manifest import MARKER

    path = Path(path).resolve()
    for folder in (path, *path.parents):
        if (folder / MARKER).exists():
            if (folder / LOCK).exists():
                _acquire(folder, "a finetune run is writing this folder",
                         "wait for it to finish before reading it").release()
            return
