"""NumPy runtime helpers used by generated kernels: numerically stable forms of the book's functions."""

from __future__ import annotations

from typing import Any

import numpy as np

Array = Any


def sigmoid(x: Array) -> Array:
    """sigma(x) = 1/(1 + e^{-x}) without overflow: exp is only taken of -|x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def softplus(x: Array) -> Array:
    """log(1 + e^x), exact and stable for every x."""
    return np.logaddexp(0.0, x)


def relu(x: Array) -> Array:
    return np.maximum(x, 0.0)


def step(x: Array) -> Array:
    """1{x > 0}: ReLU's derivative with PyTorch's convention at 0."""
    return (x > 0).astype(np.result_type(x, np.float32))


def leaky_relu(x: Array, slope: float) -> Array:
    return np.where(x > 0, x, slope * x)


def leaky_step(x: Array, slope: float) -> Array:
    return np.where(x > 0, 1.0, slope).astype(np.result_type(x, np.float32))


def half_step(x: Array) -> Array:
    """1 for x > 0, 1/2 at 0, 0 below: the derivative of maximum (ties split evenly, as torch.maximum)."""
    return np.heaviside(x, 0.5)


def between(x: Array, lo: Array, hi: Array) -> Array:
    """1{lo <= x <= hi}: the derivative of clamp in x (bounds included, as torch.clamp)."""
    return ((x >= lo) & (x <= hi)).astype(np.result_type(x, lo, hi, np.float32))


def clamp(x: Array, lo: Array, hi: Array) -> Array:
    """min(max(x, lo), hi) (torch.clamp)."""
    return np.minimum(np.maximum(x, lo), hi)


def where(c: Array, a: Array, b: Array) -> Array:
    """a where c != 0, else b: a selection (an infinity in the branch not taken stays out)."""
    return np.where(np.asarray(c) != 0, a, b)


def inv0(x: Array) -> Array:
    """1/x, and 0 where x = 0 (the norm's gradient x / ||x|| at x = 0, as torch)."""
    x = np.asarray(x)
    safe = np.where(x == 0, 1.0, x)
    return np.where(x == 0, 0.0, 1.0 / safe)


def erf(x: Array) -> Array:
    """The error function on arrays (scipy.special.erf)."""
    from scipy.special import erf as _erf

    return _erf(x)


def softmax(x: Array, axis: int = -1) -> Array:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: Array, axis: int = -1) -> Array:
    s = x - x.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def logsumexp(x: Array, axis: int = -1) -> Array:
    m = x.max(axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.exp(x - m).sum(axis=axis))


def argmax_mask(x: Array, axis: int) -> Array:
    """One-hot of the first maximum along ``axis`` (where PyTorch routes max's gradient)."""
    idx = np.expand_dims(np.argmax(x, axis=axis), axis)
    out = np.zeros_like(x)
    np.put_along_axis(out, idx, 1.0, axis=axis)
    return out


def embed(x: Array, axis: int, index: int, size: int, like: Array) -> Array:
    """Zeros with ``x`` placed at ``index`` of a new axis ``axis`` (counted from the end), in ``like``'s dtype."""
    x = np.asarray(x)
    ax = axis % (x.ndim + 1)
    shape = x.shape[:ax] + (size,) + x.shape[ax:]
    out = np.zeros(shape, dtype=np.asarray(like).dtype)
    sl: list[Any] = [slice(None)] * len(shape)
    sl[ax] = index
    out[tuple(sl)] = x
    return out


def eye(d: int, like: Array) -> Array:
    return np.eye(d, dtype=like.dtype)


def full(shape: tuple[int, ...], value: float, like: Array) -> Array:
    return np.full(shape, value, dtype=like.dtype)


def solve(a: Array, b: Array, rest: int = 0) -> Array:
    """A^{-1} B for B of per-sample shape (k, *r) with ``rest = len(r)`` (leading axes of either are batch
    axes, broadcast against each other); an unbatched A is factored once for every column."""
    k = a.shape[-1]
    lead, tail = b.shape[: b.ndim - 1 - rest], b.shape[b.ndim - rest :]
    cols = int(np.prod(tail, dtype=np.int64))
    if a.ndim == 2:
        bt = np.moveaxis(b.reshape(lead + (k, cols)), -2, 0).reshape(k, -1)
        x = np.linalg.solve(a, bt).reshape((k, *lead, cols))
        return np.moveaxis(x, 0, -2).reshape(lead + (k,) + tail)
    batch = np.broadcast_shapes(a.shape[:-2], lead)
    b2 = np.broadcast_to(b.reshape(lead + (k, cols)), batch + (k, cols))
    x = np.linalg.solve(np.broadcast_to(a, batch + (k, k)), b2)
    return x.reshape(batch + (k,) + tail)


