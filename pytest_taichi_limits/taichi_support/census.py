"""Taichi's own counts in a child that hunts leaks, and where each object was made.

After each round of a test run in rounds (child/rounds.py) the child tells the parent what Taichi
holds now, as far as Taichi 1.7.4 lets Python see it (read at tag v1.7.4):

- `fields`, `ndarrays`, `textures`, `sparse_matrices`: the objects of those kinds alive now, as
  the wrapped constructors noted them (taichi_support/held.py). A field's gradient and dual
  fields (made with it for a real dtype) are not counted apart: one `ti.field` is one field;
- `snode_trees`: `Program.get_snode_tree_size()`, the SNode trees the program holds. A field made
  after a kernel ran starts a new tree that is never freed before `ti.reset()`; a tree destroyed
  through `FieldsBuilder` leaves a slot the next tree reuses, so the count grows only with trees
  that are made and kept;
- `taichi_bytes`: the bytes of those trees' root cells (their dense storage) plus the data of the
  ndarrays alive now. Taichi's memory pool (the CPU backend's host pool, CUDA's preallocated
  device pool) is not exposed to Python in 1.7.4: its only report, `print_memory_profiler_info`,
  prints to the process's stdout and sets the process's C++ locale, so it is never called. On a
  GPU with a preallocated pool, NVML sees the pool, not what is used inside it: this figure does.

And per call site (the first frame outside Taichi and this plugin: "field at tests/test_sim.py:42
in step"): how many objects made there during the rounds are alive now, and how many ndarrays
were made there in the round that just ended (Taichi 1.7.4 frees a scalar ndarray's memory when
Python collects it, never a vector or matrix ndarray's: taichi-dev/taichi#8763).
"""

from __future__ import annotations

import collections
import os
import sys
import types
import weakref
from dataclasses import dataclass, field
from typing import Any

from ..ipc.protocol import MOST_SITES
from .held import HeldObjects

#: Sites followed per child at most: beyond that, objects are still counted, not placed.
_MOST_FOLLOWED = 100_000

#: What the census calls each constructor's kind in its counts (held.py's kinds).
_COUNT_NAMES = {
    "field": "fields",
    "ndarray": "ndarrays",
    "texture": "textures",
    "sparse matrix": "sparse_matrices",
}

#: Ndarray classes by what a user calls them; any other ndarray is "ndarray".
_NDARRAY_KINDS = {"VectorNdarray": "vector ndarray", "MatrixNdarray": "matrix ndarray"}


@dataclass(frozen=True)
class Site:
    """Where a Taichi object was made: the user's call."""

    kind: str  # "field", "ndarray", "vector ndarray", ...
    filename: str
    lineno: int
    function: str

    def label(self, rootpath: str | None) -> str:
        shown = self.filename
        if rootpath is not None and os.path.isabs(self.filename):
            relative = os.path.relpath(self.filename, rootpath)
            if not relative.startswith(".."):
                shown = relative
        return f"{self.kind} at {shown}:{self.lineno} in {self.function}"


