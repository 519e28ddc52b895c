"""Figures: `tprop plot RUN…` (learning curves and target-propagation diagnostics of any runs)
and the report's figures (learning curves, Table 1 summary, Figure 3).

PNGs are reproducible: the Agg backend, a fixed size and dpi, and no Software/date metadata,
so the same runs give the same bytes.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from tprop.report_tables import (
    Table,
    describe,
    normalised,
    point_labels,
    setting_key,
    table4_models,
)
from tprop.runs import ReportError, RunRecord, load_run, to_float

NAME = "plot"
DPI = 100
MAX_CURVES = 12
PANELS = [
    ("train/ppl", "training perplexity", True),
    ("valid/ppl", "validation perplexity", True),
    ("tp/residual", "tp/residual  (‖z_{j+1} − e_j‖)", False),
    ("tp/dual_norm", "tp/dual_norm  (‖u‖)", False),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        NAME,
        help="learning curves of runs (perplexity per epoch, TP diagnostics) into a PNG",
        description="Draw training and validation "
        "perplexity per epoch of the given run folders, and tp/residual and "
        "tp/dual_norm where the runs log them, into one PNG.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    p.add_argument("--out", default="curves.png", help="PNG file to write [default: curves.png]")
    p.set_defaults(handler=run)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def log_y(ax: Any) -> None:
    """Log y axis with plain numbers (150, 200), not powers of ten; linear for a narrow range."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    lo, hi = ax.get_ylim()
    if hi / max(lo, 1e-300) < 3:
        return
    ax.set_yscale("log")
    subs = (
        (1.0, 2.0, 5.0)
        if hi / max(lo, 1e-300) > 20
        else (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
    )
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, metadata={"Software": None}, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)


def series(r: RunRecord, key: str) -> tuple[list[int], list[float]]:
    pts = [(int(e["epoch"]), to_float(e.get(key))) for e in r.epochs if key in e]
    pts = [(x, y) for x, y in pts if y is not None]
    return [x for x, _ in pts], [y for _, y in pts]


def _legend(fig: Any, ax: Any, n: int) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(
            handles,
            labels,
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            ncol=1 if n > 6 or max(map(len, labels)) > 40 else 2,
            fontsize=8,
            frameon=False,
        )


