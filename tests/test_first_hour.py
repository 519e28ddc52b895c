"""What a newcomer meets first: the demo (its ADMM is ADMM; it runs twice), eval on a run
folder, honest divergence messages, a closed pipe, and one writer per run folder."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import TINY, train_tiny
from tprop.cli import demo_config, main
from tprop.train import train

DEMO_SMALL = ["--train-limit", "3000", "--eval-limit", "1000", "--epochs", "2", "--device", "cpu"]


def epochs(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "epoch"]


def test_demo_admm_takes_dual_steps_differs_from_pm_and_runs_twice(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *DEMO_SMALL]) == 0
    first = capsys.readouterr().out
    assert all(e["tp/dual_norm"] > 0 for e in epochs(out / "admm"))  # duals from epoch 1
    # The same run as the penalty method (no duals) ends elsewhere.
    ns = argparse.Namespace(
        out=str(tmp_path / "pm"),
        device="cpu",
        train_limit=3000,
        eval_limit=1000,
        epochs=2,
        overwrite=False,
    )
    pm = train(demo_config("admm", ns, method="pm", u_lr=None))
    admm = json.loads((out / "admm" / "summary.json").read_text())
    assert pm["best_valid_ppl"] != admm["best_valid_ppl"]
    # A second run is refused with advice the demo accepts, and --resume reuses the runs.
    assert main(["demo", "--out", str(out), *DEMO_SMALL]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--resume" in err and err.count("\n") == 1
    assert main(["demo", "--out", str(out), *DEMO_SMALL, "--resume"]) == 0
    again = capsys.readouterr().out
    assert first.splitlines()[-2:] == again.splitlines()[-2:]  # the same two results


def test_admm_that_never_reaches_its_dual_epoch_says_so(tiny_data, tmp_path, capsys):
    assert train_tiny(tiny_data, tmp_path / "r", "--epochs 2 --method admm --block-size 5") == 0
    out = capsys.readouterr().out
    assert "note: admm takes its first dual step in epoch 3" in out
    assert "this run is the penalty method" in out


def test_eval_takes_a_run_folder_and_applies_the_runs_limits(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_tiny(tiny_data, run, "--epochs 1 --method bptt --bptt 5 --eval-limit 100") == 0
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    r = json.loads(out.splitlines()[-1])
    assert r["limit"] == 100 and abs(r["ppl"] / summary["test_ppl"] - 1) < 1e-9
    assert "first 100 tokens" in out
    assert main(["eval", "--checkpoint", str(run), "--limit", "0", "--no-progress"]) == 0
    whole = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert whole["limit"] == 0 and whole["tokens"] > r["tokens"]


def test_divergence_in_the_first_epoch_says_only_what_is_true(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    flags = "--epochs 2 --optim sgd --lr 50 --clip 0 --max-ppl 100"
    code = train_tiny(tiny_data, run, flags)
    out, err = capsys.readouterr()
    assert code == 3 and err.count("\n") == 1, err
    assert "saved no checkpoint yet" in err and "last good checkpoint" not in err, err
    assert not (run / "checkpoint.pt").exists()
    assert max(len(line) for line in out.splitlines()) < 200, out  # no 300-digit numbers
    assert "stopped: diverged" in out


def test_a_closed_pipe_ends_quietly(tiny_data, tmp_path):
    run = tmp_path / "run"
    assert train_tiny(tiny_data, run, "--epochs 1 --method bptt --bptt 5") == 0
    # `tprop eval … | head -0`: the reader is gone before tprop writes a byte.
    r, w = os.pipe()
    os.close(r)
    proc = subprocess.run(
        [sys.executable, "-m", "tprop", "eval", "--checkpoint", str(run), "--no-progress"],
        stdout=w,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    os.close(w)
    assert proc.stderr == "" and proc.returncode == 141, proc.stderr


def test_two_runs_into_one_folder_one_writer(tiny_data, tmp_path):
    """Started together, one run trains and the other is refused in one line: the folder ends
    with one run's files, never a mix."""
    run = tmp_path / "run"
    flags = f"--epochs 2 --method bptt --bptt 5 --data-dir {tiny_data} --out {run}".split()
    args = [sys.executable, "-m", "tprop", "train", *TINY, *flags]
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 2], results
    err = next(e for c, e in results if c == 2)
    assert err.count("\n") == 1 and ("another tprop process" in err or "not empty" in err), err
    events = [json.loads(x)["event"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert events.count("summary") == 1 and events.count("epoch") == 2


def test_a_held_folder_is_refused_and_a_dead_writer_does_not_block(tiny_data, tmp_path):
    run = tmp_path / "run"
    assert train_tiny(tiny_data, run, "--epochs 1 --method bptt --bptt 5") == 0
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
                "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
            ),
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    resume = [
        sys.executable,
        "-m",
        "tprop",
        "train",
        "--out",
        str(run),
        "--resume",
        "--epochs",
        "2",
        "--data-dir",
        str(tiny_data),
        "--no-progress",
    ]
    proc = subprocess.run(resume, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "another tprop process" in proc.stderr, proc.stderr
    holder.kill()  # the writer dies: the kernel drops its lock
    holder.wait()
    t0 = time.time()
    proc = subprocess.run(resume, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2 and time.time() - t0 < 60


def test_run_files_follow_the_umask(tiny_data, tmp_path):
    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        assert train_tiny(tiny_data, run, "--epochs 1 --method bptt --bptt 5") == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.iterdir()}
    assert set(modes.values()) == {0o644}, modes