@dataclass
class TaichiCensus:
    """Counts Taichi's objects in one child, round by round. `install` once, before the first
    round; `take` after each round, once the garbage is collected."""

    rootpath: str | None = None
    held: HeldObjects = field(default_factory=HeldObjects)
    _followed: list[tuple[weakref.ref[Any], Site]] = field(default_factory=list)
    _made: collections.Counter[Site] = field(default_factory=collections.Counter)
    _skip: tuple[str, ...] = ()

    def install(self) -> None:
        """Note every Taichi object made from now on in this process (at once if Taichi is
        imported, else right after its import). The wrapped constructors are this census's from
        now on: in a child, nothing else needs them."""
        if self.held.on_made is None:
            self.held.on_made = self._note
            self.held.install()

    def _note(self, obj: Any, kind: str, caller: types.FrameType) -> None:
        if len(self._skip) < 2:  # once Taichi is imported, both are known
            self._skip = _package_dirs()
        site = _site(_kind_of(obj, kind), caller, self._skip)
        if site.kind.endswith("ndarray"):
            self._made[site] += 1
        if len(self._followed) < _MOST_FOLLOWED:
            self._followed.append((weakref.ref(obj), site))

    def take(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """(counts, sites, made) now, and a new round begins: counts per TAICHI_COUNTS name,
        objects made in the rounds and alive now per site label, ndarrays made in this round
        per site label. Call it after gc.collect()."""
        live = self.held.live()
        derived = _derived(live)
        counts = {
            _COUNT_NAMES[kind]: sum(1 for obj in objects if id(obj) not in derived)
            for kind, objects in live.items()
            if kind in _COUNT_NAMES
        }
        counts.update(_program_counts(live.get("ndarray", [])))
        alive: collections.Counter[str] = collections.Counter()
        kept = []
        for ref, site in self._followed:
            obj = ref()
            if obj is not None:
                kept.append((ref, site))
                if id(obj) not in derived:
                    alive[site.label(self.rootpath)] += 1
        self._followed = kept
        made = {site.label(self.rootpath): number for site, number in self._made.items()}
        self._made.clear()
        return counts, _most(alive), _most(collections.Counter(made))


def _most(counter: collections.Counter[str]) -> dict[str, int]:
    return dict(counter.most_common(MOST_SITES))


def _kind_of(obj: Any, kind: str) -> str:
    if kind == "ndarray":
        return _NDARRAY_KINDS.get(type(obj).__name__, "ndarray")
    return kind


def _derived(live: dict[str, list[Any]]) -> set[int]:
    """Ids of the gradient and dual fields (and ndarrays) made along with another object."""
    derived: set[int] = set()
    for objects in live.values():
        for obj in objects:
            for name in ("grad", "dual"):
                other = getattr(obj, name, None)
                if other is not None:
                    derived.add(id(other))
    return derived


def _program_counts(ndarrays: list[Any]) -> dict[str, int]:
    """SNode trees and the bytes of Taichi's storage, where a program exists (never starting
    one: `impl.get_runtime().prog` would replay the pytest process's ti.init)."""
    from . import reinit

    if not reinit.taichi_initialised():
        return {}
    try:
        from taichi.lang import impl

        prog = impl.get_runtime().__dict__.get("prog")  # never the lazy replay's property
        if prog is None:
            return {}
        trees = int(prog.get_snode_tree_size())
        tree_bytes = sum(int(prog.get_snode_root(i).cell_size_bytes) for i in range(trees))
        array_bytes = sum(_ndarray_bytes(array) for array in ndarrays)
    except Exception:  # noqa: BLE001 - a Taichi without these calls: counts without them
        return {}
    return {"snode_trees": trees, "taichi_bytes": tree_bytes + array_bytes}


def _ndarray_bytes(array: Any) -> int:
    data = getattr(array, "arr", None)
    try:
        return int(data.nelement()) * int(data.element_size())  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - an ndarray of another program, or half made
        return 0


def _package_dirs() -> tuple[str, ...]:
    """Taichi's and this plugin's directories: their frames are never the user's call."""
    names = ("taichi", (__package__ or "pytest_taichi_limits").partition(".")[0])
    dirs = []
    for name in names:
        path = getattr(sys.modules.get(name), "__file__", None)
        if path:
            dirs.append(os.path.dirname(path) + os.sep)
    return tuple(dirs)


def _site(kind: str, caller: types.FrameType, skip: tuple[str, ...]) -> Site:
    """The first frame outside Taichi and this plugin (the whole stack is Taichi's: "?")."""
    frame: types.FrameType | None = caller
    while frame is not None:
        code = frame.f_code
        if not code.co_filename.startswith(skip) and not code.co_filename.startswith("<"):
            return Site(kind, code.co_filename, frame.f_lineno, code.co_name)
        frame = frame.f_back
    return Site(kind, "?", 0, "?")
