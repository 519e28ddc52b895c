"""Fidelity fixes from the review of the step: a zero true gradient gives no step (float32),
ADMM is never PM in disguise, ε ≤ 0 is refused, rows per step let blocks meet, and the
carried state can cross epochs."""

from __future__ import annotations

import itertools

import pytest
import torch

from tprop.batching import block_rows
from tprop.checkpoint import seed_everything
from tprop.config import ConfigError, build
from tprop.presets import resolve
from tprop.train import build_method, build_model, make_optimizer

V = 50


def method_for(ids, **kw):
    cfg = resolve(build({"hidden": 32, "block_size": 20, "batch_size": 8, **kw}))
    seed_everything(1)
    model = build_model(cfg, V, torch.device("cpu"))
    return build_method(cfg, model, make_optimizer(cfg, model), ids), cfg


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_last_target_takes_no_step_from_rounding_noise_float32():
    """paper preset, adjacent layout, 8 rows per step, chained init: z_R's true gradient is 0
    (no loss after it), so a fresh Adagrad H-step (ε 1e-10) must leave it exactly where it is."""
    ids = torch.randint(0, V, (8 * 20 * 6 + 1,), generator=torch.Generator().manual_seed(3))
    mt, _ = method_for(ids, method="admm", preset="paper", layout="adjacent", h_lr=0.1)
    a, b = mt.steps()[1]
    x, y = block_rows(mt.data, a, b - a, 20)
    mt.carry = torch.randn_like(mt.carry)
    sh = mt.comm.shard(a, b)
    z = mt.init_z(x, sh)
    z_last = z[-1].clone()
    mt.h_steps(x, y, z, mt.load_u(sh), sh)
    assert torch.equal(z[-1], z_last)
    assert (z[1:-1] - mt.init_z(x, sh)[1:-1]).abs().max() > 1e-3  # the others did move


def test_batch_mode_last_target_does_not_depend_on_the_chunk_size():
    ids = torch.randint(0, V, (8 * 20 * 6 + 1,), generator=torch.Generator().manual_seed(4))
    ends = []
    for chunk in (16384, 60, 20):
        mt, _ = method_for(
            ids,
            method="admm",
            preset="paper",
            layout="adjacent",
            h_lr=0.1,
            full_batch=True,
            chunk_tokens=chunk,
        )
        mt.step(*mt.steps()[0], epoch=1)
        ends.append(mt.Z[-1].clone())
    for e in ends[1:]:  # rounding differences only, not a step of h-lr = 0.1
        assert (e - ends[0]).abs().max() < 1e-5


SWITCHES = dict(
    preset=["paper", "tprnn"],
    z_init=["chained", "zero_start", "zero"],
    dual_placement=["before_h", "before_theta", "after_theta"],
    h_steps=[0, 1],
    persist_u=[False, True],
)


@pytest.mark.parametrize("method", ["admm", "alm"])
def test_wherever_a_dual_method_is_accepted_it_is_not_pm(method):
    """Every combination of the switches that decide whether u can act: refused in one line,
    or θ after two epochs differs from the same run as the penalty method."""
    ids = torch.randint(0, V, (4 * 5 * 8 + 1,), generator=torch.Generator().manual_seed(5))
    accepted = refused = 0
    for combo in itertools.product(*SWITCHES.values()):
        kw = dict(zip(SWITCHES, combo, strict=True))
        if method == "alm" and kw["h_steps"] == 0:
            continue
        common = dict(
            dtype="float64",
            hidden=6,
            block_size=5,
            batch_size=4,
            h_lr=0.01,
            lam=0.5,
            u_start_epoch=1,
            **kw,
        )
        try:
            resolve(build({"method": method, **common}))
        except ConfigError as e:
            assert "penalty method" in str(e) or "contradicts" in str(e), e
            refused += 1
            continue
        accepted += 1
        thetas = []
        for m in (method, "pm"):
            extra = {} if m == method else {"dual_placement": None, "persist_u": None}
            mt, _ = method_for(ids, method=m, **{**common, **extra})
            for epoch in (1, 2):
                mt.start_epoch()
                for st in mt.steps():
                    mt.step(*st, epoch=epoch)
            thetas.append(flat(mt.model))
        assert not torch.equal(thetas[0], thetas[1]), kw
    assert accepted > 10 and refused > 3, (accepted, refused)


@pytest.mark.parametrize("flag", ["adagrad_eps", "h_eps"])
@pytest.mark.parametrize("value", [0.0, -1e-8])
def test_non_positive_adagrad_eps_is_refused(flag, value):
    with pytest.raises(ConfigError, match=f"--{flag.replace('_', '-')} must be a positive number"):
        resolve(build({"method": "admm", flag: value}))


def test_rows_per_step_lets_neighbouring_blocks_meet():
    """streams layout, S = 4 streams × R = 3 blocks per step: each step covers 3 block rows,
    the epoch covers the same blocks as R = 1, and the H-step reaches interior targets through
    the NLL of the block after them (with R = 1 there is no interior target)."""
    ids = torch.randint(0, V, (4 * 5 * 13 + 4,), generator=torch.Generator().manual_seed(6))
    common = dict(
        method="pm",
        preset="paper",
        layout="streams",
        batch_size=4,
        block_size=5,
        dtype="float64",
        hidden=6,
        lam=0.0,
    )  # λ = 0: only the NLL reaches z
    one, _ = method_for(ids, **common)
    three, cfg = method_for(ids, rows_per_step=3, **common)
    assert three.n_streams == 4 and three.rows_per_step == 3
    assert [r for a, b in three.steps() for r in range(a, b)] == list(range(one.n_rows))
    a, b = three.steps()[1]
    x, y = block_rows(three.data, a, b - a, 5)
    sh = three.comm.shard(a, b)
    z = three.init_z(x, sh)
    p = three.forward_backward(x, y, z, three.load_u(sh), sh, grad_z=True, grad_theta=False)
    assert z.shape[0] == 4 and bool((p.grad_z[1:3].abs().sum(-1) > 0).all())
    assert p.grad_z[3].abs().sum() == 0  # the last target: no block after it, and λ = 0


@pytest.mark.parametrize("method", ["bptt", "admm"])
def test_carry_across_epochs_switch(method):
    ids = torch.randint(0, V, (4 * 5 * 8 + 1,), generator=torch.Generator().manual_seed(7))
    kw = dict(
        method=method,
        batch_size=4,
        hidden=6,
        dtype="float64",
        **({"bptt": 5} if method == "bptt" else {"block_size": 5}),
    )
    for carry in (False, True):
        mt, _ = method_for(ids, carry_across_epochs=carry, **kw)
        mt.start_epoch()
        for st in mt.steps():
            mt.step(*st, epoch=1)
        mt.start_epoch()
        state = mt.state if method == "bptt" else mt.carry
        assert bool((state != 0).any()) == carry
