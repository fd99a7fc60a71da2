"""The ``ch8`` benchmark: Chapter 8 and the encoder-decoder entries of Chapter 7.

Two tables (``dlmath bench --only ch8``):

1. **derivation**, for each new entry (``kl_gaussian``, ``vae``, ``diffusion``, ``gan``, ``wgan_gp``,
   ``q_learning``, ``dqn``, ``gcn``, ``stacked_rnn``, ``birnn``, ``seq2seq``, ``decoder_block``): the cold
   time (caches cleared) of ``derive.models.get`` + ``derive.backprop`` and of ``numeric.source`` (torch; from
   cold caches it derives the adjoint program again),
   the number of adjoint equations, and the evidence that none of it depends on the sizes: the number of
   adjoint equations whose shape mentions a number (0: every shape is symbolic), and that the one kernel
   compiled before any size was known runs the default sizes and sizes 4 to 64 times larger (n = 256) without
   a second compilation; then the derivation time of the options that are sizes (``diffusion``'s
   ``T_steps``, the length of its schedule table; ``decoder_block``'s ``heads``, a dimension H), which stays
   flat as they grow 100x and 8x.
2. **kernels**: one forward+backward of the generated kernels of ``wgan_gp`` (whose loss holds the critic's
   input gradient, so its gradient is a second derivative) and ``vae`` at n = 256, float32 and float64, as
   ratios to torch eager autograd on an independent formulation written here with ``torch.nn.functional``
   (``create_graph=True`` for the penalty), timed side by side in interleaved rounds
   (:func:`numeric.bench.race`). ``torch``: the compiled torch kernel with its input checks; ``raw``: the
   generated function alone; ``numpy``: the NumPy kernel (raw). The kernels must agree with the eager
   formulation before their times are shown. The timings use one torch thread (see :data:`THREADS`); run
   ``OPENBLAS_NUM_THREADS=1 dlmath bench --only ch8`` to give NumPy one thread too.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import derive
import numeric
from derive.primitives.indexing import label_sizes
from derive.tensor import as_expr

from .bench import Settings, _clear_caches, _cold_seconds, _ms, format_table, race

__all__ = ["bench_ch8", "NEW", "eager_vae", "eager_wgan_gp"]

NEW = ("kl_gaussian", "vae", "diffusion", "gan", "wgan_gp", "q_learning", "dqn", "gcn", "stacked_rnn", "birnn",
       "seq2seq", "decoder_block")
#: torch threads for the timings: one. On a loaded machine (this one has 2 cores shared by several users) a
#: second worker thread waits for a core at every parallel op and the eager times jump 10x from round to round;
#: one thread measures the kernels, not the scheduler. NumPy's OpenBLAS threads are set only from the
#: environment before NumPy loads: run with OPENBLAS_NUM_THREADS=1 for the same reason.
THREADS = 1
N = 256
#: the other sizes of the kernels table (n = 256 for both)
KERNEL_SIZES = {"vae": {"n": N, "p": 64, "m": 128, "k": 16},
                "wgan_gp": {"n": N, "p": 64, "k": 16, "h": 128, "h2": 128}}
Tensors = dict[str, torch.Tensor]


# -- the eager formulations (independent of the derivation) ---------------------------------------------------


def eager_vae(t: Tensors) -> torch.Tensor:
    """The negative ELBO: ||x - xhat||^2 + 1/2 sum(sigma^2 + mu^2 - 1 - log sigma^2), z = mu + sigma * eps."""
    h = torch.tanh(F.linear(t["X"], t["W_e"], t["b_e"]))
    mu, lv = F.linear(h, t["W_mu"], t["b_mu"]), F.linear(h, t["W_lv"], t["b_lv"])
    z = mu + torch.exp(0.5 * lv) * t["E"]
    xhat = F.linear(torch.tanh(F.linear(z, t["W_h"], t["b_h"])), t["W_d"], t["b_d"])
    return (((t["X"] - xhat) ** 2).sum(1) + 0.5 * (lv.exp() + mu**2 - 1 - lv).sum(1)).mean()


def eager_wgan_gp(t: Tensors, lam: float = 10.0) -> torch.Tensor:
    """mean D(G(z)) - mean D(x) + lam mean(||grad_xt D(xt)||_2 - 1)^2, the inner gradient with create_graph."""
    def D(x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.tanh(F.linear(x, t["W1"], t["b1"])), t["w2"][None], t["b2"].reshape(1))[:, 0]

    fake = F.linear(torch.tanh(F.linear(t["Z"], t["V1"], t["c1"])), t["V2"], t["c2"])
    e = t["eps"][:, None]
    xt = (e * t["X"] + (1 - e) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(D(xt).sum(), xt, create_graph=True)
    return D(fake).mean() - D(t["X"]).mean() + lam * ((torch.linalg.vector_norm(g, dim=1) - 1) ** 2).mean()


EAGER: dict[str, Callable[[Tensors], torch.Tensor]] = {"vae": eager_vae, "wgan_gp": eager_wgan_gp}


# -- arrays ----------------------------------------------------------------------------------------------------


def arrays(m: derive.Model, sizes: dict[str, int], dtype: torch.dtype = torch.float64, seed: int = 0) -> Tensors:
    """Tensors for every parameter and input of ``m`` at ``sizes``, from each one's declared domain."""
    g = torch.Generator().manual_seed(seed)
    dims = m.sizes(**sizes)
    bounds = {v.name: int(as_expr(k).subs(dims)) for v, k in label_sizes([eq.rhs for eq in m.equations]).items()}
    out: Tensors = {}
    for name, shape in m.shapes(**sizes).items():
        var = m.tensor(name)
        dom = var.domain
        if dom == "labels":
            x = torch.randint(0, bounds[name], shape, generator=g).to(dtype)
        elif dom in ("one_hot", "simplex"):
            x = F.one_hot(torch.randint(0, shape[-1], shape[:-1], generator=g), shape[-1]).to(dtype)
        elif dom == "mask":
            x = (torch.rand(shape, generator=g) < 0.7).to(dtype)
        elif dom == "unit":
            x = torch.rand(shape, generator=g, dtype=dtype)
        else:
            x = torch.randn(shape, generator=g, dtype=dtype)
            if var.role == "param" and len(shape) >= 2:
                x = x / max(1, int(np.prod(shape[1:]))) ** 0.5
        out[name] = x
    return out


