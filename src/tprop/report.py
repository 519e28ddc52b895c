"""`tprop report DIR`: the paper's tables from a folder of runs, as Markdown, CSV and figures.

Writes DIR/report.md, DIR/report.csv (one line per table cell), DIR/runs.csv (one line per run)
and DIR/figures/*.png. Each cell: our mean ± std of the best validation perplexity over seeds
(n), at the setting with the best mean validation perplexity among the runs in that cell (the
paper's grid search), the paper's value and the difference in %. Output is deterministic: the
same run folders give the same bytes (no dates, sorted, fixed formats).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path
from typing import Any

from tprop import paper
from tprop.report_tables import Cell, Stat, Table, build_tables, describe, normalised, setting_key
from tprop.runs import STATES, ReportError, RunRecord, load_runs

NAME = "report"
LEGEND = (
    "Each cell: ours, mean ± std of the best validation perplexity over seeds (n), at the "
    "setting with the best mean validation perplexity among the runs in that cell · the "
    f"paper's value ({paper.CITATION}) · (ours − paper) / paper. Runs not finished never "
    "count; a cell says how many it has."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        NAME,
        help="tables (Markdown, CSV) and figures in the paper's layout from a folder of runs",
        description="Build the paper's tables from a "
        "sweep folder (or any folder of run folders): report.md, report.csv, "
        "runs.csv and figures/*.png.",
    )
    p.add_argument("dir", nargs="?", help="a sweep folder or any folder holding run folders")
    p.add_argument("--out", help="where to write (default: DIR)")
    p.add_argument(
        "--markdown-only",
        action="store_true",
        help="print the paper's tables as Markdown to stdout; write nothing",
    )
    p.add_argument(
        "--settings",
        action="store_true",
        help="with --markdown-only: also the table of every setting (runs grouped over seeds)",
    )
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument(
        "--only",
        metavar="KEYS",
        help=f"only these tables, comma-separated: {', '.join(TABLE_KEYS)} "
        "(a folder's runs may fill several)",
    )
    p.add_argument(
        "--update-docs",
        nargs="+",
        metavar="DOC",
        help="instead of DIR: rewrite every <!-- report: DIR [--only=KEYS] [--settings] --> … "
        "<!-- end report --> block of these Markdown files with what the report prints "
        "(folders relative to the current directory)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="with --update-docs: write nothing; exit 1 if a block is not what the report prints",
    )
    p.set_defaults(handler=run)


# ---------------------------------------------------------------------------- formatting


def num(v: float | None, digits: int = 2, sign: bool = False) -> str:
    if v is None:
        return ""
    if not math.isfinite(v):
        return str(v)
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def fmt_stat(s: Stat | None) -> str:
    if s is None:
        return "—"
    spread = f" ± {num(s.std)}" if s.std is not None else ""
    return f"{num(s.mean)}{spread} ({s.n})"


def diff_pct(cell: Cell) -> float | None:
    if cell.stat is None or cell.paper is None or not cell.comparable:
        return None
    return (cell.stat.mean - cell.paper.value) / cell.paper.value * 100


def cell_text(cell: Cell | None) -> str:
    if cell is None or not cell.runs:
        return "—"
    parts = [fmt_stat(cell.stat)]
    if cell.paper is not None:
        d = diff_pct(cell)
        parts += [num(cell.paper.value), f"{num(d, 1, sign=True)} %" if d is not None else "n/c"]
    text = " · ".join(parts)
    return text + (f" (+{cell.unfinished} not finished)" if cell.unfinished else "")


def _ppl_text(cell: Cell | None) -> str:
    if cell is None or not cell.runs:
        return "—"
    return fmt_stat(cell.stat) + (f" (+{cell.unfinished} not finished)" if cell.unfinished else "")


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]


def _chosen_lines(t: Table) -> list[str]:
    out = []
    for (row, col), c in sorted(
        t.cells.items(), key=lambda kv: (t.rows.index(kv[0][0]), t.cols.index(kv[0][1]))
    ):
        if c.n_settings > 1 and c.setting:
            where = row if len(t.cols) == 1 else f"{row}, {col}"
            out.append(f"- {where}: {c.setting} (best of {c.n_settings} settings)")
    return out


def table_markdown(t: Table) -> list[str]:
    lines = [f"### {t.title} — {t.section}", ""]
    if t.key == "table2":
        rows = []
        for r in t.rows:
            c = t.cells.get((r, "Δ PPL"))
            ours = num(c.delta, sign=True) if c and c.delta is not None else "—"
            pub = num(c.paper.value, sign=True) if c and c.paper else ""
            gap = (
                num(c.delta - c.paper.value, sign=True)
                if c and c.paper and c.delta is not None
                else ""
            )
            rows.append([r, ours, pub, gap, _ppl_text(c)])
        lines += md_table(["", "ours Δ PPL", "paper Δ PPL", "ours − paper", "ours valid PPL"], rows)
    else:
        lines += md_table(
            ["", *t.cols], [[r, *(cell_text(t.cells.get((r, c))) for c in t.cols)] for r in t.rows]
        )
    chosen = _chosen_lines(t)
    if chosen:
        lines += ["", "Chosen settings:", *chosen]
    if t.notes:
        lines += ["", *(f"Note: {n}." for n in t.notes)]
    return lines + [""]


def markdown_tables(tables: list[Table]) -> str:
    """The paper's tables alone (what the README quotes): deterministic Markdown."""
    if not tables:
        return (
            "No run matches a cell of the paper's tables (Tables 1, 2, 4, Figure 3); see "
            "the settings table.\n"
        )
    lines = [LEGEND, ""]
    for t in tables:
        lines += table_markdown(t)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- runs, settings


