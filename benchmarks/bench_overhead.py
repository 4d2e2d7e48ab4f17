"""Isolation overhead per test: plain pytest, --taichi-limits, a bare fork floor, pytest-forked.

Every variant runs the same two files: 200 trivial tests and 50 tests that each initialise
Taichi on the CPU and launch a small kernel. A tiny timing plugin measures pytest's test loop
(pytest_runtestloop, so interpreter start-up and collection are left out); the overhead of a
variant is (its loop time - the plain loop time) / number of tests, from the medians of runs
that alternate between the variants; once in wall time and once in CPU time (pytest's own plus
its children's, which a busy machine disturbs less).

- floor: a plugin that, per test, forks the pytest process, lets the child `os._exit(0)` at once
  and waits for it with `wait4`; the test itself runs plainly in the parent. This is the cost of
  the fork alone, which any process-per-test runner pays.
- fork+run in child: the floor, plus the child runs the test through pytest's hooks and reports
  nothing (trivial tests only: once the plain parent has called ti.init a forked child hangs).
- pytest-forked: runs on pytest 8 in benchmarks/.venv-pytest8 (created on first use; it does
  not work on pytest 9), against a plain run in that same venv.

    python benchmarks/bench_overhead.py [--quick] [--repeats N] [--no-forked]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from _common import (
    TIMER_PLUGIN,
    bench_env,
    check,
    ensure_pytest8_venv,
    machine_line,
    median,
    pytest_cmd,
    run_timed,
    table,
    workdir,
    write,
)

FLOOR_PLUGIN = """
import os, pytest

@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.wait4(pid, 0)
    return (yield)
"""

#: The floor plus the test itself, run in the child through pytest's public hooks with no report
#: sent back (the parent runs it again, so its plain cost is subtracted twice): what any runner
#: that runs the test in a forked child pays before it reports anything.
FLOOR_RUN_PLUGIN = """
import os, pytest

@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    pid = os.fork()
    if pid == 0:
        item.ihook.pytest_runtest_setup(item=item)
        item.ihook.pytest_runtest_call(item=item)
        item.ihook.pytest_runtest_teardown(item=item, nextitem=None)
        os._exit(0)
    os.wait4(pid, 0)
    return (yield)
"""

TRIVIAL_TESTS = """
import pytest

@pytest.mark.parametrize("i", range({count}))
def test_trivial(i):
    assert i >= 0
"""

KERNEL_TESTS = """
import pytest
import taichi as ti

@ti.kernel
def total(n: ti.i32) -> ti.i32:
    s = 0
    for i in range(n):
        s += i
    return s

