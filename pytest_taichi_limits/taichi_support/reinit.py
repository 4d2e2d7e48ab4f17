"""Make a process fork-safe after `ti.init`, and give its tests back the init they relied on.

Measured with Taichi 1.7.4: a child forked from a process that called `ti.init` hangs at its
first kernel launch, while after `ti.reset()` a forked child's own `ti.init` and kernels work.
Taichi 1.7.4 never initialises implicitly: after a reset, `ti.field` raises "forgot to call
ti.init()". A suite whose conftest calls `ti.init` in `pytest_configure` relies on that init in
every test, so the pytest process resets Taichi before it forks and each child *replays* the
last init, lazily: on the first use of the program (`PyTaichi.prog`, which every field, ndarray
and kernel launch reads), never for a test that calls `ti.init` itself.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any


@dataclass
class InitCall:
    """The arguments of one `ti.init` call, as made (replayed through today's `ti.init`)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


class _Replay:
    """The one pending replay of this process (None: nothing to replay)."""

    call: InitCall | None = None
    running = False


def taichi_initialised() -> bool:
    """Whether Taichi holds a program in this process, which a forked child would hang on."""
    impl = sys.modules.get("taichi.lang.impl")
    if impl is None:
        return False
    try:
        return impl.get_runtime().__dict__.get("prog") is not None
    except Exception:  # noqa: BLE001 - a Taichi we cannot read is treated as initialised
        return True


def reset_for_fork(last_init: InitCall | None) -> None:
    """`ti.reset()` here, and replay `last_init` on the next use of Taichi in this process
    (a plain test run by pytest itself) or in a child forked from it."""
    if not taichi_initialised():
        if last_init is not None and "taichi.lang.impl" in sys.modules:
            arm(last_init)
        return
    import taichi

    taichi.reset()
    if last_init is not None:
        arm(last_init)


def arm(call: InitCall) -> None:
    """Replay `call` on the first read of the Taichi program in this process."""
    impl = sys.modules["taichi.lang.impl"]
    runtime = impl.get_runtime()
    _Replay.call = call
    if not isinstance(runtime, _lazy_class(type(runtime))):
        runtime.__class__ = _lazy_class(type(runtime))


def cancel() -> None:
    """A `ti.init` of the test's own: nothing to replay any more."""
    _Replay.call = None


_LAZY_CLASSES: dict[type, type] = {}


def _lazy_class(base: type) -> type:
    if base in _LAZY_CLASSES.values():
        return base
    if base not in _LAZY_CLASSES:
        _LAZY_CLASSES[base] = type(
            "LazyInitRuntime", (base,), {"prog": property(_get_prog, _set_prog)}
        )
    return _LAZY_CLASSES[base]


def _get_prog(runtime: Any) -> Any:
    prog = runtime.__dict__.get("prog")
    call = _Replay.call
    if prog is None and call is not None and not _Replay.running:
        if _only_asking(sys._getframe(1)):
            return None  # stays armed for a real use
        _Replay.call = None
        if _inside_ti_init():
            return None  # ti.init itself asks while it resets: its own init wins
        _Replay.running = True
        try:
            import taichi

            taichi.init(*call.args, **call.kwargs)  # replaces this runtime object
        finally:
            _Replay.running = False
        from taichi.lang import impl

        return impl.get_runtime().__dict__.get("prog")
    return prog


def _only_asking(caller: Any) -> bool:
    """A read that must not start a program: a Taichi object's `__del__` asks whether one exists
    to free itself in (one made before the reset is gone with its program), and at interpreter
    exit nothing may start at all."""
    return sys.is_finalizing() or caller.f_code.co_name == "__del__"


def _inside_ti_init() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "init" and code.co_filename.endswith("taichi/lang/misc.py"):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _set_prog(runtime: Any, value: Any) -> None:
    runtime.__dict__["prog"] = value
