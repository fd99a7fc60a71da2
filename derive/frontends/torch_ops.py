"""The ATen table of the PyTorch front end: each core ATen operation (after ``run_decompositions``) mapped onto
dlmath's primitives.

One entry per operation, ``OPS[name] = rule``; a rule takes the converted arguments (tensors as
:class:`derive.tensor.Node`, sizes as SymPy expressions in the model's dimensions, Python numbers, lists) and
returns the converted result. Operations outside the table are refused by the front end, naming the operation
and the user's line that called it. The table never imports torch: the front end hands it plain values.

Booleans are 0/1 tensors (a comparison ``x > c`` is the step ``1{x - c > 0}``), so ``where`` is a selection
with PyTorch's derivative conventions (the branch not taken gets zero gradient).
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import sympy as sp

from .. import functions as F
from ..tensor import (
    ARG,
    CausalMask,
    Const,
    Node,
    OneHot,
    ShapeError,
    Var,
    as_expr,
    concat,
    einsum,
    log_softmax,
    map_,
    max_,
    reshape,
    slice_,
    softmax,
    stop_gradient,
    take,
    walk,
)

__all__ = ["OPS", "Unsupported", "broadcast", "elementwise"]


class Unsupported(ValueError):
    """An operation (or an argument of one) that the table does not cover; the front end adds the user's line."""


Rule = Callable[..., Any]
OPS: dict[str, Rule] = {}

#: how a rule names a hyperparameter (a norm's epsilon): the front end sets it to ``Builder.const`` while it
#: converts, so the equations print ``epsilon`` and list its value once; unset, the number itself is used
CONSTANT: contextvars.ContextVar[Callable[[str, float], sp.Expr] | None] = contextvars.ContextVar("CONSTANT", default=None)


#: how a rule names an intermediate of a layer step (a norm's mean and standard deviation): the front end
#: sets it to write an equation (``mu_1 = ...``) and return its variable; unset, the value itself is used
STEP: contextvars.ContextVar[Callable[[str, Node, str], Node] | None] = contextvars.ContextVar("STEP", default=None)


def step(name: str, value: Node, tex: str) -> Node:
    make = STEP.get()
    return make(name, value, tex) if make is not None else value


def constant(name: str, value: Any) -> sp.Expr:
    make = CONSTANT.get()
    return make(name, float(value)) if make is not None else _number(value)


def rule(*names: str) -> Callable[[Rule], Rule]:
    def deco(f: Rule) -> Rule:
        for n in names:
            assert n not in OPS, f"duplicate ATen rule {n}"
            OPS[n] = f
        return f
    return deco


# ---------------------------------------------------------------------------------------------------
# broadcasting and elementwise maps
# ---------------------------------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    return bool(sp.simplify(as_expr(a) - as_expr(b)) == 0)


def _shape_of(x: Any) -> tuple[Any, ...]:
    return tuple(x.shape) if isinstance(x, Node) else ()


def broadcast_shape(*shapes: Sequence[Any]) -> tuple[Any, ...]:
    """PyTorch's broadcast of several shapes (sizes 1 stretch; other sizes must agree)."""
    nd = max((len(s) for s in shapes), default=0)
    out: list[Any] = []
    for i in range(nd):
        size: Any = sp.S.One
        for s in shapes:
            j = i - (nd - len(s))
            if j < 0:
                continue
            d = as_expr(s[j])
            if d == 1:
                continue
            if size != 1 and not _same(size, d):
                raise ShapeError(f"shapes {' and '.join(str(tuple(x)) for x in shapes)} do not broadcast")
            size = d
        out.append(size)
    return tuple(out)


def broadcast(x: Node, shape: Sequence[Any]) -> Node:
    """``x`` broadcast to ``shape`` as PyTorch does (leading axes added, size-1 axes stretched)."""
    shape = tuple(as_expr(d) for d in shape)
    if tuple(x.shape) == shape:
        return x
    from ..tensor import Reshape

    if isinstance(x, Reshape) and [d for d in x.shape if d != 1] == [d for d in x.x.shape if d != 1] \
            and all(d != 1 for d in x.x.shape):
        # a keepdim reduction broadcast back: broadcast the reduction itself (prints as the book's mean)
        k = len(shape) - x.ndim
        pos = [i + k for i, d in enumerate(x.shape) if d != 1]
        if all(_same(x.shape[p - k], shape[p]) for p in pos):
            return einsum([tuple(pos)], tuple(range(len(shape))), [x.x], dims=dict(enumerate(shape)))
    k = len(shape) - x.ndim
    if k < 0:
        raise ShapeError(f"cannot broadcast shape {tuple(x.shape)} to {shape}")
    ins: list[Any] = []
    dims: dict[Any, Any] = dict(enumerate(shape))
    for j, d in enumerate(x.shape):
        i = j + k
        if _same(d, shape[i]):
            ins.append(i)
        elif d == 1:
            ins.append(("one", j))
            dims[("one", j)] = sp.S.One
        else:
            raise ShapeError(f"cannot broadcast shape {tuple(x.shape)} to {shape}")
    return einsum([tuple(ins)], tuple(range(len(shape))), [x], dims=dims)


def elementwise(fn: sp.Expr, *xs: Any) -> Node:
    """``fn(ARG[0], ARG[1], ...)`` over tensors and numbers, with PyTorch's broadcasting."""
    shape = broadcast_shape(*(_shape_of(x) for x in xs))
    subs: dict[sp.Symbol, Any] = {}
    nodes: list[Node] = []
    for i, x in enumerate(xs):
        if isinstance(x, Node):
            nodes.append(x if x.shape == () else broadcast(x, shape))
            subs[ARG[i]] = ARG[len(nodes) - 1] if len(nodes) - 1 != i else ARG[i]
        else:
            subs[ARG[i]] = _number(x)
    # renumber: tensors take ARG[0..], numbers are substituted
    tmp = {ARG[i]: sp.Dummy(f"t{i}") for i in range(len(xs))}
    body = fn.xreplace(tmp)
    k = 0
    final: dict[Any, Any] = {}
    for i, x in enumerate(xs):
        if isinstance(x, Node):
            final[tmp[ARG[i]]] = ARG[k]
            k += 1
        else:
            final[tmp[ARG[i]]] = _number(x)
    body = body.xreplace(final)
    if not nodes:
        raise Unsupported("an operation on numbers only (no tensor)")
    from ..tensor import Reshape

    full = [n for n in nodes if n.shape != ()]
    units = [n for n in full if isinstance(n, Reshape) and _unit(n)]
    if full and len(units) == len(full) and all(n.x.shape == units[0].x.shape for n in units):
        # keepdim reductions (shape (..., 1)) stay reductions: map first, add the unit axes after
        inner = [n.x if isinstance(n, Reshape) and n.shape != () else n for n in nodes]
        return reshape(map_(body, inner, units[0].x.shape), shape)
    return map_(body, nodes, shape)


