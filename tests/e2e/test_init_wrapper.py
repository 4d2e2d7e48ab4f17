"""The one ti.init wrapper per process: spawn workers get it as forked children do, and a child
of a process that installed it caps ti.init without searching the heap for references."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers.plugin_types import RunPlugin

SPAWN_MODULE = """
import pytest
import taichi as ti
from taichi import init as init_imported_at_collection
from taichi.lang import impl


@pytest.mark.taichi_limits(gpu_gb=1)
def test_plain_init():
    ti.init(arch=ti.cpu, device_memory_GB=5)
    assert impl.current_cfg().device_memory_GB == 1


@pytest.mark.taichi_limits(gpu_gb=1)
def test_init_imported_by_name():
    init_imported_at_collection(arch=ti.cpu, device_memory_GB=3)
    assert impl.current_cfg().device_memory_GB == 1


@pytest.mark.taichi_limits()
def test_no_init():
    pass
"""


def _usages(path: Path) -> dict[str, dict[str, Any]]:
    usages = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "usage":
            usages[event["nodeid"].split("::", 1)[1]] = event
    return usages


def test_spawn_worker_records_the_arch_and_caps_through_the_wrapper(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(test_spawned=SPAWN_MODULE)
    log = pytester.path / "usage.jsonl"
    result = run_plugin("--taichi-limits-mode=spawn", f"--taichi-limits-log={log}", timeout=180)
    result.assert_outcomes(passed=3)
    usages = _usages(log)
    assert {usage["mode"] for usage in usages.values()} == {"spawn"}
    # The arch Taichi chose in the worker, as in fork mode (was "not initialised").
    assert usages["test_plain_init"]["arch"] == "x64"
    assert usages["test_init_imported_by_name"]["arch"] == "x64"
    assert usages["test_no_init"]["arch"] == "not initialised"
    # The wrapper saw the call ("from argument"), not the backstop.
    for name, asked in (("test_plain_init", 5), ("test_init_imported_by_name", 3)):
        notes = usages[name]["gpu_clamps"]
        assert notes == [
            (
                f"ti.init device_memory_GB={asked} (from argument) clamped to "
                "device_memory_GB=1 by gpu_gb=1"
            )
        ], name


def test_spawn_worker_crash_inside_ti_init_has_the_hint(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Here ti.init(arch=ti.gpu) really segfaults while probing OpenGL.
    monkeypatch.delenv("TI_ARCH", raising=False)
    pytester.makepyfile(
        test_crash="""
        import pytest
        import taichi as ti

        @pytest.mark.taichi_limits()
        def test_gpu_init():
            ti.init(arch=ti.gpu)
        """
    )
    result = run_plugin("--taichi-limits-mode=spawn", timeout=180)
    if "passed" in result.parseoutcomes():
        pytest.skip("ti.init(arch=ti.gpu) works on this machine: nothing crashes")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*taichi_limits: the test process was killed by signal 11 (SIGSEGV)*",
            (
                "*hint        it crashed inside ti.init with arch=gpu (argument), while Taichi set up "
                "that backend. Use a backend that works on this machine: set TI_ARCH=x64*"
            ),
        ]
    )
    assert "taichi_hooks" not in result.stdout.str()


EARLY_PLUGIN = """
import functools

import taichi as ti

# Taken before the pytest_taichi_limits plugin could wrap ti.init: no name swap reaches it.
init_through_partial = functools.partial(ti.init, arch=ti.cpu, device_memory_GB=5.0)
"""

BACKSTOP_MODULE = """
import pytest
import taichi as ti
from early_partial import init_through_partial


@pytest.mark.taichi_limits(gpu_gb=1)
def test_partial_taken_before_the_plugin():
    init_through_partial()


@pytest.mark.taichi_limits(gpu_gb=1)
def test_plain_init_after_it():
    ti.init(arch=ti.cpu, device_memory_GB=4)
"""


@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_backstop_note_names_an_unreplaced_reference_only_when_true(
    pytester: pytest.Pytester, run_plugin: RunPlugin, mode: str
) -> None:
    pytester.makepyfile(early_partial=EARLY_PLUGIN, test_backstop=BACKSTOP_MODULE)
    log = pytester.path / "usage.jsonl"
    result = run_plugin(
        "-p",
        "early_partial",
        f"--taichi-limits-mode={mode}",
        f"--taichi-limits-log={log}",
        timeout=180,
    )
    result.assert_outcomes(passed=2)
    usages = _usages(log)
    partial_notes = usages["test_partial_taken_before_the_plugin"]["gpu_clamps"]
    assert len(partial_notes) == 1
    assert "device_memory_GB=5 (from " in partial_notes[0]
    if "(from ti.init)" in partial_notes[0]:  # caught by the backstop: then, and only then
        assert "a reference the plugin could not replace" in partial_notes[0]
    else:  # the worker imported the plugin after the wrapper existed: the wrapper caught it
        assert mode == "spawn" and "could not replace" not in partial_notes[0]
    assert usages["test_partial_taken_before_the_plugin"]["arch"] == "x64"
    plain = usages["test_plain_init_after_it"]["gpu_clamps"]
    assert plain == [
        ("ti.init device_memory_GB=4 (from argument) clamped to device_memory_GB=1 by gpu_gb=1")
    ]


FORKED_CHILD_SCRIPT = """
import gc
import json
import os
import sys

from pytest_taichi_limits.taichi_support import hooks as taichi_hooks, cap as taichi_support
from pytest_taichi_limits.config.budget import Budget
from pytest_taichi_limits.ipc.channel import ChannelWriter

