"""Chapter 6, convolutional networks: 2-D convolution (cross-correlation, NCHW) with stride, padding and
dilation, max and average pooling, and a small CNN (§6.2-6.4).

A convolution is a contraction of the kernel with the image's windows, ``z = W * U(x) + b``; the rules
of the two primitives then give the kernel gradient as a correlation of the input with delta and the input
gradient as the adjoint of the window map, i.e. the full convolution with the flipped kernel.
"""

from __future__ import annotations

import math
from typing import Any

from ..functions import named_activation
from ..nn import einsum, softmax, sum_
from ..program import Builder, Model, ModelError
from ..tensor import ARG, Max, Node, Unfold, conv_out, map_, mean
from . import register


def _check(kernel: tuple[int, int], stride: int, padding: int, dilation: int) -> tuple[int, int]:
    if (not isinstance(kernel, (tuple, list)) or len(kernel) != 2
            or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in kernel)):
        raise ModelError(f"kernel must be two positive integers (k_h, k_w), got {kernel!r}")
    for name, v, lo in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ModelError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(kernel[0]), int(kernel[1])


def _image_range(k: int, padding: int, dilation: int) -> int:
    """The smallest image size with at least one output position."""
    return max(1, dilation * (k - 1) + 1 - 2 * padding)


def conv(W: Node, b: Node, x: Node, kernel: tuple[Any, Any], stride: int, padding: int, dilation: int) -> Node:
    """Cross-correlation of a (C_in, H, W) image with W (C_out, C_in, k_h, k_w), plus b."""
    U = Unfold(x, kernel, stride, padding, dilation)
    o, c, i, j, p, q = "o", "c", "i", "j", "p", "q"
    dims = dict(zip((o, c, i, j, p, q), (W.shape[0], *U.shape)))
    z = einsum([(o, c, i, j), (c, i, j, p, q)], (o, p, q), [W, U], dims=dims)
    return z + einsum([(o,)], (o, p, q), [b], dims=dims)


