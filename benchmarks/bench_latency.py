"""Enforcement latency: how far past mem_mb=500 a test growing at ~1 GB/s gets before it is stopped.

The test writes (so the pages are resident) 4 MB chunks, paced to a target rate, up to a cap,
then holds its memory. It is run

- under `--taichi-limits --taichi-limits-mem-mb 500` at several `--taichi-limits-interval`
  values (0.01 s is the default), by each memory method this machine has (a memory cgroup per
  worker, with the kernel's cap a little above mem_mb, where one can be made; smaps); the
  figures come from `--taichi-limits-log`: the own memory when the violation was caught, and the
  kernel's peak (ru_maxrss from wait4 minus the RSS the child started with) -- how far the test
  really got before it was stopped -- and, with a cgroup, how far its charge got past the cap;
- as a plain pytest run watched by the common recipe: a psutil loop that checks the RSS once a
  second and kills the process when it is over the limit (the peak again from wait4).

    python benchmarks/bench_latency.py [--quick] [--repeats N] [--rate-mb-s 1000]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
from _common import (
    MB,
    bench_env,
    machine_line,
    median,
    pytest_cmd,
    read_log,
    table,
    workdir,
    write,
)

LIMIT_MB = 500
INTERVALS = (0.001, 0.01, 0.1)  # 0.01 is the default

GROW_TEST = """
import os, time

CHUNK = 4 * 1024 * 1024
RATE = float(os.environ["BENCH_RATE_BYTES_PER_S"])
CAP = int(os.environ["BENCH_CAP_BYTES"])


def _rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_grow():
    start_file = os.environ.get("BENCH_START_FILE")
    if start_file:
        with open(start_file, "w") as out:
            out.write(str(_rss()))
    chunks = []
    grown = 0
    begin = time.perf_counter()
    while grown < CAP:
        chunks.append(b"\\x01" * CHUNK)  # written byte by byte, so resident at once
        grown += CHUNK
        ahead = grown / RATE - (time.perf_counter() - begin)
        if ahead > 0:
            time.sleep(ahead)
    elapsed = time.perf_counter() - begin
    with open(os.environ["BENCH_RATE_FILE"], "w") as out:
        out.write(str(grown / elapsed))
    time.sleep(30)  # hold it: whoever watches must stop the test
