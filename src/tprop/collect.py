"""`tprop collect SRC… --into DEST`: gather finished runs from sweep folders into one.

A study often runs in several folders: lanes on one machine, a GPU job, a cluster array. The
report wants one folder. `collect` copies every finished run (one with ``summary.json``) of each
SRC into DEST, without its ``checkpoint.pt`` unless asked (a results folder meant for git stays
small), and merges the grid and run records of each SRC's ``sweep.json`` into DEST's, so
``tprop report DEST`` reads them as one sweep. Everything is checked before anything is
written: a run that DEST already holds with other settings or another result is refused in one
line, and DEST is left as it was; the same run collected twice is left alone.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tprop.grids import GridError
from tprop.sweep import load_manifest, write_json
from tprop.sweep_flags import plural

NAME = "collect"
CHECKPOINT = "checkpoint.pt"
SAME = ("config.json", "summary.json")  # two copies of a run agree on these


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        NAME,
        help="copy the finished runs of sweep folders into one results folder",
        description="Copy every finished run of each SRC (a sweep folder, or one run "
        "folder) into DEST, without checkpoints, and merge their sweep.json records, so "
        "`tprop report DEST` reads them as one sweep. Unfinished runs are skipped and named.",
    )
    p.add_argument("src", nargs="+", metavar="SRC", help="sweep folders or run folders")
    p.add_argument("--into", required=True, metavar="DEST", help="the results folder")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="GLOB",
        help="collect only runs whose name matches GLOB; repeatable",
    )
    p.add_argument(
        "--checkpoints",
        action="store_true",
        help="copy checkpoint.pt too (weights for `tprop eval` and `tprop generate`)",
    )
    p.add_argument("--dry-run", action="store_true", help="say what would be copied; copy nothing")
    p.set_defaults(handler=run)


@dataclass
class Item:
    name: str
    folder: Path  # the run folder in SRC
    record: dict[str, Any] | None  # its entry in SRC/sweep.json, if any
    grid: tuple[str, dict[str, Any]] | None  # that entry's grid record
    state: str  # copy | there (the same run is in DEST already) | unfinished


def run_folders(src: Path) -> list[Path]:
    """SRC's run folders: SRC itself if it is one, else its subfolders holding a run."""
    if (src / "config.json").is_file():
        return [src]
    return sorted(p.parent for p in src.glob("*/config.json"))


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _same_run(a: Path, b: Path) -> bool:
    return all(_read(a / f) == _read(b / f) for f in SAME)


def gather(sources: list[Path], dest: Path, only: list[str]) -> list[Item]:
    """What to do with each run of each source; raises GridError before anything is written."""
    items: dict[str, Item] = {}
    for src in sources:
        if not src.is_dir():
            raise GridError(f"{src} is not a folder of runs")
        if src.resolve() == dest.resolve():
            raise GridError(f"{src} is DEST itself; collect from other folders")
        one_run = (src / "config.json").is_file()
        manifest = load_manifest(src.parent if one_run else src)  # a sweep's run: its parent's
        for folder in run_folders(src):
            if only and not any(fnmatch.fnmatch(folder.name, g) for g in only):
                continue
            record = manifest["runs"].get(folder.name)
            grid_name = record.get("grid") if isinstance(record, dict) else None
            grid = manifest["grids"].get(grid_name) if grid_name else None
            if folder.name in items and not _same_run(items[folder.name].folder, folder):
                raise GridError(
                    f"two sources hold different runs named {folder.name} "
                    f"({items[folder.name].folder}, {folder}); collect them into separate folders"
                )
            items[folder.name] = Item(
                folder.name,
                folder,
                record if isinstance(record, dict) else None,
                (grid_name, grid) if isinstance(grid, dict) else None,
                _state(folder, dest / folder.name),
            )
    if not items:
        what = f" matching {', '.join(only)}" if only else ""
        raise GridError(f"no run folders{what} in {', '.join(map(str, sources))}")
    return list(items.values())


def _state(folder: Path, target: Path) -> str:
    if not (folder / "summary.json").is_file():
        return "unfinished"
    if not target.exists():
        return "copy"
    if _same_run(folder, target):
        return "there"
    raise GridError(
        f"{target} already holds a different run (its config.json or summary.json differ "
        f"from {folder}); remove it first, or collect into another folder"
    )


def copy_run(folder: Path, target: Path, checkpoints: bool) -> None:
    """Copy into a hidden temporary folder, then rename: DEST never holds half a run."""
    tmp = target.with_name(f".{target.name}.collecting")
    shutil.rmtree(tmp, ignore_errors=True)
    ignore = None if checkpoints else shutil.ignore_patterns(CHECKPOINT)
    shutil.copytree(folder, tmp, ignore=ignore)
    os.replace(tmp, target)


def merge_manifest(dest: Path, items: list[Item]) -> None:
    data = load_manifest(dest)
    for item in items:
        if item.grid is not None:
            data["grids"].setdefault(*item.grid)
        if item.record is not None:
            data["runs"][item.name] = {**item.record, "state": "finished"}
    write_json(dest / "sweep.json", data)


def run(ns: argparse.Namespace) -> int:
    dest = Path(ns.into)
    if dest.exists() and not dest.is_dir():
        raise GridError(f"--into {dest} exists and is not a folder")
    items = gather([Path(s) for s in ns.src], dest, ns.only)
    by = {s: [i for i in items if i.state == s] for s in ("copy", "there", "unfinished")}
    verb = "would copy" if ns.dry_run else "copied"
    for item in by["copy"]:
        print(f"{verb} {item.folder} -> {dest / item.name}")
    if not ns.dry_run and (by["copy"] or by["there"]):
        dest.mkdir(parents=True, exist_ok=True)
        for item in by["copy"]:
            copy_run(item.folder, dest / item.name, ns.checkpoints)
        merge_manifest(dest, by["copy"] + by["there"])
    skipped = ", ".join(i.name for i in by["unfinished"])
    print(
        f"{NAME}: {plural(len(by['copy']), 'run')} {verb} into {dest}, "
        f"{len(by['there'])} already there, {len(by['unfinished'])} unfinished skipped"
        + (f" ({skipped})" if skipped else "")
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    from tprop.cli import main

    sys.exit(main([NAME, *sys.argv[1:]]))
