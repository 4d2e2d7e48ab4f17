"""A real suite: part of Taichi's own tests/python on the CPU, plain against --taichi-limits.

Needs a checkout of taichi-dev/taichi at the tag of the installed Taichi (v1.7.4); it is never
part of this repository:

    git clone --depth 1 --branch v1.7.4 https://github.com/taichi-dev/taichi /tmp/taichi-src
    python benchmarks/bench_taichi_suite.py --taichi-src /tmp/taichi-src [--quick] [--repeats N]

Runs from the checkout's root (the folder above tests/) with TI_WANTED_ARCHS=cpu. Taichi's
conftest imports pytest_rerunfailures only to patch one attribute; a one-line stand-in module is
put on PYTHONPATH so that plugin need not be installed. Both variants share one offline kernel
cache (in the work folder), warmed by an untimed plain run first. Pass/fail/skip of every test is
read from --junitxml and compared; the wall-time ratio is taken from the medians.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path
from xml.etree import ElementTree

from _common import (
    bench_env,
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
    "test_abs.py", "test_api.py", "test_atomic.py", "test_bit_operations.py", "test_cast.py",
    "test_function.py", "test_loops.py", "test_ndrange.py", "test_offset.py",
    "test_reduction.py", "test_return.py", "test_static.py", "test_struct_for.py",
    "test_types.py", "test_while.py", "test_sparse_basics.py", "test_listgen.py", "test_bls.py",
    "test_ad_basics.py",
)
QUICK_SUBSET = ("test_abs.py", "test_bit_operations.py", "test_static.py", "test_api.py")
LIMITS = ("--taichi-limits", "--taichi-limits-mem-mb=8192", "--taichi-limits-wall-s=600")


def outcomes(junit: Path) -> dict[str, str]:
    result: dict[str, str] = {}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                break
        result[name] = outcome
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taichi-src", required=True, type=Path,
                        help="checkout of taichi-dev/taichi at v1.7.4 (holds tests/python)")
    parser.add_argument("--quick", action="store_true", help="4 small files, one repeat")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--files", nargs="*", help="test files under tests/python to run instead")
    args = parser.parse_args()
    src = args.taichi_src.resolve()
    if not (src / "tests" / "python" / "conftest.py").exists():
        raise SystemExit(f"{src} has no tests/python/conftest.py: not a Taichi checkout")
    repeats = args.repeats or (1 if args.quick else 2)
    files = args.files or (QUICK_SUBSET if args.quick else SUBSET)
    paths = [f"tests/python/{name}" for name in files]

    root = workdir("taichi-suite")
    write(root / "shim" / "pytest_rerunfailures.py", "works_with_current_xdist = lambda: True\n")
    env = bench_env(TI_WANTED_ARCHS="cpu", PYTHONPATH=str(root / "shim"),
                    TI_OFFLINE_CACHE_FILE_PATH=str(root / "ticache"))
    print(machine_line())
    print(f"{len(files)} files from {src}; repeats: {repeats}; workdir {root}\n", flush=True)

    def run(name: str, index: int, *options: str) -> tuple[float, float, dict[str, str], str]:
        junit = root / f"{name}-{index}.xml"
        cpu_before = _children_cpu_s()
        timed = run_timed(pytest_cmd(sys.executable, f"--junitxml={junit}", *options, *paths),
                          src, env, timeout=3600)
        (root / f"{name}-{index}.txt").write_text(timed.stdout)
        if not junit.exists():
            raise SystemExit(f"{name}: no junit report (rc {timed.returncode}):\n"
                             + timed.stdout[-3000:])
        cpu_s = _children_cpu_s() - cpu_before
        return timed.wall_s, cpu_s, outcomes(junit), timed.stdout.strip().splitlines()[-1]

    run("warm-up", 0)
    walls: dict[str, list[float]] = {"plain": [], "taichi-limits": []}
    cpus: dict[str, list[float]] = {"plain": [], "taichi-limits": []}
    seen: dict[str, list[dict[str, str]]] = {"plain": [], "taichi-limits": []}
    summary: dict[str, str] = {}
    for index in range(repeats):
        for name, options in (("plain", ()), ("taichi-limits", LIMITS)):
            wall, cpu, result, last_line = run(name, index, *options)
            walls[name].append(wall)
            cpus[name].append(cpu)
            seen[name].append(result)
            summary[name] = last_line
            print(f"{name} #{index + 1}: {wall:.1f} s wall, {cpu:.1f} s CPU  {last_line}",
                  flush=True)

    rows = []
    for name, name_walls in walls.items():
        counts: dict[str, int] = {}
        for outcome in seen[name][-1].values():
            counts[outcome] = counts.get(outcome, 0) + 1
        rows.append([name, len(seen[name][-1]), counts.get("passed", 0), counts.get("failed", 0),
                     counts.get("error", 0), counts.get("skipped", 0),
                     f"{median(name_walls):.1f} s", f"{median(cpus[name]):.1f} s"])
    ratio = median(walls["taichi-limits"]) / median(walls["plain"])
    cpu_ratio = median(cpus["taichi-limits"]) / median(cpus["plain"])
    print()
    print(table(["run", "tests", "passed", "failed", "errors", "skipped", "wall (median)",
                 "CPU, all processes (median)"], rows,
                f"Taichi v1.7.4 tests/python subset on the CPU ({len(files)} files): "
                f"--taichi-limits / plain = {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU"))
    differ = sorted(
        nodeid for nodeid in set(seen["plain"][-1]) | set(seen["taichi-limits"][-1])
        if seen["plain"][-1].get(nodeid) != seen["taichi-limits"][-1].get(nodeid)
    )
    print()
    if differ:
        print("Tests whose outcome differs (plain -> taichi-limits); the runs' output is in "
              f"{root}:")
        for nodeid in differ:
            print(f"  {nodeid}: {seen['plain'][-1].get(nodeid)} -> "
                  f"{seen['taichi-limits'][-1].get(nodeid)}")
    else:
        print("Every test has the same outcome in both runs.")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
