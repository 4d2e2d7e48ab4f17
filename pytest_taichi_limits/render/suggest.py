"""`--taichi-limits-suggest`: the marker each test should carry, from what it used.

Headroom and rounding (each figure is what the supervisor measured for the test):

| key    | suggested value                                   | rounded up to      |
|--------|---------------------------------------------------|--------------------|
| mem_mb | 1.5 x own memory + 64 MiB                         | a multiple of 32   |
| cpu_s  | 2 x CPU seconds + 2 s                             | a whole second     |
| wall_s | 3 x wall seconds + 10 s                           | a multiple of 5    |
| gpu_gb | 1.25 x GPU peak + 0.25 GiB (only where measured)  | a multiple of 0.25 |
| leak_mb| 4 x own memory's growth per round + 0.25 MiB      | a multiple of 0.25 |
|        | (only where the test hunted leaks and did not leak)|                    |

The fixed part keeps a test that uses almost nothing from failing on noise; the factor leaves room
for slower or busier machines (CPU and wall time vary far more between machines than memory).
The ini snippet takes the largest suggestion of every key, so every measured test fits under it.
A test that failed, or grew beyond the baseline, gets its marker commented out and says so: its
figure (cut short, or a leak) is no budget to paste, and it is left out of the ini snippet.
leak_mb's factor is the widest: a growth per round of a few KiB is noise, and noise varies more
than a peak. The ini snippet names leak_mb only when every test in it hunted leaks (the key
switches leak hunting on for every supervised test).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ..config.budget import BUDGET_KEYS, MARKER_NAME, check_value
from ..config.units import GIB, MIB
from ..formats.baseline import amount
from ..model.records import UsageRecord
from . import leaks as leak_text

#: key: (factor, fixed addition in the key's unit, rounding step in the key's unit)
HEADROOM: dict[str, tuple[float, float, float]] = {
    "mem_mb": (1.5, 64.0, 32.0),
    "cpu_s": (2.0, 2.0, 1.0),
    "wall_s": (3.0, 10.0, 5.0),
    "gpu_gb": (1.25, 0.25, 0.25),
    "leak_mb": (4.0, 0.25, 0.25),
}


def _round_up(value: float, step: float) -> float:
    rounded = math.ceil(value / step - 1e-9) * step
    return float(f"{rounded:.6g}")


def _suggest(key: str, measured: float) -> float:
    factor, fixed, step = HEADROOM[key]
    value = _round_up(measured * factor + fixed, step)
    return check_value(key, value)  # the suggestion itself must be a valid marker value


@dataclass(frozen=True)
class Suggestion:
    nodeid: str
    values: dict[str, float]  # budget key -> suggested limit
    measured: str  # what it was derived from, for a person
    lower_bound: bool  # the test failed: its peaks were cut short
    #: Why this is no value to paste ("" where it is): the test failed, or grew beyond the
    #: baseline (a leak's figure would become its budget).
    caution: str = ""

    def marker(self) -> str:
        arguments = ", ".join(f"{key}={_number(value)}" for key, value in self.values.items())
        return f"@pytest.mark.{MARKER_NAME}({arguments})"


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def suggestion_for(record: UsageRecord) -> Suggestion:
    values = {
        "mem_mb": _suggest("mem_mb", record.own_memory_bytes / MIB),
        "cpu_s": _suggest("cpu_s", record.cpu_s),
        "wall_s": _suggest("wall_s", record.wall_s),
    }
    gpu_text = "GPU not measured"
    if record.gpu_peak_bytes is not None:
        values["gpu_gb"] = _suggest("gpu_gb", record.gpu_peak_bytes / GIB)
        gpu_text = f"GPU {record.gpu_peak_bytes / MIB:.1f} MiB"
    measured = (
        f"measured own memory {record.own_memory_bytes / MIB:.1f} MiB, CPU "
        f"{record.cpu_s:.2f} s, wall {record.wall_s:.2f} s, {gpu_text}"
    )
    growth = _leak_growth(record)
    if growth is not None:
        values["leak_mb"] = _suggest("leak_mb", growth / MIB)
        measured += f", own memory {amount(growth, 'bytes', signed=True)} per round"
    return Suggestion(
        record.nodeid,
        values,
        measured,
        lower_bound=record.outcome in ("failed", "error"),
        caution=_caution(record),
    )


def _leak_growth(record: UsageRecord) -> float | None:
    """Own memory's growth per round where the test hunted leaks, all its rounds ran, and it
    did not leak (a leak's growth is no allowance; memory given back is no growth)."""
    leaks = record.leaks
    if leaks is None or not leaks.judged or leaks.leaking:
        return None
    growth = leaks.growth_bytes_per_round
    return None if growth is None else max(0.0, growth)


def _caution(record: UsageRecord) -> str:
    leaks = record.leaks
    if leaks is not None and leaks.leaking:
        return (
            f"it LEAKED ({leak_text.summary(leaks)}): find the leak before taking its growth "
            "for an allowance"
        )
    regression = record.regression
    if regression is not None and regression.exceeded:
        grown = "; ".join(
            f"{growth.words} {amount(growth.before, growth.kind)} -> "
            f"{amount(growth.after, growth.kind)}"
            for growth in regression.exceeded
        )
        return (
            f"it GREW beyond the baseline ({grown}): find what grew before raising its budget to it"
        )
    if record.outcome in ("failed", "error"):
        why = f" ({record.reason})" if record.reason else ""
        return (
            f"it {record.outcome.upper()}{why}: its peaks were cut short; make it pass before "
            "taking its figures for a budget"
        )
    return ""


def suggestions(records: Iterable[UsageRecord]) -> list[Suggestion]:
    """One per test that ran its body (a test skipped in setup measured nothing)."""
    return [suggestion_for(record) for record in records if record.measured]


def lines(found: list[Suggestion]) -> list[str]:
    """Marker lines (valid Python: the marker, then a comment naming the test), an ini snippet."""
    if not found:
        return []
    out = [
        (
            "suggested budgets (headroom: mem 1.5x+64 MiB, cpu 2x+2 s, wall 3x+10 s, gpu "
            "1.25x+0.25 GiB, leak 4x+0.25 MiB per round; rounded up):"
        )
    ]
    for suggestion in found:
        line = f"{suggestion.marker()}  # {suggestion.nodeid} ({suggestion.measured})"
        if suggestion.caution:
            # Commented out: a failed or grown test's figure is no value to paste.
            line = f"# {line}: not a value to paste: {suggestion.caution}"
        out.append(line)
    fitting = [suggestion for suggestion in found if not suggestion.caution]
    if not fitting:
        out.append(
            "no suite-wide defaults: every measured test failed or grew, so none of their "
            "figures is a budget"
        )
        return out
    out.append(
        "suite-wide defaults every measured test that passed fits under (pytest.ini; in "
        "pyproject.toml under [tool.pytest.ini_options] as strings):"
    )
    out.append("[pytest]")
    for key in BUDGET_KEYS:
        values = [s.values[key] for s in fitting if key in s.values]
        if key == "leak_mb" and len(values) < len(fitting):
            continue  # it would switch leak hunting on for tests that never hunted
        if values:
            out.append(f"taichi_limits_{key} = {_number(max(values))}")
    return out
