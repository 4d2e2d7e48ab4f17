"""Admission without pytester: capacity specs, devices, the fair queue, the ledger file (real
processes, SIGKILL, a full ledger, a damaged file), needs from budgets and baselines, and the
fork-safety probe with fake libraries."""

from __future__ import annotations

import json
import os
import signal
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_taichi_limits.admission import capacity as cap
from pytest_taichi_limits.admission import gate as adm
from pytest_taichi_limits.admission.ledger import (
    HELD,
    WAITING,
    Entry,
    Ledger,
    LedgerError,
    LedgerWarning,
    process_start,
    this_process,
)
from pytest_taichi_limits.config.budget import Budget
from pytest_taichi_limits.formats.baseline import Entry as BaselineEntry
from pytest_taichi_limits.formats.baseline import Range, parse_tolerance
from pytest_taichi_limits.launch import forksafety

MB = 1024**2
GB = 1024**3


def _entry(
    ticket: int,
    mem: int = 0,
    gpu: int = 0,
    state: str = WAITING,
    device: int | None = None,
    overtaken: int = 0,
) -> Entry:
    pid, start = this_process()
    return Entry(ticket, pid, start, state, mem, gpu, device, time.time(), f"t{ticket}", overtaken)


def _capacity(mem: int = 2 * GB, devices: tuple[cap.Device, ...] = ()) -> adm.Capacity:
    return adm.Capacity(mem, "declared", devices, "test", len(devices))


def _no_sleep(_: float) -> None:
    raise AssertionError("admission waited although the test should fit at once")


# -- capacity ---------------------------------------------------------------------------------


def test_capacity_spec_parses_units_and_rejects_typos() -> None:
    assert cap.parse_capacity("mem=20GB,gpu=80GB") == cap.Declared(20 * GB, 80 * GB)
    assert cap.parse_capacity(" gpu = 1.5 GiB ") == cap.Declared(None, int(1.5 * GB))
    assert cap.parse_capacity("mem=512M") == cap.Declared(512 * MB, None)
    # the same units as every other option (the tolerance's GiB and MiB included)
    assert cap.parse_capacity("mem=20GiB,gpu=512MiB") == cap.Declared(20 * GB, 512 * MB)
    for bad, says in (
        ("mem=20XB", "cannot read"),
        ("mem=20XB", r"not one of B, KiB, MiB, GiB, TiB"),
        ("ram=1GB", "KEY=AMOUNT"),
        ("mem=0GB", "must be at least one byte"),
        ("mem=0.0001B", "at least one byte"),  # was accepted as 0 B
        ("mem=1e400GB", "more bytes than any machine has"),  # was "must be more than 0"
        (
            "mem=100",
            r"amount '100': it has no unit: write e\.g\. 512MiB",
        ),  # was 100 bytes, silently
        ("mem=1GB,mem=2GB", "twice"),
        (",", "names no"),
    ):
        with pytest.raises(cap.CapacityError, match=says):
            cap.parse_capacity(bad)


def test_machine_memory_is_available_minus_a_margin() -> None:
    figures = {"MemTotal": 24 * GB, "MemAvailable": 20 * GB}
    assert cap.machine_memory_bytes(figures) == 20 * GB - int(2.4 * GB)
    assert cap.machine_memory_bytes({"MemTotal": GB, "MemAvailable": 100 * MB}) == 0
    assert cap.meminfo()["MemTotal"] > 0  # the real /proc/meminfo reads


def test_capacity_from_declared_values_and_fake_nvml() -> None:
    devices = [cap.Device(0, 80 * GB, "GPU-aaa"), cap.Device(1, 80 * GB, "GPU-bbb")]
    measured = adm.measure_capacity(
        cap.Declared(None, 40 * GB),
        figures={"MemTotal": 10 * GB, "MemAvailable": 9 * GB},
        nvml=lambda: (devices, "NVML, 2 device(s)"),
        cuda_visible="1",
    )
    assert measured.mem_bytes == 8 * GB
    assert [(d.index, d.total_bytes) for d in measured.devices] == [(1, 40 * GB)]
    assert measured.physical_devices == 2
    without_nvml = adm.measure_capacity(
        cap.Declared(2 * GB, 4 * GB), nvml=lambda: ([], "NVML unavailable")
    )
    assert without_nvml.mem_source == "declared"
    assert [(d.index, d.total_bytes) for d in without_nvml.devices] == [(-1, 4 * GB)]
    assert "GPU 4.0 GiB on each of 1 device(s)" in without_nvml.describe()
    assert adm.Capacity.from_dict(measured.as_dict()) == measured


