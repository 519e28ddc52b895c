"""glibc malloc settings for tensor-sized allocations, set once when `tprop` starts.

glibc serves a block above its mmap threshold (128 KiB at first, at most 32 MiB) with a fresh
mmap and returns it to the kernel on free; it also trims the heap top above 128 KiB. A training
step allocates and frees tensors of tens of MB (logits, their gradient) every step, so every
step pays page faults to map and zero them again: on a 2-core CPU about a fifth of BPTT's time
went to the kernel (issue 10). Raising the thresholds keeps freed blocks in the process for
reuse. The values are those measured in issue 10 as environment variables
(``MALLOC_MMAP_THRESHOLD_`` etc.); `tune` sets them with ``mallopt`` so no user has to.

Off glibc (macOS, Windows, musl) `tune` does nothing. Settings the user gave in the environment
win. Effect: docs/performance.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3

SETTINGS: dict[str, tuple[int, int]] = {  # env variable → (mallopt parameter, value)
    "MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, 32 << 20),  # 32 MiB: glibc's maximum
    "MALLOC_TRIM_THRESHOLD_": (M_TRIM_THRESHOLD, 1 << 30),  # 1 GiB
    "MALLOC_TOP_PAD_": (M_TOP_PAD, 256 << 20),  # 256 MiB
}

_done: dict[str, bool] = {}


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None  # musl: mallopt is a stub


def tune() -> dict[str, bool]:
    """Set the glibc malloc thresholds of `SETTINGS` in this process; idempotent. Returns, per
    setting, whether it was set here (False: not glibc, or the user's environment sets it)."""
    if _done:
        return dict(_done)
    libc = _glibc()
    for env, (param, value) in SETTINGS.items():
        ok = libc is not None and env not in os.environ and libc.mallopt(param, value) == 1
        _done[env] = bool(ok)
    return dict(_done)
