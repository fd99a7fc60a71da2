"""Benchmarks: derivation cost, generated kernels vs autograd and closed forms, Hessians.

Run as ``python -m numeric.bench [--quick] [--only derive|kernels|hessian|scaling|sizes|layers|plugin]`` or through
``dlmath bench``. Three plain-text tables are printed:

1. **derive**: for every zoo entry, the cold time of ``derive.models.get`` + ``derive.backprop``,
   the number of adjoint equations, and the cold time of ``numeric.source(m, backend="torch")``;
   plus ``derive.hessian`` for ``logistic_regression``.
2. **kernels**: one call of the compiled generated kernel for ``logistic_regression`` and
   ``softmax_regression`` (numpy and torch, float64 and float32) against torch eager autograd on an
   independent ``torch.nn.functional`` formulation and against a hand-written closed-form kernel in
   the same backend.
3. **hessian**: the generated dense Hessian of ``logistic_regression`` in ``w`` against
   ``torch.autograd.functional.hessian`` and the closed form :math:`X^T D X / n`.

The machine this runs on is assumed noisy, so absolute times are secondary: contenders are timed
*side by side*, alternating within every round (the order rotates from round to round) after a
warm-up, and each ratio is the median over rounds of the per-round ratio, which cancels slow drifts
of the machine's speed. Times are medians over rounds. ``torch.set_num_threads`` is left at its
default.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import importlib
import inspect
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import torch
import torch.nn.functional as F

import derive
import numeric

Thunk = Callable[[], object]  # one timed call, arguments bound

KERNEL_MODELS = ("logistic_regression", "softmax_regression")
BACKENDS = ("numpy", "torch")
DTYPES = ("float64", "float32")
QUICK_DERIVE_MODELS = ("logistic_regression", "softmax_regression")
PAIRS = (("gen", "auto"), ("gen", "closed"), ("closed", "auto"))


@dataclass(frozen=True)
class Settings:
    """How hard to measure.

    Attributes:
        n, p, K: problem sizes for the kernel and Hessian tables.
        rounds: timed rounds per contender (medians are taken over these).
        warmup: untimed calls of every contender before the first round.
        min_sample_s: a sample repeats its call until it lasts at least this long.
        derive_rounds: cold repeats of each derivation timing.
        derive_models: zoo entries for the derivation table (``None``: all of them).
        cases: the rows of the ``layers`` section to run (``None``: all).
        settle_s: idle time before every sample. NumPy's OpenBLAS and torch's OpenMP worker threads
            keep spinning for up to ~0.1 s after their last call; on a 2-core machine a contender
            timed right after the other library's one runs several times slower until they stop.
    """

    n: int
    p: int
    K: int
    rounds: int
    warmup: int
    min_sample_s: float
    derive_rounds: int
    derive_models: tuple[str, ...] | None
    settle_s: float
    cases: tuple[str, ...] | None = None


FULL = Settings(n=4096, p=256, K=10, rounds=21, warmup=3, min_sample_s=0.05, derive_rounds=3,
                derive_models=None, settle_s=0.1)
QUICK = Settings(n=256, p=16, K=4, rounds=3, warmup=1, min_sample_s=0.002, derive_rounds=1,
                 derive_models=QUICK_DERIVE_MODELS, settle_s=0.0)

# Largest acceptable max |generated - closed form| relative to the size of the values, per dtype.
TOLERANCE = {"float64": 1e-9, "float32": 1e-4}


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------

def _time_once(fn: Thunk, number: int) -> float:
    """Seconds per call of ``fn``, averaged over ``number`` back-to-back calls, gc disabled."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed / number


def _calls_per_sample(fn: Thunk, min_sample_s: float) -> int:
    """How many back-to-back calls of ``fn`` last at least ``min_sample_s`` (at least 1)."""
    number = 1
    while True:
        per_call = _time_once(fn, number)
        if per_call * number >= min_sample_s:
            return number
        number = max(number * 2, int(min_sample_s / max(per_call, 1e-9) * 1.2) + 1)