# -- devices ----------------------------------------------------------------------------------


DEVICES = [
    cap.Device(0, 16 * GB, "GPU-0a"),
    cap.Device(1, 16 * GB, "GPU-1b"),
    cap.Device(2, 16 * GB, "GPU-2c"),
]


def test_cuda_visible_devices_set_outside_pytest_is_respected() -> None:
    assert cap.visible(DEVICES, None) == DEVICES
    assert [d.index for d in cap.visible(DEVICES, "2,0")] == [2, 0]
    assert [d.index for d in cap.visible(DEVICES, "GPU-1b")] == [1]
    assert [d.index for d in cap.visible(DEVICES, "GPU-1")] == [1]  # a unique prefix
    assert [d.index for d in cap.visible(DEVICES, "1,7,2")] == [1]  # CUDA stops at a bad one
    assert cap.visible(DEVICES, "") == []
    assert cap.visible(DEVICES, "-1") == []


def test_device_with_most_room_is_chosen_and_a_full_one_never() -> None:
    held = {0: 10 * GB, 2: 4 * GB}
    assert cap.choose_device(DEVICES, held, 4 * GB) == DEVICES[1]
    assert cap.choose_device(DEVICES, {1: 16 * GB, 2: 16 * GB}, 6 * GB) == DEVICES[0]
    assert cap.choose_device(DEVICES, {0: 11 * GB, 1: 11 * GB, 2: 11 * GB}, 6 * GB) is None
    assert DEVICES[1].env() == {"CUDA_VISIBLE_DEVICES": "GPU-1b", "TI_VISIBLE_DEVICE": "1"}


def test_admitted_gpu_test_gets_a_device_with_room_and_its_environment(tmp_path: Path) -> None:
    admission = adm.Admission(
        "budget",
        directory=str(tmp_path),
        capacity=_capacity(devices=tuple(DEVICES)),
        sleep=_no_sleep,
    )
    budget = Budget(mem_mb=100, gpu_gb=10)
    with admission.admitted("a", budget) as first, admission.admitted("b", budget) as second:
        assert first.device is not None and second.device is not None  # narrows for mypy
        assert {first.device.index, second.device.index} == {0, 1}
        assert second.env["TI_VISIBLE_DEVICE"] == str(second.device.index)
        assert second.env["CUDA_VISIBLE_DEVICES"] == second.device.uuid
        facts = second.facts()
        assert facts is not None  # narrows for mypy
        assert facts.reserved_gpu_bytes == 10 * GB
    one_card = adm.Admission(
        "budget",
        directory=str(tmp_path),
        sleep=_no_sleep,
        capacity=adm.Capacity(
            GB, "declared", (cap.Device(0, 16 * GB),), "test", physical_devices=1
        ),
    )
    with one_card.admitted("c", budget) as grant:
        assert grant.device is not None  # narrows for mypy
        assert grant.device.index == 0 and grant.env == {}  # nothing to choose between


# -- the fair queue ---------------------------------------------------------------------------


def test_a_waiting_test_that_fits_counts_as_started() -> None:
    entries = [_entry(1, mem=2 * GB), _entry(2, mem=GB)]
    assert adm.decide(entries, 1, _capacity()).admit
    assert not adm.decide(entries, 2, _capacity()).admit


