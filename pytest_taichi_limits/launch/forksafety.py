"""Whether this process initialised CUDA through a library other than Taichi.

A process that has initialised the CUDA driver cannot fork a child that uses CUDA: the child
fails with "Cannot re-initialize CUDA in forked subprocess" (PyTorch) or
CUDA_ERROR_NOT_INITIALIZED / a hang (the driver itself). A supervised test must then start in a
fresh interpreter (spawn mode), exactly as when Taichi is initialised in the pytest process.

Only libraries that are already imported are asked, through their own cheap state queries:
nothing here imports a library or initialises CUDA. (CuPy is not asked: it has no query that does
not itself initialise CUDA.)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def _torch(module: Any) -> bool:
    return bool(module.cuda.is_initialized())


def _numba(module: Any) -> bool:
    return bool(module.cuda.cudadrv.driver.driver.is_initialized)


def _pycuda(module: Any) -> bool:
    # Without cuInit this raises (caught by the caller); it never initialises anything.
    return module.Context.get_current() is not None


def _jax(module: Any) -> bool:
    backends = getattr(module, "_backends", None) or {}
    return any(name in ("cuda", "gpu", "rocm") for name in backends)


#: (module that must already be imported, what to call it in the message, the query).
CHECKS: tuple[tuple[str, str, Callable[[Any], bool]], ...] = (
    ("torch", "PyTorch (torch.cuda.is_initialized())", _torch),
    ("numba.cuda.cudadrv.driver", "Numba (numba.cuda)", _numba),
    ("pycuda.driver", "PyCUDA", _pycuda),
    ("jax._src.xla_bridge", "JAX (a GPU backend)", _jax),
)


def cuda_initialised_here(modules: dict[str, Any] | None = None) -> str | None:
    """Why a forked child could not use CUDA (which library initialised it here), or None.

    `modules` is sys.modules unless a test passes fakes. A library whose query fails is
    skipped: a wrong "yes" would only cost speed, a crash here would cost the run.
    """
    loaded = sys.modules if modules is None else modules
    for name, label, query in CHECKS:
        module = loaded.get(name)
        if module is None:
            continue
        if name == "numba.cuda.cudadrv.driver":
            module = loaded.get("numba")
            if module is None:
                continue
        try:
            initialised = query(module)
        except Exception:  # noqa: BLE001 - a library version we do not know: no verdict
            continue
        if initialised:
            return (
                f"{label} initialised CUDA in the pytest process, and a forked child "
                "cannot use CUDA after that"
            )
    return None
