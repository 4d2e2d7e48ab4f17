"""Shared helpers for the benchmark scripts: timed pytest runs, medians, tables.

The scripts run pytest in subprocesses (real forks, real signals, a fresh interpreter each run),
interleave the variants they compare (A B C A B C ...) so that a noisy machine slows all of them
alike, and report medians.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: pytest 8 + pytest-forked + taichi (pytest-forked does not work on pytest 9).
VENV_PYTEST8 = HERE / ".venv-pytest8"
MB = 1024 * 1024

#: A plugin (-p bench_timer) that appends the wall time and the CPU time (pytest's own plus that
#: of every child it reaped) of pytest's test loop to $BENCH_LOOP_FILE, as "WALL CPU": interpreter
#: start-up and collection are left out. CPU time is steadier than wall time on a busy machine.
TIMER_PLUGIN = """
import os, resource, time, pytest

def _cpu():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    start, cpu = time.perf_counter(), _cpu()
    try:
        return (yield)
    finally:
        with open(os.environ["BENCH_LOOP_FILE"], "a") as out:
            out.write(f"{time.perf_counter() - start} {_cpu() - cpu}\\n")
"""


def bench_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["TI_SKIP_VERSION_CHECK"] = "ON"  # each ti.init would otherwise try the network
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    env.update(extra)
    return env


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"ptl-bench-{prefix}-"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@dataclass
class Timed:
    wall_s: float
    returncode: int
    stdout: str


def run_timed(
    cmd: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 1800
) -> Timed:
    start = time.perf_counter()
    proc = subprocess.run(
        list(cmd),
        cwd=cwd,
        env=env or bench_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Timed(time.perf_counter() - start, proc.returncode, proc.stdout)


def pytest_cmd(python: str = sys.executable, *args: str) -> list[str]:
    return [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> str:
    """A GitHub-flavoured markdown table (readable in a terminal too)."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [
        max(len(h), *(len(row[i]) for row in cells)) if cells else len(h)
        for i, h in enumerate(headers)
    ]
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def machine_line() -> str:
    load = os.getloadavg()
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"
    )


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check(timed: Timed, what: str, expect_rc: Sequence[int] = (0,)) -> None:
    if timed.returncode not in expect_rc:
        tail = "\n".join(timed.stdout.splitlines()[-30:])
        raise SystemExit(f"{what}: pytest exited with {timed.returncode}\n{tail}")


def ensure_pytest8_venv(quiet: bool = True) -> Path | None:
    """Create (once) the pytest 8 venv with pytest-forked and taichi; its python, or None."""
    python = VENV_PYTEST8 / "bin" / "python"
    marker = VENV_PYTEST8 / ".ready"
    if marker.exists():
        return python
    print(f"creating {VENV_PYTEST8} (pytest 8 + pytest-forked + taichi; once) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV_PYTEST8)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                *(["-q"] if quiet else []),
                "pytest>=8,<9",
                "pytest-forked",
                "taichi==1.7.4",
                "psutil",
            ],
            check=True,
        )
    except (subprocess.CalledProcessError, OSError) as error:
        print(f"  could not create it ({error}); pytest-forked columns stay empty")
        return None
    marker.write_text("ok\n")
    return python


#: The values of --taichi-limits-isolation, in the order the tables show them.
ISOLATION_MODES = ("test", "module", "session")


def _pytest_help(python: str, timeout_s: float) -> str | None:
    try:
        proc = subprocess.run(
            [python, "-m", "pytest", "--help", "-p", "no:cacheprovider"],
            cwd=tempfile.gettempdir(),
            env=bench_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        print(f"TIMEOUT: `pytest --help` took over {timeout_s:g} s; isolation columns stay n/a")
        return None
    return proc.stdout


def isolation_modes(python: str = sys.executable, timeout_s: float = 120) -> tuple[str, ...]:
    """The --taichi-limits-isolation values the installed plugin offers; () when it has none.

    Read from `pytest --help`, so a benchmark measures the plugin that is installed rather than
    failing on an option an older one does not have.
    """
    text = _pytest_help(python, timeout_s)
    match = (
        None if text is None else re.search(r"--taichi-limits-isolation(?:=\{([a-z,]+)\})?", text)
    )
    if match is None:
        return ()
    if match.group(1) is None:  # the help names no choices: try all three
        return ISOLATION_MODES
    offered = match.group(1).split(",")
    return tuple(mode for mode in ISOLATION_MODES if mode in offered)


def default_isolation(python: str = sys.executable, timeout_s: float = 120) -> str | None:
    """The isolation `--taichi-limits` uses without the option ("Default X" in its help)."""
    text = _pytest_help(python, timeout_s) or ""
    at = text.find("--taichi-limits-isolation")
    if at < 0:
        return None
    end = text.find("\n  --", at + 1)
    match = re.search(r"Default\s+(\w+)", text[at : end if end > 0 else len(text)])
    return None if match is None else match.group(1)


def junit_outcomes(junit: Path) -> dict[str, str]:
    """Node id (classname::name) -> passed, failed, error or skipped, from a --junitxml file."""
    from xml.etree import ElementTree

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
