"""Reaching Taichi's ti.init without importing Taichi early: after-import callbacks, swaps.

Both the pytest process (which records where ti.init is called) and the supervised child (which
caps every ti.init) wrap `taichi.lang.misc.init`; this module is what they share.
"""

from __future__ import annotations

import gc
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from typing import Any


def when_taichi_imported(callback: Callable[[], None]) -> None:
    """Run `callback` now if Taichi is imported, else right after `import taichi` finishes."""
    if "taichi.lang.misc" in sys.modules:
        callback()
    else:
        sys.meta_path.insert(0, _AfterTaichiImport(callback))


def replace_everywhere(original: object, replacement: object) -> None:
    """Make every module namespace that holds `original` hold `replacement` instead.

    That covers taichi, taichi.lang, taichi.lang.misc and any module that did
    `from taichi import init`. The garbage collector finds those dictionaries without touching
    every module's objects, which in a forked child would copy thousands of pages.
    """
    for referrer in gc.get_referrers(original):
        # Module namespaces only: an object's attributes (the wrapper's own __wrapped__, a
        # saved reference to the original) must keep pointing at the original.
        if isinstance(referrer, dict) and "__spec__" in referrer and "__name__" in referrer:
            for name in [name for name, value in referrer.items() if value is original]:
                referrer[name] = replacement


class _AfterTaichiImport(importlib.abc.MetaPathFinder):
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "taichi":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _LoaderThenCall(spec.loader, self.callback)
        return spec


class _LoaderThenCall(importlib.abc.Loader):
    def __init__(self, loader: Any, callback: Callable[[], None]) -> None:
        self.loader = loader
        self.callback = callback

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        self.callback()
