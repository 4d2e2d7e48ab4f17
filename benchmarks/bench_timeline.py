"""Timeline cost: what keeping a per-test timeline adds to the supervisor, per test.

The supervisor calls `Timeline.add` once per sample and `Timeline.to_json` once per test
(model/timeline.py). This measures both directly, in the parent's process, and turns them into the
parent CPU a test costs with and without a timeline, for short and long tests sampled at the
loop's two paces (0.1 s far from every limit, 0.01 s near one), next to the watch loop's own cost
per sample (about 0.2 ms per wake-up, bench_supervisor_cost.py). It also gives the size a
timeline adds to a record of the JSON report.

    python benchmarks/bench_timeline.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import machine_line, table

from pytest_taichi_limits.model.timeline import Timeline

#: The watch loop's own CPU per wake-up (README, "Supervisor cost"), for scale.
LOOP_WAKE_S = 0.0002
CASES = (
    ("0.5 s test, far from limits", 0.5, 0.1),
    ("0.5 s test, near a limit", 0.5, 0.01),
    ("60 s test, far from limits", 60.0, 0.1),
    ("60 s test, near a limit", 60.0, 0.01),
    ("1 h test, far from limits", 3600.0, 0.1),
)


def per_add_s(calls: int) -> float:
    best = float("inf")
    for _ in range(5):
        line = Timeline()
        start = time.perf_counter()
        for index in range(calls):
            line.add(index * 0.01, 1000.0 * index, index * 0.001, None)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def to_json_s(samples: int) -> tuple[float, int]:
    line = Timeline()
    for index in range(samples):
        line.add(index * 0.01, 1000.0 * index, index * 0.001, None)
    best = float("inf")
    for _ in range(20):
        start = time.perf_counter()
        data = line.to_json(None)
        best = min(best, time.perf_counter() - start)
    return best, len(json.dumps(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls")
    args = parser.parse_args()
    calls = 20_000 if args.quick else 1_000_000
    print(machine_line())
    add_s = per_add_s(calls)
    print(f"Timeline.add: {add_s * 1e9:.0f} ns per sample (best of 5 x {calls} calls)\n")
    rows = []
    for name, seconds, interval in CASES:
        samples = int(seconds / interval)
        json_s, size = to_json_s(samples)
        loop_s = samples * LOOP_WAKE_S
        added_s = samples * add_s + json_s
        rows.append(
            [
                name,
                samples,
                f"{loop_s * 1000:.1f} ms",
                f"{added_s * 1000:.2f} ms",
                f"{100 * added_s / loop_s:.1f} %",
                f"{size / 1024:.1f} KB",
            ]
        )
    print(
        table(
            [
                "test",
                "samples",
                "parent CPU without timeline (loop)",
                "added by the timeline",
                "added, share",
                "JSON per record",
            ],
            rows,
            "Timeline cost per test",
        )
    )


if __name__ == "__main__":
    main()