def test_small_test_may_pass_a_large_one_a_bounded_number_of_times() -> None:
    entries = [_entry(1, mem=GB, state=HELD), _entry(2, mem=2 * GB), _entry(3, mem=GB // 2)]
    decision = adm.decide(entries, 3, _capacity())
    assert decision.admit and decision.overtaken == (2,)
    assert not adm.decide(entries, 2, _capacity()).admit
    starved = [entries[0], _entry(2, mem=2 * GB, overtaken=adm.MAX_OVERTAKES), entries[2]]
    assert not adm.decide(starved, 3, _capacity()).admit


def test_large_test_starts_after_its_overtakes_are_used_up(tmp_path: Path) -> None:
    """Real ledger: small tests keep arriving; the large one is passed MAX_OVERTAKES times at
    most, then the small ones wait behind it until it has run."""
    ledger = Ledger(str(tmp_path))
    capacity = _capacity(mem=2 * GB)
    with ledger.transaction() as entries:
        entries += [_entry(1, mem=GB, state=HELD), _entry(2, mem=2 * GB)]
    admitted_small = 0
    for ticket in range(3, 3 + adm.MAX_OVERTAKES + 3):
        with ledger.transaction() as entries:
            entries.append(_entry(ticket, mem=GB // 4))
            decision = adm.decide(entries, ticket, capacity)
            if decision.admit:
                admitted_small += 1
                entries[:] = [e for e in entries if e.ticket != ticket]  # ran and ended
                entries[:] = [
                    adm._passed(e) if e.ticket in decision.overtaken else e for e in entries
                ]
    assert admitted_small == adm.MAX_OVERTAKES
    with ledger.transaction() as entries:
        entries[:] = [e for e in entries if e.ticket != 1]  # the holder ends
        assert adm.decide(entries, 2, capacity).admit
        assert not adm.decide(entries, 3 + adm.MAX_OVERTAKES, capacity).admit


def test_tests_on_different_resources_do_not_block_each_other() -> None:
    gpu_only = _capacity(devices=(cap.Device(0, 4 * GB),))
    entries = [
        _entry(1, gpu=3 * GB, state=HELD, device=0),
        _entry(2, gpu=2 * GB, overtaken=adm.MAX_OVERTAKES),
        _entry(3, mem=GB),
    ]
    assert adm.decide(entries, 3, gpu_only).admit
    assert not adm.decide(entries, 2, gpu_only).admit


# -- needs --------------------------------------------------------------------------------------


def test_need_from_budget_and_from_baseline(tmp_path: Path) -> None:
    ranges = {"own_memory_bytes": Range(90 * MB, 100 * MB), "gpu_bytes": Range(GB, GB)}
    base = {
        "t": BaselineEntry(
            runs=2,
            ranges=ranges,
            memory_method="smaps",
            arch="x64",
            mode="fork",
            environment="e",
            saved_at="now",
        )
    }
    tolerance = parse_tolerance("mem=10%+16MB,gpu=0%+0MB")
    admission = adm.Admission(
        "baseline",
        baseline=base,
        allowances=tolerance.allowances,
        capacity=_capacity(8 * GB, (cap.Device(0, 8 * GB),)),
    )
    need = admission.need_of("t", Budget(mem_mb=1024, gpu_gb=2))
    assert need.mem_bytes == 110 * MB + 16 * MB and need.gpu_bytes == GB
    assert admission.need_of("t", Budget(mem_mb=50)).mem_bytes == 50 * MB  # never above budget
    other = admission.need_of("new", Budget(mem_mb=1024))
    assert other.mem_bytes == GB and "not in the baseline" in other.source
    by_budget = adm.Admission("budget", capacity=_capacity(mem=8 * GB))
    assert by_budget.need_of("t", Budget(mem_mb=None)).mem_bytes == 8 * GB  # runs alone
    assert by_budget.need_of("t", Budget(mem_mb=10)).gpu_bytes == 0


def test_a_test_larger_than_the_capacity_is_refused_at_once(tmp_path: Path) -> None:
    admission = adm.Admission(
        "budget",
        directory=str(tmp_path),
        sleep=_no_sleep,
        capacity=_capacity(2 * GB, (cap.Device(-1, 4 * GB),)),
    )
    too_large = r"needs memory 4\.0 GiB .*whole capacity is 2\.0 GiB .*could never start"
    with (
        pytest.raises(adm.AdmissionRefused, match=too_large),
        admission.admitted("tests/t.py::big", Budget(mem_mb=4096)),
    ):
        pass
    with (
        pytest.raises(
            adm.AdmissionRefused,
            match=r"GPU memory 8\.0 GiB .*largest device holds "
            r"4\.0 GiB",
        ),
        admission.admitted("tests/t.py::gpu", Budget(mem_mb=1, gpu_gb=8)),
    ):
        pass
    assert Ledger(str(tmp_path)).entries() == []
    # Without GPU capacity (no NVML, none declared) gpu_gb only caps ti.init: nothing reserved.
    no_gpu = adm.Admission(
        "budget", directory=str(tmp_path), capacity=_capacity(2 * GB), sleep=_no_sleep
    )
    with no_gpu.admitted("tests/t.py::gpu", Budget(mem_mb=1, gpu_gb=64)) as grant:
        assert grant.need is not None  # narrows for mypy
        assert grant.need.gpu_bytes == 0 and grant.device is None


# -- the ledger ---------------------------------------------------------------------------------


def test_entries_round_trip_and_bad_lines_are_refused() -> None:
    entry = _entry(3, mem=5, gpu=7, state=HELD, device=1)
    assert Entry.parse(entry.line()) == entry
    data = json.loads(entry.line())
    for change in ({"v": 2}, {"pid": -1}, {"state": "odd"}, {"mem_bytes": "5"}, {"extra": 1}):
        with pytest.raises((ValueError, TypeError)):
            Entry.parse(json.dumps({**data, **change}))


def test_pid_start_time_tells_a_reused_pid_from_its_owner(tmp_path: Path) -> None:
    pid, start = this_process()
    assert process_start(pid) == start
    ledger = Ledger(str(tmp_path))
    live = _entry(1, mem=1)
    reused = Entry(2, pid, start + 1, HELD, 1, 0, None, 0.0, "old")  # same pid, other process
    with ledger.transaction() as entries:
        entries += [live, reused]
    assert ledger.entries() == [live]


def test_ledger_directory_must_be_private(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(LedgerError, match="owned by you and writable only by you"):
        Ledger(str(shared))
    made = tmp_path / "new" / "ledger"
    Ledger(str(made))
    assert made.stat().st_mode & 0o777 == 0o700


def test_damaged_ledger_is_rebuilt_with_a_warning(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path))
    good = _entry(4, mem=GB, state=HELD)
    Path(ledger.path).write_text("garbage\n" + good.line() + '\n{"v": 1, "ticket"')
    with pytest.warns(LedgerWarning, match=r"damaged \(2 unreadable line\(s\)\).*1 entries"):
        assert ledger.entries() == [good]
    assert Path(ledger.path).read_text() == good.line() + "\n"


def test_full_ledger_waits_until_a_holder_releases(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path))
    with ledger.transaction() as entries:
        entries += [_entry(1, mem=GB, state=HELD), _entry(2, mem=GB, state=HELD)]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:  # another test ends
            with ledger.transaction() as entries:
                entries[:] = [e for e in entries if e.ticket != 1]

    admission = adm.Admission(
        "budget", directory=str(tmp_path), capacity=_capacity(2 * GB), sleep=sleep
    )
    with admission.admitted("t", Budget(mem_mb=1024)) as grant:
        assert len(sleeps) == 3 and grant.reserved_mem_bytes == 2 * GB
        assert sorted(e.ticket for e in ledger.entries()) == [2, 3]
    assert [e.ticket for e in ledger.entries()] == [2]  # released on exit
    assert sleeps == sorted(sleeps)  # backs off


def test_entry_lost_from_a_damaged_ledger_is_queued_again_and_released(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path))
    with ledger.transaction() as entries:
        entries.append(_entry(1, mem=2 * GB, state=HELD))

    def sleep(_: float) -> None:  # the file is lost: the holder's entry and ours with it
        Path(ledger.path).write_text("")

    admission = adm.Admission(
        "budget", directory=str(tmp_path), capacity=_capacity(2 * GB), sleep=sleep
    )
    with admission.admitted("t", Budget(mem_mb=1024)):
        assert [(e.nodeid, e.state) for e in ledger.entries()] == [("t", HELD)]
    assert ledger.entries() == []


def test_reservation_released_when_the_block_raises(tmp_path: Path) -> None:
    admission = adm.Admission(
        "budget", directory=str(tmp_path), capacity=_capacity(), sleep=_no_sleep
    )
    with pytest.raises(KeyboardInterrupt), admission.admitted("t", Budget(mem_mb=10)):
        raise KeyboardInterrupt
    assert Ledger(str(tmp_path)).entries() == []


def test_ctrl_c_while_waiting_leaves_nothing_in_the_ledger(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path))
    with ledger.transaction() as entries:
        entries.append(_entry(1, mem=2 * GB, state=HELD))

    def interrupted(_: float) -> None:
        raise KeyboardInterrupt

    admission = adm.Admission(
        "budget", directory=str(tmp_path), capacity=_capacity(2 * GB), sleep=interrupted
    )
    with pytest.raises(KeyboardInterrupt), admission.admitted("t", Budget(mem_mb=1024)):
        raise AssertionError("admitted although the ledger is full")
    assert [e.ticket for e in ledger.entries()] == [1]


def _fork(body: Callable[..., object]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def test_concurrent_reservers_never_exceed_the_capacity(tmp_path: Path) -> None:
    """Six real processes, 1 GB each, capacity 2 GB: intervals recorded inside the reservation
    never overlap by more than two, and each holder sees at most 2 GB held."""
    ledger_dir, log = str(tmp_path / "ledger"), tmp_path / "log"

    def reserve(name: str) -> None:
        admission = adm.Admission("budget", directory=ledger_dir, capacity=_capacity(2 * GB))
        with admission.admitted(name, Budget(mem_mb=1024)):
            began = time.time()
            held = sum(e.mem_bytes for e in Ledger(ledger_dir).entries() if e.state == HELD)
            time.sleep(0.2)
            with open(log, "a") as stream:
                stream.write(json.dumps([began, time.time(), held]) + "\n")

    pids = [_fork(lambda n=n: reserve(f"t{n}")) for n in range(6)]
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    intervals = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(intervals) == 6
    assert all(held <= 2 * GB for _, _, held in intervals)
    for began, _, _ in intervals:
        running = sum(1 for start, end, _ in intervals if start <= began < end)
        assert running <= 2
    assert Ledger(ledger_dir).entries() == []


def test_holder_killed_with_sigkill_does_not_block_the_rest(tmp_path: Path) -> None:
    ledger_dir = str(tmp_path)
    ready_read, ready_write = os.pipe()

    def hold_forever() -> None:
        admission = adm.Admission("budget", directory=ledger_dir, capacity=_capacity(2 * GB))
        with admission.admitted("holder", Budget(mem_mb=2048)):
            os.write(ready_write, b"x")
            time.sleep(600)

    pid = _fork(hold_forever)
    assert os.read(ready_read, 1) == b"x"
    assert [e.nodeid for e in Ledger(ledger_dir).entries()] == ["holder"]
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    admission = adm.Admission(
        "budget", directory=ledger_dir, capacity=_capacity(2 * GB), sleep=_no_sleep
    )
    with admission.admitted("next", Budget(mem_mb=2048)):
        assert [e.nodeid for e in Ledger(ledger_dir).entries()] == ["next"]


# -- summary and report -----------------------------------------------------------------------


def test_summary_lines_say_total_wait_and_peak_reserved() -> None:
    waits = {"a": (0.0, GB, 0), "b": (2.5, 2 * GB, 0), "c": (0.5, GB, 3 * GB)}
    lines = adm.summary_lines(waits, _capacity(6 * GB))
    assert lines[0] == "3 tests admitted; waited 3.0 s in total (longest 2.5 s: b)"
    assert lines[1] == (
        "peak reserved memory 2.0 GiB of 6.0 GiB (machine-wide, every session); "
        "peak reserved GPU memory on one device 3.0 GiB"
    )
    assert adm.summary_lines({}, None) == []
    assert adm.summary_lines({"a": (0.0, GB, 0)}, None)[-1].startswith("tests hardly waited")


def test_report_line_from_usage_extra() -> None:
    grant = adm.Grant(
        1.234, adm.Need(GB, 2 * GB, "its budget"), cap.Device(1, 8 * GB), 3 * GB, 2 * GB
    )
    assert adm.report_lines(grant.facts()) == [
        (
            "admission: waited 1.23 s for memory 1.0 GiB, GPU 2.0 GiB on device 1 (its budget); "
            "reserved on the machine then 3.0 GiB"
        )
    ]
    assert adm.report_lines(None) == [] and adm.Grant().facts() is None


# -- fork safety --------------------------------------------------------------------------------


def _fake_torch(initialised: bool) -> types.SimpleNamespace:
    return types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: initialised))


def test_cuda_initialised_by_another_library_is_named() -> None:
    assert forksafety.cuda_initialised_here({}) is None
    assert forksafety.cuda_initialised_here({"torch": _fake_torch(False)}) is None
    reason = forksafety.cuda_initialised_here({"torch": _fake_torch(True)})
    assert reason is not None and reason.startswith("PyTorch (torch.cuda.is_initialized())")

    def broken() -> bool:
        raise RuntimeError("no driver")

    odd = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=broken))
    assert forksafety.cuda_initialised_here({"torch": odd}) is None
    jax_bridge = types.SimpleNamespace(_backends={"cpu": 1, "cuda": 2})
    assert "JAX" in (forksafety.cuda_initialised_here({"jax._src.xla_bridge": jax_bridge}) or "")
    assert forksafety.cuda_initialised_here() is None  # this process: no CUDA library at all
