"""Temporary folders of a killed session are removed by the next one (launch/spawn.py)."""

from __future__ import annotations

import os
from pathlib import Path

from pytest_taichi_limits.launch.spawn import TEMP_PREFIX, new_temp_dir, sweep_stale_temp_dirs
from pytest_taichi_limits.measure.cgroup import own_start_ticks


def a_dead_process() -> tuple[int, int]:
    """The pid and start time of a process that has exited (a real fork)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    ticks = own_start_ticks(pid)  # a zombie until reaped: its stat is still there
    os.waitpid(pid, 0)
    return pid, ticks


def test_only_the_folders_of_gone_owners_are_removed(tmp_path: Path) -> None:
    dead_pid, dead_ticks = a_dead_process()
    me = f"{os.getpid()}-{own_start_ticks()}"
    names = {
        "dead": f"{TEMP_PREFIX}{dead_pid}-{dead_ticks}-abc123",
        "recycled": f"{TEMP_PREFIX}{os.getpid()}-{own_start_ticks() + 1}-x_y",  # pid reused
        "live": f"{TEMP_PREFIX}{me}-q1w2e3",
        "old style": f"{TEMP_PREFIX}zy6vewrp",  # no owner in the name: whose is unknown
        "not ours": "pytest-of-root",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "preimport.json").write_text("[]")
    removed = sweep_stale_temp_dirs(str(tmp_path))
    assert sorted(removed) == sorted(str(tmp_path / names[k]) for k in ("dead", "recycled"))
    assert sorted(os.listdir(tmp_path)) == sorted(
        names[k] for k in ("live", "old style", "not ours")
    )


def test_a_new_folder_carries_its_owner_and_survives_its_own_sweep() -> None:
    path = new_temp_dir()
    try:
        assert os.path.basename(path).startswith(f"{TEMP_PREFIX}{os.getpid()}-{own_start_ticks()}-")
        sweep_stale_temp_dirs(os.path.dirname(path))
        assert os.path.isdir(path)
    finally:
        os.rmdir(path)
