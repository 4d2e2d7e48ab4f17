"""Baselines: the per-test figures of one or more runs, saved to a file, and a later run compared
with them.

File format (JSON, version 2; sorted keys and one value per line, so that two branches that
update different tests merge cleanly in git):

    {
      "schema": "pytest-taichi-limits/baseline",
      "version": 2,
      "environments": {"<id>": {"python": "3.11.7", "pytest": "9.0.3", "taichi": "1.7.4",
                                "host": "...", ...}},
      "tests": {
        "<node id>": {"runs": 3,
                      "own_memory_bytes": {"min": 120000000, "max": 122088448},
                      "cpu_s": {"min": 0.21, "max": 0.25}, "wall_s": {"min": 0.22, "max": 0.3},
                      "gpu_bytes": null, "leak_bytes_per_round": {"min": 9000, "max": 14000},
                      "memory_method": "cgroup-v1",
                      "arch": "x64", "mode": "fork",
                      "calibration": {"cpu_s": 0.031, "wall_s": 0.033},
                      "environment": "<id>", "saved_at": "2026-11-28T13:40:00+00:00"}
      }
    }

A baseline holds a range per figure: saving again (without --taichi-limits-baseline-replace)
widens each test's range with this run's figures and counts the run, so a test whose CPU time
varies from run to run is compared with the worst run the baseline saw, not with one lucky run.
A test is compared per resource: `after > max * (1 + relative) + absolute` is a regression.
`leak_bytes_per_round` (own memory's growth per measured round of leak hunting, docs/leaks.md)
is null, or absent in a file written before it existed, for a test that did not hunt leaks.

`calibration` (absent in a file written before it existed) is what the calibration loop cost in
the run the entry's ranges are in units of (measure/calibration.py): a later run's CPU and wall
figures are compared with the ranges scaled by the ratio of its own calibration to this one,
and a run that widens the ranges adds its figures scaled the same way. An entry without one
is compared unscaled, and takes the calibration of the next run that saves it.

Version 1 (one figure per test, own memory as the growth of summed RSS) is refused: its figures
mean something else (issue 10 changed what own memory counts).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

# The tolerance is parsed in config/tolerance.py and applied here; its names are re-exported.
from ..config.tolerance import DEFAULT_TOLERANCE_SPEC as DEFAULT_TOLERANCE_SPEC
from ..config.tolerance import Allowance as Allowance
from ..config.tolerance import Tolerance as Tolerance
from ..config.tolerance import ToleranceError as ToleranceError
from ..config.tolerance import parse_tolerance as parse_tolerance
from ..config.units import counted, human_bytes
from ..model.records import RESOURCES, SAME_SPEED, TIMED, Calibration, Growth, UsageRecord
from . import environment as env
from .jsonreport import write_atomic

SCHEMA = "pytest-taichi-limits/baseline"
VERSION = 2


class BaselineError(ValueError):
    """A baseline file the plugin cannot use; the message says why."""


# -- the file -----------------------------------------------------------------------------------


def _environment_id(environment: Mapping[str, Any]) -> str:
    text = json.dumps(dict(environment), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Range:
    """The smallest and largest value of one figure over the runs a baseline saw."""

    low: float
    high: float

    def widened(self, value: float) -> Range:
        return Range(min(self.low, value), max(self.high, value))

    def to_json(self) -> dict[str, float]:
        return {"min": self.low, "max": self.high}


@dataclass(frozen=True)
class Entry:
    """One test of a baseline: a range per figure (None: not measured, e.g. GPU) over `runs`."""

    runs: int
    ranges: Mapping[str, Range | None]  # baseline field (RESOURCES[...][0]) -> range
    memory_method: str
    arch: str
    mode: str
    environment: str  # key into Baseline.environments
    saved_at: str
    #: the last saved run's timeline (model/timeline.py), with --taichi-limits-timeline-in-baseline
    timeline: Mapping[str, Any] | None = None
    #: the calibration of the run the CPU and wall ranges are in units of (None: not known)
    calibration: Calibration | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            name: None if value is None else value.to_json() for name, value in self.ranges.items()
        }
        data.update(
            runs=self.runs,
            memory_method=self.memory_method,
            arch=self.arch,
            mode=self.mode,
            environment=self.environment,
            saved_at=self.saved_at,
        )
        if self.timeline is not None:
            data["timeline"] = dict(self.timeline)
        if self.calibration is not None:
            data["calibration"] = self.calibration.to_json()
        return data


@dataclass(frozen=True)
class Baseline:
    path: str
    tests: Mapping[str, Entry]
    environments: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The file's document: sorted, with only the environments a test uses."""
        used = {entry.environment for entry in self.tests.values()}
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "environments": {
                key: dict(value) for key, value in self.environments.items() if key in used
            },
            "tests": {nodeid: entry.to_json() for nodeid, entry in sorted(self.tests.items())},
        }

    def calibration(self) -> Calibration | None:
        """The median of the tests' calibrations (by CPU; None: none is calibrated): what the
        header and the summary compare this run's speed with."""
        found = sorted(
            (entry.calibration for entry in self.tests.values() if entry.calibration),
            key=lambda calibration: calibration.cpu_s,
        )
        return found[len(found) // 2] if found else None

    def environment_of(self, nodeid: str) -> Mapping[str, Any]:
        return self.environments.get(self.tests[nodeid].environment, {})

    def environment_warnings(self, current: Mapping[str, Any]) -> list[str]:
        """One line per environment of the baseline that differs from this run's in Python or
        Taichi version, naming how many tests it holds."""
        counts: dict[str, int] = {}
        for entry in self.tests.values():
            counts[entry.environment] = counts.get(entry.environment, 0) + 1
        lines = []
        for environment_id, count in sorted(counts.items()):
            changed = env.differences(
                dict(self.environments.get(environment_id, {})), dict(current)
            )
            if changed:
                lines.append(
                    f"{count} of {len(self.tests)} baseline tests were measured with "
                    f"another {' and '.join(c.split()[0] for c in changed)} "
                    f"({'; '.join(changed)}): their figures may differ for that reason"
                )
        return lines


def empty(path: str) -> Baseline:
    return Baseline(path, {}, {})


def load(path: str) -> Baseline:
    """Read and validate a baseline file. Raises BaselineError naming the file, and for a bad
    entry the test and the field, with what to do."""
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except FileNotFoundError:
        raise BaselineError(
            f"baseline {path!r} does not exist; create it with --taichi-limits-save-baseline={path}"
        ) from None
    except (OSError, ValueError, RecursionError) as error:
        raise BaselineError(
            f"baseline {path!r} cannot be read: {error} (a file with git "
            "conflict markers reads so: resolve them, or save a new one)"
        ) from None
    return parse(path, data)


def parse(path: str, data: Any) -> Baseline:
    """A baseline from the JSON value read from `path`. Raises BaselineError as `load`."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise BaselineError(
            f'{path!r} is not a pytest-taichi-limits baseline (no "schema": "{SCHEMA}")'
        )
    if data.get("version") != VERSION:
        raise BaselineError(
            f"baseline {path!r} has version {data.get('version')!r}; this plugin reads version "
            f"{VERSION} (own memory is measured differently since version 2, and a baseline now "
            f"holds a range over several runs): record a new one with "
            f"--taichi-limits-save-baseline={path} --taichi-limits-baseline-replace"
        )
    tests, environments = data.get("tests"), data.get("environments")
    if not isinstance(tests, dict) or not isinstance(environments, dict):
        raise BaselineError(
            f'baseline {path!r} is damaged: "tests" and "environments" must be objects'
        )
    return Baseline(
        path, {nodeid: _entry(path, nodeid, entry) for nodeid, entry in tests.items()}, environments
    )


def _entry(path: str, nodeid: str, data: Any) -> Entry:
    def bad(field_name: str, problem: str) -> BaselineError:
        return BaselineError(
            f"baseline {path!r}, test {nodeid!r}: field {field_name!r} "
            f"{problem}; fix or remove the entry, or save a new baseline"
        )

    if not isinstance(data, dict):
        raise bad("(entry)", "must be an object")
    runs = data.get("runs")
    if not isinstance(runs, int) or isinstance(runs, bool) or runs < 1:
        raise bad("runs", f"must be a whole number >= 1, got {runs!r}")
    ranges: dict[str, Range | None] = {}
    for key, (name, _, _) in RESOURCES.items():
        if name not in data and key not in _LATER:
            raise bad(name, "is missing")
        value = data.get(name)
        if value is None and key in _OPTIONAL:  # not measured in that run
            ranges[name] = None
            continue
        low = value.get("min") if isinstance(value, dict) else None
        high = value.get("max") if isinstance(value, dict) else None
        if not (_is_figure(low) and _is_figure(high)) or float(low) > float(high):
            raise bad(
                name,
                f'must be {{"min": number, "max": number}} with 0 <= min <= max, got {value!r}',
            )
        ranges[name] = Range(float(low), float(high))
    texts = {}
    for name in ("memory_method", "arch", "mode", "environment", "saved_at"):
        if not isinstance(data.get(name), str):
            raise bad(name, f"must be a string, got {data.get(name)!r}")
        texts[name] = str(data[name])
    timeline = data.get("timeline")
    if timeline is not None and not isinstance(timeline, dict):
        raise bad("timeline", f"must be an object or absent, got {timeline!r}")
    calibration = None
    if data.get("calibration") is not None:
        try:
            calibration = Calibration.from_json(data["calibration"], "calibration")
        except ValueError:
            raise bad(
                "calibration",
                f'must be {{"cpu_s": seconds, "wall_s": seconds}}, got {data["calibration"]!r}',
            ) from None
    return Entry(runs=runs, ranges=ranges, timeline=timeline, calibration=calibration, **texts)


#: Figures an entry may hold null for (not measured), and those it may lack (added later).
_OPTIONAL = frozenset({"gpu", "leak"})
_LATER = frozenset({"leak"})


def _is_figure(value: Any) -> TypeGuard[float]:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _figures(record: UsageRecord) -> dict[str, float | None]:
    """The record's figures under their baseline field names."""
    return {
        "own_memory_bytes": record.own_memory_bytes,
        "cpu_s": record.cpu_s,
        "wall_s": record.wall_s,
        "gpu_bytes": record.gpu_peak_bytes,
        "leak_bytes_per_round": _leak_growth(record),
    }


def _speed_scales(ranges_in: Calibration | None, run: Calibration | None) -> dict[str, float]:
    """Baseline field -> the factor that brings a figure of the run calibrated `run` to the
    speed of the run calibrated `ranges_in` (1.0 where either is unknown, and for memory)."""
    scales = {name: 1.0 for name, _, _ in RESOURCES.values()}
    if ranges_in is not None and run is not None:
        for key in TIMED:
            scales[RESOURCES[key][0]] = 1.0 / run.ratio(key, ranges_in)
    return scales


def _leak_growth(record: UsageRecord) -> float | None:
    """Own memory's growth per measured round, where the test hunted leaks and every round ran
    (a slope below zero, memory given back, is no growth)."""
    leaks = record.leaks
    growth = None if leaks is None or not leaks.judged else leaks.growth_bytes_per_round
    return None if growth is None else max(0.0, growth)


def merged_entry(
    previous: Entry | None,
    record: UsageRecord,
    environment_id: str,
    environment: Mapping[str, Any],
    previous_environment: Mapping[str, Any],
    saved_at: str,
    timeline: bool = False,
    calibration: Calibration | None = None,
) -> Entry:
    """`record`'s figures, as a new entry or widening `previous`.

    A range only spans runs that are comparable: another arch, start mode, memory method, Python
    or Taichi starts the range over (its figures would differ for that reason alone). A range
    stays in the units of the run it started in: this run's CPU and wall figures widen it
    scaled to that run's speed (`calibration`: this run's; an entry without one takes it).
    """
    figures = _figures(record)
    comparable = (
        previous is not None
        and previous.arch == record.arch
        and previous.mode == record.mode
        and previous.memory_method == record.memory_method
        and not env.differences(dict(previous_environment), dict(environment))
    )
    units = previous.calibration if comparable and previous is not None else None
    units = units or calibration
    scales = _speed_scales(units, calibration)
    ranges: dict[str, Range | None] = {}
    for name, value in figures.items():
        before = previous.ranges.get(name) if comparable and previous is not None else None
        if value is None:
            ranges[name] = before  # not measured now: the range keeps what was measured
        else:
            value *= scales[name]
            ranges[name] = Range(value, value) if before is None else before.widened(value)
    runs = previous.runs + 1 if comparable and previous is not None else 1
    return Entry(
        runs=runs,
        ranges=ranges,
        memory_method=record.memory_method,
        arch=record.arch,
        mode=record.mode,
        environment=environment_id,
        saved_at=saved_at,
        timeline=record.timeline if timeline else None,
        calibration=units,
    )


def savable(records: Iterable[UsageRecord]) -> list[UsageRecord]:
    """Records that make a baseline: tests that passed. A failed test's peaks were cut short, a
    skipped test measured nothing and an interrupted one never finished, so they keep whatever
    entry they had."""
    return [record for record in records if record.outcome in ("passed", "xpassed")]


def previous_for_save(path: str, replace: bool) -> Baseline:
    """What a save merges into: the existing file (validated), or nothing. Raises
    BaselineError for a file that exists and cannot be merged into (checked before the run)."""
    if replace or not os.path.exists(path):
        return empty(path)
    return load(path)


def save(
    path: str,
    records: Iterable[UsageRecord],
    environment: Mapping[str, Any],
    replace: bool,
    timelines: bool = False,
    calibration: Calibration | None = None,
) -> tuple[int, int]:
    """Write (atomically) the baseline; merge into the existing file unless `replace`.
    `calibration`: this run's (None: not calibrated).

    Returns (tests written by this run, tests in the file).
    """
    previous = previous_for_save(path, replace)
    environment_id = _environment_id(environment)
    saved_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    tests = dict(previous.tests)
    written = 0
    for record in savable(records):
        before = tests.get(record.nodeid)
        before_environment = {} if before is None else previous.environment_of(record.nodeid)
        tests[record.nodeid] = merged_entry(
            before,
            record,
            environment_id,
            environment,
            before_environment,
            saved_at,
            timelines,
            calibration,
        )
        written += 1
    environments = {key: dict(value) for key, value in previous.environments.items()}
    environments[environment_id] = dict(environment)
    _write(path, tests, environments)
    return written, len(tests)


def acceptable(record: UsageRecord) -> str | None:
    """Why `record`'s figures cannot be accepted into a baseline, or None: a test whose figures
    were cut short (it failed on its own, went over a budget, stopped the session, never
    started) or that measured nothing (skipped) would make a baseline every run exceeds."""
    if not record.started:
        return "it never started"
    if record.outcome in ("skipped", "xfailed", "interrupted"):
        return f"it {record.outcome} (its figures measure nothing)"
    if record.violation is not None:
        return "it went over its budget (its figures were cut short)"
    if record.outcome in ("failed", "error") and not record.failed_by_growth:
        return f"it {record.outcome} on its own (its figures were cut short): {record.reason}"
    return None


def accept(
    previous: Baseline,
    records: Iterable[UsageRecord],
    environment: Mapping[str, Any],
    calibration: Calibration | None = None,
) -> list[str]:
    """Write (atomically) the baseline `previous` again with each record's figures as its test's
    new entry: reviewed growth, accepted. Each accepted test's range starts over from this run
    (the old range would keep the figures the growth left behind), in the units of the run's
    `calibration`. Returns one line per accepted test. Raises BaselineError for a record that
    cannot be accepted (see `acceptable`), naming it, before anything is written."""
    environment_id = _environment_id(environment)
    saved_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    tests = dict(previous.tests)
    lines = []
    for record in records:
        problem = acceptable(record)
        if problem is not None:
            raise BaselineError(f"{record.nodeid} cannot be accepted: {problem}")
        before = previous.tests.get(record.nodeid)
        tests[record.nodeid] = merged_entry(
            None, record, environment_id, environment, {}, saved_at, False, calibration
        )
        shown = _figures_text(record)
        lines.append(
            f"{record.nodeid}: {shown}"
            + (" (new in the baseline)" if before is None else f" (was {_entry_text(before)})")
        )
    environments = {key: dict(value) for key, value in previous.environments.items()}
    environments[environment_id] = dict(environment)
    _write(previous.path, tests, environments)
    return lines


def _figures_text(record: UsageRecord) -> str:
    return (
        f"own memory {amount(record.own_memory_bytes, 'bytes')}, "
        f"CPU {amount(record.cpu_s, 'seconds')}, wall {amount(record.wall_s, 'seconds')}"
    )


def _entry_text(entry: Entry) -> str:
    parts = []
    for name, words in (("own_memory_bytes", "own memory"), ("cpu_s", "CPU"), ("wall_s", "wall")):
        seen = entry.ranges.get(name)
        if seen is not None:
            kind = "bytes" if name == "own_memory_bytes" else "seconds"
            parts.append(f"{words} up to {amount(seen.high, kind)}")
    return ", ".join(parts)


def _write(
    path: str, tests: Mapping[str, Entry], environments: Mapping[str, Mapping[str, Any]]
) -> None:
    text = json.dumps(Baseline(path, tests, environments).to_json(), indent=2, sort_keys=True)
    write_atomic(path, text + "\n")


# -- comparing ----------------------------------------------------------------------------------


def compare(
    record: UsageRecord,
    entry: Entry,
    tolerance: Tolerance,
    calibration: Calibration | None = None,
) -> list[Growth]:
    """Every compared resource of one test (exceeded or not); GPU only where both measured it.
    CPU and wall are compared at this run's speed: the baseline's figures multiplied by the
    ratio of this run's `calibration` to the entry's (where both are known)."""
    figures = _figures(record)
    growths = []
    for key, allowance in tolerance.allowances.items():
        name = RESOURCES[key][0]
        seen, after = entry.ranges.get(name), figures[name]
        if allowance is None or seen is None or after is None:
            continue
        scale = 1.0
        if key in TIMED and calibration is not None and entry.calibration is not None:
            scale = calibration.ratio(key, entry.calibration)
        growths.append(
            Growth(
                key,
                seen.high,
                seen.low,
                entry.runs,
                float(after),
                allowance.limit(seen.high * scale),
                allowance.describe(),
                scale,
            )
        )
    return growths


def amount(value: float, kind: str, signed: bool = False) -> str:
    sign = "+" if signed and value >= 0 else ""
    if kind == "bytes":
        return sign + human_bytes(value)
    return f"{sign}{value:.2f} s"


def seen_text(growth: Growth) -> str:
    """The baseline's figure: one value, or its range over several runs; at this run's speed
    where the machine's speed scaled it ("0.30 s x1.52 = 0.46 s")."""
    if growth.before_min == growth.before:
        text = amount(growth.before, growth.kind)
    else:
        text = f"{amount(growth.before_min, growth.kind)}..{amount(growth.before, growth.kind)}"
    if growth.scale == 1.0:
        return text
    return f"{text} x{growth.scale:.2f} = {amount(growth.before_now, growth.kind)}"


def speed_text(run: Calibration, baseline: Calibration) -> str:
    """How fast the machine ran against the baseline's run, as the calibration loop measured
    it: "compared with when the baseline was saved, the machine ran 1.52x slower (CPU) and
    about as fast (wall)"."""
    parts = []
    for key, words in (("cpu", "CPU"), ("wall", "wall")):
        ratio = run.ratio(key, baseline)
        if abs(ratio - 1.0) <= SAME_SPEED:
            how = "about as fast"
        elif ratio > 1:
            how = f"{ratio:.2f}x slower"
        else:
            how = f"{1 / ratio:.2f}x faster"
        parts.append(f"{how} ({words})")
    return (
        f"compared with when the baseline was saved, the machine ran {parts[0]} and "
        f"{parts[1]} (calibration loop: {run.cpu_s:.4f} s CPU, {run.wall_s:.4f} s wall, against "
        f"{baseline.cpu_s:.4f} s and {baseline.wall_s:.4f} s); CPU and wall figures are "
        "compared with the baseline's scaled by these ratios"
    )


def growth_text(growth: Growth) -> str:
    """'64.0 MiB -> 128.3 MiB (+64.3 MiB, +100.5%), allowed up to 86.4 MiB (mem=10%+16MiB)'."""
    kind = growth.kind
    percent = growth.growth_percent
    percent_text = "" if percent is None else f", {percent:+.1f}%"
    return (
        f"{seen_text(growth)} -> {amount(growth.after, kind)} "
        f"({amount(growth.growth, kind, signed=True)}{percent_text}), allowed up to "
        f"{amount(growth.allowed, kind)} ({growth.resource}={growth.tolerance})"
    )


def regression_headline(exceeded: list[Growth]) -> str:
    return "taichi_limits: grew beyond the baseline's tolerance: " + "; ".join(
        f"{RESOURCES[g.resource][2]} {growth_text(g)}" for g in exceeded
    )


def accept_command(baseline_path: str, report_path: str | None, nodeid: str) -> str:
    """The command that accepts a test's reviewed growth into the baseline."""
    report = "REPORT.json" if report_path is None else shlex.quote(report_path)
    return f"taichi-limits accept {shlex.quote(baseline_path)} {report} {shlex.quote(nodeid)}"


def regression_report(
    exceeded: list[Growth],
    compared: list[Growth],
    baseline: Baseline,
    nodeid: str,
    record: UsageRecord,
    warn_only: bool,
    report_path: str | None = None,
    shared_start: bool = False,
) -> str:
    """The text a grown test fails (or warns) with: before, after, growth and the tolerance.
    `report_path`: the run's JSON report (the figures an accept takes), where one is written.
    `shared_start`: the test ran first in a child that runs several tests (isolation module or
    session), so its figures carry what its module's tests share."""
    entry = baseline.tests[nodeid]
    made_with = baseline.environment_of(nodeid)
    lines = [regression_headline(exceeded)]
    rows = []
    for growth in compared:
        kind, percent = growth.kind, growth.growth_percent
        rows.append(
            (
                RESOURCES[growth.resource][2],
                seen_text(growth),
                amount(growth.after, kind),
                amount(growth.growth, kind, True)
                + ("" if percent is None else f" ({percent:+.1f}%)"),
                amount(growth.allowed, kind),
                f"{growth.resource}={growth.tolerance}",
                "EXCEEDED" if growth.exceeded else "ok",
            )
        )
    header = ("", "baseline", "after", "growth", "allowed up to", "tolerance", "")
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(7)]
    for row in [header, *rows]:
        cells = [f"{row[0]:<{widths[0]}}"]
        cells += [f"{cell:>{width}}" for cell, width in zip(row[1:5], widths[1:5], strict=True)]
        cells += [f"{row[5]:<{widths[5]}}", row[6]]
        lines.append(("  " + "  ".join(cells)).rstrip())
    lines.append(
        f"  baseline    {baseline.path}, {counted(entry.runs, 'run')} (growth is measured "
        f"above the largest), last saved {entry.saved_at} with Python "
        f"{made_with.get('python', '?')}, Taichi {made_with.get('taichi', '?')}, arch "
        f"{entry.arch} ({entry.mode} mode)"
    )
    scaled = [growth for growth in compared if growth.scale != 1.0]
    if scaled:
        lines.append(
            "  speed       "
            + ", ".join(f"{g.resource} x{g.scale:.2f}" for g in scaled)
            + ": the machine was that much slower (above 1) or faster than when the baseline "
            "was saved (the calibration loop of each run): the baseline's figures are compared "
            "multiplied by it"
        )
    if entry.arch != record.arch or entry.mode != record.mode:
        lines.append(
            f"  note        this run used arch {record.arch} ({record.mode} mode): "
            "figures of another arch or start mode are not comparable (a forked child's "
            "first test pays for its copies of pytest's pages; a Taichi runtime made at "
            "import is the worker's, not the test's)"
        )
    if shared_start:
        lines.append(
            "  note        this test ran first in its child (isolation module or session): its "
            "figures include what the tests sharing that child share (module fixtures, "
            "Taichi's start, kernel loads), which it does not pay where another test of its "
            "module runs before it (a full run against a run of it alone, -k); "
            "--taichi-limits-isolation=test gives figures that do not depend on that"
        )
    lines.append(
        "  what to do  find what grew; accept reviewed growth with: "
        + accept_command(baseline.path, report_path, nodeid)
        + ("" if report_path else " (REPORT.json: the run's --taichi-limits-json report)")
        + "; or widen --taichi-limits-tolerance"
        + (" [warning only: --taichi-limits-compare-warn]" if warn_only else "")
    )
    return "\n".join(lines)
