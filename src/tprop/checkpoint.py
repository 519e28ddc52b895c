"""Checkpoint I/O: atomic writes, weights_only loading, RNG state and seeding. The only place
torch.save/load is called."""

from __future__ import annotations

import io
import os
import pickle
import random
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from tprop import fileio


class CheckpointError(Exception):
    """A checkpoint that cannot be used; ``str(e)`` is one line."""


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write atomically and durably (`tprop.fileio.atomic_write`): a crash or a full disk leaves
    either the old file or the new one, never a torn one."""
    try:
        fileio.atomic_write(path, write)
    except OSError as e:
        raise CheckpointError(
            f"could not write {path}: {e.strerror or e}; free space (or fix "
            "the folder) and continue with --resume; the previous file is "
            "intact"
        ) from None


def save(state: dict[str, Any], path: str | os.PathLike) -> None:
    """torch.save `state` atomically (serialised in memory first, so a failing disk surfaces
    as a plain OSError from one write rather than from inside torch's zip writer)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    _atomic_write(Path(path), lambda fh: fh.write(buf.getbuffer()))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file (config.json, summary.json) atomically."""
    _atomic_write(Path(path), lambda fh: fh.write(text.encode()))


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (not a torch archive)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = found.group(1) if found else "code objects"
        raise CheckpointError(
            f"checkpoint {path} needs pickled code to load ({what}), which "
            "tprop refuses; only tprop checkpoints of state dicts load"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({first})") from None
    if not isinstance(state, dict) or "tprop_version" not in state:
        raise CheckpointError(f"{path} is not a tprop checkpoint")
    return state


# ---- RNG states (saved in every checkpoint so a resumed run draws the same numbers) ----------
def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(st: dict[str, Any]) -> None:
    # RNG states are CPU byte tensors, wherever map_location put the checkpoint.
    random.setstate(st["python"])
    torch.set_rng_state(st["torch"].cpu())
    kind, keys, pos, has_gauss, gauss = st["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss))
    if st["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices): the one place a run is seeded."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
