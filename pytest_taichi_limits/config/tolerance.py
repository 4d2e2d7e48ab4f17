"""The baseline tolerance (`--taichi-limits-tolerance`): how much each resource may grow.

A spec is comma-separated KEY=SPEC, each key at most once, SPEC a relative part plus an absolute
one (`mem=10%+16MiB`), or `off` (not compared). Amounts are read by config/units.py, like every
other option's. formats/baseline.py applies a Tolerance to a baseline's ranges.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .units import (
    BYTE_UNITS,
    BYTE_UNITS_TEXT,
    SECOND_UNITS,
    SECOND_UNITS_TEXT,
    UnitError,
    spec_bytes,
    spec_seconds,
    split_amount,
)

#: Compared resources: tolerance key -> the kind of amount its absolute part is.
KINDS: dict[str, str] = {
    "mem": "bytes",
    "cpu": "seconds",
    "wall": "seconds",
    "gpu": "bytes",
    "leak": "bytes",  # own memory's growth per measured round, where a test hunts leaks
}

#: Defaults, chosen from run-to-run noise measured on examples/within_budget (README, "Baselines"):
#: own memory varied by at most 0.2 MiB over 10 runs with a warm Taichi kernel cache and 4.9 MiB
#: with a cold one, so 16 MiB of slack is over 3x the noise; 10% scales it for big tests (and
#: also covers warm-vs-cold, 13-19 MiB, on the examples). CPU and wall time vary far more on a
#: shared CI runner than memory does: CPU gets a wide margin and wall time is not compared.
#: Leak hunting's growth per round varies by tens of KiB in a test that frees what it allocates
#: (the heap is trimmed before each reading, docs/leaks.md): 256 KiB is ten times that, so a
#: commit that starts leaking a quarter MiB per round fails the compare under leak_mb=1.
DEFAULT_TOLERANCE_SPEC = "mem=10%+16MiB,cpu=50%+1s,wall=off,gpu=10%+64MiB,leak=50%+256KiB"


class ToleranceError(ValueError):
    """A tolerance spec the plugin cannot use; the message says why and what is accepted."""


@dataclass(frozen=True)
class Allowance:
    """How much one resource may grow: relative (0.1 = 10%) plus an absolute slack."""

    relative: float
    absolute: float  # bytes or seconds
    kind: str  # "bytes" or "seconds"

    def limit(self, before: float) -> float:
        return before * (1.0 + self.relative) + self.absolute

    def describe(self) -> str:
        parts = []
        if self.relative:
            parts.append(f"{self.relative * 100:g}%")
        if self.absolute or not parts:
            writer = spec_seconds if self.kind == "seconds" else spec_bytes
            parts.append(writer(self.absolute))
        return "+".join(parts)


@dataclass(frozen=True)
class Tolerance:
    """An Allowance per compared resource; None: that resource is not compared."""

    allowances: Mapping[str, Allowance | None]

    def describe(self) -> str:
        return ",".join(
            f"{key}={'off' if value is None else value.describe()}"
            for key, value in self.allowances.items()
        )


def _help(problem: str) -> str:
    return (
        f"{problem}. A tolerance is comma-separated KEY=SPEC with KEY one of "
        f"{', '.join(KINDS)}, each at most once, and SPEC like 10%+8MiB, 25%+0.5s, 5% "
        f"or off (default {DEFAULT_TOLERANCE_SPEC})"
    )


def _term(key: str, term: str) -> tuple[float, float]:
    """(relative, absolute) of one term: '10%' or '8MiB' or '0.5s'."""
    kind = KINDS[key]
    try:
        number, unit = split_amount(term)
    except UnitError:
        raise ToleranceError(_help(f"{key}: cannot read {term.strip()!r}")) from None
    if unit == "%":
        return number / 100.0, 0.0
    units: Mapping[str, float] = BYTE_UNITS if kind == "bytes" else SECOND_UNITS
    scale = units.get(unit.lower())
    if scale is None:
        shown = SECOND_UNITS_TEXT if kind == "seconds" else BYTE_UNITS_TEXT
        raise ToleranceError(_help(f"{key}: unit {unit!r} is not one of %, {shown}"))
    return 0.0, number * scale


def _parse_allowance(key: str, text: str) -> Allowance | None:
    if text.strip().lower() == "off":
        return None
    relative, absolute = 0.0, 0.0
    for term in text.split("+"):
        more_relative, more_absolute = _term(key, term)
        relative += more_relative
        absolute += more_absolute
    if not (math.isfinite(relative) and math.isfinite(absolute)):
        raise ToleranceError(_help(f"{key}: {text!r} is not a finite amount"))
    return Allowance(relative, absolute, KINDS[key])


def _parse_spec(spec: str) -> dict[str, Allowance | None]:
    allowances: dict[str, Allowance | None] = {}
    for part in spec.split(","):
        if not part.strip():
            raise ToleranceError(_help(f"{spec!r} has an empty item (a comma too many)"))
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in KINDS:
            raise ToleranceError(_help(f"{part.strip()!r} is not KEY=SPEC"))
        if key in allowances:
            raise ToleranceError(_help(f"{key} is given twice in {spec!r}"))
        allowances[key] = _parse_allowance(key, value)
    return allowances


def parse_tolerance(spec: str | None) -> Tolerance:
    """The defaults, with the keys `spec` names replaced. Raises ToleranceError."""
    allowances = _parse_spec(DEFAULT_TOLERANCE_SPEC)
    if spec is not None and spec.strip():
        allowances.update(_parse_spec(spec))
    return Tolerance(allowances)
