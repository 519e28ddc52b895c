"""torch.distributed in one place: who owns which block rows or streams, what crosses between
ranks, and what a rank says when another is lost.

**Block-parallel target propagation** (paper §2.1). A step's R block rows are cut into W
contiguous ranges, one per rank (`Comm.shard`). A rank holds the free states of its rows and
one *ghost*: a copy of the next rank's first free state, the target its last block aims at::

    rank 0            rank 1            rank 2 (last)
    z0 z1 z2 [z3]  ←  z3 z4 z5 [z6]  ←  z6 z7 z8 z9        [z] ghost = next rank's z[0]

so every term of L_aug is computed where its block lives. What crosses, and nothing else:

    per pass       ghost ← next rank's z[0]; ∂L/∂ghost → next rank, added to its ∂L/∂z[0]
    (H, θ, dual)   (S·D values each way at each border)
    chained init   e of a rank's last block → the next rank's z[0], rank after rank
    per θ-update   one all-reduce (SUM) of the θ-gradient: P values
    per step       one all-reduce of the step's metric sums and the loop's control flags;
                   the last rank's end state (and last target, when Z persists) → rank 0,
                   where the next step starts; when Z persists, the step's last target
                   (the next step's first free state, rank 0's) → the last rank at the start
    per epoch      validation perplexity and flags from rank 0; at a checkpoint, each rank's
                   rows of Z and U, summed into the full tensors (`Comm.gather_rows`)

**Data-parallel BPTT** cuts the S streams into W contiguous ranges instead; only the
gradient and metrics all-reduces remain. `world == 1` is the same code with every exchange a
no-op. The θ-gradient is *summed*, not averaged: every rank scales its loss by the global
token and block counts, so the sum is exactly the single-process gradient.

`sent` counts the bytes this rank hands to torch.distributed, by kind; `tprop train` logs it
and tests/test_distributed.py checks it against P and S·D.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib
import json
import os
import pickle
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from tprop.config import Config, ConfigError
from tprop.run import RunError, RunFolder


class LostRank(RunError):
    """Another rank died or stopped answering; ``str(e)`` names it."""


class Echo(RunError):
    """Rank 0's error, raised on the other ranks too, so they stop; only rank 0 prints it."""


@dataclass(frozen=True)
class Shard:
    """This rank's share [lo, hi) of a step's rows [start, stop) (block rows or streams) and
    its neighbours. With more ranks than rows the first ones get a row each, the rest idle."""

    lo: int
    hi: int
    start: int
    stop: int
    prev: int | None  # the rank holding the rows before mine (None: I hold the first)
    next: int | None  # the rank holding the rows after mine (None: I hold the last)
    last_rank: int  # the rank holding the step's last row

    @property
    def rows(self) -> int:
        return self.hi - self.lo

    @property
    def total(self) -> int:
        return self.stop - self.start

    @property
    def holds_last(self) -> bool:
        """True on the rank whose rows end the step (its last target is its own, no ghost)."""
        return self.next is None and self.rows > 0


