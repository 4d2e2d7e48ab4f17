"""The gpu_gb cap on ti.init, seen through Taichi's applied configuration on the CPU backend.

`taichi.lang.impl.current_cfg()` shows device_memory_GB / device_memory_fraction on the CPU
backend too (which otherwise ignores them), so every combination of ti.init argument, TI_*
environment variable and budget is checked here without a GPU. Each combination is one test of
one pytester run (real forks, real ti.init), which records what Taichi applied.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.plugin_types import RunPlugin

CAP_GB = 2.0

#: ti.init keyword arguments (besides arch) of each case.
ARGUMENTS = {
    "none": {},
    "below": {"device_memory_GB": 0.25},
    "above": {"device_memory_GB": 3.0},
    "fraction": {"device_memory_fraction": 0.5},
    "below+fraction": {"device_memory_GB": 0.25, "device_memory_fraction": 0.5},
}
ENVIRONMENTS = {
    "noenv": {},
    "envgb": {"TI_DEVICE_MEMORY_GB": "4"},
    "envfraction": {"TI_DEVICE_MEMORY_FRACTION": "0.3"},
}
BUDGETS = {"capped": CAP_GB, "uncapped": None}

# (argument, environment, budget) -> (device_memory_GB, device_memory_fraction) Taichi applied.
# Uncapped is Taichi's own precedence: argument > environment > default (GB 1, fraction 0), per
# key. Capped: at most CAP_GB, as GB with the fraction off; without NVML the size of a fraction
# is unknown, so it becomes the cap.
EXPECTED: dict[tuple[str, str, str], tuple[float, float]] = {
    ("none", "noenv", "uncapped"): (1.0, 0.0),
    ("none", "envgb", "uncapped"): (4.0, 0.0),
    ("none", "envfraction", "uncapped"): (1.0, 0.3),
    ("below", "noenv", "uncapped"): (0.25, 0.0),
    ("below", "envgb", "uncapped"): (0.25, 0.0),
    ("below", "envfraction", "uncapped"): (0.25, 0.3),  # the env fraction still applies
    ("above", "noenv", "uncapped"): (3.0, 0.0),
    ("above", "envgb", "uncapped"): (3.0, 0.0),
    ("above", "envfraction", "uncapped"): (3.0, 0.3),
    ("fraction", "noenv", "uncapped"): (1.0, 0.5),
    ("fraction", "envgb", "uncapped"): (4.0, 0.5),
    ("fraction", "envfraction", "uncapped"): (1.0, 0.5),
    ("below+fraction", "noenv", "uncapped"): (0.25, 0.5),
    ("below+fraction", "envgb", "uncapped"): (0.25, 0.5),
    ("below+fraction", "envfraction", "uncapped"): (0.25, 0.5),
    ("none", "noenv", "capped"): (1.0, 0.0),
    ("none", "envgb", "capped"): (2.0, 0.0),
    ("none", "envfraction", "capped"): (2.0, 0.0),
    ("below", "noenv", "capped"): (0.25, 0.0),
    ("below", "envgb", "capped"): (0.25, 0.0),
    ("below", "envfraction", "capped"): (2.0, 0.0),
    ("above", "noenv", "capped"): (2.0, 0.0),
    ("above", "envgb", "capped"): (2.0, 0.0),
    ("above", "envfraction", "capped"): (2.0, 0.0),
    ("fraction", "noenv", "capped"): (2.0, 0.0),
    ("fraction", "envgb", "capped"): (2.0, 0.0),
    ("fraction", "envfraction", "capped"): (2.0, 0.0),
    ("below+fraction", "noenv", "capped"): (2.0, 0.0),
    ("below+fraction", "envgb", "capped"): (2.0, 0.0),
    ("below+fraction", "envfraction", "capped"): (2.0, 0.0),
}

#: The clamp note each capped case must carry (None: nothing was taken away).
EXPECTED_NOTES = {
    (
        "none",
        "envgb",
    ): "device_memory_GB=4 (from TI_DEVICE_MEMORY_GB) clamped to device_memory_GB=2",
    ("none", "envfraction"): "device_memory_fraction=0.3 (from TI_DEVICE_MEMORY_FRACTION) "
    "clamped to device_memory_GB=2",
    ("below", "envfraction"): "device_memory_fraction=0.3 (from TI_DEVICE_MEMORY_FRACTION)",
    ("above", "noenv"): "device_memory_GB=3 (from argument) clamped to device_memory_GB=2",
    ("above", "envgb"): "device_memory_GB=3 (from argument) clamped to device_memory_GB=2",
    ("above", "envfraction"): "device_memory_fraction=0.3 (from TI_DEVICE_MEMORY_FRACTION)",
    ("fraction", "noenv"): "device_memory_fraction=0.5 (from argument)",
    ("fraction", "envgb"): "device_memory_fraction=0.5 (from argument)",
    ("fraction", "envfraction"): "device_memory_fraction=0.5 (from argument)",
    ("below+fraction", "noenv"): "device_memory_fraction=0.5 (from argument)",
    ("below+fraction", "envgb"): "device_memory_fraction=0.5 (from argument)",
    ("below+fraction", "envfraction"): "device_memory_fraction=0.5 (from argument)",
}

COMBINATIONS_MODULE = f"""
import functools
import json
import os

