"""Tensor expressions over symbolic shapes, and the primitive table.

A tensor expression is a DAG of interned, immutable nodes. Shapes are tuples of SymPy expressions in the
model's dimension symbols, so nothing here depends on numeric sizes. The primitives are

=============  ==================================================================================
``Var``        a named tensor: a parameter, an input, or the left-hand side of an equation
``Const``      a tensor filled with one scalar (which may involve dimensions, e.g. ``1/n``)
``Eye``        the identity matrix of a dimension (seeds Hessians)
``Einsum``     contraction ``coef * sum_{summed} prod_k A_k[...]``: matmul, outer products, transposes,
               sums, traces and broadcasting are all instances
``Map``        elementwise application of a scalar SymPy expression to tensors of one shape
``Softmax`` …  axis primitives: ``Softmax``, ``LogSoftmax``, ``LogSumExp``, ``Max``, ``ArgMaxMask``
``Take``       indexing ``x[..., i, ...]`` along one axis, and its adjoint ``Embed``
``StopGrad``   identity whose derivative is zero
=============  ==================================================================================

Each primitive class holds, in one place, its shape rule, its reverse-mode rule (``vjp``), its
forward-mode rule with a tensor tangent (``jvp``), its LaTeX (``latex``) and its NumPy/PyTorch lowering
(``lower``); :data:`PRIMITIVES` lists them and a test checks every entry is complete. Construction
functions (:func:`map_`, :func:`einsum`, ...) simplify as they build: elementwise maps fuse and their
scalar expression is simplified by SymPy, constants fold, identities contract away, and sums of a
probability vector are 1. That is what turns the generic rules into the book's closed forms.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeAlias

import sympy as sp

from .functions import SCALAR_FUNCTIONS

Dim: TypeAlias = sp.Expr
Shape: TypeAlias = tuple[sp.Expr, ...]
Label: TypeAlias = Any  # einsum index labels: ints after canonicalisation, any hashable while building


class ShapeError(ValueError):
    """Shapes do not fit; the message names both shapes."""


class UnsupportedError(ValueError):
    """A construct dlmath cannot differentiate or lower; the message names it."""


def fmt_shape(shape: Shape) -> str:
    """``(n, p)`` style text of a shape."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


# --------------------------------------------------------------------------------------------------
# Nodes (hash-consed: structurally equal nodes are the same object)
# --------------------------------------------------------------------------------------------------

_INTERN: dict[tuple[Any, ...], Node] = {}
_SERIAL = itertools.count()


class Node:
    """Base of all tensor expressions. Nodes are immutable and interned (``a == b`` iff ``a is b``)."""

    shape: Shape
    serial: int
    kind: ClassVar[str] = "node"

    def children(self) -> tuple[Node, ...]:
        return ()

    def with_children(self, children: Sequence[Node]) -> Node:
        """This node rebuilt on new children (through the simplifying constructors)."""
        return self

    # -- rules; every primitive overrides these --------------------------------------------------
    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        """Adjoint contributions to each child, given the adjoint ``g`` of this node.

        ``out`` stands for this node's value (a ``Var`` when the node is a named equation), so that
        rules such as ``sigma' = sigma (1 - sigma)`` are written in terms of the named output.
        """
        raise NotImplementedError

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        """Tangent of this node (shape ``self.shape + tshape``) from the children's tangents."""
        raise NotImplementedError

    def latex(self, args: Sequence[str], printer: Any) -> str:
        raise NotImplementedError

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        raise NotImplementedError

    @property
    def ndim(self) -> int:
        return len(self.shape)

    # -- operator sugar for writing models --------------------------------------------------------
    def __add__(self, other: Any) -> Node:
        return binary(lambda a, b: a + b, self, other)

    def __radd__(self, other: Any) -> Node:
        return binary(lambda a, b: a + b, other, self)

    def __sub__(self, other: Any) -> Node:
        return binary(lambda a, b: a - b, self, other)

    def __rsub__(self, other: Any) -> Node:
        return binary(lambda a, b: a - b, other, self)

    def __mul__(self, other: Any) -> Node:
        return binary(lambda a, b: a * b, self, other)

    def __rmul__(self, other: Any) -> Node:
        return binary(lambda a, b: a * b, other, self)

    def __truediv__(self, other: Any) -> Node:
        return binary(lambda a, b: a / b, self, other)

    def __rtruediv__(self, other: Any) -> Node:
        return binary(lambda a, b: a / b, other, self)

    def __neg__(self) -> Node:
        return map_(-ARG[0], [self])

    def __pow__(self, k: Any) -> Node:
        if isinstance(k, Node):
            return binary(lambda a, b: a**b, self, k)
        return map_(ARG[0] ** sp.sympify(k), [self])

    def __rpow__(self, base: Any) -> Node:
        return binary(lambda a, b: a**b, base, self)

    def __matmul__(self, other: Node) -> Node:
        return matmul(self, other)

    @property
    def T(self) -> Node:
        if self.ndim != 2:
            raise ShapeError(f".T needs a matrix, got shape {fmt_shape(self.shape)}")
        return einsum([(0, 1)], (1, 0), [self])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {fmt_shape(self.shape)}>"

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other


def _intern(cls: type, key: tuple[Any, ...], init: Callable[[Any], None]) -> Any:
    full = (cls, *key)
    node: Any = _INTERN.get(full)
    if node is None:
        node = object.__new__(cls)
        init(node)
        node.serial = next(_SERIAL)
        _INTERN[full] = node
    return node


