"""Shape primitives: ``Reshape`` (row-major, as ``torch.reshape``), ``Slice`` (a contiguous range of one axis)
and its adjoint ``Pad`` (zeros around a tensor along one axis; concatenation is a sum of pads).

They are what captured PyTorch code needs beyond contractions: ``view`` that merges or splits axes, ``chunk``,
``narrow`` and ``cat``. Sizes may be symbolic (``n T`` from merging a batch and a time axis).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sympy as sp

from .base import Dim, Node, Shape, ShapeError, _intern, as_expr, fmt_shape


def _prod(shape: Shape) -> sp.Expr:
    return sp.Mul(*shape) if shape else sp.S.One


class Reshape(Node):
    """``x`` with its entries, in row-major order, laid out in ``shape`` (``torch.reshape``)."""

    kind = "reshape"
    x: Node

    def __new__(cls, x: Node, shape: Shape) -> Reshape:
        shape = tuple(as_expr(d) for d in shape)
        if sp.simplify(_prod(x.shape) - _prod(shape)) != 0:
            raise ShapeError(f"cannot reshape {fmt_shape(x.shape)} to {fmt_shape(shape)}: the sizes differ")

        def init(n: Any) -> None:
            n.x, n.shape = x, shape

        return _intern(cls, (("node", id(x)), shape), init)

    def children(self) -> tuple[Node, ...]:
        return (self.x,)

    def with_children(self, children: Sequence[Node]) -> Node:
        return reshape(children[0], self.shape)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return [reshape(g, self.x.shape)]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        (t,) = tangents
        if t is None or _is_zero(t):
            return None
        return reshape(t, self.shape + tuple(tshape))

    def latex(self, args: Sequence[str], printer: Any) -> str:
        dims = r" \times ".join(printer.dim(d) if hasattr(printer, "dim") else sp.latex(d) for d in self.shape)
        return rf"\operatorname{{reshape}}_{{{dims}}}\left({args[0]}\right)"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        return f"{_paren(args[0])}.reshape({ctx.shape_code(self)})"


class Slice(Node):
    """Entries ``start <= i < stop`` of axis ``axis`` of ``x`` (``x[..., start:stop, ...]``)."""

    kind = "slice"
    x: Node
    axis: int
    start: Dim
    stop: Dim

    def __new__(cls, x: Node, axis: int, start: Any, stop: Any) -> Slice:
        ax = _check_axis(x, axis)
        start, stop = as_expr(start), as_expr(stop)
        length = sp.simplify(stop - start)
        if (length.is_number and length <= 0) or (start.is_number and start < 0):
            raise ShapeError(f"slice {start}:{stop} of axis {ax} of shape {fmt_shape(x.shape)} is empty or negative")
        if sp.simplify(x.shape[ax] - stop).is_negative:
            raise ShapeError(f"slice {start}:{stop} runs past axis {ax} of shape {fmt_shape(x.shape)}")

        def init(n: Any) -> None:
            n.x, n.axis, n.start, n.stop = x, ax, start, stop
            n.shape = x.shape[:ax] + (length,) + x.shape[ax + 1:]

        return _intern(cls, (("node", id(x)), ax, start, stop), init)

    def children(self) -> tuple[Node, ...]:
        return (self.x,)

    def with_children(self, children: Sequence[Node]) -> Node:
        return slice_(children[0], self.axis, self.start, self.stop)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return [pad(g, self.axis, self.start, self.x.shape[self.axis])]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        (t,) = tangents
        return None if t is None or _is_zero(t) else slice_(t, self.axis, self.start, self.stop)

    def latex(self, args: Sequence[str], printer: Any) -> str:
        lo, hi = sp.latex(self.start + 1), sp.latex(self.stop)
        return rf"\left[{args[0]}\right]_{{{self.axis + 1}:\,{lo}..{hi}}}"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        after = self.x.ndim - self.axis - 1
        sl = f"..., {ctx.dim(self.start)}:{ctx.dim(self.stop)}" + ", :" * after
        return f"{_paren(args[0])}[{sl}]"


class Pad(Node):
    """``x`` placed at offset ``start`` of axis ``axis`` in a tensor of size ``size`` there, zeros elsewhere
    (the adjoint of :class:`Slice`)."""

    kind = "pad"
    x: Node
    axis: int
    start: Dim
    size: Dim

    def __new__(cls, x: Node, axis: int, start: Any, size: Any) -> Pad:
        ax = _check_axis(x, axis)
        start, size = as_expr(start), as_expr(size)
        if sp.simplify(size - start - x.shape[ax]).is_negative:
            raise ShapeError(f"pad of axis {ax} of shape {fmt_shape(x.shape)} at {start} does not fit size {size}")

        def init(n: Any) -> None:
            n.x, n.axis, n.start, n.size = x, ax, start, size
            n.shape = x.shape[:ax] + (size,) + x.shape[ax + 1:]

        return _intern(cls, (("node", id(x)), ax, start, size), init)

    def children(self) -> tuple[Node, ...]:
        return (self.x,)

    def with_children(self, children: Sequence[Node]) -> Node:
        return pad(children[0], self.axis, self.start, self.size)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return [slice_(g, self.axis, self.start, self.start + self.x.shape[self.axis])]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        (t,) = tangents
        return None if t is None or _is_zero(t) else pad(t, self.axis, self.start, self.size)

    def latex(self, args: Sequence[str], printer: Any) -> str:
        lo, hi = sp.latex(self.start + 1), sp.latex(self.start + self.x.shape[self.axis])
        return rf"\operatorname{{pad}}_{{{self.axis + 1}:\,{lo}..{hi}}}\left({args[0]}\right)"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        after = self.x.ndim - self.axis - 1  # counted from the end: the same with or without a sample axis
        before_code = ctx.dim(self.start)
        after_code = ctx.dim(sp.simplify(self.size - self.start - self.x.shape[self.axis]))
        x = args[0]
        if backend == "torch":
            widths = ", ".join(["0, 0"] * after + [f"{before_code}, {after_code}"])
            return f"torch.nn.functional.pad({x}, ({widths}))"
        return (f"np.pad({x}, [(0, 0)] * ({_paren(x)}.ndim - {after + 1}) + [({before_code}, {after_code})]"
                f"{' + [(0, 0)] * ' + str(after) if after else ''})")


def _paren(code: str) -> str:
    return code if code.isidentifier() else f"({code})"


def _is_zero(x: Node) -> bool:
    from .leaves import is_zero

    return is_zero(x)


def _check_axis(x: Node, axis: int) -> int:
    if not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"axis {axis} is out of range for shape {fmt_shape(x.shape)}")
    return axis % x.ndim


def reshape(x: Node, shape: Shape) -> Node:
    """``x`` reshaped row-major to ``shape``; chains of reshapes collapse, and a no-op returns ``x``."""
    from .leaves import Const

    shape = tuple(as_expr(d) for d in shape)
    if tuple(x.shape) == shape:
        return x
    if isinstance(x, Reshape):
        return reshape(x.x, shape)
    if isinstance(x, Const):
        return Const(x.value, shape)
    return Reshape(x, shape)


def slice_(x: Node, axis: int, start: Any, stop: Any) -> Node:
    """``x[..., start:stop, ...]`` along ``axis``; the whole axis returns ``x``."""
    from .leaves import Const

    ax = _check_axis(x, axis)
    start, stop = as_expr(start), as_expr(stop)
    if start == 0 and sp.simplify(stop - x.shape[ax]) == 0:
        return x
    if isinstance(x, Const):
        return Const(x.value, x.shape[:ax] + (sp.simplify(stop - start),) + x.shape[ax + 1:])
    if isinstance(x, Pad) and x.axis == ax:  # a slice of a pad: the padded tensor, or zeros
        lo, hi = x.start, x.start + x.x.shape[ax]
        if sp.simplify(start - lo) == 0 and sp.simplify(stop - hi) == 0:
            return x.x
        if sp.simplify(stop - lo).is_nonpositive or sp.simplify(start - hi).is_nonnegative:
            return Const(0, x.shape[:ax] + (sp.simplify(stop - start),) + x.shape[ax + 1:])
    return Slice(x, ax, start, stop)


def pad(x: Node, axis: int, start: Any, size: Any) -> Node:
    """``x`` at offset ``start`` of a zero tensor of size ``size`` along ``axis``."""
    from .leaves import Const

    ax = _check_axis(x, axis)
    start, size = as_expr(start), as_expr(size)
    if start == 0 and sp.simplify(size - x.shape[ax]) == 0:
        return x
    if isinstance(x, Const) and x.value == 0:
        return Const(0, x.shape[:ax] + (size,) + x.shape[ax + 1:])
    return Pad(x, ax, start, size)


def concat(xs: Sequence[Node], axis: int) -> Node:
    """``torch.cat(xs, axis)``: the sum of each part padded to its place."""
    from .elementwise import add_all

    if not xs:
        raise ShapeError("concat needs at least one tensor")
    ax = _check_axis(xs[0], axis)
    for x in xs:
        if x.ndim != xs[0].ndim or any(sp.simplify(a - b) != 0 for i, (a, b) in enumerate(zip(x.shape, xs[0].shape))
                                       if i != ax):
            raise ShapeError(f"cat along axis {ax} needs equal other sizes, got {fmt_shape(x.shape)} and "
                             f"{fmt_shape(xs[0].shape)}")
    total = sp.Add(*(x.shape[ax] for x in xs))
    shape = xs[0].shape[:ax] + (total,) + xs[0].shape[ax + 1:]
    out, at = [], sp.S.Zero
    for x in xs:
        out.append(pad(x, ax, at, total))
        at = at + x.shape[ax]
    res = add_all(out, shape)
    assert res is not None
    return res
