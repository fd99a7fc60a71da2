"""Elementwise maps: a scalar SymPy expression applied to tensors of one shape, fused and simplified as
they are built; their derivatives come from ``sympy.diff`` of the scalar expression."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sympy as sp

from ..functions import SCALAR_FUNCTIONS
from .base import Node, Shape, ShapeError, UnsupportedError, _intern, _key, as_expr, as_number, fmt_shape
from .leaves import Const, Var, is_zero

# --------------------------------------------------------------------------------------------------
# Elementwise maps
# --------------------------------------------------------------------------------------------------

ARG = [sp.Symbol(f"_a{i}", real=True) for i in range(64)]
_TMP = [sp.Symbol(f"_t{i}", real=True) for i in range(256)]


def check_scalar(fn: sp.Expr, where: str = "an equation") -> None:
    """Raise :class:`UnsupportedError` if ``fn`` uses a function dlmath cannot differentiate and lower."""
    from ..functions import ActivationBase

    for f in sp.preorder_traversal(fn):
        if not (isinstance(f, (sp.Function, sp.Max, sp.Min)) or f.is_Function):
            continue
        if type(f) not in SCALAR_FUNCTIONS and not isinstance(f, ActivationBase):
            known = ", ".join(sorted(c.__name__ for c in SCALAR_FUNCTIONS))
            raise UnsupportedError(
                f"{where} uses {type(f).__name__}(), which dlmath cannot differentiate and lower; "
                f"write it with the supported functions: {known}"
            )
    for node in sp.preorder_traversal(fn):
        if isinstance(node, (sp.Derivative, sp.Integral, sp.Piecewise)) or node.is_Relational:
            raise UnsupportedError(f"{where} uses {type(node).__name__}, which dlmath does not support")


@functools.lru_cache(maxsize=20000)
def simplify_scalar(expr: sp.Expr) -> sp.Expr:
    """The shortest of a few SymPy normal forms (as written, cancelled, cancelled and factored)."""
    if expr.is_Atom:
        return expr
    cands = [expr]
    try:
        c = sp.cancel(expr)
        cands += [c, sp.factor_terms(c)]
        if not c.has(sp.Function):
            cands.append(sp.factor(c))
    except (sp.PolynomialError, TypeError, ValueError):
        pass
    return min(cands, key=lambda e: (sp.count_ops(e), len(str(e))))


class Map(Node):
    """Elementwise ``fn(args...)``; every arg has the map's shape or is a scalar (shape ``()``)."""

    kind = "map"
    fn: sp.Expr
    args: tuple[Node, ...]

    def children(self) -> tuple[Node, ...]:
        return self.args

    def with_children(self, children: Sequence[Node]) -> Node:
        return map_(self.fn, children, self.shape)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        res: list[Node | None] = []
        for k, a in enumerate(self.args):
            d = derivative(self.fn, k, len(self.args), isinstance(out, Var))
            contrib = map_(ARG[0] * d.xreplace(_shift(len(self.args))), [g, *self.args, out], self.shape)
            if a.shape != self.shape:  # a broadcast scalar collects the sum
                contrib = sum_all(contrib)
            res.append(contrib)
        return res

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        terms: list[Node] = []
        nt = len(tshape)
        for k, (a, t) in enumerate(zip(self.args, tangents)):
            if is_zero(t):
                continue
            assert t is not None
            d = derivative(self.fn, k, len(self.args), isinstance(out, Var))
            dk = map_(d, [*self.args, out], self.shape)
            o = tuple(range(self.ndim))
            tl = tuple(range(100, 100 + nt))
            a_l = o if a.shape == self.shape else ()
            terms.append(einsum([o, a_l + tl], o + tl, [dk, t], dims=_dims(o + tl, self.shape + tshape)))
        return add_all(terms, self.shape + tshape)

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return printer.map_latex(self, args)

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        return ctx.map_code(self, args)


def _shift(n: int) -> dict[sp.Symbol, sp.Symbol]:
    """Renumber arg symbols 0..n (args, then the output) to 1..n+1, making room for the adjoint."""
    return {ARG[i]: ARG[i + 1] for i in range(n + 1)}


@functools.lru_cache(maxsize=20000)
def _derivative(fn: sp.Expr, k: int, nargs: int, use_out: bool) -> sp.Expr:
    d = sp.diff(fn, ARG[k])
    if use_out and not fn.is_Symbol:
        # express f' through the named output where f itself reappears (sigma' = y(1 - y), exp' = y)
        d = d.subs(fn, ARG[nargs])
    return simplify_scalar(d)


def derivative(fn: sp.Expr, k: int, nargs: int, use_out: bool) -> sp.Expr:
    """``d fn / d arg_k`` in the args ``ARG[:nargs]``; with ``use_out``, ``ARG[nargs]`` is the output."""
    return _derivative(fn, k, nargs, use_out)


