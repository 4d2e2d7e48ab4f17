"""--taichi-limits-suggest: marker lines that are valid markers, and an ini snippet that fits."""

from __future__ import annotations

import ast
import re
from typing import Any, cast

import pytest
from helpers.plugin_types import RunPlugin

from pytest_taichi_limits.config.budget import marker_values

BODIES = """
import pytest
import taichi as ti


@pytest.fixture
def cpu():
    ti.init(arch=ti.cpu, offline_cache=False)
    yield
    ti.reset()


{mark_field}
def test_field(cpu):
    values = ti.field(ti.f32, shape=32 * 1024 * 1024)
    values.fill(2.0)


{mark_plain}
def test_plain():
    assert sum(range(1000)) == 499500
"""

_LINE = re.compile(r"^(@pytest\.mark\.taichi_limits\((?P<args>[^)]*)\))  # (?P<nodeid>\S+) \(")


def _suggested(result: pytest.RunResult) -> dict[str, str]:
    found = {}
    for line in result.outlines:
        match = _LINE.match(line)
        if match:
            found[match.group("nodeid")] = match.group(1)
    return found


def test_suggested_markers_parse_and_pass_when_fed_back(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(test_measured=BODIES.format(mark_field="", mark_plain=""))
    result = run_plugin("--taichi-limits", "--taichi-limits-suggest")
    result.assert_outcomes(passed=2)
    markers = _suggested(result)
    assert set(markers) == {"test_measured.py::test_field", "test_measured.py::test_plain"}
    for marker in markers.values():
        call = ast.parse(marker.lstrip("@"), mode="eval").body
        assert isinstance(call, ast.Call) and not call.args
        keywords = cast(
            "dict[str, Any]",
            {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords},
        )
        assert set(keywords) == {"mem_mb", "cpu_s", "wall_s"}  # no GPU measured here
        marker_values("t", [pytest.mark.taichi_limits(**keywords).mark])  # valid, or raises
    field_mb = ast.literal_eval(
        markers["test_measured.py::test_field"].split("mem_mb=")[1].split(",")[0]
    )
    assert field_mb >= 128 * 1.5 + 64  # the 128 MB field, with the documented headroom
    # Feed them back: the same tests carrying the suggested markers, without --taichi-limits.
    pytester.makepyfile(
        test_measured=BODIES.format(
            mark_field=markers["test_measured.py::test_field"],
            mark_plain=markers["test_measured.py::test_plain"],
        )
    )
    result = run_plugin("--taichi-limits-json=fed.json")
    result.assert_outcomes(passed=2)
    assert '"mem_mb": ' + str(field_mb) in (pytester.path / "fed.json").read_text()


def test_ini_snippet_fits_every_test(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    pytester.makepyfile(test_measured=BODIES.format(mark_field="", mark_plain=""))
    result = run_plugin("--taichi-limits", "--taichi-limits-suggest")
    lines = result.outlines
    start = lines.index("[pytest]")
    snippet = ["[pytest]"]
    for line in lines[start + 1 :]:
        if not line.startswith("taichi_limits_"):
            break
        snippet.append(line)
    assert [line.split(" = ")[0] for line in snippet[1:]] == [
        "taichi_limits_cpu_s",
        "taichi_limits_mem_mb",
        "taichi_limits_wall_s",
    ]
    field_mb = float(
        _suggested(result)["test_measured.py::test_field"].split("mem_mb=")[1].split(",")[0]
    )
    assert f"taichi_limits_mem_mb = {field_mb:g}" in snippet  # the largest suggestion
    pytester.makefile(".ini", pytest="\n".join(snippet) + "\n")
    result = run_plugin("--taichi-limits")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"*default budget cpu_s=* mem_mb={field_mb:g} wall_s=*"])
