#!/usr/bin/env python3
"""Verify the GPU cap and the GPU memory measurement on an NVIDIA machine (one prepared run).

What it checks, with Taichi on CUDA and a budget of gpu_gb=1:
  sparse   a 2 GiB pointer (sparse) field, initialised asking device_memory_GB=4: the ti.init
           cap clamps the pool to 1 GB, and the test must fail as a gpu_gb violation (Taichi's
           pool running out, or the NVML measurement if it sees the pool plus the CUDA context
           above 1 GB first: the output says which caught it);
  dense    a 2 GiB ndarray: dense data is allocated outside Taichi's pool (cuMemAllocAsync), so
           only the NVML measurement can catch it: a gpu_gb violation detected by NVML;
  within   a 64 MiB field: passes, with its measured GPU peak.
Then admission (a second run, `-n 2 --taichi-limits-admit`, CUDA_VISIBLE_DEVICES=0 so that one
card is shared): two tests with gpu_gb = 0.6 x the card's memory each hold a small CUDA field for
3 s and record when they ran; with admission the two intervals must not overlap (0.6 + 0.6 does
not fit one card), neither test may fail, and the usage records carry admission_wait_s.
NOT YET RUN on a GPU (written on a machine without one): the first GPU session must run it.
It prints one line per test with the measured peak and what caught it, and exits 0 when every
expectation held, 1 when one did not, 2 when the machine cannot run the check (no NVIDIA GPU,
no NVML, no Taichi).

Needs Python, pytest, pluggy, psutil and numpy. Taichi, dill and nvidia-ml-py are imported when
installed, otherwise installed (offline, --no-deps) from wheels in --wheels DIR (default
$GPU_CHECK_WHEELS, else shared/wheels or benchmarks/wheels in this repository) into a temporary
directory. The plugin is used from this checkout.

    python benchmarks/gpu_check.py [--wheels DIR] [--keep]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GIB = 1024**3
CAP_GB = 1

TESTS = f"""
import time

import pytest
import taichi as ti

GIB = 1024**3


@pytest.mark.taichi_limits(gpu_gb={CAP_GB}, wall_s=180)
def test_sparse():
    ti.init(arch=ti.cuda, device_memory_GB=4)  # asks for more than the cap: clamped to 1
    assert ti.lang.impl.current_cfg().arch == ti.cuda, "Taichi did not start on CUDA"
    x = ti.field(ti.f32)
    blocks, per_block = 2048, 2**18  # 2048 * 2**18 * 4 B = 2 GiB once every block is active
    ti.root.pointer(ti.i, blocks).dense(ti.i, per_block).place(x)

    @ti.kernel
    def activate_all():
        for i in range(blocks * per_block):
            x[i] = 1.0

    activate_all()
    ti.sync()
    time.sleep(1.0)  # whatever was allocated stays long enough to be sampled