def logdet(a: Array) -> Array:
    """log det A (NaN where det A < 0 and -inf where it is 0, as torch.logdet)."""
    sign, logabs = np.linalg.slogdet(a)
    return np.where(sign > 0, logabs, np.where(sign == 0, -np.inf, np.nan))


def diag_embed(v: Array) -> Array:
    """The diagonal matrices of the vectors along the last axis."""
    k = v.shape[-1]
    return v[..., :, None] * np.eye(k, dtype=v.dtype)


def gather(x: Array, idx: Array, axis: int) -> Array:
    """x at the integer labels ``idx`` along ``axis`` (counted from the end, removed); the labels broadcast
    against x's other axes (trailing alignment: a leading sample axis on either side)."""
    idx = np.asarray(idx).astype(np.int64)
    xm = np.moveaxis(x, axis, -1)
    shape = np.broadcast_shapes(xm.shape[:-1], idx.shape)
    xb = np.broadcast_to(xm, shape + xm.shape[-1:])
    return np.take_along_axis(xb, np.broadcast_to(idx, shape)[..., None], -1)[..., 0]


def one_hot(idx: Array, size: int, axis: int, like: Array) -> Array:
    """The one-hot encoding of integer labels along a new axis ``axis`` (counted from the end)."""
    idx = np.asarray(idx).astype(np.int64)
    ax = axis % (idx.ndim + 1)
    shape = [1] * (idx.ndim + 1)
    shape[ax] = size
    return (np.expand_dims(idx, ax) == np.arange(size).reshape(shape)).astype(np.asarray(like).dtype)


def causal_mask(tq: int, tk: int, like: Array) -> Array:
    """0 where key k <= query q, -inf above the diagonal (top-left aligned, as torch's is_causal)."""
    m = np.zeros((tq, tk), dtype=np.asarray(like).dtype)
    m[np.triu_indices(tq, 1, tk)] = -np.inf
    return m


def unfold(x: Array, kernel: tuple[int, int], stride: int, padding: int, dilation: int, flat: bool,
           fill: float = 0.0) -> Array:
    """Windows of (..., C, H, W): (..., C, kh, kw, OH, OW), or (..., C, kh*kw, OH, OW) when ``flat``."""
    kh, kw = kernel
    H, W = x.shape[-2:]
    oh = (H + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    ow = (W + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    pad = [(0, 0)] * (x.ndim - 2) + [(padding, padding), (padding, padding)]
    xp = np.pad(x, pad, constant_values=fill)
    out = np.empty(x.shape[:-2] + (kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            r, c = i * dilation, j * dilation
            out[..., i, j, :, :] = xp[..., r : r + stride * (oh - 1) + 1 : stride, c : c + stride * (ow - 1) + 1 : stride]
    return out.reshape(x.shape[:-2] + (kh * kw, oh, ow)) if flat else out


def fold(p: Array, image: tuple[int, int], kernel: tuple[int, int], stride: int, padding: int,
         dilation: int, flat: bool) -> Array:
    """The adjoint of :func:`unfold`: windows (..., C, kh, kw, OH, OW) or (..., C, kh*kw, OH, OW) summed
    back onto (..., C, H, W)."""
    kh, kw = kernel
    H, W = image
    if flat:
        p = p.reshape(p.shape[:-3] + (kh, kw) + p.shape[-2:])
    oh, ow = p.shape[-2:]
    lead = p.shape[:-4]
    xp = np.zeros(lead + (H + 2 * padding, W + 2 * padding), dtype=p.dtype)
    for i in range(kh):
        for j in range(kw):
            r, c = i * dilation, j * dilation
            xp[..., r : r + stride * (oh - 1) + 1 : stride, c : c + stride * (ow - 1) + 1 : stride] += p[..., i, j, :, :]
    return xp[..., padding : padding + H, padding : padding + W]


def index_grid(shape: tuple[int, ...], axis: int, like: Array) -> Array:
    """Entries equal to their index along ``axis``."""
    idx = np.arange(shape[axis], dtype=np.asarray(like).dtype)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return np.broadcast_to(idx.reshape(view), shape)


def softmax_and_log(x: Array, axis: int = -1) -> tuple[Array, Array]:
    """S_softmax(x) and log S_softmax(x) from one exponential."""
    s = x - x.max(axis=axis, keepdims=True)
    e = np.exp(s)
    total = e.sum(axis=axis, keepdims=True)
    return e / total, s - np.log(total)
