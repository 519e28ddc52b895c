"""Blocked target propagation: the block state (Z, U, carried state) and one training step.

PM, ADMM and ALM are rows of `tprop.methods.METHODS`, not three programs. A *step* takes the
block rows [a, b) of the block grid (see `tprop.batching`): a minibatch in minibatch mode, the
whole training set in batch mode. Inside it, the R = b − a block rows × S streams run as R·S
columns of one recurrent call of time depth B; the free states of the step are

    z: (R+1, S, D)   z[r] starts block row r; z[R] is the target after the last row
    u: (R, S, D)     u[r] is the dual of the constraint z[r+1] = e[r]

Rows are processed in chunks (``chunk_rows``) with gradients accumulated, so a dataset-sized
step fits in memory; the result does not depend on the chunking.

With several processes (`tprop.parallel`), each rank runs this same step on its contiguous
share [lo, hi) of the rows (a `Shard`); its z holds its rows' free states plus a ghost copy of
the next rank's first one, and the exchanges of `Comm` are the only difference. In one
process the shard is the whole step and every exchange is a no-op.

One step (paper §3, with the placements of the released code as switches):

    init Z (chained | zero_start | zero), or reuse the persisted Z; load U
    [dual step]                    if dual_placement == before_h
    H-steps on Z, θ fixed          (ALM: joint steps on Z and θ)
    [dual step]                    if dual_placement == before_theta
    θ-steps, Z fixed               (not for ALM)
    [dual step]                    if dual_placement == after_theta
    store Z, U; carry e of the last row into the next step
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tprop.accel import Forward, chunk_tokens
from tprop.batching import batchify, block_rows, layout_shape, n_block_rows
from tprop.config import Config, ConfigError
from tprop.methods import theta_update
from tprop.model import RNNLM
from tprop.objective import (
    CONSTRAINTS,
    Weights,
    lagrangian,
    residuals,
)
from tprop.parallel import Comm, Shard

# What `BlockTP.step` reports: sums over its blocks (``x_n`` counts what ``x`` averages over).
# ``tokens`` is a host int: the step's tokens over all ranks (reading it never waits on a GPU).
STATS = ("loss_before_h", "loss_after_h", "theta_loss", "nll", "residual", "residual_n",
         "dual_norm", "dual_norm_n")  # fmt: skip


class HOptimizer:
    """Optimiser of the free states Z, created fresh for every step (minibatch)."""

    def __init__(self, kind: str, lr: float, eps: float):
        self.kind, self.lr, self.eps = kind, lr, eps
        self.sum_sq: Tensor | None = None

    @torch.no_grad()
    def step(self, z: Tensor, g: Tensor) -> None:
        if self.kind == "sgd":
            z.sub_(self.lr * g)
            return
        # Adagrad: G += g², z −= lr·g/(√G + ε). Fresh state ⇒ the first step is ≈ lr·sign(g).
        self.sum_sq = g * g if self.sum_sq is None else self.sum_sq.add_(g * g)
        z.sub_(self.lr * g / (self.sum_sq.sqrt() + self.eps))


@dataclass
class Pass:
    """What one (chunked) forward/backward over a step's rows produced."""

    loss: Tensor  # L_aug (scaled), scalar
    nll: Tensor  # Σ NLL, scalar
    e: Tensor  # (R, S, D) block-end states, detached
    residual: Tensor  # Σ ‖z_{j+1} − e_j‖ over active constraints
    n_constraints: int
    grad_z: Tensor | None  # (R+1, S, D) ∂L/∂z, when asked for


