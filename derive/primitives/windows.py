"""Windows of images: ``Unfold`` (the patches a convolution or pooling layer sees) and its adjoint
``Fold`` (patches summed back onto the image: the full convolution of the backward pass)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import sympy as sp

from .base import Dim, Node, Shape, ShapeError, UnsupportedError, _intern, as_expr, fmt_shape
from .leaves import is_zero


def conv_out(size: Dim, k: Dim, stride: int, padding: int, dilation: int) -> Dim:
    """Output size of a window sweep: floor((H + 2P - D(k - 1) - 1) / S) + 1."""
    return sp.floor((as_expr(size) + 2 * padding - dilation * (k - 1) - 1) / stride) + 1


class Unfold(Node):
    r"""The windows of an image: ``x`` of shape (..., C, H, W) to patches (..., C, k_h, k_w, H', W') with
    ``U(x)[c, i k_w + j, p, q] = x_pad[c, p S + i D, q S + j D]`` (zero padding P, stride S, dilation D).

    A convolution is a contraction of the kernel with these patches; its adjoint :class:`Fold` scatters
    patches back onto the image (the "full convolution" of the backward pass). Leading axes (a batch, as
    captured PyTorch code holds it) are carried along; the zoo's per-sample models use (C, H, W).
    """

    kind = "unfold"
    x: Node
    kernel: tuple[int, int]
    stride: int
    padding: int
    dilation: int

    flat: bool

    fill: float

    def __new__(cls, x: Node, kernel: tuple[Dim, Dim], stride: int = 1, padding: int = 0, dilation: int = 1,
                flat: bool = False, fill: float = 0.0) -> Unfold:
        if x.ndim < 3:
            raise ShapeError(f"unfold takes a (..., C, H, W) image, got shape {fmt_shape(x.shape)}")
        # the kernel size: integers, or dimension symbols (a kernel size read off the weight's shape)
        kh, kw = (int(k) if isinstance(k, int) or as_expr(k).is_Integer else as_expr(k) for k in kernel)
        *lead, C, H, W = x.shape
        oh, ow = conv_out(H, kh, stride, padding, dilation), conv_out(W, kw, stride, padding, dilation)
        win = (as_expr(kh) * as_expr(kw),) if flat else (as_expr(kh), as_expr(kw))

        def init(n: Any) -> None:
            n.x, n.kernel, n.stride, n.padding, n.dilation, n.flat = x, (kh, kw), stride, padding, dilation, flat
            n.fill = float(fill)
            n.shape = (*lead, C, *win, oh, ow)

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
        kh, kw = (ctx.dim(k) for k in self.kernel)
        fill = "" if self.fill == 0 else f", {'-math.inf' if self.fill == -math.inf else repr(self.fill)}"
        return (f"ops.unfold({args[0]}, ({kh}, {kw}), {self.stride}, {self.padding}, {self.dilation}, "
                f"{self.flat}{fill})")


class Fold(Node):
    r"""The adjoint of :class:`Unfold`: patches (..., C, k_h, k_w, H', W') (or flat, (..., C, k_h k_w, H', W'))
    summed back onto a (..., C, H, W) image."""

    kind = "fold"
    x: Node
    image: Shape
    kernel: tuple[int, int]
    stride: int
    padding: int
    dilation: int

    def __new__(cls, x: Node, image: Shape, kernel: tuple[int, int], stride: int = 1, padding: int = 0,
                dilation: int = 1) -> Fold:
        image = tuple(as_expr(d) for d in image)

        def init(n: Any) -> None:
            n.x, n.image, n.kernel, n.stride, n.padding, n.dilation = x, image, tuple(kernel), stride, padding, dilation
            n.shape = image

        return _intern(cls, (("node", id(x)), image, tuple(kernel), stride, padding, dilation), init)

    def children(self) -> tuple[Node, ...]:
        return (self.x,)

    def with_children(self, children: Sequence[Node]) -> Node:
        return Fold(children[0], self.image, self.kernel, self.stride, self.padding, self.dilation)

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        return [Unfold(g, self.kernel, self.stride, self.padding, self.dilation, flat=self.flat)]

    @property
    def flat(self) -> bool:
        """Whether the patches hold each window as one axis of k_h k_w entries."""
        return self.x.ndim == len(self.image) + 1

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
        kh, kw = (ctx.dim(k) for k in self.kernel)
        H, W = (ctx.dim(d) for d in self.image[-2:])
        return (f"ops.fold({args[0]}, ({H}, {W}), ({kh}, {kw}), {self.stride}, {self.padding}, {self.dilation}, "
                f"{self.flat})")

