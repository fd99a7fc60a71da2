"""The ``layers`` benchmark: generated kernels against torch eager autograd, layer by layer.

For every layer the same forward+backward (the loss and the gradient of every parameter and differentiable
input) is timed side by side, interleaved, in rounds (see :func:`numeric.bench.race`), and each column is
the median over rounds of the per-round ratio to torch eager autograd on an independent
``torch.nn.functional`` formulation (``nn.LSTM`` for the LSTM), in float32 / float64:

* **torch**: ``numeric.compile(m, "torch")``, with its input checks, unfused (``raw``: without the checks);
* **numpy**: ``numeric.compile(m, "numpy").raw`` on NumPy arrays;
* **fuse**: ``numeric.compile(m, "torch", fuse=True)`` (its first-call compile time in parentheses);
* **t.compile**: ``torch.compile`` of the eager formulation (forward compiled; AOTAutograd compiles the
  backward);
* **closed**: a hand-written closed-form forward+backward in torch, where the layer has a well-known one;
* **numpy/torch**: the NumPy kernel over the raw torch kernel; **numpy/np closed**: the NumPy kernel over the
  same closed form written by hand in NumPy (checked against eager like every contender).

Memory traffic is counted, not estimated: the kernel runs once under a ``TorchDispatchMode`` that records
every ATen operation with the bytes it reads (the memory spanned by each tensor argument, so a broadcast
vector counts as a vector) and writes (its outputs; views move nothing). ``passes`` is that traffic in
units of the largest input array, for the generated kernel and for eager autograd (forward + backward);
``floor`` is the least any implementation must move (every input read once, every gradient written once)
and ``floor ms`` that traffic at this machine's measured copy bandwidth.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import derive
import numeric

from .bench import Settings, format_table, race

__all__ = ["bench_layers", "count_traffic", "CASES"]

THREADS = 2
Tensors = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Eager references and closed forms (torch)
# --------------------------------------------------------------------------------------------------

def _logistic_eager(t: Tensors) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(t["X"] @ t["w"] + t["b"], t["y"])


def _softmax_eager(t: Tensors) -> torch.Tensor:
    return F.cross_entropy(F.linear(t["X"], t["W"], t["b"]), t["Y"])


def _mlp_eager_with(act: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Tensors], torch.Tensor]:
    """The mlp (any depth, softmax cross entropy) with the activation ``act`` between its layers."""

    def eager(t: Tensors) -> torch.Tensor:
        h = t["X"]
        L = sum(1 for k in t if k.startswith("W"))
        for l in range(1, L + 1):
            h = F.linear(h, t[f"W{l}"], t[f"b{l}"])
            if l < L:
                h = act(h)
        return F.cross_entropy(h, t["Y"])

    return eager


_mlp_eager = _mlp_eager_with(torch.sigmoid)


def _ln_eager(t: Tensors) -> torch.Tensor:
    out = F.layer_norm(t["Z"], (t["Z"].shape[-1],), t["gamma"], t["beta"], 1e-5)
    return (t["G"] * out).sum()


def _bn_eager(t: Tensors) -> torch.Tensor:
    out = F.batch_norm(t["Z"], None, None, weight=t["gamma"], bias=t["beta"], training=True, eps=1e-5)
    return (t["G"] * out).sum()


def _attn_eager(t: Tensors) -> torch.Tensor:
    return (t["G"] * F.scaled_dot_product_attention(t["Q"], t["K"], t["V"])).sum()


def _causal_attn_eager(t: Tensors) -> torch.Tensor:
    return (t["G"] * F.scaled_dot_product_attention(t["Q"], t["K"], t["V"], is_causal=True)).sum()


def _conv_eager(t: Tensors) -> torch.Tensor:
    return (t["G"] * F.conv2d(t["X"], t["W"], t["b"], padding=1)).sum()


def _max_pool_eager(t: Tensors) -> torch.Tensor:
    return (t["G"] * F.max_pool2d(t["X"], 2)).sum()


def _avg_pool_eager(t: Tensors) -> torch.Tensor:
    return (t["G"] * F.avg_pool2d(t["X"], 2)).sum()


def _linear_eager(t: Tensors) -> torch.Tensor:
    return (t["G"] * F.linear(t["A"], t["W"], t["b"])).sum()


def _act_eager(f: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Tensors], torch.Tensor]:
    def eager(t: Tensors) -> torch.Tensor:
        return (t["G"] * f(t["Z"])).sum()

    return eager


def _gcn_eager(t: Tensors) -> torch.Tensor:
    return (t["G"] * torch.relu(t["A_hat"] @ t["H"] @ t["W"])).sum()


def _lstm_eager(t: Tensors) -> torch.Tensor:
    """nn.LSTM (gate order i, f, g, o) and the softmax head on all steps at once; 1/T sum_t mean_i CE."""
    P = t
    m = P["W_fh"].shape[0]
    X = P["X"]
    state = {"weight_ih_l0": torch.cat([P["W_ix"], P["W_fx"], P["W_cx"], P["W_ox"]]),
             "weight_hh_l0": torch.cat([P["W_ih"], P["W_fh"], P["W_ch"], P["W_oh"]]),
             "bias_ih_l0": torch.cat([P["b_i"], P["b_f"], P["b_c"], P["b_o"]]),
             "bias_hh_l0": torch.zeros(4 * m, dtype=X.dtype, device=X.device)}
    cell = _lstm_module(X.shape[-1], m, X.dtype)
    H, _ = torch.func.functional_call(cell, state, (X,))
    q = P["W_yh"].shape[0]
    return F.cross_entropy(F.linear(H, P["W_yh"], P["b_y"]).reshape(-1, q), P["Y"].reshape(-1, q))


_LSTMS: dict[tuple[int, int, torch.dtype], torch.nn.LSTM] = {}


def _lstm_module(p: int, m: int, dtype: torch.dtype) -> torch.nn.LSTM:
    key = (p, m, dtype)
    if key not in _LSTMS:
        _LSTMS[key] = torch.nn.LSTM(p, m, dtype=dtype)
    return _LSTMS[key]


def _logistic_closed(w: torch.Tensor, b: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> Any:
    n = X.shape[0]
    z = torch.addmv(b, X, w)
    loss = (F.softplus(z) - y * z).mean()
    r = torch.sigmoid(z).sub_(y)
    return loss, (r @ X).div_(n), r.mean()


def _softmax_closed(W: torch.Tensor, b: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> Any:
    n = X.shape[0]
    Z = torch.addmm(b, X, W.T)
    ls = torch.log_softmax(Z, dim=1)
    loss = -(Y * ls).sum() / n
    delta = ls.exp_().sub_(Y).div_(n)
    return loss, delta.T @ X, delta.sum(0)


def _mlp_closed(W1: torch.Tensor, W2: torch.Tensor, W3: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor,
                b3: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> Any:
    n = X.shape[0]
    a1 = torch.sigmoid(torch.addmm(b1, X, W1.T))
    a2 = torch.sigmoid(torch.addmm(b2, a1, W2.T))
    ls = torch.log_softmax(torch.addmm(b3, a2, W3.T), dim=1)
    loss = -(Y * ls).sum() / n
    d3 = ls.exp_().sub_(Y).div_(n)
    d2 = torch.ops.aten.sigmoid_backward(d3 @ W3, a2)
    d1 = torch.ops.aten.sigmoid_backward(d2 @ W2, a1)
    return loss, d1.T @ X, d2.T @ a1, d3.T @ a2, d1.sum(0), d2.sum(0), d3.sum(0)


def _norm_closed(axis: int) -> Callable[..., Any]:
    def closed(gamma: torch.Tensor, beta: torch.Tensor, Z: torch.Tensor, G: torch.Tensor) -> Any:
        var, mu = torch.var_mean(Z, dim=axis, correction=0, keepdim=True)
        rstd = (var + 1e-5).rsqrt_()
        zhat = (Z - mu).mul_(rstd)
        loss = (G * torch.addcmul(beta, gamma, zhat)).sum()
        g = G * gamma
        red = 0  # parameters live along the features: their gradients sum over the samples
        gz = (g - g.mean(axis, keepdim=True)).sub_(zhat * (g * zhat).mean(axis, keepdim=True)).mul_(rstd)
        return loss, (G * zhat).sum(red), G.sum(red), gz

    return closed


# Closed forms in NumPy, written as one would by hand (BLAS products, in-place updates of temporaries whose
# last use has passed, np.logaddexp for softplus, a sigmoid that overflows safely): what the NumPy kernel is
# measured against

def _np_sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z) in three passes on one temporary (e^-z overflows to inf below -88 in float32, -709 in
    float64, and 1 / inf is the right 0)."""
    with np.errstate(over="ignore"):
        e = np.exp(-z)
    e += 1
    return np.reciprocal(e, out=e)


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    """log S_softmax(z) along the rows, in place on ``z`` (a temporary)."""
    z -= z.max(1, keepdims=True)
    z -= np.log(np.exp(z).sum(1, keepdims=True))
    return z


