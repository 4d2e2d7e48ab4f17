"""The pytest-html cells and extras made from a record (the pytester runs are in
tests/e2e/test_pytest_html.py; a GPU figure can only be shown here, on a machine without one)."""

from __future__ import annotations

import re
from typing import Any

from helpers import report_files

from pytest_taichi_limits.model.records import UsageRecord
from pytest_taichi_limits.results import pytesthtml

MB = 1024 * 1024


def _record(nodeid: str, **fields: Any) -> UsageRecord:
    return UsageRecord.from_json(report_files.record(nodeid, **fields))


def _texts(cells: list[str]) -> list[str]:
    return [re.sub(r"<[^>]*>", "", re.sub(r"<span hidden[^>]*>\d*</span>", "", c)) for c in cells]


def test_cells_of_a_gpu_test_with_every_budget() -> None:
    record = _record(
        "t.py::test_gpu",
        memory_mb=300.0,
        cpu_s=1.5,
        wall_s=2.25,
        gpu_bytes=512 * MB,
        budget={"cpu_s": 3.0, "mem_mb": 1024.0, "wall_s": 600.0, "gpu_gb": 1.0},
    )
    cells = pytesthtml.figure_cells(record)
    assert _texts(cells) == ["300.0 MiB", "1.50 s", "2.25 s", "512.0 MiB", "50%"]
    columns = re.findall(r'class="col-(\w+)"', "".join(cells))
    assert columns == [column for _, column in pytesthtml.COLUMNS]
    assert 'title="cpu_s 50%, gpu_gb 50%, mem_mb 29%, wall_s 0%"' in cells[-1]


def test_cells_sort_by_their_figures_as_text() -> None:
    keys = [
        pytesthtml.figure_cells(_record("t.py::x", memory_mb=mb))[0] for mb in (9.0, 10.0, 200.0)
    ]
    assert sorted(keys) == keys  # "9.0 MiB" before "10.0 MiB": the hidden key orders them


def test_a_test_without_gpu_figure_or_limits() -> None:
    record = _record(
        "t.py::test_cpu", budget={"cpu_s": None, "mem_mb": None, "wall_s": None, "gpu_gb": None}
    )
    texts = _texts(pytesthtml.figure_cells(record))
    assert texts[3:] == ["not measured", "—"]
    assert 'title="not measured (no NVML)"' in pytesthtml.figure_cells(record)[3]


def test_ids_and_notes_are_escaped() -> None:
    record = _record("t.py::x", gpu_bytes=None, gpu_note='<b onclick="x">')
    assert "<b onclick" not in "".join(pytesthtml.figure_cells(record))


def test_the_violation_text_is_found_after_a_workers_line() -> None:
    failures = [
        "something else",
        "[gw1] linux -- Python 3.11\ntaichi_limits: mem_mb exceeded: 300 MiB\n  caught by ...",
    ]
    assert pytesthtml.violation_text(failures, "mem_mb") == (
        "taichi_limits: mem_mb exceeded: 300 MiB\n  caught by ..."
    )
    assert pytesthtml.violation_text(failures, "cpu_s") is None
