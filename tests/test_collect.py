"""`tprop collect`: finished runs of several real sweep folders into one that reports as one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import write_tiny_ptb
from test_sweep import TINY, write_grid
from tprop.cli import main


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def lanes(tmp_path_factory) -> Path:
    """Two lanes of one tiny grid, as a study run side by side: ADMM in a/, BPTT in b/, and
    a run in b/ that never finished (its summary.json removed; its checkpoint.pt stays)."""
    root = tmp_path_factory.mktemp("lanes")
    data, grid = write_tiny_ptb(root / "data"), write_grid(root, TINY.replace("[1, 2]", "1"))
    for lane, keep in (("a", ["method=admm"]), ("b", ["method=bptt", "--seeds", "1,2"])):
        args = [grid, "--out", root / lane, "--data-dir", data, "--device", "cpu", "--filter"]
        assert main(["sweep", *map(str, args + keep)]) == 0
    (root / "b" / "bptt_K5_s2" / "summary.json").unlink()
    return root


def collect(*args: object) -> int:
    return main(["collect", *map(str, args)])


def test_collect_merges_finished_runs_without_checkpoints_and_reports_as_one(
    lanes, tmp_path, capsys
):
    dest = tmp_path / "results"
    assert (lanes / "a" / "admm_B5_h1_s1" / "checkpoint.pt").is_file()
    assert collect(lanes / "a", lanes / "b", "--into", dest) == 0
    out = capsys.readouterr().out
    assert "collect: 2 runs copied into" in out and "1 unfinished skipped (bptt_K5_s2)" in out
    assert sorted(p.name for p in dest.iterdir()) == ["admm_B5_h1_s1", "bptt_K5_s1", "sweep.json"]
    for name, lane in (("admm_B5_h1_s1", "a"), ("bptt_K5_s1", "b")):
        copied = tree(dest / name)
        assert "checkpoint.pt" not in copied
        assert copied == {k: v for k, v in tree(lanes / lane / name).items() if k in copied}
    manifest = json.loads((dest / "sweep.json").read_text())
    assert set(manifest["grids"]) == {"tiny"}
    assert {n: r["state"] for n, r in manifest["runs"].items()} == {
        "admm_B5_h1_s1": "finished",
        "bptt_K5_s1": "finished",
    }
    assert manifest["runs"]["bptt_K5_s1"]["command"].startswith("tprop train ")
    assert main(["report", str(dest), "--no-figures"]) == 0
    runs_csv = (dest / "runs.csv").read_text()
    assert runs_csv.count(",finished,") == 2 and "bptt_K5_s2" not in runs_csv

    # again: nothing to copy, nothing changed; a lone run folder and --only work as sources
    before = tree(dest)
    assert collect(lanes / "a", lanes / "b", "--into", dest) == 0
    assert "0 runs copied into" in capsys.readouterr().out and tree(dest) == {**before}
    single = tmp_path / "single"
    assert collect(lanes / "b" / "bptt_K5_s1", "--into", single, "--checkpoints") == 0
    assert (single / "bptt_K5_s1" / "checkpoint.pt").is_file()
    assert "bptt_K5_s1" in json.loads((single / "sweep.json").read_text())["runs"]
    only = tmp_path / "only"
    assert collect(lanes / "a", lanes / "b", "--into", only, "--only", "bptt_*") == 0
    assert sorted(p.name for p in only.iterdir()) == ["bptt_K5_s1", "sweep.json"]


def test_dry_run_writes_nothing(lanes, tmp_path, capsys):
    assert collect(lanes / "a", "--into", tmp_path / "dest", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "would copy" in out and "1 run would copy" in out and not (tmp_path / "dest").exists()


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "is not a folder of runs"),
        ("file_dest", "exists and is not a folder"),
        ("no_match", "no run folders matching zzz*"),
        ("self", "is DEST itself"),
        ("conflict", "already holds a different run"),
        ("twins", "two sources hold different runs named admm_B5_h1_s1"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_dest_unchanged(lanes, tmp_path, capsys, case, needle):
    dest = tmp_path / "dest"
    assert collect(lanes / "a", "--into", dest) == 0
    twin = tmp_path / "twin"
    shutil.copytree(lanes / "a", twin)
    summary = twin / "admm_B5_h1_s1" / "summary.json"
    summary.write_text(summary.read_text().replace('"best_epoch"', '"best_epoch_x"'))
    (tmp_path / "file").write_text("")
    args = {
        "missing": [tmp_path / "nowhere", "--into", dest],
        "file_dest": [lanes / "a", "--into", tmp_path / "file"],
        "no_match": [lanes / "a", "--into", dest, "--only", "zzz*"],
        "self": [dest, "--into", dest],
        "conflict": [twin, lanes / "b", "--into", dest],
        "twins": [lanes / "a", twin, "--into", tmp_path / "new"],
    }[case]
    capsys.readouterr()
    before = tree(dest)
    assert collect(*args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert tree(dest) == before and not (tmp_path / "new").exists()