@pytest.mark.parametrize("i", range({count}))
def test_kernel(i):
    ti.init(arch=ti.cpu)
    try:
        assert total(100 + i) == sum(range(100 + i))
    finally:
        ti.reset()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tests and repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-forked", action="store_true", help="skip pytest-forked")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    counts = {"trivial": 50 if args.quick else 200, "kernel": 10 if args.quick else 50}

    root = workdir("overhead")
    write(root / "bench_timer.py", TIMER_PLUGIN)
    write(root / "bench_floor.py", FLOOR_PLUGIN)
    write(root / "bench_floor_run.py", FLOOR_RUN_PLUGIN)
    write(root / "test_trivial.py", TRIVIAL_TESTS.format(count=counts["trivial"]))
    write(root / "test_kernel.py", KERNEL_TESTS.format(count=counts["kernel"]))
    forked_python = None if args.no_forked else ensure_pytest8_venv()

    variants: dict[str, list[str]] = {
        "plain": pytest_cmd(sys.executable, "-p", "bench_timer"),
        "floor": pytest_cmd(sys.executable, "-p", "bench_timer", "-p", "bench_floor"),
        "floor+run": pytest_cmd(sys.executable, "-p", "bench_timer", "-p", "bench_floor_run"),
        # A child per test, as pytest-forked: the like-for-like comparison.
        "taichi-limits": pytest_cmd(
            sys.executable, "-p", "bench_timer", "--taichi-limits", "--taichi-limits-isolation=test"
        ),
        # --taichi-limits as it is (its default isolation: a child per module here, one file).
        "taichi-limits (default)": pytest_cmd(
            sys.executable, "-p", "bench_timer", "--taichi-limits"
        ),
    }
    if forked_python is not None:
        variants["plain (pytest 8)"] = pytest_cmd(str(forked_python), "-p", "bench_timer")
        variants["pytest-forked"] = pytest_cmd(str(forked_python), "-p", "bench_timer", "--forked")

    print(machine_line())
    print(f"tests: {counts}; repeats: {repeats}; workdir {root}\n", flush=True)
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for kind in counts:
        test_file = f"test_{kind}.py"
        # Warm Taichi's offline kernel cache (kept in the workdir) before anything is timed.
        check(
            run_timed(variants["plain"] + [test_file], root, _env(root, kind, "warm")),
            f"{kind} warm-up",
        )
        for repeat in range(repeats):
            for name, cmd in variants.items():
                if name == "floor+run" and kind == "kernel":
                    continue  # the parent has run ti.init: a forked child would hang in Taichi
                loop_file = root / f"loop-{kind}-{name}-{repeat}.txt"
                timed = run_timed([*cmd, test_file], root, _env(root, kind, str(loop_file)))
                check(timed, f"{name} on {test_file}")
                wall, cpu = (float(word) for word in loop_file.read_text().split())
                results.setdefault((kind, name), []).append((wall, cpu))
        print(f"{kind}: done", flush=True)

    for index, what in ((0, "wall time"), (1, "CPU time, all processes")):
        print()
        print(
            render(
                {key: [run[index] for run in runs] for key, runs in results.items()},
                counts,
                forked_python is not None,
                what,
            )
        )


def _env(root: Path, kind: str, loop_file: str) -> dict[str, str]:
    return bench_env(
        BENCH_LOOP_FILE=loop_file if loop_file != "warm" else str(root / "warm.txt"),
        TI_OFFLINE_CACHE_FILE_PATH=str(root / "ticache"),
    )


def render(
    results: dict[tuple[str, str], list[float]],
    counts: dict[str, int],
    with_forked: bool,
    what: str,
) -> str:
    headers = [
        "tests",
        "plain ms/test",
        "floor: fork+wait4",
        "fork+run in child",
        "taichi-limits, isolation test",
        "/ floor",
        "/ fork+run",
    ]
    if with_forked:
        headers += ["pytest-forked (pytest 8)", "/ pytest-forked"]
    headers.append("taichi-limits, default isolation")
    rows = []
    for kind, count in counts.items():

        def per_test(name: str, kind: str = kind, count: int = count) -> float:
            return median(results[(kind, name)]) / count * 1000

        plain = per_test("plain")
        floor = per_test("floor") - plain
        floor_run = (
            per_test("floor+run") - 2 * plain if (kind, "floor+run") in results else float("nan")
        )
        ours = per_test("taichi-limits") - plain
        row: list[object] = [
            f"{count} {kind}",
            plain,
            f"+{floor:.2f} ms",
            _plus(floor_run),
            f"+{ours:.2f} ms",
            _ratio(ours, floor),
            _ratio(ours, floor_run),
        ]
        if with_forked:
            forked = per_test("pytest-forked") - per_test("plain (pytest 8)")
            row += [f"+{forked:.2f} ms", _ratio(ours, forked)]
        row.append(f"+{per_test('taichi-limits (default)') - plain:.2f} ms")
        rows.append(row)
    return table(
        headers,
        rows,
        f"Isolation overhead per test ({what} of the test loop, median; "
        "overhead = variant - plain)",
    )


def _ratio(ours: float, reference: float) -> str:
    return f"{ours / reference:.2f}x" if reference > 0 else "n/a"


def _plus(milliseconds: float) -> str:
    return "n/a" if math.isnan(milliseconds) else f"+{milliseconds:.2f} ms"


if __name__ == "__main__":
    main()
