"""Blocked target propagation: the method table, the block state and one training step.

PM, ADMM and ALM are rows of one table (`METHODS`), not three programs. A *step* takes the block
rows [a, b) of the block grid (see `tprop.batching`): a minibatch in minibatch mode, the whole
training set in batch mode. Inside it, the R = b − a block rows × S streams run as R·S columns of
one recurrent call of time depth B; the free states of the step are

    z: (R+1, S, D)   z[r] starts block row r; z[R] is the target after the last row
    u: (R, S, D)     u[r] is the dual of the constraint z[r+1] = e[r]

Rows are processed in chunks (``chunk_rows``) with gradients accumulated, so a dataset-sized
step fits in memory; the result does not depend on the chunking.

One step (paper §3, with the placements of the released code as switches):

    init Z (chained | zero_start | zero), or reuse the persisted Z
    [dual step]                    if dual_placement == before_h
    H-steps on Z, θ fixed          (ALM: joint steps on Z and θ)
    [dual step]                    if dual_placement == before_theta
    θ-steps, Z fixed               (not for ALM)
    [dual step]                    if dual_placement == after_theta
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tprop.batching import block_rows
from tprop.config import Config
from tprop.model import RNNLM
from tprop.objective import lagrangian, nll_sum, penalty, residuals


@dataclass(frozen=True)
class MethodRow:
    duals: bool   # u is stepped by dual ascent
    joint: bool   # Z and θ are stepped together from one backward (ALM)


METHODS = {
    "pm": MethodRow(duals=False, joint=False),
    "admm": MethodRow(duals=True, joint=False),
    "alm": MethodRow(duals=True, joint=True),
}


@dataclass(frozen=True)
class TPSettings:
    """The flat arguments of a BlockTP, built from a resolved Config by `settings`."""

    row: MethodRow
    block: int
    lam: float
    u_lr: float
    u_start_epoch: int
    h_steps: int
    h_lr: float
    h_optim: str
    h_eps: float
    theta_steps: int
    clip: float
    z_init: str
    z_first: str
    z_last: str
    persist_u: bool
    persist_z: bool
    dual_placement: str
    loss_scale: str
    chunk_tokens: int


def settings(cfg: Config) -> TPSettings:
    return TPSettings(
        row=METHODS[cfg.method], block=cfg.block_size, lam=cfg.lam, u_lr=cfg.u_lr,
        u_start_epoch=cfg.u_start_epoch, h_steps=cfg.h_steps, h_lr=cfg.h_lr,
        h_optim=cfg.h_optim, h_eps=cfg.h_eps, theta_steps=cfg.theta_steps, clip=cfg.clip,
        z_init=cfg.z_init, z_first=cfg.z_first, z_last=cfg.z_last, persist_u=cfg.persist_u,
        persist_z=cfg.persist_z, dual_placement=cfg.dual_placement, loss_scale=cfg.loss_scale,
        chunk_tokens=cfg.chunk_tokens)


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

    loss: Tensor          # L_aug (scaled), scalar
    nll: Tensor           # Σ NLL, scalar
    e: Tensor             # (R, S, D) block-end states, detached
    residual: Tensor      # mean ‖z_{j+1} − e_j‖ over active constraints
    grad_z: Tensor | None


class BlockTP:
    """Block state (Z, U, carried state) and the training step of PM / ADMM / ALM."""

    def __init__(self, model: RNNLM, optimizer: torch.optim.Optimizer, data: Tensor,
                 s: TPSettings, rows_per_step: int):
        self.model, self.opt, self.data, self.s = model, optimizer, data, s
        self.n_streams = data.shape[1]
        self.n_rows = (data.shape[0] - 1) // s.block  # full block rows of the grid
        self.rows_per_step = rows_per_step
        self.chunk_rows = max(1, s.chunk_tokens // (s.block * self.n_streams))
        d = model.state_size
        w = model.decoder.weight
        like = dict(dtype=w.dtype, device=w.device)
        self.carry = torch.zeros(self.n_streams, d, **like)
        # Dataset-sized U and Z exist only when they persist across steps.
        self.U = torch.zeros(self.n_rows, self.n_streams, d, **like) if s.persist_u else None
        self.Z = torch.zeros(self.n_rows + 1, self.n_streams, d, **like) if s.persist_z else None
        self.z_ready = torch.zeros(self.n_rows, dtype=torch.bool) if s.persist_z else None

    # ---- bookkeeping ---------------------------------------------------------------------
    def steps(self) -> list[tuple[int, int]]:
        """Row ranges [a, b) of the steps of one epoch, in corpus order."""
        r = self.rows_per_step
        return [(a, min(a + r, self.n_rows)) for a in range(0, self.n_rows, r)]

    def start_epoch(self) -> None:
        self.carry.zero_()

    def state_dict(self) -> dict[str, Tensor]:
        out = {"carry": self.carry}
        if self.U is not None:
            out["U"] = self.U
        if self.Z is not None:
            out["Z"], out["z_ready"] = self.Z, self.z_ready
        return out

    def load_state_dict(self, sd: dict[str, Tensor]) -> None:
        self.carry.copy_(sd["carry"])
        if self.U is not None:
            self.U.copy_(sd["U"])
        if self.Z is not None:
            self.Z.copy_(sd["Z"])
            self.z_ready.copy_(sd["z_ready"])

    def _chunks(self, n_rows: int):
        c = self.chunk_rows
        return [(a, min(a + c, n_rows)) for a in range(0, n_rows, c)]

    def _active(self, lo: int, hi: int, n_rows: int) -> int:
        """Constraints among rows [lo, hi) that enter L: all, but z_last='none' drops the last."""
        return hi - lo - (1 if (self.s.z_last == "none" and hi == n_rows) else 0)

    # ---- Z initialisation ----------------------------------------------------------------
    @torch.no_grad()
    def init_z(self, x: Tensor) -> Tensor:
        """Free states for a step's R rows from the current θ (paper §4.1), (R+1, S, D)."""
        n, s = self.n_streams, self.s
        R = x.shape[1] // n
        z = self.model.zero_state((R + 1) * n).view(R + 1, n, -1)
        if s.z_init == "zero":
            return z
        z[0] = self.carry
        if s.z_init == "chained":  # z_{j+1} = e_j: one forward pass through the rows
            for r in range(R):
                _, z[r + 1] = self.model.states(x[:, r * n:(r + 1) * n], z[r])
        elif s.z_init == "zero_start" and R > 1:
            # The released code's -mb_init: every block run from a zero state in parallel; the
            # end state of block j becomes z_{j+1}; z_R stays 0.
            for a, b in self._chunks(R - 1):
                cols = slice(a * n, b * n)
                _, e = self.model.states(x[:, cols], self.model.zero_state((b - a) * n))
                z[a + 1:b + 1] = e.view(b - a, n, -1)
        return z

    # ---- one pass of L_aug ---------------------------------------------------------------
    def run(self, x: Tensor, y: Tensor, z: Tensor, u: Tensor, *, grad_z: bool,
            grad_theta: bool) -> Pass:
        """L_aug over a step's rows, in chunks, accumulating ∂L/∂z and/or ∂L/∂θ."""
        n, s = self.n_streams, self.s
        R = z.shape[0] - 1
        gz = torch.zeros_like(z) if grad_z else None
        e_all = torch.empty_like(z[1:])
        loss = nll_tot = res_tot = z.new_zeros(())
        n_active = 0
        for a, b in self._chunks(R):
            zc = z[a:b + 1].detach().requires_grad_(grad_z)
            cols = slice(a * n, b * n)
            logits, e = self.model(x[:, cols], zc[:-1].reshape((b - a) * n, -1))
            e = e.view(b - a, n, -1)
            k = self._active(a, b, R)
            r = residuals(zc[1:k + 1], e[:k])
            nll = nll_sum(logits, y[:, cols])
            L = lagrangian(nll, penalty(r, u[a:a + k], s.lam), block_size=s.block,
                           n_blocks=R * n, scale=s.loss_scale)
            if grad_theta:
                L.backward()
                if grad_z:
                    gz[a:b + 1] += zc.grad
            elif grad_z:
                gz[a:b + 1] += torch.autograd.grad(L, zc)[0]
            e_all[a:b] = e.detach()
            loss = loss + L.detach()
            nll_tot = nll_tot + nll.detach()
            res_tot = res_tot + torch.linalg.vector_norm(r.detach(), dim=-1).sum()
            n_active += k * n
        return Pass(loss, nll_tot, e_all, res_tot / max(n_active, 1), gz)

    @torch.no_grad()
    def end_states(self, x: Tensor, z: Tensor) -> Tensor:
        n = self.n_streams
        R = z.shape[0] - 1
        e = torch.empty_like(z[1:])
        for a, b in self._chunks(R):
            _, ec = self.model.states(x[:, a * n:b * n], z[a:b].reshape((b - a) * n, -1))
            e[a:b] = ec.view(b - a, n, -1)
        return e

    def dual_step(self, x: Tensor, z: Tensor, u: Tensor) -> Tensor:
        """u ← u + α_u ∂L_aug/∂u at the current Z and θ (gradient ascent, paper §3)."""
        s, R = self.s, z.shape[0] - 1
        k = self._active(0, R, R)
        r = residuals(z[1:k + 1], self.end_states(x, z)[:k])
        uv = u.detach().clone().requires_grad_()
        L = lagrangian(z.new_zeros(()), penalty(r, uv[:k], s.lam), block_size=s.block,
                       n_blocks=R * self.n_streams, scale=s.loss_scale)
        (g,) = torch.autograd.grad(L, uv)
        return (u + s.u_lr * g).detach()

    def _theta_update(self) -> None:
        if self.s.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.clip)
        self.opt.step()

    # ---- the step ------------------------------------------------------------------------
    def step(self, a: int, b: int, epoch: int) -> dict[str, Tensor]:
        """Train on block rows [a, b); return device scalars for the metrics."""
        s, n = self.s, self.n_streams
        x, y = block_rows(self.data, a, b - a, s.block)
        R = b - a
        if self.Z is not None and bool(self.z_ready[a:b].all()):
            z = self.Z[a:b + 1].clone()
        else:
            z = self.init_z(x)
        u = self.U[a:b].clone() if self.U is not None else torch.zeros_like(z[1:])
        duals = s.row.duals and epoch >= s.u_start_epoch

        if duals and s.dual_placement == "before_h":
            u = self.dual_step(x, z, u)
        h_opt = HOptimizer(s.h_optim, s.h_lr, s.h_eps)
        before = after = None
        if s.row.joint:  # ALM: joint (Z, θ) steps from one backward each
            for _ in range(s.h_steps):
                self.opt.zero_grad(set_to_none=True)
                p = self.run(x, y, z, u, grad_z=True, grad_theta=True)
                self._mask_first(p.grad_z)
                h_opt.step(z, p.grad_z)
                self._theta_update()
                before = p.loss if before is None else before
            after = theta_loss = p.loss
            if duals and s.dual_placement == "before_theta":
                u = self.dual_step(x, z, u)
        else:
            for _ in range(s.h_steps):
                p = self.run(x, y, z, u, grad_z=True, grad_theta=False)
                self._mask_first(p.grad_z)
                h_opt.step(z, p.grad_z)
                before = p.loss if before is None else before
            if duals and s.dual_placement == "before_theta":
                u = self.dual_step(x, z, u)
            for _ in range(s.theta_steps):
                self.opt.zero_grad(set_to_none=True)
                p = self.run(x, y, z, u, grad_z=False, grad_theta=True)
                self._theta_update()
                after = p.loss if after is None else after
            theta_loss = p.loss
        if duals and s.dual_placement == "after_theta":
            u = self.dual_step(x, z, u)

        if self.U is not None:
            self.U[a:b] = u
        if self.Z is not None:
            self.Z[a:b + 1] = z
            self.z_ready[a:b] = True
        self.carry = p.e[R - 1].clone()  # end state of the last row, from the last forward
        k = self._active(0, R, R)
        return {
            "loss_before_h": before if before is not None else after,
            "loss_after_h": after,
            "theta_loss": theta_loss,
            "nll": p.nll,
            "residual": p.residual,
            "dual_norm": torch.linalg.vector_norm(u[:k], dim=-1).mean() if k else u.new_zeros(()),
            "tokens": torch.tensor(R * n * s.block),
        }

    def _mask_first(self, g: Tensor) -> None:
        if self.s.z_first == "fixed":
            g[0] = 0
