"""Tensor expressions over symbolic shapes, and the primitive table.

A tensor expression is a DAG of interned, immutable nodes. Shapes are tuples of SymPy expressions in the
model's dimension symbols, so nothing here depends on numeric sizes. The primitives, grouped by family in this package, are

=============  ==================================================================================
``Var``        a named tensor: a parameter, an input, or the left-hand side of an equation
``Const``      a tensor filled with one scalar (which may involve dimensions, e.g. ``1/n``)
``Eye``        the identity matrix of a dimension (seeds Hessians)
``Einsum``     contraction ``coef * sum_{summed} prod_k A_k[...]``: matmul, outer products, transposes,
               sums, traces and broadcasting are all instances
``Map``        elementwise application of a scalar SymPy expression to tensors of one shape
``Softmax`` …  axis primitives: ``Softmax``, ``LogSoftmax``, ``LogSumExp``, ``Max``, ``ArgMaxMask``
``Take``       indexing ``x[..., i, ...]`` along one axis, and its adjoint ``Embed``
``OneHot``     the one-hot encoding of integer labels (gathers ``x_y`` are contractions with it)
``Inv`` …      linear algebra: ``Inv``, ``Det``, ``LogDet``, ``Solve``, ``Trace``, ``DiagMatrix``,
               ``DiagPart``, ``Norm`` (Euclidean/Frobenius)
``StopGrad``   identity whose derivative is zero
``Reshape`` …  shapes: ``Reshape`` (row-major), ``Slice`` of one axis and its adjoint ``Pad``
=============  ==================================================================================

Each primitive class holds, in one place, its shape rule, its reverse-mode rule (``vjp``), its
forward-mode rule with a tensor tangent (``jvp``), its LaTeX (``latex``) and its NumPy/PyTorch lowering
(``lower``); :data:`PRIMITIVES` lists them and a test checks every entry is complete. Construction
functions (:func:`map_`, :func:`einsum`, ...) simplify as they build: elementwise maps fuse and their
scalar expression is simplified by SymPy, constants fold, identities contract away, and sums of a
probability vector are 1. That is what turns the generic rules into the book's closed forms.
"""

from __future__ import annotations

from .axis import (
    ArgMaxMask,
    AxisOp,
    LogSoftmax,
    LogSumExp,
    Max,
    Softmax,
    log_softmax,
    logsumexp,
    max_,
    softmax,
)

# import order matters: elementwise maps, contractions and indexing refer to each other
from .base import (
    Dim,
    Label,
    Node,
    Shape,
    ShapeError,
    UnsupportedError,
    as_expr,
    as_number,
    fmt_shape,
    substitute,
    walk,
)
from .contraction import Einsum, broadcast_to, dot, einsum, matmul, mean, outer, sum_, sum_all
from .elementwise import (  # noqa: I001
    ARG,
    Map,
    add_all,
    apply,
    as_node,
    binary,
    check_scalar,
    derivative,
    has_kinks,
    map_,
    simplify_scalar,
)
from .indexing import LABELS, Embed, OneHot, StopGrad, Take, embed, gather, label_sizes, stop_gradient, take
from .leaves import CausalMask, Const, Eye, IndexGrid, Var, is_zero, zeros
from .linalg import (
    SPD,
    Det,
    DiagMatrix,
    DiagPart,
    Inv,
    LogDet,
    Norm,
    Solve,
    Trace,
    det,
    diag,
    inv,
    logdet,
    norm,
    norm1,
    solve,
    trace,
)
from .shape import Pad, Reshape, Slice, concat, pad, reshape, slice_
from .windows import Fold, Unfold, conv_out

#: The primitive table: every node type with its rules. A test checks each defines vjp, jvp, latex, lower.
PRIMITIVES: tuple[type[Node], ...] = (
    Var, Const, Eye, CausalMask, Map, Einsum, Softmax, LogSoftmax, LogSumExp, Max, ArgMaxMask, StopGrad, Take, Embed,
    Unfold, Fold, IndexGrid, OneHot, Inv, Det, LogDet, Solve, Trace, DiagMatrix, DiagPart, Norm, Reshape, Slice, Pad,
)

__all__ = [
    "Dim", "Label", "Node", "Shape", "ShapeError", "UnsupportedError", "as_expr", "as_number", "fmt_shape", "substitute", "walk",
    "CausalMask", "Const", "Eye", "IndexGrid", "Var", "is_zero", "zeros",
    "ARG", "Map", "add_all", "apply", "as_node", "binary", "check_scalar", "derivative", "has_kinks", "map_", "simplify_scalar",
    "Einsum", "broadcast_to", "dot", "einsum", "matmul", "mean", "outer", "sum_", "sum_all",
    "ArgMaxMask", "AxisOp", "LogSoftmax", "LogSumExp", "Max", "Softmax", "log_softmax", "logsumexp", "max_", "softmax",
    "Embed", "StopGrad", "Take", "embed", "stop_gradient", "take", "LABELS", "OneHot", "gather", "label_sizes",
    "Fold", "Unfold", "conv_out", "PRIMITIVES", "Pad", "Reshape", "Slice", "concat", "pad", "reshape", "slice_",
    "SPD", "Det", "DiagMatrix", "DiagPart", "Inv", "LogDet", "Norm", "Solve", "Trace", "det", "diag", "inv",
    "logdet", "norm", "norm1", "solve", "trace",
]
