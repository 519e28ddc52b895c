"""Perplexity of a model on a split, and `tprop eval` on a saved run.

Test-time state optimisation (paper §4, "optimizing over past h_t at test-time";
`tprop eval --tt-h-steps N`): the split runs as `batchify` streams cut into blocks of B tokens
(the run's block size for target propagation, its BPTT window for BPTT; `--tt-block`). For
each block j in order:

1. score block j's targets from its start state s_j — these are the reported NLLs, so the score
   of token t depends only on the tokens before it;
2. block j has now been seen: take N H-steps on s_j (Adagrad or SGD, θ frozen) that lower the
   NLL of block j's targets, which were all scored in 1;
3. the next block starts from the end state of block j computed from the refined s_j.

The refinement only ever uses tokens that were already scored, so no later token leaks into a
prediction (`tests/test_test_time.py` checks it exactly in float64). The token count and the
denominator are those of `evaluate`, and N = 0 gives `evaluate`'s result. Measured effect on
PTB: docs/generation.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tprop import checkpoint
from tprop.batching import batchify
from tprop.config import Config, ConfigError, build
from tprop.metrics import progress
from tprop.model import RNNLM
from tprop.objective import bits_per_token, decoder_nll_sum, nll_sum, perplexity
from tprop.run import RunError

if TYPE_CHECKING:
    from tprop.data import Corpus


@torch.no_grad()
def evaluate(
    model: RNNLM, ids: Tensor, batch_size: int, bptt: int, *, bar: str | None = None
) -> tuple[float, int]:
    """Σ NLL and token count over a whole split: `batch_size` streams, state carried from zero.

    Every row but the last is scored, so the count is (⌊N/batch_size⌋ − 1)·batch_size; the
    window length changes only the speed. ``bar`` names a progress bar (shown on a terminal).
    The logits of a window are never held whole (`objective.decoder_nll_sum`): twice the speed
    of decoding the window at once, the same perplexity (docs/performance.md).
    """
    was_training = model.training
    model.eval()
    data = batchify(ids, batch_size)  # (T, S)
    state = model.zero_state(batch_size)
    total = torch.zeros((), dtype=torch.float64, device=ids.device)
    n_rows = data.shape[0] - 1
    with progress(n_rows * batch_size, bar or "", bar is not None) as pbar:
        for i in range(0, n_rows, bptt):
            k = min(bptt, n_rows - i)
            out, state = model.states(data[i : i + k], state)  # (k, S, d)
            dec = model.decoder
            total += decoder_nll_sum(out, dec.weight, dec.bias, data[i + 1 : i + 1 + k]).double()
            pbar.update(k * batch_size)
    model.train(was_training)
    return total.item(), n_rows * batch_size


@dataclass(frozen=True)
class TestTime:
    """Test-time H-steps: how many per block, their learning rate and optimiser, the block."""

    steps: int = 0
    lr: float = 0.01
    optim: str = "adagrad"  # adagrad | sgd; the H-optimiser is fresh for every block
    block: int | None = None  # None: the run's own (`run_block`)
    eps: float = 1e-10  # Adagrad ε (the paper preset's)

    __test__ = False  # not a pytest class

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"--tt-h-steps must be >= 0 (got {self.steps})")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--tt-h-lr must be a number > 0 (got {self.lr})")
        if self.block is not None and self.block < 1:
            raise ConfigError(f"--tt-block must be >= 1 (got {self.block})")
        if self.optim not in ("adagrad", "sgd"):
            raise ConfigError(f"--tt-h-optim must be adagrad or sgd (got {self.optim})")


def _token_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """−log p(target) per position, float64: logits (k, S, V), targets (k, S) → (k, S)."""
    v = logits.shape[-1]
    nll = F.cross_entropy(logits.reshape(-1, v), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape).double()


def refine(model: RNNLM, x: Tensor, y: Tensor, start: Tensor, steps: int, tt: TestTime) -> Tensor:
    """`steps` H-steps on a block's start state against the NLL of its targets y, θ frozen
    (the gradient is taken with respect to the state only). Returns the refined state."""
    z, acc = start.detach(), None
    for _ in range(steps):
        with torch.enable_grad():
            z = z.requires_grad_(True)
            logits, _ = model(x, z)
            (g,) = torch.autograd.grad(nll_sum(logits, y), [z])
        z = z.detach()
        if tt.optim == "adagrad":
            acc = g * g if acc is None else acc + g * g
            z = z - tt.lr * g / (acc.sqrt() + tt.eps)
        else:
            z = z - tt.lr * g
    return z


@torch.no_grad()
def _score_and_refine(
    model: RNNLM, x: Tensor, y: Tensor, start: Tensor, steps: int, tt: TestTime
) -> tuple[Tensor, Tensor]:
    """Score one block from `start` (per-token NLL, (k, S)); then, its targets being seen,
    refine `start` on them and return the block's end state from the refined start (S, D)."""
    logits, end = model(x, start)
    scored = _token_nll(logits, y)
    if steps > 0:
        _, end = model(x, refine(model, x, y, start, steps, tt))
    return scored, end


