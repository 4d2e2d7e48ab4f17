"""`--taichi-limits-capacity`: what admission may hand out, as the user declared it.

`mem=20GiB,gpu=80GiB` (either part alone too): `mem` for the machine, `gpu` per device. Amounts
are read by config/units.py, like every other option's, and need a unit. admission/capacity.py
measures what is not declared.
"""

from __future__ import annotations

from dataclasses import dataclass

from .units import UnitError, parse_bytes

CAPACITY_KEYS = ("mem", "gpu")
_EXAMPLE = "mem=20GiB,gpu=80GiB"


class CapacityError(ValueError):
    """A capacity spec or device list the plugin cannot use; the message says why."""


@dataclass(frozen=True)
class Declared:
    """What --taichi-limits-capacity said; None where it said nothing about that resource."""

    mem_bytes: int | None = None
    gpu_bytes: int | None = None  # per device


def parse_amount(text: str) -> int:
    """'20GiB', '512M', '1.5 GB' -> bytes, at least one. Raises CapacityError."""
    try:
        value = parse_bytes(text)
    except UnitError as error:
        raise CapacityError(f"cannot read the amount {text.strip()!r}: {error}") from None
    if value < 1:
        raise CapacityError(f"the amount {text.strip()!r} must be at least one byte")
    return value


def parse_capacity(spec: str) -> Declared:
    """'mem=20GiB,gpu=80GiB' (either part alone too) -> Declared. Raises CapacityError."""
    values: dict[str, int] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        key, sep, amount = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in CAPACITY_KEYS:
            raise CapacityError(
                f"{part.strip()!r} is not KEY=AMOUNT with KEY mem or gpu (e.g. {_EXAMPLE})"
            )
        if key in values:
            raise CapacityError(f"{key} is given twice in {spec!r}")
        values[key] = parse_amount(amount)
    if not values:
        raise CapacityError(f"{spec!r} names no capacity (e.g. {_EXAMPLE})")
    return Declared(values.get("mem"), values.get("gpu"))
