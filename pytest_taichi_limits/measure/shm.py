"""Shared memory in files: tmpfs (/dev/shm, a tmpfs /tmp) and memfds. Whose is it?

A file in /dev/shm is memory the machine holds until someone removes it, and nothing in the file
says who made it. The plugin attributes a file to a test only on evidence:

- a process of the test held it open or mapped it when the supervisor looked (at its readings,
  and at the end of every test, while the child is idle): `Attribution.observe`;
- or its first page is charged to the test's memory cgroup (the kernel charges a page to the
  cgroup that first touched it), where /proc/kpagecgroup can be read (as root):
  `charged_to_cgroup`.

A file that appeared while the test ran without such evidence (another process's, another
xdist worker's, a file the test wrote and closed between two looks without a cgroup) is
*unattributed*: it is never charged to the test, never removed, and the report says so.
`--taichi-limits-clean-shm` removes only attributed files that no process outside the test
holds or maps, and in a worker only at the worker's end (a module fixture's shared memory lives
as long as the module's tests).
"""

from __future__ import annotations

import mmap
import os
import shutil
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from .proctree import read_proc, read_proc_all

SHM_DIR = "/dev/shm"
#: Files the plugin itself keeps in memfds (the stack file): never the test's.
OWN_MEMFD_PREFIX = "/memfd:pytest-taichi-limits"
#: Past this many fds in one process, the rest are not looked at (a reading must stay cheap).
MAX_FDS_SCANNED = 4096

#: New /dev/shm entries examined at a test's end, at most (each costs a few system calls).
MAX_ENTRIES_EXAMINED = 1000

#: A file's identity: (st_dev, st_ino). A name can be replaced; an inode cannot.
FileKey = tuple[int, int]


def tmpfs_mounts(
    candidates: Iterable[str] = (SHM_DIR, "/tmp"), mounts_text: str | None = None
) -> tuple[str, ...]:
    """Which of `candidates` are tmpfs mount points (memory, not disk)."""
    if mounts_text is None:
        try:
            with open("/proc/self/mounts") as handle:
                mounts_text = handle.read()
        except OSError:
            return ()
    tmpfs = {
        words[1]
        for words in (line.split() for line in mounts_text.splitlines())
        if len(words) >= 3 and words[2] == "tmpfs"
    }
    return tuple(path for path in candidates if path in tmpfs)


def meminfo_shmem_bytes() -> int:
    """The machine's shared memory (tmpfs files, memfds, shared mappings): /proc/meminfo's
    Shmem, one small read. Never a figure of the test's: a cheap sign that shared memory
    grew, so that the exact reading is taken at once."""
    text = read_proc("/proc/meminfo", 1 << 13) or b""
    at = text.find(b"\nShmem:")
    if at < 0:
        return 0
    words = text[at + 7 : text.find(b"\n", at + 1)].split()
    return int(words[0]) * 1024 if words and words[0].isdigit() else 0


@dataclass
class HeldFile:
    """A tmpfs file or memfd a test's process held: where to find it, and its size then."""

    path: str  # its path, or /proc/<pid>/fd/<n> for a memfd (which has no path)
    bytes: int
    memfd: bool


def held_files(pids: Iterable[int], devices: frozenset[int]) -> dict[FileKey, HeldFile]:
    """Files on the tmpfs `devices`, and memfds, that `pids` hold open: each counted once."""
    found: dict[FileKey, HeldFile] = {}
    for pid in pids:
        base = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(base)[:MAX_FDS_SCANNED]
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{base}/{fd}")
                memfd = target.startswith("/memfd:")
                if (memfd and target.startswith(OWN_MEMFD_PREFIX)) or not (
                    memfd or target.startswith("/")
                ):
                    continue
                status = os.stat(f"{base}/{fd}")
            except OSError:
                continue
            if not memfd and status.st_dev not in devices:
                continue
            key = (status.st_dev, status.st_ino)
            if key not in found:
                path = f"{base}/{fd}" if memfd else target
                found[key] = HeldFile(path, status.st_blocks * 512, memfd)
    return found


def mapped_files(pids: Iterable[int], devices: frozenset[int]) -> dict[FileKey, str]:
    """Files on the tmpfs `devices` that `pids` map (from /proc/<pid>/maps: device, inode)."""
    found: dict[FileKey, str] = {}
    for pid in pids:
        text = read_proc_all(f"/proc/{pid}/maps") or b""
        for line in text.splitlines():
            words = line.split(maxsplit=5)
            key = _vma_key(line)
            if key is not None and len(words) == 6 and key[0] in devices:
                found[key] = words[5].decode(errors="replace").removesuffix(" (deleted)")
    return found