def _key(x: Any) -> Any:
    """Intern key of a field: nodes by identity, tuples recursively."""
    if isinstance(x, Node):
        return ("node", id(x))
    if isinstance(x, tuple):
        return tuple(_key(v) for v in x)
    return x


# --------------------------------------------------------------------------------------------------
# Leaves
# --------------------------------------------------------------------------------------------------


class Var(Node):
    """A named tensor. ``role`` is ``param``, ``input`` or ``var`` (an equation's left-hand side).

    ``batched`` marks a per-sample quantity: the model's equations are written for one sample (as the
    book writes them) and the code generators add a leading sample axis to batched tensors.
    ``domain`` is ``real``, ``unit`` (values in [0, 1]), ``simplex`` (last axis sums to 1),
    ``positive`` or ``mask`` (0/1); it drives simplification and the verifier's strategies.
    """

    kind = "var"
    name: str
    role: str
    tex: str
    batched: bool
    domain: str

    def __new__(
        cls, name: str, shape: Shape, role: str = "var", tex: str | None = None,
        batched: bool = False, domain: str = "real",
    ) -> Var:
        if not name.isidentifier() or name.startswith("__"):
            raise ValueError(f"tensor name {name!r} is not a valid Python identifier")
        shape = tuple(sp.sympify(d) for d in shape)

        def init(n: Any) -> None:
            n.name, n.shape, n.role, n.tex, n.batched, n.domain = (
                name, shape, role, tex if tex is not None else name, batched, domain)

        return _intern(cls, (name, shape, role, tex, batched, domain), init)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return []

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        return None

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return self.tex

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Var {self.name} {fmt_shape(self.shape)}>"


class Const(Node):
    """A tensor of ``shape`` filled with the scalar ``value``."""

    kind = "const"
    value: sp.Expr

    def __new__(cls, value: Any, shape: Shape = ()) -> Const:
        v = sp.sympify(value)
        shape = tuple(sp.sympify(d) for d in shape)

        def init(n: Any) -> None:
            n.value, n.shape = v, shape

        return _intern(cls, (v, shape), init)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return []

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        return None

    def latex(self, args: Sequence[str], printer: Any) -> str:
        v = sp.latex(self.value)
        if not self.shape:
            return v
        if self.value == 0:
            return r"\mathbf{0}"
        return r"\mathbf{1}" if self.value == 1 else rf"{v}\,\mathbf{{1}}"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        return ctx.const(self)


class Eye(Node):
    """The identity matrix of one dimension."""

    kind = "eye"

    def __new__(cls, dim: Dim) -> Eye:
        d = sp.sympify(dim)

        def init(n: Any) -> None:
            n.shape = (d, d)

        return _intern(cls, (d,), init)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return []

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        return None

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return "I"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        return ctx.eye(self)


class CausalMask(Node):
    """The additive causal mask M of shape (T_q, T_k): 0 where key k <= query q, -infinity above (the
    scores of future steps are set to -infinity before the softmax, §7.5)."""

    kind = "causal_mask"

    def __new__(cls, tq: Dim, tk: Dim) -> CausalMask:
        shape = (sp.sympify(tq), sp.sympify(tk))

        def init(n: Any) -> None:
            n.shape = shape

        return _intern(cls, shape, init)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return []

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        return None

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return r"M_{\mathrm{causal}}"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        return ctx.causal_mask(self)


class IndexGrid(Node):
    """The tensor whose entries are their own index along ``axis`` (0, 1, 2, ...): positions and
    frequencies in closed-form tables such as the positional encoding (7.29)."""

    kind = "index_grid"
    axis: int
    letter: str

    def __new__(cls, shape: Shape, axis: int, letter: str = "i") -> IndexGrid:
        shape = tuple(sp.sympify(d) for d in shape)

        def init(n: Any) -> None:
            n.shape, n.axis, n.letter = shape, axis, letter

        return _intern(cls, (shape, axis, letter), init)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return []

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        return None

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return self.letter

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        shape = "(" + ", ".join(ctx.dim(d) for d in self.shape) + ("," if self.ndim == 1 else "") + ")"
        return f"ops.index_grid({shape}, {self.axis}, {ctx.ref})"


def zeros(shape: Shape) -> Const:
    return Const(0, shape)


def is_zero(x: Node | None) -> bool:
    return x is None or (isinstance(x, Const) and x.value == 0)


# --------------------------------------------------------------------------------------------------
# Elementwise maps
# --------------------------------------------------------------------------------------------------

ARG = [sp.Symbol(f"_a{i}", real=True) for i in range(64)]
_TMP = [sp.Symbol(f"_t{i}", real=True) for i in range(256)]


def check_scalar(fn: sp.Expr, where: str = "an equation") -> None:
    """Raise :class:`UnsupportedError` if ``fn`` uses a function dlmath cannot differentiate and lower."""
    from .functions import ActivationBase

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
    fn = sp.sympify(fn)
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
        return Const(sp.nsimplify(x) if isinstance(x, float) else x)
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


# --------------------------------------------------------------------------------------------------
# Contractions
# --------------------------------------------------------------------------------------------------


def _dims(labels: Sequence[Label], shape: Shape) -> dict[Label, Dim]:
    return dict(zip(labels, shape))


