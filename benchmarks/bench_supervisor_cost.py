"""Supervisor cost: CPU time the parent pytest process spends watching one sleeping test.

A plugin in the inner run reads the pytest process's own CPU time (getrusage RUSAGE_SELF: the
parent only, not the child) around each test. The test sleeps 30 s (3 s with --quick), so the
fixed per-test cost (fork, report replay: a few ms) hardly counts; the rest is the watch loop.

The loop sleeps `--taichi-limits-interval` near a limit and up to 0.1 s while every limit is far
away (supervise/supervisor.py, _next_sleep). Two budgets are measured for each interval:

- default budget (mem_mb 4096, wall_s 600): far from every limit, the adaptive case;
- with mem_mb=10: a budget nearly used up (a forked child holds 5-6 MiB of its own), so the loop
  samples at the interval all the time -- the worst case. (A gpu_gb budget does the same where
  NVML measures GPU memory.)

Then the cost of the memory figure (mem_mb, measure/memory.py) for tests that hold 100 MB, 1 GB and
8 GB (`--sizes`): the parent's CPU time for one cheap sample (statm + stat of every process) and
for one exact reading (smaps_rollup of the test's processes, the keeper and the origin, tmpfs and
memfds), read directly in a forked origin/keeper/test trio; how often the supervisor takes an
exact reading at that cost (every max(0.05 s, cost / 0.5 %)); and the parent CPU per second of a
supervised test that holds that much and sleeps (`mem_mb` twice the size, so the figure is read
but never reached).

    python benchmarks/bench_supervisor_cost.py [--quick] [--seconds S] [--sizes 100,1024,8192]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from _common import (
    bench_env,
    check,
    machine_line,
    pytest_cmd,
    run_timed,
    table,
    workdir,
    write,
)

INTERVALS = (0.001, 0.01, 0.1)

SELF_CPU_PLUGIN = """
import json, os, resource, time, pytest

@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    def cpu():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    cpu0, wall0 = cpu(), time.perf_counter()
    try:
        return (yield)
    finally:
        with open(os.environ["BENCH_COST_FILE"], "a") as out:
            out.write(json.dumps({"cpu_s": cpu() - cpu0,
                                  "wall_s": time.perf_counter() - wall0}) + "\\n")
"""

SLEEP_TEST = """
import os, time

def test_sleep():
    time.sleep(float(os.environ["BENCH_SLEEP_S"]))
"""


HOLD_TEST = """
import os, time

def test_holds():
    block = b"\\x01" * (int(os.environ["BENCH_HOLD_MB"]) << 20)
    time.sleep(float(os.environ["BENCH_SLEEP_S"]))
    del block
