"""Bad markers, command-line values and ini values: one exact, actionable message each.

Every message names where the value came from (the test, the option or the ini key), the
argument, and what is allowed; the plugin never shows a traceback of its own.
"""

from __future__ import annotations

import pytest
from helpers.plugin_types import RunPlugin

_CPU = "a positive number of CPU seconds up to 604800 (e.g. cpu_s=30)"
_MEM = "a positive number of MiB of own memory up to 1048576 (e.g. mem_mb=1024)"
_WALL = "a positive number of wall-clock seconds up to 604800 (e.g. wall_s=60)"
_GPU = "a positive number of GiB of GPU memory up to 1024 (e.g. gpu_gb=2)"
_ARCHS = "cpu, gpu, x64, arm64, cuda, amdgpu, vulkan, opengl, gles, metal, dx11, dx12"
_MARK = "@pytest.mark.taichi_limits"

#: (test name, marker arguments, the exact message of its collection error)
BAD_MARKERS = [
    (
        "test_unknown_key",
        "memory_mb=1",
        f"{_MARK} got unknown argument 'memory_mb' (did you mean 'mem_mb'?); allowed: cpu_s, "
        "mem_mb, wall_s, gpu_gb, leak_mb, arch, isolation, leak_rounds",
    ),
    (
        "test_positional",
        "100",
        f"{_MARK} takes keyword arguments only (cpu_s, mem_mb, wall_s, gpu_gb, leak_mb, arch, "
        "isolation, leak_rounds), "
        "got "
        "positional (100,)",
    ),
    ("test_bool", "cpu_s=True", f"{_MARK}: cpu_s must be {_CPU} or None for no limit, got True"),
    (
        "test_string",
        "mem_mb='1024'",
        f"{_MARK}: mem_mb must be {_MEM} or None for no limit, got '1024'",
    ),
    ("test_zero", "wall_s=0", f"{_MARK}: wall_s must be {_WALL} or None for no limit, got 0"),
    ("test_negative", "cpu_s=-1", f"{_MARK}: cpu_s must be {_CPU} or None for no limit, got -1"),
    (
        "test_nan",
        "mem_mb=float('nan')",
        f"{_MARK}: mem_mb must be {_MEM} or None for no limit, got nan",
    ),
    (
        "test_infinity",
        "wall_s=float('inf')",
        f"{_MARK}: wall_s must be {_WALL} or None for no limit, got inf",
    ),
    (
        "test_absurd",
        "gpu_gb=1e9",
        f"{_MARK}: gpu_gb must be {_GPU} or None for no limit, got 1000000000.0",
    ),
    ("test_list", "cpu_s=[1]", f"{_MARK}: cpu_s must be {_CPU} or None for no limit, got [1]"),
    (
        "test_unknown_arch",
        "arch='tpu'",
        f"{_MARK}: arch must be one of {_ARCHS} (a string), got 'tpu'",
    ),
    (
        "test_arch_not_a_string",
        "arch=1",
        f"{_MARK}: arch must be one of {_ARCHS} (a string), got 1",
    ),
]