class Einsum(Node):
    """``coef * sum over labels not in out of prod_k operands[k][ins[k]]``, output indexed by ``out``.

    Labels that appear only in ``out`` broadcast (their sizes are kept in ``dims``).
    """

    kind = "einsum"
    ins: tuple[tuple[int, ...], ...]
    out: tuple[int, ...]
    operands: tuple[Node, ...]
    dims: tuple[Dim, ...]
    coef: sp.Expr

    def children(self) -> tuple[Node, ...]:
        return self.operands

    def with_children(self, children: Sequence[Node]) -> Node:
        return einsum(self.ins, self.out, children, dims=self.index_dims(), coef=self.coef)

    def index_dims(self) -> dict[Label, Dim]:
        return dict(enumerate(self.dims))

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        res: list[Node | None] = []
        for k in range(len(self.operands)):
            ins = [l for j, l in enumerate(self.ins) if j != k] + [self.out]
            ops = [o for j, o in enumerate(self.operands) if j != k] + [g]
            dims = self.index_dims()
            target: list[Any] = []
            for pos, lab in enumerate(self.ins[k]):
                if lab in target:  # a repeated index (a diagonal, a trace): the adjoint is diagonal there
                    fresh = ("_diag", k, pos)
                    dims[fresh] = dims[lab]
                    ins.append((lab, fresh))  # type: ignore[arg-type]
                    ops.append(Eye(dims[lab]))
                    target.append(fresh)
                else:
                    target.append(lab)
            res.append(einsum(ins, tuple(target), ops, dims=dims, coef=self.coef))
        return res

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        tl = tuple(range(len(self.dims), len(self.dims) + len(tshape)))
        dims = self.index_dims() | _dims(tl, tshape)
        terms = []
        for k, t in enumerate(tangents):
            if is_zero(t):
                continue
            ins = [l + tl if j == k else l for j, l in enumerate(self.ins)]
            ops: list[Node] = [t if (j == k and t is not None) else o for j, o in enumerate(self.operands)]
            terms.append(einsum(ins, self.out + tl, ops, dims=dims, coef=self.coef))
        return add_all(terms, self.shape + tshape)

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return printer.einsum_latex(self, args)

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        return ctx.einsum_code(self, args)


def einsum(
    ins: Sequence[Sequence[Label]],
    out: Sequence[Label],
    operands: Sequence[Node],
    dims: dict[Label, Dim] | None = None,
    coef: Any = 1,
) -> Node:
    """Build (and simplify) a contraction. Labels may be any hashable; ``dims`` gives sizes of labels
    that appear only in ``out`` (broadcast axes)."""
    ins_l = [tuple(l) for l in ins]
    out_t = tuple(out)
    ops = list(operands)
    coef = sp.sympify(coef)
    if len(ins_l) != len(ops):
        raise ShapeError(f"einsum has {len(ins_l)} index groups for {len(ops)} operands")
    size: dict[Label, Dim] = dict(dims or {})
    for l, o in zip(ins_l, ops):
        if len(l) != o.ndim:
            raise ShapeError(f"einsum indices {l} do not fit an operand of shape {fmt_shape(o.shape)}")
        for lab, d in zip(l, o.shape):
            if lab in size and sp.simplify(size[lab] - d) != 0:
                raise ShapeError(f"einsum index {lab!r} has size {size[lab]} in one operand and {d} in "
                                 f"another (operand shape {fmt_shape(o.shape)})")
            size[lab] = d
    for lab in out_t:
        if lab not in size:
            raise ShapeError(f"einsum output index {lab!r} has no size")
    if len(set(out_t)) != len(out_t):
        raise ShapeError(f"einsum output indices {out_t} repeat")
    fresh = itertools.count()

    def new_label() -> tuple[str, int]:
        return ("_f", next(fresh))

    changed = True
    while changed:
        changed = False
        for k, (l, o) in enumerate(zip(ins_l, ops)):
            elsewhere = set(out_t).union(*(set(m) for j, m in enumerate(ins_l) if j != k))
            if isinstance(o, Const):
                coef *= o.value
                for lab in set(l) - elsewhere:
                    coef *= size[lab]
                del ins_l[k], ops[k]
                changed = True
                break
            if isinstance(o, Einsum) and not _flattens(o) and o.coef != 1:
                # a nested contraction stays a node, but its scalar moves out to the parent
                coef *= o.coef
                ops[k] = einsum(o.ins, o.out, o.operands, dims=o.index_dims())
                changed = True
                break
            if isinstance(o, Einsum) and _flattens(o):
                ren: dict[int, Label] = {}
                for pos, lab in enumerate(o.out):
                    ren[lab] = l[pos]
                for lab in range(len(o.dims)):
                    if lab not in ren:
                        ren[lab] = new_label()
                        size[ren[lab]] = o.dims[lab]
                coef *= o.coef
                new_ins = [tuple(ren[x] for x in m) for m in o.ins]
                ins_l[k : k + 1] = new_ins
                ops[k : k + 1] = list(o.operands)
                changed = True
                break
            if isinstance(o, Eye):
                a, b = l
                if a == b:
                    del ins_l[k], ops[k]
                    if a not in elsewhere:
                        coef *= size[a]
                    changed = True
                    break
                if any(a in m and b in m for j, m in enumerate(ins_l) if j != k):
                    continue
                if a in out_t and b in out_t:
                    continue
                keep, drop = (a, b) if (b not in out_t) else (b, a)
                del ins_l[k], ops[k]
                ins_l = [tuple(keep if x == drop else x for x in m) for m in ins_l]
                out_t = tuple(keep if x == drop else x for x in out_t)
                changed = True
                break
            if isinstance(o, Map) and len(o.args) >= 1:
                c, rest = o.fn.as_independent(*ARG[: len(o.args)], as_Add=False)
                if c != 1 and rest != o.fn:
                    coef *= c
                    ops[k] = map_(rest, o.args, o.shape)
                    changed = True
                    break
            if isinstance(o, Var) and o.domain == "simplex" and l:
                last = l[-1]
                if last not in elsewhere and l.count(last) == 1:
                    for lab in set(l[:-1]) - elsewhere:
                        coef *= size[lab]
                    del ins_l[k], ops[k]
                    changed = True
                    break
        if changed:
            continue
        # Hadamard products: operands indexed identically become one elementwise map
        seen: dict[tuple[Label, ...], int] = {}
        for k, l in enumerate(ins_l):
            if l in seen and len(set(l)) == len(l) and (isinstance(ops[k], Map) or isinstance(ops[seen[l]], Map)):
                j = seen[l]
                merged = map_(ARG[0] * ARG[1], [ops[j], ops[k]])
                if _fewer_leaves(merged, ops[j], ops[k]):
                    ops[j] = merged
                    del ins_l[k], ops[k]
                    changed = True
                    break
            seen[l] = k
    split = _split_sums(ins_l, out_t, ops, size, coef)
    if split is not None:
        return split
    coef = sp.simplify(coef) if coef.free_symbols else coef
    out_shape = tuple(size[l] for l in out_t)
    if coef == 0:
        return zeros(out_shape)
    if not ops:
        return Const(coef, out_shape)
    if len(ops) == 1 and ins_l[0] == out_t:
        return map_(coef * ARG[0], ops, out_shape) if coef != 1 else ops[0]
    # canonical labels: 0, 1, ... by first appearance
    canon: dict[Label, int] = {}
    for lab in itertools.chain(*ins_l, out_t):
        canon.setdefault(lab, len(canon))
    c_ins = tuple(tuple(canon[x] for x in l) for l in ins_l)
    c_out = tuple(canon[x] for x in out_t)
    c_dims = tuple(size[lab] for lab in canon)
    ops_t = tuple(ops)

    def init(n: Any) -> None:
        n.ins, n.out, n.operands, n.dims, n.coef, n.shape = c_ins, c_out, ops_t, c_dims, coef, out_shape

    return _intern(Einsum, (c_ins, c_out, _key(ops_t), c_dims, coef), init)


