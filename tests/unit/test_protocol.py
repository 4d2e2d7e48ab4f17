"""The wire (ipc/protocol.py): every record round-trips; anything else is a ChannelError that
says what is wrong, never another exception. And the kernel's view of a child that waits."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from pytest_taichi_limits.ipc import protocol
from pytest_taichi_limits.ipc.protocol import (
    ChannelError,
    ChildEnded,
    ChildStarted,
    Done,
    Exit,
    Finished,
    Fixtures,
    ForkOrder,
    Hello,
    InternalError,
    Message,
    Moved,
    MoveOrder,
    NextRoundCommand,
    Note,
    Phase,
    RaisedWarning,
    Ready,
    Refused,
    Report,
    RoundEnd,
    RunCommand,
    StartFailed,
    StopCommand,
    TaichiDeviceOom,
    TaichiInit,
    TaichiInitDone,
)
from pytest_taichi_limits.platform import linux

EVERY_MESSAGE: list[Message] = [
    Ready(123),
    Hello("tests/test_a.py::test_a[x-1]"),
    Hello("t.py::t", "x64"),
    Phase("call"),
    TaichiInit("cuda", "TI_ARCH"),
    TaichiInitDone("x64"),
    TaichiInitDone(None),
    Note(protocol.CLAMP_NOTE, "clamped"),
    TaichiDeviceOom("call", "the GPU driver is out of memory", "CUDA_ERROR_OUT_OF_MEMORY"),
    Fixtures(("db (module)", "server (session)")),
    Fixtures(()),
    Report({"nodeid": "t", "longrepr": ("file.py", 3, "Skipped: x"), "sections": [["a", "b"]]}),
    RaisedWarning("deprecated", "builtins:DeprecationWarning", "t.py", 7),
    RoundEnd(3, {"fields": 4, "snode_trees": 2}, {"field at t.py:3 in step": 2}, {}),
    RoundEnd(1, {}, {}, {"vector ndarray at t.py:9 in test_a": 1}),
    Done("t.py::t", "x64"),
    Done("t.py::t", None),
    Exit("exit", "stop here", 3),
    Exit("interrupt", "KeyboardInterrupt", None),
    Refused("different tests were collected"),
    InternalError("RuntimeError: x"),
    Finished(),
]


def test_every_message_kind_is_covered_here() -> None:
    assert {type(message) for message in EVERY_MESSAGE} == set(protocol.Message.__args__)


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Message) -> None:
    line = protocol.encode_message(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert protocol.decode_message(line.rstrip(b"\n")) == message


def test_commands_and_exit_statuses_round_trip() -> None:
    for command in (
        RunCommand(4, None, 2.5, None),
        RunCommand(0, 1, None, 1.0),
        RunCommand(0, 1, None, None, 2, 5),
        NextRoundCommand(),
        StopCommand(),
    ):
        assert protocol.decode_command(protocol.encode_command(command)) == command
    assert RunCommand(0, 1, None, None, 2, 5).rounds == 7
    assert RunCommand(0, 1, None, None).rounds == 1
    # A budget written as a whole number is still a float on the child's side.
    line = b'{"c": "run", "index": 0, "next_index": null, "cpu_s": 2, "gpu_gb": null}'
    decoded = protocol.decode_command(line)
    assert isinstance(decoded, RunCommand) and isinstance(decoded.cpu_s, float)
    for status in (
        ChildStarted(7),
        ChildEnded(9, 1 << 30, 0.25),
        StartFailed("OSError: x"),
        Moved(""),
        Moved("[Errno 2] No such file or directory"),
    ):
        assert protocol.decode_status(protocol.encode_status(status)) == status


def test_the_fork_servers_orders_round_trip() -> None:
    first = protocol.encode_command(RunCommand(3, None, 2.0, None)).decode()
    for order in (
        ForkOrder({}),
        ForkOrder({"CUDA_VISIBLE_DEVICES": "1"}, first=first),
        ForkOrder({}, request="cGlja2xl"),
        MoveOrder("/sys/fs/cgroup/memory/x/taichi-limits-1-2-3/cgroup.procs"),
    ):
        assert protocol.decode_order(protocol.encode_order(order)) == order
    with pytest.raises(ChannelError, match="the fork server's order carried an unknown"):
        protocol.decode_order(b'{"o": "exec"}')


def test_an_exit_status_comes_from_wait4() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    _, status, usage = os.wait4(pid, 0)
    ended = ChildEnded.from_wait4(status, usage)
    assert os.waitstatus_to_exitcode(ended.wait_status) == 3
    assert ended.maxrss_bytes == usage.ru_maxrss * 1024 > 0


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"not json", "the report channel carried garbage: b'not json'"),
        (b"[1, 2]", "the report channel carried garbage: b'[1, 2]'"),
        (b'{"kind": "hello"}', "the report channel carried garbage"),
        (b'{"t": 5}', "the report channel carried garbage"),
        (b"\xff\xfe", "the report channel carried garbage"),
        (b"[" * 100_000, "the report channel carried garbage"),  # nested past the recursion limit
        (b'{"t": "bye"}', "the report channel carried an unknown message kind 'bye'"),
        (b'{"t": "hello"}', "carried a malformed 'hello' message: nodeid is missing"),
        (b'{"t": "hello", "nodeid": 1}', "'hello' message: nodeid must be a string, got 1"),
        (b'{"t": "ready", "pid": true}', "'ready' message: pid must be a whole number, got True"),
        (b'{"t": "ready", "pid": 1.5}', "pid must be a whole number, got 1.5"),
        (b'{"t": "hello", "nodeid": "a", "rss": 1}', "'hello' message: unexpected field 'rss'"),
        (b'{"t": "phase", "when": "lunch"}', "when must be one of setup, call, teardown"),
        (b'{"t": "exit", "reason": "x", "message": "", "returncode": 0}', "reason must be"),
        (b'{"t": "fixtures", "up": ["a", 1]}', "up must be a list of strings, got ['a', 1]"),
        (b'{"t": "report", "data": []}', "'report' message: data must be an object, got []"),
        (b'{"t": "done", "nodeid": "a", "arch": 64}', "arch must be a string or null, got 64"),
        (
            b'{"t": "round_end", "number": 0, "taichi": {}, "sites": {}, "made": {}}',
            "'round_end' message: number must be from 1 to 1000, got 0",
        ),
        (
            b'{"t": "round_end", "number": 1, "taichi": {"rss": 1}, "sites": {}, "made": {}}',
            "taichi has an unknown count 'rss'",
        ),
        (
            b'{"t": "round_end", "number": 1, "taichi": {"fields": -1}, "sites": {}, "made": {}}',
            "taichi['fields'] must be a whole number >= 0",
        ),
        (
            b'{"t": "round_end", "number": 1, "taichi": {}, "sites": {"a": true}, "made": {}}',
            "sites['a'] must be a whole number >= 0",
        ),
        (
            b'{"t": "round_end", "number": 1, "taichi": {}, "sites": {}, "made": {'
            + b", ".join(b'"s%d": 1' % n for n in range(21))
            + b"}}",
            "made holds more than 20 entries",
        ),
    ],
)
def test_anything_else_is_a_channel_error_that_says_what(line: bytes, problem: str) -> None:
    with pytest.raises(ChannelError) as raised:
        protocol.decode_message(line)
    assert problem in str(raised.value)


def test_a_field_with_a_default_may_be_left_out() -> None:
    # What a test that forges `done` by hand writes: no arch. Decoded, and then not believed
    # until the parent sees the child wait for its next command (supervise/supervisor.py).
    assert protocol.decode_message(b'{"t": "done", "nodeid": "a"}') == Done("a", None)


@pytest.fixture
def waiting_child() -> Iterator[tuple[int, int, socket.socket]]:
    """A forked child whose main thread blocks in read(2) on a socket, as the plugin's child
    does between tests; (pid, the inode of its socket, our end)."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        os.read(theirs.fileno(), 1)
        time.sleep(60)  # then somewhere else: blocked, but not reading the socket
        os._exit(0)
    inode = os.fstat(theirs.fileno()).st_ino
    theirs.close()
    try:
        yield pid, inode, ours
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        ours.close()


def test_the_kernel_shows_where_a_child_waits(
    waiting_child: tuple[int, int, socket.socket],
) -> None:
    pid, inode, ours = waiting_child
    if linux.blocked_reading(pid, inode) is None:
        pytest.skip("/proc/<pid>/syscall cannot be read here: the child's word is taken")
    deadline = time.monotonic() + 30
    while not linux.blocked_reading(pid, inode):  # polled: the child gets there on its own
        assert time.monotonic() < deadline, "the child never showed up waiting on its socket"
        time.sleep(0.01)
    assert linux.blocked_reading(pid, inode + 1) is False  # another file: not the control socket
    ours.send(b"x")
    deadline = time.monotonic() + 30
    while linux.blocked_reading(pid, inode):
        assert time.monotonic() < deadline, "the child still reads after it was answered"
        time.sleep(0.01)
    assert linux.blocked_reading(pid, inode) is False  # asleep in nanosleep: not waiting for us


def test_the_report_names_at_most_twenty_fixtures_of_the_childs_word() -> None:
    from pytest_taichi_limits.render.text import not_torn_down_line

    line = not_torn_down_line(tuple(f"f{n} (module)" for n in range(25)))
    assert "f19 (module) and 5 more: the test process ended" in line
    assert "f20" not in line
