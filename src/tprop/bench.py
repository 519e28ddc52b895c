"""`tprop bench plain | tp-cost | eval | memory`: throughput and memory, side by side.

    tprop bench plain --hidden 100 200      tprop BPTT against a plain PyTorch loop
    tprop bench tp-cost --h-steps 1 2 5     ADMM (k H-steps, one θ-step) against BPTT, K = B
    tprop bench eval                        tprop's evaluate against pytorch/examples' way
    tprop bench memory                      peak RSS (CPU) / max allocated (CUDA) per method
    tprop bench profile                     where a BPTT and an ADMM step spend their time
    tprop bench switch --set precision=bf16 a fast path (tprop.accel) against tprop without it

Every side runs in a process of its own (`tprop.bench_sides`), so a side gets the allocator
settings of the program it stands for (tprop tuned, a plain script not) and peaks do not mix.
The sides of a row run in alternating rounds (the order flips every round), so load from other
processes hits both alike; a row reports each side's median tokens/s and the median over rounds
of the per-round ratio. Output: a Markdown table, or with ``--json`` one JSON object per row.
Figures and their commands: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import sys
import textwrap
from typing import Any

from tprop.config import ConfigError

NAME = "bench"
WHAT = ("plain", "tp-cost", "eval", "memory", "profile", "switch")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        NAME,
        help="throughput and memory: tprop against a plain PyTorch loop, TP against BPTT, "
        "evaluation, peak memory",
        description=textwrap.dedent((__doc__ or "").split("\n\n")[1]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("what", choices=WHAT, help="which benchmark")
    p.add_argument("--dataset", help="[default: ptb; eval: wikitext-2]")
    p.add_argument("--data-dir", help="folder holding <dataset>/ [default: tprop's search]")
    p.add_argument("--hidden", type=int, nargs="+", default=[100], help="[default: 100]")
    p.add_argument("--h-steps", type=int, nargs="+", default=[1, 2, 5], help="[default: 1 2 5]")
    p.add_argument(
        "--method", nargs="+", default=["admm"], choices=["pm", "admm", "alm"], help="tp-cost"
    )
    p.add_argument("--batch-size", type=int, default=32, help="S streams [default: 32]")
    p.add_argument("--bptt", type=int, default=20, help="K = B [default: 20]")
    p.add_argument("--steps", type=int, default=20, help="minibatches per round [default: 20]")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per side [default: 5]")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first [default: 1]")
    p.add_argument("--limit", type=int, default=0, help="first N tokens of the split (0 = all)")
    p.add_argument("--split", choices=["valid", "test"], default="valid", help="eval")
    p.add_argument("--eval-batch-size", type=int, default=10, help="eval streams [default: 10]")
    p.add_argument("--eval-bptt", type=int, default=200, help="eval window [default: 200]")
    p.add_argument(
        "--plain-tuned",
        action="store_true",
        help="give the plain sides tprop's allocator settings too (isolates the code's share)",
    )
    p.add_argument(
        "--malloc-both",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="profile: each method with and without tprop's malloc settings [default: on]",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a `tprop train` setting for tprop's training sides, e.g. precision=bf16, "
        "compile=default, optim_impl=fused; repeatable (the plain sides stay plain)",
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N] [default: cpu]")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no stderr")
    p.set_defaults(handler=run)


def _check(ns: argparse.Namespace) -> None:
    for flag in ("hidden", "h_steps"):
        if any(v < (0 if flag == "h_steps" else 1) for v in getattr(ns, flag)):
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1 (got {getattr(ns, flag)})")
    for flag in ("batch_size", "bptt", "steps", "rounds", "eval_batch_size", "eval_bptt"):
        if getattr(ns, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1 (got {getattr(ns, flag)})")
    for flag in ("warmup", "limit", "threads"):
        if getattr(ns, flag) < 0:
            raise ConfigError(f"--{flag} must be >= 0 (got {getattr(ns, flag)})")
    if ns.device != "cpu" and not ns.device.startswith("cuda"):
        raise ConfigError(f"--device must be cpu or cuda[:N] (got {ns.device})")
    ns.settings = _settings(ns.set)


def _settings(items: list[str]) -> dict[str, Any]:
    from tprop.sweep_flags import parse_setting

    return dict(parse_setting(item) for item in items)


def _context():
    """Fresh processes: forked from a server that has imported torch but run nothing (fast
    to start, no OpenMP threads and no allocator settings inherited); spawned off Linux."""
    if sys.platform.startswith("linux"):
        ctx = multiprocessing.get_context("forkserver")
        # torch._dynamo: what the first optimiser imports (3 s), once in the server
        ctx.set_forkserver_preload(["tprop.bench_sides", "torch._dynamo"])
        return ctx
    return multiprocessing.get_context("spawn")


class Side:
    """One side of a row, served by its own process (`bench_sides.serve`)."""

    def __init__(self, spec: dict[str, Any]):
        ctx = _context()
        self.spec, (self.conn, child) = spec, ctx.Pipe()
        from tprop.bench_sides import serve

        self.proc = ctx.Process(target=serve, args=(child, spec), daemon=True)
        self.proc.start()
        child.close()
        self.setup_mb = self._recv("ready")

    def _recv(self, expect: str) -> Any:
        try:
            tag, value = self.conn.recv()
        except EOFError:
            raise ConfigError(f"{self.spec['name']}: its process ended without a result") from None
        if tag == "error":
            self.proc.join()
            raise ConfigError(value)
        assert tag == expect, (tag, expect)
        return value

    def round(self) -> tuple[int, float, dict[str, Any]]:
        self.conn.send(1)
        return self._recv("done")

    def close(self) -> float:
        """End the process; its peak memory in MB (NaN if it had ended)."""
        try:
            self.conn.send(None)
            peak = self._recv("peak")
        except (OSError, ConfigError):
            peak = float("nan")
        self.proc.join()
        return peak


def alternate(specs: list[dict[str, Any]], ns: argparse.Namespace, label: str) -> dict:
    """Rounds of every side in turn (order flipped each round): per side its median tokens/s,
    peak memory and last extra; the median of the per-round ratio a/b of the first two."""
    sides: list[Side] = []
    try:
        sides += [Side(s) for s in specs]
        rates: list[list[float]] = [[] for _ in sides]
        extras: list[dict[str, Any]] = [{} for _ in sides]
        for r in range(ns.warmup + ns.rounds):
            order = range(len(sides)) if r % 2 == 0 else reversed(range(len(sides)))
            for i in order:
                tokens, dt, extras[i] = sides[i].round()
                if r >= ns.warmup:
                    rates[i].append(tokens / dt)
            _say(ns, f"{label}: round {r + 1}/{ns.warmup + ns.rounds} " + _rates(specs, rates))
    finally:
        peaks = [s.close() for s in sides]
    out = {"rounds": ns.rounds}
    for i, (spec, key) in enumerate(zip(specs, "abc", strict=False)):
        out[f"{key}"] = spec["name"]
        out[f"{key}_tokens_per_s"] = statistics.median(rates[i])
        out[f"{key}_peak_mb"], out[f"{key}_setup_mb"] = peaks[i], sides[i].setup_mb
        if extras[i]:
            out[f"{key}_extra"] = extras[i]
    if len(sides) >= 2:
        out["ratio"] = statistics.median(a / b for a, b in zip(*rates[:2], strict=True))
    return out


def _rates(specs: list[dict[str, Any]], rates: list[list[float]]) -> str:
    return " | ".join(
        f"{s['name']} {r[-1]:,.0f} tok/s" for s, r in zip(specs, rates, strict=True) if r
    )


def _say(ns: argparse.Namespace, line: str) -> None:
    if ns.progress:
        print(f"bench {ns.what}: {line}", file=sys.stderr, flush=True)


def _side(ns: argparse.Namespace, name: str, kind: str, tuned: bool, **more: Any) -> dict:
    return {
        "name": name,
        "kind": kind,
        "tuned": tuned,
        "dataset": ns.dataset,
        "data_dir": ns.data_dir,
        "device": ns.device,
        "threads": ns.threads or _default_threads(),
        "limit": ns.limit,
        "steps": ns.steps,
        **more,
    }


def _default_threads() -> int:
    import torch

    return torch.get_num_threads()


def _train_config(ns: argparse.Namespace, hidden: int, method: str, **more: Any) -> dict:
    """The settings of a training side (a plain side reads the same keys)."""
    window = {"bptt": ns.bptt} if method == "bptt" else {"block_size": ns.bptt}
    base = {"dataset": ns.dataset, "batch_size": ns.batch_size, "hidden": hidden, "lr": 0.1}
    return {**base, "method": method, **window, "adagrad_eps": 1e-10, **more}


def _tprop_config(ns: argparse.Namespace, hidden: int, method: str, **more: Any) -> dict:
    """A tprop side's settings: `_train_config` with the user's --set on top."""
    return {**_train_config(ns, hidden, method, **more), **ns.settings}


# ---- the benchmarks ----------------------------------------------------------------------
def bench_plain(ns: argparse.Namespace) -> list[dict[str, Any]]:
    """tprop's TruncatedBPTT (tuned, as `tprop` runs) against the plain loop (untuned)."""
    rows = []
    for h in ns.hidden:
        cfg = _train_config(ns, h, "bptt")  # the plain side's
        specs = [
            _side(ns, "tprop bptt", "tprop", True, config=_tprop_config(ns, h, "bptt")),
            _side(ns, "plain loop", "plain", ns.plain_tuned, config=cfg),
            _side(ns, "decoder matmuls alone", "decoder-matmuls", True, config=cfg),
        ]
        rows.append({"hidden": h, **alternate(specs, ns, f"hidden {h}")})
        rows[-1]["of_ceiling"] = rows[-1]["a_tokens_per_s"] / rows[-1]["c_tokens_per_s"]
    return rows


