"""Indexing: ``x[..., i, ...]`` (``Take``) and its adjoint ``Embed``, gathers by integer labels (through
``OneHot``), and the stop-gradient identity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sympy as sp

from .base import Dim, Node, Shape, ShapeError, UnsupportedError, _intern, as_expr, fmt_shape, walk


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
        return f"{_atom(args[0])}.detach()" if backend == "torch" else args[0]


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


#: The domain of integer labels: class indices, table positions (values 0, 1, ..., K - 1 for the size K of
#: the axis they index, checked at the kernel boundary and drawn so by the verifier).
LABELS = "labels"


class OneHot(Node):
    r"""The one-hot encoding e_y of integer labels ``y``: 1 at position ``y`` of a new axis ``axis`` of size
    ``size``, 0 elsewhere. A gather ``x_y`` is the contraction of ``x`` with it (so cross entropy with class
    indices is ``-e_y^T log S(z)``, and its gradient simplifies to ``S(z) - e_y``); the labels get no
    gradient."""

    kind = "one_hot"
    index: Var
    axis: int
    size: Dim

    def __new__(cls, index: Var, size: Dim, axis: int = -1) -> OneHot:
        size = as_expr(size)
        if not (isinstance(index, Var) and index.domain == LABELS):
            what = f"{type(index).__name__} {fmt_shape(index.shape)}" if isinstance(index, Node) else repr(index)
            raise UnsupportedError(
                f"an index tensor must be an input of integer labels, declared with domain='labels' "
                f"(e.g. Builder.input('y', (), batched=True, domain='labels')); got {what}")
        ax = axis % (index.ndim + 1)

        def init(n: Any) -> None:
            n.index, n.axis, n.size = index, ax, size
            n.shape = index.shape[:ax] + (size,) + index.shape[ax:]

        return _intern(cls, (("node", id(index)), ax, size), init)

    def children(self) -> tuple[Node, ...]:
        return (self.index,)

    def with_children(self, children: Sequence[Node]) -> Node:
        (idx,) = children
        assert isinstance(idx, Var)
        return OneHot(idx, self.size, self.axis)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return [None]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        return None

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return rf"e_{{{args[0]}}}"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        return f"ops.one_hot({args[0]}, {ctx.dim(self.size)}, {self.axis - self.ndim}, {ctx.ref})"


def gather(x: Node, index: Node, axis: int = -1) -> Node:
    r"""``x`` at the integer labels ``index`` along ``axis`` (removed): ``x_y = e_y^\top x``.

    ``index`` is an input declared with ``domain="labels"``, shaped like ``x`` without ``axis`` (one label
    per position), or a scalar (the same label everywhere, e.g. a table entry at a time step).

    Raises:
        ShapeError: when the index's shape fits neither, naming both shapes.
        UnsupportedError: when the index is not a labels input.
    """
    ax = _axis(x, axis)
    rest = x.shape[:ax] + x.shape[ax + 1 :]
    if not isinstance(index, Node):
        raise TypeError(f"gather takes a labels tensor as its index, not {type(index).__name__}")
    if index.shape not in (rest, ()):
        raise ShapeError(f"gather along axis {ax} of shape {fmt_shape(x.shape)} needs labels of shape "
                         f"{fmt_shape(rest)} (or one scalar label), got shape {fmt_shape(index.shape)}")
    labels = tuple(range(x.ndim))
    if index.shape == ():
        oh = OneHot(index, x.shape[ax], 0)  # type: ignore[arg-type]
        return einsum([labels, (ax,)], labels[:ax] + labels[ax + 1 :], [x, oh])
    oh = OneHot(index, x.shape[ax], ax)  # type: ignore[arg-type]
    return einsum([labels, labels], labels[:ax] + labels[ax + 1 :], [x, oh])


def label_sizes(roots: Sequence[Node]) -> dict[Var, Dim]:
    """The labels inputs that ``roots`` gather with, and the size of the axis each indexes (the least of
    them where one labels input indexes several axes: every value must fit each)."""
    out: dict[Var, Dim] = {}
    for n in walk(roots):
        if isinstance(n, OneHot):
            prev = out.get(n.index)
            out[n.index] = n.size if prev is None else sp.Min(prev, n.size)
    return out


def take(x: Node, axis: int, index: int | Node) -> Node:
    """``x`` at position ``index`` of ``axis`` (removed). An integer index is a fixed position; a tensor
    index (integer labels, ``domain="labels"``) is a gather (:func:`gather`)."""
    if isinstance(index, Node):
        return gather(x, index, axis)
    if isinstance(index, bool) or not isinstance(index, int):
        import numbers

        if not isinstance(index, numbers.Integral):
            raise TypeError(f"take needs an integer position or a labels tensor as its index, got "
                            f"{type(index).__name__} {index!r}")
        index = int(index)
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



from .contraction import _axis, einsum  # noqa: E402
from .elementwise import Map, map_  # noqa: E402
from .leaves import Const, Eye, Var, is_zero, zeros  # noqa: E402


def _atom(code: str) -> str:
    """``code`` parenthesised unless it is a name or attribute chain (``a @ b`` then ``.amax`` needs them)."""
    import re

    return code if re.fullmatch(r"[A-Za-z_][\w.]*", code) else f"({code})"
