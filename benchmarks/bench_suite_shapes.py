"""Issue 9's suite shapes: plain pytest against --taichi-limits in each isolation, side by side.

Every suite is generated at run time in a temporary folder (never committed as data):

(a) app-init: M modules x T tests; each module imports a heavy stack (numpy, pandas, scipy) and an
    application module that calls `ti.init(arch=ti.cpu)` at import and defines module-level fields
    and 10 kernels; the tests call those kernels.
(b) conftest-init: the same, with `ti.init` in the conftest's `pytest_configure` instead.
(c) big-process: fork mode in a pytest process with a large import set (numpy, pandas, scipy and a
    module holding ~3 million small live objects, ~700 MB RSS); each test calls `ti.init` itself
    and runs a small kernel.
(d) Taichi's own tests: runs bench_taichi_suite.py (needs --taichi-src; skipped without it).
(e) shared-kernels (the "2x row"): many tests in a few modules calling the same few kernels, one
    `ti.init` per module in a module-scoped fixture (fork-safe).
(f) many-modules: 500 trivial tests in 50 modules, every run under `-n 2` (pytest-xdist).
(g) trivial tests: runs bench_overhead.py (overhead per test against pytest-forked on pytest 8).

Variants of (a), (b), (c), (e), (f): plain pytest, `--taichi-limits` as it is (its default
isolation), and `--taichi-limits` with each `--taichi-limits-isolation` value (test, module,
session). Whether the installed plugin has that
option is read from `pytest --help`; where it does not, `--taichi-limits` as it is runs in the
"default" column and the isolation columns say n/a. Runs alternate between the variants (after one
untimed plain warm-up that fills Taichi's offline kernel cache), and the tables show medians of the
whole run's wall time (start-up and collection included, as a user sees it) and CPU time (pytest
and every process it waited for), with ratios to plain, and the memory the plugin's own
processes hold: the largest sum, over the run, of the proportional set size (Pss) of pytest and
of its direct children (the fork server, the zygote; their children, the tests, left out),
against pytest's alone in the plain run. Every test's outcome is read from
--junitxml and must equal plain's: a MISMATCH row says otherwise. Every pytest run has a hard
timeout; a run that exceeds it is killed with its whole process tree and shows as TIMEOUT.

    python benchmarks/bench_suite_shapes.py [--quick] [--repeats N] [--only a,b,c,d,e,f,g]
        [--taichi-src PATH] [--timeout-s S]

Exit status 1 when an outcome differs from plain, a run timed out or left processes behind,
plain pytest did not pass a generated suite, or a sub-benchmark failed. A missed target is
reported in the table, never an error: timings are only meaningful on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import psutil
from _common import (
    HERE,
    ISOLATION_MODES,
    bench_env,
    default_isolation,
    isolation_modes,
    junit_outcomes,
    machine_line,
    median,
    table,
    workdir,
    write,
)

#: Generous budgets: the benchmark measures the cost of supervision, not of a violation.
LIMITS = ("--taichi-limits", "--taichi-limits-mem-mb=8192", "--taichi-limits-wall-s=600")
#: Column order of the tables; "default" is --taichi-limits without an isolation option.
COLUMNS = ("default", *ISOLATION_MODES)
#: After pytest exits, how long the processes it started get to finish before they count as
#: left behind (a worker that is shutting down is not a leak).
LEFTOVER_GRACE_S = 3.0

# --------------------------------------------------------------------------------------------
# The generated suites
# --------------------------------------------------------------------------------------------

ROOT_INI = """
[pytest]
testpaths = tests
"""

#: The heavy stack an application pulls in (about 2 s of imports).
STACK = """
'''The application's scientific stack.'''
import numpy
import pandas
import scipy.interpolate
import scipy.linalg
import scipy.optimize
import scipy.signal
import scipy.sparse
import scipy.stats
"""

#: The application's Taichi side: module-level fields and ten kernels. {init} is the
#: module-level `ti.init` of shape (a), empty for (b).
APP_KERNELS = """
'''Fields and kernels of the application, set up at import.'''
import taichi as ti

{init}
N = 4096
x = ti.field(ti.f64, shape=N)
y = ti.field(ti.f64, shape=N)
acc = ti.field(ti.f64, shape=())


