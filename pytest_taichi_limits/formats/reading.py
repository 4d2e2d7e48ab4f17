"""Reading the files the command line works from: where JSON documents become objects.

The JSON report (formats/jsonreport.py) becomes a `Report` of `UsageRecord`s, the baseline
(formats/baseline.py) a `Baseline`, here and nowhere else; every view renders the objects. Every
subcommand reads through the same checks: a file that is too large, not JSON, nested without
end, of another kind or version, or with a record of the wrong shape is an InputError that says
which and why.
"""

from __future__ import annotations

import json
from typing import Any

from ..config.units import human_bytes
from ..model.records import RecordError
from . import baseline as baselines
from . import jsonreport
from .jsonreport import Report

#: The largest file read: far above a report of 100,000 tests with timelines (~8 KiB each), far
#: below what would exhaust a CI machine's memory. A device (`/dev/zero`) stops at its first
#: chunk, which cannot start a JSON document.
MAX_INPUT_BYTES = 1024**3
_CHUNK_BYTES = 1024 * 1024


class InputError(ValueError):
    """A file given to the command line that cannot be used; the message says why and what to
    give instead."""


def _read_text(path: str) -> str:
    chunks: list[bytes] = []
    size = 0
    with open(path, "rb") as stream:
        while True:
            chunk = stream.read(_CHUNK_BYTES)
            if not chunk:
                break
            start = chunk.lstrip(b" \t\r\n")
            if not chunks and start and not start.startswith((b"{", b"[")):
                raise InputError(f"{path}: not a JSON file (it does not start with {{)")
            size += len(chunk)
            if size > MAX_INPUT_BYTES:
                raise InputError(
                    f"{path}: larger than {human_bytes(MAX_INPUT_BYTES)}, not a file "
                    "pytest-taichi-limits writes (merge the reports of shards with "
                    "`taichi-limits merge` instead of writing one huge file)"
                )
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8")


def read_json(path: str) -> Any:
    try:
        return json.loads(_read_text(path))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a JSON file (not UTF-8 text)") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not a JSON file ({error})") from None
    except RecursionError:
        raise InputError(
            f"{path}: nested too deeply to be read, not a file pytest-taichi-limits writes"
        ) from None
    except OSError as error:
        raise InputError(f"{path}: cannot be read: {error.strerror or error}") from None


def kind_of(data: Any) -> str:
    """ "report", "baseline" or "unknown"."""
    if isinstance(data, dict):
        if data.get("schema") == jsonreport.SCHEMA:
            return "report"
        if data.get("schema") == baselines.SCHEMA:
            return "baseline"
    return "unknown"


def check_report(path: str, data: Any) -> Report:
    """`data` as a JSON report of a version this plugin reads; InputError otherwise."""
    kind = kind_of(data)
    if kind == "baseline":
        raise InputError(
            f"{path} is a baseline, not a JSON report: give the file written by "
            "--taichi-limits-json"
        )
    if kind != "report":
        raise InputError(
            f'{path} is not a pytest-taichi-limits JSON report (no "schema": '
            f'"{jsonreport.SCHEMA}"); write one with --taichi-limits-json'
        )
    if data.get("version") not in jsonreport.READABLE_VERSIONS:
        raise InputError(
            f"{path} is a JSON report of version {data.get('version')!r}; this "
            f"version of pytest-taichi-limits reads versions "
            f"{', '.join(map(str, jsonreport.READABLE_VERSIONS))}: write it again with this "
            "version"
        )
    try:
        return Report.from_json(data)
    except RecordError as error:
        raise InputError(f"{path} is damaged: {error}") from None


def load_report(path: str) -> Report:
    return check_report(path, read_json(path))


def load_baseline(path: str) -> baselines.Baseline:
    """A baseline file; a JSON report given instead is named as such."""
    return check_baseline(path, read_json(path))


def check_baseline(path: str, data: Any) -> baselines.Baseline:
    """`data`, read from `path`, as a baseline; InputError otherwise."""
    if kind_of(data) == "report":
        raise InputError(
            f"{path} is a JSON report, not a baseline: give the file written by "
            "--taichi-limits-save-baseline"
        )
    try:
        return baselines.parse(path, data)
    except baselines.BaselineError as error:
        raise InputError(str(error)) from None
