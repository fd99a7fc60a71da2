"""Elementwise maps: a scalar SymPy expression applied to tensors of one shape, fused and simplified as
they are built; their derivatives come from ``sympy.diff`` of the scalar expression."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sympy as sp

from ..functions import SCALAR_FUNCTIONS
from .base import (
    Node,
    Shape,
    ShapeError,
    UnsupportedError,
    _intern,
    _key,
    as_expr,
    as_number,
    fmt_shape,
    walk,
)
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
    """The shortest of a few SymPy normal forms (as written, cancelled, cancelled and factored), after the
    stable rewrites of :func:`stable_forms`.

    A form that divides by something the cancelled form does not (``p ((1 - p)^2 / p + ...)``) is not a
    candidate: it is 0/0 where that factor vanishes or underflows (a saturated softmax), although the
    expression itself is finite there.
    """
    if expr.is_Atom:
        return expr
    expr = stable_forms(expr)
    cands = [expr]
    try:
        c = sp.cancel(expr)
    except (sp.PolynomialError, TypeError, ValueError):
        return expr
    cands += [c, sp.factor_terms(c)]
    with contextlib.suppress(sp.PolynomialError, TypeError, ValueError):
        if not c.has(sp.Function):
            cands.append(sp.factor(c))
        else:  # factored over the function values as symbols (a focal loss's (s - e)(s_y - 1)(...))
            funcs = sorted(c.atoms(sp.Function), key=str)
            dummies = [sp.Dummy() for _ in funcs]
            f = sp.factor(c.xreplace(dict(zip(funcs, dummies))))
            cands.append(f.xreplace(dict(zip(dummies, funcs))))
    den = sp.fraction(c)[1]
    kept = [e for e in cands if _divides_only_by(e, den)]
    if len(kept) < len(cands):
        # distributing products over sums cancels a removable divisor without expanding everything
        # (p (a/p + b) = a + p b)
        dist = sp.expand_mul(expr)
        kept += [e for e in (dist, sp.factor_terms(dist)) if _divides_only_by(e, den)]
    kept = kept or [c]
    return min(kept, key=lambda e: (sp.count_ops(e), len(str(e))))


def _divisors(e: sp.Expr) -> set[sp.Expr]:
    """The bases of the negative powers in ``e`` (what it divides by)."""
    return {p.base for p in e.atoms(sp.Pow) if p.exp.is_negative and not p.base.is_number}


def _divides_only_by(e: sp.Expr, den: sp.Expr) -> bool:
    """Whether ``e`` divides only by what the cancelled form's denominator ``den`` divides by (or by
    positive quantities such as sizes): otherwise ``e`` holds a removable 0/0."""
    bases = {f.as_base_exp()[0] for f in sp.Mul.make_args(den)}
    for b in _divisors(e):
        if b.is_positive or b in bases:
            continue
        try:
            q = sp.cancel(den / b)
        except (sp.PolynomialError, TypeError, ValueError):
            return False
        if not sp.fraction(q)[1].is_number:
            return False
    return True


def stable_forms(expr: sp.Expr) -> sp.Expr:
    r"""Rewrite logarithms that overflow when evaluated literally into their stable forms:
    ``log(1 + e^u) = softplus(u)``, ``log(e^a + e^b) = b + softplus(a - b)``, ``log sigma(u) = -softplus(-u)``,
    ``log(1 - sigma(u)) = -softplus(u)`` and ``1/(1 + e^u) = sigma(-u)`` (identities for every real u)."""
    from ..functions import sigmoid, softplus

    if not expr.has(sp.log) and not expr.has(sp.exp):
        return expr

    def log_arg(arg: sp.Expr) -> sp.Expr | None:
        if isinstance(arg, sigmoid):
            return -softplus(-arg.args[0])
        terms = sp.Add.make_args(arg)
        if len(terms) != 2:
            return None
        exps = [t for t in terms if isinstance(t, sp.exp)]
        other = [t for t in terms if not isinstance(t, sp.exp)]
        if len(exps) == 1 and other == [sp.S.One]:
            return softplus(exps[0].args[0])
        if len(exps) == 2:
            a, b = exps[0].args[0], exps[1].args[0]
            return b + softplus(a - b)
        if sp.S.One in terms:  # 1 - sigma(u)
            t = next(t for t in terms if t != 1)
            if t.is_Mul and t.as_coeff_Mul()[0] == -1 and isinstance(t.as_coeff_Mul()[1], sigmoid):
                return -softplus(t.as_coeff_Mul()[1].args[0])
        return None

    def recip(base: sp.Expr) -> sp.Expr | None:
        terms = sp.Add.make_args(base)
        if len(terms) == 2 and sp.S.One in terms:
            e = next(t for t in terms if t != 1)
            if isinstance(e, sp.exp):
                return sigmoid(-e.args[0])
        return None

    out = expr.replace(lambda e: isinstance(e, sp.log) and log_arg(e.args[0]) is not None,
                       lambda e: log_arg(e.args[0]))
    out = out.replace(lambda e: e.is_Pow and e.exp == -1 and recip(e.base) is not None,
                      lambda e: recip(e.base))
    return out


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
    # the derivative of a step (sign, Heaviside) is a DiracDelta: 0 everywhere it is a function, and 0 at the
    # step too in PyTorch's convention (torch.sign's gradient is zero)
    d = sp.diff(fn, ARG[k]).replace(sp.DiracDelta, lambda *a: sp.S.Zero)
    if any(p.exp.is_negative and q.base == p.base and q is not p and not q.exp.is_number
           for p in d.atoms(sp.Pow) for q in d.atoms(sp.Pow)):
        d = sp.powsimp(d)  # x^p / x -> x^(p-1): no 0/0 at x = 0
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
    if any(isinstance(a, Norm) for a in args):
        fn, args = even_norm_powers(fn, args)  # ||x||^2 = sum x^2, smooth at x = 0
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
        elif _scaled_one_hot(a):
            # s e_y (a scalar times a one-hot encoding): elementwise, so its factors join the map (where
            # e_y f(x) = e_y f(x_y) applies)
            assert isinstance(a, Einsum)
            subs[ARG[i]] = a.coef * sp.Mul(*[leaf(o) for o in a.operands])
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
    if shape != () and all(a.shape == () for a in leaves):
        # a tensor-shaped map of scalars only (a derivative that kept one scalar factor): a scalar map,
        # broadcast, so that its value has the shape it claims
        return broadcast_to(map_(body, leaves, ()), shape)
    picked = _picked_at_labels(body, leaves)
    if picked is not None:
        return map_(picked[0], picked[1], shape)
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


def _picked_at_labels(body: sp.Expr, leaves: list[Node]) -> tuple[sp.Expr, list[Node]] | None:
    """``e_y * f(x) = e_y * f(x_y)``: in a term that is a product with a one-hot encoding, every operand
    indexed like it is only needed at the label (elsewhere the term is 0), so it is replaced there by its
    entry at the label. This lets ``p * (1/p_y) e_y`` simplify to ``e_y`` (cross entropy written as
    ``-log(S(z)_y)``), and an infinite entry away from the label cannot make a NaN. Returns the new body
    and leaves, or ``None``."""
    for j, oh in enumerate(leaves):
        if not isinstance(oh, OneHot) or ARG[j] not in body.free_symbols:
            continue
        new = list(leaves)
        terms = []
        changed = False
        for t in sp.Add.make_args(sp.expand_mul(body)):
            if ARG[j] in sp.Mul.make_args(t) and not (t / ARG[j]).has(ARG[j]):
                sub: dict[sp.Symbol, sp.Symbol] = {}
                for i, a in enumerate(leaves):
                    if (i == j or ARG[i] not in t.free_symbols or a.shape != oh.shape or isinstance(a, OneHot)
                            or _constant_along(a, oh.axis) is not None):
                        continue
                    g = gather(a, oh.index, oh.axis)
                    g = g if oh.ndim == 1 else _spread_along(g, oh.shape, oh.axis)
                    if g not in new:
                        new.append(g)
                    sub[ARG[i]] = ARG[new.index(g)]
                if sub:
                    t = t.xreplace(sub)
                    changed = True
            terms.append(t)
        if changed and len(new) <= len(ARG):
            return sp.Add(*terms), new
    return None


def _scaled_one_hot(a: Node) -> bool:
    """A contraction that only multiplies a one-hot encoding by scalars (no sums, no broadcast)."""
    if not isinstance(a, Einsum) or not any(isinstance(o, OneHot) for o in a.operands):
        return False
    return all(l == a.out or l == () for l in a.ins) and any(l == a.out for l in a.ins)


def _spread_along(x: Node, shape: Shape, axis: int) -> Node:
    """``x`` (``shape`` without ``axis``) broadcast along ``axis``."""
    labels = tuple(range(len(shape)))
    return einsum([labels[:axis] + labels[axis + 1 :]], labels, [x], dims=_dims(labels, shape))


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


def has_kinks(roots: Sequence[Node]) -> bool:
    """Whether the expressions use a non-smooth function (``|x|``, ReLU, max, clamp, where, ...) or a max
    along an axis: where the verifier should also try exact zeros and ties."""
    from ..functions import KINKED, ActivationBase
    from .axis import Max

    def kinked(e: sp.Expr) -> bool:
        return any(type(f) in KINKED or (isinstance(f, ActivationBase) and kinked(f.concrete()))
                   for f in sp.preorder_traversal(e))

    return any(isinstance(n, Max) or (isinstance(n, Map) and kinked(n.fn)) for n in walk(roots))


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
from .contraction import Einsum, _constant_along, _dims, broadcast_to, einsum, sum_all  # noqa: E402
from .indexing import Embed, OneHot, embed, gather  # noqa: E402
from .linalg import Norm, even_norm_powers  # noqa: E402
