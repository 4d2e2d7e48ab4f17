"""What a source distribution must hold: every file git tracks (so its tests, docs and examples
run from it), nothing a working tree collects by accident, and the version `__init__.py` gives.

    python tests/helpers/sdist.py dist/pytest_taichi_limits-0.1.0.tar.gz [--tag v0.1.0]

prints what is wrong and exits 1 (.ci/run and the release workflow run it after `python -m build`).
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Tracked files an sdist has no use for: git's own settings and GitHub's workflows.
LEFT_OUT = ("/.gitignore", "/.gitattributes", ".github/*")

#: What a working tree gathers and an sdist must never carry, wherever it lies.
JUNK = ("*/__pycache__/*", "*.py[cod]", "*/.venv*/*", "*.whl", "*.tar.gz", "*/.pytest_cache/*")

#: What a run leaves in a working tree and git must never track: Taichi's offline kernel cache.
BY_PRODUCTS = (*JUNK, "*.tic", "*.tcb", "*/.ticache*/*", "/.ticache*/*")

#: Files the build writes into every sdist besides the tracked ones.
GENERATED = ("PKG-INFO", "setup.cfg", "*.egg-info/*")


def source_version(root: Path = ROOT) -> str:
    """`__version__` of the package's `__init__.py`, read without importing it."""
    tree = ast.parse((root / "pytest_taichi_limits" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(target, "id", None) for target in node.targets] == ["__version__"]
            and isinstance(node.value, ast.Constant)
        ):
            return str(node.value.value)
    raise ValueError("pytest_taichi_limits/__init__.py assigns no literal __version__")


def tracked_files(root: Path = ROOT) -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True, timeout=60
    ).stdout
    return [name for name in listed.decode().split("\0") if name]


def _matches(name: str, patterns: Iterable[str]) -> bool:
    # A leading "/" anchors a pattern at the top; "*/" also matches at the top.
    return any(
        name == pattern[1:]
        if pattern.startswith("/")
        else fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch("/" + name, pattern)
        for pattern in patterns
    )


def stray_tracked(tracked: Iterable[str]) -> list[str]:
    """The tracked files that a run of the tests, examples or benchmarks leaves behind."""
    return sorted(name for name in tracked if _matches(name, BY_PRODUCTS))


def problems(
    sdist_names: Iterable[str], tracked: Iterable[str], version: str, pkg_info: str
) -> list[str]:
    """What is wrong with an sdist whose members (without the top folder) are `sdist_names`."""
    names = {name for name in sdist_names if name and not name.endswith("/")}
    found = [
        f"tracked by git but left by a run: {name} (git rm --cached it)"
        for name in stray_tracked(tracked)
    ]
    found += [
        f"missing from the sdist: {name} (add it to MANIFEST.in)"
        for name in sorted(tracked)
        if name not in names and not _matches(name, LEFT_OUT) and not _matches(name, BY_PRODUCTS)
    ]
    found += [
        f"does not belong in the sdist: {name}" for name in sorted(names) if _matches(name, JUNK)
    ]
    untracked = set(names) - set(tracked)
    found += [
        f"in the sdist but not tracked by git: {name}"
        for name in sorted(untracked)
        if not _matches(name, GENERATED) and not _matches(name, JUNK)
    ]
    declared = [
        line.split(":", 1)[1].strip()
        for line in pkg_info.splitlines()
        if line.startswith("Version:")
    ]
    if declared != [version]:
        found.append(f"PKG-INFO says version {declared}, __init__.py says {version!r}")
    return found


def read_sdist(path: Path) -> tuple[list[str], str]:
    """(its files' names without the top folder, the text of the top PKG-INFO)."""
    with tarfile.open(path) as archive:
        members = [member for member in archive.getmembers() if not member.isdir()]
        top = members[0].name.split("/", 1)[0]
        pkg_info = archive.extractfile(f"{top}/PKG-INFO")
        text = pkg_info.read().decode() if pkg_info is not None else ""
    return [member.name.partition("/")[2] for member in members], text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sdist", type=Path)
    parser.add_argument("--tag", help="the release tag: must be v + the version")
    args = parser.parse_args(argv)
    version = source_version()
    names, pkg_info = read_sdist(args.sdist)
    found = problems(names, tracked_files(), version, pkg_info)
    if args.tag is not None and args.tag != f"v{version}":
        found.append(f"the tag {args.tag} does not name the version: __init__.py says {version}")
    for line in found:
        print(f"{args.sdist.name}: {line}", file=sys.stderr)
    if not found:
        print(f"{args.sdist.name}: {len(names)} entries, every tracked file, version {version}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
