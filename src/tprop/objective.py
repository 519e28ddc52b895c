"""Pure tensor functions of the objective: no config, no model, no state.

Notation (DESIGN.md §1): blocks of B tokens; z_j the free state at the start of block j;
e_j the computed state at its end; u_j the dual of the constraint z_{j+1} = e_j; λ = ``lam``.
The blocked augmented Lagrangian (paper Eq. 7) is

    L_aug = Σ_j Σ_k ℓ(f(ĥ_j^(k)), y_j^(k)) + (λ/2) Σ_j ‖z_{j+1} − e_j + u_j‖²

(the second term is the L2 row of `CONSTRAINTS`; other rows replace or extend it)

and, with ``scale="mean"`` (the released code's normalisation), (1/S)·[NLL/B + (λ/2)·Σ‖·‖²]
over the S blocks of the update.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LN2 = math.log(2.0)

Decode = Callable[[Tensor], Tensor]  # flat states (..., D) → logits (..., V)


@dataclass(frozen=True)
class Weights:
    """The weights of the constraint terms: λ of the L2 penalty, the KL term's weight and
    direction (forward: KL(p(z_{j+1}) ‖ p(e_j)); reverse: KL(p(e_j) ‖ p(z_{j+1})))."""

    lam: float
    kl: float = 0.0
    kl_direction: str = "forward"


def nll_sum(logits: Tensor, targets: Tensor) -> Tensor:
    """Σ of −log p(target) over all positions. logits (..., V), targets (...)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
    )


def decode_nll(h: Tensor, weight: Tensor, bias: Tensor, targets: Tensor) -> Tensor:
    """`nll_sum` of the decoder's logits of states h (..., d): what a training step minimises
    (`tprop.accel.Forward` compiles it with ``--compile``)."""
    return nll_sum(F.linear(h, weight, bias).to(weight.dtype), targets)  # float32 under bf16


def fused_decode_nll(h: Tensor, weight: Tensor, bias: Tensor, targets: Tensor) -> Tensor:
    """`decode_nll` as one autograd node (``--cross-entropy fused``): the forward keeps the
    softmax p, the backward turns it into ∂/∂logits = p − onehot in place, where autograd's
    cross-entropy keeps the log-softmax and allocates and fills two more (n, V) tensors;
    ∂W is computed as (hᵀ·∂)ᵀ, the faster of the two layouts of that matmul on a CPU. Equal
    to `decode_nll` to float rounding (tests/test_accel.py); a gradient only for the inputs
    that require one."""
    return _LinearCrossEntropy.apply(h.reshape(-1, h.shape[-1]), weight, bias, targets.reshape(-1))


class _LinearCrossEntropy(torch.autograd.Function):
    """One exponential per logit: the NLL comes from the softmax itself. A row's largest p is
    e⁰/Σ e^(z − max z), so log Σ e^z = max z − log max p, and −log p(y) = max z − log max p
    − z_y: no underflow where p(y) does (max p ≥ 1/V), no second pass of exp."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, y: Tensor) -> Tensor:
        z = torch.addmm(bias, h, weight.t())  # (n, V)
        top, zy = z.amax(1), z.gather(1, y[:, None]).squeeze(1)
        p = torch.softmax(z, -1)
        ctx.save_for_backward(h, weight, p, y)
        return (top - p.amax(1).log() - zy).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        h, weight, d, y = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        d[torch.arange(len(y), device=d.device), y] -= 1  # p becomes ∂NLL/∂logits in place
        gh = torch.mm(d, weight).mul_(g) if need_h else None
        gw = torch.mm(h.t() * g, d).t() if need_w else None  # g scales the small operand
        gb = d.sum(0).mul_(g) if need_b else None
        return gh, gw, gb, None


LOGITS_BYTES = 16 << 20
"""Size of the logits `decoder_nll_sum` holds at a time: rows of them that stay in a CPU's
last-level cache, so the softmax reads what the matmul just wrote (docs/performance.md)."""


def decoder_nll_sum(h: Tensor, weight: Tensor, bias: Tensor, targets: Tensor) -> Tensor:
    """`nll_sum(F.linear(h, weight, bias), targets)` without the full logits: they exist a few
    rows at a time (`LOGITS_BYTES`), in the forward and, recomputed, in the backward.

    h (..., d), weight (V, d), bias (V,), targets (...). The chunk sums are added in float64;
    the result has h's dtype. Differentiable in h, weight and bias; a gradient is computed only
    for those that require one, so an H-step, which needs no decoder gradient, passes
    ``weight.detach(), bias.detach()`` and skips the two decoder matmuls of the backward.
    """
    h2, y = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad or bias.requires_grad):
        return _DecoderNLL.apply(h2, weight, bias, y)
    return _decoder_nll(h2, weight, bias, y)


def _rows(weight: Tensor) -> int:
    return max(1, LOGITS_BYTES // (weight.shape[0] * weight.element_size()))


def _decoder_nll(h: Tensor, weight: Tensor, bias: Tensor, y: Tensor) -> Tensor:
    total = torch.zeros((), dtype=torch.float64, device=h.device)
    step = _rows(weight)
    for a in range(0, h.shape[0], step):
        logits = F.linear(h[a : a + step], weight, bias).to(h.dtype)  # (rows, V)
        total += F.cross_entropy(logits, y[a : a + step], reduction="sum").double()
    return total.to(h.dtype)


class _DecoderNLL(torch.autograd.Function):
    """The backward rebuilds ∂/∂logits = softmax − onehot a chunk at a time (one more matmul,
    instead of keeping two (n, V) tensors from the forward to the backward)."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, y: Tensor) -> Tensor:
        ctx.save_for_backward(h, weight, bias, y)
        kind = h.device.type  # the backward recomputes the logits under the same autocast
        ctx.cast = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
        return _decoder_nll(h, weight, bias, y)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        h, weight, bias, y = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        gh = torch.empty_like(h) if need_h else None
        gw = torch.zeros_like(weight) if need_w else None
        gb = torch.zeros_like(bias) if need_b else None
        step, g = _rows(weight), g.to(h.dtype)
        cast = contextlib.nullcontext()
        if ctx.cast is not None:
            cast = torch.autocast(h.device.type, dtype=ctx.cast)
        with cast:
            _backward_chunks(h, weight, bias, y, g, step, gh, gw, gb)
        return gh, gw, gb, None


