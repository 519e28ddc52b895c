"""The KL constraint (paper §4.3): its value and gradients (finite differences, float64), where
its gradient goes (the decoder too), how the appendix identity changes, and its settings."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.autograd import gradcheck

from tprop import objective
from tprop.batching import block_rows
from tprop.checkpoint import seed_everything
from tprop.config import ConfigError, build
from tprop.model import RNNLM
from tprop.presets import resolve
from tprop.train import build_method, build_model, make_optimizer

DD = dict(dtype=torch.float64)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_kl_term_gradients_match_finite_differences(direction):
    """∂/∂z, ∂/∂e and ∂/∂(W_y, b) of w·Σ KL(softmax(W_y z + b) ‖ softmax(W_y e + b))."""
    torch.manual_seed(0)
    z, e, u = (torch.randn(3, 2, 4, **DD, requires_grad=True) for _ in range(3))
    W = torch.randn(7, 4, **DD, requires_grad=True)
    b = torch.randn(7, **DD, requires_grad=True)
    w = objective.Weights(lam=0.3, kl=0.7, kl_direction=direction)

    def term(z, e, W, b):
        return objective.kl(z, e, u, lambda s: s @ W.T + b, w)

    assert gradcheck(term, (z, e, W, b))
    assert gradcheck(lambda z, e, u: objective.l2_kl(z, e, u, lambda s: s @ W.T + b, w), (z, e, u))


def test_kl_is_zero_with_zero_gradient_where_the_states_agree():
    torch.manual_seed(1)
    e = torch.randn(2, 3, 4, **DD)
    z = e.clone().requires_grad_()
    W = torch.randn(5, 4, **DD, requires_grad=True)
    w = objective.Weights(lam=1.0, kl=2.0)
    value = objective.kl(z, e, torch.zeros_like(e), lambda s: s @ W.T, w)
    gz, gW = torch.autograd.grad(value, (z, W))
    assert value.abs() < 1e-15 and gz.abs().max() < 1e-15 and gW.abs().max() < 1e-15
    # by hand: p = softmax(0, 0) = (1/2, 1/2), q = softmax(1, 0) = (e, 1)/(1 + e):
    # KL(p ‖ q) = ½ ln(p₁/q₁) + ½ ln(p₂/q₂) = ln(1 + e) − ln 2 − ½ ≈ 0.12011
    p, q = torch.zeros(1, 2, **DD), torch.tensor([[1.0, 0.0]], **DD)
    want = torch.log1p(torch.exp(torch.tensor(1.0, **DD))) - torch.log(torch.tensor(2.0, **DD))
    assert objective.kl_divergence(p, q).item() == pytest.approx(want.item() - 0.5, rel=1e-12)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_readout_is_the_top_layer_output(cell):
    torch.manual_seed(2)
    m = RNNLM(11, 5, cell, layers=2).double()
    x = torch.randint(0, 11, (4, 3))
    out, last = m.states(x, m.zero_state(3))
    torch.testing.assert_close(m.readout(last), out[-1], rtol=0, atol=0)
    torch.testing.assert_close(m.decode_state(last), m.decoder(out[-1]), rtol=0, atol=1e-14)


def method(ids, **kw):
    cfg = resolve(
        build(
            {
                "dtype": "float64",
                "hidden": 6,
                "block_size": 5,
                "batch_size": 4,
                "preset": "paper",
                "layout": "adjacent",
                **kw,
            }
        )
    )
    seed_everything(3)
    model = build_model(cfg, 13, torch.device("cpu"))
    return build_method(cfg, model, make_optimizer(cfg, model), ids)


def test_kl_gradient_reaches_the_decoder_and_l2_does_not():
    """θ-step gradient of the penalty alone (with it minus without it), at Z ≠ e."""
    ids = torch.randint(0, 13, (4 * 5 * 3 + 1,), generator=torch.Generator().manual_seed(4))
    grads = {}
    for name, kw in {
        "l2": dict(constraint="l2", lam=1.0),
        "none": dict(constraint="l2", lam=0.0),
        "kl": dict(constraint="kl", kl_weight=1.0),
    }.items():
        mt = method(ids, method="pm", **kw)
        x, y = block_rows(mt.data, 0, 4, 5)
        sh = mt.comm.shard(0, 4)
        z = mt.init_z(x, sh) + 0.3  # free states away from the computed ones
        mt.opt.zero_grad()
        mt.forward_backward(x, y, z, mt.load_u(sh), sh, grad_z=False, grad_theta=True)
        grads[name] = mt.model.decoder.weight.grad.clone()
    assert torch.equal(grads["l2"], grads["none"])  # L2 acts on states only
    assert (grads["kl"] - grads["none"]).abs().max() > 1e-6


def test_appendix_identity_with_kl_uses_the_output_fisher():
    """One plain-SGD H-step of size η from the exact forward states (u = 0), then the KL
    penalty's θ-gradient through the transition: to first order in η it is η·w times the
    cross-boundary BPTT gradient with the crossing gradient d multiplied by the Fisher of the
    output distribution in state space, F = Rᵀ W_yᵀ (diag p − p pᵀ) W_y R (R: the readout).
    T1 of the L2 case (F = I) becomes this; the error falls ~10× per 10× smaller η."""
    torch.manual_seed(5)
    V, D, B = 9, 4, 3
    model = RNNLM(V, D).double()
    ids = torch.randint(0, V, (2 * B + 1,))
    x, y = ids[:-1].view(-1, 1), ids[1:].view(-1, 1)
    h0 = torch.randn(1, D, **DD)

    def pen_grad(eta):  # the real objective terms, by hand: H-step then θ-gradient
        m = copy.deepcopy(model)
        tr = m.transition_parameters()
        _, e0 = m.states(x[:B], h0)
        z1 = e0.detach().requires_grad_()
        logits, _ = m(x[B:], z1)
        (gz,) = torch.autograd.grad(objective.nll_sum(logits, y[B:]), z1)
        z1 = (z1 - eta * gz).detach()
        w = objective.Weights(lam=0.0, kl=1.0)
        pen = objective.kl(z1, e0, torch.zeros_like(z1), m.decode_state, w)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(pen, tr)]), gz

    def predicted(eta, gz):
        m = copy.deepcopy(model)
        _, e0 = m.states(x[:B], h0)
        p = torch.softmax(m.decode_state(e0.detach()), -1)[0]
        J = m.decoder.weight  # readout is the identity for one GRU layer
        F = J.T @ (torch.diag(p) - torch.outer(p, p)) @ J
        # KL(p_z ‖ p_e) ≈ ½ δᵀFδ with δ = z − e = −η·d: its e-gradient is −Fδ = η F d
        g = torch.autograd.grad(e0, m.transition_parameters(), grad_outputs=(eta * gz @ F))
        return torch.cat([t.reshape(-1) for t in g])

    errs = []
    for eta in (1e-2, 1e-3, 1e-4):
        got, gz = pen_grad(eta)
        want = predicted(eta, gz)
        errs.append(((got - want).norm() / want.norm()).item())
    assert errs[0] / errs[1] > 5 and errs[1] / errs[2] > 5 and errs[2] < 1e-3, errs


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(method="admm", constraint="kl"), "has no dual term"),
        (dict(method="pm", constraint="l2", kl_weight=2.0), "--kl-weight applies to"),
        (dict(method="pm", constraint="l2", kl_direction="reverse"), "--kl-direction applies to"),
        (dict(method="pm", constraint="kl", kl_weight=-1.0), "--kl-weight must be >= 0"),
    ],
)
def test_kl_settings_are_checked(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve(build(kw))


@pytest.mark.parametrize(
    "kw",
    [
        dict(method="pm", constraint="kl"),
        dict(method="admm", constraint="l2+kl", u_start_epoch=1, kl_direction="reverse"),
    ],
)
def test_training_with_kl_runs_and_differs_from_l2(kw):
    ids = torch.randint(0, 13, (4 * 5 * 6 + 1,), generator=torch.Generator().manual_seed(6))
    thetas = []
    for extra in ({}, {"constraint": "l2", "kl_direction": "forward"}):
        mt = method(ids, h_lr=0.05, **{**kw, **extra})
        mt.start_epoch()
        for st in mt.steps():
            stats = mt.step(*st, epoch=1)
        assert torch.isfinite(stats["theta_loss"])
        thetas.append(torch.cat([p.detach().reshape(-1) for p in mt.model.parameters()]))
    assert not torch.equal(*thetas)
