"""Pure tensor functions of the objective: no config, no model, no state.

Notation (DESIGN.md §1): blocks of B tokens; z_j the free state at the start of block j;
e_j the computed state at its end; u_j the dual of the constraint z_{j+1} = e_j; λ = ``lam``.
The blocked augmented Lagrangian (paper Eq. 7) is

    L_aug = Σ_j Σ_k ℓ(f(ĥ_j^(k)), y_j^(k)) + (λ/2) Σ_j ‖z_{j+1} − e_j + u_j‖²

and, with ``scale="mean"`` (the released code's normalisation), (1/S)·[NLL/B + (λ/2)·Σ‖·‖²]
over the S blocks of the update.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

LN2 = math.log(2.0)

Decode = Callable[[Tensor], Tensor]
Constraint = Callable[[Tensor, Tensor, Tensor, float, Decode], Tensor]


def nll_sum(logits: Tensor, targets: Tensor) -> Tensor:
    """Σ of −log p(target) over all positions. logits (..., V), targets (...)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
    )


def residuals(z_next: Tensor, e: Tensor) -> Tensor:
    """r_j = z_{j+1} − e_j, the constraint violation of each boundary (any matching shape)."""
    return z_next - e


def penalty(r: Tensor, u: Tensor, lam: float) -> Tensor:
    """(λ/2) Σ_j ‖r_j + u_j‖², summed over boundaries and state dimensions (Eq. 7)."""
    return 0.5 * lam * (r + u).pow(2).sum()


def l2(z_next: Tensor, e: Tensor, u: Tensor, lam: float, decode: Decode) -> Tensor:
    """The paper's constraint: (λ/2) Σ_j ‖z_{j+1} − e_j + u_j‖² (Eq. 7)."""
    return penalty(residuals(z_next, e), u, lam)


CONSTRAINTS: dict[str, Constraint] = {
    "l2": l2,
}
"""The constraint table: name → penalty(z_next, e, u, lam, decode), a scalar to add to the NLL.

z_next, e, u are (k, S, D) for the k active boundaries of a chunk; ``decode`` maps states to
logits (the model's decoder, for constraints on output distributions). A new constraint is one
function and one row here; `--constraint NAME` selects it, and the step and the dual step both
call it through `BlockTP.penalty`.
"""


def lagrangian(nll: Tensor, pen: Tensor, *, block_size: int, n_blocks: int, scale: str) -> Tensor:
    """Combine the two terms of L_aug.

    ``sum``: NLL + penalty, Eq. 7 as written. ``mean``: (NLL/B + penalty)/S with S = n_blocks,
    i.e. per-token mean NLL plus (λ/2)× the per-block mean squared violation; this is what the
    released code optimises, and it makes its λ worth λ·B in Eq. 7's units.
    """
    if scale == "sum":
        return nll + pen
    if scale == "mean":
        return (nll / block_size + pen) / n_blocks
    raise ValueError(f"unknown loss scale {scale!r}")


def perplexity(nll_total: float, n_tokens: int) -> float:
    """exp(mean NLL per token): the one definition of perplexity in tprop."""
    return math.exp(nll_total / n_tokens)


def bits_per_token(nll_total: float, n_tokens: int) -> float:
    return nll_total / n_tokens / LN2
