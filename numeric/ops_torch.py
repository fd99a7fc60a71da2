"""PyTorch runtime helpers used by generated kernels: numerically stable forms of the book's functions."""

from __future__ import annotations

from typing import Any

import torch

Tensor = torch.Tensor


def softplus(x: Tensor) -> Tensor:
    """log(1 + e^x), exact for every x (F.softplus switches to x above a threshold)."""
    return torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device))


def step(x: Tensor) -> Tensor:
    return (x > 0).to(x.dtype)


def _number(s: Any) -> bool:
    return isinstance(s, (int, float)) and not isinstance(s, bool)


def leaky_relu(x: Tensor, slope: Any) -> Tensor:
    """``x`` where ``x > 0``, else ``slope x``: ``F.leaky_relu`` for a number slope (one pass; ``torch.where``
    on mixed signs is 16x slower on a CPU), the selection for a tensor of slopes."""
    if _number(slope) and x.is_floating_point():
        return torch.nn.functional.leaky_relu(x, slope)
    return torch.where(x > 0, x, slope * x)


def leaky_step(x: Tensor, slope: Any) -> Tensor:
    """1 where ``x > 0``, else ``slope``: ``aten.leaky_relu_backward`` of a broadcast 1 for a number slope (one
    pass, the same values: ``1 * slope`` in ``x``'s dtype), else the selection."""
    one = torch.ones((), dtype=x.dtype, device=x.device)
    if _number(slope) and x.is_floating_point():
        return torch.ops.aten.leaky_relu_backward(one.expand_as(x), x, slope, False)
    return torch.where(x > 0, one, one * slope)


def _t(x: Any, like: Any = None) -> Tensor:
    if isinstance(x, torch.Tensor):
        return x
    ref = like if isinstance(like, torch.Tensor) else None
    return torch.as_tensor(x, dtype=ref.dtype if ref is not None else torch.float64,
                           device=ref.device if ref is not None else None)


def half_step(x: Tensor) -> Tensor:
    """1 for x > 0, 1/2 at 0, 0 below (the derivative of torch.maximum at ties)."""
    return torch.heaviside(x, torch.full((), 0.5, dtype=x.dtype, device=x.device))


def between(x: Any, lo: Any, hi: Any) -> Tensor:
    """1{lo <= x <= hi}: the derivative of torch.clamp in x."""
    x = _t(x, lo if isinstance(lo, torch.Tensor) else hi)
    return ((x >= lo) & (x <= hi)).to(x.dtype)


def maximum(a: Any, b: Any) -> Tensor:
    a, b = _t(a, b), _t(b, a)
    return torch.maximum(a, b)


def minimum(a: Any, b: Any) -> Tensor:
    a, b = _t(a, b), _t(b, a)
    return torch.minimum(a, b)


def clamp(x: Any, lo: Any, hi: Any) -> Tensor:
    """min(max(x, lo), hi) (torch.clamp with tensor or number bounds)."""
    x = _t(x, lo if isinstance(lo, torch.Tensor) else hi)
    return torch.minimum(torch.maximum(x, _t(lo, x)), _t(hi, x))


def where(c: Any, a: Any, b: Any) -> Tensor:
    """a where c != 0, else b: a selection (an infinity in the branch not taken stays out)."""
    like = next((v for v in (a, b, c) if isinstance(v, torch.Tensor)), None)
    return torch.where(_t(c, like) != 0, _t(a, like), _t(b, like))


def inv0(x: Tensor) -> Tensor:
    """1/x, and 0 where x = 0 (the norm's gradient x / ||x|| at x = 0, as torch.linalg.vector_norm)."""
    zero = x == 0
    return torch.where(zero, torch.zeros_like(x), 1.0 / torch.where(zero, torch.ones_like(x), x))


def solve(a: Tensor, b: Tensor, rest: int = 0) -> Tensor:
    """A^{-1} B for B of per-sample shape (k, *r) with ``rest = len(r)``; leading axes are batch axes."""
    k = a.shape[-1]
    lead, tail = tuple(b.shape[: b.ndim - 1 - rest]), tuple(b.shape[b.ndim - rest :])
    cols = 1
    for d in tail:
        cols *= d
    if a.ndim == 2:
        bt = b.reshape(*lead, k, cols).movedim(-2, 0).reshape(k, -1)
        x = torch.linalg.solve(a, bt).reshape(k, *lead, cols)
        return x.movedim(0, -2).reshape(*lead, k, *tail)
    batch = torch.broadcast_shapes(tuple(a.shape[:-2]), lead)
    b2 = b.reshape(*lead, k, cols).expand(*batch, k, cols)
    x = torch.linalg.solve(a.expand(*batch, k, k), b2)
    return x.reshape(*batch, k, *tail)


