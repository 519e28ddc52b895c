"""Perplexity of a model on a split, and `tprop eval` on a saved run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tprop import checkpoint
from tprop.batching import batchify
from tprop.config import ConfigError, build
from tprop.metrics import progress
from tprop.model import RNNLM
from tprop.objective import bits_per_token, nll_sum, perplexity
from tprop.run import RunError


@torch.no_grad()
def evaluate(
    model: RNNLM, ids: Tensor, batch_size: int, bptt: int, *, bar: str | None = None
) -> tuple[float, int]:
    """Σ NLL and token count over a whole split: `batch_size` streams, state carried from zero.

    Every row but the last is scored, so the count is (⌊N/batch_size⌋ − 1)·batch_size; the
    window length changes only the speed. ``bar`` names a progress bar (shown on a terminal).
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
            logits, state = model(data[i : i + k], state)
            total += nll_sum(logits, data[i + 1 : i + 1 + k]).double()
            pbar.update(k * batch_size)
    model.train(was_training)
    return total.item(), n_rows * batch_size


def checkpoint_path(path: str | Path) -> Path:
    """A run folder or a checkpoint file → the checkpoint file."""
    path = Path(path)
    return path / "checkpoint.pt" if path.is_dir() else path


def evaluate_checkpoint(
    path: str,
    split: str,
    weights: str,
    data_dir: str | None,
    batch_size: int | None,
    device_name: str,
    limit: int | None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """`tprop eval`: perplexity of a saved run on a split.

    The run's own limits apply unless ``limit`` is given (0 = the whole split): --eval-limit to
    valid and test, --train-limit to train, so the figures match the run's summary.
    """
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
    ids = {"train": corpus.train, "valid": corpus.valid, "test": corpus.test}[split]
    if ids is None:
        raise RunError(f"{cfg.dataset} has no {split} split under its protocol")
    if limit is None:
        limit = cfg.train_limit if split == "train" else cfg.eval_limit
    if limit < 0:
        raise ConfigError(f"--limit must be >= 0 (got {limit})")
    ids = ids[:limit] if limit else ids
    model = build_model(cfg, saved["vocab_size"], device)
    model.load_state_dict(saved["best_model" if weights == "best" else "model"])
    bs = batch_size or cfg.eval_batch_size
    nll, n = evaluate(
        model, ids.to(device), bs, cfg.eval_bptt, bar=split if show_progress else None
    )
    hist = saved["progress"]
    return {
        "split": split,
        "weights": weights,
        "ppl": perplexity(nll, n),
        "bits": bits_per_token(nll, n),
        "tokens": n,
        "limit": limit,
        "epoch": hist["best_epoch"] if weights == "best" else len(hist["history"]),
    }