def _np_logistic_closed(w: np.ndarray, b: np.ndarray, X: np.ndarray, y: np.ndarray) -> Any:
    n = X.shape[0]
    z = X @ w + b
    loss = (np.logaddexp(0, z) - y * z).mean()
    r = _np_sigmoid(z)
    r -= y
    return loss, (r @ X) / n, r.mean()


def _np_softmax_closed(W: np.ndarray, b: np.ndarray, X: np.ndarray, Y: np.ndarray) -> Any:
    n = X.shape[0]
    ls = _np_log_softmax(X @ W.T + b)
    loss = -np.vdot(Y, ls) / n
    delta = np.exp(ls, out=ls)
    delta -= Y
    delta /= n
    return loss, delta.T @ X, delta.sum(0)


def _np_mlp_closed(W1: np.ndarray, W2: np.ndarray, W3: np.ndarray, b1: np.ndarray, b2: np.ndarray,
                   b3: np.ndarray, X: np.ndarray, Y: np.ndarray) -> Any:
    n = X.shape[0]
    a1 = _np_sigmoid(X @ W1.T + b1)
    a2 = _np_sigmoid(a1 @ W2.T + b2)
    ls = _np_log_softmax(a2 @ W3.T + b3)
    loss = -np.vdot(Y, ls) / n
    d3 = np.exp(ls, out=ls)
    d3 -= Y
    d3 /= n
    d2 = d3 @ W3
    d2 *= a2
    d2 *= 1 - a2
    d1 = d2 @ W2
    d1 *= a1
    d1 *= 1 - a1
    return loss, d1.T @ X, d2.T @ a1, d3.T @ a2, d1.sum(0), d2.sum(0), d3.sum(0)


