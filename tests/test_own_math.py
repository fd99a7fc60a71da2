"""Issue 8's own math beyond one expression: per-sample models written with the Builder (no zoo metadata),
the batch form of their gradients when every adjoint is inlined (SwiGLU, a GELU MLP, a Gaussian NLL), checked
entry by entry against the kernel's gradient with the printed formula transcribed into NumPy, and a broad
held-out-style set of expressions and programs through derive.parse -> numeric (numpy and torch) ->
derive.latex -> verify.check (no registered reference) on hypothesis-drawn shapes and values."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import sympy as sp
from scipy.special import erf, expit

import derive
import numeric
import verify
from derive import nn
from derive.functions import sigmoid
from derive.latex import equations_tex
from derive.tensor import ARG, map_

u, v, w = ARG[0], ARG[1], ARG[2]


def swiglu() -> derive.Model:
    """A SwiGLU block with a squared error: g = silu(W_1 x) * (W_2 x), C = ||W_3 g - y||^2 (mean over samples)."""
    b = derive.Builder("swiglu")
    b.samples("n", 4)
    d, h = b.dim("d", 3), b.dim("h", 4)
    W1, W2, W3 = b.param("W1", (h, d), "W_1"), b.param("W2", (h, d), "W_2"), b.param("W3", (d, h), "W_3")
    x, y = b.input("X", (d,), "x", batched=True), b.input("Y", (d,), "y", batched=True)
    g = b.eq("g", map_(u * sigmoid(u), [W1 @ x]) * (W2 @ x), "g")  # silu(u) = u sigma(u)
    b.eq("C", nn.norm2(W3 @ g - y), "C")
    return b.model()


def gelu_mlp() -> derive.Model:
    """a = GELU(W_1 x + b_1) (the erf form), C = ||W_2 a + b_2 - y||^2."""
    b = derive.Builder("gelu_mlp")
    b.samples("n", 4)
    d, h, q = b.dim("d", 3), b.dim("h", 4), b.dim("q", 2)
    W1, b1 = b.param("W1", (h, d), "W_1"), b.param("b1", (h,), "b_1")
    W2, b2 = b.param("W2", (q, h), "W_2"), b.param("b2", (q,), "b_2")
    x, y = b.input("X", (d,), "x", batched=True), b.input("Y", (q,), "y", batched=True)
    a = b.eq("a", map_(u * (1 + sp.erf(u / sp.sqrt(2))) / 2, [W1 @ x + b1]), "a")
    b.eq("C", nn.norm2(W2 @ a + b2 - y), "C")
    return b.model()


def gaussian_nll() -> derive.Model:
    r"""A heteroscedastic Gaussian NLL: mean mu = W x, log-variance s = V x, C = sum (s + (y - mu)^2 e^{-s}) / 2."""
    b = derive.Builder("gaussian_nll")
    b.samples("n", 4)
    d, q = b.dim("d", 3), b.dim("q", 2)
    W, V = b.param("W", (q, d)), b.param("V", (q, d))
    x, y = b.input("X", (d,), "x", batched=True), b.input("Y", (q,), "y", batched=True)
    mu = b.eq("mu", W @ x, r"\mu")
    s = b.eq("s", V @ x, "s")
    b.eq("C", nn.sum_(map_((u + (v - w) ** 2 * sp.exp(-u)) / 2, [s, y, mu])), "C")
    return b.model()


def _batch(m: derive.Model) -> dict[str, str]:
    bp = derive.backprop(m)
    return {e.lhs.name: t for e, t in zip(bp, equations_tex(bp, batch=True, model=m))}


def _arrays(m: derive.Model, seed: int) -> dict[str, np.ndarray]:
    sizes = {"n": 5, "d": 3, "h": 4, "q": 2}
    return verify.example(m, seed=seed, sizes={k: v for k, v in sizes.items() if k in m.dims})


def test_swiglu_batch_form_is_the_kernel_gradient() -> None:
    m = swiglu()
    got = _batch(m)
    assert got["g_W3"] == (r"g_{W_3} = \frac{2}{n} (W_3 G - Y) G^\top,\quad G = \left[g^{(1)}, \dots, g^{(n)}\right],"
                           r"\quad Y = \left[y^{(1)}, \dots, y^{(n)}\right]")
    assert got["g_W2"] == (r"g_{W_2} = \frac{1}{n} (\sigma(W_1 X) \odot \boldsymbol{\zeta}_{g} \odot (W_1 X)) X^\top")
    assert got["g_W1"].startswith(r"\begin{aligned}g_{W_1} &= \frac{1}{n} (\boldsymbol{\zeta}_{g} \odot (\sigma(W_1 X) "
                                  r"\odot (W_2 X) + G \odot (1 - \sigma(W_1 X)))) X^\top")
    a = _arrays(m, 0)
    out = numeric.compile(m)(**a)
    X, Y, W1, W2, W3 = a["X"].T, a["Y"].T, a["W1"], a["W2"], a["W3"]  # samples as columns, as printed
    n = X.shape[1]
    S = expit(W1 @ X)
    G = (W1 @ X) * S * (W2 @ X)
    Zg = 2 * W3.T @ (W3 @ G - Y)  # the per-sample zeta_g = 2 W_3^T (W_3 g - y), one column per sample
    np.testing.assert_allclose(out["grad"]["W3"], 2 / n * (W3 @ G - Y) @ G.T, rtol=1e-12)
    np.testing.assert_allclose(out["grad"]["W2"], 1 / n * (S * Zg * (W1 @ X)) @ X.T, rtol=1e-12)
    np.testing.assert_allclose(out["grad"]["W1"], 1 / n * (Zg * (S * (W2 @ X) + G * (1 - S))) @ X.T, rtol=1e-12)


def test_gelu_mlp_batch_form_is_the_kernel_gradient() -> None:
    m = gelu_mlp()
    got = _batch(m)
    assert got["g_W2"] == (r"g_{W_2} = \frac{2}{n} (W_2 A + b_2 - Y) A^\top,\quad A = \left[a^{(1)}, \dots, a^{(n)}\right],"
                           r"\quad Y = \left[y^{(1)}, \dots, y^{(n)}\right]")
    assert got["g_b2"] == r"g_{b_2} = \frac{2}{n} (W_2 A - Y) \mathbf{1} + 2 b_2"
    assert r"\boldsymbol{\zeta} \odot" in got["g_W1"] and r"(W_1 X + b_1)" in got["g_W1"]
    assert got["g_W1"].endswith(r"\right)\right) X^\top \\ &\quad X = \left[x^{(1)}, \dots, x^{(n)}\right] \\ "
                                r"&\quad \boldsymbol{\zeta} = \left[\zeta^{(1)}, \dots, \zeta^{(n)}\right]\end{aligned}")
    assert got["g_b1"].endswith(r"\right)\right) \mathbf{1}\end{aligned}")
    a = _arrays(m, 1)
    out = numeric.compile(m)(**a)
    X, Y, W1, b1, W2, b2 = a["X"].T, a["Y"].T, a["W1"], a["b1"][:, None], a["W2"], a["b2"][:, None]
    n = X.shape[1]
    Z = W1 @ X + b1
    A = Z * (1 + erf(Z / np.sqrt(2))) / 2
    Zeta = 2 * W2.T @ (W2 @ A + b2 - Y)
    D = Zeta * (erf(np.sqrt(2) / 2 * Z) / 2 + np.sqrt(2) / (2 * np.sqrt(np.pi)) * np.exp(-Z**2 / 2) * Z + 1 / 2)
    np.testing.assert_allclose(out["grad"]["W2"], 2 / n * (W2 @ A + b2 - Y) @ A.T, rtol=1e-12)
    np.testing.assert_allclose(out["grad"]["b2"], 2 / n * (W2 @ A - Y) @ np.ones(n) + 2 * b2[:, 0], rtol=1e-12)
    np.testing.assert_allclose(out["grad"]["W1"], 1 / n * D @ X.T, rtol=1e-12)
    np.testing.assert_allclose(out["grad"]["b1"], 1 / n * D @ np.ones(n), rtol=1e-12)


def test_gaussian_nll_batch_form_is_the_kernel_gradient() -> None:
    """The batch matrix of mu is bold mu (a Greek letter without its own capital), defined on its line."""
    m = gaussian_nll()
    got = _batch(m)
    assert got["g_W"] == r"g_{W} = \frac{1}{n} (e^{- S} \odot (\boldsymbol{\mu} - Y)) X^\top"
    assert got["g_V"].startswith(r"\begin{aligned}g_{V} &= \frac{1}{n} \left(\frac{1}{2} - \frac{1}{2} e^{- S} \odot "
                                 r"(Y - \boldsymbol{\mu})^{2}\right) X^\top")
    assert r"\boldsymbol{\mu} = \left[\mu^{(1)}, \dots, \mu^{(n)}\right]" in got["g_V"]
    a = _arrays(m, 2)
    out = numeric.compile(m)(**a)
    X, Y, W, V = a["X"].T, a["Y"].T, a["W"], a["V"]
    n = X.shape[1]
    M, S = W @ X, V @ X
    np.testing.assert_allclose(out["grad"]["W"], 1 / n * (np.exp(-S) * (M - Y)) @ X.T, rtol=1e-12)
    np.testing.assert_allclose(out["grad"]["V"], 1 / n * (1 / 2 - np.exp(-S) * (Y - M) ** 2 / 2) @ X.T, rtol=1e-12)


@pytest.mark.parametrize("make", [swiglu, gelu_mlp, gaussian_nll])
def test_per_sample_models_verify_with_no_reference(make: Callable[[], derive.Model]) -> None:
    m = make()
    assert m.name not in verify.REFERENCES
    rep = verify.check(m, examples=3, derandomize=True)
    assert rep.reference == "the eager evaluation of its forward program" and rep.examples == 3


def test_builder_docstring_examples_hold() -> None:
    """The Builder's documented examples are run, so the printed results they show are the real ones."""
    import doctest

    import derive.program

    finder = doctest.DocTestFinder()
    tests = [t for t in finder.find(derive.program.Builder, "Builder", globs={}) if t.examples]
    assert tests and sum(len(t.examples) for t in tests) >= 20
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for t in tests:
        runner.run(t)
    assert runner.summarize(verbose=False).failed == 0


def test_builder_metadata_is_optional() -> None:
    b = derive.Builder("mine")
    p = b.dim("p", 3)
    w = b.param("w", (p,))
    b.eq("C", nn.dot(w, w))
    m = b.model()
    assert (m.title, m.section) == ("mine", "own model")
    assert "own model" in numeric.source(m).splitlines()[0]
    assert derive.Builder("t", "a title").section == "own model"
    with pytest.raises(derive.ModelError, match="non-empty string"):
        derive.Builder("")
