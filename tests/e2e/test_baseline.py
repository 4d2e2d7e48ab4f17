"""Baseline save and compare, through real runs that grow a real Taichi field."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
from helpers.plugin_types import RunPlugin

#: A field whose size the environment sets: the same commit, grown on demand.
GROWING_TESTS = """
import os
import pytest
import taichi as ti


@pytest.fixture
def cpu():
    # No offline cache: a cold and a warm kernel cache differ by ~15 MB of own memory.
    ti.init(arch=ti.cpu, offline_cache=False)
    yield
    ti.reset()


def test_grows(cpu):
    count = int(os.environ.get("FIELD_MB", "8")) * 1024 * 1024 // 4
    values = ti.field(ti.f32, shape=count)

    @ti.kernel
    def fill():
        for i in values:
            values[i] = 1.0

    fill()


def test_steady(cpu):
    values = ti.field(ti.i32, shape=1000)
    values[3] = 4
    assert values[3] == 4
"""


@pytest.fixture
def growing(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_growing=GROWING_TESTS)
    return pytester


def _save(
    run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch, field_mb: int, *args: str
) -> pytest.RunResult:
    monkeypatch.setenv("FIELD_MB", str(field_mb))
    result = run_plugin("--taichi-limits", "--taichi-limits-save-baseline=base.json", *args)
    result.assert_outcomes(passed=2)
    return result


def test_grown_field_fails_showing_before_after_growth_and_tolerance(
    growing: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    _save(run_plugin, monkeypatch, 8)
    monkeypatch.setenv("FIELD_MB", "200")
    result = run_plugin("--taichi-limits", "--taichi-limits-compare=base.json")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            (
                "*taichi-limits: comparing with baseline base.json (2 tests); tolerance "
                "mem=10%+16MiB,cpu=50%+1s,wall=off,gpu=10%+64MiB,leak=50%+256KiB; a test that grew "
                "beyond it will fail"
            ),
            "*_ test_grows _*",
            (
                "taichi_limits: grew beyond the baseline's tolerance: own memory * MiB -> * MiB "
                "(+* MiB, +*%), allowed up to * MiB (mem=10%+16MiB)*"
            ),
            "*baseline*after*growth*allowed*tolerance",
            "*own memory*MiB*MiB*+*MiB*MiB*mem=10%+16MiB*EXCEEDED",
            "*baseline    base.json, 1 run (growth is measured above the largest), last saved * with Python *, Taichi *, arch x64 (fork mode)",
            "*regressions against base.json (1; these tests fail):",
            "*test_growing.py::test_grows  own memory * -> * (+*), allowed up to *",
            "FAILED test_growing.py::test_grows - grew beyond*",
        ]
    )
    growth_line = next(
        line
        for line in result.outlines
        if line.startswith("  test_growing.py::test_grows  own memory")
    )
    grown_mb = float(growth_line.split("(+")[1].split(" MiB")[0])
    assert 170 < grown_mb < 230  # 192 MB more floats, as measured (not a rounding artefact)


def test_same_run_within_tolerance_passes(
    growing: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    _save(run_plugin, monkeypatch, 8)
    monkeypatch.setenv("FIELD_MB", "12")  # +4 MB: inside the default slack of 16 MB
    result = run_plugin("--taichi-limits", "--taichi-limits-compare=base.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["no test grew beyond tolerance (mem=10%+16MiB,*) against base.json"]
    )


def test_tolerance_option_widens_and_narrows(
    growing: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    _save(run_plugin, monkeypatch, 8)
    monkeypatch.setenv("FIELD_MB", "72")
    result = run_plugin(
        "--taichi-limits",
        "--taichi-limits-compare=base.json",
        "--taichi-limits-tolerance=mem=100%+64MB",
    )
    result.assert_outcomes(passed=2)
    result = run_plugin(
        "--taichi-limits",
        "--taichi-limits-compare=base.json",
        "--taichi-limits-tolerance=mem=off,cpu=off",
    )
    result.assert_outcomes(passed=2)
    result = run_plugin(
        "--taichi-limits",
        "--taichi-limits-compare=base.json",
        "--taichi-limits-tolerance=mem=0%+32MB",  # +64 MB fails; the steady test's own
    )  # variation from run to run (Taichi's start, up to 8 MiB seen on a busy machine) passes
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*allowed up to * MiB (mem=32MiB)*"])


def test_warn_mode_passes_with_a_warning(
    growing: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    _save(run_plugin, monkeypatch, 8)
    monkeypatch.setenv("FIELD_MB", "200")
    result = run_plugin(
        "--taichi-limits", "--taichi-limits-compare=base.json", "--taichi-limits-compare-warn"
    )
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "*will warn",
            "*TaichiLimitsRegressionWarning: taichi_limits: grew beyond the baseline's tolerance*",
            "*regressions against base.json (1; warnings only (--taichi-limits-compare-warn)):",
        ]
    )
    # -W error makes the warning a failure again.
    result = run_plugin(
        "--taichi-limits",
        "--taichi-limits-compare=base.json",
        "--taichi-limits-compare-warn",
        "-W",
        "error::pytest_taichi_limits.TaichiLimitsRegressionWarning",
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*regressions against base.json (1; these tests fail):"])


def test_new_and_missing_tests_are_listed_not_failed(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(
        test_names="""
        import pytest

        @pytest.mark.taichi_limits(mem_mb=512)
        def test_kept(): pass

        @pytest.mark.taichi_limits(mem_mb=512)
        def test_removed_later(): pass
    """
    )
    run_plugin("--taichi-limits-save-baseline=base.json").assert_outcomes(passed=2)
    pytester.makepyfile(
        test_names="""
        import pytest

        @pytest.mark.taichi_limits(mem_mb=512)
        def test_kept(): pass

        @pytest.mark.taichi_limits(mem_mb=512)
        def test_added(): pass
    """
    )
    result = run_plugin("--taichi-limits-compare=base.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "new since the baseline, not compared (1; --taichi-limits-save-baseline adds them):",
            "  test_names.py::test_added",
            "in the baseline but not measured in this run (1):",
            "  test_names.py::test_removed_later",
        ]
    )


def test_subset_run_merges_unless_told_to_replace(
    growing: pytest.Pytester,
    run_plugin: RunPlugin,
    monkeypatch: pytest.MonkeyPatch,
    pytester: pytest.Pytester,
) -> None:
    _save(run_plugin, monkeypatch, 8)
    before = json.loads((pytester.path / "base.json").read_text())
    monkeypatch.setenv("FIELD_MB", "40")
    run_plugin(
        "--taichi-limits", "--taichi-limits-save-baseline=base.json", "-k", "grows"
    ).assert_outcomes(passed=1)
    merged = json.loads((pytester.path / "base.json").read_text())
    assert set(merged["tests"]) == {"test_growing.py::test_grows", "test_growing.py::test_steady"}
    steady = "test_growing.py::test_steady"
    assert merged["tests"][steady] == before["tests"][steady]  # untouched by the subset run
    grows = "test_growing.py::test_grows"
    # Saving again widens the range: the larger figure is the new max, the old one the min.
    assert merged["tests"][grows]["runs"] == 2
    assert (
        merged["tests"][grows]["own_memory_bytes"]["max"]
        > before["tests"][grows]["own_memory_bytes"]["max"] + 24 * 1024 * 1024
    )
    assert (
        merged["tests"][grows]["own_memory_bytes"]["min"]
        == before["tests"][grows]["own_memory_bytes"]["min"]
    )
    run_plugin(
        "--taichi-limits",
        "--taichi-limits-save-baseline=base.json",
        "-k",
        "grows",
        "--taichi-limits-baseline-replace",
    ).assert_outcomes(passed=1)
    replaced = json.loads((pytester.path / "base.json").read_text())
    assert set(replaced["tests"]) == {grows}


def test_failed_test_keeps_its_baseline_entry(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        test_flaky="""
        import os
        import pytest

        @pytest.mark.taichi_limits(mem_mb=512)
        def test_flaky():
            assert os.environ.get("BREAK") != "1"
    """
    )
    run_plugin("--taichi-limits-save-baseline=base.json").assert_outcomes(passed=1)
    saved = (pytester.path / "base.json").read_text()
    monkeypatch.setenv("BREAK", "1")
    result = run_plugin("--taichi-limits-save-baseline=base.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            (
                "baseline saved to base.json: 0 tests written, 1 not (failed, "
                "skipped or interrupted), 1 in the file"
            )
        ]
    )
    assert (
        json.loads((pytester.path / "base.json").read_text())["tests"] == json.loads(saved)["tests"]
    )


def test_baseline_of_another_environment_is_warned_in_the_header(
    growing: pytest.Pytester,
    run_plugin: RunPlugin,
    monkeypatch: pytest.MonkeyPatch,
    pytester: pytest.Pytester,
) -> None:
    _save(run_plugin, monkeypatch, 8)
    path = pytester.path / "base.json"
    data = json.loads(path.read_text())
    for environment in data["environments"].values():
        environment["taichi"] = "1.6.0"
        environment["python"] = "3.9.1"
    path.write_text(json.dumps(data))
    result = run_plugin("--taichi-limits", "--taichi-limits-compare=base.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            (
                "taichi-limits: WARNING: 2 of 2 baseline tests were measured with another python and "
                "taichi (python 3.9.1 -> 3.*; taichi 1.6.0 -> 1.7.4): their figures may differ *"
            ),
        ]
    )


def test_unusable_baseline_and_tolerance_are_usage_errors(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = run_plugin("--taichi-limits-compare=nowhere.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            (
                "*--taichi-limits-compare: baseline 'nowhere.json' does not exist; create it with "
                "--taichi-limits-save-baseline=nowhere.json"
            )
        ]
    )
    (pytester.path / "other.json").write_text('{"tests": {}}')
    result = run_plugin("--taichi-limits-compare=other.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'other.json' is not a pytest-taichi-limits baseline*"])
    result = run_plugin("--taichi-limits-tolerance=mem=10 percent")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*--taichi-limits-tolerance: mem: unit 'percent' is not one of %, B, KiB, MiB, GiB, TiB "
            "(binary: KB, MB, GB, TB and K, M, G, T mean the same). *"
        ]
    )


def test_reviewed_growth_is_accepted_with_the_command_the_hint_names(
    growing: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21 item 3: the regression's "what to do" names one command that accepts the
    growth; run as written, the next comparison passes, and the other test keeps its entry."""
    _save(run_plugin, monkeypatch, 8)
    before = json.loads((growing.path / "base.json").read_text())["tests"]
    monkeypatch.setenv("FIELD_MB", "200")
    grown = run_plugin(
        "--taichi-limits", "--taichi-limits-compare=base.json", "--taichi-limits-json=run.json"
    )
    grown.assert_outcomes(failed=1, passed=1)
    hint = next(line for line in grown.outlines if "what to do" in line)
    command = hint.split("accept reviewed growth with: ")[1].split("; or widen")[0]
    assert command == "taichi-limits accept base.json run.json test_growing.py::test_grows"
    accepted = subprocess.run(
        [sys.executable, "-m", "pytest_taichi_limits", *shlex.split(command)[1:]],
        cwd=growing.path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert accepted.returncode == 0, accepted.stderr
    assert "test_growing.py::test_grows: own memory" in accepted.stdout
    after = json.loads((growing.path / "base.json").read_text())["tests"]
    assert after["test_growing.py::test_steady"] == before["test_growing.py::test_steady"]
    grown_entry = after["test_growing.py::test_grows"]
    assert grown_entry["runs"] == 1  # the range starts over from the accepted run
    assert grown_entry["own_memory_bytes"]["min"] > 150 * 1024 * 1024
    run_plugin("--taichi-limits", "--taichi-limits-compare=base.json").assert_outcomes(passed=2)