def map_(fn: sp.Expr, args: Sequence[Node], shape: Shape | None = None) -> Node:
    """Elementwise map ``fn(args)`` (``fn`` written in ``ARG[0..]``), fused with elementwise args.

    Arguments that are themselves maps are inlined, constants substituted, duplicates merged, and the
    scalar expression simplified; a map that reduces to one of its args returns that arg.
    """
    fn = as_expr(fn)
    if shape is None:
        shapes = {a.shape for a in args if a.shape != ()}
        if len(shapes) > 1:
            raise ShapeError("elementwise operands have different shapes: "
                             + " and ".join(fmt_shape(s) for s in shapes))
        shape = shapes.pop() if shapes else ()
    leaves: list[Node] = []
    index: dict[Node, sp.Symbol] = {}

    def leaf(n: Node) -> sp.Symbol:
        if n not in index:
            index[n] = _TMP[len(leaves)]
            leaves.append(n)
        return index[n]

    subs: dict[sp.Symbol, sp.Expr] = {}
    for i, a in enumerate(args):
        if a.shape != shape and a.shape != ():
            raise ShapeError(f"elementwise operand of shape {fmt_shape(a.shape)} does not fit the "
                             f"result shape {fmt_shape(shape)}")
        if ARG[i] not in fn.free_symbols:
            continue
        if isinstance(a, Const):
            subs[ARG[i]] = a.value
        elif isinstance(a, Map):
            subs[ARG[i]] = a.fn.xreplace({ARG[j]: leaf(b) for j, b in enumerate(a.args)})
        elif _is_broadcast_of_map(a):
            # B(f(x, y)) = f(B(x), B(y)): broadcasts move onto the leaves, so that relations between
            # named quantities (zbar = z_c / sigma) stay visible to the simplifier
            assert isinstance(a, Einsum)
            inner = a.operands[0]
            assert isinstance(inner, Map)
            bl = {ARG[j]: (leaf(_rebroadcast(a, b)) if b.shape else leaf(b)) for j, b in enumerate(inner.args)}
            subs[ARG[i]] = a.coef * inner.fn.xreplace(bl)
        elif isinstance(a, Einsum) and a.coef != 1:
            # the scalar of a contraction moves into the map, where it simplifies and prints with its sign
            unit = einsum(a.ins, a.out, a.operands, dims=a.index_dims())
            subs[ARG[i]] = a.coef * leaf(unit)
        else:
            subs[ARG[i]] = leaf(a)
    body = fn.xreplace(subs)
    body = body.xreplace({_TMP[j]: ARG[j] for j in range(len(leaves))})
    body = simplify_scalar(body)
    used = [j for j in range(len(leaves)) if ARG[j] in body.free_symbols]
    if len(used) != len(leaves):
        body = body.xreplace({ARG[j]: ARG[i] for i, j in enumerate(used)})
        leaves = [leaves[j] for j in used]
    if not leaves:
        return Const(body, shape)
    if body == ARG[0] and leaves[0].shape == shape:
        return leaves[0]
    if len(leaves) == 1 and isinstance(leaves[0], Einsum) and leaves[0].shape == shape:
        c, rest = body.as_independent(ARG[0], as_Add=False)
        if rest == ARG[0]:
            e = leaves[0]
            return einsum(e.ins, e.out, e.operands, dims=e.index_dims(), coef=e.coef * c)
    args_t = tuple(leaves)

    def init(n: Any) -> None:
        n.fn, n.args, n.shape = body, args_t, shape

    return _intern(Map, (body, _key(args_t), shape), init)


def _is_broadcast_of_map(a: Node) -> bool:
    """A single-operand contraction that only adds (broadcast) axes to an elementwise map."""
    if not (isinstance(a, Einsum) and len(a.operands) == 1 and isinstance(a.operands[0], Map)):
        return False
    (l,) = a.ins
    return len(set(l)) == len(l) and set(l) <= set(a.out) and len(a.out) > len(l)


def _rebroadcast(e: Einsum, leaf: Node) -> Node:
    """``leaf`` (shaped like ``e``'s operand) broadcast the way ``e`` broadcasts its operand."""
    return einsum([e.ins[0]], e.out, [leaf], dims=e.index_dims())


def binary(op: Callable[[Any, Any], Any], a: Any, b: Any) -> Node:
    """``op(a, b)`` elementwise with NumPy-style broadcasting of trailing dimensions."""
    a, b = as_node(a), as_node(b)
    if a.shape != b.shape and a.shape != () and b.shape != ():
        shape = a.shape if len(a.shape) >= len(b.shape) else b.shape
        a, b = broadcast_to(a, shape), broadcast_to(b, shape)
    return map_(op(ARG[0], ARG[1]), [a, b])


def as_node(x: Any) -> Node:
    if isinstance(x, Node):
        return x
    if isinstance(x, (int, float, sp.Basic)):
        return Const(as_number(x))
    raise TypeError(f"expected a tensor expression or a number, got {type(x).__name__}")


def apply(fn: sp.Lambda | Callable[[sp.Expr], sp.Expr], x: Node) -> Node:
    """Apply a scalar function (a SymPy ``Lambda`` or a callable on a SymPy symbol) elementwise."""
    expr = fn(ARG[0])
    check_scalar(expr, "this elementwise function")
    return map_(expr, [x])


def add_all(terms: Iterable[Node | None], shape: Shape) -> Node | None:
    ts: list[Node] = []
    for t in terms:
        if is_zero(t):
            continue
        assert t is not None
        if isinstance(t, Map) and t.fn.is_Add and all(a.is_Symbol for a in t.fn.args):
            ts.extend(t.args[ARG.index(a)] for a in t.fn.args)  # flatten nested sums
        else:
            ts.append(t)
    if not ts:
        return None
    # e_i(a) + e_i(b) = e_i(a + b): keep gradients of indexed parameters compact
    groups: dict[tuple[int, int, Any], list[Node]] = {}
    rest: list[Node] = []
    for t in ts:
        if isinstance(t, Embed):
            groups.setdefault((t.axis, t.index, t.size), []).append(t.x)
        else:
            rest.append(t)
    for (axis, index, size), xs in groups.items():
        inner = add_all(xs, xs[0].shape)
        if inner is not None:
            rest.append(embed(inner, axis, index, size))
    ts = rest
    if not ts:
        return None
    if len(ts) == 1:
        return ts[0]
    return map_(sp.Add(*ARG[: len(ts)]), ts, shape)



# the families refer to each other: imported once this module's definitions exist
from .contraction import Einsum, _dims, broadcast_to, einsum, sum_all  # noqa: E402
from .indexing import Embed, embed  # noqa: E402