def _backward_chunks(h, weight, bias, y, g, step, gh, gw, gb) -> None:  # noqa: ANN001
    """∂/∂h, ∂/∂W, ∂/∂b (those not None) of g·Σ NLL, a chunk of ``step`` rows at a time; the
    recomputed logits follow the autocast in force, the gradients are in h's dtype."""
    for a in range(0, h.shape[0], step):
        hc, yc = h[a : a + step], y[a : a + step]
        d = torch.softmax(F.linear(hc, weight, bias).to(h.dtype), -1)  # (rows, V)
        d[torch.arange(len(yc), device=d.device), yc] -= 1  # ∂NLL/∂logits
        d.mul_(g)
        if gh is not None:
            torch.mm(d, weight, out=gh[a : a + step])
        if gw is not None:
            gw.addmm_(d.t(), hc)
        if gb is not None:
            gb += d.sum(0)


def residuals(z_next: Tensor, e: Tensor) -> Tensor:
    """r_j = z_{j+1} − e_j, the constraint violation of each boundary (any matching shape)."""
    return z_next - e


def penalty(r: Tensor, u: Tensor, lam: float) -> Tensor:
    """(λ/2) Σ_j ‖r_j + u_j‖², summed over boundaries and state dimensions (Eq. 7)."""
    return 0.5 * lam * (r + u).pow(2).sum()


def kl_divergence(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Σ over rows of KL(softmax(logits_p) ‖ softmax(logits_q)), in nats."""
    log_p, log_q = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
    return (log_p.exp() * (log_p - log_q)).sum()


def l2(z_next: Tensor, e: Tensor, u: Tensor, decode: Decode, w: Weights) -> Tensor:
    """The paper's constraint: (λ/2) Σ_j ‖z_{j+1} − e_j + u_j‖² (Eq. 7)."""
    return penalty(residuals(z_next, e), u, w.lam)


def kl(z_next: Tensor, e: Tensor, u: Tensor, decode: Decode, w: Weights) -> Tensor:
    """The constraint the paper proposes in §4.3: the output distributions of the free state
    and of the computed state agree, w·Σ_j KL(softmax(W_y z_{j+1}) ‖ softmax(W_y e_j)) (or the
    reverse). Its gradient reaches the decoder too; it has no dual term."""
    p, q = decode(z_next), decode(e)
    return w.kl * (kl_divergence(p, q) if w.kl_direction == "forward" else kl_divergence(q, p))


def l2_kl(z_next: Tensor, e: Tensor, u: Tensor, decode: Decode, w: Weights) -> Tensor:
    """Both: the L2 penalty with its duals, plus the KL term."""
    return l2(z_next, e, u, decode, w) + kl(z_next, e, u, decode, w)


@dataclass(frozen=True)
class Constraint:
    penalty: Callable[[Tensor, Tensor, Tensor, Decode, Weights], Tensor]
    duals: bool  # u enters the penalty, so dual ascent can act on it
    settings: tuple[str, ...]  # the Config fields it reads (others are refused if set)


CONSTRAINTS: dict[str, Constraint] = {
    "l2": Constraint(l2, duals=True, settings=("lam",)),
    "kl": Constraint(kl, duals=False, settings=("kl_weight", "kl_direction")),
    "l2+kl": Constraint(l2_kl, duals=True, settings=("lam", "kl_weight", "kl_direction")),
}
"""The constraint table: name → penalty(z_next, e, u, decode, weights), a scalar added to the
NLL in L_aug, with whether it has a dual term and which settings it reads.

z_next, e, u are (k, S, D) for the k active boundaries of a chunk; ``decode`` maps flat states
to logits (the model's decoder on the top layer's h). A new constraint is one function and one
row here; `--constraint NAME` selects it, and the H-, θ- and dual steps all call it through
`BlockTP.l_aug`.
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
