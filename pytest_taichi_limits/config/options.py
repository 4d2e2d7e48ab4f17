"""Every command-line option and ini key of the plugin: declared, read and checked here.

`OPTIONS` declares each option once: its flag (`--` and the dest with dashes), its ini key (the
dest itself, where it has one), what it takes and its help. `add_options` turns the table into
pytest's `addoption`/`addini` calls; the options tables in docs/ are generated from it
(`markdown_table`, written by `tools/docs.py`); `read_options` reads every value through one
`value_or_ini` (the command line beats the ini file) and validates all of them before any test
runs, raising `pytest.UsageError` that names the flag or the ini key the bad value came from.

Budgets from markers beat both (see config/budget.py).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pytest

from .budget import (
    ARCH_NAMES,
    BUDGET_KEYS,
    BUILTIN_DEFAULTS,
    DEFAULT_LEAK_MB,
    DEFAULT_LEAK_ROUNDS,
    BudgetError,
    LeakRounds,
    check_arch,
    parse_leak_rounds,
    parse_text,
    resolve,
)
from .capacity import CapacityError, Declared, parse_capacity
from .settings import DEFAULT_ISOLATION, ISOLATIONS, MEMORY_METHODS, MODES, Settings
from .tolerance import DEFAULT_TOLERANCE_SPEC, Tolerance, ToleranceError, parse_tolerance
from .units import BYTE_UNITS_TEXT, SECOND_UNITS_TEXT, UnitError, parse_seconds

GROUP = "taichi-limits"
GROUP_HELP = (
    "resource budgets for Taichi tests (precedence: marker > command line > ini > built-in default)"
)

#: Name of the spawn worker's plugin object (child/session.py registers it under this name).
SPAWN_WORKER_PLUGIN = "taichi_limits_spawn_worker"


def is_spawn_worker(config: pytest.Config) -> bool:
    """A pytest session the plugin started itself (spawn mode, or a module re-imported in a
    fresh interpreter) to run tests for a parent that supervises them and writes every output."""
    return config.pluginmanager.has_plugin(SPAWN_WORKER_PLUGIN)


def is_xdist_worker(config: pytest.Config) -> bool:
    """A pytest-xdist worker: it runs tests; its controller logs the reports and writes the
    session's files."""
    return hasattr(config, "workerinput")


# -- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option. `metavar` None: a flag that takes no value."""

    dest: str  # the argparse dest, and the ini key where `ini` is set
    help: str  # one text: `--help`, the ini key's help and the docs' tables
    metavar: str | None = None
    ini: bool = True
    choices: tuple[str, ...] | None = None
    const: str | None = None  # the value of the flag given without one (nargs="?")

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")

    @property
    def ini_key(self) -> str | None:
        return self.dest if self.ini else None

    def usage(self) -> str:
        """How it is written on a command line: --taichi-limits-mode=auto|fork|spawn."""
        if self.metavar is None:
            return self.flag
        value = "|".join(self.choices) if self.choices else self.metavar
        return f"{self.flag}[={value}]" if self.const else f"{self.flag}={value}"


def budget_dest(key: str) -> str:
    return "taichi_limits_" + key


def budget_flag(key: str) -> str:
    return "--taichi-limits-" + key.replace("_", "-")


_BUDGET_HELP = {
    "cpu_s": "CPU seconds (user+system, all threads and subprocesses)",
    "mem_mb": "MiB (2**20 bytes) of own memory: what the test's process tree makes the machine "
    "hold at its peak, above what was there when it started: anonymous and shared memory, page "
    "cache not counted (--taichi-limits-memory-method says how it is measured; never an "
    "address-space limit)",
    "wall_s": "wall-clock seconds, enforced from outside so native code holding the GIL "
    "is stopped too",
    "gpu_gb": "GiB (2**30 bytes) of GPU memory: caps ti.init(device_memory_GB=...) and, where NVML "
    "is available, the measured GPU memory of the test's processes",
    "leak_mb": "MiB (2**20 bytes) of growth allowed per measured round of leak hunting: setting it "
    "runs each test in rounds (--taichi-limits-leaks) and fails one whose own memory or GPU "
    "memory grows by more per round, in nearly every round",
}
_DEFAULT_INTERVAL_S = 0.01
_DEFAULT_GRACE_S = 2.0
DEFAULT_TOP = 5
#: --taichi-limits-markdown's value that stops the automatic GitHub job summary.
MARKDOWN_OFF = "off"
ADMIT_MODES = ("budget", "baseline")
_ADMIT_OFF = frozenset({"off", "false", "no", "0", "none"})
_ADMIT_ON = frozenset({"true", "yes", "on", "1"})
_SECONDS = f"a number of seconds (or with a unit: {SECOND_UNITS_TEXT})"


