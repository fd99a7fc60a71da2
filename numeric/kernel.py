"""Compiled kernels: generated source, executed once, cached, with checked inputs."""

from __future__ import annotations

import builtins
import functools
import linecache
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import sympy as sp

from derive.program import Model
from derive.tensor import as_expr

from .codegen import BACKENDS, WITNESS_ARG, build_program, generate, generate_values

__all__ = ["Kernel", "compile", "source", "InputError", "clear_cache", "trace", "run_generated", "normalise_device"]


class InputError(ValueError):
    """Arrays given to a kernel do not fit the model: the message names what was expected and given."""


_CACHE: dict[tuple[Any, ...], tuple[Model, Kernel]] = {}
_SOURCES: dict[tuple[Any, ...], tuple[Model, str]] = {}


def clear_cache() -> None:
    _CACHE.clear()
    _SOURCES.clear()


def source(m: Model, backend: str = "numpy", hessian: Sequence[str] = (), reuse: bool = True) -> str:
    """The generated module for ``m`` as readable Python text (one line per equation). ``reuse=False``: torch
    code that never writes over a buffer of its own (the variant a kernel runs for tensors that require grad)."""
    if not isinstance(m, Model):
        raise TypeError(f"numeric.source takes a model (derive.models.get(...)), not {type(m).__name__}")
    key = (id(m), backend, tuple(hessian), reuse)
    hit = _SOURCES.get(key)
    if hit is not None and hit[0] is m:
        return hit[1]
    src = generate(build_program(m, hessian), backend, reuse)
    _SOURCES[key] = (m, src)
    return src


