"""Budgets: what a supervised test may use, and where each number comes from.

Precedence, for every key separately: marker > command line > ini > built-in default.
Markers merge per key; the closest one wins (function over class over module).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MARKER_NAME = "taichi_limits"

# Values that could only be typos (or attempts to switch a limit off by overflow).
_SPECS: dict[str, tuple[str, float, str]] = {
    # key: (unit, largest allowed value, example)
    "cpu_s": ("CPU seconds", 7 * 24 * 3600.0, "cpu_s=30"),
    "mem_mb": ("MiB of own memory", 1024.0 * 1024.0, "mem_mb=1024"),
    "wall_s": ("wall-clock seconds", 7 * 24 * 3600.0, "wall_s=60"),
    "gpu_gb": ("GiB of GPU memory", 1024.0, "gpu_gb=2"),
    "leak_mb": ("MiB of growth per measured round", 1024.0 * 1024.0, "leak_mb=1"),
}
BUDGET_KEYS: tuple[str, ...] = tuple(_SPECS)

#: Built-in defaults. wall_s is set so that a hung test can never hang CI; mem_mb so that one
#: runaway allocation cannot push a 2-core, 24 GiB CI machine into the OOM killer. cpu_s and
#: gpu_gb are off: wall_s already bounds CPU time of a single-threaded test, and Taichi's own
#: device_memory_GB default (1 GB) is left alone unless a budget asks for a cap. leak_mb is off:
#: leak hunting runs a test several times (docs/leaks.md), which only the user may ask for.
BUILTIN_DEFAULTS: Mapping[str, float | None] = {
    "cpu_s": None,
    "mem_mb": 4096.0,
    "wall_s": 600.0,
    "gpu_gb": None,
    "leak_mb": None,
}

#: Arch names the `arch` marker key and --taichi-limits-arch accept: Taichi 1.7.4's arch names
#: plus its `cpu` (the host) and `gpu` (the first GPU backend that works) groups. Checked here,
#: without importing Taichi: its own lookup (arch_from_name) aborts the process on a bad name.
ARCH_NAMES = (
    "cpu",
    "gpu",
    "x64",
    "arm64",
    "cuda",
    "amdgpu",
    "vulkan",
    "opengl",
    "gles",
    "metal",
    "dx11",
    "dx12",
)
MARKER_ARCH_KEY = "arch"
MARKER_ISOLATION_KEY = "isolation"
MARKER_LEAK_ROUNDS_KEY = "leak_rounds"
#: Marker keys that are settings, not budgets.
_NOT_BUDGETS = (MARKER_ARCH_KEY, MARKER_ISOLATION_KEY, MARKER_LEAK_ROUNDS_KEY)
ISOLATIONS = ("test", "module", "session")
#: Every key the marker takes: the budgets, then the settings.
MARKER_KEYS: tuple[str, ...] = BUDGET_KEYS + _NOT_BUDGETS

#: Words that switch a default off on the command line or in ini files.
OFF_WORDS = frozenset({"off", "none", "no", "unlimited"})

#: Leak hunting's round counts: at least this many measured rounds (a slope needs points, and
#: "growth in nearly every round" needs rounds to count), and at most this many in all.
MIN_MEASURED_ROUNDS = 3
MAX_LEAK_ROUNDS = 1000


class BudgetError(ValueError):
    """A budget value that the plugin refuses; the message says what is allowed."""


@dataclass(frozen=True)
class Budget:
    """Limits in force for one test; None means no limit for that resource."""

    cpu_s: float | None = None
    mem_mb: float | None = None
    wall_s: float | None = None
    gpu_gb: float | None = None
    #: leak hunting (docs/leaks.md): the growth of own memory (and GPU memory) allowed per
    #: measured round, MiB; None: the test runs once, as usual
    leak_mb: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)

    def replace(self, **changes: float | None) -> Budget:
        return dataclasses.replace(self, **changes)

    @property
    def mem_bytes(self) -> int | None:
        return None if self.mem_mb is None else int(self.mem_mb * 1024 * 1024)

    @property
    def gpu_bytes(self) -> int | None:
        return None if self.gpu_gb is None else int(self.gpu_gb * 1024**3)

    @property
    def leak_bytes(self) -> int | None:
        return None if self.leak_mb is None else int(self.leak_mb * 1024 * 1024)


@dataclass(frozen=True)
class LeakRounds:
    """How often leak hunting runs a test in one child: `warmup` rounds first (caches fill,
    lazy imports happen; their growth is never judged), then `measured` rounds, each followed by
    an exact reading. pytest-leaks' and CPython's `-R` notation: "warmup:measured"."""

    warmup: int
    measured: int

    @property
    def total(self) -> int:
        return self.warmup + self.measured

    def text(self) -> str:
        return f"{self.warmup}:{self.measured}"


#: The rounds and the allowance when leak hunting is on and nothing says otherwise: chosen so
#: that the clean set (tests/e2e/test_leaks.py: a Taichi kernel in a loop over a fixed field,
#: caches that fill once, noisy allocations that are freed) is never flagged, while a leak of
#: 2 MiB per round is (docs/leaks.md, "Choosing the rounds and the allowance").
DEFAULT_LEAK_ROUNDS = LeakRounds(2, 5)
DEFAULT_LEAK_MB = 1.0

_ROUNDS_TEXT = (
    f"'W:N' with W >= 0 warm-up rounds and N >= {MIN_MEASURED_ROUNDS} measured rounds, "
    f"W + N <= {MAX_LEAK_ROUNDS} (e.g. '2:5')"
)


def parse_leak_rounds(value: object, where: str, alternative: str = "") -> LeakRounds:
    """`value` ("W:N") as LeakRounds, or BudgetError naming `where` and what is accepted
    (`alternative`: what else the caller's syntax takes, e.g. " or 'off'")."""
    warmup = measured = -1
    if isinstance(value, str):
        first, colon, second = value.strip().partition(":")
        if colon and first.strip().isdecimal() and second.strip().isdecimal():
            warmup, measured = int(first), int(second)
    if warmup < 0 or measured < MIN_MEASURED_ROUNDS or warmup + measured > MAX_LEAK_ROUNDS:
        raise BudgetError(f"{where} must be {_ROUNDS_TEXT}{alternative}, got {value!r}")
    return LeakRounds(warmup, measured)


def builtin_budget() -> Budget:
    return Budget(**BUILTIN_DEFAULTS)


def larger(first: Budget, second: Budget) -> Budget:
    """Per key the larger limit of the two; no limit (None) is the largest."""
    values: dict[str, float | None] = {}
    for key in BUDGET_KEYS:
        one, other = getattr(first, key), getattr(second, key)
        values[key] = None if one is None or other is None else max(one, other)
    return Budget(**values)


def allowed_text(key: str) -> str:
    unit, largest, example = _SPECS[key]
    # .15g: 1048576, not 1.04858e+06
    return f"a positive number of {unit} up to {largest:.15g} (e.g. {example})"


def check_value(key: str, value: object, no_limit: str = "None") -> float:
    """Return `value` as a float, or raise BudgetError saying what `key` accepts.

    `no_limit` is how the caller's syntax spells "no limit" (None in a marker, 'off' in text).
    """
    number = math.nan
    # numbers.Real: NumPy's integers (np.int64) as well as its floats; never a bool (np.bool_
    # is not a numbers.Real).
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            number = float(value)
        except (OverflowError, ValueError):  # an int too large for a float
            number = math.inf
    if math.isnan(number) or math.isinf(number) or number <= 0 or number > _SPECS[key][1]:
        raise BudgetError(
            f"{key} must be {allowed_text(key)} or {no_limit} for no limit, got {value!r}"
        )
    return number


def check_budget(value: object) -> Budget:
    """`value` as a Budget whose every limit is checked as a marker's is (a hook's result).
    Raises BudgetError saying what is wrong."""
    if not isinstance(value, Budget):
        raise BudgetError(
            f"expected a pytest_taichi_limits.Budget (e.g. budget.replace(wall_s=60)) or None, "
            f"got {value!r}"
        )
    return Budget(
        **{
            key: None if getattr(value, key) is None else check_value(key, getattr(value, key))
            for key in BUDGET_KEYS
        }
    )


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key, MARKER_KEYS, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_text(key: str, text: str) -> float | None:
    """Parse a command-line or ini value: a number, or an off-word for no limit."""
    stripped = text.strip()
    if stripped.lower() in OFF_WORDS:
        return None
    try:
        number = float(stripped)
    except ValueError:
        number = math.nan
    try:
        return check_value(key, number)
    except BudgetError:  # say it again with the text the user typed, not the parsed float
        raise BudgetError(
            f"{key} must be {allowed_text(key)} or 'off' for no limit, got {text!r}"
        ) from None


def marker_values(nodeid: str, markers: Iterable[Any]) -> dict[str, float | None]:
    """Merge `taichi_limits` markers, closest first (as `iter_markers` yields them).

    Raises BudgetError naming the test and the argument.
    """
    merged: dict[str, float | None] = {}
    for marker in markers:
        if marker.args:
            raise BudgetError(
                f"{nodeid}: @pytest.mark.{MARKER_NAME} takes keyword arguments only "
                f"({', '.join(MARKER_KEYS)}), got positional {marker.args!r}"
            )
        for key, value in marker.kwargs.items():
            if key in _NOT_BUDGETS:
                continue  # not a budget: marker_arch() / marker_isolation() check it
            if key not in _SPECS:
                raise BudgetError(
                    f"{nodeid}: @pytest.mark.{MARKER_NAME} got unknown argument {key!r}"
                    f"{_did_you_mean(key)}; allowed: {', '.join(MARKER_KEYS)}"
                )
            if key in merged:
                continue  # a closer marker already set it
            if value is None:
                merged[key] = None
                continue
            try:
                merged[key] = check_value(key, value)
            except BudgetError as error:
                raise BudgetError(f"{nodeid}: @pytest.mark.{MARKER_NAME}: {error}") from None
    return merged


def check_arch(value: object, where: str) -> str:
    """`value` if it is an arch name Taichi knows, else BudgetError saying which ones it knows."""
    if not isinstance(value, str) or value.strip().lower() not in ARCH_NAMES:
        raise BudgetError(
            f"{where}: arch must be one of {', '.join(ARCH_NAMES)} (a string), got {value!r}"
        )
    return value.strip().lower()


def marker_arch(nodeid: str, markers: Iterable[Any]) -> str | None:
    """The closest `taichi_limits` marker's `arch`, checked; None where no marker sets one."""
    for marker in markers:
        if MARKER_ARCH_KEY in marker.kwargs:
            return check_arch(
                marker.kwargs[MARKER_ARCH_KEY], f"{nodeid}: @pytest.mark.{MARKER_NAME}"
            )
    return None


def marker_leak_rounds(nodeid: str, markers: Iterable[Any]) -> LeakRounds | None:
    """The closest `taichi_limits` marker's `leak_rounds`, checked; None where none sets one."""
    for marker in markers:
        if MARKER_LEAK_ROUNDS_KEY in marker.kwargs:
            return parse_leak_rounds(
                marker.kwargs[MARKER_LEAK_ROUNDS_KEY],
                f"{nodeid}: @pytest.mark.{MARKER_NAME}: {MARKER_LEAK_ROUNDS_KEY}",
            )
    return None


def marker_isolation(nodeid: str, markers: Iterable[Any]) -> str | None:
    """The closest `taichi_limits` marker's `isolation`, checked; None where none sets one."""
    for marker in markers:
        if MARKER_ISOLATION_KEY in marker.kwargs:
            value = marker.kwargs[MARKER_ISOLATION_KEY]
            if value not in ISOLATIONS:
                raise BudgetError(
                    f"{nodeid}: @pytest.mark.{MARKER_NAME}: isolation must be one of "
                    f"{', '.join(ISOLATIONS)} (a string), got {value!r}"
                )
            return str(value)
    return None


def resolve(
    marker: Mapping[str, float | None],
    cli: Mapping[str, float | None],
    ini: Mapping[str, float | None],
    leaks_asked: bool = False,
) -> Budget:
    """Apply the precedence chain marker > command line > ini > built-in default per key.

    `leaks_asked`: leak hunting's rounds were given (--taichi-limits-leaks, its ini key, or the
    marker's leak_rounds), which switches it on: leak_mb then defaults to DEFAULT_LEAK_MB."""
    defaults = BUILTIN_DEFAULTS
    if leaks_asked:
        defaults = {**BUILTIN_DEFAULTS, "leak_mb": DEFAULT_LEAK_MB}
    values: dict[str, float | None] = {}
    for key in BUDGET_KEYS:
        for layer in (marker, cli, ini, defaults):
            if key in layer:
                values[key] = layer[key]
                break
    return Budget(**values)