def bench_tp_cost(ns: argparse.Namespace) -> list[dict[str, Any]]:
    """Time per token of PM/ADMM/ALM with k H-steps (one θ-step) ÷ BPTT's with K = B; the
    ratio is BPTT's tokens/s ÷ the method's, the target 1 + 0.75·k (issue 10)."""
    rows = []
    for h in ns.hidden:
        for method in ns.method:
            for k in ns.h_steps:
                tp = _tprop_config(ns, h, method, h_steps=k, u_start_epoch=1)
                specs = [
                    _side(ns, "bptt", "tprop", True, config=_tprop_config(ns, h, "bptt")),
                    _side(ns, f"{method} k={k}", "tprop", True, config=tp),
                ]
                r = alternate(specs, ns, f"hidden {h}, {method}, {k} H-steps")
                rows.append({"hidden": h, "method": method, "h_steps": k, **r})
                rows[-1]["target"] = 1 + 0.75 * k
    return rows


def bench_eval(ns: argparse.Namespace) -> list[dict[str, Any]]:
    """`tprop.evaluate.evaluate` (tuned) against pytorch/examples' evaluate (untuned), the
    same weights (seeded init); both perplexities and their relative difference."""
    from tprop.data import load_corpus

    vocab = len(load_corpus(ns.dataset, ns.data_dir).vocab)
    rows = []
    for h in ns.hidden:
        common = dict(
            split=ns.split, vocab=vocab, hidden=h, seed=1111, batch_size=ns.eval_batch_size
        )
        specs = [
            _side(ns, "tprop evaluate", "tprop-eval", True, bptt=ns.eval_bptt, **common),
            _side(ns, "plain evaluate", "plain-eval", ns.plain_tuned, bptt=ns.eval_bptt, **common),
        ]
        r = alternate(specs, ns, f"hidden {h}")
        ea, eb = r["a_extra"], r["b_extra"]
        ppl_a, ppl_b = (_ppl(e) for e in (ea, eb))
        rows.append(
            {"hidden": h, "split": ns.split, "tokens": ea["tokens"], **r, "a_ppl": ppl_a}
            | {"b_ppl": ppl_b, "ppl_rel_diff": abs(ppl_a - ppl_b) / ppl_b}
        )
    return rows


