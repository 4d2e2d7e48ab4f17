"""Baselines on a machine whose speed drifts: Taichi's own suite compared with a baseline saved
from an earlier run, while the machine runs slower, with and without the calibration's scaling.

    python benchmarks/bench_speed_drift.py --taichi-src /tmp/taichi-src [--quick] [--files ...]

The code never changes between the runs, so every regression found is a false one. One run saves
the baseline (--taichi-limits-save-baseline, calibrated as usual); each scenario then runs the
same files again, slowed down, comparing with it (--taichi-limits-compare). From that run's JSON
report, each test is compared with each tolerance of TOLERANCES twice, with the same figures:
scaled by the calibrations (what the plugin does now) and unscaled (formats/baseline.compare
without a calibration: what it did before). Short tests stay within the default's absolute
1 s whatever the speed; the tight tolerance shows what the relative part does.

Scenarios (the slowdown is simulated: a machine cannot be made slower on demand):
- `one-core-hog`: pytest pinned to one core (`taskset -c 0`) beside a busy loop pinned there
  too: the run gets half a core. Wall time doubles; CPU time does not grow (a CPU second still
  buys as much work: time slicing is not charged to the test).
- `slow-python`: a profile hook (sys.setprofile, a plugin loaded with -p) in pytest and every
  test process: each Python call costs about 1.8x the CPU, as on a slower or busier CPU, and
  the calibration loop sees it too. Taichi's native work (LLVM, the kernels) is not slowed.

Needs a Taichi v1.7.4 checkout (see bench_taichi_suite.py). Timings depend on the machine's
load: the table's ratios are what this run measured, not constants.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from _common import bench_env, machine_line, pytest_cmd, run_timed, table, workdir, write

from pytest_taichi_limits.config.tolerance import parse_tolerance
from pytest_taichi_limits.formats import baseline as baselines
from pytest_taichi_limits.formats.jsonreport import Report

FILES = (
    "test_abs.py",
    "test_bit_operations.py",
    "test_static.py",
    "test_reduction.py",
    "test_loops.py",
    "test_ad_basics.py",
    "test_ndrange.py",
    "test_struct_for.py",
    "test_ndarray.py",
)
QUICK_FILES = ("test_bit_operations.py", "test_static.py", "test_reduction.py", "test_loops.py")
#: The default CPU tolerance with wall compared by the same rule (off by default), and a tight one.
TOLERANCES = ("cpu=50%+1s,wall=50%+1s", "cpu=20%+0.1s,wall=20%+0.1s")
LIMITS = ("--taichi-limits", "--taichi-limits-mem-mb=8192", "--taichi-limits-wall-s=600")

SLOW_PYTHON = """
import sys

def _hook(frame, event, arg):
    pass