@ti.kernel
def fill_ramp():
    for i in x:
        x[i] = i


@ti.kernel
def fill_const(value: ti.f64):
    for i in y:
        y[i] = value


@ti.kernel
def scale(factor: ti.f64):
    for i in x:
        x[i] *= factor


@ti.kernel
def axpy(a: ti.f64):
    for i in y:
        y[i] += a * x[i]


@ti.kernel
def total_x() -> ti.f64:
    s = ti.cast(0, ti.f64)
    for i in x:
        s += x[i]
    return s


@ti.kernel
def dot() -> ti.f64:
    s = ti.cast(0, ti.f64)
    for i in x:
        s += x[i] * y[i]
    return s


@ti.kernel
def max_x() -> ti.f64:
    acc[None] = -1e300
    for i in x:
        ti.atomic_max(acc[None], x[i])
    return acc[None]


@ti.kernel
def square():
    for i in x:
        x[i] = x[i] * x[i]


@ti.kernel
def shift():
    for i in y:
        y[i] = x[(i + 1) % N]


@ti.kernel
def clamp(low: ti.f64, high: ti.f64):
    for i in x:
        x[i] = ti.min(ti.max(x[i], low), high)
"""

CONFTEST_EMPTY = """
'''Puts the suite's root on sys.path (rootdir conftest), as an application's conftest does.'''
"""

CONFTEST_CONFIGURE_INIT = """
'''Research-code shape: the scientific stack in the conftest, ti.init in pytest_configure.'''
import taichi as ti

from app import stack  # noqa: F401


def pytest_configure(config):
    ti.init(arch=ti.cpu)
"""

#: One test module of (a) and (b): up to six tests over the application's kernels. Every test
#: sets the state it reads, so that its outcome does not depend on which tests ran before it.
APP_TESTS_HEAD = """
import numpy as np
import pandas as pd
import pytest
import scipy.linalg

from app import kernels as k
from app import stack  # noqa: F401

FACTOR = {factor}.0


def ramp():
    return np.arange(k.N, dtype=np.float64)
"""

APP_TESTS = (
    """
def test_total():
    k.fill_ramp()
    assert k.total_x() == ramp().sum()
""",
    """
def test_scale():
    k.fill_ramp()
    k.scale(FACTOR)
    assert k.total_x() == FACTOR * ramp().sum()
""",
    """
def test_axpy():
    k.fill_ramp()
    k.fill_const(1.0)
    k.axpy(FACTOR)
    np.testing.assert_allclose(k.y.to_numpy(), 1.0 + FACTOR * ramp())
""",
    """
def test_dot():
    k.fill_ramp()
    k.fill_const(FACTOR)
    assert k.dot() == pytest.approx(FACTOR * ramp().sum())
""",
    """
def test_square_norm():
    k.fill_ramp()
    k.square()
    assert k.max_x() == (k.N - 1) ** 2
    assert scipy.linalg.norm(k.x.to_numpy()) == pytest.approx(scipy.linalg.norm(ramp() ** 2))
""",
    """
def test_shift_clamp_frame():
    k.fill_ramp()
    k.shift()
    k.clamp(10.0, 10.0 + FACTOR * 10)
    frame = pd.DataFrame({"x": k.x.to_numpy(), "y": k.y.to_numpy()})
    assert frame["x"].min() == 10.0
    assert frame["x"].max() == 10.0 + FACTOR * 10
    assert frame["y"].iloc[-1] == 0.0
""",
)

#: (c): about 4 tracked objects per record (tuple, list, dict with a list: dicts of atomic values
#: alone are not tracked by the garbage collector), ~180 bytes each.
BIG_STATE = """
'''Lots of small live objects, as torch and a large application bring into the process.'''
COUNT = {records}
RECORDS = [
    (i, [float(i), float(i + 1), float(i + 2), float(i + 3)],
     {{"id": i, "name": "n%d" % i, "weight": float(i), "tags": [i]}})
    for i in range(COUNT)
]
"""

CONFTEST_BIG = """
'''A large import set in the pytest process, before any test (and so before any fork).'''
import big_state  # noqa: F401
import numpy  # noqa: F401
import pandas  # noqa: F401
import scipy.linalg  # noqa: F401
import scipy.sparse  # noqa: F401
import scipy.stats  # noqa: F401
"""

LIB_KERNELS = """
'''A library's kernels: defined at import, compiled in whichever runtime calls them.'''
import taichi as ti


