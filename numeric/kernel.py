"""Compiled kernels: generated source, executed once, cached, with checked inputs."""

from __future__ import annotations

import builtins
import linecache
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import sympy as sp

from derive.program import Model
from derive.tensor import as_expr

from .codegen import BACKENDS, build_program, generate, generate_values

__all__ = ["Kernel", "compile", "source", "InputError", "clear_cache", "trace", "run_generated"]


class InputError(ValueError):
    """Arrays given to a kernel do not fit the model: the message names what was expected and given."""


_CACHE: dict[tuple[Any, ...], tuple[Model, Kernel]] = {}
_SOURCES: dict[tuple[Any, ...], tuple[Model, str]] = {}


def clear_cache() -> None:
    _CACHE.clear()
    _SOURCES.clear()


def source(m: Model, backend: str = "numpy", hessian: Sequence[str] = ()) -> str:
    """The generated module for ``m`` as readable Python text (one line per equation)."""
    if not isinstance(m, Model):
        raise TypeError(f"numeric.source takes a model (derive.models.get(...)), not {type(m).__name__}")
    key = (id(m), backend, tuple(hessian))
    hit = _SOURCES.get(key)
    if hit is not None and hit[0] is m:
        return hit[1]
    src = generate(build_program(m, hessian), backend)
    _SOURCES[key] = (m, src)
    return src


