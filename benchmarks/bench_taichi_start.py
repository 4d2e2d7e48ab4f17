"""The per-test Taichi start in a forked child: the floor, and what the plugin adds on top.

A parent process imports Taichi, calls `ti.init(arch=ti.cpu)` (as a conftest's pytest_configure
does), defines a field's worth of kernels, and calls `ti.reset()` (as the plugin does before it
forks; a child forked from a process holding a Taichi program hangs). Then, alternately, it forks
children that:

- floor: call `ti.init(arch=ti.cpu)` themselves, make a field and launch K kernels (each
  loaded from the offline kernel cache after the first run), then `ti.reset()` (which a child
  must call for the cache to be written, or every child compiles its kernels again);
- plugin: run the plugin's own child path on the same work: the init wrapper and its context
  (the gpu_gb cap: `--gpu-gb` sets it) set in the child, the parent's init replayed lazily at
  the field's creation (taichi_support/reinit.py), the messages the child sends, and
  `finish_child`'s reset.

Each child times its phases with perf_counter and process_time and sends them back; the tables
show medians. `--profile` also writes a cProfile of one plugin child's phases (sorted by
cumulative time) to see where the plugin's share goes.

    python benchmarks/bench_taichi_start.py [--quick] [--children N] [--kernels K] [--gpu-gb G]
        [--profile FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
from typing import Any

from _common import bench_env, machine_line, median, table, workdir

PHASES = ("init", "first kernel", "other kernels", "reset", "total")


KERNEL = """
@ti.kernel
def kernel_{index}(a: ti.template(), factor: ti.i32):
    for i in a:
        a[i] = i * factor + {index}
"""


def _kernels(count: int) -> list[Any]:
    """`count` distinct kernels, from a module written for them (Taichi reads their source)."""
    import importlib

    folder = workdir("taichi-start")
    source = "import taichi as ti\n" + "".join(KERNEL.format(index=n) for n in range(count))
    (folder / "start_kernels.py").write_text(source)
    sys.path.insert(0, str(folder))
    module = importlib.import_module("start_kernels")
    return [getattr(module, f"kernel_{n}") for n in range(count)]


def _run_child(variant: str, kernels: list[Any], gpu_gb: float | None, write_fd: int) -> None:
    import taichi as ti

    from pytest_taichi_limits.config.budget import Budget
    from pytest_taichi_limits.ipc.channel import ChannelWriter
    from pytest_taichi_limits.taichi_support import cap

    marks: dict[str, float] = {}
    clock = time.perf_counter
    start, cpu_start = clock(), time.process_time()
    if variant == "plugin":
        sink = os.open(os.devnull, os.O_WRONLY)
        context = cap.prepare_child(Budget(gpu_gb=gpu_gb), ChannelWriter(sink))
        context.cap_gb = gpu_gb
        field = ti.field(ti.i32, shape=256)  # the replayed init happens here
    else:
        ti.init(arch=ti.cpu)
        field = ti.field(ti.i32, shape=256)
    marks["init"] = clock() - start
    at = clock()
    kernels[0](field, 1)
    marks["first kernel"] = clock() - at
    at = clock()
    for number, kernel in enumerate(kernels[1:], start=2):
        kernel(field, number)
    marks["other kernels"] = clock() - at
    at = clock()
    if variant == "plugin":
        cap.finish_child(ChannelWriter(os.open(os.devnull, os.O_WRONLY)))
    else:
        ti.reset()
    marks["reset"] = clock() - at
    marks["total"] = clock() - start
    marks["cpu"] = time.process_time() - cpu_start
    os.write(write_fd, json.dumps(marks).encode())


def fork_child(
    variant: str, kernels: list[Any], gpu_gb: float | None, profile: str | None = None
) -> dict[str, float]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            if profile:
                profiler = cProfile.Profile()
                profiler.runcall(_run_child, variant, kernels, gpu_gb, write_fd)
                profiler.dump_stats(profile)
            else:
                _run_child(variant, kernels, gpu_gb, write_fd)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    data = b""
    while chunk := os.read(read_fd, 65536):
        data += chunk
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        raise SystemExit(f"a {variant} child failed (wait status {status})")
    figures: dict[str, float] = json.loads(data)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few children")
    parser.add_argument("--children", type=int, default=None, help="children per variant (20)")
    parser.add_argument("--kernels", type=int, default=10, help="kernels each child launches")
    parser.add_argument("--gpu-gb", type=float, default=None, help="the plugin child's gpu_gb")
    parser.add_argument("--profile", default=None, help="cProfile one plugin child into FILE")
    args = parser.parse_args()
    children = args.children or (4 if args.quick else 20)
    os.environ.update(bench_env())
    # A fresh cache of its own, outside the checkout: the first child fills it.
    os.environ.setdefault("TI_OFFLINE_CACHE_FILE_PATH", str(workdir("start") / "ticache"))

    import taichi as ti

    # What the pytest process has imported when the plugin forks: nothing of it is imported
    # again in a child.
    from pytest_taichi_limits.child import loop  # noqa: F401
    from pytest_taichi_limits.measure import gpu  # noqa: F401
    from pytest_taichi_limits.taichi_support import hooks, reinit

    hooks.install_init_wrapper()  # as the plugin does in the pytest process
    ti.init(arch=ti.cpu)  # a conftest's pytest_configure
    kernels = _kernels(args.kernels)
    reinit.reset_for_fork(reinit.InitCall((), {"arch": ti.cpu}))
    fork_child("floor", kernels, None)  # fills the offline kernel cache; not counted

    results: dict[str, list[dict[str, float]]] = {"floor": [], "plugin": []}
    for _ in range(children):
        for variant in results:
            results[variant].append(fork_child(variant, kernels, args.gpu_gb))
    if args.profile:
        fork_child("plugin", kernels, args.gpu_gb, args.profile)

    print(machine_line())
    print(f"children per variant: {children}; kernels per child: {args.kernels}; ", end="")
    print(f"gpu_gb: {args.gpu_gb}\n")
    rows = []
    for phase in (*PHASES, "cpu"):
        floor = median([run[phase] for run in results["floor"]]) * 1000
        ours = median([run[phase] for run in results["plugin"]]) * 1000
        rows.append([phase, f"{floor:.1f} ms", f"{ours:.1f} ms", f"{ours - floor:+.1f} ms"])
    print(
        table(
            ["phase (a child forked after ti.reset())", "floor", "plugin path", "plugin share"],
            rows,
            "The Taichi start per test (median)",
        )
    )
    if args.profile:
        print(f"\ncProfile of one plugin child: {args.profile}")
        stats = pstats.Stats(args.profile, stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats("pytest_taichi_limits", 15)


if __name__ == "__main__":
    main()
