"""Read run folders (config.json, summary.json, metrics.jsonl) and a sweep's sweep.json.

A folder of runs is any folder whose subfolders are `tprop train` run folders; a sweep folder
also has sweep.json, which adds runs not started yet and the state of failed ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tprop.config import ConfigError


class ReportError(ConfigError):
    """Bad input to report/plot (a missing folder, no runs); one line."""


STATES = ("finished", "diverged", "in progress or interrupted", "failed", "not started")


@dataclass
class RunRecord:
    name: str
    folder: Path
    config: dict[str, Any]  # config.json, else the sweep's planned values
    summary: dict[str, Any] | None
    state: str  # one of STATES
    note: str = ""
    epochs: list[dict[str, Any]] = field(default_factory=list)  # epoch events, one per epoch

    @property
    def finished(self) -> bool:
        return self.state in ("finished", "diverged")

    def get(self, key: str) -> float | None:
        """A summary number (strings 'inf'/'nan' as floats), or None."""
        v = (self.summary or {}).get(key)
        try:
            return None if v is None else float(v)
        except (TypeError, ValueError):
            return None

    @property
    def best_valid(self) -> float:
        v = self.get("best_valid_ppl")
        return math.inf if v is None or math.isnan(v) else v

    def epoch_value(self, epoch: int | None, key: str) -> float | None:
        for e in self.epochs:
            if e.get("epoch") == epoch and key in e:
                return to_float(e[key])
        return None


def to_float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ReportError(f"cannot read {path}: {e}") from None


def read_epochs(path: Path) -> list[dict[str, Any]]:
    """The epoch events of metrics.jsonl; after a resume the last record of an epoch wins."""
    by_epoch: dict[int, dict[str, Any]] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(rec, dict) and rec.get("event") == "epoch" and "epoch" in rec:
            by_epoch[int(rec["epoch"])] = rec
    return [by_epoch[k] for k in sorted(by_epoch)]


def _state(folder: Path, summary: dict | None, planned: dict[str, Any]) -> tuple[str, str]:
    if summary is not None:
        reason = str(summary.get("stop_reason", ""))
        return ("diverged", reason) if reason.startswith("diverged") else ("finished", "")
    if planned.get("state") == "failed":
        return "failed", f"exit {planned.get('returncode')}: {_last_error(folder)}"
    if (folder / "checkpoint.pt").is_file():
        return "in progress or interrupted", "resumable (checkpoint.pt)"
    if folder.is_dir() and any(folder.iterdir()):
        err = _last_error(folder)
        return ("failed", err) if "error" in err else ("in progress or interrupted", "")
    return "not started", ""


def _last_error(folder: Path) -> str:
    try:
        lines = (folder / "stdout.log").read_text(errors="replace").splitlines()
    except OSError:
        return "no stdout.log"
    errors = [x for x in lines if "error" in x.lower()]
    return (errors or [x for x in lines if x.strip()] or [""])[-1].strip()[:160]


def load_runs(root: str | Path) -> tuple[list[RunRecord], dict[str, Any]]:
    """Every run under `root` (sorted by name) and the sweep manifest (empty if none)."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root} is not a folder of runs")
    manifest = read_json(root / "sweep.json") or {}
    planned = manifest.get("runs", {}) if isinstance(manifest, dict) else {}
    names = {p.parent.name for p in root.glob("*/config.json")} | set(planned)
    names |= {p.parent.name for p in root.glob("*/stdout.log")}
    records = []
    for name in sorted(names):
        folder = root / name
        config = read_json(folder / "config.json") or planned.get(name, {}).get("values", {})
        summary = read_json(folder / "summary.json")
        if summary is not None and not isinstance(summary, dict):
            raise ReportError(f"{folder / 'summary.json'} is not a JSON object")
        state, note = _state(folder, summary, planned.get(name, {}))
        records.append(
            RunRecord(
                name,
                folder,
                dict(config),
                summary,
                state,
                note,
                read_epochs(folder / "metrics.jsonl"),
            )
        )
    if not records:
        raise ReportError(
            f"{root} holds no run folders (subfolders with config.json) and no sweep.json"
        )
    return records, manifest if isinstance(manifest, dict) else {}


def load_run(folder: str | Path) -> RunRecord:
    """One run folder, for `tprop plot`."""
    folder = Path(folder)
    if not (folder / "metrics.jsonl").is_file() and not (folder / "config.json").is_file():
        raise ReportError(f"{folder} is not a run folder (no config.json or metrics.jsonl)")
    summary = read_json(folder / "summary.json")
    state, note = _state(folder, summary if isinstance(summary, dict) else None, {})
    return RunRecord(
        folder.name,
        folder,
        read_json(folder / "config.json") or {},
        summary if isinstance(summary, dict) else None,
        state,
        note,
        read_epochs(folder / "metrics.jsonl"),
    )
