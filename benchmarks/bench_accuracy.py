"""Accuracy of the usage figures: sampled own peak RSS and CPU seconds against the kernel's.

Memory: tests allocate 50 MB ... 2 GB (written, so resident), hold it for a moment, and end. The
supervisor's sampled own peak (`peak_own_rss_bytes`) is compared with the kernel's figure
(`kernel_own_rss_bytes` = ru_maxrss from wait4 minus the RSS the child started with) and with
the size asked for. Both figures come from `--taichi-limits-log`.

CPU: tests burn 0.05 ... 2 CPU seconds. The reported `cpu_s` is compared with the CPU time that
the pytest process's RUSAGE_CHILDREN grew by around that test (measured by a small plugin in the
inner run) and with the CPU time the test itself saw (getrusage in the test, end of the call).

    python benchmarks/bench_accuracy.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import (
    MB,
    bench_env,
    check,
    machine_line,
    pytest_cmd,
    read_log,
    run_timed,
    table,
    workdir,
    write,
)

MEMORY_MB = (50, 200, 500, 1000, 2000)
CPU_S = (0.05, 0.2, 0.5, 2.0)

RUSAGE_PLUGIN = """
import json, os, resource, pytest

@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        return (yield)
    finally:
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        with open(os.environ["BENCH_RUSAGE_FILE"], "a") as out:
            out.write(json.dumps({"nodeid": item.nodeid, "rusage_cpu_s": cpu}) + "\\n")
"""

TESTS = """
import json, os, resource, time
import pytest


@pytest.mark.parametrize("megabytes", {memory})
def test_memory(megabytes):
    block = b"\\x01" * (megabytes * 1024 * 1024)  # written byte by byte: resident
    time.sleep(0.3)  # a plateau the sampler can see
    del block


@pytest.mark.parametrize("seconds", {cpu})
def test_cpu(request, seconds):
    def used():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    while used() < seconds:
        sum(range(1000))
    with open(os.environ["BENCH_SELF_FILE"], "a") as out:
        out.write(json.dumps({{"nodeid": request.node.nodeid, "self_cpu_s": used()}}) + "\\n")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller tests")
    parser.add_argument("--interval", type=float, default=None,
                        help="--taichi-limits-interval (default: the plugin's)")
    args = parser.parse_args()
    memory = MEMORY_MB[:2] if args.quick else MEMORY_MB
    cpu = CPU_S[:2] if args.quick else CPU_S
    root = workdir("accuracy")
    write(root / "bench_rusage.py", RUSAGE_PLUGIN)
    write(root / "test_accuracy.py", TESTS.format(memory=list(memory), cpu=list(cpu)))
    log, rusage_file, self_file = root / "log.jsonl", root / "rusage.jsonl", root / "self.jsonl"
    extra = [] if args.interval is None else [f"--taichi-limits-interval={args.interval}"]
    cmd = pytest_cmd(sys.executable, "-p", "bench_rusage", "--taichi-limits",
                     f"--taichi-limits-log={log}", *extra, "test_accuracy.py")
    env = bench_env(BENCH_RUSAGE_FILE=str(rusage_file), BENCH_SELF_FILE=str(self_file))
    print(machine_line())
    print(f"workdir {root}\n", flush=True)
    check(run_timed(cmd, root, env), "accuracy run")

    usage = {event["nodeid"]: event for event in read_log(log) if event["event"] == "usage"}
    rusage = {row["nodeid"]: row["rusage_cpu_s"] for row in _lines(rusage_file)}
    own = {row["nodeid"]: row["self_cpu_s"] for row in _lines(self_file)}

    rows = []
    for megabytes in memory:
        record = usage[f"test_accuracy.py::test_memory[{megabytes}]"]
        sampled = record["peak_own_rss_bytes"] / MB
        kernel = record["kernel_own_rss_bytes"] / MB
        rows.append([f"{megabytes} MB", f"{sampled:.1f}", f"{kernel:.1f}",
                     f"{sampled - kernel:+.2f} MB", record["samples"]])
    print(table(["allocated", "sampled own peak (MB)", "kernel: ru_maxrss - start (MB)",
                 "sampled - kernel", "samples"], rows,
                "Own peak RSS: sampled against the kernel's figure"))
    print()
    rows = []
    for seconds in cpu:
        nodeid = f"test_accuracy.py::test_cpu[{seconds}]"
        reported = usage[nodeid]["cpu_s"]
        rows.append([f"{seconds:g} s", f"{reported:.3f}", f"{rusage[nodeid]:.3f}",
                     f"{(reported - rusage[nodeid]) * 1000:+.1f} ms", f"{own[nodeid]:.3f}",
                     f"{(reported - own[nodeid]) * 1000:+.1f} ms"])
    print(table(["burned", "reported cpu_s", "RUSAGE_CHILDREN delta", "reported - rusage",
                 "test's own getrusage", "reported - test's own"], rows,
                "CPU seconds: reported against rusage"))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


if __name__ == "__main__":
    main()
