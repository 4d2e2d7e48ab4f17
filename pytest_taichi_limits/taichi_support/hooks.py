"""The plugin's one wrapper around Taichi's ti.init, installed once per process.

Every process the plugin runs in (pytest, a forked child, the spawn-mode zygote and its workers)
holds at most one wrapper around `taichi.lang.misc.init`, installed when Taichi is imported (or
at once, when it already is). What the wrapper does depends on a per-process slot:
- empty (the pytest process): it tells the listeners where ti.init was called (launch/spawn.py
records
  the call sites) and calls Taichi's own init;
- set (a supervised child, by child.start_child): the context runs the call (taichi_support caps
  device memory and reports the arch on the child's channel).
A forked child and a spawn worker inherit the installed wrapper, so setting the slot is all a
test pays: no search for references to ti.init per test.

References to the original taken before the wrapper existed (a `functools.partial(ti.init)` made
before Taichi was imported by a plugin that loaded first) are caught by a backstop at
`adaptive_arch_select`, which every ti.init calls after its arguments and the environment are
applied; the context hears whether the call came through the wrapper or not.
"""

from __future__ import annotations

import gc
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType, ModuleType
from typing import Any, Protocol

#: Marks the plugin's wrapper (a function attribute), so that it is never wrapped twice.
WRAPPER_MARK = "_taichi_limits_init_wrapper"


class InitContext(Protocol):
    """What a supervised child does with ti.init (taichi_support._Cap)."""

    def run_init(
        self, original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Call `original(*args, **kwargs)`, with whatever the child adds around it."""

    def check_resolved(self, arch: Any, through_wrapper: bool) -> None:
        """Inside ti.init, once Taichi resolved its configuration and chose `arch`, before it
        creates the program; `through_wrapper` is False for a call that bypassed the wrapper."""


#: Called, in a process without a context, with the frame that called ti.init and the call's
#: arguments.
InitListener = Callable[[FrameType, tuple[Any, ...], dict[str, Any]], None]


@dataclass
class _WrapperState:
    """Per process (a forked child inherits a copy: the wrapper stays installed)."""

    requested: bool = False
    original: Callable[..., Any] | None = None
    listeners: list[InitListener] = field(default_factory=list)
    context: InitContext | None = None
    depth: int = 0  # > 0 while a call through the wrapper is inside Taichi's init


_STATE = _WrapperState()


def install_init_wrapper() -> None:
    """Wrap ti.init in this process: now if Taichi is imported, else right after its import.

    Idempotent; a forked child of a process that called it needs nothing more.
    """
    if _STATE.requested:
        return
    _STATE.requested = True
    if "taichi.lang.misc" in sys.modules:
        # Imported before the plugin could watch: any module may hold the original.
        _wrap_taichi_init(search_heap=True)
    else:
        # Right after `import taichi` only Taichi's own modules can hold it.
        when_taichi_imported(lambda: _wrap_taichi_init(search_heap=False))


def init_wrapper_installed() -> bool:
    """Whether ti.init in this process goes through the plugin's wrapper."""
    misc = sys.modules.get("taichi.lang.misc")
    return misc is not None and getattr(misc.init, WRAPPER_MARK, False)


def add_init_listener(listener: InitListener) -> None:
    """Tell `listener` the calling frame and the arguments of every ti.init made while no
    context is set."""
    if listener not in _STATE.listeners:
        _STATE.listeners.append(listener)


def set_init_context(context: InitContext | None) -> None:
    """The supervised child's context (None: back to listening, as in the pytest process)."""
    _STATE.context = context


def when_taichi_imported(callback: Callable[[], None]) -> None:
    """Run `callback` now if Taichi is imported, else right after `import taichi` finishes."""
    if "taichi.lang.misc" in sys.modules:
        callback()
        return
    _PENDING.append(callback)
    # One finder for all callbacks: a second finder would never see the import of `taichi`
    # that the first one answered.
    if not any(isinstance(finder, _AfterTaichiImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterTaichiImport())


_PENDING: list[Callable[[], None]] = []


def replace_everywhere(original: object, replacement: object) -> None:
    """Make every module namespace that holds `original` hold `replacement` instead.

    That covers taichi, taichi.lang, taichi.lang.misc and any module that did
    `from taichi import init`. The garbage collector finds those dictionaries without touching
    every module's objects; it does not see objects hidden by `gc.freeze()`. The scan grows with
    the number of live objects, so it runs once per process, never per test.
    """
    for referrer in gc.get_referrers(original):
        # Module namespaces only: an object's attributes (the wrapper's own __wrapped__, a
        # saved reference to the original) must keep pointing at the original.
        if isinstance(referrer, dict) and "__spec__" in referrer and "__name__" in referrer:
            _replace_in(referrer, original, replacement)


def _replace_in(namespace: dict[str, Any], original: object, replacement: object) -> None:
    for name in [name for name, value in namespace.items() if value is original]:
        namespace[name] = replacement


def _taichi_modules() -> list[ModuleType]:
    return [
        module
        for name, module in list(sys.modules.items())
        if (name == "taichi" or name.startswith("taichi.")) and isinstance(module, ModuleType)
    ]


def _wrap_taichi_init(search_heap: bool) -> None:
    misc = sys.modules["taichi.lang.misc"]
    original = misc.init
    if getattr(original, WRAPPER_MARK, False):
        return  # a forked child: the parent installed it
    wrapper = _make_wrapper(original)
    # Taichi's own modules, by name: independent of the collector, so frozen ones count too.
    for module in _taichi_modules():
        _replace_in(vars(module), original, wrapper)
    if search_heap:
        replace_everywhere(original, wrapper)
    _STATE.original = original
    _install_backstop(misc)


def _make_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    def init(*args: Any, **kwargs: Any) -> Any:
        context = _STATE.context
        if context is None:
            caller = sys._getframe(1)
            for listener in list(_STATE.listeners):
                listener(caller, args, kwargs)
            return original(*args, **kwargs)
        _STATE.depth += 1
        try:
            return context.run_init(original, args, kwargs)
        finally:
            _STATE.depth -= 1

    init.__doc__ = original.__doc__
    init.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(init, WRAPPER_MARK, True)
    return init


def _install_backstop(misc: ModuleType) -> None:
    original_select = misc.adaptive_arch_select

    def adaptive_arch_select(*args: Any, **kwargs: Any) -> Any:
        arch = original_select(*args, **kwargs)
        context = _STATE.context
        if context is not None:
            context.check_resolved(arch, through_wrapper=_STATE.depth > 0)
        return arch

    setattr(misc, "adaptive_arch_select", adaptive_arch_select)  # noqa: B010 - a module global


class _AfterTaichiImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "taichi":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _LoaderThenCall(spec.loader)
        return spec


class _LoaderThenCall(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        callbacks = list(_PENDING)
        _PENDING.clear()
        for callback in callbacks:
            callback()
