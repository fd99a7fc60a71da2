"""Axis primitives: softmax, log-softmax, log-sum-exp and max along one axis (with the argmax mask
that routes max's gradient)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import sympy as sp

from .base import Node, Shape, _intern
from .leaves import Var, is_zero

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
        return f"ops.softmax({args[0]}, axis={self._code_axis()})"


class LogSoftmax(AxisOp):
    r"""log S_softmax(x) = x - LSE(x) along ``axis``, computed stably."""

    kind = "log_softmax"

    def _softmax(self, out: Node) -> Node:
        """S(x): e^{a} of the named output a, or the softmax itself inside an expression."""
        return map_(sp.exp(ARG[0]), [out]) if isinstance(out, Var) else Softmax(self.x, self.axis)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        s = self._softmax(out)
        total = _spread(sum_(g, self.axis), g, self.axis)
        return [map_(ARG[0] - ARG[1] * ARG[2], [g, s, total])]

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        (t,) = tangents
        if is_zero(t):
            return None
        assert t is not None
        s = self._softmax(out)
        return map_(ARG[0] - ARG[1], [t, _spread(_contract_axis(s, t, self.axis), t, self.axis)])

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return rf"\log S_{{\mathrm{{softmax}}}}\left({args[0]}\right)"

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
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
        return rf"\mathbf{{1}}_{{\arg\max}}\left({args[0]}\right)"

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
            return f"{_atom(args[0])}.amax(dim={self._code_axis()})"
        return f"{_atom(args[0])}.max(axis={self._code_axis()})"


def softmax(x: Node, axis: int = -1) -> Node:
    """Softmax along ``axis`` (the book's :math:`S_{\\mathrm{softmax}}`)."""
    return Softmax(x, axis)


def log_softmax(x: Node, axis: int = -1) -> Node:
    return LogSoftmax(x, axis)


def logsumexp(x: Node, axis: int = -1) -> Node:
    return LogSumExp(x, axis)


def max_(x: Node, axis: int = -1) -> Node:
    return Max(x, axis)


# the families refer to each other: imported once this module's definitions exist
from .contraction import _axis, _dims, einsum, sum_  # noqa: E402
from .elementwise import ARG, map_  # noqa: E402


def _atom(code: str) -> str:
    """``code`` parenthesised unless it is a name or attribute chain (``a @ b`` then ``.amax`` needs them)."""
    import re

    return code if re.fullmatch(r"[A-Za-z_][\w.]*", code) else f"({code})"
