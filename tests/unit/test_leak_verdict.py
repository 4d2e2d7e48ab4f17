"""The leak verdict (supervise/leaks.py) on made-up series: a robust slope, growth that stops is
no leak, noise below the allowance never fails; and leak hunting's records round-trip as JSON."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from pytest_taichi_limits.config.units import MIB
from pytest_taichi_limits.model.leaks import LeakRecordError, Leaks, RoundReading
from pytest_taichi_limits.render.leaks import grew, summary
from pytest_taichi_limits.supervise.leaks import judge, judge_series, theil_sen


def test_theil_sen_is_the_median_pairwise_slope() -> None:
    assert theil_sen([0, 1, 2, 3]) == 1.0
    assert theil_sen([5]) == 0.0
    # One reading far off (a collection that came late) barely moves it.
    assert theil_sen([0, 1, 2, 100, 4, 5]) == pytest.approx(1.0, abs=0.5)


@pytest.mark.parametrize("rounds", [3, 5, 10, 30])
@pytest.mark.parametrize("band", [0.2, 0.6, 0.99])
def test_noise_below_the_allowance_never_fails(rounds: int, band: float) -> None:
    generator = random.Random(rounds * 1000 + int(band * 100))
    allowance = float(MIB)
    for _ in range(2000):
        base = generator.uniform(0, 100 * MIB)
        values = [base + generator.uniform(0, band * allowance) for _ in range(rounds + 1)]
        assert not judge_series("own_memory_bytes", values, allowance).leak, values


@pytest.mark.parametrize("rounds", [3, 5, 10])
def test_a_steady_leak_above_the_allowance_is_caught_through_noise(rounds: int) -> None:
    generator = random.Random(rounds)
    allowance = float(MIB)
    for _ in range(2000):
        values = [
            round_ * 2 * allowance + generator.uniform(-0.4, 0.4) * allowance
            for round_ in range(rounds + 1)
        ]
        verdict = judge_series("own_memory_bytes", values, allowance)
        assert verdict.leak and verdict.slope == pytest.approx(2 * allowance, rel=0.3), values


@pytest.mark.parametrize(
    "values",
    [
        [0, 5, 5, 5, 5, 5],  # a cache that filled in the first measured round
        [0, 3, 6, 6.1, 6.1, 6.2],  # over two rounds, then noise: steep, but it stopped
        [0, 3, 6, 9, 9, 9],  # three rounds of five: not "nearly every round"
        [0, 0.4, 0.8, 1.2, 1.6, 2.0],  # every round, but below the allowance
        [10, 8, 6, 4, 2, 0],  # memory that is given back
    ],
)
def test_growth_that_stops_or_stays_below_is_no_leak(values: list[float]) -> None:
    assert not judge_series("own_memory_bytes", [v * MIB for v in values], float(MIB)).leak


def test_one_round_in_six_may_not_grow() -> None:
    def judged(deltas: list[float]) -> bool:
        return judge_series("m", _cumulative(deltas), 1.0).leak

    assert judged([2.0] * 5)
    assert not judged([2.0, 0.0, 2.0, 2.0, 2.0])  # up to five rounds: every one
    assert judged([2.0, 0.0, 2.0, 2.0, 2.0, 2.0])  # 5 of 6
    assert judged([2.0] * 10 + [0.0] * 2)  # 10 of 12
    assert not judged([2.0] * 9 + [0.0] * 3)  # 9 of 12
    assert not judged([2.0, 2.0, 0.4, 2.0, 2.0])  # a round that grew by less than half


def _cumulative(deltas: list[float]) -> list[float]:
    values = [0.0]
    for delta in deltas:
        values.append(values[-1] + delta)
    return values


def test_counts_leak_with_one_more_in_nearly_every_round() -> None:
    assert judge_series("fields", [3, 4, 5, 6, 7, 8], 0.0).leak
    assert not judge_series("fields", [3, 4, 5, 5, 6, 7], 0.0).leak
    assert not judge_series("fields", [3, 4, 4, 5, 5, 6], 0.0).leak  # every other round
    assert not judge_series("threads", [2, 3, 3, 3, 3, 3], 0.0).leak  # a pool that started
    verdict = judge_series("open_fds", [10, 12, 14, 16], 0.0)
    assert verdict.leak and verdict.slope == 2 and verdict.growing_rounds == 3
    assert grew(verdict) == "open files grew by 2 per round (in 3 of 3 rounds)"


def _reading(number: int, warmup: bool, mib: float, **more: Any) -> RoundReading:
    return RoundReading(
        number=number,
        warmup=warmup,
        own_memory_bytes=int(mib * MIB),
        gpu_bytes=None,
        open_fds=7,
        threads=2,
        processes=0,
        cpu_s=0.01,
        wall_s=0.02,
        **more,
    )


def _rounds(
    per_round_mib: float, warmup: int = 2, measured: int = 5, **taichi: Any
) -> list[RoundReading]:
    return [
        _reading(
            number,
            number <= warmup,
            10 + per_round_mib * number,
            **{key: value(number) for key, value in taichi.items()},
        )
        for number in range(1, warmup + measured + 1)
    ]


def test_judge_names_the_call_site_of_fields_that_stay() -> None:
    readings = _rounds(
        0.01,
        taichi=lambda n: {"fields": 3 + n, "snode_trees": n, "taichi_bytes": 4000 * n},
        sites=lambda n: {"field at tests/test_sim.py:42 in step": n, "field at x.py:1 in f": 1},
    )
    leaks = judge(readings, 2, 5, MIB)
    assert leaks.judged
    assert [verdict.key for verdict in leaks.leaking] == ["fields", "snode_trees"]
    assert leaks.causes == ("1 new field per round, made at tests/test_sim.py:42 in step",)
    own = leaks.of("own_memory_bytes")
    assert own is not None and not own.leak and own.rounds == 5  # the last warm-up, 5 measured


def test_judge_names_ndarrays_that_taichi_never_frees_when_memory_grows() -> None:
    made = {"vector ndarray at t.py:9 in test_a": 1, "ndarray at t.py:10 in test_a": 1}
    leaks = judge(_rounds(1.2, made=lambda n: made), 2, 5, MIB)
    assert [verdict.key for verdict in leaks.leaking] == ["own_memory_bytes"]
    assert len(leaks.causes) == 1
    assert leaks.causes[0].startswith("1 vector ndarray made per round at t.py:9 in test_a: ")
    assert "taichi-dev/taichi#8763" in leaks.causes[0]
    assert grew(leaks.leaking[0]) == (
        "own memory grew 1.2 MiB per round (in 5 of 5 rounds, allowance 1.0 MiB)"
    )
    assert summary(leaks) == "own memory +1.2 MiB/round"


def test_without_warmup_the_first_measured_round_is_the_start() -> None:
    leaks = judge(_rounds(2.0, warmup=0, measured=4), 0, 4, MIB)
    own = leaks.of("own_memory_bytes")
    assert own is not None and own.leak and own.rounds == 3


def test_rounds_that_did_not_all_run_are_not_judged() -> None:
    readings = _rounds(5.0)[:3]
    leaks = judge(readings, 2, 5, MIB)
    assert not leaks.judged and not leaks.leaking
    assert leaks.note == "only 3 of 7 rounds were read"
    stopped = judge(readings, 2, 5, MIB, stopped="the test failed in round 4")
    assert stopped.note == "the test failed in round 4" and stopped.readings == tuple(readings)


def test_leaks_round_trip_as_json() -> None:
    readings = _rounds(
        3.0,
        taichi=lambda n: {"fields": n},
        sites=lambda n: {"field at a.py:1 in f": n},
        made=lambda n: {"ndarray at a.py:2 in f": 1},
    )
    leaks = judge(readings, 2, 5, MIB)
    assert leaks.leaking and leaks.causes
    assert Leaks.from_json(leaks.to_json()) == leaks
    assert leaks.growth_bytes_per_round == pytest.approx(3 * MIB)


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda data: data.update(rounds="x"), "rounds and series must be lists"),
        (lambda data: data["rounds"][0].update(warmup=1), "warmup must be true or false"),
        (lambda data: data["rounds"][0].update(cpu_s="1"), "cpu_s must be a number"),
        (lambda data: data["rounds"][0].update(sites={"a": 1.5}), "sites must map names"),
        (lambda data: data["series"][0].update(slope=None), "slope must be a number"),
        (lambda data: data.update(causes=[1]), "causes must be a list of strings"),
        (lambda data: data.update(allowance_bytes=0.5), "allowance_bytes must be a whole"),
    ],
)
def test_leaks_from_json_refuses_another_shape(change: Any, says: str) -> None:
    data = judge(_rounds(3.0), 2, 5, MIB).to_json()
    change(data)
    with pytest.raises(LeakRecordError, match=says):
        Leaks.from_json(data)


def test_gpu_memory_per_round_is_judged_where_it_was_measured() -> None:
    # Issue 20: GPU memory (NVML, where it sees a device) is a figure per round like own
    # memory, judged against the same allowance; where no round measured it, it is not judged.
    # (No GPU on the machines this was written on: the figures are made up here.)
    def on_the_gpu(growth_mib: float) -> list[RoundReading]:
        return [
            replace(reading, gpu_bytes=int((64 + growth_mib * reading.number) * MIB))
            for reading in _rounds(0.0)
        ]

    leaking = judge(on_the_gpu(4.0), 2, 5, MIB)
    assert [verdict.key for verdict in leaking.leaking] == ["gpu_bytes"]
    assert grew(leaking.leaking[0]) == (
        "GPU memory grew 4.0 MiB per round (in 5 of 5 rounds, allowance 1.0 MiB)"
    )
    clean = judge(on_the_gpu(0.0), 2, 5, MIB)
    gpu = clean.of("gpu_bytes")
    assert gpu is not None and not gpu.leak and not clean.leaking
    assert judge(_rounds(0.0), 2, 5, MIB).of("gpu_bytes") is None  # no NVML: not judged
