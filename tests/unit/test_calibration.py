"""CPU and wall time against a baseline on a machine whose speed drifts (issue 22, item 3): the
calibration loop, the scaling arithmetic of the comparison and of a widened range, the words the
reports use, and where the figures are stored (baseline file, JSON report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.report_files import record

from pytest_taichi_limits.config.options import read_options
from pytest_taichi_limits.config.tolerance import parse_tolerance
from pytest_taichi_limits.formats import baseline as baselines
from pytest_taichi_limits.formats.jsonreport import (
    REPORT_SCHEMA,
    BaselineSection,
    Report,
    RunCalibration,
)
from pytest_taichi_limits.measure.calibration import calibrate
from pytest_taichi_limits.model.records import Calibration, Growth, RecordError, UsageRecord
from pytest_taichi_limits.results.speed import RunSpeed

THEN = Calibration(cpu_s=0.030, wall_s=0.032)
#: 1.5x slower in CPU time (a busy host), 3x in wall time (a hog on the same core)
NOW = Calibration(cpu_s=0.045, wall_s=0.096)
TOLERANCE = parse_tolerance("cpu=20%+0.1s,wall=20%+0.1s")


def _record(cpu_s: float, wall_s: float, memory_mb: float = 10.0) -> UsageRecord:
    return UsageRecord.from_json(record("t.py::t", cpu_s=cpu_s, wall_s=wall_s, memory_mb=memory_mb))


def _entry(calibration: Calibration | None, cpu_s: float = 2.0, wall_s: float = 3.0) -> Any:
    return baselines.merged_entry(
        None, _record(cpu_s, wall_s), "env", {}, {}, "2026-12-01", calibration=calibration
    )


def _by_resource(growths: list[Growth]) -> dict[str, Growth]:
    return {growth.resource: growth for growth in growths}


# -- the arithmetic -------------------------------------------------------------------------------


def test_ratios_and_the_run_figure() -> None:
    assert NOW.ratio("cpu", THEN) == pytest.approx(1.5)
    assert NOW.ratio("wall", THEN) == pytest.approx(3.0)
    assert THEN.ratio("cpu", NOW) == pytest.approx(1 / 1.5)
    both = Calibration.combined(Calibration(0.04, 0.05), Calibration(0.06, 0.07))
    assert (both.cpu_s, both.wall_s) == pytest.approx((0.05, 0.06))
    assert Calibration.combined(NOW, None) is NOW


def test_cpu_and_wall_are_compared_at_this_run_s_speed() -> None:
    entry = _entry(THEN, cpu_s=2.0, wall_s=3.0)
    # Every test 1.5x the CPU and 3x the wall on the slower machine: no growth.
    slower = _record(cpu_s=3.0, wall_s=9.0)
    growths = _by_resource(baselines.compare(slower, entry, TOLERANCE, NOW))
    cpu, wall, memory = growths["cpu"], growths["wall"], growths["mem"]
    assert (cpu.scale, wall.scale, memory.scale) == pytest.approx((1.5, 3.0, 1.0))
    assert cpu.allowed == pytest.approx(2.0 * 1.5 * 1.2 + 0.1)
    assert wall.allowed == pytest.approx(3.0 * 3.0 * 1.2 + 0.1)
    assert not cpu.exceeded and not wall.exceeded
    assert cpu.growth == pytest.approx(0.0) and cpu.before == 2.0  # stored as saved
    # Today's comparison (no calibration): both would fail.
    unscaled = _by_resource(baselines.compare(slower, entry, TOLERANCE))
    assert unscaled["cpu"].exceeded and unscaled["wall"].exceeded
    assert unscaled["cpu"].scale == 1.0
    # A real growth on the slower machine is still caught: 1.5x more CPU than the speed says.
    grown = _by_resource(baselines.compare(_record(4.5, 9.0), entry, TOLERANCE, NOW))
    assert grown["cpu"].exceeded and grown["cpu"].growth_percent == pytest.approx(50.0)
    # A faster machine tightens the allowance: the same figures as before now exceed it.
    faster = Calibration(cpu_s=0.015, wall_s=0.032)
    assert _by_resource(baselines.compare(_record(2.0, 3.0), entry, TOLERANCE, faster))[
        "cpu"
    ].exceeded


def test_without_a_calibration_on_either_side_nothing_is_scaled() -> None:
    slower = _record(cpu_s=3.0, wall_s=9.0)
    for entry, now in ((_entry(None), NOW), (_entry(THEN), None)):
        growths = baselines.compare(slower, entry, TOLERANCE, now)
        assert {growth.scale for growth in growths} == {1.0}


def test_a_range_stays_in_the_units_of_the_run_it_started_in() -> None:
    first = _entry(THEN, cpu_s=2.0, wall_s=3.0)
    assert first.calibration == THEN
    # The slower run adds its figures at the first run's speed: 3.3 s of CPU at 1.5x is 2.2 s.
    widened = baselines.merged_entry(
        first, _record(3.3, 9.0), "env", {}, {}, "2026-12-02", calibration=NOW
    )
    cpu, wall = widened.ranges["cpu_s"], widened.ranges["wall_s"]
    assert cpu is not None and wall is not None
    assert (cpu.low, cpu.high) == pytest.approx((2.0, 2.2))
    assert (wall.low, wall.high) == pytest.approx((3.0, 3.0))
    memory = widened.ranges["own_memory_bytes"]
    assert memory is not None and memory.high == 10 * 1024 * 1024  # memory is never scaled
    assert widened.calibration == THEN and widened.runs == 2
    # An entry saved before calibrations existed takes the run's, unscaled.
    old = _entry(None, cpu_s=2.0)
    assert baselines.merged_entry(
        old, _record(3.0, 3.0), "env", {}, {}, "x", calibration=NOW
    ).calibration == (NOW)


def test_what_the_reports_say() -> None:
    text = baselines.speed_text(NOW, THEN)
    assert text.startswith(
        "compared with when the baseline was saved, the machine ran 1.50x slower (CPU) and "
        "3.00x slower (wall) (calibration loop:"
    )
    assert "0.0450 s CPU" in text and "0.0300 s" in text
    assert "the machine ran 1.50x faster (CPU) and 3.00x faster (wall)" in (
        baselines.speed_text(THEN, NOW)
    )
    assert "about as fast (CPU)" in baselines.speed_text(Calibration(0.031, 0.05), THEN)
    growth = Growth("cpu", 2.0, 1.8, 3, 3.1, 3.7, "20%+0.1s", 1.5)
    assert baselines.seen_text(growth) == "1.80 s..2.00 s x1.50 = 3.00 s"
    assert baselines.growth_text(growth).startswith(
        "1.80 s..2.00 s x1.50 = 3.00 s -> 3.10 s (+0.10 s, +3.3%), allowed up to 3.70 s"
    )


def test_a_regression_report_names_the_scale() -> None:
    entry = _entry(THEN, cpu_s=2.0, wall_s=3.0)
    grown = _record(cpu_s=4.5, wall_s=9.0)
    compared = baselines.compare(grown, entry, TOLERANCE, NOW)
    exceeded = [growth for growth in compared if growth.exceeded]
    text = baselines.regression_report(
        exceeded,
        compared,
        baselines.Baseline("b.json", {"t.py::t": entry}),
        "t.py::t",
        grown,
        False,
    )
    assert "  speed       cpu x1.50, wall x3.00: the machine was that much slower" in text


# -- where the figures are kept ------------------------------------------------------------------


def test_the_baseline_file_keeps_each_entry_s_calibration(tmp_path: Path) -> None:
    path = str(tmp_path / "base.json")
    records = [_record(2.0, 3.0)]
    baselines.save(path, records, {"python": "3"}, replace=True, calibration=THEN)
    loaded = baselines.load(path)
    assert loaded.tests["t.py::t"].calibration == THEN
    assert loaded.calibration() == THEN
    data = json.loads(Path(path).read_text())
    del data["tests"]["t.py::t"]["calibration"]  # a file written before calibrations
    Path(path).write_text(json.dumps(data))
    assert baselines.load(path).tests["t.py::t"].calibration is None
    data["tests"]["t.py::t"]["calibration"] = {"cpu_s": 0, "wall_s": 1}
    Path(path).write_text(json.dumps(data))
    with pytest.raises(baselines.BaselineError, match="field 'calibration' must be"):
        baselines.load(path)


def test_the_json_report_keeps_the_run_s_and_the_baseline_s_calibration() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    growth = Growth("cpu", 2.0, 2.0, 1, 3.0, 3.7, "20%+0.1s", 1.5)
    assert Growth.from_json(growth.to_json()) == growth
    old = growth.to_json()
    del old["scale"]  # a report of version 3
    assert Growth.from_json(old).scale == 1.0
    report = Report(
        records=(_record(3.0, 9.0),),
        environment={"python": "3", "pytest": "9", "taichi": "1.7.4", "host": "h"},
        baseline=BaselineSection("b.json", "cpu=20%", False, calibration=THEN),
        calibration=RunCalibration(NOW, Calibration(0.047, 0.1)),
    )
    document = report.to_json()
    jsonschema.validate(document, REPORT_SCHEMA)
    again = Report.from_json(document)
    assert again.calibration == report.calibration
    assert again.baseline is not None and again.baseline.calibration == THEN
    assert again.speeds() == (Calibration(0.046, 0.098), THEN)
    assert Report.from_json({**document, "calibration": None}).speeds() is None
    with pytest.raises(RecordError, match="cpu_s and wall_s must be positive"):
        Calibration.from_json({"cpu_s": -1, "wall_s": 1}, "calibration")


# -- measuring ------------------------------------------------------------------------------------


def test_the_loop_measures_cpu_and_wall_time() -> None:
    figure = calibrate(repeats=1)
    assert 0 < figure.cpu_s <= figure.wall_s + 0.01  # one thread: never more CPU than wall


def test_a_given_figure_is_taken_as_it_is_and_off_measures_nothing() -> None:
    given = RunSpeed(0.25, wanted=True)
    assert given.start() == Calibration(0.25, 0.25)
    assert given.finish() == RunCalibration(Calibration(0.25, 0.25), Calibration(0.25, 0.25))
    assert RunSpeed("off", wanted=True).finish() == RunCalibration()
    assert RunSpeed("auto", wanted=False).start() is None


@pytest.mark.parametrize(
    "value, parsed",
    [(None, "auto"), ("auto", "auto"), ("OFF", "off"), ("0.25", 0.25), ("30ms", 0.03)],
)
def test_the_option(pytester: pytest.Pytester, value: str | None, parsed: object) -> None:
    args = [] if value is None else [f"--taichi-limits-calibration={value}"]
    assert read_options(pytester.parseconfig(*args)).calibration == parsed


@pytest.mark.parametrize("value", ["0", "-1", "fast", "61"])
def test_a_bad_option_is_a_usage_error(pytester: pytest.Pytester, value: str) -> None:
    config = pytester.parseconfig(f"--taichi-limits-calibration={value}")
    with pytest.raises(pytest.UsageError, match="--taichi-limits-calibration must be auto, off"):
        read_options(config)