sites = []
taichi_hooks.install_init_wrapper()      # before Taichi is imported, as the plugin does
taichi_hooks.add_init_listener(lambda frame, args, kwargs: sites.append(frame.f_lineno))
import taichi as ti                       # noqa: E402
from taichi import init as imported_init  # noqa: E402

read_fd, write_fd = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read_fd)

    def refuse(*args):
        raise AssertionError("gc.get_referrers called in the child")

    gc.get_referrers = refuse  # the child must not search the heap
    taichi_support.prepare_child(Budget(gpu_gb=0.5), ChannelWriter(write_fd))
    imported_init(arch=ti.cpu, device_memory_GB=2)
    cfg = ti.lang.impl.current_cfg()
    applied = {"t": "applied", "gb": cfg.device_memory_GB, "sites": len(sites)}
    os.write(write_fd, (json.dumps(applied) + "\\n").encode())
    os._exit(0)
os.close(write_fd)
_, status = os.waitpid(pid, 0)
with os.fdopen(read_fd) as channel:
    messages = [json.loads(line) for line in channel]
ti.init(arch=ti.cpu)   # no context here: the listener hears it
print(json.dumps({"status": status, "messages": messages, "parent_sites": len(sites)}))
"""


def test_forked_child_inherits_the_wrapper_and_never_searches_the_heap(tmp_path: Path) -> None:
    script = tmp_path / "fork_child.py"
    script.write_text(textwrap.dedent(FORKED_CHILD_SCRIPT))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["status"] == 0, outcome
    kinds = [message["t"] for message in outcome["messages"]]
    assert kinds == ["taichi_init", "note", "taichi_init_done", "applied"], outcome
    started, note, finished, applied = outcome["messages"]
    assert started["arch"] == "x64" and started["arch_from"] == "argument"
    assert finished["arch"] == "x64"
    assert note["text"] == (
        "ti.init device_memory_GB=2 (from argument) clamped to device_memory_GB=0.5 by gpu_gb=0.5"
    )
    assert applied["gb"] == 0.5
    assert applied["sites"] == 0  # the child's context ran the call, not the listeners
    assert outcome["parent_sites"] == 1


def test_one_import_finder_runs_every_callback(tmp_path: Path) -> None:
    # Two callbacks registered before `import taichi` both run (a second finder never would).
    script = tmp_path / "callbacks.py"
    script.write_text(
        textwrap.dedent("""
        from pytest_taichi_limits.taichi_support import hooks as taichi_hooks
        ran = []
        taichi_hooks.when_taichi_imported(lambda: ran.append("first"))
        taichi_hooks.when_taichi_imported(lambda: ran.append("second"))
        taichi_hooks.install_init_wrapper()
        import taichi
        print(ran, taichi_hooks.init_wrapper_installed(), taichi.init is taichi.lang.misc.init)
    """)
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "['first', 'second'] True True"


def test_forked_child_writes_the_offline_kernel_cache(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # The child leaves through os._exit: only finish_child's ti.reset writes Taichi's cache.
    cache = pytester.mkdir("kernel-cache")
    pytester.makepyfile(
        test_cached=f"""
        import pytest
        import taichi as ti

        @pytest.mark.taichi_limits()
        def test_compiles_a_kernel():
            ti.init(arch=ti.cpu, offline_cache=True, offline_cache_file_path={str(cache)!r})
            values = ti.field(ti.i32, shape=4)

            @ti.kernel
            def fill():
                for i in values:
                    values[i] = i

            fill()
            assert values[3] == 3

        @pytest.mark.taichi_limits()
        def test_imports_taichi_without_initialising_it():
            assert ti.lang.impl.get_runtime().prog is None
        """
    )
    result = run_plugin(timeout=180)
    result.assert_outcomes(passed=2)
    assert [path for path in cache.rglob("*") if path.is_file()], "no kernel cache written"


SCAN_COUNTING_CONFTEST = """
import gc
import os

PYTEST_PID = os.getpid()
_get_referrers = gc.get_referrers


def counting_get_referrers(*objects):
    if os.getpid() != PYTEST_PID:
        with open(os.environ["SCAN_LOG"], "a") as log:
            log.write(f"{os.getpid()}\\n")
    return _get_referrers(*objects)


gc.get_referrers = counting_get_referrers
"""

NAMED_INIT_MODULE = """
import pytest
import taichi as ti
from taichi import init
from taichi.lang import impl


@pytest.mark.parametrize("asked", [2, 3, 4])
@pytest.mark.taichi_limits(gpu_gb=1)
def test_capped(asked):
    init(arch=ti.cpu, device_memory_GB=asked)
    assert impl.current_cfg().device_memory_GB == 1
"""


def test_forked_children_never_search_the_heap(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan_log = pytester.path / "scans.log"
    monkeypatch.setenv("SCAN_LOG", str(scan_log))
    pytester.makeconftest(SCAN_COUNTING_CONFTEST)
    pytester.makepyfile(test_named=NAMED_INIT_MODULE)
    log = pytester.path / "usage.jsonl"
    result = run_plugin("--taichi-limits-mode=fork", f"--taichi-limits-log={log}", timeout=180)
    result.assert_outcomes(passed=3)
    assert not scan_log.exists(), scan_log.read_text()
    for name, usage in _usages(log).items():
        assert usage["arch"] == "x64", name
        assert "(from argument) clamped" in usage["gpu_clamps"][0], name