def _vma_key(header: bytes) -> FileKey | None:
    """(dev, inode) of the file a /proc/<pid>/maps or smaps header line maps; None: none."""
    words = header.split(maxsplit=5)
    if len(words) < 5 or words[4] == b"0":
        return None
    major, _, minor = words[3].partition(b":")
    try:
        return os.makedev(int(major, 16), int(minor, 16)), int(words[4])
    except ValueError:
        return None


def mapped_pss_bytes(pids: Iterable[int], keys: set[FileKey]) -> int:
    """The proportional resident memory (Pss) of the mappings of the files `keys` in `pids`:
    pages that both the files' own figure (held, left) and the mapped shared memory
    (Pss_Shmem) see. /proc/<pid>/smaps is read only for a process whose maps shows one."""
    if not keys:
        return 0
    total = 0
    for pid in pids:
        maps = read_proc_all(f"/proc/{pid}/maps") or b""
        if not any(_vma_key(line) in keys for line in maps.splitlines()):
            continue
        counting = False
        for line in (read_proc_all(f"/proc/{pid}/smaps") or b"").splitlines():
            if line[:1] in b"0123456789abcdef" and b"-" in line.split(b" ", 1)[0]:
                counting = _vma_key(line) in keys
            elif counting and line.startswith(b"Pss:"):
                words = line.split()
                total += int(words[1]) * 1024 if len(words) > 1 and words[1].isdigit() else 0
    return total


def tmpfs_devices(mounts: Iterable[str]) -> frozenset[int]:
    devices = set()
    for mount in mounts:
        try:
            devices.add(os.stat(mount).st_dev)
        except OSError:
            continue
    return frozenset(devices)


def entries(directory: str = SHM_DIR) -> dict[str, FileKey]:
    """Name -> (dev, inode) of what a tmpfs directory holds now, top level only."""
    found: dict[str, FileKey] = {}
    try:
        device = os.stat(directory).st_dev  # one device: no stat per entry (a listing is cheap)
        with os.scandir(directory) as listing:
            for entry in listing:
                found[entry.name] = (device, entry.inode())
    except OSError:
        pass
    return found


def new_entries(before: dict[str, FileKey], directory: str = SHM_DIR) -> dict[str, FileKey]:
    """Entries (by name and inode) that were not in `before`: made, or replaced, since."""
    return {
        os.path.join(directory, name): key
        for name, key in entries(directory).items()
        if before.get(name) != key
    }


def file_bytes(path: str, key: FileKey) -> int:
    """Memory a file still holds, if it is still the same file; 0 when gone or replaced."""
    try:
        status = os.stat(path)
    except OSError:
        return 0
    return status.st_blocks * 512 if (status.st_dev, status.st_ino) == key else 0


def charged_to_cgroup(path: str, cgroup_inode: int) -> bool | None:
    """Whether the first page of a tmpfs file is charged to the memory cgroup whose directory
    has inode `cgroup_inode`; None when the kernel will not say (not root, an empty file).

    The file's first page is mapped read-only (reading an existing page allocates nothing),
    its frame number read from /proc/self/pagemap and its cgroup from /proc/kpagecgroup.
    """
    try:
        # Never block on what a test may leave there (a FIFO), never follow a link out of it.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode) or status.st_blocks == 0:
            return None
        with mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ) as mapping:
            mapping[0]  # fault the page in (a hole maps the zero page: no cgroup)
            address = _mapping_address(path)
            if address is None:
                return None
            frame = _frame_number(address)
            if not frame:
                return None
            with open("/proc/kpagecgroup", "rb") as table:
                table.seek(frame * 8)
                (inode,) = struct.unpack("=Q", table.read(8))
            return bool(inode) and inode == cgroup_inode
    except (OSError, ValueError, struct.error):
        return None
    finally:
        os.close(fd)


def _mapping_address(path: str) -> int | None:
    for line in (read_proc_all("/proc/self/maps") or b"").splitlines():
        words = line.split(maxsplit=5)
        if len(words) == 6 and words[5].decode(errors="replace") == path:
            return int(words[0].split(b"-")[0], 16)
    return None