def _unit(n: Any) -> bool:
    """A reshape that only adds or removes axes of size 1."""
    return [d for d in n.shape if d != 1] == [d for d in n.x.shape if d != 1]


def _number(x: Any) -> sp.Expr:
    if isinstance(x, bool):
        return sp.S.One if x else sp.S.Zero
    if isinstance(x, sp.Basic):
        return x
    if isinstance(x, int):
        return sp.Integer(x)
    if isinstance(x, float):
        if math.isinf(x):
            return sp.oo if x > 0 else -sp.oo
        if math.isnan(x):
            raise Unsupported("a NaN constant")
        if x == int(x) and abs(x) < 2**53:
            return sp.Integer(int(x))
        r = _as_written(x)  # 1e-06 as written (10^{-6}); values with long expansions stay floats
        return r if r.q <= 100 else sp.Float(x)
    raise Unsupported(f"a {type(x).__name__} argument where a number or tensor is expected")


def _ax(x: Node, dim: int) -> int:
    n = max(x.ndim, 1)
    if not -n <= dim < n:
        raise ShapeError(f"dimension {dim} is out of range for shape {tuple(x.shape)}")
    return dim % n


def _axes(x: Node, dims: Any) -> tuple[int, ...]:
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return tuple(range(x.ndim))
    if isinstance(dims, int):
        dims = [dims]
    return tuple(sorted({_ax(x, d) for d in dims}))


# ---------------------------------------------------------------------------------------------------
# elementwise operations
# ---------------------------------------------------------------------------------------------------

a0, a1, a2 = ARG[0], ARG[1], ARG[2]


def _unary(fn: sp.Expr) -> Rule:
    return lambda x: elementwise(fn, x)


for _name, _fn in {
    "neg": -a0, "exp": sp.exp(a0), "log": sp.log(a0), "log1p": sp.log(1 + a0), "expm1": sp.exp(a0) - 1,
    "tanh": sp.tanh(a0), "sigmoid": F.sigmoid(a0), "relu": F.relu(a0), "sqrt": sp.sqrt(a0),
    "rsqrt": 1 / sp.sqrt(a0), "abs": sp.Abs(a0), "sign": sp.sign(a0), "sin": sp.sin(a0), "cos": sp.cos(a0),
    "erf": sp.erf(a0), "reciprocal": 1 / a0, "square": a0**2, "silu": a0 * F.sigmoid(a0),
    "log_sigmoid": -F.softplus(-a0), "logical_not": 1 - a0,
}.items():
    OPS[_name] = _unary(_fn)


@rule("add", "add.Tensor", "add.Scalar")
def _add(x: Any, y: Any, alpha: Any = 1) -> Node:
    return elementwise(a0 + _number(alpha) * a1, x, y)


@rule("sub", "sub.Tensor", "sub.Scalar")
def _sub(x: Any, y: Any, alpha: Any = 1) -> Node:
    return elementwise(a0 - _number(alpha) * a1, x, y)


@rule("rsub.Scalar", "rsub.Tensor")
def _rsub(x: Any, y: Any, alpha: Any = 1) -> Node:
    return elementwise(a1 - _number(alpha) * a0, x, y)


@rule("mul.Tensor", "mul.Scalar")
def _mul(x: Any, y: Any) -> Node:
    return elementwise(a0 * a1, x, y)


@rule("div.Tensor", "div.Scalar")
def _div(x: Any, y: Any) -> Node:
    return elementwise(a0 / a1, x, y)


@rule("pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar")
def _pow(x: Any, p: Any) -> Node:
    if isinstance(p, Node):
        return elementwise(F.power(a0, a1), x, p)
    e = _number(p)
    if e.is_Integer or (isinstance(x, Node) and e.is_number):
        return elementwise(a0**e if e.is_Integer else F.power(a0, e), x)
    return elementwise(F.power(a0, a1), x, p)


@rule("gelu")
def _gelu(x: Node, approximate: str = "none") -> Node:
    if approximate == "tanh":
        c = sp.sqrt(2 / sp.pi)
        return elementwise(a0 / 2 * (1 + sp.tanh(c * (a0 + sp.Rational(44715, 1000000) * a0**3))), x)
    if approximate != "none":
        raise Unsupported(f"gelu with approximate={approximate!r}")
    return elementwise(a0 / 2 * (1 + sp.erf(a0 / sp.sqrt(2))), x)


@rule("leaky_relu")
def _leaky(x: Node, slope: Any = 0.01) -> Node:
    return elementwise(F.leaky_relu(a0, _rational(slope)), x)


def _as_written(x: float) -> sp.Rational:
    """The exact rational of the shortest decimal that reads back as ``x`` (0.2 -> 1/5), through Fraction:
    no text reaches SymPy's parser."""
    f = Fraction(repr(x))
    return sp.Rational(f.numerator, f.denominator)


def _rational(v: Any) -> sp.Expr:
    """A float hyperparameter as the exact rational it was written as (0.2 -> 1/5), else the float."""
    e = _number(v)
    if isinstance(e, sp.Float):
        r = _as_written(float(e))
        return r if r.q < 10**6 else e
    return e


@rule("elu")
def _elu(x: Node, alpha: Any = 1.0, scale: Any = 1.0, input_scale: Any = 1.0) -> Node:
    al, sc, isc = _rational(alpha), _rational(scale), _rational(input_scale)
    neg = al * (sp.exp(isc * a0) - 1)
    return elementwise(sc * F.where(F.step(a0), a0, neg), x)


@rule("softplus")
def _softplus(x: Node, beta: Any = 1, threshold: Any = 20) -> Node:
    b, th = _rational(beta), _rational(threshold)
    return elementwise(F.where(F.step(b * a0 - th), a0, F.softplus(b * a0) / b), x)


