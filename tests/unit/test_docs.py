"""The documentation stays navigable and true: links resolve, mkdocs lists every page, the README's
set-up commands are the ones CI runs, and the options tables are the ones --help is made from.

Pure file checks: no pytest subprocess, no Taichi.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest

from pytest_taichi_limits.config.options import OPTIONS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

#: Pages written alongside other changes; until those land a link to one of them is not a broken
#: link, and test_pages_written_elsewhere_exist says which are still missing.
WRITTEN_ELSEWHERE = frozenset(
    {"memory.md", "ci.md", "html-report.md", "admission.md", "baselines-multi-run.md"}
)

#: The two commands of README "Development"; .ci/run must run each as it is written.
README_COMMANDS = (
    "python -m pip install . && python -m pytest --taichi-limits examples/within_budget",
    "python -m pip install '.[test]' && python -m pytest tests -n 2",
)
#: The third line of README "Development": the quick subset for contributors.
README_QUICK = "python -m pytest tests/unit"

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"(?<!!)\[(?:[^\]\n]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def markdown_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))]
    return [path for path in files if path.exists()]


def without_code(text: str) -> str:
    """The text with fenced blocks and inline code removed: links in examples are not links."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def relative_links(text: str) -> list[str]:
    targets = _LINK.findall(without_code(text))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for _, heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = github_slug(heading)
        seen = counts.get(slug, 0)
        counts[slug] = seen + 1
        found.add(slug if seen == 0 else f"{slug}-{seen}")
    return found


def broken_links(path: Path) -> list[str]:
    problems: list[str] = []
    for link in relative_links(path.read_text(encoding="utf-8")):
        target_text, _, fragment = link.partition("#")
        target = (path.parent / target_text).resolve() if target_text else path
        if not target.exists():
            if target.parent == DOCS and target.name in WRITTEN_ELSEWHERE:
                continue
            problems.append(f"{link}: no file {target}")
            continue
        if fragment and target.suffix == ".md" and fragment not in anchors(target):
            problems.append(f"{link}: {target.name} has no heading with anchor #{fragment}")
    return problems


def mkdocs_nav_pages() -> list[str]:
    """The page files in mkdocs.yml's nav (`- Title: page.md` lines)."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text.split("\nnav:", 1)[1]
    return re.findall(r"^\s+-\s+[^:\n]+:\s+(\S+\.md)\s*$", nav, re.M)


def test_markdown_pages_are_found() -> None:
    names = {path.name for path in markdown_files()}
    assert {"README.md", "CONTRIBUTING.md", "index.md", "reference.md"} <= names


@pytest.mark.parametrize(
    "path", markdown_files(), ids=lambda path: path.relative_to(ROOT).as_posix()
)
def test_relative_links_resolve(path: Path) -> None:
    assert broken_links(path) == []


def test_link_checker_sees_a_broken_link_and_a_broken_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Two words\n\n[ok](#two-words) [gone](missing.md) [bad](#nowhere)\n"
        "`[code](ignored.md)`\n\n```\n[fenced](ignored.md)\n```\n[web](https://example.org/x)\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert len(problems) == 2
    assert problems[0].startswith("missing.md: no file")
    assert problems[1] == "#nowhere: page.md has no heading with anchor #nowhere"


def test_github_slugs() -> None:
    assert github_slug("The `ti.init` cap") == "the-tiinit-cap"
    assert github_slug("What happens when…") == "what-happens-when"
    assert github_slug("Budgets: what each one means, and why") == (
        "budgets-what-each-one-means-and-why"
    )


def test_mkdocs_nav_lists_every_page() -> None:
    nav = mkdocs_nav_pages()
    assert len(nav) == len(set(nav)), f"a page twice in mkdocs.yml's nav: {nav}"
    on_disk = {path.name for path in DOCS.glob("*.md")}
    assert sorted(on_disk - set(nav)) == [], "pages in docs/ missing from mkdocs.yml's nav"
    assert sorted(set(nav) - on_disk - WRITTEN_ELSEWHERE) == [], "nav entries with no page"
    assert set(nav) >= WRITTEN_ELSEWHERE


def test_pages_written_elsewhere_exist() -> None:
    missing = sorted(name for name in WRITTEN_ELSEWHERE if not (DOCS / name).exists())
    if missing:
        pytest.skip(f"docs pages not written yet (links to them are allowed): {', '.join(missing)}")


def readme_development_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Development\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "README 'Development' has no bash block"
    lines = (line.strip() for line in block.group(1).splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_readme_commands_are_the_ones_ci_runs() -> None:
    assert readme_development_commands() == [*README_COMMANDS, README_QUICK]
    assert (ROOT / README_QUICK.split()[-1]).is_dir()
    ci_lines = {
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#")
    }
    for command in README_COMMANDS:
        assert command in ci_lines, f".ci/run does not run the README's command: {command}"


def _contract_layers() -> list[list[str]]:
    """The layers of pyproject.toml's import-linter contract, top to bottom (siblings split)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    layers = next(contract for contract in contracts if contract["type"] == "layers")["layers"]
    return [sorted(part.strip() for part in re.split(r"[|:]", layer)) for layer in layers]


def _contributing_layers() -> list[list[str]]:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [sorted(re.findall(r"`([\w.]+)`", row.split("|")[1])) for row in rows]


def test_contributing_lists_the_layers_of_the_import_contract() -> None:
    assert _contributing_layers() == _contract_layers()
    assert len(_contract_layers()) > 10  # the parsing found the table and the contract


# -- generated parts: the options tables are --help's -------------------------------------------


def _docs_tool() -> Any:
    """tools/docs.py, the script that writes the generated regions (not a package module)."""
    spec = importlib.util.spec_from_file_location("taichi_limits_docs_tool", ROOT / "tools/docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_options_tables_are_generated_from_the_options_help_is_made_from() -> None:
    tool = _docs_tool()
    stale = []
    for page in tool.PAGES:
        _, changed = tool.regenerate(page.read_text(encoding="utf-8"), runs=False, cache={})
        stale += [f"{page.name}: {spec}" for spec in changed]
    assert not stale, f"run `python tools/docs.py` to regenerate: {stale}"


def test_the_reference_lists_every_option() -> None:
    text = (DOCS / "reference.md").read_text(encoding="utf-8")
    assert "<!-- generated: options -->" in text  # the whole table, not a chosen few
    for option in OPTIONS:
        assert f"| `{option.flag}" in text, option.flag
