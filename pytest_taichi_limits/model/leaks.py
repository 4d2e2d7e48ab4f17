"""Leak hunting's records: what the parent read after each round, and what that means.

A test that hunts leaks runs W warm-up and N measured rounds in one child (child/rounds.py).
After each round the parent takes one exact reading while the child waits (`RoundReading`); the
verdict (supervise/leaks.py) fits a per-round slope to each figure and says which grew
(`SeriesVerdict`), and where the objects that stayed were made (`Leaks.causes`). Bytes and
counts; seconds for time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Each figure judged per round: (key in RoundReading.figures(), what a person calls it,
#: "bytes" or "count"). Bytes are judged against leak_mb, counts against no growth at all.
SERIES: tuple[tuple[str, str, str], ...] = (
    ("own_memory_bytes", "own memory", "bytes"),
    ("gpu_bytes", "GPU memory", "bytes"),
    ("taichi_bytes", "Taichi's field and ndarray storage", "bytes"),
    ("fields", "Taichi fields", "count"),
    ("ndarrays", "Taichi ndarrays", "count"),
    ("textures", "Taichi textures", "count"),
    ("sparse_matrices", "Taichi sparse matrices", "count"),
    ("snode_trees", "Taichi SNode trees", "count"),
    ("open_fds", "open files", "count"),
    ("threads", "threads", "count"),
    ("processes", "child processes", "count"),
)
SERIES_NAMES = {key: name for key, name, _ in SERIES}
SERIES_UNITS = {key: unit for key, _, unit in SERIES}


class LeakRecordError(ValueError):
    """Leak hunting's JSON that does not have the shape this version writes."""


@dataclass(frozen=True)
class RoundReading:
    """The figures after one round, read by the parent while the child waited (its function
    fixtures still set up), except `taichi`, `sites` and `made`: the child's own counts."""

    number: int  # 1 for the first round (warm-up rounds come first)
    warmup: bool
    own_memory_bytes: int  # since the test began (before the first round), the exact figure
    gpu_bytes: int | None  # GPU memory of the tree since the test began; None: not measured
    open_fds: int | None  # of the test's process; None: /proc not readable
    threads: int | None
    processes: int  # processes of the test's tree besides the test's own
    cpu_s: float  # CPU time of this round
    wall_s: float  # wall-clock time of this round
    taichi: Mapping[str, int] = field(default_factory=dict)  # census: fields, ndarrays, ...
    sites: Mapping[str, int] = field(default_factory=dict)  # "kind at file:line in f" -> alive
    made: Mapping[str, int] = field(default_factory=dict)  # ndarrays made this round, per site

    def figures(self) -> dict[str, int | None]:
        """Every judged figure of this round by its SERIES key (None: not measured)."""
        taichi = dict(self.taichi)
        return {
            "own_memory_bytes": self.own_memory_bytes,
            "gpu_bytes": self.gpu_bytes,
            "taichi_bytes": taichi.get("taichi_bytes"),
            "fields": taichi.get("fields"),
            "ndarrays": taichi.get("ndarrays"),
            "textures": taichi.get("textures"),
            "sparse_matrices": taichi.get("sparse_matrices"),
            "snode_trees": taichi.get("snode_trees"),
            "open_fds": self.open_fds,
            "threads": self.threads,
            "processes": self.processes,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.number,
            "warmup": self.warmup,
            "own_memory_bytes": self.own_memory_bytes,
            "gpu_bytes": self.gpu_bytes,
            "open_fds": self.open_fds,
            "threads": self.threads,
            "processes": self.processes,
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "taichi": dict(self.taichi),
            "sites": dict(self.sites),
            "made": dict(self.made),
        }

    @classmethod
    def from_json(cls, data: Any) -> RoundReading:
        where = "leaks: a round"
        fields_ = _object(data, where)
        return cls(
            number=_whole(fields_, "round", where),
            warmup=_flag(fields_, "warmup", where),
            own_memory_bytes=_whole(fields_, "own_memory_bytes", where),
            gpu_bytes=_whole_or_none(fields_, "gpu_bytes", where),
            open_fds=_whole_or_none(fields_, "open_fds", where),
            threads=_whole_or_none(fields_, "threads", where),
            processes=_whole(fields_, "processes", where),
            cpu_s=_number(fields_, "cpu_s", where),
            wall_s=_number(fields_, "wall_s", where),
            taichi=_counts(fields_, "taichi", where),
            sites=_counts(fields_, "sites", where),
            made=_counts(fields_, "made", where),
        )