@pytest.mark.taichi_limits(gpu_gb={CAP_GB}, wall_s=180)
def test_dense():
    ti.init(arch=ti.cuda)
    assert ti.lang.impl.current_cfg().arch == ti.cuda, "Taichi did not start on CUDA"
    data = ti.ndarray(ti.f32, shape=2 * GIB // 4)

    @ti.kernel
    def fill(a: ti.types.ndarray()):
        for i in a:
            a[i] = 1.0

    fill(data)
    ti.sync()
    time.sleep(2.0)  # NVML is read every 50 ms: this must be seen


@pytest.mark.taichi_limits(gpu_gb={CAP_GB}, wall_s=180)
def test_within():
    ti.init(arch=ti.cuda)
    assert ti.lang.impl.current_cfg().arch == ti.cuda, "Taichi did not start on CUDA"
    x = ti.field(ti.f32, shape=16 * 1024**2)  # 64 MiB

    @ti.kernel
    def fill():
        for i in x:
            x[i] = 2.0

    fill()
    ti.sync()
    assert x[123] == 2.0
    time.sleep(0.5)
"""

#: Two tests that each reserve 0.6 of the card: admission must run them one after the other.
ADMISSION_TESTS = """
import json
import os
import pathlib
import time

import pytest
import taichi as ti

LOG = pathlib.Path(os.environ["GPU_CHECK_TIMESTAMPS"])


@pytest.mark.taichi_limits(gpu_gb={gpu_gb}, wall_s=180)
@pytest.mark.parametrize("number", range(2))
def test_share_card(number):
    started = time.time()
    ti.init(arch=ti.cuda)
    assert ti.lang.impl.current_cfg().arch == ti.cuda, "Taichi did not start on CUDA"
    x = ti.field(ti.f32, shape=16 * 1024**2)  # 64 MiB
    x.fill(1.0)
    ti.sync()
    time.sleep(3.0)
    (LOG / f"{{number}}.json").write_text(json.dumps([started, time.time()]))
"""


def fail_setup(message: str) -> int:
    print(f"gpu_check: cannot run here: {message}", flush=True)
    return 2


def default_wheels() -> Path | None:
    for candidate in (
        os.environ.get("GPU_CHECK_WHEELS"),
        REPO / "shared" / "wheels",
        REPO / "benchmarks" / "wheels",
    ):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def install_missing(wheels: Path | None, target: Path) -> str | None:
    """Install taichi, dill, nvidia-ml-py from local wheels where missing; None or a reason."""
    missing = [
        name
        for name, module in (("taichi", "taichi"), ("dill", "dill"), ("nvidia-ml-py", "pynvml"))
        if importlib.util.find_spec(module) is None
    ]
    if not missing:
        return None
    if wheels is None:
        return (
            f"{', '.join(missing)} not installed and no wheel directory "
            "(--wheels DIR or $GPU_CHECK_WHEELS)"
        )
    files = [
        str(path)
        for path in sorted(wheels.glob("*.whl"))
        if any(path.name.lower().replace("_", "-").startswith(name) for name in missing)
    ]
    if not files:
        return f"{', '.join(missing)} not installed and no matching wheel in {wheels}"
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--no-deps",
        "--target",
        str(target),
        *files,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"pip could not install {files}: {done.stderr.strip()[-2000:]}"
    sys.path.insert(0, str(target))
    return None


def gpu_reason() -> str | None:
    """Why this machine cannot run the check, or None."""
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py (pynvml) is not importable"
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as error:
        return f"NVML unavailable ({error}): no NVIDIA driver or GPU"
    if count == 0:
        return "NVML sees no NVIDIA GPU"
    names = []
    for index in range(count):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        total = pynvml.nvmlDeviceGetMemoryInfo(handle).total
        names.append(f"{index}: {name} ({total / GIB:.1f} GiB)")
    print("gpu_check: devices " + "; ".join(names), flush=True)
    return None


def plugin_installed() -> bool:
    return any(
        entry.name == "taichi_limits" for entry in importlib.metadata.entry_points(group="pytest11")
    )


def run_suite(workdir: Path, extra_path: Path) -> tuple[int, str, dict[str, dict]]:
    (workdir / "test_gpu_check.py").write_text(textwrap.dedent(TESTS))
    log = workdir / "usage.jsonl"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(extra_path), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["TI_SKIP_VERSION_CHECK"] = "ON"
    env.pop("TI_ARCH", None)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-rA",
        "-v",
        f"--taichi-limits-log={log}",
        "--rootdir",
        str(workdir),
        str(workdir),
    ]
    if not plugin_installed():
        command[3:3] = ["-p", "pytest_taichi_limits.plugin"]
    done = subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=540, check=False
    )
    events: dict[str, dict] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            event = json.loads(line)
            name = event["nodeid"].rsplit("::", 1)[-1]
            events.setdefault(name, {})[event["event"]] = event
    return done.returncode, done.stdout + done.stderr, events


def smallest_card_bytes() -> int:
    import pynvml

    return min(
        pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).total
        for index in range(pynvml.nvmlDeviceGetCount())
    )


def run_admission(workdir: Path, extra_path: Path, card_bytes: int) -> int:
    """Two tests of 0.6 card under -n 2 with admission: no overlap, no failure. 0 when so."""
    gpu_gb = round(0.6 * card_bytes / GIB, 2)
    (workdir / "test_gpu_admission.py").write_text(
        textwrap.dedent(ADMISSION_TESTS.format(gpu_gb=gpu_gb))
    )
    timestamps, log = workdir / "timestamps", workdir / "admission.jsonl"
    timestamps.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(extra_path), *filter(None, [env.get("PYTHONPATH")])]
    )
    env.update(
        TI_SKIP_VERSION_CHECK="ON",
        CUDA_VISIBLE_DEVICES="0",
        GPU_CHECK_TIMESTAMPS=str(timestamps),
        PYTEST_TAICHI_LIMITS_LEDGER=str(workdir / "ledger"),
    )
    env.pop("TI_ARCH", None)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-rA",
        "-n",
        "2",
        "--taichi-limits-admit",
        f"--taichi-limits-log={log}",
        "--rootdir",
        str(workdir),
        str(workdir / "test_gpu_admission.py"),
    ]
    if not plugin_installed():
        command[3:3] = ["-p", "pytest_taichi_limits.plugin"]
    done = subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=540, check=False
    )
    print((done.stdout + done.stderr)[-8000:], flush=True)
    problems = []
    if done.returncode != 0:
        problems.append(f"pytest exited with {done.returncode} (both tests must pass)")
    intervals = [json.loads(path.read_text()) for path in sorted(timestamps.glob("*.json"))]
    if len(intervals) != 2:
        problems.append(f"{len(intervals)} of 2 tests recorded their run")
    elif intervals[0][0] < intervals[1][1] and intervals[1][0] < intervals[0][1]:
        problems.append(f"the two tests of gpu_gb={gpu_gb} ran at the same time: {intervals}")
    waits = [
        json.loads(line).get("extra", {}).get("admission_wait_s")
        for line in (log.read_text().splitlines() if log.exists() else [])
        if json.loads(line).get("event") == "usage"
    ]
    if len(waits) != 2 or None in waits:
        problems.append(f"usage records without admission_wait_s: {waits}")
    print(
        f"\ngpu_check admission (2 x gpu_gb={gpu_gb} on one {card_bytes / GIB:.1f} GiB card, "
        f"-n 2): intervals {intervals}, waits {waits}"
    )
    for problem in problems:
        print(f"FAILED: admission: {problem}")
    return 1 if problems else 0


def gb(size: int | None) -> str:
    return "not measured" if size is None else f"{size / GIB:.3f} GiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    try:
        site = workdir / "site"
        reason = install_missing(args.wheels or default_wheels(), site)
        if reason is None:
            reason = gpu_reason()
        if reason is not None:
            return fail_setup(reason)
        tests = workdir / "tests"
        tests.mkdir()
        returncode, output, events = run_suite(tests, site)
        print(output[-20000:], flush=True)
        print(f"gpu_check: pytest exited with status {returncode}")
        verdict = report(events)
        admission_dir = workdir / "admission"
        admission_dir.mkdir()
        return max(verdict, run_admission(admission_dir, site, smallest_card_bytes()))
    finally:
        if args.keep:
            print(f"gpu_check: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def report(events: dict[str, dict]) -> int:
    problems: list[str] = []
    print("\ngpu_check results (gpu_gb=1):")
    print(f"{'test':<8} {'GPU peak (NVML)':<18} {'outcome':<44} clamp")
    for name in ("sparse", "dense", "within"):
        record = events.get(f"test_{name}", {})
        usage, violation = record.get("usage"), record.get("violation")
        if usage is None:
            problems.append(f"test_{name}: no usage record (did the run start?)")
            continue
        outcome = (
            "passed budget"
            if violation is None
            else f"{violation['resource']} by {violation['detected_by']}"
        )
        clamp = "; ".join(usage.get("gpu_clamps", [])) or "-"
        peak = usage["gpu_peak_bytes"]
        print(f"{name:<8} {gb(peak):<18} {outcome:<44} {clamp}")
        if peak is None:
            problems.append(f"test_{name}: GPU memory {usage['gpu_note']}")
        if name in ("sparse", "dense") and (violation is None or violation["resource"] != "gpu_gb"):
            problems.append(f"test_{name}: expected a gpu_gb violation, got {outcome}")
        if name == "sparse":
            if "clamped to device_memory_GB=1" not in clamp:
                problems.append("test_sparse: ti.init(device_memory_GB=4) was not clamped to 1")
            if violation is not None and not violation["detected_by"].startswith("Taichi"):
                print(
                    "  note: the NVML measurement caught the sparse test before Taichi's pool "
                    "ran out (pool of 1 GB plus the CUDA context is above 1 GB)"
                )
        if name == "dense" and violation is not None and "NVML" not in violation["detected_by"]:
            problems.append(f"test_dense: expected detection by NVML, got {outcome}")
        if name == "within" and violation is not None:
            problems.append(f"test_within: expected to pass, got {outcome}")
    for problem in problems:
        print(f"FAILED: {problem}")
    print(
        "gpu_check: "
        + ("all expectations held" if not problems else f"{len(problems)} expectation(s) failed")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
