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

from collections.abc import Callable
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

__all__ = ["check", "Mismatch", "Report", "compare", "resolve_reference", "reproduce"]

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


def compare(got: Any, want: Any, rtol: float = RTOL, noise: float = 0.0) -> tuple[float, tuple[int, ...] | None]:
    """Largest ``|got - want| / (|want| + scale)``, and where it occurs; passes when it is ``<= rtol``.

    ``scale = max(1, max|want|, noise / rtol)``: entries that are zero up to rounding are compared at the
    tensor's scale, and ``noise`` is the reference's own rounding noise (see :func:`check`). Shape
    mismatches raise ``ValueError``.
    """
    g, w = _np(got), _np(want)
    if g.shape != w.shape:
        raise ValueError(f"shape {g.shape} where {w.shape} is expected")
    if g.size == 0:
        return 0.0, None
    scale = max(1.0, float(np.max(np.abs(w))), noise / rtol) if np.all(np.isfinite(w)) else 1.0
    bad_nan = ~np.isfinite(g) & np.isfinite(w)
    if bad_nan.any():
        idx = tuple(int(i) for i in np.argwhere(bad_nan)[0])
        return float("inf"), idx
    err = np.abs(g - w) / (np.abs(w) + scale)
    err = np.where(np.isfinite(w), err, 0.0)
    k = int(np.argmax(err))
    idx = tuple(int(i) for i in np.unravel_index(k, g.shape))
    return float(err.flat[k]), idx


def _fail(m: Model, who: str, what: str, got: Any, want: Any, err: float, idx: tuple[int, ...] | None,
          ex: Example, rtol: float, noise: float = 0.0) -> Mismatch:
    g, w = _np(got), _np(want)
    at = f" at index {idx}" if idx else ""
    gv = g[idx] if idx else g
    wv = w[idx] if idx else w
    scale = max(1.0, float(np.max(np.abs(w))) if w.size else 1.0, noise / rtol)
    return Mismatch(
        f"{m.name}: {what} (shape {tuple(w.shape)}) from {who} disagrees with torch autograd{at}: "
        f"got {float(gv):.17g}, expected {float(wv):.17g} "
        f"(|diff| {abs(float(gv) - float(wv)):.3e} > rtol {rtol:g} * (|expected| + {scale:.3g})); "
        f"{ex.describe()}. Reproduce: {reproduce(m, ex)}"
    )


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
    tol = (rel * (abs(an) + abs(fd)) + abs(fd1 - fd2) + 1e-10 * (abs(lp) + abs(lm)) / scale
           + 2e3 * 2.2e-16 * (abs(lp) + abs(lm)) / h)
    if abs(fd - an) > tol and kinks:
        # A model with kinks (ReLU, max pooling) may sit on one: ReLU(0) ties in a pooling window are not
        # rare. There the one-sided differences disagree and no finite difference measures a derivative;
        # the comparison with torch (same subgradient conventions) still covers this point.
        l0 = f(**arrays)["loss"]
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
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch sees no CUDA device; use device='cpu'")
    if examples < 1:
        raise ValueError(f"examples must be at least 1, got {examples}")
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

    def one(ex: Example) -> None:
        arrays = ex.arrays(model)
        loss, grads, hess, newton = _reference(model, ref, arrays, device, hessian=True)
        outs = {"numpy kernel": f_np(**arrays),
                "torch kernel": f_t(**{k: torch.tensor(v, device=device) for k, v in arrays.items()})}
        for who, out in outs.items():
            try:
                _compare_out(model, who, out, loss, grads, hess, newton, ex, rtol, report)
            except Mismatch as e:
                # a reference that knows its own code (a captured module with a hand-written backward) says
                # which side is wrong, from finite differences of its forward
                diagnose = getattr(ref, "diagnose", None)
                note = diagnose(arrays, out) if callable(diagnose) else None
                if note:
                    raise Mismatch(f"{model.name}: {note}.\n{e}") from None
                raise
        for k in model.grad_names:
            err, idx = compare(outs["numpy kernel"]["grad"][k], outs["torch kernel"]["grad"][k], rtol,
                               NOISE.get(k, 0.0))
            if err > rtol:
                raise _fail(model, "the numpy kernel vs the torch kernel", f"gradient {k}",
                            outs["numpy kernel"]["grad"][k], outs["torch kernel"]["grad"][k], err, idx, ex, rtol,
                            NOISE.get(k, 0.0))
            report.record("numpy kernel vs torch kernel", err)
        if fd and model.finite_differences and ex.mode in ("normal", "small"):
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


def _drive(m: Model, one: Callable[[Example], None], n: int, shrink: bool, derandomize: bool,
           hard: tuple[str, ...] | None = None, kinks: bool | None = None) -> None:
    """Run ``one`` on ``n`` hypothesis-drawn examples of ``m`` (no database; shrinking on request)."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if shrink else [])

    @settings(max_examples=n, deadline=None, database=None, phases=phases, derandomize=derandomize,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        one(data.draw(examples(m, hard=hard, kinks=kinks), label="example"))

    run()


def _compare_out(m: Model, who: str, out: Any, loss: float, grads: dict[str, np.ndarray],
                 hess: dict[Any, np.ndarray], newton: dict[str, np.ndarray], ex: Example, rtol: float,
                 report: Report, require_all: bool = False) -> None:
    if not isinstance(out, dict) or "loss" not in out or "grad" not in out:
        raise Mismatch(f"{m.name}: {who} must return a dict with 'loss' and 'grad', got "
                       f"{type(out).__name__}{' with keys ' + str(list(out)) if isinstance(out, dict) else ''}")
    err, idx = compare(np.asarray(_np(out["loss"]), dtype=np.float64).reshape(()), np.array(loss), rtol,
                       NOISE.get("loss", 0.0))
    if err > rtol:
        raise _fail(m, who, "the loss", _np(out["loss"]).reshape(()), np.array(loss), err, idx, ex, rtol,
                    NOISE.get("loss", 0.0))
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
            raise _fail(m, who, f"gradient {k}", got, want, err, idx, ex, rtol, NOISE.get(k, 0.0))
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
        raise ValueError(f"no torch.optim reference for update program {m.name!r}; known: {', '.join(OPTIMIZERS)}")
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
