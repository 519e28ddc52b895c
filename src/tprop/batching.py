"""Batchify a token stream into time-major streams; cut them into windows or blocks.

batchify(w, S) cuts the stream w_0 … w_{N-1} into S contiguous streams, one per column; the
tail that does not fill a row is dropped::

    w = a b c d e f g h i j k l m n o p q r s t u v w x       S = 4, T = ⌊24/4⌋ = 6
                    ┌ a g m s ┐
                    │ b h n t │
    batchify(w, 4)= │ c i o u │   (T, S): column s is the contiguous stretch w[sT : (s+1)T]
                    │ d j p v │
                    │ e k q w │
                    └ f l r x ┘

**Windows** (truncated BPTT, K = 2): inputs rows [iK, iK+K), targets one row further down.
Only full windows are used: there are ⌊(T−1)/K⌋ of them.

**Blocks** (target propagation, B = 2): the same rows, called the *block grid*: block (r, s) is
rows [rB, rB+B) of column s. A minibatch is R consecutive block rows; its blocks run as the
R·S columns of one recurrent call of time depth B, column index r·S + s::

    rows 0-1 │ a g m s │  block row 0      x: (B, R·S) = ┌ a g m s c i o u ┐
    rows 2-3 │ c i o u │  block row 1      R = 2          └ b h n t d j p v ┘
    rows 4-5 │ e k q w │  (no block row: its last target would be past the end)

Like windows, only full block rows with a target row below them are used: ⌊(T−1)/B⌋ of
them (the released code likewise drops the data's last block). `tests/test_architecture.py`
checks this drawing.

The two minibatch layouts are two choices of (S, R):
``streams`` — S = batch size, R = 1: one block from each of S streams (BPTT's batchify, so a
minibatch is exactly BPTT's window with K = B); ``adjacent`` — S = 1, R = batch size: S
consecutive blocks of one stretch of text, in corpus order (the released code's layout).
``--rows-per-step R`` sets R for either: with ``streams`` a minibatch is then S streams × R
consecutive blocks, so neighbouring blocks meet inside a step (with R = 1 they never do).
"""

from __future__ import annotations

from torch import Tensor


def batchify(ids: Tensor, n_streams: int) -> Tensor:
    """(N,) ids → (T, S) time-major streams, T = N // S."""
    t = ids.numel() // n_streams
    return ids[: t * n_streams].view(n_streams, t).t().contiguous()


def n_windows(data: Tensor, k: int) -> int:
    """Number of full windows of k tokens (each needs one extra row for its targets)."""
    return (data.shape[0] - 1) // k


def window(data: Tensor, i: int, k: int) -> tuple[Tensor, Tensor]:
    """Window i of k rows: inputs (k, S) and targets (k, S)."""
    return data[i * k : (i + 1) * k], data[i * k + 1 : (i + 1) * k + 1]


def layout_shape(layout: str, batch_size: int, rows_per_step: int = 0) -> tuple[int, int]:
    """(S streams, R rows per step) of a minibatch layout (see the module docstring);
    ``rows_per_step`` > 0 overrides R (streams: S streams × R consecutive blocks each)."""
    streams, rows = (batch_size, 1) if layout == "streams" else (1, batch_size)
    return streams, rows_per_step or rows


def n_block_rows(data: Tensor, block: int) -> int:
    """Full block rows of the grid (each needs one extra row for its targets)."""
    return n_windows(data, block)


def block_rows(data: Tensor, row0: int, n_rows: int, block: int) -> tuple[Tensor, Tensor]:
    """Block rows [row0, row0 + n_rows) as columns: inputs and targets (B, n_rows·S)."""
    s = data.shape[1]
    lo, hi = row0 * block, (row0 + n_rows) * block
    x = data[lo:hi].view(n_rows, block, s).transpose(0, 1).reshape(block, n_rows * s)
    y = data[lo + 1 : hi + 1].view(n_rows, block, s).transpose(0, 1).reshape(block, n_rows * s)
    return x, y
