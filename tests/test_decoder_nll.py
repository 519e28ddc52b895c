"""The chunked decoder NLL (`objective.decoder_nll_sum`) gives `nll_sum` of the full logits:
value and gradients in float64 to rounding, float32 to a stated tolerance; `evaluate`, which
uses it, gives the perplexity of the plain full-logits loop (pytorch/examples' evaluate)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tprop import objective
from tprop.batching import batchify
from tprop.evaluate import evaluate
from tprop.model import RNNLM
from tprop.objective import decoder_nll_sum, nll_sum


@pytest.mark.parametrize("shape", [(7, 3), (1, 1)])
def test_decoder_nll_sum_equals_full_logits_float64(monkeypatch, shape):
    """Value and the three gradients, with chunks of 2 rows (so rows straddle chunks)."""
    monkeypatch.setattr(objective, "LOGITS_BYTES", 2 * 11 * 8)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(*shape, 5, dtype=torch.float64, generator=g)
    w = torch.randn(11, 5, dtype=torch.float64, generator=g)
    b = torch.randn(11, dtype=torch.float64, generator=g)
    y = torch.randint(11, shape, generator=g)
    ref_in = [t.clone().requires_grad_() for t in (h, w, b)]
    new_in = [t.clone().requires_grad_() for t in (h, w, b)]
    ref = nll_sum(F.linear(*ref_in), y)
    new = decoder_nll_sum(*new_in, y)
    (3.0 * ref).backward()
    (3.0 * new).backward()
    assert new.dtype == torch.float64
    torch.testing.assert_close(new, ref, rtol=1e-13, atol=0)
    for a, r in zip(new_in, ref_in, strict=True):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        torch.testing.assert_close(decoder_nll_sum(h, w, b, y), ref.detach(), rtol=1e-13, atol=0)
    assert torch.autograd.gradcheck(lambda hh: decoder_nll_sum(hh, w, b, y), (h.requires_grad_(),))


def test_decoder_nll_sum_float32_and_detached_decoder(monkeypatch):
    """float32 to 1e-6 relative; a detached decoder gets no gradient and h's is unchanged."""
    monkeypatch.setattr(objective, "LOGITS_BYTES", 64 * 500 * 4)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(20, 16, 8, generator=g, requires_grad=True)
    w = (0.3 * torch.randn(500, 8, generator=g)).requires_grad_()
    b = torch.zeros(500, requires_grad=True)
    y = torch.randint(500, (20, 16), generator=g)
    ref = nll_sum(F.linear(h, w, b), y)
    (gh_ref,) = torch.autograd.grad(ref, [h])
    new = decoder_nll_sum(h, w.detach(), b.detach(), y)
    new.backward()
    assert new.dtype == torch.float32 and w.grad is None and b.grad is None
    torch.testing.assert_close(new, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(h.grad, gh_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_evaluate_equals_the_full_logits_loop(monkeypatch, dtype, rtol):
    """Σ NLL and count of `evaluate` = a window-by-window loop over full logits, for windows
    that do and do not divide the split, with decoder chunks smaller than a window."""
    monkeypatch.setattr(objective, "LOGITS_BYTES", 3 * 50 * 8)
    torch.manual_seed(0)
    model = RNNLM(50, 12).to(dtype)
    ids = torch.randint(50, (403,))
    data, state, ref = batchify(ids, 6), model.zero_state(6), 0.0
    with torch.no_grad():
        for i in range(0, data.shape[0] - 1, 9):
            k = min(9, data.shape[0] - 1 - i)
            logits, state = model(data[i : i + k], state)
            ref += float(nll_sum(logits.double(), data[i + 1 : i + 1 + k]))
    for bptt in (9, 200):
        nll, n = evaluate(model, ids, 6, bptt)
        assert n == (403 // 6 - 1) * 6
        assert nll == pytest.approx(ref, rel=rtol)