def _frame_number(address: int) -> int:
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(address // mmap.PAGESIZE * 8)
        (entry,) = struct.unpack("=Q", pagemap.read(8))
    present = entry >> 63
    return entry & ((1 << 55) - 1) if present else 0  # 0 also when not root (hidden)


def in_use_outside(keys: set[FileKey], inside: set[int]) -> dict[FileKey, int]:
    """Which of `keys` a process outside `inside` (pids) holds open or maps, and one such
    pid: every process on the machine is looked at (only at a worker's end, when there is
    something to remove)."""
    holders: dict[FileKey, int] = {}
    devices = frozenset(key[0] for key in keys)
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in inside:
            continue
        pid = int(name)
        found = set(held_files([pid], devices)) | set(mapped_files([pid], devices))
        for key in found & keys:
            holders.setdefault(key, pid)
    return holders


def remove(path: str) -> str | None:
    """Remove one entry; None when done (or already gone), else why not."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        return error.strerror or str(error)
    return None


@dataclass
class Attribution:
    """What one worker's processes are known to have held, mapped or made in tmpfs."""

    mounts: tuple[str, ...] = field(default_factory=tmpfs_mounts)
    #: (dev, inode) -> where the file is: every tmpfs file and memfd a test process was seen
    #: holding open or mapping; a file stays the test's once seen, closed or not
    seen: dict[FileKey, str] = field(default_factory=dict)
    devices: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        self.devices = tmpfs_devices(self.mounts)

    def observe(self, pids: list[int], maps: bool = False) -> dict[FileKey, HeldFile]:
        """Look at what `pids` hold now (and map, with `maps`); remember it; return the held
        files with their sizes."""
        held = held_files(pids, self.devices)
        for key, held_file in held.items():
            if not held_file.memfd:
                self.seen[key] = held_file.path
        if maps:
            for key, path in mapped_files(pids, self.devices).items():
                self.seen.setdefault(key, path)
        return held

    def counted(self, held: dict[FileKey, HeldFile]) -> set[FileKey]:
        """The files `held_bytes` counts: those held now and every one seen before."""
        return set(held) | set(self.seen)

    def held_bytes(self, held: dict[FileKey, HeldFile]) -> int:
        """Memory in the files `held` now plus every tmpfs file seen before that still
        exists (written, closed and left there): each file once."""
        total = sum(held_file.bytes for held_file in held.values())
        for key, path in self.seen.items():
            if key not in held:
                total += file_bytes(path, key)
        return total


@dataclass(frozen=True)
class LeftFiles:
    """What a test (or a worker) left in /dev/shm, and what became of it."""

    left: tuple[str, ...] = ()  # attributed to the test and still there
    #: "path (why)" for each entry that was not removed: not attributable to the test, in use
    #: outside it, or the removal failed
    not_removed: tuple[str, ...] = ()
    #: new entries that could not be attributed to the test (never charged, never removed)
    unattributed: tuple[str, ...] = ()

    def unattributed_note(self) -> str:
        """What the record says about shared memory it could not attribute ("": none)."""
        if not self.unattributed:
            return ""
        held = sum(file_bytes(path, _key(path)) for path in self.unattributed)
        shown = ", ".join(self.unattributed[:5]) + (", ..." if len(self.unattributed) > 5 else "")
        return (
            f"{len(self.unattributed)} new file(s) in {SHM_DIR} holding {held} bytes could not "
            f"be attributed to the test (no process of it was seen holding them): not charged "
            f"({shown})"
        )


def _key(path: str) -> FileKey:
    try:
        status = os.lstat(path)
    except OSError:
        return (0, 0)
    return (status.st_dev, status.st_ino)


def settle_left(
    new: dict[str, FileKey],
    attribution: Attribution,
    cgroup_inode: int | None,
    inside: set[int],
    clean: bool,
) -> LeftFiles:
    """Sort the new entries of /dev/shm into the test's (attributed) and the rest; with
    `clean`, remove the test's that no process outside `inside` uses."""
    mine: dict[str, FileKey] = {}
    not_removed: list[str] = []
    listed = sorted(new.items())
    if len(listed) > MAX_ENTRIES_EXAMINED:  # a test that made a million files: bounded work
        not_removed.append(
            f"{len(listed) - MAX_ENTRIES_EXAMINED} more new entries in {SHM_DIR} (not examined)"
        )
        listed = listed[:MAX_ENTRIES_EXAMINED]
    unattributed: list[str] = []
    for path, key in listed:
        if key in attribution.seen or (
            cgroup_inode is not None and charged_to_cgroup(path, cgroup_inode)
        ):
            mine[path] = key
            continue
        unattributed.append(path)
        if clean:
            not_removed.append(f"{path} (not attributable to the test: kept)")
    if not clean or not mine:
        return LeftFiles(tuple(mine), tuple(not_removed), tuple(unattributed))
    holders = in_use_outside(set(mine.values()), inside)
    for path, key in mine.items():
        if key in holders:
            not_removed.append(f"{path} (in use by pid {holders[key]} outside the test: kept)")
            continue
        failure = remove(path)
        if failure is not None:
            not_removed.append(f"{path} (could not be removed: {failure})")
    return LeftFiles(tuple(mine), tuple(not_removed), tuple(unattributed))
