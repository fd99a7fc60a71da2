"""``verify.check``: generated kernels and user implementations against PyTorch autograd.

For each hypothesis-drawn example it compares, in float64:

(a) the generated kernel of the chosen backend against ``torch.autograd`` on an independent reference
    forward (loss and every gradient): the ``reference=`` callable if given, else the model's own
    ``Model.reference``, else the zoo's reference of :mod:`verify.references` for a zoo entry, else the
    model's forward program evaluated eagerly in torch (:mod:`verify.evaluate`; any loss program);
(b) the NumPy kernel against the torch kernel;
(c) a central finite difference of the loss along a random direction against the gradient;
(d) Hessian blocks against ``torch.autograd.functional.hessian``, and the Newton step, where the model
    declares them;
(e) the user's ``implementation``, if given, against the same reference.

Agreement means ``|got - want| <= rtol * (|want| + scale)`` elementwise with ``scale = max(1, max|want|,
noise / rtol)``: entries that are zero up to rounding are compared at the tensor's scale, and ``noise`` is
the reference's own sensitivity to rounding: ten times its change when the inputs move by about two ulps,
three times its change when they move by 1e-13 relative (twice, with different signs), and its change at
1e-12 relative. That term only matters where float64
cannot resolve the result (large terms cancelling, e.g. a saturated softmax at scores of 1e5, where the
rank-one term of the softmax Jacobian is a difference of numbers 1e13 times larger than itself); a real
bug moves results by far more.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import derive
import numeric
from derive.program import Model
from derive.tensor import LABELS, SPD, has_kinks

from .evaluate import eager_reference
from .references import OPTIMIZERS, REFERENCES, optimizer_trajectory
from .strategies import Example, examples
from .strategies import modes as strategy_modes

__all__ = ["check", "Mismatch", "Report", "compare", "resolve_reference", "reproduce", "tolerance"]

Reference = Callable[..., Any]

RTOL = 1e-10
#: rounding noise of the last reference evaluation, per quantity (see ``_reference``)
NOISE: dict[str, float] = {}


class Mismatch(AssertionError):
    """A kernel or implementation disagrees with the reference; the message is a full report."""


@dataclass
class Report:
    """What ``check`` verified, with the largest errors seen per comparison."""

    model: str
    backend: str
    device: str
    examples: int = 0
    checks: dict[str, float] = field(default_factory=dict)
    rtol: float = RTOL
    #: what the kernels were compared with (``the zoo's reference``, ``the eager evaluation ...``)
    reference: str = ""
    #: the value modes drawn
    modes: tuple[str, ...] = ()

    def record(self, what: str, err: float) -> None:
        self.checks[what] = max(self.checks.get(what, 0.0), err)

    def __str__(self) -> str:
        rows = [f"{self.model}: {self.examples} examples passed ({self.backend}, {self.device}, float64)"]
        if self.reference:
            rows.append(f"  reference: torch autograd on {self.reference}; values: {', '.join(self.modes)}")
        for k, v in self.checks.items():
            rows.append(f"  {k:<44s} max scaled error {v:.1e}")
        return "\n".join(rows)

    def __repr__(self) -> str:
        worst = max(self.checks.items(), key=lambda kv: kv[1], default=None)
        at = f", largest scaled error {worst[1]:.1e} ({worst[0]})" if worst else ""
        return (f"<Report {self.model}: {self.examples} examples, {len(self.checks)} comparisons passed "
                f"({self.backend}, {self.device}){at}>")

    def _repr_html_(self) -> str:
        """A short table for notebooks: one row per comparison, with its largest scaled error."""
        from html import escape

        rows = "".join(f"<tr><td style='text-align:left'>{escape(k)}</td><td>{v:.1e}</td></tr>"
                       for k, v in self.checks.items())
        caption = (f"<b>{escape(self.model)}</b>: {self.examples} examples passed "
                   f"({escape(self.backend)}, {escape(self.device)}, float64)")
        if self.reference:
            caption += f"<br>reference: torch autograd on {escape(self.reference)}; values: {escape(', '.join(self.modes))}"
        return (f"<table><caption style='text-align:left'>{caption}</caption>"
                "<thead><tr><th style='text-align:left'>comparison</th><th>max scaled error</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>")


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def tolerance(value: Any, what: str = "rtol") -> float:
    """``value`` as a tolerance: a finite number >= 0 (not a bool, not a string), else ``ValueError``.

    A NaN tolerance would pass everything (every comparison with NaN is false), a negative one nothing.
    """
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a finite number >= 0 (e.g. {what}=1e-10), got {value!r} "
                         f"({type(value).__name__})")
    v = float(value)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{what} must be a finite number >= 0 (e.g. {what}=1e-10), got {value!r}")
    return v


def compare(got: Any, want: Any, rtol: float = RTOL, noise: float = 0.0) -> tuple[float, tuple[int, ...] | None]:
    """Largest ``|got - want| / (|want| + scale)``, and where it occurs; passes when it is ``<= rtol``.

    ``scale = max(1, max|want|, noise / rtol)`` over the finite entries of ``want``: entries that are zero up
    to rounding are compared at the tensor's scale, and ``noise`` is the reference's own rounding noise (see
    :func:`check`). NaN and infinity are values: an expected NaN agrees only with a NaN, an expected
    ``+inf`` only with ``+inf`` (``-inf`` likewise), and a non-finite value where a finite one is expected
    is an error of ``inf``. Shape mismatches and invalid tolerances (NaN, negative, not a number) raise
    ``ValueError``.
    """
    rtol = tolerance(rtol, "rtol")
    noise = tolerance(noise, "noise")
    g, w = _np(got), _np(want)
    if g.shape != w.shape:
        raise ValueError(f"shape {g.shape} where {w.shape} is expected")
    if g.size == 0:
        return 0.0, None
    fin_w, fin_g = np.isfinite(w), np.isfinite(g)
    # non-finite entries must be the same value: NaN with NaN, +inf with +inf, -inf with -inf
    same = np.where(np.isnan(w), np.isnan(g), g == w)
    bad = (fin_w != fin_g) | (~fin_w & ~same)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        return float("inf"), idx
    if not fin_w.any():
        return 0.0, None
    scale = max(1.0, float(np.max(np.abs(w[fin_w]))), noise / rtol if rtol > 0 else 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(fin_w, np.abs(np.where(fin_w, g, 0.0) - np.where(fin_w, w, 0.0))
                       / (np.abs(np.where(fin_w, w, 0.0)) + scale), 0.0)
    k = int(np.argmax(err))
    idx = tuple(int(i) for i in np.unravel_index(k, g.shape))
    return float(err.flat[k]), idx


def _low_precision(out: dict[str, Any]) -> str | None:
    """The dtype of the first float32/float16/bfloat16 value among ``out``'s loss and gradients, if any."""
    values = [out.get("loss"), *((out.get("grad") or {}).values() if isinstance(out.get("grad"), dict) else [])]
    for v in values:
        d = str(getattr(v, "dtype", "")).replace("torch.", "")
        if d in ("float32", "float16", "bfloat16"):
            return d
    return None


