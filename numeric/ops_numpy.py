"""NumPy runtime helpers used by generated kernels: numerically stable forms of the book's functions."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

Array = Any


def sigmoid(x: Array) -> Array:
    """sigma(x) = 1/(1 + e^{-x}) in three vectorised passes (2.4x faster than ``scipy.special.expit``'s
    scalar loop). No cancellation anywhere, so within 2 ulp of the exact value for every x; e^{-x}
    overflows to inf only where sigma(x) is below the smallest normal number (x < -88.7 in float32,
    -709 in float64), and there it gives 0, as ``expit`` and ``torch.sigmoid`` do."""
    with np.errstate(over="ignore"):
        e = np.exp(np.negative(x))
    if isinstance(e, np.ndarray):
        e += 1
        return np.reciprocal(e, out=e)
    return 1 / (1 + e)


def softplus(x: Array) -> Array:
    """log(1 + e^x), exact and stable for every x: max(x, 0) + log1p(e^{-|x|}), in place in one buffer
    (``np.logaddexp`` computes the same but element by element, several times slower)."""
    x = np.asarray(x)
    if x.ndim == 0 or x.dtype.kind != "f":
        return np.logaddexp(0.0, x)
    t = np.abs(x)
    np.negative(t, out=t)
    np.exp(t, out=t)
    np.log1p(t, out=t)
    return np.add(t, np.maximum(x, 0.0), out=t)


def relu(x: Array) -> Array:
    return np.maximum(x, 0.0)


def step(x: Array) -> Array:
    """1{x > 0}: ReLU's derivative with PyTorch's convention at 0."""
    return (x > 0).astype(np.result_type(x, np.float32))


# np.where branches per element: on a mask of mixed signs (an activation's) it mispredicts about half of them and
# runs 6x slower than one ufunc pass (4.5 ms against 0.7 ms at 4096 x 256 float32). The forms below select by
# maximum and minimum instead, which give the same values exactly, NaN and infinities included; a slope of 0
# (where 0 * inf is NaN) and, for the derivative, slopes outside [0, 1] keep the selection.


def leaky_relu(x: Array, slope: Any) -> Array:
    """x above 0, slope * x elsewhere: max(x, s x) for s <= 1, min(x, s x) for s >= 1 (s x is on the right
    side of x for each sign), both exact. (The slope as the array's dtype rounds it: 1e-50 is 0 in float32.)
    An array of slopes (a learned one, as PReLU's) is the selection."""
    if np.ndim(slope):
        return np.where(x > 0, x, slope * x)
    s = np.result_type(x, np.float32).type(slope)
    if s != 0:
        return np.maximum(x, s * x) if s <= 1 else np.minimum(x, s * x)
    return np.where(x > 0, x, s * x)


def leaky_step(x: Array, slope: Any) -> Array:
    """1 above 0, slope elsewhere (NaN included): max(1{x > 0}, s) for 0 <= s <= 1, exact; an array of slopes
    is the selection."""
    dtype = np.result_type(x, np.float32)
    if np.ndim(slope):
        return np.where(x > 0, 1.0, slope).astype(np.result_type(x, slope, np.float32))
    if 0 <= slope <= 1:
        return np.maximum(np.greater(x, 0), dtype.type(slope))
    return np.where(x > 0, 1.0, slope).astype(dtype)


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


def _narrow(x: Array, axis: int) -> bool:
    """Rows along the last axis of at most 16 entries (ten classes): NumPy reduces along such short rows one row
    at a time, 10-20x slower than a pass per column (max) or a product with ones (sum)."""
    return (isinstance(x, np.ndarray) and x.ndim >= 1 and axis in (-1, x.ndim - 1) and 1 < x.shape[-1] <= 16
            and x.dtype in (np.float32, np.float64))


def _max_keep(x: Array, axis: int) -> Array:
    """``x.max(axis, keepdims=True)`` (NaN where a row has one)."""
    if not _narrow(x, axis):
        return x.max(axis=axis, keepdims=True)
    m = x[..., 0].copy()
    for j in range(1, x.shape[-1]):
        np.maximum(m, x[..., j], out=m)
    return m[..., None]


def _sum_keep(x: Array, axis: int) -> Array:
    """``x.sum(axis, keepdims=True)``; narrow rows as one product with ones (a BLAS call)."""
    if not _narrow(x, axis):
        return x.sum(axis=axis, keepdims=True)
    return (x @ np.ones(x.shape[-1], x.dtype))[..., None]


def softmax(x: Array, axis: int = -1) -> Array:
    e = np.exp(x - _max_keep(x, axis))
    e /= _sum_keep(e, axis)
    return e


def log_softmax(x: Array, axis: int = -1) -> Array:
    s = x - _max_keep(x, axis)
    s -= np.log(_sum_keep(np.exp(s), axis))
    return s


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


def own(x: Array) -> Array:
    """A copy of ``x``: what a kernel returns in place of a value that may share memory with one of its
    arguments or with another value it returns (numeric.aliasing decides which)."""
    return np.array(x, copy=True) if isinstance(x, np.ndarray) else x


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
    """The diagonal matrices of the vectors along the last axis, exact zeros off the diagonal whatever ``v``
    holds, as ``torch.diag_embed``'s (a product with the identity would put ``0 * inf = NaN`` there)."""
    v = np.asarray(v)
    out = np.zeros(v.shape + v.shape[-1:], dtype=v.dtype)
    i = np.arange(v.shape[-1])
    out[..., i, i] = v
    return out


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
    s = x - _max_keep(x, axis)
    e = np.exp(s)
    total = _sum_keep(e, axis)
    e /= total
    s -= np.log(total)
    return e, s


# -- contractions of two operands through matmul (BLAS), batched or not ---------------------------------


def contract(spec: str, a: Array, b: Array) -> Array:
    """``np.einsum(spec, a, b)`` for two operands, as one ``np.matmul`` (BLAS, batched over the leading
    axes) between views of the operands wherever their axes allow it: ``np.einsum`` without a path runs
    batched products in its own loops, and its ``optimize=True`` path cannot batch (tensordot). Repeated
    indices and 0-d operands go to ``np.einsum``."""
    a, b = np.asarray(a), np.asarray(b)
    plan = _contract_plan(spec, a.shape, b.shape)
    if plan is None:
        return np.einsum(spec, a, b, optimize=True)
    swap, sum_a, sum_b, perm_a, shape_a, perm_b, shape_b, summed, out_shape, out_perm = plan
    if sum_a:
        a = a.sum(axis=sum_a)
    if sum_b:
        b = b.sum(axis=sum_b)
    x = a.transpose(perm_a).reshape(shape_a)
    y = b.transpose(perm_b).reshape(shape_b)
    r = np.matmul(y, x) if swap else np.matmul(x, y)
    if summed:
        r = r.sum(axis=summed)
    r = r.reshape(out_shape)
    return r.transpose(out_perm) if out_perm is not None else r


@functools.lru_cache(maxsize=4096)
def _contract_plan(spec: str, sa: tuple[int, ...], sb: tuple[int, ...]) -> Any:
    ins, out = spec.split("->")
    la, lb = ins.split(",")
    if (not la or not lb or len(set(la)) != len(la) or len(set(lb)) != len(lb) or len(la) != len(sa)
            or len(lb) != len(sb) or set(out) - set(la) - set(lb)):
        return None
    size = {**dict(zip(lb, sb)), **dict(zip(la, sa))}
    # letters only one operand has and the output lacks: summed out of that operand first
    sum_a = tuple(i for i, c in enumerate(la) if c not in lb and c not in out)
    sum_b = tuple(i for i, c in enumerate(lb) if c not in la and c not in out)
    la2 = "".join(c for c in la if c in lb or c in out)
    lb2 = "".join(c for c in lb if c in la or c in out)
    best = None
    for swap in (False, True):
        x, y = (lb2, la2) if swap else (la2, lb2)  # result rows come from x, columns from y
        contracted = [c for c in x if c in y and c not in out]
        for lead in (0, 1):
            # optionally, contracted letters leading both operands become batch axes, summed after the product
            summed_l = [c for c in contracted if lead and x.startswith(c) and y.startswith(c)][:1]
            k = [c for c in contracted if c not in summed_l]
            full_out = summed_l + list(out)
            cols = _suffix(full_out, lambda c, y=y, x=x: c in y and c not in x)
            rest = full_out[: len(full_out) - len(cols)]
            rows = _suffix(rest, lambda c, y=y, x=x: c in x and c not in y)
            batch = rest[: len(rest) - len(rows)]
            if any(c not in x and c not in y for c in batch):
                continue
            px = [x.index(c) for c in batch if c in x] + [x.index(c) for c in rows] + [x.index(c) for c in k]
            py = [y.index(c) for c in batch if c in y] + [y.index(c) for c in k] + [y.index(c) for c in cols]
            gx = tuple(size[c] if c in x else 1 for c in batch)
            gy = tuple(size[c] if c in y else 1 for c in batch)
            shx = gx + (math.prod(size[c] for c in rows), math.prod(size[c] for c in k))
            shy = gy + (math.prod(size[c] for c in k), math.prod(size[c] for c in cols))
            cost = (_copies(x, [c for c in batch if c in x], [rows, k], size)
                    + _copies(y, [c for c in batch if c in y], [k, cols], size)
                    + _traffic(gx, gy, shx[-2:], shy[-2:]))
            if summed_l:
                cost += math.prod(size[c] for c in batch) * shx[-2] * shy[-1]
            oshape = tuple(size[c] for c in full_out[len(summed_l):])
            plan = (swap, sum_b if swap else sum_a, sum_a if swap else sum_b, tuple(px), shx, tuple(py), shy,
                    tuple(range(len(summed_l))), oshape, None)
            if swap:
                plan = (swap, sum_a, sum_b, tuple(py), shy, tuple(px), shx, plan[7], oshape, None)
            if best is None or cost < best[0]:
                best = (cost, plan)
    return best[1] if best is not None else None


def _traffic(gx: tuple[int, ...], gy: tuple[int, ...], x: tuple[int, ...], y: tuple[int, ...]) -> int:
    """Elements ``np.matmul`` reads and writes for a product of (gx..., r, k) and (gy..., k, c) stacks: each
    of its products over the broadcast batch reads both matrices and writes one. A batch axis of size 1 in one
    operand makes that operand's matrix read once per product of the other's, so a plan that batches an axis
    the matrices could hold (a stack of matrix-vector products) costs what it reads, not nothing."""
    calls = math.prod(max(a, b) for a, b in zip(gx, gy))
    return calls * (x[0] * x[1] + y[0] * y[1] + x[0] * y[1])


def _suffix(letters: list[str], ok: Any) -> list[str]:
    out: list[str] = []
    for c in reversed(letters):
        if not ok(c):
            break
        out.insert(0, c)
    return out


def _copies(labels: str, batch: list[str], groups: list[list[str]], size: dict[str, int]) -> int:
    """Elements copied to bring an operand to (batch..., group, group): 0 when each group of several axes is
    a run of consecutive axes of the operand, in order (transposing and merging them is then a view), else
    the operand's size."""
    if all(len(g) < 2 or "".join(g) in labels for g in groups):
        return 0
    return math.prod(size[c] for c in labels)


# -- normalisation layers, with the signatures of PyTorch's native kernels ------------------------------------
# (the numpy backend calls these where numeric.norms proves a program's equations are the normalisation)

def _rows(x: Array, k: int) -> Array:
    """``x`` as (batch..., N): its last ``k`` axes flattened (a view for contiguous arrays)."""
    return x.reshape(x.shape[: x.ndim - k] + (-1,))


def native_layer_norm(z: Array, shape: tuple[int, ...], weight: Array | None, bias: Array | None,
                      eps: float) -> tuple[Array, Array, Array]:
    """(y, mean, 1/sigma) over the last ``len(shape)`` axes, as ``torch.native_layer_norm``: the variance
    from one pass over the centred values, the normalisation and the affine step in place."""
    k = len(shape)
    axes = tuple(range(z.ndim - k, z.ndim))
    mean = z.mean(axis=axes, keepdims=True)
    y = z - mean
    flat = _rows(y, k)
    var = np.einsum("...i,...i->...", flat, flat) / flat.shape[-1]
    rstd = (1 / np.sqrt(var + eps)).reshape(mean.shape)
    return _affine(y, rstd, weight, bias), mean, rstd


def _affine(zc: Array, rstd: Array, weight: Array | None, bias: Array | None) -> Array:
    """``weight * zc * rstd + bias`` in place in the centred values ``zc`` (a buffer of the caller's)."""
    zc *= rstd
    if weight is not None:
        zc *= weight
    if bias is not None:
        zc += bias
    return zc


def native_layer_norm_backward(up: Array, z: Array, shape: tuple[int, ...], mean: Array, rstd: Array,
                               weight: Array | None, bias: Array | None, mask: list[bool]
                               ) -> tuple[Array | None, Array | None, Array | None]:
    """(the adjoint of z, of the weight, of the bias) given the adjoint ``up`` of the output, as
    ``aten.native_layer_norm_backward``: ``rstd (u - mean(u) - zbar mean(u zbar))`` with ``u = weight up``."""
    k = len(shape)
    axes = tuple(range(z.ndim - k, z.ndim))
    batch = tuple(range(z.ndim - k))
    zbar = z - mean
    zbar *= rstd
    dw = np.einsum("ij,ij->j", _lead(up, k), _lead(zbar, k)).reshape(shape) if mask[1] and weight is not None \
        else None
    db = up.sum(axis=batch) if mask[2] and bias is not None else None
    dz = None
    if mask[0]:
        u = up * weight if weight is not None else up.copy()
        n = math.prod(shape)
        a = u.sum(axis=axes, keepdims=True) / n
        b = (np.einsum("...i,...i->...", _rows(u, k), _rows(zbar, k)) / n).reshape(a.shape)
        u -= a
        zbar *= b
        u -= zbar
        u *= rstd
        dz = u
    return dz, dw, db


def _lead(x: Array, k: int) -> Array:
    """``x`` as (batch, N): its leading axes flattened, and its last ``k``."""
    return x.reshape(-1, math.prod(x.shape[x.ndim - k:]))


def native_batch_norm(z: Array, weight: Array | None, bias: Array | None, running_mean: None, running_var: None,
                      training: bool, momentum: float, eps: float) -> tuple[Array, Array, Array]:
    """(y, mean, 1/sigma) of a matrix over its batch axis (0), as ``torch.native_batch_norm`` in training."""
    mean = z.mean(axis=0)
    y = z - mean
    var = np.einsum("ij,ij->j", y, y) / y.shape[0]
    rstd = 1 / np.sqrt(var + eps)
    return _affine(y, rstd, weight, bias), mean, rstd


def native_batch_norm_backward(up: Array, z: Array, weight: Array | None, running_mean: None, running_var: None,
                               mean: Array, rstd: Array, training: bool, eps: float, mask: list[bool]
                               ) -> tuple[Array | None, Array | None, Array | None]:
    """(the adjoint of z, of the weight, of the bias), as ``aten.native_batch_norm_backward`` in training."""
    zbar = z - mean
    zbar *= rstd
    n = z.shape[0]
    g_zbar = np.einsum("ij,ij->j", up, zbar)
    g_up = up.sum(axis=0)
    dz = None
    if mask[0]:
        w = weight if weight is not None else 1
        # rstd w (up - mean(up) - zbar mean(up zbar)), the weight applied to the small sums
        zbar *= g_zbar / n
        dz = up - g_up / n
        dz -= zbar
        dz *= rstd * w
    return dz, (g_zbar if mask[1] else None), (g_up if mask[2] else None)
