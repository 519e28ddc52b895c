"""The run folder and everything around a run that is not training: one writer (a lock), the
files a run leaves, where a run stands (`Progress`, saved in each checkpoint), signals, and
where the run happened (git commit, device, versions).

A run folder holds ``config.json`` (the resolved config), ``metrics.jsonl``, ``summary.json``
and ``checkpoint.pt``. It is checked before anything is written (a bad flag or a missing file
never leaves a half-made folder), and one process at a time writes it: `RunFolder.open` takes an
exclusive ``flock`` on the folder for the life of the process, which the kernel releases when
the process ends however it ends, so a killed run never blocks its own ``--resume``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tprop import __version__, checkpoint
from tprop.config import Config, ConfigError

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt")
# Settings a resumed run must share with its checkpoint: they fix the data, the model and the
# meaning of the saved method state.
RESUME_KEYS = (
    "dataset",
    "cell",
    "hidden",
    "layers",
    "emb",
    "method",
    "block_size",
    "bptt",
    "batch_size",
    "layout",
    "rows_per_step",
    "full_batch",
    "dtype",
    "train_limit",
)


def check_resumable(saved_config: dict[str, Any], cfg: Config) -> None:
    for key in RESUME_KEYS:
        if key in saved_config and saved_config[key] != getattr(cfg, key):
            raise RunError(
                f"--resume: the checkpoint has {key}={saved_config[key]!r} but this "
                f"run asks for {getattr(cfg, key)!r}; use the same setting"
            )


class RunError(Exception):
    """A problem with the run folder or the run itself; ``str(e)`` is one line."""


class Diverged(RunError):
    pass


class Interrupted(RunError):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class RunFolder:
    """The folder of one run: checked on creation, written only after `open`."""

    def __init__(self, cfg: Config):
        if not cfg.out:
            raise ConfigError("--out is required: the run folder to write")
        self.path, self.cfg = Path(cfg.out), cfg
        self._lock_fd: int | None = None
        self.check()

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    def check(self) -> None:
        """Refuse a folder this run may not write; nothing is written."""
        out, cfg = self.path, self.cfg
        if out.exists() and not out.is_dir():
            raise RunError(f"--out {out} exists and is not a folder; choose another path")
        if cfg.resume:
            if not self.checkpoint.is_file():
                raise RunError(f"--resume: {out} holds no checkpoint.pt to resume from")
            try:  # early, before data is read; the checkpoint's own config is checked again
                check_resumable(json.loads(self.config.read_text()), cfg)
            except (OSError, ValueError):
                pass
            return
        if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
            raise RunError(
                f"run folder {out} is not empty; pass --overwrite to replace it "
                "or --resume to continue it"
            )

    def open(self) -> RunFolder:
        """Create the folder and become its one writer (until `close`, or the end of a
        ``with`` block); with --overwrite, empty it."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self.check()  # again, now that no other tprop process can write here
        except RunError:
            self.close()
            raise
        if self.cfg.overwrite and not self.cfg.resume:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
        for name in RUN_FILES:  # temporary files of a writer that was killed mid-write
            for stale in self.path.glob(f"{name}.*.tmp"):
                stale.unlink()
        return self

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _lock(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunError(
                f"run folder {self.path} is being written by another tprop process; "
                "wait for it to finish or choose another --out"
            ) from None
        self._lock_fd = fd  # held until the process exits (or `close`)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_config(self, extra: dict[str, Any]) -> None:
        text = json.dumps({**self.cfg.to_dict(), **extra}, indent=2) + "\n"
        checkpoint.write_text(self.config, text)

    def write_summary(self, summary: dict[str, Any]) -> None:
        clean = {
            k: str(v) if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in summary.items()
        }
        checkpoint.write_text(self.summary, json.dumps(clean, indent=2) + "\n")

    def truncate_metrics(self, n_bytes: int) -> None:
        """Drop what a killed run logged after its checkpoint: those steps are redone."""
        if self.metrics.exists():
            os.truncate(self.metrics, min(n_bytes, self.metrics.stat().st_size))


class StopSignals:
    """SIGINT/SIGTERM set a flag: the loop finishes its step, checkpoints and exits 130/143."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))  # a second one is fatal

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def join(self, any_rank: bool) -> None:
        """Stop with the other ranks when one of them was signalled (SIGTERM if not this one)."""
        if any_rank and self.signum is None:
            self.signum = signal.SIGTERM

    def interrupted(self, epoch: int, step: int, out: Path) -> Interrupted:
        name = signal.Signals(self.signum).name
        return Interrupted(
            f"{name}: checkpoint saved at epoch {epoch}, step {step}; continue "
            f"with `tprop train --out {out} --resume`",
            128 + self.signum,
        )


# ---- where a run stands -------------------------------------------------------------------
CODE_KEYS = ("git_commit", "source_sha256")  # the code a run ran, as `provenance` names it


@dataclass
class Progress:
    """Where a run stands. Saved in every checkpoint, so --resume continues exactly."""

    epoch: int = 1  # the epoch in progress (1-based)
    step: int = 0  # the next step of that epoch (data position)
    sums: dict[str, Tensor] = field(default_factory=dict)  # this epoch's accumulators
    epoch_tokens: int = 0
    epoch_s: float = 0.0
    best_ppl: float = math.inf
    best_epoch: int = 0
    history: list[float] = field(default_factory=list)
    train_s: float = 0.0
    train_tokens: int = 0
    stop_reason: str | None = None
    code: list[dict[str, str | None]] = field(default_factory=list)  # `record_code`

    @classmethod
    def restore(cls, saved: dict[str, Any]) -> Progress:
        """A checkpoint's progress: fields this version does not know (a newer version's) are
        dropped; a checkpoint from before the code history gets one entry of unknown code, so
        its history does not claim the run started on this code."""
        known = {f.name for f in fields(cls)}
        out = {k: v for k, v in saved.items() if k in known}
        out.setdefault("code", [dict.fromkeys(CODE_KEYS)])
        return cls(**out)


# ---- provenance ---------------------------------------------------------------------------
def git_commit() -> str | None:
    """The commit of the code that runs: from git in a checkout, else from $TPROP_GIT_COMMIT
    (set it when running a copy of the tree without .git, e.g. on a remote machine)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("TPROP_GIT_COMMIT") or None


def source_sha256() -> str:
    """sha256 over the package's Python sources (path and content, sorted): names the code
    that ran even without git, and is unchanged by anything outside src/tprop."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def record_code(history: list[dict[str, str | None]], origin: dict[str, Any]) -> dict:
    """Append the code this process runs (`provenance`'s commit and source sha256) to a run's
    history unless it is the last entry already: the first start, then every resume on
    another commit or other sources. Returns the entry."""
    here = {k: origin.get(k) for k in CODE_KEYS}
    if history[-1:] != [here]:
        history.append(here)
    return here


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def cpu_name() -> str:
    """The processor's model name: float rounding, and so a run's numbers, can differ between
    CPUs (their kernels differ), as they do between thread counts."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover (not Linux)
        pass
    return platform.processor() or platform.machine() or "unknown"


def provenance(device: torch.device) -> dict[str, Any]:
    return {
        "device": device_name(device),
        "cpu": cpu_name(),
        "tprop_version": __version__,
        "git_commit": git_commit(),
        "source_sha256": source_sha256(),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    }