#: the relative tolerance a correct result of each low precision reaches (a few hundred ulps)
LOW_PRECISION_RTOL = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 5e-2}


def _fail(m: Model, who: str, what: str, got: Any, want: Any, err: float, idx: tuple[int, ...] | None,
          ex: Example, rtol: float, noise: float = 0.0, low: str | None = None) -> Mismatch:
    g, w = _np(got), _np(want)
    at = f" at index {idx}" if idx else ""
    gv = g[idx] if idx else g
    wv = w[idx] if idx else w
    fin = w[np.isfinite(w)]
    scale = max(1.0, float(np.max(np.abs(fin))) if fin.size else 1.0, noise / rtol if rtol > 0 else 0.0)
    return Mismatch(
        f"{m.name}: {what} (shape {tuple(w.shape)}) from {who} disagrees with torch autograd{at}: "
        f"got {float(gv):.17g}, expected {float(wv):.17g} "
        f"({_diff_text(float(gv), float(wv), rtol, scale)}); "
        f"{ex.describe()}. Reproduce: {reproduce(m, ex)}"
        + (f". Note: {who} computes in {low}, which agrees with float64 only to about "
           f"{LOW_PRECISION_RTOL[low]:g}: compute in float64, or check at that precision with "
           f"verify.check(..., rtol={LOW_PRECISION_RTOL[low]:g})" if low and rtol < LOW_PRECISION_RTOL[low] else "")
    )


def _diff_text(g: float, w: float, rtol: float, scale: float) -> str:
    if np.isfinite(g) and np.isfinite(w):
        return f"|diff| {abs(g - w):.3e} > rtol {rtol:g} * (|expected| + {scale:.3g})"
    return "a non-finite value agrees only with the same non-finite value"


