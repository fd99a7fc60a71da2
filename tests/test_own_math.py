"""Issue 8's own math beyond one expression: per-sample models written with the Builder (no zoo metadata),
the batch form of their gradients when every adjoint is inlined (SwiGLU, a GELU MLP, a Gaussian NLL), checked
entry by entry against the kernel's gradient with the printed formula transcribed into NumPy, and a broad
held-out-style set of expressions and programs through derive.parse -> numeric (numpy and torch) ->
derive.latex -> verify.check (no registered reference) on hypothesis-drawn shapes and values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
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


# -- a held-out-style set: parse -> numeric (numpy, torch) -> latex -> verify, no registered reference -------
#
# Each expression comes with the same loss written independently in PyTorch (torch.nn.functional where torch
# has it): verify.check compares the derived kernels with torch autograd on it, on hypothesis-drawn sizes and
# values, and the eager evaluation of the parsed program (the reference verify.check uses by default, for
# every model outside the zoo) is compared with it too, so a misread of the text cannot hide in both.

V, M, S = "vector", "matrix", "scalar"
HUBER = "r = X*w - y\na = abs(r)\nm = min(a, 1)\nsum(0.5*m.^2 + a - m)"
RMSNORM = "r = sqrt(mean(x.^2) + 1e-5)\nh = g .* x / r\nnorm2(W*h - y)^2"
SMOOTHING = "lp = log(softmax(W*x))\n-(0.9*(y'*lp) + 0.1*mean(lp))"
SWIGLU = "u = W1*x\ng = u .* sigmoid(u) .* (W2*x)\nnorm2(W3*g - y)^2"
GELU = "z = W1*x + b\na = 0.5*z .* (1 + erf(z/sqrt(2)))\nnorm2(W2*a - y)^2"
TIED = "h = sigmoid(W*x + b)\nr = W'*h + c\nnorm2(r - x)^2"

HELD_OUT: dict[str, tuple[str, dict[str, str], list[str] | None, Callable[..., Any]]] = {
    "huber": (HUBER, {"X": "matrix(n,p)", "w": "vector(p)", "y": "vector(n)"}, ["w"],
              lambda X, w, y: F.huber_loss(X @ w, y, reduction="sum", delta=1.0)),
    "rmsnorm": (RMSNORM, {"x": "vector(d)", "g": "vector(d)", "W": "matrix(k,d)", "y": "vector(k)"}, ["x", "g", "W"],
                lambda x, g, W, y: ((W @ F.rms_norm(x, (x.shape[0],), weight=g, eps=1e-5) - y) ** 2).sum()),
    "label_smoothing": (SMOOTHING, {"W": "matrix(K,d)", "x": "vector(d)", "y": "vector(K)"}, ["W"],
                        lambda W, x, y: F.cross_entropy((W @ x)[None], y[None], label_smoothing=0.1,
                                                        reduction="sum")),
    "swiglu": (SWIGLU, {"W1": "matrix(h,d)", "W2": "matrix(h,d)", "W3": "matrix(d,h)", "x": "vector(d)",
                        "y": "vector(d)"}, ["W1", "W2", "W3"],
               lambda W1, W2, W3, x, y: ((W3 @ (F.silu(W1 @ x) * (W2 @ x)) - y) ** 2).sum()),
    "gelu_mlp": (GELU, {"W1": "matrix(h,d)", "b": "vector(h)", "W2": "matrix(q,h)", "x": "vector(d)",
                        "y": "vector(q)"}, ["W1", "b", "W2"],
                 lambda W1, b, W2, x, y: ((W2 @ F.gelu(W1 @ x + b) - y) ** 2).sum()),
    "gaussian_kl": ("0.5*sum(exp(s) + mu.^2 - 1 - s)", {"mu": "vector(d)", "s": "vector(d)"}, None,
                    lambda mu, s: 0.5 * (s.exp() + mu**2 - 1 - s).sum()),
    "gaussian_nll": ("0.5*sum(s + (y - mu).^2 ./ exp(s))", {"mu": "vector(d)", "s": "vector(d)", "y": "vector(d)"},
                     ["mu", "s"], lambda mu, s, y: F.gaussian_nll_loss(mu, y, s.exp(), reduction="sum", eps=0.0)),
    "infonce": ("-(k'*q)/0.1 + logsumexp(K*q/0.1)", {"q": "vector(d)", "k": "vector(d)", "K": "matrix(m,d)"}, None,
                lambda q, k, K: -(k @ q) / 0.1 + torch.logsumexp(K @ q / 0.1, 0)),
    "tied_autoencoder": (TIED, {"W": "matrix(k,d)", "b": "vector(k)", "c": "vector(d)", "x": "vector(d)"},
                         ["W", "b", "c"],
                         lambda W, b, c, x: ((W.T @ torch.sigmoid(W @ x + b) + c - x) ** 2).sum()),
    "softmax_regression": ("-y'*log(softmax(W*x + b))", {"W": "matrix(K,d)", "b": "vector(K)", "x": "vector(d)",
                                                         "y": "vector(K)"}, ["W", "b"],
                           lambda W, b, x, y: -(y * F.log_softmax(W @ x + b, 0)).sum()),
    "logistic_ridge": ("sum(softplus(-y .* (X*w))) + lam*(w'*w)/2", {"X": "matrix(n,p)", "w": "vector(p)",
                                                                     "y": "vector(n)", "lam": "scalar"}, ["w"],
                       lambda X, w, y, lam: F.softplus(-y * (X @ w)).sum() + lam * (w @ w) / 2),
    "hinge": ("sum(relu(1 - y .* (X*w)))", {"X": "matrix(n,p)", "w": "vector(p)", "y": "vector(n)"}, ["w"],
              lambda X, w, y: F.relu(1 - y * (X @ w)).sum()),
    "elastic_net": ("norm2(X*w - y)^2 + 0.1*norm1(w) + 0.01*w'*w", {"X": "matrix(n,p)", "w": "vector(p)",
                                                                    "y": "vector(n)"}, ["w"],
                    lambda X, w, y: ((X @ w - y) ** 2).sum() + 0.1 * w.abs().sum() + 0.01 * (w @ w)),
    "matrix_factorization": ("norm2(X - U*V')^2", {"X": "matrix(m,n)", "U": "matrix(m,k)", "V": "matrix(n,k)"},
                             ["U", "V"], lambda X, U, V: torch.linalg.matrix_norm(X - U @ V.T) ** 2),
    "graphical_lasso": ("tr(S*X) - logdet(X) + 0.1*norm1(X)", {"S": "matrix(n,n)", "X": "spd(n)"}, ["X"],
                        lambda S, X: torch.trace(S @ X) - torch.logdet(X) + 0.1 * X.abs().sum()),
    "inverse_quadratic": ("x'*inv(A)*x + log(det(A))", {"x": "vector(n)", "A": "spd(n)"}, None,
                          lambda x, A: x @ torch.linalg.solve(A, x) + torch.log(torch.linalg.det(A))),
    "rosenbrock": ("(1 - a)^2 + 100*(b - a^2)^2", {"a": "scalar", "b": "scalar"}, None,
                   lambda a, b: (1 - a) ** 2 + 100 * (b - a**2) ** 2),
    "cosine": ("x'*y / (norm2(x)*norm2(y))", {"x": "vector(n)", "y": "vector(n)"}, None,
               lambda x, y: F.cosine_similarity(x, y, dim=0, eps=0.0)),
    "powers_and_ones": ("norm2(A - eye)^2 + vector(1)'*A^3*vector(1) + tr(A'*A)^0.5", {"A": "matrix(n)"}, None,
                        lambda A: ((A - torch.eye(A.shape[0], dtype=A.dtype)) ** 2).sum()
                        + torch.linalg.matrix_power(A, 3).sum() + torch.trace(A.T @ A) ** 0.5),
    "max_margin": ("logsumexp(A*x) - max(A*x) + min(x)", {"A": "matrix(m,n)", "x": "vector(n)"}, None,
                   lambda A, x: torch.logsumexp(A @ x, 0) - (A @ x).max() + x.min()),
    "trace_chain": ("tr(A*X*B) + tr(X'*X) - x'*X*y", {"A": "matrix(n,p)", "X": "matrix(p,q)", "B": "matrix(q,n)",
                                                       "x": "vector(p)", "y": "vector(q)"}, ["X", "x"],
                    lambda A, X, B, x, y: torch.trace(A @ X @ B) + torch.trace(X.T @ X) - x @ X @ y),
}


@pytest.mark.parametrize("name", list(HELD_OUT))
def test_held_out_expressions_against_torch_written_independently(name: str) -> None:
    text, types, wrt, torch_loss = HELD_OUT[name]
    m = derive.parse(text, wrt=wrt, **types)
    assert m.name not in verify.REFERENCES and derive.latex(m).startswith(r"\begin{aligned}")
    for backend in ("numpy", "torch"):
        assert "def kernel(" in numeric.source(m, backend)
    # the default reference (the eager evaluation of the parsed program) against the loss written in torch
    arrays = verify.example(m, seed=7, sizes={str(d): 3 for d in m.dims.values()})
    tensors = {k: torch.tensor(a, dtype=torch.float64) for k, a in arrays.items()}
    want = torch_loss(**tensors)
    got = verify.eager_reference(m)(**tensors)
    assert float(got) == pytest.approx(float(want), rel=1e-12, abs=1e-12), text
    # the derived kernels (numpy and torch) against autograd on the torch loss, hypothesis-drawn examples
    rep = verify.check(m, reference=lambda **t: torch_loss(**t), examples=3, derandomize=True)
    assert rep.examples == 3 and rep.checks["numpy kernel: gradients"] <= 1e-10
    if m.hessian_wrt:
        assert rep.checks["torch kernel: Hessian"] <= 1e-10


_F = st.sampled_from(["tanh", "sigmoid", "sin", "softplus", "erf", "relu", "cos"])
_V = st.sampled_from(["x", "y", "h1"])


@st.composite
def _programs(draw: st.DrawFn) -> str:
    """Multi-line programs ``name = expr`` over x, y: vector(n), A: matrix(n,n), B: matrix(m,n), c: scalar,
    each line using the names above it."""
    f1, f2, f3 = draw(_F), draw(_F), draw(_F)
    arg1 = draw(st.sampled_from(["A*x", "A*x + c*y", "A'*y - x", "(A + A')*x ./ (1 + y.^2)"]))
    arg2 = draw(st.sampled_from(["h1 .* y", "h1 + x", "A*h1", "2*h1 - c"]))
    arg3 = draw(st.sampled_from(["h2", "h1", "x"]))
    lines = [f"h1 = {f1}({arg1})", f"h2 = {arg2}", f"h3 = {f2}(B*{arg3})"]
    loss = draw(st.sampled_from(["sum(h3)", "h3'*h3", "norm2(h3)^2 + {v}'*h2", "logsumexp(h3) - c*sum({v})",
                                 "mean({f}(h3)) + norm1(h2)"]))
    return "\n".join(lines + [loss.format(v=draw(_V), f=f3)])


@settings(max_examples=max(4, settings().max_examples // 2))
@given(text=_programs())
def test_drawn_programs_verify(text: str) -> None:
    m = derive.parse(text, x="vector(n)", y="vector(n)", A="matrix(n,n)", B="matrix(m,n)", c="scalar")
    assert [e.lhs.name for e in m.equations][:3] == ["h1", "h2", "h3"]
    assert derive.latex(m)
    rep = verify.check(m, examples=2, derandomize=True)
    assert rep.reference == "the eager evaluation of its forward program" and rep.examples == 2, text


def test_bench_parse_examples_are_the_parsed_losses() -> None:
    """The benchmark's section ``parse`` times each example's kernel against autograd on the loss written in
    torch: that loss must be the parsed expression (checked here on small sizes; nothing is timed)."""
    from numeric.bench import SECTIONS
    from numeric.bench_parse import EXAMPLES, _parsed, _tensors

    assert "parse" in SECTIONS and len(EXAMPLES) >= 12
    for ex in EXAMPLES:
        m = _parsed(ex)
        ts = _tensors(m, ex.sizes(5, 3), seed=1)
        want = ex.torch_loss(**ts)
        assert float(verify.eager_reference(m)(**ts)) == pytest.approx(float(want), rel=1e-12), ex.name
