"""Pure logic of the memory figure and the per-test cgroup (cgroup v2 is faked on disk)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pytest_taichi_limits.measure import cgroup, memory
from pytest_taichi_limits.measure.memory import MemoryWatch, Reading, own_bytes
from pytest_taichi_limits.measure.proctree import ProcessTree, TreeSample

MB = 1 << 20


def test_own_bytes_counts_anon_growth_and_the_larger_shared_view() -> None:
    start = Reading(
        anon_bytes=5 * MB, mapped_shm_bytes=1 * MB, unmapped_shm_bytes=700 * MB, cpu_s=0.0
    )
    # 100 MB new anon; 50 MB mapped shm (also seen as tmpfs growth of 50 MB): counted once
    now = Reading(
        anon_bytes=105 * MB, mapped_shm_bytes=51 * MB, unmapped_shm_bytes=750 * MB, cpu_s=0.0
    )
    assert own_bytes(now, start) == 150 * MB
    # a memfd written but never mapped: only the unmapped view sees it
    now = Reading(
        anon_bytes=5 * MB, mapped_shm_bytes=1 * MB, unmapped_shm_bytes=900 * MB, cpu_s=0.0
    )
    assert own_bytes(now, start) == 200 * MB
    # less than at the start (another process freed tmpfs space): never below zero
    assert own_bytes(Reading(0, 0, 0, 0.0), start) == 0


def test_tmpfs_mounts_are_read_from_the_mount_table() -> None:
    table = "tmpfs /dev/shm tmpfs rw 0 0\n/dev/sda1 /tmp ext4 rw 0 0\nproc /proc proc rw 0 0\n"
    assert memory.tmpfs_mounts(mounts_text=table) == ("/dev/shm",)
    table += "tmpfs /tmp tmpfs rw 0 0\n"
    assert memory.tmpfs_mounts(mounts_text=table) == ("/dev/shm", "/tmp")


def test_rollup_of_this_process_has_the_fields_the_figure_needs() -> None:
    if not memory.smaps_rollup_available():
        pytest.skip("no /proc/<pid>/smaps_rollup here")
    figures = memory.rollup(os.getpid())
    assert figures is not None
    for name in ("Pss_Anon", "Anonymous", "Pss_Shmem", "Private_Dirty"):
        assert name in figures
    assert memory.rollup(2**22 + 12345) is None  # no such pid


def test_memfd_bytes_counts_each_file_once_and_skips_the_plugins_own(tmp_path: Path) -> None:
    fd = os.memfd_create("data")
    own = os.memfd_create("pytest-taichi-limits-stack")
    try:
        os.write(fd, b"\x01" * (3 * MB))
        os.write(own, b"\x01" * (2 * MB))
        duplicate = os.dup(fd)
        counted = memory.memfd_bytes([os.getpid(), os.getpid()])
        os.close(duplicate)
        assert 3 * MB <= counted < 4 * MB
    finally:
        os.close(fd)
        os.close(own)


def test_files_left_lists_new_entries_only(tmp_path: Path) -> None:
    (tmp_path / "old").write_text("x")
    before = memory.shm_entries(str(tmp_path))
    (tmp_path / "new").write_text("y")
    (tmp_path / "newdir").mkdir()
    left = memory.files_left(before, str(tmp_path))
    assert left == (str(tmp_path / "new"), str(tmp_path / "newdir"))
    assert memory.remove_files(left) == []
    assert sorted(os.listdir(tmp_path)) == ["old"]


def test_process_tree_reads_members_past_the_kept_open_ones() -> None:
    pids = []
    try:
        for _ in range(5):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            pids.append(pid)
        tree = ProcessTree(os.getpid(), keep_open=2)
        sample = tree.sample(TreeSample())
        # this process and its five children, of which only two have fds kept open
        assert sample.processes >= 6
        assert sum(member.kept for member in tree._members.values()) == 2
        tree.close()
    finally:
        for pid in pids:
            os.kill(pid, 9)
            os.waitpid(pid, 0)


# -- cgroup v2 -----------------------------------------------------------------------------------


def fake_v2(
    root: Path, own: str = "/ci/job", controllers: str = "cpu memory pids", subtree: str = "memory"
) -> str:
    (root / "cgroup.controllers").write_text(controllers + "\n")
    own_dir = root / own.lstrip("/")
    own_dir.mkdir(parents=True)
    (own_dir / "cgroup.controllers").write_text(controllers + "\n")
    (own_dir / "cgroup.subtree_control").write_text(subtree + "\n")
    return f"0::{own}\n"


def test_detect_says_why_not_on_cgroup_v1(tmp_path: Path) -> None:
    assert "cgroup v1 or hybrid" in str(cgroup.detect(str(tmp_path), "1:memory:/\n"))


def test_detect_without_the_memory_controller(tmp_path: Path) -> None:
    proc = fake_v2(tmp_path, controllers="cpu pids")
    assert "memory controller is not delegated" in str(cgroup.detect(str(tmp_path), proc))


def test_detect_finds_a_delegated_cgroup(tmp_path: Path) -> None:
    proc = fake_v2(tmp_path)
    found = cgroup.detect(str(tmp_path), proc)
    assert found == cgroup.CgroupSupport(str(tmp_path / "ci" / "job"))


def test_detect_enables_memory_for_children_when_it_may(tmp_path: Path) -> None:
    proc = fake_v2(tmp_path, subtree="")
    found = cgroup.detect(str(tmp_path), proc)
    assert isinstance(found, cgroup.CgroupSupport)
    assert (tmp_path / "ci" / "job" / "cgroup.subtree_control").read_text() == "+memory"


def test_own_cgroup_path() -> None:
    assert cgroup.own_cgroup_path("12:cpu:/x\n0::/user.slice/a.scope\n") == "/user.slice/a.scope"
    assert cgroup.own_cgroup_path("0::/\n") == "/"
    assert cgroup.own_cgroup_path("4:memory:/x\n") is None


def fake_test_cgroup(tmp_path: Path, anon: int, shmem: int, oom_kill: int = 0) -> cgroup.TestCgroup:
    path = tmp_path / "test"
    path.mkdir(exist_ok=True)
    (path / "memory.stat").write_text(f"anon {anon}\nfile 999999999\nkernel 12\nshmem {shmem}\n")
    (path / "memory.current").write_text(f"{anon + shmem + 999999999}\n")
    (path / "memory.events").write_text(
        f"low 0\nhigh 0\nmax 3\noom {oom_kill}\noom_kill {oom_kill}\n"
    )
    (path / "memory.max").write_text("max\n")
    (path / "cgroup.procs").write_text("")
    return cgroup.TestCgroup(str(path))


def test_test_cgroup_figures_leave_the_page_cache_out(tmp_path: Path) -> None:
    made = fake_test_cgroup(tmp_path, anon=100 * MB, shmem=20 * MB, oom_kill=1)
    assert made.held_bytes() == 120 * MB
    assert made.oom_kills() == 1
    made.set_max(5 * MB)
    assert (tmp_path / "test" / "memory.max").read_text() == str(5 * MB)


def test_memory_watch_with_a_cgroup_caps_and_measures_from_memory_stat(tmp_path: Path) -> None:
    made = fake_test_cgroup(tmp_path, anon=10 * MB, shmem=0)
    watch = MemoryWatch.start_for(os.getpid(), os.getpid(), 100 * MB, made)
    tree = ProcessTree(os.getpid())
    sample = tree.sample(TreeSample())
    watch.begin(os.getpid(), tree, sample, 0.0)
    assert watch.method_name() == "cgroup"
    # the cap: memory.current at the start + the limit + room for page cache and kernel memory
    cap = int((tmp_path / "test" / "memory.max").read_text())
    assert cap == 10 * MB + 999999999 + 100 * MB + 64 * MB
    fake_test_cgroup(tmp_path, anon=60 * MB, shmem=70 * MB)
    assert watch.due(sample, 0.0)
    watch.exact(tree, sample, 0.0)
    assert watch.own_bytes == 120 * MB
    assert watch.over(100 * MB, sample)
    tree.close()


def test_memory_watch_never_judges_on_the_estimate(tmp_path: Path) -> None:
    watch = MemoryWatch(meter=None, limit=100 * MB, start_rss_bytes=0)
    watch.started = True
    watch.meter = memory.MemoryMeter(os.getpid(), os.getpid())
    watch.baseline = Reading(0, 0, 0, 0.001)
    watch.own_bytes = 10 * MB
    sample = TreeSample(rss_bytes=10 * 1024 * MB)  # a fork of a 10 GB process
    assert watch.method_name() == "smaps"
    assert watch.estimate(sample) > 100 * MB  # so an exact reading is due at once ...
    assert watch.due(sample, now=1.0)
    assert not watch.over(100 * MB, sample)  # ... but the verdict waits for it


def test_an_error_while_watching_fails_the_test_and_ends_its_tree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno
    import signal

    from pytest_taichi_limits.config.budget import Budget
    from pytest_taichi_limits.config.settings import Settings
    from pytest_taichi_limits.launch.forking import ForkLaunch
    from pytest_taichi_limits.supervise.supervisor import Worker

    def in_child(channel_fd: int, stack_fd: int, control_fd: int, parent_pid: int) -> None:
        time.sleep(60)
        os._exit(0)

    def out_of_fds(self: ProcessTree, into: TreeSample) -> TreeSample:
        raise OSError(errno.EMFILE, "Too many open files")

    worker = Worker(ForkLaunch(in_child), Settings(grace_s=0.5), "fork")
    monkeypatch.setattr(ProcessTree, "sample", out_of_fds)
    try:
        result = worker.run_test(0, None, "t::x", Budget(wall_s=30))
    finally:
        monkeypatch.undo()
        worker.close()
    assert result.crash is not None
    assert (
        "could not watch this test (OSError: [Errno 24] Too many open files)" in result.crash.reason
    )
    assert result.usage.ending is not None
    assert result.usage.ending.signal_number in (signal.SIGTERM, signal.SIGKILL)
    assert result.usage.memory_method == "not measured"


def test_the_usage_is_complete_when_the_supervisor_builds_it() -> None:
    """The Taichi arch and a session stop (from the child's messages) and admission's
    reservation (from the plugin) are in the usage the supervisor hands back: nothing later
    rebuilds it."""
    from pytest_taichi_limits.config.budget import Budget
    from pytest_taichi_limits.config.settings import Settings
    from pytest_taichi_limits.ipc.channel import ChannelWriter
    from pytest_taichi_limits.ipc.protocol import Exit, TaichiInitDone
    from pytest_taichi_limits.launch.forking import ForkLaunch
    from pytest_taichi_limits.model.records import Admitted
    from pytest_taichi_limits.supervise.supervisor import Worker

    def in_child(channel_fd: int, stack_fd: int, control_fd: int, parent_pid: int) -> None:
        channel = ChannelWriter(channel_fd)
        channel.send(TaichiInitDone(arch="x64"))
        channel.send(Exit(reason="interrupt", message="", returncode=None))
        os._exit(0)

    facts = Admitted(0.5, 64 * MB, 0, "its budget", None, 64 * MB, 0, 1024 * MB)
    worker = Worker(ForkLaunch(in_child), Settings(grace_s=0.5), "fork")
    try:
        result = worker.run_test(0, None, "t::x", Budget(wall_s=30), facts)
    finally:
        worker.close()
    assert result.usage.arch == "x64"
    assert result.usage.interrupted == "KeyboardInterrupt"
    assert result.usage.admission == facts
    assert result.usage.timeline is not None
