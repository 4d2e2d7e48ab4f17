"""The terminal summary after the tests: top consumers, violations, regressions. Plain lines."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..config.units import human_bytes
from ..formats import baseline as baselines
from ..formats.baseline import growth_text
from ..model.records import UsageRecord
from . import leaks as leak_text
from . import text

#: How many missing tests are named before the rest are only counted (all of them with -v).
MISSING_SHOWN = 20


def _table(
    records: list[UsageRecord],
    figure: Callable[[UsageRecord], float],
    columns: Callable[[UsageRecord], tuple[str, ...]],
    top: int,
) -> list[str]:
    """The `top` largest by `figure`; each column right-aligned, then the test id."""
    ranked = sorted(records, key=lambda record: (-figure(record), record.nodeid))[:top]
    rows = [columns(record) for record in ranked]
    widths = (
        [max(len(row[column]) for row in rows) for column in range(len(rows[0]))] if rows else []
    )
    return [
        "  "
        + " ".join(f"{cell:>{width}}" for cell, width in zip(row, widths, strict=True))
        + f"  {record.nodeid}"
        for row, record in zip(rows, ranked, strict=True)
    ]


def top_consumers(records: list[UsageRecord], top: int) -> list[str]:
    """The N largest users of own memory, CPU and GPU memory, each figure right-aligned."""
    measured = [record for record in records if record.measured]
    if top <= 0 or not measured:
        return []
    shown = min(top, len(measured))
    lines = [
        (
            f"top {shown} by own memory (peak: the measured figure, or the kernel's exact "
            "peak where larger; absolute peak RSS in brackets):"
        )
    ]
    lines += _table(
        measured,
        lambda r: r.own_memory_bytes,
        lambda r: (
            human_bytes(r.own_memory_bytes),
            f"({human_bytes(r.peak_rss_bytes)})",
        ),
        top,
    )
    lines.append(f"top {shown} by CPU time (wall time in brackets):")
    lines += _table(
        measured, lambda r: r.cpu_s, lambda r: (f"{r.cpu_s:.2f} s", f"({r.wall_s:.2f} s)"), top
    )
    on_gpu = [record for record in measured if record.gpu_peak_bytes is not None]
    if on_gpu:
        lines.append(f"top {min(top, len(on_gpu))} by GPU memory:")
        lines += _table(
            on_gpu,
            lambda r: float(r.gpu_peak_bytes or 0),
            lambda r: (human_bytes(r.gpu_peak_bytes or 0),),
            top,
        )
    else:
        notes = sorted({record.gpu_note for record in measured if record.gpu_note})
        lines.append(f"GPU memory: {'; '.join(notes) or 'not measured'}")
    return lines


def violations(records: list[UsageRecord]) -> list[str]:
    """One line per violation: outcome, test, and the report's own headline, whole (pytest's
    short summary trims it to the terminal's width, and drops it for a long test id)."""
    found = [(record, record.violation) for record in records if record.violation is not None]
    if not found:
        return []
    lines = [f"budget violations ({len(found)}):"]
    width = max(len(record.outcome.upper()) for record, _ in found)
    for record, violation in found:
        headline = text.violation_headline(violation)
        lines.append(
            f"  {record.outcome.upper():{width}} {record.nodeid} - "
            f"{headline.removeprefix('taichi_limits: ')}"
        )
    return lines


def leaks(records: list[UsageRecord]) -> list[str]:
    """The "Leaks" block: the tests that leaked, each with what grew per round and where what
    stayed was made; those whose rounds were not judged, with why; the others in one line."""
    hunted = [record for record in records if record.leaks is not None]
    if not hunted:
        return []
    leaking = [r for r in hunted if r.leaks is not None and r.leaks.leaking]
    unjudged = [r for r in hunted if r.leaks is not None and not r.leaks.judged]
    rounds = sorted(
        {f"{r.leaks.warmup_rounds}+{r.leaks.measured_rounds}" for r in hunted if r.leaks}
    )
    lines = [
        f"leaks: {len(leaking)} of {len(hunted)} tests that hunted leaks grew in every round "
        f"(warm-up+measured rounds: {', '.join(rounds)}):"
    ]
    for record in leaking:
        assert record.leaks is not None
        lines.append(f"  LEAK {record.nodeid} - {leak_text.summary(record.leaks)}")
        lines += [f"       {cause}" for cause in record.leaks.causes]
    for record in unjudged:
        assert record.leaks is not None
        lines.append(f"  not judged {record.nodeid} - {record.leaks.note}")
    clean = [r for r in hunted if r not in leaking and r not in unjudged and r.leaks]
    if clean:
        largest = max(clean, key=lambda r: _growth(r))
        assert largest.leaks is not None
        lines.append(
            f"  no leak in {len(clean)} (largest own memory growth "
            f"{leak_text.own_growth(largest.leaks)}, {largest.nodeid})"
        )
    return lines


def _growth(record: UsageRecord) -> float:
    found = None if record.leaks is None else record.leaks.growth_bytes_per_round
    return found or 0.0


def regressions(records: list[UsageRecord], baseline_path: str) -> list[str]:
    """Every test that grew beyond tolerance, one line per grown resource."""
    grown = [record for record in records if record.regression is not None]
    if not grown:
        return []
    # -W error turns a warning back into a failure: what happened is on each regression.
    warn_only = all(record.regression.warn_only for record in grown if record.regression)
    verdict = "warnings only (--taichi-limits-compare-warn)" if warn_only else "these tests fail"
    lines = [f"regressions against {baseline_path} ({len(grown)}; {verdict}):"]
    for record in grown:
        assert record.regression is not None
        for growth in record.regression.growths:
            if growth.exceeded:
                lines.append(f"  {record.nodeid}  {growth.words} {growth_text(growth)}")
    return lines


def test_lists(
    new_tests: Sequence[str],
    missing_tests: Sequence[str],
    verbose: bool,
    records: Sequence[UsageRecord] = (),
) -> list[str]:
    """Tests measured now but not in the baseline, and the reverse: listed, never failed.

    A new test that a save would not write (`records` say it failed, errored or stopped the
    session) is listed apart, with why: saving never adds it, so the hint that it does would
    send the user in circles.
    """
    savable = {record.nodeid for record in baselines.savable(records)}
    unsaved = {record.nodeid for record in records} - savable
    lines: list[str] = []
    adds = [nodeid for nodeid in new_tests if nodeid not in unsaved]
    never = [nodeid for nodeid in new_tests if nodeid in unsaved]
    if adds:
        lines.append(
            f"new since the baseline, not compared ({len(adds)}; "
            "--taichi-limits-save-baseline adds them):"
        )
        lines += [f"  {nodeid}" for nodeid in adds]
    if never:
        lines.append(
            f"new since the baseline, not compared, and not saved by "
            f"--taichi-limits-save-baseline until they pass ({len(never)}; a test that failed "
            "or stopped the session is never saved: its figures were cut short, so they would "
            "make a baseline that every later run exceeds):"
        )
        lines += [f"  {nodeid}" for nodeid in never]
    if missing_tests:
        shown = missing_tests if verbose else missing_tests[:MISSING_SHOWN]
        lines.append(f"in the baseline but not measured in this run ({len(missing_tests)}):")
        lines += [f"  {nodeid}" for nodeid in shown]
        if len(shown) < len(missing_tests):
            lines.append(f"  ... and {len(missing_tests) - len(shown)} more (-v lists them all)")
    return lines