@ti.kernel
def total(n: ti.i32) -> ti.i64:
    s = ti.cast(0, ti.i64)
    for i in range(n):
        s += i
    return s


@ti.kernel
def fill(a: ti.template(), factor: ti.i32):
    for i in a:
        a[i] = i * factor
"""

BIG_TESTS = """
import numpy as np
import pytest
import taichi as ti

import big_state
import lib_kernels


@pytest.mark.parametrize("k", range({count}))
def test_kernel(k):
    ti.init(arch=ti.cpu)
    a = ti.field(ti.i32, shape=256)
    lib_kernels.fill(a, k + 1)
    assert int(a.to_numpy().sum()) == (k + 1) * int(np.arange(256).sum())
    assert lib_kernels.total(100 + k) == sum(range(100 + k))
    assert len(big_state.RECORDS) == big_state.COUNT
"""

SHARED_KERNELS = """
'''The few kernels every test of the suite calls.'''
import taichi as ti


@ti.kernel
def saxpy(a: ti.f32, x: ti.template(), y: ti.template()):
    for i in x:
        y[i] += a * x[i]


@ti.kernel
def smooth(x: ti.template(), y: ti.template()):
    for i in x:
        left = x[ti.max(i - 1, 0)]
        right = x[ti.min(i + 1, x.shape[0] - 1)]
        y[i] = 0.25 * left + 0.5 * x[i] + 0.25 * right


@ti.kernel
def total(x: ti.template()) -> ti.f64:
    s = ti.cast(0, ti.f64)
    for i in x:
        s += x[i]
    return s
"""

#: (e): one ti.init per module, in a module-scoped fixture; every test runs the shared kernels
#: STEPS times on fields of N elements: about 0.2-0.4 s a test under plain pytest, as in the
#: issue's application suite (64 tests, 24 s).
SHARED_TESTS = """
import types

import numpy as np
import pytest
import taichi as ti

import shared_kernels as sk

N = 1 << 20
STEPS = 40


@pytest.fixture(scope="module")
def fields():
    ti.init(arch=ti.cpu)
    yield types.SimpleNamespace(x=ti.field(ti.f32, shape=N), y=ti.field(ti.f32, shape=N))
    ti.reset()


@pytest.mark.parametrize("i", range({count}))
def test_step(fields, i):
    fields.x.from_numpy(np.full(N, 1.0, np.float32))
    fields.y.fill(0.0)
    for _ in range(STEPS):
        sk.saxpy(0.5, fields.x, fields.y)
        sk.smooth(fields.y, fields.x)
    assert sk.total(fields.y) > 0
    assert np.isfinite(fields.x.to_numpy()).all()
"""


#: (f): trivial tests, many modules (run under -n 2).
TRIVIAL_MODULE = """
import pytest


@pytest.mark.parametrize("i", range({count}))
def test_trivial(i):
    assert i + {index} >= 0
