"""The architecture's promises: the block layout is the docstring's diagram, a constraint is one
function and one table row, and the code stays small enough to read (no function over 60 lines,
no module over 450)."""

from __future__ import annotations

import ast
import json
import string
from pathlib import Path

import torch

from conftest import train_tiny
from tprop import objective
from tprop.batching import batchify, block_rows, layout_shape, n_block_rows

SRC = Path(__file__).resolve().parents[1] / "src" / "tprop"


def letters(t: torch.Tensor) -> list[str]:
    return ["".join(string.ascii_lowercase[i] for i in row) for row in t.tolist()]


def test_block_rows_is_the_diagram_in_batching():
    """batching.py's drawing: w = a … x, S = 4 streams, B = 2, rows 0-1 as R·S columns."""
    data = batchify(torch.arange(24), 4)
    assert letters(data.t()) == ["abcdef", "ghijkl", "mnopqr", "stuvwx"]  # column s = w[sT:(s+1)T]
    x, y = block_rows(data, 0, 2, 2)
    assert letters(x) == ["agmsciou", "bhntdjpv"]  # block row 0 then block row 1
    assert letters(y) == ["bhntdjpv", "ciouekqw"]  # targets: one token further
    x1, y1 = block_rows(data, 1, 1, 2)
    assert letters(x1) == ["ciou", "djpv"] and letters(y1) == ["djpv", "ekqw"]  # row 1 alone
    assert n_block_rows(data, 2) == 2  # block row 2 (rows 4-5) has no row for its last target
    assert layout_shape("streams", 32) == (32, 1) and layout_shape("adjacent", 32) == (1, 32)


def l1(z_next, e, u, decode, w):
    """A toy constraint: λ Σ |z_{j+1} − e_j + u_j|."""
    return w.lam * (z_next - e + u).abs().sum()


FLAGS = "--hidden 8 --epochs 1 --method admm --block-size 5 --u-start-epoch 1 --lam 0.5"


def test_a_new_constraint_is_one_function_and_one_row(tiny_data, tmp_path, monkeypatch):
    row = objective.Constraint(l1, duals=True, settings=("lam",))
    monkeypatch.setitem(objective.CONSTRAINTS, "l1", row)  # the one row
    out = tmp_path / "run"
    assert train_tiny(tiny_data, out, f"{FLAGS} --constraint l1") == 0
    cfg = json.loads((out / "config.json").read_text())
    epoch = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][0]
    assert cfg["constraint"] == "l1" and epoch["tp/dual_norm"] > 0
    # The L1 dual step moves each u by ±α_u·λ/(scale): a different run from L2.
    out2 = tmp_path / "run2"
    assert train_tiny(tiny_data, out2, FLAGS) == 0
    epoch2 = [json.loads(x) for x in (out2 / "metrics.jsonl").read_text().splitlines()][0]
    assert epoch["tp/theta_loss"] != epoch2["tp/theta_loss"]


def test_functions_and_modules_stay_readable():
    """No function in src/ over 60 lines, no module over 450 (counted from the source text)."""
    long_funcs, long_modules = [], []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 450:
            long_modules.append(f"{path.relative_to(SRC)}: {text.count(chr(10))}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long_funcs.append(f"{path.relative_to(SRC)}:{node.name}: {n}")
    assert not long_funcs and not long_modules, (long_funcs, long_modules)
