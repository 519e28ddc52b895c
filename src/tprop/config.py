"""One typed, frozen config for every run, and how it is filled from TOML and flags.

The CLI and TOML files are two ways to fill the same `Config`. Every field carries its help text
(`_f(default, help)`), which the CLI turns into flags. Fields whose default is ``None`` are
switches that a preset (or the method) fills in `resolve`; the resolved config is what a run
saves to ``config.json``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from tprop.methods import METHODS, MethodRow

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(Exception):
    """A bad setting; ``str(e)`` is one line naming the problem and the fix."""


def _f(
    default: Any,
    help: str,
    *,
    tp: bool = False,
    shown: str | None = None,
    choices: Callable[[], tuple[str, ...]] | None = None,
) -> Any:
    """A config field: its help text; ``tp`` marks a target-propagation-only switch; ``shown``
    is how `--help` states the default when the value alone would mislead (None = resolved);
    ``choices`` are the allowed values when they come from a table rather than a Literal."""
    meta = {"help": help, "tp": tp, "shown": shown, "choices": choices}
    return field(default=default, metadata=meta)


_PRESET = "from --preset"


def _datasets() -> dict[str, Any]:
    from tprop.data.registry import DATASETS  # no torch

    return DATASETS


def _constraints() -> dict[str, Any]:
    from tprop.objective import CONSTRAINTS  # torch; only when a constraint is looked up

    return CONSTRAINTS


@dataclass(frozen=True)
class Config:
    # --- data -------------------------------------------------------------------------------
    dataset: str = _f(
        "wikitext-2", "dataset (see `tprop data list`)", choices=lambda: tuple(_datasets())
    )
    data_dir: str | None = _f(
        None,
        "folder holding <dataset>/ files; when given it must hold them",
        shown="$TPROP_DATA_DIR, the cache, the shipped copy",
    )
    text8_split: str = _f(
        "99m-1m", "text8 split: 99m-1m | 90m-5m-5m | N,M[,K] characters of train, valid[, test]"
    )
    train_limit: int = _f(0, "use only the first N training tokens (0 = all; for demos/smoke)")
    eval_limit: int = _f(0, "use only the first N valid/test tokens (0 = all; for demos/smoke)")
    # --- model ------------------------------------------------------------------------------
    cell: Literal["gru", "lstm", "rnn"] = _f("gru", "recurrent cell (rnn = tanh Elman)")
    hidden: int = _f(100, "hidden size d")
    layers: int = _f(1, "number of recurrent layers")
    emb: int = _f(0, "embedding size (0 = hidden, as in the paper)")
    # --- method -----------------------------------------------------------------------------
    method: str = _f(
        "bptt",
        "bptt | pm (penalty) | admm | alm (augmented Lagrangian)",
        choices=lambda: tuple(METHODS),
    )
    bptt: int = _f(20, "K: truncated-BPTT window in tokens (method bptt)")
    block_size: int = _f(20, "B: block size in tokens (methods pm/admm/alm)", tp=True)
    batch_size: int = _f(32, "bptt: streams per window; pm/admm/alm: blocks per minibatch (S)")
    full_batch: bool = _f(False, "one θ update per pass over the training set (batch mode)")
    carry_across_epochs: bool = _f(
        False,
        "carry the last state of an epoch into the next (the "
        "released code does); else start each epoch from zero",
    )
    # --- θ optimiser ------------------------------------------------------------------------
    optim: Literal["adagrad", "sgd"] = _f("adagrad", "θ optimiser (sgd halves lr on a plateau)")
    lr: float = _f(0.1, "θ learning rate")
    clip: float = _f(0.5, "global L2-norm clip of the θ gradient (0 = off)")
    adagrad_eps: float | None = _f(
        None, "Adagrad ε for θ", shown="bptt 1e-10; pm/admm/alm " + _PRESET
    )
    lr_shrink: float = _f(2.0, "sgd: divide lr by this when validation does not improve")
    # --- schedule ---------------------------------------------------------------------------
    epochs: int = _f(10, "maximum number of epochs")
    patience: int = _f(3, "stop after this many epochs without validation improvement")
    max_ppl: float = _f(0.0, "stop when validation perplexity exceeds this (0 = off)")
    seed: int = _f(1111, "random seed (initialisation)")
    eval_batch_size: int = _f(10, "evaluation streams (state carried from zero)")
    eval_bptt: int = _f(200, "tokens per evaluation step (does not change the result)")
    # --- target propagation (pm/admm/alm) ---------------------------------------------------
    preset: Literal["paper", "tprnn"] = _f(
        "tprnn", "set of switches below: paper | tprnn (code)", tp=True
    )
    constraint: str = _f(
        "l2", "constraint between z_{j+1} and e_j", tp=True, choices=lambda: tuple(_constraints())
    )
    kl_weight: float = _f(1.0, "weight of the KL term (--constraint kl, l2+kl)", tp=True)
    kl_direction: Literal["forward", "reverse"] = _f(
        "forward", "KL(p(z_{j+1}) ‖ p(e_j)) | the reverse", tp=True
    )
    lam: float = _f(1.0, "λ: penalty weight (paper Eq. 7)", tp=True)
    u_lr: float | None = _f(None, "α_u: dual ascent step", tp=True, shown="0.1 for admm/alm")
    u_start_epoch: int | None = _f(
        None, "first epoch (1-based) with dual steps", tp=True, shown=_PRESET
    )
    h_steps: int = _f(1, "H-steps on Z per minibatch (alm: joint Z/θ steps); 0 allowed", tp=True)
    h_lr: float = _f(0.001, "H-step learning rate", tp=True)
    h_optim: Literal["adagrad", "sgd"] | None = _f(
        None, "H optimiser, fresh per minibatch", tp=True, shown=_PRESET
    )
    h_eps: float | None = _f(None, "Adagrad ε of the H optimiser", tp=True, shown=_PRESET)
    theta_steps: int = _f(1, "θ-steps per minibatch (pm/admm)", tp=True)
    layout: Literal["adjacent", "streams"] | None = _f(
        None,
        "minibatch: S adjacent blocks of one stretch | one block from each of S streams",
        tp=True,
        shown=_PRESET,
    )
    rows_per_step: int = _f(
        0,
        "R: consecutive blocks of each stream per minibatch (0 = the "
        "layout's: streams 1, adjacent --batch-size)",
        tp=True,
    )
    z_init: Literal["chained", "zero_start", "zero"] | None = _f(
        None,
        "Z init: chained forward | blocks run from zero (z_S = 0) | all zero",
        tp=True,
        shown=_PRESET,
    )
    z_first: Literal["free", "fixed"] = _f(
        "free", "first start state of a minibatch: free | fixed", tp=True
    )
    z_last: Literal["target", "none"] = _f(
        "target", "constraint after the last block of a minibatch: target | none", tp=True
    )
    persist_u: bool | None = _f(
        None, "keep U per block across minibatches/epochs", tp=True, shown=_PRESET
    )
    persist_z: bool | None = _f(
        None, "keep Z per block across epochs instead of re-init", tp=True, shown=_PRESET
    )
    dual_placement: Literal["before_h", "before_theta", "after_theta"] | None = _f(
        None, "when the dual step runs", tp=True, shown=_PRESET
    )
    loss_scale: Literal["sum", "mean"] | None = _f(
        None, "sum: Eq. 7 sums | mean: NLL/(B·S) + λ/(2S)·penalty", tp=True, shown=_PRESET
    )
    chunk_tokens: int = _f(
        0,
        "tokens per forward chunk (bounds the memory of a step); 0 = 16384 on a CPU, half "
        "the free memory on a GPU",
    )
    # --- run --------------------------------------------------------------------------------
    out: str | None = _f(None, "run folder to write (required)", shown="")
    overwrite: bool = _f(False, "replace an existing run folder")
    resume: bool = _f(
        False,
        "continue the run in --out from its checkpoint (its config.json "
        "is the base; flags given now override it)",
    )
    checkpoint_every: float = _f(
        10.0, "also checkpoint every N minutes within an epoch (0 = only at epoch ends)"
    )
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    nproc: int = _f(
        1,
        "processes on this machine: N > 1 starts N ranks through torch.distributed's launcher "
        "(block-parallel TP: each rank a share of a step's block rows; BPTT: of the streams). "
        "Under torchrun leave it at 1: torchrun sets the ranks",
    )
    dist_timeout: float = _f(
        60.0,
        "seconds a rank waits for the others in an exchange before it stops the run (a rank "
        "that dies is noticed at once; raise it if a sequential phase, such as batch mode's "
        "chained init on a large corpus, keeps ranks waiting longer)",
    )
    dtype: Literal["float32", "float64"] = _f("float32", "parameter and state dtype")
    deterministic: bool = _f(False, "use deterministic algorithms")
    flush_denormal: bool = _f(
        False,
        "CPU: treat subnormal floats as zero. A run that blows up (saturated units) can crawl "
        "on subnormal arithmetic, 10x slower; this keeps its speed, at the price of results "
        "that differ in the last bits from a run without it",
    )
    tf32: bool = _f(False, "allow TF32 matmuls on GPU (off for reproduction)")
    precision: Literal["fp32", "bf16"] = _f(
        "fp32",
        "bf16: the model's matmuls in bfloat16 autocast while training (θ, states, sums and "
        "evaluation stay in --dtype)",
    )
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = _f(
        "off",
        "torch.compile the decoder and its cross-entropy (reduce-overhead adds CUDA graphs "
        "on a GPU); the first steps wait for the compiler",
    )
    cross_entropy: Literal["fused", "autograd"] = _f(
        "fused",
        "the decoder and its softmax-cross-entropy as one autograd node that computes one "
        "softmax and reuses it for the gradient (fused), or F.linear + F.cross_entropy (autograd; "
        "always under --precision bf16 or --compile)",
    )
    optim_impl: Literal["auto", "for-loop", "foreach", "fused"] = _f(
        "auto",
        "the θ-optimiser's implementation in torch (auto: fused on a CPU or CUDA device, "
        "else torch's choice)",
    )
    progress: bool = _f(True, "show a progress bar")

    @property
    def row(self) -> MethodRow:
        """The method's row of `tprop.methods.METHODS`."""
        return METHODS[self.method]

    @property
    def is_btprop(self) -> bool:
        return self.row.blocked

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FieldSpec:
    """One Config field as the CLI and the TOML checker see it (the one place that unpacks
    ``Optional``/``Literal`` annotations)."""

    name: str
    base: type  # int | float | str | bool
    optional: bool  # None is a legal value (filled by `resolve`)
    choices: tuple[Any, ...] | None
    default: Any
    help: str
    shown: str | None  # how --help states the default, when the value would mislead
    tp: bool  # a switch of the target-propagation methods only


