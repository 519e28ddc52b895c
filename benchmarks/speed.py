"""Throughput benchmarks, measured side by side in one process, alternating; medians of rounds.

    python benchmarks/speed.py plain --hidden 100 200     # tprop bptt vs a plain PyTorch loop
    python benchmarks/speed.py tp-cost --h-steps 1 2 5     # ADMM per-token time / BPTT's

`plain` times tprop's TruncatedBPTT step against a hand-written loop (nn.Embedding + nn.GRU +
nn.Linear + Adagrad + global-norm clip, state carried and detached) on the same windows.
`tp-cost` times ADMM (tprnn preset, one θ-step) with k H-steps against BPTT with K = B.
Both print a Markdown table; every ratio is a median over rounds run in alternation, so load
from other processes hits both sides alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

from tprop.batching import batchify, window
from tprop.config import build
from tprop.data import load_corpus
from tprop.presets import resolve
from tprop.train import build_method, build_model, make_optimizer


def tprop_runner(args: dict, ids: torch.Tensor, steps: int):
    cfg = resolve(build({"device": "cpu", **args}))
    model = build_model(cfg, int(ids.max()) + 1, torch.device("cpu"))
    method = build_method(cfg, model, make_optimizer(cfg, model), ids)
    method.start_epoch()
    todo = method.steps()

    def run(offset: int) -> int:
        tokens = 0
        for st in todo[offset : offset + steps]:
            tokens += int(method.step(*st, epoch=10)["tokens"])
        return tokens

    return run, len(todo)


def plain_runner(hidden: int, ids: torch.Tensor, k: int, s: int, steps: int):
    """The baseline a researcher would write by hand."""
    torch.manual_seed(0)
    vocab = int(ids.max()) + 1
    emb, rnn, dec = nn.Embedding(vocab, hidden), nn.GRU(hidden, hidden), nn.Linear(hidden, vocab)
    params = [*emb.parameters(), *rnn.parameters(), *dec.parameters()]
    opt = torch.optim.Adagrad(params, lr=0.1)
    data = batchify(ids, s)
    state = {"h": torch.zeros(1, s, hidden)}
    crit = nn.CrossEntropyLoss()

    def run(offset: int) -> int:
        for i in range(offset, offset + steps):
            x, y = window(data, i, k)
            opt.zero_grad()
            out, h = rnn(emb(x), state["h"])
            loss = crit(dec(out).view(-1, vocab), y.reshape(-1))
            loss.backward()
            nn.utils.clip_grad_norm_(params, 0.5)
            opt.step()
            state["h"] = h.detach()
        return steps * k * s

    return run


def alternate(runners: dict, rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median tokens/s per runner over `rounds` alternating rounds."""
    rates: dict[str, list[float]] = {n: [] for n in runners}
    for r in range(warmup + rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            tokens = run(r)
            dt = time.perf_counter() - t0
            if r >= warmup:
                rates[name].append(tokens / dt)
    return {n: statistics.median(v) for n, v in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["plain", "tp-cost"])
    ap.add_argument("--dataset", default="ptb")
    ap.add_argument("--data-dir")
    ap.add_argument("--hidden", type=int, nargs="+", default=[100])
    ap.add_argument("--h-steps", type=int, nargs="+", default=[1, 2, 5])
    ap.add_argument("--steps", type=int, default=20, help="minibatches per round and runner")
    ap.add_argument("--rounds", type=int, default=5)
    ns = ap.parse_args()
    ids = load_corpus(ns.dataset, ns.data_dir).train
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, dataset {ns.dataset}, "
        f"{ns.steps} minibatches of 20×32 tokens per round, {ns.rounds} rounds (medians)\n"
    )
    common = {"dataset": ns.dataset, "batch_size": 32, "lr": 0.1}
    if ns.what == "plain":
        print("| hidden | tprop bptt tok/s | plain loop tok/s | ratio tprop/plain |")
        print("|---|---|---|---|")
        for h in ns.hidden:
            tp, _ = tprop_runner(
                {**common, "method": "bptt", "bptt": 20, "hidden": h, "adagrad_eps": 1e-10},
                ids,
                ns.steps,
            )
            plain = plain_runner(h, ids, 20, 32, ns.steps)
            r = alternate(
                {
                    "tprop": lambda o, f=tp: f(o * ns.steps),
                    "plain": lambda o, f=plain: f(o * ns.steps),
                },
                ns.rounds,
            )
            print(
                f"| {h} | {r['tprop']:,.0f} | {r['plain']:,.0f} | {r['tprop'] / r['plain']:.3f} |",
                flush=True,
            )
    else:
        print(
            "| hidden | H-steps k | BPTT tok/s | ADMM tok/s | time ratio ADMM/BPTT | bound k+1.3 |"
        )
        print("|---|---|---|---|---|---|")
        for h in ns.hidden:
            for k in ns.h_steps:
                bp, _ = tprop_runner(
                    {**common, "method": "bptt", "bptt": 20, "hidden": h}, ids, ns.steps
                )
                ad, _ = tprop_runner(
                    {
                        **common,
                        "method": "admm",
                        "block_size": 20,
                        "hidden": h,
                        "h_steps": k,
                        "u_start_epoch": 1,
                    },
                    ids,
                    ns.steps,
                )
                r = alternate(
                    {
                        "bptt": lambda o, f=bp: f(o * ns.steps),
                        "admm": lambda o, f=ad: f(o * ns.steps),
                    },
                    ns.rounds,
                )
                print(
                    f"| {h} | {k} | {r['bptt']:,.0f} | {r['admm']:,.0f} | "
                    f"{r['bptt'] / r['admm']:.2f} | {k + 1.3:.1f} |",
                    flush=True,
                )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
