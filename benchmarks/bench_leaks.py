"""Leak hunting: what it costs per test, and the smallest leak per round it catches.

1. Cost. Each workload runs K tests three ways, alternating, medians of the test loop's time
   (the bench_timer plugin: interpreter start-up and collection left out):
   - plain: pytest without the plugin, each test repeated W+N times (W+N items per test): the
     rounds' own time;
   - supervised once: --taichi-limits, each test once (the fork and the watch a supervised test
     costs anyway);
   - leak hunting: --taichi-limits --taichi-limits-leaks=W:N.
   The ratio is leak hunting against the rounds' own time (goal: at most 1.1x where a test does
   real work); "per round" is what each pause costs (garbage collection, giving the heap back,
   Taichi's counts, the parent's exact reading) beyond the round itself.
2. Detection threshold. Tests that leak L MiB per round (a list that keeps a bytearray of L MiB)
   for several L, and the clean set (a Taichi kernel over a fixed field, caches that fill once,
   allocations that are freed), each hunted with W:N = 2:5 under several allowances, R times:
   per allowance, the false positives in the clean set and the share of runs that caught each L.
   The detection threshold is the smallest L caught every time at the smallest allowance with no
   false positive.

    python benchmarks/bench_leaks.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
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

WARMUP, MEASURED = 2, 5

CONFTEST = """
import pytest

@pytest.fixture(scope="module")
def ti_module():
    import taichi as ti
    ti.init(arch=ti.cpu)
    yield ti
    ti.reset()
"""

#: The workloads of the cost table: `{count}` tests, each repeated `{repeat}` times in a plain run.
WORKLOADS = {
    "Taichi kernel, 30 launches": """
import pytest

FIXED = {{}}

@pytest.mark.parametrize("repeat", range({repeat}))
@pytest.mark.parametrize("i", range({count}))
def test_kernel(ti_module, i, repeat):
    ti = ti_module
    if "x" not in FIXED:
        FIXED["x"] = ti.field(ti.f32, shape=1_000_000)
        @ti.kernel
        def scale(value: ti.f32):
            for j in FIXED["x"]:
                FIXED["x"][j] = FIXED["x"][j] * 0.5 + value
        FIXED["scale"] = scale
    for _ in range(30):
        FIXED["scale"](1.0)
""",
    "Python, 20 ms of work": """
import pytest

@pytest.mark.parametrize("repeat", range({repeat}))
@pytest.mark.parametrize("i", range({count}))
def test_work(i, repeat):
    data = [float(n) for n in range(200_000)]
    assert sum(data) > 0
""",
    "trivial": """
import pytest

@pytest.mark.parametrize("repeat", range({repeat}))
@pytest.mark.parametrize("i", range({count}))
def test_trivial(i, repeat):
    assert i >= 0
""",
}

THRESHOLD_TESTS = """
import functools
import random

import pytest

HELD = []

@pytest.mark.parametrize("mib", {sizes})
def test_leak(mib):
    HELD.append(bytearray(int(mib * 1024 * 1024)))

FIXED = {{}}

def test_clean_kernel(ti_module):
    ti = ti_module
    if "x" not in FIXED:
        FIXED["x"] = ti.field(ti.f32, shape=100_000)
        @ti.kernel
        def add(value: ti.f32):
            for j in FIXED["x"]:
                FIXED["x"][j] += value
        FIXED["add"] = add
    for _ in range(50):
        FIXED["add"](1.0)

@functools.lru_cache(maxsize=None)
def table(size):
    return bytearray(size)

def test_clean_cache():
    table(8 * 1024 * 1024)

