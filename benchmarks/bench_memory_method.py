"""The cost of each memory method per test: a memory cgroup per worker against smaps readings.

1. Direct, no pytest: a keeper forked from here moves itself into a cgroup (as the plugin's
   keeper does) and forks a test process that holds `--sizes` MB (default 100, 1024, 8192;
   --quick: 100). The parent's CPU time (thread_time) for each step of a test's life under the
   cgroup method -- make (mkdir and its settings), begin (the start figures and the cap), one
   sample (memory.stat and the escape check), end (kill what is left and remove it) -- and the
   keeper's move (wall time: moving a process between cgroups waits for an RCU grace period when
   none was taken recently, which costs the test's start wall time, not CPU), against the smaps
   method's exact reading of the same trio
   (smaps_rollup of the test process, the keeper and this process; read at the start and the end
   of every test). Medians of `--repeats`.

2. Through pytest: a module of `--tests` trivial supervised tests run with
   `--taichi-limits-memory-method=cgroup` and `=smaps`, alternately, `--runs` times each: the
   wall and CPU time of the test loop per test (the cgroup path should cost less, not more).

Needs a usable memory cgroup (cgroup v1 as root, or a delegated v2) for the cgroup rows; they
are skipped with the reason otherwise.

    python benchmarks/bench_memory_method.py [--quick] [--sizes 100,1024,8192] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable

from _common import (
    TIMER_PLUGIN,
    bench_env,
    check,
    machine_line,
    median,
    pytest_cmd,
    run_timed,
    table,
    workdir,
    write,
)

from pytest_taichi_limits.measure import cgroup, memory
from pytest_taichi_limits.measure.proctree import tree_pids

TRIVIAL_TESTS = """
import pytest

@pytest.mark.parametrize("number", range({tests}))
def test_trivial(number):
    pass
