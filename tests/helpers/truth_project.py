"""The inner project of the ground-truth matrix (tests/e2e/test_truth_matrix.py): tests of known
cost that write down what they did, measured from inside.

Every inner test does its work through `truthkit.Work`, which writes the truth to
`truth/<module>.<test>.json` as it goes (atomically: a test killed at any moment leaves the
last complete line): the CPU time of its process (`time.process_time()`, every thread) and the
wall time since the work began, the bytes it holds by kind (anonymous, memfd, shared), whether
it finished. The inner conftest adds what the plugin's interval holds around the body: the
time, the process's CPU time and its run-queue delay (/proc/self/schedstat) at the start of
the test's setup and at the end of its teardown, in the child, and the run-queue delay of the
supervising process around the whole test, in the parent. Nothing of it is nominal: a figure is
checked against what the test measured of itself, never against a sleep's argument.

What a test holds it keeps until its worker ends (module-level `HELD`), so the plugin's exact
reading at the test's end sees it (a short hold would be a sampling question, not a truth one)
and the next test in the same worker starts with it held: that test's figure must not include
it.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20

#: The kit every inner test works through (a project module: a reimport worker imports it
#: again, as it does the tests).
TRUTHKIT = '''
"""Work of a known cost, and the truth about it written down as it happens."""

import json
import mmap
import os
import signal
import time

TRUTH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "truth")
MIB = 1 << 20
PAGE = mmap.PAGESIZE
CHUNK = 64 << 10
#: What the tests of this worker made: kept until the worker ends.
HELD = []
#: CPU seconds of burning between two writes of the truth.
BEAT_CPU_S = 0.005


def write(name, data):
    """One JSON document, replaced atomically: a kill at any moment leaves a whole one."""
    os.makedirs(TRUTH, exist_ok=True)
    path = os.path.join(TRUTH, name + ".json")
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as stream:
        json.dump(data, stream)
    os.replace(temporary, path)


def run_delay_s():
    """Seconds this process's main thread waited on a run queue, runnable (load)."""
    with open("/proc/self/schedstat") as stream:
        return int(stream.read().split()[1]) / 1e9


def touch(block, size):
    for offset in range(0, size, PAGE):
        block[offset] = 1


