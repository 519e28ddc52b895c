"""The sides `tprop bench` compares, each in a process of its own (`serve`).

A side is a plain dict (it crosses a process boundary): ``kind`` names a builder of `SIDES`,
``tuned`` says whether its process sets tprop's allocator settings (`tprop.alloc`). tprop's
sides are tuned, as the `tprop` command is; the plain sides are what a user's own script gets,
untuned unless ``--plain-tuned``. A builder returns ``run() -> (tokens, extra)``, one round.

The plain sides are written the way pytorch/examples word_language_model trains and evaluates
(its `train()` and `evaluate()`), from torch alone: they share no code with tprop's model,
methods or objective, only the corpus and `batchify`'s layout.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

Run = Callable[[], tuple[int, dict[str, Any]]]


def _train_ids(side: dict[str, Any]) -> Tensor:
    from tprop.data import load_corpus

    ids = load_corpus(side["dataset"], side["data_dir"]).train
    return ids[: side["limit"]] if side["limit"] else ids


def _eval_ids(side: dict[str, Any]) -> Tensor:
    from tprop.data import load_corpus

    ids = getattr(load_corpus(side["dataset"], side["data_dir"]), side["split"])
    return ids[: side["limit"]] if side["limit"] else ids


def tprop_train(side: dict[str, Any]) -> Run:
    """tprop's own method (`tprop.train.build_method`) on `side["config"]`, `steps` per round;
    an epoch that runs out starts again."""
    from tprop.config import build
    from tprop.presets import resolve
    from tprop.train import build_method, build_model, make_optimizer

    ids = _train_ids(side)
    cfg = resolve(build({"device": side["device"], **side["config"]}))
    torch.manual_seed(cfg.seed)
    device = torch.device(side["device"])
    model = build_model(cfg, int(ids.max()) + 1, device)
    method = build_method(cfg, model, make_optimizer(cfg, model), ids.to(device))
    todo, at = method.steps(), [0]

    def run() -> tuple[int, dict[str, Any]]:
        tokens = 0
        for _ in range(side["steps"]):
            if at[0] % len(todo) == 0:
                method.start_epoch()
            tokens += int(method.step(*todo[at[0] % len(todo)], epoch=10)["tokens"])
            at[0] += 1
        return tokens, {}

    run.vocab = model.decoder.weight.shape[0]  # type: ignore[attr-defined]
    return run


def tprop_profile(side: dict[str, Any]) -> Run:
    """`tprop_train` under torch.profiler (`tprop.bench_profile`)."""
    from tprop.bench_profile import profiled

    run = tprop_train(side)
    return profiled(run, run.vocab)  # type: ignore[attr-defined]


class PlainLM(nn.Module):
    """pytorch/examples' RNNModel without dropout: embedding, GRU, linear decoder."""

    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.rnn = nn.GRU(hidden, hidden)
        self.decoder = nn.Linear(hidden, vocab)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        out, h = self.rnn(self.embedding(x), h)
        return self.decoder(out), h


def _batchify(ids: Tensor, n: int) -> Tensor:
    """pytorch/examples' batchify: (T, n) columns, the remainder dropped."""
    return ids[: ids.numel() // n * n].view(n, -1).t().contiguous()


def plain_train(side: dict[str, Any]) -> Run:
    """The loop a researcher writes by hand: Adagrad, global-norm clip, mean cross-entropy,
    state carried and detached between windows of K tokens."""
    c = side["config"]
    ids, k, s = _train_ids(side), c["bptt"], c["batch_size"]
    torch.manual_seed(c.get("seed", 1111))
    device = torch.device(side["device"])
    model = PlainLM(int(ids.max()) + 1, c["hidden"]).to(device)
    opt = torch.optim.Adagrad(model.parameters(), lr=c["lr"], eps=c.get("adagrad_eps") or 1e-10)
    data = _batchify(ids, s).to(device)
    n_windows = (data.shape[0] - 1) // k
    crit = nn.CrossEntropyLoss()
    state = {"h": torch.zeros(1, s, c["hidden"], device=device), "i": 0}

    def run() -> tuple[int, dict[str, Any]]:
        for _ in range(side["steps"]):
            i = state["i"] % n_windows * k
            x, y = data[i : i + k], data[i + 1 : i + 1 + k]
            model.zero_grad()
            out, h = model(x, state["h"])
            loss = crit(out.view(-1, out.shape[-1]), y.reshape(-1))
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), c.get("clip", 0.5))
            opt.step()
            state["h"], state["i"] = h.detach(), state["i"] + 1
        return side["steps"] * k * s, {}

    return run


