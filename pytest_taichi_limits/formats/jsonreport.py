"""`--taichi-limits-json PATH`: one JSON document per session, written atomically, and the
`Report` object it is read into (what the Markdown, HTML and command-line views render).

Schema "pytest-taichi-limits/report", version 4 (REPORT_SCHEMA below is its JSON Schema; a field
is only ever added in a later version, never renamed or removed, without a version change).
Version 4 (from version 3): records carry `leaks` (null, or leak hunting's rounds: every round's
reading, the verdict on each figure, the causes; model/leaks.py), the budget `leak_mb` (MiB of
growth allowed per measured round, null = leak hunting off), and a violation's resource may be
`leak_mb` (unit "MiB/round"); the document carries `calibration` (what the calibration loop cost
at the run's start and end: the machine's speed, measure/calibration.py), the baseline section
`calibration` (the baseline's), and each regression growth its `scale` (how much slower the
machine was than when the baseline was saved: the baseline's CPU and wall figures are compared
multiplied by it). Readers of version 4 read versions 2 and 3 (absent: no leak hunting, not
calibrated, scale 1).
Version 3 (from version 2): records carry `reason` (why a failed test failed, in one line),
`started` (false for a test refused before it started: admission, start mode; such a record has
no figures, `pid` 0) and `ending` (how the test's process ended); the document carries `source`
(the commit, branch and command line of the run, where known). Readers of version 3 read version
2 documents too (the new fields take their defaults).
Version 2 (from version 1): records are `UsageRecord.to_json()`; new `peak_own_memory_bytes` (the
figure mem_mb is checked against), `memory_method` (how it was measured) and `gpu_clamps`;
outcome "interrupted"; `violation.unit` of mem_mb is "MiB" and of gpu_gb "GiB"; regression
growths carry `before_min` and `runs` (the baseline's range).

- `schema`, `version`: identify the document.
- `created_at`: ISO 8601 UTC time the document was written.
- `complete`: false when the session was interrupted (Ctrl-C, -x, pytest.exit, also with
  returncode 0, or a test that raised KeyboardInterrupt): tests that did not run have no record.
- `exit_status`: pytest's exit status (0 all passed, 1 failures, 2 interrupted, ...).
- `environment`: Python, pytest, Taichi and plugin versions, host, platform, machine.
- `source`: `commit`, `branch` and `command` of the run, each null where not known (from CI
  variables, else from `git`).
- `records`: one per supervised test, sorted by node id: `nodeid`, `outcome` (passed, failed,
  error, skipped, xfailed, xpassed, or interrupted: the test stopped the session before it
  finished), `reason` (a failed test's one-line reason, else ""), `started`, `own_memory_bytes`
  (the figure mem_mb was checked against, shown everywhere and compared with a baseline),
  `peak_own_memory_bytes` (the same figure), `memory_method` (cgroup-v2, cgroup-v1, smaps or
  rss: docs/memory.md), optional `memory_note` (why not a cgroup, or what could not be
  attributed), `page_cache_bytes` (cgroup methods: page cache, never charged),
  `shm_files_left` and `shm_not_removed` (what the test left in /dev/shm, and what
  --taichi-limits-clean-shm kept, with why), `peak_own_rss_bytes`, `kernel_own_rss_bytes`,
  `peak_rss_bytes`, `start_rss_bytes`, `peak_vms_bytes`, `cpu_s`,
  `wall_s`, `gpu_peak_bytes` (null when not measured) and `gpu_note` (why), `gpu_clamps` (what
  the gpu_gb cap took from ti.init calls), `budget` (the limits in force, null = off; mem_mb in
  MiB, gpu_gb in GiB), `pid`, `started_at` (Unix time), `mode` (fork/reimport/spawn), `arch`
  (Taichi arch of the test's last ti.init, or "not initialised"), `ending` (null, or how the
  test's process ended: "exited with status N", "killed by signal N (NAME)"), `violation` (null
  or the violation), `regression` (null or the baseline comparison that failed or warned),
  `timeline` (optional: what the supervisor sampled, at most 200 points, documented in
  model/timeline.py), `leaks` (null, or leak hunting's `warmup_rounds`, `measured_rounds`,
  `allowance_bytes`, `rounds`: the reading after each round (`own_memory_bytes` since the test
  began, `gpu_bytes`, `open_fds`, `threads`, `processes`, the round's `cpu_s` and `wall_s`,
  Taichi's counts in `taichi`, objects alive per call site in `sites`, ndarrays made per call
  site in `made`), `series`: per judged figure its `slope` per round, `growing_rounds`,
  `rounds`, `allowance` and `leak`; `causes`: where what stayed was made; `note`: why the rounds
  were not judged, "" when they were).
- `violations`: every violation of the session (the same objects as in the records).
- `calibration`: null where the run was not calibrated (no baseline compared or saved, no JSON
  report, or --taichi-limits-calibration=off); else `start` and `end` (null when the run did not
  get that far), each `{"cpu_s", "wall_s"}` of the calibration loop.
- `baseline`: null without --taichi-limits-compare; else its `path`, `tolerance`, `warn_only`,
  `regressions` (node ids), `new_tests` (measured now, not in the baseline), `missing_tests`
  (in the baseline, not measured now) and `calibration` (the median of its tests' calibrations,
  or null).

The file is written to a temporary file in the same directory and moved over PATH with
os.replace: a run killed at any moment leaves either the previous document or the new one.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config.budget import BUDGET_KEYS
from ..model.leaks import LEAKS_SCHEMA
from ..model.records import OUTCOMES, UNITS, Calibration, Growth, RecordError, UsageRecord
from ..model.timeline import TIMELINE_SCHEMA

SCHEMA = "pytest-taichi-limits/report"
VERSION = 4
#: Versions this plugin reads (3 and 4 only added fields to 2).
READABLE_VERSIONS = (2, 3, 4)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


_NUMBER = {"type": "number"}
_INTEGER = {"type": "integer", "minimum": 0}
_STRING = {"type": "string"}
_NULLABLE_OBJECT = {"type": ["object", "null"]}

_RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "nodeid",
        "outcome",
        "own_memory_bytes",
        "peak_own_memory_bytes",
        "memory_method",
        "gpu_clamps",
        "peak_own_rss_bytes",
        "kernel_own_rss_bytes",
        "peak_rss_bytes",
        "start_rss_bytes",
        "peak_vms_bytes",
        "cpu_s",
        "wall_s",
        "gpu_peak_bytes",
        "gpu_note",
        "budget",
        "pid",
        "started_at",
        "mode",
        "arch",
        "worker_pid",
        "worker_test_number",
        "violation",
        "regression",
        "reason",
        "started",
    ],
    "additionalProperties": False,
    "properties": {
        "nodeid": _STRING,
        "outcome": {"enum": list(OUTCOMES)},
        "own_memory_bytes": _INTEGER,
        "peak_own_memory_bytes": _INTEGER,
        "memory_method": _STRING,
        "gpu_clamps": {"type": "array", "items": _STRING},
        "peak_own_rss_bytes": _INTEGER,
        "kernel_own_rss_bytes": _INTEGER,
        "peak_rss_bytes": _INTEGER,
        "start_rss_bytes": _INTEGER,
        "peak_vms_bytes": _INTEGER,
        "cpu_s": {"type": "number", "minimum": 0},
        "wall_s": {"type": "number", "minimum": 0},
        "gpu_peak_bytes": {"type": ["integer", "null"], "minimum": 0},
        "gpu_note": _STRING,
        "budget": {
            "type": "object",
            "required": list(BUDGET_KEYS),
            "additionalProperties": False,
            "properties": {
                key: {"type": ["number", "null"], "exclusiveMinimum": 0} for key in BUDGET_KEYS
            },
        },
        "pid": {"type": "integer", "minimum": 0},  # 0: never started
        "started_at": _NUMBER,
        "mode": {"enum": ["fork", "reimport", "spawn"]},
        "arch": _STRING,
        "worker_pid": {"type": "integer", "minimum": 0},
        "ending": {"type": ["string", "null"]},
        "reason": _STRING,
        "started": {"type": "boolean"},
        "worker_test_number": {"type": "integer", "minimum": 1},
        "admission": {"type": ["object", "null"]},
        "shm_files_left": {"type": "array", "items": _STRING},
        "shm_not_removed": {"type": "array", "items": _STRING},
        "memory_note": _STRING,
        "page_cache_bytes": {"type": ["integer", "null"], "minimum": 0},
        "violation": {
            "type": ["object", "null"],
            "required": [
                "nodeid",
                "resource",
                "limit",
                "measured",
                "unit",
                "over_by",
                "detected_by",
                "phase",
                "pid",
                "at",
                "signals_sent",
                "stack",
            ],
            "properties": {"resource": {"enum": list(UNITS)}},
        },
        "timeline": TIMELINE_SCHEMA,
        "leaks": LEAKS_SCHEMA,
        "regression": {
            "type": ["object", "null"],
            "required": ["warn_only", "growths", "text"],
            "properties": {
                "warn_only": {"type": "boolean"},
                "text": _STRING,
                "growths": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": [
                            "resource",
                            "before",
                            "before_min",
                            "runs",
                            "after",
                            "growth",
                            "allowed",
                            "tolerance",
                            "exceeded",
                            "unit",
                        ],
                        "properties": {"scale": {"type": "number", "exclusiveMinimum": 0}},
                    },
                },
            },
        },
    },
}

_CALIBRATION_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "required": ["cpu_s", "wall_s"],
    "additionalProperties": False,
    "properties": {
        "cpu_s": {"type": "number", "exclusiveMinimum": 0},
        "wall_s": {"type": "number", "exclusiveMinimum": 0},
    },
}

#: JSON Schema (draft 2020-12) of the document.
REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "pytest-taichi-limits session report, version 4",
    "type": "object",
    "required": [
        "schema",
        "version",
        "created_at",
        "complete",
        "exit_status",
        "environment",
        "source",
        "records",
        "violations",
        "baseline",
        "calibration",
    ],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": SCHEMA},
        "version": {"const": VERSION},
        "created_at": _STRING,
        "complete": {"type": "boolean"},
        "exit_status": {"type": "integer"},
        "environment": {
            "type": "object",
            "required": ["python", "pytest", "taichi", "host"],
            "additionalProperties": _STRING,
        },
        "source": {
            "type": "object",
            "required": ["commit", "branch", "command"],
            "additionalProperties": False,
            "properties": {
                key: {"type": ["string", "null"]} for key in ("commit", "branch", "command")
            },
        },
        "records": {"type": "array", "items": _RECORD_SCHEMA},
        "calibration": {
            "type": ["object", "null"],
            "required": ["start", "end"],
            "additionalProperties": False,
            "properties": {"start": _CALIBRATION_SCHEMA, "end": _CALIBRATION_SCHEMA},
        },
        "violations": {"type": "array", "items": {"type": "object"}},
        "baseline": {
            "type": ["object", "null"],
            "required": [
                "path",
                "tolerance",
                "warn_only",
                "regressions",
                "new_tests",
                "missing_tests",
                "environment_warnings",
            ],
            "properties": {
                "path": _STRING,
                "tolerance": _STRING,
                "warn_only": {"type": "boolean"},
                "regressions": {"type": "array", "items": _STRING},
                "new_tests": {"type": "array", "items": _STRING},
                "missing_tests": {"type": "array", "items": _STRING},
                "environment_warnings": {"type": "array", "items": _STRING},
                "calibration": _CALIBRATION_SCHEMA,
            },
        },
    },
}


@dataclass(frozen=True)
class Source:
    """Where the run's code came from and how it was started, where known (None: not)."""

    commit: str | None = None
    branch: str | None = None
    command: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"commit": self.commit, "branch": self.branch, "command": self.command}

    @classmethod
    def from_json(cls, data: Any) -> Source:
        if data is None:
            return cls()  # a version 2 document
        if not isinstance(data, dict) or not all(
            data.get(key) is None or isinstance(data.get(key), str)
            for key in ("commit", "branch", "command")
        ):
            raise RecordError("source must map commit, branch and command to strings or null")
        return cls(data.get("commit"), data.get("branch"), data.get("command"))