def settings_rows(records: list[RunRecord]) -> list[list[str]]:
    """Every setting (runs grouped over seeds), best mean validation perplexity first."""
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(setting_key(r.config), []).append(r)
    keys = sorted(groups)
    names = describe([normalised(groups[k][0].config) for k in keys])
    rows = []
    for key, name in zip(keys, names, strict=True):
        runs = groups[key]
        done = [r for r in runs if r.finished]
        valid = Stat.of([r.best_valid for r in done])
        test = Stat.of([t for r in done if (t := r.get("test_ppl")) is not None])
        rows.append(
            (
                valid.mean if valid else math.inf,
                name,
                [name or "(all runs)", f"{len(done)}/{len(runs)}", fmt_stat(valid), fmt_stat(test)],
            )
        )
    rows.sort(key=lambda t: (t[0], t[1]))
    return [r for _, _, r in rows]


def settings_markdown(records: list[RunRecord]) -> list[str]:
    return [
        "Runs grouped over seeds; best validation perplexity, then "
        "test perplexity of the best-validation weights.",
        "",
        *md_table(["setting", "finished/runs", "valid ppl", "test ppl"], settings_rows(records)),
    ]


def _partial(r: RunRecord) -> str:
    if r.finished or not r.epochs:
        return r.note
    last = r.epochs[-1]
    best = last.get("valid/best_ppl", last.get("valid/ppl"))
    return "; ".join(
        x
        for x in (
            r.note,
            f"at epoch {last['epoch']}: best valid ppl {num(float(best))}"
            if best is not None
            else "",
        )
        if x
    )


def run_row(r: RunRecord) -> list[str]:
    s = r.summary or {}
    return [
        r.name,
        r.state,
        num(r.get("best_valid_ppl")),
        str(s.get("best_epoch", "")),
        str(s.get("epochs", len(r.epochs) or "")),
        num(r.get("test_ppl")),
        _partial(r),
    ]


RUN_HEADER = ["run", "state", "best valid ppl", "best epoch", "epochs", "test ppl", "note"]


def full_markdown(
    root: Path,
    records: list[RunRecord],
    manifest: dict[str, Any],
    tables: list[Table],
    figures: list[str],
) -> str:
    counts = {s: sum(r.state == s for r in records) for s in STATES}
    lines = [f"# Report: {root.resolve().name}", ""]
    for name, g in sorted((manifest.get("grids") or {}).items()):
        lines += [f"Grid `{name}`: {g.get('description', '')}".rstrip()]
        lines += [f"({g['notes']})"] if g.get("notes") else []
    lines += [
        "",
        f"{len(records)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()),
        "",
        "## The paper's tables",
        "",
        markdown_tables(tables),
    ]
    lines += [f"![{f}](figures/{f})" for f in figures] + ([""] if figures else [])
    lines += ["## Settings", "", *settings_markdown(records)]
    lines += ["", "## Runs", ""] + md_table(RUN_HEADER, [run_row(r) for r in records])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- CSV