def _np_norm_closed(axis: int) -> Callable[..., Any]:
    def closed(gamma: np.ndarray, beta: np.ndarray, Z: np.ndarray, G: np.ndarray) -> Any:
        zhat = Z - Z.mean(axis, keepdims=True)
        rstd = np.mean(zhat * zhat, axis, keepdims=True)
        rstd += 1e-5
        rstd = 1 / np.sqrt(rstd, out=rstd)
        zhat *= rstd
        Gz = G * zhat
        g = G * gamma
        dgamma, dbeta = Gz.sum(0), G.sum(0)
        loss = float(dgamma @ gamma + dbeta @ beta)  # sum G (gamma zhat + beta), by the parameter's sums
        gz = g - g.mean(axis, keepdims=True)
        g *= zhat
        gz -= zhat * g.mean(axis, keepdims=True)
        gz *= rstd
        return loss, dgamma, dbeta, gz

    return closed


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One row: a zoo entry, its options, full and quick sizes, the eager loss and an optional closed form
    (returning the loss and the gradients in ``m.grad_names`` order)."""

    name: str
    label: str
    options: dict[str, Any]
    full: dict[str, int]
    small: dict[str, int]
    eager: Callable[[Tensors], torch.Tensor]
    closed: Callable[..., Any] | None = None
    compile_eager: bool = True
    notes: tuple[str, ...] = field(default=())
    np_closed: Callable[..., Any] | None = None  # the same closed form in NumPy, on NumPy arrays


CASES: list[Case] = [
    Case("logistic_regression", "logistic_regression", {}, {"n": 4096, "p": 256}, {"n": 256, "p": 16},
         _logistic_eager, _logistic_closed, np_closed=_np_logistic_closed),
    Case("softmax_regression", "softmax_regression", {}, {"n": 4096, "p": 256, "K": 10},
         {"n": 256, "p": 16, "K": 4}, _softmax_eager, _softmax_closed, np_closed=_np_softmax_closed),
    Case("mlp", "mlp 256-256-256-10 sigmoid", {"layers": 3, "widths": (256, 256, 256, 10)}, {"n": 4096},
         {"n": 256}, _mlp_eager, _mlp_closed, np_closed=_np_mlp_closed),
    Case("layer_norm", "layer_norm", {}, {"n": 4096, "p": 256}, {"n": 256, "p": 32}, _ln_eager, _norm_closed(1),
         np_closed=_np_norm_closed(1)),
    Case("batch_norm", "batch_norm", {}, {"n": 4096, "N": 256}, {"n": 256, "N": 32}, _bn_eager, _norm_closed(0),
         np_closed=_np_norm_closed(0)),
    Case("attention", "attention", {}, {"n": 32, "T_q": 128, "T_k": 128, "d": 64, "d_v": 64},
         {"n": 4, "T_q": 16, "T_k": 16, "d": 8, "d_v": 8}, _attn_eager),
    Case("lstm", "lstm (vs nn.LSTM)", {}, {"T": 64, "n": 32, "p": 256, "m": 256, "q": 10},
         {"T": 8, "n": 4, "p": 8, "m": 8, "q": 3}, _lstm_eager),
    Case("conv2d", "conv2d 3x3 pad 1", {"kernel": (3, 3), "padding": 1},
         {"n": 32, "C_in": 64, "C_out": 64, "H_in": 32, "W_in": 32},
         {"n": 4, "C_in": 4, "C_out": 4, "H_in": 8, "W_in": 8}, _conv_eager),
    Case("max_pool2d", "max_pool2d 2x2 64x32x32", {}, {"n": 32, "C_in": 64, "H_in": 32, "W_in": 32},
         {"n": 4, "C_in": 4, "H_in": 8, "W_in": 8}, _max_pool_eager),
    Case("avg_pool2d", "avg_pool2d 2x2 64x32x32", {}, {"n": 32, "C_in": 64, "H_in": 32, "W_in": 32},
         {"n": 4, "C_in": 4, "H_in": 8, "W_in": 8}, _avg_pool_eager),
    Case("linear", "linear 256->256", {}, {"n": 4096, "N_in": 256, "N_out": 256}, {"n": 256, "N_in": 16, "N_out": 16},
         _linear_eager),
    Case("gelu", "gelu (erf)", {}, {"n": 4096, "N": 256}, {"n": 256, "N": 16}, _act_eager(F.gelu)),
    Case("silu", "silu", {}, {"n": 4096, "N": 256}, {"n": 256, "N": 16}, _act_eager(F.silu)),
    Case("elu", "elu alpha=1", {}, {"n": 4096, "N": 256}, {"n": 256, "N": 16}, _act_eager(F.elu)),
    Case("gcn", "gcn relu N=1024 256->256", {}, {"N": 1024, "p": 256, "q": 256}, {"N": 64, "p": 16, "q": 16},
         _gcn_eager),
]


def _arrays(m: derive.Model, names: list[str], sizes: dict[str, int], dtype: torch.dtype) -> Tensors:
    g = torch.Generator().manual_seed(0)
    shapes = m.shapes(**sizes)
    out = {}
    for name in names:
        shape = shapes[name]
        v = m.tensor(name)
        x = torch.randn(shape, generator=g, dtype=dtype)
        if v.domain == "simplex":
            x = torch.softmax(x, -1)
        elif v.domain == "unit":
            x = torch.sigmoid(x)
        elif v.role == "param" and len(shape) >= 2:
            x = x / max(1, math.prod(shape[1:])) ** 0.5
        out[name] = x
    return out


# --------------------------------------------------------------------------------------------------
# Memory traffic
# --------------------------------------------------------------------------------------------------

def _span(t: torch.Tensor) -> int:
    """Bytes of memory a tensor's elements span (a broadcast or expanded view counts what is stored)."""
    if t.numel() == 0:
        return 0
    if t.layout != torch.strided:
        return int(t.numel() * t.element_size())
    elems = 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))
    return int(min(elems, t.numel()) * t.element_size())


