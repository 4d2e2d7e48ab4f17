"""Baseline tolerance specs and the reading of the compared baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_taichi_limits.admission import gate
from pytest_taichi_limits.config.options import read_options
from pytest_taichi_limits.formats.baseline import (
    DEFAULT_TOLERANCE_SPEC,
    SCHEMA,
    VERSION,
    ToleranceError,
    parse_tolerance,
)
from pytest_taichi_limits.results.session import RecordMaker, load_baseline
from pytest_taichi_limits.results.speed import RunSpeed


@pytest.mark.parametrize(
    "spec, key, limit_of_100",
    [
        ("mem=10%+8MB", "mem", 100 * 1.1 + 8 * 1024 * 1024),
        ("cpu=25%+0.5s", "cpu", 125.5),
        ("cpu=500ms", "cpu", 100.5),
        ("gpu=1GB", "gpu", 100 + 1024**3),
        ("wall=5%", "wall", 105.0),
        ("MEM = 1% + 1KB + 1B", "mem", 101 + 1025),
        ("mem=8M", "mem", 100 + 8 * 1024 * 1024),  # the units --taichi-limits-capacity takes
        ("gpu=1.5GiB", "gpu", 100 + 1.5 * 1024**3),
    ],
)
def test_tolerance_specs(spec: str, key: str, limit_of_100: float) -> None:
    allowance = parse_tolerance(spec).allowances[key]
    assert allowance is not None
    assert allowance.limit(100) == pytest.approx(limit_of_100)


def test_tolerance_defaults_and_errors() -> None:
    defaults = parse_tolerance(None)
    assert defaults.describe() == DEFAULT_TOLERANCE_SPEC
    assert defaults.allowances["wall"] is None
    assert parse_tolerance("mem=off").allowances["mem"] is None
    assert parse_tolerance("cpu=1s").describe() == (
        "mem=10%+16MiB,cpu=1s,wall=off,gpu=10%+64MiB,leak=50%+256KiB"
    )
    for bad in ("mem=10s", "cpu=8MB", "disk=5%", "mem", "mem=ten%", "cpu=inf s"):
        with pytest.raises(ToleranceError, match="A tolerance is comma-separated KEY=SPEC"):
            parse_tolerance(bad)


def test_the_compared_baseline_is_read_once_and_shared(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The comparison and admission by baseline share one reading of the file (plugin.py
    loads it once and hands it to both): a file that changes (or goes) during the run cannot
    give them different figures."""
    monkeypatch.setenv("PYTEST_TAICHI_LIMITS_LEDGER", str(tmp_path / "ledger"))
    path = tmp_path / "baseline.json"
    path.write_text(
        json.dumps({"schema": SCHEMA, "version": VERSION, "environments": {}, "tests": {}})
    )
    config = pytester.parseconfig(
        f"--taichi-limits-compare={path}", "--taichi-limits-admit=baseline"
    )
    options = read_options(config)
    baseline = load_baseline(options)
    assert baseline is not None
    path.unlink()
    admission = gate.start(config, options, baseline)
    assert RecordMaker(options, baseline, RunSpeed("off", wanted=False)).baseline is baseline
    assert admission.baseline is baseline.tests
    with pytest.raises(pytest.UsageError, match=r"--taichi-limits-compare: .*does not exist"):
        load_baseline(options)
