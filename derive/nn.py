"""Elementwise functions and the other building blocks that models are written with.

Each elementwise function applies a scalar SymPy function to every entry of a tensor; its derivative
comes from ``sympy.diff`` of that scalar definition.

Beyond the layers of the book: ``abs``, ``sign``, ``erf``, ``maximum``, ``minimum``, ``clamp``, ``where``,
``power`` (elementwise, PyTorch's conventions at kinks and ties), ``gather``/``take`` by integer labels
(inputs declared ``domain="labels"``), ``trace``, ``diag``, ``det``, ``logdet``, ``inv``, ``solve``, and the
norms ``norm`` (Euclidean; Frobenius for a matrix), ``frobenius``, ``norm1`` and ``norm2`` (the *squared*
Euclidean norm, as the zoo uses it).
"""

from __future__ import annotations

from typing import Any

import sympy as sp

from . import functions as F
from .tensor import (
    ARG,
    Node,
    apply,
    as_node,
    as_number,
    broadcast_to,
    det,
    diag,
    dot,
    einsum,
    gather,
    inv,
    log_softmax,
    logdet,
    logsumexp,
    map_,
    matmul,
    max_,
    mean,
    norm,
    norm1,
    outer,
    softmax,
    solve,
    stop_gradient,
    sum_,
    take,
    trace,
)

__all__ = [
    "sigmoid", "tanh", "relu", "leaky_relu", "softplus", "exp", "log", "sin", "cos", "sqrt", "square",
    "activation", "softmax", "log_softmax", "logsumexp", "max_", "sum_", "mean", "dot", "outer", "matmul",
    "einsum", "take", "stop_gradient", "norm2", "abs", "sign", "erf", "maximum", "minimum", "clamp", "where",
    "power", "gather", "trace", "diag", "det", "logdet", "inv", "solve", "norm", "norm1", "frobenius",
]


def sigmoid(x: Node) -> Node:
    r"""\sigma(x) = 1/(1 + e^{-x}) elementwise."""
    return map_(F.sigmoid(ARG[0]), [x])


def tanh(x: Node) -> Node:
    r"""\tanh(x) elementwise."""
    return map_(sp.tanh(ARG[0]), [x])


def relu(x: Node) -> Node:
    r"""\max(0, x) elementwise (derivative 0 at 0, as PyTorch)."""
    return map_(F.relu(ARG[0]), [x])


def leaky_relu(x: Node, slope: Any = F.DEFAULT_SLOPE) -> Node:
    r"""\max(s x, x) elementwise."""
    return map_(F.leaky_relu(ARG[0], as_number(slope, 'the leaky ReLU slope')), [x])


def softplus(x: Node) -> Node:
    r"""\log(1 + e^{x}) elementwise, computed stably."""
    return map_(F.softplus(ARG[0]), [x])


def exp(x: Node) -> Node:
    return map_(sp.exp(ARG[0]), [x])


def log(x: Node) -> Node:
    return map_(sp.log(ARG[0]), [x])


def sin(x: Node) -> Node:
    return map_(sp.sin(ARG[0]), [x])


def cos(x: Node) -> Node:
    return map_(sp.cos(ARG[0]), [x])


def sqrt(x: Node) -> Node:
    return map_(sp.sqrt(ARG[0]), [x])


def square(x: Node) -> Node:
    return map_(ARG[0] ** 2, [x])


def norm2(x: Node) -> Node:
    r"""\|x\|^2, the squared Euclidean norm (sum of all squared entries)."""
    return sum_(square(x))


def activation(name: str, x: Node, slope: Any = F.DEFAULT_SLOPE) -> Node:
    """The activation called ``name`` (see :data:`derive.functions.ACTIVATIONS`) applied to ``x``."""
    return apply(F.activation(name, slope), x)




def _elementwise(fn: sp.Expr, *xs: Any) -> Node:
    """``fn(ARG[0], ARG[1], ...)`` elementwise over ``xs`` (tensors or numbers), broadcasting trailing axes."""
    nodes = [as_node(x) for x in xs]
    shape = max((n.shape for n in nodes), key=len)
    nodes = [n if n.shape in ((), shape) else broadcast_to(n, shape) for n in nodes]
    return map_(fn, nodes)


def abs(x: Node) -> Node:  # noqa: A001
    r"""``|x|`` elementwise; its derivative is sign(x), 0 at 0 (as PyTorch)."""
    return map_(sp.Abs(ARG[0]), [x])


def sign(x: Node) -> Node:
    r"""sign(x) elementwise (-1, 0, 1); its derivative is 0 (as PyTorch)."""
    return map_(sp.sign(ARG[0]), [x])


def erf(x: Node) -> Node:
    r"""\operatorname{erf}(x) = 2/\sqrt{\pi} \int_0^x e^{-t^2} dt elementwise."""
    return map_(sp.erf(ARG[0]), [x])


def maximum(a: Any, b: Any) -> Node:
    r"""\max(a, b) elementwise; at ties each gets half the gradient (``torch.maximum``)."""
    return _elementwise(F.maximum(ARG[0], ARG[1]), a, b)


def minimum(a: Any, b: Any) -> Node:
    r"""\min(a, b) elementwise; at ties each gets half the gradient (``torch.minimum``)."""
    return _elementwise(F.minimum(ARG[0], ARG[1]), a, b)


def clamp(x: Any, lo: Any, hi: Any) -> Node:
    r"""\min(\max(x, lo), hi) elementwise (``torch.clamp``: the gradient passes at the bounds)."""
    return _elementwise(F.clamp(ARG[0], ARG[1], ARG[2]), x, lo, hi)


def where(cond: Any, a: Any, b: Any) -> Node:
    r"""``a`` where ``cond`` is nonzero, else ``b`` (a selection: an infinity in the branch not taken stays
    out); ``cond`` is a 0/1 mask or a step such as ``step(x)``."""
    return _elementwise(F.where(ARG[0], ARG[1], ARG[2]), cond, a, b)


def power(x: Any, p: Any) -> Node:
    r"""x^p elementwise for a real (or tensor) exponent ``p`` (``torch.pow``'s derivatives at x = 0)."""
    return _elementwise(F.power(ARG[0], ARG[1]), x, p)


def frobenius(x: Node) -> Node:
    r"""\|X\|_F, the Frobenius norm (the Euclidean norm of all entries)."""
    return norm(x)
