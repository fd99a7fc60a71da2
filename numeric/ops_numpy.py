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


def solve(a: Array, b: Array) -> Array:
    return np.linalg.solve(a, b)


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
