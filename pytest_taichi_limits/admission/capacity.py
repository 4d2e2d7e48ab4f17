"""What the machine can hold: memory and GPU devices that admission hands out.

Memory capacity is either declared (`--taichi-limits-capacity=mem=20GB`) or read once per
session from the kernel's `MemAvailable` minus a margin. GPU capacity is per device: NVML lists
the devices and their total memory; `gpu=` declares a per-device size (and, without NVML, one
device of that size). A CUDA_VISIBLE_DEVICES set outside pytest limits which devices are used.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
_AMOUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
CAPACITY_KEYS = ("mem", "gpu")
#: Kept free of the memory capacity when it comes from MemAvailable: the pytest processes
#: themselves, the page cache a test's imports need, and whatever else starts meanwhile.
MARGIN_FRACTION = 0.10
MARGIN_MIN_BYTES = 256 * 1024**2


class CapacityError(ValueError):
    """A capacity spec or device list the plugin cannot use; the message says why."""


def human(size: float) -> str:
    """1.5 GB, 512.0 MB: binary units, one decimal (as the rest of the plugin prints sizes)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


@dataclass(frozen=True)
class Declared:
    """What --taichi-limits-capacity said; None where it said nothing about that resource."""

    mem_bytes: int | None = None
    gpu_bytes: int | None = None  # per device


def parse_amount(text: str) -> int:
    """'20GB', '512MB', '1.5 GB', '1048576' (bytes) -> bytes. Raises CapacityError."""
    match = _AMOUNT.match(text)
    unit = match.group(2).lower() if match else ""
    if unit in ("k", "m", "g", "t"):
        unit += "b"
    if match is None or (unit not in _UNITS and unit != ""):
        raise CapacityError(
            f"cannot read the amount {text.strip()!r} (write e.g. 20GB, 512MB, 1.5GB)"
        )
    value = float(match.group(1)) * _UNITS[unit or "b"]
    if not math.isfinite(value) or value <= 0:
        raise CapacityError(f"the amount {text.strip()!r} must be more than 0")
    return int(value)


def parse_capacity(spec: str) -> Declared:
    """'mem=20GB,gpu=80GB' (either part alone too) -> Declared. Raises CapacityError."""
    values: dict[str, int] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        key, sep, amount = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in CAPACITY_KEYS:
            raise CapacityError(
                f"{part.strip()!r} is not KEY=AMOUNT with KEY mem or gpu (e.g. mem=20GB,gpu=80GB)"
            )
        if key in values:
            raise CapacityError(f"{key} is given twice in {spec!r}")
        values[key] = parse_amount(amount)
    if not values:
        raise CapacityError(f"{spec!r} names no capacity (e.g. mem=20GB,gpu=80GB)")
    return Declared(values.get("mem"), values.get("gpu"))


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
    """MemAvailable minus a margin of 10% of MemTotal (at least 256 MB)."""
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
