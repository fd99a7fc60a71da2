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
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st

import derive
import numeric
from derive.program import Model
from derive.tensor import LABELS, SPD, has_kinks

from .adapters import Adapter, as_callable, upstream_inputs
from .evaluate import UnsupportedReference, eager_reference
from .references import OPTIMIZERS, REFERENCES, optimizer_reference, optimizer_trajectory
from .strategies import MODES, Example, examples
from .strategies import modes as strategy_modes

__all__ = ["check", "Mismatch", "ReferenceFailed", "Report", "compare", "resolve_reference", "reproduce", "example", "Failure",
           "default_seed", "DTYPE_RTOL", "tolerance"]

Reference = Callable[..., Any]

RTOL = 1e-10
#: rounding noise of the last reference evaluation, per quantity (see ``_reference``)
NOISE: dict[str, float] = {}


class ReferenceFailed(ValueError):
    """The reference could not be run or differentiated by PyTorch on an example: the message names the example
    and the reference's own error (an in-place operation on a value autograd saved, a shape it did not expect)."""


def _reference_failed(m: Model, e: Exception) -> ReferenceFailed:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    first = first.split(" Hint: ")[0]  # (torch's hint is for its own debugger)
    hint = ""
    if "modified by an inplace operation" in first:
        hint = (" (an in-place operation, such as h.relu_() or h.mul_(2), overwrote a value autograd saved for the "
                "backward: write h = h.relu(); dlmath derives the same math either way, but torch.autograd, which "
                "verify compares with, cannot differentiate the in-place form)")
    return ReferenceFailed(f"{m.name}: the reference raised {type(e).__name__} under torch.autograd: {first}{hint}")


class Mismatch(AssertionError):
    """A kernel or implementation disagrees with the reference; the message is a full report.

    Attributes:
        failures: every failing quantity of the failing example (:class:`Failure`: quantity, kind --
            ``value``, ``in-place``, ``missing``, ``shape``, ``raised``, ``type`` --, text, index, values).
        model: the model's name; example: the failing :class:`~verify.strategies.Example`;
        reproduce: the Python code that rebuilds it; diagnosis: why it differs, where that can be told.
    """

    def __init__(self, message: str, failures: Sequence[Any] = (), model: str = "", example: Any = None,
                 reproduce: str = "", diagnosis: str = ""):
        super().__init__(message)
        self.failures = list(failures)
        self.model, self.example, self.reproduce, self.diagnosis = model, example, reproduce, diagnosis


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
    #: the seed the examples were drawn from (the same examples for the same seed)
    seed: int = 0
    #: how the implementation was judged (e.g. its float32 tolerance)
    notes: list[str] = field(default_factory=list)

    def record(self, what: str, err: float) -> None:
        self.checks[what] = max(self.checks.get(what, 0.0), err)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def __str__(self) -> str:
        rows = [f"{self.model}: {self.examples} examples passed ({self.backend}, {self.device}, float64)"]
        if self.reference:
            ref = self.reference if self.reference.startswith("torch") else f"torch autograd on {self.reference}"
            rows.append(f"  reference: {ref}; values: {', '.join(self.modes)}; seed {self.seed}")
        rows += [f"  {n}" for n in self.notes]
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


def _autograd(loss: Any, leaves: list[torch.Tensor]) -> Sequence[torch.Tensor | None]:
    """The gradients of ``loss`` in ``leaves`` (None where it does not depend on one; all None for a loss
    that depends on none of them, such as a parsed ``sum(x - x)``)."""
    if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
        return [None] * len(leaves)
    return torch.autograd.grad(loss, leaves, allow_unused=True)


