"""The fast paths of `tprop.accel` give the plain path's numbers: exactly (optimiser
implementations, chunk size) or to a stated tolerance (bf16 autocast, torch.compile); and no
step asks the device for a value (what would stall a GPU: ``.item()``, ``bool(t)``, …)."""

from __future__ import annotations

import collections
import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode

from conftest import train_tiny
from tprop.accel import CPU_CHUNK_TOKENS, chunk_tokens, token_bytes, tokens_that_fit
from tprop.config import build
from tprop.objective import decode_nll, fused_decode_nll
from tprop.presets import resolve
from tprop.train import build_method, build_model, make_optimizer

V = 50
CASES = {
    "bptt": dict(method="bptt", bptt=5),
    "admm": dict(method="admm", preset="tprnn", block_size=5, h_steps=2, u_start_epoch=1),
    "admm-paper": dict(method="admm", preset="paper", block_size=5, h_steps=1, u_start_epoch=1),
    "admm-batch": dict(method="admm", preset="tprnn", block_size=5, full_batch=True,
                       u_start_epoch=1, chunk_tokens=40),
    "alm": dict(method="alm", preset="tprnn", block_size=5, h_steps=1, u_start_epoch=1),
}  # fmt: skip


def ids() -> torch.Tensor:
    return torch.randint(0, V, (1500,), generator=torch.Generator().manual_seed(0))


def steps_of(case: str, n_steps: int = 4, device: str = "cpu", **change):
    """θ and the per-step NLL after ``n_steps`` steps of CASES[case] from seed 1."""
    cfg = resolve(build({"hidden": 12, "device": device, "batch_size": 4, "seed": 1,
                         **CASES[case], **change}))  # fmt: skip
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, V, torch.device(device))
    method = build_method(cfg, model, make_optimizer(cfg, model), ids().to(device))
    method.start_epoch()
    nll = [float(method.step(*s, epoch=1)["nll"]) for s in method.steps()[:n_steps]]
    return {k: v.clone() for k, v in model.state_dict().items()}, nll, method


@pytest.mark.parametrize("case", ["bptt", "admm", "admm-batch"])
def test_bf16_autocast_is_close_to_fp32_and_keeps_float32_state(case):
    """Plain SGD for θ and Z: Adagrad's first step, ≈ lr·sign(g), turns rounding into a
    full step wherever a gradient is near 0, which would hide the comparison."""
    sgd = dict(optim="sgd", lr=1.0, **({"h_optim": "sgd"} if case != "bptt" else {}))
    theta32, nll32, _ = steps_of(case, **sgd)
    theta16, nll16, method = steps_of(case, precision="bf16", **sgd)
    assert nll16 != nll32, "bf16 gave fp32's numbers bit for bit: autocast never engaged"
    for a, b in zip(nll32, nll16, strict=True):
        assert abs(a - b) <= 1e-2 * abs(a)  # bfloat16 has 8 bits of mantissa
    for k, v in theta16.items():
        assert v.dtype == torch.float32
        assert torch.allclose(v, theta32[k], rtol=0, atol=2e-3), k
    for name in ("Z", "U", "carry", "state"):
        t = getattr(method, name, None)
        assert t is None or t.dtype == torch.float32


def test_compile_gives_the_eager_numbers():
    from torch._dynamo.utils import counters

    counters.clear()
    for case in ("bptt", "admm"):
        theta, nll, _ = steps_of(case, n_steps=3)
        theta_c, nll_c, _ = steps_of(case, n_steps=3, compile="default")
        assert nll_c == pytest.approx(nll, rel=1e-5)
        for k, v in theta_c.items():
            assert torch.allclose(v, theta[k], rtol=1e-5, atol=1e-6), (case, k)
    assert counters["stats"]["unique_graphs"] >= 1  # the compiler did run


@pytest.mark.parametrize("optim", ["adagrad", "sgd"])
@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_optimiser_implementations_give_the_for_loop_theta(optim, impl):
    ref, ref_nll, _ = steps_of("admm", dtype="float64", optim=optim, optim_impl="for-loop")
    new, new_nll, _ = steps_of("admm", dtype="float64", optim=optim, optim_impl=impl)
    assert new_nll == pytest.approx(ref_nll, rel=1e-13)
    for k, v in new.items():
        assert torch.allclose(v, ref[k], rtol=1e-12, atol=1e-14), k