"""


def _hold_and_wait(megabytes: int, ready_fd: int) -> None:
    block = b"\x01" * (megabytes << 20)
    os.write(ready_fd, b"r")
    time.sleep(3600)
    del block


def _trio(megabytes: int) -> tuple[int, int]:
    """A keeper forked from here, and below it a test process holding `megabytes`."""
    ready_read, ready_write = os.pipe()
    keeper = os.fork()
    if keeper == 0:
        if os.fork() == 0:
            _hold_and_wait(megabytes, ready_write)
        time.sleep(3600)
        os._exit(0)
    os.read(ready_read, 1)
    os.close(ready_read)
    os.close(ready_write)
    from pytest_taichi_limits.measure.proctree import tree_pids

    return keeper, tree_pids(keeper)[1]


def reading_costs(sizes: list[int], repeats: int = 20) -> list[list[object]]:
    from pytest_taichi_limits.measure import memory, meter
    from pytest_taichi_limits.measure.proctree import ProcessTree, TreeSample

    rows: list[list[object]] = []
    for megabytes in sizes:
        keeper, test_pid = _trio(megabytes)
        try:
            tree = ProcessTree(keeper, include_root=False)
            sample = TreeSample()
            start = time.thread_time()
            for _ in range(repeats):
                tree.sample(sample)
            statm_s = (time.thread_time() - start) / repeats
            reader = memory.MemoryMeter(os.getpid(), keeper)
            start = time.thread_time()
            for _ in range(repeats):
                reader.read(tree.members())
            exact_s = (time.thread_time() - start) / repeats
            tree.close()
        finally:
            os.kill(keeper, signal.SIGKILL)
            os.kill(test_pid, signal.SIGKILL)
            os.waitpid(keeper, 0)
        gap_s = max(meter.MIN_EXACT_GAP_S, exact_s / meter.EXACT_CPU_SHARE)
        rows.append(
            [
                f"{megabytes} MB",
                f"{statm_s * 1000:.3f} ms",
                f"{exact_s * 1000:.2f} ms",
                f"{gap_s:.2f} s",
                f"{exact_s / gap_s * 100:.2f} %",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 3-second test")
    parser.add_argument("--seconds", type=float, default=None, help="how long the test sleeps")
    parser.add_argument(
        "--sizes",
        default=None,
        help="MB held by the memory-figure tests (default 100,1024,8192; --quick: 100)",
    )
    args = parser.parse_args()
    sizes = [
        int(word) for word in (args.sizes or ("100" if args.quick else "100,1024,8192")).split(",")
    ]
    seconds = args.seconds or (3.0 if args.quick else 30.0)
    root = workdir("supervisor-cost")
    write(root / "bench_selfcpu.py", SELF_CPU_PLUGIN)
    write(root / "test_sleep.py", SLEEP_TEST)
    print(machine_line())
    print(f"test sleeps {seconds:g} s; workdir {root}\n", flush=True)

    def measure(name: str, *options: str) -> tuple[float, float]:
        cost_file = root / f"cost-{name}.jsonl"
        cmd = pytest_cmd(sys.executable, "-p", "bench_selfcpu", *options, "test_sleep.py")
        check(
            run_timed(
                cmd, root, bench_env(BENCH_COST_FILE=str(cost_file), BENCH_SLEEP_S=str(seconds))
            ),
            name,
        )
        row = json.loads(Path(cost_file).read_text().splitlines()[-1])
        return row["cpu_s"], row["wall_s"]

    plain_cpu, plain_wall = measure("plain")
    rows: list[list[object]] = [
        [
            "plain pytest (no supervision)",
            "-",
            f"{plain_cpu * 1000:.0f} ms",
            f"{plain_cpu / plain_wall * 100:.3f} %",
            "-",
            "-",
        ]
    ]
    for interval in INTERVALS:
        label = f"{interval:g} s" + (" (default)" if interval == 0.01 else "")
        default_cpu, default_wall = measure(
            f"default-{interval}", "--taichi-limits", f"--taichi-limits-interval={interval}"
        )
        near_cpu, near_wall = measure(
            f"near-{interval}",
            "--taichi-limits",
            f"--taichi-limits-interval={interval}",
            "--taichi-limits-mem-mb=10",
        )
        rows.append(
            [
                "--taichi-limits",
                label,
                f"{default_cpu * 1000:.0f} ms",
                f"{(default_cpu - plain_cpu) / default_wall * 100:.3f} %",
                f"{near_cpu * 1000:.0f} ms",
                f"{(near_cpu - plain_cpu) / near_wall * 100:.3f} %",
            ]
        )
    print(
        table(
            [
                "run",
                "interval",
                "parent CPU, default budget",
                "% of one core",
                "parent CPU, mem_mb=10 (samples every interval)",
                "% of one core",
            ],
            rows,
            f"Supervisor cost: parent CPU while a test sleeps {seconds:g} s "
            "(minus the plain run's)",
        )
    )
    print()
    print(
        table(
            [
                "test holds",
                "cheap sample (statm)",
                "exact reading (smaps_rollup)",
                "exact every",
                "exact: % of one core",
            ],
            reading_costs(sizes),
            "The memory figure: parent CPU per reading (origin: this small process)",
        )
    )
    print()
    write(root / "test_holds.py", HOLD_TEST)
    rows = []
    for megabytes in sizes:
        cost_file = root / f"cost-hold-{megabytes}.jsonl"
        cmd = pytest_cmd(
            sys.executable,
            "-p",
            "bench_selfcpu",
            "--taichi-limits",
            f"--taichi-limits-mem-mb={2 * megabytes}",
            "test_holds.py",
        )
        check(
            run_timed(
                cmd,
                root,
                bench_env(
                    BENCH_COST_FILE=str(cost_file),
                    BENCH_SLEEP_S=str(seconds),
                    BENCH_HOLD_MB=str(megabytes),
                ),
            ),
            "hold",
        )
        row = json.loads(Path(cost_file).read_text().splitlines()[-1])
        rows.append(
            [
                f"{megabytes} MB",
                f"{row['cpu_s'] * 1000:.0f} ms",
                f"{(row['cpu_s'] - plain_cpu) / row['wall_s'] * 100:.3f} %",
            ]
        )
    print(
        table(
            ["test holds", "parent CPU", "% of one core (minus plain)"],
            rows,
            f"Supervisor cost with the memory figure: a test holds memory and sleeps "
            f"{seconds:g} s under mem_mb = twice that",
        )
    )


if __name__ == "__main__":
    main()