def _reference(m: Model, ref: Reference, arrays: dict[str, np.ndarray], device: str,
               hessian: bool, noise: bool = True, dtype: torch.dtype = torch.float64
               ) -> tuple[float, dict[str, np.ndarray], dict[Any, np.ndarray], dict[str, np.ndarray]]:
    opts = {k: v for k, v in m.options.items()}
    t = {k: torch.tensor(v, dtype=torch.float64, device=device).to(dtype) for k, v in arrays.items()}
    leaves = {k: t[k].clone().requires_grad_(True) for k in m.grad_names}
    try:
        loss = ref(**{**t, **leaves}, **opts)
        grads = _autograd(loss, list(leaves.values()))
    except (Mismatch, ReferenceFailed, UnsupportedReference):
        raise
    except Exception as e:  # the user's code (a captured module, a reference=) failed: named, not torch's traceback
        raise _reference_failed(m, e) from e
    g = {k: (_np(v) if v is not None else np.zeros(arrays[k].shape)) for k, v in zip(leaves, grads)}
    if not noise:
        return float(loss.detach()), g, {}, {}
    # The reference's own rounding noise: the same computation on inputs moved by about two ulps. Where
    # large terms cancel (a saturated softmax or tanh), float64 cannot resolve the result better than
    # this, and a comparison below it would measure rounding, not correctness.
    rng = np.random.default_rng(0)
    exact = {k for k in arrays if k in m.inputs and m.inputs[k].domain == LABELS}
    rounding: dict[str, float] = {"loss": 0.0, **{k: 0.0 for k in m.grad_names}}
    kinked = m.kinks or has_kinks([eq.rhs for eq in m.equations])
    # moves of ~2 ulps show rounding noise directly; moves of 1e-13 also reshuffle the rounding of results
    # that are differences of nearly equal large terms (where ~2-ulp moves may leave every bit in place)
    for rel, factor in ((4e-16, 10.0), (1e-13, 3.0), (1e-13, 3.0), (1e-12, 1.0)):
        # integer labels stay exact (moved by an ulp, 3 would truncate to 2 and pick another class)
        t2 = {k: torch.tensor(v if k in exact else v * (1 + rel * rng.choice([-1.0, 1.0], size=np.shape(v))),
                              dtype=torch.float64, device=device) for k, v in arrays.items()}
        leaves2 = {k: t2[k].clone().requires_grad_(True) for k in m.grad_names}
        loss2 = ref(**{**t2, **leaves2}, **opts)
        grads2 = _autograd(loss2, list(leaves2.values()))
        rounding["loss"] = max(rounding["loss"], factor * abs(float(loss2.detach()) - float(loss.detach())))
        for k, v2 in zip(leaves2, grads2):
            if v2 is not None and g[k].size:
                dev = np.abs(_np(v2) - g[k])
                if kinked:
                    # a move of at most 1e-12 that changes an entry by 1e-6 of the gradient's scale crossed a kink or
                    # broke a tie (ReLU at an exact zero of W x + b, equal maxima moved apart): a decision, not
                    # rounding. Counted as noise, it was O(1) and let any error of that gradient pass there
                    dev = dev[dev <= 1e-6 * max(1.0, float(np.max(np.abs(g[k]))))]
                if dev.size:
                    rounding[k] = max(rounding[k], factor * float(np.max(dev)))
    NOISE.clear()
    NOISE.update(rounding)
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
                       grads: dict[str, Any], ex: Example, kinks: bool | None = None) -> float | None:
    """Central difference of the loss along a random direction vs the gradient's directional derivative: the
    scaled error, or None where the computed loss does not resolve even the largest step (it is constant to
    rounding there, so no difference measures the derivative)."""
    kinks = m.kinks if kinks is None else kinks
    rng = np.random.default_rng(ex.seed ^ 0x5EED)
    d = {k: rng.normal(size=arrays[k].shape) for k in m.grad_names}
    for k in d:  # a symmetric matrix moves along symmetric directions (it stays in its declared domain)
        if m.tensor(k).domain == SPD:
            d[k] = (d[k] + np.swapaxes(d[k], -1, -2)) / 2
    mags = [float(np.max(np.abs(arrays[k]))) for k in m.grad_names if arrays[k].size]  # what is moved
    scale = max(1e-6, max(mags, default=1.0))
    an = sum(float(np.sum(_np(grads[k]) * d[k])) for k in d)
    l0 = f(**arrays)["loss"]

    def loss_at(step: float) -> float:
        return float(f(**{**arrays, **{k: arrays[k] + step * d[k] for k in d}})["loss"])

    # the step is relative to the data: truncation stays ~1e-12 relative, and a kink is crossed only with
    # probability ~1e-6. Where the loss does not resolve it (fewer than five distinct values at the nine points
    # across [-h, h]: u - sin(u) at u ~ 1e-6 is 1e-18, rounded at u's ulp, 1e-22, and moves by 1e-23 over h), no
    # difference measures anything there: the step grows 100x, twice at most (Richardson's extrapolation keeps
    # the truncation at h^4 and |fd1 - fd2| bounds what is left)
    for grow in (1.0, 1e2, 1e4):
        h = 1e-6 * scale * grow
        values = np.array([loss_at(j * h / 4) if j else l0 for j in range(-4, 5)], dtype=float)
        if len(set(values.tolist())) >= 5:
            break
    else:
        # log(1 + u^2) at u ~ 1e-9 rounds to log(1) = 0 for every step up to 1% of the values: nothing to measure
        return None
    lm, lm2, lp2, lp = values[0], values[2], values[6], values[8]
    # Richardson extrapolation cancels the h^2 truncation term; |fd1 - fd2| estimates what is left of it
    # (it matters where the directional derivative is tiny next to the curvature, e.g. a confident
    # softmax), and rounding contributes ~ eps |L| / h
    fd1, fd2 = (lp - lm) / (2 * h), (lp2 - lm2) / h
    fd = (4 * fd2 - fd1) / 3
    # Models with kinks (ReLU, max pooling) are only piecewise smooth: a near-tie in a pooling window can
    # switch within the step, so their finite differences get 1e-4 relative (the exact comparison with
    # torch, under the same subgradient conventions, stays at 1e-10).
    rel = 1e-4 if kinks else 1e-5
    # rounding: ~eps |L| per evaluation, or the loss's own rounding noise where that is larger: a loss that is a
    # small difference of O(1) terms (e^d - 1 - d at d ~ 1e-3) rounds at the terms' scale, not at |L|'s. It is
    # measured as the deviation from linearity over a step 1e-4 h (where curvature contributes ~1e-8 of the
    # truncation term, and the step reshuffles the rounding of every term), as the largest deviation over
    # eight such steps: rounding errors are spread out, and two samples can both land near 0 (a VAE's
    # e^l - 1 - l at l ~ 1e-4 measured 10x below its noise that way); the extrapolated difference carries
    # about three times one evaluation's error over h
    tiny = 1e-4 * h
    jiggle = max(abs(loss_at(st) - l0 - st * an) for st in (sg * j * tiny for j in (1, 2, 3, 4) for sg in (1.0, -1.0)))
    # ... and at the step's own scale: a rounding error that steps of 1e-4 h leave as it is (tanh(u) rounded as
    # u + c, in u - tanh(u) at u ~ 1e-5, keeps its error while u moves by whole ulps; c moves it only over h)
    # shows as the scatter of the loss about a quartic through the nine points (a smooth loss departs from one
    # by ~h^5, far below rounding); the difference's error is at most ~4.5 times that scatter over h (its
    # weights sum to 3/h, a fit's residual is about 2/3 of the errors)
    scatter = 0.0
    if np.all(np.isfinite(values)):
        steps = np.arange(-4, 5) / 4
        fit = np.polynomial.polynomial.Polynomial.fit(steps, values, 4)
        scatter = float(np.max(np.abs(fit(steps) - values)))
    tol = (rel * (abs(an) + abs(fd)) + abs(fd1 - fd2) + 1e-10 * (abs(lp) + abs(lm)) / scale
           + 2e3 * 2.2e-16 * (abs(lp) + abs(lm)) / h + 3 * jiggle / h + 6 * scatter / h)
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
    implementation: Any = None,
    backend: str = "torch",
    device: str = "cpu",
    examples: int = 50,
    rtol: float | None = None,
    fd: bool = True,
    shrink: bool = False,
    derandomize: bool | None = None,
    reference: Reference | None = None,
    *,
    seed: int | None = None,
    values: Sequence[str] | None = None,
    kinks: str = "torch",
    names: Mapping[str, str] | None = None,
    layouts: Mapping[str, Any] | None = None,
) -> Report:
    """Verify a model's generated kernels (and optionally a user implementation) against PyTorch.

    Any loss program can be checked: a zoo entry, a Builder-made or parsed model. Its reference is, in
    order, ``reference``, ``m.reference``, the zoo's reference for a zoo entry, or the model's forward
    program evaluated eagerly in torch and differentiated by ``torch.autograd`` (never the derived adjoint).
    Update programs (optimizers) are run for several steps against ``torch.optim``.

    Value modes (:mod:`verify.strategies`): ``normal`` and ``small`` values always, exact zeros and ties
    (``kinks``) for models with non-smooth functions, and ``large`` inputs (logits of order 1e3) for
    per-sample models that declare them and have a reference of their own (given, the model's or the
    zoo's). The eager evaluation computes the program as written, and a literal ``log(softmax(z))``
    overflows there in any eager evaluation: a comparison at those values would measure the reference's
    overflow, not the kernel. To check large values of your own model, pass a stable ``reference=``.

    The examples are the same on every run (a fixed seed: a CI job gives the same verdict twice); pass
    ``seed=`` to draw others. Each call of the implementation gets fresh copies of the arrays, so an
    in-place update (``w -= lr * dw; return w``) is fine; a loss or layer that changes one of its inputs is
    reported as such (``modified `X` in place``). Every failing quantity of the failing example is reported,
    with the value of the input at the worst index, and a diagnosis where the difference is confined to
    kinks or ties, to large values, or to the placement of an optimizer's epsilon.

    Args:
        m: a model (``derive.models.get``, ``derive.Builder``, ``derive.parse``), or a zoo name.
        implementation: what to check as well: a callable ``f(**arrays) -> {"loss": ..., "grad": {...}}``
            (an update rule: ``f(**state, g) -> next state``) that receives NumPy arrays with
            ``backend="numpy"`` and torch tensors with ``backend="torch"`` and may return either; an
            ``nn.Module`` (its parameters matched to the model's by name, its output the loss or, for a
            layer entry, the layer's output); or a ``torch.autograd.Function`` subclass (its ``backward``
            is what is checked).
        backend: which generated kernel (and which array type for a callable ``implementation``).
        device: torch device for the torch kernel and the reference (``"cuda"`` when available).
        examples: number of hypothesis examples.
        rtol: relative tolerance. By default 1e-10 for float64 results, and for an implementation that
            returns lower precision that precision's tolerance (float32: 1e-4, float16: 1e-2, bfloat16:
            5e-2, plus the reference's change when its inputs are rounded to that precision and, for
            float32, four times the reference's own error when autograd runs it in float32: an
            implementation as exact as PyTorch's float32 computation passes where large terms cancel); the
            report says which. An explicit ``rtol`` applies to everything.
        fd: also check against a finite difference.
        shrink: let hypothesis shrink a failing example to a minimal one (slower).
        derandomize: kept for compatibility: the examples are always the same for the same ``seed``.
        reference: an independent torch forward ``f(**tensors, **options) -> loss`` (batch-first tensors
            named as the model's params and inputs) to compare with instead of the default.
        seed: which examples to draw (default 0, or the ``DLMATH_SEED`` environment variable).
        values: the value modes to draw, e.g. ``("normal", "small", "large")`` (default: those that make
            sense for the model; see :mod:`verify.strategies`).
        kinks: ``"torch"`` (PyTorch's one-sided conventions at kinks and ties: ReLU'(0) = 0, max pooling
            routes to the first maximum) or ``"any"`` (the implementation may take either one-sided
            derivative there).
        names: dlmath's names -> the implementation's keywords and result keys, e.g. ``{"W": "weight"}``.
        layouts: per tensor, how the implementation stores it: ``{"W": "in,out"}`` (a weight stored the other
            way round), a permutation ``{"W": (1, 0)}``, or ``"T"``.

    Returns:
        A :class:`Report` of the comparisons made and the largest errors.

    Raises:
        Mismatch: on any disagreement, listing every failing quantity of the failing example (its shape,
            worst index, both values, the input there, the tolerance), the diagnosis, and a ``Reproduce:``
            line that rebuilds the example.
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
    if kinks not in ("torch", "any"):
        raise ValueError(f"kinks={kinks!r} is unknown; choose 'torch' (PyTorch's one-sided conventions) or 'any'")
    if rtol is not None and not (isinstance(rtol, (int, float)) and 0 < rtol < 1):
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
    seed = default_seed() if seed is None else seed
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    impl: Adapter | None = None
    who = "the implementation"
    if implementation is not None:
        fn, who, is_torch = as_callable(m, implementation, names)
        impl = Adapter(m, fn, "torch" if is_torch else backend, device, names if not is_torch else None,
                       layouts)
    if m.is_update:
        return _check_update(m, impl, who, backend, device, examples, rtol, shrink, seed, values)
    ref, source = resolve_reference(m, reference)
    eager = source.startswith("the eager")
    # zoo entries declare their kinks; any other model gets exact zeros and ties where it has kinks
    has_k = m.kinks or (source != "the zoo's reference" and has_kinks([eq.rhs for eq in m.equations]))
    hard = () if eager else m.hard
    drawn = _values(m, values, strategy_modes(m, hard=hard, kinks=has_k), eager)
    f_np = numeric.compile(m, "numpy", hessian=m.hessian_wrt)
    f_t = numeric.compile(m, "torch", device=device, hessian=m.hessian_wrt)
    report = Report(m.name, backend, device, rtol=rtol or RTOL, reference=source, modes=drawn, seed=seed)
    model = m
    ref_name = f"torch autograd on {source}"
    # a stop-gradient on a path from a differentiated tensor (a semi-gradient, as DQN's target computed from
    # the online network) makes the gradient differ from the derivative of the loss: no finite difference
    # measures it (the comparison with the reference's autograd, under the same detach, still does)
    semi = _stops_gradient(m)
    #: how the implementation's last result was judged (its float32 tolerance), for a failure's report
    judged: list[str] = []

    def run_impl(arrays: dict[str, np.ndarray], loss: float, grads: dict[str, np.ndarray], ex: Example,
                 record: bool) -> list[Failure]:
        assert impl is not None
        try:
            call = impl(arrays)
        except Mismatch:
            raise
        except Exception as e:  # the user's code failed: report it with the example
            return [Failure(who, "the call", "raised", f"raised {type(e).__name__}: {e}")]
        fails: list[Failure] = []
        if not model.is_update:
            for k, (idx, was, now, count) in call.modified.items():
                where = f" ({count} entr{'y' if count == 1 else 'ies'}; at index {idx}: {was:.17g} became {now:.17g})"
                fails.append(Failure(who, f"input {k}", "in-place",
                                     f"modified `{k}` in place{where}: an implementation must not change its "
                                     f"inputs (copy before writing)", idx, now, was))
        tol, noise, note = _dtype_tolerance(model, ref, call.out, arrays, device, rtol, loss, grads)
        judged[:] = [f"{who} {note} (the CLI: --rtol)"] if note else []
        if note and record:
            report.note(f"{who}: {note}")
        # a lower-precision result: the report's Judged: line says which tolerance judged it, and how to set another
        fails += _compare_out(model, who, call.out, loss, grads, {}, {}, tol, report if record else None,
                              require_all=True, noise=noise, arrays=arrays)
        return fails

    def one(ex: Example) -> None:
        arrays = ex.arrays(model)
        try:
            loss, grads, hess, newton = _reference(model, ref, arrays, device, hessian=True)
        except ReferenceFailed as e:
            raise ReferenceFailed(f"{e}; {ex.describe()}") from None
        base_noise = dict(NOISE)
        outs = {"numpy kernel": f_np(**arrays),
                "torch kernel": f_t(**{k: torch.tensor(v, device=device) for k, v in arrays.items()})}
        for w, out in outs.items():
            fails = _compare_out(model, w, out, loss, grads, hess, newton, rtol or RTOL, report, noise=base_noise,
                                 arrays=arrays)
            if fails:
                # a reference that knows its own code (a captured module with a hand-written backward) says
                # which side is wrong, from finite differences of its forward
                diagnose = getattr(ref, "diagnose", None)
                note = diagnose(arrays, out) if callable(diagnose) else None
                raise _mismatch(model, w, fails, ex, ref_name, note or "")
        kfails = []
        for k in model.grad_names:
            err, idx = compare(outs["numpy kernel"]["grad"][k], outs["torch kernel"]["grad"][k], rtol or RTOL,
                               base_noise.get(k, 0.0))
            if err > (rtol or RTOL):
                kfails.append(_value_failure("the numpy kernel", f"gradient {k}", outs["numpy kernel"]["grad"][k],
                                             outs["torch kernel"]["grad"][k], idx, rtol or RTOL,
                                             base_noise.get(k, 0.0), arrays, k))
            report.record("numpy kernel vs torch kernel", err)
        if kfails:
            raise _mismatch(model, "the numpy kernel", kfails, ex, "the torch kernel")
        if fd and model.finite_differences and not semi and ex.mode in ("normal", "small"):
            scaled = _finite_difference(model, f_np, arrays, grads, ex, has_k)
            if scaled is None:
                report.note("finite difference: at some examples the computed loss is constant to rounding over steps "
                            "up to 1% of the values (no difference measures its derivative there); those are "
                            "compared with torch autograd only")
            else:
                report.record("finite difference (scaled)", scaled)
        if impl is not None:
            fails = run_impl(arrays, loss, grads, ex, True)
            if fails and kinks == "any" and ex.mode == "kinks":
                fails = _one_sided(model, ref, arrays, device, fails, grads, rtol or RTOL, base_noise)
            if fails:
                notes = list(judged)
                raise _mismatch(model, who, fails, ex, ref_name,
                                _diagnose(model, ref, ex, arrays, fails, run_impl, device), notes=notes)
        report.examples += 1

    _drive(model, one, examples, shrink, seed, drawn)
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


def default_seed() -> int:
    """The seed examples are drawn from when ``seed=`` is not given: ``DLMATH_SEED`` if set, else 0 (the same
    examples on every run, in CI and elsewhere)."""
    env = os.environ.get("DLMATH_SEED", "").strip()
    if env:
        try:
            return int(env)
        except ValueError:
            raise ValueError(f"DLMATH_SEED must be an integer, got {env!r}") from None
    return 0


def _values(m: Model, values: Sequence[str] | None, default: Sequence[str], eager: bool) -> tuple[str, ...]:
    if values is None:
        return tuple(default)
    if isinstance(values, str):
        values = (values,)
    vals = tuple(values)
    bad = [v for v in vals if v not in MODES]
    if bad or not vals:
        raise ValueError(f"values: unknown mode{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad)) or '(none)'}; "
                         f"choose from {', '.join(MODES)}")
    if "large" in vals and m.newton:
        raise ValueError(f"values 'large' for {m.name}: at inputs of a few hundred the logistic Hessian underflows "
                         "to a singular matrix and the Newton step is undefined; draw normal or small values")
    if "large" in vals and eager and not m.is_update:
        raise ValueError(f"values 'large' for {m.name} needs a stable reference of its own: the eager evaluation "
                         "of the program overflows there; pass reference=")
    return vals


def _drive(m: Model, one: Callable[[Example], None], n: int, shrink: bool, seed: int,
           values: Sequence[str]) -> None:
    """Run ``one`` on ``n`` hypothesis-drawn examples of ``m``: the same ones for the same ``seed`` (no
    database; shrinking on request)."""
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])

    @hyp_seed(seed)
    @settings(max_examples=n, deadline=None, database=None, phases=phases, derandomize=False,
              suppress_health_check=list(HealthCheck), print_blob=False, report_multiple_bugs=False)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        __tracebackhide__ = True
        one(data.draw(examples(m, values=tuple(values)), label="example"))

    __tracebackhide__ = True
    with _private_hypothesis_storage():
        try:
            run()
        except Mismatch as e:
            # hypothesis notes its internal call ("Failing test case: run(data=...)"); the report's
            # Reproduce line is what rebuilds the example
            if hasattr(e, "__notes__"):
                del e.__notes__
            raise


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


@dataclass
class Failure:
    """One failing quantity of a failing example."""

    who: str
    quantity: str
    #: value, in-place, missing, shape, raised, type
    kind: str
    text: str
    index: tuple[int, ...] | None = None
    got: float | None = None
    want: float | None = None
    #: elementwise: where it fails (for the diagnosis)
    mask: Any = None
    #: the array returned (for the diagnosis)
    got_array: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {"who": self.who, "quantity": self.quantity, "kind": self.kind, "text": self.text,
                "index": list(self.index) if self.index else None, "got": self.got, "want": self.want}


def _mismatch(m: Model, who: str, fails: list[Failure], ex: Example, ref_name: str,
              diagnosis: str = "", step: int | None = None, notes: Sequence[str] = ()) -> Mismatch:
    rep = reproduce(m, ex, step)
    n = len(fails)
    lines = [f"{m.name}: {who} disagrees with {ref_name} on {n} quantit{'y' if n == 1 else 'ies'} "
             f"({ex.describe()}):"]
    lines += [f"  {f.quantity}: {f.text}" if f.kind != "in-place" else f"  {f.text}" for f in fails]
    lines += [f"  Judged: {n}" for n in notes]
    if diagnosis:
        lines.append(f"  Diagnosis: {diagnosis}")
    lines.append(f"Reproduce: {rep}")
    return Mismatch("\n".join(lines), failures=fails, model=m.name, example=ex, reproduce=rep, diagnosis=diagnosis)


def _value_failure(who: str, what: str, got: Any, want: Any, idx: tuple[int, ...] | None, rtol: float,
                   noise: float, arrays: Mapping[str, np.ndarray] | None = None, name: str | None = None) -> Failure:
    g, w = _np(got), _np(want)
    gv = float(g[idx]) if idx else float(g.reshape(()) if g.size == 1 else g.flat[0])
    wv = float(w[idx]) if idx else float(w.reshape(()) if w.size == 1 else w.flat[0])
    scale = max(1.0, float(np.max(np.abs(w))) if w.size and np.all(np.isfinite(w)) else 1.0, noise / rtol)
    at = f" at index {idx}" if idx else ""
    there = ""
    if idx and arrays is not None:  # the inputs at the worst index: the tensor itself, and those shaped like it
        vals = sorted(((k, v) for k, v in arrays.items() if np.shape(v) == w.shape), key=lambda kv: kv[0] != name)
        shown = [f"{k} = {float(v[idx]):.6g}" for k, v in vals[:3]]
        if shown:
            there = " where " + ", ".join(shown)
    mask = None
    if g.shape == w.shape and g.size:
        with np.errstate(invalid="ignore"):
            e = np.abs(g - w) / (np.abs(w) + scale)
        e = np.where(np.isfinite(w), np.where(np.isfinite(e), e, np.inf), 0.0)
        mask = e > rtol
    return Failure(who, what, "value",
                   f"(shape {tuple(w.shape)}){at}{there}: got {gv:.17g}, expected {wv:.17g} "
                   f"(|diff| {abs(gv - wv):.3e} > rtol {rtol:g} * (|expected| + {scale:.3g}))",
                   idx, gv, wv, mask, g)


def _compare_out(m: Model, who: str, out: Any, loss: float, grads: dict[str, np.ndarray],
                 hess: dict[Any, np.ndarray], newton: dict[str, np.ndarray], rtol: float, report: Report | None,
                 require_all: bool = False, noise: Mapping[str, float] | None = None,
                 arrays: Mapping[str, np.ndarray] | None = None) -> list[Failure]:
    """Every quantity of ``out`` against the reference: a list of failures (empty when all agree)."""
    noise = noise or {}
    if not isinstance(out, dict) or "loss" not in out or "grad" not in out:
        got = f"{type(out).__name__}{' with keys ' + str(list(out)) if isinstance(out, dict) else ''}"
        return [Failure(who, "the result", "type", f"must return a dict with 'loss' and 'grad', got {got}")]
    fails: list[Failure] = []
    got_loss: np.ndarray | None = None
    how = "summed" if m.reduction == "sum" else "averaged"
    try:
        got_loss = np.asarray(_np(out["loss"]), dtype=np.float64)
    except (ValueError, TypeError) as e:
        fails.append(Failure(who, "the loss", "shape", f"must be a scalar: {e}"))
    if got_loss is not None and got_loss.shape != ():
        # a per-sample loss (shape (n,)), or a scalar wrapped in an array: either is refused, also at n = 1
        fails.append(Failure(who, "the loss", "shape", f"must be a scalar (the loss {how} over the batch), got "
                             f"shape {got_loss.shape}: a per-sample loss? return its "
                             f"{'sum' if m.reduction == 'sum' else 'mean'}"))
        got_loss = None
    if got_loss is not None:
        err, idx = compare(got_loss, np.array(loss), rtol, noise.get("loss", 0.0))
        if err > rtol:
            fails.append(_value_failure(who, "the loss", got_loss, np.array(loss), idx, rtol, noise.get("loss", 0.0)))
        elif report is not None:
            report.record(f"{who}: loss", err)
    gout = out["grad"] if isinstance(out["grad"], dict) else {}
    for k, want in grads.items():
        if k not in gout:
            fails.append(Failure(who, f"gradient {k}", "missing",
                                 f"not returned (it returned {', '.join(map(str, gout)) or 'none'}); gradients are "
                                 f"expected for {', '.join(m.grad_names)}"))
            continue
        got = gout[k]
        try:
            err, idx = compare(got, want, rtol, noise.get(k, 0.0))
        except (ValueError, TypeError) as e:
            fails.append(Failure(who, f"gradient {k}", "shape", f"returned with {e}"))
            continue
        if err > rtol:
            fails.append(_value_failure(who, f"gradient {k}", got, want, idx, rtol, noise.get(k, 0.0), arrays, k))
        elif report is not None:
            report.record(f"{who}: gradients", err)
    if require_all or fails:
        return fails
    for key, want in hess.items():
        got = out["hessian"][key]
        err, idx = compare(got, want, rtol)
        if err > rtol:
            fails.append(_value_failure(who, f"Hessian block {key}", got, want, idx, rtol, 0.0))
        elif report is not None:
            report.record(f"{who}: Hessian", err)
    if newton and not fails:
        H = np.block([[np.atleast_2d(_np(out["hessian"][a if a == b else (a, b)]).reshape(
            int(np.prod(np.shape(newton[a]))), int(np.prod(np.shape(newton[b])))))
            for b in newton] for a in newton])
        cond = float(np.linalg.cond(H))
        for k, want in newton.items():
            got = out["newton"][k]
            err, idx = compare(got, want, rtol * max(1.0, cond))
            if err > rtol * max(1.0, cond):
                fails.append(_value_failure(who, f"Newton step {k}", got, want, idx, rtol * max(1.0, cond), 0.0))
            elif report is not None:
                report.record(f"{who}: Newton step (tol rtol*cond(H))", err / max(1.0, cond))
    return fails


# -- dtype-aware tolerances ---------------------------------------------------------------------------------

#: the tolerance an implementation is judged at, by the precision of what it returns (float64: RTOL)
DTYPE_RTOL = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
_EPS = {"float32": np.float32, "float16": np.float16}


def _dtype_of(x: Any) -> str | None:
    if isinstance(x, torch.Tensor):
        return str(x.dtype).replace("torch.", "") if x.dtype.is_floating_point else None
    if isinstance(x, (np.ndarray, np.generic)):
        return str(x.dtype) if np.issubdtype(x.dtype, np.floating) else None
    return None


def _lowest(out: Any) -> str | None:
    """The lowest floating precision among the arrays of a result (None: float64 or plain numbers)."""
    vals: list[Any] = []
    if isinstance(out, dict):
        for v in out.values():
            vals += list(v.values()) if isinstance(v, dict) else [v]
    order = ["bfloat16", "float16", "float32"]
    found = {d for d in map(_dtype_of, vals) if d in order}
    return next((d for d in order if d in found), None)


def _rounded(arrays: Mapping[str, np.ndarray], m: Model, dtype: str) -> dict[str, np.ndarray]:
    out = {}
    for k, v in arrays.items():
        var = m.params.get(k) or m.inputs.get(k)
        if var is not None and var.domain == LABELS:
            out[k] = v
        elif dtype == "bfloat16":
            out[k] = torch.tensor(v).to(torch.bfloat16).double().numpy()
        else:
            out[k] = np.asarray(v).astype(_EPS[dtype]).astype(np.float64)
    return out


def _dtype_tolerance(m: Model, ref: Reference | None, out: Any, arrays: dict[str, np.ndarray], device: str,
                     rtol: float | None, loss: float, grads: dict[str, np.ndarray]
                     ) -> tuple[float, dict[str, float], str]:
    """(rtol, noise per quantity, a note for the report) for judging ``out``."""
    dtype = _lowest(out)
    if dtype is None:
        return rtol or RTOL, dict(NOISE), ""
    if rtol is not None:
        return rtol, dict(NOISE), f"returns {dtype}; judged at the explicit rtol {rtol:g}"
    tol = DTYPE_RTOL[dtype]
    noise = dict(NOISE)
    if ref is not None:
        # what rounding the inputs to that precision alone does to the reference (x 10), and how far the
        # reference itself, run by autograd in that precision, lands from float64 (x 4): where large terms
        # cancel (a saturated softmax at logits of 1e3) float32 cannot resolve a gradient at all, and an
        # implementation as exact as PyTorch's own float32 computation is not a mismatch
        l2, g2, _, _ = _reference(m, ref, _rounded(arrays, m, dtype), device, hessian=False, noise=False)
        moves = [(10.0, l2, g2)]
        if dtype == "float32":
            try:
                l3, g3, _, _ = _reference(m, ref, arrays, device, hessian=False, noise=False, dtype=torch.float32)
                moves.append((4.0, l3, g3))
            except (RuntimeError, TypeError, ReferenceFailed):  # (a reference that pins float64 somewhere: the
                pass                                                # first term only)
        for factor, lx, gx in moves:
            if lx == lx:  # (a NaN, where the precision overflows, says nothing about the rounding)
                noise["loss"] = max(noise.get("loss", 0.0), factor * abs(lx - loss))
            for k in grads:
                if grads[k].size and np.isfinite(gx[k]).all():
                    noise[k] = max(noise.get(k, 0.0), factor * float(np.max(np.abs(gx[k] - grads[k]))))
    return tol, noise, (f"returns {dtype}: judged at the {dtype} tolerance rtol {tol:g} (and the reference's "
                        f"change when its inputs are rounded to {dtype}, and its own error when run in {dtype}); "
                        f"pass rtol= to override")


# -- diagnosis ------------------------------------------------------------------------------------------------


def _one_sided(m: Model, ref: Reference, arrays: dict[str, np.ndarray], device: str, fails: list[Failure],
               grads: dict[str, np.ndarray], rtol: float, noise: Mapping[str, float]) -> list[Failure]:
    """``kinks="any"``: drop the gradient failures that are one-sided derivatives at the example's kinks and ties.

    The candidates are the reference's gradients with the real inputs moved slightly (at most 1e-9 of their
    scale) to one side: every entry up or down (exact zeros to one side of a kink: ReLU'(0) = 1 or 0), by an
    increasing or a decreasing ramp along the array (ties broken in favour of the last or the first of equal
    entries, e.g. in a max-pooling window), and two random jitters. A failing gradient is accepted when one
    candidate explains it as a whole: where the candidate's gradient jumps away from PyTorch's (a kink or tie
    it decided differently) the implementation's agrees with the candidate, and everywhere else with PyTorch.
    Routing a tied maximum's gradient to every maximum, or half to each side of ReLU's kink, matches no
    one-sided derivative and stays a failure.
    """
    rng = np.random.default_rng(0)
    cands = []
    real = [k for k in arrays if (m.params.get(k) or m.inputs[k]).domain == "real"]
    for how in ("up", "down", "up-ascending", "up-descending", "down-ascending", "down-descending", "jitter",
                "jitter"):
        moved = dict(arrays)
        for k in real:
            v = arrays[k]
            d = 1e-9 * max(1.0, float(np.max(np.abs(v))) if v.size else 1.0)
            if how == "jitter":
                moved[k] = v + d * rng.normal(size=v.shape)
                continue
            ramp = np.ones(v.shape)
            if how.endswith("ascending"):  # steps of d / size: far above rounding, distinct per entry
                ramp = (1.0 + np.arange(v.size).reshape(v.shape)) / max(1, v.size)
            elif how.endswith("descending"):
                ramp = (v.size - np.arange(v.size).reshape(v.shape)) / max(1, v.size)
            moved[k] = v + (d if how.startswith("up") else -d) * ramp
        cands.append(_reference(m, ref, moved, device, hessian=False, noise=False)[1])
    keep = []
    for f in fails:
        k = f.quantity.removeprefix("gradient ")
        if f.kind != "value" or not f.quantity.startswith("gradient ") or f.mask is None or k not in grads:
            keep.append(f)
            continue
        got, want = _np(_got_grad(f)), grads[k]
        scale = max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
        # a decision at a kink or tie moves a gradient entry by O(1); moving the inputs by 1e-9 moves the
        # smooth entries by ~1e-9: 1e-6 tells the two apart. The reference's rounding noise adds as it is, an
        # absolute amount (taken as a scale, 1e4 times it was the threshold: where the noise was O(1), that hid
        # every jump, and max pooling's ties routed to the last maximum were refused)
        loose = 1e-6 * (np.abs(want) + scale) + noise.get(k, 0.0)
        explained = False
        for c in cands:
            jump = np.abs(c[k] - want) > loose
            if np.all(np.where(jump, np.abs(got - c[k]) <= loose, ~f.mask)):
                explained = True
                break
        if not explained:
            keep.append(f)
    return keep


def _got_grad(f: Failure) -> Any:
    return f.got_array


def _has_max(m: Model) -> bool:
    """Whether ``m`` takes a max along an axis (max pooling): its kinks include ties between entries."""
    from derive.primitives.axis import Max
    from derive.tensor import walk

    return any(isinstance(n, Max) for n in walk([eq.rhs for eq in m.equations]))


def _diagnose(m: Model, ref: Reference, ex: Example, arrays: dict[str, np.ndarray], fails: list[Failure],
              run_impl: Callable[..., list[Failure]], device: str) -> str:
    """Why the implementation differs, where that can be told: only at kinks or ties, only at large values."""
    if any(f.kind != "value" for f in fails):
        return ""
    if ex.mode == "kinks":
        notes = []
        for f in fails:
            k = f.quantity.removeprefix("gradient ")
            if f.mask is None or not f.quantity.startswith("gradient "):
                break
            zero_in = next((a for a in ([k] if k in arrays else []) + [a for a in arrays if a != k]
                            if np.shape(arrays[a]) == f.mask.shape and f.mask.any()
                            and np.all(arrays[a][f.mask] == 0)), None)
            if zero_in is None:
                break
            idx = f.index
            G = next((arrays[g] for g in upstream_inputs(m) if np.shape(arrays[g]) == f.mask.shape), None)
            if idx and G is not None and G[idx] != 0 and f.got is not None and f.want is not None:
                notes.append(f"{f.quantity} differs only where `{zero_in} == 0`: your derivative there is "
                             f"{f.got / G[idx] + 0.0:.6g}, PyTorch's is {f.want / G[idx] + 0.0:.6g}")
            else:
                notes.append(f"{f.quantity} differs only where `{zero_in} == 0`")
        else:
            if _has_max(m):
                return ("; ".join(notes) + " (ties: equal entries there; PyTorch routes a max's gradient to the "
                        "first of equal maxima, and at a kink takes ReLU'(0) = 0; pass kinks='any' to accept the "
                        "gradient routed to any one of the tied maxima, or either one-sided derivative at a kink)")
            return ("; ".join(notes) + " (PyTorch's convention at a kink: ReLU'(0) = 0, leaky slope at 0; "
                    "pass kinks='any' to accept either one-sided derivative)")
        normal = Example(ex.sizes, ex.seed, "normal")
        a2 = normal.arrays(m)
        l2, g2, _, _ = _reference(m, ref, a2, device, hessian=False)
        if not run_impl(a2, l2, g2, normal, False):
            return ("it differs only at the kinks and ties of this example (exact zeros, equal entries) and agrees "
                    "on the same example without them: a convention at non-smooth points (PyTorch: ReLU'(0) = 0, "
                    "max pooling routes to the first maximum); pass kinks='any' to accept either one-sided "
                    "derivative")
    if ex.mode == "large":
        normal = Example(ex.sizes, ex.seed, "normal")
        a2 = normal.arrays(m)
        l2, g2, _, _ = _reference(m, ref, a2, device, hessian=False)
        if not run_impl(a2, l2, g2, normal, False):
            big = max((float(np.max(np.abs(v))) for k, v in arrays.items() if k in m.inputs and np.size(v)),
                      default=0.0)
            nonfinite = any(f.got is not None and not np.isfinite(f.got) for f in fails)
            what = ("your implementation overflows (inf or nan where PyTorch's result is finite): use a stable "
                    "form (logaddexp, a shifted softmax, log_softmax)" if nonfinite else
                    "your implementation loses precision there (an unstable form, e.g. log(1 + exp(z)) or an "
                    "unshifted softmax)")
            return (f"differs only for large values (inputs up to |x| = {big:.4g} in this example; it agrees on the "
                    f"same example at normal scale): {what}")
    return ""


def reproduce(m: Model, ex: Example, step: int | None = None) -> str:
    """Python code that rebuilds the arrays of example ``ex`` (through ``Model.rebuild`` where the model has
    it, with every option the model was built with; otherwise ``m`` stands for the model that was checked).
    For an update program, ``step`` gives the state before that step and its gradient ``g``."""
    build = _rebuild(m)
    at = f", step={step}" if step is not None else ""
    call = f"verify.example({build or 'm'}, seed={ex.seed}, sizes={ex.sizes}, mode={ex.mode!r}{at})"
    return call if build else call + f" with m the model {m.name!r} that was checked"


def _rebuild(m: Model) -> str | None:
    """``Model.rebuild``, for a zoo entry rewritten with every option it was built with."""
    rb = m.rebuild
    if rb is None or not rb.startswith(f"derive.models.get({m.name!r}"):
        return rb
    try:
        known = derive.models.options(m.name)
    except derive.ModelError:
        return rb
    opts = {k: v for k, v in m.options.items() if k in known and v != known[k]}
    return f"derive.models.get({m.name!r}" + "".join(f", {k}={v!r}" for k, v in opts.items()) + ")"


def example(m: Model | str, seed: int, sizes: dict[str, int], mode: str = "normal",
            step: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of one example, to reproduce a reported mismatch, as the kernels and references take them
    (integer labels as float64 arrays of integers: an implementation received them as int64, which
    ``.astype(np.int64)`` gives back). For an update program, ``step`` (from 1) gives the state before that
    step (torch.optim's, from a zero state) and the gradient ``g`` of the step."""
    if isinstance(m, str):
        m = derive.models.get(m)
    if mode not in MODES:  # an unknown mode would silently draw normal values
        raise ValueError(f"mode {mode!r} is unknown; choose from {', '.join(MODES)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    ex = Example(sizes, seed, mode)
    if not m.is_update:
        return ex.arrays(m)
    if m.name not in OPTIMIZERS:
        return _program_example(m, ex, step)
    state, grads = _update_example(m, ex)
    if step is None:
        return {**state, "g": grads[0]}
    if not 1 <= step <= len(grads):
        raise ValueError(f"step must be in 1..{len(grads)} for this example, got {step}")
    traj = optimizer_trajectory(m.name, torch.tensor(state["theta"]), [torch.tensor(g) for g in grads[: step - 1]],
                                **m.options)
    if traj:
        state = {k: (_np(traj[-1][k]) if k in traj[-1] else v) for k, v in state.items()}
    return {**state, "g": grads[step - 1]}


def _program_example(m: Model, ex: Example, step: int | None) -> dict[str, np.ndarray]:
    """An update program other than the optimizers (``q_learning``), as _check_update_program runs it: the state
    before ``step`` (from 1; the drawn state at step 1), and that step's inputs."""
    from .references_ch8 import UPDATES

    steps = 1 + ex.seed % 4
    step = 1 if step is None else step
    if not 1 <= step <= steps:
        raise ValueError(f"step must be in 1..{steps} for this example, got {step}")
    if m.name not in UPDATES:
        raise ValueError(f"no reference for update program {m.name!r}; known: {', '.join([*OPTIMIZERS, *UPDATES])}")
    first = ex.arrays(m)
    state = {k: torch.tensor(first[k]) for k in m.params}

    def inputs(i: int) -> dict[str, np.ndarray]:
        drawn = Example(ex.sizes, (ex.seed + i) % 2**32, ex.mode).arrays(m)
        return {k: v for k, v in drawn.items() if k not in m.params}

    for i in range(step - 1):
        state = UPDATES[m.name](**state, **{k: torch.tensor(v) for k, v in inputs(i).items()}, **m.options)
    return {**{k: _np(v) for k, v in state.items()}, **inputs(step - 1)}


def _update_example(m: Model, ex: Example) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The starting state (theta drawn, moments zero) and the gradients of an update program's example."""
    rng = np.random.default_rng(ex.seed)
    p = ex.sizes.get("p", 3)
    steps = 1 + ex.seed % 5
    scale = {"small": 1e-3, "large": 1e3}.get(ex.mode, 1.0)
    state = {k: np.zeros(tuple(int(d.subs({m.dims["p"]: p})) for d in v.shape)) for k, v in m.params.items()}
    state["theta"] = rng.normal(size=(p,))
    grads = [rng.normal(size=(p,)) * scale for _ in range(steps)]
    return state, grads


def _check_update(m: Model, impl: Adapter | None, who: str, backend: str, device: str, examples: int,
                  rtol: float | None, shrink: bool, seed: int, values: Sequence[str] | None) -> Report:
    """Update programs: several steps of the generated kernels (and the implementation) vs torch.optim."""
    if m.name not in OPTIMIZERS:
        from .references_ch8 import UPDATES

        if m.name in UPDATES:
            return _check_update_program(m, UPDATES[m.name], impl, who, backend, device, examples, rtol, shrink,
                                         seed, values)
        raise ValueError(f"no reference for update program {m.name!r}; known: {', '.join([*OPTIMIZERS, *UPDATES])}")
    f_np = numeric.compile(m, "numpy")
    f_t = numeric.compile(m, "torch", device=device)
    opts = dict(m.options)
    ref_name = optimizer_reference(m.name, **opts)
    drawn = _values(m, values, ("normal", "small", "large"), False)
    report = Report(m.name, backend, device, rtol=rtol or RTOL, reference=ref_name, modes=drawn, seed=seed)

    #: per step, each state name -> (what the implementation returned, that as a float64 array)
    Trajectory = list[dict[str, tuple[Any, np.ndarray]]]

    def run_steps(f: Callable[..., Any], state: dict[str, np.ndarray], grads: list[np.ndarray],
                  as_torch: bool) -> tuple[Trajectory, list[Failure]]:
        cur = dict(state)
        traj: Trajectory = []
        for i, g in enumerate(grads):
            args = {**cur, "g": g}
            try:
                if isinstance(f, Adapter):
                    nxt = f(args).out
                else:
                    nxt = f(**({k: torch.tensor(v, device=device) for k, v in args.items()} if as_torch else args))
            except Exception as e:
                return traj, [Failure(who, f"step {i + 1}", "raised", f"raised {type(e).__name__}: {e}")]
            if not isinstance(nxt, dict) or set(nxt) != set(state):
                got = sorted(nxt) if isinstance(nxt, dict) else type(nxt).__name__
                return traj, [Failure(who, "the result", "type",
                                      f"an update must return the next state {sorted(state)}, got {got}")]
            cur = {k: _np(v).copy() for k, v in nxt.items()}
            traj.append({k: (nxt[k], cur[k]) for k in nxt})
        return traj, []

    def one(ex: Example) -> None:
        state, grads = _update_example(m, ex)
        steps = len(grads)
        ref = optimizer_trajectory(m.name, torch.tensor(state["theta"], device=device),
                                   [torch.tensor(g, device=device) for g in grads], **opts)
        runs: dict[str, Any] = {"numpy kernel": f_np, "torch kernel": f_t}
        if impl is not None:
            runs[who] = impl
        for w, f in runs.items():
            traj, fails = run_steps(f, state, grads, w == "torch kernel")
            if fails:
                raise _mismatch(m, w, fails, ex, ref_name)
            tol = rtol or RTOL
            note = ""
            if w == who:
                dt = _lowest({"s": {k: v[0] for st_ in traj for k, v in st_.items()}})
                if dt is not None and rtol is None:
                    tol = DTYPE_RTOL[dt]
                    note = f"returns {dt}: judged at the {dt} tolerance rtol {tol:g}; pass rtol= to override"
                elif dt is not None:
                    note = f"returns {dt}; judged at the explicit rtol {rtol:g}"
            if note:
                report.note(f"{who}: {note}")
            for step, (got, want) in enumerate(zip(traj, ref)):
                fails = []
                for k, wv in want.items():
                    gv = got[k][1]
                    try:
                        err, idx = compare(gv, wv, tol)
                    except ValueError as e:
                        fails.append(Failure(w, f"state {k} after step {step + 1} of {steps}", "shape", f"returned with {e}"))
                        continue
                    if err > tol:
                        fails.append(_value_failure(w, f"state {k} after step {step + 1} of {steps}", gv, wv, idx,
                                                    tol, 0.0))
                    else:
                        report.record(f"{w}: state vs torch.optim", err)
                if fails:
                    diag = _diagnose_update(m, state, grads, got, step, tol, device) if w == who else ""
                    raise _mismatch(m, w, fails, ex, ref_name, diag, step=step + 1,
                                    notes=[f"{who} {note} (the CLI: --rtol)"] if note else ())
        report.examples += 1

    _drive(m, one, examples, shrink, seed, drawn)
    return report


def _diagnose_update(m: Model, state: dict[str, np.ndarray], grads: list[np.ndarray], got: dict[str, Any],
                     step: int, tol: float, device: str) -> str:
    """An optimizer that matches torch.optim with its epsilon on the other side of the square root."""
    opts = dict(m.options)
    if "eps_placement" not in derive.models.options(m.name):
        return ""
    other = "inside" if opts.get("eps_placement", "outside") == "outside" else "outside"
    alt = optimizer_trajectory(m.name, torch.tensor(state["theta"], device=device),
                               [torch.tensor(g, device=device) for g in grads], **{**opts, "eps_placement": other})
    if all(compare(got[k][1], v, tol)[0] <= tol for k, v in alt[step].items()):
        form = "sqrt(s + eps)" if other == "inside" else "sqrt(s) + eps"
        return (f"it matches the update with epsilon {other} the square root ({form}); torch.optim puts it "
                f"{'outside' if other == 'inside' else 'inside'}: build the entry with eps_placement={other!r} "
                f"to verify that convention")
    return ""


def _check_update_program(m: Model, ref: Reference, impl: Adapter | None, who: str, backend: str, device: str,
                          examples: int, rtol: float | None, shrink: bool, seed: int,
                          values: Sequence[str] | None) -> Report:
    """Update programs other than the optimizers (``q_learning``): several steps, each with fresh inputs drawn
    from their declared domains, of the generated kernels (and the implementation) against the reference
    ``ref(**state, **inputs, **options) -> next state``, from a state drawn as the parameters are."""
    f_np = numeric.compile(m, "numpy")
    f_t = numeric.compile(m, "torch", device=device)
    tol = rtol or RTOL
    drawn = _values(m, values, tuple(strategy_modes(m)), False)
    ref_name = "the zoo's reference update"
    report = Report(m.name, backend, device, rtol=tol, reference=ref_name, modes=drawn, seed=seed)
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
        runs: dict[str, Any] = {"numpy kernel": f_np, "torch kernel": f_t}
        if impl is not None:
            runs[who] = impl
        for w, f in runs.items():
            cur: dict[str, np.ndarray] = dict(start)
            for step, (inp, wv_all) in enumerate(zip(inputs, want)):
                args = {**cur, **inp}
                try:
                    if isinstance(f, Adapter):
                        nxt = f(args).out
                    elif w == "torch kernel":
                        nxt = f(**{k: torch.tensor(v, device=device) for k, v in args.items()})
                    else:
                        nxt = f(**{k: np.array(v, copy=True) for k, v in args.items()})
                except Exception as e:
                    if w != who:
                        raise
                    raise _mismatch(m, w, [Failure(w, f"step {step + 1}", "raised",
                                                   f"raised {type(e).__name__}: {e}")], ex, ref_name) from e
                if not isinstance(nxt, dict) or set(nxt) != set(state_names):
                    got = sorted(nxt) if isinstance(nxt, dict) else type(nxt).__name__
                    raise _mismatch(m, w, [Failure(w, "the result", "type", f"an update must return the next "
                                                   f"state {sorted(state_names)}, got {got}")], ex, ref_name)
                fails = []
                for k, wv in wv_all.items():
                    err, idx = compare(nxt[k], wv, tol)
                    if err > tol:
                        fails.append(_value_failure(w, f"state {k} after step {step + 1} of {len(inputs)}", nxt[k],
                                                    wv, idx, tol, 0.0))
                    else:
                        report.record(f"{w}: state vs the reference", err)
                if fails:
                    raise _mismatch(m, w, fails, ex, ref_name, step=step + 1)
                cur = {k: _np(v).copy() for k, v in nxt.items()}
        report.examples += 1

    _drive(m, one, examples, shrink, seed, drawn)
    return report
