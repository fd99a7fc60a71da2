"""Hypothesis strategies built from a model's declared dimensions and input domains.

An example is (sizes, seed, mode): sizes are drawn from each dimension's range, values come from a NumPy
generator seeded with ``seed`` (so a failure is reproduced from three small numbers), and ``mode``
selects the values (:data:`MODES`):

``normal``
    standard normal entries (parameters and inputs);
``small``
    the same times 1e-3 (values near 0: cancellation, tiny denominators);
``large``
    inputs times 300 (inputs of a few hundred, so logits of order 1e3, where only stable forms such as
    ``logaddexp`` and the shifted softmax stay finite; parameters stay O(1)), and the largest entry of each
    input set to +-1000, beyond the range of ``exp`` (e^709.8 overflows), so that an elementwise
    ``log(1 + exp(z))`` overflows in every example, not only when a draw happens to exceed 709;
``kinks``
    exact zeros (30% of the entries) and ties (the rest rounded to multiples of 1/8), where activations are
    non-smooth (ReLU at 0, max pooling between equal entries). Multiples of 1/8 are exact in binary, and so are
    the sums and products of a few of them: a pre-activation that is 0 in exact arithmetic is exactly 0,
    whatever order a kernel or a BLAS sums in. At one decimal (``0.1 + 0.2 - 0.3`` is 5.6e-17 in floating
    point), gcn's ``A (H W)`` and ``(A H) W`` gave 2e-16 and 0 at such a zero, and ReLU's derivative 1 and 0.

Integer ``labels`` are drawn below the size of the axis they index, ``spd`` matrices as ``A A^T / k + I``,
``simplex`` rows as Dirichlet draws or one-hot rows, ``one_hot`` rows always one-hot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from derive.program import Model
from derive.tensor import LABELS, SPD, as_expr, label_sizes

__all__ = ["Example", "examples", "make_arrays", "modes", "MODES"]

#: every value mode, in the order they are described above
MODES = ("normal", "small", "large", "kinks")


@dataclass(frozen=True)
class Example:
    """One drawn example; ``arrays(m)`` rebuilds its arrays exactly."""

    sizes: dict[str, int]
    seed: int
    mode: str

    def arrays(self, m: Model) -> dict[str, np.ndarray]:
        return make_arrays(m, self.sizes, self.seed, self.mode)

    def describe(self) -> str:
        sz = " ".join(f"{k}={v}" for k, v in self.sizes.items()) or "(no dimensions)"
        return f"sizes {sz}, values {self.mode!r}, seed {self.seed}"


def modes(m: Model, hard: tuple[str, ...] | None = None, kinks: bool | None = None) -> list[str]:
    """The value modes that make sense for ``m`` (``hard`` and ``kinks`` override the model's own)."""
    out = ["normal", "small"]
    if m.sample is not None and not m.newton:
        out += [h for h in (m.hard if hard is None else hard) if h not in out]
    if m.kinks if kinks is None else kinks:
        out.append("kinks")
    return out


def examples(m: Model, hard: tuple[str, ...] | None = None, kinks: bool | None = None,
             values: tuple[str, ...] | None = None) -> st.SearchStrategy[Example]:
    """Strategy of examples for model ``m`` (``hard``, ``kinks``: see :func:`modes`; ``values`` replaces the
    modes drawn)."""
    dims = {
        name: st.integers(*m.ranges.get(name, (1, 4)))
        for name in m.dims
    }
    return st.builds(
        Example,
        sizes=st.fixed_dictionaries(dims),
        seed=st.integers(0, 2**32 - 1),
        mode=st.sampled_from(list(values) if values else modes(m, hard, kinks)),
    )


def make_arrays(m: Model, sizes: dict[str, int], seed: int, mode: str = "normal") -> dict[str, np.ndarray]:
    """Float64 arrays for every parameter and input of ``m``, from each tensor's declared domain."""
    rng = np.random.default_rng(seed)
    shapes = m.shapes(**sizes)
    dims = m.sizes(**sizes)
    bounds = {v.name: int(as_expr(k).subs(dims)) for v, k in label_sizes([eq.rhs for eq in m.equations]).items()}
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        var = m.tensor(name)
        if var.domain == LABELS:
            if name not in bounds:
                raise ValueError(f"{m.name}: labels input {name} is not used as an index (gather), so the "
                                 "verifier does not know its range")
            out[name] = rng.integers(0, bounds[name], size=shape).astype(np.float64)
            continue
        out[name] = _draw(rng, var.domain, shape, mode, var.role == "param")
    return out


def _draw(rng: np.random.Generator, domain: str, shape: tuple[int, ...], mode: str, param: bool) -> Any:
    if domain == "unit":
        v = rng.uniform(0.0, 1.0, shape)
        if mode in ("large", "kinks"):
            v = np.where(rng.uniform(size=shape) < 0.5, np.round(v), v)  # hard 0/1 labels
        return v
    if domain == "simplex":
        if rng.uniform() < 0.5:
            k = shape[-1]
            idx = rng.integers(0, k, shape[:-1])
            return np.eye(k)[idx]
        a = rng.gamma(0.7, size=shape) + 1e-12
        return a / a.sum(-1, keepdims=True)
    if domain == "one_hot":  # one-hot rows along the last axis (a state, an action)
        k = shape[-1]
        return np.eye(k)[rng.integers(0, k, shape[:-1])]
    if domain == "mask":
        return (rng.uniform(size=shape) < 0.7).astype(np.float64)
    if domain == "positive":
        return rng.uniform(0.5, 2.0, shape)
    if domain == SPD:
        # A A^T / k + I: symmetric positive definite, eigenvalues in [1, ~5] (well conditioned, so that a
        # comparison at 1e-10 measures the kernel, not the conditioning of the matrix)
        k = shape[-1]
        a = rng.normal(size=shape)
        return a @ np.swapaxes(a, -1, -2) / k + np.eye(k)
    v = rng.normal(size=shape)
    if mode == "small":
        v = v * 1e-3
    elif mode == "large" and not param:
        v = v * 300.0  # inputs of a few hundred: logits of order 1e3
        if v.size:  # and one entry beyond exp's range (|x| = 1000 > 709.8): a naive log(1 + exp(x)) overflows
            k = int(np.argmax(np.abs(v)))
            v.flat[k] = 1000.0 if v.flat[k] >= 0 else -1000.0
    elif mode == "kinks":
        v = np.where(rng.uniform(size=shape) < 0.3, 0.0, np.round(v * 8) / 8)
    return v