import pytest
import taichi as ti
from taichi import init as init_imported_early
from taichi.lang import impl

ARGUMENTS = {ARGUMENTS!r}
ENVIRONMENTS = {ENVIRONMENTS!r}
BUDGETS = {BUDGETS!r}
# Made at collection, after the plugin wrapped ti.init: it holds the wrapper.
init_through_partial = functools.partial(ti.init, arch=ti.cpu, device_memory_GB=5.0)


def record(name):
    cfg = impl.current_cfg()
    path = os.path.join(os.environ["OBSERVED_DIR"], name + ".json")
    with open(path, "w") as handle:
        json.dump([cfg.device_memory_GB, cfg.device_memory_fraction], handle)


def case(argument, environment, budget):
    marks = [pytest.mark.taichi_limits(gpu_gb=BUDGETS[budget])]
    return pytest.param(argument, environment, marks=marks,
                        id=f"{{argument}}-{{environment}}-{{budget}}")


@pytest.mark.parametrize(
    "argument, environment",
    [case(a, e, b) for b in BUDGETS for a in ARGUMENTS for e in ENVIRONMENTS],
)
def test_combination(argument, environment, monkeypatch, request):
    for name in ("TI_DEVICE_MEMORY_GB", "TI_DEVICE_MEMORY_FRACTION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in ENVIRONMENTS[environment].items():
        monkeypatch.setenv(name, value)
    ti.init(arch=ti.cpu, **ARGUMENTS[argument])
    record(request.node.callspec.id)


@pytest.mark.taichi_limits(gpu_gb=1)
def test_init_imported_before_the_patch():
    init_imported_early(arch=ti.cpu, device_memory_GB=7.0)
    record("imported")


@pytest.mark.taichi_limits(gpu_gb=1)
def test_init_through_a_partial():
    init_through_partial()
    record("partial")


@pytest.mark.taichi_limits(gpu_gb=1)
def test_init_through_module_path():
    import taichi.lang.misc
    taichi.lang.misc.init(arch=ti.cpu, device_memory_GB=6.0)
    record("misc")
"""


def _read_log(path: Path) -> dict[str, dict[str, Any]]:
    usages = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "usage":
            usages[event["nodeid"].split("::", 1)[1]] = event
    return usages


def test_every_combination_of_argument_environment_and_budget(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    observed = pytester.mkdir("observed")
    monkeypatch.setenv("OBSERVED_DIR", str(observed))
    monkeypatch.delenv("TI_DEVICE_MEMORY_GB", raising=False)
    monkeypatch.delenv("TI_DEVICE_MEMORY_FRACTION", raising=False)
    pytester.makepyfile(test_combinations=COMBINATIONS_MODULE)
    log = pytester.path / "usage.jsonl"
    result = run_plugin("-rP", f"--taichi-limits-log={log}", timeout=300)
    result.assert_outcomes(passed=len(EXPECTED) + 3)

    applied = {path.stem: tuple(json.loads(path.read_text())) for path in observed.iterdir()}
    for (argument, environment, budget), expected in EXPECTED.items():
        name = f"{argument}-{environment}-{budget}"
        assert applied[name] == pytest.approx(expected), name

    usages = _read_log(log)
    for argument, environment, budget in EXPECTED:
        name = f"{argument}-{environment}-{budget}"
        notes = usages[f"test_combination[{name}]"]["gpu_clamps"]
        expected_note = EXPECTED_NOTES.get((argument, environment)) if budget == "capped" else None
        if expected_note is None:
            assert notes == [], name
        else:
            assert len(notes) == 1 and expected_note in notes[0], (name, notes)
            assert "by gpu_gb=2" in notes[0]

    # Every route to ti.init is capped: names bound before the patch, partials, module paths.
    assert applied["imported"] == (1.0, 0.0)
    assert applied["partial"] == (1.0, 0.0)
    assert applied["misc"] == (1.0, 0.0)
    assert (
        "device_memory_GB=7 (from argument) clamped to device_memory_GB=1"
        in usages["test_init_imported_before_the_patch"]["gpu_clamps"][0]
    )
    # A partial made at collection holds the wrapper the pytest process installed when Taichi
    # was imported (a partial taken before that is in test_init_wrapper.py).
    partial_note = usages["test_init_through_a_partial"]["gpu_clamps"][0]
    assert "device_memory_GB=5 (from argument) clamped to device_memory_GB=1" in partial_note
    assert "could not replace" not in partial_note
    # The clamp is shown to the user in the test's usage section, as it reads on the CPU arch
    # these tests run on: the cap is passed to ti.init but takes nothing away there.
    result.stdout.fnmatch_lines(
        [
            "*GPU cap: ti.init device_memory_GB=3 (from argument): the gpu_gb cap does not apply on "
            "arch x64 (device_memory_GB is a GPU pool; the CPU backend's memory counts against "
            "mem_mb)*",
        ]
    )
    assert "clamped to device_memory_GB=2 by gpu_gb=2" not in result.stdout.str()


LAZY_MODULE = """
import os

import pytest


def applied():
    from taichi.lang import impl
    cfg = impl.current_cfg()
    return cfg.device_memory_GB, cfg.device_memory_fraction


@pytest.mark.taichi_limits(gpu_gb=1.5)
def test_taichi_imported_inside_the_test():
    import taichi as ti   # nothing imported Taichi before this test: the import hook caps it
    ti.init(arch=ti.cpu, device_memory_GB=5)
    assert applied() == (1.5, 0.0)


@pytest.mark.taichi_limits(gpu_gb=0.5, arch="x64")
def test_fixture_uses_marker_arch_and_asks_for_the_cap(taichi_limits_ti):
    ti = taichi_limits_ti
    assert ti.lang.impl.current_cfg().arch == ti.x64
    assert applied() == (0.5, 0.0)
    field = ti.field(ti.i32, shape=4)

    @ti.kernel
    def fill():
        for i in field:
            field[i] = i * 2

    fill()
    assert field.to_numpy().tolist() == [0, 2, 4, 6]


def test_fixture_alone_makes_the_test_supervised(taichi_limits_ti):
    assert applied() == (1.0, 0.0)   # no gpu_gb: Taichi's own default


@pytest.mark.taichi_limits(arch="tpu")
def test_unknown_arch_is_a_collection_error():
    pass
"""


def test_import_hook_fixture_and_arch(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    pytester.makepyfile(test_lazy=LAZY_MODULE)
    log = pytester.path / "usage.jsonl"
    result = run_plugin(
        f"--taichi-limits-log={log}",
        "--taichi-limits-arch=cpu",
        "--continue-on-collection-errors",
        timeout=180,
    )
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_unknown_arch_is_a_collection_error*arch must be one of cpu, gpu, x64*got 'tpu'*",
        ]
    )
    usages = _read_log(log)
    # The fixture alone made the test supervised (it has a usage record).
    assert "test_fixture_alone_makes_the_test_supervised" in usages
    # "(from argument)": the patched init saw the call (installed on import), not the backstop.
    lazy_note = usages["test_taichi_imported_inside_the_test"]["gpu_clamps"][0]
    assert "device_memory_GB=5 (from argument) clamped to device_memory_GB=1.5" in lazy_note
    # The fixture asked for exactly the cap: nothing to clamp.
    assert usages["test_fixture_uses_marker_arch_and_asks_for_the_cap"]["gpu_clamps"] == []


def test_bad_arch_option_is_a_usage_error(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = run_plugin("--taichi-limits-arch=cpus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--taichi-limits-arch*arch must be one of*got 'cpus'*"])


CUDA_ON_THE_CPU = """
import pytest
import taichi as ti


@pytest.mark.taichi_limits(gpu_gb=1)
def test_written_for_cuda():
    ti.init(arch=ti.cuda)  # no CUDA here: Taichi warns and runs on the CPU
    field = ti.field(ti.f32, shape=4)

    @ti.kernel
    def fill():
        for i in field:
            field[i] = i

    fill()
    assert field[3] == 3
"""


def test_a_test_asking_for_cuda_and_running_on_the_cpu_says_so(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # issue 21 item 7: it passed silently on x64, its gpu_gb budget unused, the record saying
    # only "no NVIDIA GPU". (Where CUDA works the kernel runs there and nothing is noted.)
    pytester.makepyfile(test_cuda=CUDA_ON_THE_CPU)
    log = pytester.path / "usage.jsonl"
    result = run_plugin("--taichi-limits", f"--taichi-limits-log={log}", "-rP", timeout=180)
    result.assert_outcomes(passed=1)
    usage = _read_log(log)["test_written_for_cuda"]
    if usage["arch"] == "cuda":
        pytest.skip("CUDA works on this machine: nothing fell back")
    assert usage["arch"] in ("x64", "arm64"), usage["arch"]
    assert usage["gpu_note"] == (
        f"not measured: the test asked for arch=cuda and Taichi ran it on {usage['arch']} "
        "(no usable cuda backend here)"
    )
    result.stdout.fnmatch_lines(["*GPU not measured: the test asked for arch=cuda*"])
