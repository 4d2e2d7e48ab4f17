"""Baseline save and compare, through real runs that grow a real Taichi field."""

from __future__ import annotations

import pytest

from pytest_taichi_limits.formats.baseline import (
    DEFAULT_TOLERANCE_SPEC,
    ToleranceError,
    parse_tolerance,
)


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
    assert parse_tolerance("cpu=1s").describe() == "mem=10%+16MiB,cpu=1s,wall=off,gpu=10%+64MiB"
    for bad in ("mem=10s", "cpu=8MB", "disk=5%", "mem", "mem=ten%", "cpu=inf s"):
        with pytest.raises(ToleranceError, match="A tolerance is comma-separated KEY=SPEC"):
            parse_tolerance(bad)