def test_fused_cross_entropy_is_autograds_linear_and_cross_entropy():
    """The fused node's NLL and gradients, all three and for an H-step's detached decoder
    only ∂h, are F.linear + F.cross_entropy's to float64 rounding."""
    g = torch.Generator().manual_seed(0)
    hwb = [torch.randn(*s, generator=g, dtype=torch.float64) for s in ((7, 3, 6), (V, 6), (V,))]
    y = torch.randint(0, V, (7, 3), generator=g)
    for detached in (False, True):
        grads = []
        for fn in (decode_nll, fused_decode_nll):
            leaves = [t.clone().requires_grad_(i == 0 or not detached) for i, t in enumerate(hwb)]
            nll = fn(*leaves, y)
            (0.3 * nll).backward()
            grads.append((nll.detach(), *(t.grad for t in leaves)))
        (nll, gh, gw, gb), (fnll, fgh, fgw, fgb) = grads
        assert torch.allclose(fnll, nll, rtol=1e-13, atol=0)
        assert torch.allclose(fgh, gh, rtol=1e-12, atol=1e-14)
        if detached:
            assert fgw is None and fgb is None
        else:
            assert torch.allclose(fgw, gw, rtol=1e-12, atol=1e-14)
            assert torch.allclose(fgb, gb, rtol=1e-12, atol=1e-14)


def test_fused_cross_entropy_where_the_target_probability_underflows():
    """float32: a target 150 nats below the rest has p(y) = e^-150 → 0; the NLL (150 +
    log Σ) must still come out, as autograd's log-softmax gives it, not inf, and the gradient
    stays softmax − onehot."""
    h = torch.eye(4)[:2]  # two rows, hidden 4: the logits are the decoder's first two columns
    w, b = torch.zeros(V, 4), torch.zeros(V)
    w[3, 0], w[5, 1] = -150.0, 80.0  # row 0: its target (3) far below; row 1: one logit far above
    y = torch.tensor([3, 0])
    hr, hf = h.clone().requires_grad_(), h.clone().requires_grad_()
    ref, got = decode_nll(hr, w, b, y), fused_decode_nll(hf, w, b, y)
    ref.backward()
    got.backward()
    assert torch.isfinite(got) and got.item() == pytest.approx(ref.item(), rel=1e-6)
    assert got.item() > 150 + 80
    assert torch.allclose(hf.grad, hr.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["bptt", "admm", "alm"])
def test_fused_cross_entropy_trains_as_autograd_does(case):
    ref, ref_nll, _ = steps_of(case, dtype="float64", cross_entropy="autograd")
    new, new_nll, method = steps_of(case, dtype="float64", cross_entropy="fused")
    assert method.forward.decode_nll is fused_decode_nll
    assert new_nll == pytest.approx(ref_nll, rel=1e-12)
    for k, v in new.items():
        assert torch.allclose(v, ref[k], rtol=1e-10, atol=1e-12), k


def test_batch_mode_does_not_depend_on_the_chunk_size():
    ref, ref_nll, _ = steps_of("admm-batch", n_steps=2, dtype="float64", chunk_tokens=20)
    new, new_nll, _ = steps_of("admm-batch", n_steps=2, dtype="float64", chunk_tokens=0)
    assert new_nll == pytest.approx(ref_nll, rel=1e-12)
    for k, v in new.items():
        assert torch.allclose(v, ref[k], rtol=1e-10, atol=1e-12), k


def test_bptt_over_groups_of_streams_with_chunked_logits_is_the_plain_step(monkeypatch):
    """A window too large for memory (Table 4: 16,000 streams) runs a group of streams at a
    time, and decodes a few rows at a time once its logits pass the limit: same θ, same NLL,
    same carried state (float64)."""
    ref, ref_nll, plain = steps_of("bptt", dtype="float64")
    monkeypatch.setattr("tprop.accel.CPU_LOGITS_LIMIT", 1)  # every call decodes row chunks
    new, new_nll, method = steps_of("bptt", dtype="float64", chunk_tokens=10)
    assert plain.group >= 4 and method.group == 2  # 10 tokens // K 5: two of the 4 streams
    assert (plain.forward.logits_limit, method.forward.logits_limit) == (1 << 30, 1)
    assert new_nll == pytest.approx(ref_nll, rel=1e-12)
    for k, v in new.items():
        assert torch.allclose(v, ref[k], rtol=1e-10, atol=1e-12), k
    assert torch.allclose(plain.state, method.state, rtol=1e-10, atol=1e-12)


