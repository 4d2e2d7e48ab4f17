"""The wire between the plugin's processes: every record that crosses it, encoded and decoded here.

Three kinds of records cross a process boundary, each a family of frozen dataclasses below:
- *messages*, from the supervised child to the parent, about the test it runs (the report
  channel, `ipc/channel.py`). Anything the child writes may be forged by the test itself: the
  parent checks every field's type when it decodes a line, and a line that is not one of these
  messages (garbage, an unknown kind, a missing, extra or mistyped field) is a `ChannelError`:
  the test fails saying so, never pytest. The parent still measures for itself whatever it can
  (memory, CPU time, the clock), and believes the child's `Done` only once it has seen the child
  wait for its next command (supervise/supervisor.py);
- *commands*, from the parent to an idle child: run the test at an index, or stop;
- *exit statuses*, from the plugin's subreaper above the test (the fork server of a forked
  child, or the spawn-mode zygote) to the parent: the child's pid, then how it ended (wait4's
  status, peak RSS and CPU time), and the fork server's answer to a move;
- *orders*, from the parent to its fork server (launch/forkserver.py): fork a test's child (its
  file descriptors travel with the order), or move into the next worker's memory cgroup.

Each family is one JSON object per line, its kind under a tag key ("t", "c", "s", "o"); a tuple
inside a field survives the trip (pytest's serialised reports rely on them). To add a message
kind, see CONTRIBUTING.md ("How to add a message kind").
"""

from __future__ import annotations

import json
import resource
import signal
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, Generic, Protocol, TypeVar, get_type_hints

from ..config.budget import MAX_LEAK_ROUNDS


class ChannelError(ValueError):
    """A line that is not a record of the family it was read as; the text says why."""


#: The phases of a test, in order, as the child names them.
PHASES = ("setup", "call", "teardown")

#: The `key` of a Note that says a ti.init's device memory was clamped to gpu_gb.
CLAMP_NOTE = "gpu_clamp"
#: The `key` of a Note that says why a test that hunts leaks ran once (child/rounds.py).
ROUNDS_NOTE = "leak_hunting"

#: faulthandler dumps every thread's Python stack on this signal, even while native code
#: (a Taichi kernel) holds the GIL. A real-time signal, so tests that use SIGUSR1/2 keep them.
STACK_SIGNAL = signal.SIGRTMIN + 7

#: Exit codes of the child; anything else is a crash.
EXIT_DONE = 0
EXIT_INTERNAL_ERROR = 70

#: What the child writes back on the control socket after `Ready` and `Done`: the parent's
#: loop wakes for it at once, while it reads other messages at most once per interval.
BELL = b"!"


# -- messages: child -> parent, in the order a run sends them ------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """The child is set up (in a fresh interpreter: collected) and waits for a command."""

    KIND: ClassVar[str] = "ready"
    pid: int


@dataclass(frozen=True, slots=True)
class Hello:
    """A test starts. `arch`: the arch of the child's Taichi program at that moment (None: no
    program), wherever ti.init happened: a test the supervisor stops, or that crashes, never
    says `done`, and still ran with it."""

    KIND: ClassVar[str] = "hello"
    nodeid: str
    arch: str | None = None


@dataclass(frozen=True, slots=True)
class Phase:
    """setup / call / teardown begins."""

    KIND: ClassVar[str] = "phase"
    when: str

    def __post_init__(self) -> None:
        if self.when not in PHASES:
            raise ValueError(f"when must be one of {', '.join(PHASES)}, got {self.when[:40]!r}")


@dataclass(frozen=True, slots=True)
class TaichiInit:
    """ti.init was called: the arch it asked for, and where that came from."""

    KIND: ClassVar[str] = "taichi_init"
    arch: str
    arch_from: str  # "argument", "TI_ARCH" or "Taichi's default"