@dataclass(frozen=True)
class SeriesVerdict:
    """One figure over the judged rounds: its robust slope per round and how often it grew."""

    key: str  # a SERIES key
    slope: float  # per measured round (bytes or a count): the Theil-Sen estimate
    growing_rounds: int  # rounds in which it grew (by more than nothing)
    rounds: int  # rounds judged (one per measured round; one less without warm-up)
    allowance: float  # per round: leak_mb in bytes, or 0 for a count
    leak: bool

    @property
    def name(self) -> str:
        return SERIES_NAMES.get(self.key, self.key)

    @property
    def unit(self) -> str:
        return SERIES_UNITS.get(self.key, "count")

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "slope": self.slope,
            "growing_rounds": self.growing_rounds,
            "rounds": self.rounds,
            "allowance": self.allowance,
            "leak": self.leak,
        }

    @classmethod
    def from_json(cls, data: Any) -> SeriesVerdict:
        where = "leaks: a series"
        fields_ = _object(data, where)
        key = fields_.get("key")
        if not isinstance(key, str):
            raise LeakRecordError(f"{where}: key must be a string, got {key!r}")
        return cls(
            key=key,
            slope=_number(fields_, "slope", where),
            growing_rounds=_whole(fields_, "growing_rounds", where),
            rounds=_whole(fields_, "rounds", where),
            allowance=_number(fields_, "allowance", where),
            leak=_flag(fields_, "leak", where),
        )


@dataclass(frozen=True)
class Leaks:
    """Leak hunting's outcome for one test: every round's reading and the verdict on them."""

    warmup_rounds: int
    measured_rounds: int
    allowance_bytes: int | None  # leak_mb in bytes (None: memory growth not judged)
    readings: tuple[RoundReading, ...]
    series: tuple[SeriesVerdict, ...] = ()  # the figures judged (none: see `note`)
    causes: tuple[str, ...] = ()  # where what stayed was made, one line each
    note: str = ""  # why the rounds were not judged ("" when they were)

    @property
    def judged(self) -> bool:
        return not self.note

    @property
    def leaking(self) -> tuple[SeriesVerdict, ...]:
        return tuple(verdict for verdict in self.series if verdict.leak)

    def of(self, key: str) -> SeriesVerdict | None:
        return next((verdict for verdict in self.series if verdict.key == key), None)

    @property
    def growth_bytes_per_round(self) -> float | None:
        """Own memory's slope per measured round (the baseline stores and compares it)."""
        found = self.of("own_memory_bytes")
        return None if found is None else found.slope

    def to_json(self) -> dict[str, Any]:
        return {
            "warmup_rounds": self.warmup_rounds,
            "measured_rounds": self.measured_rounds,
            "allowance_bytes": self.allowance_bytes,
            "rounds": [reading.to_json() for reading in self.readings],
            "series": [verdict.to_json() for verdict in self.series],
            "causes": list(self.causes),
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: Any) -> Leaks:
        where = "leaks"
        fields_ = _object(data, where)
        rounds = fields_.get("rounds")
        series = fields_.get("series")
        causes = fields_.get("causes")
        if not isinstance(rounds, list) or not isinstance(series, list):
            raise LeakRecordError(f"{where}: rounds and series must be lists")
        if not isinstance(causes, list) or not all(isinstance(line, str) for line in causes):
            raise LeakRecordError(f"{where}: causes must be a list of strings")
        note = fields_.get("note", "")
        if not isinstance(note, str):
            raise LeakRecordError(f"{where}: note must be a string")
        return cls(
            warmup_rounds=_whole(fields_, "warmup_rounds", where),
            measured_rounds=_whole(fields_, "measured_rounds", where),
            allowance_bytes=_whole_or_none(fields_, "allowance_bytes", where),
            readings=tuple(RoundReading.from_json(reading) for reading in rounds),
            series=tuple(SeriesVerdict.from_json(verdict) for verdict in series),
            causes=tuple(causes),
            note=note,
        )


