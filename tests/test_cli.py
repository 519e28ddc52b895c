"""Smoke runs of every CLI command on a tiny corpus; bad input gives one line and exit 2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tprop import checkpoint
from tprop.cli import main

TINY = [
    "--dataset",
    "ptb",
    "--hidden",
    "16",
    "--batch-size",
    "4",
    "--epochs",
    "2",
    "--no-progress",
    "--device",
    "cpu",
]


def train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", *TINY, "--data-dir", str(data), "--out", str(out), *extra])


@pytest.mark.parametrize(
    "method,extra",
    [
        ("bptt", ["--bptt", "5"]),
        ("bptt", ["--bptt", "5", "--full-batch", "--optim", "sgd", "--lr", "1"]),
        ("pm", ["--block-size", "5", "--h-steps", "2"]),
        ("admm", ["--block-size", "5", "--u-start-epoch", "1", "--preset", "paper"]),
        ("admm", ["--block-size", "5", "--full-batch", "--chunk-tokens", "64"]),
        ("alm", ["--block-size", "5", "--cell", "lstm"]),
        ("admm", ["--block-size", "5", "--cell", "rnn", "--layers", "2"]),
    ],
)
def test_train_writes_a_complete_run_folder(tiny_data, tmp_path, method, extra):
    out = tmp_path / "run"
    assert train(tiny_data, out, "--method", method, *extra) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "metrics.jsonl", "summary.json", "checkpoint.pt"]
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == method and cfg["vocab_size"] == 41  # 40 words + <eos>
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "best_valid_ppl",
        "best_epoch",
        "final_valid_ppl",
        "test_ppl",
        "epochs",
        "train_tokens_per_s",
        "wall_s",
        "device",
        "tprop_version",
        "git_commit",
        "threads",
    ):
        assert key in summary
    assert summary["cpu"] and summary["cpu"] != "unknown"  # rounding differs between CPUs
    assert 1 < summary["best_valid_ppl"] < 200
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert len(epochs) == 2 and epochs[-1]["valid/ppl"] == summary["final_valid_ppl"]
    if method != "bptt":
        for key in (
            "tp/residual",
            "tp/dual_norm",
            "tp/loss_before_h",
            "tp/loss_after_h",
            "tp/theta_loss",
            "train/tokens_per_s",
        ):
            assert math.isfinite(epochs[-1][key])


def test_eval_reproduces_the_runs_test_perplexity(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(tiny_data, out, "--method", "bptt", "--bptt", "5") == 0
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(out / "checkpoint.pt"),
                "--split",
                "test",
                "--data-dir",
                str(tiny_data),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((out / "summary.json").read_text())
    assert result["ppl"] == pytest.approx(summary["test_ppl"], rel=1e-9)


def test_toml_config_and_cli_override(tiny_data, tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('method = "admm"\n[model]\nhidden = 12\n[tp]\nblock-size = 4\nlam = 0.5\n')
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--config",
                str(toml),
                *TINY,
                "--data-dir",
                str(tiny_data),
                "--out",
                str(out),
                "--lam",
                "0.25",
            ]
        )
        == 0
    )
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["hidden"], cfg["block_size"], cfg["lam"]) == (16, 4, 0.25)  # TINY sets 16
    assert cfg["preset"] == "tprnn" and cfg["layout"] == "adjacent"  # resolved switches saved


def test_resume_continues_after_the_last_epoch(tiny_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")  # an occupied folder, replaced with --overwrite
    assert train(tiny_data, out, "--method", "admm", "--block-size", "5", "--overwrite") == 0
    full = json.loads((out / "summary.json").read_text())
    here = {k: full[k] for k in ("git_commit", "source_sha256")}
    assert full["code_history"] == [here] and len(here["source_sha256"]) == 64
    # as if a version from before the code history had written the checkpoint, and a newer one
    # a field this one does not know: the resume says the first code is unknown, then adds its own
    state = checkpoint.load(out / "checkpoint.pt")
    del state["progress"]["code"]
    state["progress"]["a_later_field"] = 1
    checkpoint.save(state, out / "checkpoint.pt")
    # the run's own config.json is the base: --out, --resume and a changed budget suffice
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3"]) == 0
    more = json.loads((out / "summary.json").read_text())
    assert more["epochs"] == 3 and more["valid_ppl_history"][:2] == full["valid_ppl_history"]
    assert more["code_history"] == [{"git_commit": None, "source_sha256": None}, here]


def test_data_commands(tiny_data, capsys):
    assert main(["data", "list", "--data-dir", str(tiny_data)]) == 0
    assert f"present: {tiny_data / 'ptb'}" in capsys.readouterr().out
    # the tiny files do not match PTB's pinned sha256: verify says so and fails
    assert main(["data", "verify", "ptb", "--data-dir", str(tiny_data)]) == 2
    assert "BAD" in capsys.readouterr().out


def one_line_error(capsys, argv, needle):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    assert needle in err, err
    return err


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--dataset", "nope"], "nope"),
        (["--method", "magic"], "invalid choice"),
        (["--hidden", "0"], "--hidden must be >= 1"),
        (["--batch-size", "-3"], "--batch-size must be >= 1"),
        (["--lr", "-1"], "--lr must be a positive"),
        (["--hidden", "100000000"], "absurdly large"),
        (["--method", "admm", "--block-size", "100000"], "longer than the training data"),
        (["--method", "bptt", "--bptt", "0"], "--bptt must be >= 1"),
        (["--method", "admm", "--block-size", "0"], "--block-size must be >= 1"),
        (["--method", "bptt", "--bptt", "100000"], "longer than the training data"),
        (["--method", "admm", "--lam", "-1"], "--lam must be >= 0"),
        (["--method", "admm", "--preset", "nope"], "invalid choice"),
        (["--method", "bptt", "--preset", "paper"], "applies to pm/admm/alm"),
        (["--method", "bptt", "--block-size", "5"], "applies to pm/admm/alm"),
        (["--method", "pm", "--u-lr", "0.1"], "pm has no duals"),
        (["--method", "alm", "--h-steps", "0"], "alm"),
        (["--overwrite", "--resume"], "contradict"),
    ],
)
def test_bad_input_is_one_line(tiny_data, tmp_path, capsys, extra, needle):
    out = tmp_path / "run"
    one_line_error(
        capsys, ["train", *TINY, "--data-dir", str(tiny_data), "--out", str(out), *extra], needle
    )
    assert not out.exists()


def test_bad_data_files(tmp_path, capsys):
    root = tmp_path / "d"
    (root / "ptb").mkdir(parents=True)
    one_line_error(
        capsys, ["train", *TINY, "--data-dir", str(root), "--out", str(tmp_path / "r")], "ptb"
    )
    for name in ("train", "valid", "test"):
        (root / "ptb" / f"{name}.txt").write_text("")
    one_line_error(
        capsys, ["train", *TINY, "--data-dir", str(root), "--out", str(tmp_path / "r")], "empty"
    )


def test_occupied_run_folder_is_not_touched(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    one_line_error(
        capsys, ["train", *TINY, "--data-dir", str(tiny_data), "--out", str(out)], "--overwrite"
    )
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_unreadable_config_and_checkpoint(tmp_path, capsys):
    bad = tmp_path / "c.toml"
    bad.write_text("hidden = [")
    one_line_error(
        capsys, ["train", "--config", str(bad), "--out", str(tmp_path / "r")], "not valid TOML"
    )
    bad.write_text('hidden = "big"\n')
    one_line_error(
        capsys, ["train", "--config", str(bad), "--out", str(tmp_path / "r")], "wrong type"
    )
    bad.write_text("hiddden = 3\n")
    one_line_error(
        capsys,
        ["train", "--config", str(bad), "--out", str(tmp_path / "r")],
        "unknown setting 'hiddden'",
    )
    ck = tmp_path / "checkpoint.pt"
    ck.write_bytes(b"not a checkpoint at all")
    one_line_error(capsys, ["eval", "--checkpoint", str(ck)], "corrupt")


def test_console_script_exits_cleanly_without_traceback(tmp_path):
    env = {**os.environ, "TPROP_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tprop.cli",
            "train",
            "--dataset",
            "ptb",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_demo_runs_both_methods_on_the_shipped_data(tmp_path, capsys):
    assert (
        main(
            [
                "demo",
                "--out",
                str(tmp_path / "demo"),
                "--train-limit",
                "3000",
                "--eval-limit",
                "1000",
                "--epochs",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "bptt  best valid ppl" in out and "admm  best valid ppl" in out
    for name in ("bptt", "admm"):
        cfg = json.loads((tmp_path / "demo" / name / "config.json").read_text())
        assert cfg["dataset"] == "wikitext-2" and cfg["vocab_size"] == 33278
