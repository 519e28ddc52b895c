"""`tprop sweep`: grids, names, the plan, and real sweeps of tiny runs (run, skip, resume, fail)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tprop import grids
from tprop.cli import main
from tprop.grids import GridError
from tprop.sweep import flags
from tprop.sweep_flags import parse_duration
from tprop.sweep_runner import Runner

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = """
name = "tiny"
description = "a tiny grid"
seeds = [1]

[common]
dataset = "ptb"
hidden = 16
batch_size = 4
epochs = 2
h_lr = 0.001
lam = 0.1

[[group]]
method = "admm"
block_size = 5
h_steps = [1, 2]

[[group]]
method = "bptt"
bptt = 5
"""
SUMMARY = (
    "best_valid_ppl",
    "best_epoch",
    "final_valid_ppl",
    "valid_ppl_history",
    "test_ppl",
    "epochs",
    "stop_reason",
)


def write_grid(tmp_path: Path, text: str = TINY, name: str = "grid.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def sweep(*args: str) -> int:
    return main(["sweep", *map(str, args)])


def summary(run: Path) -> dict:
    s = json.loads((run / "summary.json").read_text())
    return {k: s.get(k) for k in SUMMARY}


def epochs(run: Path) -> list[dict]:
    timing = {"time/wall_s", "train/tokens_per_s", "train/epoch_s"}
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in timing} for r in rows if r["event"] == "epoch"]


# ---------------------------------------------------------------------------- grids


def test_builtin_grids_expand_to_valid_named_runs():
    sizes = {name: len(g.runs()) for name, g in grids.BUILTIN.items()}
    assert sizes == {
        "table1-minibatch-ptb": 36,
        "table1-batch-ptb": 36,
        "table1-text8": 36,
        "table2": 9,
        "figure3": 45,
        "table3": 9,
        "table4": 30,
    }
    for g in grids.BUILTIN.values():
        runs = g.runs()
        grids.check_values(g, runs, {})  # every run is a valid `tprop train` config
        assert len({r.name for r in runs}) == len(runs)
    names = [r.name for r in grids.BUILTIN["table1-minibatch-ptb"].runs()]
    assert names[:2] == ["admm_B5_h1_s1111", "admm_B5_h2_s1111"] and "bptt_K20_s3333" in names
    f3 = {r.name: r.values["lr"] for r in grids.BUILTIN["figure3"].runs()}
    # θ-lr 0.01 only at hidden 400, named apart; the θ-lr 0.1 names of committed runs unchanged
    assert f3["bptt_hid400_K10_lr0.01_s2222"] == f3["admm_hid400_B10_h5_lr0.01_s1111"] == 0.01
    assert f3["bptt_hid400_K10_s2222"] == f3["admm_hid50_B10_h2_s1111"] == 0.1
    assert sum(lr == 0.01 for lr in f3.values()) == 9
    t1 = {r.name: r.values for r in grids.BUILTIN["table1-minibatch-ptb"].runs()}
    protocol = {
        "dataset": "ptb",
        "hidden": 100,
        "batch_size": 32,
        "lr": 0.1,
        "clip": 0.5,
        "epochs": 10,
        "patience": 3,
        "preset": "tprnn",
        "h_lr": 0.001,
        "lam": 0.1,
        "u_lr": 0.1,
        "method": "admm",
        "block_size": 20,
        "h_steps": 1,
        "seed": 1111,
    }
    assert protocol.items() <= t1["admm_B20_h1_s1111"].items()
    assert "lam" not in t1["bptt_K20_s1111"]  # TP-only common keys are left out of BPTT runs
    assert (
        grids.run_name("admm", {"block_size": 20, "h_steps": 1, "h_lr": 0.001, "lam": 0.1}, 1111)
        == "admm_B20_h1_hlr0.001_lam0.1_s1111"
    )


def test_toml_round_trip_and_a_new_axis_needs_no_code(tmp_path):
    for g in grids.BUILTIN.values():
        back = grids.load_toml(write_grid(tmp_path, grids.to_toml(g), f"{g.name}.toml"))
        assert [r.values for r in back.runs()] == [r.values for r in g.runs()]
    # any `tprop train` setting is an axis: here eval_batch_size, with its name in run names
    g = grids.load_toml(write_grid(tmp_path, TINY + "eval_batch_size = [5, 10]\n"))
    assert [r.name for r in g.runs()][-2:] == [
        "bptt_K5_evalbatchsize5_s1",
        "bptt_K5_evalbatchsize10_s1",
    ]


def test_dry_run_print_commands_filter_seeds_set(tmp_path, capsys):
    grid = write_grid(tmp_path)
    out = tmp_path / "out"
    assert sweep(grid, "--out", out, "--dry-run", "--seeds", "2") == 0
    text = capsys.readouterr().out
    assert "start           admm_B5_h1_s2222" in text and "6 runs into" in text
    assert not out.exists()  # a dry run writes nothing
    assert (
        sweep(
            grid,
            "--out",
            out,
            "--print-commands",
            "--filter",
            "method=admm",
            "--filter",
            "h_steps=2,5",
            "--seeds",
            "7,",
            "--set",
            "epochs=3",
            "--data-dir",
            "D",
            "--device",
            "cpu",
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"tprop train --dataset ptb --hidden 16 --batch-size 4 --epochs 3 "
        f"--h-lr 0.001 --lam 0.1 --method admm --block-size 5 --h-steps 2 --seed 7 "
        f"--no-progress --out {out}/admm_B5_h2_s7 --data-dir D --device cpu"
    ]
    assert sweep(grid, "--out", out, "--print-commands", "--filter", "bptt_*") == 0
    assert capsys.readouterr().out.count("tprop train") == 1
    assert not out.exists()
    assert sweep("table3", "--show") == 0
    assert "h_lr = [0.1, 0.01, 0.001]" in capsys.readouterr().out


def started(dry_run: str) -> int:
    return sum(line.startswith("start ") for line in dry_run.splitlines())


def test_filter_on_a_tp_setting_says_it_keeps_bptt_runs_by_default(tmp_path, capsys):
    # BPTT runs do not set block_size, so block_size=20 (the default) keeps them all: say so
    out = tmp_path / "out"
    assert sweep("table1-batch-ptb", "--out", out, "--dry-run", "--filter", "block_size=20") == 0
    cap = capsys.readouterr()
    assert started(cap.out) == 3 * 6  # B = 20 at H-steps 1, 2, 5 and BPTT K = 5, 10, 20
    assert "--filter block_size=20 also keeps 9 BPTT runs" in cap.err
    assert "--filter '*[BK]20_*'" in cap.err
    assert sweep("table1-batch-ptb", "--out", out, "--dry-run", "--filter", "*[BK]20_*") == 0
    cap = capsys.readouterr()
    assert started(cap.out) == 3 * 4  # the B = 20 column
    assert cap.err == ""
    for narrowed in (["block_size=10"], ["block_size=20", "method=admm"], ["hidden=100"]):
        args = [a for f in narrowed for a in ("--filter", f)]
        assert sweep("table1-batch-ptb", "--out", out, "--dry-run", *args) == 0
        assert "note:" not in capsys.readouterr().err, narrowed
    assert sweep("figure3", "--out", out, "--dry-run", "--filter", "block_size=20") == 0
    err = capsys.readouterr().err  # B = 10 in figure3: only BPTT runs are left, no name hint
    assert "--filter block_size=20 keeps only 15 BPTT runs" in err and "*[BK]" not in err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["no-such-grid"], "unknown grid 'no-such-grid'"),
        (["{bad}"], "is not valid TOML"),
        (["{missing}"], "does not exist"),
        (["{unknown_key}"], "unknown setting 'hiden'"),
        (["{control_key}"], "'out' is set by `tprop sweep` itself"),
        (["{grid}", "--set", "block_size=10"], "the grid's groups set it"),
        (["{grid}", "--set", "nonsense"], "expected KEY=VALUE"),
        (["{grid}", "--filter", "method=alm"], "keeps none of the 3 runs"),
        (["{grid}", "--filter", "colour=red"], "'colour' is not a `tprop train` setting"),
        (["{grid}", "--seeds", "x"], "--seeds 'x'"),
        (["{grid}", "--seeds", "3333"], "for the one seed 3333 write --seeds 3333,"),
        (["{grid}", "--jobs", "0"], "--jobs must be >= 1"),
        (["{grid}", "--time-limit", "5d"], "--time-limit '5d': give a duration such as 90s"),
        (["{grid}", "--set", "lr=-1"], "run admm_B5_h1_s1: --lr must be a positive number"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, needle):
    files = {
        "grid": write_grid(tmp_path),
        "bad": write_grid(tmp_path, "name = [", "bad.toml"),
        "missing": tmp_path / "missing.toml",
        "unknown_key": write_grid(tmp_path, "[common]\nhiden = 3\n", "u.toml"),
        "control_key": write_grid(tmp_path, "[common]\nout = 'x'\n", "c.toml"),
    }
    code = sweep(*(a.format(**files) for a in args), "--out", tmp_path / "out", "--dry-run")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err, err


# ---------------------------------------------------------------------------- real sweeps


def test_sweep_runs_records_a_failure_then_skips_finished_runs(tmp_path, tiny_data, capsys):
    grid = write_grid(
        tmp_path,
        TINY.replace("h_steps = [1, 2]", "h_steps = 1").replace(
            "block_size = 5", "block_size = [5, 100000]"
        ),
    )  # B = 100000 fails: longer than the data
    out, bad = tmp_path / "out", "admm_B100000_h1_s1"
    args = [grid, "--out", out, "--data-dir", tiny_data, "--device", "cpu", "--jobs", "2"]
    assert sweep(*args) == 1  # non-zero: a run failed, the others finished
    captured = capsys.readouterr()
    assert f"FAILED {bad} (exit 2)" in captured.out and "3/3 done" not in captured.out
    assert "2/3 done, 0 running, 1 failed" in captured.out
    assert "1 failed, 0 interrupted: admm_B100000_h1_s1 (see their stdout.log" in captured.err
    good = ["admm_B5_h1_s1", "bptt_K5_s1"]
    assert all((out / n / "summary.json").is_file() for n in good)
    assert not (out / bad / "summary.json").exists()
    assert "block-size" in (out / bad / "stdout.log").read_text()
    log = (out / "bptt_K5_s1" / "stdout.log").read_text()
    assert log.startswith("$ tprop train ") and "test ppl" in log
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["grids"]["tiny"]["source"] == str(grid)
    states = {n: (r["state"], r.get("returncode")) for n, r in manifest["runs"].items()}
    assert states == {good[0]: ("finished", None), bad: ("failed", 2), good[1]: ("finished", None)}
    assert manifest["runs"][good[0]]["axes"] == {
        "method": "admm",
        "h_steps": 1,
        "block_size": 5,
        "seed": 1,
    }
    # a rerun starts nothing that finished, and would retry the failed run
    assert sweep(*args, "--filter", "block_size=5") == 0
    assert "1 already finished, 0 to do" in capsys.readouterr().out
    assert sweep(*args, "--filter", "method=bptt") == 0
    assert "1 already finished, 0 to do" in capsys.readouterr().out
    assert (out / "bptt_K5_s1" / "stdout.log").read_text() == log
    assert sweep(*args, "--dry-run") == 0
    text = capsys.readouterr().out
    assert f"retry           {bad}" in text and "2 finished, 0 to resume, 1 to retry" in text
    assert main(["report", str(out), "--no-figures"]) == 0  # the failure is listed
    assert f"{bad},failed,,,,,exit 2:" in (out / "runs.csv").read_text()
    # a pending run of a plan given up (not in this grid under these seeds, no folder) is
    # dropped on the next sweep; another grid's pending runs and this grid's failed run stay
    manifest = json.loads((out / "sweep.json").read_text())
    gone = {"grid": "tiny", "state": "pending", "values": {}}
    manifest["runs"]["admm_B5_h1_s9"] = gone
    manifest["runs"]["other_s1"] = {**gone, "grid": "other"}
    (out / "sweep.json").write_text(json.dumps(manifest))
    assert sweep(*args, "--filter", "method=bptt") == 0
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert "admm_B5_h1_s9" not in runs and "other_s1" in runs and runs[bad]["state"] == "failed"


def test_gpu_sweep_script_runs_every_run_at_once_and_packs_them(tmp_path, tiny_data):
    # experiments/gpu_sweep.sh is what a lent GPU machine runs: try it on the CPU, tiny runs
    grid = write_grid(tmp_path, TINY.replace("h_steps = [1, 2]", "h_steps = 1"))
    out, runs = tmp_path / "gpu-out", tmp_path / "runs" / "tiny-gpu"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DEVICE": "cpu",
        "DATA": str(tiny_data),
        "OUT": str(out),
        "RUNS": str(runs),
        "OMP_NUM_THREADS": "1",
    }
    script = str(SRC.parent / "experiments" / "gpu_sweep.sh")
    args = ["bash", script, str(grid), "--set", "epochs=1"]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "2/2 runs finished" in proc.stdout
    machine = (out / "machine.txt").read_text()
    assert f"tprop sweep {grid} --set epochs=1 --jobs 2 --device cpu --time-limit 8m" in machine
    with tarfile.open(out / "grid-runs.tgz") as tar:
        names = tar.getnames()
    assert {"tiny-gpu/admm_B5_h1_s1/summary.json", "tiny-gpu/bptt_K5_s1/summary.json"} <= set(names)
    assert not any(n.endswith("checkpoint.pt") for n in names)  # the device returns small files
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "2 already finished, 0 to do" in again.stdout
    usage = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: bash experiments/gpu_sweep")
    mine = subprocess.run([*args, "--jobs=3"], env=env, capture_output=True, text=True)
    assert mine.returncode == 2 and "--jobs is the script's to set; use JOBS" in mine.stderr
    assert (out / "machine.txt").read_text().count("call at ") == 2  # each call appends


def test_ctrl_c_stops_the_sweep_and_a_rerun_resumes_exactly(tmp_path, tiny_data):
    grid = write_grid(
        tmp_path,
        TINY.replace(
            "epochs = 2",
            "epochs = 6\npatience = 0\ncheckpoint_every = 0.0005\ndeterministic = true",
        ).replace("h_steps = [1, 2]", "h_steps = 2"),
    )
    out, run = tmp_path / "out", tmp_path / "out" / "admm_B5_h2_s1"
    cmd = [
        sys.executable,
        "-m",
        "tprop.cli",
        "sweep",
        str(grid),
        "--out",
        str(out),
        "--data-dir",
        str(tiny_data),
        "--device",
        "cpu",
        "--filter",
        "method=admm",
    ]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (run / "checkpoint.pt").exists() and proc.poll() is None and time.time() - t0 < 60:
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "sweep stopped by SIGINT: 1 run checkpointed" in err
    assert (run / "checkpoint.pt").is_file() and not (run / "summary.json").exists()
    assert json.loads((out / "sweep.json").read_text())["runs"][run.name]["state"] == "interrupted"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0 and "resuming admm_B5_h2_s1" in rerun.stdout, rerun.stderr
    assert "--resume" in (run / "stdout.log").read_text()
    # a resumed run's wall time is the rest of a run: it says nothing of a whole run's
    assert "time left unknown | finished admm_B5_h2_s1" in rerun.stdout
    ref = tmp_path / "ref"  # the same run, uninterrupted
    values = json.loads((out / "sweep.json").read_text())["runs"][run.name]["values"]
    plain = subprocess.run(
        [
            sys.executable,
            "-m",
            "tprop.cli",
            "train",
            *flags(values),
            "--no-progress",
            "--out",
            str(ref),
            "--data-dir",
            str(tiny_data),
            "--device",
            "cpu",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plain.returncode == 0, plain.stderr
    assert summary(run) == summary(ref)
    assert epochs(run) == epochs(ref)


def test_time_limit_checkpoints_the_runs_and_a_rerun_resumes(
    tmp_path, tiny_data, capsys, monkeypatch
):
    """--time-limit acts as a SIGTERM at that time: each running run checkpoints, the rest do
    not start, the sweep exits 124, and the same command resumes. The sweep's clock is made to
    pass the limit once both runs have a checkpoint, so the test waits on the runs, not on
    a guess of how long they take to start."""
    grid = write_grid(
        tmp_path,
        TINY.replace("epochs = 2", "epochs = 200\npatience = 0\ncheckpoint_every = 0.0005"),
    )  # minutes of runs; were the limit ignored, they would end by themselves and exit 0
    out = tmp_path / "out"
    started = ["admm_B5_h1_s1", "admm_B5_h2_s1"]  # the first two of the grid, --jobs 2
    both_saved = lambda: all((out / n / "checkpoint.pt").is_file() for n in started)  # noqa: E731
    monkeypatch.setattr(Runner, "clock", staticmethod(lambda: math.inf if both_saved() else 0.0))
    args = [grid, "--out", out, "--data-dir", tiny_data, "--device", "cpu", "--jobs", "2"]
    assert sweep(*args, "--time-limit", "1h") == 124
    err = capsys.readouterr().err
    assert "sweep stopped at its --time-limit (1h00m): 2 runs checkpointed, 1 not started" in err
    states = {
        n: r["state"] for n, r in json.loads((out / "sweep.json").read_text())["runs"].items()
    }
    assert states == dict.fromkeys(started, "interrupted") | {"bptt_K5_s1": "pending"}
    assert sweep(*args, "--dry-run") == 0
    plan = capsys.readouterr().out
    assert all(f"resume          {n}" in plan for n in started) and "1 to start" in plan


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 90), ("90s", 90), ("50m", 3000), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400)],
)
def test_time_limit_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["1h30", "m", "", "-3", "0", "5d", "2h 30m"])
def test_time_limit_refuses_what_it_cannot_read_unambiguously(text):
    with pytest.raises(GridError, match="--time-limit"):
        parse_duration(text)


def write_tiny_text8(root: Path, n_train: int = 3000, n_valid: int = 400) -> tuple[int, int]:
    """A file in text8's format (one line of words, single spaces) and its character split."""
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(30)]
    train = " " + " ".join(rng.choice(words) for _ in range(n_train))
    valid = " " + " ".join(rng.choice(words) for _ in range(n_valid))
    (root / "text8").mkdir(parents=True)
    (root / "text8" / "text8").write_text(train + valid)
    return len(train), len(valid)