def _ppl(extra: dict[str, Any]) -> float:
    from tprop.objective import perplexity

    return perplexity(extra["nll"], extra["tokens"])


def bench_memory(ns: argparse.Namespace) -> list[dict[str, Any]]:
    """Peak memory of each side alone in its process, `steps` steps (batch mode: one step is
    an epoch): the plain loop, tprop BPTT, ADMM (minibatch, and batch mode)."""
    rows = []
    for h in ns.hidden:
        k = ns.h_steps[0]
        admm = _tprop_config(ns, h, "admm", h_steps=k, u_start_epoch=1)
        for name, kind, tuned, cfg in [
            ("plain loop", "plain", ns.plain_tuned, _train_config(ns, h, "bptt")),
            ("tprop bptt", "tprop", True, _tprop_config(ns, h, "bptt")),
            (f"admm k={k}", "tprop", True, admm),
            (f"admm k={k} --full-batch", "tprop", True, {**admm, "full_batch": True}),
        ]:
            steps = 1 if cfg.get("full_batch") else ns.steps
            spec = _side(ns, name, kind, tuned, config=cfg) | {"steps": steps}
            r = alternate([spec], _one_round(ns), f"hidden {h}, {name}")
            rows.append({"hidden": h, "steps": steps, **r})
    return rows


