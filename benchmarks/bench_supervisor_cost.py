"""Supervisor cost: CPU time the parent pytest process spends watching one sleeping test.

A plugin in the inner run reads the pytest process's own CPU time (getrusage RUSAGE_SELF: the
parent only, not the child) around each test. The test sleeps 30 s (3 s with --quick), so the
fixed per-test cost (fork, report replay: a few ms) hardly counts; the rest is the watch loop.

The loop sleeps `--taichi-limits-interval` near a limit and up to 0.1 s while every limit is far
away (supervisor.py, _next_sleep). Two budgets are measured for each interval:

- default budget (mem_mb 4096, wall_s 600): far from every limit, the adaptive case;
- with mem_mb=5: a budget nearly used up (the test's own RSS is within 5 MB of it), so the loop
  samples at the interval all the time -- the worst case. (A gpu_gb budget does the same where
  NVML measures GPU memory.)

    python benchmarks/bench_supervisor_cost.py [--quick] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import sys
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 3-second test")
    parser.add_argument("--seconds", type=float, default=None, help="how long the test sleeps")
    args = parser.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 30.0)
    root = workdir("supervisor-cost")
    write(root / "bench_selfcpu.py", SELF_CPU_PLUGIN)
    write(root / "test_sleep.py", SLEEP_TEST)
    print(machine_line())
    print(f"test sleeps {seconds:g} s; workdir {root}\n", flush=True)

    def measure(name: str, *options: str) -> tuple[float, float]:
        cost_file = root / f"cost-{name}.jsonl"
        cmd = pytest_cmd(sys.executable, "-p", "bench_selfcpu", *options, "test_sleep.py")
        check(run_timed(cmd, root, bench_env(BENCH_COST_FILE=str(cost_file),
                                             BENCH_SLEEP_S=str(seconds))), name)
        row = json.loads(Path(cost_file).read_text().splitlines()[-1])
        return row["cpu_s"], row["wall_s"]

    plain_cpu, plain_wall = measure("plain")
    rows: list[list[object]] = [["plain pytest (no supervision)", "-",
                                 f"{plain_cpu * 1000:.0f} ms",
                                 f"{plain_cpu / plain_wall * 100:.3f} %", "-", "-"]]
    for interval in INTERVALS:
        label = f"{interval:g} s" + (" (default)" if interval == 0.01 else "")
        default_cpu, default_wall = measure(f"default-{interval}", "--taichi-limits",
                                            f"--taichi-limits-interval={interval}")
        near_cpu, near_wall = measure(f"near-{interval}", "--taichi-limits",
                                      f"--taichi-limits-interval={interval}",
                                      "--taichi-limits-mem-mb=5")
        rows.append(["--taichi-limits", label,
                     f"{default_cpu * 1000:.0f} ms",
                     f"{(default_cpu - plain_cpu) / default_wall * 100:.3f} %",
                     f"{near_cpu * 1000:.0f} ms",
                     f"{(near_cpu - plain_cpu) / near_wall * 100:.3f} %"])
    print(table(["run", "interval", "parent CPU, default budget", "% of one core",
                 "parent CPU, mem_mb=5 (samples every interval)", "% of one core"], rows,
                f"Supervisor cost: parent CPU while a test sleeps {seconds:g} s "
                "(minus the plain run's)"))


if __name__ == "__main__":
    main()
