"""The paper's tables from run folders: which run belongs in which cell, and the chosen setting.

Each run's config is located in the cells of the paper's tables it reproduces (a run can be in
several: a Table 1 cell is Table 2's baseline). Within a cell, runs are grouped by every setting
except the seed; the setting with the best mean validation perplexity is the cell's value, as in
the paper's grid search. Unfinished runs never count, but each cell says how many there are.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tprop import paper
from tprop.config import Config
from tprop.grids import tp_only
from tprop.presets import PRESETS
from tprop.runs import RunRecord

IGNORED = {
    "seed",
    "out",
    "overwrite",
    "resume",
    "data_dir",
    "data_source",
    "device",
    "progress",
    "checkpoint_every",
    "vocab_size",
    "deterministic",
    "tf32",
    "eval_bptt",
    "chunk_tokens",
    "compile",
    "optim_impl",
    "cross_entropy",
    "nproc",
    "dist_timeout",
}
"""Config keys that do not make a different setting (run control, bookkeeping, and how a step
is computed where the result is the same: chunking, compilation, the optimiser's kernels)."""
PRESET_SWITCHES = {k for p in PRESETS.values() for k in p}


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None  # None for one run
    n: int

    @staticmethod
    def of(values: list[float]) -> Stat | None:
        if not values:
            return None
        std = (
            statistics.stdev(values)
            if len(values) > 1 and all(map(math.isfinite, values))
            else None
        )
        return Stat(statistics.fmean(values), std, len(values))


@dataclass
class Cell:
    runs: list[RunRecord] = field(default_factory=list)  # every run located here, any state
    chosen: list[RunRecord] = field(default_factory=list)  # finished runs of the chosen setting
    setting: str = ""  # how the chosen setting differs from the cell's other settings
    n_settings: int = 0
    stat: Stat | None = None
    paper: paper.Published | None = None
    comparable: bool = True
    delta: float | None = None  # Table 2: ours minus the baseline's mean

    @property
    def unfinished(self) -> int:
        return sum(not r.finished for r in self.runs)


@dataclass
class Table:
    key: str  # table1 | table2 | figure3 | table4
    title: str
    section: str
    rows: list[str]
    cols: list[str]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    varies: tuple[str, ...] = ()  # protocol settings the table varies (Figure 3: hidden)

    def cell(self, row: str, col: str) -> Cell:
        return self.cells.setdefault((row, col), Cell())


def normalised(config: dict[str, Any]) -> dict[str, Any]:
    """The run's config with defaults for keys older runs lack, 1.0 written as 1, and without
    what the method does not read: the target-propagation switches for BPTT, the BPTT window
    for the blocked methods."""
    full = {**Config().to_dict(), **config}
    drop = tp_only() if full.get("method") == "bptt" else {"bptt"}
    return {
        k: int(v) if isinstance(v, float) and v.is_integer() else v
        for k, v in full.items()
        if k not in drop
    }


def setting_key(config: dict[str, Any]) -> str:
    return json.dumps(
        {k: v for k, v in normalised(config).items() if k not in IGNORED}, sort_keys=True
    )


def describe(settings: list[dict[str, Any]]) -> list[str]:
    """For each setting, the `k=v` values in which the settings differ (in config order)."""
    order = list(Config().to_dict())
    keys = sorted(
        {k for s in settings for k in s},
        key=lambda k: (k not in order, order.index(k) if k in order else 0, k),
    )
    diff = [
        k
        for k in keys
        if k not in IGNORED and len({json.dumps(s[k]) for s in settings if k in s}) > 1
    ]
    if "preset" in diff:
        diff = [k for k in diff if k not in PRESET_SWITCHES]
    return [" ".join(f"{k}={s[k]}" for k in diff if k in s) for s in settings]


def choose(cell: Cell, metric: Callable[[RunRecord], float | None] | None = None) -> None:
    """Pick the setting with the best mean validation perplexity; fill stat with `metric`."""
    groups: dict[str, list[RunRecord]] = {}
    for r in cell.runs:
        groups.setdefault(setting_key(r.config), []).append(r)
    cell.n_settings = len(groups)
    scored = []
    for key, runs in sorted(groups.items()):
        done = [r for r in runs if r.finished]
        if done:
            scored.append((statistics.fmean(r.best_valid for r in done), key, done))
    if not scored:
        return
    scored.sort(key=lambda t: (t[0], t[1]))
    _, best_key, cell.chosen = scored[0]
    names = sorted(groups)
    cell.setting = describe([normalised(json.loads(k)) for k in names])[names.index(best_key)]
    values = [metric(r) if metric else r.best_valid for r in cell.chosen]
    cell.stat = Stat.of([v for v in values if v is not None])


# ---------------------------------------------------------------------------- locating


def _paper_model(c: dict[str, Any]) -> bool:
    return c["cell"] == "gru" and c["layers"] == 1


def _window(c: dict[str, Any]) -> int:
    return c["bptt"] if c["method"] == "bptt" else c["block_size"]


def locate_table1(c: dict[str, Any]) -> tuple[str, str, str] | None:
    if not _paper_model(c) or c["hidden"] != 100 or _window(c) not in (5, 10, 20):
        return None
    if c["method"] == "bptt":
        row = "BPTT (K = B)"
    elif c["method"] == "admm" and c["h_steps"] in (1, 2, 5):
        row = f"H-steps = {c['h_steps']}"
    else:
        return None
    section = {
        ("ptb", True): "Batch PTB",
        ("ptb", False): "Minibatch PTB",
        ("text8", False): "Minibatch Text8",
    }.get((c["dataset"], bool(c["full_batch"])))
    return None if section is None else (section, row, f"B = {_window(c)}")


def locate_table2(c: dict[str, Any]) -> tuple[str, str, str] | None:
    if not (
        _paper_model(c)
        and c["hidden"] == 100
        and c["dataset"] == "ptb"
        and not c["full_batch"]
        and c["method"] == "admm"
        and c["block_size"] == 20
    ):
        return None
    row = (
        {1: "baseline: H-steps = 1"}.get(c["h_steps"])
        if c["h_steps"]
        else ("H-steps = 0" if c["lam"] > 0 else "H-steps = 0 & λ = 0")
    )
    return None if row is None else ("Minibatch PTB", row, "Δ PPL")


def locate_figure3(c: dict[str, Any]) -> tuple[str, str, str] | None:
    if not (_paper_model(c) and c["dataset"] == "ptb" and not c["full_batch"] and _window(c) == 10):
        return None
    if c["method"] == "bptt":
        row = "BPTT (K = 10)"
    elif c["method"] == "admm" and c["h_steps"] in (2, 5):
        row = f"H-steps = {c['h_steps']}"
    else:
        return None
    return "Minibatch PTB, B = K = 10", row, f"hidden = {c['hidden']}"


TABLE4_SECTIONS = {  # dataset → section (and the paper's model: 2 × 512, K 30; 1 × 1024, K 75)
    "wikitext-2": paper.TABLE4_WORD,
    "wikitext-103": paper.TABLE4_WORD,
    "ptb-char": paper.TABLE4_CHAR,
    "text8": paper.TABLE4_CHAR,
}
TABLE4_PAPER_DATA = {paper.TABLE4_WORD: "wikitext-103", paper.TABLE4_CHAR: "text8"}


def locate_table4(c: dict[str, Any]) -> tuple[str, str, str] | None:
    """BPTT LSTM runs by dataset; a smaller model than the paper's is placed too, and the
    table's note names the models it holds."""
    if (c["method"], c["cell"]) != ("bptt", "lstm") or c["dataset"] not in TABLE4_SECTIONS:
        return None
    return TABLE4_SECTIONS[c["dataset"]], "", str(c["batch_size"])


LOCATORS = {
    "table1": locate_table1,
    "table2": locate_table2,
    "figure3": locate_figure3,
    "table4": locate_table4,
}


# ---------------------------------------------------------------------------- tables


def place(records: list[RunRecord]) -> dict[str, dict[str, dict[tuple[str, str], list]]]:
    """table → section → (row, column) → runs located there."""
    out: dict[str, dict[str, dict[tuple[str, str], list]]] = {}
    for r in records:
        c = normalised(r.config)
        for key, locate in LOCATORS.items():
            try:
                loc = locate(c)
            except (KeyError, TypeError):  # a config from another tprop version
                loc = None
            if loc is not None:
                section, row, col = loc
                out.setdefault(key, {}).setdefault(section, {}).setdefault((row, col), []).append(r)
    return out


def _fill(table: Table, placed: dict[tuple[str, str], list]) -> Table:
    for (row, col), runs in placed.items():
        cell = table.cell(row, col)
        cell.runs = runs
        choose(cell)
        cell.paper = paper.published(table.key, table.section, row, col)
    return table


def departures(cells: list[Cell], skip: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """The paper's protocol settings (`paper.PROTOCOL`) that the chosen runs of `cells` depart
    from: key → the values they use instead (JSON, sorted); `skip`: keys the table varies."""
    chosen = [normalised(r.config) for c in cells for r in c.chosen]
    out = {}
    for k, v in paper.PROTOCOL.items():
        seen = sorted({json.dumps(c.get(k)) for c in chosen} - {json.dumps(v)})
        if k not in skip and seen:
            out[k] = tuple(seen)
    return out


def point_labels(table: Table) -> dict[tuple[str, str], str]:
    """For a figure: the cells whose chosen setting departs from the protocol where other cells
    of the table do not (``lr=0.01`` at one point of a curve), as ``k=v`` labels; a departure
    that every cell shares is the table's note, not a point's."""
    own = {
        key: set(departures([c], table.varies).items())
        for key, c in table.cells.items()
        if c.stat is not None
    }
    common = set.intersection(*own.values()) if own else set()
    return {
        key: ", ".join(
            f"{k}={'/'.join(str(json.loads(x)) for x in v)}" for k, v in sorted(d - common)
        )
        for key, d in own.items()
        if d - common
    }


def protocol_notes(table: Table) -> None:
    for k, seen in departures(list(table.cells.values()), table.varies).items():
        grid = paper.TABLE3_GRID.get(k)
        where = (
            f"; Table 3's grid has {', '.join(map(str, grid))}"
            if grid and all(json.loads(x) in grid for x in seen)
            else ""
        )
        table.notes.append(
            f"differs from the paper's protocol: {k} = {', '.join(seen)} "
            f"(protocol {paper.PROTOCOL[k]}{where})"
        )


def table1(placed: dict[str, dict]) -> list[Table]:
    out = []
    for section in paper.TABLE1_SECTIONS:
        if section in placed:
            t = _fill(
                Table(
                    "table1",
                    "Table 1: validation perplexity",
                    section,
                    list(paper.TABLE1_ROWS),
                    list(paper.TABLE1_COLS),
                ),
                placed[section],
            )
            protocol_notes(t)
            out.append(t)
    return out


def table2(placed: dict[str, dict]) -> list[Table]:
    if not placed:
        return []
    section = "Minibatch PTB"
    rows = ["baseline: H-steps = 1", *paper.TABLE2_ROWS]
    t = _fill(
        Table(
            "table2",
            "Table 2: change in validation perplexity against H-steps = 1, B = 20",
            section,
            rows,
            ["Δ PPL"],
        ),
        placed[section],
    )
    if all(row == rows[0] for row, _ in placed[section]):
        return []  # only the baseline: Table 2 has nothing to show
    base = t.cells.get((rows[0], "Δ PPL"))
    for row in rows[1:]:
        cell = t.cells.get((row, "Δ PPL"))
        if cell and cell.stat and base and base.stat:
            cell.delta = cell.stat.mean - base.stat.mean
    protocol_notes(t)
    return [t]


def figure3(placed: dict[str, dict]) -> list[Table]:
    out = []
    for section, cells in placed.items():
        hidden = sorted({*paper.FIGURE3_HIDDEN, *(int(c.split("= ")[1]) for _, c in cells)})
        t = _fill(
            Table(
                "figure3",
                "Figure 3: validation perplexity against hidden size "
                "(the paper gives a plot only, no values)",
                section,
                list(paper.FIGURE3_ROWS),
                [f"hidden = {h}" for h in hidden],
                varies=("hidden",),
            ),
            cells,
        )
        protocol_notes(t)
        out.append(t)
    return out


def _train_ppl(r: RunRecord) -> float | None:
    return r.epoch_value(int(r.get("best_epoch") or 0), "train/ppl")


def _train_bits(r: RunRecord) -> float | None:
    nll = r.epoch_value(int(r.get("best_epoch") or 0), "train/nll")
    return None if nll is None else nll / math.log(2)


def table4_models(t: Table) -> str:
    """The models and data sets of a Table 4 section's runs, e.g. "LSTM 2 × 128, K = 30 on
    wikitext-2"."""
    every = [r.config for c in t.cells.values() for r in c.runs]
    datasets = sorted({c.get("dataset", "?") for c in every})
    models = sorted({f"{c['layers']} × {c['hidden']}, K = {c['bptt']}" for c in every})
    return f"LSTM {'; '.join(models)} on {', '.join(datasets)}"


def table4(placed: dict[str, dict]) -> list[Table]:
    out = []
    for section, cells in placed.items():
        chars = section == paper.TABLE4_CHAR
        cols = sorted({*paper.TABLE4_COLS, *(c for _, c in cells)}, key=int)
        unit = "bits per character" if chars else "perplexity"
        t = Table("table4", f"Table 4: BPTT {unit} by minibatch size (columns)", section,
                  list(paper.TABLE4_ROWS), cols)  # fmt: skip
        metrics = {"training": _train_bits, "test": lambda r: r.get("test_bits")} if chars else {
            "training": _train_ppl, "test": lambda r: r.get("test_ppl")}  # fmt: skip
        theirs = TABLE4_PAPER_DATA[section]
        for (_, col), runs in cells.items():
            for row, metric in metrics.items():
                cell = t.cell(row, col)
                cell.runs = runs
                choose(cell, metric)
                cell.paper = paper.published("table4", section, row, col)
                cell.comparable = all(r.config.get("dataset") == theirs for r in cell.chosen)
        t.notes.append(
            f"ours: {table4_models(t)}; the paper's: "
            f"{paper.TABLE4_MODEL[section]} on {theirs}: a difference is shown "
            f"only for {theirs} runs (n/c = not comparable); training = training {unit} of "
            "the best validation epoch"
        )
        out.append(t)
    return out


def build_tables(records: list[RunRecord]) -> list[Table]:
    placed = place(records)
    return [
        *table1(placed.get("table1", {})),
        *table2(placed.get("table2", {})),
        *figure3(placed.get("figure3", {})),
        *table4(placed.get("table4", {})),
    ]
