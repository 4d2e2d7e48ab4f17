"""The Markdown summary of a session (GitHub job summary, pull request comment), from the
session's `Report` (formats/jsonreport.py).

What it holds, in this order: a verdict line; the budget violations; leak hunting's verdicts
(the tests that leaked, with what grew per round and its cause); the other failures (a
failed assertion, a crash, a test refused before it started), each with its one-line reason;
the regressions against the baseline; the top consumers; the tests new and missing against the
baseline. Rows are in a stable order (test id, then resource), test ids are escaped for Markdown
and long ones shortened, and the whole text stays under GitHub's job-summary limit (1 MiB), with
a note when rows had to be left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..config.units import counted, human_bytes
from ..formats.baseline import accept_command, amount, seen_text, speed_text
from ..formats.jsonreport import Report
from ..model.records import UsageRecord
from . import leaks as leak_text
from . import text

#: GitHub refuses a job summary above 1 MiB; what is written stays below with room for a note.
LIMIT_BYTES = 1024 * 1024
#: Test ids longer than this are shortened in the middle: the file's start and the test's name
#: (with its parameters) at the end are what a reader recognises.
MAX_ID_CHARS = 120
#: How many new or missing tests are named before the rest are only counted.
LISTED_TESTS = 50

_MD_SPECIAL = "\\`*_[]<>|~#"


def escape(text: str) -> str:
    """Text that Markdown (and a GitHub table cell) shows as it is."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")
    return "".join("\\" + char if char in _MD_SPECIAL else char for char in text)


def shorten(nodeid: str, limit: int = MAX_ID_CHARS) -> str:
    """At most `limit` characters: the start of the path, then from the file name on; when even
    that is too long, the file name and the test name's start and end (its parameters)."""
    if len(nodeid) <= limit:
        return nodeid
    path_end = nodeid.find("::")
    file_start = nodeid.rfind("/", 0, path_end if path_end >= 0 else len(nodeid))
    tail = nodeid[file_start:] if file_start > 0 else nodeid
    if len(tail) <= limit - 12:
        return nodeid[: limit - len(tail) - 1] + "…" + tail
    start = (limit - 2) // 2
    return "…" + tail[:start] + "…" + tail[-(limit - 2 - start) :]


def test_id(nodeid: str) -> str:
    return escape(shorten(nodeid))


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], right: set[int]) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if index in right else "---" for index in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def verdict(report: Report, marks: bool = True) -> str:
    """'### taichi-limits: ❌ FAILED — 2 budget violations, ...' (`marks`: with the emoji);
    PASSED only for a session that ran to its end."""
    counts = report.counts()
    violations, regressions = len(report.violations), len(report.regressions)
    total = sum(counts.values())
    failing = report.failing
    # An interrupted session never passed: tests that did not run have no record.
    interrupted = not failing and not report.complete
    mark = "FAILED" if failing else "INTERRUPTED" if interrupted else "PASSED"
    if marks:
        mark = ("❌ " if failing else "⚠️ " if interrupted else "✅ ") + mark
    outcomes = ", ".join(
        f"{counts[name]} {name}"
        for name in ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
        if counts.get(name)
    )
    parts = [counted(violations, "budget violation")]
    if report.baseline is not None:
        parts.append(counted(regressions, "regression"))
    parts.append(counted(total, "supervised test") + (f" ({outcomes})" if outcomes else ""))
    incomplete = "" if report.complete else " — session interrupted, incomplete"
    return f"### taichi-limits: {mark} — {', '.join(parts)}{incomplete}"


def violations_section(report: Report) -> list[str]:
    found = report.violations
    if not found:
        return []
    rows = []
    for record in found:
        violation = record.violation
        assert violation is not None
        rows.append(
            (
                test_id(record.nodeid),
                escape(violation.resource),
                f"{violation.limit:g} {violation.unit}",
                text.used_text(violation),
                text.over_text(violation),
            )
        )
    return [
        "",
        f"#### Budget violations ({len(found)})",
        "",
        *_table(("Test", "Resource", "Limit", "Used", "Over by"), rows, {2, 3, 4}),
    ]


def leaks_section(report: Report) -> list[str]:
    """The tests that hunted leaks: the ones that leaked first, each with its growth per round
    and its cause; the clean ones are only counted."""
    hunted = [record for record in report.records if record.leaks is not None]
    if not hunted:
        return []
    shown = [r for r in hunted if r.leaks is not None and (r.leaks.leaking or not r.leaks.judged)]
    rows = []
    for record in shown:
        leaks = record.leaks
        assert leaks is not None
        rows.append(
            (
                test_id(record.nodeid),
                leak_text.verdict_word(leaks),
                escape(leak_text.summary(leaks) or leak_text.own_growth(leaks)),
                escape("; ".join(leaks.causes) or leaks.note or "—"),
            )
        )
    leaking = sum(1 for r in hunted if r.leaks is not None and r.leaks.leaking)
    lines = ["", f"#### Leak hunting ({leaking} of {len(hunted)} tests leaked)", ""]
    if rows:
        lines += _table(("Test", "Verdict", "Grew per round", "Cause"), rows, set())
    clean = len(hunted) - len(shown)
    if clean:
        lines += ["", f"No leak in {clean} of them."]
    return lines


def failures_section(report: Report) -> list[str]:
    """Every failed, erroring or crashed test that is no budget violation, with why: a failed
    assertion, a crash, a test that could not start."""
    found = report.failed_otherwise()
    if not found:
        return []
    rows = [
        (
            test_id(record.nodeid),
            record.outcome if record.started else f"{record.outcome} (not started)",
            escape(record.reason or "—"),
        )
        for record in found
    ]
    return [
        "",
        f"#### Failures that are not budget violations ({len(found)})",
        "",
        *_table(("Test", "Outcome", "Reason"), rows, set()),
    ]


