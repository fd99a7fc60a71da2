"""Indexing: ``x[..., i, ...]`` (``Take``) and its adjoint ``Embed``, and the stop-gradient identity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import Dim, Node, Shape, ShapeError, _intern, as_expr, fmt_shape


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
        size = as_expr(size)

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
        return zeros(x.shape[:axis] + (as_expr(size),) + x.shape[axis:])
    return Embed(x, axis, index, size)


def stop_gradient(x: Node) -> Node:
    return StopGrad(x)



from .contraction import _axis  # noqa: E402
from .elementwise import Map, map_  # noqa: E402
from .leaves import Const, Eye, is_zero, zeros  # noqa: E402