class Kernel:
    """A compiled model: ``f(**arrays) -> {"loss": float, "grad": {...}[, "hessian", "newton"]}``.

    Arrays are checked (names, shapes against the model's dimensions, dtypes) unless the kernel was
    compiled with ``check=False``; a NaN or infinity in an input is reported by name when it makes the
    result non-finite (the inputs are scanned only then). ``f.raw`` is the generated function itself.
    """

    def __init__(self, m: Model, backend: str, device: str | None, hessian: tuple[str, ...], check: bool,
                 fuse: bool = False):
        self.model = m
        self.fuse = fuse
        self.backend = backend
        self.device = device
        self.hessian = hessian
        self.check = check
        self.source = source(m, backend, hessian)
        self.raw = run_generated(self.source, f"<dlmath:{m.name}:{backend}>")
        if fuse:
            import torch

            # torch.compile fuses the elementwise passes of the generated module into a few loops (the
            # generated code is plain PyTorch, so it traces whole); compiled on first call, per shape
            self.raw = torch.compile(self.raw, dynamic=False)
        self.names = [k for k in [*m.params, *m.inputs] if k not in m.carries]
        self._shape_plan = self._plan()
        self._domains = _domain_plan(m)

    def __repr__(self) -> str:
        return f"<dlmath kernel {self.model.name} [{self.backend}]>"

    def __call__(self, **arrays: Any) -> dict[str, Any]:
        args = self._prepare(arrays) if self.check else self._convert(arrays)
        out = self.raw(**args)
        if self.model.is_update:
            if self.check:
                self._check_finite(args, out)
            return dict(out)
        out["loss"] = float(out["loss"])
        if self.check:
            self._check_finite(args, out)
        if self.model.newton and self.hessian:
            out["newton"] = self._newton(args, out)
        return out

    # -- checks -----------------------------------------------------------------------------------
    def _convert(self, arrays: dict[str, Any]) -> dict[str, Any]:
        if self.backend == "numpy":
            return {k: np.asarray(v) for k, v in arrays.items()}
        import torch

        out = {}
        for k, v in arrays.items():
            t = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
            out[k] = t.to(self.device) if self.device is not None else t
        return out

    def _plan(self) -> list[tuple[str, tuple[Any, ...], str]]:
        """Per array: its expected shape as (int | dimension name | expression) entries, computed once."""
        m = self.model
        plan = []
        for name in self.names:
            var = m.tensor(name)
            want = m.array_dims(var)
            entries: list[Any] = []
            for d0 in want:
                d = as_expr(d0)
                entries.append(int(d) if d.is_Integer else (str(d) if d.is_Symbol else d))
            plan.append((name, tuple(entries), _fmt(want)))
        return plan

    def _prepare(self, arrays: dict[str, Any]) -> dict[str, Any]:
        m = self.model
        if len(arrays) != len(self.names) or any(n not in arrays for n in self.names):
            missing = [n for n in self.names if n not in arrays]
            extra = [n for n in arrays if n not in self.names]
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"unexpected {', '.join(extra)}")
            raise InputError(f"{m.name} takes arrays {', '.join(self.names)}: {'; '.join(parts)}")
        conv = self._convert(arrays)
        dtypes = {k: _dtype_name(v) for k, v in conv.items()}
        floats = {d for d in dtypes.values() if d in ("float32", "float64")}
        if len(floats) > 1:
            listing = ", ".join(f"{k} {d}" for k, d in dtypes.items())
            raise InputError(f"{m.name}: arrays must share one float dtype (float32 or float64); got {listing}")
        target = floats.pop() if floats else "float64"
        for k, d in dtypes.items():
            if d not in ("float32", "float64", "int64", "int32", "bool", "int16", "int8", "uint8"):
                raise InputError(f"{m.name}: array {k} has dtype {d}; give float32 or float64")
            if d != target:
                conv[k] = _cast(conv[k], target)
        sizes: dict[str, tuple[int, str]] = {}
        later: list[tuple[str, Any, int, tuple[int, ...], str]] = []
        for name, want, text in self._shape_plan:
            got = tuple(conv[name].shape)
            if len(got) != len(want):
                raise InputError(f"{m.name}: {name} should have shape {text} ({len(want)} axes), got shape {got}")
            for d, g in zip(want, got):
                if isinstance(d, int):
                    if d != g:
                        raise InputError(f"{m.name}: {name} should have shape {text}, got {got}")
                elif isinstance(d, str):
                    seen = sizes.get(d)
                    if seen is None:
                        sizes[d] = (g, name)
                    elif seen[0] != g:
                        raise InputError(f"{m.name}: dimension {d} is {seen[0]} in {seen[1]} but {g} in {name} "
                                         f"(shape {got}, expected {text})")
                else:
                    later.append((name, d, g, got, text))
        for name, d, g, got, text in later:  # dimensions that are expressions, e.g. p = H m
            value = d.subs({sp.Symbol(k, integer=True, positive=True): v for k, (v, _) in sizes.items()})
            if value.is_Integer and int(value) != g:
                raise InputError(f"{m.name}: {name} should have shape {text} = {value} along that axis, got {got}")
        if self._domains:
            _check_domains(m, self._domains, conv, {k: v for k, (v, _) in sizes.items()})
        return conv

    def _check_finite(self, args: dict[str, Any], out: dict[str, Any]) -> None:
        """A NaN or infinity in an input shows in the outputs; only then are the inputs scanned, to name it."""
        if self.model.is_update:
            if all(_all_finite(v) for v in out.values()):
                return
        elif math.isfinite(out["loss"]):
            return
        for name, v in args.items():
            if not _all_finite(v):
                raise InputError(f"{self.model.name}: array {name} contains NaN or infinity; pass finite values")

    def _newton(self, args: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        """One Newton step ``theta - H^{-1} g`` over all parameters jointly (flattened in order)."""
        names = list(self.hessian)
        xp: Any
        cat: Any
        solve: Any
        if self.backend == "numpy":
            xp = np
            cat, solve = np.concatenate, np.linalg.solve
        else:
            import torch

            xp = torch
            cat, solve = torch.cat, torch.linalg.solve
        sizes = [int(math.prod(tuple(args[n].shape))) for n in names]
        rows = []
        for a, sa in zip(names, sizes):
            row = []
            for b, sb in zip(names, sizes):
                h = out["hessian"][a] if a == b else out["hessian"][(a, b)]
                row.append(xp.reshape(h, (sa, sb)))
            rows.append(cat(row, 1))
        H = cat(rows, 0)
        g = cat([xp.reshape(out["grad"][n], (s,)) for n, s in zip(names, sizes)])
        step = solve(H, g)
        res, k = {}, 0
        for n, s in zip(names, sizes):
            res[n] = args[n] - xp.reshape(step[k : k + s], tuple(args[n].shape))
            k += s
        return res


def _fmt(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _dtype_name(v: Any) -> str:
    return str(v.dtype).replace("torch.", "")


def _cast(v: Any, target: str) -> Any:
    if _dtype_name(v) == target:
        return v
    if isinstance(v, np.ndarray) or np.isscalar(v):
        return np.asarray(v, dtype=target)
    import torch

    return v.to(getattr(torch, target))


def _all_finite(v: Any) -> bool:
    if not (isinstance(v, np.ndarray) or type(v).__module__.startswith("torch")):
        v = np.asarray(v)
    if isinstance(v, np.ndarray):
        s = v.sum()
        return bool(np.isfinite(s)) or bool(np.isfinite(v).all())
    import torch

    s = v.sum()
    return bool(torch.isfinite(s)) or bool(torch.isfinite(v).all())


def compile(m: Model, backend: str = "numpy", device: str | None = None, hessian: Sequence[str] | None = None,
            check: bool = True, fuse: bool = False) -> Kernel:
    """Compile ``m`` into a kernel ``f(**arrays) -> {"loss", "grad"[, "hessian"][, "newton"]}``.

    Args:
        m: a zoo model (``derive.models.get(name)``).
        backend: ``"numpy"`` or ``"torch"``.
        device: torch device (``"cpu"``, ``"cuda"``); arrays are moved there.
        hessian: parameters whose Hessian blocks to return (``out["hessian"]["w"]``; cross blocks keyed by
            pairs). Defaults to none; models with a Newton step default to all their Hessian parameters.
        check: check names, shapes, dtypes and finiteness of the arrays on every call.
        fuse: torch backend only: compile the generated module with ``torch.compile`` (seconds on the first
            call per shape), which fuses its elementwise passes; normalization layers then beat eager
            autograd (see ``dlmath bench --only layers``).

    Compiled kernels are cached per model, backend, device and Hessian request.
    """
    if not isinstance(m, Model):
        raise TypeError(f"numeric.compile takes a model (derive.models.get(...)), not {type(m).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if device is not None and backend != "torch":
        raise ValueError("device= is for the torch backend; pass backend='torch'")
    if device is not None and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but torch sees no CUDA device; use device='cpu'")
    if fuse and backend != "torch":
        raise ValueError("fuse=True compiles the torch module with torch.compile; pass backend='torch'")
    hs = tuple(hessian) if hessian is not None else (m.hessian_wrt if m.newton else ())
    key = (id(m), backend, device, hs, check, fuse)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is m:
        return hit[1]
    k = Kernel(m, backend, device, hs, check, fuse)
    _CACHE[key] = (m, k)
    return k


def trace(m: Model, mode: str = "reverse", wrt: str | None = None, **arrays: Any) -> dict[str, Any]:
    """Every intermediate value of the forward program and of one mode of differentiation.

    ``mode="reverse"``: the adjoints of the backprop program (``a_bar``); ``mode="forward"``: the tangents
    ``\\dot a = da/d(wrt)`` of every equation (column ``i`` is the sweep seeded with ``e_i``). Values are
    NumPy arrays, per sample for per-sample models.
    """
    import derive

    if mode == "reverse":
        extra = derive.backprop(m)
    elif mode == "forward":
        extra = derive.forward_mode(m, wrt or next(iter(m.params)))
    else:
        raise ValueError(f"mode must be 'forward' or 'reverse', got {mode!r}")
    fn = run_generated(generate_values(m, extra, "numpy"), f"<dlmath:{m.name}:trace>")
    k = compile(m, "numpy")
    args = k._prepare(arrays)
    return {name: np.asarray(v) for name, v in fn(**args).items()}


def run_generated(source: str, filename: str) -> Any:
    """The ``kernel`` function of a generated module.

    This is the one place where dlmath executes code: text its own code generators wrote, from validated
    identifiers (:func:`derive.primitives.base.check_name`), numbers printed by ``repr`` and comments
    through :func:`numeric.codegen.comment`; no user string reaches it as code. ``tests/test_no_eval.py``
    fails on any other ``eval``/``exec``/``sympify``/``nsimplify``/``parse_expr`` call site.
    """
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    ns: dict[str, Any] = {}
    exec(builtins.compile(source, filename, "exec"), ns)  # the allowed call site (see the docstring)
    return ns["kernel"]


# -- declared domains checked at the boundary (integer labels, symmetric positive definite matrices) --------


def _domain_plan(m: Model) -> list[tuple[str, str, Any]]:
    """(array, domain, bound) for the inputs whose domain the kernel must check: ``labels`` (with the size of
    the axis they index) and ``spd``."""
    from derive.tensor import LABELS, SPD, label_sizes

    bounds = {v.name: k for v, k in label_sizes([eq.rhs for eq in m.equations]).items()}
    plan: list[tuple[str, str, Any]] = []
    for name, v in {**m.params, **m.inputs}.items():
        if v.domain == LABELS:
            plan.append((name, LABELS, bounds.get(name)))
        elif v.domain == SPD:
            plan.append((name, SPD, None))
    return plan


def _check_domains(m: Model, plan: list[tuple[str, str, Any]], arrays: dict[str, Any], sizes: dict[str, int]) -> None:
    from derive.tensor import LABELS

    for name, domain, bound in plan:
        a = arrays[name]
        v = a.detach().cpu().numpy() if not isinstance(a, np.ndarray) and hasattr(a, "detach") else np.asarray(a)
        if domain == LABELS:
            if v.size and not np.all(np.isfinite(v) & (v == np.round(v))):
                raise InputError(f"{m.name}: {name} holds integer labels (domain 'labels'); got non-integer "
                                 f"values such as {v[v != np.round(v)].flat[0]!r}")
            if bound is not None:
                k = as_expr(bound).subs({sp.Symbol(d, integer=True, positive=True): s for d, s in sizes.items()})
                if k.is_Integer and v.size and (v.min() < 0 or v.max() >= int(k)):
                    bad = v.min() if v.min() < 0 else v.max()
                    raise InputError(f"{m.name}: {name} holds labels 0, 1, ..., {int(k) - 1} (the size of the axis "
                                     f"it indexes); got {bad:g}")
            continue
        # spd: symmetric to rounding, and a Cholesky factor exists
        if v.size == 0:
            continue
        asym = float(np.max(np.abs(v - np.swapaxes(v, -1, -2))))
        scale = float(np.max(np.abs(v)))
        if not asym <= 1e-10 * max(scale, 1e-300):
            raise InputError(f"{m.name}: {name} is declared spd (symmetric positive definite) but is not "
                             f"symmetric: |{name} - {name}^T| is up to {asym:.3g}; pass a symmetric matrix")
        try:
            np.linalg.cholesky(v)
        except np.linalg.LinAlgError:
            raise InputError(f"{m.name}: {name} is declared spd (symmetric positive definite) but is not positive "
                             f"definite (it has no Cholesky factor); pass e.g. A A^T + c I with c > 0") from None