@dataclass(frozen=True, slots=True)
class TaichiInitDone:
    """ti.init returned: the arch Taichi chose (None: the init failed before it chose one)."""

    KIND: ClassVar[str] = "taichi_init_done"
    arch: str | None


@dataclass(frozen=True, slots=True)
class Note:
    """Something the report should say: a clamp of ti.init (`CLAMP_NOTE`), a failed reset."""

    KIND: ClassVar[str] = "note"
    key: str
    text: str


@dataclass(frozen=True, slots=True)
class TaichiDeviceOom:
    """A phase failed because Taichi ran out of device memory."""

    KIND: ClassVar[str] = "taichi_device_oom"
    phase: str
    what: str  # what ran out, in words
    line: str  # the line Taichi wrote


@dataclass(frozen=True, slots=True)
class Fixtures:
    """The fixtures of a scope above function that are set up in the child now, as
    "name (scope)": sent whenever that changes, so the parent can name the ones whose teardown
    never ran when the child is killed."""

    KIND: ClassVar[str] = "fixtures"
    up: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Report:
    """A phase's TestReport, as pytest_report_to_serializable gave it (checked by
    pytest_report_from_serializable where it is replayed)."""

    KIND: ClassVar[str] = "report"
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RaisedWarning:
    """A warning the test raised, to be raised again in the pytest process."""

    KIND: ClassVar[str] = "warning"
    message: str
    category: str  # "module:qualname"
    filename: str
    lineno: int


@dataclass(frozen=True, slots=True)
class Done:
    """The test is over; the child waits for the next command. `arch`: the arch of the
    child's Taichi program at that moment (None: no program), wherever ti.init happened."""

    KIND: ClassVar[str] = "done"
    nodeid: str
    arch: str | None = None


#: Taichi's own counts a RoundEnd may carry (taichi_support/census.py says what each counts).
TAICHI_COUNTS = (
    "fields",
    "ndarrays",
    "textures",
    "sparse_matrices",
    "snode_trees",
    "taichi_bytes",
)
#: A RoundEnd names at most this many call sites, each in at most this many characters: the
#: child's word is bounded.
MOST_SITES = 20
_LONGEST_SITE = 300


def _check_counts(name: str, counts: dict[str, Any], keys: tuple[str, ...] | None) -> None:
    if len(counts) > (len(keys) if keys is not None else MOST_SITES):
        raise ValueError(f"{name} holds more than {MOST_SITES} entries")
    for key, value in counts.items():
        if keys is not None and key not in keys:
            raise ValueError(f"{name} has an unknown count {key[:40]!r}")
        if len(key) > _LONGEST_SITE:
            raise ValueError(f"{name} has a name longer than {_LONGEST_SITE} characters")
        if not _is_int(value) or value < 0:
            raise ValueError(f"{name}[{key[:40]!r}] must be a whole number >= 0")


@dataclass(frozen=True, slots=True)
class RoundEnd:
    """Leak hunting: round `number` (1 for the first warm-up round) ran its setup and call, the
    child collected its garbage, and it waits for `NextRoundCommand` while the parent takes its
    exact reading (the test's teardown follows). `taichi`: Taichi's own counts now
    (TAICHI_COUNTS); `sites`: Taichi objects made in the rounds so far and alive now, per
    "kind at file:line in function"; `made`: ndarrays made in this round, per site (alive or
    not: Taichi 1.7.4 never frees a vector or matrix ndarray's memory)."""

    KIND: ClassVar[str] = "round_end"
    number: int
    taichi: dict[str, Any]
    sites: dict[str, Any]
    made: dict[str, Any]

    def __post_init__(self) -> None:
        if not 1 <= self.number <= MAX_LEAK_ROUNDS:
            raise ValueError(f"number must be from 1 to {MAX_LEAK_ROUNDS}, got {self.number}")
        _check_counts("taichi", self.taichi, TAICHI_COUNTS)
        _check_counts("sites", self.sites, None)
        _check_counts("made", self.made, None)


