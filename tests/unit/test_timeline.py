"""The per-test timeline: downsampling keeps the peaks, the size stays bounded, the form is
valid."""

from __future__ import annotations

import json

import jsonschema  # type: ignore[import-untyped]
import pytest

from pytest_taichi_limits.model.timeline import (
    CAPACITY,
    TIMELINE_SCHEMA,
    Points,
    Timeline,
    TimelineError,
    check,
)


def test_few_samples_are_kept_as_they_are() -> None:
    timeline = Timeline()
    for index in range(5):
        timeline.add(index * 0.1, index * 1000, index * 0.05, None)
    data = timeline.to_json()
    assert data["t_s"] == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert data["mem_bytes"] == [0, 1000, 2000, 3000, 4000]
    assert data["cpu_s"] == [0.0, 0.05, 0.1, 0.15, 0.2]
    assert data["gpu_bytes"] is None
    assert data["violation_at_s"] is None


@pytest.mark.parametrize("samples", [CAPACITY, CAPACITY + 1, 1_000, 100_000])
def test_never_more_than_capacity_and_last_sample_kept(samples: int) -> None:
    timeline = Timeline()
    for index in range(samples):
        timeline.add(index * 0.01, 1000.0 + index, index * 0.001, None)
    data = timeline.to_json()
    assert 0 < len(data["t_s"]) <= CAPACITY
    assert len(data["t_s"]) >= CAPACITY // 2 or samples < CAPACITY // 2
    assert data["t_s"][-1] == round((samples - 1) * 0.01, 4)  # the end of the test is shown
    assert data["cpu_s"][-1] == round((samples - 1) * 0.001, 4)
    assert data["t_s"] == sorted(data["t_s"])


def test_a_short_peak_survives_downsampling() -> None:
    timeline = Timeline(capacity=10)
    for index in range(1000):
        memory = 5_000_000 if index == 537 else 1000
        timeline.add(float(index), memory, float(index), None)
    data = timeline.to_json()
    assert len(data["t_s"]) <= 10
    assert max(data["mem_bytes"]) == 5_000_000
    assert data["mem_bytes"].count(5_000_000) == 1
    # the point holding the peak covers the peak's moment
    peak_index = data["mem_bytes"].index(5_000_000)
    assert data["t_s"][peak_index] >= 537
    assert peak_index == 0 or data["t_s"][peak_index - 1] < 537


def test_stride_doubles_each_time_it_fills() -> None:
    timeline = Timeline(capacity=4)
    for index in range(4):
        timeline.add(float(index), 0, 0.0, None)
    assert (len(timeline), timeline.stride) == (4, 1)
    timeline.add(4.0, 0, 0.0, None)
    assert (len(timeline), timeline.stride) == (3, 2)  # 2 merged pairs + the new point
    assert timeline.to_json()["t_s"] == [1.0, 3.0, 4.0]


def test_gpu_figures_where_measured_and_negative_memory_clamped() -> None:
    timeline = Timeline()
    timeline.add(0.0, -50, 0.0, None)
    timeline.add(0.1, 10, 0.0, 2048)
    data = timeline.to_json(violation_at_s=0.12345)
    assert data["mem_bytes"] == [0, 10]
    assert data["gpu_bytes"] == [None, 2048]
    assert data["violation_at_s"] == 0.1235
    jsonschema.validate(data, TIMELINE_SCHEMA)
    check(data)
    assert json.loads(json.dumps(data)) == data


def test_capacity_must_be_even() -> None:
    with pytest.raises(ValueError, match="even"):
        Timeline(capacity=7)


def test_check_rejects_bad_timelines() -> None:
    with pytest.raises(TimelineError, match="same length"):
        check({"t_s": [0.0], "mem_bytes": [], "cpu_s": [0.0], "gpu_bytes": None})
    with pytest.raises(TimelineError, match="mem_bytes"):
        check({"t_s": [0.0], "mem_bytes": "x", "cpu_s": [0.0]})


def test_points_read_a_stored_timeline_and_refuse_a_bad_one() -> None:
    timeline = Timeline()
    timeline.add(0.5, 1000, 0.25, 2048)
    points = Points.of(timeline.to_json(violation_at_s=0.4))
    assert points == Points((0.5,), (1000.0,), (0.25,), (2048.0,), 0.4)
    assert Points.of({"t_s": [0.0], "mem_bytes": []}) is None
    assert Points.of(None) is None
