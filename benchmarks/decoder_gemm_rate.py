"""How close the decoder's three matmuls run to this CPU's sgemm rate, one thread.

docs/performance.md argues that tprop BPTT cannot reach 1.25× the plain loop at hidden 200
in float32 on this CPU because the decoder's matmuls alone take most of the budget. That
argument holds only if those matmuls already run near the machine's rate; this prints the
rate of a large square sgemm beside that of each decoder matmul (PTB: 640 rows a step,
vocabulary 10,000), and the softmax-side passes over the (640, V) logits for scale. Two
rows are ideas tried and dropped: the bias folded into the matmul as one more column, and a
row max that also returns the argmax (to read max p at z's argmax instead of a pass over p).

    python benchmarks/decoder_gemm_rate.py        # one thread; hidden 100 and 200
"""

from __future__ import annotations

import torch
from torch.utils import benchmark

from tprop.alloc import tune

ROWS, VOCAB = 640, 10_000


def median_ms(fn) -> float:
    """torch's own timer: blocks of calls for at least a second, the median block's time a call
    (its warm-up takes the first touches of fresh memory, page faults, out of the figure)."""
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=1)
    return 1e3 * timer.blocked_autorange(min_run_time=1.0).median


def row(name: str, ms: float, flop: float | None = None) -> None:
    rate = f"{flop / ms / 1e6:6.1f} GFLOP/s" if flop else ""
    print(f"| {name} | {ms:.2f} | {rate} |")


def decoder(d: int) -> None:
    """The three matmuls of one step's decoder at hidden d, each 2·rows·d·V flop."""
    h, w, bias = torch.randn(ROWS, d), torch.randn(VOCAB, d), torch.randn(VOCAB)
    g = torch.softmax(torch.randn(ROWS, VOCAB), -1)
    flop = 2 * ROWS * d * VOCAB
    row(f"hidden {d}: logits addmm(b, h, Wᵀ)", median_ms(lambda: torch.addmm(bias, h, w.t())), flop)
    row(f"hidden {d}: ∂h = g W", median_ms(lambda: g @ w), flop)
    row(f"hidden {d}: ∂W = (hᵀ g)ᵀ", median_ms(lambda: (h.t() @ g).t()), flop)
    h1, wb = torch.cat([h, h.new_ones(ROWS, 1)], 1), torch.cat([w, bias[:, None]], 1)
    row(
        f"hidden {d}: logits with the bias as a column, [h, 1] [W, b]ᵀ",
        median_ms(lambda: h1 @ wb.t()),
        flop,
    )


def main() -> None:
    tune()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; torch.utils.benchmark medians over ≥ 1 s each\n")
    print("| operation | ms | rate |\n|---|---|---|")
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    row(f"sgemm {n}³ (the machine's rate)", median_ms(lambda: a @ b), 2 * n**3)
    for d in (100, 200):
        decoder(d)
    z = torch.randn(ROWS, VOCAB)
    row("softmax of (640, V)", median_ms(lambda: torch.softmax(z, -1)))
    row("row max of (640, V)", median_ms(lambda: z.amax(1)))
    row("row max and argmax of (640, V)", median_ms(lambda: z.max(1)))
    row("column sum of (640, V) (bias gradient)", median_ms(lambda: z.sum(0)))


if __name__ == "__main__":
    main()