#: (command-line arguments, ini lines, the exact message pytest prints after "ERROR: ")
BAD_OPTIONS = [
    (
        ["--taichi-limits-mem-mb=lots"],
        "",
        f"--taichi-limits-mem-mb: mem_mb must be {_MEM} or 'off' for no limit, got 'lots'",
    ),
    (
        ["--taichi-limits-cpu-s=-5"],
        "",
        f"--taichi-limits-cpu-s: cpu_s must be {_CPU} or 'off' for no limit, got '-5'",
    ),
    (
        ["--taichi-limits-wall-s=nan"],
        "",
        f"--taichi-limits-wall-s: wall_s must be {_WALL} or 'off' for no limit, got 'nan'",
    ),
    (
        ["--taichi-limits-gpu-gb=2000"],
        "",
        f"--taichi-limits-gpu-gb: gpu_gb must be {_GPU} or 'off' for no limit, got '2000'",
    ),
    (
        ["--taichi-limits-wall-s="],
        "",
        f"--taichi-limits-wall-s: wall_s must be {_WALL} or 'off' for no limit, got ''",
    ),
    (
        ["--taichi-limits-interval=0"],
        "",
        "--taichi-limits-interval must be a number of seconds from 0.001 to 10 (or with a unit: "
        "s, ms), got '0'",
    ),
    (
        ["--taichi-limits-grace=abc"],
        "",
        "--taichi-limits-grace must be a number of seconds from 0 to 600 (or with a unit: s, ms), "
        "got 'abc'",
    ),
    (
        ["--taichi-limits-arch=tpu"],
        "",
        f"--taichi-limits-arch: arch must be one of {_ARCHS} (a string), got 'tpu'",
    ),
    (
        [],
        "taichi_limits_gpu_gb = huge",
        f"ini option taichi_limits_gpu_gb: gpu_gb must be {_GPU} or 'off' for no limit, got 'huge'",
    ),
    (
        [],
        "taichi_limits_wall_s = 0",
        f"ini option taichi_limits_wall_s: wall_s must be {_WALL} or 'off' for no limit, got '0'",
    ),
    (
        [],
        "taichi_limits_mode = thread",
        "ini option taichi_limits_mode must be one of auto, fork, spawn, got 'thread'",
    ),
    (
        [],
        "taichi_limits_interval = -1",
        "ini option taichi_limits_interval must be a number of seconds from 0.001 to 10 (or with a "
        "unit: s, ms), got '-1'",
    ),
    (
        [],
        "taichi_limits_grace = 1e9",
        "ini option taichi_limits_grace must be a number of seconds from 0 to 600 (or with a unit: "
        "s, ms), got '1e9'",
    ),
    # pytest 9.2 converts its bool ini values itself; the message names the key all the same.
    (
        [],
        "taichi_limits = yes please",
        "ini option taichi_limits must be true or false (also yes/no, on/off, 1/0): invalid truth "
        "value 'yes please'",
    ),
    (
        [],
        "taichi_limits_arch = 3",
        f"ini option taichi_limits_arch: arch must be one of {_ARCHS} (a string), got '3'",
    ),
]


def assert_no_plugin_traceback(result: pytest.RunResult) -> None:
    text = result.stdout.str() + result.stderr.str()
    for sign in ("Traceback", "INTERNALERROR", "pytest_taichi_limits/"):
        assert sign not in text, text


def test_bad_markers_are_collection_errors_with_exact_messages(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    source = ["import pytest", ""]
    for name, arguments, _ in BAD_MARKERS:
        source += [f"@pytest.mark.taichi_limits({arguments})", f"def {name}():", "    pass", ""]
    source += [
        "class TestBadClass:",
        "    pytestmark = pytest.mark.taichi_limits(wall_s='1m')",
        "    def test_in_class(self):",
        "        pass",
        "",
        "@pytest.mark.taichi_limits(wall_s=30)",
        "def test_good():",
        "    pass",
        "",
    ]
    pytester.makepyfile(test_bad="\n".join(source))
    result = run_plugin("--continue-on-collection-errors")
    result.assert_outcomes(passed=1, errors=len(BAD_MARKERS) + 1)
    lines = set(result.stdout.lines)
    for name, _, message in BAD_MARKERS:
        assert f"test_bad.py::{name}: {message}" in lines, (name, result.stdout.str())
    assert (
        f"test_bad.py::TestBadClass::test_in_class: {_MARK}: wall_s must be {_WALL} or None "
        "for no limit, got '1m'"
    ) in lines
    assert_no_plugin_traceback(result)


@pytest.mark.parametrize(
    "arguments, ini, message",
    BAD_OPTIONS,
    ids=[" ".join(arguments) or ini for arguments, ini, _ in BAD_OPTIONS],
)
def test_bad_option_is_a_usage_error_with_an_exact_message(
    pytester: pytest.Pytester, run_plugin: RunPlugin, arguments: list[str], ini: str, message: str
) -> None:
    pytester.makepyfile(
        "import pytest\n\n@pytest.mark.taichi_limits(wall_s=30)\ndef test_never_runs():\n    pass\n"
    )
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    result = run_plugin(*arguments)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    assert f"ERROR: {message}" in result.stderr.lines, result.stderr.str()
    assert "test_never_runs" not in result.stdout.str()
    assert_no_plugin_traceback(result)


def test_bad_mode_on_the_command_line_names_the_choices(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # argparse checks this one (choices=...): its message, with the allowed values.
    pytester.makepyfile("def test_never_runs():\n    pass\n")
    result = run_plugin("--taichi-limits-mode=thread")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*error: argument --taichi-limits-mode: invalid choice: 'thread' (choose from *auto*fork*"
            "spawn*)",
        ]
    )
    assert_no_plugin_traceback(result)
