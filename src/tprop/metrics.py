"""The metrics sink: one JSON object per event in metrics.jsonl, one stdout line per epoch.

Keys are namespaced (``train/…``, ``valid/…``, ``tp/…``, ``time/…``) as in CleanRL.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep the value readable
    return v


class MetricsSink:
    def __init__(self, path: Path | None, echo: bool = True):
        self.path, self.echo = path, echo
        self.t0 = time.time()

    def log(self, event: str, **values: Any) -> None:
        record = {"event": event, "time/wall_s": round(time.time() - self.t0, 3)}
        record.update({k: _clean(v) for k, v in values.items()})
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def line(self, text: str) -> None:
        if self.echo:
            tqdm.write(text, file=sys.stdout)


def fmt_ppl(x: float) -> str:
    """A perplexity in 9 characters: fixed point while it is readable, else 1.23e+45 or inf."""
    if not math.isfinite(x):
        return f"{x!s:>9}"
    return f"{x:9.2f}" if x < 1e6 else f"{x:9.2e}"


def progress(total: int, desc: str, enabled: bool):
    """A tqdm bar over tokens, with tokens/s and ETA (only on a terminal: disable=None)."""
    return tqdm(
        total=total,
        desc=desc,
        unit="tok",
        unit_scale=True,
        leave=False,
        disable=None if enabled else True,
        dynamic_ncols=True,
        mininterval=1.0,
    )
