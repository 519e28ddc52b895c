"""Exact resume after SIGKILL/SIGTERM, atomic checkpoints, safe loading, the bad-input battery."""

from __future__ import annotations

import gzip
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tprop.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"
# TPROP_TEST_DEVICE=cuda runs the resume tests on a GPU (a device check, not part of CI).
RUN = [
    "--dataset",
    "ptb",
    "--hidden",
    "24",
    "--batch-size",
    "4",
    "--no-progress",
    "--device",
    os.environ.get("TPROP_TEST_DEVICE", "cpu"),
    "--deterministic",
    "--method",
    "admm",
    "--preset",
    "paper",
    "--block-size",
    "5",
    "--h-steps",
    "2",
    "--u-start-epoch",
    "2",
    "--epochs",
    "8",
    "--patience",
    "0",
    "--checkpoint-every",
    "0.0005",
]  # a checkpoint every ~30 ms
TIMING = {"time/wall_s", "train/tokens_per_s", "train/epoch_s"}
SUMMARY = (
    "best_valid_ppl",
    "best_epoch",
    "final_valid_ppl",
    "valid_ppl_history",
    "test_ppl",
    "test_bits",
    "epochs",
    "stop_reason",
)


def cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tprop.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def epoch_records(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows if r["event"] == "epoch"]


def outcome(run: Path) -> tuple[list[dict], dict]:
    s = json.loads((run / "summary.json").read_text())
    return epoch_records(run), {k: s.get(k) for k in SUMMARY}


def wait_for(cond, proc, limit=120.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < limit:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.0005)
    return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from conftest import write_tiny_ptb

    root = tmp_path_factory.mktemp("resume")
    data = write_tiny_ptb(root / "data")
    ref = root / "ref"
    code, err = finish(cli("train", *RUN, "--data-dir", str(data), "--out", str(ref)))
    assert code == 0, err
    return data, outcome(ref)


def tmp_files(run: Path) -> list[Path]:
    return list(run.glob("*.tmp"))