CELL_HEADER = [
    "table",
    "section",
    "row",
    "column",
    "ours_mean",
    "ours_std",
    "n",
    "paper",
    "diff",
    "diff_unit",
    "unfinished",
    "settings_tried",
    "chosen_setting",
    "runs",
]


def cells_csv(tables: list[Table]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CELL_HEADER)
    for t in tables:
        for row in t.rows:
            for col in t.cols:
                c = t.cells.get((row, col))
                if c is None:
                    continue
                s, p = c.stat, c.paper.value if c.paper else None
                diff, unit = (
                    (diff_pct(c), "%")
                    if t.key != "table2"
                    else (c.delta - p if c.delta is not None and p is not None else None, "ppl")
                )
                w.writerow(
                    [
                        t.key,
                        t.section,
                        row,
                        col,
                        num(s.mean if s else None, 4),
                        num(s.std if s else None, 4),
                        s.n if s else 0,
                        num(p),
                        num(diff, 2),
                        unit if diff is not None else "",
                        c.unfinished,
                        c.n_settings,
                        c.setting,
                        " ".join(r.name for r in c.chosen),
                    ]
                )
    return buf.getvalue()


def runs_csv(records: list[RunRecord]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([h.replace(" ", "_") for h in RUN_HEADER])
    for r in records:
        w.writerow(run_row(r))
    return buf.getvalue()


# ---------------------------------------------------------------------------- command


TABLE_KEYS = ("table1", "table2", "figure3", "table4")


def table_keys(only: str | None) -> tuple[str, ...]:
    """The table keys `--only` names (all without it)."""
    if only is None:
        return TABLE_KEYS
    keys = tuple(k.strip() for k in only.split(",") if k.strip())
    if not keys or any(k not in TABLE_KEYS for k in keys):
        raise ReportError(f"--only {only!r}: give one or more of {', '.join(TABLE_KEYS)}")
    return keys


def chosen(tables: list[Table], only: str | None) -> list[Table]:
    keys = table_keys(only)
    return [t for t in tables if t.key in keys]


def write_report(
    root: str | Path,
    out: str | Path | None = None,
    figures: bool = True,
    only: str | None = None,
) -> Path:
    """Write report.md, report.csv, runs.csv (and figures/) for the runs under `root`."""
    root = Path(root)
    records, manifest = load_runs(root)
    tables = chosen(build_tables(records), only)
    dest = Path(out) if out else root
    dest.mkdir(parents=True, exist_ok=True)
    made: list[str] = []
    if figures:
        from tprop.plot import report_figures

        made = report_figures(records, tables, dest / "figures")
    (dest / "report.csv").write_text(cells_csv(tables))
    (dest / "runs.csv").write_text(runs_csv(records))
    path = dest / "report.md"
    path.write_text(full_markdown(root, records, manifest, tables, made))
    return path


def markdown_text(root: str | Path, only: str | None = None, settings: bool = False) -> str:
    """What `--markdown-only` prints: the chosen tables, and with `settings` every setting."""
    records, _ = load_runs(root)
    text = markdown_tables(chosen(build_tables(records), only))
    if settings:
        text += "\n\n" + "\n".join(["#### Settings", "", *settings_markdown(records)]) + "\n"
    return text


def run(ns: argparse.Namespace) -> int:
    table_keys(ns.only)  # a bad --only is refused before any folder is read
    if ns.update_docs or ns.check:
        if ns.dir or not ns.update_docs or ns.out or ns.markdown_only or ns.settings or ns.only:
            raise ReportError(
                "--update-docs DOC… reads the folders and flags from the documents' blocks: "
                "give it without DIR, --out, --markdown-only, --settings or --only "
                "(--check goes with it)"
            )
        from tprop.report_docs import update_docs

        return update_docs(ns.update_docs, ns.check)
    if ns.dir is None:
        raise ReportError("give a folder of runs: tprop report DIR (or --update-docs DOC…)")
    if ns.markdown_only:
        print(markdown_text(ns.dir, ns.only, ns.settings), end="")
        return 0
    try:
        path = write_report(ns.dir, ns.out, figures=not ns.no_figures, only=ns.only)
    except OSError as e:
        raise ReportError(f"cannot write the report: {e}") from None
    print(f"wrote {path}, {path.with_name('report.csv')}, {path.with_name('runs.csv')}")
    return 0