def bench_profile(ns: argparse.Namespace) -> list[dict[str, Any]]:
    """Where the time of `steps` steps goes (`tprop.bench_profile`), after one untimed round:
    BPTT and ADMM with k = the first --h-steps, each with and without tprop's allocator
    settings."""
    from tprop.bench_profile import row

    rows, k = [], ns.h_steps[0]
    once = argparse.Namespace(**{**vars(ns), "warmup": 1, "rounds": 1})
    for h in ns.hidden:
        admm = _tprop_config(ns, h, "admm", h_steps=k, u_start_epoch=1)
        for name, cfg in [("bptt", _tprop_config(ns, h, "bptt")), (f"admm k={k}", admm)]:
            for tuned in (True, False) if ns.malloc_both else (True,):
                spec = _side(ns, name, "tprop-profile", tuned, config=cfg)
                r = alternate([spec], once, f"hidden {h}, {name}, tuned {tuned}")
                glibc = "tprop's" if tuned else "glibc default"
                rows.append({"hidden": h, "tuned": glibc, **row(name, r["a_extra"], ns.steps)})
    return rows


def _one_round(ns: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(ns), "warmup": 0, "rounds": 1})


def bench_switch(ns: argparse.Namespace) -> list[dict[str, Any]]:
    """tprop with the --set settings against tprop without them: BPTT, and each --method
    with each --h-steps; the ratio is the switch's speed-up in tokens/s."""
    if not ns.settings:
        raise ConfigError("bench switch compares tprop with and without --set KEY=VALUE; give one")
    rows = []
    for h in ns.hidden:
        todo = [("bptt", {})] + [(m, {"h_steps": k, "u_start_epoch": 1}) for m in ns.method
                                 for k in ns.h_steps]  # fmt: skip
        for method, more in todo:
            label = method if method == "bptt" else f"{method} k={more['h_steps']}"
            specs = [
                _side(ns, "with", "tprop", True, config=_tprop_config(ns, h, method, **more)),
                _side(ns, "without", "tprop", True, config=_train_config(ns, h, method, **more)),
            ]
            rows.append({"hidden": h, "method": label, **alternate(specs, ns, f"{h}, {label}")})
    return rows


BENCHES = {"plain": bench_plain, "tp-cost": bench_tp_cost, "eval": bench_eval}
BENCHES |= {"switch": bench_switch}
BENCHES |= {"memory": bench_memory, "profile": bench_profile}


# ---- output ------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"torch": torch.__version__, "cpu": cpu, "threads": torch.get_num_threads()}