@dataclass(frozen=True)
class Race:
    """Result of timing contenders side by side.

    Attributes:
        seconds: median seconds per call, per contender.
        samples: per-round seconds per call, per contender (round ``r`` of every contender was
            measured in the same round, so they are paired).
    """

    seconds: dict[str, float]
    samples: dict[str, list[float]]

    def ratios(self, a: str, b: str) -> list[float]:
        """Per-round time(a) / time(b), each from two samples taken in the same round."""
        return [x / y for x, y in zip(self.samples[a], self.samples[b])]

    def ratio(self, a: str, b: str) -> float:
        """Median over rounds of time(a) / time(b), measured in the same round."""
        return statistics.median(self.ratios(a, b))

    def spread(self, *pairs: tuple[str, str]) -> float:
        """The largest relative interquartile range, (Q3 - Q1) / median, of the per-round ratios."""
        worst = 0.0
        for a, b in pairs:
            r = self.ratios(a, b)
            if len(r) >= 2:
                q1, _, q3 = statistics.quantiles(r, n=4)
                worst = max(worst, (q3 - q1) / statistics.median(r))
        return worst


def race(contenders: dict[str, Thunk], settings: Settings) -> Race:
    """Time ``contenders`` interleaved: warm up, then in each round time each once, rotating order.

    Every sample is preceded by ``settings.settle_s`` of idle time (see :class:`Settings`).
    """
    names = list(contenders)
    for _ in range(settings.warmup):
        for name in names:
            contenders[name]()
    numbers = {name: _calls_per_sample(contenders[name], settings.min_sample_s) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(settings.rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            time.sleep(settings.settle_s)
            samples[name].append(_time_once(contenders[name], numbers[name]))
    seconds = {name: statistics.median(s) for name, s in samples.items()}
    return Race(seconds, samples)


def _cold_seconds(fn: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    """Median seconds of ``fn`` over ``rounds`` cold calls (caches cleared before each); last result."""
    times: list[float] = []
    result: Any = None
    for _ in range(rounds):
        _clear_caches()
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _model_cache_survives(name: str) -> bool:
    """Whether ``derive.models.get(name)`` hands back the same object across a cache clear."""
    try:
        first = derive.models.get(name)
        _clear_caches()
        return derive.models.get(name) is first
    except Exception:
        return False


def _clear_caches() -> None:
    """Forget every memoised derivation, so a timing measures a fresh derivation."""
    for module in (derive, numeric):
        for attr in ("clear_caches", "clear_cache"):
            clear = getattr(module, attr, None)
            if callable(clear):
                clear()


# --------------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------------

def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def _x(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 100 else f"{ratio:.0f}x"


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _e(value: float) -> str:
    return f"{value:.1e}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> str:
    """A plain-text table: columns in ``left`` left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).ljust(w) if i in left else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 90 else text[:87] + "..."


# --------------------------------------------------------------------------------------------------
# Problems: arrays, converters, references
# --------------------------------------------------------------------------------------------------

def _sizes_for(model: Any, settings: Settings) -> dict[str, int]:
    """The problem sizes that ``model`` declares, out of n, p and K."""
    sizes = {"n": settings.n, "p": settings.p, "K": settings.K}
    dims = getattr(model, "dims", None)
    if isinstance(dims, dict) and dims:
        declared = {str(d) for d in dims}
        picked = {k: v for k, v in sizes.items() if k in declared}
        if picked:
            return picked
    return sizes


def make_arrays(model: Any, settings: Settings, seed: int = 0) -> dict[str, np.ndarray]:
    """Float64 NumPy arrays for every parameter and input of ``model``.

    ``X`` is standard normal, ``y`` Bernoulli 0/1, ``Y`` one-hot rows, parameters small normal.
    """
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for name, shape in model.shapes(**_sizes_for(model, settings)).items():
        shape = tuple(int(s) for s in shape)
        if name in model.params:
            arrays[name] = 0.1 * rng.standard_normal(shape)
        elif name == "y":
            arrays[name] = rng.integers(0, 2, size=shape).astype(np.float64)
        elif name == "Y":
            labels = rng.integers(0, shape[-1], size=shape[:-1])
            arrays[name] = np.eye(shape[-1])[labels]
        else:
            arrays[name] = rng.standard_normal(shape)
    return arrays


def _to_backend(arrays: dict[str, np.ndarray], backend: str, dtype: str) -> dict[str, Any]:
    if backend == "numpy":
        return {k: np.array(v, dtype=dtype) for k, v in arrays.items()}
    return {k: torch.tensor(v, dtype=getattr(torch, dtype)) for k, v in arrays.items()}


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _compile(model: Any, backend: str, dtype: str, **options: Any) -> Callable[..., dict[str, Any]]:
    """``numeric.compile`` for this backend, passing ``dtype`` only where compile takes one."""
    if "dtype" in inspect.signature(numeric.compile).parameters:
        options["dtype"] = dtype
    return numeric.compile(model, backend=backend, **options)


def closed_form(name: str, backend: str) -> Callable[..., dict[str, Any]]:
    """A hand-written closed-form loss-and-gradient kernel for ``name`` in ``backend``."""
    table: dict[tuple[str, str], Callable[..., dict[str, Any]]] = {
        ("logistic_regression", "numpy"): _logistic_numpy,
        ("logistic_regression", "torch"): _logistic_torch,
        ("softmax_regression", "numpy"): _softmax_numpy,
        ("softmax_regression", "torch"): _softmax_torch,
    }
    return table[name, backend]


def _logistic_numpy(w: np.ndarray, b: np.ndarray, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    n = X.shape[0]
    z = X @ w + b
    e = np.exp(-np.abs(z))
    s = np.where(z >= 0, 1.0, e) / (1.0 + e)              # stable sigmoid
    loss = np.mean(np.maximum(z, 0.0) - y * z + np.log1p(e))  # stable softplus(z) - y z
    r = s - y
    return {"loss": float(loss), "grad": {"w": X.T @ r / n, "b": r.mean()}}


def _logistic_torch(w: torch.Tensor, b: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    with torch.no_grad():
        n = X.shape[0]
        z = X @ w + b
        loss = (z.clamp(min=0) - y * z + torch.log1p(torch.exp(-z.abs()))).mean()
        r = torch.sigmoid(z) - y
        return {"loss": loss, "grad": {"w": X.T @ r / n, "b": r.mean()}}


def _softmax_numpy(W: np.ndarray, b: np.ndarray, X: np.ndarray, Y: np.ndarray) -> dict[str, Any]:
    n = X.shape[0]
    Z = X @ W.T + b
    Zmax = Z.max(axis=1, keepdims=True)
    E = np.exp(Z - Zmax)
    total = E.sum(axis=1, keepdims=True)
    lse = Zmax + np.log(total)
    loss = np.sum(Y * (lse - Z)) / n
    delta = E / total - Y                                  # S(z) - y
    return {"loss": float(loss), "grad": {"W": delta.T @ X / n, "b": delta.mean(axis=0)}}


def _softmax_torch(W: torch.Tensor, b: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> dict[str, Any]:
    with torch.no_grad():
        n = X.shape[0]
        Z = X @ W.T + b
        lse = torch.logsumexp(Z, dim=1, keepdim=True)
        loss = (Y * (lse - Z)).sum() / n
        delta = torch.exp(Z - lse) - Y                     # S(z) - y
        return {"loss": loss, "grad": {"W": delta.T @ X / n, "b": delta.mean(dim=0)}}


def torch_loss(name: str, params: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss of ``name`` written independently with ``torch.nn.functional``."""
    X = inputs["X"]
    if name == "logistic_regression":
        return F.binary_cross_entropy_with_logits(X @ params["w"] + params["b"], inputs["y"])
    if name == "softmax_regression":
        return F.cross_entropy(F.linear(X, params["W"], params["b"]), inputs["Y"])
    raise ValueError(f"no torch reference for {name!r}; expected one of {KERNEL_MODELS}")


def autograd_kernel(name: str, model: Any, tensors: dict[str, torch.Tensor]) -> Callable[[], dict[str, Any]]:
    """One eager forward + backward of the torch reference, gradients w.r.t. the parameters."""
    params = {k: v.clone().requires_grad_(True) for k, v in tensors.items() if k in model.params}
    inputs = {k: v for k, v in tensors.items() if k not in model.params}
    leaves = list(params.values())

    def run() -> dict[str, Any]:
        loss = torch_loss(name, params, inputs)
        grads = torch.autograd.grad(loss, leaves)
        return {"loss": loss.detach(), "grad": dict(zip(params, grads))}

    return run


def max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    """(max |a - b|, max |b|) over the loss and every gradient of two kernel outputs."""
    diff, scale = 0.0, 0.0
    pairs = [(a["loss"], b["loss"])] + [(a["grad"][k], b["grad"][k]) for k in b["grad"]]
    for x, y in pairs:
        x64, y64 = _as_numpy(x).astype(np.float64), _as_numpy(y).astype(np.float64)
        if x64.shape != y64.shape:
            raise ValueError(f"shape mismatch: generated {x64.shape} vs reference {y64.shape}")
        diff = max(diff, float(np.max(np.abs(x64 - y64), initial=0.0)))
        scale = max(scale, float(np.max(np.abs(y64), initial=0.0)))
    return diff, scale


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------

def bench_derive(settings: Settings) -> int:
    """Table 1: cold derivation and code generation time per zoo entry. Returns the error count."""
    names = list(derive.models.names())
    chosen = names if settings.derive_models is None else [n for n in names if n in settings.derive_models]
    print(f"== derivation, cold (caches cleared), median of {settings.derive_rounds}; "
          f"{len(chosen)} of {len(names)} zoo entries ==")
    rows: list[list[str]] = []
    errors = 0
    for name in chosen:
        def get_and_backprop(name: str = name) -> tuple[Any, Any]:
            m = derive.models.get(name)
            # an update program (an optimizer) maps state to next state: it has no loss to backprop
            return m, None if getattr(m, "is_update", False) else derive.backprop(m)

        try:
            t_derive, (m, adjoint) = _cold_seconds(get_and_backprop, settings.derive_rounds)
        except Exception as exc:  # report and go on: one broken entry must not hide the others
            errors += 1
            rows.append([name, "error", "", "", _short_error(exc)])
            continue
        equations, note = ("-", "update program: get only, no backprop") if adjoint is None else \
            (str(len(adjoint)), "")
        try:
            t_source, _ = _cold_seconds(functools.partial(numeric.source, m, backend="torch"),
                                        settings.derive_rounds)
            source_ms = _ms(t_source)
        except Exception as exc:
            errors += 1
            source_ms, note = "error", _short_error(exc)
        rows.append([name, _ms(t_derive), equations, source_ms, note])
    print(format_table(["model", "get+backprop ms", "adjoint eqs", "source(torch) ms", "note"], rows,
                       left=(0, 4)))
    if chosen and _model_cache_survives(chosen[0]):
        print("note: derive.models.get returns a memoised model even after the caches are cleared, so only")
        print("      the first of the repeats builds the model; the others time backprop alone.")

    if "logistic_regression" in names:
        try:
            m = derive.models.get("logistic_regression")
            t_hess, _ = _cold_seconds(lambda: derive.hessian(m, "w"), settings.derive_rounds)
            print(f"derive.hessian(logistic_regression, 'w'): {_ms(t_hess)} ms (cold, model built outside)")
        except Exception as exc:
            errors += 1
            print(f"derive.hessian(logistic_regression, 'w'): error: {_short_error(exc)}")
    print()
    return errors


def bench_kernels(settings: Settings) -> int:
    """Table 2: generated kernel vs torch autograd vs hand-written closed form. Returns the error count."""
    print(f"== kernels: one loss+grad call, n={settings.n}, p={settings.p}, K={settings.K}; "
          f"median of {settings.rounds} interleaved rounds ==")
    headers = ["model", "backend", "dtype", "generated ms", "autograd ms", "closed-form ms",
               "gen/autograd", "gen/closed", "closed/autograd", "ratio IQR", "max|gen-closed|", "checks us"]
    rows: list[list[str]] = []
    notes: list[str] = []
    errors = 0
    for name in KERNEL_MODELS:
        m = derive.models.get(name)
        base = make_arrays(m, settings)
        for backend in BACKENDS:
            for dtype in DTYPES:
                label = [name, backend, dtype]
                try:
                    arrays = _to_backend(base, backend, dtype)
                    f = _compile(m, backend, dtype)
                    hand = closed_form(name, backend)
                    reference = autograd_kernel(name, m, _to_backend(base, "torch", dtype))
                    diff, scale = max_abs_diff(f(**arrays), hand(**arrays))
                    own, own_scale = max_abs_diff(hand(**arrays), reference())
                    if not own <= TOLERANCE[dtype] * max(own_scale, 1.0):  # a bug in this file
                        raise AssertionError(f"closed form disagrees with autograd by {own:.1e}")
                    result = race({"gen": functools.partial(f, **arrays),
                                   "auto": reference,
                                   "closed": functools.partial(hand, **arrays)}, settings)
                except Exception as exc:
                    errors += 1
                    rows.append([*label, "error"] + [""] * (len(headers) - 4))
                    notes.append(f"{name} {backend} {dtype}: {_short_error(exc)}")
                    continue
                flag = ""
                if not diff <= TOLERANCE[dtype] * max(scale, 1.0):
                    errors += 1
                    flag = " MISMATCH"
                s = result.seconds
                checks = _check_seconds(f, arrays)
                rows.append([*label, _ms(s["gen"]), _ms(s["auto"]), _ms(s["closed"]),
                             _x(result.ratio("gen", "auto")), _x(result.ratio("gen", "closed")),
                             _x(result.ratio("closed", "auto")), _pct(result.spread(*PAIRS)),
                             _e(diff) + flag, f"{checks * 1e6:.1f} ({checks / s['gen'] * 100:.1f}%)"])
    print(format_table(headers, rows))
    for note in notes:
        print(f"error: {note}")
    print("ratios < 1 mean the left one is faster; each is the median of per-round ratios;")
    print("ratio IQR: the widest (Q3-Q1)/median of the three per-round ratios, a measure of the noise.")
    print("checks us: the input checks of one call (names, shapes, dtypes, declared domains; median of 200),")
    print("           and their share of the generated call.")
    print()
    return errors


def _check_seconds(f: Any, arrays: dict[str, Any]) -> float:
    """Seconds the input checks of a compiled kernel take per call (its ``_prepare``), median of 200."""
    prepare = getattr(f, "_prepare", None)
    if prepare is None:
        return 0.0
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        prepare(arrays)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_hessian(settings: Settings) -> int:
    """Table 3: dense Hessian of logistic regression in w, three ways, torch float64."""
    n, p = settings.n, settings.p
    print(f"== hessian: logistic_regression in w, torch float64, n={n}, p={p}; "
          f"median of {settings.rounds} interleaved rounds ==")
    try:
        m = derive.models.get("logistic_regression")
        t = _to_backend(make_arrays(m, settings), "torch", "float64")
        f = _compile(m, "torch", "float64", hessian=["w"])
        X, y, b = t["X"], t["y"], t["b"]

        def generated() -> torch.Tensor:
            return f(**t)["hessian"]["w"]

        def autograd() -> torch.Tensor:
            def loss_of_w(w: torch.Tensor) -> torch.Tensor:
                return F.binary_cross_entropy_with_logits(X @ w + b, y)
            h = torch.autograd.functional.hessian(loss_of_w, t["w"], vectorize=True)
            assert isinstance(h, torch.Tensor)
            return h

        def closed() -> torch.Tensor:
            s = torch.sigmoid(X @ t["w"] + b)
            return (X * (s * (1 - s))[:, None]).T @ X / X.shape[0]

        H = {"gen": _as_numpy(generated()), "auto": _as_numpy(autograd()), "closed": _as_numpy(closed())}
        for key, value in H.items():
            if value.shape != (p, p):
                raise ValueError(f"{key} Hessian has shape {value.shape}, expected {(p, p)}")
        result = race({"gen": generated, "auto": autograd, "closed": closed}, settings)
    except Exception as exc:
        print(f"error: {_short_error(exc)}\n")
        return 1
    s = result.seconds
    print(format_table(
        ["hessian", "generated ms", "autograd ms", "closed-form ms", "gen/autograd", "gen/closed",
         "closed/autograd", "ratio IQR"],
        [["logistic_regression w", _ms(s["gen"]), _ms(s["auto"]), _ms(s["closed"]), _x(result.ratio("gen", "auto")),
          _x(result.ratio("gen", "closed")), _x(result.ratio("closed", "auto")),
          _pct(result.spread(*PAIRS))]]))
    diffs = {pair: float(np.max(np.abs(H[pair[0]] - H[pair[1]])))
             for pair in (("gen", "auto"), ("gen", "closed"), ("auto", "closed"))}
    print("max |difference|: " + ", ".join(f"{a}-{b} {_e(d)}" for (a, b), d in diffs.items())
          + f"  (max |H| {_e(float(np.max(np.abs(H['closed']))))})")
    print("autograd: torch.autograd.functional.hessian(vectorize=True); closed form: X^T diag(s(1-s)) X / n.")
    bad = [f"{a}-{b}" for (a, b), d in diffs.items() if not d <= TOLERANCE["float64"] * max(1.0, float(np.max(np.abs(H['closed']))))]
    if bad:
        print(f"MISMATCH: {', '.join(bad)}")
    print()
    return 1 if bad else 0


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------

def _load() -> str:
    """The 1-minute load average (other work on the machine skews every absolute time)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def _deep(section: str) -> Callable[[Settings], int]:
    def run(settings: Settings) -> int:
        from . import bench_deep

        return int(getattr(bench_deep, f"bench_{section}")(settings))

    return run


def _layers(settings: Settings) -> int:
    from . import bench_layers

    return bench_layers.bench_layers(settings)


SECTIONS: dict[str, Callable[[Settings], int]] = {
    "derive": bench_derive,
    "kernels": bench_kernels,
    "hessian": bench_hessian,
    "scaling": _deep("scaling"),
    "sizes": _deep("size_independence"),
    "layers": _layers,
    "layer_sizes": lambda settings: int(importlib.import_module("numeric.bench_layers").bench_layer_sizes(settings)),
    "parse": lambda settings: int(importlib.import_module("numeric.bench_parse").bench_parse(settings)),
    "torch": lambda settings: int(importlib.import_module("numeric.bench_torch").bench_torch(settings)),
    "plugin": lambda settings: int(importlib.import_module("verify.bench_plugin").bench_plugin(settings)),
    "ch8": lambda settings: int(importlib.import_module("numeric.bench_ch8").bench_ch8(settings)),
}


class _Parser(argparse.ArgumentParser):
    """argparse with the command line's one-line errors (exit status 2, no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print their tables; 0 if all ran and agreed, 1 otherwise."""
    parser = _Parser(
        prog="dlmath bench",
        description="Time derivation, generated kernels vs torch autograd and closed forms, and Hessians.")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, few rounds, two zoo entries: a smoke run of a few seconds")
    parser.add_argument("--only", choices=sorted(SECTIONS), help="run one section only")
    parser.add_argument("--rounds", type=int, help="timed rounds per contender (default 21, --quick 3)")
    parser.add_argument("--case", action="append", metavar="MODEL",
                        help="layers section: run only this row (repeatable), e.g. --case layer_norm")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # ``dlmath bench -- --quick`` hands the separator on
        argv = argv[1:]
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error(f"--rounds takes a positive count, got {args.rounds}")
        settings = dataclasses.replace(settings, rounds=args.rounds)
    if args.case:
        from .bench_layers import CASES

        known = [c.name for c in CASES]
        bad = [c for c in args.case if c not in known]
        if bad:
            parser.error(f"unknown --case {', '.join(bad)}; the layers rows are: {', '.join(known)}")
        settings = dataclasses.replace(settings, cases=tuple(args.case))

    print(f"dlmath bench{' --quick' if args.quick else ''}: python {platform.python_version()}, "
          f"numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{platform.machine()}, {os.cpu_count()} CPUs, load average {_load()}")
    print()
    errors = 0
    for section, run in SECTIONS.items():
        if args.only in (None, section):
            errors += run(settings)
            sys.stdout.flush()
    print(f"load average at the end: {_load()}")
    if errors:
        print(f"{errors} problem(s) above (error or MISMATCH).")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