"""


def _trio(megabytes: int, procs: str | None) -> tuple[int, int, float]:
    """A keeper forked from here (moved into `procs` first, when given) and below it a test
    process holding `megabytes`: (keeper pid, test pid, wall seconds the move took)."""
    ready_read, ready_write = os.pipe()
    keeper = os.fork()
    if keeper == 0:
        moved_s = 0.0
        if procs is not None:
            start = time.perf_counter()
            with open(procs, "w") as handle:
                handle.write("0")
            moved_s = time.perf_counter() - start
        if os.fork() == 0:
            block = b"\x01" * (megabytes << 20)
            os.write(ready_write, f"{moved_s!r}\n".encode())
            time.sleep(3600)
            del block
        time.sleep(3600)
        os._exit(0)
    answer = b""
    while not answer.endswith(b"\n"):
        answer += os.read(ready_read, 64)
    os.close(ready_read)
    os.close(ready_write)
    return keeper, tree_pids(keeper)[1], float(answer)


def _end_trio(keeper: int, test_pid: int) -> None:
    for pid in (test_pid, keeper):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.waitpid(keeper, 0)


def _cpu(step: Callable[[], object]) -> float:
    start = time.thread_time()
    step()
    return time.thread_time() - start


def cgroup_costs(support: cgroup.CgroupSupport, megabytes: int) -> dict[str, float]:
    """One test's life under the cgroup method: the parent's CPU seconds per step."""
    costs: dict[str, float] = {}
    number = int(time.time_ns() % 10**9)
    start = time.thread_time()
    made = cgroup.TestCgroup.create(support, cgroup.cgroup_name(number))
    costs["make"] = time.thread_time() - start
    keeper, test_pid, costs["move"] = _trio(megabytes, made.procs_file())
    try:

        def begin() -> None:
            held, usage = made.held_bytes(), made.usage_bytes() or 0
            made.reset_peak()
            made.set_cap(usage, 4 * (megabytes << 20))
            assert held is not None and held >= megabytes << 20

        costs["begin"] = _cpu(begin)
        samples = [_cpu(lambda: (made.held_bytes(), made.pids())) for _ in range(20)]
        costs["sample"] = median(samples)
    finally:
        os.kill(test_pid, signal.SIGKILL)  # the test is over: what is left goes
        costs["end"] = _cpu(lambda: (made.kill(), made.remove(5.0)))
        _end_trio(keeper, test_pid)
    return costs


def smaps_costs(megabytes: int, repeats: int) -> dict[str, float]:
    keeper, test_pid, _ = _trio(megabytes, None)
    try:
        meter = memory.MemoryMeter(os.getpid(), keeper)
        readings = [_cpu(lambda: meter.read([test_pid])) for _ in range(repeats)]
        shared = [_cpu(lambda: meter.read([test_pid, keeper])) for _ in range(repeats)]
    finally:
        _end_trio(keeper, test_pid)
    return {"exact": median(readings), "exact_forked": median(shared)}


def direct_table(sizes: list[int], repeats: int) -> str:
    support = cgroup.detect()
    rows: list[list[object]] = []
    for megabytes in sizes:
        smaps = smaps_costs(megabytes, repeats)
        if isinstance(support, cgroup.CgroupSupport):
            runs = [cgroup_costs(support, megabytes) for _ in range(repeats)]
            step = {name: median([run[name] for run in runs]) for name in runs[0]}
            # The parent's CPU per test; the keeper's move is its own, and mostly a wait.
            per_test = step["make"] + 2 * step["begin"] + step["end"]
            cells: list[object] = [
                f"{step[name] * 1000:.3f} ms" for name in ("make", "move", "begin", "sample")
            ]
            cells += [f"{step['end'] * 1000:.3f} ms", f"{per_test * 1000:.2f} ms"]
        else:
            per_test = float("nan")
            cells = ["n/a"] * 6
        smaps_per_test = 2 * smaps["exact"]
        rows.append(
            [
                f"{megabytes} MB",
                *cells,
                f"{smaps['exact'] * 1000:.2f} ms",
                f"{smaps['exact_forked'] * 1000:.2f} ms",
                f"{smaps_per_test * 1000:.2f} ms",
                f"{per_test / smaps_per_test:.2f}x" if per_test == per_test else "n/a",
            ]
        )
    title = "Memory method: the parent's CPU per test, medians"
    if not isinstance(support, cgroup.CgroupSupport):
        title += f" (cgroup rows: {support})"
    return table(
        [
            "test holds",
            "cgroup: make",
            "move (keeper, wall)",
            "begin (start, cap)",
            "sample",
            "end (kill, remove)",
            "cgroup per test (CPU, move aside)",
            "smaps: exact reading",
            "exact, test forked",
            "smaps per test (start + end)",
            "cgroup / smaps",
        ],
        rows,
        title,
    )


def pytest_table(tests: int, runs: int) -> str:
    root = workdir("memory-method")
    write(root / "bench_timer.py", TIMER_PLUGIN)
    write(root / "test_trivial.py", TRIVIAL_TESTS.format(tests=tests))
    methods = ["smaps"]
    if isinstance(cgroup.detect(), cgroup.CgroupSupport):
        methods.insert(0, "cgroup")
    loops: dict[str, list[tuple[float, float]]] = {method: [] for method in methods}
    for _ in range(runs):
        for method in methods:  # alternately: a noisy machine slows both alike
            loop_file = root / f"loop-{method}.txt"
            loop_file.unlink(missing_ok=True)
            cmd = pytest_cmd(
                sys.executable,
                "-p",
                "bench_timer",
                "--taichi-limits",
                f"--taichi-limits-memory-method={method}",
                "test_trivial.py",
            )
            check(run_timed(cmd, root, bench_env(BENCH_LOOP_FILE=str(loop_file))), method)
            wall, cpu = (float(word) for word in loop_file.read_text().split())
            loops[method].append((wall, cpu))
    rows = []
    smaps_wall = median([wall for wall, _ in loops["smaps"]]) / tests
    for method in methods:
        wall = median([wall for wall, _ in loops[method]]) / tests
        cpu = median([cpu for _, cpu in loops[method]]) / tests
        rows.append(
            [
                method,
                tests,
                f"{wall * 1000:.2f} ms",
                f"{cpu * 1000:.2f} ms",
                f"{wall / smaps_wall:.2f}x",
            ]
        )
    return table(
        ["--taichi-limits-memory-method", "tests", "wall per test", "CPU per test", "/ smaps"],
        rows,
        f"Trivial supervised tests, test loop per test (median of {runs} runs)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 MB only, fewer repeats")
    parser.add_argument("--sizes", default=None, help="MB the test holds (default 100,1024,8192)")
    parser.add_argument("--repeats", type=int, default=None, help="per size (default 5)")
    parser.add_argument("--tests", type=int, default=None, help="trivial tests (default 100)")
    parser.add_argument("--runs", type=int, default=None, help="pytest runs each (default 3)")
    args = parser.parse_args()
    sizes = [
        int(word) for word in (args.sizes or ("100" if args.quick else "100,1024,8192")).split(",")
    ]
    repeats = args.repeats or (2 if args.quick else 5)
    print(machine_line())
    print(f"memory cgroup here: {cgroup.detect()}\n", flush=True)
    print(direct_table(sizes, repeats))
    print()
    tests, runs = args.tests or (20 if args.quick else 100), args.runs or (1 if args.quick else 3)
    print(pytest_table(tests, runs))


if __name__ == "__main__":
    main()
