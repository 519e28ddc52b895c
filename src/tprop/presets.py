"""Presets and `resolve`: validation and every preset- or method-dependent value, in one place.

A preset is only a set of values for named switches of `tprop.config.Config`; an explicit
setting wins. The resolved config is what a run saves to ``config.json``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from tprop.config import Config, ConfigError, _constraints, field_specs
from tprop.methods import METHODS

# A preset is a set of values for the switches; every difference is a named field.
# See DESIGN.md "Two presets" and docs/design.md for what each switch means.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        layout="streams",
        z_init="chained",
        persist_u=True,
        persist_z=False,
        dual_placement="after_theta",
        loss_scale="sum",
        h_optim="adagrad",
        u_start_epoch=1,
        adagrad_eps=1e-10,
        h_eps=1e-10,
    ),
    "tprnn": dict(
        layout="adjacent",
        z_init="zero_start",
        persist_u=False,
        persist_z=False,
        dual_placement="before_theta",
        loss_scale="mean",
        h_optim="adagrad",
        u_start_epoch=3,
        adagrad_eps=1e-5,
        h_eps=1e-5,
    ),
}


def resolve(cfg: Config) -> Config:
    """Validate a config and fill every preset/method-dependent switch (the one place for it)."""
    _validate(cfg)
    specs, row = field_specs(), cfg.row
    if not row.blocked:
        set_tp = [n for n, f in specs.items() if f.tp and getattr(cfg, n) != f.default]
        if set_tp:
            raise ConfigError(
                f"--{set_tp[0].replace('_', '-')} applies to pm/admm/alm, not --method bptt; "
                "drop it or choose a target-propagation method"
            )
        eps = 1e-10 if cfg.adagrad_eps is None else cfg.adagrad_eps
        return dataclasses.replace(cfg, adagrad_eps=eps)

    if not row.duals and cfg.u_lr:
        raise ConfigError(
            f"--u-lr sets the dual step, but {cfg.method} has no duals; use --method admm"
        )
    if row.joint and cfg.h_steps < 1:
        raise ConfigError(
            f"{cfg.method} takes --h-steps joint (Z, θ) steps, so it needs --h-steps >= 1"
        )
    if row.joint and cfg.theta_steps != 1:
        raise ConfigError(
            f"{cfg.method} steps θ jointly with Z (--h-steps times); drop --theta-steps"
        )

    fill = dict(PRESETS[cfg.preset])
    if cfg.full_batch:
        # Batch mode: dataset-sized Z and U kept across epochs, under either preset. (The
        # released code zeroes both every epoch; --no-persist-z --no-persist-u reproduce that.)
        fill["persist_z"] = fill["persist_u"] = True
    if cfg.preset == "tprnn" and cfg.z_init == "zero":
        fill["dual_placement"] = "before_h"  # the code's placement without -mb_init
    if row.duals:
        fill["u_lr"] = 0.1
    else:
        fill["u_lr"], fill["dual_placement"], fill["persist_u"] = 0.0, "after_theta", False
    updates = {k: v for k, v in fill.items() if getattr(cfg, k) is None}
    out = dataclasses.replace(cfg, **updates)
    if out.persist_z and out.z_init == "zero_start" and not out.full_batch:
        raise ConfigError(
            "--persist-z keeps Z across epochs, which --z-init zero_start "
            "contradicts (it re-zeroes z_S); use --z-init chained"
        )
    _refuse_idle_duals(out)
    _refuse_unread_settings(out, specs)
    return out


def _refuse_unread_settings(cfg: Config, specs: dict[str, Any]) -> None:
    """A constraint setting given for a constraint that does not read it is a mistake."""
    reads = _constraints()[cfg.constraint].settings
    for name in ("kl_weight", "kl_direction"):
        if name not in reads and getattr(cfg, name) != specs[name].default:
            raise ConfigError(
                f"--{name.replace('_', '-')} applies to --constraint kl or l2+kl, not "
                f"{cfg.constraint}; drop it or choose such a constraint"
            )


def _refuse_idle_duals(cfg: Config) -> None:
    """A dual method whose duals can never enter a loss is the penalty method in disguise:
    refuse it in one line rather than run PM under another name."""
    if not cfg.row.duals or not cfg.u_lr:
        return  # u-lr 0 is PM on purpose (a test identity)
    if not _constraints()[cfg.constraint].duals:
        raise ConfigError(
            f"{cfg.method} with --constraint {cfg.constraint} is the penalty method: that "
            f"constraint has no dual term; use --method pm, or --constraint l2+kl"
        )
    fix = "use another --dual-placement, --persist-u/--persist-z, or --method pm"
    if cfg.dual_placement == "after_theta" and not cfg.persist_u:
        raise ConfigError(
            f"{cfg.method} with --dual-placement after_theta and --no-persist-u is "
            f"the penalty method: u is stepped after the last loss of the step and "
            f"then dropped; {fix}"
        )
    # A fresh chained Z has z_{j+1} = e_j exactly: the residual is 0 until the H-steps move
    # Z or a θ-step moves e, so a dual step before either never moves u.
    fresh_chain = cfg.z_init == "chained" and not cfg.persist_z
    if fresh_chain and (
        cfg.dual_placement == "before_h"
        or (cfg.dual_placement == "before_theta" and cfg.h_steps == 0 and not cfg.row.joint)
    ):
        when = "before the H-steps" if cfg.dual_placement == "before_h" else "with no H-steps"
        raise ConfigError(
            f"{cfg.method} with --z-init chained and a dual step {when} is the "
            f"penalty method: the dual step sees z_(j+1) = e_j exactly, so u never "
            f"moves; {fix}"
        )


# Numeric settings and the range each must lie in: (low, low allowed?, high), where high
# bounds the absurd (a typo of a few digits) rather than the possible.
_BOUNDS: dict[str, tuple[float, bool, float]] = {
    **{k: (1, True, math.inf) for k in ("eval_batch_size", "eval_bptt", "theta_steps")},
    "hidden": (1, True, 1 << 16),
    "layers": (1, True, 64),
    "bptt": (1, True, 1 << 20),
    "block_size": (1, True, 1 << 20),
    "batch_size": (1, True, 1 << 24),
    "epochs": (1, True, 1 << 20),
    "nproc": (1, True, 1 << 12),
    "dist_timeout": (0, False, math.inf),
    **{
        k: (0, True, math.inf)
        for k in (
            "emb",
            "chunk_tokens",
            "train_limit",
            "eval_limit",
            "patience",
            "h_steps",
            "max_ppl",
            "checkpoint_every",
            "rows_per_step",
            "lam",
            "clip",
            "u_lr",
            "kl_weight",
        )
    },
    "lr": (0, False, math.inf),
    "h_lr": (0, False, math.inf),
    "lr_shrink": (1, True, math.inf),
    "u_start_epoch": (1, True, math.inf),
    # ε = 0 would divide 0 by 0 wherever a gradient is 0 (Adagrad divides by √G + ε)
    "adagrad_eps": (0, False, math.inf),
    "h_eps": (0, False, math.inf),
}


def _validate(cfg: Config) -> None:
    for name, (lo, closed, hi) in _BOUNDS.items():
        v = getattr(cfg, name)
        flag = "--" + name.replace("_", "-")
        if v is None:
            continue  # filled by the preset
        if not math.isfinite(v) or v < lo or (v == lo and not closed):
            must = f">= {lo}" if closed else "a positive number"
            why = ": Adagrad divides by √G + ε, and G is 0 wherever a gradient is 0"
            raise ConfigError(f"{flag} must be {must} (got {v}){why if 'eps' in name else ''}")
        if v > hi:
            raise ConfigError(f"{flag} = {v} is absurdly large (limit {hi})")
    if cfg.method not in METHODS:
        raise ConfigError(f"--method {cfg.method!r} is not one of {', '.join(METHODS)}")
    if cfg.constraint not in _constraints():
        raise ConfigError(
            f"--constraint {cfg.constraint!r} is not one of {', '.join(_constraints())}"
        )
    if cfg.overwrite and cfg.resume:
        raise ConfigError("--overwrite and --resume contradict each other; choose one")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise ConfigError(f"--device {cfg.device!r} is not auto, cpu, cuda or cuda:N")
    if cfg.precision == "bf16" and cfg.dtype == "float64":
        raise ConfigError(
            "--precision bf16 runs float32 parameters' matmuls in bfloat16; with --dtype "
            "float64 use --precision fp32"
        )
