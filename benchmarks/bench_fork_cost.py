"""Where the per-test cost of fork mode goes in a torch-sized pytest process.

torch is not needed: the script builds the parent itself, importing numpy, pandas and scipy (the
large import set) and keeping a few million small live Python objects (torch alone brings
millions), about 770 MB RSS at the default size. Taichi is imported but never initialised in the
parent, and the plugin's ti.init wrapper is installed first, as in a pytest process. Then it
forks one child per measurement and reports medians:

- fork + exit: what every test pays before anything runs (page tables of the parent's RSS);
- copy-on-write: minor page faults of the child (ru_minflt from wait4) for each step;
- a full garbage collection in the child with nothing frozen, with `gc.freeze()` in the child
  right after the fork, and with `gc.freeze()` once in the parent before forking; and the
  parent's own full collection while a child is alive (its pages are shared, so the parent
  copies what it touches), with and without the parent's freeze;
- the old per-test search for ti.init references (`gc.get_referrers`) vs the inherited wrapper
  (`taichi_support.prepare_child`);
- Taichi in the child: ti.init(arch=cpu), a first kernel launch, ti.reset (which writes the
  offline kernel cache);
- report serialisation: three phase reports through the plugin's channel and back;
- the wire's checks per test: the child's fixture watch and SIGTERM handler (child/loop.py's
  `serve`, once per child), and the parent's look in /proc that the child waits for its next
  command before it believes `done` (platform/linux.py's `blocked_reading`, once per test).

    python benchmarks/bench_fork_cost.py [--objects N] [--repeat K] [--no-heavy-imports]

The defaults are the full size (3,000,000 objects, 15 repeats); `--objects 300000 --repeat 5`
is a quick check. Timings on a busy machine are noisy; page-fault counts are not.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import machine_line, table  # noqa: E402 - after the path insert above

ChildStep = Callable[[], dict[str, float]]


# -- the parent ---------------------------------------------------------------------------------


class _Small:
    __slots__ = ("a", "b")

    def __init__(self, a: int, b: str) -> None:
        self.a, self.b = a, b


class _Plain:
    def __init__(self, number: int) -> None:
        self.number = number


def build_heap(objects: int) -> list[Any]:
    """`objects` small container objects the collector tracks, like a big library's state."""
    heap: list[Any] = []
    for number in range(objects // 4):
        heap.append([number, str(number)])
        heap.append({"key": number})
        heap.append(_Small(number, "x"))
        heap.append(_Plain(number))
    return heap


def heavy_imports() -> list[str]:
    names = []
    for name in (
        "numpy",
        "pandas",
        "scipy",
        "scipy.linalg",
        "scipy.sparse",
        "scipy.signal",
        "scipy.optimize",
        "scipy.stats",
    ):
        try:
            __import__(name)
            names.append(name)
        except ImportError:
            pass
    return names


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- forking and measuring ----------------------------------------------------------------------


def _minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(step: Callable[[], object]) -> dict[str, float]:
    """Run `step` in this process: its wall time and the minor faults it caused."""
    faults = _minflt()
    start = time.perf_counter()
    step()
    return {"ms": (time.perf_counter() - start) * 1000, "faults": _minflt() - faults}


def fork_once(
    in_child: ChildStep | None, while_alive: Callable[[], dict[str, float]] | None = None
) -> dict[str, float]:
    """Fork; the child runs `in_child` (and reports what it measured); the parent runs
    `while_alive` meanwhile. Fork-to-reaped wall time and the child's faults come from wait4."""
    read_fd, write_fd = os.pipe()
    go_read, go_write = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        os.close(go_write)
        os.read(go_read, 1)  # the parent's `while_alive` runs while this child exists
        try:
            result = in_child() if in_child is not None else {}
        except BaseException as error:  # noqa: BLE001 - report, never hang the benchmark
            result = {"error": repr(error)}  # type: ignore[dict-item]
        os.write(write_fd, json.dumps(result).encode())
        os._exit(0)
    os.close(write_fd)
    os.close(go_read)
    parent = while_alive() if while_alive is not None else {}
    os.write(go_write, b"x")
    os.close(go_write)
    chunks = []
    while chunk := os.read(read_fd, 1 << 16):
        chunks.append(chunk)
    os.close(read_fd)
    _, status, usage = os.wait4(pid, 0)
    wall_ms = (time.perf_counter() - start) * 1000
    child = json.loads(b"".join(chunks) or b"{}")
    if "error" in child or status != 0:
        raise RuntimeError(f"the child failed: {child.get('error', status)}")
    result = {"total_ms": wall_ms, "total_faults": float(usage.ru_minflt)}
    result.update({f"child_{key}": value for key, value in child.items()})
    result.update({f"parent_{key}": value for key, value in parent.items()})
    return result


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def repeat(
    times: int,
    in_child: ChildStep | None,
    while_alive: Callable[[], dict[str, float]] | None = None,
) -> dict[str, float]:
    return medians([fork_once(in_child, while_alive) for _ in range(times)])


# -- what a child does --------------------------------------------------------------------------


def child_full_collection(freeze_first: bool) -> ChildStep:
    def step() -> dict[str, float]:
        if freeze_first:
            freeze = timed(gc.freeze)
        collect = timed(gc.collect)
        return {
            "ms": collect["ms"],
            "faults": collect["faults"],
            **({"freeze_ms": freeze["ms"]} if freeze_first else {}),
        }

    return step


def child_old_scan() -> dict[str, float]:
    """What each child did before: search the heap for every reference to ti.init."""
    misc = sys.modules["taichi.lang.misc"]
    return timed(lambda: gc.get_referrers(misc.init))


def child_prepare(writer_fd: int) -> ChildStep:
    def step() -> dict[str, float]:
        from pytest_taichi_limits.config.budget import Budget
        from pytest_taichi_limits.ipc.channel import ChannelWriter
        from pytest_taichi_limits.taichi_support import cap as taichi_support

        writer = ChannelWriter(writer_fd)
        return timed(lambda: taichi_support.prepare_child(Budget(gpu_gb=1), writer))

    return step


def child_reset_uninitialised() -> dict[str, float]:
    """finish_child's ti.reset in a test that imported Taichi but never initialised it."""
    import taichi as ti

    return timed(ti.reset)


def child_taichi() -> dict[str, float]:
    return taichi_steps()


def taichi_steps() -> dict[str, float]:
    import taichi as ti

    init = timed(lambda: ti.init(arch=ti.cpu, offline_cache=True, log_level="error"))
    values = ti.field(ti.i32, shape=64)

    @ti.kernel
    def fill():  # type: ignore[no-untyped-def] # annotations here are strings: none for Taichi
        for i in values:
            values[i] = i * 3

    launch = timed(fill)
    reset = timed(ti.reset)
    return {
        "init_ms": init["ms"],
        "init_faults": init["faults"],
        "launch_ms": launch["ms"],
        "launch_faults": launch["faults"],
        "reset_ms": reset["ms"],
        "reset_faults": reset["faults"],
    }


def child_reports(writer_fd: int) -> ChildStep:
    def step() -> dict[str, float]:
        import pytest

        from pytest_taichi_limits.ipc.channel import ChannelWriter
        from pytest_taichi_limits.ipc.protocol import Report

        writer = ChannelWriter(writer_fd)
        captured = [("Captured stdout call", "x" * 2000), ("Captured log call", "y" * 1000)]

        def send_three() -> None:
            for when in ("setup", "call", "teardown"):
                report = pytest.TestReport(
                    "tests/test_module.py::test_case[param]",
                    ("tests/test_module.py", 10, "test_case[param]"),
                    {"test_case": 1, "taichi_limits": 1},
                    "passed",
                    None,
                    when,
                    captured if when == "call" else [],
                    0.01,
                    1.0,
                    1.01,
                )
                # What pytest's own pytest_report_to_serializable returns for a TestReport.
                data = report._to_json()
                data["$report_type"] = "TestReport"
                writer.send(Report(data))

        return timed(send_three)

    return step


def child_serves() -> dict[str, float]:
    """What `serve` sets up once per child before its first test: the fixture watch (a pytest
    plugin registered in the child) and the SIGTERM handler."""
    import signal

    import pytest

    from pytest_taichi_limits.child import loop
    from pytest_taichi_limits.ipc.channel import ChannelWriter

    manager = pytest.PytestPluginManager()
    writer = ChannelWriter(os.open(os.devnull, os.O_WRONLY))

    def step() -> None:
        signal.signal(signal.SIGTERM, loop._StopOnSigterm())
        manager.register(loop.FixtureWatch(writer), "taichi_limits_fixtures")

    return timed(step)


# -- the parent's side of a report --------------------------------------------------------------


def parent_sees_the_child_wait(times: int) -> dict[str, float]:
    """The parent's look in /proc (once per test): is the child's main thread blocked reading
    its control socket?"""
    import socket

    from pytest_taichi_limits.platform import linux

    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        os.read(theirs.fileno(), 1)
        os._exit(0)
    inode = os.fstat(theirs.fileno()).st_ino
    theirs.close()
    while not linux.blocked_reading(pid, inode):
        time.sleep(0.001)
    looks = medians([timed(lambda: linux.blocked_reading(pid, inode)) for _ in range(times)])
    ours.send(b"x")
    os.waitpid(pid, 0)
    ours.close()
    return looks


def parent_reads_reports(lines: list[bytes]) -> dict[str, float]:
    from pytest_taichi_limits.ipc.channel import ChannelReader

    read_fd, write_fd = os.pipe()

    def read_back() -> None:
        for line in lines:
            os.write(write_fd, line)
        os.set_blocking(read_fd, False)
        reader = ChannelReader(read_fd)
        reader.drain()
        assert len(reader.messages) == len(lines), "every report read back"

    try:
        return timed(read_back)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def captured_report_lines(repeats: int) -> list[bytes]:
    read_fd, write_fd = os.pipe()
    fork_once(child_reports(write_fd))
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(read_fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    os.close(read_fd)
    return [line + b"\n" for line in data.splitlines()][:3]


# -- the table ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=3_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--no-heavy-imports", action="store_true")
    options = parser.parse_args()
    os.environ.setdefault("TI_SKIP_VERSION_CHECK", "ON")

    import pytest  # noqa: F401 - the plugin's modules are imported in a pytest process

    from pytest_taichi_limits.config import budget  # noqa: F401
    from pytest_taichi_limits.taichi_support import hooks as taichi_hooks

    taichi_hooks.install_init_wrapper()  # as the plugin does before the conftests load
    imported = [] if options.no_heavy_imports else heavy_imports()
    import taichi  # noqa: F401 - imported, never initialised, as in a fork-mode pytest process

    heap = build_heap(options.objects)
    gc.collect()
    size = f"{len(heap):,} objects, {rss_mb():.0f} MB RSS, imports: {', '.join(imported) or '-'}"
    times = options.repeat
    sink_read, sink_write = os.pipe()  # channel messages nobody reads here
    os.set_blocking(sink_read, False)

    rows: list[list[object]] = []

    def row(what: str, ms: float, faults: float, note: str = "") -> None:
        rows.append([what, f"{ms:.2f}", f"{faults:,.0f}", note])
        print(f"  {what}: {ms:.2f} ms, {faults:,.0f} faults", file=sys.stderr, flush=True)

    def drain_sink() -> None:
        try:
            while os.read(sink_read, 1 << 20):
                pass
        except BlockingIOError:
            pass

    print(f"parent: {size}", file=sys.stderr)
    base = repeat(times, None)
    row(
        "fork + exit (nothing else)",
        base["total_ms"],
        base["total_faults"],
        "fork to reaped; faults of the child",
    )
    thawed = repeat(times, child_full_collection(freeze_first=False))
    row(
        "full gc.collect() in the child, nothing frozen",
        thawed["child_ms"],
        thawed["child_faults"],
        "any test whose allocations trigger a gen-2 collection",
    )
    frozen = repeat(times, child_full_collection(freeze_first=True))
    row(
        "gc.freeze() in the child right after the fork",
        frozen["child_freeze_ms"],
        0,
        "what child.start_child does",
    )
    row(
        "full gc.collect() in the child after its gc.freeze()",
        frozen["child_ms"],
        frozen["child_faults"],
    )
    old = repeat(times, child_old_scan)
    row(
        "old: gc.get_referrers(ti.init) in the child",
        old["child_ms"],
        old["child_faults"],
        "per test, before this change",
    )
    new = repeat(times, child_prepare(sink_write))
    drain_sink()
    row(
        "new: prepare_child with the inherited wrapper",
        new["child_ms"],
        new["child_faults"],
        "per test now",
    )
    parent_thawed = repeat(times, None, lambda: timed(gc.collect))
    row(
        "full gc.collect() in the parent while a child lives",
        parent_thawed["parent_ms"],
        parent_thawed["parent_faults"],
        "faults: the parent's own copies",
    )
    forked_taichi = repeat(max(3, times // 3), child_taichi)
    row(
        "ti.init(arch=cpu) in the child",
        forked_taichi["child_init_ms"],
        forked_taichi["child_init_faults"],
    )
    row(
        "first kernel launch (offline cache warm)",
        forked_taichi["child_launch_ms"],
        forked_taichi["child_launch_faults"],
    )
    row(
        "ti.reset() in the child (writes the offline cache)",
        forked_taichi["child_reset_ms"],
        forked_taichi["child_reset_faults"],
    )
    never = repeat(times, child_reset_uninitialised)
    row(
        "ti.reset() in the child, Taichi never initialised",
        never["child_ms"],
        never["child_faults"],
        "finish_child for a test without ti.init",
    )
    sent = repeat(times, child_reports(sink_write))
    drain_sink()
    row("3 phase reports: serialise + send (child)", sent["child_ms"], sent["child_faults"])
    lines = captured_report_lines(1)
    received = medians([parent_reads_reports(lines) for _ in range(times)])
    row("3 phase reports: read + decode (parent)", received["ms"], received["faults"])
    serving = repeat(times, child_serves)
    row(
        "fixture watch + SIGTERM handler (child)",
        serving["child_ms"],
        serving["child_faults"],
        "once per child, in serve",
    )
    looks = parent_sees_the_child_wait(max(times, 20))
    row(
        "/proc look: the child waits for its next command (parent)",
        looks["ms"],
        looks["faults"],
        "once per test, before `done` is believed",
    )

    # Last: the parent freezes its heap once, as the plugin would before its first fork.
    collect_before = timed(gc.collect)
    freeze = timed(gc.freeze)
    row(
        "once: gc.collect() + gc.freeze() in the parent",
        collect_before["ms"] + freeze["ms"],
        collect_before["faults"] + freeze["faults"],
        "one time, before the first fork",
    )
    frozen_parent = repeat(times, child_full_collection(freeze_first=False))
    row(
        "full gc.collect() in the child, parent froze first",
        frozen_parent["child_ms"],
        frozen_parent["child_faults"],
    )
    base_frozen = repeat(times, None)
    row("fork + exit, parent froze first", base_frozen["total_ms"], base_frozen["total_faults"])
    parent_frozen = repeat(times, None, lambda: timed(gc.collect))
    row(
        "full gc.collect() in the parent while a child lives, parent froze first",
        parent_frozen["parent_ms"],
        parent_frozen["parent_faults"],
    )
    gc.unfreeze()
    # Plain pytest's cost for the same steps: a second ti.init in one process (after a reset).
    # Last, since a fork after ti.init hangs at its first kernel launch.
    taichi_steps()
    again = medians([taichi_steps() for _ in range(max(3, times // 3))])
    row(
        "ti.init(arch=cpu), in-process again (plain pytest)",
        again["init_ms"],
        again["init_faults"],
        "no fork: the same process re-initialises",
    )
    row(
        "first kernel launch, in-process again (plain pytest)",
        again["launch_ms"],
        again["launch_faults"],
    )

    print(machine_line())
    print(f"parent: {size}; medians of {times} forks (Taichi steps: {max(3, times // 3)})")
    print()
    print(
        table(
            ["step", "median ms", "minor faults", "note"],
            rows,
            title="Per forked test, in a torch-sized parent",
        )
    )
    del heap


if __name__ == "__main__":
    main()
