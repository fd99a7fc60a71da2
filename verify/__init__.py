"""dlmath's verification layer: hypothesis strategies, independent PyTorch references, comparisons and
reports, and the ``dlmath`` command line.

The names below are imported on first use (PEP 562), so ``import verify`` and the symbolic commands of
the command line (``dlmath list``, ``derive``, ``backprop``, ``hessian``, ``codegen``) do not import
PyTorch or hypothesis. To export a new name, add it to ``_EXPORTS`` (and to the ``TYPE_CHECKING`` block).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from dlmath import _packages

_packages.require()  # one line with the fix if another distribution owns derive, numeric or verify

if TYPE_CHECKING:
    from .check import (
        Mismatch,
        ReferenceFailed,
        Report,
        check,
        compare,
        example,
        reproduce,
        resolve_reference,
    )
    from .evaluate import eager_reference
    from .references import REFERENCES, reference

#: exported name -> the submodule that defines it
_EXPORTS = {
    "check": "check", "Mismatch": "check", "ReferenceFailed": "check", "Report": "check", "compare": "check", "example": "check",
    "reproduce": "check", "resolve_reference": "check", "eager_reference": "evaluate",
    "reference": "references", "REFERENCES": "references",
}

__all__ = ["check", "Mismatch", "ReferenceFailed", "Report", "compare", "example", "reproduce", "resolve_reference", "eager_reference",
           "reference", "REFERENCES"]
assert set(__all__) == set(_EXPORTS)


def _load(module: str) -> types.ModuleType:
    mod = importlib.import_module(f"{__name__}.{module}")
    for name, where in _EXPORTS.items():
        if where == module:
            globals()[name] = getattr(mod, name)
    return mod


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        _load(_EXPORTS[name])
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """``verify.check`` is the function, not the submodule of the same name: importing a submodule binds
    it on its package, so ``import verify.check`` anywhere would otherwise shadow the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            super().__setattr__(name, getattr(value, name))
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
