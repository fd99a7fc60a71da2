"""Benchmark section ``parse`` (``dlmath bench --only parse``): one's own math, from text to kernels.

For each example of "Your own model" (the matrixcalculus.org classics and the deep-learning losses of
``docs/own_model.rst``), two tables:

1. **cold**: the time to parse the text (:func:`derive.parse`), to derive its backpropagation (and the
   Hessians it names) and to generate the NumPy and PyTorch modules, every cache cleared before each
   repeat (median of ``derive_rounds``); the goal is under 0.5 s per example in all.
2. **kernel vs autograd**: one call of the compiled PyTorch kernel (loss and every gradient; the Hessian
   for the ``(Hessian)`` rows; as compiled, checking its arrays, and with ``check=False``), on one torch
   thread, against ``torch.autograd`` on the same loss written in PyTorch
   (``torch.nn.functional`` where torch has it), float64, timed side by side (:func:`numeric.bench.race`),
   the ratio the median of per-round ratios (the Hessian rows against ``torch.autograd.functional.hessian``
   with ``vectorize=True``); and the largest difference of the loss, gradients and Hessian, relative to
   their size (a MISMATCH above 1e-9 counts as a problem).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import derive
import numeric

from .bench import Settings, _clear_caches, _ms, _x, format_table, race

__all__ = ["EXAMPLES", "Example", "bench_parse"]

GOAL_S = 0.5
TOLERANCE = 1e-9
THREADS = 1  # one torch thread: ratios that a loaded machine does not swamp (its idle workers spin)

T = torch.Tensor


@dataclass(frozen=True)
class Example:
    """One expression: its text, declarations, what is differentiated, the same loss in torch, and the
    sizes of its dimensions as a function of the benchmark's (``n``: samples, ``p``: features)."""

    name: str
    text: str
    types: dict[str, str]
    wrt: tuple[str, ...]
    torch_loss: Callable[..., T]
    sizes: Callable[[int, int], dict[str, int]]
    hessian: bool = False


def _rms(x: T, g: T, W: T, y: T) -> T:
    return ((W @ F.rms_norm(x, (x.shape[0],), weight=g, eps=1e-5) - y) ** 2).sum()


def _focal(W: T, x: T, y: T) -> T:
    logp = torch.log_softmax(W @ x, 0)
    return -(y * (1 - logp.exp()) ** 2 * logp).sum()


