"""dlmath's symbolic layer: tensor symbols over symbolic dimensions, the primitive table, models as
programs of named equations, reverse and forward mode over programs, and LaTeX in the book's notation.

This package never imports NumPy or PyTorch at import time (``from_torch`` imports torch when called).
"""

from __future__ import annotations

from dlmath import _packages

_packages.require()  # one line with the fix if another distribution owns derive, numeric or verify

from . import functions, models, nn
from .autodiff import backprop, count_nodes, forward_mode, grad, hessian, tangents
from .frontends import from_torch
from .latex import latex
from .parse import ExpressionShapeError, ParseError, parse
from .program import Builder, Equation, Equations, Model, ModelError
from .tensor import PRIMITIVES, Node, ShapeError, UnsupportedError, Var


def clear_caches() -> None:
    """Forget cached derivations and built zoo models (benchmarks time derivations from scratch)."""
    from . import autodiff

    autodiff.clear_caches()
    models._CACHE.clear()


__all__ = [
    "models", "nn", "forward_mode", "functions", "backprop", "grad", "hessian", "tangents", "latex", "clear_caches",
    "count_nodes", "from_torch", "Builder", "Equation", "Equations", "Model", "ModelError", "ShapeError",
    "UnsupportedError", "Node", "Var", "PRIMITIVES", "parse", "ParseError", "ExpressionShapeError",
]
