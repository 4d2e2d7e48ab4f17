"""The leak verdict: which figures grew per round, robustly, and where what stayed was made.

Pure functions of the readings (model/leaks.py). The judged points are the reading after the last
warm-up round (where there is one) and the readings after each measured round: one delta per
measured round. A figure leaks when both hold:

- its per-round slope is above the allowance: the Theil-Sen estimate, the median of the slopes
  between every two points. One outlier (a collection that came late, a cache that filled in one
  round) moves it little; and if every point lies within a band narrower than the allowance,
  every pairwise slope is below the allowance, so noise below it can never fail a test;
- it grew in nearly every judged round: in every one of up to five rounds, in all but one of six
  to eleven, and so on (by more than half the allowance for bytes, by at least one for a count).
  Growth that stops (a cache that fills in a round or two) is not a leak, however steep it was.

Before each reading the child collects its garbage and gives free heap memory back to the kernel
(child/rounds.py): what is left is what the test still holds, so memory that a test allocates and
frees moves the readings by tens of KiB, far below any sensible allowance.

Bytes (own memory, GPU memory, Taichi's storage) are judged against leak_mb; counts (Taichi's
fields, ndarrays and SNode trees, open files, threads, processes) against no growth at all.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence

from ..config.budget import Budget
from ..config.units import MIB, counted
from ..model.leaks import SERIES, Leaks, RoundReading, SeriesVerdict
from ..model.records import Violation
from ..render import leaks as leak_text

#: One judged round in this many may not grow: a leak shows in nearly every round, and in a long
#: run one round that grew less should not hide it. Up to five rounds, every one must grow: noise
#: that happened to rise in every round is then as rare as one ordering of six readings in 720.
_ROUNDS_PER_PASS = 6
#: At most this many call sites are named as a cause.
_MOST_CAUSES = 5
#: Ndarray kinds whose memory Taichi 1.7.4 never frees (python/taichi/lang/_ndarray.py at tag
#: v1.7.4: only ScalarNdarray has a __del__ that deletes its memory).
_NEVER_FREED = ("vector ndarray", "matrix ndarray")


def theil_sen(values: Sequence[float]) -> float:
    """The median of the slopes between every two points (index = round); 0 below two points."""
    slopes = [
        (values[later] - values[earlier]) / (later - earlier)
        for earlier in range(len(values))
        for later in range(earlier + 1, len(values))
    ]
    return statistics.median(slopes) if slopes else 0.0


def tolerated(rounds: int) -> int:
    """How many judged rounds may show no growth in a leak."""
    return rounds // _ROUNDS_PER_PASS


def judge_series(key: str, values: Sequence[float], allowance: float) -> SeriesVerdict:
    """One figure's verdict. `allowance`: per round, in bytes (leak_mb) or 0 for a count."""
    deltas = [later - earlier for earlier, later in itertools.pairwise(values)]
    # What counts as growth in one round: half the allowance (noise often grows a little), or
    # one more of a count.
    growing = sum(1 for delta in deltas if delta > allowance / 2 or (allowance == 0 < delta))
    slope = theil_sen(values)
    leak = len(deltas) > 0 and slope > allowance and growing >= len(deltas) - tolerated(len(deltas))
    return SeriesVerdict(key, slope, growing, len(deltas), allowance, leak)


def judged_points(readings: Sequence[RoundReading], warmup: int) -> list[RoundReading]:
    """The last warm-up round's reading (if any), then every measured round's."""
    return list(readings[max(0, warmup - 1) :])


def judge(
    readings: Sequence[RoundReading],
    warmup: int,
    measured: int,
    allowance_bytes: int | None,
    stopped: str = "",
) -> Leaks:
    """The verdict on a test's rounds. `stopped`: why it did not run them all ("" if it did)."""
    readings = tuple(readings)
    if stopped or len(readings) < warmup + measured:
        note = stopped or f"only {len(readings)} of {warmup + measured} rounds were read"
        return Leaks(warmup, measured, allowance_bytes, readings, note=note)
    points = judged_points(readings, warmup)
    verdicts = []
    for key, _, unit in SERIES:
        values = [reading.figures()[key] for reading in points]
        if any(value is None for value in values):
            continue  # not measured in some round (no NVML, no Taichi program): not judged
        if unit == "bytes":
            if allowance_bytes is None:
                continue
            allowance = float(allowance_bytes)
        else:
            allowance = 0.0
        verdicts.append(judge_series(key, [float(v or 0) for v in values], allowance))
    leaks = Leaks(warmup, measured, allowance_bytes, readings, tuple(verdicts))
    if not leaks.leaking:
        return leaks
    return Leaks(
        warmup, measured, allowance_bytes, readings, tuple(verdicts), causes(points, leaks)
    )


def causes(points: Sequence[RoundReading], leaks: Leaks) -> tuple[str, ...]:
    """Where what stayed was made: call sites whose objects, made during the rounds, are alive
    in growing numbers; and ndarrays of a kind Taichi never frees, made in every round, when
    memory grew."""
    found = _sites_kept(points)
    if any(verdict.unit == "bytes" for verdict in leaks.leaking):
        found += _never_freed(points)
    found.sort(key=lambda pair: (-pair[0], pair[1]))
    return tuple(text for _, text in found[:_MOST_CAUSES])


def _sites_kept(points: Sequence[RoundReading]) -> list[tuple[float, str]]:
    found = []
    for label in {label for reading in points for label in reading.sites}:
        verdict = judge_series("site", [float(p.sites.get(label, 0)) for p in points], 0.0)
        if verdict.leak:
            kind, _, where = label.partition(" at ")
            number = _count(verdict.slope)
            text = f"{number} new {_plural(kind, number)} per round, made at {where}"
            found.append((verdict.slope, text))
    return found


def _never_freed(points: Sequence[RoundReading]) -> list[tuple[float, str]]:
    found = []
    for label in {label for reading in points[1:] for label in reading.made}:
        kind, _, where = label.partition(" at ")
        numbers = [reading.made.get(label, 0) for reading in points[1:]]
        if kind in _NEVER_FREED and min(numbers) >= 1:
            per_round = float(statistics.median(numbers))
            number = _count(per_round)
            text = f"{number} {_plural(kind, number)} made per round at {where}: {_NEVER_FREED_WHY}"
            found.append((per_round, text))
    return found


_NEVER_FREED_WHY = (
    "Taichi 1.7.4 never frees the memory of a vector or matrix ndarray (taichi-dev/taichi#8763); "
    "make it once, or use a scalar ndarray with one more axis"
)


def violation(nodeid: str, budget: Budget, found: Leaks, pid: int, method: str) -> Violation | None:
    """The test's leak, as a leak_mb violation (None: nothing grew). `measured` is own memory's
    growth per round, MiB; `detail` names every figure that grew, by how much per round."""
    leaking = found.leaking
    if not leaking:
        return None
    own = found.of("own_memory_bytes")
    return Violation(
        nodeid,
        "leak_mb",
        float(budget.leak_mb or 0),
        0.0 if own is None else own.slope / MIB,
        f"supervisor (an exact reading after each of {found.measured_rounds} measured rounds, "
        f"which followed {counted(found.warmup_rounds, 'round')} of warm-up; {method})",
        "call",
        pid,
        time.time(),
        (),
        "",
        detail=leak_text.summary(found),
    )


def _plural(kind: str, number: str) -> str:
    if number == "1":
        return kind
    return kind[:-1] + "ices" if kind.endswith("matrix") else kind + "s"


def _count(value: float) -> str:
    return f"{value:.0f}" if abs(value - round(value)) < 0.05 else f"{value:.1f}"