EXAMPLES: tuple[Example, ...] = (
    Example("quadratic form", "x'*A*x", {"x": "vector(n)", "A": "matrix(n,n)"}, ("x",),
            lambda x, A: x @ A @ x, lambda n, p: {"n": 2 * p}, hessian=True),
    Example("least squares", "norm2(X*w - y)^2", {"X": "matrix(n,p)", "w": "vector(p)", "y": "vector(n)"},
            ("w", "X"), lambda X, w, y: ((X @ w - y) ** 2).sum(), lambda n, p: {"n": n, "p": p}),
    Example("logistic loss", "sum(log(1 + exp(-y .* (X*w))))",
            {"X": "matrix(n,p)", "w": "vector(p)", "y": "vector(n)"}, ("w",),
            lambda X, w, y: F.softplus(-y * (X @ w)).sum(), lambda n, p: {"n": n // 4, "p": max(1, p // 4)},
            hessian=True),
    Example("trace", "tr(A*X*B)", {"A": "matrix(n,p)", "X": "matrix(p,q)", "B": "matrix(q,n)"}, ("A", "X", "B"),
            lambda A, X, B: torch.trace(A @ X @ B), lambda n, p: {"n": p, "p": p, "q": p}),
    Example("logdet", "logdet(X)", {"X": "spd(n)"}, ("X",), lambda X: torch.logdet(X), lambda n, p: {"n": p}),
    Example("inverse quadratic", "x'*inv(A)*x", {"x": "vector(n)", "A": "spd(n)"}, ("x", "A"),
            lambda x, A: x @ torch.linalg.inv(A) @ x, lambda n, p: {"n": p}),
    Example("huber", "r = X*w - y\na = abs(r)\nm = min(a, 1)\nsum(0.5*m.^2 + a - m)",
            {"X": "matrix(n,p)", "w": "vector(p)", "y": "vector(n)"}, ("w",),
            lambda X, w, y: F.huber_loss(X @ w, y, reduction="sum", delta=1.0), lambda n, p: {"n": n, "p": p}),
    Example("focal loss", "z = W*x\np = softmax(z)\n-sum(y .* (1 - p).^2 .* log(p))",
            {"W": "matrix(K,d)", "x": "vector(d)", "y": "vector(K)"}, ("W",), _focal,
            lambda n, p: {"K": p, "d": 4 * p}),
    Example("label smoothing", "lp = log(softmax(W*x))\n-(0.9*(y'*lp) + 0.1*mean(lp))",
            {"W": "matrix(K,d)", "x": "vector(d)", "y": "vector(K)"}, ("W",),
            lambda W, x, y: F.cross_entropy((W @ x)[None], y[None], label_smoothing=0.1, reduction="sum"),
            lambda n, p: {"K": p, "d": 4 * p}),
    Example("gaussian NLL", "0.5*sum(s + (y - mu).^2 ./ exp(s))", {"mu": "vector(d)", "s": "vector(d)",
                                                                   "y": "vector(d)"}, ("mu", "s"),
            lambda mu, s, y: F.gaussian_nll_loss(mu, y, s.exp(), reduction="sum", eps=0.0),
            lambda n, p: {"d": n * p}),
    Example("gaussian KL", "0.5*sum(exp(s) + mu.^2 - 1 - s)", {"mu": "vector(d)", "s": "vector(d)"}, ("mu", "s"),
            lambda mu, s: 0.5 * (s.exp() + mu**2 - 1 - s).sum(), lambda n, p: {"d": n * p}),
    Example("rmsnorm", "r = sqrt(mean(x.^2) + 1e-5)\nh = g .* x / r\nnorm2(W*h - y)^2",
            {"x": "vector(d)", "g": "vector(d)", "W": "matrix(k,d)", "y": "vector(k)"}, ("x", "g", "W"), _rms,
            lambda n, p: {"d": 4 * p, "k": p}),
    Example("swiglu", "u = W1*x\ng = u .* sigmoid(u) .* (W2*x)\nnorm2(W3*g - y)^2",
            {"W1": "matrix(h,d)", "W2": "matrix(h,d)", "W3": "matrix(d,h)", "x": "vector(d)", "y": "vector(d)"},
            ("W1", "W2", "W3"), lambda W1, W2, W3, x, y: ((W3 @ (F.silu(W1 @ x) * (W2 @ x)) - y) ** 2).sum(),
            lambda n, p: {"d": p, "h": 4 * p}),
    Example("gelu mlp", "z = W1*x + b\na = 0.5*z .* (1 + erf(z/sqrt(2)))\nnorm2(W2*a - y)^2",
            {"W1": "matrix(h,d)", "b": "vector(h)", "W2": "matrix(q,h)", "x": "vector(d)", "y": "vector(q)"},
            ("W1", "b", "W2"), lambda W1, b, W2, x, y: ((W2 @ F.gelu(W1 @ x + b) - y) ** 2).sum(),
            lambda n, p: {"d": p, "h": 4 * p, "q": p}),
    Example("infonce", "-(k'*q)/0.1 + logsumexp(K*q/0.1)", {"q": "vector(d)", "k": "vector(d)", "K": "matrix(m,d)"},
            ("q", "k", "K"), lambda q, k, K: -(k @ q) / 0.1 + torch.logsumexp(K @ q / 0.1, 0),
            lambda n, p: {"d": p, "m": n}),
    Example("tied autoencoder", "h = sigmoid(W*x + b)\nr = W'*h + c\nnorm2(r - x)^2",
            {"W": "matrix(k,d)", "b": "vector(k)", "c": "vector(d)", "x": "vector(d)"}, ("W", "b", "c"),
            lambda W, b, c, x: ((W.T @ torch.sigmoid(W @ x + b) + c - x) ** 2).sum(),
            lambda n, p: {"k": p, "d": 4 * p}),
)


def _parsed(ex: Example) -> derive.Model:
    return derive.parse(ex.text, wrt=list(ex.wrt), **ex.types)


def _cold(ex: Example, rounds: int) -> tuple[float, float, float]:
    """Median cold seconds to parse, to derive (backprop and Hessians) and to generate both modules."""
    parse_s, derive_s, gen_s = [], [], []
    for _ in range(max(1, rounds)):
        _clear_caches()
        t0 = time.perf_counter()
        m = _parsed(ex)
        t1 = time.perf_counter()
        derive.backprop(m)
        for w in m.hessian_wrt if ex.hessian else ():
            derive.hessian(m, w)
        t2 = time.perf_counter()
        hess = list(m.hessian_wrt) if ex.hessian else []
        for backend in ("numpy", "torch"):
            numeric.source(m, backend, hessian=hess)
        t3 = time.perf_counter()
        parse_s.append(t1 - t0)
        derive_s.append(t2 - t1)
        gen_s.append(t3 - t2)
    return statistics.median(parse_s), statistics.median(derive_s), statistics.median(gen_s)


def _tensors(m: derive.Model, sizes: dict[str, int], seed: int = 0) -> dict[str, T]:
    """Float64 tensors of ``m``'s shapes: standard normal scaled by 1/sqrt of the last axis, symmetric positive
    definite where declared ``spd``."""
    rng = np.random.default_rng(seed)
    out: dict[str, T] = {}
    for name, shape in m.shapes(**sizes).items():
        shape = tuple(int(s) for s in shape)
        a = rng.standard_normal(shape) / np.sqrt(max(1, shape[-1] if shape else 1))
        if m.tensor(name).domain == "spd":
            a = a @ a.T + np.eye(shape[0])
        out[name] = torch.tensor(a, dtype=torch.float64)
    return out


def _rel(a: Any, b: T) -> float:
    a = torch.as_tensor(a, dtype=torch.float64)
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-300))


