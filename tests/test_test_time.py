"""Test-time state optimisation (`tprop eval --tt-h-steps`, tprop.evaluate): no later token
leaks into a prediction, 0 steps is plain evaluation, θ stays frozen, an H-step lowers the
block's NLL, and the CLI reports it."""

from __future__ import annotations

import json

import pytest
import torch

from tprop.batching import batchify
from tprop.cli import main
from tprop.evaluate import (
    TestTime,
    _token_nll,
    evaluate,
    evaluate_tt,
    refine,
    token_nll_tt,
)
from tprop.model import RNNLM

V, S, N = 13, 3, 3 * 41  # vocabulary, streams, tokens (T = 41 rows per stream)


def _model(cell: str = "gru", seed: int = 0) -> RNNLM:
    torch.manual_seed(seed)
    model = RNNLM(V, 8, cell, init_range=0.5).double()
    with torch.no_grad():  # larger recurrent weights: states that matter for later tokens
        for p in model.rnn.parameters():
            p.mul_(3.0)
    return model


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(V, (N,), generator=torch.Generator().manual_seed(seed))


def _scores_by_position(nll: torch.Tensor) -> dict[int, float]:
    """(T−1, S) per-token NLL → {corpus position of the scored token: NLL}: column s of
    `batchify` is ids[sT:(s+1)T], and row r scores its token r + 1."""
    t = nll.shape[0] + 1
    return {s * t + r + 1: nll[r, s].item() for s in range(nll.shape[1]) for r in range(t - 1)}


def _leaky(model: RNNLM, data: torch.Tensor, tt: TestTime) -> torch.Tensor:
    """The mistake the design avoids: refine a block's start state on its targets *before*
    scoring them. Used to show that the leak check below has teeth."""
    state, rows, n_rows = model.zero_state(data.shape[1]), [], data.shape[0] - 1
    for i in range(0, n_rows, tt.block):
        k = min(tt.block, n_rows - i)
        x, y = data[i : i + k], data[i + 1 : i + 1 + k]
        z = refine(model, x, y, state, tt.steps, tt)
        with torch.no_grad():
            logits, state = model(x, z)
        rows.append(_token_nll(logits, y))
    return torch.cat(rows)


def _leak(score, model: RNNLM, t: int, seed: int = 7) -> tuple[list[int], list[int]]:
    """Score the sequence, then again with every token after position t redrawn. Returns the
    positions ≤ t whose score changed (a leak) and the positions > t whose score changed."""
    ids = _ids()
    changed = ids.clone()
    changed[t + 1 :] = torch.randint(V, (N - t - 1,), generator=torch.Generator().manual_seed(seed))
    before = _scores_by_position(score(model, batchify(ids, S)))
    after = _scores_by_position(score(model, batchify(changed, S)))
    moved = [p for p in before if before[p] != after[p]]  # exact: float64, same shapes
    return [p for p in moved if p <= t], [p for p in moved if p > t]


