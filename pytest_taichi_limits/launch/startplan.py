"""Which test modules need a fresh interpreter, and why: decided per module, after collection.

Measured with Taichi 1.7.4: a child forked from a process that called `ti.init` hangs at its
first kernel launch; after `ti.reset()` a forked child works. So the pytest process resets
Taichi before it forks (taichi_support/reinit.py) and replays the last init lazily in each child.
That is safe for every module except one whose import (or a conftest's) left Taichi state behind: it
called `ti.init` while being imported, or created fields and ndarrays then (a reset destroys
them). Those modules run in a fresh interpreter (launch/spawn.py), where importing them again
rebuilds their state; all others keep the fast fork path.

The recorder wraps `ti.init` and the constructors of Taichi's fields, ndarrays, textures and
sparse matrices (taichi_support/held.py) in the pytest process as soon as Taichi is imported, and
notes for each call the module-level code on the stack: the modules being imported at that
moment.
"""

from __future__ import annotations

import functools
import os
import sys
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..taichi_support.held import HeldObjects
from ..taichi_support.hooks import add_init_listener, install_init_wrapper
from ..taichi_support.reinit import InitCall

_MODULE_CODE = "<module>"


@dataclass(frozen=True)
class InitSite:
    """Where a `ti.init` (or a Taichi object) was made in the pytest process."""

    filename: str
    lineno: int
    function: str

    def describe(self, rootpath: os.PathLike[str] | str | None = None) -> str:
        shown = self.filename
        if rootpath is not None:
            try:
                shown = os.path.relpath(self.filename, rootpath)
            except ValueError:
                pass
            if shown.startswith(".." + os.sep):
                shown = self.filename
        where = "module level" if self.function == _MODULE_CODE else f"in {self.function}"
        return f"{shown}:{self.lineno} ({where})"


@dataclass(frozen=True)
class TaichiEvent:
    """One ti.init, or one Taichi object made, in the pytest process."""

    kind: str  # "init" or "object"
    site: InitSite
    importing: tuple[str, ...]  # files whose module-level code was running, outermost first