def test_table1_text8_grid_runs_end_to_end_on_a_small_text8_file(tmp_path, monkeypatch, capsys):
    """The built-in text8 grid (12 cells, one seed, one epoch) on a small file in text8's
    format, then its report. The real protocol splits 99M/1M characters; this file is split by
    its own character counts (--text8-split N,M)."""
    data = tmp_path / "data"
    n_train, n_valid = write_tiny_text8(data)
    monkeypatch.setenv("PYTHONPATH", str(SRC))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "text8"
    assert (
        sweep(
            "table1-text8",
            "--out",
            out,
            "--data-dir",
            data,
            "--device",
            "cpu",
            "--seeds",
            "1111,",
            "--set",
            "epochs=1",
            "--set",
            f"text8_split={n_train},{n_valid}",
            "--jobs",
            "2",
        )
        == 0
    ), capsys.readouterr().err
    assert "12/12 runs finished" in capsys.readouterr().out
    assert main(["report", str(out), "--markdown-only"]) == 0
    text = capsys.readouterr().out
    assert "### Table 1: validation perplexity — Minibatch Text8" in text
    row = next(x for x in text.splitlines() if x.startswith("| H-steps = 1 |"))
    assert row.count("(1) · ") == 3 and "· 242.02 ·" in row and "· 205.67 ·" in row
    assert "differs from the paper's protocol: epochs = 1 (protocol 10)" in text


