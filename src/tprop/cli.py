"""`tprop` subcommands: train, eval, data (list | fetch | verify), demo.

`train` flags are generated from the fields of `tprop.config.Config` (one flag per field, its
help text from the field). ``--config FILE.toml`` fills the same fields; flags given on the
command line override the file.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path
from typing import Any

from tprop import __version__
from tprop.config import Config, ConfigError, build, field_help, field_types, load_toml, resolve


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line and exit 2, not a usage dump."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"tprop: error: {message} (see `{self.prog} --help`)\n")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    helps, types = field_help(), field_types()
    defaults = Config().to_dict()
    for name, tp in types.items():
        flag = "--" + name.replace("_", "-")
        default = "set by preset/method" if defaults[name] is None else defaults[name]
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS,
                              "help": f"{helps[name]} [default: {default}]"}
        args = [tp] if typing.get_origin(tp) is typing.Literal else (
            [a for a in typing.get_args(tp) if a is not type(None)] or [tp])
        literals = [v for a in args for v in (typing.get_args(a)
                    if getattr(a, "__origin__", None) is typing.Literal else ())]
        if tp is bool or args == [bool]:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif literals:
            p.add_argument(flag, choices=literals, metavar="|".join(literals), **kw)
        else:
            base = next(a for a in args if a in (int, float, str))
            p.add_argument(flag, type=base, metavar=base.__name__.upper(), **kw)


def config_from_args(ns: argparse.Namespace) -> Config:
    """Resumed run's config.json (with --resume), then the TOML file, then the flags given."""
    flags = {k: v for k, v in vars(ns).items() if k in field_types()}
    values: dict[str, Any] = {}
    saved = Path(flags.get("out") or "") / "config.json"
    if flags.get("resume") and saved.is_file():
        try:
            values = json.loads(saved.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"--resume: cannot read {saved} ({e}); pass the run's flags "
                              "explicitly") from None
        # run-control flags of the original invocation do not carry over
        values = {k: v for k, v in values.items()
                  if k in field_types() and k not in ("overwrite", "resume")}
    if getattr(ns, "config", None):
        values.update(load_toml(ns.config))
    values.update(flags)
    return resolve(build(values))


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tprop", description="Blocked target propagation and truncated BPTT for "
                "recurrent language models (Wiseman et al. 2017).")
    p.add_argument("--version", action="version", version=f"tprop {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train one run into a run folder",
                       description="Train one run. Every flag can also be set in a TOML file "
                       "given with --config; flags override the file.")
    t.add_argument("--config", help="TOML file with settings (flat keys or tables)")
    _add_config_flags(t)

    e = sub.add_parser("eval", help="perplexity of a saved run on a split")
    e.add_argument("--checkpoint", required=True, help="path to a run's checkpoint.pt")
    e.add_argument("--split", choices=["train", "valid", "test"], default="test",
                   help="which split to score")
    e.add_argument("--weights", choices=["best", "last"], default="best",
                   help="best-validation weights or those of the last epoch")
    e.add_argument("--data-dir", help="folder holding <dataset>/ files")
    e.add_argument("--batch-size", type=int, help="evaluation streams (default: the run's)")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda")

    m = sub.add_parser("demo", help="the quick tour: BPTT and ADMM on a slice of the shipped "
                       "WikiText-2, a few minutes on 2 CPU cores")
    m.add_argument("--out", default="runs/demo", help="folder for the two run folders")
    m.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="replace existing demo runs")
    m.add_argument("--device", default="auto", help="auto | cpu | cuda")
    m.add_argument("--train-limit", type=int, default=DEMO["train_limit"],
                   help="training tokens of WikiText-2 to use")
    m.add_argument("--eval-limit", type=int, default=DEMO["eval_limit"],
                   help="validation/test tokens to use")
    m.add_argument("--epochs", type=int, default=DEMO["epochs"], help="epochs per method")
    for name in PLUGGED:
        import importlib

        importlib.import_module(f"tprop.{name}").add_parser(sub)
    return p


# Modules that add their own subcommand: each has `add_parser(sub)`, which registers the
# subparser with `set_defaults(handler=run)`, where `run(ns) -> int` is the exit code.
PLUGGED: tuple[str, ...] = ("data.commands", "sweep", "report", "plot")


DEMO = dict(dataset="wikitext-2", hidden=100, batch_size=32, lr=0.1, epochs=2,
            train_limit=100_000, eval_limit=20_000)


def _demo(ns: argparse.Namespace) -> int:
    from tprop.train import train

    results = {}
    for name, extra in [("bptt", dict(method="bptt", bptt=20)),
                        ("admm", dict(method="admm", block_size=20, h_steps=1, h_lr=0.001))]:
        cfg = resolve(build({**DEMO, **extra, "out": f"{ns.out}/{name}",
                             "overwrite": ns.overwrite, "device": ns.device,
                             "train_limit": ns.train_limit, "eval_limit": ns.eval_limit,
                             "epochs": ns.epochs}))
        results[name] = train(cfg)
    print(f"\ndemo: WikiText-2 (shipped), first {ns.train_limit:,} training tokens, GRU 100, "
          f"{ns.epochs} epochs; valid = first {ns.eval_limit:,} validation tokens")
    for name, s in results.items():
        print(f"  {name:5s} best valid ppl {s['best_valid_ppl']:8.2f}  "
              f"({s['train_tokens_per_s']:,.0f} train tok/s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from tprop.checkpoint import CheckpointError
    from tprop.data import DataError
    from tprop.train import Diverged, Interrupted, RunError

    try:
        ns = parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a bad flag (already reported in one line)
        return int(e.code or 0)
    try:
        if ns.command == "train":
            from tprop.train import train

            train(config_from_args(ns))
        elif ns.command == "eval":
            from tprop.train import evaluate_checkpoint

            if ns.batch_size is not None and ns.batch_size < 1:
                raise ConfigError(f"--batch-size must be >= 1 (got {ns.batch_size})")
            r = evaluate_checkpoint(ns.checkpoint, ns.split, ns.weights, ns.data_dir,
                                    ns.batch_size, ns.device)
            print(f"{r['split']} ppl {r['ppl']:.2f} | bits/token {r['bits']:.4f} | "
                  f"{r['tokens']:,} tokens | {r['weights']} weights (epoch {r['epoch']})")
            print(json.dumps(r))
        elif ns.command == "demo":
            return _demo(ns)
        else:
            return ns.handler(ns)
    except Interrupted as e:
        print(f"tprop: stopped: {e}", file=sys.stderr)
        return e.code
    except Diverged as e:
        print(f"tprop: error: {e}", file=sys.stderr)
        return 3
    except (ConfigError, DataError, RunError, CheckpointError) as e:
        print(f"tprop: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a full disk while writing metrics
        where = f" {e.filename}" if e.filename else ""
        print(f"tprop: error: cannot write or read{where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tprop: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