def _budget_option(key: str) -> Option:
    default = BUILTIN_DEFAULTS[key]
    shown = "off" if default is None else f"{default:g}"
    return Option(
        budget_dest(key),
        f"default {key} for supervised tests: {_BUDGET_HELP[key]}; 'off' for no limit. "
        f"Built-in default: {shown}",
        metavar="N|off",
    )


OPTIONS: tuple[Option, ...] = (
    Option(
        "taichi_limits",
        "run every collected test in a supervised child process with a budget. Tests marked "
        "@pytest.mark.taichi_limits(...) are supervised even without it",
    ),
    *(_budget_option(key) for key in BUDGET_KEYS),
    Option(
        "taichi_limits_leaks",
        "hunt leaks in every supervised test: W warm-up rounds, then N measured rounds of its "
        "setup, call and teardown in the same child, with an exact reading in each (after the "
        "call, before the teardown); a test "
        "whose own memory or GPU memory grows by more than leak_mb per round (default "
        f"{DEFAULT_LEAK_MB:g} here), or whose Taichi fields, ndarrays, SNode trees, open files, "
        "threads or processes grow, in nearly every measured round, fails (docs/leaks.md). "
        f"'off': only tests that set leak_mb or leak_rounds. Default off; W:N is "
        f"{DEFAULT_LEAK_ROUNDS.text()} where a test asks without one",
        metavar="W:N|off",
    ),
    Option(
        "taichi_limits_interval",
        "finest interval at which the supervisor samples memory and CPU of the test's "
        "processes, used as a limit comes near; far from every limit it samples every 0.1 s: "
        f"{_SECONDS}; default {_DEFAULT_INTERVAL_S:g}",
        metavar="SECONDS",
    ),
    Option(
        "taichi_limits_grace",
        f"after a violation, the time between SIGTERM and SIGKILL: {_SECONDS}; default "
        f"{_DEFAULT_GRACE_S:g}",
        metavar="SECONDS",
    ),
    Option(
        "taichi_limits_mode",
        "how the child starts: fork (fast), spawn (a fresh interpreter, needed once Taichi "
        "was initialised in the pytest process), auto (fork unless Taichi is initialised). "
        "Default auto",
        metavar="MODE",
        choices=MODES,
    ),
    Option(
        "taichi_limits_isolation",
        "how many tests share one supervised child: test (a fresh child per test; a module "
        "that needs a fresh interpreter still shares one worker), module (one child per "
        "module: module fixtures set up once), session (one child runs every test in turn, "
        "as plain pytest does). Budgets, figures and reports stay per test; a violation or "
        "crash ends the child and the next test gets a new one. The marker key isolation= "
        "overrides it per test. Default module (a test's figures may then include its "
        "module's shared set-up when it runs first in its child; test gives figures that "
        "never depend on the tests before it)",
        metavar="ISOLATION",
        choices=ISOLATIONS,
    ),
    Option(
        "taichi_limits_clean_shm",
        "remove what a supervised test's processes made in /dev/shm and left there, at its "
        "worker's end, where no process outside the test uses it; what cannot be attributed "
        "to the test is kept and listed (each test's report lists what it left either way)",
        ini=False,
    ),
    Option(
        "taichi_limits_memory_method",
        "how mem_mb is measured: cgroup (a memory cgroup per worker: the kernel's figure and a "
        "hard cap; an error where none can be made), smaps (/proc/<pid>/smaps_rollup, no "
        "cgroup), auto (cgroup where one can be made, else smaps). Default auto; "
        "docs/memory.md",
        metavar="METHOD",
        choices=MEMORY_METHODS,
    ),
    Option(
        "taichi_limits_arch",
        f"arch for the taichi_limits_ti fixture, one of {', '.join(ARCH_NAMES)}. Default cpu",
        metavar="ARCH",
    ),
    Option(
        "taichi_limits_json",
        "write one JSON document with every supervised test's usage record and every "
        "violation to PATH, atomically",
        metavar="PATH",
    ),
    Option(
        "taichi_limits_log",
        "append one JSON line per supervised test (usage) and per violation to PATH",
        metavar="PATH",
    ),
    Option(
        "taichi_limits_top",
        "terminal summary: the N largest users of own memory, CPU and GPU (default "
        f"{DEFAULT_TOP}; 0 hides the tables)",
        metavar="N",
    ),
    Option(
        "taichi_limits_save_baseline",
        "save the figures of the tests that passed to PATH (atomically); saving again widens "
        "each test's range (min, max, number of runs); tests this run did not measure keep "
        "their entries unless --taichi-limits-baseline-replace",
        metavar="PATH",
        ini=False,
    ),
    Option(
        "taichi_limits_baseline_replace",
        "with --taichi-limits-save-baseline: write only this run's tests, dropping the rest "
        "and starting every range over",
        ini=False,
    ),
    Option(
        "taichi_limits_compare",
        "compare every supervised test with the baseline in PATH: a test that grew beyond "
        "the tolerance above the largest figure the baseline saw fails",
        metavar="PATH",
        ini=False,
    ),
    Option(
        "taichi_limits_tolerance",
        "allowed growth per resource against the baseline, relative plus absolute, e.g. "
        "'mem=10%+8MiB,cpu=25%+0.5s,wall=off'; keys mem, cpu, wall, gpu and leak (own memory's "
        "growth per round of leak hunting), each once; byte "
        f"units {BYTE_UNITS_TEXT}; seconds {SECOND_UNITS_TEXT}; keys not named keep their "
        f"default ({DEFAULT_TOLERANCE_SPEC})",
        metavar="SPEC",
    ),
    Option(
        "taichi_limits_calibration",
        "the machine's speed, for comparing CPU and wall time with a baseline saved on another "
        "day: auto (the default: a calibration loop of about 0.2 s at the start and end of a "
        "run that compares or saves a baseline or writes the JSON report; the baseline's CPU "
        "and wall figures are compared scaled by the ratio of its run's calibration to this "
        "run's), off (never calibrate; compare unscaled), or SECONDS (take this as the loop's "
        "CPU and wall time instead of measuring it)",
        metavar="auto|off|SECONDS",
    ),
    Option(
        "taichi_limits_compare_warn",
        "with --taichi-limits-compare: a test that grew gets a warning instead of failing",
        ini=False,
    ),
    Option(
        "taichi_limits_suggest",
        "after the tests, print the taichi_limits marker each supervised test should carry "
        "(measured peaks plus headroom) and an ini snippet every test fits under",
        ini=False,
    ),
    Option(
        "taichi_limits_markdown",
        "write a Markdown summary (verdict, violations, regressions, top consumers, new and "
        "missing tests) to PATH. Without it, under GitHub Actions ($GITHUB_STEP_SUMMARY set) "
        "the summary is appended to the job summary; 'off' stops that",
        metavar="PATH|off",
    ),
    Option(
        "taichi_limits_html",
        "write a self-contained HTML report (sortable table, a memory/CPU chart per test, "
        "violations and regressions) to PATH",
        metavar="PATH",
    ),
    Option(
        "taichi_limits_timeline_in_baseline",
        "with --taichi-limits-save-baseline: store each test's timeline in the baseline too "
        "(larger file; off by default)",
        ini=False,
    ),
    Option(
        "taichi_limits_admit",
        "start a supervised test only when what it may use fits what the machine has left "
        "(shared by xdist workers and by other pytest sessions of this user): 'budget' (the "
        "default) reserves its mem_mb and gpu_gb; 'baseline' its measured peaks from "
        "--taichi-limits-compare's baseline plus the tolerance (never more than the budget; a "
        "test not in the baseline reserves its budget); 'off' (in an ini file also true, "
        "meaning budget, or false). Write --taichi-limits-admit=MODE before test paths",
        metavar="MODE",
        choices=(*ADMIT_MODES, "off"),
        const="budget",
    ),
    Option(
        "taichi_limits_capacity",
        "what admission may reserve, e.g. 'mem=20GiB,gpu=80GiB': mem for the machine, gpu per "
        f"device; units {BYTE_UNITS_TEXT}. Default: MemAvailable at session start minus a "
        "margin, GPUs from NVML",
        metavar="SPEC",
    ),
)
OPTIONS_BY_DEST = {option.dest: option for option in OPTIONS}


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup(GROUP, GROUP_HELP)
    for option in OPTIONS:
        help_text = option.help + (f" (ini: {option.ini_key})" if option.ini_key else "")
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if option.metavar is None:
            group.addoption(
                option.flag, dest=option.dest, action="store_true", default=None, help=help_text
            )
        elif option.const is not None:
            group.addoption(
                option.flag,
                dest=option.dest,
                nargs="?",
                const=option.const,
                default=None,
                choices=option.choices,
                metavar="|".join(option.choices or ()),
                help=help_text,
            )
        else:
            group.addoption(
                option.flag,
                dest=option.dest,
                metavar=option.metavar if option.choices is None else None,
                choices=option.choices,
                default=None,
                help=help_text,
            )
        if option.ini_key is None:
            continue
        if option.metavar is None:
            parser.addini(option.ini_key, f"like {option.flag}", type="bool", default=False)
        else:
            parser.addini(option.ini_key, f"like {option.flag}", type="string", default=None)


