"""The parent's side of leak hunting: one exact reading after each round of a test.

The child runs the test in rounds (child/rounds.py) and, after each, says `RoundEnd` and waits on
the control socket. The parent does not take the word for it: it takes the round's reading only
once it sees (in /proc, as for `done`) the child's main thread wait there, idle, and then answers
`NextRoundCommand`. The round number is the parent's own count, never the child's: a forged
`RoundEnd` can only make the parent wait for the child to be idle, never read more rounds than
the test has. Budgets hold per round for time (wall_s, cpu_s start again at each round) and
from the test's start for memory (a leak that breaks mem_mb in round 7 breaks it then).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.budget import LeakRounds
from ..ipc.protocol import Message, RoundEnd
from ..model.leaks import Leaks, RoundReading
from ..platform import linux
from . import leaks


@dataclass
class RoundWatch:
    """One test's rounds, as the parent sees them."""

    rounds: LeakRounds
    allowance_bytes: int | None
    started_s: float  # monotonic time when the current round began
    started_cpu_s: float  # CPU time of the tree when the current round began
    readings: list[RoundReading] = field(default_factory=list)
    told: list[RoundEnd] = field(default_factory=list)  # the child's words, in order
    _seen: int = 0  # messages looked at

    def update(self, messages: list[Message], first: int) -> None:
        """Note the RoundEnd messages among the test's messages (from index `first`)."""
        start = max(self._seen, first)
        self.told += [m for m in messages[start:] if isinstance(m, RoundEnd)]
        self._seen = len(messages)

    @property
    def pending(self) -> bool:
        """The child said a round ended that the parent has not read yet."""
        return len(self.told) > len(self.readings) and len(self.readings) < self.rounds.total

    def elapsed_s(self, now: float) -> float:
        return now - self.started_s

    def cpu_s(self, tree_cpu_s: float) -> float:
        return tree_cpu_s - self.started_cpu_s

    def take(
        self,
        now: float,
        tree_cpu_s: float,
        own_memory_bytes: int,
        gpu_bytes: int | None,
        pid: int,
        processes: int,
    ) -> RoundReading:
        """The round's reading (the child idle), and the next round's clocks start."""
        number = len(self.readings) + 1
        told = self.told[len(self.readings)]
        reading = RoundReading(
            number=number,
            warmup=number <= self.rounds.warmup,
            own_memory_bytes=own_memory_bytes,
            gpu_bytes=gpu_bytes,
            open_fds=linux.open_fd_count(pid),
            threads=linux.thread_count(pid),
            processes=max(0, processes - 1),  # the test's own process is not a child
            cpu_s=self.cpu_s(tree_cpu_s),
            wall_s=self.elapsed_s(now),
            taichi=dict(told.taichi),
            sites=dict(told.sites),
            made=dict(told.made),
        )
        self.readings.append(reading)
        self.started_s, self.started_cpu_s = now, tree_cpu_s
        return reading

    def last_cpu_s(self, test_cpu_s: float, start_cpu_s: float) -> float:
        """The CPU time of the round the test ended in, from the test's total (`test_cpu_s`,
        the kernel's where the child was reaped) and the tree's CPU time at the test's start."""
        return test_cpu_s - (self.started_cpu_s - start_cpu_s)

    def in_progress(self) -> int:
        """The round the test is in (or was in when it stopped)."""
        return min(len(self.readings) + 1, self.rounds.total)

    def verdict(self, stopped: str = "") -> Leaks:
        """The leak verdict on the readings (`stopped`: why the rounds did not all run)."""
        return leaks.judge(
            self.readings,
            self.rounds.warmup,
            self.rounds.measured,
            self.allowance_bytes,
            stopped,
        )
