"""Leak hunting in words: the headline of a leak, its causes, and the figures after each round.

Read by the failure report (render/text.py), the usage section of a test that passed, the
terminal summary's "Leaks" block, Markdown and HTML. Memory in binary units per round, counts as
they are.
"""

from __future__ import annotations

from ..config.units import MIB, human_bytes
from ..model.leaks import SERIES_NAMES, SERIES_UNITS, Leaks, SeriesVerdict
from ..model.records import Violation

RESOURCE = "leak_mb"


def headline(violation: Violation) -> str:
    """'taichi_limits: leak: own memory +2.0 MiB/round, Taichi fields +1/round (allowance
    leak_mb=1)': what grew, by how much per round."""
    what = violation.detail or f"own memory +{human_bytes(violation.measured * MIB)}/round"
    return f"taichi_limits: leak: {what} (allowance {RESOURCE}={violation.limit:g})"


def used(violation: Violation) -> str:
    """The first figure that grew: 'own memory +2.0 MiB/round'."""
    return violation.detail.partition(", ")[0] or f"+{human_bytes(violation.measured * MIB)}/round"


def summary(leaks: Leaks) -> str:
    """Every figure that grew, by how much per round: 'own memory +2.0 MiB/round, Taichi
    fields +1/round'."""
    return ", ".join(f"{verdict.name} {amount(verdict)}" for verdict in leaks.leaking)


def amount(verdict: SeriesVerdict) -> str:
    """A figure's growth per round: '+2.0 MiB/round', '+1/round'."""
    sign = "+" if verdict.slope >= 0 else "-"
    if verdict.unit == "bytes":
        return f"{sign}{human_bytes(abs(verdict.slope))}/round"
    return f"{sign}{count_text(abs(verdict.slope))}/round"


def count_text(value: float) -> str:
    """A count per round: '1', '0.5'."""
    return f"{value:.0f}" if abs(value - round(value)) < 0.05 else f"{value:.1f}"


def grew(verdict: SeriesVerdict) -> str:
    """One figure that grew, in words: 'own memory grew 2.0 MiB per round (in 5 of 5 rounds,
    allowance 1.0 MiB)'."""
    if verdict.unit == "bytes":
        size = f"{human_bytes(verdict.slope)} per round"
        allowed = f", allowance {human_bytes(verdict.allowance)}"
    else:
        size = f"by {count_text(verdict.slope)} per round"
        allowed = ""
    return (
        f"{verdict.name} grew {size} (in {verdict.growing_rounds} of {verdict.rounds} "
        f"rounds{allowed})"
    )


def report_lines(leaks: Leaks) -> list[str]:
    """The lines a failure report adds for a test that hunted leaks: where what stayed was
    made, and each judged figure after every round (the rounds so far, where they stopped)."""
    lines = [f"  grew        {grew(verdict)}" for verdict in leaks.leaking]
    lines += [f"  cause       {cause}" for cause in leaks.causes]
    if leaks.note:
        lines.append(f"  rounds      {leaks.note}")
    keys = [verdict.key for verdict in leaks.leaking] or ["own_memory_bytes"]
    for key in keys:
        lines.append(f"  rounds      {rounds_line(leaks, key)}")
    return lines


def rounds_line(leaks: Leaks, key: str) -> str:
    """'own memory after each round (MiB; warm-up | measured): 4.5 6.6 | 8.7 10.7 12.7'."""
    values = [reading.figures()[key] for reading in leaks.readings]
    bytes_ = SERIES_UNITS.get(key) == "bytes"
    shown = [
        "?" if value is None else (f"{value / MIB:.2f}" if bytes_ else str(value))
        for value in values
    ]
    warmup = min(leaks.warmup_rounds, len(shown))
    if warmup and len(shown) > warmup:
        shown.insert(warmup, "|")
    unit = "MiB; " if bytes_ else ""
    split = "warm-up | measured" if warmup else "measured"
    return f"{SERIES_NAMES.get(key, key)} after each round ({unit}{split}): {' '.join(shown)}"


def usage_lines(leaks: Leaks | None) -> list[str]:
    """The usage section's line for a test that hunted leaks and did not fail for one."""
    if leaks is None:
        return []
    head = f"leak hunting: {leaks.warmup_rounds} warm-up + {leaks.measured_rounds} measured rounds"
    if not leaks.judged:
        return [f"{head}, not judged: {leaks.note}"]
    own = leaks.of("own_memory_bytes")
    growth = "" if own is None else f": own memory {amount(own)}"
    allowance = (
        ""
        if leaks.allowance_bytes is None
        else (f" (allowance {human_bytes(leaks.allowance_bytes)})")
    )
    verdict = "leak" if leaks.leaking else "no leak"
    return [f"{head}, {verdict}{growth}{allowance}"]


def verdict_word(leaks: Leaks) -> str:
    """'leak', 'no leak' or 'not judged'."""
    if not leaks.judged:
        return "not judged"
    return "leak" if leaks.leaking else "no leak"


def own_growth(leaks: Leaks) -> str:
    """Own memory's growth per round, or '—' where it was not judged."""
    own = leaks.of("own_memory_bytes")
    return "—" if own is None else amount(own)


def properties(leaks: Leaks | None) -> list[tuple[str, str | int]]:
    """Leak hunting's JUnit properties: the rounds, the verdict, own memory's growth per round
    and after each round, what grew and why."""
    if leaks is None:
        return []
    found: list[tuple[str, str | int]] = [
        ("taichi_limits_leak_rounds", f"{leaks.warmup_rounds}:{leaks.measured_rounds}"),
        ("taichi_limits_leak_verdict", verdict_word(leaks)),
        (
            "taichi_limits_leak_own_memory_bytes",
            " ".join(str(reading.own_memory_bytes) for reading in leaks.readings),
        ),
    ]
    own = leaks.of("own_memory_bytes")
    if own is not None:
        found.append(("taichi_limits_leak_own_memory_bytes_per_round", round(own.slope)))
    if leaks.leaking:
        found.append(("taichi_limits_leak_grew", summary(leaks)))
    if leaks.causes:
        found.append(("taichi_limits_leak_cause", "; ".join(leaks.causes)))
    if leaks.note:
        found.append(("taichi_limits_leak_note", leaks.note))
    return found
