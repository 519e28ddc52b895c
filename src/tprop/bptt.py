"""Truncated BPTT (paper §1.1): windows of K tokens over S streams, state carried and detached."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tprop.batching import batchify, n_windows, window
from tprop.config import Config, ConfigError
from tprop.methods import theta_update
from tprop.model import RNNLM
from tprop.objective import nll_sum


class TruncatedBPTT:
    """`Method` for truncated BPTT; ``full_batch`` makes one θ update per epoch."""

    def __init__(
        self,
        model: RNNLM,
        optimizer: torch.optim.Optimizer,
        data: Tensor,
        k: int,
        clip: float,
        full_batch: bool,
        carry_across_epochs: bool = False,
    ):
        self.model, self.opt, self.data = model, optimizer, data  # data: (T, S) streams
        self.k, self.clip, self.full_batch = k, clip, full_batch
        self.carry_across_epochs = carry_across_epochs
        self.n = n_windows(data, k)
        self.state = model.zero_state(data.shape[1])

    @classmethod
    def from_config(
        cls, cfg: Config, model: RNNLM, optimizer: torch.optim.Optimizer, train_ids: Tensor
    ) -> TruncatedBPTT:
        data = batchify(train_ids, cfg.batch_size)
        if n_windows(data, cfg.bptt) < 1:
            raise ConfigError(
                f"--bptt {cfg.bptt} is longer than the training data per stream "
                f"({data.shape[0]} tokens with --batch-size {cfg.batch_size}); lower either"
            )
        return cls(
            model, optimizer, data, cfg.bptt, cfg.clip, cfg.full_batch, cfg.carry_across_epochs
        )

    def steps(self) -> list[tuple[int, ...]]:
        return [(i,) for i in range(self.n)]

    def tokens_per_epoch(self) -> int:
        return self.n * self.k * self.data.shape[1]

    def start_epoch(self) -> None:
        if not self.carry_across_epochs:
            self.state = self.model.zero_state(self.data.shape[1])
        if self.full_batch:
            self.opt.zero_grad(set_to_none=True)

    def step(self, i: int, epoch: int) -> dict[str, Tensor]:
        x, y = window(self.data, i, self.k)  # (K, S) inputs and targets
        if not self.full_batch:
            self.opt.zero_grad(set_to_none=True)
        logits, last = self.model(x, self.state)
        nll = nll_sum(logits, y)
        loss = nll / y.numel()  # mean cross-entropy over the window
        (loss / self.n if self.full_batch else loss).backward()
        if not self.full_batch or i == self.n - 1:  # full batch: one update from the mean
            theta_update(self.model, self.opt, self.clip)
        self.state = last.detach()  # the truncation: carried, but no gradient flows back
        return {"nll": nll.detach(), "tokens": torch.tensor(y.numel())}

    def state_dict(self) -> dict[str, Any]:
        # Full-batch mode accumulates the epoch's gradient across steps: part of the state.
        grads = [p.grad for p in self.model.parameters()] if self.full_batch else []
        return {"state": self.state, "grads": grads}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.state = sd["state"].to(self.state)
        for p, g in zip(self.model.parameters(), sd["grads"], strict=False):
            p.grad = None if g is None else g.to(p)