class _Traffic(TorchDispatchMode):
    """Sums the bytes each ATen operation reads and writes; views and metadata operations move nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.read = 0
        self.written = 0
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "is_view", False) or func in _NO_TRAFFIC:
            return out
        ins = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        outs = [a for a in torch.utils._pytree.tree_leaves(out) if isinstance(a, torch.Tensor)]
        self.ops += 1
        seen: set[tuple[int, int]] = set()
        for a in ins:
            key = (a.data_ptr(), _span(a))
            if key not in seen:
                seen.add(key)
                self.read += _span(a)
        for o in outs:
            self.written += _span(o)
        return out


_NO_TRAFFIC = {torch.ops.aten.empty.memory_format, torch.ops.aten.empty_strided.default,
               torch.ops.aten.detach.default, torch.ops.aten._local_scalar_dense.default}


def count_traffic(fn: Callable[[], Any]) -> tuple[int, int]:
    """(bytes read, bytes written) by the ATen operations of one call of ``fn``."""
    mode = _Traffic()
    with mode:
        fn()
    return mode.read, mode.written


def _bandwidth() -> float:
    """Bytes per second of a large copy on this machine (read + write)."""
    a = torch.randn(16 * 2**20)  # 64 MB
    b = torch.empty_like(a)
    b.copy_(a)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        b.copy_(a)
        times.append(time.perf_counter() - t0)
    return 2 * a.numel() * a.element_size() / min(times)


# --------------------------------------------------------------------------------------------------
# The section
# --------------------------------------------------------------------------------------------------

def _grads_close(a: list[Any], b: list[Any], rtol: float) -> float:
    """The largest |a - b| relative to max(|b|, 1) over paired arrays."""
    worst = 0.0
    for x, y in zip(a, b):
        x64 = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).double()
        y64 = torch.as_tensor(y).double()
        if x64.shape != y64.shape:
            return math.inf
        scale = max(float(y64.abs().max()) if y64.numel() else 0.0, 1.0)
        worst = max(worst, float((x64 - y64).abs().max()) / scale if y64.numel() else 0.0)
    return worst


def _call(f: Callable[..., Any], a: dict[str, Any]) -> Any:
    return f(**a)


def _mismatches(name: str, dtype: torch.dtype, checks: dict[str, list[Any]], expect: list[Any],
                plain: Tensors) -> list[str]:
    """Each contender of ``checks`` (loss, then gradients) that differs from eager's ``expect``, as a line."""
    tol = 1e-4 if dtype == torch.float32 else 1e-8
    # the loss sums N = (largest input's size) terms of unit scale (the arrays are drawn so): in float32 any
    # order of that sum rounds by ~eps sqrt(N) (silu's 10^6 terms, cancelling to ~1: eager's own float32 loss
    # is off by up to 2e-4 over 20 draws), the gradients are elementwise
    n_terms = max(v.numel() for v in plain.values())
    loss_tol = tol + (8 * 2**-23 * math.sqrt(n_terms) if dtype == torch.float32 else 0.0)
    out = []
    for who, vals in checks.items():
        e_loss = _grads_close(vals[:1], expect[:1], tol)
        e_grad = _grads_close(vals[1:], expect[1:], tol)
        if not (e_loss <= loss_tol and e_grad <= tol):
            out.append(f"{name} {str(dtype)[6:]}: {who} differs from eager: loss by {e_loss:.1e} "
                       f"(allowed {loss_tol:.1e}), gradients by {e_grad:.1e} (allowed {tol:.0e})")
    return out


