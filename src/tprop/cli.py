"""`tprop` subcommands: train, eval, demo here; data, sweep, collect, report and more plug in.

Flags of Config settings are generated from the fields of `tprop.config.Config` (one flag per
field, its help text and default from the field); `train` has all of them, `eval` and `demo` the
few they need. ``--config FILE.toml`` fills the same fields; flags given on the command line
override the file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

from tprop import __version__
from tprop.config import ConfigError, build, field_specs, load_toml
from tprop.presets import resolve


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line and exit 2, not a usage dump."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"tprop: error: {message} (see `{self.prog} --help`)\n")


def add_config_flags(
    p: argparse.ArgumentParser,
    names: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
    shown: dict[str, str] | None = None,
) -> None:
    """One flag per Config field (all, or `names`), from its spec. `defaults` replace the
    field's default for this command; `shown` says how --help states a default."""
    defaults, shown = defaults or {}, shown or {}
    for name, spec in field_specs().items():
        if names is not None and name not in names:
            continue
        flag = "--" + name.replace("_", "-")
        default = defaults.get(name, spec.default)
        told = shown.get(name, spec.shown if name not in defaults else None)
        told = default if told is None else told
        suffix = f" [default: {told}]" if told not in ("", None) else ""
        kw: dict[str, Any] = {
            "dest": name,
            "help": spec.help + suffix,
            "default": default if name in defaults else argparse.SUPPRESS,
        }
        if spec.base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif spec.choices:
            p.add_argument(flag, choices=spec.choices, metavar="|".join(spec.choices), **kw)
        else:
            p.add_argument(flag, type=spec.base, metavar=spec.base.__name__.upper(), **kw)


def config_from_args(ns: argparse.Namespace) -> Any:
    """Resumed run's config.json (with --resume), then the TOML file, then the flags given."""
    specs = field_specs()
    flags = {k: v for k, v in vars(ns).items() if k in specs}
    values: dict[str, Any] = {}
    saved = Path(flags.get("out") or "") / "config.json"
    if flags.get("resume") and saved.is_file():
        try:
            values = json.loads(saved.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"--resume: cannot read {saved} ({e}); pass the run's flags explicitly"
            ) from None
        # run-control flags of the original invocation do not carry over
        values = {
            k: v for k, v in values.items() if k in specs and k not in ("overwrite", "resume")
        }
    if getattr(ns, "config", None):
        values.update(load_toml(ns.config))
    values.update(flags)
    return resolve(build(values))


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tprop",
        description="Blocked target propagation and truncated BPTT for "
        "recurrent language models (Wiseman et al. 2017).",
    )
    p.add_argument("--version", action="version", version=f"tprop {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    _add_eval(sub)
    _add_demo(sub)
    for name in PLUGGED:
        importlib.import_module(f"tprop.{name}").add_parser(sub)
    return p


def _add_train(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train one run into a run folder",
        description="Train one run. Every flag can also be set in a TOML file "
        "given with --config; flags override the file.",
    )
    t.add_argument("--config", help="TOML file with settings (flat keys or tables)")
    add_config_flags(t)
    t.set_defaults(handler=_train)


def _add_eval(sub) -> None:
    e = sub.add_parser("eval", help="perplexity of a saved run on a split")
    e.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN",
        help="a run folder, or the path of its checkpoint.pt",
    )
    e.add_argument(
        "--split",
        choices=["train", "valid", "test"],
        default="test",
        help="which split to score [default: test]",
    )
    e.add_argument(
        "--weights",
        choices=["best", "last"],
        default="best",
        help="best-validation weights or those of the last epoch [default: best]",
    )
    e.add_argument(
        "--limit",
        type=int,
        default=None,
        help="score only the first N tokens (0 = the whole split) [default: the "
        "run's --eval-limit for valid/test, its --train-limit for train]",
    )
    e.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="evaluation streams [default: the run's --eval-batch-size]",
    )
    t = e.add_argument_group(
        "test-time H-steps (paper §4; docs/generation.md)",
        "After a block is scored, take N steps (--tt-h-optim, step size --tt-h-lr) on its "
        "start state against its tokens, θ frozen; the next block starts from the end state "
        "that the refined state gives. N = 0 is plain evaluation.",
    )
    t.add_argument("--tt-h-steps", type=int, default=0, metavar="N", help="per block [default: 0]")
    t.add_argument("--tt-h-lr", type=float, default=0.01, metavar="LR", help="[default: 0.01]")
    t.add_argument(
        "--tt-h-optim", choices=["adagrad", "sgd"], default="adagrad", help="[default: adagrad]"
    )
    t.add_argument(
        "--tt-block", type=int, metavar="B", help="[default: the run's --block-size or --bptt]"
    )
    add_config_flags(
        e,
        ["data_dir", "device", "progress"],
        {"data_dir": None, "device": "auto", "progress": True},
        {"data_dir": "the run's --data-dir"},
    )
    e.set_defaults(handler=_eval)


def _add_demo(sub) -> None:
    m = sub.add_parser(
        "demo",
        help="the quick tour: BPTT and ADMM on a slice of the shipped "
        "WikiText-2, a few minutes on 2 CPU cores",
    )
    m.add_argument(
        "--out", default="runs/demo", help="folder for the two run folders [default: runs/demo]"
    )
    add_config_flags(
        m,
        ["overwrite", "resume", "device", "train_limit", "eval_limit", "epochs"],
        {
            "overwrite": False,
            "resume": False,
            "device": "auto",
            **{k: DEMO[k] for k in ("train_limit", "eval_limit", "epochs")},
        },
    )
    m.set_defaults(handler=_demo)