def gather(x: Tensor, idx: Tensor, axis: int) -> Tensor:
    """x at the integer labels ``idx`` along ``axis`` (counted from the end, removed); the labels broadcast
    against x's other axes (trailing alignment: a leading sample axis on either side)."""
    idx = torch.as_tensor(idx, device=x.device).long()
    xm = x.movedim(axis, -1)
    shape = torch.broadcast_shapes(tuple(xm.shape[:-1]), tuple(idx.shape))
    xb = xm.expand(*shape, xm.shape[-1])
    return torch.gather(xb, -1, idx.expand(shape).unsqueeze(-1)).squeeze(-1)


def one_hot(idx: Tensor, size: int, axis: int, like: Tensor) -> Tensor:
    """The one-hot encoding of integer labels along a new axis ``axis`` (counted from the end)."""
    idx = torch.as_tensor(idx, device=like.device).long()
    ax = axis % (idx.ndim + 1)
    shape = [1] * (idx.ndim + 1)
    shape[ax] = size
    ar = torch.arange(size, device=like.device).reshape(shape)
    return (idx.unsqueeze(ax) == ar).to(like.dtype)


def max_pool2d_with_indices(x: Tensor, kernel: tuple[int, int], stride: int, padding: int,
                            dilation: int) -> tuple[Tensor, Tensor]:
    """``F.max_pool2d(x, kernel, stride, padding, dilation)`` and the index of each window's maximum."""
    out, idx = torch.ops.aten.max_pool2d_with_indices(x, kernel, stride, padding, dilation, False)
    return out, idx


def max_pool2d_backward(g: Tensor, x: Tensor, kernel: tuple[int, int], stride: int, padding: int,
                        dilation: int, indices: Tensor | None = None) -> Tensor:
    """The adjoint of ``F.max_pool2d(x, kernel, stride, padding, dilation)`` for the output adjoint ``g``:
    ``g`` onto the first maximum of each window (where PyTorch's pooling puts its index), by
    ``aten.max_pool2d_with_indices_backward`` from the forward's ``indices`` (or those of pooling ``x`` again)."""
    if indices is None:
        indices = max_pool2d_with_indices(x, kernel, stride, padding, dilation)[1]
    return torch.ops.aten.max_pool2d_with_indices_backward(g, x, kernel, stride, padding, dilation, False, indices)


def avg_pool2d_backward(g: Tensor, image: tuple[int, ...], kernel: tuple[int, int], stride: int,
                        padding: int, mean: bool = False) -> Tensor:
    """The window sums' adjoint: each window's ``g`` added back onto every entry of the window, an image of
    shape ``image`` (``aten.avg_pool2d_backward`` with divisor 1; the padding drops out); with ``mean``, the
    window means' (``g / (k_h k_w)``, PyTorch's divisor with the padding counted)."""
    like = g.new_empty(()).expand(image)  # only its shape is read
    return torch.ops.aten.avg_pool2d_backward(g, like, kernel, stride, padding, False, True, None if mean else 1)


def argmax_mask(x: Tensor, axis: int) -> Tensor:
    """One-hot of the first maximum along ``axis`` (PyTorch routes max's gradient there)."""
    idx = torch.argmax(x, dim=axis, keepdim=True)
    return torch.zeros_like(x).scatter_(axis, idx, 1.0)


def embed(x: Any, axis: int, index: int, size: int, like: Tensor) -> Tensor:
    x = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    ax = axis % (x.ndim + 1)
    shape = x.shape[:ax] + (size,) + x.shape[ax:]
    out = torch.zeros(shape, dtype=like.dtype, device=like.device)
    out.select(ax, index).copy_(x)
    return out


def own(x: Any) -> Any:
    """A copy of ``x``: what a kernel returns in place of a value that may share memory with one of its
    arguments or with another value it returns (numeric.aliasing decides which)."""
    return x.clone() if isinstance(x, torch.Tensor) else x


