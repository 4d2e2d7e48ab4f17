"""Long runs: many supervised tests in one session, serially and under pytest-xdist.

The parent pytest process must stay flat (fds, threads, children and zombies exactly as before
each test; RSS within a bound) and every outcome must arrive. The per-test cost is printed
(`-s` shows it); speed is never asserted.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from helpers.plugin_types import RunPlugin
from helpers.watch import assert_parent_restored, resource_records, watch

#: Minutes of work each: `-m "not slow"` leaves them out of a quick run; CI runs them.
pytestmark = pytest.mark.slow

#: Tests per session. 1,000 took 67 s serially and 50 s with -n 2 on a 2-core machine at load 6;
#: TAICHI_LIMITS_LOAD_COUNT sizes it (e.g. smaller on a slower machine).
COUNT = int(os.environ.get("TAICHI_LIMITS_LOAD_COUNT", "1000"))

#: One module, a mix per ten tests: 6 pass, 2 fail, 1 violation (wall_s), 1 crash.
LOAD_TESTS = """
import os, time
import pytest

KIND = {0: "pass", 1: "pass", 2: "fail", 3: "pass", 4: "violation", 5: "pass", 6: "crash",
        7: "pass", 8: "fail", 9: "pass"}

def _params(count):
    for index in range(count):
        kind = KIND[index % 10]
        wall_s = 0.05 if kind == "violation" else 30
        yield pytest.param(index, kind, marks=pytest.mark.taichi_limits(wall_s=wall_s),
                           id=f"{index}-{kind}")

@pytest.mark.parametrize("index, kind", list(_params(COUNT)))
def test_mix(index, kind):
    if kind == "fail":
        assert index < 0, "meant to fail"
    elif kind == "violation":
        time.sleep(30)
    elif kind == "crash":
        os.abort()
"""


def expected_outcomes(count: int) -> dict[str, int]:
    per_ten = {"passed": 6, "failed": 4}  # a violation and a crash are failures too
    whole, rest = divmod(count, 10)
    passed = per_ten["passed"] * whole + sum(1 for i in range(rest) if i in (0, 1, 3, 5, 7, 9))
    return {"passed": passed, "failed": count - passed}


def write_load_tests(pytester: pytest.Pytester, count: int) -> Path:
    root = watch(pytester)
    pytester.makepyfile(test_load=LOAD_TESTS.replace("COUNT", str(count)))
    return root


def check_kinds(log_path: Path, count: int) -> None:
    """Every test's usage line arrived, each violation with it, and each crash as a crash."""
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    usages = [line for line in lines if line["event"] == "usage"]
    violations = [line for line in lines if line["event"] == "violation"]
    assert len(usages) == count
    assert len({line["nodeid"] for line in usages}) == count
    assert sorted(line["nodeid"] for line in violations) == sorted(
        line["nodeid"] for line in usages if line["nodeid"].endswith("-violation]")
    )
    for line in usages:
        if line["nodeid"].endswith("-crash]"):
            assert line["ending"] == "killed by signal 6 (SIGABRT)", line


def test_many_supervised_tests_keep_the_parent_flat(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    root = write_load_tests(pytester, COUNT)
    log = root / "usage.jsonl"
    started = time.monotonic()
    result = run_plugin(
        "-q", "--taichi-limits-grace=0.5", f"--taichi-limits-log={log}", timeout=600
    )
    took_s = time.monotonic() - started
    result.assert_outcomes(**expected_outcomes(COUNT))
    check_kinds(log, COUNT)
    assert_parent_restored(root, expected_tests=COUNT)

    records = resource_records(root)
    rss = [record["after"]["rss"] for record in records]
    # Whatever the plugin keeps per test would show as growth across hundreds of tests: the
    # parent (pytest's own report bookkeeping included) grows by far less than 100 KB a test.
    settled = rss[len(rss) // 5]
    growth = rss[-1] - settled
    tests_after_settling = len(rss) - len(rss) // 5
    assert growth < 100 * 1024 * tests_after_settling + 8 * 2**20, (settled, rss[-1])
    fds = {record["after"]["fds"] for record in records}
    threads = {record["after"]["threads"] for record in records}
    assert len(fds) == 1 and len(threads) == 1, (fds, threads)

    child_wall_s = sum(
        json.loads(line)["wall_s"]
        for line in log.read_text().splitlines()
        if json.loads(line)["event"] == "usage"
    )
    print(
        f"\n{COUNT} supervised tests in {took_s:.1f} s: {1000 * took_s / COUNT:.1f} ms per "
        f"test, of which {1000 * (took_s - child_wall_s) / COUNT:.1f} ms outside the child "
        f"(pytest start-up included); parent RSS {settled / 2**20:.1f} MB after "
        f"{len(rss) // 5} tests, {rss[-1] / 2**20:.1f} MB at the end "
        f"({growth / tests_after_settling / 1024:+.1f} KB per test); fds {fds.pop()}, threads "
        f"{threads.pop()}, zombies 0 throughout"
    )


def test_the_same_matrix_under_xdist(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    pytest.importorskip("xdist")
    root = write_load_tests(pytester, COUNT)
    log = root / "usage.jsonl"
    result = run_plugin(
        "-n", "2", "--taichi-limits-grace=0.5", f"--taichi-limits-log={log}", timeout=600
    )
    result.assert_outcomes(**expected_outcomes(COUNT))
    check_kinds(log, COUNT)  # two workers appended to one log: no line lost or torn
    text = result.stdout.str() + result.stderr.str()
    for sign in (
        "INTERNALERROR",
        "worker crashed",
        "replacing crashed worker",
        "[gw0] node down",
        "[gw1] node down",
    ):
        assert sign not in text, text
    records = resource_records(root)
    assert len(records) == COUNT
    assert len({record["pid"] for record in records}) == 2  # both workers ran tests
    assert_parent_restored(root, expected_tests=COUNT)