class Comm:
    """The ranks of one run. `Comm()` is the single process: every exchange is a no-op."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world
        self.sent: Counter[str] = Counter()

    @classmethod
    def from_env(cls, device: torch.device, timeout_s: float) -> Comm:
        """Join the process group that torchrun (or `tprop train --nproc`) describes in the
        environment; a single process when there is none."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if "OMP_NUM_THREADS" not in os.environ:  # share the cores: ranks that oversubscribe
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world))  # them crawl
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        if not dist.is_initialized():
            # The first optimiser imports torch._dynamo; imported after the group exists, it
            # keeps references to it, so destroy_process_group cannot free the gloo backend
            # and its worker threads, which then race the interpreter's shutdown (SIGABRT at
            # exit under CPU load: "terminate called without an active exception").
            importlib.import_module("torch._dynamo")
            from torch.distributed.rendezvous import rendezvous

            timeout = datetime.timedelta(seconds=timeout_s)
            store, rank, world = next(rendezvous("env://", timeout=timeout))
            # torchrun keeps its store across restarts; keys of a dead attempt would send the
            # new ranks to addresses nobody listens on, so each attempt has its own prefix.
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            store = dist.PrefixStore(f"tprop/attempt-{attempt}", store)
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(
                backend, store=store, rank=rank, world_size=world, timeout=timeout
            )
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def parallel(self) -> bool:
        return self.world > 1

    def close(self) -> None:
        """Leave the process group. On a normal exit the ranks first wait for each other, so
        none tears down its connections while a peer still uses them (gloo then aborts the
        peer: "terminate called without an active exception"); while an exception unwinds,
        a peer may never arrive, so no barrier then. The run's work is done by now: a peer
        lost at this point does not fail it."""
        if self.parallel and dist.is_initialized():
            if sys.exc_info()[0] is None:
                with contextlib.suppress(RuntimeError):
                    dist.barrier()
            dist.destroy_process_group()

    # ---- who owns what -------------------------------------------------------------------
    def shard(self, lo: int, hi: int) -> Shard:
        """Contiguous ranges of rows [lo, hi), sizes differing by at most one."""
        n, w, r = hi - lo, self.world, self.rank
        base, extra = divmod(n, w)
        start = lo + r * base + min(r, extra)
        size = base + (r < extra)
        busy = min(n, w)  # ranks with at least one row: a prefix
        prev = r - 1 if 0 < r < busy else None
        nxt = r + 1 if r + 1 < busy else None
        return Shard(start, start + size, lo, hi, prev, nxt, busy - 1)

    # ---- borders (block-parallel) --------------------------------------------------------
    def refresh_ghost(self, z: Tensor, shard: Shard) -> None:
        """z[-1] ← the next rank's z[0]; my z[0] → the previous rank."""
        self._exchange(
            send={shard.prev: z[0]} if shard.prev is not None else {},
            recv={shard.next: z[-1]} if shard.next is not None else {},
            kind="border",
        )

    def return_ghost_grad(self, gz: Tensor, shard: Shard) -> None:
        """∂L/∂ghost goes to the rank that owns it and is added to its ∂L/∂z[0]."""
        got = torch.empty_like(gz[0]) if shard.prev is not None else None
        self._exchange(
            send={shard.next: gz[-1]} if shard.next is not None else {},
            recv={shard.prev: got} if got is not None else {},
            kind="border",
        )
        if shard.next is not None:
            gz[-1] = 0
        if got is not None:
            gz[0] += got

    def recv_prev(self, into: Tensor, shard: Shard) -> None:
        if shard.prev is not None:
            self._exchange({}, {shard.prev: into}, "border")

    def send_next(self, t: Tensor, shard: Shard) -> None:
        if shard.next is not None:
            self._exchange({shard.next: t}, {}, "border")

    def hand_over(self, t: Tensor, src: int, dst: int) -> None:
        """t (in place) from rank src to rank dst: the states where one step of rows ends and
        the next begins live with the step's last rank and with rank 0."""
        if src == dst:
            return
        if self.rank == src:
            self._exchange({dst: t}, {}, "border")
        elif self.rank == dst:
            self._exchange({}, {src: t}, "border")

    # ---- collectives ---------------------------------------------------------------------
    def same_params(self, model: torch.nn.Module) -> None:
        """Every rank takes rank 0's parameters (they agree already when seeded alike)."""
        if self.parallel:
            for p in model.parameters():
                self.sent["setup"] += p.numel() * p.element_size() * (self.rank == 0)
                self._guard(lambda p=p: dist.broadcast(p.data, 0), "setup")

    def sum_step(self, stats: dict[str, Any], *flags: bool) -> tuple[dict, list[bool]]:
        """A step's metric sums (its tensors; other values pass as they are) and the loop's
        flags, summed over ranks in one all-reduce (a flag is true everywhere if it is true
        anywhere). Only flags are read on the host: without them nothing waits on a GPU."""
        if not self.parallel:
            return stats, list(flags)
        keys = sorted(k for k, v in stats.items() if isinstance(v, Tensor))  # same order
        ref = stats[keys[0]]
        vec = torch.stack(
            [stats[k].to(ref.device, torch.float64) for k in keys]
            + [torch.tensor(float(f), dtype=torch.float64, device=ref.device) for f in flags]
        )
        self._all_reduce(vec, "metrics")
        summed = {**stats, **dict(zip(keys, vec[: len(keys)], strict=True))}
        return summed, [bool(v > 0) for v in vec[len(keys) :].tolist()] if flags else []

    def sum_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over ranks, in one flat buffer (None counts as 0)."""
        if not self.parallel:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._all_reduce(flat, "grad")
        for p, g in zip(params, flat.split([g.numel() for g in grads]), strict=True):
            p.grad = g.view_as(p)

    def sum_(self, t: Tensor, kind: str = "metrics") -> Tensor:
        if self.parallel:
            self._all_reduce(t, kind)
        return t

    def agree(self, flag: bool) -> bool:
        """True on every rank if it is true on any (stop signals, checkpoint due)."""
        if not self.parallel:
            return flag
        return bool(self.sum_(torch.tensor([float(flag)]), "control") > 0)

    def from_first(self, obj: Any, kind: str = "control") -> Any:
        """Rank 0's obj on every rank (pickled; for per-epoch values and checkpoints)."""
        if not self.parallel:
            return obj
        box = [obj]
        if self.rank == 0:  # what broadcast_object_list sends: the pickle and its length
            self.sent[kind] += len(pickle.dumps(obj)) + 8
        self._guard(lambda: dist.broadcast_object_list(box, src=0), kind)
        return box[0]

    def gather_rows(self, t: Tensor, mine: Tensor) -> Tensor:
        """The full tensor from the rows each rank owns (`mine`: bool over dim 0)."""
        if not self.parallel:
            return t
        out = torch.where(mine.view(-1, *[1] * (t.dim() - 1)), t, torch.zeros_like(t))
        if out.dtype == torch.bool:
            return self.sum_(out.to(torch.uint8), "checkpoint").bool()
        return self.sum_(out, "checkpoint")

    # ---- the wire ------------------------------------------------------------------------
    def _exchange(self, send: dict[int, Tensor], recv: dict[int, Tensor], kind: str) -> None:
        def run() -> None:
            reqs = [dist.isend(t.contiguous(), peer) for peer, t in send.items()]
            bufs = {peer: torch.empty_like(t) for peer, t in recv.items()}
            reqs += [dist.irecv(b, peer) for peer, b in bufs.items()]
            for q in reqs:
                q.wait()
            for peer, t in recv.items():
                t.copy_(bufs[peer])

        self.sent[kind] += sum(t.numel() * t.element_size() for t in send.values())
        self._guard(run, kind)

    def _all_reduce(self, t: Tensor, kind: str) -> None:
        self.sent[kind] += t.numel() * t.element_size()
        self._guard(lambda: dist.all_reduce(t), kind)

    def _guard(self, fn, kind: str) -> None:
        try:
            fn()
        except RuntimeError as e:  # DistBackendError, a closed connection, a timeout
            raise LostRank(self._lost_message(kind, e)) from None

    def _lost_message(self, kind: str, e: Exception) -> str:
        timed_out = "timeout" in str(e).lower() or "timed out" in str(e).lower()
        what = "timed out, see --dist-timeout" if timed_out else "failed"
        gone = self._missing_ranks()
        who = (
            f"lost rank {', '.join(map(str, gone))}"
            if gone
            else "lost contact with rank 0, which hosts the rendezvous store"
            if gone is None
            else "a peer failed"
        )
        return (
            f"rank {self.rank} of {self.world}: {who} (the {kind} exchange {what}); "
            "the run stops here; `tprop train --out … --resume` continues from its checkpoint"
        )

    def _missing_ranks(self, wait_s: float = 5.0) -> list[int] | None:
        """Ranks that do not answer a roll call in the rendezvous store (None: no store)."""
        try:
            store = dist.distributed_c10d._get_default_store()
            store.set(f"tprop/alive/{self.rank}", "1")
            keys = {r: f"tprop/alive/{r}" for r in range(self.world)}
            t0 = time.time()
            while time.time() - t0 < wait_s:
                gone = [r for r, k in keys.items() if not store.check([k])]
                if not gone:
                    return []
                time.sleep(0.2)
            return gone
        except Exception:  # the store itself is gone: rank 0 hosted it
            return None