def eye(d: int, like: Tensor) -> Tensor:
    return torch.eye(d, dtype=like.dtype, device=like.device)


def full(shape: tuple[int, ...], value: float, like: Tensor) -> Tensor:
    return torch.full(shape, value, dtype=like.dtype, device=like.device)




def causal_mask(tq: int, tk: int, like: Tensor) -> Tensor:
    """0 where key k <= query q, -inf above the diagonal (top-left aligned, as is_causal=True)."""
    ones = torch.ones(tq, tk, dtype=torch.bool, device=like.device)
    zero = torch.zeros(tq, tk, dtype=like.dtype, device=like.device)
    return zero.masked_fill(torch.triu(ones, 1), float("-inf"))


def unfold(x: Tensor, kernel: tuple[int, int], stride: int, padding: int, dilation: int, flat: bool,
           fill: float = 0.0) -> Tensor:
    """Windows of (..., C, H, W) by F.unfold: (..., C, kh, kw, OH, OW), or (..., C, kh*kw, OH, OW)."""
    import torch.nn.functional as F

    kh, kw = kernel
    lead, (C, H, W) = x.shape[:-3], x.shape[-3:]
    oh = (H + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    ow = (W + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    x4 = x.reshape(-1, C, H, W)
    if fill != 0.0 and padding:
        x4 = F.pad(x4, (padding, padding, padding, padding), value=fill)  # e.g. -inf for max pooling
        padding = 0
    cols = F.unfold(x4, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    win = (kh * kw,) if flat else (kh, kw)
    return cols.reshape(*lead, C, *win, oh, ow)


def fold(p: Tensor, image: tuple[int, int], kernel: tuple[int, int], stride: int, padding: int,
         dilation: int, flat: bool) -> Tensor:
    """The adjoint of :func:`unfold` by F.fold."""
    import torch.nn.functional as F

    kh, kw = kernel
    oh, ow = p.shape[-2:]
    lead = p.shape[:-3] if flat else p.shape[:-4]
    C = lead[-1]
    cols = p.reshape(-1, C * kh * kw, oh * ow)
    out = F.fold(cols, image, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    return out.reshape(*lead, *image)


def index_grid(shape: tuple[int, ...], axis: int, like: Tensor) -> Tensor:
    """Entries equal to their index along ``axis``."""
    idx = torch.arange(shape[axis], dtype=like.dtype, device=like.device)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return idx.reshape(view).expand(*shape)


def matmul(a: Tensor, b: Tensor, alpha: float) -> Tensor:
    """alpha (a @ b), the scale applied inside the product (BLAS's alpha), not in a pass over the result."""
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    if a.ndim == 2 and b.ndim == 2:
        return torch.addmm(zero, a, b, beta=0, alpha=alpha)
    if a.ndim == 2 and b.ndim == 1:
        return torch.addmv(zero, a, b, beta=0, alpha=alpha)
    if a.ndim == 3 and b.ndim == 3:
        return torch.baddbmm(zero, a, b, beta=0, alpha=alpha)
    return torch.matmul(a, b).mul_(alpha)


def inner(a: Tensor, b: Tensor, scratch: bool = False) -> Tensor:
    """``sum(a * b)`` over all entries without a product array: one dot product where ``a`` and ``b`` are
    contiguous float64 arrays of one shape and device; with ``scratch`` (``b`` is a buffer the kernel made and
    reads no more), the product written over ``b`` and summed, as exact as ``(a * b).sum()`` (a fresh product
    array costs its page faults: 0.6 ms of a 1.2 ms layer norm at 4096 x 256 float32); else, and under
    torch.compile, the product, summed. (Not a dot in float32: BLAS's accumulates in a few float32 partial sums,
    and over 10^6 terms that cancel its error is 10x that of torch's cascaded sum, 5e-4 against 4e-5.)"""
    if (a.shape != b.shape or a.dtype != b.dtype or a.device != b.device or not a.is_floating_point()
            or not (a.is_contiguous() and b.is_contiguous()) or torch.compiler.is_compiling()):
        return (a * b).sum()  # (under torch.compile, which fuses the product into the sum and its producer)
    if a.dtype == torch.float64:
        return torch.dot(a.view(-1), b.view(-1))
    if scratch and b._base is None and not b.requires_grad:
        return b.mul_(a).sum()
    return (a * b).sum()


def written_over(op: Any, u: Tensor, *args: Any) -> Tensor:
    """``op(u, *args)``, an ATen backward (``aten.sigmoid_backward``, ``aten.threshold_backward``...) of the
    upstream adjoint ``u``, written over ``u`` by its ``grad_input=`` form: no new array. The generated code
    passes only a ``u`` that is a buffer of the kernel's that nothing reads after (numeric.codegen checks that
    on the printed lines). The plain call where a tensor argument differs from ``u`` in shape or dtype (``u``
    could not hold the result) and under torch.compile."""
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and u.requires_grad):
        return op(u, *args)  # (autograd records no out= call: a kernel called with tensors that require grad)
    for x in args:
        if isinstance(x, Tensor) and (x.shape != u.shape or x.dtype != u.dtype or x.requires_grad):
            return op(u, *args)
    return op.grad_input(u, *args, grad_input=u)


def softmax_backward(u: Tensor, a: Tensor, dim: int) -> Tensor:
    """``a (u - sum(a u, dim))``, the adjoint of a softmax's input given the adjoint ``u`` of its output ``a``, as
    ATen's fused softmax backward (one read of each, one write: the printed form takes four passes and a
    temporary) where ``u`` and ``a`` have one shape and float dtype; else, and under torch.compile, that form."""
    if u.shape == a.shape and u.dtype == a.dtype and a.is_floating_point() and not torch.compiler.is_compiling():
        return torch.ops.aten._softmax_backward_data(u, a, dim, a.dtype)
    return (u - (a * u).sum(dim=dim, keepdim=True)) * a  # (torch.compile fuses this form itself)


def conv2d_grads(grad: Tensor, x: Tensor, w: Tensor | None, x_shape: tuple[int, ...] | None,
                 w_shape: tuple[int, ...], bias: bool = False, *, stride: Any = 1, padding: Any = 1,
                 dilation: Any = 1) -> tuple[Tensor, ...]:
    """The adjoints of the input (unless ``x_shape`` is None), of the weight and, with ``bias``, of the bias
    (``grad`` summed over all but the channel axis) of ``F.conv2d(x, w, stride=, padding=, dilation=)`` given
    the adjoint ``grad`` of its output, in that order, from one ``aten.convolution_backward`` as autograd makes
    it: ``torch.nn.grad.conv2d_input`` and ``conv2d_weight`` make one such call each, and the bias gradient is
    a pass of its own. ``x_shape`` and ``w_shape`` are the shapes of the gradients (the input's and the
    weight's: checked, else those calls run); ``w`` (needed for the input gradient only) may be None."""
    from torch.nn import grad as nn_grad
    from torch.nn.modules.utils import _pair as pair

    want_x = x_shape is not None
    if x_shape is not None and (w is None or tuple(x.shape) != tuple(x_shape) or tuple(w.shape) != tuple(w_shape)) \
            or grad.dtype != x.dtype:
        out = [nn_grad.conv2d_weight(x, w_shape, grad, stride=stride, padding=padding, dilation=dilation)]
        if x_shape is not None:
            assert w is not None
            out.insert(0, nn_grad.conv2d_input(x_shape, w, grad, stride=stride, padding=padding, dilation=dilation))
        return (*out, grad.sum(dim=(0, 2, 3))) if bias else tuple(out)
    weight = w if w is not None else grad.new_empty(1).expand(w_shape)  # (as conv2d_weight: only its shape is read)
    gx, gw, gb = torch.ops.aten.convolution_backward(grad, x, weight, [w_shape[0]] if bias else None, pair(stride),
                                                     pair(padding), pair(dilation), False, [0, 0], 1,
                                                     [want_x, True, bias])
    return tuple(t for t, on in ((gx, want_x), (gw, True), (gb, bias)) if on)


def _narrow_rows(x: Tensor, axis: int) -> bool:
    """Whether ATen's CPU (log-)softmax would take its slow path: rows along ``axis`` narrower than its
    vector chunk (5 to 15 entries, e.g. ten classes) run one scalar loop per row, 3-4x slower than five
    whole-tensor passes (measured on 2 threads, float32 and float64, 4096 rows)."""
    return x.device.type == "cpu" and 4 < x.shape[axis] < 16 and x.dtype in (torch.float32, torch.float64)


def _stable_parts(x: Tensor, axis: int) -> tuple[Tensor, Tensor]:
    """``x - max`` and ``e^{x - max}`` along ``axis``: the stable start of softmax and log-softmax."""
    s = x - x.amax(axis, keepdim=True)
    return s, s.exp()


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """S_softmax(x) along ``axis``: torch.softmax, or whole-tensor passes for narrow rows."""
    if not _narrow_rows(x, axis):
        return torch.softmax(x, dim=axis)
    _, e = _stable_parts(x, axis)
    return e.div_(e.sum(axis, keepdim=True))


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """log S_softmax(x) along ``axis``: torch.log_softmax, or whole-tensor passes for narrow rows."""
    if not _narrow_rows(x, axis):
        return torch.log_softmax(x, dim=axis)
    s, e = _stable_parts(x, axis)
    return s.sub_(e.sum(axis, keepdim=True).log_())


def softmax_and_log(x: Tensor, axis: int = -1) -> tuple[Tensor, Tensor]:
    """S_softmax(x) and log S_softmax(x) from one exponential: the fused log-softmax then ``exp``, or
    for narrow rows ``s = x - max``, ``e = e^s``, ``e / sum e`` and ``s - log sum e``."""
    if not _narrow_rows(x, axis):
        ls = torch.log_softmax(x, dim=axis)
        return ls.exp(), ls
    s, e = _stable_parts(x, axis)
    z = e.sum(axis, keepdim=True)
    return e.div_(z), s.sub_(z.log_())


#: whether generated kernels may run a recurrence found to be an LSTM as PyTorch's fused kernel
#: (:mod:`numeric.native_rnn`); :func:`native_kernels` switches it off, e.g. to compare with the loop
_NATIVE = {"lstm": True}


class native_kernels:
    """``with native_kernels(False): ...`` runs the generated loops instead of PyTorch's fused kernels."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.saved: dict[str, bool] = {}

    def __enter__(self) -> native_kernels:
        self.saved = dict(_NATIVE)
        _NATIVE.update(dict.fromkeys(_NATIVE, self.enabled))
        return self

    def __exit__(self, *exc: Any) -> None:
        _NATIVE.update(self.saved)


def fused_lstm(x: Tensor) -> bool:
    """Whether PyTorch runs an LSTM layer over ``x`` as one fused kernel forward and one backward: oneDNN's,
    on a CPU, for float32. Elsewhere (float64, CUDA, oneDNN off, inference mode, inside torch.compile) the
    generated loop runs."""
    if not _NATIVE["lstm"] or x.device.type != "cpu" or x.dtype != torch.float32 or x.numel() == 0:
        return False
    if torch.is_inference_mode_enabled() or torch.compiler.is_compiling():
        return False
    return bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def lstm(x: Tensor, w_x: Tensor, w_h: Tensor, b: Tensor | None) -> tuple[Tensor, Any]:
    """``torch.lstm`` over the time-major sequence ``x`` (T, n, p) from zero states, with the stacked weights
    ``w_x`` (4m, p), ``w_h`` (4m, m) and bias ``b`` (4m,) in PyTorch's gate order (i, f, g, o). Returns the
    states ``h`` (T, n, m) and ``backward(zeta)``: the gradients of ``w_x``, ``w_h`` (and ``b``) given the
    adjoint ``zeta`` (T, n, m) of the states, by the fused kernel's own backward: new arrays, which the
    generated code scales in place."""
    n, m = x.shape[1], w_h.shape[1]
    with torch.enable_grad():
        leaves = [w.detach().requires_grad_(True) for w in ((w_x, w_h) if b is None else (w_x, w_h, b))]
        params = [leaves[0], leaves[1]] if b is None else [*leaves, torch.zeros_like(b)]
        zeros = x.new_zeros((1, n, m))
        h = torch.lstm(x.detach(), (zeros, zeros), params, b is not None, 1, 0.0, True, False, False)[0]

    def backward(zeta: Tensor) -> tuple[Tensor, ...]:
        return torch.autograd.grad(h, leaves, zeta)

    return h.detach(), backward