@dataclass(frozen=True, slots=True)
class Exit:
    """pytest.exit or KeyboardInterrupt inside the test: the session must end."""

    KIND: ClassVar[str] = "exit"
    reason: str  # "exit" or "interrupt"
    message: str
    returncode: int | None

    def __post_init__(self) -> None:
        if self.reason not in ("exit", "interrupt"):
            raise ValueError(f"reason must be 'exit' or 'interrupt', got {self.reason[:40]!r}")

    def describe(self) -> str:
        """How the test stopped the session, for its record."""
        if self.reason == "interrupt":
            return "KeyboardInterrupt"
        return f"pytest.exit({self.message!r}, returncode={self.returncode})"


@dataclass(frozen=True, slots=True)
class Refused:
    """A fresh interpreter could not run the tests the parent asked for; `text` says why."""

    KIND: ClassVar[str] = "refused"
    text: str


@dataclass(frozen=True, slots=True)
class InternalError:
    """The plugin failed inside the child."""

    KIND: ClassVar[str] = "internal-error"
    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The child tore everything down and is about to exit."""

    KIND: ClassVar[str] = "finished"


Message = (
    Ready
    | Hello
    | Phase
    | TaichiInit
    | TaichiInitDone
    | Note
    | TaichiDeviceOom
    | Fixtures
    | Report
    | RaisedWarning
    | RoundEnd
    | Done
    | Exit
    | Refused
    | InternalError
    | Finished
)


# -- commands: parent -> idle child ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunCommand:
    """Run the test at `index` of the child's list; `next_index` is the test that will follow
    in the same child (its fixtures stay up), or None (tear everything down)."""

    KIND: ClassVar[str] = "run"
    index: int
    next_index: int | None
    cpu_s: float | None  # the test's CPU budget, for the child's RLIMIT_CPU backstop
    gpu_gb: float | None  # the test's GPU budget, for the ti.init cap
    #: leak hunting (child/rounds.py): run the test this many warm-up and measured rounds;
    #: 0 measured rounds: once, as usual
    warmup_rounds: int = 0
    measured_rounds: int = 0

    def __post_init__(self) -> None:
        rounds = (self.warmup_rounds, self.measured_rounds)
        if min(rounds) < 0 or sum(rounds) > MAX_LEAK_ROUNDS:
            raise ValueError(f"rounds must be >= 0 and at most {MAX_LEAK_ROUNDS} in all")

    @property
    def rounds(self) -> int:
        """How many times the test runs (1 without leak hunting)."""
        return self.warmup_rounds + self.measured_rounds if self.measured_rounds else 1


@dataclass(frozen=True, slots=True)
class NextRoundCommand:
    """Leak hunting: the parent took its reading after a RoundEnd; tear this round down and run
    the next one."""

    KIND: ClassVar[str] = "next_round"


@dataclass(frozen=True, slots=True)
class StopCommand:
    """Tear down what is still set up, and leave."""

    KIND: ClassVar[str] = "stop"


Command = RunCommand | NextRoundCommand | StopCommand


# -- exit statuses: the subreaper above the test -> parent ----------------------------------------


@dataclass(frozen=True, slots=True)
class ChildStarted:
    KIND: ClassVar[str] = "started"
    pid: int


@dataclass(frozen=True, slots=True)
class ChildEnded:
    """How the child ended, from wait4: its exact peak RSS and CPU time over its whole life."""

    KIND: ClassVar[str] = "ended"
    wait_status: int
    maxrss_bytes: int
    cpu_s: float

    @classmethod
    def from_wait4(cls, wait_status: int, usage: resource.struct_rusage) -> ChildEnded:
        return cls(wait_status, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime)


@dataclass(frozen=True, slots=True)
class StartFailed:
    """The zygote (or the fork server) could not fork a worker."""

    KIND: ClassVar[str] = "failed"
    error: str


@dataclass(frozen=True, slots=True)
class Moved:
    """The fork server's answer to a MoveOrder: "" when it is in that cgroup now, else why not."""

    KIND: ClassVar[str] = "moved"
    error: str


