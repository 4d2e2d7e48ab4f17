"""Markers only (no --taichi-limits): what keeping pytest's own Taichi state intact costs.

Without --taichi-limits only marked tests are supervised; the others run in the pytest process on
its Taichi state. While that state holds fields (made at import, by a conftest, by a fixture) and
unsupervised tests remain, a marked test starts in a fresh interpreter instead of a fork after a
Taichi reset (which would destroy the fields under the unsupervised tests: the session aborted).
Each suite runs plainly (`-p no:taichi_limits`) and with the plugin, alternating, and the table
gives the medians of the whole run's wall time and of the test loop's, their ratio, and the
extra time per marked test.

    python benchmarks/bench_markers_only.py [--quick] [--repeats N]

Suites:
- two modules: one marked test without Taichi, then a module whose import makes a field and
  whose unmarked test fills it (the issue's case);
- a 20-test module that makes a field at import, marked and unmarked tests alternating (each
  marked test: a fresh interpreter);
- the same 20 tests with `ti.init` in a conftest's `pytest_configure` and each test's field made
  inside the test (nothing to keep: the fork path, for comparison).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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

MARKED_WITHOUT_TAICHI = """
import pytest

@pytest.mark.taichi_limits(mem_mb=512)
def test_marked():
    assert sum(range(10)) == 45
"""

FIELD_AT_IMPORT = """
import taichi as ti

ti.init(arch=ti.cpu)
field = ti.field(ti.f32, shape=16)

@ti.kernel
def fill(value: ti.f32):
    for i in field:
        field[i] = value

def test_unmarked_fills_the_field():
    fill(3.0)
    assert field[5] == 3.0
"""

ALTERNATING = """
import pytest
import taichi as ti

ti.init(arch=ti.cpu)
field = ti.field(ti.i32, shape=64)

@ti.kernel
def fill(value: ti.i32):
    for i in field:
        field[i] = value + i

MARKED = [pytest.mark.taichi_limits(mem_mb=2048)]
EVERY_OTHER = [pytest.param(i, marks=MARKED if i % 2 == 0 else []) for i in range({count})]

@pytest.mark.parametrize("i", EVERY_OTHER)
def test_alternating(i):
    fill(i)
    assert field[3] == i + 3
"""

CONFTEST_INIT = """
import taichi as ti

def pytest_configure(config):
    ti.init(arch=ti.cpu)
"""

FIELDS_INSIDE = """
import pytest
import taichi as ti

@ti.kernel
def fill(target: ti.types.ndarray(), value: ti.i32):
    for i in target:
        target[i] = value + i

MARKED = [pytest.mark.taichi_limits(mem_mb=2048)]
EVERY_OTHER = [pytest.param(i, marks=MARKED if i % 2 == 0 else []) for i in range({count})]

@pytest.mark.parametrize("i", EVERY_OTHER)
def test_inside(i):
    data = ti.ndarray(ti.i32, shape=64)
    fill(data, i)
    assert data[3] == i + 3
"""


def suites(root: Path, count: int) -> dict[str, tuple[Path, int]]:
    """name -> (directory, number of marked tests)."""
    two = root / "two_modules"
    write(two / "test_a.py", MARKED_WITHOUT_TAICHI)
    write(two / "test_b.py", FIELD_AT_IMPORT)
    alternating = root / "alternating"
    write(alternating / "test_alternating.py", ALTERNATING.format(count=count))
    conftest = root / "conftest_init"
    write(conftest / "conftest.py", CONFTEST_INIT)
    write(conftest / "test_inside.py", FIELDS_INSIDE.format(count=count))
    marked = (count + 1) // 2
    return {
        "two modules, field at import (1 marked)": (two, 1),
        f"{count}-test module, field at import ({marked} marked, alternating)": (
            alternating,
            marked,
        ),
        f"{count} tests, conftest ti.init, fields inside tests ({marked} marked)": (
            conftest,
            marked,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tests and repeats")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    count = 6 if args.quick else 20
    root = workdir("markers-only")
    write(root / "bench_timer.py", TIMER_PLUGIN)
    env_extra = {"TI_OFFLINE_CACHE_FILE_PATH": str(root / "ticache"), "PYTHONPATH": str(root)}
    variants = {
        "plain": ["-p", "no:taichi_limits"],
        "plugin": [],  # markers only: no --taichi-limits
    }
    print(machine_line())
    print(f"repeats: {repeats}; workdir {root}\n", flush=True)
    rows = []
    for name, (directory, marked) in suites(root, count).items():
        walls: dict[str, list[float]] = {variant: [] for variant in variants}
        loops: dict[str, list[float]] = {variant: [] for variant in variants}
        for repeat in range(repeats + 1):  # the first round warms the kernel cache
            for variant, extra in variants.items():
                loop_file = directory / f"loop-{variant}-{repeat}.txt"
                cmd = pytest_cmd(sys.executable, "-p", "bench_timer", *extra)
                timed = run_timed(
                    cmd, directory, bench_env(BENCH_LOOP_FILE=str(loop_file), **env_extra)
                )
                check(timed, f"{name}, {variant}")
                if repeat == 0:
                    continue
                walls[variant].append(timed.wall_s)
                loops[variant].append(
                    max(float(line.split()[0]) for line in loop_file.read_text().splitlines())
                )
        plain_wall, plugin_wall = median(walls["plain"]), median(walls["plugin"])
        plain_loop, plugin_loop = median(loops["plain"]), median(loops["plugin"])
        rows.append(
            [
                name,
                f"{plain_wall:.2f} s",
                f"{plugin_wall:.2f} s",
                f"{plugin_wall / plain_wall:.2f}x",
                f"{plain_loop:.2f} s",
                f"{plugin_loop:.2f} s",
                f"{(plugin_loop - plain_loop) / marked * 1000:.0f} ms",
            ]
        )
    print(
        table(
            [
                "suite (markers only)",
                "plain run",
                "plugin run",
                "ratio",
                "plain test loop",
                "plugin test loop",
                "extra per marked test",
            ],
            rows,
            "Markers only: plain pytest vs the plugin (medians)",
        )
    )


if __name__ == "__main__":
    main()
