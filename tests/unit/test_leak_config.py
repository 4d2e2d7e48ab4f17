"""Leak hunting's budget key, rounds, option and ini key: parsed and checked before any test."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from pytest_taichi_limits.config.budget import (
    DEFAULT_LEAK_MB,
    Budget,
    BudgetError,
    LeakRounds,
    check_budget,
    check_value,
    marker_leak_rounds,
    marker_values,
    parse_leak_rounds,
    parse_text,
    resolve,
)
from pytest_taichi_limits.config.options import read_options


def _marker(**kwargs: object) -> SimpleNamespace:
    return SimpleNamespace(args=(), kwargs=kwargs)


@pytest.mark.parametrize(
    "text, rounds",
    [("2:5", LeakRounds(2, 5)), (" 0:3 ", LeakRounds(0, 3)), ("10:990", LeakRounds(10, 990))],
)
def test_rounds_in_pytest_leaks_notation(text: str, rounds: LeakRounds) -> None:
    assert parse_leak_rounds(text, "here") == rounds
    assert parse_leak_rounds(rounds.text(), "here") == rounds


@pytest.mark.parametrize(
    "bad", ["5", "2:2", "-1:5", "a:b", "2:5:1", "1:1000", "", ":", "2.5:5", 5, None, (2, 5), True]
)
def test_rounds_refused_say_what_is_accepted(bad: object) -> None:
    with pytest.raises(BudgetError) as error:
        parse_leak_rounds(bad, "leak_rounds")
    assert str(error.value).startswith("leak_rounds must be 'W:N' with W >= 0 warm-up rounds")
    assert f"got {bad!r}" in str(error.value)


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, True, "1", 2.0**21, [1]])
def test_leak_mb_bounds(bad: object) -> None:
    with pytest.raises(BudgetError, match="leak_mb must be a positive number of MiB of growth"):
        check_value("leak_mb", bad)


def test_leak_mb_takes_numbers_numpy_integers_and_off() -> None:
    np = pytest.importorskip("numpy")
    assert check_value("leak_mb", 0.25) == 0.25
    assert check_value("leak_mb", np.int64(2)) == 2.0
    assert parse_text("leak_mb", "off") is None
    assert check_budget(Budget(leak_mb=3)) == Budget(leak_mb=3.0)
    with pytest.raises(BudgetError, match="leak_mb must be"):
        check_budget(Budget(leak_mb=-3))


def test_leak_hunting_is_off_unless_asked() -> None:
    assert resolve({}, {}, {}).leak_mb is None
    # Rounds asked for (option, ini or marker): the default allowance.
    assert resolve({}, {}, {}, leaks_asked=True).leak_mb == DEFAULT_LEAK_MB
    # An allowance anywhere beats the default; a marker's None switches it off for that test.
    assert resolve({}, {}, {"leak_mb": 4.0}, leaks_asked=True).leak_mb == 4.0
    assert resolve({"leak_mb": None}, {"leak_mb": 2.0}, {}, leaks_asked=True).leak_mb is None
    assert resolve({}, {"leak_mb": 2.0}, {}).leak_mb == 2.0


def test_marker_keys() -> None:
    markers = [_marker(leak_rounds="1:4", leak_mb=0.5), _marker(leak_rounds="9:9")]
    assert marker_leak_rounds("t.py::test", markers) == LeakRounds(1, 4)  # the closest wins
    assert marker_values("t.py::test", markers) == {"leak_mb": 0.5}
    assert marker_leak_rounds("t.py::test", [_marker(mem_mb=1)]) is None
    with pytest.raises(BudgetError, match=r"^t\.py::test: @pytest\.mark\.taichi_limits: leak_"):
        marker_leak_rounds("t.py::test", [_marker(leak_rounds="5")])
    with pytest.raises(BudgetError, match=r"did you mean 'leak_mb'\?"):
        marker_values("t.py::test", [_marker(leak_gb=1)])


def test_option_and_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntaichi_limits_leaks = 1:3\ntaichi_limits_leak_mb = 0.5\n")
    options = read_options(pytester.parseconfig())
    assert options.leak_rounds == LeakRounds(1, 3)
    assert options.ini_budget == {"leak_mb": 0.5}
    options = read_options(pytester.parseconfig("--taichi-limits-leaks=off"))
    assert options.leak_rounds is None  # the command line beats the ini file, and can say off


@pytest.mark.parametrize(
    "args, ini, says",
    [
        (["--taichi-limits-leaks=5"], "", "--taichi-limits-leaks must be 'W:N'"),
        ([], "taichi_limits_leaks = 2:1\n", "ini option taichi_limits_leaks must be 'W:N'"),
        (["--taichi-limits-leak-mb=-1"], "", "--taichi-limits-leak-mb: leak_mb must be"),
    ],
)
def test_a_bad_value_names_where_it_came_from(
    pytester: pytest.Pytester, args: list[str], ini: str, says: str
) -> None:
    pytester.makeini("[pytest]\n" + ini)
    with pytest.raises(pytest.UsageError) as error:
        read_options(pytester.parseconfig(*args))
    assert str(error.value).startswith(says)
    assert "or 'off'" in str(error.value)
