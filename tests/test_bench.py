"""`tprop bench` smoke runs on the tiny corpus, its table and its one-line errors; the allocator
settings. No timing asserts: speed is measured by `tprop bench`, not by tests."""

from __future__ import annotations

import json

import pytest

from tprop import alloc, bench
from tprop.cli import main

SMALL = ["--dataset", "ptb", "--hidden", "8", "--batch-size", "4", "--bptt", "5", "--steps",
         "2", "--rounds", "1", "--warmup", "0", "--no-progress", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import write_tiny_ptb

    return write_tiny_ptb(tmp_path_factory.mktemp("bench"))


@pytest.mark.parametrize(
    "what,extra",
    [
        ("plain", ["--json"]),
        ("tp-cost", ["--h-steps", "1", "--method", "alm", "--json"]),
        ("eval", ["--eval-bptt", "7", "--split", "test", "--json"]),
        ("memory", ["--h-steps", "1", "--json"]),
        ("profile", ["--h-steps", "1", "--no-malloc-both", "--json"]),
        ("switch", ["--h-steps", "1", "--set", "optim_impl=foreach", "--json"]),
    ],
)
def test_bench_smoke(data, capsys, what, extra):
    assert main(["bench", what, *SMALL, "--data-dir", str(data), *extra]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and all(r["bench"] == what for r in rows)
    if what == "tp-cost":
        assert [(r["method"], r["h_steps"], r["target"]) for r in rows] == [("alm", 1, 1.75)]
    if what == "switch":  # BPTT and ADMM with one H-step, each with and without the switch
        assert [(r["method"], r["a"], r["b"]) for r in rows] == [
            ("bptt", "with", "without"), ("admm k=1", "with", "without")
        ]  # fmt: skip
    if what == "plain":  # the ceiling: only the decoder's matmuls run faster than a step
        assert all(r["c_tokens_per_s"] > r["a_tokens_per_s"] for r in rows)
        assert all(r["of_ceiling"] == r["a_tokens_per_s"] / r["c_tokens_per_s"] for r in rows)
    if what in ("plain", "tp-cost", "eval", "switch"):
        assert all(r["a_tokens_per_s"] > 0 and r["b_tokens_per_s"] > 0 for r in rows)
        assert all(r["ratio"] > 0 for r in rows)
    if what == "eval":  # the same weights, scored both ways: the same perplexity
        assert rows[0]["ppl_rel_diff"] < 1e-6 and rows[0]["tokens"] > 0
    if what == "profile":  # every bin of the time of each method
        assert [(r["method"], r["tuned"]) for r in rows] == [
            ("bptt", "tprop's"), ("admm k=1", "tprop's")
        ]  # fmt: skip
        shares = ("decoder", "recurrence", "optimizer", "python")
        assert all(r[f"{b}_share"] >= 0 for r in rows for b in shares)
        assert all(0.5 < sum(r[f"{b}_share"] for b in shares) < 1.5 for r in rows)
    if what == "memory":
        assert [r["a"] for r in rows][-1] == "admm k=1 --full-batch"
        assert all(r["a_peak_mb"] >= r["a_setup_mb"] > 0 for r in rows)


def test_bench_table_is_markdown():
    row = {"hidden": 100, "a": "tprop bptt", "b": "plain loop", "c": "decoder matmuls alone"}
    row |= {"a_tokens_per_s": 30000.4, "b_tokens_per_s": 24000.0, "ratio": 1.25}
    lines = bench.table("plain", [row | {"c_tokens_per_s": 40000.0, "of_ceiling": 0.75}])
    assert lines == [
        "| hidden | tprop bptt tok/s | plain loop tok/s | ratio | decoder matmuls alone tok/s "
        "| tprop bptt ÷ that |",
        "|---|---|---|---|---|---|",
        "| 100 | 30,000 | 24,000 | 1.250 | 40,000 | 75% |",
    ]


@pytest.mark.parametrize(
    "flags,says",
    [
        (["--hidden", "0"], "--hidden must be >= 1"),
        (["--rounds", "0"], "--rounds must be >= 1"),
        (["--device", "tpu"], "--device must be cpu or cuda"),
        (["--bptt", "500"], "longer than the training data"),
        (["--dataset", "ptb", "--data-dir", "/nonexistent"], "ptb"),
        (["--set", "precison=bf16"], "--set 'precison=bf16': expected KEY=VALUE"),
        (["--set", "precision=fp8"], "precision"),
    ],
)
def test_bench_bad_input_is_one_line(data, capsys, flags, says):
    args = ["bench", "plain", *SMALL, "--data-dir", str(data), *flags]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert says in err and err.startswith("tprop: error:") and "Traceback" not in err


def test_alloc_tune_sets_glibc_thresholds_once():
    first = alloc.tune()
    assert set(first) == set(alloc.SETTINGS)
    assert alloc.tune() == first  # idempotent
    if alloc._glibc() is None:
        assert not any(first.values())