def _flattens(o: Einsum) -> bool:
    """Whether a nested contraction is merged into its parent: when it only multiplies and broadcasts (no
    sum of its own), or holds an identity to contract away. A nested product with its own sum (U V^T) stays
    a node, so that it is computed once and shared."""
    inner_sums = {l for ls in o.ins for l in ls} - set(o.out)
    return not inner_sums or any(isinstance(x, (Eye, Const)) for x in o.operands)


def _constant_along(a: Node, pos: int) -> Node | None:
    """If elementwise operand ``a`` is constant along its axis ``pos`` (a broadcast there, or a scalar),
    the operand without that axis; else ``None``."""
    if a.ndim == 0:
        return a
    if isinstance(a, Const):
        return Const(a.value, a.shape[:pos] + a.shape[pos + 1 :])
    if isinstance(a, Einsum):
        lab = a.out[pos]
        if all(lab not in l for l in a.ins):
            return einsum(a.ins, a.out[:pos] + a.out[pos + 1 :], a.operands, dims=a.index_dims(), coef=a.coef)
    return None


def _centered(n: Node, pos: int) -> bool:
    """Whether ``n`` sums to zero along its axis ``pos`` (declared through its domain)."""
    return isinstance(n, Var) and n.domain == f"centered:{pos}"


def _split_sums(ins_l: list[tuple[Label, ...]], out_t: tuple[Label, ...], ops: list[Node],
                size: dict[Label, Dim], coef: sp.Expr) -> Node | None:
    """Sums of elementwise products: pull factors that are constant along the summed index out of the
    sum, split sums of sums (linearity) where that lets a term vanish, and drop sums of centered tensors.
    Returns the rewritten contraction, or ``None`` when nothing applies."""
    for k, (l, o) in enumerate(zip(ins_l, ops)):
        others = set(out_t).union(*(set(m) for j, m in enumerate(ins_l) if j != k))
        summed = [p for p, lab in enumerate(l) if lab not in others and l.count(lab) == 1]
        if not summed:
            continue
        for p in summed:
            if _centered(o, p):
                return zeros(tuple(size[x] for x in out_t))
        if not isinstance(o, Map):
            continue
        terms = sp.Add.make_args(sp.expand(o.fn)) if o.fn.is_Add else None
        if terms is not None and len(terms) > 1:
            parts = [einsum(ins_l, out_t, ops[:k] + [map_(t, o.args, o.shape)] + ops[k + 1 :], dims=size, coef=coef)
                     for t in terms]
            if any(is_zero(x) for x in parts) or any(_pulled(x, ops) for x in parts):
                return add_all(parts, tuple(size[x] for x in out_t)) or zeros(tuple(size[x] for x in out_t))
            continue
        for p in summed:
            const_args = {i: _constant_along(a, p) for i, a in enumerate(o.args)}
            factors = sp.Mul.make_args(o.fn)
            inside: list[sp.Expr] = []
            outside: list[sp.Expr] = []
            for f in factors:
                syms = [i for i in range(len(o.args)) if ARG[i] in f.free_symbols]
                (outside if syms and all(const_args[i] is not None for i in syms) else inside).append(f)
            if not outside or not inside:
                continue
            out_fn = sp.Mul(*outside)
            used = sorted({i for i in range(len(o.args)) if ARG[i] in out_fn.free_symbols})
            reduced = [const_args[i] for i in used]
            out_fn = out_fn.xreplace({ARG[i]: ARG[j] for j, i in enumerate(used)})
            lab_out = l[:p] + l[p + 1 :]
            shape_out = tuple(size[x] for x in lab_out)
            outer_op = map_(out_fn, [r for r in reduced if r is not None], shape_out)
            inner_op = map_(sp.Mul(*inside), o.args, o.shape)
            return einsum(ins_l[:k] + [l, lab_out] + ins_l[k + 1 :], out_t,
                          ops[:k] + [inner_op, outer_op] + ops[k + 1 :], dims=size, coef=coef)
    return None