def reproduce(m: Model, ex: Example) -> str:
    """Python code that rebuilds the arrays of example ``ex`` (through ``Model.rebuild`` where the model has
    it; otherwise ``m`` stands for the model that was checked)."""
    call = f"verify.example({m.rebuild or 'm'}, seed={ex.seed}, sizes={ex.sizes}, mode={ex.mode!r})"
    return call if m.rebuild else call + f" with m the model {m.name!r} that was checked"


def resolve_reference(m: Model, reference: Reference | None = None) -> tuple[Reference, str]:
    """The independent torch forward to verify ``m`` against, and what it is.

    In order: ``reference`` (a callable ``f(**tensors, **options) -> loss``), the model's own
    ``Model.reference``, the zoo's reference for a zoo entry (built by ``derive.models.get``), and otherwise
    the model's forward program evaluated eagerly in torch (:func:`verify.evaluate.eager_reference`).
    """
    if reference is not None:
        if not callable(reference):
            raise TypeError(f"reference= must be a callable f(**tensors, **options) -> loss, not "
                            f"{type(reference).__name__}")
        return reference, "the given reference"
    if m.reference is not None:
        return m.reference, "the model's reference"
    if m.rebuild is not None and m.rebuild.startswith(f"derive.models.get({m.name!r}") and m.name in REFERENCES:
        return REFERENCES[m.name], "the zoo's reference"
    return eager_reference(m), "the eager evaluation of its forward program"


def _reference(m: Model, ref: Reference, arrays: dict[str, np.ndarray], device: str,
               hessian: bool) -> tuple[float, dict[str, np.ndarray], dict[Any, np.ndarray], dict[str, np.ndarray]]:
    opts = {k: v for k, v in m.options.items()}
    t = {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in arrays.items()}
    leaves = {k: t[k].clone().requires_grad_(True) for k in m.grad_names}
    loss = ref(**{**t, **leaves}, **opts)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    g = {k: (_np(v) if v is not None else np.zeros(arrays[k].shape)) for k, v in zip(leaves, grads)}
    # The reference's own rounding noise: the same computation on inputs moved by about two ulps. Where
    # large terms cancel (a saturated softmax or tanh), float64 cannot resolve the result better than
    # this, and a comparison below it would measure rounding, not correctness.
    rng = np.random.default_rng(0)
    exact = {k for k in arrays if k in m.inputs and m.inputs[k].domain == LABELS}
    noise: dict[str, float] = {"loss": 0.0, **{k: 0.0 for k in m.grad_names}}
    # moves of ~2 ulps show rounding noise directly; moves of 1e-13 also reshuffle the rounding of results
    # that are differences of nearly equal large terms (where ~2-ulp moves may leave every bit in place)
    for rel, factor in ((4e-16, 10.0), (1e-13, 3.0), (1e-13, 3.0), (1e-12, 1.0)):
        # integer labels stay exact (moved by an ulp, 3 would truncate to 2 and pick another class)
        t2 = {k: torch.tensor(v if k in exact else v * (1 + rel * rng.choice([-1.0, 1.0], size=np.shape(v))),
                              dtype=torch.float64, device=device) for k, v in arrays.items()}
        leaves2 = {k: t2[k].clone().requires_grad_(True) for k in m.grad_names}
        loss2 = ref(**{**t2, **leaves2}, **opts)
        grads2 = torch.autograd.grad(loss2, list(leaves2.values()), allow_unused=True)
        noise["loss"] = max(noise["loss"], factor * abs(float(loss2.detach()) - float(loss.detach())))
        for k, v2 in zip(leaves2, grads2):
            if v2 is not None and g[k].size:
                noise[k] = max(noise[k], factor * float(np.max(np.abs(_np(v2) - g[k]))))
    NOISE.clear()
    NOISE.update(noise)
    hess: dict[Any, np.ndarray] = {}
    newton: dict[str, np.ndarray] = {}
    if hessian and m.hessian_wrt:
        names = list(m.hessian_wrt)

        def f(*xs: torch.Tensor) -> torch.Tensor:
            return ref(**{**t, **dict(zip(names, xs))}, **opts)

        H = torch.autograd.functional.hessian(f, tuple(t[n] for n in names))
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                hess[a if a == b else (a, b)] = _np(H[i][j])
        if m.newton:
            sizes = [int(np.prod(arrays[n].shape)) for n in names]
            full = np.block([[hess[a if a == b else (a, b)].reshape(sa, sb) for b, sb in zip(names, sizes)]
                             for a, sa in zip(names, sizes)])
            gv = np.concatenate([g[n].reshape(-1) for n in names])
            step = np.linalg.solve(full, gv)
            at = 0
            for n, sz in zip(names, sizes):
                newton[n] = arrays[n] - step[at : at + sz].reshape(arrays[n].shape)
                at += sz
    return float(loss.detach()), g, hess, newton


