"""What every training method is: the method table, the `Method` interface, the one θ-update.

The loop in `tprop.train` knows methods only through `Method`; truncated BPTT (`tprop.bptt`)
and blocked target propagation (`tprop.btprop`) implement it. PM, ADMM and ALM are rows of
`METHODS`, not three programs: config resolution, the CLI and the step read their differences
from the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the table is read by config and the CLI, which need no torch
    import torch
    from torch import Tensor

    from tprop.parallel import Comm


@dataclass(frozen=True)
class MethodRow:
    blocked: bool  # target propagation on the block grid (else truncated BPTT windows)
    duals: bool  # u is stepped by dual ascent
    joint: bool  # Z and θ are stepped together from one backward (ALM)


METHODS: dict[str, MethodRow] = {
    "bptt": MethodRow(blocked=False, duals=False, joint=False),
    "pm": MethodRow(blocked=True, duals=False, joint=False),
    "admm": MethodRow(blocked=True, duals=True, joint=False),
    "alm": MethodRow(blocked=True, duals=True, joint=True),
}


class Method(Protocol):
    """A training method as the loop sees it: an epoch is a list of steps over the data."""

    def steps(self) -> list[tuple[int, ...]]:
        """The steps of one epoch, in order; each is passed to `step` as its position."""

    def tokens_per_epoch(self) -> int:
        """Training tokens one epoch consumes (for progress bars and throughput)."""

    def start_epoch(self) -> None:
        """Reset what an epoch starts from (the carried state)."""

    def step(self, *where: int, epoch: int) -> dict[str, Tensor]:
        """Train on one step (this rank's share of it); return device scalars that add up
        over steps and ranks: ``nll`` (Σ) and diagnostics, where ``x_n`` is the count that
        the sum ``x`` is averaged over; and ``tokens``, a host int: the step's tokens over
        all ranks. Nothing in a step reads a device value (tests/test_accel.py)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything beyond θ and its optimiser that an exact resume needs."""

    def load_state_dict(self, sd: dict[str, Any]) -> None: ...


def theta_update(
    model: torch.nn.Module, opt: torch.optim.Optimizer, clip: float, comm: Comm | None = None
) -> None:
    """The one θ-update of every method: sum the gradient over ranks (`tprop.parallel`; a
    no-op in one process), clip its global norm, then step. Every rank steps alike."""
    import torch

    if comm is not None:
        comm.sum_grads(list(model.parameters()))
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
