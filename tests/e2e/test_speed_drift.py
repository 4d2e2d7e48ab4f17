"""A baseline's CPU figures compared on a machine that runs slower than when it was saved
(issue 22, item 3), through real pytest runs.

The slower machine is simulated without depending on this one's speed: the test burns twice the
CPU time (process_time) when SLOWDOWN=2, and the run is told its calibration loop took twice as
long (--taichi-limits-calibration=SECONDS, the figure the loop would otherwise measure).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.plugin_types import RunPlugin

BURNS = """
import os
import time

def test_burns():
    seconds = 0.4 * float(os.environ.get("SLOWDOWN", "1"))
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
"""

TOLERANCE = "--taichi-limits-tolerance=cpu=20%+0.1s"


@pytest.fixture
def saved(pytester: pytest.Pytester, run_plugin: RunPlugin) -> Path:
    pytester.makepyfile(test_burns=BURNS)
    result = run_plugin(
        "--taichi-limits",
        "--taichi-limits-calibration=0.1",
        "--taichi-limits-save-baseline=base.json",
    )
    result.assert_outcomes(passed=1)
    path = pytester.path / "base.json"
    entry = json.loads(path.read_text())["tests"]["test_burns.py::test_burns"]
    assert entry["calibration"] == {"cpu_s": 0.1, "wall_s": 0.1}
    return path


def test_a_machine_twice_as_slow_is_no_regression_and_the_report_says_so(
    pytester: pytest.Pytester,
    run_plugin: RunPlugin,
    saved: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLOWDOWN", "2")
    result = run_plugin(
        "--taichi-limits",
        "--taichi-limits-calibration=0.2",
        f"--taichi-limits-compare={saved}",
        TOLERANCE,
        "--taichi-limits-json=report.json",
    )
    result.assert_outcomes(passed=1)
    said = (
        "compared with when the baseline was saved, the machine ran 2.00x slower (CPU) and "
        "2.00x slower (wall)*"
    )
    result.stdout.fnmatch_lines([f"taichi-limits: {said}", f"machine speed: {said}"])
    report = json.loads((pytester.path / "report.json").read_text())
    assert report["calibration"] == {
        "start": {"cpu_s": 0.2, "wall_s": 0.2},
        "end": {"cpu_s": 0.2, "wall_s": 0.2},
    }
    assert report["baseline"]["calibration"] == {"cpu_s": 0.1, "wall_s": 0.1}
    assert report["baseline"]["regressions"] == []


def test_today_s_comparison_would_have_failed_it(
    run_plugin: RunPlugin, saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLOWDOWN", "2")
    result = run_plugin(
        "--taichi-limits",
        "--taichi-limits-calibration=off",
        f"--taichi-limits-compare={saved}",
        TOLERANCE,
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*grew beyond the baseline's tolerance: CPU time 0.* s -> 0.* s (+0.*"]
    )
    result.stdout.no_fnmatch_line("*machine speed*")


def test_a_real_growth_at_the_same_speed_still_fails_and_names_the_scale(
    run_plugin: RunPlugin, saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLOWDOWN", "2")
    # The machine is as fast as before: twice the CPU is the test's own doing.
    result = run_plugin(
        "--taichi-limits",
        "--taichi-limits-calibration=0.1",
        f"--taichi-limits-compare={saved}",
        TOLERANCE,
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*grew beyond the baseline's tolerance: CPU time*"])
    # 1.5x slower: 0.8 s against 0.4 s x 1.5 + 20% + 0.1 s = 0.82 s would pass; 1.25x fails,
    # and the report says by how much the baseline was scaled.
    result = run_plugin(
        "--taichi-limits",
        "--taichi-limits-calibration=0.125",
        f"--taichi-limits-compare={saved}",
        TOLERANCE,
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*CPU time 0.* s x1.25 = 0.* s -> 0.* s*",
            "  speed       cpu x1.25: the machine was that much slower*",
        ]
    )