def _finite_difference(m: Model, f: Callable[..., dict[str, Any]], arrays: dict[str, np.ndarray],
                       grads: dict[str, Any], ex: Example, kinks: bool | None = None) -> float:
    """Central difference of the loss along a random direction vs the gradient's directional derivative."""
    kinks = m.kinks if kinks is None else kinks
    rng = np.random.default_rng(ex.seed ^ 0x5EED)
    d = {k: rng.normal(size=arrays[k].shape) for k in m.grad_names}
    for k in d:  # a symmetric matrix moves along symmetric directions (it stays in its declared domain)
        if m.tensor(k).domain == SPD:
            d[k] = (d[k] + np.swapaxes(d[k], -1, -2)) / 2
    mags = [float(np.max(np.abs(arrays[k]))) for k in m.grad_names if arrays[k].size]  # what is moved
    scale = max(1e-6, max(mags, default=1.0))
    # the step is relative to the data: truncation stays ~1e-12 relative, and a kink is crossed only
    # with probability ~1e-6
    h = 1e-6 * scale

    def central(step: float) -> tuple[float, float, float]:
        lp = f(**{**arrays, **{k: arrays[k] + step * d[k] for k in d}})["loss"]
        lm = f(**{**arrays, **{k: arrays[k] - step * d[k] for k in d}})["loss"]
        return (lp - lm) / (2 * step), lp, lm

    fd1, lp, lm = central(h)
    fd2, _, _ = central(h / 2)
    # Richardson extrapolation cancels the h^2 truncation term; |fd1 - fd2| estimates what is left of it
    # (it matters where the directional derivative is tiny next to the curvature, e.g. a confident
    # softmax), and rounding contributes ~ eps |L| / h
    fd = (4 * fd2 - fd1) / 3
    an = sum(float(np.sum(_np(grads[k]) * d[k])) for k in d)
    # Models with kinks (ReLU, max pooling) are only piecewise smooth: a near-tie in a pooling window can
    # switch within the step, so their finite differences get 1e-4 relative (the exact comparison with
    # torch, under the same subgradient conventions, stays at 1e-10).
    rel = 1e-4 if kinks else 1e-5
    # rounding: ~eps |L| per evaluation, or the loss's own rounding noise where that is larger: a loss that is a
    # small difference of O(1) terms (e^d - 1 - d at d ~ 1e-3) rounds at the terms' scale, not at |L|'s. It is
    # measured as the deviation from linearity over a step 1e-4 h (where curvature contributes ~1e-8 of the
    # truncation term, and the step reshuffles the rounding of every term); the extrapolated difference
    # carries about three times one evaluation's error over h
    l0 = f(**arrays)["loss"]
    tiny = 1e-4 * h
    jiggle = max(abs(f(**{**arrays, **{k: arrays[k] + sg * tiny * d[k] for k in d}})["loss"] - l0 - sg * tiny * an)
                 for sg in (1.0, -1.0))
    tol = (rel * (abs(an) + abs(fd)) + abs(fd1 - fd2) + 1e-10 * (abs(lp) + abs(lm)) / scale
           + 2e3 * 2.2e-16 * (abs(lp) + abs(lm)) / h + 3 * jiggle / h)
    if abs(fd - an) > tol and kinks:
        # A model with kinks (ReLU, max pooling) may sit on one: ReLU(0) ties in a pooling window are not
        # rare. There the one-sided differences disagree and no finite difference measures a derivative;
        # the comparison with torch (same subgradient conventions) still covers this point.
        right, left = (lp - l0) / h, (l0 - lm) / h
        if abs(right - left) > tol:
            return 0.0
    if abs(fd - an) > tol:
        raise Mismatch(
            f"{m.name}: the gradient disagrees with a central finite difference of the loss along a random "
            f"direction: directional derivative {an:.12g}, finite difference {fd:.12g} (step {h:.1e}, "
            f"tolerance {tol:.1e}); {ex.describe()}"
        )
    return abs(fd - an) / max(tol, 1e-300) * 1e-5