# -- reading ---------------------------------------------------------------------------------


def where_ini(key: str) -> str:
    return f"ini option {key}"


def value_or_ini(config: pytest.Config, dest: str) -> tuple[str | None, str]:
    """An option's text, from the command line, else from the ini file (None: given in
    neither), and where it came from (the flag or the ini key), for messages."""
    option = OPTIONS_BY_DEST[dest]
    given = config.getoption(dest)
    if given is not None:
        return str(given), option.flag
    if option.ini_key is None:
        return None, option.flag
    ini = _ini_text(config, option.ini_key)
    return (None, option.flag) if ini is None else (ini, where_ini(option.ini_key))


def _ini_text(config: pytest.Config, key: str) -> str | None:
    """An ini key's text; None where the ini file does not set it."""
    try:
        ini = config.getini(key)
    except (ValueError, pytest.UsageError) as error:  # pytest's own conversion of the value
        raise pytest.UsageError(f"{where_ini(key)}: {error}") from None
    return None if ini in (None, "", []) else str(ini)


def flag_or_ini(config: pytest.Config, dest: str) -> bool:
    """A flag: given on the command line, else the ini key's true or false."""
    option = OPTIONS_BY_DEST[dest]
    if config.getoption(dest):
        return True
    if option.ini_key is None:
        return False
    try:
        return bool(config.getini(option.ini_key))
    except (ValueError, pytest.UsageError) as error:
        raise pytest.UsageError(
            f"{where_ini(option.ini_key)} must be true or false (also yes/no, on/off, 1/0): {error}"
        ) from None


