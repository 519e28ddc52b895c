from __future__ import annotations

import random
from pathlib import Path

import pytest

WORDS = [f"w{i}" for i in range(40)]


def write_tiny_ptb(root: Path, n_lines=(120, 20, 20), seed: int = 0) -> Path:
    """A PTB-shaped corpus: <root>/ptb/{train,valid,test}.txt, lines of 3–12 words."""
    rng = random.Random(seed)
    folder = root / "ptb"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "valid", "test"), n_lines, strict=False):
        lines = [
            " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + " "
            for _ in range(n)
        ]
        if split == "train":
            lines.append(" " + " ".join(WORDS) + " ")  # every word occurs in train
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return write_tiny_ptb(tmp_path / "data")


TINY = ["--dataset", "ptb", "--hidden", "16", "--batch-size", "4", "--no-progress",
        "--device", "cpu"]  # fmt: skip


def train_tiny(data: Path, out: Path, flags: str = "", *extra: str) -> int:
    """`tprop train` on the tiny corpus; `flags` is a space-separated string of more flags."""
    from tprop.cli import main

    return main(["train", *TINY, "--data-dir", str(data), "--out", str(out), *flags.split(),
                 *extra])  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One BPTT run on the tiny corpus, shared by a module's tests (generate, eval)."""
    root = tmp_path_factory.mktemp("run")
    run = root / "run"
    assert train_tiny(write_tiny_ptb(root / "data"), run, "--epochs 1 --method bptt --bptt 5") == 0
    return run