KILL_POINTS = {
    "first checkpoint": lambda run: (run / "checkpoint.pt").exists(),
    "third epoch": lambda run: (
        (run / "metrics.jsonl").exists()
        and (run / "metrics.jsonl").read_text().count('"event": "epoch"') >= 3
    ),
    "during a checkpoint write": lambda run: (
        (run / "checkpoint.pt").exists() and bool(tmp_files(run))
    ),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_then_resume_gives_the_uninterrupted_metrics(reference, tmp_path, point):
    data, expected = reference
    for _attempt in range(5):
        run = tmp_path / f"run{_attempt}"
        proc = cli("train", *RUN, "--data-dir", str(data), "--out", str(run))
        caught = wait_for(lambda r=run: KILL_POINTS[point](r), proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # "during a checkpoint write" counts only if the kill really left a torn temp file;
        # a write is a few ms, so on a slow machine it may take more than one try
        if point != "during a checkpoint write":
            assert caught, f"the run ended before the kill point '{point}'"
            break
        if caught and tmp_files(run):
            break
    else:
        pytest.skip("could not catch a checkpoint write in 5 tries")
    saved = torch.load(run / "checkpoint.pt", weights_only=True)  # never torn
    assert saved["progress"]["epoch"] <= 8
    code, err = finish(cli("train", "--out", str(run), "--resume", "--no-progress"))
    assert code == 0, err
    assert outcome(run) == expected
    assert not tmp_files(run)


def test_sigterm_checkpoints_and_exits_143_then_resumes(reference, tmp_path):
    data, expected = reference
    run = tmp_path / "run"
    proc = cli("train", *RUN, "--data-dir", str(data), "--out", str(run))
    assert wait_for(lambda: (run / "checkpoint.pt").exists(), proc), finish(proc)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 143, err
    assert err.strip().count("\n") == 0 and "SIGTERM: checkpoint saved" in err, err
    code, err = finish(cli("train", "--out", str(run), "--resume", "--no-progress"))
    assert code == 0, err
    assert outcome(run) == expected


# ---- bad input battery ---------------------------------------------------------------------
TINY = [
    "--dataset",
    "ptb",
    "--hidden",
    "16",
    "--batch-size",
    "4",
    "--epochs",
    "1",
    "--no-progress",
    "--device",
    "cpu",
    "--bptt",
    "5",
]


def one_line(capsys, argv, needle, code=2) -> str:
    got = main(argv)
    err = capsys.readouterr().err.strip()
    assert got == code, err
    assert "\n" not in err and "Traceback" not in err, err
    assert needle in err, err
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def corrupt_data(kind: str, root: Path) -> Path:
    from conftest import write_tiny_ptb

    write_tiny_ptb(root)
    train = root / "ptb" / "train.txt"
    if kind == "binary":
        train.write_bytes(bytes(range(256)) * 20)
    elif kind == "truncated gz":
        blob = gzip.compress(train.read_bytes())
        train.unlink()
        (root / "ptb" / "train.txt.gz").write_bytes(blob[: len(blob) // 2])
    elif kind == "empty":
        train.write_text("")
    elif kind == "missing":
        train.unlink()
    elif kind == "unseen valid token":
        with open(root / "ptb" / "valid.txt", "a") as fh:
            fh.write(" zebra \n")
    return root


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("binary", "train"),
        ("truncated gz", "train"),
        ("empty", "empty"),
        ("missing", "train"),
        ("unseen valid token", "zebra"),
    ],
)
def test_bad_data_file(tmp_path, capsys, kind, needle):
    data = corrupt_data(kind, tmp_path / "d")
    out = tmp_path / "run"
    one_line(capsys, ["train", *TINY, "--data-dir", str(data), "--out", str(out)], needle)
    assert not out.exists()


def test_wrong_checksum(tmp_path, capsys):
    from conftest import write_tiny_ptb

    data = write_tiny_ptb(tmp_path / "d")
    main(["data", "verify", "ptb", "--data-dir", str(data)])
    err = capsys.readouterr().err
    assert "do not match their pinned sha256" in err and err.count("\n") == 1


@pytest.fixture
def finished_run(tiny_data, tmp_path) -> Path:
    out = tmp_path / "done"
    assert main(["train", *TINY, "--data-dir", str(tiny_data), "--out", str(out)]) == 0
    return out


def bad_checkpoint(kind: str, path: Path) -> None:
    blob = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif kind == "garbage":
        path.write_bytes(os.urandom(2048))
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "pickled code":
        torch.save({"model": torch.nn.Linear(2, 2)}, path)


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("truncated", "corrupt or truncated"),
        ("garbage", "corrupt or truncated"),
        ("foreign", "not a tprop checkpoint"),
        ("pickled code", "needs pickled code"),
    ],
)
def test_bad_checkpoint_for_eval_and_resume(finished_run, tiny_data, capsys, kind, needle):
    ck = finished_run / "checkpoint.pt"
    bad_checkpoint(kind, ck)
    before = snapshot(finished_run)
    one_line(capsys, ["eval", "--checkpoint", str(ck), "--data-dir", str(tiny_data)], needle)
    one_line(
        capsys,
        [
            "train",
            "--out",
            str(finished_run),
            "--resume",
            "--epochs",
            "2",
            "--data-dir",
            str(tiny_data),
        ],
        needle,
    )
    assert snapshot(finished_run) == before


@pytest.mark.parametrize(
    "flag,value,needle",
    [
        ("--hidden", "32", "hidden=16"),
        ("--method", "pm", "method='bptt'"),
        ("--cell", "lstm", "cell='gru'"),
        ("--dataset", "wikitext-2", "dataset='ptb'"),
    ],
)
def test_resume_with_a_different_setup_is_refused(
    finished_run, tiny_data, capsys, flag, value, needle
):
    before = snapshot(finished_run)
    extra = ["--block-size", "5"] if value == "pm" else []
    one_line(
        capsys,
        [
            "train",
            "--out",
            str(finished_run),
            "--resume",
            "--epochs",
            "2",
            "--data-dir",
            str(tiny_data),
            flag,
            value,
            *extra,
        ],
        needle,
    )
    assert snapshot(finished_run) == before