# -- checking JSON values -------------------------------------------------------------------------


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LeakRecordError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _number(fields_: Mapping[str, Any], name: str, where: str) -> float:
    value: Any = fields_.get(name)
    if not _is_number(value) or abs(value) == float("inf"):
        raise LeakRecordError(f"{where}: {name} must be a number, got {value!r}")
    return float(value)


def _whole(fields_: Mapping[str, Any], name: str, where: str) -> int:
    value: Any = fields_.get(name)
    if not _is_number(value) or value != int(value):
        raise LeakRecordError(f"{where}: {name} must be a whole number, got {value!r}")
    return int(value)


def _whole_or_none(fields_: Mapping[str, Any], name: str, where: str) -> int | None:
    return None if fields_.get(name) is None else _whole(fields_, name, where)


def _flag(fields_: Mapping[str, Any], name: str, where: str) -> bool:
    value = fields_.get(name)
    if not isinstance(value, bool):
        raise LeakRecordError(f"{where}: {name} must be true or false, got {value!r}")
    return value


def _counts(fields_: Mapping[str, Any], name: str, where: str) -> dict[str, int]:
    value = fields_.get(name, {})
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and _is_number(count) and count == int(count)
        for key, count in value.items()
    ):
        raise LeakRecordError(f"{where}: {name} must map names to whole numbers")
    return {key: int(count) for key, count in value.items()}


_COUNT = {"type": "integer", "minimum": 0}
_COUNTS = {"type": "object", "additionalProperties": _COUNT}
_NUMBER = {"type": "number"}

#: JSON Schema of `Leaks.to_json()` (the JSON report's `leaks`, null where a test did not hunt).
LEAKS_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "required": [
        "warmup_rounds",
        "measured_rounds",
        "allowance_bytes",
        "rounds",
        "series",
        "causes",
        "note",
    ],
    "additionalProperties": False,
    "properties": {
        "warmup_rounds": _COUNT,
        "measured_rounds": _COUNT,
        "allowance_bytes": {"type": ["integer", "null"], "minimum": 0},
        "rounds": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "round",
                    "warmup",
                    "own_memory_bytes",
                    "gpu_bytes",
                    "open_fds",
                    "threads",
                    "processes",
                    "cpu_s",
                    "wall_s",
                    "taichi",
                    "sites",
                    "made",
                ],
                "additionalProperties": False,
                "properties": {
                    "round": {"type": "integer", "minimum": 1},
                    "warmup": {"type": "boolean"},
                    "own_memory_bytes": _COUNT,
                    "gpu_bytes": {"type": ["integer", "null"], "minimum": 0},
                    "open_fds": {"type": ["integer", "null"], "minimum": 0},
                    "threads": {"type": ["integer", "null"], "minimum": 0},
                    "processes": _COUNT,
                    "cpu_s": _NUMBER,
                    "wall_s": _NUMBER,
                    "taichi": _COUNTS,
                    "sites": _COUNTS,
                    "made": _COUNTS,
                },
            },
        },
        "series": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "slope", "growing_rounds", "rounds", "allowance", "leak"],
                "additionalProperties": False,
                "properties": {
                    "key": {"enum": [key for key, _, _ in SERIES]},
                    "slope": _NUMBER,
                    "growing_rounds": _COUNT,
                    "rounds": _COUNT,
                    "allowance": _NUMBER,
                    "leak": {"type": "boolean"},
                },
            },
        },
        "causes": {"type": "array", "items": {"type": "string"}},
        "note": {"type": "string"},
    },
}
