"""Admission: -n 2 with budget-aware admission against the safe alternative without it (-n 1).

A suite of 40 supervised tests: every tenth (4) allocates 3 GB and holds it for a while, the rest
(36) allocate 100 MB; budgets are the allocation plus slack (3 GB + 128 MB, 100 MB + 64 MB). The
declared capacity is 6 GB, so two large tests never fit together. Variants, interleaved:

  -n 2 + admission   --taichi-limits-admit --taichi-limits-capacity=mem=6GB
  -n 1               what a team would have to choose without admission
  -n 2, no admission the unsafe choice, for its peak memory (--no-unsafe leaves it out)

Per variant: wall time of the whole pytest run (median), the peak memory of the test processes
at once (PSS summed over every process below the xdist workers, sampled every 20 ms: this is
what must stay under the capacity), the peak of the whole pytest tree, and, with admission, the
total wait and peak reserved memory from the plugin's summary.

    python benchmarks/bench_admission.py [--quick] [--scale F] [--tests N] [--repeats N]

`--quick` is `--scale 0.05 --tests 20`: 150 MB and 5 MB allocations under a 300 MB capacity.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import bench_env, machine_line, median, pytest_cmd, table, workdir, write

MB = 1024 * 1024

TESTS = """
import time

import pytest

MB = 1024 * 1024


def hold(megabytes, seconds):
    block = bytearray(megabytes * MB)
    for i in range(0, len(block), 4096):  # every page resident
        block[i] = 1
    time.sleep(seconds)


def case(i):
    if i % 10 == 0:
        return pytest.param({big_mb}, {big_hold_s}, id=f"big{{i}}",
                            marks=pytest.mark.taichi_limits(mem_mb={big_budget_mb}))
    return pytest.param({small_mb}, {small_hold_s}, id=f"small{{i}}",
                        marks=pytest.mark.taichi_limits(mem_mb={small_budget_mb}))


@pytest.mark.parametrize("megabytes, seconds", [case(i) for i in range({tests})])
def test_allocate(megabytes, seconds):
    hold(megabytes, seconds)
"""


@dataclass
class Outcome:
    wall_s: list[float] = field(default_factory=list)
    test_peak_bytes: list[int] = field(default_factory=list)
    tree_peak_bytes: list[int] = field(default_factory=list)
    waited_s: list[float] = field(default_factory=list)
    reserved: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as stream:
            return [int(part) for part in stream.read().split()]
    except OSError:
        return []


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as stream:
            for line in stream:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakSampler(threading.Thread):
    """Peak PSS of the pytest tree, and of the processes two or more levels below it (the
    supervised tests under the xdist workers), summed at each sample."""

    def __init__(self, root: int, interval_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.root, self.interval_s = root, interval_s
        self.tree_peak = self.test_peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            tree = test = 0
            level = [self.root]
            depth = 0
            while level:
                sizes = sum(_pss(pid) for pid in level)
                tree += sizes
                if depth >= 2:
                    test += sizes
                level = [child for pid in level for child in _children(pid)]
                depth += 1
            self.tree_peak = max(self.tree_peak, tree)
            self.test_peak = max(self.test_peak, test)
            self.done.wait(self.interval_s)


def run_variant(cwd: Path, args: list[str], ledger: str) -> tuple[float, int, int, str]:
    env = bench_env(PYTEST_TAICHI_LIMITS_LEDGER=ledger)
    start = time.perf_counter()
    process = subprocess.Popen(
        pytest_cmd(sys.executable, *args),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sampler = PeakSampler(process.pid)
    sampler.start()
    output, _ = process.communicate(timeout=3600)
    wall_s = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    return wall_s, sampler.test_peak, sampler.tree_peak, output


def _result_line(output: str) -> str:
    lines = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    return lines[-1].strip("= ") if lines else "no result line"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="--scale 0.05 --tests 20")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply allocations, budgets and capacity (default 1)",
    )
    parser.add_argument("--tests", type=int, default=40, help="tests; every tenth is large")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-unsafe", action="store_true", help="skip -n 2 without admission")
    args = parser.parse_args()
    if args.quick:
        args.scale, args.tests = 0.05, 20
    big_mb, small_mb = round(3072 * args.scale), max(1, round(100 * args.scale))
    capacity_mb = round(6144 * args.scale)
    directory = workdir("admission")
    write(
        directory / "test_admission_bench.py",
        TESTS.format(
            big_mb=big_mb,
            small_mb=small_mb,
            big_hold_s=2.0,
            small_hold_s=0.2,
            tests=args.tests,
            big_budget_mb=big_mb + max(16, round(128 * args.scale)),
            small_budget_mb=small_mb + max(16, round(64 * args.scale)),
        ),
    )
    write(directory / "pytest.ini", "[pytest]\n")
    variants = {
        "-n 2 + admission": [
            "-n",
            "2",
            "--taichi-limits-admit",
            f"--taichi-limits-capacity=mem={capacity_mb}MB",
        ],
        "-n 1": ["-n", "1"],
    }
    if not args.no_unsafe:
        variants["-n 2, no admission"] = ["-n", "2"]
    outcomes = {name: Outcome() for name in variants}
    for _ in range(args.repeats):
        for name, extra in variants.items():
            ledger = tempfile.mkdtemp(prefix="ptl-bench-ledger-")
            wall_s, test_peak, tree_peak, output = run_variant(directory, extra, ledger)
            outcome = outcomes[name]
            outcome.wall_s.append(wall_s)
            outcome.test_peak_bytes.append(test_peak)
            outcome.tree_peak_bytes.append(tree_peak)
            outcome.results.append(_result_line(output))
            waited = re.search(r"waited ([0-9.]+) s in total", output)
            if waited:
                outcome.waited_s.append(float(waited.group(1)))
            reserved = re.search(r"peak reserved memory ([0-9.]+ [KMG]?B)", output)
            if reserved:
                outcome.reserved.append(reserved.group(1))
    rows = []
    for name, outcome in outcomes.items():
        test_peak = max(outcome.test_peak_bytes)
        rows.append(
            [
                name,
                median(outcome.wall_s),
                f"{test_peak / MB:.0f} MB",
                "yes" if test_peak <= capacity_mb * MB else "NO",
                f"{max(outcome.tree_peak_bytes) / MB:.0f} MB",
                f"{median(outcome.waited_s):.1f} s" if outcome.waited_s else "-",
                outcome.reserved[-1] if outcome.reserved else "-",
                outcome.results[-1],
            ]
        )
    print(machine_line())
    print(
        f"{args.tests} tests ({len(range(0, args.tests, 10))} x {big_mb} MB, the rest "
        f"{small_mb} MB), capacity {capacity_mb} MB, {args.repeats} repeat(s), "
        f"{os.cpu_count()} CPUs\n"
    )
    print(
        table(
            [
                "variant",
                "wall s (median)",
                "peak test PSS",
                "under capacity",
                "peak tree PSS",
                "total wait",
                "peak reserved",
                "result",
            ],
            rows,
            title="Admission: -n 2 with admission against -n 1",
        )
    )


if __name__ == "__main__":
    main()
