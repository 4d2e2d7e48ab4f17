"""Options without a pytest subprocess: the one units parser, the tolerance and capacity specs
it reads, budget values from markers and hooks, and `value_or_ini` on a real parsed config."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from pytest_taichi_limits.config.budget import (
    Budget,
    BudgetError,
    check_budget,
    check_value,
    marker_values,
)
from pytest_taichi_limits.config.capacity import CapacityError, parse_capacity
from pytest_taichi_limits.config.options import (
    OPTIONS,
    markdown_table,
    read_options,
    value_or_ini,
)
from pytest_taichi_limits.config.tolerance import ToleranceError, parse_tolerance
from pytest_taichi_limits.config.units import (
    GIB,
    MIB,
    UnitError,
    parse_bytes,
    parse_seconds,
    spec_bytes,
)

# -- units ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, size",
    [
        ("20GiB", 20 * GIB),
        ("20GB", 20 * GIB),
        ("20g", 20 * GIB),
        ("512 MiB", 512 * MIB),
        ("8M", 8 * MIB),
        ("1.5GiB", int(1.5 * GIB)),
        ("1KiB", 1024),
        ("3B", 3),
        ("2TiB", 2 * 1024**4),
    ],
)
def test_bytes_take_every_binary_spelling(text: str, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize(
    "text, says",
    [
        ("100", "it has no unit: write e.g. 512MiB"),
        ("1e400GB", "more bytes than any machine has"),
        ("1e19B", "more bytes than any machine has"),
        ("5XB", "unit 'XB' is not one of B, KiB, MiB, GiB, TiB"),
        ("lots", "not a number followed by a unit"),
        ("-1GB", "not a number followed by a unit"),
    ],
)
def test_bytes_refused_say_why_and_which_units(text: str, says: str) -> None:
    with pytest.raises(UnitError, match=says):
        parse_bytes(text)


def test_written_sizes_read_back_exactly() -> None:
    for size in (16 * MIB, 1536 * MIB, 10 * GIB, 1024, 3):
        assert parse_bytes(spec_bytes(size)) == size
    assert spec_bytes(16 * MIB) == "16MiB"


def test_seconds_bare_or_with_a_unit() -> None:
    assert parse_seconds("0.5") == 0.5
    assert parse_seconds("500ms") == pytest.approx(0.5)
    assert parse_seconds(" 2 s ") == 2.0
    with pytest.raises(UnitError, match="no unit is not one of s, ms"):
        parse_seconds("2", bare=False)
    for bad in ("1min", "1e400", "soon"):
        with pytest.raises(UnitError):
            parse_seconds(bad)


def test_capacity_and_tolerance_accept_the_same_units() -> None:
    """Once, --taichi-limits-capacity refused 20GiB while the tolerance refused 8M."""
    for written in ("8M", "8MB", "8MiB"):
        assert parse_capacity(f"mem={written}").mem_bytes == 8 * MIB
        allowance = parse_tolerance(f"mem={written}").allowances["mem"]
        assert allowance is not None and allowance.absolute == 8 * MIB
    with pytest.raises(CapacityError, match="'100': it has no unit"):
        parse_capacity("mem=100")
    with pytest.raises(ToleranceError, match="unit '' is not one of %, B, KiB"):
        parse_tolerance("mem=100")


# -- budget values ------------------------------------------------------------------------------


def test_numpy_integers_are_budget_values_like_numpy_floats() -> None:
    np = pytest.importorskip("numpy")
    assert check_value("mem_mb", np.int64(512)) == 512.0
    assert check_value("wall_s", np.float64(1.5)) == 1.5
    assert check_value("cpu_s", np.int32(3)) == 3.0
    with pytest.raises(BudgetError, match=r"got (np\.)?True"):
        check_value("cpu_s", np.bool_(True))


@pytest.mark.parametrize("bad", ["abc", math.nan, math.inf, -1, 0, True, 2**2000, [1]])
def test_a_hooks_budget_is_checked_like_a_markers(bad: object) -> None:
    with pytest.raises(BudgetError, match=r"mem_mb must be a positive number of MiB"):
        check_budget(Budget(mem_mb=bad))  # type: ignore[arg-type]


def test_a_hooks_budget_must_be_a_budget() -> None:
    assert check_budget(Budget(mem_mb=256, wall_s=None)) == Budget(mem_mb=256.0)
    with pytest.raises(BudgetError, match=r"expected a pytest_taichi_limits\.Budget"):
        check_budget({"mem_mb": 256})


def _marker(**kwargs: object) -> SimpleNamespace:
    return SimpleNamespace(args=(), kwargs=kwargs)


@pytest.mark.parametrize(
    "key, suggestion",
    [("mem_gb", " (did you mean 'mem_mb'?)"), ("isolaton", " (did you mean 'isolation'?)")],
)
def test_a_marker_key_typo_gets_a_suggestion(key: str, suggestion: str) -> None:
    with pytest.raises(BudgetError) as error:
        marker_values("t.py::test", [_marker(**{key: 1})])
    assert f"got unknown argument {key!r}{suggestion}; allowed: cpu_s" in str(error.value)


def test_an_unlike_key_gets_no_suggestion() -> None:
    with pytest.raises(BudgetError, match=r"unknown argument 'colour'; allowed"):
        marker_values("t.py::test", [_marker(colour=1)])


# -- the option surface -------------------------------------------------------------------------


def test_command_line_beats_ini_and_says_where_a_value_came_from(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(
        "[pytest]\ntaichi_limits_top = 3\ntaichi_limits_grace = 500ms\n"
        "taichi_limits_capacity = mem=2GiB\n"
    )
    config = pytester.parseconfig("--taichi-limits-top=7")
    assert value_or_ini(config, "taichi_limits_top") == ("7", "--taichi-limits-top")
    assert value_or_ini(config, "taichi_limits_grace") == (
        "500ms",
        "ini option taichi_limits_grace",
    )
    assert value_or_ini(config, "taichi_limits_json") == (None, "--taichi-limits-json")
    options = read_options(config)
    assert options.top == 7
    assert options.settings.grace_s == pytest.approx(0.5)
    assert options.capacity.mem_bytes == 2 * GIB


def test_a_bad_ini_bool_names_the_ini_key(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntaichi_limits = yes please\n")
    config = pytester.parseconfig()
    with pytest.raises(pytest.UsageError, match=r"^ini option taichi_limits must be true or false"):
        read_options(config)


def test_every_option_is_in_the_table_once() -> None:
    flags = [option.flag for option in OPTIONS]
    assert len(flags) == len(set(flags))
    table = markdown_table()
    for option in OPTIONS:
        assert f"`{option.flag}" in table
        assert option.help.strip() and "%%" not in option.help
