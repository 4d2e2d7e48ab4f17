"""Baseline tolerance specs and the reading of the compared baseline."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_taichi_limits.formats.baseline import (
    DEFAULT_TOLERANCE_SPEC,
    SCHEMA,
    VERSION,
    BaselineError,
    parse_tolerance,
)
from pytest_taichi_limits.results.session import compared_baseline


@pytest.mark.parametrize(
    "spec, key, limit_of_100",
    [
        ("mem=10%+8MB", "mem", 100 * 1.1 + 8 * 1024 * 1024),
        ("cpu=25%+0.5s", "cpu", 125.5),
        ("cpu=500ms", "cpu", 100.5),
        ("gpu=1GB", "gpu", 100 + 1024**3),
        ("wall=5%", "wall", 105.0),
        ("MEM = 1% + 1KB + 1B", "mem", 101 + 1025),
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
        with pytest.raises(BaselineError, match="A tolerance is comma-separated KEY=SPEC"):
            parse_tolerance(bad)


def test_the_compared_baseline_is_read_once_per_process(tmp_path: Path) -> None:
    """The comparison and admission by baseline share one reading of the file: a file that
    changes (or goes) during the run cannot give them different figures."""
    path = tmp_path / "baseline.json"
    path.write_text(
        json.dumps({"schema": SCHEMA, "version": VERSION, "environments": {}, "tests": {}})
    )
    config = SimpleNamespace(stash=pytest.Stash())
    first = compared_baseline(config, str(path))  # type: ignore[arg-type]
    path.unlink()
    assert compared_baseline(config, str(path)) is first  # type: ignore[arg-type]
    with pytest.raises(BaselineError, match="does not exist"):
        compared_baseline(SimpleNamespace(stash=pytest.Stash()), str(path))  # type: ignore[arg-type]