def _large(m: derive.Model) -> dict[str, int]:
    """Sizes 4 times the defaults (the sample axis n = 256), a fixed dimension (heads) kept."""
    out = {}
    for k in m.dims:
        lo, hi = m.ranges.get(k, (1, 4))
        out[k] = m.defaults[k] if lo == hi else (N if m.dims[k] == m.sample else 4 * m.defaults[k])
    return out


def _numbered_shapes(m: derive.Model, adjoint: list[derive.Equation]) -> int:
    """Adjoint equations whose shape has a numeric size (beyond the model's fixed dimensions)."""
    dims = set(m.dims.values())
    sizes = [[as_expr(d) for d in eq.lhs.shape] for eq in adjoint]
    return sum(1 for shape in sizes if any(not (d.free_symbols <= dims) or (d.is_number and int(d) > 1)
                                           for d in shape))


def _one_kernel_for_all_sizes(m: derive.Model) -> bool:
    """Whether the kernel compiled before any size was known runs the default and the large sizes, without a
    second compilation."""
    f = numeric.compile(m, "torch")
    for sizes in (dict(m.defaults), _large(m)):
        f(**arrays(m, sizes))
    return numeric.compile(m, "torch") is f


def _get_and_backprop(name: str, options: dict[str, Any]) -> list[derive.Equation]:
    return list(derive.backprop(derive.models.get(name, **options)))


#: options that are sizes: the length of diffusion's schedule table, the number of heads of decoder_block
SIZE_OPTIONS = (("diffusion", "T_steps", (10, 100, 1000)), ("decoder_block", "heads", (1, 2, 8)))


def _derive_table(settings: Settings) -> int:
    rows: list[list[str]] = []
    errors = 0
    notes: list[str] = []
    for name in NEW:
        def build(name: str = name) -> tuple[derive.Model, list[derive.Equation] | None]:
            m = derive.models.get(name)
            return m, None if m.is_update else list(derive.backprop(m))

        try:
            t_derive, (m, adjoint) = _cold_seconds(build, settings.derive_rounds)
            t_source, _ = _cold_seconds(functools.partial(numeric.source, m, backend="torch"),
                                        settings.derive_rounds)
            eqs = list(m.equations) if adjoint is None else adjoint
            numbered = _numbered_shapes(m, eqs)
            if numbered:
                errors += 1
                notes.append(f"{name}: {numbered} equation(s) with a numeric size")
            _clear_caches()
            m = derive.models.get(name)
            one = _one_kernel_for_all_sizes(m)
            if not one:
                errors += 1
                notes.append(f"{name}: a new kernel was compiled for new sizes")
        except Exception as exc:  # one broken entry must not hide the others
            errors += 1
            rows.append([name, "error", "", "", "", "", ""])
            notes.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        kind = "update" if adjoint is None else str(len(adjoint))
        rows.append([name, _ms(t_derive), _ms(t_source), kind, str(numbered), "yes" if one else "NO",
                     " ".join(f"{k}={v}" for k, v in _large(m).items())])
    print(f"== ch8: derivation of the new entries, cold (caches cleared), median of {settings.derive_rounds} ==")
    print(format_table(["entry", "get+backprop ms", "source ms", "adjoint eqs", "sized shapes",
                        "one kernel", "large sizes run"], rows, left=(0, 6)))
    print("source ms: numeric.source(m, 'torch') from cold caches (so it derives the adjoint program again).")
    print("sized shapes: adjoint equations whose shape mentions a number (0: every shape is symbolic); one kernel:")
    print("the kernel compiled before any size was known ran the default and the large sizes, nothing recompiled.")
    srows = []
    for name, option, values in SIZE_OPTIONS:
        cells = []
        for v in values:
            try:
                t, _ = _cold_seconds(functools.partial(_get_and_backprop, name, {option: v}),
                                     settings.derive_rounds)
                cells.append(_ms(t))
            except Exception as exc:
                errors += 1
                cells.append("error")
                notes.append(f"{name} {option}={v}: {type(exc).__name__}: {exc}")
        srows.append([f"{name} {option}", " / ".join(str(v) for v in values), " / ".join(cells)])
    print("options that are sizes, get+backprop ms cold (the schedule table's length, the heads as a dimension):")
    print(format_table(["entry option", "values", "get+backprop ms"], srows, left=(0, 1)))
    for note in notes:
        print(f"MISMATCH/error: {note}")
    return errors


