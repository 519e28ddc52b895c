"""Sweep grids: the format, its expansion into named runs, and the paper's experiments built in.

A grid is ``common`` settings for every run, a list of ``groups`` (each the product of its list
values; the runs of all groups are joined) and ``seeds``. Keys are `tprop train` settings (the
fields of `tprop.config.Config`), so a new training flag is a new grid axis with no change here.
The same structure is read from TOML (docs/sweeps.md); `to_toml` writes a grid back, so a
built-in grid can be printed, edited and run as a file.

A run's folder name is its method, then its group's keys (abbreviated, `ABBREV`) with their
values, then the seed: ``admm_B20_h1_hlr0.001_lam0.1_s1111``. Keys of ``common`` do not appear
in names. Keys that only mean something for target propagation (`tp_only()`) are dropped from
``common`` for BPTT runs, so one ``common`` serves both methods.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tprop import paper
from tprop.config import ConfigError, build, field_types
from tprop.presets import resolve

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PAPER_SEEDS = (1111, 2222, 3333)
ABBREV = {
    "block_size": "B",
    "bptt": "K",
    "h_steps": "h",
    "h_lr": "hlr",
    "lam": "lam",
    "u_lr": "ulr",
    "lr": "lr",
    "hidden": "hid",
    "batch_size": "bs",
    "layers": "L",
    "theta_steps": "th",
    "epochs": "ep",
    "full_batch": "fullbatch",
    "clip": "clip",
}
"""Short names of keys in run names; any other key appears with its underscores removed."""
VALUE_ONLY = ("method", "preset", "dataset", "cell")
"""Keys whose value alone names them in a run name (``tprnn``, not ``preset-tprnn``)."""
_TP_ONLY = (
    "preset",
    "block_size",
    "lam",
    "u_lr",
    "u_start_epoch",
    "h_steps",
    "h_lr",
    "h_optim",
    "h_eps",
    "theta_steps",
    "layout",
    "z_init",
    "z_first",
    "z_last",
    "persist_u",
    "persist_z",
    "dual_placement",
    "loss_scale",
)


def tp_only() -> set[str]:
    """Settings that apply to pm/admm/alm only (`tprop.config.resolve` rejects them for bptt):
    the fields the config marks ``tp``, or a fixed list for a config that does not mark them."""
    from tprop import config

    specs = getattr(config, "field_specs", None)
    if specs is None:
        return set(_TP_ONLY)
    return {name for name, spec in specs().items() if getattr(spec, "tp", False)}


RUN_CONTROL = ("out", "overwrite", "resume", "data_dir", "device", "progress", "seed")
"""Settings the sweep itself sets for every run; a grid may not set them (seeds: `seeds`)."""


class GridError(ConfigError):
    """A bad grid; one line."""


@dataclass(frozen=True)
class Run:
    name: str
    values: dict[str, Any]  # every setting passed to `tprop train`, seed included
    axes: dict[str, Any]  # the group's keys and the seed: what names the run


@dataclass(frozen=True)
class Grid:
    name: str
    description: str
    common: dict[str, Any]
    groups: tuple[dict[str, Any], ...]
    seeds: tuple[int, ...] = PAPER_SEEDS
    source: str = "built-in"
    notes: str = field(default="", compare=False)

    def runs(self, seeds: tuple[int, ...] | None = None) -> list[Run]:
        """Every run, seed-major (all cells of the first seed come first), checked."""
        out: dict[str, Run] = {}
        for seed in seeds or self.seeds:
            for group in self.groups or ({},):
                for run in _expand(self.common, group, seed):
                    old = out.get(run.name)
                    if old is not None and old.values != run.values:
                        raise GridError(
                            f"grid {self.name}: two different runs are both named "
                            f"{run.name}; give their groups distinguishing keys"
                        )
                    out[run.name] = run
        return list(out.values())


def _expand(common: dict[str, Any], group: dict[str, Any], seed: int) -> list[Run]:
    keys = list(group)
    lists = [v if isinstance(v, list) else [v] for v in group.values()]
    runs = []
    for combo in itertools.product(*lists):
        chosen = dict(zip(keys, combo, strict=True))
        method = chosen.get("method", common.get("method", "bptt"))
        base = {k: v for k, v in common.items() if method != "bptt" or k not in tp_only()}
        values = {**base, **chosen, "seed": seed}
        axes = {**chosen, "seed": seed}
        runs.append(Run(run_name(method, chosen, seed), values, axes))
    return runs


def fmt_value(v: Any) -> str:
    """A value as it appears in a run name or a table: 0.001, 1e-05, 20, 1 (for 1.0)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    return str(v)


def run_name(method: str, chosen: dict[str, Any], seed: int) -> str:
    parts = [str(method)]
    for k, v in chosen.items():
        if k == "method":
            continue
        short = ABBREV.get(k, k.replace("_", ""))
        if isinstance(v, bool):
            parts.append(short if v else f"no{short}")
        elif k in VALUE_ONLY:
            parts.append(str(v))
        else:
            parts.append(f"{short}{fmt_value(v)}")
    parts.append(f"s{seed}")
    return "_".join(re.sub(r"[^A-Za-z0-9.+-]", "-", p) for p in parts)


