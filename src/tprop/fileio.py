"""Crash-safe file writes: write a temporary file beside the target, fsync, rename, fsync folder.

A reader then sees either the old file or the complete new one, never a torn one, even after a
power cut. `checkpoint` (run files) and `data` (installed datasets) both write this way. These
functions raise plain `OSError`; callers turn it into their own one-line error.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Make renames and new entries in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def temp_file(folder: Path, prefix: str, suffix: str = ".tmp") -> Iterator[tuple[Path, BinaryIO]]:
    """A new file in `folder`, open for writing; flushed and fsynced when the block ends.

    If the block raises, the file is removed. Otherwise it stays for the caller to `commit`
    (or remove, if something later goes wrong).
    """
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    path = Path(name)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a finished file follows the umask
    try:
        with os.fdopen(fd, "wb") as fh:
            yield path, fh
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def commit(moves: Iterable[tuple[Path, Path]]) -> None:
    """Rename each finished temporary file over its target, then fsync the folders involved."""
    folders = []
    for tmp, target in moves:
        os.replace(tmp, target)
        if target.parent not in folders:
            folders.append(target.parent)
    for folder in folders:
        fsync_dir(folder)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Replace `path` with what `write` writes, atomically and durably.

    On any failure the temporary file is removed and `path` is left as it was.
    """
    with temp_file(path.parent, prefix=path.name + ".") as (tmp, fh):
        write(fh)
    try:
        commit([(tmp, path)])
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