@dataclass
class InitRecorder:
    """Notes every ti.init and Taichi object made in the pytest process, and where."""

    events: list[TaichiEvent] = field(default_factory=list)
    last_init: InitCall | None = None
    held: HeldObjects = field(default_factory=HeldObjects)  # the Taichi objects alive here
    recording: bool = True  # until collection ends: later calls are the tests' own business
    _installed: bool = False

    def install(self) -> None:
        if not self._installed:
            self._installed = True
            install_init_wrapper()  # the one wrapper of this process (taichi_hooks)
            add_init_listener(self._on_init)
            self.held.on_new = self._note_object
            self.held.install()

    @property
    def init_sites(self) -> list[InitSite]:
        return [event.site for event in self.events if event.kind == "init"]

    def _on_init(
        self, caller: types.FrameType, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if self.recording:
            self.events.append(TaichiEvent("init", *_caller(caller, _package_dirs())))
        self.last_init = InitCall(args, dict(kwargs))

    def _note_object(self, caller: types.FrameType) -> None:
        if self.recording:
            self.events.append(TaichiEvent("object", *_caller(caller, _package_dirs())))


def _package_dirs() -> tuple[str, ...]:
    # The plugin's own top package (this module lives in a subpackage of it).
    names = ("taichi", (__package__ or "pytest_taichi_limits").partition(".")[0])
    return tuple(
        os.path.dirname(getattr(sys.modules.get(name), "__file__", None) or "/nonexistent") + os.sep
        for name in names
    )


def _caller(start: types.FrameType, skip: tuple[str, ...]) -> tuple[InitSite, tuple[str, ...]]:
    """The call site the user should look at, and the modules being imported around it.

    The site is the innermost module-level line (`app/main.py:145`, where the module calls a
    helper that calls ti.init), or the first frame outside Taichi and this plugin when no module
    is being imported (a conftest's pytest_configure).
    """
    frame: types.FrameType | None = start
    first_outside: InitSite | None = None
    module_site: InitSite | None = None
    importing: list[str] = []
    installed = _installed_dirs()
    while frame is not None:
        code = frame.f_code
        if not code.co_filename.startswith(skip):
            here = InitSite(code.co_filename, frame.f_lineno, code.co_name)
            first_outside = first_outside or here
            # Module-level code being imported; not `python -m pytest`'s own __main__, nor
            # pytest's and pluggy's frames around a conftest's hook.
            if (
                code.co_name == _MODULE_CODE
                and not code.co_filename.startswith("<")
                and frame.f_globals.get("__name__") != "__main__"
                and not code.co_filename.startswith(installed)
            ):
                module_site = module_site or here
                importing.append(code.co_filename)
        frame = frame.f_back
    site = module_site or first_outside or InitSite("<unknown>", 0, "?")
    return site, tuple(reversed(importing))


# -- the decision ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleStart:
    """How the supervised tests of one module start."""

    fresh: bool  # True: a fresh interpreter (per-module worker); False: forked
    reason: str  # why a fresh interpreter is needed ("" when forked)


def plan_modules(
    modules: dict[str, types.ModuleType | None],
    events: Iterable[TaichiEvent],
    conftest_files: Iterable[str],
    rootpath: str,
) -> dict[str, ModuleStart]:
    """Per test module file: fresh interpreter or fork, with the reason (file:line)."""
    events = list(events)
    conftests = {os.path.abspath(path) for path in conftest_files}
    stateful_dirs: dict[str, TaichiEvent] = {}  # conftest dirs whose import made Taichi objects
    by_file: dict[str, TaichiEvent] = {}  # first event under each file's import
    for event in events:
        for path in event.importing:
            path = os.path.abspath(path)
            by_file.setdefault(path, event)
            if path in conftests and event.kind == "object":
                stateful_dirs.setdefault(os.path.dirname(path), event)
    tainted_names = _module_names(by_file, conftests)
    plans: dict[str, ModuleStart] = {}
    for path, module in modules.items():
        path = os.path.abspath(path)
        plans[path] = _decide(path, module, by_file, stateful_dirs, tainted_names, rootpath)
    return plans


def _decide(
    path: str,
    module: types.ModuleType | None,
    by_file: dict[str, TaichiEvent],
    stateful_dirs: dict[str, TaichiEvent],
    tainted_names: dict[str, TaichiEvent],
    rootpath: str,
) -> ModuleStart:
    event = by_file.get(path)
    if event is not None:
        return ModuleStart(True, _what(event, rootpath) + " while it was imported")
    for directory, conftest_event in stateful_dirs.items():
        if path.startswith(directory + os.sep):
            return ModuleStart(
                True, _what(conftest_event, rootpath) + " while a conftest.py above it was imported"
            )
    used = _uses_taichi_state(module, tainted_names)
    if used is not None:
        name, event = used
        return ModuleStart(
            True,
            f"it uses {name}, made with Taichi state at import (" + _what(event, rootpath) + ")",
        )
    return ModuleStart(False, "")


def _what(event: TaichiEvent, rootpath: str) -> str:
    made = "ti.init" if event.kind == "init" else "a Taichi field or ndarray"
    return f"{made} at {event.site.describe(rootpath)}"


def _module_names(by_file: dict[str, TaichiEvent], conftests: set[str]) -> dict[str, TaichiEvent]:
    """Names of the (non-conftest) modules whose import made Taichi state."""
    names: dict[str, TaichiEvent] = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and os.path.abspath(path) in by_file and os.path.abspath(path) not in conftests:
            names[name] = by_file[os.path.abspath(path)]
    return names


def _uses_taichi_state(
    module: types.ModuleType | None, tainted: dict[str, TaichiEvent]
) -> tuple[str, TaichiEvent] | None:
    """A name in `module` that holds a module (or an object of one) whose import made Taichi
    state, e.g. `from app.backend import solver` after another test module imported it."""
    if module is None or not tainted:
        return None
    for name, value in list(vars(module).items()):
        owner = (
            value.__name__
            if isinstance(value, types.ModuleType)
            else getattr(value, "__module__", None)
        )
        if isinstance(owner, str) and owner in tainted:
            return name, tainted[owner]
    return None


@functools.cache
def _installed_dirs() -> tuple[str, ...]:
    """Where the stdlib and installed packages live (a venv inside the project included)."""
    import site
    import sysconfig

    dirs = [sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    dirs += getattr(site, "getsitepackages", list)()  # Debian's dist-packages, for one
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return tuple({os.path.abspath(path) + os.sep for path in dirs})


#: Inherited by every worker, never imported again: the code that runs the worker itself (a
#: second copy of pytest or this plugin would not know the first one's classes) and Taichi,
#: wherever they are installed from.
_ALWAYS_INHERITED = ("pytest", "_pytest", "pluggy", "taichi", __name__.partition(".")[0])


def third_party_modules() -> list[str]:
    """Modules imported here from outside the project (the stdlib and installed packages),
    for the spawn-mode zygote to import once: a worker then imports only the test module."""
    outside = _installed_dirs()
    names = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path or name == "__main__" or _always_inherited(name):
            continue
        # A virtual environment inside the project is still installed code.
        if os.path.abspath(path).startswith(outside):
            names.append(name)
    return names


def project_modules(modules: Mapping[str, object] | None = None) -> list[str]:
    """Names in sys.modules of the project's own modules: every one a fresh interpreter would
    import anew, which is all but the standard library, installed packages, Taichi, pytest and
    this plugin. A reimport worker forgets them before its session collects the tests, so that
    each runs its module-level code there once, as in a fresh process: the modules that made
    Taichi state (a reset here destroyed it), the test modules and conftests that use it, and
    the helpers between them (a counter a helper increments at import is 1 there, never 2).
    `modules` is sys.modules unless a test passes fakes."""
    installed = _installed_dirs()
    names = []
    for name, module in list((sys.modules if modules is None else modules).items()):
        if name == "__main__" or _always_inherited(name):
            continue
        path = _where(module)
        if path is not None and not path.startswith(installed):
            names.append(name)
    return names


def _always_inherited(name: str) -> bool:
    return name.partition(".")[0] in _ALWAYS_INHERITED


def _where(module: object) -> str | None:
    """The file a module was loaded from (a namespace package: its first directory)."""
    path = getattr(module, "__file__", None)
    if not isinstance(path, str):
        try:
            path = next(iter(getattr(module, "__path__", None) or ()), None)
        except TypeError:
            path = None
    if not isinstance(path, str) or path.startswith("<"):
        return None  # built in, frozen, or made in memory
    return os.path.abspath(path)
