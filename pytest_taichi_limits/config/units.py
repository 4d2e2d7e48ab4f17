"""Units: bytes per MiB and GiB (the units of the budget keys mem_mb and gpu_gb), and the one
way a byte count is written for a person."""

from __future__ import annotations

#: Bytes per MiB and per GiB: binary units everywhere a person reads memory.
MIB = 1024 * 1024
GIB = 1024**3


def human_bytes(size: float) -> str:
    """Binary units, said so, with one decimal: 512.0 MiB, 1.5 GiB."""
    sign = "-" if size < 0 else ""
    size = abs(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{sign}{size:.0f} {unit}" if unit == "B" else f"{sign}{size:.1f} {unit}"
        size /= 1024
    return f"{sign}{size:.1f} GiB"
