"""Run every benchmark in turn and print their tables (about an hour on 2 quiet cores).

    python benchmarks/run_all.py [--quick] [--taichi-src PATH] [--only NAME ...]

Each script also runs alone (`--quick` for a fast pass):

    python benchmarks/bench_overhead.py          # 1. isolation overhead per test (+ pytest-forked)
    python benchmarks/bench_spawn.py             # 2. spawn mode per-test cost
    python benchmarks/bench_latency.py           # 3. enforcement latency, mem_mb=500 at ~1 GB/s
    python benchmarks/bench_accuracy.py          # 4. peak RSS and CPU seconds against the kernel's
    python benchmarks/bench_supervisor_cost.py   # 5. parent CPU while watching a 30 s test
    python benchmarks/bench_taichi_suite.py --taichi-src PATH   # 6. Taichi's own tests/python
    python benchmarks/bench_suite_shapes.py      # 7. issue 9's suite shapes, each isolation
    python benchmarks/bench_markers_only.py      # 8. markers only, pytest's Taichi state kept
    python benchmarks/bench_memory_method.py     # 9. the memory method's cost: cgroup vs smaps
    python benchmarks/bench_leaks.py             # 10. leak hunting: cost, detection threshold

run_all runs bench_suite_shapes with `--only a,b,c,e,f`: its (d) and (g) are scripts 6 and 1.

Timings are only meaningful on a machine with nothing else running: the scripts interleave the
variants they compare and take medians, which evens out noise but does not remove it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = (
    "bench_overhead",
    "bench_spawn",
    "bench_latency",
    "bench_accuracy",
    "bench_supervisor_cost",
    "bench_taichi_suite",
    "bench_suite_shapes",
    "bench_markers_only",
    "bench_memory_method",
    "bench_leaks",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument(
        "--taichi-src", help="Taichi v1.7.4 checkout for bench_taichi_suite (skipped without it)"
    )
    parser.add_argument("--only", nargs="*", choices=SCRIPTS, help="run only these")
    args = parser.parse_args()
    failed = []
    for name in args.only or SCRIPTS:
        command = [sys.executable, str(HERE / f"{name}.py")] + (["--quick"] if args.quick else [])
        if name == "bench_taichi_suite":
            if not args.taichi_src:
                print(f"\n== {name}: skipped (no --taichi-src)")
                continue
            command += ["--taichi-src", args.taichi_src]
        if name == "bench_suite_shapes":
            command += ["--only", "a,b,c,e,f"]  # (d) and (g) are bench_taichi_suite, bench_overhead
        print(f"\n== {name}", flush=True)
        if subprocess.run(command, cwd=HERE, check=False).returncode != 0:
            failed.append(name)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
