"""Command-line options and ini keys, and turning them into validated settings.

Every value may come from the command line or the ini file; the command line wins.
Budgets from markers beat both (see config/budget.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from .budget import BUDGET_KEYS, BUILTIN_DEFAULTS, BudgetError, parse_text
from .settings import ISOLATIONS, MEMORY_METHODS, MODES, Settings

_BUDGET_HELP = {
    "cpu_s": "CPU seconds (user+system, all threads and subprocesses)",
    "mem_mb": "MiB (2**20 bytes, despite the key's name) of memory the test makes the machine "
    "hold: anonymous and shared memory above what was there when it started, page cache not "
    "counted (--taichi-limits-memory-method says how it is measured; never an address-space "
    "limit)",
    "wall_s": "wall-clock seconds, enforced from outside so native code holding the GIL "
    "is stopped too",
    "gpu_gb": "GiB (2**30 bytes) of GPU memory: caps ti.init(device_memory_GB=...) and, where NVML "
    "is available, the measured GPU memory of the test's processes",
}

_SETTING_DEFAULTS = {"interval": 0.01, "grace": 2.0}


def _flag(key: str) -> str:
    return "--taichi-limits-" + key.replace("_", "-")


def _ini(key: str) -> str:
    return "taichi_limits_" + key


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup(
        "taichi-limits",
        "resource budgets for Taichi tests (precedence: marker > command line > ini > "
        "built-in default)",
    )
    group.addoption(
        "--taichi-limits",
        action="store_true",
        default=None,
        dest="taichi_limits",
        help="run every collected test in a supervised child process with a budget. Tests "
        "marked @pytest.mark.taichi_limits(...) are supervised even without it. "
        "(ini: taichi_limits = true)",
    )
    parser.addini(
        "taichi_limits", "supervise every test (like --taichi-limits)", type="bool", default=False
    )
    for key in BUDGET_KEYS:
        default = BUILTIN_DEFAULTS[key]
        shown = "off" if default is None else f"{default:g}"
        group.addoption(
            _flag(key),
            dest=_ini(key),
            metavar="N|off",
            default=None,
            help=f"default {key} for supervised tests: {_BUDGET_HELP[key]}; 'off' for no "
            f"limit. Built-in default: {shown}. (ini: {_ini(key)})",
        )
        parser.addini(_ini(key), f"default {key} for supervised tests ('off' for none)")
    group.addoption(
        "--taichi-limits-interval",
        dest="taichi_limits_interval",
        metavar="SECONDS",
        default=None,
        help="finest interval at which the supervisor samples memory and CPU of the test's "
        "processes, used as a limit comes near; far from every limit it samples every 0.1 s "
        f"(default {_SETTING_DEFAULTS['interval']:g}; ini: taichi_limits_interval)",
    )
    parser.addini("taichi_limits_interval", "supervisor sampling interval in seconds")
    group.addoption(
        "--taichi-limits-grace",
        dest="taichi_limits_grace",
        metavar="SECONDS",
        default=None,
        help="after a violation, seconds between SIGTERM and SIGKILL "
        f"(default {_SETTING_DEFAULTS['grace']:g}; ini: taichi_limits_grace)",
    )
    parser.addini("taichi_limits_grace", "seconds between SIGTERM and SIGKILL")
    group.addoption(
        "--taichi-limits-mode",
        dest="taichi_limits_mode",
        choices=MODES,
        default=None,
        help="how the child starts: fork (fast), spawn (a fresh interpreter, needed once Taichi "
        "was initialised in the pytest process), auto (fork unless Taichi is initialised). "
        "Default auto. (ini: taichi_limits_mode)",
    )
    parser.addini("taichi_limits_mode", "auto, fork or spawn")
    group.addoption(
        "--taichi-limits-isolation",
        dest="taichi_limits_isolation",
        choices=ISOLATIONS,
        default=None,
        help="how many tests share one supervised child: test (a fresh child per test; a "
        "module that needs a fresh interpreter still shares one worker), module (one child "
        "per module: module fixtures set up once), session (one child runs every test in "
        "turn, as plain pytest does). Budgets, figures and reports stay per test; a "
        "violation or crash ends the child and the next test gets a new one. The marker "
        "key isolation= overrides it per test. Default test. (ini: taichi_limits_isolation)",
    )
    parser.addini("taichi_limits_isolation", "test, module or session")
    group.addoption(
        "--taichi-limits-clean-shm",
        dest="taichi_limits_clean_shm",
        action="store_true",
        default=False,
        help="remove what a supervised test created in /dev/shm and left there (each test's "
        "report lists such files either way)",
    )
    group.addoption(
        "--taichi-limits-memory-method",
        dest="taichi_limits_memory_method",
        choices=MEMORY_METHODS,
        default=None,
        help="how mem_mb is measured: cgroup (a memory cgroup per worker: the kernel's figure "
        "and a hard cap; an error where none can be made), smaps (/proc/<pid>/smaps_rollup, "
        "no cgroup), auto (cgroup where one can be made, else smaps). Default auto; "
        "docs/memory.md. (ini: taichi_limits_memory_method)",
    )
    parser.addini("taichi_limits_memory_method", "auto, cgroup or smaps")
    group.addoption(
        "--taichi-limits-arch",
        dest="taichi_limits_arch",
        metavar="ARCH",
        default=None,
        help="arch for the taichi_limits_ti fixture (cpu, x64, cuda, vulkan, ...). Default "
        "cpu. (ini: taichi_limits_arch)",
    )
    parser.addini("taichi_limits_arch", "arch for the taichi_limits_ti fixture")


@dataclass(frozen=True)
class Options:
    supervise_all: bool
    cli_budget: dict[str, float | None]
    ini_budget: dict[str, float | None]
    settings: Settings


def _raw(config: pytest.Config, key: str) -> tuple[str | None, str | None]:
    """(command-line text, ini text) of one option, None where not given."""
    cli = config.getoption(key)
    ini = config.getini(key)
    return (None if cli is None else str(cli)), (str(ini) if ini not in (None, "", []) else None)


def _budget_layer(config: pytest.Config, source: int) -> dict[str, float | None]:
    layer: dict[str, float | None] = {}
    for key in BUDGET_KEYS:
        text = _raw(config, _ini(key))[source]
        if text is None:
            continue
        where = _flag(key) if source == 0 else f"ini option {_ini(key)}"
        try:
            layer[key] = parse_text(key, text)
        except BudgetError as error:
            raise pytest.UsageError(f"{where}: {error}") from None
    return layer


def _seconds(config: pytest.Config, name: str, low: float, high: float) -> float:
    cli, ini = _raw(config, f"taichi_limits_{name}")
    text = cli if cli is not None else ini
    if text is None:
        return _SETTING_DEFAULTS[name]
    where = f"--taichi-limits-{name}" if cli is not None else f"ini option taichi_limits_{name}"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (low <= value <= high):
        raise pytest.UsageError(
            f"{where} must be a number of seconds from {low:g} to {high:g}, got {text!r}"
        )
    return value


def _ini_flag(config: pytest.Config, key: str) -> bool:
    try:
        return bool(config.getini(key))
    except ValueError as error:  # pytest's bool conversion; else an INTERNALERROR traceback
        raise pytest.UsageError(
            f"ini option {key} must be true or false (also yes/no, on/off, 1/0): {error}"
        ) from None


def read_options(config: pytest.Config) -> Options:
    """Validate every option; raise pytest.UsageError naming the first bad one."""
    cli_flag = config.getoption("taichi_limits")
    supervise_all = bool(cli_flag) if cli_flag is not None else _ini_flag(config, "taichi_limits")
    cli_mode, ini_mode = _raw(config, "taichi_limits_mode")
    mode = cli_mode or ini_mode or "auto"
    if mode not in MODES:
        raise pytest.UsageError(
            f"ini option taichi_limits_mode must be one of {', '.join(MODES)}, got {mode!r}"
        )
    cli_isolation, ini_isolation = _raw(config, "taichi_limits_isolation")
    isolation = cli_isolation or ini_isolation or "test"
    if isolation not in ISOLATIONS:
        raise pytest.UsageError(
            f"ini option taichi_limits_isolation must be one of {', '.join(ISOLATIONS)}, got "
            f"{isolation!r}"
        )
    cli_method, ini_method = _raw(config, "taichi_limits_memory_method")
    memory_method = cli_method or ini_method or "auto"
    if memory_method not in MEMORY_METHODS:
        raise pytest.UsageError(
            f"ini option taichi_limits_memory_method must be one of {', '.join(MEMORY_METHODS)}, "
            f"got {memory_method!r}"
        )
    cli_arch, ini_arch = _raw(config, "taichi_limits_arch")
    settings = Settings(
        interval_s=_seconds(config, "interval", 0.001, 10.0),
        grace_s=_seconds(config, "grace", 0.0, 600.0),
        mode=mode,
        arch=cli_arch or ini_arch,
        isolation=isolation,
        clean_shm=bool(config.getoption("taichi_limits_clean_shm", False)),
        memory_method=memory_method,
    )
    return Options(
        supervise_all=supervise_all,
        cli_budget=_budget_layer(config, 0),
        ini_budget=_budget_layer(config, 1),
        settings=settings,
    )