def table(what: str, rows: list[dict[str, Any]]) -> list[str]:
    """The Markdown table of a benchmark's rows."""
    mb = "peak MB"
    cols = {
        "plain": [("hidden", "{}"), ("a_tokens_per_s", "{:,.0f}"), ("b_tokens_per_s", "{:,.0f}")]
        + [("ratio", "{:.3f}"), ("c_tokens_per_s", "{:,.0f}"), ("of_ceiling", "{:.0%}")],
        "tp-cost": [("hidden", "{}"), ("method", "{}"), ("h_steps", "{}")]
        + [("a_tokens_per_s", "{:,.0f}"), ("b_tokens_per_s", "{:,.0f}"), ("ratio", "{:.2f}")]
        + [("target", "≤ {:.2f}")],
        "eval": [("hidden", "{}"), ("tokens", "{:,}"), ("a_tokens_per_s", "{:,.0f}")]
        + [("b_tokens_per_s", "{:,.0f}"), ("ratio", "{:.2f}"), ("a_ppl", "{:.6f}")]
        + [("b_ppl", "{:.6f}"), ("ppl_rel_diff", "{:.1e}")],
        "switch": [("hidden", "{}"), ("method", "{}"), ("a_tokens_per_s", "{:,.0f}")]
        + [("b_tokens_per_s", "{:,.0f}"), ("ratio", "{:.3f}")],
        "memory": [("hidden", "{}"), ("a", "{}"), ("steps", "{}"), ("a_tokens_per_s", "{:,.0f}")]
        + [("a_setup_mb", "{:,.0f}"), ("a_peak_mb", "{:,.0f}")],
        "profile": [("hidden", "{}"), ("method", "{}"), ("tuned", "{}"), ("ms_per_step", "{:.1f}")]
        + [(f"{b}_share", "{:.0%}") for b in ("decoder", "recurrence", "optimizer", "python")]
        + [("kernel_share", "{:.0%}"), ("faults_per_step", "{:,.0f}")],
    }[what]
    a, b = rows[0].get("a", ""), rows[0].get("b", "")
    b = "TP" if what == "tp-cost" else b
    names = {"a_tokens_per_s": f"{a} tok/s", "b_tokens_per_s": f"{b} tok/s"}
    names |= {"c_tokens_per_s": f"{rows[0].get('c', '')} tok/s", "of_ceiling": f"{a} ÷ that"}
    names |= {"ratio": {"tp-cost": "time/token ratio", "eval": "speed-up"}.get(what, "ratio")}
    if what == "switch":
        names |= {"a_tokens_per_s": "with tok/s", "b_tokens_per_s": "without tok/s"}
        names |= {"ratio": "speed-up"}
    names |= {"a": "side", "a_setup_mb": "MB after set-up", "a_peak_mb": mb, "a_ppl": "tprop ppl"}
    names |= {"b_ppl": "plain ppl", "ppl_rel_diff": "ppl rel. diff", "h_steps": "H-steps k"}
    if what == "memory":
        names["a_tokens_per_s"] = "tok/s"
    names |= {"tuned": "malloc settings", "ms_per_step": "ms/step", "python_share": "Python"}
    names |= {f"{b}_share": b for b in ("decoder", "recurrence", "optimizer")}
    names |= {"kernel_share": "kernel (sys) time", "faults_per_step": "page faults/step"}
    lines = ["| " + " | ".join(names.get(c, c) for c, _ in cols) + " |"]
    lines.append("|" + "---|" * len(cols))
    for r in rows:
        lines.append("| " + " | ".join(f.format(r[c]) for c, f in cols) + " |")
    return lines


def run(ns: argparse.Namespace) -> int:
    _check(ns)
    ns.dataset = ns.dataset or ("wikitext-2" if ns.what == "eval" else "ptb")
    from tprop.data import load_corpus

    load_corpus(ns.dataset, ns.data_dir)  # a missing dataset: one line here, not per side
    rows = BENCHES[ns.what](ns)
    info = machine()
    if ns.json:
        for r in rows:
            print(json.dumps({"bench": ns.what, **r, **info}))
        return 0
    how = {
        "memory": "each side alone in its process, one round",
        "profile": f"{ns.steps} steps timed, then profiled, after a warm-up; a process each",
    }.get(ns.what, f"medians of {ns.rounds} alternating rounds after {ns.warmup} warm-up")
    print(
        f"tprop bench {ns.what}: {ns.dataset}, torch {info['torch']}, {info['cpu']}, "
        f"{ns.threads or info['threads']} threads, device {ns.device}; {how}"
        + "".join(f"; tprop {k}={v}" for k, v in ns.settings.items())
        + "\n"
    )
    print("\n".join(table(ns.what, rows)))
    return 0
