"""`tprop sweep NAME|FILE`: run a grid of `tprop train` runs into one folder, resumably.

Each run is a `tprop train` subprocess (``python -m tprop.cli train …``) writing its own run
folder ``OUT/<name>/`` with its output in ``stdout.log``. A rerun skips finished runs (those with
``summary.json``), continues interrupted ones (``checkpoint.pt``, no summary) with ``--resume``
and retries failed ones. ``OUT/sweep.json`` records the grid and every run's settings and
state. Ctrl-C (or SIGTERM) is passed once to every running run, which checkpoints and stops;
the sweep then exits 130 (143).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tprop import grids
from tprop.grids import Grid, GridError, Run
from tprop.sweep_flags import (
    parse_duration,
    parse_seeds,
    parse_set,
    plural,
    select,
)

NAME = "sweep"
FAILED_EXIT = 1  # some run failed (the others finished)
TIME_LIMIT_EXIT = 124  # --time-limit reached: runs checkpointed, rerun to continue (as `timeout`)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        NAME,
        help="run a grid of training runs (the paper's experiments or a "
        "TOML file) into one folder, resumably",
        description="Run a grid of `tprop train` runs into one folder. Built-in "
        f"grids: {', '.join(grids.BUILTIN)}. A TOML file defines your own "
        "(docs/sweeps.md). Rerunning skips finished runs and resumes "
        "interrupted ones.",
    )
    p.add_argument("grid", help="a built-in grid name or a .toml grid file")
    p.add_argument("--out", help="sweep folder (default: runs/<grid name>)")
    p.add_argument(
        "--seeds",
        help="a count N (seeds 1111, 2222, …, N×1111) or a comma list "
        "(1111,2222; one seed: 42,) [default: the grid's]",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time; each gets cores // jobs threads [default: 1]",
    )
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=V[,V…]|GLOB",
        help="keep runs whose setting KEY is one of the values, or whose name "
        "matches GLOB; repeat to narrow",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a `tprop train` setting for every run, e.g. epochs=2; repeatable",
    )
    p.add_argument(
        "--time-limit",
        metavar="DURATION",
        help="stop after this wall time (90s, 50m, 2h, 1h30m): running runs checkpoint, "
        "the sweep exits 124, the same command continues [default: none]",
    )
    p.add_argument("--data-dir", help="folder holding <dataset>/ files, passed to every run")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N, passed to every run")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list the runs and what a sweep would do with each; write nothing",
    )
    p.add_argument(
        "--print-commands",
        action="store_true",
        help="print one `tprop train` "
        "line per run still to do (for Slurm, GNU parallel); write nothing",
    )
    p.add_argument("--show", action="store_true", help="print the grid as TOML and exit")
    p.set_defaults(handler=run)


# ---------------------------------------------------------------------------- plan


@dataclass
class Job:
    run: Run
    folder: Path
    state: str  # done | resume | retry | new
    args: list[str]  # `tprop train` arguments, without the program


def disk_state(folder: Path) -> str:
    if (folder / "summary.json").is_file():
        return "done"
    if (folder / "checkpoint.pt").is_file():
        return "resume"
    if folder.is_dir() and any(folder.iterdir()):
        return "retry"
    return "new"


def flags(values: dict[str, Any]) -> list[str]:
    out = []
    for k, v in values.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out.append(flag if v else "--no-" + flag[2:])
        else:
            out += [flag, grids.fmt_value(v)]
    return out


def check_same_config(folder: Path, values: dict[str, Any]) -> None:
    """A run folder that already holds a run must hold this run (no silent mixing)."""
    try:
        saved = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return
    for k, v in values.items():
        if k in saved and saved[k] != v and not (isinstance(v, float) and saved[k] == v):
            raise GridError(
                f"{folder} holds a run with {k}={saved[k]!r}, but the grid asks "
                f"for {v!r}; use another --out (or remove that run folder)"
            )


def plan(runs: list[Run], out: Path, extra: dict[str, Any], ns: argparse.Namespace) -> list[Job]:
    jobs = []
    for r in runs:
        folder = out / r.name
        values = {**r.values, **extra}
        check_same_config(folder, values)
        state = disk_state(folder)
        args = ["train", *flags(values), "--no-progress", "--out", str(folder)]
        args += ["--data-dir", ns.data_dir] if ns.data_dir else []
        args += ["--device", ns.device] if ns.device else []
        args += {"resume": ["--resume"], "retry": ["--overwrite"]}.get(state, [])
        jobs.append(Job(r, folder, state, args))
    return jobs


# ---------------------------------------------------------------------------- manifest


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def load_manifest(out: Path) -> dict[str, Any]:
    try:
        m = json.loads((out / "sweep.json").read_text())
        if isinstance(m, dict) and isinstance(m.get("runs"), dict):
            return m
    except (OSError, ValueError):
        pass
    return {"grids": {}, "runs": {}}


class Manifest:
    """OUT/sweep.json: the grids run into the folder and every run's settings and state.

    `planned` names every run the grid makes under the current --seeds, before --filter: a
    pending entry of this grid outside it, with no run folder, is a plan given up (say
    `--seeds 3333` meant as `--seeds 3333,`), and is dropped.
    """

    def __init__(
        self, out: Path, grid: Grid, jobs: list[Job], extra: dict[str, Any], planned: set[str]
    ):
        self.path = out / "sweep.json"
        self.data = load_manifest(out)
        self.data["runs"] = {
            name: entry
            for name, entry in self.data["runs"].items()
            if not (
                isinstance(entry, dict)
                and entry.get("grid") == grid.name
                and entry.get("state") == "pending"
                and name not in planned
                and not (out / name).exists()
            )
        }
        self.data.setdefault("grids", {})[grid.name] = {
            "description": grid.description,
            "source": grid.source,
            "notes": grid.notes,
            "seeds": list(grid.seeds),
            "set": extra,
        }
        runs = self.data.setdefault("runs", {})
        for j in jobs:
            runs[j.run.name] = {
                "grid": grid.name,
                "axes": j.run.axes,
                "values": {**j.run.values, **extra},
                "command": "tprop " + shlex.join(j.args),
                "state": "finished" if j.state == "done" else "pending",
            }

    def set(self, name: str, state: str, returncode: int | None = None) -> None:
        entry = self.data["runs"][name]
        entry["state"] = state
        entry.pop("returncode", None)
        if returncode is not None:
            entry["returncode"] = returncode
        write_json(self.path, self.data)


# ---------------------------------------------------------------------------- run


def child_env(jobs: int) -> dict[str, str]:
    """Threads per run = cores // jobs (unless OMP_NUM_THREADS is set); the same tprop."""
    env = dict(os.environ)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (macOS, Windows)
        cores = os.cpu_count() or 1
    threads = env.get("OMP_NUM_THREADS") or str(max(1, cores // jobs))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # MKL follows OMP: same numbers
        env.setdefault(var, threads)
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


@contextlib.contextmanager
def folder_lock(out: Path):
    """One sweep per folder at a time (the lock goes with the process)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        yield
        return
    with open(out / ".sweep.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise GridError(
                f"another `tprop sweep` is running in {out}; wait for it or use another --out"
            ) from None
        yield


def run(ns: argparse.Namespace) -> int:
    started = time.monotonic()  # --time-limit counts from here
    grid = grids.find(ns.grid)
    if ns.show:
        print(grids.to_toml(grid), end="")
        return 0
    if ns.jobs < 1:
        raise GridError(f"--jobs must be >= 1 (got {ns.jobs})")
    limit = parse_duration(ns.time_limit)
    every = grid.runs(parse_seeds(ns.seeds, grid.seeds))
    extra = parse_set(ns.set, every)
    runs, notes = select(every, ns.filter)
    for note in notes:
        print(note, file=sys.stderr)
    grids.check_values(
        grid, runs, {**extra, "device": ns.device or "auto"}
    )  # kept runs only: 37 ms each
    out = Path(ns.out or Path("runs") / grid.name)
    if out.exists() and not out.is_dir():
        raise GridError(f"--out {out} exists and is not a folder")
    jobs = plan(runs, out, extra, ns)
    if ns.print_commands:
        for j in jobs:
            if j.state != "done":
                print("tprop " + shlex.join(j.args))
        return 0
    if ns.dry_run:
        return dry_run(grid, jobs, out)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):
        manifest = Manifest(out, grid, jobs, extra, {r.name for r in every})
        write_json(manifest.path, manifest.data)
        from tprop.sweep_runner import Runner

        runner = Runner(grid.name, jobs, manifest, ns.jobs, child_env(ns.jobs))
        return runner.run(None if limit is None else (started + limit, limit))


def dry_run(grid: Grid, jobs: list[Job], out: Path) -> int:
    what = {"done": "finished, skip", "resume": "resume", "retry": "retry", "new": "start"}
    for j in jobs:
        print(f"{what[j.state]:15s} {j.run.name}")
    counts = {s: sum(j.state == s for j in jobs) for s in what}
    print(
        f"{grid.name}: {plural(len(jobs), 'run')} into {out}: {counts['done']} finished, "
        f"{counts['resume']} to resume, {counts['retry']} to retry, {counts['new']} to start"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    from tprop.cli import main

    sys.exit(main([NAME, *sys.argv[1:]]))
