"""Truncated BPTT (paper §1.1): windows of K tokens over S streams, state carried and detached.

With several processes it is data-parallel: each rank runs a contiguous share of the S streams
(`tprop.parallel`), scales its loss by the global token count, and the θ-gradients are summed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tprop.accel import Forward, chunk_tokens
from tprop.batching import batchify, n_windows, window
from tprop.config import Config, ConfigError
from tprop.methods import theta_update
from tprop.model import RNNLM
from tprop.parallel import Comm


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
        comm: Comm | None = None,
        forward: Forward | None = None,
        group: int = 0,
    ):
        self.comm = comm or Comm()
        self.forward = forward or Forward(model)
        self.streams = self.comm.shard(0, data.shape[1])  # this rank's streams [lo, hi)
        self.model, self.opt = model, optimizer
        self.data = data[:, self.streams.lo : self.streams.hi]  # (T, S_rank)
        self.n_streams = data.shape[1]  # S of all ranks: the loss is a mean over them
        self.k, self.clip, self.full_batch = k, clip, full_batch
        self.carry_across_epochs = carry_across_epochs
        self.n = n_windows(data, k)
        self.state = model.zero_state(self.data.shape[1])
        self.group = group or self.data.shape[1]  # streams per forward/backward

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        model: RNNLM,
        optimizer: torch.optim.Optimizer,
        train_ids: Tensor,
        comm: Comm | None = None,
    ) -> TruncatedBPTT:
        data = batchify(train_ids, cfg.batch_size)
        if n_windows(data, cfg.bptt) < 1:
            raise ConfigError(
                f"--bptt {cfg.bptt} is longer than the training data per stream "
                f"({data.shape[0]} tokens with --batch-size {cfg.batch_size}); lower either"
            )
        world = comm.world if comm else 1
        if cfg.batch_size < world:
            raise ConfigError(
                f"data-parallel BPTT gives each of the {world} processes its own streams: "
                f"--batch-size {cfg.batch_size} is too few; use at least --batch-size {world}"
            )
        return cls(
            model,
            optimizer,
            data,
            cfg.bptt,
            cfg.clip,
            cfg.full_batch,
            cfg.carry_across_epochs,
            comm,
            Forward.from_config(model, cfg),
            max(1, chunk_tokens(cfg, model, model.decoder.weight.device) // cfg.bptt),
        )

    def steps(self) -> list[tuple[int, ...]]:
        return [(i,) for i in range(self.n)]

    def tokens_per_epoch(self) -> int:
        return self.n * self.k * self.n_streams

    def start_epoch(self) -> None:
        if not self.carry_across_epochs:
            self.state = self.model.zero_state(self.data.shape[1])
        if self.full_batch:
            self.opt.zero_grad(set_to_none=True)

    def step(self, i: int, epoch: int) -> dict[str, Tensor]:
        x, y = window(self.data, i, self.k)  # (K, S) inputs and targets
        if not self.full_batch:
            self.opt.zero_grad(set_to_none=True)
        # A window of many streams (Table 4: up to 16,000) runs a group of streams at a time,
        # the gradients accumulated: streams are independent, so only memory changes.
        nlls, lasts = [], []
        for a in range(0, x.shape[1], self.group):
            b = a + self.group
            nll, last = self.forward(x[:, a:b], self.state[a:b], y[:, a:b])
            loss = nll / (self.k * self.n_streams)  # mean cross-entropy over the window
            (loss / self.n if self.full_batch else loss).backward()
            nlls.append(nll.detach())
            lasts.append(last.detach())  # the truncation: carried, no gradient flows back
        if not self.full_batch or i == self.n - 1:  # full batch: one update from the mean
            theta_update(self.model, self.opt, self.clip, self.comm)
        self.state = lasts[0] if len(lasts) == 1 else torch.cat(lasts)
        nll = nlls[0] if len(nlls) == 1 else torch.stack(nlls).sum()
        return {"nll": nll, "tokens": self.k * self.n_streams}  # tokens of all ranks

    def state_dict(self) -> dict[str, Any]:
        """The carried state of all S streams; in full-batch mode also the epoch's gradient
        so far, summed over ranks (a checkpoint does not depend on the number of ranks)."""
        comm, sh = self.comm, self.streams
        full = self.state.new_zeros(self.n_streams, self.state.shape[1])
        full[sh.lo : sh.hi] = self.state  # zeros elsewhere: the sum over ranks is every stream
        grads = []
        if self.full_batch:
            for p in self.model.parameters():
                g = p.grad.clone() if p.grad is not None else None
                if comm.parallel:
                    g = comm.sum_(g if g is not None else torch.zeros_like(p), "checkpoint")
                grads.append(g)
        return {"state": comm.sum_(full, "checkpoint"), "grads": grads}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.state = sd["state"][self.streams.lo : self.streams.hi].to(self.state)
        first = self.comm.rank == 0  # the saved gradient is the sum: one rank holds it
        for p, g in zip(self.model.parameters(), sd["grads"], strict=False):
            p.grad = None if g is None else (g.to(p) if first else torch.zeros_like(p))