@rule("clamp", "clamp.Tensor")
def _clamp(x: Node, lo: Any = None, hi: Any = None) -> Node:
    if lo is not None and hi is not None:
        return elementwise(F.clamp(a0, a1, a2), x, lo, hi)
    if lo is not None:
        return elementwise(F.maximum(a0, a1), x, lo) if isinstance(lo, Node) else elementwise(
            F.clamp(a0, _number(lo), sp.oo), x)
    if hi is not None:
        return elementwise(F.minimum(a0, a1), x, hi) if isinstance(hi, Node) else elementwise(
            F.clamp(a0, -sp.oo, _number(hi)), x)
    return x


@rule("clamp_min")
def _clamp_min(x: Node, lo: Any) -> Node:
    return _clamp(x, lo, None)


@rule("clamp_max")
def _clamp_max(x: Node, hi: Any) -> Node:
    return _clamp(x, None, hi)


@rule("maximum")
def _maximum(x: Any, y: Any) -> Node:
    return elementwise(F.maximum(a0, a1), x, y)


@rule("minimum")
def _minimum(x: Any, y: Any) -> Node:
    return elementwise(F.minimum(a0, a1), x, y)


@rule("where.self", "where.ScalarOther", "where.ScalarSelf", "where.Scalar")
def _where(c: Any, x: Any, y: Any) -> Any:
    if isinstance(c, Const):
        v = c.value
        if v in (0, 1):
            pick = x if v == 1 else y
            shape = broadcast_shape(_shape_of(c), _shape_of(x), _shape_of(y))
            return broadcast(pick, shape) if isinstance(pick, Node) else Const(_number(pick), shape)
    return elementwise(F.where(a0, a1, a2), c, x, y)


def _compare(op: str) -> Rule:
    def cmp(x: Any, y: Any) -> Node:
        known = _known_comparison(op, x, y)
        if known is not None:
            return known
        fns = {"gt": F.step(a0 - a1), "lt": F.step(a1 - a0), "ge": 1 - F.step(a1 - a0), "le": 1 - F.step(a0 - a1)}
        if op in fns:
            return elementwise(fns[op], x, y)
        raise Unsupported(f"the comparison {op} (equality of real values)")
    return cmp


def _known_comparison(op: str, x: Any, y: Any) -> Node | None:
    """Comparisons whose result follows from the declared domains: integer labels against a number outside
    their range (``y != -100``, the ignored index of cross entropy), and a tensor without infinities against
    minus infinity (the fully masked rows of a safe softmax)."""
    if not isinstance(x, Node) or isinstance(y, Node):
        return None
    c = _number(y)
    truth: bool | None = None
    if isinstance(x, Var) and x.domain == "labels" and c.is_number and c < 0:
        truth = {"ne": True, "eq": False, "gt": True, "ge": True, "lt": False, "le": False}.get(op)
    elif c in (-sp.oo, sp.oo) and not _may_be_infinite(x):
        truth = {"ne": True, "eq": False, "gt": c == -sp.oo, "ge": c == -sp.oo, "lt": c == sp.oo,
                 "le": c == sp.oo}.get(op)
    if truth is None:
        return None
    return Const(1 if truth else 0, x.shape)


def _may_be_infinite(x: Node) -> bool:
    """Whether ``x`` may hold an infinity: it reaches a -inf mask or an infinite constant (the kernels check
    that inputs are finite)."""
    for n in walk([x]):
        if isinstance(n, CausalMask):
            return True
        if isinstance(n, Const) and not as_expr(n.value).is_finite:
            return True
        if hasattr(n, "fn") and any(a in (sp.oo, -sp.oo) for a in sp.preorder_traversal(n.fn)):
            return True
    return False


for _c in ("gt", "lt", "ge", "le", "eq", "ne"):
    OPS[f"{_c}.Scalar"] = OPS[f"{_c}.Tensor"] = _compare(_c)


@rule("logical_and")
def _and(x: Node, y: Node) -> Node:
    return elementwise(a0 * a1, x, y)


@rule("logical_or")
def _or(x: Node, y: Node) -> Node:
    return elementwise(a0 + a1 - a0 * a1, x, y)


@rule("any.dim", "any.dims")
def _any(x: Node, dim: Any = None, keepdim: bool = False) -> Node:
    if isinstance(x, Const) and x.value in (0, 1):
        return _keep(Const(x.value, tuple(d for i, d in enumerate(x.shape) if i not in _axes(x, dim))),
                     x, _axes(x, dim), keepdim)
    raise Unsupported("any() of a tensor that is not known to be all true or all false")


# ---------------------------------------------------------------------------------------------------
# contractions and reductions
# ---------------------------------------------------------------------------------------------------


@rule("mm")
def _mm(a: Node, b: Node) -> Node:
    return einsum([("i", "k"), ("k", "j")], ("i", "j"), [a, b])


@rule("addmm")
def _addmm(bias: Any, a: Node, b: Node, beta: Any = 1, alpha: Any = 1) -> Node:
    return elementwise(_number(beta) * a0 + _number(alpha) * a1, bias, _mm(a, b))


@rule("bmm")
def _bmm(a: Node, b: Node) -> Node:
    return einsum([("b", "i", "k"), ("b", "k", "j")], ("b", "i", "j"), [a, b])


@rule("dot")
def _dot(a: Node, b: Node) -> Node:
    return einsum([("k",), ("k",)], (), [a, b])


@rule("mv")
def _mv(a: Node, b: Node) -> Node:
    return einsum([("i", "k"), ("k",)], ("i",), [a, b])


def _keep(out: Node, x: Node, axes: tuple[int, ...], keepdim: bool) -> Node:
    if not keepdim:
        return out
    return reshape(out, tuple(sp.S.One if i in axes else d for i, d in enumerate(x.shape)))