@dataclass(frozen=True)
class Outputs:
    """The output files as the user typed them; None where not asked for. results/outputs.py
    resolves and checks them, together, before any test runs."""

    json: str | None = None
    log: str | None = None
    save_baseline: str | None = None
    markdown: str | None = None
    markdown_off: bool = False  # 'off': not even GitHub's job summary
    html: str | None = None

    def named(self) -> dict[str, str | None]:
        """Option flag -> path as typed, for messages and the check that no two are one file."""
        return {
            "--taichi-limits-json": self.json,
            "--taichi-limits-save-baseline": self.save_baseline,
            "--taichi-limits-log": self.log,
            "--taichi-limits-markdown": self.markdown,
            "--taichi-limits-html": self.html,
        }


@dataclass(frozen=True)
class Options:
    """Every option's value, validated."""

    supervise_all: bool
    cli_budget: dict[str, float | None]
    ini_budget: dict[str, float | None]
    settings: Settings
    outputs: Outputs
    tolerance: Tolerance
    top: int = DEFAULT_TOP
    suggest: bool = False
    compare_path: str | None = None
    warn_only: bool = False
    replace_baseline: bool = False
    timeline_in_baseline: bool = False
    admit: str | None = None  # "budget" or "baseline"; None: every test starts at once
    #: --taichi-limits-calibration: "auto", "off", or the loop's seconds as given
    calibration: str | float = "auto"
    capacity: Declared = field(default_factory=Declared)
    #: --taichi-limits-leaks: leak hunting for every supervised test, in these rounds (None: off)
    leak_rounds: LeakRounds | None = None