def _kernel_row(ex: Example, settings: Settings) -> tuple[list[str], int]:
    m = _parsed(ex)
    sizes = ex.sizes(settings.n, settings.p)
    ts = _tensors(m, sizes)
    wrt = list(ex.wrt)
    hess = list(m.hessian_wrt) if ex.hessian else []
    f = numeric.compile(m, backend="torch", hessian=hess or None)
    raw = numeric.compile(m, backend="torch", hessian=hess or None, check=False)
    leaves = {k: (v.clone().requires_grad_() if k in wrt else v) for k, v in ts.items()}

    def gen() -> Any:
        return f(**ts)

    def gen_raw() -> Any:
        return raw(**ts)

    def auto() -> Any:
        loss = ex.torch_loss(**leaves)
        return loss, torch.autograd.grad(loss, [leaves[k] for k in wrt])

    def auto_hessian() -> Any:
        w = hess[0]
        rest = {k: v for k, v in ts.items() if k != w}
        return torch.autograd.functional.hessian(lambda v: ex.torch_loss(**rest, **{w: v}), ts[w], vectorize=True)

    out = gen()
    loss, grads = auto()
    err = max([_rel(out["loss"], loss.detach())] + [_rel(out["grad"][k], g) for k, g in zip(wrt, grads)])
    label = ex.name
    if hess:
        err = max(err, _rel(out["hessian"][hess[0]], auto_hessian()))
        auto = auto_hessian
        label += " (Hessian)"
    r = race({"gen": gen, "raw": gen_raw, "auto": auto}, settings)
    size = " ".join(f"{k}={v}" for k, v in sizes.items())
    ok = err <= TOLERANCE
    row = [label, size, _ms(r.seconds["gen"]), _ms(r.seconds["raw"]), _ms(r.seconds["auto"]),
           _x(r.ratio("gen", "auto")), _x(r.ratio("raw", "auto")), f"{err:.1e}" + ("" if ok else " MISMATCH")]
    return row, 0 if ok else 1


def bench_parse(settings: Settings) -> int:
    """Print the two tables; the number of problems (errors, mismatches)."""
    from .bench import _short_error

    errors = 0
    rows = []
    # SymPy's own first-use costs (lazy imports, its polynomial code built on first use) are not the
    # expression's: one unrelated expression goes through every step first
    warm = derive.parse("sum(log(1 + exp(A*x))) + logdet(S)", A="matrix(n,n)", x="vector(n)", S="spd(n)")
    derive.backprop(warm)
    for backend in ("numpy", "torch"):
        numeric.source(warm, backend)
    for ex in EXAMPLES:
        try:
            p, d, g = _cold(ex, settings.derive_rounds)
        except Exception as e:  # a failure is a row, not the end of the run
            rows.append([ex.name, "-", "-", "-", "-", _short_error(e)])
            errors += 1
            continue
        total = p + d + g
        rows.append([ex.name, _ms(p), _ms(d), _ms(g), _ms(total), "yes" if total < GOAL_S else "NO"])
    print("== parse: cold time from text to kernels, ms (every cache cleared; median of "
          f"{max(1, settings.derive_rounds)}) ==")
    print(format_table(["example", "parse", "derive", "generate", "total", f"< {GOAL_S} s"], rows))
    print("derive: derive.backprop (and derive.hessian for the Hessian rows); generate: numeric.source, numpy "
          "and torch.")
    print()
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        for ex in EXAMPLES:
            try:
                row, bad = _kernel_row(ex, settings)
            except Exception as e:
                row, bad = [ex.name, "-", "-", "-", "-", "-", "-", _short_error(e)], 1
            rows.append(row)
            errors += bad
    finally:
        torch.set_num_threads(threads)
    print(f"== parse: generated torch kernel vs torch autograd on the same loss written in torch, float64, "
          f"one call (loss and gradients), {THREADS} torch thread ==")
    print(format_table(["example", "sizes", "gen ms", "unchecked ms", "autograd ms", "gen/autograd",
                        "unchecked/autograd", "max rel diff"], rows, left=(0, 1)))
    print("gen: the kernel as numeric.compile returns it (it checks its input arrays and its results); unchecked: "
          "compiled with check=False.")
    print("(Hessian) rows: the generated dense Hessian against torch.autograd.functional.hessian(vectorize=True). "
          "Ratios are medians of per-round ratios, timed side by side.")
    print()
    return errors