def test_progress_line_at_each_epoch_paces_the_time_left(tmp_path, tiny_data, capsys, monkeypatch):
    from tprop import sweep_runner

    monkeypatch.setattr(sweep_runner, "EPOCH_POLL_S", 0.0)  # look at every poll
    grid = write_grid(tmp_path, TINY.replace("epochs = 2", "epochs = 4"))
    args = [grid, "--out", tmp_path / "out", "--data-dir", tiny_data, "--device", "cpu"]
    assert sweep(*args, "--filter", "admm_B5_h1_*") == 0
    lines = capsys.readouterr().out.splitlines()
    epochs = [x for x in lines if ": epoch " in x]
    seen = [x.split(": epoch ")[1].split(",")[0] for x in epochs]  # two may end in one look
    assert (
        seen and seen == sorted(set(seen)) and all(e in ("1/4", "2/4", "3/4", "4/4") for e in seen)
    )
    assert all("valid ppl" in x and "(best " in x for x in epochs)
    assert "time left unknown" not in epochs[0]  # paced by the epoch before any run finished
    started = next(i for i, x in enumerate(lines) if "started admm_B5_h1_s1" in x)
    assert "time left unknown" in lines[started]


def test_last_epoch_skips_a_line_being_written(tmp_path):
    from tprop.sweep_runner import last_epoch

    assert last_epoch(tmp_path) == (0, {})
    rec = {"event": "epoch", "epoch": 2, "valid/ppl": 9.0}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rec) + '\n{"event": "ep')
    assert last_epoch(tmp_path) == (2, rec)


