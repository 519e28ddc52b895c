"""A GRU written by hand against `nn.GRU`: tried for issue 10, and dropped.

The idea: `nn.GRU`'s CPU backward runs through autograd one time step at a time and makes a
weight-gradient matmul per step; a hand-written backward makes one per window (all steps'
gate gradients against all steps' inputs) and far fewer small operators. It computes the
same numbers (checked here in float64) but is no faster at PTB's shapes: the GRU's time is
its matmuls, which both make. Kept so the figure in docs/performance.md can be rerun:

    python benchmarks/gru_by_hand.py          # one thread, T = 20, N = 32, hidden 100 and 200
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import Tensor

from tprop.alloc import tune


class HandGRU(torch.autograd.Function):
    """One layer, time-major: x (T, N, H), h0 (N, H) → outputs (T, N, H), last state (N, H)."""

    @staticmethod
    def forward(ctx, x: Tensor, h0: Tensor, w_ih, w_hh, b_ih, b_hh):
        T, N, _ = x.shape
        H = h0.shape[1]
        gi = torch.addmm(b_ih, x.reshape(T * N, -1), w_ih.t()).view(T, N, 3 * H)
        out, gates, ghn = x.new_empty(T, N, H), x.new_empty(T, N, 3 * H), x.new_empty(T, N, H)
        h = h0
        for t in range(T):
            gh = torch.addmm(b_hh, h, w_hh.t())
            r, z, n = gates[t].split(H, 1)
            torch.add(gi[t, :, : 2 * H], gh[:, : 2 * H], out=gates[t, :, : 2 * H]).sigmoid_()
            ghn[t] = gh[:, 2 * H :]
            torch.addcmul(gi[t, :, 2 * H :], r, ghn[t], out=n).tanh_()
            torch.sub(h, n, out=out[t]).mul_(z).add_(n)  # h' = n + z (h − n)
            h = out[t]
        ctx.save_for_backward(x, h0, w_ih, w_hh, out, gates, ghn)
        return out, h.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor, dlast: Tensor):
        x, h0, w_ih, w_hh, out, gates, ghn = ctx.saved_tensors
        T, N, H = out.shape
        dgi, dgh = torch.empty_like(gates), torch.empty_like(gates)
        dh = dlast.clone()
        for t in range(T - 1, -1, -1):
            dh += dout[t]
            r, z, n = gates[t].split(H, 1)
            dr, dz, dn = dgi[t].split(H, 1)
            torch.addcmul(dh, dh, z, value=-1, out=dn).mul_(1 - n * n)
            torch.sub(out[t - 1] if t else h0, n, out=dz).mul_(dh).mul_(z * (1 - z))
            torch.mul(dn, ghn[t], out=dr).mul_(r * (1 - r))
            dgh[t, :, : 2 * H] = dgi[t, :, : 2 * H]
            torch.mul(dn, r, out=dgh[t, :, 2 * H :])
            dh = torch.addmm(dh * z, dgh[t], w_hh)
        gi, gh = dgi.view(T * N, -1), dgh.view(T * N, -1)
        before = torch.cat([h0[None], out[:-1]]).view(T * N, H)
        dx = torch.mm(gi, w_ih).view_as(x)
        dw_ih = torch.mm(x.reshape(T * N, -1).t(), gi).t()
        return dx, dh, dw_ih, torch.mm(before.t(), gh).t(), gi.sum(0), gh.sum(0)


def check() -> float:
    """Largest difference of outputs and all gradients against nn.GRU, float64."""
    torch.manual_seed(0)
    gru = torch.nn.GRU(7, 5).double()
    x = torch.randn(4, 3, 7, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    c, inputs = torch.randn(4, 3, 5, dtype=torch.float64), [x, h0, *gru.parameters()]
    out, last = gru(x, h0[None])
    ref = [out, *torch.autograd.grad((out * c).sum() + 3 * last.sum(), inputs)]
    out, last = HandGRU.apply(x, h0, *gru.parameters())
    got = [out, *torch.autograd.grad((out * c).sum() + 3 * last.sum(), inputs)]
    return max((a - b).abs().max().item() for a, b in zip(ref, got, strict=True))


def median_ms(fn, rounds: int = 31) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def time_both(hidden: int) -> tuple[float, float]:
    """Median ms of forward and backward of a (20, 32, hidden) window: nn.GRU, by hand."""
    gru = torch.nn.GRU(hidden, hidden)
    x, h0 = torch.randn(20, 32, hidden, requires_grad=True), torch.zeros(32, hidden)
    by_torch = median_ms(lambda: gru(x, h0[None])[0].sum().backward())
    by_hand = median_ms(lambda: HandGRU.apply(x, h0, *gru.parameters())[0].sum().backward())
    return by_torch, by_hand


def main() -> None:
    tune()  # tprop's malloc settings, as in a training run
    print(f"float64, largest difference against nn.GRU: {check():.1e}")
    torch.set_num_threads(1)
    for hidden in (100, 200):
        a, b = time_both(hidden)
        print(f"hidden {hidden}: nn.GRU {a:.2f} ms, by hand {b:.2f} ms forward and backward")


if __name__ == "__main__":
    main()
