"""`--taichi-limits-json PATH`: one JSON document per session, written atomically.

Schema "pytest-taichi-limits/report", version 2 (REPORT_SCHEMA below is its JSON Schema; a field
is only ever added in a later version, never renamed or removed, without a version change).
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
- `records`: one per supervised test, sorted by node id: `nodeid`, `outcome` (passed, failed,
  error, skipped, xfailed, xpassed, or interrupted: the test stopped the session before it
  finished), `own_memory_bytes` (the figure shown and compared with a baseline: the larger of
  `peak_own_memory_bytes` and the kernel's exact peak growth), `peak_own_memory_bytes`,
  `memory_method`, `peak_own_rss_bytes`, `kernel_own_rss_bytes`, `peak_rss_bytes`,
  `start_rss_bytes`, `peak_vms_bytes`, `cpu_s`, `wall_s`, `gpu_peak_bytes` (null when not
  measured) and `gpu_note` (why), `gpu_clamps` (what the gpu_gb cap took from ti.init calls),
  `budget` (the limits in force, null = off; mem_mb in MiB, gpu_gb in GiB), `pid`, `started_at`
  (Unix time), `mode` (fork/reimport/spawn), `arch` (Taichi arch of the test's last ti.init, or "not
  initialised"), `violation` (null or the violation), `regression` (null or the baseline
  comparison that failed or warned), `timeline` (optional: what the supervisor sampled, at most
  200 points, documented in model/timeline.py).
- `violations`: every violation of the session (the same objects as in the records).
- `baseline`: null without --taichi-limits-compare; else its `path`, `tolerance`, `warn_only`,
  `regressions` (node ids), `new_tests` (measured now, not in the baseline) and `missing_tests`
  (in the baseline, not measured now).

The file is written to a temporary file in the same directory and moved over PATH with
os.replace: a run killed at any moment leaves either the previous document or the new one.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from ..model.records import OUTCOMES
from ..model.timeline import TIMELINE_SCHEMA

SCHEMA = "pytest-taichi-limits/report"
VERSION = 2

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
            "required": ["cpu_s", "mem_mb", "wall_s", "gpu_gb"],
            "additionalProperties": False,
            "properties": {
                key: {"type": ["number", "null"], "exclusiveMinimum": 0}
                for key in ("cpu_s", "mem_mb", "wall_s", "gpu_gb")
            },
        },
        "pid": {"type": "integer", "minimum": 1},
        "started_at": _NUMBER,
        "mode": {"enum": ["fork", "reimport", "spawn"]},
        "arch": _STRING,
        "worker_pid": {"type": "integer", "minimum": 1},
        "worker_test_number": {"type": "integer", "minimum": 1},
        "admission": {"type": ["object", "null"]},
        "shm_files_left": {"type": "array", "items": _STRING},
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
            "properties": {"resource": {"enum": ["cpu_s", "mem_mb", "wall_s", "gpu_gb"]}},
        },
        "timeline": TIMELINE_SCHEMA,
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
                    },
                },
            },
        },
    },
}

#: JSON Schema (draft 2020-12) of the document.
REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "pytest-taichi-limits session report, version 2",
    "type": "object",
    "required": [
        "schema",
        "version",
        "created_at",
        "complete",
        "exit_status",
        "environment",
        "records",
        "violations",
        "baseline",
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
        "records": {"type": "array", "items": _RECORD_SCHEMA},
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
            },
        },
    },
}


def document(
    records: list[Mapping[str, Any]],
    environment: Mapping[str, str],
    complete: bool,
    exit_status: int,
    baseline: Mapping[str, Any] | None,
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="milliseconds"
        ),
        "complete": complete,
        "exit_status": exit_status,
        "environment": dict(environment),
        "records": list(records),
        "violations": [record["violation"] for record in records if record["violation"]],
        "baseline": None if baseline is None else dict(baseline),
    }


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


def write(path: str, report: Mapping[str, Any]) -> None:
    write_atomic(path, json.dumps(report, indent=2, default=str) + "\n")
