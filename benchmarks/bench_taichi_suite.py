"""A real suite: part of Taichi's own tests/python on the CPU, plain against --taichi-limits.

Needs a checkout of taichi-dev/taichi at the tag of the installed Taichi (v1.7.4); it is never
part of this repository:

    git clone --depth 1 --branch v1.7.4 https://github.com/taichi-dev/taichi /tmp/taichi-src
    python benchmarks/bench_taichi_suite.py --taichi-src /tmp/taichi-src [--quick] [--repeats N]
        [--isolation test module session]

Runs from the checkout's root (the folder above tests/) with TI_WANTED_ARCHS=cpu. Taichi's
conftest imports pytest_rerunfailures only to patch one attribute; a one-line stand-in module is
put on PYTHONPATH so that plugin need not be installed. Both variants share one offline kernel
cache (in the work folder), warmed by an untimed plain run first. Pass/fail/skip of every test is
read from --junitxml and compared; the wall-time ratio is taken from the medians. Where the
installed plugin has --taichi-limits-isolation, each of its values is a variant of its own
(`--isolation` picks some; `--isolation` with no value runs plain against the default only).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from pathlib import Path

from _common import (
    ISOLATION_MODES,
    bench_env,
    isolation_modes,
    junit_outcomes,
    machine_line,
    median,
    pytest_cmd,
    run_timed,
    table,
    workdir,
    write,
)

#: Files that run in about 2 minutes together on 2 cores, with kernels of many kinds (atomics,
#: autodiff, sparse SNodes, reductions, real functions, struct-for, offsets, casts).
SUBSET = (
    "test_abs.py",
    "test_api.py",
    "test_atomic.py",
    "test_bit_operations.py",
    "test_cast.py",
    "test_function.py",
    "test_loops.py",
    "test_ndrange.py",
    "test_offset.py",
    "test_reduction.py",
    "test_return.py",
    "test_static.py",
    "test_struct_for.py",
    "test_types.py",
    "test_while.py",
    "test_sparse_basics.py",
    "test_listgen.py",
    "test_bls.py",
    "test_ad_basics.py",
)
QUICK_SUBSET = ("test_abs.py", "test_bit_operations.py", "test_static.py", "test_api.py")
LIMITS = ("--taichi-limits", "--taichi-limits-mem-mb=8192", "--taichi-limits-wall-s=600")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--taichi-src",
        required=True,
        type=Path,
        help="checkout of taichi-dev/taichi at v1.7.4 (holds tests/python)",
    )
    parser.add_argument("--quick", action="store_true", help="4 small files, one repeat")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--files", nargs="*", help="test files under tests/python to run instead")
    parser.add_argument(
        "--isolation",
        nargs="*",
        choices=ISOLATION_MODES,
        default=None,
        help="also run --taichi-limits with each of these "
        "--taichi-limits-isolation values (default: every value the installed "
        "plugin offers; none when it has no such option)",
    )
    args = parser.parse_args()
    src = args.taichi_src.resolve()
    if not (src / "tests" / "python" / "conftest.py").exists():
        raise SystemExit(f"{src} has no tests/python/conftest.py: not a Taichi checkout")
    repeats = args.repeats or (1 if args.quick else 2)
    files = args.files or (QUICK_SUBSET if args.quick else SUBSET)
    paths = [f"tests/python/{name}" for name in files]

    root = workdir("taichi-suite")
    write(root / "shim" / "pytest_rerunfailures.py", "works_with_current_xdist = lambda: True\n")
    # The shim goes in front of any PYTHONPATH already set (a worktree's copy of the plugin).
    pythonpath = os.pathsep.join(filter(None, [str(root / "shim"), os.environ.get("PYTHONPATH")]))
    env = bench_env(
        TI_WANTED_ARCHS="cpu",
        PYTHONPATH=pythonpath,
        TI_OFFLINE_CACHE_FILE_PATH=str(root / "ticache"),
    )
    print(machine_line())
    print(f"{len(files)} files from {src}; repeats: {repeats}; workdir {root}\n", flush=True)

    def run(name: str, index: int, *options: str) -> tuple[float, float, dict[str, str], str]:
        junit = root / f"{name}-{index}.xml"
        cpu_before = _children_cpu_s()
        timed = run_timed(
            pytest_cmd(sys.executable, f"--junitxml={junit}", *options, *paths),
            src,
            env,
            timeout=3600,
        )
        (root / f"{name}-{index}.txt").write_text(timed.stdout)
        if not junit.exists():
            raise SystemExit(
                f"{name}: no junit report (rc {timed.returncode}):\n" + timed.stdout[-3000:]
            )
        cpu_s = _children_cpu_s() - cpu_before
        return timed.wall_s, cpu_s, junit_outcomes(junit), timed.stdout.strip().splitlines()[-1]

    run("warm-up", 0)
    isolations = isolation_modes() if args.isolation is None else tuple(args.isolation)
    variants: dict[str, tuple[str, ...]] = {"plain": ()}
    if "test" not in isolations:  # isolation=test is the default: no need to run it twice
        variants["taichi-limits"] = LIMITS
    for mode in isolations:
        variants[f"isolation={mode}"] = (*LIMITS, f"--taichi-limits-isolation={mode}")
    walls: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    seen: dict[str, list[dict[str, str]]] = {name: [] for name in variants}
    for index in range(repeats):
        for name, options in variants.items():
            wall, cpu, result, last_line = run(name, index, *options)
            walls[name].append(wall)
            cpus[name].append(cpu)
            seen[name].append(result)
            print(
                f"{name} #{index + 1}: {wall:.1f} s wall, {cpu:.1f} s CPU  {last_line}", flush=True
            )

    rows = []
    for name, name_walls in walls.items():
        counts: dict[str, int] = {}
        for outcome in seen[name][-1].values():
            counts[outcome] = counts.get(outcome, 0) + 1
        rows.append(
            [
                name,
                len(seen[name][-1]),
                counts.get("passed", 0),
                counts.get("failed", 0),
                counts.get("error", 0),
                counts.get("skipped", 0),
                f"{median(name_walls):.1f} s",
                f"{median(cpus[name]):.1f} s",
                f"{median(name_walls) / median(walls['plain']):.2f}x",
                f"{median(cpus[name]) / median(cpus['plain']):.2f}x",
            ]
        )
    print()
    print(
        table(
            [
                "run",
                "tests",
                "passed",
                "failed",
                "errors",
                "skipped",
                "wall (median)",
                "CPU, all processes (median)",
                "wall / plain",
                "CPU / plain",
            ],
            rows,
            f"Taichi v1.7.4 tests/python subset on the CPU ({len(files)} files)",
        )
    )
    print()
    plain = seen["plain"][-1]
    for name in variants:
        if name == "plain":
            continue
        differ = sorted(
            nodeid
            for nodeid in set(plain) | set(seen[name][-1])
            if plain.get(nodeid) != seen[name][-1].get(nodeid)
        )
        if differ:
            print(
                f"MISMATCH: tests whose outcome differs (plain -> {name}); the runs' output "
                f"is in {root}:"
            )
            for nodeid in differ:
                print(f"  {nodeid}: {plain.get(nodeid)} -> {seen[name][-1].get(nodeid)}")
        else:
            print(f"{name}: every test has the same outcome as plain.")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