class Work:
    def __init__(self, name):
        self.name = name
        self.cpu0 = time.process_time()
        self.wall0 = time.monotonic()
        self.bytes = {"anon": 0, "memfd": 0, "shared": 0, "taichi": 0}
        self.beat()

    def beat(self, done=False):
        write(self.name, {
            "cpu_s": time.process_time() - self.cpu0,
            "wall_s": time.monotonic() - self.wall0,
            "at": time.time(),
            "pid": os.getpid(),
            "bytes": self.bytes,
            "done": done,
        })

    def burn(self, seconds):
        now = time.process_time()
        end = now + seconds if seconds else None
        while end is None or now < end:
            beat = now + BEAT_CPU_S
            while now < beat:
                now = time.process_time()
            self.beat()

    def anon(self, mib):
        size = mib * MIB
        block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        touch(block, size)
        HELD.append(block)
        self.bytes["anon"] += size
        self.beat()

    def shared(self, mib):
        size = mib * MIB
        block = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        touch(block, size)
        HELD.append(block)
        self.bytes["shared"] += size
        self.beat()

    def memfd(self, mib):
        fd = os.memfd_create(f"truth-{self.name}")
        chunk = b"\\x01" * CHUNK  # small: the test's own buffer is no part of what it holds
        for _ in range(mib * MIB // CHUNK):
            os.write(fd, chunk)
        HELD.append(fd)  # open until the worker ends: its pages stay the test's
        self.bytes["memfd"] += mib * MIB
        self.beat()

    def grow(self, step_mib):
        """Anonymous memory, step by step, until the supervisor stops the test."""
        while True:
            self.anon(step_mib)

    def sleep(self, seconds):
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.05))
            self.beat()

    def taichi(self, init, mib):
        """A kernel over a field of `mib` MiB; ti.init first where asked (elsewhere the
        worker's Taichi runtime, from the module's import or an earlier test, is used)."""
        import taichi as ti

        if init:
            ti.init(arch=ti.cpu)
        values = ti.field(ti.f32, shape=mib * MIB // 4)

        @ti.kernel
        def fill(factor: ti.f32):
            for i in values:
                values[i] = i * factor

        fill(2.0)
        assert values[3] == 6.0
        HELD.append(values)
        self.bytes["taichi"] += mib * MIB
        self.beat()

    def finish(self):
        self.beat(done=True)

    def crash(self):
        self.finish()
        os.kill(os.getpid(), signal.SIGSEGV)
'''

#: Records, in the test's process, the interval the plugin's figures cover: from the start of
#: the setup to the end of the teardown (the child runs the phases through these hooks), and,
#: in the process that supervises, the run-queue delay around the whole test.
CONFTEST = """
import os
import time

import pytest
import truthkit


def _name(item):
    return f"{item.path.stem}.{item.name}"


def _mark(item, key):
    path = os.path.join(truthkit.TRUTH, _name(item) + ".hooks")
    os.makedirs(truthkit.TRUTH, exist_ok=True)
    line = f"{key} {time.time()!r} {time.process_time()!r} {truthkit.run_delay_s()!r} {os.getpid()}\\n"
    with open(path, "a") as stream:
        stream.write(line)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item):
    _mark(item, "setup")
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        return (yield)
    finally:
        _mark(item, "teardown")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    # Only the process that supervises runs the protocol: the child runs the phases.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    _mark(item, f"parent-start-{worker}")
    try:
        return (yield)
    finally:
        _mark(item, f"parent-end-{worker}")
"""


@dataclass(frozen=True)
class Cell:
    """One inner test: its work, and how it should end.

    `ends`: "passed", a budget key it goes over ("cpu_s", "mem_mb", "wall_s"), or "crash".
    Work happens in this order: burn, anonymous, memfd, shared, sleep, Taichi, then the end.
    """

    name: str
    ends: str = "passed"
    cpu_s: float = 0.0
    anon_mib: int = 0
    memfd_mib: int = 0
    shared_mib: int = 0
    sleep_s: float = 0.0
    taichi_mib: int = 0  # a Taichi kernel over a field of this size (0: no Taichi)

    @property
    def budget(self) -> str:
        return VIOLATION_BUDGETS.get(self.ends, "")

    @property
    def outcome(self) -> str:
        return "passed" if self.ends == "passed" else "failed"

    @property
    def memory_bytes(self) -> int:
        """What the test holds at its end, Taichi's runtime aside."""
        return (self.anon_mib + self.memfd_mib + self.shared_mib + self.taichi_mib) * MIB


#: The budget each kind of violation is given (the rest: the session's defaults).
VIOLATION_BUDGETS = {"cpu_s": "cpu_s=0.3", "mem_mb": "mem_mb=24", "wall_s": "wall_s=0.6"}
#: MiB per step of a test that grows until it is stopped.
GROW_STEP_MIB = 2


def _body(cell: Cell, module: str, taichi_init: bool) -> str:
    lines = [f"work = truthkit.Work({module + '.' + cell.name!r})"]
    if cell.cpu_s:
        lines.append(f"work.burn({cell.cpu_s!r})")
    for kind in ("anon", "memfd", "shared"):
        mib = getattr(cell, f"{kind}_mib")
        if mib:
            lines.append(f"work.{kind}({mib})")
    if cell.sleep_s:
        lines.append(f"work.sleep({cell.sleep_s!r})")
    if cell.taichi_mib:
        lines.append(f"work.taichi(init={taichi_init!r}, mib={cell.taichi_mib})")
    lines.append(
        {
            "passed": "work.finish()",
            "cpu_s": "work.burn(0)",
            "mem_mb": f"work.grow({GROW_STEP_MIB})",
            "wall_s": "work.sleep(600)",
            "crash": "work.crash()",
        }[cell.ends]
    )
    return "\n".join(lines)


#: A module whose import initialises Taichi, burns CPU and holds memory: a reimport worker (or a
#: spawn-mode worker) does that before its first test, and no test may be charged for it.
IMPORT_COST_S = 0.3
IMPORT_HOLD_MIB = 8


def module_source(cells: tuple[Cell, ...], module: str, taichi_at_import: bool) -> str:
    head = ["import pytest", "import truthkit", ""]
    if taichi_at_import:
        head += [
            "import taichi as ti",
            "",
            "ti.init(arch=ti.cpu)",
            f"_AT_IMPORT = truthkit.Work({module + '.import'!r})",
            f"_AT_IMPORT.burn({IMPORT_COST_S!r})",
            f"_AT_IMPORT.anon({IMPORT_HOLD_MIB})",
            "_AT_IMPORT.finish()",
            "",
        ]
    tests = []
    for cell in cells:
        marker = f"@pytest.mark.taichi_limits({cell.budget})"
        body = textwrap.indent(_body(cell, module, taichi_init=not taichi_at_import), "    ")
        tests.append(f"\n{marker}\ndef {cell.name}():\n{body}\n")
    return "\n".join(head) + "\n".join(tests)


def write_project(root: Path, modules: dict[str, tuple[Cell, ...]], taichi_at_import: bool) -> None:
    (root / "truthkit.py").write_text(TRUTHKIT)
    (root / "conftest.py").write_text(CONFTEST)
    for module, cells in modules.items():
        (root / f"{module}.py").write_text(module_source(cells, module, taichi_at_import))
