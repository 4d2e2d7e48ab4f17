"""Evidence for the default isolation (issue 19, item 3), on bench_suite_shapes.py's suites.

(b) Baseline stability: per shape, three unchanged runs with `--taichi-limits-isolation=module`:
    the first saves a baseline, the next two compare against it with the default tolerances.
    Every regression reported is a false one (nothing changed).
(c) Alone against within its module: per shape, one test that is not the first of its module,
    run alone (`-k`) and within its module, with module isolation: the difference of its
    figures against what the default tolerance allows, and whether a regression report (the
    run alone compared against the full run's baseline) says why ("ran first in its child").

    python benchmarks/bench_isolation_evidence.py [--quick] [--only a,b,c,e,f]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from _common import bench_env, machine_line, table, workdir
from bench_suite_shapes import LIMITS, SHAPES, Shape, run_bounded

MODULE = "--taichi-limits-isolation=module"


def _records(report: Path) -> dict[str, dict[str, Any]]:
    document = json.loads(report.read_text())
    return {record["nodeid"]: record for record in document["records"]}


def _run(shape: Shape, suite: Path, env: dict[str, str], label: str, *options: str) -> Path:
    root = suite.parent
    report, log = root / f"{label}.json", root / f"{label}.log"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        *shape.common,
        *LIMITS,
        MODULE,
        f"--taichi-limits-json={report}",
        *options,
    ]
    done = run_bounded(command, suite, env, 900.0, log)
    if done.exit_code is None:
        raise SystemExit(f"({shape.key}) {label}: TIMEOUT (output in {log})")
    return report


def stability(shape: Shape, quick: bool) -> list[object]:
    size = shape.quick if quick else shape.full
    root = workdir(f"stability-{shape.key}")
    suite = root / "suite"
    shape.build(suite, size)
    env = bench_env(TI_OFFLINE_CACHE_FILE_PATH=str(root / "ticache"))
    baseline = root / "baseline.json"
    _run(shape, suite, env, "warm-up")
    _run(shape, suite, env, "run-1", f"--taichi-limits-save-baseline={baseline}")
    regressions: list[str] = []
    for number in (2, 3):
        report = _run(shape, suite, env, f"run-{number}", f"--taichi-limits-compare={baseline}")
        for nodeid, record in _records(report).items():
            if record.get("regression"):
                regressions.append(f"run {number}: {nodeid}")
    tests = size.modules * size.tests_per_module
    shown = "; ".join(regressions[:3]) + (" ..." if len(regressions) > 3 else "")
    return [f"({shape.key})", tests, len(regressions), shown or "-"]


def alone(shape: Shape, quick: bool) -> list[object] | None:
    size = shape.quick if quick else shape.full
    if size.tests_per_module < 2:
        return None
    root = workdir(f"alone-{shape.key}")
    suite = root / "suite"
    shape.build(suite, size)
    env = bench_env(TI_OFFLINE_CACHE_FILE_PATH=str(root / "ticache"))
    baseline = root / "baseline.json"
    _run(shape, suite, env, "warm-up")
    full = _records(_run(shape, suite, env, "full", f"--taichi-limits-save-baseline={baseline}"))
    second = sorted(
        (record for record in full.values() if record.get("worker_test_number") == 2),
        key=lambda record: record["nodeid"],
    )
    if not second:
        return None
    nodeid = second[0]["nodeid"]
    report = _run(
        shape,
        suite,
        env,
        "alone",
        f"--taichi-limits-compare={baseline}",
        "--taichi-limits-compare-warn",
        nodeid,
    )
    alone_record = _records(report)[nodeid]
    log_text = (root / "alone.log").read_text(errors="replace")
    within = full[nodeid]
    cpu = alone_record["cpu_s"] - within["cpu_s"]
    memory = (alone_record["own_memory_bytes"] - within["own_memory_bytes"]) / (1 << 20)
    regressed = bool(alone_record.get("regression"))
    says_why = "ran first in its child" in log_text
    return [
        f"({shape.key})",
        nodeid.split("::")[-1],
        f"{within['cpu_s']:.2f} s -> {alone_record['cpu_s']:.2f} s ({cpu:+.2f} s)",
        f"{within['own_memory_bytes'] / (1 << 20):.1f} -> "
        f"{alone_record['own_memory_bytes'] / (1 << 20):.1f} MiB ({memory:+.1f} MiB)",
        "regression" if regressed else "within tolerance",
        ("yes" if says_why else "NO") if regressed else "-",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the shapes' quick sizes")
    parser.add_argument("--only", default="a,b,c,e,f", help="comma-separated shapes")
    args = parser.parse_args()
    chosen = [shape for shape in SHAPES if shape.key in args.only.split(",")]
    print(machine_line())
    rows = [stability(shape, args.quick) for shape in chosen]
    print(
        table(
            ["suite", "tests", "false regressions in runs 2 and 3", "which"],
            rows,
            "(b) Baseline stability, isolation=module, default tolerances (3 unchanged runs)",
        )
    )
    alone_rows = [row for shape in chosen if (row := alone(shape, args.quick)) is not None]
    print()
    print(
        table(
            [
                "suite",
                "test (2nd of its module)",
                "CPU: within -> alone",
                "own memory",
                "compared with the full run",
                "report says why",
            ],
            alone_rows,
            "(c) A test run alone (-k) against within its module, isolation=module",
        )
    )


if __name__ == "__main__":
    main()
