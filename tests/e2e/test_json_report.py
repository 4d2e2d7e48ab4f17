"""--taichi-limits-json: a schema-valid document, written atomically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.plugin_types import RunPlugin

from pytest_taichi_limits.formats import jsonreport

jsonschema = pytest.importorskip("jsonschema")

MIXED_TESTS = """
import pytest
import taichi as ti


@pytest.fixture
def cpu():
    ti.init(arch=ti.cpu, offline_cache=False)
    yield
    ti.reset()


@pytest.mark.taichi_limits(mem_mb=1024, cpu_s=60)
def test_field(cpu):
    values = ti.field(ti.f32, shape=4 * 1024 * 1024)
    values.fill(1.0)


@pytest.mark.taichi_limits(mem_mb=64)
def test_too_big():
    block = bytearray(256 * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1


@pytest.mark.taichi_limits
def test_fails():
    assert 1 == 2


@pytest.mark.taichi_limits
@pytest.mark.skip(reason="never runs")
def test_skipped():
    pass


@pytest.mark.taichi_limits
@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False


def test_not_supervised():
    pass
"""


def _read(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    jsonschema.validate(document, jsonreport.REPORT_SCHEMA)
    return document


def test_document_is_valid_and_complete(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    pytester.makepyfile(test_mixed=MIXED_TESTS)
    result = run_plugin("--taichi-limits-json=out/report.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["JSON report written to out/report.json"])
    document = _read(pytester.path / "out" / "report.json")
    assert document["complete"] is True
    assert document["exit_status"] == 1
    assert document["environment"]["taichi"] == "1.7.4"
    outcomes = {
        record["nodeid"].split("::")[1]: record["outcome"] for record in document["records"]
    }
    assert outcomes == {
        "test_field": "passed",
        "test_too_big": "failed",
        "test_fails": "failed",
        "test_skipped": "skipped",
        "test_xfail": "xfailed",
    }
    assert [record["nodeid"] for record in document["records"]] == sorted(
        record["nodeid"] for record in document["records"]
    )
    by_name = {record["nodeid"].split("::")[1]: record for record in document["records"]}
    field = by_name["test_field"]
    assert field["arch"] == "x64"
    assert field["own_memory_bytes"] >= 16 * 1024 * 1024  # the 16 MB field is in the figure
    assert field["budget"] == {
        "cpu_s": 60,
        "mem_mb": 1024,
        "wall_s": 600,
        "gpu_gb": None,
        "leak_mb": None,
    }
    assert field["gpu_peak_bytes"] is None and field["gpu_note"].startswith("not measured")
    assert by_name["test_fails"]["arch"] == "not initialised"
    [violation] = document["violations"]
    assert violation["nodeid"].endswith("::test_too_big")
    assert violation["resource"] == "mem_mb" and violation["measured"] > 64
    assert by_name["test_too_big"]["violation"] == violation
    assert document["baseline"] is None


SLOW_WRITER = """
import sys
from pytest_taichi_limits.formats import jsonreport

# 400 MB of text: the write takes long enough to be killed in the middle of it.
jsonreport.write_atomic(sys.argv[1], "[" + "1," * (200 * 1024 * 1024) + "1]")
"""


def test_a_writer_killed_mid_write_leaves_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text('{"previous": true}\n')
    writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target)])
    try:
        deadline = time.monotonic() + 60
        while not [
            p
            for p in tmp_path.iterdir()
            if p.name.endswith(".tmp") and p.stat().st_size > 1024 * 1024
        ]:
            assert time.monotonic() < deadline, "the writer never started writing"
            assert writer.poll() is None, "the writer finished before it could be killed"
            time.sleep(0.01)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert target.read_text() == '{"previous": true}\n'


SLEEPING_TESTS = """
import os
import time
import pytest

@pytest.mark.taichi_limits(wall_s=120)
def test_quick():
    pass

@pytest.mark.taichi_limits(wall_s=120)
def test_sleeps():
    open("started", "w").close()
    time.sleep(100)
"""


def _run_until_started(pytester: pytest.Pytester, *args: str) -> subprocess.Popen[bytes]:
    pytester.makepyfile(test_sleeping=SLEEPING_TESTS)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--taichi-limits-json=report.json",
            *args,
        ],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not (pytester.path / "started").exists():
        assert time.monotonic() < deadline, "the sleeping test never started"
        assert process.poll() is None
        time.sleep(0.05)
    return process


def test_a_run_killed_halfway_leaves_the_previous_report(pytester: pytest.Pytester) -> None:
    previous = pytester.path / "report.json"
    previous.write_text('{"previous": true}\n')
    process = _run_until_started(pytester)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert previous.read_text() == '{"previous": true}\n'
    assert not [p for p in pytester.path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_writes_an_incomplete_report(
    pytester: pytest.Pytester, stop: signal.Signals
) -> None:
    # Ctrl-C, or SIGTERM to the whole process group (a CI runner's time-out): pytest ends the
    # session in order, and (SIGTERM) then ends by the signal.
    (pytester.path / "report.json").write_text('{"previous": true}\n')
    process = _run_until_started(pytester, "--taichi-limits-save-baseline=base.json")
    os.killpg(process.pid, stop)
    output, _ = process.communicate(timeout=60)
    expected = pytest.ExitCode.INTERRUPTED if stop == signal.SIGINT else -stop
    assert process.returncode == expected, output.decode()
    document = _read(pytester.path / "report.json")
    assert document["complete"] is False
    assert document["exit_status"] == 2
    assert [record["nodeid"] for record in document["records"]] == ["test_sleeping.py::test_quick"]
    # A baseline from half a run is not written: the session says so instead.
    assert not (pytester.path / "base.json").exists()
    assert b"baseline not saved to base.json: the session was interrupted" in output


@pytest.mark.parametrize("target", ["/dev/null", "."])
@pytest.mark.parametrize("option", ["--taichi-limits-json", "--taichi-limits-save-baseline"])
def test_unsafe_output_paths_are_refused_before_any_test(
    pytester: pytest.Pytester, run_plugin: RunPlugin, option: str, target: str
) -> None:
    pytester.makepyfile("def test_a():\n    pass\n")
    result = run_plugin("--taichi-limits", f"{option}={target}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {option}: cannot write {target!r}*: *"])
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