@dataclass(frozen=True)
class BaselineSection:
    """What the comparison with a baseline found, for the whole session."""

    path: str
    tolerance: str
    warn_only: bool
    regressions: tuple[str, ...] = ()  # node ids
    new_tests: tuple[str, ...] = ()  # measured now, not in the baseline
    missing_tests: tuple[str, ...] = ()  # in the baseline, not measured now
    environment_warnings: tuple[str, ...] = ()
    #: the median of the baseline's tests' calibrations (None: none calibrated)
    calibration: Calibration | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "tolerance": self.tolerance,
            "warn_only": self.warn_only,
            "regressions": list(self.regressions),
            "new_tests": list(self.new_tests),
            "missing_tests": list(self.missing_tests),
            "environment_warnings": list(self.environment_warnings),
            "calibration": None if self.calibration is None else self.calibration.to_json(),
        }

    @classmethod
    def from_json(cls, data: Any) -> BaselineSection:
        if not isinstance(data, dict):
            raise RecordError("baseline must be an object or null")
        texts = {}
        for key in ("path", "tolerance"):
            if not isinstance(data.get(key), str):
                raise RecordError(f"baseline: {key} must be a string")
            texts[key] = str(data[key])
        lists = {}
        for key in ("regressions", "new_tests", "missing_tests", "environment_warnings"):
            values = data.get(key, [])
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise RecordError(f"baseline: {key} must be a list of strings")
            lists[key] = tuple(values)
        if not isinstance(data.get("warn_only"), bool):
            raise RecordError("baseline: warn_only must be true or false")
        calibration = data.get("calibration")
        return cls(
            texts["path"],
            texts["tolerance"],
            bool(data["warn_only"]),
            **lists,
            calibration=None
            if calibration is None
            else Calibration.from_json(calibration, "baseline: calibration"),
        )


