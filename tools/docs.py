"""Regenerate the parts of the docs that are made from the code and from real runs.

    python tools/docs.py             # rewrite every generated region of README.md and docs/*.md
    python tools/docs.py --check     # write nothing; exit 1 naming each region that differs
    python tools/docs.py --no-runs   # the options tables only (no pytest runs: a second)

A generated region sits between two HTML comments, which Markdown does not show:

    <!-- generated: options [DEST ...] -->       the options table: every option, or those named
    <!-- generated: run ARGS... | section NAME -->  `python -m pytest ARGS` run from the
    <!-- generated: run ARGS... | summary -->        repository's root: the failure report of
    <!-- generated: run ARGS... | suggestions -->    test NAME, the taichi-limits summary, or
                                                     the --taichi-limits-suggest lines in it
    ...
    <!-- end generated -->

The options tables come from `pytest_taichi_limits.config.options.OPTIONS`, the table `--help`
is made from (tests/unit/test_docs.py fails when a table differs). A run's output is kept as it
came, with the checkout's, the standard library's and site-packages' paths shortened; its
figures are those of the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_taichi_limits.config.options import markdown_table  # noqa: E402 - after the path

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REGION = re.compile(
    r"(?P<open><!-- generated: (?P<spec>.*?) -->\n)(?P<body>.*?)(?P<close><!-- end generated -->)",
    re.DOTALL,
)
_SEPARATOR = re.compile(r"^([_=-])\1{2,}( .* \1{3,})?$")
_SITE_PACKAGES = re.compile(r"[^\s\"']*/site-packages/")


def _run(args: list[str]) -> str:
    """The terminal output of one real pytest run, paths shortened."""
    env = {**os.environ, "TI_SKIP_VERSION_CHECK": "ON", "COLUMNS": "80"}
    env.pop("GITHUB_STEP_SUMMARY", None)  # a sample run must not write a job summary
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--color=no", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    text = _SITE_PACKAGES.sub(".../", done.stdout).replace(f"{ROOT}/", "")
    text = text.replace(sysconfig.get_paths()["stdlib"] + "/", ".../")
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def _section(output: str, name: str) -> str:
    """The failure report of test `name`: from its `___ name ___` line to the next separator."""
    lines = output.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if re.fullmatch(rf"_+ {re.escape(name)} _+", line)),
        None,
    )
    if start is None:
        raise SystemExit(f"tools/docs.py: no failure report of {name} in the run's output")
    end = next((i for i in range(start + 1, len(lines)) if _SEPARATOR.match(lines[i])), len(lines))
    return "\n".join(lines[start:end]).rstrip() + "\n"


def _summary(output: str) -> str:
    """The `taichi-limits summary` block of the run's output."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if " taichi-limits summary " in line), None)
    if start is None:
        raise SystemExit("tools/docs.py: no taichi-limits summary in the run's output")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("=")), len(lines))
    return "\n".join(lines[start:end]).rstrip() + "\n"


def _suggestions(output: str) -> str:
    """The `--taichi-limits-suggest` lines: from "suggested budgets" to the summary's end."""
    block = _summary(output).splitlines()
    start = next((i for i, line in enumerate(block) if line.startswith("suggested budgets")), None)
    if start is None:
        raise SystemExit("tools/docs.py: no suggested budgets in the run's output")
    return "\n".join(block[start:]) + "\n"


def generate(spec: str, runs: bool, cache: dict[str, str]) -> str | None:
    """The body of a region; None where it needs a run and runs are off."""
    words = spec.split()
    if words[0] == "options":
        return markdown_table(words[1:] or None)
    if words[0] != "run":
        raise SystemExit(f"tools/docs.py: unknown generated region {spec!r}")
    if not runs:
        return None
    command, _, extract = spec[len("run") :].partition("|")
    if command not in cache:
        cache[command] = _run(command.split())
    kind, _, name = extract.strip().partition(" ")
    extractors: dict[str, Callable[[str], str]] = {
        "section": lambda out: _section(out, name),
        "summary": _summary,
        "suggestions": _suggestions,
    }
    if kind not in extractors:
        raise SystemExit(f"tools/docs.py: unknown extract {extract.strip()!r} in {spec!r}")
    return "```text\n" + extractors[kind](cache[command]) + "```\n"


def regenerate(text: str, runs: bool, cache: dict[str, str]) -> tuple[str, list[str]]:
    """`text` with every generated region made anew, and the specs of the regions that changed."""
    changed: list[str] = []

    def replace(match: re.Match[str]) -> str:
        body = generate(match["spec"], runs, cache)
        if body is None or body == match["body"]:
            return match.group(0)
        changed.append(match["spec"])
        return match["open"] + body + match["close"]

    return REGION.sub(replace, text), changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 on a change")
    parser.add_argument("--no-runs", action="store_true", help="only what needs no pytest run")
    args = parser.parse_args()
    cache: dict[str, str] = {}
    stale = 0
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        new, changed = regenerate(text, not args.no_runs, cache)
        for spec in changed:
            print(f"{page.relative_to(ROOT)}: {spec}: {'differs' if args.check else 'written'}")
        stale += len(changed)
        if changed and not args.check:
            page.write_text(new, encoding="utf-8")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