def regressions_section(report: Report) -> list[str]:
    section = report.baseline
    if section is None:
        return []
    lines = [""]
    for warning in section.environment_warnings:
        lines.append(f"> **Warning:** {escape(warning)}")
        lines.append("")
    speeds = report.speeds()
    if speeds is not None:
        lines.append(f"> **Machine speed:** {escape(speed_text(*speeds))}")
        lines.append("")
    if not report.regressions:
        lines.append(
            f"No test grew beyond the tolerance ({escape(section.tolerance)})"
            f" against the baseline `{section.path.replace('`', '')}`."
        )
        return lines
    rows = []
    for record, growth in report.exceeded_growths():
        kind = growth.kind
        percent = growth.growth_percent
        assert record.regression is not None
        rows.append(
            (
                test_id(record.nodeid),
                growth.words,
                seen_text(growth),
                amount(growth.after, kind),
                amount(growth.allowed, kind),
                amount(growth.growth, kind, signed=True)
                + ("" if percent is None else f" ({percent:+.1f}%)"),
                escape(f"{growth.resource}={growth.tolerance}")
                + (" (warning only)" if record.regression.warn_only else ""),
            )
        )
    header = ("Test", "Resource", "Before", "After", "Allowed up to", "Growth", "Tolerance")
    lines += [
        f"#### Regressions against the baseline ({len(report.regressions)})",
        "",
        *_table(header, rows, {2, 3, 4, 5}),
        "",
        (
            "Before: the baseline's largest figure (its range, where it saw several runs); "
            "allowed up to: that plus the tolerance."
        ),
        "",
        "**What to do:** " + what_to_do(section.path, lambda command: f"`{command}`", escape),
    ]
    return lines


def what_to_do(
    baseline_path: str,
    code: Callable[[str], str] = str,
    plain: Callable[[str], str] = str,
) -> str:
    """The one line under every regression view: how to act on a growth (`code` marks up the
    command, `plain` the words around it)."""
    command = accept_command(baseline_path, None, "TEST").replace("`", "") + " ..."
    return (
        plain("find what grew; accept reviewed growth with: ")
        + code(command)
        + plain(
            " (REPORT.json: the run's --taichi-limits-json report); or widen "
            "--taichi-limits-tolerance."
        )
    )


def _top(
    records: list[UsageRecord],
    title: str,
    figure: Callable[[UsageRecord], float],
    cell: Callable[[UsageRecord], str],
    top: int,
) -> list[str]:
    ranked = sorted(records, key=lambda record: (-figure(record), record.nodeid))[:top]
    rows = [(test_id(record.nodeid), cell(record)) for record in ranked]
    return ["", f"**{title}**", "", *_table(("Test", title.split(" by ")[-1]), rows, {1})]


def top_section(report: Report, top: int) -> list[str]:
    measured = [record for record in report.records if record.measured]
    if top <= 0 or not measured:
        return []
    shown = min(top, len(measured))
    lines = ["", "#### Top consumers"]
    lines += _top(
        measured,
        f"Top {shown} by own memory",
        lambda r: r.own_memory_bytes,
        lambda r: human_bytes(r.own_memory_bytes),
        top,
    )
    lines += _top(
        measured,
        f"Top {shown} by CPU time",
        lambda r: r.cpu_s,
        lambda r: f"{r.cpu_s:.2f} s",
        top,
    )
    on_gpu = [record for record in measured if record.gpu_peak_bytes is not None]
    if on_gpu:
        lines += _top(
            on_gpu,
            f"Top {min(top, len(on_gpu))} by GPU memory",
            lambda r: float(r.gpu_peak_bytes or 0),
            lambda r: human_bytes(float(r.gpu_peak_bytes or 0)),
            top,
        )
    return lines


def _listed(title: str, nodeids: Sequence[str]) -> list[str]:
    if not nodeids:
        return []
    lines = ["", f"<details><summary>{title} ({len(nodeids)})</summary>", ""]
    lines += [f"- {test_id(nodeid)}" for nodeid in sorted(nodeids)[:LISTED_TESTS]]
    if len(nodeids) > LISTED_TESTS:
        lines.append(f"- … and {len(nodeids) - LISTED_TESTS} more")
    lines += ["", "</details>"]
    return lines


def tests_section(report: Report) -> list[str]:
    section = report.baseline
    if section is None:
        return []
    return _listed("New since the baseline, not compared", section.new_tests) + _listed(
        "In the baseline but not measured in this run", section.missing_tests
    )


def summary(report: Report, top: int = 5, limit_bytes: int = LIMIT_BYTES) -> str:
    """The whole summary, at most `limit_bytes` of UTF-8."""
    lines = [verdict(report)]
    lines += violations_section(report)
    lines += leaks_section(report)
    lines += failures_section(report)
    lines += regressions_section(report)
    lines += top_section(report, top)
    lines += tests_section(report)
    return _fit(lines, limit_bytes) + "\n"


def _fit(lines: list[str], limit_bytes: int) -> str:
    """Whole lines up to the limit; a note says how many were left out and where all is."""
    note_room = 400
    kept: list[str] = []
    size = 0
    for index, line in enumerate(lines):
        line_size = len(line.encode("utf-8")) + 1
        if size + line_size > limit_bytes - note_room:
            left = len(lines) - index
            kept += [
                "",
                (
                    f"> **Note:** truncated to stay under {limit_bytes // 1024} KiB "
                    f"(GitHub's job summary limit): {left} more lines left out. The JSON and "
                    "HTML reports hold everything."
                ),
            ]
            break
        kept.append(line)
        size += line_size
    return "\n".join(kept)