def _pulled(x: Node | None, before: list[Node]) -> bool:
    return isinstance(x, Einsum) and len(x.operands) > len(before)


def _leaves(n: Node) -> int:
    return len(n.args) if isinstance(n, Map) else 1


def _fewer_leaves(merged: Node, a: Node, b: Node) -> bool:
    """Merging two Hadamard factors pays only when the product simplifies (shares or cancels leaves)."""
    if not isinstance(merged, Map):
        return True
    return len(merged.args) < _leaves(a) + _leaves(b) or (
        sp.count_ops(merged.fn) < sum(sp.count_ops(x.fn) for x in (a, b) if isinstance(x, Map)) + 1)


def broadcast_to(x: Node, shape: Shape) -> Node:
    """Broadcast ``x`` to ``shape`` (its shape must be a trailing part of ``shape``, NumPy style)."""
    if x.shape == shape:
        return x
    k = len(shape) - x.ndim
    if k < 0 or tuple(shape[k:]) != x.shape:
        raise ShapeError(f"cannot broadcast shape {fmt_shape(x.shape)} to {fmt_shape(shape)}: "
                         "the smaller shape must match the trailing dimensions")
    labels = tuple(range(len(shape)))
    return einsum([labels[k:]], labels, [x], dims=_dims(labels, shape))


def sum_all(x: Node) -> Node:
    return einsum([tuple(range(x.ndim))], (), [x])


def sum_(x: Node, axis: int | Sequence[int] | None = None) -> Node:
    """Sum over ``axis`` (all axes by default)."""
    axes = _axes(x, axis)
    labels = tuple(range(x.ndim))
    return einsum([labels], tuple(l for l in labels if l not in axes), [x])


def mean(x: Node, axis: int | Sequence[int] | None = None) -> Node:
    """Mean over ``axis`` (all axes by default)."""
    axes = _axes(x, axis)
    n = sp.Mul(*(x.shape[a] for a in axes))
    labels = tuple(range(x.ndim))
    return einsum([labels], tuple(l for l in labels if l not in axes), [x], coef=1 / n)


def _axes(x: Node, axis: int | Sequence[int] | None) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(x.ndim))
    axs = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(_axis(x, a) for a in axs)


def _axis(x: Node, axis: int) -> int:
    if not -x.ndim <= axis < max(x.ndim, 1):
        raise ShapeError(f"axis {axis} is out of range for shape {fmt_shape(x.shape)}")
    return axis % x.ndim if x.ndim else 0


def matmul(a: Node, b: Node) -> Node:
    """Matrix-matrix, matrix-vector, vector-matrix or vector-vector product."""
    if a.ndim not in (1, 2) or b.ndim not in (1, 2):
        raise ShapeError(f"@ takes vectors and matrices, got {fmt_shape(a.shape)} @ {fmt_shape(b.shape)}")
    if sp.simplify(a.shape[-1] - b.shape[0]) != 0:
        raise ShapeError(f"@ needs the inner dimensions to agree: {fmt_shape(a.shape)} @ {fmt_shape(b.shape)}")
    la = ("i", "k") if a.ndim == 2 else ("k",)
    lb = ("k", "j") if b.ndim == 2 else ("k",)
    out = tuple(x for x in la[:-1] + lb[1:])
    return einsum([la, lb], out, [a, b])


def dot(a: Node, b: Node) -> Node:
    """Inner product of two vectors, ``a^T b``."""
    return matmul(a, b)


def outer(a: Node, b: Node) -> Node:
    """Outer product ``a b^T`` of two vectors."""
    return einsum([("i",), ("j",)], ("i", "j"), [a, b])


# --------------------------------------------------------------------------------------------------
# Axis primitives
# --------------------------------------------------------------------------------------------------


class AxisOp(Node):
    """A primitive acting along one axis of one tensor."""

    x: Node
    axis: int
    keeps_axis: ClassVar[bool] = True

    def __new__(cls, x: Node, axis: int = -1) -> Any:
        ax = _axis(x, axis)
        shape = x.shape if cls.keeps_axis else x.shape[:ax] + x.shape[ax + 1 :]

        def init(n: Any) -> None:
            n.x, n.axis, n.shape = x, ax, shape

        return _intern(cls, (("node", id(x)), ax), init)

    def children(self) -> tuple[Node, ...]:
        return (self.x,)

    def with_children(self, children: Sequence[Node]) -> Node:
        return type(self)(children[0], self.axis)

    def _code_axis(self) -> int:
        """The axis counted from the end: valid with or without a leading batch axis."""
        return self.axis - self.x.ndim


