"""`taichi-limits` / `python -m pytest_taichi_limits`: compare, merge and render reports outside
pytest, for CI systems that run the tests in one job and judge them in another.

    taichi-limits compare BASELINE REPORT.json [--tolerance SPEC] [--markdown PATH] [-o OUT]
    taichi-limits accept BASELINE REPORT.json TEST [TEST ...]
    taichi-limits merge A.json B.json ... -o OUT [--prefer newest]
    taichi-limits html REPORT.json -o report.html
    taichi-limits markdown REPORT.json [-o summary.md]
    taichi-limits show REPORT.json [--top N] [-v]

Exit status: 0 fine, 1 regressions (compare), 2 a file or argument that cannot be used (the
message says which and why; never a traceback); a closed pipe (`... | head`) ends it by SIGPIPE,
quietly, as `cat`. Every subcommand reads its files through formats/reading.py: the same checks
(size, JSON, kind, version, every record's shape) everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .config.units import counted
from .formats import baseline as baselines
from .formats import reading
from .formats.environment import differences
from .formats.jsonreport import BaselineSection, Report, write_atomic
from .formats.reading import InputError
from .model.records import Regression, UsageRecord
from .render import html as htmlreport
from .render import markdown, summary

EXIT_OK, EXIT_REGRESSIONS, EXIT_ERROR = 0, 1, 2
PROG = "taichi-limits"
#: Environment keys whose difference between merged files is reported.
MERGE_COMPARED_KEYS = (
    "python",
    "pytest",
    "taichi",
    "pytest_taichi_limits",
    "platform",
    "machine",
    "host",
)


# -- compare ------------------------------------------------------------------------------------


def compare_report(
    report: Report,
    baseline: baselines.Baseline,
    tolerance: baselines.Tolerance,
    report_path: str | None = None,
) -> Report:
    """The report with each record's regression and the baseline section recomputed against
    `baseline`, as --taichi-limits-compare would have set them (`report_path`: the file the
    report came from, named in the regression's hint)."""
    compared_records = []
    for record in report.records:
        regression = None
        if record.comparable and record.nodeid in baseline.tests:
            growths = baselines.compare(record, baseline.tests[record.nodeid], tolerance)
            exceeded = [growth for growth in growths if growth.exceeded]
            if exceeded:
                text = baselines.regression_report(
                    exceeded, growths, baseline, record.nodeid, record, False, report_path
                )
                regression = Regression(False, text, tuple(growths))
        compared_records.append(dataclasses.replace(record, regression=regression))
    measured = {record.nodeid for record in compared_records if record.measured}
    everything = {record.nodeid for record in compared_records}
    section = BaselineSection(
        path=baseline.path,
        tolerance=tolerance.describe(),
        warn_only=False,
        regressions=tuple(record.nodeid for record in compared_records if record.regression),
        new_tests=tuple(sorted(measured - set(baseline.tests))),
        missing_tests=tuple(sorted(set(baseline.tests) - everything)),
        environment_warnings=tuple(baseline.environment_warnings(report.environment)),
    )
    return dataclasses.replace(report, records=tuple(compared_records), baseline=section)


def _baseline_lines(report: Report, verbose: bool) -> list[str]:
    section = report.baseline
    if section is None:
        return []
    records = list(report.records)
    lines = [f"WARNING: {line}" for line in section.environment_warnings]
    lines += summary.regressions(records, section.path)
    lines += summary.test_lists(section.new_tests, section.missing_tests, verbose, records)
    if not section.regressions:
        lines.append(f"no test grew beyond tolerance ({section.tolerance}) against {section.path}")
    return lines


def _summary_lines(report: Report, top: int, verbose: bool) -> list[str]:
    records = list(report.records)
    lines: list[str] = []
    if records:
        lines += summary.top_consumers(records, top)
        lines += summary.violations(records)
    return lines + _baseline_lines(report, verbose)


def run_compare(args: argparse.Namespace) -> int:
    baseline = reading.load_baseline(args.baseline)
    report = reading.load_report(args.report)
    try:
        tolerance = baselines.parse_tolerance(args.tolerance)
    except baselines.ToleranceError as error:
        raise InputError(f"--tolerance: {error}") from None
    compared = compare_report(report, baseline, tolerance, args.report)
    count = sum(
        1 for record in compared.records if record.comparable and record.nodeid in baseline.tests
    )
    lines = [
        (
            f"{args.report}: {count} of {len(compared.records)} tests compared with "
            f"{args.baseline} ({len(baseline.tests)} tests), tolerance {tolerance.describe()}"
        )
    ]
    lines += _baseline_lines(compared, args.verbose)
    _print("\n".join(lines))
    if args.markdown:
        _write(args.markdown, markdown.summary(compared, args.top), "Markdown summary")
    if args.output:
        _write(args.output, _json_text(compared), "compared JSON report")
    assert compared.baseline is not None
    return EXIT_REGRESSIONS if compared.baseline.regressions else EXIT_OK


def _json_text(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2, default=str) + "\n"


# -- accept -------------------------------------------------------------------------------------


def run_accept(args: argparse.Namespace) -> int:
    """Reviewed growth, accepted: the named tests' entries of BASELINE from REPORT.json."""
    baseline = reading.load_baseline(args.baseline)
    report = reading.load_report(args.report)
    by_id = {record.nodeid: record for record in report.records}
    missing = [nodeid for nodeid in args.tests if nodeid not in by_id]
    if missing:
        raise InputError(
            f"{args.report} has no record of {', '.join(map(repr, missing))}: give test ids as "
            "the report writes them (taichi-limits show lists them)"
        )
    chosen = [by_id[nodeid] for nodeid in dict.fromkeys(args.tests)]
    lines = baselines.accept(baseline, chosen, report.environment, report.calibration.figure)
    _print(
        "\n".join(
            [f"accepted into {args.baseline} from {args.report} ({counted(len(lines), 'test')}):"]
            + [f"  {line}" for line in lines]
        )
    )
    return EXIT_OK


# -- merge --------------------------------------------------------------------------------------


def _environment_notes(sources: list[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """One line per file whose environment differs from the first file's."""
    first_path, first = sources[0]
    notes = []
    for path, environment in sources[1:]:
        changed = differences(dict(first), dict(environment), MERGE_COMPARED_KEYS)
        if changed:
            notes.append(
                f"note: {path} was made in another environment than {first_path}: "
                + "; ".join(changed)
            )
    return notes


def _duplicate(nodeid: str, kept: str, other: str) -> InputError:
    return InputError(
        f"test {nodeid!r} is in both {kept} and {other}: shards must not overlap "
        "(or pass --prefer newest to keep the newer figures)"
    )


def _merged_section(
    sections: list[tuple[str, BaselineSection]], chosen: set[str], notes: list[str]
) -> BaselineSection | None:
    if not sections:
        return None
    for what, values in (
        ("path", sorted({found.path for _, found in sections})),
        ("tolerance", sorted({found.tolerance for _, found in sections})),
    ):
        if len(values) > 1:
            notes.append(
                f"note: the reports were compared with different baseline {what}s: "
                + ", ".join(values)
            )
    first = sections[0][1]

    def union(names: Callable[[BaselineSection], tuple[str, ...]]) -> tuple[str, ...]:
        return tuple(sorted({nodeid for _, found in sections for nodeid in names(found)}))

    return BaselineSection(
        path=first.path,
        tolerance=first.tolerance,
        warn_only=all(found.warn_only for _, found in sections),
        regressions=union(lambda found: found.regressions),
        new_tests=union(lambda found: found.new_tests),
        missing_tests=tuple(n for n in union(lambda found: found.missing_tests) if n not in chosen),
        environment_warnings=union(lambda found: found.environment_warnings),
    )


def merge_reports(
    loaded: list[tuple[str, Report]], prefer_newest: bool
) -> tuple[Report, list[str]]:
    chosen: dict[str, tuple[str, UsageRecord]] = {}
    for path, report in loaded:
        for record in report.records:
            if record.nodeid in chosen:
                if not prefer_newest:
                    raise _duplicate(record.nodeid, chosen[record.nodeid][0], path)
                if record.started_at < chosen[record.nodeid][1].started_at:
                    continue
            chosen[record.nodeid] = (path, record)
    notes = _environment_notes([(path, report.environment) for path, report in loaded])
    sections = [(path, report.baseline) for path, report in loaded if report.baseline]
    merged = Report(
        records=tuple(chosen[nodeid][1] for nodeid in sorted(chosen)),
        environment=loaded[0][1].environment,
        complete=all(report.complete for _, report in loaded),
        exit_status=max(report.exit_status for _, report in loaded),
        baseline=_merged_section(sections, set(chosen), notes),
        source=loaded[0][1].source,
    )
    return merged, notes


def merge_baselines(
    loaded: list[baselines.Baseline], prefer_newest: bool, path: str = "merged"
) -> tuple[baselines.Baseline, list[str]]:
    tests: dict[str, tuple[str, baselines.Entry]] = {}
    environments: dict[str, dict[str, Any]] = {}
    for found in loaded:
        environments.update({key: dict(value) for key, value in found.environments.items()})
        for nodeid, entry in found.tests.items():
            if nodeid in tests:
                if not prefer_newest:
                    raise _duplicate(nodeid, tests[nodeid][0], found.path)
                if entry.saved_at < tests[nodeid][1].saved_at:
                    continue
            tests[nodeid] = (found.path, entry)
    used = {entry.environment for _, entry in tests.values()}
    kept = {key: value for key, value in environments.items() if key in used}
    distinct = sorted(kept.items())
    notes = (
        _environment_notes([(f"environment {key}", value) for key, value in distinct])
        if len(distinct) > 1
        else []
    )
    merged = baselines.Baseline(path, {nodeid: entry for nodeid, (_, entry) in tests.items()}, kept)
    return merged, notes


def run_merge(args: argparse.Namespace) -> int:
    if len(args.files) < 2:
        raise InputError("merge: give at least two files")
    documents = {path: reading.read_json(path) for path in args.files}  # each read once
    kinds = {path: reading.kind_of(data) for path, data in documents.items()}
    unknown = [path for path, kind in kinds.items() if kind == "unknown"]
    if unknown:
        raise InputError(
            f"{unknown[0]} is neither a pytest-taichi-limits JSON report nor a baseline"
        )
    if len(set(kinds.values())) > 1:
        raise InputError(
            "merge: give files of one kind: "
            + ", ".join(f"{path} is a {kind}" for path, kind in kinds.items())
        )
    prefer_newest = args.prefer == "newest"
    if set(kinds.values()) == {"report"}:
        report, notes = merge_reports(
            [(path, reading.check_report(path, documents[path])) for path in args.files],
            prefer_newest,
        )
        what = f"JSON report of {len(report.records)} tests"
        text = _json_text(report)
    else:
        merged, notes = merge_baselines(
            [reading.check_baseline(path, documents[path]) for path in args.files],
            prefer_newest,
            args.output,
        )
        what = f"baseline of {len(merged.tests)} tests"
        text = json.dumps(merged.to_json(), indent=2, sort_keys=True) + "\n"
    for note in notes:
        print(note, file=sys.stderr)
    _write(args.output, text, f"merged {what}")
    return EXIT_OK


# -- render -------------------------------------------------------------------------------------


def run_html(args: argparse.Namespace) -> int:
    _write(args.output, htmlreport.render(reading.load_report(args.report)), "HTML report")
    return EXIT_OK


def run_markdown(args: argparse.Namespace) -> int:
    text = markdown.summary(reading.load_report(args.report), args.top)
    if args.output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        _write(args.output, text, "Markdown summary")
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    report = reading.load_report(args.report)
    header = (
        f"{args.report}: {len(report.records)} supervised tests, written {report.created_at}"
        + ("" if report.complete else " (session interrupted: incomplete)")
    )
    _print("\n".join([header, *_summary_lines(report, args.top, args.verbose)]))
    return EXIT_OK


def _print(text: str) -> None:
    print(text)


def _write(path: str, text: str, what: str) -> None:
    try:
        write_atomic(path, text)
    except OSError as error:
        raise InputError(f"cannot write the {what} to {path}: {error}") from None
    print(f"{what} written to {path}", file=sys.stderr)


# -- arguments ----------------------------------------------------------------------------------


def _top(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(
        prog=PROG, description="Compare, merge and render pytest-taichi-limits reports."
    )
    commands = main_parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compare = commands.add_parser(
        "compare", help="compare a JSON report with a baseline; exit 1 on regressions"
    )
    compare.add_argument("baseline", metavar="BASELINE")
    compare.add_argument("report", metavar="REPORT.json")
    compare.add_argument(
        "--tolerance",
        metavar="SPEC",
        default=None,
        help="allowed growth per resource, as --taichi-limits-tolerance "
        f"(default {baselines.DEFAULT_TOLERANCE_SPEC.replace('%', '%%')})",
    )
    compare.add_argument(
        "--markdown",
        metavar="PATH",
        default=None,
        help="also write the Markdown summary of the comparison here",
    )
    compare.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        default=None,
        help="also write the report with the comparison in it here",
    )
    compare.set_defaults(run=run_compare)

    accept = commands.add_parser(
        "accept",
        help="accept reviewed growth: the named tests' figures from a run's JSON report become "
        "their entries in the baseline",
        description="Accept reviewed growth: each named test's figures in REPORT.json (the run's "
        "--taichi-limits-json report) replace its entry in BASELINE, its range starting over "
        "from that run; other tests keep theirs. A test that failed on its own, went over its "
        "budget, was skipped or never started is refused (its figures were cut short); one "
        "that failed only by growing is accepted.",
    )
    accept.add_argument("baseline", metavar="BASELINE")
    accept.add_argument("report", metavar="REPORT.json")
    accept.add_argument("tests", nargs="+", metavar="TEST", help="test ids, as the report has them")
    accept.set_defaults(run=run_accept)

    merge = commands.add_parser(
        "merge", help="merge the JSON reports (or the baselines) of sharded runs into one"
    )
    merge.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="two or more JSON reports, or two or more baselines",
    )
    merge.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        required=True,
        help="write the merged report (or baseline) here, atomically",
    )
    merge.add_argument(
        "--prefer",
        choices=["newest"],
        default=None,
        help="a test in several files: keep the newest figures instead of failing",
    )
    merge.set_defaults(run=run_merge)

    html = commands.add_parser("html", help="write the self-contained HTML report")
    html.add_argument("report", metavar="REPORT.json")
    html.add_argument(
        "-o", "--output", metavar="OUT", required=True, help="write the HTML page here, atomically"
    )
    html.set_defaults(run=run_html)

    md = commands.add_parser("markdown", help="print (or write) the Markdown summary")
    md.add_argument("report", metavar="REPORT.json")
    md.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        default=None,
        help="write the summary here, atomically, instead of printing it",
    )
    md.set_defaults(run=run_markdown)

    show = commands.add_parser("show", help="print the terminal summary of a JSON report again")
    show.add_argument("report", metavar="REPORT.json")
    show.set_defaults(run=run_show)

    for sub in (compare, md, show):
        sub.add_argument(
            "--top",
            type=_top,
            default=5,
            metavar="N",
            help="how many top consumers to list (default 5)",
        )
    for sub in (compare, show):
        sub.add_argument("-v", "--verbose", action="store_true", help="list every missing test")
    return main_parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)  # a wrong argument: argparse's message, exit 2
    try:
        return int(args.run(args))
    except (InputError, baselines.BaselineError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - the promise is: never a traceback
        print(
            f"{PROG}: error: unexpected {type(error).__name__}: {error} (a bug in "
            "pytest-taichi-limits: please report it with the files given)",
            file=sys.stderr,
        )
        return EXIT_ERROR


def _closed_pipe() -> int:
    """The reader of our output went away (`taichi-limits show r.json | head`): end quietly, as
    `cat` does, by SIGPIPE; nothing is left to say to a reader that is gone."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    return 128 + signal.SIGPIPE  # only where the signal could not end the process