def test_resume_without_checkpoint_and_unreadable_config(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    one_line(capsys, ["train", "--out", str(tmp_path / "empty"), "--resume"], "no checkpoint")
    one_line(
        capsys,
        ["train", "--config", str(tmp_path), "--out", str(tmp_path / "r")],
        "cannot read config file",
    )
    one_line(capsys, ["train", "--config", str(tmp_path / "nope.toml")], "does not exist")


def test_full_disk_while_writing_a_checkpoint(finished_run, tiny_data):
    """The file-size limit makes every write past N bytes fail (EFBIG), as a full disk would."""
    ck = finished_run / "checkpoint.pt"
    before = snapshot(finished_run)
    limit = ck.stat().st_size // 2
    assert limit > 20_000  # config.json and metrics lines still fit

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = cli(
        "train",
        "--out",
        str(finished_run),
        "--resume",
        "--epochs",
        "2",
        "--data-dir",
        str(tiny_data),
        "--no-progress",
        preexec_fn=small_files,
    )
    code, err = finish(proc)
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "could not write" in err and "--resume" in err, err
    assert not list(finished_run.glob("*.tmp"))
    assert ck.read_bytes() == before["checkpoint.pt"]  # the previous checkpoint is intact
    assert torch.load(ck, weights_only=True)["progress"]["epoch"] == 2


def test_divergence_guard_keeps_the_last_good_checkpoint(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["train", *TINY, "--epochs", "2", "--data-dir", str(tiny_data), "--out", str(out)])
        == 0
    )
    good = (out / "checkpoint.pt").read_bytes()
    one_line(
        capsys,
        [
            "train",
            "--out",
            str(out),
            "--resume",
            "--epochs",
            "4",
            "--max-ppl",
            "1.001",
            "--data-dir",
            str(tiny_data),
        ],
        "diverged",
        code=3,
    )
    assert (out / "checkpoint.pt").read_bytes() == good
    assert json.loads((out / "summary.json").read_text())["stop_reason"].startswith(
        "diverged: valid ppl"
    )


def test_nan_loss_stops_the_run(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    one_line(
        capsys,
        [
            "train",
            *TINY,
            "--optim",
            "sgd",
            "--lr",
            "1e38",
            "--clip",
            "0",
            "--data-dir",
            str(tiny_data),
            "--out",
            str(out),
        ],
        "NaN",
        code=3,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert "NaN or infinite" in summary["stop_reason"]


def test_every_torch_load_uses_weights_only():
    calls = []
    for path in SRC.rglob("*.py"):
        for m in re.finditer(r"torch\.load\((.*?)\)\n", path.read_text(), re.S):
            calls.append((path.name, m.group(1)))
    assert calls, "expected the checkpoint module to call torch.load"
    for name, args in calls:
        assert "weights_only=True" in args, (name, args)
    assert {name for name, _ in calls} == {"checkpoint.py"}


def test_resolve_is_idempotent():
    from tprop.config import build
    from tprop.presets import resolve

    for values in (
        {"method": "pm"},
        {"method": "admm", "preset": "paper", "full_batch": True},
        {"method": "bptt"},
        {"method": "alm", "z_init": "chained"},
    ):
        once = resolve(build(values))
        assert resolve(build(once.to_dict())) == once


def test_resume_with_more_epochs_continues_into_the_longer_run(finished_run, tiny_data, tmp_path):
    """`--epochs` is not a resume key: a finished 1-epoch run resumed with `--epochs 2` ends
    as the 2-epoch run (docs/design.md), and config.json records the new budget."""
    longer = tmp_path / "two"
    data = ["--data-dir", str(tiny_data)]
    assert main(["train", *TINY, "--epochs", "2", *data, "--out", str(longer)]) == 0
    assert main(["train", "--out", str(finished_run), "--resume", "--epochs", "2", *data]) == 0
    got, want = (json.loads((p / "summary.json").read_text()) for p in (finished_run, longer))
    assert got["epochs"] == 2
    assert got["valid_ppl_history"] == want["valid_ppl_history"]
    assert json.loads((finished_run / "config.json").read_text())["epochs"] == 2
