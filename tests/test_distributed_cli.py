"""Distributed runs through the CLI: `tprop train --nproc 2` and torchrun end with the
single-process summary (float64); a killed rank stops the others within 60 s with a message
that names it; torchrun's restart resumes the run from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import write_tiny_ptb

FLAGS = ["--dataset", "ptb", "--hidden", "16", "--batch-size", "6", "--no-progress",
         "--device", "cpu", "--method", "admm", "--preset", "tprnn", "--block-size", "5",
         "--dtype", "float64", "--u-start-epoch", "1"]  # fmt: skip
TPROP = [sys.executable, "-m", "tprop", "train"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tiny_ptb(tmp_path_factory.mktemp("d") / "data", n_lines=(600, 20, 20))


def flags(data: Path, out: Path, epochs: int) -> list[str]:
    return [*FLAGS, "--data-dir", str(data), "--out", str(out), "--epochs", str(epochs)]


@pytest.fixture(scope="module")
def single(data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("single") / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors: threads only contend
    subprocess.run([*TPROP, *flags(data, out, 4)], check=True, capture_output=True, env=env)
    return json.loads((out / "summary.json").read_text())


def same_result(got: dict, ref: dict) -> bool:
    keys = ("best_valid_ppl", "test_ppl")
    pairs = [(got[k], ref[k]) for k in keys]
    pairs += list(zip(got["valid_ppl_history"], ref["valid_ppl_history"], strict=True))
    return all(abs(a - b) <= 1e-9 * abs(b) for a, b in pairs)


def test_nproc_2_ends_with_the_single_process_summary(data, single, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([*TPROP, *flags(data, out, 4), "--nproc", "2"], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and same_result(summary, single)
    assert "× 2 processes" in done.stdout
    epoch = [json.loads(x) for x in (out / "metrics.jsonl").open() if '"epoch"' in x][-1]
    assert {"dist/bytes_per_step/grad", "dist/bytes_per_step/border"} <= set(epoch)


def _rank_pid(tag: str, rank: int, restarts: str = "0", wait_s: float = 60) -> int:
    """The pid of the rank of this test's run (found by the tag in its environment)."""
    want = {f"TPROP_TEST_TAG={tag}", f"RANK={rank}"}
    t0 = time.time()
    while time.time() - t0 < wait_s:
        for proc in Path("/proc").iterdir():
            try:
                env = set((proc / "environ").read_bytes().decode(errors="replace").split("\0"))
            except (OSError, ValueError):
                continue
            restart = f"TORCHELASTIC_RESTART_COUNT={restarts}"
            if want <= env and (restart in env or not any("RESTART_COUNT" in e for e in env)):
                return int(proc.name)
        time.sleep(0.1)
    raise AssertionError(f"rank {rank} of run {tag} never started")


def _wait_for_epochs(out: Path, n: int, proc: subprocess.Popen, wait_s: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < wait_s and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count('"event": "epoch"') >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach epoch {n}: {proc.poll()}")


def _start(cmd: list[str], tag: str, **env: str) -> subprocess.Popen:
    full = {**os.environ, "TPROP_TEST_TAG": tag, **env}
    return subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def test_killed_rank_stops_the_launcher_within_60_s_naming_it(data, tmp_path):
    tag, out = uuid.uuid4().hex, tmp_path / "run"
    proc = _start([*TPROP, *flags(data, out, 1000), "--nproc", "2"], tag)
    _wait_for_epochs(out, 1, proc)
    os.kill(_rank_pid(tag, 1), signal.SIGKILL)
    t0 = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and time.time() - t0 < 60
    assert "rank 1" in err and "SIGKILL" in err, err
    assert "Traceback" not in err


def test_survivor_names_the_lost_rank_without_a_launcher(data, tmp_path):
    """As on several machines, where no one agent watches all ranks: rank 0 itself notices."""
    tag, out = uuid.uuid4().hex, tmp_path / "run"
    from test_distributed import free_port

    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    cmd = [*TPROP, *flags(data, out, 1000)]
    procs = [_start(cmd, tag, RANK=str(r), LOCAL_RANK=str(r), **env) for r in (0, 1)]
    _wait_for_epochs(out, 1, procs[0])
    procs[1].kill()
    t0 = time.time()
    _, err = procs[0].communicate(timeout=60)
    assert procs[0].returncode != 0 and time.time() - t0 < 60
    assert "lost rank 1" in err and "--resume" in err, err
    assert "Traceback" not in err


def test_torchrun_restart_resumes_and_ends_with_the_uninterrupted_result(data, single, tmp_path):
    tag, out = uuid.uuid4().hex, tmp_path / "run"
    cmd = [*TORCHRUN, "--max-restarts=1", "-m", "tprop", "train", *flags(data, out, 4)]
    proc = _start(cmd, tag)
    _wait_for_epochs(out, 1, proc)
    os.kill(_rank_pid(tag, 1), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert same_result(summary, single)
    events = [json.loads(x)["event"] for x in (out / "metrics.jsonl").open()]
    assert "resume" in events and events.count("epoch") == 4