@rule("sum.dim_IntList", "sum.default")
def _sum(x: Node, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Node:
    axes = _axes(x, dim)
    labels = tuple(range(x.ndim))
    return _keep(einsum([labels], tuple(l for l in labels if l not in axes), [x]), x, axes, keepdim)


@rule("mean.dim", "mean.default")
def _mean(x: Node, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Node:
    axes = _axes(x, dim)
    labels = tuple(range(x.ndim))
    count = sp.Mul(*(x.shape[a] for a in axes))
    return _keep(einsum([labels], tuple(l for l in labels if l not in axes), [x], coef=1 / count), x, axes, keepdim)


@rule("var.correction", "var.dim")
def _var(x: Node, dim: Any = None, unbiased: Any = None, keepdim: bool = False, correction: Any = None) -> Node:
    axes = _axes(x, dim)
    corr = 1 if correction is None and unbiased in (None, True) else (0 if correction is None else correction)
    count = sp.Mul(*(x.shape[a] for a in axes))
    mu = _mean(x, list(axes), keepdim=True)
    dev = elementwise(a0 - a1, x, mu)
    sq = _sum(elementwise(a0**2, dev), list(axes), keepdim)
    return elementwise(a0 / (count - _number(corr)), sq)


@rule("amax")
def _amax(x: Node, dim: Any = None, keepdim: bool = False) -> Node:
    """``amax``: the maximum, its gradient split evenly among tied maxima (as torch.amax; ``max_`` alone
    routes it to the first): ``sum(x t) / sum(t)`` with the tie mask ``t = 1{x >= max}`` held constant."""
    axes = _axes(x, dim)
    m = x
    for a in reversed(axes):  # max over each axis in turn (the result's remaining axes shift down)
        m = max_(m, a)
    m = _keep(stop_gradient(m), x, axes, True)
    ties = elementwise(1 - F.step(a0 - a1), m, x)
    return elementwise(a0 / a1, _sum(elementwise(a0 * a1, x, ties), list(axes), keepdim),
                       _sum(ties, list(axes), keepdim))


@rule("linalg_vector_norm", "norm.ScalarOpt_dim", "norm.Scalar")
def _vector_norm(x: Node, ord: Any = 2, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Node:
    """``||x||_p`` over ``dim``; the 2-norm of the whole tensor is the :class:`Norm` primitive (gradient 0 at
    x = 0, as torch); over some axes it is ``sqrt(sum x^2)``."""
    from ..tensor import norm

    p = _number(2 if ord is None else ord)
    axes = _axes(x, dim)
    if p == 2:
        if len(axes) == x.ndim and x.ndim:
            return _keep(norm(x), x, axes, keepdim)
        return elementwise(sp.sqrt(a0), _sum(elementwise(a0**2, x), list(axes), keepdim))
    if p == 1:
        return _sum(elementwise(sp.Abs(a0), x), list(axes), keepdim)
    if p == sp.oo:
        return _amax(elementwise(sp.Abs(a0), x), list(axes), keepdim)
    if p.is_positive:
        return elementwise(F.power(a0, 1 / p), _sum(elementwise(F.power(sp.Abs(a0), p), x), list(axes), keepdim))
    raise Unsupported(f"the norm of order {ord}")


@rule("max.dim")
def _max_dim(x: Node, dim: int, keepdim: bool = False) -> tuple[Node, None]:
    """``torch.max(x, dim)``: the values (the gradient to the index it returns, the first maximum) and no
    indices."""
    ax = _ax(x, dim)
    return (_keep(max_(x, ax), x, (ax,), keepdim), None)


@rule("min.dim")
def _min_dim(x: Node, dim: int, keepdim: bool = False) -> tuple[Node, None]:
    ax = _ax(x, dim)
    return (_keep(elementwise(-a0, max_(elementwise(-a0, x), ax)), x, (ax,), keepdim), None)


@rule("max", "max.default")
def _max_all(x: Node) -> Node:
    return _amax(x)


@rule("amin", "min", "min.default")
def _amin(x: Node, dim: Any = None, keepdim: bool = False) -> Node:
    return elementwise(-a0, _amax(elementwise(-a0, x), dim, keepdim))


@rule("hardtanh")
def _hardtanh(x: Node, lo: Any = -1.0, hi: Any = 1.0) -> Node:
    return elementwise(F.clamp(a0, _rational(lo), _rational(hi)), x)


@rule("group_norm")
def _group_norm_op(x: Node, groups: int, w: Node | None = None, b: Node | None = None, eps: float = 1e-5,
                   cudnn_enabled: bool = True) -> Node:
    return _group_norm(x, w, b, x.shape[0], x.shape[1], None, groups, eps)[0]


@rule("native_group_norm")
def _group_norm(x: Node, w: Node | None, b: Node | None, N: Any, C: Any, HxW: Any, groups: int,
                eps: float) -> tuple[Any, ...]:
    C = as_expr(x.shape[1])
    if not C.is_Integer or int(C) % groups:
        raise Unsupported(f"group norm of {C} channels in {groups} groups")
    rest = x.shape[2:]
    g = reshape(x, (x.shape[0], sp.Integer(groups), sp.Integer(int(C) // groups)) + tuple(rest))
    axes = list(range(2, g.ndim))
    mu = _mean(g, axes, keepdim=True)
    gc = elementwise(a0 - a1, g, mu)
    var = _mean(elementwise(a0**2, gc), axes, keepdim=True)
    rstd = elementwise(1 / sp.sqrt(a0 + constant("epsilon", eps)), var)
    out = reshape(elementwise(a0 * a1, gc, rstd), x.shape)
    stat = (C,) + (sp.S.One,) * len(rest)
    if w is not None:
        out = elementwise(a0 * a1, out, reshape(w, stat))
    if b is not None:
        out = elementwise(a0 + a1, out, reshape(b, stat))
    return (out, mu, rstd)


@rule("rms_norm")
def _rms_norm(x: Node, shape: Sequence[Any], w: Node | None = None, eps: float | None = None) -> Node:
    """RMSNorm: ``x / sqrt(mean(x^2) + eps) * w`` over the trailing ``shape`` (eps: the float64 machine
    epsilon when not given, as torch in float64)."""
    axes = list(range(x.ndim - len(shape), x.ndim))
    e = float(np.finfo(np.float64).eps) if eps is None else eps
    r = _keep(step("r", elementwise(sp.sqrt(a0 + constant("epsilon", e)), _mean(elementwise(a0**2, x), axes)),
                   r"r"), x, tuple(axes), True)
    out = elementwise(a0 / a1, x, r)
    return out if w is None else elementwise(a0 * a1, out, w)


@rule("_softmax")
def _softmax(x: Node, dim: int, half_to_float: bool = False) -> Node:
    return softmax(x, _ax(x, dim))


@rule("_log_softmax")
def _log_softmax(x: Node, dim: int, half_to_float: bool = False) -> Node:
    return log_softmax(x, _ax(x, dim))


@rule("native_layer_norm")
def _layer_norm(x: Node, shape: Sequence[Any], w: Node | None, b: Node | None, eps: float) -> tuple[Any, ...]:
    axes = list(range(x.ndim - len(shape), x.ndim))
    # the book's steps: the mean and the standard deviation of each row, then the normalised row
    mu = _keep(step("mu", _mean(x, axes), r"\mu"), x, tuple(axes), True)
    xc = elementwise(a0 - a1, x, mu)
    var = _mean(elementwise(a0**2, xc), axes)
    sigma = _keep(step("sigma", elementwise(sp.sqrt(a0 + constant("epsilon", eps)), var), r"\sigma"), x,
                  tuple(axes), True)
    rstd = elementwise(1 / a0, sigma)
    out = elementwise(a0 / a1, xc, sigma)
    if w is not None:
        out = elementwise(a0 * a1, out, w)
    if b is not None:
        out = elementwise(a0 + a1, out, b)
    return (out, mu, rstd)


@rule("_native_batch_norm_legit_functional", "_native_batch_norm_legit_no_training",
      "_native_batch_norm_legit.no_stats")
def _batch_norm(x: Node, w: Node | None, b: Node | None, rmean: Any, rvar: Any, training: bool = False,
                momentum: float = 0.1, eps: float = 1e-5) -> tuple[Any, ...]:
    axes = [0] + list(range(2, x.ndim))
    stat_shape = (sp.S.One, x.shape[1]) + (sp.S.One,) * (x.ndim - 2)
    if training:
        mu = _mean(x, axes, keepdim=True)
        xc = elementwise(a0 - a1, x, mu)
        var = _mean(elementwise(a0**2, xc), axes, keepdim=True)
    else:
        if not isinstance(rmean, Node) or not isinstance(rvar, Node):
            raise Unsupported("batch norm in eval mode without running statistics")
        mu, var = reshape(rmean, stat_shape), reshape(rvar, stat_shape)
        xc = elementwise(a0 - a1, x, mu)
    rstd = elementwise(1 / sp.sqrt(a0 + constant("epsilon", eps)), var)
    out = elementwise(a0 * a1, xc, rstd)
    if w is not None:
        out = elementwise(a0 * a1, out, reshape(w, stat_shape))
    if b is not None:
        out = elementwise(a0 + a1, out, reshape(b, stat_shape))
    flat = (x.shape[1],)
    return (out, reshape(mu, flat), reshape(rstd, flat), rmean, rvar)


# ---------------------------------------------------------------------------------------------------
# views and copies
# ---------------------------------------------------------------------------------------------------


def _resolve_shape(x: Node, shape: Sequence[Any]) -> tuple[Any, ...]:
    shape = [as_expr(d) for d in shape]
    if any(d == -1 for d in shape):
        known = sp.Mul(*(d for d in shape if d != -1))
        total = sp.Mul(*x.shape) if x.shape else sp.S.One
        shape = [sp.simplify(total / known) if d == -1 else d for d in shape]
    return tuple(shape)


@rule("view", "_unsafe_view", "reshape", "view.default")
def _view(x: Node, shape: Sequence[Any]) -> Node:
    return reshape(x, _resolve_shape(x, shape))


@rule("permute")
def _permute(x: Node, dims: Sequence[int]) -> Node:
    perm = [_ax(x, d) for d in dims]
    labels = tuple(range(x.ndim))
    return einsum([labels], tuple(labels[p] for p in perm), [x])


@rule("transpose.int")
def _transpose(x: Node, d0: int, d1: int) -> Node:
    perm = list(range(x.ndim))
    a, b = _ax(x, d0), _ax(x, d1)
    perm[a], perm[b] = perm[b], perm[a]
    return _permute(x, perm)


@rule("t")
def _t(x: Node) -> Node:
    return x if x.ndim < 2 else _permute(x, [1, 0])


@rule("expand")
def _expand(x: Node, shape: Sequence[Any], implicit: bool = False) -> Node:
    k = len(shape) - x.ndim
    full = [x.shape[i - k] if as_expr(d) == -1 else as_expr(d) for i, d in enumerate(shape)]
    return broadcast(x, full)


@rule("unsqueeze")
def _unsqueeze(x: Node, dim: int) -> Node:
    d = dim % (x.ndim + 1)
    return reshape(x, x.shape[:d] + (sp.S.One,) + x.shape[d:])


@rule("squeeze.dims", "squeeze.dim", "squeeze")
def _squeeze(x: Node, dims: Any = None) -> Node:
    axes = _axes(x, dims)
    return reshape(x, tuple(d for i, d in enumerate(x.shape) if not (i in axes and d == 1)))


@rule("cat")
def _cat(xs: Sequence[Node], dim: int = 0) -> Node:
    xs = [x for x in xs if not (x.ndim == 1 and x.shape[0] == 0)]
    return concat(list(xs), _ax(xs[0], dim))


@rule("slice.Tensor")
def _slice(x: Node, dim: int = 0, start: Any = None, end: Any = None, step: int = 1) -> Node:
    ax = _ax(x, dim)
    size = x.shape[ax]
    if step != 1:
        raise Unsupported(f"slicing with step {step}")
    lo = sp.S.Zero if start is None else as_expr(start)
    hi = size if end is None or (isinstance(end, int) and end >= 2**62) else as_expr(end)
    if lo.is_number and lo < 0:
        lo = size + lo
    if hi.is_number and hi < 0:
        hi = size + hi
    if size.is_number and hi.is_number and hi > size:
        hi = size
    return slice_(x, ax, lo, hi)


@rule("select.int")
def _select(x: Node, dim: int, index: Any) -> Node:
    ax = _ax(x, dim)
    if not isinstance(index, int):
        raise Unsupported("select at a symbolic position")
    if index < 0:
        if not x.shape[ax].is_number:
            raise Unsupported("select counted from the end of a dynamic axis")
        index += int(x.shape[ax])
    return take(x, ax, index)


@rule("split_with_sizes", "split.Tensor")
def _split(x: Node, sizes: Any, dim: int = 0) -> tuple[Node, ...]:
    ax = _ax(x, dim)
    if isinstance(sizes, int):
        total = x.shape[ax]
        if not total.is_number:
            raise Unsupported("split of a dynamic axis into equal chunks")
        sizes = [min(sizes, int(total) - i) for i in range(0, int(total), sizes)]
    out, at = [], sp.S.Zero
    for s in sizes:
        out.append(slice_(x, ax, at, at + s))
        at = at + s
    return tuple(out)


@rule("chunk")
def _chunk(x: Node, chunks: int, dim: int = 0) -> tuple[Node, ...]:
    ax = _ax(x, dim)
    total = x.shape[ax]
    if not total.is_number:
        raise Unsupported("chunk of a dynamic axis")
    size = -(-int(total) // chunks)
    return _split(x, size, dim)


@rule("broadcast_tensors")
def _broadcast_tensors(xs: Sequence[Node]) -> tuple[Node, ...]:
    shape = broadcast_shape(*(x.shape for x in xs))
    return tuple(broadcast(x, shape) for x in xs)


@rule("unbind.int")
def _unbind(x: Node, dim: int = 0) -> tuple[Node, ...]:
    ax = _ax(x, dim)
    if not x.shape[ax].is_number:
        raise Unsupported("unbind of a dynamic axis")
    return tuple(take(x, ax, i) for i in range(int(x.shape[ax])))


def _identity(x: Any, *args: Any, **kwargs: Any) -> Any:
    return x


for _name in ("clone", "alias", "lift_fresh_copy", "contiguous", "_to_copy", "to.dtype", "to.dtype_layout", "type_as"):
    OPS[_name] = _identity


@rule("detach")
def _detach(x: Node) -> Node:
    return stop_gradient(x)


# ---------------------------------------------------------------------------------------------------
# constants, indexing, windows
# ---------------------------------------------------------------------------------------------------


@rule("full", "full.default")
def _full(shape: Sequence[Any], value: Any, **kw: Any) -> Node:
    return Const(_number(value), tuple(as_expr(d) for d in shape))


@rule("full_like")
def _full_like(x: Node, value: Any, **kw: Any) -> Node:
    return Const(_number(value), x.shape)


@rule("zeros_like")
def _zeros_like(x: Node, **kw: Any) -> Node:
    return Const(sp.S.Zero, x.shape)


@rule("ones_like")
def _ones_like(x: Node, **kw: Any) -> Node:
    return Const(sp.S.One, x.shape)


@rule("scalar_tensor")
def _scalar_tensor(value: Any, **kw: Any) -> Node:
    return Const(_number(value), ())


@rule("embedding")
def _embedding(weight: Node, idx: Node, padding_idx: int = -1, scale_grad: bool = False, sparse: bool = False) -> Node:
    if not (isinstance(idx, Var) and idx.domain == "labels"):
        raise Unsupported("embedding with indices that are not an integer input")
    if padding_idx not in (-1, None):
        raise Unsupported("embedding with padding_idx (its row gets no gradient)")
    oh = OneHot(idx, weight.shape[0], idx.ndim)
    lab = tuple(range(idx.ndim))
    return einsum([lab + ("v",), ("v", "d")], lab + ("d",), [oh, weight])


@rule("gather")
def _gather(x: Node, dim: int, idx: Node, sparse_grad: bool = False) -> Node:
    ax = _ax(x, dim)
    # the decomposed cross entropy: gather(logp, 1, y.unsqueeze(1)) with labels y
    base = idx.x if hasattr(idx, "x") and isinstance(idx.x, Var) else idx
    if isinstance(base, Var) and base.domain == "labels" and idx.shape[ax] == 1:
        oh = OneHot(base, x.shape[ax], ax)
        labels = tuple(range(x.ndim))
        out = einsum([labels, labels], labels[:ax] + labels[ax + 1:], [x, oh])
        return reshape(out, x.shape[:ax] + (sp.S.One,) + x.shape[ax + 1:])
    raise Unsupported("gather with indices that are not integer labels of one entry per row")


# ---------------------------------------------------------------------------------------------------
# the training IR (torch.export before run_decompositions): whole layers as one operation each. The front
# end converts this graph first, and decomposes to core ATen only when it meets an operation without a rule.
# ---------------------------------------------------------------------------------------------------


@rule("linear")
def _linear(x: Node, w: Node, b: Node | None = None) -> Node:
    lead = tuple(range(x.ndim - 1))
    out = einsum([lead + ("i",), ("o", "i")], lead + ("o",), [x, w]) if w.ndim == 2 else \
        einsum([lead + ("i",), ("i",)], lead, [x, w])
    return out if b is None else elementwise(a0 + a1, out, b)


@rule("matmul")
def _matmul(a: Node, b: Node) -> Node:
    if a.ndim == 1 and b.ndim == 1:
        return _dot(a, b)
    va, vb = a.ndim == 1, b.ndim == 1
    A = reshape(a, (sp.S.One,) + a.shape) if va else a
    B = reshape(b, b.shape + (sp.S.One,)) if vb else b
    batch = broadcast_shape(A.shape[:-2], B.shape[:-2])
    A = broadcast(A, batch + A.shape[-2:])
    B = broadcast(B, batch + B.shape[-2:])
    lead = tuple(range(len(batch)))
    out = einsum([lead + ("i", "k"), lead + ("k", "j")], lead + ("i", "j"), [A, B])
    if va:
        out = reshape(out, out.shape[:-2] + out.shape[-1:])
    if vb:
        out = reshape(out, out.shape[:-1])
    return out


@rule("layer_norm")
def _layer_norm_op(x: Node, shape: Sequence[Any], w: Node | None = None, b: Node | None = None,
                   eps: float = 1e-5, cudnn_enable: bool = True) -> Node:
    return _layer_norm(x, shape, w, b, eps)[0]


@rule("batch_norm")
def _batch_norm_op(x: Node, w: Node | None, b: Node | None, rmean: Any, rvar: Any, training: bool,
                   momentum: float, eps: float, cudnn_enabled: bool = True) -> Node:
    return _batch_norm(x, w, b, rmean, rvar, training, momentum, eps)[0]


@rule("dropout", "dropout.default", "feature_dropout", "alpha_dropout")
def _dropout(x: Node, p: float = 0.5, train: bool = False) -> Node:
    if p == 0 or not train:
        return x
    raise Unsupported(f"dropout with p={p} in training mode is random: capture in eval mode or with p=0")


@rule("unflatten.int")
def _unflatten(x: Node, dim: int, sizes: Sequence[Any]) -> Node:
    ax = _ax(x, dim)
    inner = [as_expr(d) for d in sizes]
    if any(d == -1 for d in inner):
        known = sp.Mul(*(d for d in inner if d != -1))
        inner = [sp.simplify(x.shape[ax] / known) if d == -1 else d for d in inner]
    return reshape(x, (*x.shape[:ax], *inner, *x.shape[ax + 1:]))


@rule("flatten.using_ints")
def _flatten(x: Node, start: int = 0, end: int = -1) -> Node:
    if x.ndim == 0:
        return reshape(x, (sp.S.One,))
    s, e = _ax(x, start), _ax(x, end)
    return reshape(x, x.shape[:s] + (sp.Mul(*x.shape[s:e + 1]),) + x.shape[e + 1:])


@rule("softmax.int")
def _softmax_int(x: Node, dim: int, dtype: Any = None) -> Node:
    return softmax(x, _ax(x, dim))


@rule("log_softmax.int")
def _log_softmax_int(x: Node, dim: int, dtype: Any = None) -> Node:
    return log_softmax(x, _ax(x, dim))


@rule("scaled_dot_product_attention")
def _sdpa(q: Node, k: Node, v: Node, attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
          scale: Any = None, enable_gqa: bool = False) -> Node:
    if dropout_p:
        raise Unsupported(f"attention dropout {dropout_p} is random")
    if enable_gqa and not _same(q.shape[-3] if q.ndim > 2 else 1, k.shape[-3] if k.ndim > 2 else 1):
        raise Unsupported("grouped-query attention with fewer key heads")
    d = q.shape[-1]
    c = sp.S.One / sp.sqrt(d) if scale is None else _number(scale)
    lead = tuple(range(q.ndim - 2))
    s = einsum([lead + ("q", "d"), lead + ("k", "d")], lead + ("q", "k"), [q, k], coef=c)
    if is_causal:
        s = elementwise(a0 + a1, s, CausalMask(q.shape[-2], k.shape[-2]))
    if isinstance(attn_mask, Node):
        s = elementwise(a0 + a1, s, attn_mask)
    elif attn_mask is not None:
        raise Unsupported("an attention mask that is not a tensor")
    a = softmax(s, s.ndim - 1)
    return einsum([lead + ("q", "k"), lead + ("k", "e")], lead + ("q", "e"), [a, v])


_REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}


def _reduce(x: Node, reduction: int) -> Node:
    r = _REDUCTIONS.get(reduction)
    if r == "mean":
        return _mean(x)
    if r == "sum":
        return _sum(x)
    return x


@rule("mse_loss")
def _mse(a: Node, b: Node, reduction: int = 1) -> Node:
    return _reduce(elementwise((a0 - a1) ** 2, a, b), reduction)


@rule("binary_cross_entropy_with_logits")
def _bce_logits(x: Node, y: Node, weight: Any = None, pos_weight: Any = None, reduction: int = 1) -> Node:
    if weight is not None or pos_weight is not None:
        raise Unsupported("binary_cross_entropy_with_logits with weight or pos_weight")
    return _reduce(elementwise(F.softplus(a0) - a1 * a0, x, y), reduction)


def _labels_var(y: Any) -> Var | None:
    """The integer-label input behind ``y`` (itself, or reshapes of it)."""
    from ..tensor import Reshape

    while isinstance(y, Reshape):
        y = y.x
    return y if isinstance(y, Var) and y.domain == "labels" else None


@rule("cross_entropy_loss")
def _cross_entropy(x: Node, y: Node, weight: Any = None, reduction: int = 1, ignore_index: int = -100,
                   label_smoothing: float = 0.0) -> Node:
    if weight is not None or label_smoothing:
        raise Unsupported("cross_entropy with class weights or label smoothing")
    if ignore_index >= 0:
        raise Unsupported(f"cross_entropy with ignore_index={ignore_index} (a class that labels may hold)")
    ax = 1 if x.ndim > 1 else 0
    logp = log_softmax(x, ax)
    labels_of = _labels_var(y)
    if labels_of is not None and ax == x.ndim - 1 and not isinstance(y, Var):
        # labels reshaped (``y.view(-1)`` beside ``logits.view(-1, K)``): the one-hot of the labels, reshaped
        oh = reshape(OneHot(labels_of, x.shape[ax], labels_of.ndim), tuple(y.shape) + (x.shape[ax],))
        labels = tuple(range(x.ndim))
        nll = einsum([labels, labels], labels[:ax] + labels[ax + 1:], [logp, oh], coef=-1)
        return _reduce(nll, reduction)
    if isinstance(y, Var) and y.domain == "labels":
        oh = OneHot(y, x.shape[ax], ax)
        labels = tuple(range(x.ndim))
        nll = einsum([labels, labels], labels[:ax] + labels[ax + 1:], [logp, oh], coef=-1)
        return _reduce(nll, reduction)
    if y.shape == x.shape:  # probability targets
        labels = tuple(range(x.ndim))
        per = einsum([labels, labels], labels[:ax] + labels[ax + 1:], [logp, y], coef=-1)
        if _REDUCTIONS.get(reduction) == "mean" and x.ndim > 1:
            return einsum([tuple(range(per.ndim))], (), [per], coef=1 / sp.Mul(*per.shape))
        return _reduce(per, reduction)
    raise Unsupported("cross_entropy targets that are neither integer labels nor probabilities")


# ---------------------------------------------------------------------------------------------------
# convolution and pooling: contractions with the image's windows (derive.primitives.windows), as the
# zoo's conv2d and pooling entries; 1-D layers are 2-D ones over an image of height 1
# ---------------------------------------------------------------------------------------------------


def _pair(v: Any, nd: int, name: str) -> tuple[Any, ...]:
    vals = list(v) if isinstance(v, (list, tuple)) else [v] * nd
    if len(vals) == 1:
        vals = vals * nd
    if len(vals) != nd or not all(isinstance(a, int) and not isinstance(a, bool) for a in vals):
        raise Unsupported(f"{name}={v!r} (integers, one per spatial axis)")
    return tuple(vals)


def _same_both(vals: tuple[int, ...], name: str) -> int:
    if len(set(vals)) != 1:
        raise Unsupported(f"a different {name} per spatial axis ({vals}); use one {name} for both")
    return vals[0]


def _spatial(x: Node, nd: int, what: str) -> None:
    if nd not in (1, 2):
        raise Unsupported(f"{nd}-D {what} (dlmath covers 1-D and 2-D)")
    if x.ndim < nd + 1:
        raise Unsupported(f"{what} of an input of shape {tuple(x.shape)}")


def _as_2d(x: Node) -> Node:
    """(..., C, L) as the image (..., C, 1, L)."""
    return reshape(x, x.shape[:-1] + (sp.S.One, x.shape[-1]))


def _padded(x: Node, pads: tuple[int, ...]) -> Node:
    """Zero padding of the last len(pads) axes, ``pads[i]`` on both sides of each."""
    from ..tensor import pad

    k = len(pads)
    for i, p in enumerate(pads):
        if p:
            ax = x.ndim - k + i
            x = pad(x, ax, p, x.shape[ax] + 2 * p)
    return x


@rule("convolution")
def _convolution(x: Node, w: Node, b: Node | None = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
                 transposed: bool = False, output_padding: Any = 0, groups: int = 1) -> Node:
    if transposed:
        raise Unsupported("transposed convolution")
    return _conv(x, w, b, stride, padding, dilation, groups)


@rule("conv2d", "conv1d", "conv2d.padding", "conv1d.padding")
def _conv(x: Node, w: Node, b: Node | None = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
          groups: int = 1) -> Node:
    from ..tensor import Unfold

    nd = w.ndim - 2
    _spatial(x, nd, "convolution")
    if groups != 1:
        raise Unsupported(f"grouped convolution (groups={groups})")
    ks = [as_expr(k) for k in w.shape[2:]]
    if not all(k.is_Integer for k in ks):
        raise Unsupported("a convolution kernel of dynamic size")
    S, D = _pair(stride, nd, "stride"), _pair(dilation, nd, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            P: tuple[int, ...] = (0,) * nd
        elif padding == "same" and all(s == 1 for s in S):
            tot = [d * (int(k) - 1) for d, k in zip(D, ks)]
            if any(t % 2 for t in tot):
                raise Unsupported("padding='same' with an even kernel (torch pads one side more)")
            P = tuple(t // 2 for t in tot)
        else:
            raise Unsupported(f"padding={padding!r}")
    else:
        P = _pair(padding, nd, "padding")
    if nd == 1:
        x, w = _as_2d(x), _as_2d(w)
        S, D, P = (1, *S), (1, *D), (0, *P)
    s = S[1] if nd == 1 else _same_both(S, "stride")
    d = D[1] if nd == 1 else _same_both(D, "dilation")
    if len(set(P)) == 1:
        U = Unfold(x, (int(w.shape[2]), int(w.shape[3])), s, P[0], d)
    else:  # a different padding per axis: the zeros explicitly, then the windows
        U = Unfold(_padded(x, P), (int(w.shape[2]), int(w.shape[3])), s, 0, d)
    lead = tuple(f"n{i}" for i in range(U.ndim - 5))
    z = einsum([("o", "c", "i", "j"), lead + ("c", "i", "j", "p", "q")], lead + ("o", "p", "q"), [w, U])
    if b is not None:
        z = elementwise(a0 + a1, z, reshape(b, (b.shape[0], sp.S.One, sp.S.One)))
    return reshape(z, z.shape[:-2] + z.shape[-1:]) if nd == 1 else z


def _pool(kind: str, x: Node, kernel: Any, stride: Any, padding: Any, dilation: Any = 1,
          ceil_mode: bool = False) -> Node:
    import math as _math

    from ..tensor import Max, Unfold

    nd = len(kernel) if isinstance(kernel, (list, tuple)) else 2
    _spatial(x, nd, f"{kind} pooling")
    K = _pair(kernel, nd, "kernel_size")
    S = K if stride in (None, [], ()) else _pair(stride, nd, "stride")
    P, D = _pair(padding, nd, "padding"), _pair(dilation, nd, "dilation")
    if ceil_mode:
        raise Unsupported(f"{kind} pooling with ceil_mode=True")
    if nd == 1:
        x = _as_2d(x)
        K, S, P, D = (1, *K), (1, *S), (0, *P), (1, *D)
    s = S[1] if nd == 1 else _same_both(S, "stride")
    d = D[1] if nd == 1 else _same_both(D, "dilation")
    p = P[1] if nd == 1 else _same_both(P, "padding")
    if nd == 1 and p:
        raise Unsupported(f"1-D {kind} pooling with padding")
    # max pooling pads with -infinity (a padded entry never wins), average pooling with zeros (counted)
    U = Unfold(x, (K[0], K[1]), s, p, d, flat=True, fill=-_math.inf if kind == "max" else 0.0)
    out = Max(U, U.ndim - 3) if kind == "max" else _mean(U, [U.ndim - 3])
    return reshape(out, out.shape[:-2] + out.shape[-1:]) if nd == 1 else out


@rule("max_pool2d", "max_pool1d")
def _max_pool(x: Node, kernel: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
              ceil_mode: bool = False) -> Node:
    return _pool("max", x, kernel, stride, padding, dilation, ceil_mode)


@rule("max_pool2d_with_indices")
def _max_pool_indices(x: Node, kernel: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                      ceil_mode: bool = False) -> tuple[Node, None]:
    return (_pool("max", x, kernel, stride, padding, dilation, ceil_mode), None)


@rule("avg_pool2d", "avg_pool1d")
def _avg_pool(x: Node, kernel: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
              count_include_pad: bool = True, divisor_override: Any = None) -> Node:
    if padding not in (0, [0], [0, 0], (0, 0)) and not count_include_pad:
        raise Unsupported("average pooling with count_include_pad=False and padding")
    if divisor_override is not None:
        raise Unsupported("average pooling with divisor_override")
    return _pool("average", x, kernel, stride, padding, 1, ceil_mode)
