"""Checkpoint I/O: atomic writes, weights_only loading. The only place torch.save/load is called."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(Exception):
    """A checkpoint that cannot be used; ``str(e)`` is one line."""


def save(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
        raise CheckpointError(f"checkpoint {path} needs pickled code to load ({what}), which "
                              "tprop refuses; only tprop checkpoints of state dicts load") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({first})") from None
    if not isinstance(state, dict) or "tprop_version" not in state:
        raise CheckpointError(f"{path} is not a tprop checkpoint")
    return state
