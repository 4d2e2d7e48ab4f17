"""What the machine can hold: memory and GPU devices that admission hands out.

Memory capacity is either declared (`--taichi-limits-capacity=mem=20GiB`) or read once per
session from the kernel's `MemAvailable` minus a margin. GPU capacity is per device: NVML lists
the devices and their total memory; `gpu=` declares a per-device size (and, without NVML, one
device of that size). A CUDA_VISIBLE_DEVICES set outside pytest limits which devices are used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Declared capacity is an option, parsed with the others in config; its names are re-exported.
from ..config.capacity import CAPACITY_KEYS as CAPACITY_KEYS
from ..config.capacity import CapacityError as CapacityError
from ..config.capacity import Declared as Declared
from ..config.capacity import parse_capacity as parse_capacity

#: Kept free of the memory capacity when it comes from MemAvailable: the pytest processes
#: themselves, the page cache a test's imports need, and whatever else starts meanwhile.
MARGIN_FRACTION = 0.10
MARGIN_MIN_BYTES = 256 * 1024**2


def meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """The kernel's memory figures in bytes (MemTotal, MemAvailable, ...)."""
    figures: dict[str, int] = {}
    with open(path, encoding="ascii") as stream:
        for line in stream:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                figures[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return figures


def machine_memory_bytes(figures: Mapping[str, int]) -> int:
    """MemAvailable minus a margin of 10% of MemTotal (at least 256 MiB)."""
    available = figures.get("MemAvailable", figures.get("MemFree", 0))
    margin = max(MARGIN_MIN_BYTES, int(figures.get("MemTotal", 0) * MARGIN_FRACTION))
    return max(0, available - margin)


# -- GPU devices ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """One GPU as admission sees it: NVML's index (PCI bus order), UUID and memory to hand out."""

    index: int
    total_bytes: int
    uuid: str = ""

    def env(self) -> dict[str, str]:
        """The child's environment for this device: CUDA sees only it; Taichi's Vulkan
        backend is pointed at it by index."""
        return {
            "CUDA_VISIBLE_DEVICES": self.uuid or str(self.index),
            "TI_VISIBLE_DEVICE": str(self.index),
        }


def visible(devices: Sequence[Device], cuda_visible_devices: str | None) -> list[Device]:
    """The devices a CUDA_VISIBLE_DEVICES set outside pytest leaves, in its order.

    Entries are NVML indices (PCI bus order, as CUDA_DEVICE_ORDER=PCI_BUS_ID numbers them) or
    UUIDs ('GPU-...', a unique prefix is enough). As CUDA does, the list ends at the first entry
    that names no device; an empty variable hides every device.
    """
    if cuda_visible_devices is None:
        return list(devices)
    chosen: list[Device] = []
    for token in (part.strip() for part in cuda_visible_devices.split(",")):
        found = _device_for(devices, token)
        if found is None:
            break
        if found not in chosen:
            chosen.append(found)
    return chosen


def _device_for(devices: Sequence[Device], token: str) -> Device | None:
    if token.lstrip("-").isdigit():
        return next((device for device in devices if device.index == int(token)), None)
    if not token:
        return None
    matches = [device for device in devices if device.uuid and device.uuid.startswith(token)]
    return matches[0] if len(matches) == 1 else None


def with_declared(devices: Sequence[Device], declared_gpu_bytes: int | None) -> list[Device]:
    """Devices as admission hands them out: a declared per-device size replaces NVML's total
    (a team may keep part of a card for the display or another job); without NVML a declared
    size is one device that the child is not pointed at."""
    if declared_gpu_bytes is None:
        return list(devices)
    if not devices:
        return [Device(-1, declared_gpu_bytes)]
    return [Device(device.index, declared_gpu_bytes, device.uuid) for device in devices]


def choose_device(
    devices: Sequence[Device], held_bytes: Mapping[int, int], need_bytes: int
) -> Device | None:
    """The device with the most room left that `need_bytes` fits on (ties: lowest index);
    None when none has room. Spreading keeps one device from filling while others idle."""
    best: Device | None = None
    best_room = -1
    for device in devices:
        room = device.total_bytes - held_bytes.get(device.index, 0)
        if room >= need_bytes and room > best_room:
            best, best_room = device, room
    return best


def nvml_devices() -> tuple[list[Device], str]:
    """Every NVIDIA device NVML lists, and a note on where the list came from (or why none)."""
    from ..measure import gpu  # NVML is initialised once per process there

    found = gpu._nvml()
    if isinstance(found, str):
        return [], found
    pynvml, handles = found
    devices = []
    try:
        for index, handle in enumerate(handles):
            total = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            devices.append(
                Device(index, total, uuid.decode() if isinstance(uuid, bytes) else str(uuid))
            )
    except pynvml.NVMLError as error:
        return [], f"NVML failed: {error}"
    return devices, f"NVML, {len(devices)} device(s)"
