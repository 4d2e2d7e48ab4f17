"""Every figure true in every start mode (issue 22): the ground-truth matrix.

One inner session per start mode (fork, reimport worker, spawn) x isolation (test, module,
session) x xdist (-n 0, -n 2 with --dist loadfile) runs every cell of
`helpers.truth_matrix.MODULES`: tests of known cost (CPU burned on one thread, anonymous, memfd
and shared memory held, a sleep, a Taichi kernel) that pass, go over a budget (cpu_s, mem_mb,
wall_s) or crash, each first or later in its worker as the order and the isolation place it.
Each test writes down what it did, measured from inside (tests/helpers/truth_project.py), and
every surface (JSON report, timeline, usage log, JUnit properties, failure report, terminal
summary, Markdown, HTML table, saved baseline) is read back and checked against it within
CPU 0.1 s + 5 %, memory 2 MiB, wall 0.2 s, plus what a surface rounds away and the overhead the
plugin is known to add (tests/helpers/truth_matrix.py says which). Where a worker did something
before a test (a module's import with ti.init, 0.3 s of CPU and 8 MiB; earlier tests' CPU and
memory, kept), the test's figure must not include it.

Nothing here depends on the machine's speed or load: CPU is CPU time on both sides, memory is
held until the worker ends, and the wall interval is bounded by the test's own interval and the
time its processes demonstrably waited for a CPU.
"""

from __future__ import annotations

import time

import pytest
from helpers import memory
from helpers.plugin_types import RunPlugin
from helpers.truth_matrix import (
    MODULES,
    OUTPUT_ARGS,
    SURFACES,
    Outputs,
    SessionConfig,
    compare,
    table,
)
from helpers.truth_project import write_project

pytest.importorskip("xdist")

CONFIGS = [
    pytest.param(
        SessionConfig(mode, isolation, xdist),
        id=f"{mode}-{isolation}-n{xdist}",
        # A fresh interpreter per worker: 12-25 s a session here, against 5 s forked.
        marks=[pytest.mark.slow] if mode == "spawn" else [],
    )
    for mode in ("fork", "reimport", "spawn")
    for isolation in ("test", "module", "session")
    for xdist in (0, 2)
]

#: Every outcome, first and later in a worker that runs several tests.
COMBINATIONS = {
    (outcome, later) for outcome in ("passed", "violation", "crash") for later in (False, True)
}


@pytest.mark.parametrize("config", CONFIGS)
def test_every_figure_on_every_surface_is_the_truth(
    pytester: pytest.Pytester, run_plugin: RunPlugin, config: SessionConfig
) -> None:
    write_project(pytester.path, MODULES, config.taichi_at_import)
    (pytester.path / "out").mkdir()
    started = time.monotonic()
    result = run_plugin(*config.args(), *OUTPUT_ARGS, timeout=600)
    took = time.monotonic() - started
    result.assert_outcomes(passed=7, failed=7)
    outputs = Outputs(pytester.path, result.stdout.str())
    mismatches, checked, expected = compare(config, outputs, memory.expected_method())
    cells = sum(len(cells) for cells in MODULES.values())
    assert checked >= cells * (len(SURFACES) - 2), "the matrix read fewer surfaces than it has"
    assert not mismatches, (
        f"{len(mismatches)} of {checked} figures are not the truth ({took:.1f} s):\n"
        + "\n".join(map(str, mismatches))
        + "\n"
        + table(config, outputs, expected)
    )
    # The matrix holds what it says it holds: every outcome, first and later in a worker,
    # wherever a worker runs more than one test.
    covered = {(want.kind, want.position > 1) for want in expected.values()}
    shared = config.isolation != "test" or config.mode == "reimport"
    assert covered == (COMBINATIONS if shared else {(o, False) for o, _ in COMBINATIONS})
