"""Run directories and manifests: a stage is done only when its manifest.json is written, last and atomically."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from finetune.errors import UserError

MARKER = ".finetune-run"
PACKAGES = ("finetune", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "evaluate",
            "bitsandbytes", "tokenizers")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    """The JSON in `path` (UTF-8), or None when the file is missing or not valid JSON (e.g. half-written)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def claim_run_dir(run_dir: Path, recipe_name: str, write: bool = True) -> None:
    """Create (or reuse) a run folder; refuse a non-empty folder that is not one of ours.

    Every rank checks (so all refuse together); only the one with `write` creates the folder and marker.
    Raises UserError naming `run_dir` when it exists and is not a folder, or holds files but no run marker.
    """
    marker = run_dir / MARKER
    if run_dir.exists():
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: output path exists and is not a folder")
        if any(run_dir.iterdir()) and not marker.exists():
            raise UserError(f"{run_dir}: output folder holds files that are not a finetune run; "
                            f"choose another --output-dir (nothing was written)")
    if not write:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        marker.write_text(json.dumps({"recipe": recipe_name}) + "\n")


def package_versions() -> dict[str, str | None]:
    """Installed version of each package in PACKAGES (the toolkit and its stack); None for one not installed."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The commit of the toolkit's checkout (None when not in a git checkout)."""
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=False).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


# Each matmul shape gets its own compiled oneDNN kernel (primitive) with its buffers, kept in two caches: oneDNN's
# primitive cache and ideep's LRU cache (PyTorch's oneDNN wrapper), 1024 entries each by default. Real rows vary in
# length, so a stage meets hundreds of shapes and both caches grow for the whole stage: +20 MB of live C heap per
# step of LoRA SFT on SmolLM2-135M in bf16 (README: "the recipe with bounded kernel caches"). 64 entries hold
# every shape of one step (about 30) at the same speed, and bound the growth.
KERNEL_CACHE_CAPACITY = 64
KERNEL_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_kernel_caches(capacity: int = KERNEL_CACHE_CAPACITY) -> dict:
    """Cap oneDNN's primitive cache and ideep's LRU cache at `capacity` entries each, unless the user set them.

    Both read their environment variable when the first oneDNN kernel is built, so this must run before the
    process's first matmul (the CLI calls it first thing). A value the user exported wins. Side effect: sets the
    variables in `os.environ`, which subprocesses inherit. Returns {variable: value in force} (strings).
    """
    for name in KERNEL_CACHE_VARIABLES:
        os.environ.setdefault(name, str(capacity))
    return {name: os.environ[name] for name in KERNEL_CACHE_VARIABLES}


def release_freed_memory() -> dict:
    """Collect Python's garbage and hand the C heap's free pages back to the OS, between pipeline stages.

    A stage's trainer, model and optimizer hold reference cycles, so they outlive the stage until the cyclic
    garbage collector runs; and glibc keeps freed blocks in its arenas, so the next stage's RSS starts where
    the last one peaked. `gc.collect()` and glibc's `malloc_trim(0)` (man 3 malloc_trim) undo both; on a C
    library without `malloc_trim` only the collection runs. Side effect: freed pages return to the OS.
    Returns {"rss_before_mb", "rss_after_mb"} in MiB (None where /proc/self/statm is missing).
    """
    import ctypes
    import ctypes.util
    import gc

    before = PeakMemory._rss()
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = getattr(libc, "malloc_trim", None)
        if trim is not None:
            trim(0)
    except OSError:
        pass
    after = PeakMemory._rss()
    return {key: round(b / 2**20, 1) if b is not None else None
            for key, b in (("rss_before_mb", before), ("rss_after_mb", after))}


class PeakMemory:
    """Peak resident memory (RSS) of this process while the `with` block runs, sampled every `interval`
    seconds by a daemon thread from /proc/self/statm (Linux), plus the process's lifetime peak (ru_maxrss).
    `.result()` gives {"peak_rss_mb", "process_peak_rss_mb"} (None where the platform cannot say)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, None

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self):
        import threading

        self._stop = threading.Event()

        def sample():
            while True:
                rss = self._rss()
                if rss is not None:
                    self.peak = max(self.peak, rss)
                if self._stop.wait(self.interval):
                    return

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def result(self) -> dict:
        """{"peak_rss_mb": sampled peak during the block, "process_peak_rss_mb": lifetime peak}, in MiB
        (a stage's manifest adds "rss_at_start_mb", from `release_freed_memory`).

        Either is None where it cannot be measured (no samples; no `resource` module).
        """
        try:
            import resource

            lifetime = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
        except ImportError:
            lifetime = None
        return {"peak_rss_mb": round(self.peak / 2**20, 1) if self.peak else None, "process_peak_rss_mb": lifetime}


def host_summary() -> dict:
    """Python version, platform, CPU count and, when torch is installed, CUDA availability and GPU names."""
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def sha256_text(text: str | None) -> str | None:
    """Hex sha256 of `text` encoded as UTF-8; None for None."""
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


def inputs_fingerprint(**parts: Any) -> str:
    """One hash of everything that decides a stage's result (config, data, init artifact, seed)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def last_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete `checkpoint-N` folder (one whose trainer_state.json was written)."""
    if not checkpoint_dir.is_dir():
        return None
    done = [p for p in checkpoint_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()
            and p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)
