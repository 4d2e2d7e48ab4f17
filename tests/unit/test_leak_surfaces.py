"""Leak hunting on every surface, from a synthetic report (tests/helpers/report_files.py): the
terminal's "leaks" block, Markdown, HTML, JUnit properties, the JSON report's schema, the
suggestions, and baselines that store and compare own memory's growth per round. And the parent's
count of rounds, which a forged RoundEnd cannot move.

Set TAICHI_LIMITS_UPDATE_GOLDEN=1 to rewrite the golden file after a deliberate change.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest
from helpers import report_files

from pytest_taichi_limits.config.budget import LeakRounds
from pytest_taichi_limits.config.tolerance import parse_tolerance
from pytest_taichi_limits.config.units import MIB
from pytest_taichi_limits.formats import baseline as baselines
from pytest_taichi_limits.formats import jsonreport
from pytest_taichi_limits.ipc.protocol import Hello, Message, RoundEnd
from pytest_taichi_limits.model.records import UsageRecord
from pytest_taichi_limits.render import html, markdown, suggest, summary
from pytest_taichi_limits.render import leaks as leak_text
from pytest_taichi_limits.supervise.rounds import RoundWatch

GOLDEN = Path(__file__).parents[1] / "golden" / "markdown"


def _records() -> dict[str, UsageRecord]:
    return {record.nodeid.split("::")[1]: record for record in report_files.with_leaks().records}


def test_the_terminal_leaks_block() -> None:
    assert summary.leaks(list(_records().values())) == [
        "leaks: 1 of 3 tests that hunted leaks grew in every round (warm-up+measured rounds: 2+5):",
        "  LEAK tests/test_sim.py::test_step - own memory +2.3 MiB/round, Taichi fields +1/round",
        "       1 new field per round, made at tests/test_sim.py:42 in step",
        "  not judged tests/test_sim.py::test_flaky - the rounds stopped in round 6 of 7: the "
        "test did not pass it",
        "  no leak in 1 (largest own memory growth +10.2 KiB/round, tests/test_sim.py::test_clean)",
    ]
    assert summary.leaks([report_files.report([report_files.record("t.py::a")]).records[0]]) == []


def test_golden_markdown_with_leaks() -> None:
    text = markdown.summary(report_files.with_leaks())
    path = GOLDEN / "with_leaks.md"
    if os.environ.get("TAICHI_LIMITS_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"differs from {path}"
    assert "| tests/test\\_sim.py::test\\_step | leak\\_mb | 1 MiB/round | own memory +2.3" in text


def test_html_has_the_leaks_section_and_a_per_round_chart() -> None:
    page = html.render(report_files.with_leaks())
    assert '<section id="leaks"><h2>Leak hunting (1 of 3 tests leaked)</h2>' in page
    assert "1 new field per round, made at tests/test_sim.py:42 in step" in page
    data = html.chart_data(_records()["test_step"])
    assert data["rw"] == 2 and data["rv"] == "leak" and data["ra"] == 1.0
    assert data["r"][:3] == [pytest.approx(42.3), pytest.approx(44.6), pytest.approx(46.9)]
    assert "own memory per round (MiB): " in page  # the chart's drawing code
    assert "r" not in html.chart_data(
        report_files.report([report_files.record("t.py::a")]).records[0]
    )


def test_junit_properties() -> None:
    found = dict(leak_text.properties(_records()["test_step"].leaks))
    assert found["taichi_limits_leak_rounds"] == "2:5"
    assert found["taichi_limits_leak_verdict"] == "leak"
    assert found["taichi_limits_leak_own_memory_bytes_per_round"] == round(2.3 * MIB)
    assert found["taichi_limits_leak_grew"] == "own memory +2.3 MiB/round, Taichi fields +1/round"
    assert found["taichi_limits_leak_cause"] == (
        "1 new field per round, made at tests/test_sim.py:42 in step"
    )
    assert len(str(found["taichi_limits_leak_own_memory_bytes"]).split()) == 7
    flaky = dict(leak_text.properties(_records()["test_flaky"].leaks))
    assert flaky["taichi_limits_leak_verdict"] == "not judged"
    assert str(flaky["taichi_limits_leak_note"]).startswith("the rounds stopped in round 6 of 7")
    assert leak_text.properties(None) == []


def test_the_json_report_holds_the_rounds_and_matches_its_schema() -> None:
    document = report_files.with_leaks_document()
    assert document["version"] == jsonreport.VERSION == 4
    jsonschema.validate(document, jsonreport.REPORT_SCHEMA)
    step = next(r for r in document["records"] if r["nodeid"].endswith("test_step"))
    assert [r["round"] for r in step["leaks"]["rounds"]] == [1, 2, 3, 4, 5, 6, 7]
    assert step["budget"]["leak_mb"] == 1.0
    back = UsageRecord.from_json(json.loads(json.dumps(step)))
    assert back.leaks is not None and back.leaks.causes == (
        "1 new field per round, made at tests/test_sim.py:42 in step",
    )
    # A record of version 3 (no leaks, no leak_mb in its budget) still reads.
    old = dict(step, budget={k: v for k, v in step["budget"].items() if k != "leak_mb"})
    del old["leaks"]
    assert UsageRecord.from_json(old).leaks is None


def test_suggest_an_allowance_from_what_was_measured() -> None:
    records = _records()
    clean = suggest.suggestion_for(records["test_clean"])
    # 4 x 10.2 KiB + 0.25 MiB, rounded up to a quarter MiB.
    assert clean.values["leak_mb"] == 0.5 and not clean.caution
    leaky = suggest.suggestion_for(records["test_step"])
    assert "leak_mb" not in leaky.values
    assert leaky.caution.startswith("it LEAKED (own memory +2.3 MiB/round")
    text = suggest.lines(suggest.suggestions(records.values()))
    assert "taichi_limits_leak_mb = 0.5" in text
    # Not every test of the snippet hunted leaks: the key would switch it on for all of them.
    plain = report_files.report([report_files.record("t.py::plain")]).records[0]
    mixed = suggest.lines(suggest.suggestions([records["test_clean"], plain]))
    assert not any(line.startswith("taichi_limits_leak_mb") for line in mixed)


def test_a_baseline_stores_growth_per_round_and_a_new_leak_fails_under_the_allowance(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "baseline.json")
    clean = _records()["test_clean"]
    baselines.save(path, [clean], report_files.ENVIRONMENT, replace=True)
    saved = json.loads(Path(path).read_text())["tests"][clean.nodeid]
    assert saved["leak_bytes_per_round"]["max"] == pytest.approx(0.01 * MIB, rel=0.01)
    entry = baselines.load(path).tests[clean.nodeid]
    # The same test, now leaking 0.6 MiB per round: under leak_mb=1, over the tolerance.
    grown = dataclasses.replace(
        clean,
        leaks=UsageRecord.from_json(report_files.record("x", leaks=report_files.leaks(0.6))).leaks,
    )
    growths = {g.resource: g for g in baselines.compare(grown, entry, parse_tolerance(None))}
    assert growths["leak"].exceeded and growths["leak"].words == "own memory growth per round"
    assert not growths["mem"].exceeded
    # A baseline written before leak hunting (no such field) reads, and compares no growth.
    data = json.loads(Path(path).read_text())
    del data["tests"][clean.nodeid]["leak_bytes_per_round"]
    old = baselines.parse(path, data)
    assert "leak" not in {
        g.resource for g in baselines.compare(grown, old.tests[clean.nodeid], parse_tolerance(None))
    }


def test_the_parent_counts_rounds_itself() -> None:
    watch = RoundWatch(LeakRounds(1, 3), MIB, started_s=0.0, started_cpu_s=0.0)
    end = RoundEnd(9, {"fields": 2}, {}, {})  # the child's number is not taken
    messages: list[Message] = [Hello("t"), end, end]  # one forged, one real: two pauses
    watch.update(messages, 0)
    assert watch.pending
    first = watch.take(1.0, 0.5, 10 * MIB, None, os.getpid(), 1)
    assert first.number == 1 and first.warmup and first.taichi == {"fields": 2}
    assert first.wall_s == 1.0 and first.cpu_s == 0.5 and first.open_fds
    watch.take(2.5, 0.75, 11 * MIB, None, os.getpid(), 2)
    assert not watch.pending
    assert watch.readings[1].wall_s == 1.5 and watch.readings[1].processes == 1
    # More words than the test has rounds never read more rounds.
    watch.update([*messages, end, end, end, end], 0)
    for _ in range(5):
        if watch.pending:
            watch.take(3.0, 1.0, 12 * MIB, None, os.getpid(), 1)
    assert len(watch.readings) == 4 and not watch.pending