def test_clean_noise():
    blocks = [bytearray(random.randint(1, 4 * 1024 * 1024)) for _ in range(random.randint(1, 8))]
    del blocks
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tests, sizes and repeats")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    count = 3 if args.quick else 10
    print(machine_line())
    print(f"rounds {WARMUP}:{MEASURED}; tests per workload {count}; repeats {repeats}\n")
    print(cost_table(count, repeats))
    print()
    sizes = (0.5, 1.0, 1.5) if args.quick else (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
    allowances = (0.5, 1.0) if args.quick else (0.125, 0.25, 0.5, 1.0)
    print(threshold_table(sizes, allowances, repeats))


def cost_table(count: int, repeats: int) -> str:
    rounds = WARMUP + MEASURED
    root = workdir("leaks-cost")
    write(root / "bench_timer.py", TIMER_PLUGIN)
    write(root / "conftest.py", CONFTEST)
    hunt = [f"--taichi-limits-leaks={WARMUP}:{MEASURED}", "--taichi-limits-isolation=module"]
    variants = {
        "plain": (rounds, ["-p", "no:taichi-limits"]),
        "supervised once": (1, ["--taichi-limits", "--taichi-limits-isolation=module"]),
        "leak hunting": (1, ["--taichi-limits", *hunt]),
    }
    times: dict[tuple[str, str], list[float]] = {}
    for name, source in WORKLOADS.items():
        for variant, (repeat, _) in variants.items():
            write(
                root / _file(name, variant),
                source.format(count=count, repeat=repeat),
            )
        for _ in range(repeats):
            for variant, (_, options) in variants.items():
                loop = root / "loop.txt"
                loop.unlink(missing_ok=True)
                cmd = pytest_cmd(
                    sys.executable, "-p", "bench_timer", *options, _file(name, variant)
                )
                timed = run_timed(cmd, root, bench_env(BENCH_LOOP_FILE=str(loop)))
                check(timed, f"{variant} on {name}")
                times.setdefault((name, variant), []).append(float(loop.read_text().split()[0]))
    rows = []
    for name in WORKLOADS:
        plain_round = median(times[(name, "plain")]) / (count * rounds) * 1000
        once = median(times[(name, "supervised once")]) / count * 1000
        hunting = median(times[(name, "leak hunting")]) / count * 1000
        per_round = (hunting - once - (rounds - 1) * plain_round) / (rounds - 1)
        rows.append(
            (
                name,
                plain_round,
                rounds * plain_round,
                once,
                hunting,
                f"{hunting / (rounds * plain_round):.2f}x",
                f"{per_round:+.2f} ms",
            )
        )
    return table(
        (
            "workload",
            "one plain run, ms",
            f"{rounds} plain runs, ms",
            "supervised once, ms",
            f"leak hunting {WARMUP}:{MEASURED}, ms",
            "leak hunting / plain runs",
            "each pause",
        ),
        rows,
        "Cost per test (medians, wall time of the test loop; module isolation)",
    )


def _file(workload: str, variant: str) -> str:
    key = "".join(char for char in workload.lower() if char.isalnum())[:12]
    return f"test_{key}_{variant.replace(' ', '_')}.py"


def threshold_table(sizes: tuple[float, ...], allowances: tuple[float, ...], repeats: int) -> str:
    root = workdir("leaks-threshold")
    write(root / "conftest.py", CONFTEST)
    write(root / "test_threshold.py", THRESHOLD_TESTS.format(sizes=list(sizes)))
    caught: dict[tuple[float, str], int] = {}
    false_positives: dict[float, int] = {}
    clean_runs = 0
    for repeat in range(repeats):
        for allowance in allowances:
            log = root / f"log-{allowance}-{repeat}.jsonl"
            cmd = pytest_cmd(
                sys.executable,
                "--taichi-limits",
                f"--taichi-limits-leaks={WARMUP}:{MEASURED}",
                f"--taichi-limits-leak-mb={allowance}",
                f"--taichi-limits-log={log}",
                "test_threshold.py",
            )
            check(run_timed(cmd, root, bench_env()), f"allowance {allowance}", expect_rc=(0, 1))
            for event in read_log(log):
                if event.get("event") != "usage" or not event.get("leaks"):
                    continue
                leaked = any(series["leak"] for series in event["leaks"]["series"])
                name = event["nodeid"].split("::")[-1]
                if name.startswith("test_clean"):
                    false_positives[allowance] = false_positives.get(allowance, 0) + leaked
                    if allowance == allowances[0]:
                        clean_runs += 1
                else:
                    caught[(allowance, name)] = caught.get((allowance, name), 0) + leaked
    rows = []
    for allowance in allowances:
        row: list[object] = [f"{allowance:g}", f"{false_positives.get(allowance, 0)}/{clean_runs}"]
        for size in sizes:
            hits = caught.get((allowance, f"test_leak[{size}]"), 0)
            row.append(f"{hits}/{repeats}")
        rows.append(row)
    threshold = _threshold(sizes, allowances, caught, false_positives, repeats)
    return (
        table(
            ("leak_mb", "clean set flagged", *(f"leak {size:g} MiB/round" for size in sizes)),
            rows,
            f"Detection at {WARMUP}:{MEASURED} rounds (caught / runs)",
        )
        + f"\n\ndetection threshold: {threshold}"
    )


def _threshold(
    sizes: tuple[float, ...],
    allowances: tuple[float, ...],
    caught: dict[tuple[float, str], int],
    false_positives: dict[float, int],
    repeats: int,
) -> str:
    for allowance in allowances:
        if false_positives.get(allowance, 0):
            continue
        for size in sizes:
            if caught.get((allowance, f"test_leak[{size}]"), 0) == repeats:
                return (
                    f"{size:g} MiB per round, at leak_mb={allowance:g}, the smallest allowance "
                    "with no false positive in the clean set"
                )
        return f"none of the sizes tried is caught every time at leak_mb={allowance:g}"
    return "every allowance tried flagged the clean set"


if __name__ == "__main__":
    main()
    sys.exit(0)
