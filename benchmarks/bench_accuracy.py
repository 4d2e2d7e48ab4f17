"""Accuracy of the usage figures: sampled own peak RSS and CPU seconds against the kernel's.

Memory: tests allocate 50 MB ... 2 GB (written, so resident), hold it for a moment, and end. The
supervisor's sampled own peak (`peak_own_rss_bytes`) is compared with the kernel's figure
(`kernel_own_rss_bytes` = ru_maxrss from wait4 minus the RSS the child started with) and with
the size asked for. Both figures come from `--taichi-limits-log`.

CPU: tests burn 0.05 ... 2 CPU seconds. The reported `cpu_s` is compared with the CPU time the
test itself saw (getrusage in the test, at the end of the call; it also counts what its process
did before the test began). pytest's RUSAGE_CHILDREN is no measure any more: the fork server,
not pytest, waits for the test's process. The reported figure is read from /proc in clock ticks
(10 ms here), from the test's own start.

The memory figure (`mem_mb`, docs/memory.md): one test per way of holding memory -- a plain
allocation, an allocation shared copy-on-write with 4 forked children, pages inherited from
pytest that the test overwrites, a memfd, a MAP_SHARED anonymous mapping, a file in /dev/shm --
each holding `--memory-case-mb` (default 300) to its end, run once per memory method this
machine has (`--taichi-limits-memory-method=cgroup` where a memory cgroup can be made, and
`smaps`). The figure (`own_memory_bytes`) of each method is shown against the size held, the old
one (`peak_own_rss_bytes`: RSS growth of the tree, summed per process), the kernel's ru_maxrss
minus the start, and the USS (Private_Clean + Private_Dirty from smaps_rollup) of the test's
processes that the test reads itself at its end.

    python benchmarks/bench_accuracy.py [--quick] [--memory-case-mb N]
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


MEMORY_CONFTEST = """
import os
# Made in the pytest process and inherited by every supervised child, resident already.
INHERITED = bytearray(b"\\x01") * (int(os.environ["BENCH_CASE_MB"]) << 20)
"""

MEMORY_CASES = """
import json, mmap, os, time
from conftest import INHERITED

SIZE = int(os.environ["BENCH_CASE_MB"]) << 20
CHUNK = b"\\x01" * (1 << 20)  # written in chunks: never the whole size privately at once
HELD = []