Status = ChildStarted | ChildEnded | StartFailed | Moved


# -- orders: parent -> its fork server ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForkOrder:
    """Fork a test's child. Its channel, stack, control and status fds come with the order.

    `env`: variables set in the child before anything else (the device admission chose them).
    `first`: the child's first run command, encoded (a RunCommand line): the child starts that
    test at once, without a ready/command round trip. `request`: a reimport worker's request
    and the modules it imports again, pickled and base64-encoded (the parent's own words)."""

    KIND: ClassVar[str] = "fork"
    env: dict[str, Any]
    first: str | None = None
    request: str | None = None


@dataclass(frozen=True, slots=True)
class MoveOrder:
    """Move into the memory cgroup whose cgroup.procs is `procs` (the next worker's), so that
    the next child is born there; answered with Moved."""

    KIND: ClassVar[str] = "move"
    procs: str


Order = ForkOrder | MoveOrder


# -- the codec ------------------------------------------------------------------------------------

#: JSON has no tuples, but pytest's serialized reports rely on them (a skip's longrepr is one).
_TUPLE_TAG = "\x00tuple"


class _Record(Protocol):
    KIND: ClassVar[str]


R = TypeVar("R", bound=_Record)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_float(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _to_float(value: Any) -> float | None:
    # A whole number on the wire (json writes the budget 2 as 2) is the float the field says.
    return None if value is None else float(value)


def _is_strings(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(item, str) for item in value)


#: What each field type accepts on the wire, and the type named in the error.
_CHECKS: dict[Any, tuple[Callable[[Any], bool], str]] = {
    str: (lambda value: isinstance(value, str), "a string"),
    int: (_is_int, "a whole number"),
    float: (_is_float, "a number"),
    str | None: (lambda value: value is None or isinstance(value, str), "a string or null"),
    int | None: (lambda value: value is None or _is_int(value), "a whole number or null"),
    float | None: (lambda value: value is None or _is_float(value), "a number or null"),
    tuple[str, ...]: (_is_strings, "a list of strings"),
    dict[str, Any]: (lambda value: isinstance(value, dict), "an object"),
}


@dataclass(frozen=True)
class _Field:
    name: str
    accepts: Callable[[Any], bool]
    expected: str
    convert: Callable[[Any], Any] | None  # float() for a float field, tuple() for a tuple one
    required: bool  # a field with a default may be left out


def _fields_of(record_type: type) -> tuple[_Field, ...]:
    hints = get_type_hints(record_type)
    described = []
    for field in fields(record_type):
        hint = hints[field.name]
        accepts, expected = _CHECKS[hint]  # a KeyError here: a field type the codec lacks
        convert: Callable[[Any], Any] | None = None
        if hint in (float, float | None):
            convert = _to_float
        elif hint == tuple[str, ...]:
            convert = tuple
        required = field.default is MISSING
        described.append(_Field(field.name, accepts, expected, convert, required))
    return tuple(described)


class _Family(Generic[R]):
    """One family of records: encoded as a JSON line, its kind under `tag`; decoded with every
    field checked."""

    def __init__(self, tag: str, what: str, kinds: tuple[type[R], ...]) -> None:
        self.tag = tag
        self.what = what  # how an error names where the line came from
        self._kinds: dict[str, tuple[type[R], tuple[_Field, ...]]] = {
            kind.KIND: (kind, _fields_of(kind)) for kind in kinds
        }
        assert len(self._kinds) == len(kinds), "two records share a KIND"

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self._kinds)

    def encode(self, record: R) -> bytes:
        _, described = self._kinds[record.KIND]
        data: dict[str, Any] = {self.tag: record.KIND}
        for field in described:
            data[field.name] = _tag_tuples(getattr(record, field.name))
        # repr for what JSON cannot hold (a plugin's object in a report): a string, not a crash
        return (json.dumps(data, default=repr) + "\n").encode()

    def decode(self, line: bytes) -> R:
        """The record on `line`; ChannelError when it is not one of this family's."""
        try:
            data = json.loads(line, object_hook=_untag_tuples)
        except (ValueError, RecursionError):  # RecursionError: a forged, deeply nested line
            data = None
        kind = data.get(self.tag) if isinstance(data, dict) else None
        if not isinstance(kind, str):
            raise ChannelError(f"{self.what} carried garbage: {line[:80]!r}")
        found = self._kinds.get(kind)
        if found is None:
            raise ChannelError(f"{self.what} carried an unknown message kind {kind[:40]!r}")
        record_type, described = found
        values: dict[str, Any] = {}
        for field in described:
            if field.name not in data:
                if not field.required:
                    continue
                raise ChannelError(self._malformed(kind, f"{field.name} is missing"))
            value = data[field.name]
            if not field.accepts(value):
                problem = f"{field.name} must be {field.expected}, got {_short(value)}"
                raise ChannelError(self._malformed(kind, problem))
            values[field.name] = value if field.convert is None else field.convert(value)
        if len(data) != len(values) + 1:
            extra = sorted(set(data) - {self.tag, *values})
            raise ChannelError(self._malformed(kind, f"unexpected field {extra[0][:40]!r}"))
        try:
            return record_type(**values)
        except ValueError as error:  # a value its own check refuses (Phase.when, Exit.reason)
            raise ChannelError(self._malformed(kind, str(error))) from None

    def _malformed(self, kind: str, problem: str) -> str:
        return f"{self.what} carried a malformed {kind!r} message: {problem}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _tag_tuples(value: Any) -> Any:
    if isinstance(value, tuple):
        return {_TUPLE_TAG: [_tag_tuples(element) for element in value]}
    if isinstance(value, list):
        return [_tag_tuples(element) for element in value]
    if isinstance(value, dict):
        return {key: _tag_tuples(element) for key, element in value.items()}
    return value


