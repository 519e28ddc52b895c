"""Distributed training (tprop.parallel) equals the single process: θ, Z and U after a few
epochs with 2 and 4 gloo ranks, in float64; bytes on the wire are exactly the parameters, the
border states and the step's metrics; closing the group ends gloo's threads."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tprop.config import build
from tprop.parallel import Comm
from tprop.presets import resolve
from tprop.train import build_method, build_model, make_optimizer

V, B = 20, 5
CASES = {
    "admm-batch": dict(method="admm", preset="tprnn", full_batch=True, batch_size=3),
    "admm-paper-mb": dict(method="admm", preset="paper", layout="adjacent", batch_size=1,
                          rows_per_step=3, persist_z=True),
    "admm-tprnn-mb": dict(method="admm", preset="tprnn", batch_size=6),
    "alm": dict(method="alm", preset="tprnn", batch_size=6, h_steps=2),
    "bptt": dict(method="bptt", batch_size=4, bptt=B),
    "bptt-batch": dict(method="bptt", batch_size=5, bptt=B, full_batch=True),
}  # fmt: skip
EPOCHS = 2


def ids() -> torch.Tensor:
    return torch.randint(0, V, (4 * 5 * B * 4 + 13,), generator=torch.Generator().manual_seed(0))


def run_case(name: str, comm: Comm) -> dict:
    """Train CASES[name] for EPOCHS epochs on this rank; return θ, the method's saved state
    (gathered over ranks) and this rank's counters."""
    case = CASES[name]
    tp = {"block_size": B, "h_lr": 0.05, "lam": 1.0, "u_lr": 0.5, "u_start_epoch": 1}
    cfg = resolve(
        build(
            {
                "hidden": 8,
                "dtype": "float64",
                "device": "cpu",
                "lr": 0.1,
                "seed": 1,
                **(tp if case["method"] != "bptt" else {}),
                **case,
            }
        )  # fmt: skip
    )
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, V, torch.device("cpu"))
    comm.same_params(model)
    opt = make_optimizer(cfg, model)
    method = build_method(cfg, model, opt, ids(), comm)
    comm.sent.clear()
    n_steps, nll = 0, 0.0
    for epoch in range(1, EPOCHS + 1):
        method.start_epoch()
        for st in method.steps():
            stats, _ = comm.sum_step(method.step(*st, epoch=epoch))
            nll += float(stats["nll"])
            n_steps += 1
    local = {k: getattr(method, k) for k in ("U", "Z") if getattr(method, k, None) is not None}
    return {
        "theta": {k: v.clone() for k, v in model.state_dict().items()},
        "state": method.state_dict(),
        "local": local,
        "mine": getattr(method, "mine", None),
        "sent": dict(comm.sent),
        "steps": n_steps,
        "nll": nll,
        "params": sum(p.numel() for p in model.parameters()),
    }


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world))  # fmt: skip
    torch.set_num_threads(1)
    comm = Comm.from_env(torch.device("cpu"), timeout_s=60)
    try:
        results = {name: run_case(name, comm) for name in CASES}
    finally:
        comm.close()
    results["threads after close"] = thread_names()
    torch.save(results, Path(out) / f"rank{rank}.pt")


def thread_names() -> list[str]:
    """This process's threads, native ones included (Linux: /proc)."""
    tasks = Path("/proc/self/task")
    return [(t / "comm").read_text().strip() for t in tasks.iterdir()] if tasks.is_dir() else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single() -> dict:
    torch.set_num_threads(1)
    return {name: run_case(name, Comm()) for name in CASES}


@pytest.fixture(scope="module", params=[2, 4])
def ranks(request, tmp_path_factory) -> tuple[int, list[dict]]:
    world, out = request.param, tmp_path_factory.mktemp(f"w{request.param}")
    try:
        mp.start_processes(_worker, args=(world, free_port(), str(out)), nprocs=world,
                           start_method="spawn")  # fmt: skip
    except mp.ProcessRaisedException as e:  # free_port's port can be taken before rank 0
        print(f"first try failed, retrying on a new port: {e}")  # binds it: one more try
        mp.start_processes(_worker, args=(world, free_port(), str(out)), nprocs=world,
                           start_method="spawn")  # fmt: skip
    return world, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-9) -> bool:
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    return a.shape == b.shape and bool(((a - b).abs() <= tol * scale).all())


@pytest.mark.parametrize("name", list(CASES))
def test_ranks_end_with_the_single_process_theta_z_and_u(name, single, ranks):
    world, results = ranks
    ref = single[name]
    for r, res in enumerate(results):
        got = res[name]
        for k, v in ref["theta"].items():
            assert close(got["theta"][k], v), f"rank {r}: θ {k} differs"
        for k, v in ref["state"].items():  # the full Z, U (gathered); rank 0 saves them
            if isinstance(v, torch.Tensor) and (r == 0 or k != "carry"):
                assert close(got["state"][k].double(), v.double()), f"rank {r}: {k} differs"
        assert got["nll"] == pytest.approx(ref["nll"], rel=1e-12)
        for k, full in got["local"].items():  # each rank holds its own rows of Z and U
            mine = got["mine"][: full.shape[0]]
            assert close(full[mine], ref["state"][k][mine]), f"rank {r}: its rows of {k}"
    assert world in (2, 4)


def test_closing_frees_the_gloo_threads_before_the_interpreter_exits(ranks):
    """Gloo threads alive at exit can free a tensor after Python has begun to shut down,
    which aborts the process (SIGABRT) when the machine is busy; Comm.close must end them."""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("thread names come from /proc (Linux)")
    for r, res in enumerate(ranks[1]):
        gloo = [t for t in res["threads after close"] if "gloo" in t]
        assert not gloo, f"rank {r}: gloo threads outlive Comm.close: {gloo}"


def test_the_wire_carries_parameters_border_states_and_metrics_only(ranks):
    """tprnn minibatch ADMM: per step, every rank sends P values per θ-update and 8 metric
    values (`btprop.STATS`; the loop adds its 2 flags once per log interval); at each of the
    W−1 borders one S·D state per pass each way, plus the carried state from the last rank to
    rank 0."""
    world, results = ranks
    res = [r["admm-tprnn-mb"] for r in results]
    steps, P, D, S = res[0]["steps"], res[0]["params"], 8, 1
    h, theta, dual = 1, 1, 1  # tprnn: one H-step, one θ-step, a dual step before θ
    assert {k for r in res for k in r["sent"]} == {"grad", "border", "metrics"}
    for r in res:
        assert r["sent"]["grad"] == steps * theta * P * 8
        assert r["sent"]["metrics"] == steps * (8 + 0) * 8  # 8 STATS (no loop flags here)
    border = sum(r["sent"]["border"] for r in res)
    per_step = (world - 1) * (h + theta + dual) + (world - 1) * h + 1  # z, ∂z, carry
    assert border == steps * per_step * S * D * 8
