"""Ready to publish: the version is written in one place and every install line that names a
wheel names that version; the sdist check that CI and the release workflow run finds a missing
file, junk and a wrong version; the release workflow builds, checks and publishes on a tag.

The real sdist is built and checked by .ci/run and by the release workflow (building it needs
setuptools from the package index); here the check itself is shown to work.
"""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pytest
from helpers import sdist

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / ".github" / "workflows" / "release.yml"
_WHEEL = re.compile(r"pytest_taichi_limits-([0-9][^-\s]*)-py3-none-any\.whl")


def _tarball(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            member = tarfile.TarInfo(f"pytest_taichi_limits-0.1.0/{name}")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path


def test_the_version_is_written_once() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert 'dynamic = ["version"]' in project
    assert not re.search(r"^version\s*=", project, re.M)
    assert 'version = { attr = "pytest_taichi_limits.__version__" }' in pyproject
    version = sdist.source_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?", version)
    import pytest_taichi_limits

    assert pytest_taichi_limits.__version__ == version


def test_every_wheel_named_in_the_docs_and_recipes_is_this_version() -> None:
    version = sdist.source_version()
    places = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    places += sorted((ROOT / "examples").rglob("*.yml"))
    named = {
        str(path.relative_to(ROOT)): sorted(set(_WHEEL.findall(path.read_text(encoding="utf-8"))))
        for path in places
    }
    assert named["README.md"] == [version]  # the install line from a built wheel
    assert named["examples/ci/github-actions.yml"] == [version]
    wrong = {place: found for place, found in named.items() if found not in ([], [version])}
    assert wrong == {}, f"a wheel of another version than {version} is named"


def test_sdist_check_passes_a_complete_sdist(tmp_path: Path) -> None:
    path = _tarball(
        tmp_path / "ok.tar.gz",
        {
            "PKG-INFO": "Metadata-Version: 2.4\nName: pytest-taichi-limits\nVersion: 0.1.0\n",
            "setup.cfg": "",
            "pytest_taichi_limits.egg-info/SOURCES.txt": "",
            "README.md": "x",
            "tests/golden/a.md": "x",
        },
    )
    names, pkg_info = sdist.read_sdist(path)
    tracked = ["README.md", "tests/golden/a.md", ".gitignore", ".github/workflows/release.yml"]
    assert sdist.problems(names, tracked, "0.1.0", pkg_info) == []


def test_sdist_check_finds_a_missing_file_junk_and_another_version(tmp_path: Path) -> None:
    path = _tarball(
        tmp_path / "bad.tar.gz",
        {
            "PKG-INFO": "Metadata-Version: 2.4\nName: pytest-taichi-limits\nVersion: 0.0.9\n",
            "README.md": "x",
            "examples/sample_project/.venv/bin/python": "",
            "tests/__pycache__/x.cpython-311.pyc": "",
            "notes.txt": "",
        },
    )
    names, pkg_info = sdist.read_sdist(path)
    found = sdist.problems(names, ["README.md", "tests/golden/a.md"], "0.1.0", pkg_info)
    assert found == [
        "missing from the sdist: tests/golden/a.md (add it to MANIFEST.in)",
        "does not belong in the sdist: examples/sample_project/.venv/bin/python",
        "does not belong in the sdist: tests/__pycache__/x.cpython-311.pyc",
        "in the sdist but not tracked by git: notes.txt",
        "PKG-INFO says version ['0.0.9'], __init__.py says '0.1.0'",
    ]


def test_sdist_check_finds_a_tracked_taichi_cache(tmp_path: Path) -> None:
    path = _tarball(
        tmp_path / "cache.tar.gz",
        {"PKG-INFO": "Metadata-Version: 2.4\nName: pytest-taichi-limits\nVersion: 0.1.0\n"},
    )
    names, pkg_info = sdist.read_sdist(path)
    tracked = ["benchmarks/.ticache-start/ticache.tcb", "examples/x/T00.tic"]
    assert sdist.problems(names, tracked, "0.1.0", pkg_info) == [
        "tracked by git but left by a run: benchmarks/.ticache-start/ticache.tcb"
        " (git rm --cached it)",
        "tracked by git but left by a run: examples/x/T00.tic (git rm --cached it)",
    ]


def test_git_tracks_nothing_a_run_leaves_behind() -> None:
    # The sdist check in CI comes after the whole suite; this finds a committed cache at once.
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an unpacked sdist): nothing is tracked")
    assert sdist.stray_tracked(sdist.tracked_files()) == []


def test_sdist_check_refuses_a_tag_of_another_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    version = sdist.source_version()
    path = _tarball(
        tmp_path / "ok.tar.gz",
        {"PKG-INFO": f"Version: {version}\n", "README.md": "x"},
    )
    monkeypatch.setattr(sdist, "tracked_files", lambda root=ROOT: ["README.md"])
    assert sdist.main([str(path), "--tag", f"v{version}"]) == 0
    assert sdist.main([str(path), "--tag", "v99.0.0"]) == 1
    assert f"the tag v99.0.0 does not name the version: __init__.py says {version}" in (
        capsys.readouterr().err
    )


def test_release_workflow_builds_checks_and_publishes_on_a_tag() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra")
    workflow = yaml.safe_load(RELEASE.read_text(encoding="utf-8"))
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert list(triggers) == ["push"] and triggers["push"] == {"tags": ["v*"]}
    assert workflow["permissions"] == {}  # each job asks for what it needs, nothing more
    build, publish = workflow["jobs"]["build"], workflow["jobs"]["publish"]
    script = "\n".join(step.get("run", "") for step in build["steps"])
    assert "python -m build" in script and "twine check --strict dist/*" in script
    assert 'tests/helpers/sdist.py dist/*.tar.gz --tag "$GITHUB_REF_NAME"' in script
    assert publish["needs"] == "build"
    assert publish["permissions"] == {"id-token": "write"}  # trusted publishing, no API token
    assert publish["environment"]["name"] == "pypi"
    uses = [step.get("uses", "") for step in publish["steps"]]
    assert "pypa/gh-action-pypi-publish@release/v1" in uses
    assert not any("password" in str(step.get("with", {})) for step in publish["steps"])
