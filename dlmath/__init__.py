"""dlmath: the mathematics of deep learning, derived, printed, generated and verified.

One import name for the three packages of the distribution::

    import dlmath

    dlmath.derive    # the symbolic layer (the same module object as ``import derive``)
    dlmath.numeric   # generated NumPy and PyTorch kernels
    dlmath.verify    # verification against PyTorch autograd
    dlmath.__version__

The three are imported on first use, so ``import dlmath`` is quick and ``dlmath.derive`` alone never
imports PyTorch. If another distribution has taken over the top-level name ``derive``, ``numeric`` or
``verify`` (they are common names on the package index), using them raises
:class:`~dlmath._packages.PackageConflict`, one line that names the culprit and the fix;
:func:`conflicts` lists such problems without raising.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _packages
from ._packages import PackageConflict

if TYPE_CHECKING:
    import derive as derive
    import numeric as numeric
    import verify as verify

__version__ = "0.1.0"

__all__ = ["derive", "numeric", "verify", "__version__", "conflicts", "PackageConflict"]


def conflicts() -> list[str]:
    """One line per top-level package (``derive``, ``numeric``, ``verify``) that is not dlmath's own,
    with its fix; empty when the installation is sound."""
    return list(_packages.problems())


def __getattr__(name: str) -> Any:
    if name in _packages.PACKAGES:
        _packages.require()
        module = importlib.import_module(name)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'dlmath' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