def _budget_layer(config: pytest.Config, from_ini: bool) -> dict[str, float | None]:
    layer: dict[str, float | None] = {}
    for key in BUDGET_KEYS:
        dest = budget_dest(key)
        text = _ini_text(config, dest) if from_ini else config.getoption(dest)
        if text is None:
            continue
        where = where_ini(dest) if from_ini else budget_flag(key)
        try:
            layer[key] = parse_text(key, str(text))
        except BudgetError as error:
            raise pytest.UsageError(f"{where}: {error}") from None
    return layer


def _seconds(config: pytest.Config, dest: str, default: float, low: float, high: float) -> float:
    text, where = value_or_ini(config, dest)
    if text is None:
        return default
    try:
        value = parse_seconds(text)
    except UnitError:
        value = float("nan")
    if not (low <= value <= high):
        raise pytest.UsageError(
            f"{where} must be a number of seconds from {low:g} to {high:g} (or with a unit: "
            f"{SECOND_UNITS_TEXT}), got {text!r}"
        )
    return value


def _choice(config: pytest.Config, dest: str, choices: Sequence[str], default: str) -> str:
    text, where = value_or_ini(config, dest)
    if text is None:
        return default
    if text not in choices:
        raise pytest.UsageError(f"{where} must be one of {', '.join(choices)}, got {text!r}")
    return text


def _given_where(config: pytest.Config, dest: str) -> str:
    """Where an option was given (its flag, or its ini key); "" where it was not."""
    text, where = value_or_ini(config, dest)
    return "" if text is None else where


def _arch(config: pytest.Config) -> str | None:
    text, where = value_or_ini(config, "taichi_limits_arch")
    if text is None:
        return None
    try:
        return check_arch(text, where)
    except BudgetError as error:
        raise pytest.UsageError(str(error)) from None


def _settings(config: pytest.Config) -> Settings:
    return Settings(
        interval_s=_seconds(config, "taichi_limits_interval", _DEFAULT_INTERVAL_S, 0.001, 10.0),
        grace_s=_seconds(config, "taichi_limits_grace", _DEFAULT_GRACE_S, 0.0, 600.0),
        mode=_choice(config, "taichi_limits_mode", MODES, "auto"),
        arch=_arch(config),
        isolation=_choice(config, "taichi_limits_isolation", ISOLATIONS, DEFAULT_ISOLATION),
        isolation_from=_given_where(config, "taichi_limits_isolation"),
        clean_shm=flag_or_ini(config, "taichi_limits_clean_shm"),
        memory_method=_choice(config, "taichi_limits_memory_method", MEMORY_METHODS, "auto"),
    )


#: The largest calibration figure taken: a loop of about 0.03 s that took a minute is a typo.
_MAX_CALIBRATION_S = 60.0


def _calibration(config: pytest.Config) -> str | float:
    text, where = value_or_ini(config, "taichi_limits_calibration")
    if text is None or text.strip().lower() in ("auto", "off"):
        return "auto" if text is None else text.strip().lower()
    try:
        value = parse_seconds(text)
    except UnitError:
        value = float("nan")
    if not 0 < value <= _MAX_CALIBRATION_S:
        raise pytest.UsageError(
            f"{where} must be auto, off, or the calibration loop's seconds (more than 0, up "
            f"to {_MAX_CALIBRATION_S:g}), got {text!r}"
        )
    return value


def _top(config: pytest.Config) -> int:
    text, where = value_or_ini(config, "taichi_limits_top")
    if text is None:
        return DEFAULT_TOP
    try:
        top = int(text)
    except ValueError:
        top = -1
    if top < 0:
        raise pytest.UsageError(f"{where} must be a whole number >= 0, got {text!r}")
    return top


def _tolerance(config: pytest.Config) -> Tolerance:
    text, where = value_or_ini(config, "taichi_limits_tolerance")
    try:
        return parse_tolerance(text)
    except ToleranceError as error:
        raise pytest.UsageError(f"{where}: {error}") from None


def _leak_rounds(config: pytest.Config) -> LeakRounds | None:
    text, where = value_or_ini(config, "taichi_limits_leaks")
    if text is None or text.strip().lower() in ("off", "none", "no", "false", "0"):
        return None
    try:
        return parse_leak_rounds(text, where, " or 'off'")
    except BudgetError as error:
        raise pytest.UsageError(str(error)) from None


