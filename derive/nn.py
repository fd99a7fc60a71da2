"""Elementwise functions and the other building blocks that models are written with.

Each elementwise function applies a scalar SymPy function to every entry of a tensor; its derivative
comes from ``sympy.diff`` of that scalar definition.
"""

from __future__ import annotations

from typing import Any

import sympy as sp

from . import functions as F
from .tensor import (
    ARG,
    Node,
    apply,
    as_number,
    dot,
    einsum,
    log_softmax,
    logsumexp,
    map_,
    matmul,
    max_,
    mean,
    outer,
    softmax,
    stop_gradient,
    sum_,
    take,
)

__all__ = [
    "sigmoid", "tanh", "relu", "leaky_relu", "softplus", "exp", "log", "sin", "cos", "sqrt", "square",
    "activation", "softmax", "log_softmax", "logsumexp", "max_", "sum_", "mean", "dot", "outer", "matmul",
    "einsum", "take", "stop_gradient", "norm2",
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