def _spread(t: Node, like: Node, axis: int) -> Node:
    """Broadcast ``t`` (``like`` without ``axis``, plus trailing tangent axes) back along ``axis``."""
    labels = tuple(range(t.ndim + 1))
    src = labels[:axis] + labels[axis + 1 :]
    shape = t.shape[:axis] + (like.shape[axis],) + t.shape[axis:]
    return einsum([src], labels, [t], dims=_dims(labels, shape))


def _contract_axis(a: Node, t: Node, axis: int) -> Node:
    """``sum_axis a * t`` where ``t`` may carry trailing tangent axes beyond ``a``'s."""
    la = tuple(range(a.ndim))
    lt = tuple(range(t.ndim))
    out = tuple(l for l in lt if l != axis)
    return einsum([la, lt], out, [a, t])


def _scale(a: Node, t: Node) -> Node:
    """``a * t`` with ``t`` carrying trailing tangent axes beyond ``a``'s shape."""
    la = tuple(range(a.ndim))
    lt = tuple(range(t.ndim))
    return einsum([la, lt], lt, [a, t])


class Softmax(AxisOp):
    r"""S_softmax(x)_k = e^{x_k} / sum_j e^{x_j} along ``axis``, computed stably."""

    kind = "softmax"

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        s = out
        t = _spread(_contract_axis(s, g, self.axis), s, self.axis)
        return [map_(ARG[0] * (ARG[1] - ARG[2]), [s, g, t])]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        (t,) = tangents
        if is_zero(t):
            return None
        assert t is not None
        s = out
        st = _spread(_contract_axis(s, t, self.axis), t, self.axis)
        return _scale(s, map_(ARG[0] - ARG[1], [t, st]))

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return rf"S_{{\mathrm{{softmax}}}}\left({args[0]}\right)"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        if backend == "torch":
            return f"torch.softmax({args[0]}, dim={self._code_axis()})"
        return f"ops.softmax({args[0]}, axis={self._code_axis()})"


class LogSoftmax(AxisOp):
    r"""log S_softmax(x) = x - LSE(x) along ``axis``, computed stably."""

    kind = "log_softmax"

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        s = map_(sp.exp(ARG[0]), [out])
        total = _spread(sum_(g, self.axis), g, self.axis)
        return [map_(ARG[0] - ARG[1] * ARG[2], [g, s, total])]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        (t,) = tangents
        if is_zero(t):
            return None
        assert t is not None
        s = map_(sp.exp(ARG[0]), [out])
        return map_(ARG[0] - ARG[1], [t, _spread(_contract_axis(s, t, self.axis), t, self.axis)])

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return rf"\log S_{{\mathrm{{softmax}}}}\left({args[0]}\right)"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        if backend == "torch":
            return f"torch.log_softmax({args[0]}, dim={self._code_axis()})"
        return f"ops.log_softmax({args[0]}, axis={self._code_axis()})"


class LogSumExp(AxisOp):
    r"""LSE(x) = log sum_k e^{x_k} along ``axis`` (removed), computed stably."""

    kind = "logsumexp"
    keeps_axis = False

    def _softmax(self, out: Node) -> Node:
        return map_(sp.exp(ARG[0] - ARG[1]), [self.x, _spread(out, self.x, self.axis)])

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return [map_(ARG[0] * ARG[1], [_spread(g, self.x, self.axis), self._softmax(out)])]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        (t,) = tangents
        if is_zero(t):
            return None
        assert t is not None
        return _contract_axis(self._softmax(out), t, self.axis)

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return rf"\operatorname{{LSE}}\left({args[0]}\right)"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        if backend == "torch":
            return f"torch.logsumexp({args[0]}, dim={self._code_axis()})"
        return f"ops.logsumexp({args[0]}, axis={self._code_axis()})"


class ArgMaxMask(AxisOp):
    """One-hot mask of the first maximum along ``axis`` (PyTorch's routing of max's gradient)."""

    kind = "argmax_mask"

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return [None]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        return None

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return rf"\mathbb{{1}}_{{\arg\max}}\left({args[0]}\right)"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        return f"ops.argmax_mask({args[0]}, {self._code_axis()})"


class Max(AxisOp):
    """max_k x_k along ``axis`` (removed); its gradient goes to the first maximum."""

    kind = "max"
    keeps_axis = False

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return [map_(ARG[0] * ARG[1], [_spread(g, self.x, self.axis), ArgMaxMask(self.x, self.axis)])]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        (t,) = tangents
        if is_zero(t):
            return None
        assert t is not None
        return _contract_axis(ArgMaxMask(self.x, self.axis), t, self.axis)

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return rf"\max\left({args[0]}\right)"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        if backend == "torch":
            return f"{args[0]}.amax(dim={self._code_axis()})"
        return f"{args[0]}.max(axis={self._code_axis()})"