@dataclass(frozen=True)
class RunCalibration:
    """What the calibration loop cost at a run's start and end (None: not measured then)."""

    start: Calibration | None = None
    end: Calibration | None = None

    @property
    def figure(self) -> Calibration | None:
        """The run's calibration: the mean of its start and end."""
        first = self.start or self.end
        return None if first is None else Calibration.combined(first, self.end)

    def to_json(self) -> dict[str, Any] | None:
        if self.start is None and self.end is None:
            return None
        return {
            "start": None if self.start is None else self.start.to_json(),
            "end": None if self.end is None else self.end.to_json(),
        }

    @classmethod
    def from_json(cls, data: Any) -> RunCalibration:
        if data is None:
            return cls()  # not calibrated, or a document of version 2 or 3
        if not isinstance(data, dict):
            raise RecordError("calibration must be an object or null")
        start, end = data.get("start"), data.get("end")
        return cls(
            None if start is None else Calibration.from_json(start, "calibration: start"),
            None if end is None else Calibration.from_json(end, "calibration: end"),
        )


@dataclass(frozen=True)
class Report:
    """One session's results: what the JSON report holds, what every view renders."""

    records: tuple[UsageRecord, ...]  # sorted by node id
    environment: Mapping[str, str]
    complete: bool = True
    exit_status: int = 0
    baseline: BaselineSection | None = None
    source: Source = field(default_factory=Source)
    created_at: str = field(default_factory=_now)
    calibration: RunCalibration = field(default_factory=RunCalibration)

    def speeds(self) -> tuple[Calibration, Calibration] | None:
        """(this run's calibration, the baseline's), where both are known: how much slower or
        faster the machine ran than when the baseline was saved."""
        now = self.calibration.figure
        then = None if self.baseline is None else self.baseline.calibration
        return None if now is None or then is None else (now, then)

    @property
    def failing(self) -> bool:
        """A violation, a failing regression, or a failed or erroring test."""
        return any(record.failing for record in self.records)

    def counts(self) -> dict[str, int]:
        """Tests per outcome."""
        counts: dict[str, int] = {}
        for record in self.records:
            counts[record.outcome] = counts.get(record.outcome, 0) + 1
        return counts

    @property
    def violations(self) -> list[UsageRecord]:
        return [record for record in self.records if record.violation is not None]

    @property
    def regressions(self) -> list[UsageRecord]:
        return [record for record in self.records if record.regression is not None]

    def failed_otherwise(self) -> list[UsageRecord]:
        """Failed, erroring or crashed tests that are no budget violation, and whose failure is
        not only their growth against the baseline (both are listed on their own), by node id."""
        return [record for record in self.records if _failed_otherwise(record)]

    def exceeded_growths(self) -> Iterator[tuple[UsageRecord, Growth]]:
        """(record, growth) for every figure that grew beyond its tolerance, by test and
        resource: the rows of the regression tables in Markdown and HTML."""
        for record in self.regressions:
            assert record.regression is not None
            for growth in record.regression.exceeded:
                yield record, growth

    def to_json(self) -> dict[str, Any]:
        records = [record.to_json() for record in self.records]
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "created_at": self.created_at,
            "complete": self.complete,
            "exit_status": self.exit_status,
            "environment": dict(self.environment),
            "source": self.source.to_json(),
            "records": records,
            "violations": [record["violation"] for record in records if record["violation"]],
            "baseline": None if self.baseline is None else self.baseline.to_json(),
            "calibration": self.calibration.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Report:
        """The document's content as objects; RecordError naming the first thing that is wrong
        (the schema and version are checked by the caller, formats/reading.py)."""
        records = data.get("records")
        if not isinstance(records, list):
            raise RecordError('"records" must be a list of records')
        environment = data.get("environment")
        if not isinstance(environment, dict):
            raise RecordError('"environment" must be an object')
        complete, exit_status = data.get("complete", True), data.get("exit_status", 0)
        if not isinstance(complete, bool):
            raise RecordError('"complete" must be true or false')
        if not isinstance(exit_status, int) or isinstance(exit_status, bool):
            raise RecordError('"exit_status" must be a whole number')
        baseline = data.get("baseline")
        return cls(
            records=tuple(
                sorted(
                    (UsageRecord.from_json(record) for record in records),
                    key=lambda record: record.nodeid,
                )
            ),
            environment={str(key): str(value) for key, value in environment.items()},
            complete=complete,
            exit_status=exit_status,
            baseline=None if baseline is None else BaselineSection.from_json(baseline),
            source=Source.from_json(data.get("source")),
            created_at=str(data.get("created_at", "?")),
            calibration=RunCalibration.from_json(data.get("calibration")),
        )


def _failed_otherwise(record: UsageRecord) -> bool:
    return (
        record.outcome in ("failed", "error")
        and record.violation is None
        and not record.failed_by_growth
    )


def refuse_unsafe_target(path: str) -> None:
    """Raise OSError unless `path` can be replaced by a rename without harm.

    A rename over a device (/dev/null, /dev/full) as root would replace the device node with a
    plain file. Missing directories are created, as pytest's --junitxml does.
    """
    if os.path.lexists(path) and not os.path.isfile(path):
        raise OSError(f"{path!r} exists and is not a regular file")


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` so that no reader and no crash ever sees a partial file.

    The data goes to a temporary file next to `path` (same file system, so the rename is
    atomic), is flushed to disk, and replaces `path` in one rename. OSError propagates.
    """
    refuse_unsafe_target(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def write(path: str, report: Report) -> None:
    write_atomic(path, json.dumps(report.to_json(), indent=2, default=str) + "\n")