def token_nll_tt(model: RNNLM, data: Tensor, tt: TestTime, *, bar: str | None = None) -> Tensor:
    """Per-token NLL with test-time H-steps (module docstring): (T, S) streams → (T−1, S)
    float64, row t the NLL of row t+1 given rows ≤ t. The last block takes no H-steps (no
    token after it would use them)."""
    if tt.block is None:
        raise ValueError("token_nll_tt needs TestTime.block")
    block = tt.block
    was_training = model.training
    model.eval()
    n_rows, n_streams = data.shape[0] - 1, data.shape[1]
    out = torch.empty(n_rows, n_streams, dtype=torch.float64, device=data.device)
    state = model.zero_state(n_streams)
    with progress(n_rows * n_streams, bar or "", bar is not None) as pbar:
        for i in range(0, n_rows, block):
            k = min(block, n_rows - i)
            steps = tt.steps if i + k < n_rows else 0
            x, y = data[i : i + k], data[i + 1 : i + 1 + k]
            out[i : i + k], state = _score_and_refine(model, x, y, state, steps, tt)
            pbar.update(k * n_streams)
    model.train(was_training)
    return out


def evaluate_tt(
    model: RNNLM, ids: Tensor, batch_size: int, tt: TestTime, *, bar: str | None = None
) -> tuple[float, int]:
    """`evaluate` with test-time H-steps: Σ NLL and token count over the same tokens."""
    nll = token_nll_tt(model, batchify(ids, batch_size), tt, bar=bar)
    return nll.sum().item(), nll.numel()


def checkpoint_path(path: str | Path) -> Path:
    """A run folder or a checkpoint file → the checkpoint file."""
    path = Path(path)
    return path / "checkpoint.pt" if path.is_dir() else path


def load_run(
    path: str | Path, weights: str, data_dir: str | None, device_name: str
) -> tuple[Config, Corpus, RNNLM, dict[str, Any]]:
    """A saved run, ready to use: its config (``data_dir`` overriding the run's), the corpus
    it was trained on (vocabulary checked against the checkpoint), the model with its best or
    last weights (``weights``), and the loaded checkpoint. Used by `tprop eval` and
    `tprop generate`."""
    from tprop.data import load_corpus
    from tprop.train import build_model, pick_device

    device = pick_device(device_name)
    saved = checkpoint.load(checkpoint_path(path), map_location=device)
    cfg = build({**saved["config"], "data_dir": data_dir or saved["config"]["data_dir"]})
    corpus = load_corpus(cfg.dataset, cfg.data_dir, text8_split=cfg.text8_split)
    if len(corpus.vocab) != saved["vocab_size"]:
        raise RunError(
            f"vocabulary of {cfg.dataset} ({len(corpus.vocab)}) differs from the "
            f"checkpoint's ({saved['vocab_size']}); point --data-dir at the same files"
        )
    model = build_model(cfg, saved["vocab_size"], device)
    model.load_state_dict(saved["best_model" if weights == "best" else "model"])
    return cfg, corpus, model, saved


def run_block(cfg: Config) -> int:
    """The run's own block length: B for target propagation, the BPTT window K for BPTT."""
    from tprop.methods import METHODS

    return cfg.block_size if METHODS[cfg.method].blocked else cfg.bptt


def evaluate_checkpoint(
    path: str,
    split: str,
    weights: str,
    data_dir: str | None,
    batch_size: int | None,
    device_name: str,
    limit: int | None,
    show_progress: bool = True,
    tt: TestTime | None = None,
) -> dict[str, Any]:
    """`tprop eval`: perplexity of a saved run on a split.

    The run's own limits apply unless ``limit`` is given (0 = the whole split): --eval-limit to
    valid and test, --train-limit to train, so the figures match the run's summary. With
    ``tt`` taking steps > 0 the split is scored with test-time H-steps (block None = the run's
    own block length) and the result names them.
    """
    cfg, corpus, model, saved = load_run(path, weights, data_dir, device_name)
    ids = {"train": corpus.train, "valid": corpus.valid, "test": corpus.test}[split]
    if ids is None:
        raise RunError(f"{cfg.dataset} has no {split} split under its protocol")
    if limit is None:
        limit = cfg.train_limit if split == "train" else cfg.eval_limit
    if limit < 0:
        raise ConfigError(f"--limit must be >= 0 (got {limit})")
    ids = (ids[:limit] if limit else ids).to(model.decoder.weight.device)
    bs = batch_size or cfg.eval_batch_size
    bar = split if show_progress else None
    found: dict[str, Any] = {}
    if tt is not None and tt.steps > 0:
        tt = replace(tt, block=tt.block or run_block(cfg))
        nll, n = evaluate_tt(model, ids, bs, tt, bar=bar)
        found = {f"tt_h_{k}": getattr(tt, k) for k in ("steps", "lr", "optim")}
        found["tt_block"] = tt.block
    else:
        nll, n = evaluate(model, ids, bs, cfg.eval_bptt, bar=bar)
    hist = saved["progress"]
    return {
        "split": split,
        "weights": weights,
        "ppl": perplexity(nll, n),
        "bits": bits_per_token(nll, n),
        "tokens": n,
        "limit": limit,
        "epoch": hist["best_epoch"] if weights == "best" else len(hist["history"]),
        **found,
    }
