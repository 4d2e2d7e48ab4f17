"""Which Taichi objects this process can still reach: what a `ti.reset()` here would destroy.

The pytest process resets Taichi before it forks a supervised test (taichi_support/reinit.py),
and replays the last `ti.init` for whatever uses Taichi here afterwards. The replay gives back a
program, never the objects of the old one: a field, ndarray, texture or sparse matrix made before
the reset (at import, by a fixture, by a test) is dead after it, and a test that uses one aborts
the process. So the objects are noted as they are made, each by a weak reference (one that no
code can reach any more does not count), by wrapping the constructors of their base classes as
soon as Taichi is imported.
"""

from __future__ import annotations

import gc
import sys
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .hooks import when_taichi_imported
from .reinit import taichi_initialised

#: (module, base class, what a user calls it): Taichi objects that live in a program's memory.
_KINDS = (
    ("taichi.lang.field", "Field", "field"),
    ("taichi.lang._ndarray", "Ndarray", "ndarray"),
    ("taichi.lang._texture", "Texture", "texture"),
    ("taichi.linalg.sparse_matrix", "SparseMatrix", "sparse matrix"),
    ("taichi.linalg.sparse_matrix", "SparseMatrixBuilder", "sparse matrix builder"),
)

#: Marks the wrapped constructors, so that none is wrapped twice.
_MARK = "_taichi_limits_held"

#: Told the frame that made each new object (launch/startplan.py notes import-time ones).
ObjectListener = Callable[[types.FrameType], None]
#: Told each new object, what a user calls its kind, and the frame whose call made it
#: (taichi_support/census.py: leak hunting's count of objects per call site).
MadeListener = Callable[[Any, str, types.FrameType], None]


@dataclass
class HeldObjects:
    """The Taichi objects made in this process that are still alive, by kind."""

    on_new: ObjectListener | None = None
    on_made: MadeListener | None = None
    _live: dict[str, weakref.WeakSet[Any]] = field(default_factory=dict)
    _installed: bool = False

    def install(self) -> None:
        """Note every object made from now on (at once if Taichi is imported, else right after
        its import); idempotent."""
        if not self._installed:
            self._installed = True
            when_taichi_imported(self._wrap)

    def describe(self) -> str | None:
        """'Taichi fields, ndarrays' while any object of those kinds is alive here, else None."""
        if not self._kinds():
            return None
        # An ndarray a test read from is often kept only by a reference cycle: garbage, not
        # held. A collection costs milliseconds; the fresh interpreter it can spare, far more.
        gc.collect()
        kinds = self._kinds()
        return "Taichi " + ", ".join(kind + "s" for kind in kinds) if kinds else None

    def _kinds(self) -> list[str]:
        return [kind for kind, live in self._live.items() if len(live)]

    def live(self) -> dict[str, list[Any]]:
        """The objects alive now, by kind (every kind this Taichi has, alive or not)."""
        return {kind: list(objects) for kind, objects in self._live.items()}

    def _wrap(self) -> None:
        classes = []
        for module_name, class_name, kind in _KINDS:
            cls = getattr(sys.modules.get(module_name), class_name, None)
            if not isinstance(cls, type):
                continue  # a Taichi without it
            classes.append((cls, kind))
            live = self._live.setdefault(kind, weakref.WeakSet())
            original = cls.__dict__.get("__init__")
            if original is None:
                continue  # its constructor is a parent's: not what this Taichi looks like
            if getattr(original, _MARK, False):  # another session's (pytester in-process)
                original = original.__wrapped__
            cls.__init__ = _noting(original, live, self, kind)  # type: ignore[misc]
        if taichi_initialised():
            # Taichi was imported and initialised before the plugin could watch (a plugin that
            # loaded first): the objects made meanwhile are found once, on the heap.
            for obj in gc.get_objects():
                for cls, kind in classes:
                    if isinstance(obj, cls):
                        self._live[kind].add(obj)


def _noting(
    original: Callable[..., None], live: weakref.WeakSet[Any], held: HeldObjects, kind: str
) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        live.add(self)
        if held.on_new is not None:
            held.on_new(sys._getframe(1))
        if held.on_made is not None:
            held.on_made(self, kind, sys._getframe(1))

    __init__.__doc__ = original.__doc__
    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(__init__, _MARK, True)
    return __init__
