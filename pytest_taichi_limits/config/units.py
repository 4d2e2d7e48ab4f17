"""Units: the one way a byte count or a duration is read from text and written for a person.

Every option that takes an amount reads it here, so `--taichi-limits-capacity=mem=20GiB` and
`--taichi-limits-tolerance=mem=10%+8M` accept the same units, and every error lists them. Byte
units are binary whichever way they are written (KB, KiB and K all mean 2**10 bytes), as the
budget keys `mem_mb` (MiB) and `gpu_gb` (GiB) count.
"""

from __future__ import annotations

import math
import re

#: Bytes per MiB and per GiB: binary units everywhere a person reads memory.
MIB = 1024 * 1024
GIB = 1024**3

#: Byte units, lower case: the binary name, the decimal-looking name and the one-letter form.
BYTE_UNITS: dict[str, int] = {
    "b": 1,
    **{
        f"{letter}{suffix}": 1024**power
        for power, letter in enumerate("kmgt", start=1)
        for suffix in ("", "b", "ib")
    },
}
#: How the byte units are listed in messages and help texts.
BYTE_UNITS_TEXT = "B, KiB, MiB, GiB, TiB (binary: KB, MB, GB, TB and K, M, G, T mean the same)"
#: Duration units, lower case.
SECOND_UNITS: dict[str, float] = {"s": 1.0, "ms": 0.001}
SECOND_UNITS_TEXT = "s, ms"
#: A byte amount above this is no machine's (2**63 bytes: 8 EiB), so it is a typo.
LARGEST_BYTES = 2**63

_AMOUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z%]*)\s*$")


class UnitError(ValueError):
    """An amount that cannot be read; the message says why and what is accepted (the caller
    names the text and where it came from)."""


def split_amount(text: str) -> tuple[float, str]:
    """'1.5 GiB' -> (1.5, 'GiB'); '10%' -> (10.0, '%'). Raises UnitError."""
    match = _AMOUNT.match(text)
    if match is None:
        raise UnitError("it is not a number followed by a unit")
    return float(match.group(1)), match.group(2)


def parse_bytes(text: str) -> int:
    """'20GiB', '512M', '1.5 GB' -> bytes; a unit is required (a bare '100' could mean bytes,
    MiB or GiB). Raises UnitError saying which units are accepted."""
    number, unit = split_amount(text)
    if not unit:
        raise UnitError(f"it has no unit: write e.g. 512MiB or 20GiB (units: {BYTE_UNITS_TEXT})")
    size = BYTE_UNITS.get(unit.lower())
    if size is None:
        raise UnitError(f"unit {unit!r} is not one of {BYTE_UNITS_TEXT}")
    value = number * size
    if not math.isfinite(value) or value >= LARGEST_BYTES:
        raise UnitError("it is more bytes than any machine has")
    return int(value)


def parse_seconds(text: str, bare: bool = True) -> float:
    """'0.5', '0.5s', '500ms' -> seconds. `bare`: a number without a unit means seconds.
    Raises UnitError saying which units are accepted."""
    number, unit = split_amount(text)
    scale = 1.0 if not unit and bare else SECOND_UNITS.get(unit.lower())
    if scale is None:
        shown = f"unit {unit!r} is" if unit else "no unit is"
        raise UnitError(f"{shown} not one of {SECOND_UNITS_TEXT}")
    value = number * scale
    if not math.isfinite(value):
        raise UnitError("it is not a finite duration")
    return value


def human_bytes(size: float) -> str:
    """Binary units, said so, with one decimal: 512.0 MiB, 1.5 GiB."""
    sign = "-" if size < 0 else ""
    size = abs(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{sign}{size:.0f} {unit}" if unit == "B" else f"{sign}{size:.1f} {unit}"
        size /= 1024
    return f"{sign}{size:.1f} GiB"


def counted(number: int, noun: str) -> str:
    """A count and its noun, plural unless it is one: "1 test", "2 tests", "0 rounds"."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def spec_bytes(size: float) -> str:
    """A byte amount as it is written in a spec: in the largest binary unit it is a whole
    multiple of (16MiB; 1.5 GiB is 1536MiB), else in bytes. `parse_bytes` reads it back."""
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size / scale:g}{unit}"
    return f"{size:g}B"


def spec_seconds(seconds: float) -> str:
    """A duration as it is written in a spec: 0.5s."""
    return f"{seconds:g}s"
