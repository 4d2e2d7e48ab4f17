"""Pure logic of the memory figure, the meter and cgroup v2 (faked on disk); /dev/shm attribution.

Real cgroups (v1 here, as root) are in tests/unit/test_cgroup.py.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

import pytest

from pytest_taichi_limits.config.units import MIB
from pytest_taichi_limits.ipc.protocol import ForkOrder, RunCommand
from pytest_taichi_limits.launch.forkserver import ChildFds, ForkServer, ServerLaunch
from pytest_taichi_limits.measure import cgroup, memory, meter, shm
from pytest_taichi_limits.measure.memory import Reading, own_bytes
from pytest_taichi_limits.measure.meter import CgroupMemory, MemoryPlan, SmapsMemory, Tick
from pytest_taichi_limits.measure.proctree import ProcessTree, TreeSample

MB = 1 << 20


def test_own_bytes_counts_anon_growth_files_and_other_shared_mappings() -> None:
    start = Reading(
        anon_bytes=5 * MB, mapped_shm_bytes=1 * MB, unmapped_shm_bytes=700 * MB, cpu_s=0.0
    )
    # 100 MB new anon; a 50 MB tmpfs file the test also maps (its mapping is left out of the
    # mapped figure by the reading: MemoryMeter.read)
    now = Reading(
        anon_bytes=105 * MB, mapped_shm_bytes=1 * MB, unmapped_shm_bytes=750 * MB, cpu_s=0.0
    )
    assert own_bytes(now, start) == 150 * MB
    # a memfd written but never mapped, and a MAP_SHARED anonymous mapping: both (the matrix
    # found the smaller one left out when the figure was the larger of the two views)
    now = Reading(
        anon_bytes=5 * MB, mapped_shm_bytes=31 * MB, unmapped_shm_bytes=900 * MB, cpu_s=0.0
    )
    assert own_bytes(now, start) == 230 * MB
    # less than at the start (another process freed tmpfs space): never below zero
    assert own_bytes(Reading(0, 0, 0, 0.0), start) == 0


def test_the_mapped_pages_of_a_held_file_are_found_in_smaps() -> None:
    """A memfd this process holds and maps: its mapped pages are what both views see."""
    fd = os.memfd_create("truth-overlap")
    try:
        os.ftruncate(fd, 4 * MB)
        with mmap.mmap(fd, 4 * MB) as mapping:
            for offset in range(0, 4 * MB, mmap.PAGESIZE):
                mapping[offset] = 1
            status = os.fstat(fd)
            key = (status.st_dev, status.st_ino)
            assert shm.mapped_pss_bytes([os.getpid()], {key}) == 4 * MB
            assert shm.mapped_pss_bytes([os.getpid()], set()) == 0
            assert shm.mapped_pss_bytes([os.getpid()], {(key[0], key[1] + 1)}) == 0
    finally:
        os.close(fd)


def test_tmpfs_mounts_are_read_from_the_mount_table() -> None:
    table = "tmpfs /dev/shm tmpfs rw 0 0\n/dev/sda1 /tmp ext4 rw 0 0\nproc /proc proc rw 0 0\n"
    assert shm.tmpfs_mounts(mounts_text=table) == ("/dev/shm",)
    table += "tmpfs /tmp tmpfs rw 0 0\n"
    assert shm.tmpfs_mounts(mounts_text=table) == ("/dev/shm", "/tmp")


def test_rollup_of_this_process_has_the_fields_the_figure_needs() -> None:
    if not memory.smaps_rollup_available():
        pytest.skip("no /proc/<pid>/smaps_rollup here")
    figures = memory.rollup(os.getpid())
    assert figures is not None
    for name in ("Pss_Anon", "Anonymous", "Pss_Shmem", "Private_Dirty"):
        assert name in figures
    assert memory.rollup(2**22 + 12345) is None  # no such pid


def test_held_files_count_each_memfd_once_and_skip_the_plugins_own() -> None:
    fd = os.memfd_create("data")
    own = os.memfd_create("pytest-taichi-limits-stack")
    try:
        os.write(fd, b"\x01" * (3 * MB))
        os.write(own, b"\x01" * (2 * MB))
        duplicate = os.dup(fd)
        held = shm.held_files([os.getpid(), os.getpid()], frozenset())
        os.close(duplicate)
        assert len(held) == 1
        assert 3 * MB <= sum(found.bytes for found in held.values()) < 4 * MB
    finally:
        os.close(fd)
        os.close(own)


def test_a_tmpfs_file_is_attributed_once_seen_held_and_counted_while_it_is_there(
    tmp_path: Path,
) -> None:
    if not shm.tmpfs_mounts():
        pytest.skip("no tmpfs mount here")
    path = f"{shm.tmpfs_mounts()[0]}/taichi-limits-unit-{os.getpid()}"
    attribution = shm.Attribution()
    try:
        with open(path, "wb") as handle:
            handle.write(b"\x01" * (2 * MB))
            handle.flush()
            held = attribution.observe([os.getpid()])
            assert attribution.held_bytes(held) >= 2 * MB
        # closed and left there: still the test's, still memory
        assert attribution.held_bytes(attribution.observe([os.getpid()])) >= 2 * MB
        key = next(iter(attribution.seen))
        os.unlink(path)
        with open(path, "wb") as handle:  # replaced by someone else: a new inode, not seen
            handle.write(b"\x01" * MB)
        assert shm.file_bytes(path, key) == 0
        assert attribution.held_bytes({}) == 0
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_new_entries_are_new_or_replaced_names(tmp_path: Path) -> None:
    (tmp_path / "old").write_text("x")
    (tmp_path / "replaced").write_text("x")
    before = shm.entries(str(tmp_path))
    (tmp_path / "new").write_text("y")
    (tmp_path / "newdir").mkdir()
    (tmp_path / "replacement").write_text("z")  # another process's, renamed over the old
    os.replace(tmp_path / "replacement", tmp_path / "replaced")
    new = shm.new_entries(before, str(tmp_path))
    assert sorted(new) == [str(tmp_path / name) for name in ("new", "newdir", "replaced")]
    assert shm.remove(str(tmp_path / "newdir")) is None
    assert shm.remove(str(tmp_path / "gone")) is None  # already gone: nothing to say


def test_settle_left_keeps_what_it_cannot_attribute(tmp_path: Path) -> None:
    (tmp_path / "theirs").write_text("x")
    (tmp_path / "mine").write_text("y")
    new = shm.new_entries({}, str(tmp_path))
    attribution = shm.Attribution()
    attribution.seen[new[str(tmp_path / "mine")]] = str(tmp_path / "mine")
    kept = shm.settle_left(new, attribution, None, {os.getpid()}, clean=False)
    assert kept.left == (str(tmp_path / "mine"),) and kept.not_removed == ()
    cleaned = shm.settle_left(new, attribution, None, {os.getpid()}, clean=True)
    assert cleaned.left == (str(tmp_path / "mine"),)
    assert cleaned.not_removed == (f"{tmp_path / 'theirs'} (not attributable to the test: kept)",)
    assert sorted(os.listdir(tmp_path)) == ["theirs"]


def test_settle_left_never_removes_a_file_in_use_outside_the_test(tmp_path: Path) -> None:
    path = tmp_path / "shared"
    path.write_text("y")
    new = shm.new_entries({}, str(tmp_path))
    attribution = shm.Attribution(mounts=(str(tmp_path),))
    attribution.seen[new[str(path)]] = str(path)
    with open(path) as handle:  # this process, outside the "test" (pid 1 only)
        assert handle.readable()
        result = shm.settle_left(new, attribution, None, {1}, clean=True)
    assert result.not_removed == (f"{path} (in use by pid {os.getpid()} outside the test: kept)",)
    assert path.exists()


def test_meminfo_shmem_is_a_number() -> None:
    assert shm.meminfo_shmem_bytes() >= 0


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


# -- the plan: which method, chosen once ---------------------------------------------------------


def test_smaps_forced_says_so_and_cgroup_forced_without_one_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = meter.choose("smaps")
    assert plan.method == "smaps" and "--taichi-limits-memory-method=smaps" in plan.reason
    monkeypatch.setattr(meter, "_detected", lambda: "no usable memory cgroup (because)")
    with pytest.raises(meter.MeterError, match="memory-method=cgroup, but no usable"):
        meter.choose("cgroup")
    assert meter.choose("auto") == MemoryPlan(None, "no usable memory cgroup (because)")
    found = cgroup.CgroupSupport("/sys/fs/cgroup/memory/x", 1)
    monkeypatch.setattr(meter, "_detected", lambda: found)
    assert meter.choose("cgroup").method == "cgroup-v1"
    assert "cgroup-v1" in meter.choose("auto").header_line()


# -- cgroup v2, faked on disk --------------------------------------------------------------------


def fake_v2(
    root: Path, own: str = "/ci/job", controllers: str = "cpu memory pids", subtree: str = "memory"
) -> str:
    (root / "cgroup.controllers").write_text(controllers + "\n")
    own_dir = root / own.lstrip("/")
    own_dir.mkdir(parents=True)
    (own_dir / "cgroup.controllers").write_text(controllers + "\n")
    (own_dir / "cgroup.subtree_control").write_text(subtree + "\n")
    return f"0::{own}\n"


def test_detect_says_why_not_on_each_version(tmp_path: Path) -> None:
    found = cgroup.detect(str(tmp_path), "1:memory:/\n", "proc /proc proc rw 0 0\n")
    assert isinstance(found, str)
    assert "cgroup v2: not mounted" in found and "cgroup v1: no memory controller" in found


def test_detect_without_the_memory_controller(tmp_path: Path) -> None:
    proc = fake_v2(tmp_path, controllers="cpu pids")
    found = cgroup.detect_v2(str(tmp_path), proc, "")
    assert "memory controller is not delegated" in str(found)


def test_detect_finds_a_delegated_cgroup(tmp_path: Path) -> None:
    proc = fake_v2(tmp_path)
    found = cgroup.detect(str(tmp_path), proc, "")
    assert found == cgroup.CgroupSupport(str(tmp_path / "ci" / "job"), 2)
    assert found.method == "cgroup-v2"


def test_detect_finds_the_unified_hierarchy_where_a_hybrid_layout_mounts_it(
    tmp_path: Path,
) -> None:
    unified = tmp_path / "unified"
    unified.mkdir()
    proc = fake_v2(unified)
    mounts = f"cgroup2 {unified} cgroup2 rw 0 0\n"
    assert cgroup.detect_v2(str(tmp_path), proc, mounts) == cgroup.CgroupSupport(
        str(unified / "ci" / "job"), 2
    )


def test_detect_enables_memory_for_children_when_it_may(tmp_path: Path) -> None:
    proc = fake_v2(tmp_path, subtree="")
    found = cgroup.detect_v2(str(tmp_path), proc, "")
    assert isinstance(found, cgroup.CgroupSupport)
    assert (tmp_path / "ci" / "job" / "cgroup.subtree_control").read_text() == "+memory"


def test_own_cgroup_paths() -> None:
    assert cgroup.own_cgroup_path("12:cpu:/x\n0::/user.slice/a.scope\n") == "/user.slice/a.scope"
    assert cgroup.own_cgroup_path("0::/\n") == "/"
    assert cgroup.own_cgroup_path("4:memory:/x\n") is None
    assert cgroup.own_v1_memory_path("5:cpu,cpuacct:/y\n4:memory:/process_api/7\n") == (
        "/process_api/7"
    )
    assert cgroup.own_v1_memory_path("0::/\n") is None
    mounts = "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
    assert cgroup.mount_point("cgroup", "memory", mounts) == "/sys/fs/cgroup/memory"
    assert cgroup.mount_point("cgroup", "cpu", mounts) is None


def test_names_carry_their_owner_and_a_dead_owner_is_told_apart() -> None:
    name = cgroup.cgroup_name(3)
    assert cgroup.owner_of(name) == (os.getpid(), cgroup.own_start_ticks())
    assert cgroup.owner_alive(*cgroup.owner_of(name))  # type: ignore[misc]
    assert not cgroup.owner_alive(os.getpid(), cgroup.own_start_ticks() + 1)  # a recycled pid
    assert cgroup.owner_of("taichi-limits-probe-12") is None
    assert cgroup.owner_of("user.slice") is None


def fake_test_cgroup(tmp_path: Path, anon: int, shmem: int, oom_kill: int = 0) -> cgroup.CgroupV2:
    path = tmp_path / "test"
    path.mkdir(exist_ok=True)
    (path / "memory.stat").write_text(f"anon {anon}\nfile 999999999\nkernel 12\nshmem {shmem}\n")
    (path / "memory.current").write_text(f"{anon + shmem + 999999999}\n")
    (path / "memory.events").write_text(
        f"low 0\nhigh 0\nmax 3\noom {oom_kill}\noom_kill {oom_kill}\n"
    )
    for name in ("memory.max", "memory.high"):
        (path / name).write_text("max\n")
    (path / "cgroup.procs").write_text("")
    return cgroup.CgroupV2(str(path))


def test_v2_figures_leave_the_page_cache_out(tmp_path: Path) -> None:
    made = fake_test_cgroup(tmp_path, anon=100 * MB, shmem=20 * MB, oom_kill=1)
    assert made.held_bytes() == 120 * MB
    assert made.page_cache_bytes() == 999999999 - 20 * MB
    assert made.oom_kills() == 1
    made.set_cap(5 * MB, 100 * MB)
    assert (tmp_path / "test" / "memory.high").read_text() == str(105 * MB)
    assert (tmp_path / "test" / "memory.max").read_text() == str(105 * MB + 16 * MB)
    made.set_cap(5 * MB, None)
    assert (tmp_path / "test" / "memory.max").read_text() == "max"
    made.close()


def test_cgroup_memory_caps_and_measures_from_memory_stat(tmp_path: Path) -> None:
    made = fake_test_cgroup(tmp_path, anon=10 * MB, shmem=0)
    method = CgroupMemory(made)
    tree = ProcessTree(os.getpid())
    tick = Tick()
    tree.sample(tick)
    method.begin(tree, tick, 100 * MB, 0.0, exact=True)
    assert method.name == "cgroup-v2"
    # the throttle at memory.current at the start + the limit; the backstop above it
    assert int((tmp_path / "test" / "memory.high").read_text()) == 10 * MB + 999999999 + 100 * MB
    fake_test_cgroup(tmp_path, anon=60 * MB, shmem=70 * MB)
    method.read(tree, tick, 0.0, settle=False)
    assert method.own_bytes == 120 * MB and method.peak_bytes == 120 * MB
    # no RSS in the figure: a mapped file is page cache, never the test's
    assert method.final_bytes(kernel_own_rss_bytes=900 * MB) == 120 * MB
    tree.close()
    made.close()


def test_smaps_never_judges_on_the_estimate() -> None:
    method = SmapsMemory(os.getpid(), os.getpid())
    if method.reader is None:
        pytest.skip("no smaps_rollup here")
    method.started = True
    method.limit_bytes = 100 * MB
    method.baseline = Reading(0, 0, 0, 0.001)
    method.own_bytes = 10 * MB
    tick = Tick(rss_bytes=10 * 1024 * MB)  # a fork of a 10 GB process
    assert method.name == "smaps"
    assert method.estimate(tick) > 100 * MB  # so an exact reading is due at once ...
    assert method._due(tick, now=1.0)
    assert method.own_bytes <= 100 * MB  # ... but the verdict waits for it
    # the kernel's exact peak RSS growth of the child still counts, after the fact
    assert method.final_bytes(kernel_own_rss_bytes=150 * MB) == 150 * MB


def test_smaps_reads_again_when_shared_memory_grows_on_the_machine() -> None:
    method = SmapsMemory(os.getpid(), os.getpid())
    method.started, method.limit_bytes = True, 100 * MB
    method.baseline = Reading(0, 0, 0, 0.001)
    method.shmem_at_exact, method.shmem_now = 0, 300 * MB  # someone wrote 300 MB to /dev/shm
    tick = Tick()
    assert method._due(tick, now=1.0)  # a cheap sign: read exactly, at once ...
    assert method.own_bytes == 0  # ... and charge only what the test's processes hold


def test_an_error_while_watching_fails_the_test_and_ends_its_tree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno
    import signal

    from pytest_taichi_limits.config.budget import Budget
    from pytest_taichi_limits.config.settings import Settings
    from pytest_taichi_limits.supervise.supervisor import Worker

    def in_child(fds: ChildFds, order: ForkOrder) -> None:
        time.sleep(60)
        os._exit(0)

    def out_of_fds(self: ProcessTree, into: TreeSample) -> TreeSample:
        raise OSError(errno.EMFILE, "Too many open files")

    server = ForkServer(in_child)
    worker = Worker(ServerLaunch(server, {}), Settings(grace_s=0.5), "fork")
    try:
        worker.child.start(RunCommand(0, None, None, None))  # born before /proc fails it
        monkeypatch.setattr(ProcessTree, "sample", out_of_fds)
        result = worker.run_test(0, None, "t::x", Budget(wall_s=30))
    finally:
        monkeypatch.undo()
        worker.close()
        server.close()
    assert result.crash is not None
    assert (
        "could not watch this test (OSError: [Errno 24] Too many open files)" in result.crash.reason
    )
    assert result.usage.ending is not None
    assert result.usage.ending.signal_number in (signal.SIGTERM, signal.SIGKILL)
    assert result.usage.memory_method == "not measured"


def test_an_xdist_worker_in_the_sessions_leaf_makes_its_cgroups_beside_it(tmp_path: Path) -> None:
    # pytest, alone in a delegated cgroup, moved itself into a leaf named for it; an xdist
    # worker it started is in that leaf too.
    fake_v2(tmp_path)
    leaf = tmp_path / "ci" / "job" / cgroup.cgroup_name(0)
    leaf.mkdir()
    (leaf / "cgroup.controllers").write_text("memory\n")
    proc = f"0::/ci/job/{leaf.name}\n"
    assert cgroup.detect_v2(str(tmp_path), proc, "") == cgroup.CgroupSupport(
        str(tmp_path / "ci" / "job"), 2
    )


def test_the_usage_is_complete_when_the_supervisor_builds_it() -> None:
    """The Taichi arch and a session stop (from the child's messages) and admission's
    reservation (from the plugin) are in the usage the supervisor hands back: nothing later
    rebuilds it."""
    from pytest_taichi_limits.config.budget import Budget
    from pytest_taichi_limits.config.settings import Settings
    from pytest_taichi_limits.ipc.channel import ChannelWriter
    from pytest_taichi_limits.ipc.protocol import Exit, TaichiInitDone
    from pytest_taichi_limits.model.records import Admitted
    from pytest_taichi_limits.supervise.supervisor import Worker

    def in_child(fds: ChildFds, order: ForkOrder) -> None:
        channel = ChannelWriter(fds.channel)
        channel.send(TaichiInitDone(arch="x64"))
        channel.send(Exit(reason="interrupt", message="", returncode=None))
        os._exit(0)

    facts = Admitted(0.5, 64 * MB, 0, "its budget", None, 64 * MB, 0, 1024 * MB)
    server = ForkServer(in_child)
    worker = Worker(ServerLaunch(server, {}), Settings(grace_s=0.5), "fork")
    try:
        result = worker.run_test(0, None, "t::x", Budget(wall_s=30), facts)
    finally:
        worker.close()
        server.close()
    assert result.usage.arch == "x64"
    assert result.usage.interrupted == "KeyboardInterrupt"
    assert result.usage.admission == facts
    assert result.usage.timeline is not None


def test_a_file_unmapped_between_the_two_reads_of_a_reading_is_not_counted_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A test holds a 300 MiB /dev/shm file and unmaps it (the end of `with mmap(...)`) while
    the supervisor reads: smaps_rollup still saw the mapping, /proc/<pid>/maps no longer did,
    so the file was both mapped shared memory and a held file: 600 MiB (found under -n 2 with
    a real race, in 2 runs of 6 of a reproduction). The reading is taken again."""
    size = 300 * MIB
    rollups = iter([(0, size), (0, 0), (0, 0), (0, 0)])  # mapped, then unmapped for good
    reader = memory.MemoryMeter(os.getpid(), os.getpid())
    monkeypatch.setattr(reader, "_anon_and_shm", lambda pids: next(rollups))
    monkeypatch.setattr(reader.attribution, "observe", lambda pids: {})
    monkeypatch.setattr(reader.attribution, "held_bytes", lambda held: size)
    monkeypatch.setattr(memory, "mapped_pss_bytes", lambda pids, keys: 0)  # maps: gone
    reading = reader.read([12345])
    assert reading is not None
    assert (reading.anon_bytes, reading.mapped_shm_bytes, reading.unmapped_shm_bytes) == (
        0,
        0,
        size,
    )


def test_a_reading_whose_shared_memory_never_settles_is_the_smaller_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    size = 300 * MIB
    # Every attempt sees the mapping come and go between its reads: never consistent.
    rollups = iter([(0, size), (0, 0)] * 3)
    overlaps = iter([0, 0, size])
    reader = memory.MemoryMeter(os.getpid(), os.getpid())
    monkeypatch.setattr(reader, "_anon_and_shm", lambda pids: next(rollups))
    monkeypatch.setattr(reader.attribution, "observe", lambda pids: {})
    monkeypatch.setattr(reader.attribution, "held_bytes", lambda held: size)
    monkeypatch.setattr(memory, "mapped_pss_bytes", lambda pids, keys: next(overlaps))
    reading = reader.read([12345])
    assert reading is not None
    assert reading.mapped_shm_bytes + reading.unmapped_shm_bytes == size  # never 2 x size