def _untag_tuples(value: dict[str, Any]) -> Any:
    if len(value) == 1 and _TUPLE_TAG in value and isinstance(value[_TUPLE_TAG], list):
        return tuple(value[_TUPLE_TAG])
    return value


MESSAGES: _Family[Message] = _Family(
    "t",
    "the report channel",
    (
        Ready,
        Hello,
        Phase,
        TaichiInit,
        TaichiInitDone,
        Note,
        TaichiDeviceOom,
        Fixtures,
        Report,
        RaisedWarning,
        RoundEnd,
        Done,
        Exit,
        Refused,
        InternalError,
        Finished,
    ),
)
COMMANDS: _Family[Command] = _Family(
    "c", "the control socket", (RunCommand, NextRoundCommand, StopCommand)
)
STATUSES: _Family[Status] = _Family(
    "s", "the exit status line", (ChildStarted, ChildEnded, StartFailed, Moved)
)
ORDERS: _Family[Order] = _Family("o", "the fork server's order", (ForkOrder, MoveOrder))

assert set(MESSAGES.kinds) == {kind.KIND for kind in Message.__args__}


def encode_message(message: Message) -> bytes:
    return MESSAGES.encode(message)


def decode_message(line: bytes) -> Message:
    """The message on one line from the child; ChannelError says what is wrong with it."""
    return MESSAGES.decode(line)


def encode_command(command: Command) -> bytes:
    return COMMANDS.encode(command)


def decode_command(line: bytes) -> Command:
    return COMMANDS.decode(line)


def encode_status(status: Status) -> bytes:
    return STATUSES.encode(status)


def decode_status(data: bytes) -> Status:
    return STATUSES.decode(data)


def encode_order(order: Order) -> bytes:
    return ORDERS.encode(order)


def decode_order(data: bytes) -> Order:
    return ORDERS.decode(data)
