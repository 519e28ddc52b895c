"""`tprop bench profile`: where a training step's time goes, by torch.profiler.

Each top-level event of the step's thread (an operator called from Python, or an autograd node
of the backward) is put in one bin:

- ``decoder``: decoder and softmax–cross-entropy: any event whose operators see the vocabulary
  dimension V (the decoder matmuls of forward and backward, softmax, NLL, their backward);
- ``optimizer``: the θ-update: `Optimizer.*` regions and the global-norm clip's operators;
- ``recurrence``: every other operator: the cell, the embedding, the state algebra of target
  propagation (H-steps' Adagrad on Z, residuals, penalty);
- ``python``: the step's wall time that no operator covers (Python and dispatch overhead).

The steps run twice: as they are, for the wall time per step, the system CPU time (mostly
page faults of freshly mapped memory: the allocator's share, inside the operators' time,
summed over threads) and the page-fault count; then under the profiler, whose bins are given
as shares of that round's wall time (the profiler's own cost lands mostly in ``python``).
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from typing import Any

CLIP_OPS = ("aten::_foreach_norm", "aten::linalg_vector_norm", "aten::stack", "aten::clamp")
CLIP_OPS += ("aten::_foreach_mul_", "aten::norm", "aten::_foreach_mul")
BINS = ("decoder", "recurrence", "optimizer", "python")


def _touches(event: Any, vocab: int) -> bool:
    """Whether the event or an event under it has an input with a dimension of size V."""
    stack = [event]
    while stack:
        e = stack.pop()
        if any(vocab in s for s in (e.input_shapes or []) if isinstance(s, list)):
            return True
        stack.extend(e.cpu_children)
    return False


def classify(events: list[Any], vocab: int) -> dict[str, float]:
    """Seconds per bin (`BINS` but python) of the top-level events of one thread."""
    out = dict.fromkeys(BINS[:3], 0.0)
    for e in events:
        if e.name.startswith("Optimizer.") or e.name in CLIP_OPS:
            key = "optimizer"
        elif _touches(e, vocab):
            key = "decoder"
        else:
            key = "recurrence"
        out[key] += e.cpu_time_total / 1e6
    return out


def profiled(run, vocab: int):
    """Wrap a side's round: the steps once as they are (wall time, system time, page faults),
    then once more under torch.profiler (the bins, as shares of that round's wall time)."""
    from torch.profiler import ProfilerActivity, profile

    def go() -> tuple[int, dict[str, Any]]:
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        tokens, _ = run()
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        extra = {"wall_s": wall, "kernel_s": r1.ru_stime - r0.ru_stime}
        extra["minor_faults"] = r1.ru_minflt - r0.ru_minflt
        t0 = time.perf_counter()
        with (
            _quiet_stderr(),
            profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof,
        ):
            run()
        extra["profiled_s"] = time.perf_counter() - t0
        top = [e for e in prof.events() if e.cpu_parent is None]  # events() builds a tree: once
        main = _main(top)
        bins = classify([e for e in top if e.thread == main], vocab)
        bins["python"] = max(0.0, extra["profiled_s"] - sum(bins.values()))
        return tokens, extra | bins

    return go


@contextlib.contextmanager
def _quiet_stderr():
    """The profiler's C++ side logs its start and stop to file descriptor 2: drop them."""
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _main(top: list[Any]) -> int:
    """The thread that ran the step: the one with the most top-level time."""
    per: dict[int, float] = {}
    for e in top:
        per[e.thread] = per.get(e.thread, 0.0) + e.cpu_time_total
    return max(per, key=per.__getitem__)


def row(method: str, extra: dict[str, Any], steps: int) -> dict[str, Any]:
    """A table row: ms per step of each bin and its share of the wall time."""
    wall, profiled = extra["wall_s"], extra["profiled_s"]
    out: dict[str, Any] = {"method": method, "ms_per_step": 1e3 * wall / steps}
    for b in BINS:
        out[f"{b}_share"] = extra[b] / profiled
    out["kernel_share"] = extra["kernel_s"] / wall
    out["faults_per_step"] = extra["minor_faults"] / steps
    return out