def test_chunk_size_from_the_setting_the_cpu_default_or_free_memory():
    cfg = resolve(build({"hidden": 12, "method": "admm", "full_batch": True, "chunk_tokens": 0}))
    model = build_model(cfg, V, torch.device("cpu"))
    assert chunk_tokens(cfg, model, torch.device("cpu")) == CPU_CHUNK_TOKENS
    assert chunk_tokens(cfg.__class__(**{**cfg.to_dict(), "chunk_tokens": 7}), model,
                        torch.device("cpu")) == 7  # fmt: skip
    per = token_bytes(model, full_logits=False)
    assert per == 4 * (2 * 12 + 8 * 12 + 2 * 12)
    assert token_bytes(model, full_logits=True) == per + 4 * 3 * V
    assert tokens_that_fit(80 << 30, 1000) == (40 << 30) // 1000  # half of the free memory
    assert tokens_that_fit(10, 1000) == 1


class SyncSpy(TorchFunctionMode):
    """Records every call that reads a tensor's value on the host (a device sync on a GPU),
    with the file and line that made it."""

    READS = {"item", "__bool__", "__int__", "__float__", "__index__", "tolist", "numpy", "cpu",
             "nonzero", "any", "all"}  # fmt: skip

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            frame = traceback.extract_stack(limit=3)[0]
            self.calls[(func.__name__, frame.filename, frame.lineno)] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", list(CASES))
def test_no_step_reads_a_device_value(case):
    """Inside a step nothing asks for a tensor's value, so a GPU never waits on the host: with
    the default (fused) optimiser nothing at all; torch's own for-loop Adagrad reads its step
    counter, a 0-dim tensor it keeps on the host even when the parameters are on a GPU."""
    for impl in ("auto", "for-loop"):
        _, _, method = steps_of(case, n_steps=1, optim_impl=impl)
        with SyncSpy() as spy:
            for s in method.steps()[1:4]:
                method.step(*s, epoch=1)
        ours = {k: n for k, n in spy.calls.items() if "/torch/optim/" not in k[1]}
        assert ours == {}
        assert impl != "auto" or spy.calls == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", list(CASES))
def test_no_step_syncs_a_gpu(case):
    """The same on a GPU, by CUDA's own account: any synchronising call raises."""
    _, _, method = steps_of(case, n_steps=1, device="cuda", optim_impl="foreach")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for s in method.steps()[1:4]:
            method.step(*s, epoch=1)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cli_runs_bf16_with_a_fused_optimiser_and_refuses_bf16_float64(tiny_data, tmp_path, capsys):
    flags = "--epochs 1 --method admm --block-size 5 --h-steps 1 --precision bf16"
    assert train_tiny(tiny_data, tmp_path / "a", flags, "--optim-impl", "fused") == 0
    assert train_tiny(tiny_data, tmp_path / "b", flags, "--dtype", "float64") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tprop: error: --precision bf16") or "--precision bf16" in err[-1]
    assert not (tmp_path / "b").exists()


def subnormal_survives() -> bool:
    return (torch.tensor([1e-310], dtype=torch.float64) * 1.0).item() != 0.0


def test_flush_denormal_is_a_per_run_switch(tiny_data, tmp_path):
    """--flush-denormal makes this process treat subnormals as zero for the run (a step of a
    blown-up run is 11x faster: benchmarks/subnormal_step.py); the next run without it gets
    them back, so one run's switch never leaks into another's numbers."""
    if not torch.set_flush_denormal(True):  # pragma: no cover (a CPU without FTZ/DAZ)
        pytest.skip("this CPU cannot flush subnormals")
    torch.set_flush_denormal(False)
    assert train_tiny(tiny_data, tmp_path / "a", "--epochs 1 --flush-denormal") == 0
    assert not subnormal_survives()
    assert train_tiny(tiny_data, tmp_path / "b", "--epochs 1") == 0
    assert subnormal_survives()