# Modules that add their own subcommand: each has `add_parser(sub)`, which registers the
# subparser with `set_defaults(handler=run)`, where `run(ns) -> int` is the exit code.
PLUGGED: tuple[str, ...] = (
    "data.commands",
    "sweep",
    "collect",
    "report",
    "plot",
    "generate",
    "bench",
)


def _train(ns: argparse.Namespace) -> int:
    from tprop.train import train

    cfg = config_from_args(ns)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.nproc > 1 and "LOCAL_RANK" not in os.environ:  # not yet a rank: start them
        from tprop.parallel import launch

        return launch(cfg.nproc, ns.argv)
    if cfg.nproc not in (1, world):
        raise ConfigError(
            f"--nproc {cfg.nproc}, but torchrun started {world} processes; leave --nproc at 1 "
            "under torchrun"
        )
    train(cfg)
    return 0


def _eval(ns: argparse.Namespace) -> int:
    from tprop.evaluate import TestTime, evaluate_checkpoint

    if ns.batch_size is not None and ns.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1 (got {ns.batch_size})")
    tt = TestTime(ns.tt_h_steps, ns.tt_h_lr, ns.tt_h_optim, ns.tt_block)
    r = evaluate_checkpoint(
        ns.checkpoint,
        ns.split,
        ns.weights,
        ns.data_dir,
        ns.batch_size,
        ns.device,
        ns.limit,
        show_progress=ns.progress,
        tt=tt,
    )
    scope = f"first {r['limit']:,} tokens" if r["limit"] else "whole split"
    told = (
        f" | test-time {r['tt_h_steps']} H-steps ({r['tt_h_optim']}, lr {r['tt_h_lr']:g}) "
        f"per {r['tt_block']}-token block"
        if "tt_h_steps" in r
        else ""
    )
    print(
        f"{r['split']} ppl {r['ppl']:.2f} | bits/token {r['bits']:.4f} | {r['tokens']:,} "
        f"tokens scored ({scope}) | {r['weights']} weights (epoch {r['epoch']}){told}"
    )
    print(json.dumps(r))
    return 0


DEMO = dict(
    dataset="wikitext-2",
    hidden=100,
    batch_size=32,
    lr=0.1,
    epochs=2,
    train_limit=100_000,
    eval_limit=20_000,
)
DEMO_RUNS = {  # ADMM at the best PTB point found, with dual steps from the first epoch
    "bptt": dict(method="bptt", bptt=20),
    "admm": dict(
        method="admm", block_size=20, h_steps=1, h_lr=0.001, lam=0.1, u_lr=0.1, u_start_epoch=1
    ),
}


def demo_config(name: str, ns: argparse.Namespace, **change: Any) -> Any:
    """The resolved config of one demo run (`change` overrides, e.g. for tests)."""
    values = {
        **DEMO,
        **DEMO_RUNS[name],
        "out": f"{ns.out}/{name}",
        "device": ns.device,
        "train_limit": ns.train_limit,
        "eval_limit": ns.eval_limit,
        "epochs": ns.epochs,
        "overwrite": ns.overwrite,
        **change,
    }
    return resolve(build(values))


def _demo(ns: argparse.Namespace) -> int:
    from tprop.train import train

    results = {}
    for name in DEMO_RUNS:
        run = Path(ns.out) / name
        if ns.resume and (run / "summary.json").is_file():
            results[name] = json.loads((run / "summary.json").read_text())  # finished: reuse
            continue
        resume = ns.resume and (run / "checkpoint.pt").is_file()
        results[name] = train(demo_config(name, ns, resume=resume))
    print(
        f"\ndemo: WikiText-2 (shipped), first {ns.train_limit:,} training tokens, GRU 100, "
        f"{ns.epochs} epochs; valid = first {ns.eval_limit:,} validation tokens"
    )
    for name, s in results.items():
        print(
            f"  {name:5s} best valid ppl {s['best_valid_ppl']:8.2f}  "
            f"({s['train_tokens_per_s']:,.0f} train tok/s)"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    from tprop.checkpoint import CheckpointError
    from tprop.data import DataError
    from tprop.parallel import Echo
    from tprop.run import Diverged, Interrupted, RunError

    importlib.import_module("tprop.alloc").tune()  # malloc thresholds for tensors (tprop.alloc)
    try:
        ns = parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a bad flag (already reported in one line)
        return int(e.code or 0)
    ns.argv = list(sys.argv[1:] if argv is None else argv)  # what `--nproc` hands its ranks
    rank = int(os.environ.get("RANK", "0"))  # ranks other than 0 leave the talking to rank 0
    try:
        code = ns.handler(ns)
        sys.stdout.flush()  # here, so a closed pipe is met inside this try
        return code
    except Echo:
        return 2
    except Interrupted as e:
        if not rank:
            print(f"tprop: stopped: {e}", file=sys.stderr)
        return e.code
    except Diverged as e:
        print(f"tprop: error: {e}", file=sys.stderr)
        return 3
    except (ConfigError, DataError, RunError, CheckpointError) as e:
        print(f"tprop: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tprop … | head`: the reader left; end quietly, like a Unix tool
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool ended by a closed pipe
    except OSError as e:  # e.g. a full disk while writing metrics
        where = f" {e.filename}" if e.filename else ""
        print(f"tprop: error: cannot write or read{where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tprop: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
