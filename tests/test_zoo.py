"""One case table drives every zoo entry through derive -> numeric -> verify.

Each entry's generated NumPy and torch kernels are checked by ``verify.check`` against torch autograd on
an independent reference forward, against each other and against a finite difference, in float64 on
hypothesis-drawn shapes and values (Hessians and Newton steps too where the entry declares them).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import derive
import numeric
import verify
from derive.tensor import Einsum, Map, Var, walk

ZOO = derive.models.names()
ISSUE_2 = ["linear_regression", "ridge_regression", "logistic_regression", "softmax_regression",
           "shallow_autoencoder", "rosenbrock", "autodiff_example", "newton_logistic", "sigmoid", "tanh",
           "relu", "leaky_relu", "softplus", "softmax", "log_softmax"]


def test_zoo_has_the_issue_entries() -> None:
    assert set(ISSUE_2) <= set(ZOO)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("name", ZOO)
def test_entry_verifies(name: str, backend: str) -> None:
    m = derive.models.get(name)
    report = verify.check(m, backend=backend, examples=settings().max_examples)
    assert report.examples == settings().max_examples
    key = (next(k for k in report.checks if k.startswith("torch kernel: state vs")) if m.is_update else
           "torch kernel: gradients" if m.grad_names else "torch kernel: loss")
    assert report.checks[key] <= 1e-10
    if m.hessian_wrt:
        assert "torch kernel: Hessian" in report.checks


@pytest.mark.parametrize("name", ZOO)
def test_derivation_is_size_independent(name: str) -> None:
    """Shapes stay symbolic: no equation of the adjoint program mentions a numeric size of a dimension."""
    m = derive.models.get(name)
    dims = set(m.dims.values())
    for eq in (m.equations if m.is_update else derive.backprop(m)):
        for d in eq.lhs.shape:
            assert sp.sympify(d).free_symbols <= dims, (eq.lhs.name, d)


def test_cuda_kernels_when_a_gpu_is_present() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine (CI has none); the same checks run on GPU machines")
    for name in ISSUE_2:
        verify.check(derive.models.get(name), device="cuda", examples=5)


# -- closed forms that the simplifier must reach --------------------------------------------------


def _eq(m: derive.Model, name: str) -> derive.Equation:
    return next(e for e in derive.backprop(m) if e.lhs.name == name)


def test_softmax_cross_entropy_simplifies_to_yhat_minus_y() -> None:
    m = derive.models.get("softmax_regression")
    delta = _eq(m, "delta")
    assert isinstance(delta.rhs, Map)
    assert [a.name for a in delta.rhs.args if isinstance(a, Var)] and len(delta.rhs.args) == 2
    yhat, y = m.equations[1].lhs, m.inputs["Y"]
    names = {derive.tensor.ARG[i]: a for i, a in enumerate(delta.rhs.args)}
    inv = {v: k for k, v in names.items()}
    assert sp.simplify(delta.rhs.fn - (inv[yhat] - inv[y])) == 0
    assert derive.latex(delta) == r"\delta = \hat{y} - y"
    assert derive.latex(derive.grad(m, "W")) == r"g_{W} = \delta x^\top"


def test_logistic_delta_is_sigma_minus_y() -> None:
    m = derive.models.get("logistic_regression")
    assert derive.latex(_eq(m, "delta")) == r"\delta = \hat{y} - y"
    # \hat y is sigma(z): the adjoint of z is sigma(z) - y
    assert derive.latex(m.equations[1]) == r"\hat{y} = \sigma(z)"


def test_logistic_hessian_is_a_diagonal_scaling() -> None:
    """H_w = X^T D X / n with D = diag(yhat (1 - yhat)): one scalar weight per sample, never n x n."""
    m = derive.models.get("logistic_regression")
    (h,) = derive.hessian(m, "w")
    assert isinstance(h.rhs, Einsum)
    assert sorted(o.ndim for o in h.rhs.operands) == [0, 1, 1]
    assert all(node.ndim <= 2 for node in walk([h.rhs]))
    # the book's (1/n) X~^T D X~, with the samples as the columns of X (each batch matrix defined)
    assert derive.latex(h, batch=True) == (
        r"H_{w} = \frac{1}{n} X D X^\top,\quad X = \left[x^{(1)}, \dots, x^{(n)}\right],\quad \hat{y} = "
        r"\left[\hat{y}^{(1)}, \dots, \hat{y}^{(n)}\right],\quad D = \operatorname{diag}(\hat{y} \odot (1 - \hat{y}))")
    # and numerically: against torch.autograd.functional.hessian
    rng = np.random.default_rng(0)
    X, y, w, b = rng.normal(size=(40, 6)), rng.uniform(size=40), rng.normal(size=6), rng.normal(size=())
    out = numeric.compile(m, "numpy", hessian=["w"])(X=X, y=y, w=w, b=b)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    H = torch.autograd.functional.hessian(
        lambda wt: torch.nn.functional.binary_cross_entropy_with_logits(Xt @ wt + float(b), yt), torch.tensor(w))
    np.testing.assert_allclose(out["hessian"]["w"], H.numpy(), rtol=1e-10, atol=1e-12)
    src = numeric.source(m, "numpy", hessian=["w"])
    assert "@ X" in src and "diag" not in src  # a scaled matrix product, no dense n x n diagonal


def test_autodiff_example_book_values() -> None:
    """Fig 4.7 at theta = (1, 2, 0.5): values, forward-mode and reverse-mode traces."""
    t1, t2, t3 = 1.0, 2.0, 0.5
    m = derive.models.get("autodiff_example")
    theta = np.array([t1, t2, t3])
    want = [t2 * math.cos(t1 * t2), t1 * math.cos(t1 * t2) + math.exp(t2 + t3), math.exp(t2 + t3) - 2]
    out = numeric.compile(m)(theta=theta)
    assert out["loss"] == pytest.approx(math.sin(t1 * t2) + math.exp(t2 + t3) - 2 * t3, rel=1e-14)
    np.testing.assert_allclose(out["grad"]["theta"], want, rtol=1e-14)
    fwd = numeric.trace(m, "forward", theta=theta)
    np.testing.assert_allclose(fwd["a1"], t1 * t2)
    np.testing.assert_allclose(fwd["a5"], math.exp(t2 + t3))
    np.testing.assert_allclose(fwd["a1_dot"], [t2, t1, 0.0])  # three sweeps, one per column
    np.testing.assert_allclose(fwd["a6_dot"], want, rtol=1e-14)
    rev = numeric.trace(m, "reverse", theta=theta)
    np.testing.assert_allclose(rev["a6_bar"], 1.0)
    np.testing.assert_allclose(rev["a1_bar"], math.cos(t1 * t2))
    np.testing.assert_allclose(rev["a2_bar"], math.exp(t2 + t3))
    np.testing.assert_allclose(rev["g_theta"], want, rtol=1e-14)


def test_rosenbrock_closed_forms() -> None:
    m = derive.models.get("rosenbrock")
    f = numeric.compile(m, hessian=["theta"])
    for t1, t2 in [(1.0, 1.0), (-1.2, 1.0), (0.3, -2.0)]:
        out = f(theta=np.array([t1, t2]))
        g = [-2 * (1 - t1) - 400 * t1 * (t2 - t1**2), 200 * (t2 - t1**2)]
        H = [[2 - 400 * t2 + 1200 * t1**2, -400 * t1], [-400 * t1, 200]]
        np.testing.assert_allclose(out["grad"]["theta"], g, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(out["hessian"]["theta"], H, rtol=1e-13)


def test_linear_regression_normal_equations() -> None:
    """At the least-squares solution the gradient vanishes, and the Hessian is 2/n X^T X."""
    m = derive.models.get("linear_regression")
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(30, 4)), rng.normal(size=30)
    theta = np.linalg.lstsq(X, y, rcond=None)[0]
    out = numeric.compile(m, hessian=["theta"])(theta=theta, X=X, y=y)
    np.testing.assert_allclose(out["grad"]["theta"], 0.0, atol=1e-13)
    np.testing.assert_allclose(out["hessian"]["theta"], 2 / 30 * X.T @ X, rtol=1e-12)


def test_newton_step_matches_closed_form() -> None:
    m = derive.models.get("newton_logistic")
    rng = np.random.default_rng(2)
    n, p = 50, 3
    X, y, w, b = rng.normal(size=(n, p)), (rng.uniform(size=n) < 0.5) * 1.0, rng.normal(size=p), np.array(0.1)
    out = numeric.compile(m)(X=X, y=y, w=w, b=b)
    Xt = np.hstack([X, np.ones((n, 1))])
    s = 1 / (1 + np.exp(-(X @ w + b)))
    H = Xt.T @ (Xt * (s * (1 - s))[:, None]) / n
    step = np.linalg.solve(H, Xt.T @ (s - y) / n)
    np.testing.assert_allclose(out["newton"]["w"], w - step[:p], rtol=1e-10)
    np.testing.assert_allclose(out["newton"]["b"], b - step[p], rtol=1e-10)


def test_batch_norm_backward_is_the_three_term_form() -> None:
    r"""From the generic rules, per sample as the book writes it (case 32): delta^{(i)} = (1/sigma) [g^{(i)} -
    (1/n) sum_j g^{(j)} - (1/n) zbar^{(i)} sum_j g^{(j)} zbar^{(j)}] with g = gamma * zeta, in terms of the
    named zbar (normalized input) and sigma only."""
    m = derive.models.get("batch_norm")
    eq = derive.grad(m, "Z")
    assert isinstance(eq.rhs, Map)
    assert len(sp.Add.make_args(eq.rhs.fn)) == 3
    leaves = {v.name for v in walk([eq.rhs]) if isinstance(v, Var)}
    assert leaves == {"zbar_bar", "sigma", "zbar"}  # no z - mu, no mu: the centered sums vanished
    assert derive.latex(eq) == (
        r"\delta^{(i)} = \frac{\zeta_{\bar{z}}^{(i)}}{\hat{\sigma}} - \frac{1}{n} \frac{1}{\hat{\sigma}} \odot "
        r"\sum_{j=1}^{n} \zeta_{\bar{z}}^{(j)} - \frac{1}{n} \left(\frac{1}{\hat{\sigma}} \odot \sum_{j=1}^{n} "
        r"\zeta_{\bar{z}}^{(j)} \odot \bar{z}^{(j)}\right) \odot \bar{z}^{(i)}")
    # and the numbers: against the textbook three-term formula
    rng = np.random.default_rng(3)
    Z, G, gamma, beta = rng.normal(size=(7, 3)), rng.normal(size=(7, 3)), rng.normal(size=3), rng.normal(size=3)
    out = numeric.compile(m)(Z=Z, G=G, gamma=gamma, beta=beta)
    sd = np.sqrt(Z.var(0) + 1e-5)
    zbar, g = (Z - Z.mean(0)) / sd, G * gamma
    want = (7 * g - g.sum(0) - zbar * (g * zbar).sum(0)) / (7 * sd)
    np.testing.assert_allclose(out["grad"]["Z"], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("opts", [
    {"kernel": (2, 2)}, {"kernel": (3, 2), "stride": 2}, {"kernel": (3, 3), "padding": 1},
    {"kernel": (2, 3), "dilation": 2}, {"kernel": (3, 3), "stride": 2, "padding": 1, "dilation": 2},
])
def test_conv2d_options_verify(opts: dict[str, object]) -> None:
    verify.check(derive.models.get("conv2d", **opts), examples=6, derandomize=True)


@pytest.mark.parametrize("name,opts", [
    ("max_pool2d", {"kernel": 2}), ("max_pool2d", {"kernel": 3, "stride": 2, "padding": 1}),
    ("max_pool2d", {"kernel": 2, "stride": 1}), ("avg_pool2d", {"kernel": 3, "stride": 1, "padding": 1}),
    ("attention", {"causal": True}), ("multihead_attention", {"heads": 3, "causal": True}),
])
def test_layer_options_verify(name: str, opts: dict[str, object]) -> None:
    verify.check(derive.models.get(name, **opts), examples=6, derandomize=True)


def test_convolution_gradients_come_out_as_correlations() -> None:
    """Derived, not written: the kernel gradient is the correlation of the input with delta, the input
    gradient the full convolution of delta with the flipped kernel."""
    m = derive.models.get("conv2d", kernel=(3, 3), stride=2, padding=1)
    got = {e.lhs.name: derive.latex(e) for e in [*m.equations, *derive.backprop(m)]}
    assert got["z"] == r"z = W \star_{S=2,P=1} x + b"
    assert got["g_W"] == r"g_{W} = x \star_{S=2,P=1} \delta"
    # the transposed convolution: delta dilated by the stride, padded by D(k - 1) - P (and the rows a strided
    # sweep never reached), correlated with the flipped kernel; test_printed_strided_input_gradient runs it
    assert got["g_X"].startswith(r"\begin{aligned}\zeta_{x} &= \operatorname{pad}_{1}(\operatorname{dil}_{2}(\delta)) "
                                 r"\star \operatorname{rot}_{180}(W) \\")


def test_attention_backward_has_the_rank_one_term() -> None:
    m = derive.models.get("attention")
    got = {e.lhs.name: derive.latex(e) for e in derive.backprop(m)}
    # (7.24)'s layout: time steps are columns, so the rank-one term is a column sum 1^T (A * V^T zeta_U)
    assert got["S_bar"] == (r"\zeta_{S} = A \odot (V^\top \zeta_{U} - \mathbf{1}^\top (A \odot "
                            r"(V^\top \zeta_{U})))")
    assert got["g_Q"] == r"\zeta_{Q} = \frac{1}{\sqrt{d}} K \zeta_{S}"


def test_positional_encoding_closed_form_values() -> None:
    """(7.29): r_{2k} = sin(t / M^{2k/p}), r_{2k+1} = cos(t / M^{2k/p}) for t = 1, ..., T (the book's and its
    figure code's count: the table's first row is t = 1), against math.sin/cos directly."""
    m = derive.models.get("positional_encoding")
    T, p = 7, 6
    vals = numeric.trace(m, "reverse", X=np.zeros((1, T, p)), G=np.ones((1, T, p)))
    want = np.array([[math.sin(t / 1e4 ** (c / p)) if c % 2 == 0 else math.cos(t / 1e4 ** ((c - 1) / p))
                      for c in range(p)] for t in range(1, T + 1)])
    np.testing.assert_allclose(np.broadcast_to(vals["r"], (T, p)), want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name,opts", [("rnn", {}), ("rnn", {"activation": "relu"}), ("lstm", {}),
                                       ("gru", {"variant": "book"}), ("gru", {"variant": "torch"})])
def test_recurrences_verify_and_keep_T_symbolic(name: str, opts: dict[str, object]) -> None:
    m = derive.models.get(name, **opts)
    verify.check(m, examples=6, derandomize=True)
    # one step is derived, whatever T: the equations relate steps t - 1, t and t + 1 only (no unrolling)
    offsets = {o for eq in derive.backprop(m) for o in re.findall(r"\\langle t([+-]\d+)?\\rangle", derive.latex(eq))}
    assert offsets <= {"", "-1", "+1"}, offsets
    assert "+1" in offsets  # the adjoint carried back from step t + 1


def test_bptt_prints_the_book_recursion() -> None:
    m = derive.models.get("rnn")
    got = {e.lhs.name: derive.latex(e) for e in derive.backprop(m)}
    assert got["zeta"] == (r"\zeta^{\langle t\rangle} = W_{hh}^\top \delta^{\langle t+1\rangle} + "
                           r"W_{yh}^\top \delta_y^{\langle t\rangle}")
    assert got["delta"] == r"\delta^{\langle t\rangle} = \dot{S}(z^{\langle t\rangle}) \odot \zeta^{\langle t\rangle}"
    assert got["g_W_hh"] == r"g_{W_{hh}} = \sum_{t=1}^{T} \delta^{\langle t\rangle} h^{\langle t-1\rangle\top}"
    src = numeric.source(m)
    assert "for t in range(T)" in src and "for t in range(T - 1, -1, -1)" in src  # loops over the actual T


@settings(max_examples=max(4, settings().max_examples // 2), deadline=None, suppress_health_check=list(HealthCheck))
@given(kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)), stride=st.integers(1, 3),
       padding=st.integers(0, 1), dilation=st.integers(1, 2))
def test_conv2d_drawn_options(kernel: tuple[int, int], stride: int, padding: int, dilation: int) -> None:
    """Hypothesis draws the stride/padding/dilation combination; verify.check draws shapes and values."""
    m = derive.models.get("conv2d", kernel=kernel, stride=stride, padding=padding, dilation=dilation)
    verify.check(m, examples=2, derandomize=True)


@settings(max_examples=max(3, settings().max_examples // 3), deadline=None, suppress_health_check=list(HealthCheck))
@given(heads=st.integers(1, 3), causal=st.booleans())
def test_multihead_attention_drawn_heads(heads: int, causal: bool) -> None:
    verify.check(derive.models.get("multihead_attention", heads=heads, causal=causal), examples=2,
                 derandomize=True)


def test_generated_names_are_unique() -> None:
    """Adjoint and gradient names are variables of the generated code: a clash is refused at build time."""
    b = derive.Builder("clash", "two adjoints with one name", "test")
    b.samples("n", 2)
    N = b.dim("N", 2)
    z = b.input("Z", (N,), "z", batched=True)
    b.eq("a", derive.nn.tanh(z), "a", adjoint=("zbar", r"\bar a"))
    with pytest.raises(derive.ModelError, match="'zbar' is used twice"):
        b.eq("c", derive.nn.tanh(z), "c", adjoint=("zbar", r"\bar c"))
    with pytest.raises(derive.ModelError, match="'g_f' is used twice"):
        b.eq("g_f", derive.nn.tanh(z), "g_f")
        b.param("f", (N,), "f")