class StopGrad(Node):
    """Identity in value, zero in derivative (semi-gradients, targets)."""

    kind = "stop_gradient"
    x: Node

    def __new__(cls, x: Node) -> StopGrad:
        def init(n: Any) -> None:
            n.x, n.shape = x, x.shape

        return _intern(cls, (("node", id(x)),), init)

    def children(self) -> tuple[Node, ...]:
        return (self.x,)

    def with_children(self, children: Sequence[Node]) -> Node:
        return StopGrad(children[0])

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return [None]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        return None

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return rf"\operatorname{{sg}}\left[{args[0]}\right]"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        return f"{args[0]}.detach()" if backend == "torch" else args[0]


class Take(Node):
    """``x`` at position ``index`` of ``axis`` (the axis is removed); LaTeX is 1-based as in the book."""

    kind = "take"
    x: Node
    axis: int
    index: int

    def __new__(cls, x: Node, axis: int, index: int) -> Take:
        ax = _axis(x, axis)
        if x.shape[ax].is_Integer and not 0 <= index < int(x.shape[ax]):
            raise ShapeError(f"index {index} is out of range for axis {ax} of shape {fmt_shape(x.shape)}")

        def init(n: Any) -> None:
            n.x, n.axis, n.index, n.shape = x, ax, index, x.shape[:ax] + x.shape[ax + 1 :]

        return _intern(cls, (("node", id(x)), ax, index), init)

    def children(self) -> tuple[Node, ...]:
        return (self.x,)

    def with_children(self, children: Sequence[Node]) -> Node:
        return take(children[0], self.axis, self.index)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return [embed(g, self.axis, self.index, self.x.shape[self.axis])]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        (t,) = tangents
        return None if is_zero(t) else take(t, self.axis, self.index)  # type: ignore[arg-type]

    def latex(self, args: Sequence[str], printer: Any) -> str:
        base = args[0]
        if self.x.ndim == 1:
            return f"{base}_{{{self.index + 1}}}"
        return rf"\left[{base}\right]_{{{self.axis + 1}:{self.index + 1}}}"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        ax = self.axis - self.x.ndim
        sl = "..., " + str(self.index) + ", :" * (-ax - 1)
        return f"{args[0]}[{sl}]"


class Embed(Node):
    """The tensor with ``x`` at position ``index`` of a new axis ``axis`` of size ``size``, zeros elsewhere."""

    kind = "embed"
    x: Node
    axis: int
    index: int
    size: Dim

    def __new__(cls, x: Node, axis: int, index: int, size: Dim) -> Embed:
        size = sp.sympify(size)

        def init(n: Any) -> None:
            n.x, n.axis, n.index, n.size = x, axis, index, size
            n.shape = x.shape[:axis] + (size,) + x.shape[axis:]

        return _intern(cls, (("node", id(x)), axis, index, size), init)

    def children(self) -> tuple[Node, ...]:
        return (self.x,)

    def with_children(self, children: Sequence[Node]) -> Node:
        return embed(children[0], self.axis, self.index, self.size)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return [take(g, self.axis, self.index)]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        (t,) = tangents
        return None if is_zero(t) else embed(t, self.axis, self.index, self.size)  # type: ignore[arg-type]

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return rf"e_{{{self.index + 1}}}\left({args[0]}\right)"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        return ctx.embed_code(self, args[0])


def conv_out(size: Dim, k: int, stride: int, padding: int, dilation: int) -> Dim:
    """Output size of a window sweep: floor((H + 2P - D(k - 1) - 1) / S) + 1."""
    return sp.floor((sp.sympify(size) + 2 * padding - dilation * (k - 1) - 1) / stride) + 1


class Unfold(Node):
    r"""The windows of an image: ``x`` of shape (C, H, W) to patches (C, k_h k_w, H', W') with
    ``U(x)[c, i k_w + j, p, q] = x_pad[c, p S + i D, q S + j D]`` (zero padding P, stride S, dilation D).

    A convolution is a contraction of the kernel with these patches; its adjoint :class:`Fold` scatters
    patches back onto the image (the "full convolution" of the backward pass).
    """

    kind = "unfold"
    x: Node
    kernel: tuple[int, int]
    stride: int
    padding: int
    dilation: int

    flat: bool

    fill: float

    def __new__(cls, x: Node, kernel: tuple[int, int], stride: int = 1, padding: int = 0, dilation: int = 1,
                flat: bool = False, fill: float = 0.0) -> Unfold:
        if x.ndim != 3:
            raise ShapeError(f"unfold takes a (C, H, W) image, got shape {fmt_shape(x.shape)}")
        kh, kw = kernel
        C, H, W = x.shape
        oh, ow = conv_out(H, kh, stride, padding, dilation), conv_out(W, kw, stride, padding, dilation)
        win = (sp.Integer(kh * kw),) if flat else (sp.Integer(kh), sp.Integer(kw))

        def init(n: Any) -> None:
            n.x, n.kernel, n.stride, n.padding, n.dilation, n.flat = x, (kh, kw), stride, padding, dilation, flat
            n.fill = float(fill)
            n.shape = (C, *win, oh, ow)

        return _intern(cls, (("node", id(x)), (kh, kw), stride, padding, dilation, flat, float(fill)), init)

    def children(self) -> tuple[Node, ...]:
        return (self.x,)

    def with_children(self, children: Sequence[Node]) -> Node:
        return Unfold(children[0], self.kernel, self.stride, self.padding, self.dilation, self.flat, self.fill)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return [Fold(g, self.x.shape, self.kernel, self.stride, self.padding, self.dilation)]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        (t,) = tangents
        if is_zero(t):
            return None
        if tshape:
            raise UnsupportedError("Hessians through convolutions (unfold with a tangent axis) are not supported")
        assert t is not None
        return Unfold(t, self.kernel, self.stride, self.padding, self.dilation, self.flat)  # tangent pads with 0

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return rf"\mathcal{{U}}\left({args[0]}\right)"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        kh, kw = self.kernel
        fill = "" if self.fill == 0 else f", {'-math.inf' if self.fill == -math.inf else repr(self.fill)}"
        return (f"ops.unfold({args[0]}, ({kh}, {kw}), {self.stride}, {self.padding}, {self.dilation}, "
                f"{self.flat}{fill})")


