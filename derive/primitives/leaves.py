"""Leaves of the tensor IR: named tensors, constants, the identity, the causal mask and index grids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sympy as sp

from .base import Dim, Node, Shape, _intern, as_expr, check_name, fmt_shape

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
        check_name(name, "tensor name")
        shape = tuple(as_expr(d) for d in shape)

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
        v = as_expr(value)
        shape = tuple(as_expr(d) for d in shape)

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
        d = as_expr(dim)

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
        shape = (as_expr(tq), as_expr(tk))

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
    """The tensor whose entries are their own index along ``axis``, counted from ``start`` (0, 1, 2, ... by
    default): positions and frequencies in closed-form tables such as the positional encoding (7.29), whose
    positions t count from 1."""

    kind = "index_grid"
    axis: int
    letter: str
    start: int

    def __new__(cls, shape: Shape, axis: int, letter: str = "i", start: int = 0) -> IndexGrid:
        shape = tuple(as_expr(d) for d in shape)
        start = int(start)

        def init(n: Any) -> None:
            n.shape, n.axis, n.letter, n.start = shape, axis, letter, start

        return _intern(cls, (shape, axis, letter, start), init)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return []

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        return None

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return self.letter

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        shape = "(" + ", ".join(ctx.dim(d) for d in self.shape) + ("," if self.ndim == 1 else "") + ")"
        grid = f"ops.index_grid({shape}, {self.axis}, {ctx.ref})"
        return f"({grid} + {self.start})" if self.start else grid


def zeros(shape: Shape) -> Const:
    return Const(0, shape)


def is_zero(x: Node | None) -> bool:
    return x is None or (isinstance(x, Const) and x.value == 0)