def _admit(config: pytest.Config) -> str | None:
    text, where = value_or_ini(config, "taichi_limits_admit")
    word = None if text is None else text.strip().lower()
    if word is None or word in _ADMIT_OFF:
        return None
    if word in _ADMIT_ON:
        return "budget"
    if word not in ADMIT_MODES:
        raise pytest.UsageError(f"{where} must be budget, baseline or off, got {text!r}")
    return word


def _capacity(config: pytest.Config) -> Declared:
    text, where = value_or_ini(config, "taichi_limits_capacity")
    if text is None:
        return Declared()
    try:
        return parse_capacity(text)
    except CapacityError as error:
        raise pytest.UsageError(f"{where}: {error}") from None


def _outputs(config: pytest.Config) -> Outputs:
    markdown = value_or_ini(config, "taichi_limits_markdown")[0]
    markdown_off = markdown is not None and markdown.strip().lower() == MARKDOWN_OFF
    return Outputs(
        json=value_or_ini(config, "taichi_limits_json")[0],
        log=value_or_ini(config, "taichi_limits_log")[0],
        save_baseline=value_or_ini(config, "taichi_limits_save_baseline")[0],
        markdown=None if markdown_off else markdown,
        markdown_off=markdown_off,
        html=value_or_ini(config, "taichi_limits_html")[0],
    )


def _needs(given: bool, modifier: str, needed: bool, needed_option: str) -> None:
    """A modifier without the option it modifies would be ignored silently: the user meant
    something."""
    if given and not needed:
        raise pytest.UsageError(f"{modifier} only works with {needed_option}")


def read_options(config: pytest.Config) -> Options:
    """Validate every option; raise pytest.UsageError naming the first bad one."""
    outputs = _outputs(config)
    compare_path = value_or_ini(config, "taichi_limits_compare")[0]
    cli_budget = _budget_layer(config, from_ini=False)
    ini_budget = _budget_layer(config, from_ini=True)
    options = Options(
        supervise_all=flag_or_ini(config, "taichi_limits"),
        cli_budget=cli_budget,
        ini_budget=ini_budget,
        settings=dataclasses.replace(
            _settings(config), default_budget=resolve({}, cli_budget, ini_budget)
        ),
        outputs=outputs,
        top=_top(config),
        suggest=flag_or_ini(config, "taichi_limits_suggest"),
        compare_path=compare_path,
        tolerance=_tolerance(config),
        warn_only=flag_or_ini(config, "taichi_limits_compare_warn"),
        replace_baseline=flag_or_ini(config, "taichi_limits_baseline_replace"),
        timeline_in_baseline=flag_or_ini(config, "taichi_limits_timeline_in_baseline"),
        admit=_admit(config),
        capacity=_capacity(config),
        calibration=_calibration(config),
        leak_rounds=_leak_rounds(config),
    )
    saving = outputs.save_baseline is not None
    _needs(
        options.replace_baseline,
        "--taichi-limits-baseline-replace",
        saving,
        "--taichi-limits-save-baseline=PATH",
    )
    comparing = compare_path is not None
    _needs(
        options.warn_only, "--taichi-limits-compare-warn", comparing, "--taichi-limits-compare=PATH"
    )
    if options.admit == "baseline" and not comparing:
        raise pytest.UsageError(
            "--taichi-limits-admit=baseline needs a baseline to read peaks from: add "
            "--taichi-limits-compare=PATH"
        )
    return options


# -- the docs' tables ------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*")


def markdown_table(dests: Iterable[str] | None = None) -> str:
    """The options (all, or those named, in this order) as a Markdown table: what docs/ show,
    generated from the same table as `--help` (tools/docs.py writes it, a test compares)."""
    chosen = OPTIONS if dests is None else tuple(OPTIONS_BY_DEST[dest] for dest in dests)
    lines = ["| command line | ini key | meaning |", "|---|---|---|"]
    for option in chosen:
        ini = f"`{option.ini_key}`" if option.ini_key else ""
        lines.append(f"| `{_cell(option.usage())}` | {ini} | {_cell(option.help)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m pytest_taichi_limits.config.options [DEST ...]
    sys.stdout.write(markdown_table(sys.argv[1:] or None))