def _grads_close(got: list[Any], want: list[torch.Tensor], tol: float) -> float:
    worst = 0.0
    for g, w in zip(got, want):
        g64 = (g.detach() if isinstance(g, torch.Tensor) else torch.as_tensor(np.asarray(g))).to(torch.float64)
        w64 = w.detach().to(torch.float64)
        worst = max(worst, float((g64 - w64).abs().max()) / max(1.0, float(w64.abs().max())))
    return worst


def _kernel_table(settings: Settings) -> int:
    rows: list[list[str]] = []
    errors = 0
    notes: list[str] = []
    for name in ("wgan_gp", "vae"):
        cells: dict[str, list[str]] = {}
        try:
            m = derive.models.get(name)
            k_checked, k_raw = numeric.compile(m, "torch"), numeric.compile(m, "torch", check=False)
            k_np = numeric.compile(m, "numpy", check=False)
            leaves = list(m.grad_names)
            for dtype in (torch.float32, torch.float64):
                t = arrays(m, KERNEL_SIZES[name], dtype)
                arrs = {k: v.numpy() for k, v in t.items()}
                req = {k: (v.clone().requires_grad_(True) if k in leaves else v) for k, v in t.items()}

                def eager(req: Tensors = req, f: Callable[[Tensors], torch.Tensor] = EAGER[name],
                          leaves: list[str] = leaves) -> Any:
                    loss = f(req)
                    return loss, torch.autograd.grad(loss, [req[k] for k in leaves])

                loss, grads = eager()
                want = [loss, *grads]
                tol = 1e-4 if dtype == torch.float32 else 1e-9
                for who, out in (("torch", k_checked(**t)), ("numpy", k_np.raw(**arrs))):
                    err = _grads_close([out["loss"], *[out["grad"][k] for k in leaves]], want, tol)
                    if not err <= tol:
                        errors += 1
                        notes.append(f"{name} {str(dtype)[6:]}: the {who} kernel differs from eager by {err:.1e}")
                cells.setdefault("err", []).append(f"{_grads_close([k_raw.raw(**t)['loss']], [loss], 1):.0e}")
                r = race({"checked": functools.partial(k_checked, **t), "raw": functools.partial(k_raw.raw, **t),
                          "numpy": functools.partial(k_np.raw, **arrs), "eager": eager}, settings)
                for key in ("checked", "raw", "numpy"):
                    cells.setdefault(key, []).append(f"{r.ratio(key, 'eager'):.2f}")
                cells.setdefault("eager ms", []).append(_ms(r.seconds["eager"]))
                cells.setdefault("iqr", []).append(f"{100 * r.spread(('checked', 'eager'), ('raw', 'eager')):.0f}%")
        except Exception as exc:
            errors += 1
            rows.append([name, "error", "", "", "", "", ""])
            notes.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        rows.append([name, *(" / ".join(cells[k]) for k in ("checked", "raw", "numpy", "eager ms", "iqr")),
                     " ".join(f"{k}={v}" for k, v in KERNEL_SIZES[name].items())])
    print(f"== ch8: forward+backward, ratio to torch eager autograd (float32 / float64), {THREADS} threads, "
          f"median of {settings.rounds} interleaved rounds ==")
    print(format_table(["entry", "torch", "raw", "numpy", "eager ms", "IQR", "sizes"], rows, left=(0, 6)))
    print("torch: numeric.compile(m, 'torch') with its input checks; raw: the generated function alone; numpy: the")
    print("NumPy kernel (raw); eager: the formulation above with torch.autograd (create_graph=True for wgan_gp's")
    print("penalty). < 1: the generated kernel is faster. IQR: the wider (Q3-Q1)/median of the per-round ratios.")
    blas = os.environ.get("OPENBLAS_NUM_THREADS")
    print(f"OPENBLAS_NUM_THREADS={blas}" if blas else "OPENBLAS_NUM_THREADS unset: NumPy's BLAS may use several "
          "threads (on a loaded machine its times stall; set it to 1 before running)")
    for note in notes:
        print(f"MISMATCH/error: {note}")
    return errors


def bench_ch8(settings: Settings) -> int:
    """Print both tables; returns the number of errors and mismatches."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        errors = _derive_table(settings)
        print()
        errors += _kernel_table(settings)
        print()
        return errors
    finally:
        torch.set_num_threads(threads)