@pytest.mark.parametrize("optim", ["adagrad", "sgd"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
# position t: stream 1 starts at 41, so 45 is the last target of a block (row 4, B = 4), 48
# inside one, 50 the first of one; 84 is inside a block of stream 2
@pytest.mark.parametrize("t, inside", [(45, False), (48, True), (50, True), (84, True)])
def test_no_future_token_leaks_into_a_prediction(cell, optim, t, inside):
    """With H-steps on past states, the score of token p depends only on tokens ≤ p: redrawing
    the tokens after t leaves every score of a token ≤ t bitwise unchanged (float64). The same
    check finds the leak in a variant that refines a block's state before scoring it (where t
    is not the block's last target, so that later tokens share its block)."""
    tt = TestTime(steps=3, lr=0.5, optim=optim, block=4)
    model = _model(cell)
    leaked, later = _leak(lambda m, d: token_nll_tt(m, d, tt), model, t)
    assert leaked == []
    assert later  # the check is not vacuous: later scores do move
    leaked, _ = _leak(lambda m, d: _leaky(m, d, tt), model, t)
    assert bool(leaked) == inside, "the leak check missed a leaky evaluation"


@pytest.mark.parametrize("block", [1, 4, 7, 40, 500])
def test_zero_steps_is_plain_evaluation(block):
    """0 H-steps gives `evaluate`'s Σ NLL and token count, whatever the block (float64)."""
    model, ids = _model(), _ids()
    plain = evaluate(model, ids, S, 13)
    nll, n = evaluate_tt(model, ids, S, TestTime(steps=0, block=block))
    assert n == plain[1]
    assert nll == pytest.approx(plain[0], rel=1e-9)


def test_zero_steps_is_plain_evaluation_in_float32():
    """In float32, with the block equal to the evaluation window: the same forward calls, the
    sums differ only by the order of float32/float64 additions."""
    model, ids = _model().float(), _ids()
    plain = evaluate(model, ids, S, 10)
    nll, n = evaluate_tt(model, ids, S, TestTime(steps=0, block=10))
    assert n == plain[1] and nll == pytest.approx(plain[0], rel=1e-6)


def test_steps_change_the_scores_and_leave_theta_frozen():
    """H-steps move the scores of every block after the first, not the first block's, and
    neither change θ nor leave gradients on it."""
    model, data = _model(), batchify(_ids(), S)
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    off = token_nll_tt(model, data, TestTime(steps=0, block=5))
    on = token_nll_tt(model, data, TestTime(steps=2, lr=0.1, block=5))
    assert torch.equal(on[:5], off[:5])
    assert not torch.equal(on[5:], off[5:])
    assert all(torch.equal(theta[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("optim", ["adagrad", "sgd"])
def test_an_h_step_lowers_the_nll_of_the_block(optim):
    """The refinement is descent on the block's NLL: a small step lowers it, stream by stream."""
    model, data = _model(), batchify(_ids(), S)
    x, y, z0 = data[:6], data[1:7], torch.randn(S, model.state_size, dtype=torch.float64)
    z1 = refine(model, x, y, z0, 1, TestTime(steps=1, lr=1e-3, optim=optim, block=6))
    with torch.no_grad():
        before = _token_nll(model(x, z0)[0], y).sum(0)
        after = _token_nll(model(x, z1)[0], y).sum(0)
    assert (after < before).all()


def _eval(run, capsys, *flags: str) -> tuple[str, dict]:
    argv = ["eval", "--checkpoint", str(run), "--split", "valid", "--no-progress", *flags]
    assert main(argv) == 0
    line, js = capsys.readouterr().out.strip().splitlines()[-2:]
    return line, json.loads(js)


def test_eval_cli_with_test_time_steps(tiny_run, capsys):
    """`tprop eval --tt-h-steps N` scores the same tokens as plain eval, with a different
    perplexity, names the setting (block = the run's --bptt) and is deterministic."""
    _, plain = _eval(tiny_run, capsys)
    line, tt = _eval(tiny_run, capsys, "--tt-h-steps", "3", "--tt-h-lr", "0.05")
    assert tt["tokens"] == plain["tokens"]
    assert tt["ppl"] != plain["ppl"]
    assert "test-time 3 H-steps (adagrad, lr 0.05) per 5-token block" in line
    assert (tt["tt_h_steps"], tt["tt_h_lr"], tt["tt_block"]) == (3, 0.05, 5)
    assert _eval(tiny_run, capsys, "--tt-h-steps", "3", "--tt-h-lr", "0.05")[1] == tt
    _, sgd = _eval(tiny_run, capsys, "--tt-h-steps", "1", "--tt-h-optim", "sgd", "--tt-block", "7")
    assert (sgd["tt_h_optim"], sgd["tt_block"]) == ("sgd", 7)
    assert _eval(tiny_run, capsys, "--tt-h-steps", "0")[1] == plain


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--tt-h-steps", "-1"], "--tt-h-steps must be >= 0"),
        (["--tt-h-steps", "2", "--tt-h-lr", "0"], "--tt-h-lr must be a number > 0"),
        (["--tt-h-lr", "nan"], "--tt-h-lr must be a number > 0"),
        (["--tt-h-steps", "2", "--tt-block", "0"], "--tt-block must be >= 1"),
    ],
)
def test_eval_cli_refuses_bad_test_time_settings(tiny_run, capsys, flags, says):
    assert main(["eval", "--checkpoint", str(tiny_run), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err