class Kernel:
    """A compiled model: ``f(**arrays) -> {"loss": float, "grad": {...}[, "hessian", "newton"]}``.

    Arrays are checked (names, shapes against the model's dimensions, dtypes) unless the kernel was
    compiled with ``check=False``; a NaN or infinity in an input is reported by name when it makes the
    result non-finite (the inputs are scanned only then). ``f.raw`` is the generated function itself; on the
    torch backend it writes results over buffers of its own that nothing reads after, so for tensors that
    require grad (autograd back through the kernel) ``f(...)`` runs its variant that does not
    (``numeric.source(m, "torch", reuse=False)``).
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
        # torch, for arguments that require grad (autograd through the kernel): the same code without buffers
        # written over (an in-place write over a value autograd saved fails its backward), made on first use
        self._autograd_raw: Any = None
        # the inputs whose 'moderate' check the kernel makes on its result (codegen._witnesses), unfused only
        self._witnessed: frozenset[str] = frozenset(() if fuse else getattr(self.raw, "witnessed", ()))
        if fuse:
            import torch

            _private_compile_cache()

            # torch.compile fuses the elementwise passes of the generated module into a few loops (the
            # generated code is plain PyTorch, so it traces whole); compiled on the first call and kept with the
            # kernel, which compile() caches per model. The sample axis is compiled as a symbol (one compile for
            # every batch size), the other sizes as the numbers they are: kernels over symbolic feature sizes
            # ran the norms 2x slower (layer norm at 4096 x 256: 1.30 ms against 0.64 ms, the unfused kernel
            # 0.59 ms). Another size of those later recompiles once with it symbolic (torch's automatic dynamic
            # shapes). A recurrence is never traced whole (that would unroll its loops over the T steps: minutes
            # of compilation for T = 64): its steps are compiled, the loops stay in Python (numeric.fuse_steps).
            if m.scan is None and not m.scans:
                self.raw = _sample_axis_dynamic(torch.compile(self.raw), _batched_names(m))
            else:
                from .fuse_steps import compile_steps

                self.raw = run_generated(compile_steps(self.source), f"<dlmath:{m.name}:{backend}:steps>")
        self.names = [k for k in [*m.params, *m.inputs] if k not in m.carries]
        self._shape_plan = self._plan()
        self._domains = _domain_plan(m)
        self._checks = [(name, _DOMAIN_CHECKS[domain], _DOMAIN_PLANS.get(domain), bound)
                        for name, domain, bound in self._domains]
        # arrays already of the backend's own type (and on the kernel's device, where it has one) are checked for
        # names, shapes and dtypes once per signature, whose outcome depends on nothing else (see _signature); the
        # domains are checked on every call (they depend on the values), from plans made once per signature
        self._native: type = np.ndarray
        self._device_obj: Any = None
        self._on_device: tuple[str, ...] = ()
        if backend != "numpy":
            import torch

            self._native = torch.Tensor
            self._device_obj = torch.device(device) if device is not None else None
            if device is None:  # a domain's plan (a vector of ones) lives on its array's device
                self._on_device = tuple(name for name, _, _ in self._domains)
        self._passed: dict[tuple[Any, ...], tuple[tuple[str, ...], str, dict[str, int], list[Any]]] = {}

    def __repr__(self) -> str:
        return f"<dlmath kernel {self.model.name} [{self.backend}]>"

    def __call__(self, *positional: Any, **arrays: Any) -> dict[str, Any]:
        try:
            return self._call(*positional, **arrays)
        except self._linalg_errors as e:  # not NumPy's or torch's traceback from inside the generated code
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(
                f"{self.model.name}: the kernel inverts or factors a singular matrix ({first}): the derived "
                f"formulas of det, logdet, inv and solve use the matrix's inverse, which does not exist there; "
                f"pass arrays that make it invertible") from None

    @functools.cached_property
    def _linalg_errors(self) -> tuple[type[Exception], ...]:
        if self.backend == "numpy":
            return (np.linalg.LinAlgError,)
        import torch

        return (np.linalg.LinAlgError, torch.linalg.LinAlgError)

    def _call(self, *positional: Any, **arrays: Any) -> dict[str, Any]:
        if positional:
            raise TypeError(f"{self.model.name}: a kernel takes its arrays by name, e.g. f("
                            f"{', '.join(f'{k}=...' for k in self.names[:3])}); got {len(positional)} positional")
        if self.check and self._witnessed:
            # inputs of domain 'moderate' that only native norms read: bounded by the norms' mean and 1/sigma
            deferred: dict[str, Any] = {}
            args = self._prepare(arrays, deferred)
            witness: dict[str, Any] = {}
            if self.backend == "numpy":  # an input out of its domain is named below, not warned about
                with np.errstate(all="ignore"):
                    out = self.raw(**args, **{WITNESS_ARG: witness})
                    self._check_witness(args, witness, deferred)
            else:
                out = self._run(args)(**args, **{WITNESS_ARG: witness})
                self._check_witness(args, witness, deferred)
        else:
            args = self._prepare(arrays) if self.check else self._convert(arrays)
            out = self._run(args)(**args)
        if self.model.is_update:
            if self.check:
                self._check_finite(args, out)
            return dict(out)
        loss = out["loss"]
        out["loss"] = float(loss.detach() if hasattr(loss, "detach") else loss)
        if self.check:
            self._check_finite(args, out)
        if self.model.newton and self.hessian:
            out["newton"] = self._newton(args, out)
        return out

    def _run(self, args: dict[str, Any]) -> Any:
        """The generated function to call: :attr:`raw`, or for torch tensors that require grad (with grad mode
        on) its variant that writes over none of its own buffers, so that autograd can run back through it."""
        if self.backend == "numpy" or self.fuse:
            return self.raw
        import torch

        if not torch.is_grad_enabled() or not any(getattr(v, "requires_grad", False) for v in args.values()):
            return self.raw
        if self._autograd_raw is None:
            plain = source(self.model, self.backend, self.hessian, reuse=False)
            self._autograd_raw = self.raw if plain == self.source else \
                run_generated(plain, f"<dlmath:{self.model.name}:{self.backend}:autograd>")
        return self._autograd_raw

    # -- checks -----------------------------------------------------------------------------------
    def _convert(self, arrays: dict[str, Any]) -> dict[str, Any]:
        if self.backend == "numpy":
            return {k: _to_numpy(self.model.name, k, v) for k, v in arrays.items()}
        import torch

        out = {}
        for k, v in arrays.items():
            t = v if isinstance(v, torch.Tensor) else torch.as_tensor(_strides_ok(_to_numpy(self.model.name, k, v)))
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

    def _signature(self, arrays: dict[str, Any]) -> tuple[Any, ...] | None:
        """The shapes and dtypes of ``arrays`` (and the devices of those with a declared domain) as a key, when they
        are named as the kernel's arrays and each is exactly the backend's array type (``numpy.ndarray``;
        ``torch.Tensor``, on the kernel's device where it has one), so that converting them changes nothing and
        the checks of :meth:`_check_arrays` depend on this key alone; else ``None``."""
        if len(arrays) != len(self.names):
            return None
        try:
            vals = [arrays[n] for n in self.names]
        except KeyError:
            return None
        native: Any = self._native
        for v in vals:
            if type(v) is not native:
                return None
        dev = self._device_obj
        if dev is not None:
            for v in vals:
                if v.device != dev:
                    return None
        key = [v.shape for v in vals]
        key += [v.dtype for v in vals]
        key += [arrays[n].device for n in self._on_device]
        return tuple(key)

    def _prepare(self, arrays: dict[str, Any], deferred: dict[str, Any] | None = None) -> dict[str, Any]:
        """``arrays`` converted, cast to their shared float dtype and checked: names, shapes and dtypes (once per
        signature, :meth:`_signature`) and every declared domain, in full on every call (with ``deferred``: but
        those of the inputs the kernel's result witnesses, whose check plans are put in ``deferred`` for
        :meth:`_check_witness` to check after the call)."""
        key = self._signature(arrays)
        hit = self._passed.get(key) if key is not None else None
        if hit is None:
            conv, casts, target, sizes = self._check_arrays(arrays)
            plans = [None if plan is None else plan(conv[name], bound, sizes)
                     for name, _, plan, bound in self._checks]
            if key is not None:
                if len(self._passed) >= 32:  # many batch sizes: start again rather than grow without bound
                    self._passed.clear()
                self._passed[key] = (casts, target, sizes, plans)
        else:
            casts, target, sizes, plans = hit
            conv = arrays  # (the caller's own dictionary: ** made it)
            if casts:
                conv = dict(arrays)
                for k in casts:
                    conv[k] = _cast(conv[k], target)
        if plans:
            name = self.model.name
            for (k, check, _, bound), plan in zip(self._checks, plans):
                if deferred is not None and k in self._witnessed:
                    deferred[k] = plan
                    continue
                check(name, k, conv[k], bound, sizes, plan)
        return conv

    def _check_witness(self, args: dict[str, Any], witness: dict[str, Any], plans: dict[str, Any]) -> None:
        """The 'moderate' check of each input that only native norms read (codegen._witnesses), from each norm's
        mean and ``r = 1/sigma`` over groups of ``c`` entries: every entry is within ``sqrt(c var) <= sqrt(c) / r``
        of its group's mean, so ``max|z| <= max|mean| + sqrt(c) / min r``. That bound is computed from the results
        (the extremes of two values per group), and when it is under half the limit of :func:`_check_moderate` (the half
        covers the rounding of the computed variance, for ``c eps <= 1/100``), the input is within the limit
        and passes. Otherwise (a value near the limit, a variance that overflowed, so ``r = 0``, a NaN) the
        input's own check decides, exactly as without the witness, and names the problem. ``plans``: each input's
        :func:`_moderate_plan` (from :meth:`_prepare`)."""
        name = self.model.name
        for k in self._witnessed:
            a = args[k]
            plan = plans[k] if k in plans else _moderate_plan(a)
            if plan is None:
                continue
            if _size(a) < _WITNESS_MIN:  # the direct check's one pass is cheaper than the bound's four reads
                _check_moderate(name, k, a, None, None, plan)
                continue
            ok = True
            for mean, rstd in witness[k]:
                c = _size(a) // max(_size(rstd), 1)
                eps = _eps_max(a)[0]
                if c * eps > 0.01:
                    ok = False
                    break
                m_lo, m_hi = _extremes(mean)
                r_lo = _extremes(rstd)[0]
                # max(|mean| + sqrt(c) / r) <= max|mean| + sqrt(c) / min r: two reads of a few values, no temporary
                if not (r_lo > 0 and max(-m_lo, m_hi) + math.sqrt(c) / r_lo <= 0.5 * plan[0]):  # (False for NaN)
                    ok = False
                    break
            if not ok:
                _check_moderate(name, k, a, None, None, plan)

    def _check_arrays(self, arrays: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...], str, dict[str, int]]:
        """Names, conversion, dtypes and shapes: the converted arrays, the names cast to the shared float dtype,
        that dtype and the sizes of the named dimensions."""
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
        casts = []
        for k, d in dtypes.items():
            if d not in ("float32", "float64", "int64", "int32", "bool", "int16", "int8", "uint8"):
                raise InputError(f"{m.name}: array {k} has dtype {d}; give float32 or float64")
            if d != target:
                conv[k] = _cast(conv[k], target)
                casts.append(k)
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
        for k, (v, where) in sizes.items():
            if v == 0:
                fix = ("pass at least one sample (an empty batch has no mean loss)" if m.sample is not None
                       and k == str(m.sample) else "pass at least one time step" if m.scan is not None
                       and k == str(m.scan.time) else "every dimension needs at least 1")
                raise InputError(f"{m.name}: dimension {k} is 0 in {where} (shape {tuple(conv[where].shape)}); {fix}")
        for name, d, g, got, text in later:  # dimensions that are expressions, e.g. p = H m
            subs = {sp.Symbol(k, integer=True, positive=True): v for k, (v, _) in sizes.items()}
            value = d.subs(subs)
            if value.is_Integer and int(value) < 1:
                raise InputError(m.too_small(name, d, int(value), subs))
            if value.is_Integer and int(value) != g:
                raise InputError(f"{m.name}: {name} should have shape {text} = {value} along that axis, got {got}")
        return conv, tuple(casts), target, {k: v for k, (v, _) in sizes.items()}

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


def _to_numpy(model: str, name: str, v: Any) -> np.ndarray:
    """``v`` as a NumPy array, or an :class:`InputError` naming the array and the fix (a tensor that
    requires grad, a tensor on a GPU, ragged nested lists, text)."""
    if type(v).__module__.startswith("torch"):
        if getattr(v, "requires_grad", False):
            raise InputError(f"{model}: array {name} is a torch tensor that requires grad; the kernel computes the "
                             f"gradients itself: pass {name}.detach()")
        dev = getattr(v, "device", None)
        if dev is not None and dev.type != "cpu":
            raise InputError(f"{model}: array {name} is a torch tensor on {dev}; the numpy kernel takes host "
                             f"arrays: pass {name}.cpu(), or compile with backend='torch', device='{dev}'")
    if isinstance(v, (str, bytes)):
        raise InputError(f"{model}: array {name} is text ({v!r}); pass numbers (a NumPy array)")
    try:
        a = np.asarray(v)
    except (ValueError, TypeError) as e:
        raise InputError(f"{model}: array {name} cannot be read as an array ({str(e).splitlines()[0]}); pass a "
                         f"NumPy array of numbers") from None
    return a


def _strides_ok(a: np.ndarray) -> np.ndarray:
    """``a``, copied if it has a negative stride (a reversed view such as ``x[::-1]``), which torch cannot wrap."""
    return a.copy() if any(s < 0 for s in a.strides) else a


def _fmt(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


_DTYPE_NAMES: dict[Any, str] = {}


def _dtype_name(v: Any) -> str:
    """``"float32"``, ``"int64"``, ... for a NumPy array or a torch tensor (cached per dtype: ``str`` of a NumPy
    dtype costs microseconds, a dictionary lookup does not)."""
    dt = v.dtype
    name = _DTYPE_NAMES.get(dt)
    if name is None:
        name = _DTYPE_NAMES[dt] = str(dt).replace("torch.", "")
    return name


def _cast(v: Any, target: str) -> Any:
    if _dtype_name(v) == target:
        return v
    if isinstance(v, np.ndarray) or np.isscalar(v):
        return np.asarray(v, dtype=target)
    import torch

    return v.to(getattr(torch, target))


def _batched_names(m: Model) -> tuple[str, ...]:
    """The arrays of ``m`` whose leading axis is its sample axis (per-sample inputs, batch-first)."""
    if m.sample is None:
        return ()
    return tuple(k for k in [*m.params, *m.inputs] if k not in m.carries
                 and (dims := m.array_dims(m.tensor(k))) and as_expr(dims[0]) == as_expr(m.sample))


def _sample_axis_dynamic(compiled: Any, batched: tuple[str, ...]) -> Any:
    """``compiled`` (a ``torch.compile``'d kernel) called with the leading axis of the ``batched`` arrays marked
    dynamic (``torch._dynamo.maybe_mark_dynamic``: compiled as a symbol, so that a new batch size reuses the
    compiled code, while the other sizes stay static). The marks go on views of the arrays, not on the caller's
    tensors, which the caller may pass to a ``torch.compile`` of its own."""
    import torch

    def call(**arrays: Any) -> Any:
        for k in batched:
            a = arrays.get(k)
            if isinstance(a, torch.Tensor) and a.ndim:
                arrays[k] = a = a.view(a.shape)
                torch._dynamo.maybe_mark_dynamic(a, 0)
        return compiled(**arrays)

    return call


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
        device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``, or a CUDA index
            such as ``0``); arrays are moved there. An unknown or unavailable device is a ``ValueError``
            now, not an error from torch when the kernel is called.
        hessian: parameters whose Hessian blocks to return (``out["hessian"]["w"]``; cross blocks keyed by
            pairs). Defaults to none; models with a Newton step default to all their Hessian parameters.
        check: check names, shapes, dtypes and finiteness of the arrays on every call.
        fuse: torch backend only: compile the generated module with ``torch.compile`` (seconds on the first
            call, once for all batch sizes: the sample axis is dynamic, the other sizes static, and a call
            with another of those recompiles once with it dynamic), which fuses its elementwise passes; a recurrence
            is never traced whole (that would unroll its loops): each step is compiled and the loops stay in
            Python (:mod:`numeric.fuse_steps`); normalization layers then beat eager
            autograd (see ``dlmath bench --only layers``). Its compiled code is cached in a private per-user
            folder, ``~/.cache/dlmath/torch_compile`` (mode 0700; ``$XDG_CACHE_HOME`` is honoured, and
            ``TORCHINDUCTOR_CACHE_DIR``/``TRITON_CACHE_DIR`` win when set), not torch's default in the
            shared temporary folder.

    Compiled kernels are cached per model, backend, device and Hessian request. Every array a kernel returns is
    its own, as autograd's are: never an argument or a view of one (``sum(x .* y)``'s gradient in ``x`` is a copy
    of ``y``, see :mod:`numeric.aliasing`), never one array as two results, and the arguments are left as they
    were.
    """
    if not isinstance(m, Model):
        raise TypeError(f"numeric.compile takes a model (derive.models.get(...)), not {type(m).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if device is not None and backend != "torch":
        raise ValueError("device= is for the torch backend; pass backend='torch'")
    device = normalise_device(device)
    if not isinstance(fuse, bool) or not isinstance(check, bool):
        raise TypeError(f"fuse= and check= are True or False, got fuse={fuse!r}, check={check!r}")
    if fuse and backend != "torch":
        raise ValueError("fuse=True compiles the torch module with torch.compile; pass backend='torch'")
    if hessian is not None and (isinstance(hessian, str) or not all(isinstance(h, str) for h in hessian)):
        raise TypeError(f"hessian= is a list of parameter names (e.g. hessian=['w']), got {hessian!r}")
    for h in hessian or ():
        if h not in m.params:
            raise ValueError(f"hessian=: {m.name} has no parameter {h!r}; its parameters are: "
                             f"{', '.join(m.params) or '(none)'}")
    hs = tuple(hessian) if hessian is not None else (m.hessian_wrt if m.newton else ())
    key = (id(m), backend, device, hs, check, fuse)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is m:
        return hit[1]
    k = Kernel(m, backend, device, hs, check, fuse)
    _CACHE[key] = (m, k)
    return k


#: the torch device types a kernel can run on (where torch has them); ``meta`` tensors hold no values
_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def normalise_device(device: Any) -> str | None:
    """A torch device as text (``"cpu"``, ``"cuda:0"``), checked now rather than failing when the kernel is
    called: ``None``, a string, a ``torch.device`` or a CUDA index (``0`` is ``"cuda:0"``, as in torch).

    Raises:
        ValueError: an unknown device (``"gpu"``, ``"CUDA"``, ``"bogus"``), one torch cannot use here
            (``"mps"`` without Metal, ``"cuda"`` without CUDA) or ``"meta"`` (no values), naming the fix.
        TypeError: anything else.
    """
    if device is None:
        return None
    if isinstance(device, bool):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', a torch.device or a CUDA index, "
                        f"got {device!r}")
    import torch

    if isinstance(device, int):
        if device < 0:
            raise ValueError(f"device={device}: a CUDA device index is >= 0")
        device = f"cuda:{device}"
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', a torch.device or a CUDA index, "
                        f"got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda' (or 'cuda:1', 'mps' where "
                         f"available)") from None
    if dev.type == "meta":
        raise ValueError("device='meta' holds no values, so a kernel cannot compute on it; use 'cpu' or 'cuda'")
    if dev.type not in _DEVICE_TYPES:
        raise ValueError(f"device {device!r} is not supported; use 'cpu' or 'cuda' (or 'mps' where available)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was asked for but torch sees no CUDA device; use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif dev.type != "cpu":
        backend = getattr(torch.backends, dev.type, None) or getattr(torch, dev.type, None)
        if backend is None or not backend.is_available():
            raise ValueError(f"device={device!r} was asked for but torch has no {dev.type} device here; use "
                             f"device='cpu'")
    return str(dev)


def _private_compile_cache() -> None:
    """Point torch.compile's caches (Inductor's and Triton's) at a private per-user folder,
    ``~/.cache/dlmath/torch_compile`` (or ``$XDG_CACHE_HOME/dlmath/torch_compile``), mode 0700, unless the
    user set ``TORCHINDUCTOR_CACHE_DIR`` / ``TRITON_CACHE_DIR`` already. torch's default is a folder in the
    shared temporary directory, where another user could plant compiled code that this process would load.
    """
    import os
    from pathlib import Path

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dlmath" / "torch_compile"
    for var, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
        if os.environ.get(var):
            continue
        d = base / sub
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(base, 0o700)
        os.chmod(d, 0o700)
        os.environ[var] = str(d)
    try:  # Inductor may have read its setting at import: set it there as well
        from torch._inductor import config as inductor_config

        if hasattr(inductor_config, "cache_dir"):
            inductor_config.cache_dir = os.environ["TORCHINDUCTOR_CACHE_DIR"]  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - an internal setting; the environment variable is the documented one
        pass


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
        if name in m.carries:
            continue
        if v.domain == LABELS:
            plan.append((name, LABELS, bounds.get(name)))
        elif v.domain in (SPD, SIMPLEX, ONE_HOT, COUNT, MODERATE) and (v.domain not in (SIMPLEX, ONE_HOT) or v.ndim):
            plan.append((name, v.domain, None))
    return plan


#: probability vectors along the last axis: the derivation folds sum(y) = 1 (softmax cross entropy's
#: gradient yhat - y), so the kernels check it
SIMPLEX = "simplex"
#: one-hot rows along the last axis (DQN's actions, a state encoding): the derivation uses that each row sums to
#: 1 and selects one entry, so the kernels check both
ONE_HOT = "one_hot"
#: a step count: a non-negative integer (Adam's t)
COUNT = "count"
#: values the program squares and sums (normalisation layers' variance): their squares must stay finite, or
#: the deviation overflows to infinity and the normalised values silently become 0
MODERATE = "moderate"


#: the size from which bounding a 'moderate' input by its norms' results (Kernel._check_witness: two extremes
#: of two small vectors, 6-8 us) is cheaper than the direct check's pass over it (a dot product: 2.5 us at 10^3
#: entries, 5 us at 6.5 10^4, 8.5 us at 2.6 10^5, 39 us at 10^6; torch float32, warm, 2 threads)
_WITNESS_MIN = 2**17


def _size(a: Any) -> int:
    return int(a.size) if isinstance(a, np.ndarray) else int(a.numel())


def _eps_max(a: Any) -> tuple[float, float, str]:
    """Machine epsilon, largest value and name of ``a``'s float dtype (float64 for anything not float32)."""
    return _FINFO["float32" if _dtype_name(a) == "float32" else "float64"]


_FINFO = {k: (float(np.finfo(k).eps), float(np.finfo(k).max), k) for k in ("float32", "float64")}
_ONES: dict[tuple[Any, ...], Any] = {}


def _ones(a: Any, k: int) -> Any:
    """A vector of ``k`` ones of ``a``'s dtype (and device), made once and kept (read-only for NumPy)."""
    key = (a.dtype, k) if isinstance(a, np.ndarray) else (a.dtype, a.device, k)
    v = _ONES.get(key)
    if v is None:
        if len(_ONES) >= 64:
            _ONES.clear()
        if isinstance(a, np.ndarray):
            v = np.ones(k, a.dtype)
            v.flags.writeable = False
        else:
            import torch

            v = torch.ones(k, dtype=a.dtype, device=a.device)
        _ONES[key] = v
    return v


_PRECISION: list[Any] = []


def _highest_precision() -> bool:
    """Whether torch's float32 matrix products are exact float32 arithmetic (its default, ``'highest'``; the
    others let the CPU's products round through bfloat16)."""
    if not _PRECISION:
        import torch

        _PRECISION.append(getattr(torch._C, "_get_float32_matmul_precision", torch.get_float32_matmul_precision))
    return bool(_PRECISION[0]() == "highest")


def _rows_plan(a: Any) -> Any:
    """For :func:`_row_sums`: a vector of ones to multiply ``a`` by, where that is a BLAS matrix-vector product
    in float32 or float64 (NumPy; torch on the CPU: a GPU reduces fast, and its products may round through
    TF32), else ``None`` (``a.sum(-1)``)."""
    k = a.shape[-1]
    if a.ndim < 2 or k < 2 or _dtype_name(a) not in ("float32", "float64"):
        return None
    if not isinstance(a, np.ndarray) and a.device.type != "cpu":
        return None
    return _ones(a, k)


def _row_sums(a: Any, ones: Any) -> Any:
    """The sums of ``a`` along its last axis in one read of ``a``: ``a @ ones`` where :func:`_rows_plan` gave a
    vector of ones (2-5x faster than ``sum(-1)`` on short rows such as K = 10 classes, which reduce poorly;
    the products are by 1, exact, and the sums round as ``sum(-1)``'s do, well within the checks' tolerances),
    else ``a.sum(-1)``."""
    if ones is None:
        return a.sum(-1)
    if isinstance(a, np.ndarray):
        return a @ ones
    import torch

    if a.dtype == torch.float32 and not _highest_precision():
        return a.sum(-1)
    return torch.matmul(a, ones)


def _extremes(s: Any) -> tuple[float, float]:
    """The smallest and largest entries of ``s`` as floats, NaN where ``s`` holds one: one read."""
    if s.ndim == 0:
        x = float(s)
        return x, x
    if isinstance(s, np.ndarray):
        return float(s.min()), float(s.max())
    import torch

    lo, hi = torch.aminmax(s)
    return float(lo), float(hi)


def _moderate_plan(a: Any, bound: Any = None, sizes: Any = None) -> tuple[float, float, str] | None:
    """For :func:`_check_moderate`: the limit on ``max|a|``, the bound on ``sum(a**2)`` that implies it, and the
    dtype's name; ``None`` for an empty array."""
    size = _size(a)
    if size == 0:
        return None
    eps, fmax, dtype = _eps_max(a)
    limit = math.sqrt(fmax / size)
    # the computed sum of n non-negative terms is at least (1 - eps)**(n + 1) times the exact one, whatever the
    # order of the additions (each term passes at most n + 1 roundings); a half for the squares that underflow
    return limit, 0.5 * (limit * limit) * (1 - eps) ** (size + 1), dtype


def _check_moderate(model: str, name: str, a: Any, bound: Any = None, sizes: Any = None, plan: Any = None) -> None:
    """The sum of the squares of ``a`` is finite: ``max|a| <= sqrt(max float / size)``, one pass.

    The pass is a dot product of ``a`` with itself (a BLAS call, no temporary; faster than min and max; for
    NumPy arrays in float32 only, see below): when
    it is below the plan's bound (:func:`_moderate_plan`), ``max(a**2) <= sum(a**2) <= limit**2`` and nothing
    more is read. Otherwise (a NaN or infinity, a large value, an array that is not contiguous) its extremes
    decide, as the limit says, and name the problem."""
    if plan is None:
        plan = _moderate_plan(a)
        if plan is None:
            return
    limit, bound_sq, dtype = plan
    if isinstance(a, np.ndarray):
        # float32 only: OpenBLAS runs a long float64 dot product on all its threads, which stall for
        # milliseconds on a busy machine (its float32 one runs on one: 2x faster than min and max)
        if a.flags.c_contiguous and dtype == "float32":
            f = a.reshape(-1)
            if float(np.dot(f, f)) <= bound_sq:
                return
        lo, hi = float(a.min()), float(a.max())
    else:
        if a.is_contiguous():
            import torch

            f = a.view(-1)
            if float(torch.dot(f, f)) <= bound_sq:
                return
        # max|a| from its extremes in one read, no |a| temporary (aminmax; the infinity norm is 20x slower)
        lo, hi = _extremes(a)
    big = math.nan if lo != lo or hi != hi else max(-lo, hi)
    if big <= limit:
        return
    if not math.isfinite(big):
        raise InputError(f"{model}: array {name} contains NaN or infinity; pass finite values")
    raise InputError(f"{model}: {name} holds values up to {big:.3g}; the program squares and sums them, which "
                     f"overflows {dtype} above {limit:.3g} (the result would be infinite or silently 0): "
                     f"rescale {name} (e.g. divide it by {big:.0e})")


def _simplex_plan(a: Any, bound: Any = None, sizes: Any = None) -> tuple[float, Any, Any] | None:
    """For :func:`_check_simplex`: the tolerance on the row sums, :func:`_rows_plan`, and for a torch array
    summed by a product, the two torch functions of its fast path and whether it is float32 (so that the
    matmul precision matters); ``None`` when empty."""
    if _size(a) == 0:
        return None
    ones = _rows_plan(a)
    fast = None
    if ones is not None and not isinstance(a, np.ndarray):
        import torch

        fast = (torch.matmul, torch.aminmax, a.dtype == torch.float32)
    return 8 * max(a.shape[-1], 1) * _eps_max(a)[0], ones, fast


def _check_simplex(model: str, name: str, a: Any, bound: Any = None, sizes: Any = None, plan: Any = None) -> None:
    """Each row of ``a`` (along its last axis) sums to 1, to rounding: one pass over the array (its row
    sums, :func:`_row_sums`), on the array's own device, then the extremes of the sums; a NaN fails both
    comparisons and is named as such."""
    if plan is None:
        plan = _simplex_plan(a)
        if plan is None:
            return
    tol, ones, fast = plan
    if fast is not None and (not fast[2] or _highest_precision()):  # torch on the CPU: _row_sums, inlined
        lo_t, hi_t = fast[1](fast[0](a, ones))
        lo, hi = float(lo_t), float(hi_t)
    else:
        lo, hi = _extremes(_row_sums(a, ones))
    if 1 - tol <= lo and hi <= 1 + tol:
        return
    # a row is off: find it (from the plain row sums, which the message quotes)
    s = a.sum(-1)
    sums = s.detach().cpu().numpy() if hasattr(s, "detach") else np.asarray(s)
    devs = np.abs(sums - 1)
    bad = np.isnan(devs) | (devs > tol)
    if not bad.any():  # within rounding after all (the two sums round differently)
        return
    row = tuple(int(i) for i in np.argwhere(bad)[0])
    at = f"row {row[0] if len(row) == 1 else row}"
    if not np.isfinite(sums[row]):
        raise InputError(f"{model}: array {name} contains NaN or infinity (its {at}); pass finite values")
    raise InputError(f"{model}: {name} holds probability vectors (domain 'simplex': each row sums to 1, which "
                     f"the derived gradient uses), but its {at} sums to {float(sums[row]):.17g}; normalise it "
                     f"({name} / {name}.sum(-1, keepdims=True)) or pass one-hot rows")


def _check_one_hot(model: str, name: str, a: Any, bound: Any = None, sizes: Any = None, plan: Any = None) -> None:
    """Each row of ``a`` (along its last axis) is 0 but for a single 1, in two reads (on the array's device): as
    many nonzero entries as rows, and each row sums to exactly 1. A row summing to 1 has a nonzero entry, so with
    no more nonzeros than rows each row has exactly one, and its sum is that entry: 1 (a NaN is nonzero and
    sums to NaN)."""
    size = _size(a)
    if size == 0:
        return
    rows = size // a.shape[-1]
    sums = _row_sums(a, _rows_plan(a))
    if isinstance(a, np.ndarray):
        if np.count_nonzero(a) == rows and bool((sums == 1).all()):
            return
    else:
        import torch

        if int(torch.count_nonzero(a)) == rows and bool((sums == 1).all()):
            return
    ok = ((a == 0) | (a == 1)).all(-1) & (a.sum(-1) == 1)
    bad = ok.detach().cpu().numpy() if hasattr(ok, "detach") else np.asarray(ok)
    row = tuple(int(i) for i in np.argwhere(~bad)[0])
    v = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    vals = np.array2string(v[row], precision=4, separator=", ", threshold=8)
    raise InputError(f"{model}: {name} holds one-hot rows (domain 'one_hot': one 1, the rest 0, which the derived "
                     f"program uses), but its row {row[0] if len(row) == 1 else row} is {vals}; pass one-hot rows "
                     f"(e.g. numpy.eye(K)[indices])")


def _host(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if not isinstance(a, np.ndarray) and hasattr(a, "detach") else np.asarray(a)


def _check_count(model: str, name: str, a: Any, bound: Any = None, sizes: Any = None, plan: Any = None) -> None:
    """A non-negative integer (a step count)."""
    v = _host(a)
    if v.size and not np.all(np.isfinite(v) & (v == np.round(v)) & (v >= 0)):
        bad = v[~(np.isfinite(v) & (v == np.round(v)) & (v >= 0))].flat[0]
        raise InputError(f"{model}: {name} is a step count (domain 'count': 0, 1, 2, ...); got {bad:g}: "
                         f"start at {name} = 0")


def _check_labels(model: str, name: str, a: Any, bound: Any, sizes: dict[str, int], plan: Any = None) -> None:
    """Integer labels, below the size of the axis they index where that is known: their extremes (a NaN shows
    in them) and whole numbers decide, in three reads; a failure is named from the full test."""
    v = _host(a)
    if v.size == 0:
        return
    k = _label_bound(bound, sizes)
    lo, hi = float(v.min()), float(v.max())
    if math.isfinite(lo) and math.isfinite(hi) and not np.fmod(v, 1).any() and (k is None or (lo >= 0 and hi < k)):
        return
    if not np.all(np.isfinite(v) & (v == np.round(v))):
        raise InputError(f"{model}: {name} holds integer labels (domain 'labels'); got non-integer "
                         f"values such as {v[v != np.round(v)].flat[0]!r}")
    if k is not None and (v.min() < 0 or v.max() >= k):
        bad = v.min() if v.min() < 0 else v.max()
        raise InputError(f"{model}: {name} holds labels 0, 1, ..., {k - 1} (the size of the axis "
                         f"it indexes); got {bad:g}")


def _label_bound(bound: Any, sizes: dict[str, int]) -> int | None:
    """The number of classes labels index, from the sizes of this call (``None`` where not known)."""
    if bound is None:
        return None
    if isinstance(bound, int):
        return bound
    b = as_expr(bound)
    if b.is_Integer:
        return int(b)
    k = b.subs({sp.Symbol(d, integer=True, positive=True): s for d, s in sizes.items()})
    return int(k) if k.is_Integer else None


def _check_spd(model: str, name: str, a: Any, bound: Any = None, sizes: Any = None, plan: Any = None) -> None:
    """Symmetric to rounding, and a Cholesky factor exists (torch arrays on their own device: one host sync)."""
    if _size(a) == 0:
        return
    if isinstance(a, np.ndarray) or not hasattr(a, "mT"):
        v = np.asarray(a)
        asym = float(np.max(np.abs(v - np.swapaxes(v, -1, -2))))
        scale = float(np.max(np.abs(v)))
        factored = True
        if asym <= 1e-10 * max(scale, 1e-300):
            try:
                np.linalg.cholesky(v)
            except np.linalg.LinAlgError:
                factored = False
    else:
        import torch

        info = torch.linalg.cholesky_ex(a).info
        asym_t, scale_t = (a - a.mT).abs().amax(), a.abs().amax()
        asym, scale, fails = torch.stack([asym_t, scale_t, (info != 0).sum().to(a.dtype)]).tolist()
        factored = fails == 0
    if not asym <= 1e-10 * max(scale, 1e-300):
        raise InputError(f"{model}: {name} is declared spd (symmetric positive definite) but is not "
                         f"symmetric: |{name} - {name}^T| is up to {asym:.3g}; pass a symmetric matrix")
    if not factored:
        raise InputError(f"{model}: {name} is declared spd (symmetric positive definite) but is not positive "
                         f"definite (it has no Cholesky factor); pass e.g. A A^T + c I with c > 0")


#: domain -> check(model, name, array, bound, sizes, plan), raising an InputError that names the problem
_DOMAIN_CHECKS: dict[str, Any] = {SIMPLEX: _check_simplex, MODERATE: _check_moderate, ONE_HOT: _check_one_hot,
                                  COUNT: _check_count, "labels": _check_labels, "spd": _check_spd}
#: domain -> plan(array, bound, sizes): what its check needs that depends on the shape and dtype alone
_DOMAIN_PLANS: dict[str, Any] = {SIMPLEX: _simplex_plan, MODERATE: _moderate_plan}


def _check_domains(m: Model, plan: list[tuple[str, str, Any]], arrays: dict[str, Any], sizes: dict[str, int]) -> None:
    """The declared domains ``plan`` (from :func:`_domain_plan`) of ``arrays``."""
    for name, domain, bound in plan:
        _DOMAIN_CHECKS[domain](m.name, name, arrays[name], bound, sizes, None)
