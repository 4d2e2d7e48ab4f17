"""Reading the files the Markdown summary, the HTML report and the command line work from.

The JSON report (formats/jsonreport.py) and the baseline (formats/baseline.py) are read here and
nowhere else
in those modules, through small functions: when the record's shape changes, this is the one
place to adapt. Everything below works on the documents as plain dicts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..model.records import RecordError, UsageRecord
from . import baseline as baselines
from . import jsonreport


class InputError(ValueError):
    """A file given to the command line that cannot be used; the message says why and what to
    give instead."""


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a JSON file (not UTF-8 text)") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not a JSON file ({error})") from None
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


def check_report(path: str, data: Any) -> dict[str, Any]:
    """`data` as a JSON report of the version this plugin writes; InputError otherwise."""
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
    if data.get("version") != jsonreport.VERSION:
        raise InputError(
            f"{path} is a JSON report of version {data.get('version')!r}; this "
            f"version of pytest-taichi-limits reads version {jsonreport.VERSION}: "
            "write it again with this version"
        )
    records = data.get("records")
    if not isinstance(records, list) or not all(
        isinstance(record, dict) and isinstance(record.get("nodeid"), str) for record in records
    ):
        raise InputError(f'{path} is damaged: "records" must be a list of records with a "nodeid"')
    if not isinstance(data.get("environment"), dict):
        raise InputError(f'{path} is damaged: "environment" must be an object')
    return dict(data)


def load_report(path: str) -> dict[str, Any]:
    return check_report(path, read_json(path))


def load_baseline(path: str) -> baselines.Baseline:
    """A baseline file, through baseline.load; a JSON report given instead is named as such."""
    data = read_json(path)
    if kind_of(data) == "report":
        raise InputError(
            f"{path} is a JSON report, not a baseline: give the file written by "
            "--taichi-limits-save-baseline"
        )
    try:
        return baselines.load(path)
    except baselines.BaselineError as error:
        raise InputError(str(error)) from None


# -- adapters to the record shape ---------------------------------------------------------------


def usage_record(data: Mapping[str, Any]) -> UsageRecord:
    """A record of a JSON report as the plugin's own record object (for render/summary.py and the
    baseline compare)."""
    try:
        return UsageRecord.from_json(dict(data))
    except RecordError as error:
        raise InputError(f"a record cannot be read: {error}") from None


def records(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(record) for record in document.get("records") or []]


def measured(record: Mapping[str, Any]) -> bool:
    """False for a test that never ran its body: its figures mean nothing."""
    return record.get("outcome") != "skipped"


def comparable(record: Mapping[str, Any]) -> bool:
    """Whether --taichi-limits-compare compares this test: its body ran and was not skipped
    (an xfail counts as skipped there). An error in setup cannot be told from one in teardown
    here; its figures are the setup's, small, so comparing them does not fail it falsely."""
    return record.get("outcome") in ("passed", "failed", "xpassed", "error")


def budget_use(record: Mapping[str, Any]) -> dict[str, float]:
    """Per limited resource, the share of its budget the test used (1.0 = all of it)."""
    budget = record.get("budget") or {}
    figures = {
        "mem_mb": record.get("own_memory_bytes"),
        "cpu_s": record.get("cpu_s"),
        "wall_s": record.get("wall_s"),
        "gpu_gb": record.get("gpu_peak_bytes"),
    }
    scale = {"mem_mb": 1024.0 * 1024.0, "cpu_s": 1.0, "wall_s": 1.0, "gpu_gb": 1024.0**3}
    use = {}
    for key, figure in figures.items():
        limit = budget.get(key)
        if isinstance(limit, (int, float)) and limit > 0 and isinstance(figure, (int, float)):
            use[key] = float(figure) / (float(limit) * scale[key])
    return use


def verdict_counts(document: Mapping[str, Any]) -> dict[str, int]:
    """Tests per outcome, and the violations and regressions among them."""
    counts: dict[str, int] = {}
    for record in records(document):
        outcome = str(record.get("outcome"))
        counts[outcome] = counts.get(outcome, 0) + 1
    counts["violations"] = sum(1 for record in records(document) if record.get("violation"))
    counts["regressions"] = sum(1 for record in records(document) if record.get("regression"))
    return counts


def regression_fails(record: Mapping[str, Any]) -> bool:
    regression = record.get("regression") or {}
    return bool(regression) and not regression.get("warn_only")


def failing(document: Mapping[str, Any]) -> bool:
    """A violation, a failing regression, or a failed or erroring test."""
    return any(
        record.get("violation")
        or regression_fails(record)
        or record.get("outcome") in ("failed", "error")
        for record in records(document)
    )


def grown_records(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The records that carry a regression, by test id."""
    return sorted((r for r in records if r.get("regression")), key=lambda r: str(r["nodeid"]))


def exceeded_growths(
    grown: Iterable[Mapping[str, Any]],
) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(record, growth) for every figure that grew beyond its tolerance, by test and resource:
    the rows of the regression tables in Markdown and HTML."""
    for record in grown:
        growths = record["regression"].get("growths") or []
        for growth in sorted(growths, key=lambda g: str(g["resource"])):
            if growth.get("exceeded"):
                yield record, growth