def field_types() -> dict[str, Any]:
    """Field name → annotation (for callers that only need the names)."""
    return get_type_hints(Config)


def field_specs() -> dict[str, FieldSpec]:
    hints = get_type_hints(Config)
    out = {}
    for f in fields(Config):
        tp = hints[f.name]
        args = [
            a
            for a in (get_args(tp) if get_origin(tp) is not Literal else ()) or [tp]
            if a is not type(None)
        ]
        literal = next((get_args(a) for a in args if get_origin(a) is Literal), None)
        choices = f.metadata["choices"]() if f.metadata["choices"] else literal
        base = type(choices[0]) if choices else args[0]
        out[f.name] = FieldSpec(
            f.name,
            base,
            type(None) in get_args(tp),
            choices,
            f.default,
            f.metadata["help"],
            f.metadata["shown"],
            f.metadata["tp"],
        )
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config; tables are flattened (``[model] hidden = 100`` → ``hidden``)."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the --config path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for k, v in items:
            flat[k.replace("-", "_")] = v
    return flat


def _check_type(value: Any, spec: FieldSpec) -> Any:
    """Validate one TOML value against its field (CLI values are parsed by argparse)."""
    name = spec.name
    if value is None:
        if spec.optional:
            return None
        raise ConfigError(f"{name} may not be empty")
    if spec.choices:
        if value not in spec.choices:
            raise ConfigError(
                f"{name} = {value!r} is not one of {', '.join(map(str, spec.choices))}"
            )
        return value
    if isinstance(value, bool) == (spec.base is bool):  # bool is an int: keep them apart
        if spec.base is float and isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, spec.base):
            return value
    raise ConfigError(
        f"{name} = {value!r} has the wrong type; expected "
        f"{spec.base.__name__}{' or nothing' if spec.optional else ''}"
    )


def build(values: dict[str, Any]) -> Config:
    """Make a Config from TOML/CLI values (unknown keys and wrong types are errors)."""
    specs = field_specs()
    clean = {}
    for k, v in values.items():
        if k not in specs:
            raise ConfigError(f"unknown setting '{k}'; see `tprop train --help` for the list")
        clean[k] = _check_type(v, specs[k])
    return Config(**clean)