def decoder_matmuls(side: dict[str, Any]) -> Run:
    """Only the three decoder matmuls of a training step (logits = h·Wᵀ + b, ∂h = ∂·W,
    ∂W = (hᵀ·∂)ᵀ) on a window's K × S rows: a floor under any exact float32 step with torch's
    matmul, so the ceiling of the tokens/s `tprop bench plain` can reach (docs/performance.md)."""
    c = side["config"]
    n, d = c["bptt"] * c["batch_size"], c["hidden"]
    device = torch.device(side["device"])
    vocab = int(_train_ids(side).max()) + 1
    h, w = torch.randn(n, d, device=device), torch.randn(vocab, d, device=device)
    b, grad = torch.zeros(vocab, device=device), torch.randn(n, vocab, device=device)

    def run() -> tuple[int, dict[str, Any]]:
        for _ in range(side["steps"]):
            torch.addmm(b, h, w.t())
            torch.mm(grad, w)
            torch.mm(h.t(), grad)
        return side["steps"] * n, {}

    return run


def _eval_model(side: dict[str, Any], vocab: int) -> PlainLM:
    torch.manual_seed(side["seed"])
    return PlainLM(vocab, side["hidden"]).to(torch.device(side["device"])).eval()


def plain_eval(side: dict[str, Any]) -> Run:
    """pytorch/examples' evaluate(): full logits per window, cross-entropy, ``.item()``."""
    ids = _eval_ids(side).to(torch.device(side["device"]))
    vocab = int(side["vocab"])
    model, data = _eval_model(side, vocab), _batchify(ids, side["batch_size"])
    k, n_rows = side["bptt"], data.shape[0] - 1
    crit = nn.CrossEntropyLoss()

    def run() -> tuple[int, dict[str, Any]]:
        total, h = 0.0, torch.zeros(1, data.shape[1], side["hidden"], device=data.device)
        with torch.no_grad():
            for i in range(0, n_rows, k):
                n = min(k, n_rows - i)
                out, h = model(data[i : i + n], h)
                total += n * crit(out.view(-1, vocab), data[i + 1 : i + 1 + n].reshape(-1)).item()
        tokens = n_rows * data.shape[1]
        return tokens, {"nll": total * data.shape[1], "tokens": tokens}

    return run


def tprop_eval(side: dict[str, Any]) -> Run:
    """`tprop.evaluate.evaluate` on the same weights as `plain_eval` (same seed)."""
    from tprop.evaluate import evaluate
    from tprop.model import RNNLM

    ids = _eval_ids(side).to(torch.device(side["device"]))
    vocab = int(side["vocab"])
    model = RNNLM(vocab, side["hidden"]).to(ids.device)
    model.load_state_dict(_eval_model(side, vocab).state_dict())

    def run() -> tuple[int, dict[str, Any]]:
        nll, n = evaluate(model, ids, side["batch_size"], side["bptt"])
        return n, {"nll": nll, "tokens": n}

    return run


SIDES: dict[str, Callable[[dict[str, Any]], Run]] = {
    "tprop": tprop_train,
    "plain": plain_train,
    "tprop-eval": tprop_eval,
    "plain-eval": plain_eval,
    "tprop-profile": tprop_profile,
    "decoder-matmuls": decoder_matmuls,
}


def peak_memory(device: str) -> float:
    """Peak memory of this process in MB: max allocated on CUDA, else peak RSS."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _request(conn) -> bool:
    """The next request: True for a round; False to stop (or the parent has gone)."""
    try:
        return conn.recv() is not None
    except EOFError:
        return False


def serve(conn, side: dict[str, Any]) -> None:
    """A side's process: build it, report ready (with its memory after set-up), then run one
    round per request (reply: tokens, seconds, extra) until None; last, its peak memory."""
    if side["tuned"]:
        from tprop.alloc import tune

        tune()
    torch.set_num_threads(side["threads"])
    try:
        run = SIDES[side["kind"]](side)
    except Exception as e:  # reported by the parent as one line
        conn.send(("error", f"{side['name']}: {e}"))
        return
    conn.send(("ready", peak_memory(side["device"])))
    while _request(conn):
        if side["device"].startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        tokens, extra = run()
        if side["device"].startswith("cuda"):
            torch.cuda.synchronize()
        conn.send(("done", (tokens, time.perf_counter() - t0, extra)))
    conn.send(("peak", peak_memory(side["device"])))