class BlockTP:
    """`Method` for PM / ADMM / ALM: block state (Z, U, carried state) and the step."""

    def __init__(
        self,
        model: RNNLM,
        optimizer: torch.optim.Optimizer,
        train_ids: Tensor,
        cfg: Config,
        comm: Comm | None = None,
    ):
        self.model, self.opt, self.cfg, self.row = model, optimizer, cfg, cfg.row
        self.comm = comm or Comm()
        self.weights = Weights(cfg.lam, cfg.kl_weight, cfg.kl_direction)
        streams, rows = layout_shape(cfg.layout, cfg.batch_size, cfg.rows_per_step)
        self.data = batchify(train_ids, streams)  # (T, S)
        self.n_streams = streams
        self.n_rows = n_block_rows(self.data, cfg.block_size)
        if self.n_rows < 1:
            raise ConfigError(
                f"--block-size {cfg.block_size} is longer than the training data per stream "
                f"({self.data.shape[0]} tokens); lower --block-size (or --batch-size with "
                "streams)"
            )
        self.rows_per_step = self.n_rows if cfg.full_batch else rows
        like = dict(dtype=model.decoder.weight.dtype, device=model.decoder.weight.device)
        tokens = chunk_tokens(cfg, model, like["device"])
        self.chunk_rows = max(1, tokens // (cfg.block_size * streams))
        self.forward = Forward.from_config(model, cfg)
        d = model.state_size
        self.carry = torch.zeros(streams, d, **like)
        # Dataset-sized U and Z exist only when they persist across steps.
        self.U = torch.zeros(self.n_rows, streams, d, **like) if cfg.persist_u else None
        self.Z = torch.zeros(self.n_rows + 1, streams, d, **like) if cfg.persist_z else None
        self.z_ready = torch.zeros(self.n_rows, dtype=torch.bool) if cfg.persist_z else None
        self.mine = torch.zeros(self.n_rows + 1, dtype=torch.bool)  # rows of Z, U this rank owns
        for a, b in self.steps():
            sh = self.comm.shard(a, b)
            self.mine[sh.lo : sh.hi] = True
            self.mine[b] |= b == self.n_rows and sh.holds_last

    # ---- the step ------------------------------------------------------------------------
    def step(self, a: int, b: int, epoch: int) -> dict[str, Tensor]:
        """Train on block rows [a, b) (this rank's share of them); return device scalars."""
        cfg, sh = self.cfg, self.comm.shard(a, b)
        if sh.rows == 0:
            return self.idle(sh)
        x, y = block_rows(self.data, sh.lo, sh.rows, cfg.block_size)  # (B, R·S) each
        z, u = self.load_z(sh, x), self.load_u(sh)
        dual = cfg.dual_placement if self.row.duals and epoch >= cfg.u_start_epoch else None

        if dual == "before_h":
            u = self.dual_step(x, z, u, sh)
        h_passes = self.h_steps(x, y, z, u, sh)
        if dual == "before_theta":
            u = self.dual_step(x, z, u, sh)
        theta_passes = [] if self.row.joint else self.theta_steps(x, y, z, u, sh)
        if dual == "after_theta":
            u = self.dual_step(x, z, u, sh)

        last = (h_passes + theta_passes)[-1]
        self.store(sh, z, u, last.e)
        return self.stats(h_passes, theta_passes, u, sh)

    def idle(self, sh: Shard) -> dict[str, Tensor]:
        """A rank with no rows in this step (more ranks than rows): it takes part in the
        θ-updates with a zero gradient and reports zeros."""
        for _ in range(self.cfg.h_steps if self.row.joint else self.cfg.theta_steps):
            self.opt.zero_grad(set_to_none=True)
            theta_update(self.model, self.opt, self.cfg.clip, self.comm)
        return {**{k: torch.tensor(0.0) for k in STATS}, "tokens": self.step_tokens(sh)}

    def h_steps(self, x: Tensor, y: Tensor, z: Tensor, u: Tensor, sh: Shard) -> list[Pass]:
        """H-steps on z in place, θ fixed; ALM steps θ too, from the same backward."""
        cfg, joint, passes = self.cfg, self.row.joint, []
        h_opt = HOptimizer(cfg.h_optim, cfg.h_lr, cfg.h_eps)
        for _ in range(cfg.h_steps):
            if joint:
                self.opt.zero_grad(set_to_none=True)
            p = self.forward_backward(x, y, z, u, sh, grad_z=True, grad_theta=joint)
            if cfg.z_first == "fixed" and sh.prev is None:
                p.grad_z[0] = 0
            h_opt.step(z, p.grad_z)
            if joint:
                theta_update(self.model, self.opt, cfg.clip, self.comm)
            passes.append(p)
        return passes

    def theta_steps(self, x: Tensor, y: Tensor, z: Tensor, u: Tensor, sh: Shard) -> list[Pass]:
        """θ-steps with Z fixed."""
        passes = []
        for _ in range(self.cfg.theta_steps):
            self.opt.zero_grad(set_to_none=True)
            passes.append(self.forward_backward(x, y, z, u, sh, grad_z=False, grad_theta=True))
            theta_update(self.model, self.opt, self.cfg.clip, self.comm)
        return passes

    def dual_step(self, x: Tensor, z: Tensor, u: Tensor, sh: Shard) -> Tensor:
        """u ← u + α_u ∂L_aug/∂u at the current Z and θ (gradient ascent, paper §3)."""
        self.comm.refresh_ghost(z, sh)
        k = self._active(sh, 0, sh.rows)
        with torch.no_grad():
            e = self.end_states(x, z)
        uv = u.detach().clone().requires_grad_()
        n_blocks = sh.total * self.n_streams
        L = self.l_aug(z.new_zeros(()), z[1 : k + 1], e[:k], uv[:k], n_blocks=n_blocks)
        (g,) = torch.autograd.grad(L, uv)
        return (u + self.cfg.u_lr * g).detach()

    # ---- L_aug ---------------------------------------------------------------------------
    def l_aug(self, nll: Tensor, z_next: Tensor, e: Tensor, u: Tensor, n_blocks: int) -> Tensor:
        """L_aug of paper Eq. 7 (scaled by ``loss_scale``) with the configured constraint: the
        one place it is assembled, for the H-, θ- and dual steps alike."""
        cfg = self.cfg
        pen = CONSTRAINTS[cfg.constraint].penalty(
            z_next, e, u, self.model.decode_state, self.weights
        )
        return lagrangian(
            nll, pen, block_size=cfg.block_size, n_blocks=n_blocks, scale=cfg.loss_scale
        )

    def forward_backward(
        self,
        x: Tensor,
        y: Tensor,
        z: Tensor,
        u: Tensor,
        sh: Shard,
        *,
        grad_z: bool,
        grad_theta: bool,
    ) -> Pass:
        """L_aug over a step's rows, in chunks, accumulating ∂L/∂z and/or ∂L/∂θ."""
        n, R = self.n_streams, sh.rows
        self.comm.refresh_ghost(z, sh)
        gz = torch.zeros_like(z) if grad_z else None
        e_all = torch.empty_like(z[1:])
        loss = nll_tot = res_tot = z.new_zeros(())
        n_active = 0
        for a, b in self._chunks(R):
            zc = z[a : b + 1].detach().requires_grad_(grad_z)
            cols = slice(a * n, b * n)
            nll, e = self.chunk_nll(x[:, cols], zc[:-1].reshape((b - a) * n, -1), y[:, cols],
                                    grad_theta)  # fmt: skip
            e = e.view(b - a, n, -1)  # (rows, S, D)
            k = self._active(sh, a, b)
            L = self.l_aug(nll, zc[1 : k + 1], e[:k], u[a : a + k], n_blocks=sh.total * n)
            if grad_theta:
                L.backward()
                if grad_z:
                    gz[a : b + 1] += zc.grad
            elif grad_z:
                gz[a : b + 1] += torch.autograd.grad(L, zc)[0]
            e_all[a:b] = e.detach()
            loss = loss + L.detach()
            nll_tot = nll_tot + nll.detach()
            r = residuals(zc[1 : k + 1], e[:k]).detach()
            res_tot = res_tot + torch.linalg.vector_norm(r, dim=-1).sum()
            n_active += k * n
        if grad_z:
            self.comm.return_ghost_grad(gz, sh)
        return Pass(loss, nll_tot, e_all, res_tot, n_active, gz)

    def chunk_nll(
        self, x: Tensor, z0: Tensor, y: Tensor, grad_theta: bool
    ) -> tuple[Tensor, Tensor]:
        """Σ NLL of a chunk's blocks and their end states. In batch mode a chunk's logits
        (chunk_tokens × V) are the largest tensors of the run: there they are decoded a few
        rows at a time (`decoder_nll_sum`). The H-steps need no decoder gradient: they get a
        detached decoder (eager autograd would skip its matmuls anyway; a compiled backward
        computes every gradient its graph was traced with)."""
        batch = self.cfg.full_batch
        return self.forward(x, z0, y, decoder_grad=grad_theta, chunked=batch)

    # ---- block state ---------------------------------------------------------------------
    def load_z(self, sh: Shard, x: Tensor) -> Tensor:
        if self.Z is None or not bool(self.z_ready[sh.lo : sh.hi].all()):
            return self.init_z(x, sh)
        z = self.Z[sh.lo : sh.hi + 1].clone()
        if sh.stop < self.n_rows:  # the last target is the next step's first state: rank 0's
            self.comm.hand_over(z[-1] if self.comm.rank else self.Z[sh.stop], 0, sh.last_rank)
        return z

    def load_u(self, sh: Shard) -> Tensor:
        if self.U is not None:
            return self.U[sh.lo : sh.hi].clone()
        return self.carry.new_zeros(sh.rows, self.n_streams, self.model.state_size)

    def store(self, sh: Shard, z: Tensor, u: Tensor, e: Tensor) -> None:
        if self.U is not None:
            self.U[sh.lo : sh.hi] = u
        if self.Z is not None:
            self.Z[sh.lo : sh.hi + 1] = z
            self.z_ready[sh.lo : sh.hi] = True
        # The next step starts on rank 0 from the end state of this step's last row (and, when
        # Z persists, reads this step's last target as its first free state).
        last = torch.stack([e[-1], z[-1]]) if sh.holds_last else torch.empty_like(z[:2])
        last = last[: 2 if self.Z is not None else 1]
        self.comm.hand_over(last, sh.last_rank, 0)
        if sh.holds_last or self.comm.rank == 0:
            self.carry = last[0].clone()
            if self.Z is not None:
                self.Z[sh.stop] = last[1]

    @torch.no_grad()
    def init_z(self, x: Tensor, sh: Shard) -> Tensor:
        """Free states for a step's R rows from the current θ (paper §4.1), (R+1, S, D)."""
        n, how, R = self.n_streams, self.cfg.z_init, sh.rows
        z = self.model.zero_state((R + 1) * n).view(R + 1, n, -1)
        if how == "zero":
            return z
        if sh.prev is None:
            z[0] = self.carry
        if how == "chained":  # z_{j+1} = e_j: one forward pass through the rows, rank by rank
            self.comm.recv_prev(z[0], sh)
            for r in range(R):
                _, z[r + 1] = self.forward.states(x[:, r * n : (r + 1) * n], z[r])
            if sh.holds_last:
                # The last target has no loss after it, so its true gradient here is exactly
                # 0; computed row by row it differs from the step's batched e_{R-1} by
                # rounding, and a fresh Adagrad H-step would turn that noise into a step of
                # h-lr·sign(noise). Take it from the same chunked call the step makes, so the
                # residual is exactly 0.
                a = self._chunks(R)[-1][0]
                _, e = self.forward.states(x[:, a * n : R * n], z[a:R].reshape((R - a) * n, -1))
                z[R] = e.view(R - a, n, -1)[-1]
            self.comm.send_next(z[R], sh)
        elif how == "zero_start":
            # The released code's -mb_init: every block run from a zero state in parallel; the
            # end state of block j becomes z_{j+1}; the step's last target stays 0. A rank
            # after the first runs the block before its rows too, for its own z[0].
            if sh.prev is not None:
                xp, _ = block_rows(self.data, sh.lo - 1, 1, self.cfg.block_size)
                _, z[0] = self.forward.states(xp, self.model.zero_state(n))
            for a, b in self._chunks(R - 1):
                cols = slice(a * n, b * n)
                _, e = self.forward.states(x[:, cols], self.model.zero_state((b - a) * n))
                z[a + 1 : b + 1] = e.view(b - a, n, -1)
        return z

    def end_states(self, x: Tensor, z: Tensor) -> Tensor:
        """e_j of every row from the starts z_j, (R, S, D)."""
        n = self.n_streams
        e = torch.empty_like(z[1:])
        for a, b in self._chunks(z.shape[0] - 1):
            _, ec = self.forward.states(x[:, a * n : b * n], z[a:b].reshape((b - a) * n, -1))
            e[a:b] = ec.view(b - a, n, -1)
        return e

    # ---- Method bookkeeping --------------------------------------------------------------
    def steps(self) -> list[tuple[int, int]]:
        """Row ranges [a, b) of the steps of one epoch, in corpus order."""
        r = self.rows_per_step
        return [(a, min(a + r, self.n_rows)) for a in range(0, self.n_rows, r)]

    def tokens_per_epoch(self) -> int:
        return self.n_rows * self.n_streams * self.cfg.block_size

    def start_epoch(self) -> None:
        if not self.cfg.carry_across_epochs:
            self.carry.zero_()

    def state_dict(self) -> dict[str, Tensor]:
        """Z, U of every rank's rows in full tensors (a checkpoint does not depend on W)."""
        out = {"carry": self.carry}
        if self.U is not None:
            out["U"] = self.comm.gather_rows(self.U, self.mine[:-1])
        if self.Z is not None:
            out["Z"] = self.comm.gather_rows(self.Z, self.mine)
            out["z_ready"] = self.comm.gather_rows(self.z_ready, self.mine[:-1])
        return out

    def load_state_dict(self, sd: dict[str, Tensor]) -> None:
        self.carry.copy_(sd["carry"])
        if self.U is not None:
            self.U.copy_(sd["U"])
        if self.Z is not None:
            self.Z.copy_(sd["Z"])
            self.z_ready.copy_(sd["z_ready"])

    def stats(
        self, h_passes: list[Pass], theta_passes: list[Pass], u: Tensor, sh: Shard
    ) -> dict[str, Tensor | int]:
        """`STATS`: L_aug before and after the H-steps and at the θ-step, NLL, residual and
        dual norms, tokens."""
        passes = h_passes + theta_passes
        last = passes[-1]
        k = self._active(sh, 0, sh.rows)
        return {
            "loss_before_h": passes[0].loss,
            "loss_after_h": theta_passes[0].loss if theta_passes else last.loss,
            "theta_loss": last.loss,
            "nll": last.nll,
            "residual": last.residual,
            "residual_n": torch.tensor(float(last.n_constraints)),
            "dual_norm": torch.linalg.vector_norm(u[:k], dim=-1).sum(),
            "dual_norm_n": torch.tensor(float(k * self.n_streams)),
            "tokens": self.step_tokens(sh),
        }

    def step_tokens(self, sh: Shard) -> int:
        return (sh.stop - sh.start) * self.n_streams * self.cfg.block_size

    def _chunks(self, n_rows: int) -> list[tuple[int, int]]:
        c = self.chunk_rows
        return [(a, min(a + c, n_rows)) for a in range(0, n_rows, c)]

    def _active(self, sh: Shard, lo: int, hi: int) -> int:
        """Constraints among this rank's rows [lo, hi) that enter L: all, but z_last='none'
        drops the step's last."""
        drop = self.cfg.z_last == "none" and hi == sh.rows and sh.holds_last
        return hi - lo - drop
