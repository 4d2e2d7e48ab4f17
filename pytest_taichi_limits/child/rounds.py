"""Leak hunting inside the child: one test run in rounds, with a pause for the parent after each.

Each round is the test's setup and call on a fresh copy of the item (fresh function-scoped
fixtures, as pytest-repeat gives; fixtures of a higher scope are set up once, in the first round,
and kept), then a pause, then its teardown. In the pause the child collects its garbage, tells
the parent Taichi's counts (`RoundEnd`, taichi_support/census.py), rings, and waits on the control
socket for `NextRoundCommand`: the parent takes its exact reading while it sees the child wait
there, its function-scoped fixtures still set up, as in every round. The teardown then keeps the
fixtures the next round shares; the last round's teardown is the test's own (its next test, or
none). Reading before the teardown means that no round is measured after fixtures of a higher
scope were torn down: the last reading would otherwise drop by what they held.

A round that does not pass (a failure, an error, a skip, an xfail, pytest.exit) is the last: its
reports are the test's, with a section that names the round. The reports of the rounds before are
never sent: a passing round says nothing the last one does not.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest

from ..config.settings import BUDGET_KEY, LEAK_ROUNDS_KEY
from ..ipc.channel import ChannelWriter, CommandReader
from ..ipc.protocol import ROUNDS_NOTE, NextRoundCommand, Note, RoundEnd, RunCommand
from ..platform import linux
from ..taichi_support.census import TaichiCensus

#: The report section that names the round a test failed in.
SECTION = "taichi_limits leak hunting"


class PhaseRunner(Protocol):
    """child/loop.py's `_run_phase`: one phase of `item`, its report made (and, with
    send=False, not yet sent)."""

    def __call__(
        self,
        item: pytest.Item,
        when: str,
        writer: ChannelWriter,
        *,
        send: bool = ...,
        **kwargs: Any,
    ) -> pytest.TestReport: ...


#: What each round's copy of a test keeps of its stash: the plugin's (the taichi_limits_ti
#: fixture reads the budget). Another plugin's entries are not copied (docs/leaks.md says so).
COPIED_STASH_KEYS: tuple[pytest.StashKey[Any], ...] = (BUDGET_KEY, LEAK_ROUNDS_KEY)


@dataclass
class RoundRunner:
    """Runs one test in `command.rounds` rounds. `current` is the copy of the item whose fixtures
    may be set up now: what a stop (SIGTERM) tears down."""

    item: pytest.Item
    command: RunCommand
    writer: ChannelWriter
    commands: CommandReader
    census: TaichiCensus
    run_phase: PhaseRunner
    send_report: Callable[[pytest.Item, pytest.TestReport], None]
    #: the teardown of an item whose teardown already ran (child/loop.py)
    teardown_again: Callable[[pytest.Item, pytest.Item | None], None]
    #: the test's CPU budget, set again before each round (RLIMIT_CPU counts from each start)
    per_round: Callable[[], None]
    current: pytest.Item = field(init=False)
    #: False once the parent answered a pause with anything but NextRoundCommand: this child
    #: then tears everything down and waits for no other command
    go_on: bool = field(init=False, default=True)
    _reports: list[pytest.TestReport] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.current = self.item

    def run(self, nextitem: pytest.Item | None) -> None:
        """Every round, or up to the first that does not pass; the reports of the round that
        decides go to the parent."""
        self.census.install()
        total = self.command.rounds
        item = _fresh(self.item)
        if item is None:  # pytest would not copy it: once, as usual, and the parent hears why
            self.writer.send(
                Note(ROUNDS_NOTE, f"{self.item.nodeid} could not be copied for its rounds")
            )
            item, total = self.item, 1
        for number in range(1, total + 1):
            self.current, self._reports = item, []
            try:
                following = self._round(item, number, total, nextitem)
            except BaseException:
                # pytest.exit, Ctrl-C, a stop: what this round reported so far is the test's,
                # as in a run without rounds.
                self._send(number, total)
                raise
            if following is None:
                self._send(number, total)
                return
            item = following

    def _round(
        self, item: pytest.Item, number: int, total: int, nextitem: pytest.Item | None
    ) -> pytest.Item | None:
        """One round; the item of the next one, or None: this round decides."""
        self.per_round()
        setup = self._phase(item, "setup")
        if setup.passed and not item.config.getoption("setuponly", False):
            self._phase(item, "call")
        passed = all(report.passed for report in self._reports)
        # Every round that passed pauses for its reading, the last one too.
        if not passed or not self._pause(number) or number == total:
            self._phase(item, "teardown", nextitem=nextitem if self.go_on else None)
            return None
        following = _fresh(self.item) or self.item
        # A test that is run as itself again keeps only its parents' fixtures.
        keep = following if following is not item else item.parent
        if not self._phase(item, "teardown", nextitem=keep).passed:
            # The fixtures kept for the next round are still set up: tear them down as the
            # test's own teardown would have.
            self.teardown_again(item, nextitem)
            return None
        return following

    def _phase(self, item: pytest.Item, when: str, **kwargs: Any) -> pytest.TestReport:
        report = self.run_phase(item, when, self.writer, send=False, **kwargs)
        self._reports.append(report)
        return report

    def _pause(self, number: int) -> bool:
        """Tell the parent this round is over and wait while it reads; False: it said stop."""
        gc.collect()
        linux.trim_heap()
        counts, sites, made = self.census.take()
        self.writer.send(RoundEnd(number, dict(counts), dict(sites), dict(made)))
        self.commands.ring()
        self.go_on = isinstance(self.commands.next(), NextRoundCommand)
        return self.go_on

    def _send(self, number: int, total: int) -> None:
        reports, self._reports = self._reports, []
        failed = next((report for report in reports if not report.passed), None)
        if failed is not None and total > 1:
            failed.sections.append((SECTION, round_text(number, self.command)))
        for report in reports:
            self.send_report(self.item, report)


def round_text(number: int, command: RunCommand) -> str:
    """Which round a test stopped in, for its report."""
    warmup = command.warmup_rounds
    kind = (
        f"warm-up round {number} of {warmup}"
        if number <= warmup
        else f"measured round {number - warmup} of {command.measured_rounds}"
    )
    before = f"; rounds 1-{number - 1} passed" if number > 2 else ""
    before = "; round 1 passed" if number == 2 else before
    return (
        f"leak hunting ran this test in up to {command.rounds} rounds ({warmup} warm-up, "
        f"{command.measured_rounds} measured): it stopped in round {number} ({kind}){before}"
    )


def _fresh(item: pytest.Item) -> pytest.Item | None:
    """A copy of a test function for one round: its own fixture values and instance, its
    parents' (module, class) fixtures shared, as pytest-repeat's copies have; None where pytest
    would not make one (a test function keeps its first round's fixture values: it cannot run
    again as itself). An item that is not a test function runs as itself in every round: its
    setup makes what it needs again."""
    if not isinstance(item, pytest.Function) or item.parent is None:
        return item
    # Parametrized arguments have no fixture definition of their own: the copy needs the
    # item's resolved fixture information, which pytest passes to from_parent but keeps under
    # a private name. Without it, the test function collected again.
    fixtureinfo = getattr(item, "_fixtureinfo", None)
    if fixtureinfo is None:
        return _collected_again(item)
    copy = pytest.Function.from_parent(
        item.parent,
        name=item.name,
        callspec=getattr(item, "callspec", None),
        originalname=item.originalname,
        fixtureinfo=fixtureinfo,
    )
    return _like(copy, item)


def _collected_again(item: pytest.Function) -> pytest.Item | None:
    parent = item.parent
    found = None
    if isinstance(parent, pytest.Collector):
        found = next((new for new in parent.collect() if new.nodeid == item.nodeid), None)
    return _like(found, item) if isinstance(found, pytest.Function) else None


def _like(copy: pytest.Function, item: pytest.Function) -> pytest.Item | None:
    if copy.nodeid != item.nodeid:
        return None
    # Markers a plugin added at collection (item.add_marker) are the test's too.
    known = {id(marker) for marker in copy.own_markers}
    copy.own_markers.extend(marker for marker in item.own_markers if id(marker) not in known)
    for key in COPIED_STASH_KEYS:
        if key in item.stash:
            copy.stash[key] = item.stash[key]
    return copy