def test_time_left_counts_what_is_left_of_the_running_runs():
    from tprop.sweep_runner import time_left

    # one lane, a run with 65 min to go: all 65 min are left (not half of them)
    assert time_left(3900.0, 0, [3900.0], 1) == 3900.0
    assert time_left(3900.0, 0, [0.0], 1) == 0.0  # past its pace: ending now
    assert time_left(600.0, 3, [500.0, 100.0], 2) == (1800 + 500 + 100) / 2
    assert time_left(600.0, 2, [5400.0], 1) == 1200.0 + 5400.0
    # 27 lanes, one run left with an hour to go: an hour, not an hour over 27
    assert time_left(600.0, 0, [3600.0], 27) == 3600.0
    assert time_left(600.0, 1, [3600.0, 60.0], 27) == 3600.0
    assert time_left(600.0, 0, [], 2) == 0.0


def test_a_resumed_runs_pace_counts_from_the_first_epoch_it_ends(tmp_path, capsys, monkeypatch):
    """It resumed inside an epoch whose start it did not time: epochs ended before say nothing,
    the first one it ends starts the pace, the second gives it."""
    from tprop import sweep_runner
    from tprop.sweep import Job

    clock = [1000.0]
    monkeypatch.setattr(sweep_runner.time, "monotonic", lambda: clock[0])
    runner = Runner("g", [], None, 1, {})
    a = sweep_runner.Active(Job(None, tmp_path, "resume", []), None, None)
    runner.active = {"r": a}
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 10}))
    metrics = tmp_path / "metrics.jsonl"

    def end_epochs(*ks: int) -> None:
        recs = [{"event": "epoch", "epoch": k, "valid/ppl": 200.0 - k} for k in ks]
        with metrics.open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in recs))

    end_epochs(1, 2, 3, 4)  # before the checkpoint it resumed from
    runner._look_at_epochs()
    assert a.epoch == 4 and capsys.readouterr().out == ""
    clock[0] += 700.0  # the rest of epoch 5, timed from the resume: not a pace
    end_epochs(5)
    runner._look_at_epochs()
    assert "r: epoch 5/10, valid ppl 195.00" in capsys.readouterr().out
    assert a.epoch_s() is None and a.left(clock[0]) is None
    clock[0] += 300.0  # epoch 6: 300 s
    end_epochs(6)
    runner._look_at_epochs()
    assert "~20m00s left | r: epoch 6/10" in capsys.readouterr().out  # 4 epochs at 300 s
    assert a.epoch_s() == 300.0 and a.left(clock[0] + 100.0) == 1100.0


def test_epoch_line_reads_a_diverged_epoch():
    from tprop.sweep_runner import epoch_line

    rec = {"epoch": 2, "valid/ppl": 150.214, "valid/best_ppl": 148.9}
    assert epoch_line("r", 2, 10, rec) == "r: epoch 2/10, valid ppl 150.21 (best 148.90)"
    rec = {"epoch": 1, "valid/ppl": "inf", "valid/best_ppl": "inf"}  # as metrics.jsonl has it
    assert epoch_line("r", 1, None, rec) == "r: epoch 1/?, valid ppl inf (best inf)"
    assert epoch_line("r", 1, 3, {}) == "r: epoch 1/3"