def check(
    m: Model | str,
    implementation: Callable[..., dict[str, Any]] | None = None,
    backend: str = "torch",
    device: str = "cpu",
    examples: int = 50,
    rtol: float = RTOL,
    fd: bool = True,
    shrink: bool = False,
    derandomize: bool = False,
    reference: Reference | None = None,
) -> Report:
    """Verify a model's generated kernels (and optionally a user implementation) against PyTorch.

    Any loss program can be checked: a zoo entry, a Builder-made or parsed model. Its reference is, in
    order, ``reference``, ``m.reference``, the zoo's reference for a zoo entry, or the model's forward
    program evaluated eagerly in torch and differentiated by ``torch.autograd`` (never the derived adjoint).

    Value modes: ``normal`` and ``small`` values always, exact zeros and ties (``kinks``) for models with
    non-smooth functions, and ``large`` inputs (logits of order 1e3) for per-sample models that declare them
    and have a reference of their own (given, the model's or the zoo's). The eager evaluation computes the
    program as written, and a literal ``log(softmax(z))`` overflows there in any eager evaluation: a
    comparison at those values would measure the reference's overflow, not the kernel. To check large
    values of your own model, pass a stable ``reference=`` (e.g. with ``F.cross_entropy``).

    Args:
        m: a model (``derive.models.get``, ``derive.Builder``, ``derive.parse``), or a zoo name.
        implementation: a callable ``f(**arrays) -> {"loss": ..., "grad": {...}}`` to check as well; it
            receives NumPy arrays with ``backend="numpy"`` and torch tensors with ``backend="torch"``,
            and may return either.
        backend: which generated kernel (and which array type for ``implementation``).
        device: torch device for the torch kernel and the reference (``"cuda"`` when available).
        examples: number of hypothesis examples.
        rtol: relative tolerance (float64).
        fd: also check against a finite difference.
        shrink: let hypothesis shrink a failing example to a minimal one (slower).
        derandomize: draw the same examples every run.
        reference: an independent torch forward ``f(**tensors, **options) -> loss`` (batch-first tensors
            named as the model's params and inputs) to compare with instead of the default.

    Returns:
        A :class:`Report` of the comparisons made and the largest errors.

    Raises:
        Mismatch: on any disagreement, naming the model, the quantity, its shape, the worst index, both
            values, the tolerance and the reproducing seed.
    """
    if isinstance(m, str):
        m = derive.models.get(m)
    if not isinstance(m, Model):
        raise TypeError(f"verify.check takes a model or a model name, not {type(m).__name__}")
    if backend not in ("numpy", "torch"):
        raise ValueError(f"unknown backend {backend!r}; choose numpy or torch")
    device = numeric.kernel.normalise_device(device) or "cpu"
    if isinstance(examples, bool) or not isinstance(examples, (int, np.integer)):
        raise TypeError(f"examples must be an integer >= 1, got {examples!r} ({type(examples).__name__})")
    if examples < 1:
        raise ValueError(f"examples must be at least 1, got {examples}")
    rtol = tolerance(rtol, "rtol")
    if implementation is not None and not callable(implementation):
        raise TypeError(f"implementation= must be a callable f(**arrays) -> {{'loss', 'grad'}}, not "
                        f"{type(implementation).__name__}")
    if m.is_update:
        return _check_update(m, implementation, backend, device, examples, rtol, shrink, derandomize)
    ref, source = resolve_reference(m, reference)
    eager = source.startswith("the eager")
    # zoo entries declare their kinks; any other model gets exact zeros and ties where it has kinks
    kinks = m.kinks or (source != "the zoo's reference" and has_kinks([eq.rhs for eq in m.equations]))
    hard = () if eager else m.hard
    f_np = numeric.compile(m, "numpy", hessian=m.hessian_wrt)
    f_t = numeric.compile(m, "torch", device=device, hessian=m.hessian_wrt)
    report = Report(m.name, backend, device, rtol=rtol, reference=source,
                    modes=tuple(strategy_modes(m, hard=hard, kinks=kinks)))
    model = m
    # a stop-gradient on a path from a differentiated tensor (a semi-gradient, as DQN's target computed from
    # the online network) makes the gradient differ from the derivative of the loss: no finite difference
    # measures it (the comparison with the reference's autograd, under the same detach, still does)
    semi = _stops_gradient(m)

    def one(ex: Example) -> None:
        arrays = ex.arrays(model)
        loss, grads, hess, newton = _reference(model, ref, arrays, device, hessian=True)
        outs = {"numpy kernel": f_np(**arrays),
                "torch kernel": f_t(**{k: torch.tensor(v, device=device) for k, v in arrays.items()})}
        for who, out in outs.items():
            _compare_out(model, who, out, loss, grads, hess, newton, ex, rtol, report)
        for k in model.grad_names:
            err, idx = compare(outs["numpy kernel"]["grad"][k], outs["torch kernel"]["grad"][k], rtol,
                               NOISE.get(k, 0.0))
            if err > rtol:
                raise _fail(model, "the numpy kernel vs the torch kernel", f"gradient {k}",
                            outs["numpy kernel"]["grad"][k], outs["torch kernel"]["grad"][k], err, idx, ex, rtol,
                            NOISE.get(k, 0.0))
            report.record("numpy kernel vs torch kernel", err)
        if fd and model.finite_differences and not semi and ex.mode in ("normal", "small"):
            report.record("finite difference (scaled)", _finite_difference(model, f_np, arrays, grads, ex, kinks))
        if implementation is not None:
            args: dict[str, Any] = (arrays if backend == "numpy" else
                                    {k: torch.tensor(v, device=device) for k, v in arrays.items()})
            try:
                out = implementation(**args)
            except Mismatch:
                raise
            except Exception as e:  # the user's code failed: report it as a mismatch with the example
                raise Mismatch(f"{model.name}: the implementation raised {type(e).__name__}: {e}; "
                               f"{ex.describe()}") from e
            _compare_out(model, "the implementation", out, loss, grads, {}, {}, ex, rtol, report,
                         require_all=True)
        report.examples += 1

    _drive(model, one, examples, shrink, derandomize, hard=hard, kinks=kinks)
    return report


