"""The flags of `tprop sweep` read into values: --time-limit durations, --seeds, --set and
--filter (which runs of a grid to keep, and a note when a filter keeps more than it seems to)."""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from tprop import grids
from tprop.config import Config, field_types
from tprop.grids import GridError, Run


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def parse_duration(text: str | None) -> float | None:
    """'90' (seconds), '90s', '50m', '2h', '1h30m' → seconds (None: no limit). Every part of a
    compound duration takes its unit: '1h30' is refused rather than read as 1 h 30 s."""
    if text is None:
        return None
    number = r"(\d+(?:\.\d*)?)"
    bare = re.fullmatch(number, text.strip())
    parts = bare or re.fullmatch(rf"(?:{number}h)?(?:{number}m)?(?:{number}s)?", text.strip())
    if parts is None or not any(parts.groups()):
        raise GridError(
            f"--time-limit {text!r}: give a duration such as 90s, 50m, 2h or 1h30m "
            "(a bare number is seconds)"
        )
    values = [float(x) if x else 0.0 for x in parts.groups()]
    seconds = values[0] if bare else 3600 * values[0] + 60 * values[1] + values[2]
    if seconds <= 0:
        raise GridError(f"--time-limit {text!r}: must be more than 0")
    return seconds


def parse_literal(text: str) -> Any:
    """A TOML literal (2, 0.1, true, "x") or else the text itself."""
    from tprop.grids import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


MAX_SEED_COUNT = 20


def parse_seeds(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    if text is None:
        return default
    try:
        if "," in text:
            seeds = tuple(int(s) for s in text.split(",") if s.strip())
        else:
            count = int(text)
            if count > MAX_SEED_COUNT:  # `--seeds 42` meant the seed, not 42 runs a cell
                raise GridError(
                    f"--seeds {text} is a count of {count} seeds per cell; for the one seed "
                    f"{text} write --seeds {text}, (a comma list)"
                )
            seeds = tuple(1111 * k for k in range(1, count + 1))
    except ValueError:
        raise GridError(f"--seeds {text!r}: give a count (3) or a comma list (1111,2222)") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise GridError(f"--seeds {text!r}: need at least one seed and no repeats")
    return seeds


def parse_set(items: list[str], runs: list[Run]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    axes = {k for r in runs for k in r.axes}
    for item in items:
        key, value = parse_setting(item)
        if key in grids.RUN_CONTROL:
            raise GridError(
                f"--set {key}: the sweep sets it; use --seeds/--out/--data-dir/--device"
            )
        if key in axes:
            raise GridError(
                f"--set {key}: the grid's groups set it (it names the runs); choose among its "
                f"values with --filter {key}=…, or write the grid out with --show, edit it "
                "and run the file"
            )
        out[key] = value
    return out


def parse_setting(item: str) -> tuple[str, Any]:
    """``--set KEY=VALUE`` → (the `tprop train` setting, its value as TOML would read it)."""
    key, sep, value = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or key not in field_types():
        raise GridError(
            f"--set {item!r}: expected KEY=VALUE with KEY a `tprop train` "
            "setting (see `tprop train --help`)"
        )
    return key, parse_literal(value.strip())


def _filter_key(cond: str) -> str | None:
    """The setting a ``KEY=V[,V…]`` filter names; None for a name pattern."""
    key, sep, _ = cond.partition("=")
    return key.strip().replace("-", "_") if sep else None


def _matches(run: Run, cond: str, defaults: dict[str, Any]) -> bool:
    key = _filter_key(cond)
    if key is None:
        return fnmatch.fnmatchcase(run.name, cond)
    if key not in defaults:
        raise GridError(f"--filter {cond!r}: '{key}' is not a `tprop train` setting")
    have = run.values.get(key, defaults[key])
    wanted = [parse_literal(v.strip()) for v in cond.partition("=")[2].split(",")]
    return any(_same(have, w) for w in wanted)


def _same(have: Any, want: Any) -> bool:
    if isinstance(have, bool) or isinstance(want, bool):
        return have is want
    return have == want  # 1 == 1.0


def select(runs: list[Run], filters: list[str]) -> tuple[list[Run], list[str]]:
    """The runs every filter keeps, and notes on what the filters did (`defaulted_notes`)."""
    defaults = {**Config().to_dict(), "seed": None}
    kept = [r for r in runs if all(_matches(r, f, defaults) for f in filters)]
    if not kept:
        raise GridError(
            f"--filter {' '.join(filters)} keeps none of the {plural(len(runs), 'run')}"
        )
    return kept, defaulted_notes(runs, kept, filters, defaults)


def defaulted_notes(
    runs: list[Run], kept: list[Run], filters: list[str], defaults: dict[str, Any]
) -> list[str]:
    """A KEY=V filter on a setting BPTT does not use keeps BPTT runs by its default value, which
    reads like a filter that drops them: one line a filter that does (none if a method filter
    already chose the methods), with a name pattern to use instead when the grid has one."""
    if any(_filter_key(f) == "method" for f in filters):
        return []
    method = defaults["method"]
    bptt = [r for r in kept if r.values.get("method", method) == "bptt"]
    notes = []
    for cond in filters:
        key = _filter_key(cond)
        if key not in grids.tp_only():
            continue
        via_default = [r for r in bptt if key not in r.values]
        if not via_default:
            continue
        how = "keeps only" if len(via_default) == len(kept) else "also keeps"
        pattern = f"*[BK]{defaults[key]}_*"  # Table 1: admm_B20_…, bptt_K20_…
        hint = (
            f", or select by name: --filter '{pattern}'"
            if key == "block_size"
            and cond.partition("=")[2].strip() == str(defaults[key])  # one column only
            and any(fnmatch.fnmatchcase(r.name, pattern) for r in runs)
            else ""
        )
        notes.append(
            f"note: --filter {cond} {how} {plural(len(via_default), 'BPTT run')}: {key} does not "
            f"apply to BPTT and its default is {defaults[key]}; add --filter method=… to choose "
            f"the methods{hint}"
        )
    return notes
