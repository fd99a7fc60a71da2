r"""Linear algebra: trace, diagonals, determinants, inverses, linear solves and norms of matrices (and of
per-sample stacks of them; NumPy's and PyTorch's linear algebra batches over leading axes).

Matrix results print in matrix form: the gradient of :math:`\log\det X` is :math:`X^{-\top}`, that of
:math:`x^\top A^{-1} x` in :math:`A` is :math:`-A^{-\top} x x^\top A^{-\top}`. Gradients treat every entry
of a matrix as free, as PyTorch does (no symmetrisation for symmetric arguments).

The domain ``spd`` (symmetric positive definite) is for inputs of ``logdet``, ``inv`` and ``solve``: the
kernels check it at their boundary (symmetric to rounding, and a Cholesky factorisation exists) and the
verifier draws such matrices; it changes nothing in the derivation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import sympy as sp

from .base import Node, Shape, ShapeError, _intern, fmt_shape

#: The domain of symmetric positive definite matrices (see the module docstring).
SPD = "spd"


def _square(x: Node, what: str) -> None:
    if x.ndim != 2 or sp.simplify(x.shape[0] - x.shape[1]) != 0:
        raise ShapeError(f"{what} needs a square matrix, got shape {fmt_shape(x.shape)}")


def _wrap(tex: str) -> str:
    """``tex`` as the base of a power: bare when it is one symbol (``A``, ``W_{1}``, ``\\Sigma``),
    parenthesised otherwise."""
    if re.fullmatch(r"\\?[A-Za-z]+(_\{[^{}]*\}|_[A-Za-z0-9])?|\\[a-z]+\{[A-Za-z]\}", tex):
        return tex
    return rf"\left({tex}\right)"


class _Unary(Node):
    """A primitive of one tensor argument, interned on it."""

    x: Node

    def __new__(cls, x: Node) -> Any:
        shape = cls._shape(x)

        def init(n: Any) -> None:
            n.x, n.shape = x, shape

        return _intern(cls, (("node", id(x)),), init)

    @classmethod
    def _shape(cls, x: Node) -> Shape:
        raise NotImplementedError

    def children(self) -> tuple[Node, ...]:
        return (self.x,)


def _tangent(tangents: Sequence[Node | None]) -> Node | None:
    """The tangent of a one-argument primitive, ``None`` when it is zero."""
    (t,) = tangents
    return None if is_zero(t) else t


def _tangent_labels(tshape: Shape, start: int) -> tuple[int, ...]:
    return tuple(range(start, start + len(tshape)))


def _dims_of(labels: Sequence[Any], shape: Shape) -> dict[Any, Any]:
    return dict(zip(labels, shape))


class Inv(_Unary):
    r"""X^{-1}; d(X^{-1}) = -X^{-1} dX X^{-1}, so the adjoint is -X^{-\top} G X^{-\top}."""

    kind = "inv"

    @classmethod
    def _shape(cls, x: Node) -> Shape:
        _square(x, "inv")
        return x.shape

    def with_children(self, children: Sequence[Node]) -> Node:
        return inv(children[0])

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        # (X^{-1})^T_{ia} G_{ab} (X^{-1})^T_{bj} = Y_{ai} G_{ab} Y_{jb}
        return [einsum([("a", "i"), ("a", "b"), ("j", "b")], ("i", "j"), [out, g, out], coef=-1)]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        t = _tangent(tangents)
        if t is None:
            return None
        tl = _tangent_labels(tshape, 10)
        dims = _dims_of(tl, tshape)
        return einsum([("i", "a"), ("a", "b", *tl), ("b", "j")], ("i", "j", *tl), [out, t, out], dims=dims, coef=-1)

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return f"{_wrap(args[0])}^{{-1}}"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        return f"torch.linalg.inv({args[0]})" if backend == "torch" else f"np.linalg.inv({args[0]})"


class _DetBase(_Unary):
    r"""A function of det X whose differential is ``scale * tr(X^{-1} dX)``: its gradient is
    ``scale X^{-\top}`` (Jacobi's formula)."""

    @classmethod
    def _shape(cls, x: Node) -> Shape:
        _square(x, cls.kind)
        return ()

    def _scale(self, out: Node) -> list[Node]:
        """The scalar factors of the differential (``[det X]`` for det, none for log det)."""
        raise NotImplementedError

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        scale = [g, *self._scale(out)]
        return [einsum([()] * len(scale) + [("j", "i")], ("i", "j"), [*scale, inv(self.x)])]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        t = _tangent(tangents)
        if t is None:
            return None
        tl = _tangent_labels(tshape, 10)
        scale = self._scale(out)
        return einsum([()] * len(scale) + [("b", "a"), ("a", "b", *tl)], tl, [*scale, inv(self.x), t],
                      dims=_dims_of(tl, tshape))


class Det(_DetBase):
    r"""det X; its gradient is det(X) X^{-\top} (Jacobi's formula)."""

    kind = "det"

    def with_children(self, children: Sequence[Node]) -> Node:
        return det(children[0])

    def _scale(self, out: Node) -> list[Node]:
        return [out]

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return rf"\det\left({args[0]}\right)"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        return f"torch.linalg.det({args[0]})" if backend == "torch" else f"np.linalg.det({args[0]})"


class LogDet(_DetBase):
    r"""log det X (NaN where det X < 0, -inf where it is 0, as ``torch.logdet``); its gradient is
    X^{-\top}."""

    kind = "logdet"

    def with_children(self, children: Sequence[Node]) -> Node:
        return logdet(children[0])

    def _scale(self, out: Node) -> list[Node]:
        return []

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return rf"\log\det\left({args[0]}\right)"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        return f"torch.logdet({args[0]})" if backend == "torch" else f"ops.logdet({args[0]})"


class Solve(Node):
    r"""A^{-1} B, the solution X of A X = B (B of shape (k,) or (k, ...)); the adjoint of B is
    A^{-\top} G and that of A is -(A^{-\top} G) X^\top."""

    kind = "solve"
    a: Node
    b: Node

    def __new__(cls, a: Node, b: Node) -> Solve:
        _square(a, "solve")
        if b.ndim < 1 or sp.simplify(b.shape[0] - a.shape[0]) != 0:
            raise ShapeError(f"solve(A, B) needs B's first axis to match A's size: A has shape "
                             f"{fmt_shape(a.shape)}, B has shape {fmt_shape(b.shape)}")

        def init(n: Any) -> None:
            n.a, n.b, n.shape = a, b, b.shape

        return _intern(cls, (("node", id(a)), ("node", id(b))), init)

    def children(self) -> tuple[Node, ...]:
        return (self.a, self.b)

    def with_children(self, children: Sequence[Node]) -> Node:
        return solve(children[0], children[1])

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        gb = solve(self.a.T, g)
        rest = tuple(range(10, 10 + self.b.ndim - 1))
        ga = einsum([("i", *rest), ("j", *rest)], ("i", "j"), [gb, out], coef=-1)
        return [ga, gb]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        ta, tb = tangents
        if is_zero(ta) and is_zero(tb):
            return None
        rest = tuple(range(10, 10 + self.b.ndim - 1))
        tl = _tangent_labels(tshape, 30)
        dims = _dims_of(tl, tshape)
        terms: list[Node] = []
        if not is_zero(tb):
            assert tb is not None
            terms.append(tb)
        if not is_zero(ta):
            assert ta is not None
            terms.append(einsum([("i", "j", *tl), ("j", *rest)], ("i", *rest, *tl), [ta, out], dims=dims, coef=-1))
        rhs = add_all(terms, self.shape + tshape)
        assert rhs is not None
        return solve(self.a, rhs)

    def latex(self, args: Sequence[str], printer: Any) -> str:
        a = args[0]
        m = re.fullmatch(r"(.*)\^\\top", a)
        inv_a = f"{_wrap(m.group(1))}^{{-\\top}}" if m else f"{_wrap(a)}^{{-1}}"
        return f"{inv_a} {_wrap(args[1])}"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        return f"ops.solve({args[0]}, {args[1]}, {self.b.ndim - 1})"


class Trace(_Unary):
    """tr X = sum_i X_ii; its adjoint is G I."""

    kind = "trace"

    @classmethod
    def _shape(cls, x: Node) -> Shape:
        _square(x, "trace")
        return ()

    def with_children(self, children: Sequence[Node]) -> Node:
        return trace(children[0])

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return [einsum([(), ("i", "j")], ("i", "j"), [g, Eye(self.x.shape[0])])]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        t = _tangent(tangents)
        if t is None:
            return None
        tl = _tangent_labels(tshape, 10)
        return einsum([("a", "a", *tl)], tl, [t], dims=_dims_of(tl, tshape))

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return rf"\operatorname{{tr}}\left({args[0]}\right)"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        if backend == "torch":
            return f"torch.diagonal({args[0]}, dim1=-2, dim2=-1).sum(-1)"
        return f"np.trace({args[0]}, axis1=-2, axis2=-1)"


class DiagMatrix(_Unary):
    """diag(v): the diagonal matrix with ``v`` on its diagonal; its adjoint is the diagonal of G."""

    kind = "diag_matrix"

    @classmethod
    def _shape(cls, x: Node) -> Shape:
        if x.ndim != 1:
            raise ShapeError(f"diag of a vector makes a matrix; got shape {fmt_shape(x.shape)}")
        return (x.shape[0], x.shape[0])

    def with_children(self, children: Sequence[Node]) -> Node:
        return diag(children[0])

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return [diag(g)]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        t = _tangent(tangents)
        if t is None:
            return None
        tl = _tangent_labels(tshape, 10)
        dims = _dims_of(("i", "j", *tl), self.shape + tshape)
        return einsum([("i", *tl), ("i", "j")], ("i", "j", *tl), [t, Eye(self.x.shape[0])], dims=dims)

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return rf"\operatorname{{diag}}\left({args[0]}\right)"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        return f"torch.diag_embed({args[0]})" if backend == "torch" else f"ops.diag_embed({args[0]})"


class DiagPart(_Unary):
    """diag(X): the vector of the diagonal of a square matrix; its adjoint is diag(g) (a matrix)."""

    kind = "diag_part"

    @classmethod
    def _shape(cls, x: Node) -> Shape:
        _square(x, "diag of a matrix")
        return (x.shape[0],)

    def with_children(self, children: Sequence[Node]) -> Node:
        return diag(children[0])

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return [diag(g)]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        t = _tangent(tangents)
        if t is None:
            return None
        tl = _tangent_labels(tshape, 10)
        return einsum([("i", "i", *tl)], ("i", *tl), [t], dims=_dims_of(tl, tshape))

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return rf"\operatorname{{diag}}\left({args[0]}\right)"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        if backend == "torch":
            return f"torch.diagonal({args[0]}, dim1=-2, dim2=-1)"
        return f"np.diagonal({args[0]}, axis1=-2, axis2=-1)"


class Norm(_Unary):
    r"""``||x||_2 = sqrt(sum x^2)`` over every axis: the Euclidean norm of a vector, the Frobenius norm of a
    matrix. Its gradient is x / ||x||, and 0 at x = 0 (``torch.linalg.vector_norm``'s convention)."""

    kind = "norm"

    @classmethod
    def _shape(cls, x: Node) -> Shape:
        if x.ndim == 0:
            raise ShapeError("norm of a scalar: use abs(x)")
        return ()

    def with_children(self, children: Sequence[Node]) -> Node:
        return norm(children[0])

    def _unit(self, out: Node) -> Node:
        """x / ||x|| (0 at x = 0)."""
        return map_(ARG[0] * F.inv0(ARG[1]), [self.x, out], self.x.shape)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        labels = tuple(range(self.x.ndim))
        return [einsum([(), labels], labels, [g, self._unit(out)])]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        t = _tangent(tangents)
        if t is None:
            return None
        labels = tuple(range(self.x.ndim))
        tl = _tangent_labels(tshape, 20)
        return einsum([labels, labels + tl], tl, [self._unit(out), t], dims=_dims_of(tl, tshape))

    def latex(self, args: Sequence[str], printer: Any) -> str:
        sub = "F" if self.x.ndim == 2 else "2"
        return rf"\left\|{args[0]}\right\|_{{{sub}}}"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        axes = tuple(range(-self.x.ndim, 0))
        if backend == "torch":
            return f"torch.linalg.vector_norm({args[0]}, dim={axes})"
        return f"np.sqrt(np.square({args[0]}).sum(axis={axes}))"


# --------------------------------------------------------------------------------------------------
# Constructors (simplifying where an identity holds for every input)
# --------------------------------------------------------------------------------------------------


def inv(x: Node) -> Node:
    r"""X^{-1}; ``inv(inv(X)) = X``, and the inverse of the identity is the identity."""
    if isinstance(x, Inv):
        return x.x
    if isinstance(x, Eye):
        return x
    return Inv(x)


def det(x: Node) -> Node:
    """det X."""
    if isinstance(x, Eye):
        return Const(1)
    return Det(x)


def logdet(x: Node) -> Node:
    """log det X (for a positive determinant; declare symmetric positive definite inputs ``spd``)."""
    if isinstance(x, Eye):
        return Const(0)
    if isinstance(x, Inv):
        return map_(-ARG[0], [LogDet(x.x)])
    return LogDet(x)


def solve(a: Node, b: Node) -> Node:
    r"""A^{-1} B without forming the inverse (B a vector or a matrix, or any tensor with A's size first)."""
    if isinstance(a, Eye):
        Solve(a, b)  # the shape check
        return b
    return Solve(a, b)


def trace(x: Node) -> Node:
    """tr X; ``tr diag(v) = sum v`` and ``tr I_k = k``."""
    if isinstance(x, DiagMatrix):
        return sum_all(x.x)
    if isinstance(x, Eye):
        return Const(x.shape[0])
    return Trace(x)


def diag(x: Node) -> Node:
    """diag(v) for a vector (a diagonal matrix), diag(X) for a square matrix (its diagonal), as MATLAB."""
    if x.ndim == 1:
        return DiagMatrix(x)
    if isinstance(x, DiagMatrix):
        return x.x
    if isinstance(x, Eye):
        return Const(1, (x.shape[0],))
    return DiagPart(x)


def norm(x: Node) -> Node:
    """``||x||_2``, the Euclidean (Frobenius, for a matrix) norm over every axis."""
    return Norm(x)


def norm1(x: Node) -> Node:
    """``||x||_1 = sum |x|`` (``|x|' = sign x``, 0 at 0, as ``torch.linalg.vector_norm(x, 1)``)."""
    return sum_all(map_(sp.Abs(ARG[0]), [x]))


def even_norm_powers(fn: sp.Expr, args: Sequence[Node]) -> tuple[sp.Expr, list[Node]]:
    """``||x||^{2k} = (sum x^2)^k`` in an elementwise map's scalar expression ``fn`` over ``args``: where a
    norm enters only through even powers it is replaced by the sum of squares (smooth, also at x = 0)."""
    out = list(args)
    for i, a in enumerate(args):
        if not isinstance(a, Norm) or ARG[i] not in fn.free_symbols:
            continue
        pows = [p for p in fn.atoms(sp.Pow) if p.base == ARG[i]]
        if not pows or not all(p.exp.is_Integer and p.exp.is_even for p in pows):
            continue
        marker = sp.Dummy()
        if fn.xreplace({p: marker for p in pows}).has(ARG[i]):
            continue
        fn = fn.xreplace({p: ARG[i] ** (p.exp / 2) for p in pows})
        out[i] = sum_all(map_(ARG[0] ** 2, [a.x]))
    return fn, out


# the families refer to each other: imported once this module's definitions exist
from .. import functions as F  # noqa: E402
from .contraction import einsum, sum_all  # noqa: E402
from .elementwise import ARG, add_all, map_  # noqa: E402
from .leaves import Const, Eye, is_zero  # noqa: E402