def _stops_gradient(m: Model) -> bool:
    """Whether a stop-gradient of ``m`` cuts a path from a tensor whose gradient is reported."""
    from derive.tensor import StopGrad, Var, walk

    live = {m.tensor(k) for k in m.grad_names}
    for eq in m.equations:
        nodes = walk([eq.rhs])
        if any(isinstance(n, StopGrad) and any(isinstance(v, Var) and v in live for v in walk([n.x]))
               for n in nodes):
            return True
        if any(isinstance(n, Var) and n in live for n in nodes):
            live.add(eq.lhs)
    return False


def _drive(m: Model, one: Callable[[Example], None], n: int, shrink: bool, derandomize: bool,
           hard: tuple[str, ...] | None = None, kinks: bool | None = None) -> None:
    """Run ``one`` on ``n`` hypothesis-drawn examples of ``m`` (no database; shrinking on request)."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if shrink else [])

    @settings(max_examples=n, deadline=None, database=None, phases=phases, derandomize=derandomize,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        one(data.draw(examples(m, hard=hard, kinks=kinks), label="example"))

    with _private_hypothesis_storage():
        run()


@contextlib.contextmanager
def _private_hypothesis_storage() -> Iterator[None]:
    """Hypothesis keeps files (cached constants of local modules) in ``./.hypothesis`` of the working folder,
    even with no database: while ``check`` runs, they go to a private per-user folder instead
    (``~/.cache/dlmath/hypothesis``, or under ``$XDG_CACHE_HOME``), unless ``HYPOTHESIS_STORAGE_DIRECTORY``
    says where (then hypothesis uses that, as asked)."""
    import os
    from pathlib import Path

    from hypothesis import configuration

    if os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        yield
        return
    before = vars(configuration).get("__hypothesis_home_directory")
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dlmath" / "hypothesis"
    try:
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:  # no writable home: a fresh temporary folder, never the working folder
        import tempfile

        base = Path(tempfile.mkdtemp(prefix="dlmath-hypothesis-"))
    configuration.set_hypothesis_home_dir(base)
    try:
        yield
    finally:
        configuration.set_hypothesis_home_dir(before)


def _compare_out(m: Model, who: str, out: Any, loss: float, grads: dict[str, np.ndarray],
                 hess: dict[Any, np.ndarray], newton: dict[str, np.ndarray], ex: Example, rtol: float,
                 report: Report, require_all: bool = False) -> None:
    if not isinstance(out, dict) or "loss" not in out or "grad" not in out:
        raise Mismatch(f"{m.name}: {who} must return a dict with 'loss' and 'grad', got "
                       f"{type(out).__name__}{' with keys ' + str(list(out)) if isinstance(out, dict) else ''}")
    got_loss = _np(out["loss"])
    if got_loss.size != 1:
        how = "mean" if m.reduction == "mean" else "sum"
        raise Mismatch(f"{m.name}: {who} returned a loss of shape {tuple(got_loss.shape)}, a loss per sample (or per "
                       f"entry); return one number, the {how} over the batch (e.g. loss.{how}()); {ex.describe()}")
    low = _low_precision(out)
    err, idx = compare(got_loss.reshape(()), np.array(loss), rtol, NOISE.get("loss", 0.0))
    if err > rtol:
        raise _fail(m, who, "the loss", got_loss.reshape(()), np.array(loss), err, idx, ex, rtol,
                    NOISE.get("loss", 0.0), low)
    report.record(f"{who}: loss", err)
    for k, want in grads.items():
        if k not in out["grad"]:
            raise Mismatch(f"{m.name}: {who} returned no gradient for {k!r} (it returned "
                           f"{', '.join(map(str, out['grad'])) or 'none'}); gradients are expected for "
                           f"{', '.join(m.grad_names)}")
        got = out["grad"][k]
        try:
            err, idx = compare(got, want, rtol, NOISE.get(k, 0.0))
        except ValueError as e:
            raise Mismatch(f"{m.name}: {who} returned gradient {k!r} with {e}; {ex.describe()}") from None
        if err > rtol:
            raise _fail(m, who, f"gradient {k}", got, want, err, idx, ex, rtol, NOISE.get(k, 0.0), low)
        report.record(f"{who}: gradients", err)
    if require_all:
        return
    for key, want in hess.items():
        got = out["hessian"][key]
        err, idx = compare(got, want, rtol)
        if err > rtol:
            raise _fail(m, who, f"Hessian block {key}", got, want, err, idx, ex, rtol)
        report.record(f"{who}: Hessian", err)
    if newton:
        H = np.block([[np.atleast_2d(_np(out["hessian"][a if a == b else (a, b)]).reshape(
            int(np.prod(np.shape(newton[a]))), int(np.prod(np.shape(newton[b])))))
            for b in newton] for a in newton])
        cond = float(np.linalg.cond(H))
        for k, want in newton.items():
            got = out["newton"][k]
            err, idx = compare(got, want, rtol * max(1.0, cond))
            if err > rtol * max(1.0, cond):
                raise _fail(m, who, f"Newton step {k}", got, want, err, idx, ex, rtol * max(1.0, cond))
            report.record(f"{who}: Newton step (tol rtol*cond(H))", err / max(1.0, cond))


def example(m: Model | str, seed: int, sizes: dict[str, int], mode: str = "normal") -> dict[str, np.ndarray]:
    """The arrays of one example, to reproduce a reported mismatch."""
    if isinstance(m, str):
        m = derive.models.get(m)
    return Example(sizes, seed, mode).arrays(m)


def _check_update(m: Model, implementation: Callable[..., dict[str, Any]] | None, backend: str, device: str,
                  examples: int, rtol: float, shrink: bool, derandomize: bool) -> Report:
    """Update programs: several steps of the generated kernels (and the implementation) vs torch.optim."""
    if m.name not in OPTIMIZERS:
        from .references_ch8 import UPDATES

        if m.name in UPDATES:
            return _check_update_program(m, UPDATES[m.name], implementation, backend, device, examples, rtol,
                                         shrink, derandomize)
        raise ValueError(f"no reference for update program {m.name!r}; known: {', '.join([*OPTIMIZERS, *UPDATES])}")
    f_np = numeric.compile(m, "numpy")
    f_t = numeric.compile(m, "torch", device=device)
    report = Report(m.name, backend, device, rtol=rtol)
    opts = dict(m.options)

    def run_steps(f: Callable[..., dict[str, Any]], state: dict[str, np.ndarray], grads: list[np.ndarray],
                  as_torch: bool) -> list[dict[str, np.ndarray]]:
        cur: dict[str, Any] = ({k: torch.tensor(v, device=device) for k, v in state.items()} if as_torch
                               else dict(state))
        traj = []
        for g in grads:
            gg = torch.tensor(g, device=device) if as_torch else g
            nxt = f(**cur, g=gg)
            if not isinstance(nxt, dict) or set(nxt) != set(state):
                raise Mismatch(f"{m.name}: an update must return the next state {sorted(state)}, got "
                               f"{sorted(nxt) if isinstance(nxt, dict) else type(nxt).__name__}")
            cur = dict(nxt)
            traj.append({k: _np(v) for k, v in nxt.items()})
        return traj

    def one(ex: Example) -> None:
        rng = np.random.default_rng(ex.seed)
        p = ex.sizes.get("p", 3)
        steps = 1 + ex.seed % 5
        scale = {"small": 1e-3, "large": 1e3}.get(ex.mode, 1.0)
        state = {k: np.zeros(tuple(int(d.subs({m.dims["p"]: p})) for d in v.shape)) for k, v in m.params.items()}
        state["theta"] = rng.normal(size=(p,))
        grads = [rng.normal(size=(p,)) * scale for _ in range(steps)]
        ref = optimizer_trajectory(m.name, torch.tensor(state["theta"], device=device),
                                   [torch.tensor(g, device=device) for g in grads], **opts)
        runs = {"numpy kernel": run_steps(f_np, state, grads, False),
                "torch kernel": run_steps(f_t, state, grads, True)}
        if implementation is not None:
            runs["the implementation"] = run_steps(implementation, state, grads, backend == "torch")
        for who, traj in runs.items():
            for step, (got, want) in enumerate(zip(traj, ref)):
                for k, w in want.items():
                    err, idx = compare(got[k], w, rtol)
                    if err > rtol:
                        raise _fail(m, who, f"state {k} after step {step + 1} of {steps}", got[k], w, err, idx,
                                    ex, rtol)
                    report.record(f"{who}: state vs torch.optim", err)
        report.examples += 1

    _drive(m, one, examples, shrink, derandomize)
    return report


def _check_update_program(m: Model, ref: Reference, implementation: Callable[..., dict[str, Any]] | None,
                          backend: str, device: str, examples: int, rtol: float, shrink: bool,
                          derandomize: bool) -> Report:
    """Update programs other than the optimizers (``q_learning``): several steps, each with fresh inputs drawn
    from their declared domains, of the generated kernels (and the implementation) against the reference
    ``ref(**state, **inputs, **options) -> next state``, from a state drawn as the parameters are."""
    f_np = numeric.compile(m, "numpy")
    f_t = numeric.compile(m, "torch", device=device)
    report = Report(m.name, backend, device, rtol=rtol, reference="the zoo's reference update",
                    modes=tuple(strategy_modes(m)))
    opts = dict(m.options)
    state_names = list(m.params)

    def one(ex: Example) -> None:
        first = ex.arrays(m)
        steps = 1 + ex.seed % 4
        inputs = [{k: v for k, v in Example(ex.sizes, (ex.seed + i) % 2**32, ex.mode).arrays(m).items()
                   if k not in m.params} for i in range(steps)]
        start = {k: first[k] for k in state_names}
        want: list[dict[str, np.ndarray]] = []
        cur_t = {k: torch.tensor(v, device=device) for k, v in start.items()}
        for inp in inputs:
            cur_t = ref(**cur_t, **{k: torch.tensor(v, device=device) for k, v in inp.items()}, **opts)
            want.append({k: _np(v) for k, v in cur_t.items()})
        runs: dict[str, Callable[..., dict[str, Any]]] = {"numpy kernel": f_np, "torch kernel": f_t}
        if implementation is not None:
            runs["the implementation"] = implementation
        for who, f in runs.items():
            as_torch = who == "torch kernel" or (who == "the implementation" and backend == "torch")
            cur: dict[str, Any] = ({k: torch.tensor(v, device=device) for k, v in start.items()} if as_torch
                                   else dict(start))
            for step, (inp, w) in enumerate(zip(inputs, want)):
                args = {k: torch.tensor(v, device=device) for k, v in inp.items()} if as_torch else inp
                try:
                    nxt = f(**cur, **args)
                except Mismatch:
                    raise
                except Exception as e:
                    if who != "the implementation":
                        raise
                    raise Mismatch(f"{m.name}: the implementation raised {type(e).__name__}: {e}; "
                                   f"{ex.describe()}") from e
                if not isinstance(nxt, dict) or set(nxt) != set(state_names):
                    raise Mismatch(f"{m.name}: {who}: an update must return the next state {sorted(state_names)}, "
                                   f"got {sorted(nxt) if isinstance(nxt, dict) else type(nxt).__name__}")
                for k, wv in w.items():
                    err, idx = compare(nxt[k], wv, rtol)
                    if err > rtol:
                        raise _fail(m, who, f"state {k} after step {step + 1} of {len(inputs)}", nxt[k], wv, err,
                                    idx, ex, rtol)
                    report.record(f"{who}: state vs the reference", err)
                cur = dict(nxt)
        report.examples += 1

    _drive(m, one, examples, shrink, derandomize)
    return report
