"""Baselines: the per-test peaks of a run, saved to a file, and a later run compared with them.

File format (JSON, version 1; sorted keys and one value per line, so that two branches that
update different tests merge cleanly in git):

    {
      "schema": "pytest-taichi-limits/baseline",
      "version": 1,
      "environments": {"<id>": {"python": "3.11.7", "pytest": "9.0.3", "taichi": "1.7.4",
                                "host": "...", ...}},
      "tests": {
        "<node id>": {"own_memory_bytes": 122088448, "cpu_s": 0.23, "wall_s": 0.25,
                      "gpu_bytes": null, "arch": "x64", "mode": "fork",
                      "environment": "<id>", "saved_at": "2026-11-28T13:40:00+00:00"}
      }
    }

A test is compared per resource: `after > before * (1 + relative) + absolute` is a regression.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import environment as env
from .collect import UsageRecord
from .jsonreport import write_atomic
from .render import human_bytes

SCHEMA = "pytest-taichi-limits/baseline"
VERSION = 1

_MB = 1024 * 1024

#: Compared resources: tolerance key -> (baseline/record field, kind, words a person reads).
RESOURCES: dict[str, tuple[str, str, str]] = {
    "mem": ("own_memory_bytes", "bytes", "own memory"),
    "cpu": ("cpu_s", "seconds", "CPU time"),
    "wall": ("wall_s", "seconds", "wall time"),
    "gpu": ("gpu_bytes", "bytes", "GPU memory"),
}

#: Defaults, chosen from run-to-run noise measured on examples/within_budget (README, "Baselines"):
#: own memory varied by at most 0.2 MB over 10 runs with a warm Taichi kernel cache and 4.9 MB
#: with a cold one, so 16 MB of slack is over 3x the noise; 10% scales it for big tests (and
#: also covers warm-vs-cold, 13-19 MB, on the examples). CPU and wall time vary far more on a
#: shared CI runner than memory does: CPU gets a wide margin and wall time is not compared.
DEFAULT_TOLERANCE_SPEC = "mem=10%+16MB,cpu=50%+1s,wall=off,gpu=10%+64MB"

_BYTE_UNITS = {"b": 1, "kb": 1024, "mb": _MB, "gb": 1024**3}
_SECOND_UNITS = {"s": 1.0, "ms": 0.001}


class BaselineError(ValueError):
    """A baseline file or tolerance spec the plugin cannot use; the message says why."""


# -- tolerance ----------------------------------------------------------------------------------


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
            parts.append(_format_amount(self.absolute, self.kind))
        return "+".join(parts)


@dataclass(frozen=True)
class Tolerance:
    """An Allowance per compared resource; None: that resource is not compared."""

    allowances: Mapping[str, Allowance | None]

    def describe(self) -> str:
        return ",".join(f"{key}={'off' if value is None else value.describe()}"
                        for key, value in self.allowances.items())


def _format_amount(amount: float, kind: str) -> str:
    if kind == "seconds":
        return f"{amount:g}s"
    for unit in ("GB", "MB", "KB"):
        size = _BYTE_UNITS[unit.lower()]
        if amount >= size and amount % size == 0:
            return f"{amount / size:g}{unit}"
    return f"{amount:g}B"


_TERM = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z%]*)\s*$")


def _parse_allowance(key: str, text: str) -> Allowance | None:
    kind = RESOURCES[key][1]
    units = _BYTE_UNITS if kind == "bytes" else _SECOND_UNITS
    if text.strip().lower() == "off":
        return None
    relative, absolute = 0.0, 0.0
    for term in text.split("+"):
        match = _TERM.match(term)
        if match is None:
            raise BaselineError(_tolerance_help(f"{key}: cannot read {term.strip()!r}"))
        number, unit = float(match.group(1)), match.group(2).lower()
        if unit == "%":
            relative += number / 100.0
        elif unit in units:
            absolute += number * units[unit]
        else:
            raise BaselineError(_tolerance_help(
                f"{key}: unit {match.group(2)!r} is not one of %, "
                f"{', '.join(unit if kind == 'seconds' else unit.upper() for unit in units)}"))
    if not (math.isfinite(relative) and math.isfinite(absolute)):
        raise BaselineError(_tolerance_help(f"{key}: {text!r} is not a finite amount"))
    return Allowance(relative, absolute, kind)


def _tolerance_help(problem: str) -> str:
    return (f"{problem}. A tolerance is comma-separated KEY=SPEC with KEY one of "
            f"{', '.join(RESOURCES)} and SPEC like 10%+8MB, 25%+0.5s, 5% or off "
            f"(default {DEFAULT_TOLERANCE_SPEC})")


def parse_tolerance(spec: str | None) -> Tolerance:
    """The defaults, with the keys `spec` names replaced. Raises BaselineError."""
    allowances: dict[str, Allowance | None] = {}
    for source in (DEFAULT_TOLERANCE_SPEC, spec or ""):
        for part in source.split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            if not sep or key not in RESOURCES:
                raise BaselineError(_tolerance_help(f"{part.strip()!r} is not KEY=SPEC"))
            allowances[key] = _parse_allowance(key, value)
    return Tolerance(allowances)


# -- the file -----------------------------------------------------------------------------------


def _environment_id(environment: Mapping[str, Any]) -> str:
    text = json.dumps(dict(environment), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Baseline:
    path: str
    tests: Mapping[str, Mapping[str, Any]]
    environments: Mapping[str, Mapping[str, Any]]

    def environment_of(self, nodeid: str) -> Mapping[str, Any]:
        return self.environments.get(str(self.tests[nodeid].get("environment")), {})

    def environment_warnings(self, current: Mapping[str, Any]) -> list[str]:
        """One line per environment of the baseline that differs from this run's in Python or
        Taichi version, naming how many tests it holds."""
        counts: dict[str, int] = {}
        for entry in self.tests.values():
            counts[str(entry.get("environment"))] = counts.get(str(entry.get("environment")), 0) + 1
        lines = []
        for environment_id, count in sorted(counts.items()):
            changed = env.differences(dict(self.environments.get(environment_id, {})),
                                      dict(current))
            if changed:
                lines.append(f"{count} of {len(self.tests)} baseline tests were measured with "
                             f"another {' and '.join(c.split()[0] for c in changed)} "
                             f"({'; '.join(changed)}): their figures may differ for that reason")
        return lines


def empty(path: str) -> Baseline:
    return Baseline(path, {}, {})


def load(path: str) -> Baseline:
    """Read a baseline file. Raises BaselineError with what is wrong and what to do."""
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except FileNotFoundError:
        raise BaselineError(f"baseline {path!r} does not exist; create it with "
                            f"--taichi-limits-save-baseline={path}") from None
    except (OSError, ValueError) as error:
        raise BaselineError(f"baseline {path!r} cannot be read: {error}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise BaselineError(f"{path!r} is not a pytest-taichi-limits baseline "
                            f"(no \"schema\": \"{SCHEMA}\")")
    if data.get("version") != VERSION:
        raise BaselineError(f"baseline {path!r} has version {data.get('version')!r}; this "
                            f"plugin reads version {VERSION}: save a new one")
    tests, environments = data.get("tests"), data.get("environments")
    if not isinstance(tests, dict) or not isinstance(environments, dict) or not all(
            isinstance(entry, dict) for entry in tests.values()):
        raise BaselineError(f"baseline {path!r} is damaged: \"tests\" and \"environments\" "
                            "must be objects")
    return Baseline(path, tests, environments)


def entry_of(record: UsageRecord, environment_id: str, saved_at: str) -> dict[str, Any]:
    return {
        "own_memory_bytes": record.own_memory_bytes,
        "cpu_s": round(record.cpu_s, 4),
        "wall_s": round(record.wall_s, 4),
        "gpu_bytes": record.gpu_peak_bytes,
        "arch": record.arch,
        "mode": record.mode,
        "environment": environment_id,
        "saved_at": saved_at,
    }


def savable(records: Iterable[UsageRecord]) -> list[UsageRecord]:
    """Records that make a baseline: tests that passed. A failed test's peaks were cut short,
    and a skipped test measured nothing, so they keep whatever entry they had."""
    return [record for record in records if record.outcome in ("passed", "xpassed")]


def save(path: str, records: Iterable[UsageRecord], environment: Mapping[str, Any],
         replace: bool) -> tuple[int, int]:
    """Write (atomically) the baseline; merge into the existing file unless `replace`.

    Returns (tests written by this run, tests in the file).
    """
    previous = empty(path)
    if not replace and os.path.exists(path):
        previous = load(path)
    environment_id = _environment_id(environment)
    saved_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    tests = {nodeid: dict(entry) for nodeid, entry in previous.tests.items()}
    written = 0
    for record in savable(records):
        tests[record.nodeid] = entry_of(record, environment_id, saved_at)
        written += 1
    environments = {key: dict(value) for key, value in previous.environments.items()}
    environments[environment_id] = dict(environment)
    used = {str(entry.get("environment")) for entry in tests.values()}
    document = {
        "schema": SCHEMA,
        "version": VERSION,
        "environments": {key: value for key, value in environments.items() if key in used},
        "tests": tests,
    }
    write_atomic(path, json.dumps(document, indent=2, sort_keys=True) + "\n")
    return written, len(tests)


# -- comparing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Growth:
    """One resource of one test, compared with the baseline."""

    resource: str  # tolerance key
    before: float
    after: float
    allowed: float  # the largest `after` within tolerance
    tolerance: str  # e.g. "10%+16MB"

    @property
    def kind(self) -> str:
        return RESOURCES[self.resource][1]

    @property
    def exceeded(self) -> bool:
        return self.after > self.allowed

    @property
    def growth(self) -> float:
        return self.after - self.before

    @property
    def growth_percent(self) -> float | None:
        return None if self.before <= 0 else 100.0 * self.growth / self.before

    def as_dict(self) -> dict[str, Any]:
        return {"resource": self.resource, "before": self.before, "after": self.after,
                "growth": self.growth, "growth_percent": self.growth_percent,
                "allowed": self.allowed, "tolerance": self.tolerance,
                "exceeded": self.exceeded, "unit": "B" if self.kind == "bytes" else "s"}


def _figures(record: UsageRecord) -> dict[str, float | None]:
    return {"mem": record.own_memory_bytes, "cpu": record.cpu_s, "wall": record.wall_s,
            "gpu": record.gpu_peak_bytes}


def compare(record: UsageRecord, entry: Mapping[str, Any], tolerance: Tolerance) -> list[Growth]:
    """Every compared resource of one test (exceeded or not); GPU only where both measured it."""
    figures = _figures(record)
    growths = []
    for key, allowance in tolerance.allowances.items():
        before, after = entry.get(RESOURCES[key][0]), figures[key]
        if allowance is None or before is None or after is None:
            continue
        growths.append(Growth(key, float(before), float(after), allowance.limit(float(before)),
                              allowance.describe()))
    return growths


def amount(value: float, kind: str, signed: bool = False) -> str:
    sign = "+" if signed and value >= 0 else ""
    if kind == "bytes":
        return sign + human_bytes(value)
    return f"{sign}{value:.2f} s"


def growth_text(growth: Growth) -> str:
    """'64.0 MB -> 128.3 MB (+64.3 MB, +100.5%), allowed up to 86.4 MB (mem=10%+16MB)'."""
    kind = growth.kind
    percent = growth.growth_percent
    percent_text = "" if percent is None else f", {percent:+.1f}%"
    return (f"{amount(growth.before, kind)} -> {amount(growth.after, kind)} "
            f"({amount(growth.growth, kind, signed=True)}{percent_text}), allowed up to "
            f"{amount(growth.allowed, kind)} ({growth.resource}={growth.tolerance})")


def regression_headline(exceeded: list[Growth]) -> str:
    return ("taichi_limits: grew beyond the baseline's tolerance: "
            + "; ".join(f"{RESOURCES[g.resource][2]} {growth_text(g)}" for g in exceeded))


def regression_report(exceeded: list[Growth], compared: list[Growth], baseline: Baseline,
                      nodeid: str, record: UsageRecord, warn_only: bool) -> str:
    """The text a grown test fails (or warns) with: before, after, growth and the tolerance."""
    entry = baseline.tests[nodeid]
    made_with = baseline.environment_of(nodeid)
    lines = [regression_headline(exceeded)]
    max(len(RESOURCES[g.resource][2]) for g in compared)
    rows = []
    for growth in compared:
        kind, percent = growth.kind, growth.growth_percent
        rows.append((RESOURCES[growth.resource][2], amount(growth.before, kind),
                     amount(growth.after, kind),
                     amount(growth.growth, kind, True)
                     + ("" if percent is None else f" ({percent:+.1f}%)"),
                     amount(growth.allowed, kind), f"{growth.resource}={growth.tolerance}",
                     "EXCEEDED" if growth.exceeded else "ok"))
    header = ("", "before", "after", "growth", "allowed up to", "tolerance", "")
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(7)]
    for row in [header, *rows]:
        cells = [f"{row[0]:<{widths[0]}}"]
        cells += [f"{cell:>{width}}" for cell, width in zip(row[1:5], widths[1:5], strict=True)]
        cells += [f"{row[5]:<{widths[5]}}", row[6]]
        lines.append(("  " + "  ".join(cells)).rstrip())
    lines.append(f"  baseline    {baseline.path}, saved {entry.get('saved_at', '?')} with Python "
                 f"{made_with.get('python', '?')}, Taichi {made_with.get('taichi', '?')}, arch "
                 f"{entry.get('arch', '?')} ({entry.get('mode', '?')} mode)")
    if entry.get("arch") not in (None, record.arch) \
            or entry.get("mode") not in (None, record.mode):
        lines.append(f"  note        this run used arch {record.arch} ({record.mode} mode): "
                     "figures of another arch or start mode are not comparable (spawn mode "
                     "counts the interpreter's own start-up)")
    lines.append("  what to do  find what grew, or accept the new figures with "
                 "--taichi-limits-save-baseline (or widen --taichi-limits-tolerance)"
                 + (" [warning only: --taichi-limits-compare-warn]" if warn_only else ""))
    return "\n".join(lines)