@register("conv2d", "§6.2-6.3", "2-D convolution (cross-correlation)")
def conv2d(kernel: tuple[int, int] | None = None, stride: int = 1, padding: int = 0, dilation: int = 1) -> Model:
    r"""2-D convolution (cross-correlation, NCHW): z = W \star x + b with stride S, padding P, dilation D.

    Args:
        kernel: None (the default): the kernel size is a pair of dimensions k_h, k_w read off W's shape (drawn
            1..3 by the verifier, default 2 x 2), so any W (C_out, C_in, k_h, k_w) is accepted; or (k_h, k_w)
            to fix it.
        stride, padding, dilation: as F.conv2d.
    """
    if kernel is None:
        _check((1, 1), stride, padding, dilation)
        opts: dict[str, object] = {"stride": stride, "padding": padding, "dilation": dilation}
    else:
        kernel = _check(kernel, stride, padding, dilation)
        opts = {"kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation}
    b = Builder("conv2d", "2-D convolution (cross-correlation)", "§6.2-6.3", opts)
    b.samples("n", 2, 1, 3)
    Ci = b.dim("C_in", 2, 1, 3)
    Co = b.dim("C_out", 2, 1, 3)
    if kernel is None:
        # the kernel size is a dimension read off W; images drawn big enough for the largest drawn kernel
        kh, kw = b.dim("k_h", 2, 1, 3), b.dim("k_w", 2, 1, 3)
        H = b.dim("H_in", 5, _image_range(3, padding, dilation), 7)
        Wd = b.dim("W_in", 5, _image_range(3, padding, dilation), 7)
    else:
        kh, kw = kernel
        # the smallest image with an output position bounds the sizes drawn and the default (kernel 9x9: 9)
        lo_h, lo_w = _image_range(kh, padding, dilation), _image_range(kw, padding, dilation)
        H = b.dim("H_in", max(5, lo_h), lo_h, max(7, lo_h + 2))
        Wd = b.dim("W_in", max(5, lo_w), lo_w, max(7, lo_w + 2))
    W = b.param("W", (Co, Ci, kh, kw), "W")
    bias = b.param("b", (Co,), "b")
    x = b.input("X", (Ci, H, Wd), "x", batched=True, adjoint=("g_X", r"\zeta_{x}"))
    oh, ow = conv_out(H, kh, stride, padding, dilation), conv_out(Wd, kw, stride, padding, dilation)
    G = b.input("G", (Co, oh, ow), r"\delta", batched=True)
    z = b.eq("z", conv(W, bias, x, (kh, kw), stride, padding, dilation), "z")
    b.eq("C", sum_(G * z), "C")
    return b.model(reduction="sum", diff_inputs=("X",))


def _pool(name: str, kind: str, kernel: int, stride: int | None, padding: int) -> Model:
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1:
        raise ModelError(f"{name}: kernel must be a positive integer, got {kernel!r}")
    s = kernel if stride is None else stride  # stride=0 is refused below, not read as the default
    _check((kernel, kernel), s, padding, 1)
    if 2 * padding > kernel:
        raise ModelError(f"{name}: padding={padding} is more than half the kernel ({kernel}): a window could hold "
                         f"only padding; use padding <= {kernel // 2}")
    b = Builder(name, f"{kind} pooling", "§6.4", {"kernel": kernel, "stride": s, "padding": padding})
    b.samples("n", 2, 1, 3)
    C = b.dim("C_in", 2, 1, 3)
    lo = _image_range(kernel, padding, 1)
    H = b.dim("H_in", max(4, lo), lo, max(7, lo + 2))
    Wd = b.dim("W_in", max(4, lo), lo, max(7, lo + 2))
    x = b.input("X", (C, H, Wd), "x", batched=True, adjoint=("g_X", r"\zeta_{x}"))
    oh, ow = conv_out(H, kernel, s, padding, 1), conv_out(Wd, kernel, s, padding, 1)
    G = b.input("G", (C, oh, ow), r"\zeta", batched=True)
    # max pooling pads with -infinity (a padded entry never wins), average pooling with zeros
    U = Unfold(x, (kernel, kernel), s, padding, 1, flat=True, fill=-math.inf if kind == "max" else 0.0)
    out = Max(U, 1) if kind == "max" else mean(U, 1)
    a = b.eq("a", out, "a")
    b.eq("C", sum_(G * a), "C")
    return b.model(reduction="sum", diff_inputs=("X",), kinks=kind == "max")


@register("max_pool2d", "§6.4", "max pooling")
def max_pool2d(kernel: int = 2, stride: int | None = None, padding: int = 0) -> Model:
    r"""Max pooling over k x k windows; the gradient goes to the first maximum of each window (PyTorch)."""
    return _pool("max_pool2d", "max", kernel, stride, padding)


@register("avg_pool2d", "§6.4", "average pooling")
def avg_pool2d(kernel: int = 2, stride: int | None = None, padding: int = 0) -> Model:
    r"""Average pooling over k x k windows (zero padding counted, as F.avg_pool2d's default)."""
    return _pool("avg_pool2d", "average", kernel, stride, padding)


@register("cnn", "§6.4", "conv-ReLU-pool-dense-softmax network")
def cnn(channels: int = 2, classes: int = 3, targets: str = "probabilities") -> Model:
    r"""conv(3x3, padding 1) - ReLU - max pool(2) - dense - softmax cross entropy.

    Args:
        channels: C_1, the conv layer's output channels.
        classes: K.
        targets: "probabilities" (Y (n, K) rows on the simplex, the default), "one_hot" (the same Y, drawn
            one-hot) or "labels" (integer class indices y (n,); C = -log yhat_y).
    """
    from ._targets import check_targets, cross_entropy, target_input

    targets = check_targets("cnn", targets)
    b = Builder("cnn", "conv-ReLU-pool-dense-softmax network", "§6.4",
                {"channels": channels, "classes": classes, **({"targets": targets} if targets != "probabilities" else {})})
    b.samples("n", 2, 1, 3)
    Ci = b.dim("C_in", 1, 1, 2)
    C1 = b.dim("C_1", channels, 1, 3)
    H = b.dim("H_in", 4, 2, 6)
    Wd = b.dim("W_in", 4, 2, 6)
    K = b.dim("K", classes, 2, 4)
    W1 = b.param("W1", (C1, Ci, 3, 3), "W^{[1]}")
    b1 = b.param("b1", (C1,), "b^{[1]}")
    ph, pw = conv_out(H, 2, 2, 0, 1), conv_out(Wd, 2, 2, 0, 1)
    W2 = b.param("W2", (K, C1, ph, pw), "W^{[2]}")
    b2 = b.param("b2", (K,), "b^{[2]}")
    x = b.input("X", (Ci, H, Wd), "x", batched=True)
    y = target_input(b, targets, K)
    z1 = b.eq("z1", conv(W1, b1, x, (3, 3), 1, 1, 1), "z^{[1]}", adjoint=("delta1", r"\delta^{[1]}"))
    a1 = b.eq("a1", map_(named_activation("relu")(ARG[0]), [z1]), "a^{[1]}")
    p1 = b.eq("p1", Max(Unfold(a1, (2, 2), 2, 0, 1, flat=True), 1), "p^{[1]}")
    k, c, i, j = "k", "c", "i", "j"
    dims = {k: K, c: C1, i: ph, j: pw}
    z2 = b.eq("z2", einsum([(k, c, i, j), (c, i, j)], (k,), [W2, p1], dims=dims) + b2, "z^{[2]}",
              adjoint=("delta2", r"\delta^{[2]}"))
    yhat = b.eq("yhat", softmax(z2), r"\hat{y}")
    b.eq("C", cross_entropy(y, yhat), "C")
    model = b.model(kinks=True)
    # ReLU zeros tie inside pooling windows and near-ties switch within any usable step: no finite
    # difference measures this derivative reliably; torch autograd (same conventions) checks it at 1e-10
    model.finite_differences = False
    return model


