"""Fresh-interpreter (spawn) mode: per-test cost against starting Python with pytest and Taichi.

A test module calls `ti.init(arch=ti.cpu)` at module level (so a forked child would hang at its
first kernel) and has N tests that each launch a small kernel. It is run plainly and with
`--taichi-limits --taichi-limits-mode spawn`; the per-test cost of spawn mode is
(spawn test-loop time - plain test-loop time) / N, from medians of alternating runs. The
references are the wall times of `python -c "import pytest, taichi"` and of the same plus
`taichi.init(arch=taichi.cpu)` -- what a fresh interpreter per test would cost at the least.

    python benchmarks/bench_spawn.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import resource
import sys

from _common import (
    TIMER_PLUGIN,
    bench_env,
    check,
    machine_line,
    median,
    pytest_cmd,
    read_log,
    run_timed,
    table,
    workdir,
    write,
)

MODULE_INIT_TESTS = """
import pytest
import taichi as ti

ti.init(arch=ti.cpu)


@ti.kernel
def total(n: ti.i32) -> ti.i32:
    s = 0
    for i in range(n):
        s += i
    return s


@pytest.mark.parametrize("i", range({count}))
def test_kernel(i):
    assert total(100 + i) == sum(range(100 + i))
"""

REFERENCES = {
    'python -c "import pytest, taichi"': "import pytest, taichi",
    "... + taichi.init(arch=cpu)": "import pytest, taichi; taichi.init(arch=taichi.cpu)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tests and repeats")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    count = 5 if args.quick else 20
    root = workdir("spawn")
    write(root / "bench_timer.py", TIMER_PLUGIN)
    write(root / "test_module_init.py", MODULE_INIT_TESTS.format(count=count))
    log = root / "spawn.jsonl"
    env_extra = {"TI_OFFLINE_CACHE_FILE_PATH": str(root / "ticache")}
    variants = {
        "plain": pytest_cmd(sys.executable, "-p", "bench_timer", "test_module_init.py"),
        "spawn": pytest_cmd(
            sys.executable,
            "-p",
            "bench_timer",
            "--taichi-limits",
            "--taichi-limits-mode=spawn",
            f"--taichi-limits-log={log}",
            "test_module_init.py",
        ),
    }
    print(machine_line())
    print(f"{count} tests; repeats: {repeats}; workdir {root}\n", flush=True)
    check(
        run_timed(
            variants["plain"], root, bench_env(BENCH_LOOP_FILE=str(root / "warm"), **env_extra)
        ),
        "warm-up",
    )
    loops: dict[str, list[float]] = {name: [] for name in variants}
    references: dict[str, list[float]] = {name: [] for name in REFERENCES}
    reference_cpu: dict[str, list[float]] = {name: [] for name in REFERENCES}
    for repeat in range(repeats):
        for name, cmd in variants.items():
            loop_file = root / f"loop-{name}-{repeat}.txt"
            check(
                run_timed(cmd, root, bench_env(BENCH_LOOP_FILE=str(loop_file), **env_extra)), name
            )
            # The main session's loop encloses anything a worker might time: take the longest.
            loops[name].append(
                max(float(line.split()[0]) for line in loop_file.read_text().splitlines())
            )
        for name, code in REFERENCES.items():
            cpu_before = _children_cpu_s()
            timed = run_timed([sys.executable, "-c", code], root, bench_env(**env_extra))
            check(timed, name)
            references[name].append(timed.wall_s)
            reference_cpu[name].append(_children_cpu_s() - cpu_before)

    per_test = (median(loops["spawn"]) - median(loops["plain"])) / count * 1000
    # CPU seconds are steadier than wall time on a loaded machine: the worker's (test
    # included) from the usage log, the reference's from RUSAGE_CHILDREN.
    worker_cpu = (
        median([event["cpu_s"] for event in read_log(log) if event["event"] == "usage"]) * 1000
    )
    rows = [
        [
            "spawn mode: extra wall time per test",
            f"{per_test:.0f} ms",
            "1.00x",
            f"{worker_cpu:.0f} ms (worker)",
            "1.00x",
        ]
    ]
    for name, walls in references.items():
        reference = median(walls) * 1000
        cpu = median(reference_cpu[name]) * 1000
        rows.append(
            [
                name,
                f"{reference:.0f} ms",
                f"{per_test / reference:.2f}x",
                f"{cpu:.0f} ms",
                f"{worker_cpu / cpu:.2f}x",
            ]
        )
    print(
        table(
            [
                "what",
                "wall (median)",
                "spawn wall / this",
                "CPU (median)",
                "spawn worker CPU / this",
            ],
            rows,
            f"Spawn mode per-test cost ({count} tests, module-level ti.init; plain "
            f"{median(loops['plain']) / count * 1000:.0f} ms/test)",
        )
    )


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