class Fold(Node):
    r"""The adjoint of :class:`Unfold`: patches (C, k_h k_w, H', W') summed back onto a (C, H, W) image."""

    kind = "fold"
    x: Node
    image: Shape
    kernel: tuple[int, int]
    stride: int
    padding: int
    dilation: int

    def __new__(cls, x: Node, image: Shape, kernel: tuple[int, int], stride: int = 1, padding: int = 0,
                dilation: int = 1) -> Fold:
        image = tuple(sp.sympify(d) for d in image)

        def init(n: Any) -> None:
            n.x, n.image, n.kernel, n.stride, n.padding, n.dilation = x, image, tuple(kernel), stride, padding, dilation
            n.shape = image

        return _intern(cls, (("node", id(x)), image, tuple(kernel), stride, padding, dilation), init)

    def children(self) -> tuple[Node, ...]:
        return (self.x,)

    def with_children(self, children: Sequence[Node]) -> Node:
        return Fold(children[0], self.image, self.kernel, self.stride, self.padding, self.dilation)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return [Unfold(g, self.kernel, self.stride, self.padding, self.dilation, flat=self.x.ndim == 4)]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        (t,) = tangents
        if is_zero(t):
            return None
        if tshape:
            raise UnsupportedError("Hessians through convolutions (fold with a tangent axis) are not supported")
        assert t is not None
        return Fold(t, self.image, self.kernel, self.stride, self.padding, self.dilation)

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return rf"\mathcal{{U}}^{{*}}\left({args[0]}\right)"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        kh, kw = self.kernel
        H, W = (ctx.dim(d) for d in self.image[1:])
        return (f"ops.fold({args[0]}, ({H}, {W}), ({kh}, {kw}), {self.stride}, {self.padding}, {self.dilation}, "
                f"{self.x.ndim == 4})")


def take(x: Node, axis: int, index: int) -> Node:
    if isinstance(x, Embed) and x.axis == _axis(x, axis):
        return x.x if x.index == index else zeros(x.x.shape)
    if isinstance(x, Const):
        return Const(x.value, x.shape[: _axis(x, axis)] + x.shape[_axis(x, axis) + 1 :])
    if isinstance(x, Eye):
        # the index-th unit vector
        return embed(Const(1), 0, index, x.shape[0])
    if isinstance(x, Map) and all(a.shape == x.shape for a in x.args):
        return map_(x.fn, [take(a, axis, index) for a in x.args])
    return Take(x, axis, index)


def embed(x: Node, axis: int, index: int, size: Dim) -> Node:
    if isinstance(x, Const) and x.value == 0:
        return zeros(x.shape[:axis] + (sp.sympify(size),) + x.shape[axis:])
    return Embed(x, axis, index, size)


def softmax(x: Node, axis: int = -1) -> Node:
    """Softmax along ``axis`` (the book's :math:`S_{\\mathrm{softmax}}`)."""
    return Softmax(x, axis)


def log_softmax(x: Node, axis: int = -1) -> Node:
    return LogSoftmax(x, axis)


def logsumexp(x: Node, axis: int = -1) -> Node:
    return LogSumExp(x, axis)


def max_(x: Node, axis: int = -1) -> Node:
    return Max(x, axis)


def stop_gradient(x: Node) -> Node:
    return StopGrad(x)


#: The primitive table: every node type with its rules. A test checks each defines vjp, jvp, latex, lower.
PRIMITIVES: tuple[type[Node], ...] = (
    Var, Const, Eye, CausalMask, Map, Einsum, Softmax, LogSoftmax, LogSumExp, Max, ArgMaxMask, StopGrad, Take, Embed,
    Unfold, Fold, IndexGrid,
)


def walk(roots: Iterable[Node], stop: Callable[[Node], bool] = lambda n: False) -> list[Node]:
    """Nodes reachable from ``roots`` in topological order (children first), not entering ``stop`` nodes."""
    order: list[Node] = []
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(r, False) for r in roots]
    while stack:
        n, done = stack.pop()
        if done:
            order.append(n)
            continue
        if id(n) in seen:
            continue
        seen.add(id(n))
        stack.append((n, True))
        if not stop(n):
            for c in reversed(n.children()):
                if id(c) not in seen:
                    stack.append((c, False))
    return order


def substitute(root: Node, mapping: dict[Node, Node]) -> Node:
    """``root`` with nodes replaced per ``mapping`` (rebuilt through the simplifying constructors)."""
    memo: dict[int, Node] = {}
    for n in walk([root], stop=lambda m: m in mapping):
        if n in mapping:
            memo[id(n)] = mapping[n]
        elif n.children():
            kids = [memo[id(c)] for c in n.children()]
            memo[id(n)] = n if all(a is b for a, b in zip(kids, n.children())) else n.with_children(kids)
        else:
            memo[id(n)] = n
    return memo[id(root)]