"""


@dataclass(frozen=True)
class Size:
    modules: int
    tests_per_module: int
    records: int = 0  # live objects of (c), in records of ~4 objects each


def build_app(root: Path, size: Size, conftest_init: bool) -> None:
    write(root / "pytest.ini", ROOT_INI)
    write(root / "conftest.py", CONFTEST_CONFIGURE_INIT if conftest_init else CONFTEST_EMPTY)
    write(root / "app" / "__init__.py", "")
    write(root / "app" / "stack.py", STACK)
    init = "" if conftest_init else "ti.init(arch=ti.cpu)\n"
    write(root / "app" / "kernels.py", APP_KERNELS.format(init=init))
    if not 1 <= size.tests_per_module <= len(APP_TESTS):
        raise ValueError(f"the app suites have 1 to {len(APP_TESTS)} tests per module")
    tests = "\n".join(APP_TESTS[: size.tests_per_module])
    for index in range(size.modules):
        write(
            root / "tests" / f"test_app_{index}.py",
            APP_TESTS_HEAD.format(factor=index + 2) + "\n" + tests,
        )


def build_big(root: Path, size: Size) -> None:
    write(root / "pytest.ini", ROOT_INI)
    write(root / "conftest.py", CONFTEST_BIG)
    write(root / "big_state.py", BIG_STATE.format(records=size.records))
    write(root / "lib_kernels.py", LIB_KERNELS)
    for index in range(size.modules):
        write(
            root / "tests" / f"test_big_{index}.py", BIG_TESTS.format(count=size.tests_per_module)
        )


def build_shared(root: Path, size: Size) -> None:
    write(root / "pytest.ini", ROOT_INI)
    write(root / "conftest.py", CONFTEST_EMPTY)
    write(root / "shared_kernels.py", SHARED_KERNELS)
    for index in range(size.modules):
        write(
            root / "tests" / f"test_shared_{index}.py",
            SHARED_TESTS.format(count=size.tests_per_module),
        )


def build_many_modules(root: Path, size: Size) -> None:
    write(root / "pytest.ini", ROOT_INI)
    write(root / "conftest.py", CONFTEST_EMPTY)
    for index in range(size.modules):
        write(
            root / "tests" / f"test_trivial_{index}.py",
            TRIVIAL_MODULE.format(count=size.tests_per_module, index=index),
        )


@dataclass(frozen=True)
class Shape:
    key: str
    title: str
    build: Callable[[Path, Size], None]
    full: Size
    quick: Size
    #: column ("default" or an isolation) -> the largest wall-time ratio to plain that issue 19
    #: allows ("default" is --taichi-limits with no isolation option)
    targets: Mapping[str, float]
    #: options of every run of the shape, plain included
    common: tuple[str, ...] = ()
    #: sample the memory of pytest and the plugin's own processes while it runs
    sample_memory: bool = False


#: Issue 19: the default <= 1.3x plain on every real-shape suite, isolation=session <= 1.1x.
#: isolation=test is judged against the measured floor (bench_overhead.py, bench_taichi_start.py).
APP_TARGETS = {"default": 1.3, "session": 1.1}
SHAPES = (
    Shape(
        "a",
        "app module calls ti.init at import; numpy/pandas/scipy",
        lambda root, size: build_app(root, size, conftest_init=False),
        Size(5, 6),
        Size(2, 3),
        APP_TARGETS,
    ),
    Shape(
        "b",
        "conftest calls ti.init in pytest_configure; numpy/pandas/scipy",
        lambda root, size: build_app(root, size, conftest_init=True),
        Size(5, 6),
        Size(2, 3),
        APP_TARGETS,
    ),
    Shape(
        "c",
        "each test calls ti.init; ~3M live objects, ~700 MB RSS (fork)",
        build_big,
        Size(3, 8, records=750_000),
        Size(2, 3, records=75_000),
        APP_TARGETS,
        sample_memory=True,
    ),
    Shape(
        "e",
        "many tests share a few kernels; ti.init in a module fixture",
        build_shared,
        Size(4, 16),
        Size(2, 4),
        APP_TARGETS,
    ),
    Shape(
        "f",
        "500 trivial tests in 50 modules, -n 2",
        build_many_modules,
        Size(50, 10),
        Size(10, 5),
        {"default": 1.2},
        common=("-n", "2"),
    ),
)
SUB_BENCHMARKS = {"d": "bench_taichi_suite", "g": "bench_overhead"}
ALL_KEYS = ("a", "b", "c", "d", "e", "f", "g")

# --------------------------------------------------------------------------------------------
# Running pytest with a hard timeout
# --------------------------------------------------------------------------------------------


@dataclass
class Bounded:
    wall_s: float
    cpu_s: float
    exit_code: int | None  # None: killed at the timeout
    leftovers: int  # processes of the run still alive after it ended (then killed)
    max_rss_mb: float  # the largest peak RSS of pytest and the processes it waited for
    #: the largest Pss of pytest and its direct children (the plugin's fork server, zygote),
    #: sampled every 0.2 s (0: not sampled)
    max_own_pss_mb: float = 0.0


def _pss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _own_pss_mb(pid: int) -> float:
    """pytest's Pss and that of its direct children (the plugin's processes; the tests are
    their children)."""
    try:
        children = [child.pid for child in psutil.Process(pid).children()]
    except psutil.Error:
        children = []
    return _pss_mb(pid) + sum(_pss_mb(child) for child in children)


def run_bounded(
    cmd: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float,
    log: Path | None,
    sample_memory: bool = False,
) -> Bounded:
    """Run cmd in a session of its own; at timeout_s kill that session and every descendant.

    The CPU time is the run's own plus that of every process it waited for (wait4's rusage).
    Output goes to log, or to this process's stdout when log is None.
    """
    out = log.open("wb") if log is not None else None
    try:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
        )
    finally:
        if out is not None:
            out.close()
    start = time.perf_counter()
    exit_code: int | None = None
    own_pss_mb = 0.0
    sampled_at = 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            exit_code = os.waitstatus_to_exitcode(status)
            break
        if time.perf_counter() - start > timeout_s:
            _kill([proc.pid, *_session(proc.pid), *_descendants(proc.pid)])
            _, status, usage = os.wait4(proc.pid, 0)
            break
        if sample_memory and time.perf_counter() - sampled_at > 0.2:
            own_pss_mb = max(own_pss_mb, _own_pss_mb(proc.pid))
            sampled_at = time.perf_counter()
        time.sleep(0.01)
    wall_s = time.perf_counter() - start
    proc.returncode = -signal.SIGKILL if exit_code is None else exit_code  # reaped above
    return Bounded(
        wall_s,
        usage.ru_utime + usage.ru_stime,
        exit_code,
        _reap_leftovers(proc.pid),
        usage.ru_maxrss / 1024,  # Linux gives kilobytes
        own_pss_mb,
    )


def _session(sid: int) -> list[int]:
    """The live processes (zombies left out) of session sid, its leader left out."""
    pids = []
    for pid in psutil.pids():
        try:
            if (
                pid != sid
                and os.getsid(pid) == sid
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            ):
                pids.append(pid)
        except (OSError, psutil.Error):
            continue
    return pids


def _descendants(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _kill(pids: Sequence[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)  # also ends a stopped process
        except OSError:
            continue


def _reap_leftovers(sid: int) -> int:
    """Kill what the run left in its session after a short grace; how many there were."""
    deadline = time.perf_counter() + LEFTOVER_GRACE_S
    while (left := _session(sid)) and time.perf_counter() < deadline:
        time.sleep(0.05)
    _kill(left)
    return len(left)


# --------------------------------------------------------------------------------------------
# Measuring one shape
# --------------------------------------------------------------------------------------------


@dataclass
class Trial:
    wall_s: float
    cpu_s: float
    exit_code: int | None
    outcomes: dict[str, str]
    leftovers: int
    max_rss_mb: float
    log: Path
    own_pss_mb: float = 0.0


@dataclass
class ShapeResult:
    shape: Shape
    tests: int
    trials: dict[str, list[Trial]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    mismatched: set[str] = field(default_factory=set)  # variants whose outcomes differed
    headers: dict[str, list[str]] = field(default_factory=dict)


def variants(
    isolations: Sequence[str],
    common: Sequence[str] = (),
    default: str | None = None,
    limits: Sequence[str] = LIMITS,
) -> dict[str, list[str]]:
    """plain, then --taichi-limits as it is ("default", unless its default isolation is one of
    the columns anyway), then each isolation."""
    chosen: dict[str, list[str]] = {"plain": [*common]}
    if default not in isolations:
        chosen["default"] = [*common, *limits]
    for mode in isolations:
        chosen[mode] = [*common, *limits, f"--taichi-limits-isolation={mode}"]
    return chosen


def measure(
    shape: Shape,
    quick: bool,
    repeats: int,
    isolations: Sequence[str],
    timeout_s: float,
    default: str | None = None,
    limits: Sequence[str] = LIMITS,
) -> ShapeResult:
    size = shape.quick if quick else shape.full
    root = workdir(f"shape-{shape.key}")
    suite = root / "suite"
    shape.build(suite, size)
    env = bench_env(TI_OFFLINE_CACHE_FILE_PATH=str(root / "ticache"))
    result = ShapeResult(shape, size.modules * size.tests_per_module)
    print(f"({shape.key}) {shape.title}: {result.tests} tests; workdir {root}", flush=True)

    def trial(name: str, options: Sequence[str], label: str) -> Trial:
        junit, log = root / f"{label}.xml", root / f"{label}.log"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            *options,
        ]
        bounded = run_bounded(cmd, suite, env, timeout_s, log, shape.sample_memory)
        outcomes = junit_outcomes(junit) if junit.exists() and bounded.exit_code is not None else {}
        done = Trial(
            bounded.wall_s,
            bounded.cpu_s,
            bounded.exit_code,
            outcomes,
            bounded.leftovers,
            bounded.max_rss_mb,
            log,
            bounded.max_own_pss_mb,
        )
        print(f"  {label}: {_progress(done)}", flush=True)
        result.headers.setdefault(name, _header_lines(log))
        return done

    warm = trial("plain", list(shape.common), "warm-up")  # fills the kernel cache; not timed
    reference = warm.outcomes
    if (
        warm.exit_code != 0
        or len(reference) != result.tests
        or set(reference.values()) != {"passed"}
    ):
        result.problems.append(
            f"plain pytest did not pass the generated suite: {_progress(warm)}"
            f" (output in {warm.log})"
        )
    for repeat in range(repeats):
        for name, options in variants(isolations, shape.common, default, limits).items():
            done = trial(name, options, f"{name}-{repeat + 1}")
            result.trials.setdefault(name, []).append(done)
            result.problems += _problems(name, repeat, done, reference, result)
    return result


def _problems(
    name: str, repeat: int, done: Trial, reference: dict[str, str], result: ShapeResult
) -> list[str]:
    label = f"({result.shape.key}) {name} run {repeat + 1}"
    problems = []
    if done.exit_code is None:
        problems.append(f"TIMEOUT {label}: killed after {done.wall_s:.0f} s (output in {done.log})")
    elif done.outcomes != reference:
        result.mismatched.add(name)
        differ = sorted(
            nodeid
            for nodeid in set(reference) | set(done.outcomes)
            if reference.get(nodeid) != done.outcomes.get(nodeid)
        )
        shown = "; ".join(
            f"{nodeid}: {reference.get(nodeid, 'absent')} -> {done.outcomes.get(nodeid, 'absent')}"
            for nodeid in differ[:5]
        )
        more = f" (and {len(differ) - 5} more)" if len(differ) > 5 else ""
        problems.append(
            f"MISMATCH {label}: {len(differ)} of {len(reference)} outcomes differ "
            f"from plain: {shown}{more} (output in {done.log})"
        )
    if done.leftovers:
        problems.append(
            f"LEFTOVER {label}: {done.leftovers} processes still alive "
            f"{LEFTOVER_GRACE_S:g} s after pytest ended (killed)"
        )
    return problems


def _progress(done: Trial) -> str:
    if done.exit_code is None:
        return f"TIMEOUT after {done.wall_s:.1f} s"
    counts: dict[str, int] = {}
    for outcome in done.outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items()))
    pss = f", pytest+plugin Pss {done.own_pss_mb:.0f} MB" if done.own_pss_mb else ""
    return (
        f"{done.wall_s:.1f} s wall, {done.cpu_s:.1f} s CPU, max RSS {done.max_rss_mb:.0f} MB"
        f"{pss}, exit {done.exit_code}, {summary or 'no junit report'}"
    )


def _header_lines(log: Path) -> list[str]:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    kept: list[str] = []
    continuing = False
    for line in lines:
        # The plugin's header lines, and the indented lines that continue one (a module list).
        continuing = line.startswith("taichi-limits") or (continuing and line.startswith("  "))
        if continuing:
            kept.append(line)
    return kept


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _median_of(trials: Sequence[Trial], what: str) -> float:
    finished = [trial for trial in trials if trial.exit_code is not None]
    return median([trial.wall_s if what == "wall" else trial.cpu_s for trial in finished])


def _column(name: str, default: str | None, isolations: Sequence[str]) -> str:
    """The variant whose trials stand for column `name` (the default is not run twice)."""
    return default if name == "default" and default in isolations and default else name


def _cell(
    result: ShapeResult, name: str, what: str, isolations: Sequence[str], default: str | None
) -> str:
    if name == "default" and _column(name, default, isolations) != name:
        return f"= {default}"
    trials = result.trials.get(name)
    if not trials:
        return "n/a"
    if any(trial.exit_code is None for trial in trials):
        return "TIMEOUT"
    value, plain = _median_of(trials, what), _median_of(result.trials["plain"], what)
    return f"{value:.1f} s ({value / plain:.2f}x)"


def render(
    results: Sequence[ShapeResult],
    isolations: Sequence[str],
    repeats: int,
    default: str | None = None,
) -> str:
    headers = [
        "suite",
        "tests",
        "plain",
        *(
            f"--taichi-limits {column}" if column == "default" else f"isolation={column}"
            for column in COLUMNS
        ),
    ]
    blocks = []
    for what, title in (
        ("wall", "wall time of the whole run"),
        ("cpu", "CPU time, pytest and the processes it waited for"),
    ):
        rows: list[list[object]] = []
        for result in results:
            plain = _median_of(result.trials.get("plain", []), what)
            rows.append(
                [
                    f"({result.shape.key}) {result.shape.title}",
                    result.tests,
                    f"{plain:.1f} s",
                    *(_cell(result, column, what, isolations, default) for column in COLUMNS),
                ]
            )
            if result.mismatched:
                rows.append(
                    [
                        f"**MISMATCH** ({result.shape.key})",
                        "",
                        "outcomes differ:",
                        *(
                            "**MISMATCH**" if column in result.mismatched else ""
                            for column in COLUMNS
                        ),
                    ]
                )
        blocks.append(
            table(headers, rows, f"Suite shapes: {title} (median of {repeats}; ratio to plain)")
        )
    blocks.append(render_memory(results, default, isolations))
    blocks.append(render_targets(results, isolations, default))
    return "\n\n".join(block for block in blocks if block)


def render_memory(
    results: Sequence[ShapeResult], default: str | None, isolations: Sequence[str]
) -> str:
    """What pytest and the plugin's own processes hold (issue 19: <= 50 MB more than pytest
    alone on (c))."""
    rows: list[list[object]] = []
    for result in results:
        if not result.shape.sample_memory:
            continue
        plain = median([trial.own_pss_mb for trial in result.trials.get("plain", [])])
        for column in COLUMNS:
            trials = result.trials.get(_column(column, default, isolations), [])
            if column == "plain" or not trials:
                continue
            ours = median([trial.own_pss_mb for trial in trials])
            label = f"--taichi-limits ({default})" if column == "default" else column
            rows.append(
                [
                    f"({result.shape.key})",
                    label,
                    f"{plain:.0f} MB",
                    f"{ours:.0f} MB",
                    f"{ours - plain:+.0f} MB",
                    "yes" if ours - plain <= 50 else "no",
                ]
            )
    if not rows:
        return ""
    return table(
        [
            "suite",
            "run",
            "pytest alone (plain)",
            "pytest + fork server + zygote",
            "difference",
            "<= +50 MB?",
        ],
        rows,
        "Memory of pytest and the plugin's own processes (largest Pss sum over the run, median)",
    )


def render_targets(
    results: Sequence[ShapeResult], isolations: Sequence[str], default: str | None = None
) -> str:
    rows: list[list[object]] = []
    for result in results:
        for mode, target in result.shape.targets.items():
            name = _column(mode, default, isolations)
            column = (
                f"--taichi-limits (default: {default})"
                if mode == "default"
                else f"isolation={mode}"
            )
            trials = result.trials.get(name, [])
            if not trials:
                ratio_text, met = "n/a", "n/a"
            elif any(trial.exit_code is None for trial in trials):
                ratio_text, met = "TIMEOUT", "no"
            else:
                ratio = _median_of(trials, "wall") / _median_of(result.trials["plain"], "wall")
                ratio_text = f"{ratio:.2f}x"
                met = "yes" if ratio <= target else f"no (+{(ratio / target - 1) * 100:.0f}%)"
            if name in result.mismatched:
                met = "no: MISMATCH"
            rows.append([f"({result.shape.key})", column, ratio_text, f"<= {target:g}x", met])
    return table(
        ["suite", "run", "wall / plain", "target", "met?"], rows, "Targets of issue 19 (wall time)"
    )


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def run_sub_benchmark(key: str, args: argparse.Namespace) -> str | None:
    """Run (d) or (g) as its own script, output straight through; a problem, or None."""
    name = SUB_BENCHMARKS[key]
    command = [sys.executable, str(HERE / f"{name}.py")]
    if key == "d":
        if args.taichi_src is None:
            print(
                f"\n({key}) Taichi's own tests: skipped (no --taichi-src). Run:\n"
                f"    python benchmarks/{name}.py --taichi-src PATH  # a v1.7.4 checkout\n"
                "It runs plain against every --taichi-limits-isolation value the plugin "
                "offers; targets <= 1.3x (the default), <= 1.1x (session).",
                flush=True,
            )
            return None
        command += ["--taichi-src", str(args.taichi_src)]
    command += (["--quick"] if args.quick else []) + (
        ["--repeats", str(args.repeats)] if args.repeats else []
    )
    timeout_s = args.sub_timeout_s or (1200.0 if args.quick else 4 * 3600.0)
    print(f"\n({key}) {name}.py: {' '.join(command[2:])}", flush=True)
    done = run_bounded(command, HERE, bench_env(), timeout_s, None)
    if done.exit_code is None:
        return f"TIMEOUT ({key}) {name}.py: killed after {done.wall_s:.0f} s"
    if done.exit_code != 0:
        return f"({key}) {name}.py failed with exit status {done.exit_code}"
    return None


def parse_only(text: str) -> list[str]:
    keys = [key.strip() for key in text.split(",") if key.strip()]
    unknown = [key for key in keys if key not in ALL_KEYS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"--only takes a comma-separated list of {','.join(ALL_KEYS)}; got {text!r}"
        )
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny suites and one repeat (a smoke run; timings mean little)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="runs per variant (3; quick 1)")
    parser.add_argument(
        "--only",
        type=parse_only,
        default=list(ALL_KEYS),
        help="comma-separated shapes to run, e.g. a,b,e (default: all)",
    )
    parser.add_argument(
        "--memory-method",
        choices=("cgroup", "smaps"),
        default=None,
        help="--taichi-limits-memory-method for every plugin run (default: the plugin's, auto)",
    )
    parser.add_argument(
        "--taichi-src",
        type=Path,
        default=None,
        help="Taichi v1.7.4 checkout for (d); skipped without it",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=None,
        help="hard limit per pytest run (900 s; quick 300 s)",
    )
    parser.add_argument(
        "--sub-timeout-s",
        type=float,
        default=None,
        help="hard limit for (d) and (f) each (4 h; quick 20 min)",
    )
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    timeout_s = args.timeout_s or (300.0 if args.quick else 900.0)

    missing = [name for name in ("numpy", "pandas", "scipy") if find_spec(name) is None]
    if missing and set(args.only) & {shape.key for shape in SHAPES}:
        raise SystemExit(
            f"the generated suites import {', '.join(missing)}: "
            "pip install -e '.[bench]' (or pip install numpy pandas scipy)"
        )
    isolations = isolation_modes()
    default = default_isolation()
    limits = [
        *LIMITS,
        *([f"--taichi-limits-memory-method={args.memory_method}"] if args.memory_method else []),
    ]
    print(machine_line())
    if args.memory_method:
        print(f"--taichi-limits-memory-method={args.memory_method} in every plugin run")
    print(
        "--taichi-limits-isolation: "
        + (
            ", ".join(isolations)
            if isolations
            else "not offered by the installed plugin (columns n/a)"
        )
    )
    print(f"repeats: {repeats}; hard timeout per run: {timeout_s:g} s\n", flush=True)
    results: list[ShapeResult] = []
    problems: list[str] = []
    for shape in SHAPES:
        if shape.key in args.only:
            results.append(
                measure(shape, args.quick, repeats, isolations, timeout_s, default, limits)
            )
            problems += results[-1].problems
    if results:
        print()
        print(f"--taichi-limits without an isolation option: isolation {default}")
        print(render(results, isolations, repeats, default))
        print("\nPlugin header lines (first run of each variant):")
        for result in results:
            for name, lines in result.headers.items():
                for line in lines or ["(none)"]:
                    print(f"  ({result.shape.key}) {name}: {line}")
    for key in SUB_BENCHMARKS:
        if key in args.only and (problem := run_sub_benchmark(key, args)) is not None:
            problems.append(problem)
    if problems:
        print("\nPROBLEMS:")
        for problem in problems:
            print(f"  {problem}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