sys.setprofile(_hook)  # this thread: pytest's, and every test process forked from it
"""


def _compare(report: Report, base: baselines.Baseline, spec: str, scaled: bool) -> dict[str, int]:
    """Tests that grew beyond the tolerance `spec`, per resource, with or without the scaling."""
    tolerance = parse_tolerance(spec)
    calibration = report.calibration.figure if scaled else None
    found = {"cpu": 0, "wall": 0, "any": 0}
    for record in report.records:
        entry = base.tests.get(record.nodeid)
        if entry is None or not record.comparable:
            continue
        grown = {
            g.resource
            for g in baselines.compare(record, entry, tolerance, calibration)
            if g.exceeded
        }
        for resource in ("cpu", "wall"):
            found[resource] += resource in grown
        found["any"] += bool(grown & {"cpu", "wall"})
    return found


def _ratios(report: Report, base: baselines.Baseline) -> tuple[float, float]:
    """Median of after/before per test, CPU and wall (tests of 0.2 s or more)."""
    cpu, wall = [], []
    for record in report.records:
        entry = base.tests.get(record.nodeid)
        if entry is None or not record.comparable:
            continue
        before_cpu, before_wall = entry.ranges["cpu_s"], entry.ranges["wall_s"]
        if before_cpu is not None and before_cpu.high >= 0.2:
            cpu.append(record.cpu_s / before_cpu.high)
        if before_wall is not None and before_wall.high >= 0.2:
            wall.append(record.wall_s / before_wall.high)
    return statistics.median(cpu or [float("nan")]), statistics.median(wall or [float("nan")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taichi-src", required=True, type=Path)
    parser.add_argument("--quick", action="store_true", help="4 small files")
    parser.add_argument("--files", nargs="*", help="test files under tests/python")
    args = parser.parse_args()
    src = args.taichi_src.resolve()
    if not (src / "tests" / "python" / "conftest.py").exists():
        raise SystemExit(f"{src} has no tests/python/conftest.py: not a Taichi checkout")
    files = args.files or (QUICK_FILES if args.quick else FILES)
    paths = [f"tests/python/{name}" for name in files]
    root = workdir("speed-drift")
    write(root / "shim" / "pytest_rerunfailures.py", "works_with_current_xdist = lambda: True\n")
    write(root / "slow" / "ptl_slow_python.py", SLOW_PYTHON)
    pythonpath = [str(root / "shim"), os.environ.get("PYTHONPATH")]
    env = bench_env(
        TI_WANTED_ARCHS="cpu",
        PYTHONPATH=os.pathsep.join(filter(None, pythonpath)),
        TI_OFFLINE_CACHE_FILE_PATH=str(root / "ticache"),
    )
    print(machine_line())
    print(f"{len(files)} files from {src}; workdir {root}\n", flush=True)
    base_path = root / "base.json"

    def run(name: str, *options: str, prefix: tuple[str, ...] = (), extra_env: Any = None) -> str:
        command = [*prefix, *pytest_cmd(sys.executable, *options, *paths)]
        timed = run_timed(command, src, {**env, **(extra_env or {})}, timeout=3600)
        (root / f"{name}.txt").write_text(timed.stdout)
        last = timed.stdout.strip().splitlines()[-1] if timed.stdout.strip() else "?"
        print(f"{name}: {timed.wall_s:.1f} s  {last}", flush=True)
        return last

    run("warm-up")  # the offline kernel cache, so that no run compiles what another loaded
    run("baseline", *LIMITS, f"--taichi-limits-save-baseline={base_path}")
    base = baselines.load(str(base_path))
    scenarios: dict[str, dict[str, Any]] = {
        "one-core-hog": {"prefix": ("taskset", "-c", "0"), "hog": True},
        "slow-python": {
            "options": ("-p", "ptl_slow_python"),
            "env": {"PYTHONPATH": os.pathsep.join([str(root / "slow"), env["PYTHONPATH"]])},
        },
    }
    rows = []
    for name, how in scenarios.items():
        hog = None
        if how.get("hog"):
            hog = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while 1: pass"])
        try:
            report_path = root / f"{name}.json"
            run(
                name,
                *LIMITS,
                *how.get("options", ()),
                f"--taichi-limits-compare={base_path}",
                f"--taichi-limits-tolerance={TOLERANCES[0]}",
                f"--taichi-limits-json={report_path}",
                prefix=how.get("prefix", ()),
                extra_env=how.get("env"),
            )
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        report = Report.from_json(json.loads(report_path.read_text()))
        speeds = report.speeds()
        cpu_scale, wall_scale = (
            (speeds[0].ratio("cpu", speeds[1]), speeds[0].ratio("wall", speeds[1]))
            if speeds
            else (float("nan"), float("nan"))
        )
        cpu_ratio, wall_ratio = _ratios(report, base)
        for spec in TOLERANCES:
            before = _compare(report, base, spec, scaled=False)
            after = _compare(report, base, spec, scaled=True)
            rows.append(
                [
                    name,
                    len(report.records),
                    f"{cpu_scale:.2f}x / {wall_scale:.2f}x",
                    f"{cpu_ratio:.2f}x / {wall_ratio:.2f}x",
                    spec,
                    f"{before['any']} ({before['cpu']} CPU, {before['wall']} wall)",
                    f"{after['any']} ({after['cpu']} CPU, {after['wall']} wall)",
                ]
            )
    print()
    print(
        table(
            [
                "scenario",
                "tests",
                "calibration: slower by (CPU / wall)",
                "tests' median after/before (CPU / wall)",
                "tolerance",
                "false regressions unscaled (before)",
                "false regressions scaled (now)",
            ],
            rows,
            f"Taichi v1.7.4 tests/python on the CPU ({len(files)} files), compared with a "
            "baseline saved from an earlier run (every regression is a false one)",
        )
    )


if __name__ == "__main__":
    main()