"""


#: The cgroup's own account, in a mem_mb violation's detail (measure/meter.py, cap_detail).
CAP_DETAIL = re.compile(r"charged at most (\d+) bytes against its cap of (\d+) \((\d+) bytes above")


def run_plugin(
    root: Path, interval: float, env: dict[str, str], method: str = "smaps"
) -> dict[str, float]:
    log = root / f"log-{interval}-{time.monotonic_ns()}.jsonl"
    cmd = pytest_cmd(
        sys.executable,
        "--taichi-limits",
        f"--taichi-limits-memory-method={method}",
        f"--taichi-limits-mem-mb={LIMIT_MB}",
        f"--taichi-limits-interval={interval}",
        f"--taichi-limits-log={log}",
        "test_grow.py",
    )
    proc = subprocess.run(
        cmd,
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )
    events = read_log(log)
    usage = next((e for e in events if e["event"] == "usage"), None)
    violation = next((e for e in events if e["event"] == "violation"), None)
    if usage is None or violation is None or violation["resource"] != "mem_mb":
        raise SystemExit(
            f"no mem_mb violation at interval {interval} (rc {proc.returncode}):\n"
            + proc.stdout[-3000:]
        )
    cap = CAP_DETAIL.search(str(violation.get("detail") or ""))
    return {
        "detected_mb": float(violation["measured"]),
        "peak_mb": usage["kernel_own_rss_bytes"] / MB,
        "wall_s": float(usage["wall_s"]),
        "above_cap_bytes": float(cap.group(3)) if cap else float("nan"),
    }


def run_psutil_recipe(root: Path, env: dict[str, str]) -> dict[str, float]:
    """The usual watchdog: poll RSS once a second, kill when over the limit."""
    start_file = root / f"start-{time.monotonic_ns()}.txt"
    env = dict(env, BENCH_START_FILE=str(start_file))
    proc = subprocess.Popen(
        pytest_cmd(sys.executable, "test_grow.py"),
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    watched = psutil.Process(proc.pid)
    detected = float("nan")
    begin = time.monotonic()
    while time.monotonic() - begin < 120:
        if start_file.exists() and start_file.read_text():
            own = watched.memory_info().rss - int(start_file.read_text())
            if own > LIMIT_MB * MB:
                detected = own / MB
                watched.kill()
                break
        time.sleep(1.0)
    else:
        proc.kill()
    _, _, rusage = os.wait4(proc.pid, 0)
    proc.returncode = -9  # reaped here, so that Popen does not wait for it again
    start = int(start_file.read_text()) if start_file.exists() else 0
    return {"detected_mb": detected, "peak_mb": (rusage.ru_maxrss * 1024 - start) / MB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--rate-mb-s", type=float, default=1000.0, help="growth rate of the test (MB/s)"
    )
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    root = workdir("latency")
    write(root / "test_grow.py", GROW_TEST)
    rate_file = root / "rate.txt"
    env = bench_env(
        BENCH_RATE_BYTES_PER_S=str(args.rate_mb_s * MB),
        BENCH_CAP_BYTES=str(3 * LIMIT_MB * MB),
        BENCH_RATE_FILE=str(rate_file),
    )

    # The rate the test reaches on this machine (page faults may be slower than asked for).
    subprocess.run(
        pytest_cmd(sys.executable, "test_grow.py"),
        cwd=root,
        env=dict(env, BENCH_CAP_BYTES=str(LIMIT_MB * MB)),
        stdout=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    reached = float(rate_file.read_text()) / MB if rate_file.exists() else float("nan")

    print(machine_line())
    print(
        f"limit mem_mb={LIMIT_MB}; asked growth {args.rate_mb_s:g} MB/s, reached "
        f"{reached:.0f} MB/s; repeats: {repeats}; workdir {root}\n",
        flush=True,
    )
    from pytest_taichi_limits.measure import cgroup

    methods = ["smaps"]
    if isinstance(cgroup.detect(), cgroup.CgroupSupport):
        methods.insert(0, "cgroup")
    plugin_runs = [(method, interval) for method in methods for interval in INTERVALS]
    variants = [
        f"taichi-limits {method}, interval {interval:g} s"
        + (" (default)" if interval == 0.01 else "")
        for method, interval in plugin_runs
    ]
    variants.append("psutil loop, 1 s polls")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (method, interval) in zip(variants, plugin_runs, strict=False):
            results[name].append(run_plugin(root, interval, env, method))
        results[variants[-1]].append(run_psutil_recipe(root, env))

    rows = []
    for name, runs in results.items():
        detected = median([run["detected_mb"] for run in runs])
        peak = median([run["peak_mb"] for run in runs])
        over = peak - LIMIT_MB
        above_cap = median([run.get("above_cap_bytes", float("nan")) for run in runs])
        rows.append(
            [
                name,
                f"{detected:.0f}",
                f"{peak:.0f}",
                f"{over:+.0f} MB",
                f"{over / LIMIT_MB * 100:+.1f} %",
                "n/a" if above_cap != above_cap else f"{above_cap:.0f} B",
            ]
        )
    print(
        table(
            [
                "watcher",
                "own RSS when caught (MB)",
                "peak own RSS (kernel, MB)",
                "past the limit",
                "past the limit (%)",
                "past the cgroup's cap",
            ],
            rows,
            f"Enforcement latency: mem_mb={LIMIT_MB}, test growing at ~{reached:.0f} MB/s "
            f"(median of {repeats})",
        )
    )


if __name__ == "__main__":
    main()