# ---- the run folder among ranks -------------------------------------------------------------
def owned_folder(cfg: Config, comm: Comm) -> RunFolder | None:
    """Rank 0 checks the run folder and becomes its owner; the other ranks hear its verdict
    and stop with it quietly (rank 0 says it)."""
    folder, problem = None, None
    if comm.rank == 0:
        try:
            folder = RunFolder(cfg)
        except (ConfigError, RunError) as e:
            problem = e
    said = comm.from_first(None if problem is None else str(problem))
    if problem is not None:
        raise problem
    if said is not None:
        raise Echo(said)
    return folder


def resume_after_restart(cfg: Config, comm: Comm) -> Config:
    """When torchrun restarts the ranks of a run (--max-restarts), the run resumes from its
    checkpoint: recognised by the launch id that config.json records."""
    launch = os.environ.get("TORCHELASTIC_RUN_ID")
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0 or cfg.resume or not launch:
        return cfg
    ours = has_checkpoint = False
    if comm.rank == 0:
        try:
            ours = json.loads(Path(cfg.out, "config.json").read_text()).get("launch") == launch
        except (OSError, ValueError, TypeError):
            ours = False
        has_checkpoint = Path(cfg.out, "checkpoint.pt").is_file()
    ours, has_checkpoint = comm.from_first((ours, has_checkpoint))
    if not ours:
        return cfg
    if has_checkpoint:
        return dataclasses.replace(cfg, resume=True)
    return dataclasses.replace(cfg, overwrite=True)  # killed before its first checkpoint


# ---- launch ------------------------------------------------------------------------------
def launch(n: int, argv: list[str]) -> int:
    """`tprop train --nproc N`: N ranks on this machine through torch.distributed's own
    launcher (what `torchrun --standalone --nproc-per-node N -m tprop …` does), each with
    an equal share of the CPU threads. Returns the exit code."""
    import logging
    import signal

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    args = parse_args(["--standalone", f"--nproc-per-node={n}", "--max-restarts=0", "-m", "tprop"])
    args.training_script_args = list(argv)  # not parsed by torchrun: --nproc is tprop's
    try:
        run(args)
    except SignalException as e:  # Ctrl-C or SIGTERM: the ranks checkpoint and say so
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode > 0:  # the rank said why itself (a bad setting, a stop)
            return failure.exitcode
        name = signal.Signals(-failure.exitcode).name if failure.exitcode < 0 else "?"
        raise LostRank(
            f"rank {rank} (pid {failure.pid}) was killed by {name}; the launcher stopped the "
            "other ranks; `tprop train --out … --resume` continues from the last checkpoint"
        ) from None
    return 0