def check_values(grid: Grid, runs: list[Run], extra: dict[str, Any]) -> None:
    """Every run's settings must make a valid `tprop train` config (before anything runs)."""
    for run in runs:
        try:
            resolve(build({**run.values, **extra, "out": "x"}))
        except ConfigError as e:
            raise GridError(f"grid {grid.name}, run {run.name}: {e}") from None


# ---------------------------------------------------------------------------- TOML


def _check_keys(where: str, table: dict[str, Any]) -> dict[str, Any]:
    types = field_types()
    out = {}
    for key, value in table.items():
        k = key.replace("-", "_")
        if k in RUN_CONTROL:
            raise GridError(
                f"{where}: '{key}' is set by `tprop sweep` itself (use --seeds, "
                "--data-dir, --device, --out)"
            )
        if k not in types:
            raise GridError(f"{where}: unknown setting '{key}'; see `tprop train --help`")
        if isinstance(value, list) and not value:
            raise GridError(f"{where}: '{key}' is an empty list")
        if isinstance(value, (dict, list)) and any(
            isinstance(x, (dict, list))
            for x in (value.values() if isinstance(value, dict) else value)
        ):
            raise GridError(f"{where}: '{key}' must be a value or a list of values")
        out[k] = value
    return out


def from_dict(raw: dict[str, Any], source: str, default_name: str) -> Grid:
    known = {"name", "description", "notes", "seeds", "common", "group"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise GridError(
            f"{source}: unknown top-level key '{unknown[0]}' (allowed: "
            f"{', '.join(sorted(known))}; run settings go in [common] or [[group]])"
        )
    seeds = raw.get("seeds", list(PAPER_SEEDS))
    if not (isinstance(seeds, list) and seeds and all(type(s) is int for s in seeds)):
        raise GridError(f"{source}: seeds must be a non-empty list of integers")
    common = raw.get("common", {})
    groups = raw.get("group", [])
    if not isinstance(common, dict) or not isinstance(groups, list):
        raise GridError(f"{source}: [common] must be a table and [[group]] an array of tables")
    if any(isinstance(v, list) for v in common.values()):
        raise GridError(f"{source}: [common] holds one value per key; put lists in a [[group]]")
    for text in ("name", "description", "notes"):
        if not isinstance(raw.get(text, ""), str):
            raise GridError(f"{source}: {text} must be a string")
    return Grid(
        name=raw.get("name", default_name),
        description=raw.get("description", ""),
        common=_check_keys(f"{source} [common]", common),
        groups=tuple(_check_keys(f"{source} [[group]] {i + 1}", g) for i, g in enumerate(groups)),
        seeds=tuple(seeds),
        source=source,
        notes=raw.get("notes", ""),
    )


def load_toml(path: str | Path) -> Grid:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GridError(f"grid file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GridError(f"cannot read grid file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise GridError(f"grid file {path} is not valid TOML: {e}") from None
    return from_dict(raw, str(path), path.stem)


def _toml_value(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return fmt_value(v) + (".0" if isinstance(v, float) and v.is_integer() else "")


def to_toml(grid: Grid) -> str:
    """The grid in the TOML format that `load_toml` reads (round trip)."""
    lines = [f"name = {_toml_value(grid.name)}", f"description = {_toml_value(grid.description)}"]
    if grid.notes:
        lines.append(f"notes = {_toml_value(grid.notes)}")
    lines += [f"seeds = {_toml_value(list(grid.seeds))}", "", "[common]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in grid.common.items()]
    for g in grid.groups:
        lines += ["", "[[group]]"] + [f"{k} = {_toml_value(v)}" for k, v in g.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- built in

PROTOCOL = {
    "dataset": "ptb",
    **{k: v for k, v in paper.PROTOCOL.items() if k not in ("train_limit", "eval_limit")},
}
"""The paper's protocol: GRU 100, batch 32, Adagrad θ-lr 0.1, clip 0.5, best epoch within 10."""
ADMM_START = dict(preset="tprnn", h_lr=0.001, lam=0.1, u_lr=0.1)
"""ADMM start point (docs/results/ptb-b20: the best point of the h-lr × λ grid on PTB B = 20)."""
TABLE1_GROUPS = (
    {"method": "admm", "block_size": [5, 10, 20], "h_steps": [1, 2, 5]},
    {"method": "bptt", "bptt": [5, 10, 20]},
)


def _grid(
    name: str,
    description: str,
    groups: tuple[dict[str, Any], ...],
    seeds=PAPER_SEEDS,
    notes: str = "",
    **common: Any,
) -> Grid:
    return Grid(
        name, description, {**PROTOCOL, **ADMM_START, **common}, groups, tuple(seeds), notes=notes
    )


TABLE4_BATCHES = [64, 256, 1024, 4096, 16000]

BUILTIN: dict[str, Grid] = {
    g.name: g
    for g in (
        _grid(
            "table1-minibatch-ptb",
            "Table 1 (middle): minibatch PTB, ADMM with B in {5, 10, 20} "
            "x H-steps {1, 2, 5} against BPTT with K = B; GRU 100, batch 32, Adagrad 0.1",
            TABLE1_GROUPS,
        ),
        _grid(
            "table1-batch-ptb",
            "Table 1 (left): batch PTB (--full-batch: one θ update per pass "
            "over the training set), ADMM B in {5, 10, 20} x H-steps {1, 2, 5} against BPTT K = B",
            TABLE1_GROUPS,
            full_batch=True,
            epochs=100,
            patience=10,
            notes="The paper does not state the epoch budget of batch mode; one epoch is one θ "
            "update here, so this grid allows 100 epochs (patience 10). Change it with --set.",
        ),
        _grid(
            "table1-text8",
            "Table 1 (right): minibatch text8 (word level, first 99M characters "
            "train, last 1M valid), ADMM B in {5, 10, 20} x H-steps {1, 2, 5} against BPTT K = B",
            TABLE1_GROUPS,
            dataset="text8",
        ),
        _grid(
            "table2",
            "Table 2: minibatch PTB, ADMM B = 20: H-steps 0 with λ = 0.1 and H-steps 0 "
            "with λ = 0, against the H-steps 1 baseline",
            (
                {"method": "admm", "block_size": 20, "h_steps": 1, "lam": 0.1},
                {"method": "admm", "block_size": 20, "h_steps": 0, "lam": [0.1, 0.0]},
            ),
        ),
        _grid(
            "figure3",
            "Figure 3: minibatch PTB, ADMM B = 10 with H-steps 2 and 5 against BPTT "
            "K = 10, hidden size in {50, 100, 200, 400}",
            (
                {
                    "method": "admm",
                    "hidden": [50, 100, 200, 400],
                    "block_size": 10,
                    "h_steps": [2, 5],
                },
                {"method": "bptt", "hidden": [50, 100, 200, 400], "bptt": 10},
                # Table 3's next θ-lr at hidden 400, where 0.1 blows up: the report takes the
                # better θ-lr per cell by validation perplexity, as the paper's grid search did
                {
                    "method": "admm",
                    "hidden": 400,
                    "block_size": 10,
                    "h_steps": [2, 5],
                    "lr": 0.01,
                },
                {"method": "bptt", "hidden": 400, "bptt": 10, "lr": 0.01},
            ),
            notes="At hidden 400 each method also runs at θ-lr 0.01 (runs named ..._lr0.01_...; "
            "`--filter lr=0.01` picks them): at θ-lr 0.1 most seeds blew up in their first "
            "epoch there (docs/reproduction.md, 'Figure 3 on CPU').",
        ),
        _grid(
            "table3",
            "Table 3 (appendix A.2): minibatch PTB, ADMM B = 20, H-steps 1, λ 0.1, "
            "u-lr 0.1: H-step learning rate x θ learning rate, one seed",
            (
                {
                    "method": "admm",
                    "block_size": 20,
                    "h_steps": 1,
                    "h_lr": list(paper.TABLE3_GRID["h_lr"]),
                    "lr": list(paper.TABLE3_GRID["lr"]),
                },
            ),
            seeds=PAPER_SEEDS[:1],
            notes="The paper's full grid also varies λ, u-lr in {1, 0.1, 0.01} and H-steps in "
            "{1, 2, 5} (243 points per B); docs/sweeps.md has it as a TOML file.",
        ),
        _grid(
            "table4",
            "Table 4 (appendix A.3), scaled down: BPTT by minibatch size in {64, 256, 1024, "
            "4096, 16000}; word level: 2-layer LSTM 512, K = 30, on WikiText-2 (the paper: "
            "WikiText-103); character level: 1-layer LSTM 1024, K = 75, on PTB characters in "
            "bits per character (the paper: text8)",
            (
                {
                    "method": "bptt",
                    "dataset": "wikitext-2",
                    "layers": 2,
                    "hidden": 512,
                    "bptt": 30,
                    "batch_size": TABLE4_BATCHES,
                },
                {
                    "method": "bptt",
                    "dataset": "ptb-char",
                    "layers": 1,
                    "hidden": 1024,
                    "bptt": 75,
                    "batch_size": TABLE4_BATCHES,
                },
            ),  # fmt: skip
            cell="lstm",
            notes="Scaled down from the paper's WikiText-103 and text8 so it runs in hours, not "
            "days; the paper's numbers are shown for reference, not as a like-for-like "
            "comparison. On a small machine write the grid out (--show), lower the sizes "
            "(e.g. hidden = 128) and run the file; say so.",
        ),
    )
}


def find(spec: str) -> Grid:
    """A built-in grid by name, or a TOML file by path."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if spec.endswith(".toml") or Path(spec).is_file():
        return load_toml(spec)
    raise GridError(f"unknown grid '{spec}'; built in: {', '.join(BUILTIN)} (or a .toml file)")