def plot_runs(records: list[RunRecord], path: Path) -> None:
    """Learning curves of runs: one panel per metric that any run logs."""
    panels = [p for p in PANELS if any(series(r, p[0])[0] for r in records)]
    if not panels:
        raise ReportError("none of the runs has logged an epoch yet (metrics.jsonl)")
    plt = pyplot()
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.4 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label, log) in zip(axes.flat, panels, strict=False):
        for i, r in enumerate(records):
            x, y = series(r, key)
            if x:
                ax.plot(
                    x,
                    y,
                    marker="o",
                    ms=3,
                    color=colors[i % len(colors)],
                    label=r.name,
                    linestyle="-" if i < len(colors) else "--",
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(label.split("  ")[0])
        ax.set_title(label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if log:
            log_y(ax)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    _legend(fig, axes.flat[0], len(records))
    save(fig, path)


def run(ns: argparse.Namespace) -> int:
    records = [load_run(p) for p in ns.runs]
    out = Path(ns.out)
    if out.suffix.lower() != ".png":
        raise ReportError(f"--out {out}: give a .png file")
    plot_runs(records, out)
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------- report figures


def _mean_curve(runs: list[RunRecord], key: str) -> tuple[list[int], list[float]]:
    by_epoch: dict[int, list[float]] = {}
    for r in runs:
        for x, y in zip(*series(r, key), strict=True):
            by_epoch.setdefault(x, []).append(y)
    xs = sorted(by_epoch)
    return xs, [statistics.fmean(by_epoch[x]) for x in xs]


def learning_curves(records: list[RunRecord], path: Path) -> bool:
    """Mean (over seeds) training and validation perplexity per epoch of the best settings."""
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        if r.epochs:
            groups.setdefault(setting_key(r.config), []).append(r)
    if not groups:
        return False
    keys = sorted(groups)
    names = dict(zip(keys, describe([normalised(groups[k][0].config) for k in keys]), strict=True))
    best = sorted(keys, key=lambda k: (min(_mean_curve(groups[k], "valid/ppl")[1] or [1e300]), k))
    shown = best[:MAX_CURVES]
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    colors = plt.get_cmap("tab10").colors
    for i, k in enumerate(shown):
        label = f"{names[k] or 'all runs'} (n={len(groups[k])})"
        for ax, key in zip(axes, ("train/ppl", "valid/ppl"), strict=True):
            ax.plot(
                *_mean_curve(groups[k], key),
                marker="o" if i < 10 else "s",
                ms=3,
                color=colors[i % 10],
                linestyle="-" if i < 10 else "--",
                label=label,
            )
    extra = f", best {len(shown)} of {len(keys)} settings" if len(keys) > len(shown) else ""
    for ax, what in zip(axes, ("training", "validation"), strict=True):
        ax.set(
            xlabel="epoch",
            ylabel=f"{what} perplexity",
            title=f"{what} perplexity (mean over seeds{extra})",
        )
        ax.xaxis.get_major_locator().set_params(integer=True)
        log_y(ax)
    fig.tight_layout()
    _legend(fig, axes[0], len(shown))
    save(fig, path)
    return True


def _errorbar(
    ax: Any,
    xs: list,
    table: Table,
    row: str,
    color: Any,
    shift: float,
    labels: dict[tuple[str, str], str] | None = None,
) -> None:
    """Ours (mean ± std, nudged by `shift` so rows do not hide each other) and the paper's;
    `labels`: text written beside some of our points (`point_labels`)."""
    pts = [
        (x * shift, c.stat, col)
        for x, col in zip(xs, table.cols, strict=True)
        if (c := table.cells.get((row, col))) is not None and c.stat is not None
    ]
    if pts:
        ax.errorbar(
            [x for x, _, _ in pts],
            [s.mean for _, s, _ in pts],
            yerr=[s.std or 0.0 for _, s, _ in pts],
            marker="o",
            ms=4,
            capsize=3,
            color=color,
            label=f"{row} (ours)",
        )
        for x, s, col in pts:
            if text := (labels or {}).get((row, col)):
                ax.annotate(text, (x, s.mean), xytext=(5, -3), textcoords="offset points",
                            fontsize=7, color=color, ha="left", va="top")  # fmt: skip
    pub = [
        (x, p.value)
        for x, col in zip(xs, table.cols, strict=True)
        if (p := _published(table, row, col)) is not None
    ]
    if pub:
        ax.plot(
            [x for x, _ in pub],
            [v for _, v in pub],
            linestyle="--",
            marker="x",
            color=color,
            alpha=0.7,
            label=f"{row} (paper)",
        )


def _published(table: Table, row: str, col: str):
    from tprop import paper

    return paper.published(table.key, table.section, row, col)


def table1_figure(tables: list[Table], path: Path) -> bool:
    sections = [t for t in tables if t.key == "table1"]
    if not sections:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(sections), figsize=(4.6 * len(sections), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, t in zip(axes[0], sections, strict=True):
        xs = [int(c.split("= ")[1]) for c in t.cols]
        labels = point_labels(t)  # a point at another θ-lr than the rest says so
        for i, row in enumerate(t.rows):
            _errorbar(ax, xs, t, row, colors[i], 1 + 0.025 * (i - 1.5), labels)
        ax.set(
            xlabel="B (block size) = K (BPTT window)",
            ylabel="validation perplexity",
            title=f"Table 1: {t.section}",
            xscale="log",
            xticks=xs,
            xlim=(min(xs) / 1.25, max(xs) * 1.25),
        )
        ax.set_xticklabels([str(x) for x in xs])
        ax.minorticks_off()
    fig.tight_layout()
    _legend(fig, axes[0][0], 8)
    save(fig, path)
    return True


def figure3_figure(tables: list[Table], path: Path) -> bool:
    ts = [t for t in tables if t.key == "figure3"]
    if not ts:
        return False
    t = ts[0]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    xs = [int(c.split("= ")[1]) for c in t.cols]
    labels = point_labels(t)
    for i, row in enumerate(t.rows):
        _errorbar(ax, xs, t, row, colors[i], 1 + 0.03 * (i - 1), labels)
    ax.set(
        xlabel="hidden size d",
        ylabel="validation perplexity",
        xscale="log",
        xticks=xs,
        xlim=(min(xs) / 1.3, max(xs) * 1.3),
        title=f"Figure 3: {t.section} (the paper gives no values)",
    )
    ax.set_xticklabels([str(x) for x in xs])
    ax.minorticks_off()
    fig.tight_layout()
    _legend(fig, ax, 3)
    save(fig, path)
    return True


def table4_figure(tables: list[Table], path: Path) -> bool:
    """Table 4: training and test perplexity (words) or bits per character, ours and the
    paper's, against the minibatch size; a panel per level."""
    sections = [t for t in tables if t.key == "table4"]
    if not sections:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(sections), figsize=(5 * len(sections), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, t in zip(axes[0], sections, strict=True):
        xs = [int(c) for c in t.cols]
        for i, row in enumerate(t.rows):
            _errorbar(ax, xs, t, row, colors[i], 1 + 0.04 * (i - 0.5))
        chars = "bits per character" in t.title
        title = f"Table 4: {t.section}\nours: {table4_models(t)}"
        ax.set(xlabel="minibatch size (streams)", xscale="log", xticks=xs,
               xlim=(min(xs) / 1.5, max(xs) * 1.5), title=title,
               ylabel="bits per character" if chars else "perplexity")  # fmt: skip
        ax.set_xticklabels([str(x) for x in xs])
        ax.minorticks_off()
        if not chars:
            log_y(ax)
    fig.tight_layout()
    _legend(fig, axes[0][0], 4)
    save(fig, path)
    return True


def report_figures(records: list[RunRecord], tables: list[Table], folder: Path) -> list[str]:
    """Draw what the runs allow; return the file names written (in `folder`)."""
    made = []
    for name, draw in (
        ("learning-curves.png", lambda p: learning_curves(records, p)),
        ("table1.png", lambda p: table1_figure(tables, p)),
        ("figure3.png", lambda p: figure3_figure(tables, p)),
        ("table4.png", lambda p: table4_figure(tables, p)),
    ):
        if draw(folder / name):
            made.append(name)
    return made
