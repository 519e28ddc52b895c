"""The flags of `tprop sweep` read into values: --time-limit durations, --seeds, --set and
--filter (which runs of a grid to keep, and a note when a filter keeps more than it seems to)."""

from __future__ import annotations

import fnmatch
import re
import sys
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


def _matches(run: Run, cond: str, defaults: dict[str, Any]) -> bool:
    key, sep, values = cond.partition("=")
    if not sep:
        return fnmatch.fnmatchcase(run.name, cond)
    key = key.strip().replace("-", "_")
    if key not in defaults:
        raise GridError(f"--filter {cond!r}: '{key}' is not a `tprop train` setting")
    have = run.values.get(key, defaults[key])
    wanted = [parse_literal(v.strip()) for v in values.split(",")]
    return any(_same(have, w) for w in wanted)


def _same(have: Any, want: Any) -> bool:
    if isinstance(have, bool) or isinstance(want, bool):
        return have is want
    return have == want  # 1 == 1.0


def select(runs: list[Run], filters: list[str]) -> list[Run]:
    defaults = {**Config().to_dict(), "seed": None}
    kept = [r for r in runs if all(_matches(r, f, defaults) for f in filters)]
    if not kept:
        raise GridError(
            f"--filter {' '.join(filters)} keeps none of the {plural(len(runs), 'run')}"
        )
    _note_defaulted(kept, filters, defaults)
    return kept


def _note_defaulted(kept: list[Run], filters: list[str], defaults: dict[str, Any]) -> None:
    """A KEY=V filter on a setting BPTT does not use keeps BPTT runs by its default value:
    say so in one line, since it reads like a filter that drops them."""
    tp = grids.tp_only()
    for cond in filters:
        key = cond.partition("=")[0].strip().replace("-", "_")
        if "=" not in cond or key not in tp:
            continue
        bptt = [r for r in kept if r.values.get("method") == "bptt" and key not in r.values]
        if bptt:
            hint = (
                f", or select by name, e.g. --filter '*[BK]{defaults[key]}_*' for one "
                "Table 1 column"
                if key == "block_size"
                else ""
            )
            print(
                f"note: --filter {cond} also keeps {plural(len(bptt), 'BPTT run')}: {key} does "
                f"not apply to BPTT and its default is {defaults[key]}; add --filter "
                f"method=… to drop them{hint}",
                file=sys.stderr,
            )


# ---------------------------------------------------------------------------- plan