def _eager_grads(f: Callable[[Tensors], torch.Tensor], req: Tensors, leaves: list[str]) -> Any:
    loss = f(req)
    return loss, torch.autograd.grad(loss, [req[k] for k in leaves])


def device_rows(settings: Settings, device: str, quick: bool,
                cases: Sequence[Case] | None = None) -> tuple[list[list[str]], list[str]]:
    """The rows of the layers table (or of ``cases``) on ``device`` (the CUDA table where a GPU is present): the
    generated torch kernel with its checks and raw, torch.compile of the eager formulation (not ``quick``), all
    as ratios to eager autograd on the same device, each call followed by a synchronisation; and the
    mismatches."""
    only = getattr(settings, "cases", None)
    sync: Callable[[], None] = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def synced(f: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            out = f()
            sync()
            return out

        return call

    rows: list[list[str]] = []
    problems: list[str] = []
    notes: list[str] = []
    for case in (c for c in (CASES if cases is None else cases) if not only or c.name in only):
        cells: dict[str, list[str]] = {}
        try:
            m = derive.models.get(case.name, **case.options)
            on = None if device == "cpu" else device  # (as the main table: the arrays' own device)
            k_raw = numeric.compile(m, "torch", device=on, check=False)
            k_checked = numeric.compile(m, "torch", device=on)
            leaves = list(m.grad_names)
            for dtype in (torch.float32, torch.float64):
                plain = {k: v.to(device) for k, v in _arrays(m, k_raw.names, case.small if quick else case.full,
                                                             dtype).items()}
                req = {k: (v.clone().requires_grad_(True) if k in leaves else v) for k, v in plain.items()}
                eager = functools.partial(_eager_grads, case.eager, req, leaves)
                contenders = {"raw": synced(functools.partial(_call, k_raw.raw, plain)),
                              "checked": synced(functools.partial(_call, k_checked, plain)), "eager": synced(eager)}
                if not quick and case.compile_eager:
                    torch._dynamo.reset()
                    compiled = functools.partial(_eager_grads, torch.compile(case.eager, dynamic=False), req, leaves)
                    try:
                        compiled()
                        contenders["compiled"] = synced(compiled)
                    except Exception as exc:  # no compiler for this device (no triton): the column shows "-"
                        notes.append(f"{case.name} ({device}): torch.compile failed: {type(exc).__name__}")
                ref_loss, ref_grads = eager()
                got = k_raw.raw(**plain)
                problems += _mismatches(case.name, dtype, {"torch": [got["loss"], *[got["grad"][k] for k in leaves]]},
                                        [ref_loss.detach(), *ref_grads], plain)
                r = race(contenders, settings)
                for key in ("checked", "raw", "compiled"):
                    cells.setdefault(key, []).append(f"{r.ratio(key, 'eager'):.2f}" if key in r.seconds else "-")
                cells.setdefault("checked/raw", []).append(f"{r.ratio('checked', 'raw'):.2f}")
                cells.setdefault("eager ms", []).append(f"{r.seconds['eager'] * 1e3:.3f}")
        except Exception as exc:  # one broken row must not hide the others
            problems.append(f"{case.name} ({device}): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            rows.append([case.label, "error", "", "", "", ""])
            continue
        rows.append([case.label] + [" / ".join(cells[k]) for k in ("checked", "raw", "compiled", "checked/raw",
                                                                    "eager ms")])
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    return rows, problems


def _at(name: str, label: str, full: dict[str, int], eager: Callable[[Tensors], torch.Tensor] | None = None,
        **options: Any) -> Case:
    """The row ``name`` of :data:`CASES` at other sizes (and options, with their own ``eager`` formulation)."""
    case = next(c for c in CASES if c.name == name)
    return Case(name, label, options or case.options, full, case.small, eager or case.eager, None, False)


#: the rows a held-out check times (softmax_regression, layer and batch norm, mlp, attention, lstm), at sizes
#: other than the table's: a kernel tuned to one shape would show here
OTHER_SIZES: list[Case] = [
    _at("softmax_regression", "softmax_regression n=1024 p=784 K=10", {"n": 1024, "p": 784, "K": 10}),
    _at("softmax_regression", "softmax_regression n=8192 p=128 K=100", {"n": 8192, "p": 128, "K": 100}),
    _at("softmax_regression", "softmax_regression n=1024 p=512 K=1000", {"n": 1024, "p": 512, "K": 1000}),
    _at("mlp", "mlp 784-512-256-10 n=2048", {"n": 2048}, layers=3, widths=(784, 512, 256, 10)),
    _at("mlp", "mlp 128x4-10 n=1024", {"n": 1024}, layers=4, widths=(128, 128, 128, 128, 10)),
    # other activations: each its own fused forward and backward kernel (leaky ReLU's printed form read 1.66)
    _at("mlp", "mlp 256-256-256-10 relu n=4096", {"n": 4096}, _mlp_eager_with(torch.relu), layers=3,
        widths=(256, 256, 256, 10), activation="relu"),
    _at("mlp", "mlp 256-256-256-10 leaky_relu n=4096", {"n": 4096}, _mlp_eager_with(F.leaky_relu), layers=3,
        widths=(256, 256, 256, 10), activation="leaky_relu"),
    _at("mlp", "mlp 256-256-256-10 tanh n=4096", {"n": 4096}, _mlp_eager_with(torch.tanh), layers=3,
        widths=(256, 256, 256, 10), activation="tanh"),
    _at("layer_norm", "layer_norm n=2048 p=768", {"n": 2048, "p": 768}),
    _at("layer_norm", "layer_norm n=8192 p=64", {"n": 8192, "p": 64}),
    _at("batch_norm", "batch_norm n=256 N=1024", {"n": 256, "N": 1024}),
    _at("batch_norm", "batch_norm n=8192 N=64", {"n": 8192, "N": 64}),
    _at("attention", "attention n=8 T=512 d=64", {"n": 8, "T_q": 512, "T_k": 512, "d": 64, "d_v": 64}),
    _at("attention", "attention n=64 T_q=64 T_k=32 d=32 d_v=16", {"n": 64, "T_q": 64, "T_k": 32, "d": 32, "d_v": 16}),
    _at("attention", "attention causal n=32 T=128 d=64", {"n": 32, "T_q": 128, "T_k": 128, "d": 64, "d_v": 64},
        _causal_attn_eager, causal=True),
    _at("lstm", "lstm T=32 n=64 p=m=128 q=10 (vs nn.LSTM)", {"T": 32, "n": 64, "p": 128, "m": 128, "q": 10}),
    _at("lstm", "lstm T=128 n=16 p=64 m=512 q=5 (vs nn.LSTM)", {"T": 128, "n": 16, "p": 64, "m": 512, "q": 5}),
]


def bench_layer_sizes(settings: Settings) -> int:
    """Print the held-out rows at other sizes (:data:`OTHER_SIZES`); returns the number of mismatches."""
    quick = settings.rounds < 5
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        rows, problems = device_rows(settings, "cpu", quick, OTHER_SIZES)
    finally:
        torch.set_num_threads(threads)
    print(f"== layer_sizes: the layers rows at other sizes, ratio to torch eager autograd (float32 / float64), "
          f"{THREADS} threads, median of {settings.rounds} interleaved rounds ==")
    print(format_table(["layer", "torch", "raw", "checked/raw", "eager ms"], [r[:3] + r[4:] for r in rows]))
    if quick:
        print("(--quick: every row at its entry's small sizes, not the ones in its label)")
    for p in problems:
        print(f"MISMATCH/error: {p}")
    print()
    return len(problems)


def bench_layers(settings: Settings) -> int:
    """Print the layers table; returns the number of errors and mismatches."""
    quick = settings.rounds < 5
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _bench_layers(settings, quick)
    finally:
        torch.set_num_threads(threads)


def _bench_layers(settings: Settings, quick: bool) -> int:
    only = getattr(settings, "cases", None)
    cases = [c for c in CASES if not only or c.name in only]
    bw = _bandwidth()
    dtypes = (torch.float32, torch.float64)
    rows: list[list[str]] = []
    errors = 0
    problems: list[str] = []
    for case in cases:
        cells: dict[str, list[str]] = {}
        try:
            m = derive.models.get(case.name, **case.options)
            k_raw = numeric.compile(m, "torch", check=False)
            k_checked = numeric.compile(m, "torch")
            k_np = numeric.compile(m, "numpy", check=False)
            names = k_raw.names
            leaves = list(m.grad_names)
            sizes = case.small if quick else case.full
            traffic: dict[str, float] = {}
            for dtype in dtypes:
                t = _arrays(m, names, sizes, dtype)
                plain = {k: v.detach() for k, v in t.items()}
                arrs = {k: v.numpy() for k, v in plain.items()}
                req = {k: (v.clone().requires_grad_(True) if k in leaves else v) for k, v in t.items()}

                eager = functools.partial(_eager_grads, case.eager, req, leaves)
                contenders: dict[str, Callable[[], Any]] = {
                    "raw": functools.partial(_call, k_raw.raw, plain),
                    "checked": functools.partial(_call, k_checked, plain),
                    "eager": eager,
                    "numpy": functools.partial(_call, k_np.raw, arrs),
                }
                if case.closed is not None:
                    contenders["closed"] = functools.partial(_call, case.closed, plain)
                if case.np_closed is not None:
                    contenders["np closed"] = functools.partial(_call, case.np_closed, arrs)
                compile_s: dict[str, float] = {}
                if not quick:
                    k_fused = numeric.compile(m, "torch", check=False, fuse=True)  # a recurrence: its steps
                    t0 = time.perf_counter()
                    k_fused.raw(**plain)
                    compile_s["fused"] = time.perf_counter() - t0
                    contenders["fused"] = functools.partial(_call, k_fused.raw, plain)
                    if case.compile_eager:
                        torch._dynamo.reset()
                        compiled = functools.partial(_eager_grads, torch.compile(case.eager, dynamic=False), req,
                                                     leaves)
                        t0 = time.perf_counter()
                        compiled()
                        compile_s["compiled"] = time.perf_counter() - t0
                        contenders["compiled"] = compiled
                # the kernels must agree before their times mean anything
                ref_loss, ref_grads = eager()
                got = k_raw.raw(**plain)
                order = [got["loss"], *[got["grad"][k] for k in leaves]]
                expect = [ref_loss.detach(), *ref_grads]
                gnp = k_np.raw(**arrs)
                order_np = [gnp["loss"], *[gnp["grad"][k] for k in leaves]]
                checks = {"torch": order, "numpy": order_np}
                if case.closed is not None:
                    checks["closed"] = list(case.closed(**plain))
                if case.np_closed is not None:
                    checks["np closed"] = list(case.np_closed(**arrs))
                found = _mismatches(case.name, dtype, checks, expect, plain)
                errors += len(found)
                problems += found
                if dtype == torch.float32:
                    unit = max(_span(v) for v in plain.values())
                    rd, wr = count_traffic(contenders["checked"])
                    traffic["gen"] = (rd + wr) / unit
                    rd, wr = count_traffic(eager)
                    traffic["eager"] = (rd + wr) / unit
                    floor = sum(_span(v) for v in plain.values()) + sum(_span(g) for g in ref_grads)
                    traffic["floor"] = floor / unit
                    traffic["floor_ms"] = floor / bw * 1e3
                r = race(contenders, settings)
                for key in ("checked", "raw", "numpy", "fused", "compiled", "closed"):
                    val = f"{r.ratio(key, 'eager'):.2f}" if key in r.seconds else "-"
                    cells.setdefault(key, []).append(val)
                cells.setdefault("checked/raw", []).append(f"{r.ratio('checked', 'raw'):.2f}")
                cells.setdefault("numpy/np", []).append(f"{r.ratio('numpy', 'np closed'):.2f}"
                                                        if "np closed" in r.seconds else "-")
                cells.setdefault("numpy/torch", []).append(f"{r.ratio('numpy', 'raw'):.2f}")
                cells.setdefault("eager ms", []).append(f"{r.seconds['eager'] * 1e3:.2f}")
                for key, s in compile_s.items():
                    cells.setdefault(key + " s", []).append(f"{s:.1f}")
                cells.setdefault("iqr", []).append(f"{r.spread(('checked', 'eager')) * 100:.0f}%")
        except Exception as exc:  # one broken row must not hide the others
            errors += 1
            problems.append(f"{case.name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            rows.append([case.label, "error"] + [""] * 14)
            continue

        def cell(key: str, cells: dict[str, list[str]] = cells) -> str:
            vals = cells.get(key, [])
            if not vals or all(v == "-" for v in vals):
                return "-"
            return " / ".join(vals)

        fused = cell("fused")
        if "fused s" in cells:
            fused += f" ({cells['fused s'][0]} s)"
        tcompiled = cell("compiled")
        if "compiled s" in cells:
            tcompiled += f" ({cells['compiled s'][0]} s)"
        rows.append([case.label, cell("checked"), cell("raw"), cell("numpy"), fused, tcompiled, cell("closed"),
                     cell("checked/raw"), cell("numpy/torch"), cell("numpy/np"), f"{traffic['gen']:.1f}", f"{traffic['eager']:.1f}",
                     f"{traffic['floor']:.1f}", f"{traffic['floor_ms']:.2f}", cell("eager ms"), cell("iqr")])
    size_note = "quick sizes" if quick else "sizes: " + "; ".join(
        f"{c.name} " + ",".join(f"{k}={v}" for k, v in c.full.items()) for c in cases)
    print(f"== layers: forward+backward, ratio to torch eager autograd (float32 / float64), {THREADS} threads, "
          f"median of {settings.rounds} interleaved rounds ==")
    print(format_table(["layer", "torch", "raw", "numpy", "fuse", "t.compile", "closed", "checked/raw",
                        "numpy/torch", "numpy/np closed", "passes", "eager passes", "floor", "floor ms", "eager ms", "IQR"], rows))
    print(size_note)
    print("torch: numeric.compile(m, 'torch') with its input checks, unfused; raw: the generated function alone;")
    print("numpy: the NumPy kernel (raw); fuse: fuse=True (first-call compile seconds); t.compile: torch.compile")
    print("of the eager formulation; closed: hand-written torch forward+backward. passes: bytes read + written by")
    print("the ATen ops of one float32 call (counted under a dispatch mode) over the largest input's bytes; floor:")
    print(f"inputs read once + gradients written once; floor ms at {bw / 1e9:.1f} GB/s (measured copy).")
    print("numpy/torch: the NumPy kernel over the torch one (raw, same threads); numpy/np closed: over the same")
    print("closed form written by hand in NumPy (BLAS products, in-place temporaries), timed in the same rounds.")
    for p in problems:
        print(f"MISMATCH/error: {p}")
    print()
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        # true float32 on both sides: TF32 (cuDNN's default for convolutions and RNNs) would put eager's
        # rounding at 1e-3, beyond the agreement check
        flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            with warnings.catch_warnings():  # nn.LSTM's functional call: weights not one contiguous chunk
                warnings.filterwarnings("ignore", message="RNN module weights are not part")
                cuda_rows, cuda_problems = device_rows(settings, "cuda", quick)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
        print(f"== layers on CUDA ({name}): forward+backward, ratio to torch eager autograd on the GPU "
              f"(float32 / float64, TF32 off), median of {settings.rounds} interleaved rounds, each call "
              "synchronised ==")
        print(format_table(["layer", "torch", "raw", "t.compile", "checked/raw", "eager ms"], cuda_rows))
        print("the LSTM runs the generated loop on CUDA (the fused path is oneDNN's, CPU float32 only), against "
              "nn.LSTM's cuDNN kernel")
        for p in cuda_problems:
            print(f"MISMATCH/error: {p}")
        print()
        errors += len(cuda_problems)
    return errors