def _uss(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                if name in ("Private_Clean", "Private_Dirty"):
                    total += int(rest.split()[0]) * 1024
    return total


def _record(request, pids):
    with open(os.environ["BENCH_MEM_FILE"], "a") as out:
        out.write(json.dumps({"nodeid": request.node.nodeid, "uss_bytes": _uss(pids)}) + "\\n")


def test_plain_allocation(request):
    HELD.append(b"\\x01" * SIZE)
    _record(request, [os.getpid()])


def test_fork_with_shared_pages(request):
    HELD.append(b"\\x01" * SIZE)
    children = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            time.sleep(3600)  # killed with the test's tree
            os._exit(0)
        children.append(pid)
    _record(request, [os.getpid(), *children])


def test_dirtied_inherited_pages(request):
    for offset in range(0, len(INHERITED), 4096):
        INHERITED[offset] = 2
    _record(request, [os.getpid()])


def test_memfd(request):
    fd = os.memfd_create("bench")
    for _ in range(SIZE >> 20):
        os.write(fd, CHUNK)
    HELD.append(fd)
    _record(request, [os.getpid()])


def test_map_shared_anonymous(request):
    mapping = mmap.mmap(-1, SIZE, flags=mmap.MAP_SHARED)
    for _ in range(SIZE >> 20):
        mapping.write(CHUNK)
    HELD.append(mapping)
    _record(request, [os.getpid()])


def test_tmpfs_file(request):
    with open(f"/dev/shm/ptl-bench-accuracy-{os.getpid()}", "wb") as handle:
        for _ in range(SIZE >> 20):
            handle.write(CHUNK)
    _record(request, [os.getpid()])
"""


def _methods() -> list[str]:
    """The memory methods this machine can run: a cgroup where one can be made, and smaps."""
    from pytest_taichi_limits.measure import cgroup

    return (["cgroup"] if isinstance(cgroup.detect(), cgroup.CgroupSupport) else []) + ["smaps"]


def _memory_run(root: Path, case_mb: int, method: str) -> tuple[dict[str, dict], dict[str, int]]:
    log, mem_file = root / f"log-{method}.jsonl", root / f"mem-{method}.jsonl"
    cmd = pytest_cmd(
        sys.executable,
        "--taichi-limits",
        "--taichi-limits-isolation=test",  # a child per case: the kernel's figures are per process
        f"--taichi-limits-memory-method={method}",
        f"--taichi-limits-log={log}",
        f"--taichi-limits-mem-mb={8 * case_mb}",
        "--taichi-limits-clean-shm",
        "test_cases.py",
    )
    env = bench_env(BENCH_MEM_FILE=str(mem_file), BENCH_CASE_MB=str(case_mb))
    check(run_timed(cmd, root, env), f"memory cases ({method})")
    for left in Path("/dev/shm").glob("ptl-bench-accuracy-*"):
        left.unlink()  # the tmpfs case's file (smaps cannot tell it was the test's: kept)
    usage = {event["nodeid"]: event for event in read_log(log) if event["event"] == "usage"}
    uss = {row["nodeid"]: row["uss_bytes"] for row in _lines(mem_file)}
    return usage, uss


def memory_cases(case_mb: int) -> None:
    root = workdir("accuracy-memory")
    write(root / "conftest.py", MEMORY_CONFTEST)
    write(root / "test_cases.py", MEMORY_CASES)
    methods = _methods()
    runs = {method: _memory_run(root, case_mb, method) for method in methods}
    usage, uss = runs["smaps"]
    rows = []
    for nodeid, record in usage.items():
        by_method = []
        for method in methods:
            found = runs[method][0][nodeid]
            by_method.append(f"{found['own_memory_bytes'] / MB:.1f} ({found['memory_method']})")
        rows.append(
            [
                nodeid.split("::test_")[-1].replace("_", " "),
                case_mb,
                *by_method,
                f"{record['peak_own_rss_bytes'] / MB:.1f}",
                f"{record['kernel_own_rss_bytes'] / MB:.1f}",
                f"{uss.get(nodeid, 0) / MB:.1f}",
            ]
        )
    print(
        table(
            [
                "case",
                "held (MB)",
                *[f"mem_mb figure, {method} (MB)" for method in methods],
                "old: RSS growth (MB)",
                "kernel: ru_maxrss - start (MB)",
                "USS at the end (MB)",
            ],
            rows,
            "The memory figure by method, against the kernel's own (MB = MiB)",
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller tests")
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        help="--taichi-limits-interval (default: the plugin's)",
    )
    parser.add_argument(
        "--memory-case-mb",
        type=int,
        default=None,
        help="MB each memory case holds (default 300; --quick: 100)",
    )
    args = parser.parse_args()
    memory = MEMORY_MB[:2] if args.quick else MEMORY_MB
    cpu = CPU_S[:2] if args.quick else CPU_S
    root = workdir("accuracy")
    write(root / "test_accuracy.py", TESTS.format(memory=list(memory), cpu=list(cpu)))
    log, self_file = root / "log.jsonl", root / "self.jsonl"
    extra = [] if args.interval is None else [f"--taichi-limits-interval={args.interval}"]
    cmd = pytest_cmd(
        sys.executable,
        "--taichi-limits",
        # A child per test: the kernel's figures (wait4's peak RSS and CPU) are per process,
        # and the CPU test burns until its own process has used the seconds asked for.
        "--taichi-limits-isolation=test",
        f"--taichi-limits-log={log}",
        *extra,
        "test_accuracy.py",
    )
    env = bench_env(BENCH_SELF_FILE=str(self_file))
    print(machine_line())
    print(f"workdir {root}\n", flush=True)
    check(run_timed(cmd, root, env), "accuracy run")

    usage = {event["nodeid"]: event for event in read_log(log) if event["event"] == "usage"}
    own = {row["nodeid"]: row["self_cpu_s"] for row in _lines(self_file)}

    rows = []
    for megabytes in memory:
        record = usage[f"test_accuracy.py::test_memory[{megabytes}]"]
        sampled = record["peak_own_rss_bytes"] / MB
        kernel = record["kernel_own_rss_bytes"] / MB
        rows.append(
            [
                f"{megabytes} MB",
                f"{sampled:.1f}",
                f"{kernel:.1f}",
                f"{sampled - kernel:+.2f} MB",
                record["samples"],
            ]
        )
    print(
        table(
            [
                "allocated",
                "sampled own peak (MB)",
                "kernel: ru_maxrss - start (MB)",
                "sampled - kernel",
                "samples",
            ],
            rows,
            "Own peak RSS: sampled against the kernel's figure",
        )
    )
    print()
    rows = []
    for seconds in cpu:
        nodeid = f"test_accuracy.py::test_cpu[{seconds}]"
        reported = usage[nodeid]["cpu_s"]
        rows.append(
            [
                f"{seconds:g} s",
                f"{reported:.3f}",
                f"{own[nodeid]:.3f}",
                f"{(reported - own[nodeid]) * 1000:+.1f} ms",
            ]
        )
    print(
        table(
            [
                "burned",
                "reported cpu_s",
                "test's own getrusage",
                "reported - test's own",
            ],
            rows,
            "CPU seconds: reported against what the test saw",
        )
    )
    print()
    memory_cases(args.memory_case_mb or (100 if args.quick else 300))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


if __name__ == "__main__":
    main()
