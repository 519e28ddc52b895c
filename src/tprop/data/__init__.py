"""Datasets: which exist, where their files live, how to get and check them, how text becomes ids.

One import surface, four modules by concern:

- `registry`: the datasets (`DATASETS`, `DatasetSpec`), the data-root lookup order
  (`resolve_dir`), `DataError`, `describe`. Imports neither torch nor numpy, so
  `from tprop.data import DATASETS` is cheap.
- `corpus`: the tokenisation rules, `Vocab`, `Corpus`, `load_corpus`, `read_text8` (the part a
  researcher reads). Needs torch.
- `install`: `fetch` (download), `add` (a copy obtained by hand), `verify` (checksums).
- `commands`: the `tprop data` subcommand.

The names of `corpus` and `install` are loaded on first use, so importing this package does
not import torch. Every problem a user can cause or fix is a `DataError` whose message is one
line naming the file and the fix. Provenance, checksums and licences: docs/datasets.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tprop.data.registry import (
    DATASETS,
    ENV_DATA_DIR,
    SPLITS,
    DataError,
    DatasetSpec,
    cache_dir,
    data_roots,
    describe,
    package_data_dir,
    resolve_dir,
)

if TYPE_CHECKING:
    from tprop.data.corpus import (
        EOS,
        TEXT8_MIN_COUNT,
        TEXT8_SPLITS,
        UNK,
        Corpus,
        Vocab,
        load_corpus,
        read_text8,
    )
    from tprop.data.install import add, fetch, verify

_LAZY = {
    **dict.fromkeys(
        ["EOS", "UNK", "TEXT8_SPLITS", "TEXT8_MIN_COUNT", "Corpus", "Vocab", "load_corpus"],
        "corpus",
    ),
    "read_text8": "corpus",
    **dict.fromkeys(["fetch", "add", "verify"], "install"),
}
"""Names loaded from their module on first use (see `__getattr__`)."""

__all__ = [
    "DATASETS",
    "ENV_DATA_DIR",
    "SPLITS",
    "DataError",
    "DatasetSpec",
    "cache_dir",
    "data_roots",
    "describe",
    "package_data_dir",
    "resolve_dir",
    "EOS",
    "UNK",
    "TEXT8_SPLITS",
    "TEXT8_MIN_COUNT",
    "Corpus",
    "Vocab",
    "load_corpus",
    "read_text8",
    "fetch",
    "add",
    "verify",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
