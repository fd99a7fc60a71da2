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


def leaky_relu(x: Tensor, slope: float) -> Tensor:
    return torch.where(x > 0, x, slope * x)


def leaky_step(x: Tensor, slope: float) -> Tensor:
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x > 0, one, one * slope)


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


def eye(d: int, like: Tensor) -> Tensor:
    return torch.eye(d, dtype=like.dtype, device=like.device)


def full(shape: tuple[int, ...], value: float, like: Tensor) -> Tensor:
    return torch.full(shape, value, dtype=like.dtype, device=like.device)


def solve(a: Tensor, b: Tensor) -> Tensor:
    return torch.linalg.solve(a, b)


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


def softmax_and_log(x: Tensor, axis: int = -1) -> tuple[Tensor, Tensor]:
    """S_softmax(x) and log S_softmax(x): the fused log-softmax, then one exponential."""
    ls = torch.log_softmax(x, dim=axis)
    return ls.exp(), ls
