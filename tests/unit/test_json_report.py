"""--taichi-limits-json: a schema-valid document, written atomically."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_taichi_limits.formats import jsonreport


def test_write_atomic_leaves_the_old_file_when_the_write_fails(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text('{"previous": true}\n')
    with pytest.raises(UnicodeEncodeError):
        jsonreport.write_atomic(str(target), "x" * 100_000 + "\udcff")  # fails half-way
    assert target.read_text() == '{"previous": true}\n'
    assert [path.name for path in tmp_path.iterdir()] == ["report.json"]  # no temp file left
