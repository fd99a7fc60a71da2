"""The book's cases (``shared/BOOK.md``) in the book's notation: for every case dlmath covers, the exact
LaTeX dlmath prints beside a numeric check of the same equation (STYLE.md rule 5), so that a formatting
change cannot hide a semantic one. The numbers come from the book's formula written out here in NumPy,
never from dlmath's printer, and are compared with dlmath's generated kernels.

``COVERED`` maps each covered case to the test that checks it; ``docs/book.rst`` shows the same cases side
by side with the book, and lists the ones not covered with the reason.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import derive
import numeric
from derive.latex import init_tex, jacobian_tex, newton_tex, program_tex

RNG = np.random.default_rng(11)


def lines(name: str, batch: bool = False, part: str = "backward", **opts: Any) -> list[str]:
    """What ``dlmath derive NAME`` prints for the forward or the backward program."""
    m = derive.models.get(name, **opts)
    L = m.options.get("layers") if isinstance(m.options.get("layers"), int) else None
    eqs = m.equations if part == "forward" else derive.backprop(m)
    return program_tex(eqs, batch=batch, layers=L, model=m)


def sig(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def close(a: Any, b: Any) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# -- Chapter 2 ----------------------------------------------------------------------------------------


def test_case_01_least_squares() -> None:
    assert lines("linear_regression")[0] == r"g_{\theta} = 2 (\hat{y} - y) x"
    assert lines("linear_regression", batch=True)[0].startswith(
        r"g_{\theta} = \frac{2}{n} X (\hat{y} - y)^\top,\quad X = \left[x^{(1)}, \dots, x^{(n)}\right]")
    m = derive.models.get("linear_regression")
    (h,) = derive.hessian(m, "theta")
    assert program_tex([h], batch=True, model=m)[0] == (
        r"H_{\theta} = \frac{2}{n} X X^\top,\quad X = \left[x^{(1)}, \dots, x^{(n)}\right]")
    X, y, th = RNG.normal(size=(7, 3)), RNG.normal(size=7), RNG.normal(size=3)
    out = numeric.compile(m, hessian=["theta"])(X=X, y=y, theta=th)
    close(out["grad"]["theta"], 2 / 7 * X.T @ (X @ th - y))  # the book's (2/n) X^T (X theta - y)
    close(out["hessian"]["theta"], 2 / 7 * X.T @ X)


def test_case_03_ridge() -> None:
    m = derive.models.get("ridge_regression", lam=0.3)
    assert program_tex(m.equations, model=m)[1] == r"R_{\lambda} = \lambda \left\|\theta\right\|^{2}"
    assert lines("ridge_regression", lam=0.3)[0] == r"g_{\theta} = 2 (\lambda \theta + (\hat{y} - y) x)"
    assert lines("ridge_regression", batch=True, lam=0.3)[0].startswith(
        r"g_{\theta} = \frac{2}{n} X (\hat{y} - y)^\top + 2 \lambda \theta,")
    X, y, th = RNG.normal(size=(6, 3)), RNG.normal(size=6), RNG.normal(size=3)
    out = numeric.compile(m)(X=X, y=y, theta=th)
    close(out["grad"]["theta"], 2 / 6 * X.T @ (X @ th - y) + 2 * 0.3 * th)


def test_cases_04_15_gradient_descent() -> None:
    m = derive.models.get("sgd", lr=0.05)
    assert program_tex(m.equations, model=m) == [r"\theta^{(t+1)} = \theta^{(t)} - \alpha g^{(t)}"]
    th, g = RNG.normal(size=4), RNG.normal(size=4)
    close(numeric.compile(m)(theta=th, g=g)["theta"], th - 0.05 * g)


# -- Chapter 3 ----------------------------------------------------------------------------------------


def test_cases_07_09_logistic_gradient() -> None:
    assert lines("logistic_regression")[:2] == [r"\delta = \hat{y} - y", r"g_{w} = \delta x"]
    assert lines("logistic_regression", batch=True)[1] == (
        r"g_{w} = \frac{1}{n} X \delta^\top,\quad X = \left[x^{(1)}, \dots, x^{(n)}\right],\quad "
        r"\delta = \left[\delta^{(1)}, \dots, \delta^{(n)}\right]")
    m = derive.models.get("logistic_regression")
    X, y, w, b = RNG.normal(size=(8, 3)), RNG.uniform(size=8), RNG.normal(size=3), RNG.normal()
    out = numeric.compile(m)(X=X, y=y, w=w, b=np.array(b))
    Xt, th = np.c_[np.ones(8), X], np.r_[b, w]
    g = Xt.T @ (sig(Xt @ th) - y) / 8  # the book's (1/n) X~^T (sigma(X~ theta) - y)
    close(out["grad"]["b"], g[0])
    close(out["grad"]["w"], g[1:])


def test_cases_08_19_logistic_hessian_and_newton() -> None:
    m = derive.models.get("newton_logistic")
    (h,) = derive.hessian(m, "w")
    assert program_tex([h], batch=True, model=m)[0] == (
        r"H_{w} = \frac{1}{n} X D X^\top,\quad X = \left[x^{(1)}, \dots, x^{(n)}\right],\quad \hat{y} = "
        r"\left[\hat{y}^{(1)}, \dots, \hat{y}^{(n)}\right],\quad D = \operatorname{diag}(\hat{y} \odot (1 - \hat{y}))")
    assert newton_tex(m)[-1] == r"\theta^{(t+1)} = \theta^{(t)} - H^{-1} g"
    X, y, w, b = RNG.normal(size=(12, 3)), RNG.uniform(size=12), RNG.normal(size=3), RNG.normal()
    out = numeric.compile(m, "numpy")(X=X, y=y, w=w, b=np.array(b))
    Xt, th = np.c_[X, np.ones(12)], np.r_[w, b]
    yh = sig(Xt @ th)
    H = Xt.T @ np.diag(yh * (1 - yh)) @ Xt / 12
    step = th - np.linalg.solve(H, Xt.T @ (yh - y) / 12)  # theta - (X~^T D X~)^{-1} X~^T (yhat - y)
    close(out["hessian"]["w"], H[:3, :3])
    close(np.r_[out["newton"]["w"], out["newton"]["b"]], step)


def test_case_10_softmax_regression() -> None:
    assert lines("softmax_regression") == [r"\delta = \hat{y} - y", r"g_{W} = \delta x^\top", r"g_{b} = \delta"]
    assert lines("softmax_regression", batch=True)[1:] == [
        r"g_{W} = \frac{1}{n} \Delta X^\top,\quad X = \left[x^{(1)}, \dots, x^{(n)}\right],\quad "
        r"\Delta = \left[\delta^{(1)}, \dots, \delta^{(n)}\right]",
        r"g_{b} = \frac{1}{n} \Delta \mathbf{1}"]
    m = derive.models.get("softmax_regression")
    X, W, b = RNG.normal(size=(6, 3)), RNG.normal(size=(4, 3)), RNG.normal(size=4)
    Y = softmax(RNG.normal(size=(6, 4)))
    out = numeric.compile(m)(X=X, Y=Y, W=W, b=b)
    D = softmax(X @ W.T + b) - Y  # rows delta^(i) = yhat - y
    close(out["grad"]["W"], D.T @ X / 6)
    close(out["grad"]["b"], D.mean(0))


def test_case_11_softmax_jacobian() -> None:
    assert lines("softmax") == [r"\delta = a \odot (\zeta - a^\top \zeta)"]
    m = derive.models.get("softmax")
    Z, G = RNG.normal(size=(3, 4)), RNG.normal(size=(3, 4))
    out = numeric.compile(m)(Z=Z, G=G)
    for z, g, got in zip(Z, G, out["grad"]["Z"]):
        s = softmax(z)
        close(got, (np.diag(s) - np.outer(s, s)) @ g)  # diag(s) - s s^T, symmetric


def test_case_13_shallow_autoencoder() -> None:
    assert lines("shallow_autoencoder") == [
        r"\delta_d = 2 (\hat{x} - x)", r"g_{W_d} = \delta_d \tilde{x}^\top", r"g_{b_d} = \delta_d",
        r"\delta_e = (W_{d}^\top \delta_d) \odot (1 - \tilde{x} \odot \tilde{x})", r"g_{W_e} = \delta_e x^\top",
        r"g_{b_e} = \delta_e"]
    m = derive.models.get("shallow_autoencoder")
    X = RNG.normal(size=(5, 4))
    P = {"W_e": RNG.normal(size=(2, 4)), "b_e": RNG.normal(size=2), "W_d": RNG.normal(size=(4, 2)),
         "b_d": RNG.normal(size=4)}
    out = numeric.compile(m)(X=X, **P)
    xt = np.tanh(X @ P["W_e"].T + P["b_e"])
    dd = 2 * (xt @ P["W_d"].T + P["b_d"] - X)
    de = (dd @ P["W_d"]) * (1 - xt * xt)
    close(out["grad"]["W_d"], dd.T @ xt / 5)
    close(out["grad"]["W_e"], de.T @ X / 5)


# -- Chapter 4 ----------------------------------------------------------------------------------------


def _step(name: str, **state: np.ndarray) -> dict[str, Any]:
    return numeric.compile(derive.models.get(name))(**state)  # type: ignore[no-any-return]


def test_case_14_momentum() -> None:
    m = derive.models.get("momentum")
    assert program_tex(m.equations, model=m) == [r"v^{(t+1)} = \beta v^{(t)} + (1 - \beta) g^{(t)}",
                                                 r"\theta^{(t+1)} = \theta^{(t)} - \alpha v^{(t+1)}"]
    th, v, g = RNG.normal(size=4), RNG.normal(size=4), RNG.normal(size=4)
    out = _step("momentum", theta=th, v=v, g=g)
    close(out["v"], 0.9 * v + 0.1 * g)
    close(out["theta"], th - 0.01 * out["v"])


def test_cases_16_17_adagrad_rmsprop() -> None:
    m = derive.models.get("adagrad")
    assert program_tex(m.equations, model=m)[1] == (
        r"\theta^{(t+1)} = \theta^{(t)} - \alpha \frac{g^{(t)}}{\sqrt{s^{(t+1)}} + \epsilon}")
    th, s, g = RNG.normal(size=4), RNG.uniform(size=4), RNG.normal(size=4)
    out = _step("adagrad", theta=th, s=s, g=g)
    close(out["theta"], th - 0.01 * g / (np.sqrt(s + g * g) + 1e-10))
    m = derive.models.get("rmsprop")
    assert program_tex(m.equations, model=m)[0] == (
        r"s^{(t+1)} = \gamma s^{(t)} + (1 - \gamma) g^{(t)} \odot g^{(t)}")
    out = _step("rmsprop", theta=th, s=s, g=g)
    s1 = 0.99 * s + 0.01 * g * g
    close(out["theta"], th - 0.01 * g / (np.sqrt(s1) + 1e-8))


def test_case_18_adam() -> None:
    m = derive.models.get("adam")
    assert program_tex(m.equations, model=m) == [
        r"v^{(t+1)} = \beta_{1} v^{(t)} + (1 - \beta_{1}) g^{(t)}",
        r"s^{(t+1)} = \beta_{2} s^{(t)} + (1 - \beta_{2}) g^{(t)} \odot g^{(t)}",
        r"\hat{v} = \frac{v^{(t+1)}}{1 - \beta_{1}^{t + 1}}",
        r"\hat{s} = \frac{s^{(t+1)}}{1 - \beta_{2}^{t + 1}}",
        r"\theta^{(t+1)} = \theta^{(t)} - \alpha \frac{\hat{v}}{\sqrt{\hat{s}} + \epsilon}"]
    th, v, s, g = RNG.normal(size=4), RNG.normal(size=4), RNG.uniform(size=4), RNG.normal(size=4)
    out = _step("adam", theta=th, v=v, s=s, t=np.array(3.0), g=g)
    v1, s1 = 0.9 * v + 0.1 * g, 0.999 * s + 0.001 * g * g
    close(out["theta"], th - 1e-3 * (v1 / (1 - 0.9**4)) / (np.sqrt(s1 / (1 - 0.999**4)) + 1e-8))
    close(out["t"], 4.0)


def test_case_21_rosenbrock() -> None:
    m = derive.models.get("rosenbrock")
    assert lines("rosenbrock") == [
        r"g_{\theta} = \begin{pmatrix}2 \theta_{1} - 400 \theta_{1} (\theta_{2} - \theta_{1}^{2}) - 2 \\ "
        r"200 (\theta_{2} - \theta_{1}^{2})\end{pmatrix}"]
    (h,) = derive.hessian(m, "theta")
    assert program_tex([h], model=m) == [
        r"H_{\theta} = \begin{pmatrix}1200 \theta_{1}^{2} + 2 - 400 \theta_{2} & - 400 \theta_{1} \\ "
        r"- 400 \theta_{1} & 200\end{pmatrix}"]
    t1, t2 = -1.2, 0.7
    out = numeric.compile(m, hessian=["theta"])(theta=np.array([t1, t2]))
    close(out["grad"]["theta"], [-2 * (1 - t1) - 400 * t1 * (t2 - t1**2), 200 * (t2 - t1**2)])
    close(out["hessian"]["theta"], [[2 - 400 * t2 + 1200 * t1**2, -400 * t1], [-400 * t1, 200]])


def test_case_22_autodiff_graph() -> None:
    assert lines("autodiff_example")[-1] == (
        r"g_{\theta} = \begin{pmatrix}\bar{a}_{1} \theta_{2} \\ \bar{a}_{1} \theta_{1} + \bar{a}_{2} \\ "
        r"\bar{a}_{2} - 2 \bar{a}_{3}\end{pmatrix}")
    t = np.array([0.3, -1.1, 0.4])
    out = numeric.compile(derive.models.get("autodiff_example"))(theta=t)
    c = math.cos(t[0] * t[1])
    close(out["grad"]["theta"], [t[1] * c, t[0] * c + math.exp(t[1] + t[2]), math.exp(t[1] + t[2]) - 2])


def test_cases_22_23_forward_mode() -> None:
    """Forward mode: a tangent per equation, one column per sweep (seeded with e_i); reverse mode: one sweep."""
    from derive.book import case

    assert list(case(22))[:4] == [
        r"\dot{a}_{1} = \begin{pmatrix}\theta_{2} \\ \theta_{1} \\ 0\end{pmatrix}",
        r"\dot{a}_{2} = \begin{pmatrix}0 \\ 1 \\ 1\end{pmatrix}",
        r"\dot{a}_{3} = \begin{pmatrix}0 \\ 0 \\ -2\end{pmatrix}", r"\dot{a}_{4} = \cos(a_{1}) \dot{a}_{1}"]
    assert list(case(23))[:2] == [r"\dot{z} = x", r"\dot{\hat{y}} = (\hat{y} (1 - \hat{y})) \dot{z}"]
    t = np.array([0.3, -1.1, 0.4])
    fwd = numeric.trace(derive.models.get("autodiff_example"), "forward", theta=t)
    close(fwd["a1_dot"], [t[1], t[0], 0.0])
    close(fwd["a4_dot"], math.cos(t[0] * t[1]) * np.array([t[1], t[0], 0.0]))
    X, w, b = RNG.normal(size=(4, 3)), RNG.normal(size=3), 0.2
    fwd = numeric.trace(derive.models.get("logistic_regression"), "forward", X=X, y=np.full(4, 0.3), w=w,
                        b=np.array(b))
    yh = sig(X @ w + b)
    close(fwd["z_dot"], X)  # the d = 3 columns of the three forward sweeps
    close(fwd["yhat_dot"], (yh * (1 - yh))[:, None] * X)


# -- Chapter 5 ----------------------------------------------------------------------------------------


def _mlp_numpy(P: dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray, L: int) -> tuple[float, dict[str, Any]]:
    """Model III and its backpropagation (5.24)-(5.26), written out: a^[0] = x, z = W a + b, a = sigma(z),
    delta^[L] = yhat - y, zeta^[l-1] = W^[l]^T delta^[l], delta^[l] = sigma'(z) * zeta^[l]."""
    a, zs, acts = X.T, [], [X.T]
    for l in range(1, L + 1):
        z = P[f"W{l}"] @ a + P[f"b{l}"][:, None]
        zs.append(z)
        a = sig(z) if l < L else softmax(z, axis=0)
        acts.append(a)
    n = X.shape[0]
    loss = -np.sum(Y.T * np.log(a)) / n
    grads: dict[str, Any] = {}
    delta = a - Y.T
    for l in range(L, 0, -1):
        grads[f"W{l}"] = delta @ acts[l - 1].T / n  # (1/n) Delta^[l] A^[l-1]^T
        grads[f"b{l}"] = delta.sum(1) / n
        if l > 1:
            zeta = P[f"W{l}"].T @ delta
            delta = sig(zs[l - 2]) * (1 - sig(zs[l - 2])) * zeta
    return float(loss), grads


def test_cases_24_26_27_feedforward_and_backprop() -> None:
    assert lines("mlp", part="forward")[:2] == [
        r"z^{[\ell]} = W^{[\ell]} a^{[\ell-1]} + b^{[\ell]}\qquad \ell = 1, \dots, L",
        r"a^{[\ell]} = S(z^{[\ell]})\qquad \ell = 1, \dots, L-1"]
    assert lines("mlp") == [
        r"\delta^{[L]} = \hat{y} - y",
        r"g_{W}^{[\ell]} = \delta^{[\ell]} a^{[\ell-1]\top}\qquad \ell = L, \dots, 1",
        r"g_{b}^{[\ell]} = \delta^{[\ell]}\qquad \ell = L, \dots, 1",
        r"\zeta^{[\ell-1]} = W^{[\ell]\top} \delta^{[\ell]}\qquad \ell = L, \dots, 2",
        r"\delta^{[\ell]} = \dot{S}(z^{[\ell]}) \odot \zeta^{[\ell]}\qquad \ell = L-1, \dots, 1"]
    assert lines("mlp", batch=True)[1] == (
        r"g_{W}^{[\ell]} = \frac{1}{n} \Delta^{[\ell]} A^{[\ell-1]\top},\quad A^{[\ell-1]} = \left[a^{[\ell-1](1)}, "
        r"\dots, a^{[\ell-1](n)}\right],\quad \Delta^{[\ell]} = \left[\delta^{[\ell](1)}, \dots, \delta^{[\ell](n)}\right]"
        r"\qquad \ell = L, \dots, 1")
    m = derive.models.get("mlp")
    P = {k: RNG.normal(size=s) for k, s in m.shapes().items() if k not in ("X", "Y")}
    X, Y = RNG.normal(size=(5, 3)), softmax(RNG.normal(size=(5, 3)))
    out = numeric.compile(m)(X=X, Y=Y, **P)
    loss, grads = _mlp_numpy(P, X, Y, 3)
    assert out["loss"] == pytest.approx(loss, rel=1e-12)
    for k, g in grads.items():
        close(out["grad"][k], g)


@pytest.mark.parametrize("name,golden,deriv", [
    ("sigmoid", r"\delta = \zeta \odot a \odot (1 - a)", lambda z: sig(z) * (1 - sig(z))),
    ("tanh", r"\delta = \zeta \odot (1 - a \odot a)", lambda z: 1 - np.tanh(z) ** 2),
    ("relu", r"\delta = \mathbf{1}\{z > 0\} \odot \zeta", lambda z: (z > 0).astype(float)),
    ("leaky_relu", r"\delta = (\mathbf{1}\{z > 0\} + \epsilon\,\mathbf{1}\{z \leq 0\}) \odot \zeta",
     lambda z: np.where(z > 0, 1.0, 0.01)),
    ("softplus", r"\delta = \sigma(z) \odot \zeta", sig),
])
def test_case_29_activation_derivatives(name: str, golden: str, deriv: Any) -> None:
    assert lines(name) == [golden]
    Z, G = RNG.normal(size=(3, 4)), RNG.normal(size=(3, 4))
    close(numeric.compile(derive.models.get(name))(Z=Z, G=G)["grad"]["Z"], G * deriv(Z))


def test_case_30_initialisation() -> None:
    relu, tanh = derive.models.get("mlp", activation="relu"), derive.models.get("mlp", activation="tanh")
    assert init_tex(relu)[0].startswith(r"\operatorname{Var}\left(W^{[\ell]}_{ij}\right) = \frac{2}{N_{\ell-1}}")
    assert init_tex(tanh)[0].startswith(
        r"\operatorname{Var}\left(W^{[\ell]}_{ij}\right) = \frac{2}{N_{\ell-1} + N_{\ell}}")
    from numeric import init

    assert init.variance("he", fan_in=50, fan_out=20) == pytest.approx(2 / 50)
    assert init.variance("glorot", fan_in=50, fan_out=20) == pytest.approx(2 / 70)
    w = init.sample("glorot", (400, 300), np.random.default_rng(0))
    assert abs(w.var() / (2 / 700) - 1) < 6 * math.sqrt(2 / w.size)


def test_cases_31_32_batch_norm() -> None:
    fwd = lines("batch_norm", part="forward")
    assert fwd[0] == r"\hat{\mu} = \frac{1}{n} \sum_{i=1}^{n} z^{(i)}"
    assert fwd[3:5] == [r"\bar{z}^{(i)} = \frac{z_{c}^{(i)}}{\hat{\sigma}}", r"\tilde{z}^{(i)} = \gamma \odot \bar{z}^{(i)} + \beta"]
    bwd = lines("batch_norm")
    assert bwd[:2] == [r"g_{\gamma} = \sum_{i=1}^{n} \zeta_{\tilde{z}}^{(i)} \odot \bar{z}^{(i)}",
                       r"g_{\beta} = \sum_{i=1}^{n} \zeta_{\tilde{z}}^{(i)}"]
    assert bwd[3].startswith(r"\delta^{(i)} = \frac{\zeta_{\bar{z}}^{(i)}}{\hat{\sigma}} - \frac{1}{n}")
    m = derive.models.get("batch_norm")
    Z, G, gamma, beta = RNG.normal(size=(7, 3)), RNG.normal(size=(7, 3)), RNG.normal(size=3), RNG.normal(size=3)
    out = numeric.compile(m)(Z=Z, G=G, gamma=gamma, beta=beta)
    sd = np.sqrt(Z.var(0) + 1e-5)
    zbar = (Z - Z.mean(0)) / sd
    close(out["loss"], np.sum(G * (gamma * zbar + beta)))
    close(out["grad"]["gamma"], (G * zbar).sum(0))
    close(out["grad"]["Z"], gamma / (7 * sd) * (7 * G - G.sum(0) - zbar * (G * zbar).sum(0)))  # case 32


def test_case_33_dropout() -> None:
    assert lines("dropout") == [r"\zeta = \frac{1}{p_{\mathrm{keep}}} \zeta_{\tilde{a}} \odot m"]
    A, G = RNG.normal(size=(4, 4)), RNG.normal(size=(4, 4))
    M = (RNG.uniform(size=(4, 4)) < 0.8).astype(float)
    close(numeric.compile(derive.models.get("dropout", p_keep=0.8))(A=A, M=M, G=G)["grad"]["A"], M * G / 0.8)


# -- Chapter 6 ----------------------------------------------------------------------------------------


def _correlate(x: np.ndarray, w: np.ndarray, stride: int = 1, dilation: int = 1) -> np.ndarray:
    """Valid cross-correlation of x (C, H, W) with w (O, C, k, k), the book's z_{i,j}."""
    O, C, kh, kw = w.shape
    H = (x.shape[1] - dilation * (kh - 1) - 1) // stride + 1
    W = (x.shape[2] - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((O, H, W))
    for i in range(H):
        for j in range(W):
            patch = x[:, i * stride : i * stride + dilation * (kh - 1) + 1 : dilation,
                      j * stride : j * stride + dilation * (kw - 1) + 1 : dilation]
            out[:, i, j] = np.tensordot(w, patch, axes=3)
    return out


def test_cases_34_35_convolution() -> None:
    m = derive.models.get("conv2d", kernel=(3, 3))
    assert lines("conv2d", part="forward", kernel=(3, 3))[0] == r"z = W \star x + b"
    assert lines("conv2d", kernel=(3, 3)) == [
        r"g_{W} = x \star \delta", r"g_{b} = \delta \mathbf{1}",
        r"\zeta_{x} = \operatorname{pad}_{2}(\delta) \star \operatorname{rot}_{180}(W)"]
    X, W, b = RNG.normal(size=(2, 2, 5, 6)), RNG.normal(size=(2, 2, 3, 3)), RNG.normal(size=2)
    G = RNG.normal(size=(2, 2, 3, 4))
    out = numeric.compile(m)(X=X, W=W, b=b, G=G)
    close(out["loss"], sum(np.sum(g * (_correlate(x, W) + b[:, None, None])) for x, g in zip(X, G)))
    # the kernel gradient is the correlation of the input with delta, sum_{i,j} delta_{i,j} x_{i+i',j+j'}
    gW = np.zeros_like(W)
    for x, g in zip(X, G):
        for i in range(3):
            for j in range(3):
                gW[:, :, i, j] += np.einsum("opq,cpq->oc", g, x[:, i : i + 3, j : j + 4])
    close(out["grad"]["W"], gW)
    # the input gradient the full convolution: delta padded by k - 1, correlated with the flipped kernel
    rot = W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    close(out["grad"]["X"], np.stack([_correlate(np.pad(g, ((0, 0), (2, 2), (2, 2))), rot) for g in G]))


@pytest.mark.parametrize("kernel,stride,padding,dilation", [((2, 2), 2, 0, 1), ((3, 3), 2, 1, 1), ((3, 2), 3, 1, 2),
                                                             ((2, 3), 2, 0, 2)])
def test_printed_strided_input_gradient(kernel: tuple[int, int], stride: int, padding: int, dilation: int) -> None:
    """The printed recipe pad(dil_S(delta)) star_D rot180(W), with the padding it prints, computed here
    step by step, produces the input's shape and equals the kernel's input gradient."""
    m = derive.models.get("conv2d", kernel=kernel, stride=stride, padding=padding, dilation=dilation)
    line = lines("conv2d", kernel=kernel, stride=stride, padding=padding, dilation=dilation)[-1]
    assert rf"\operatorname{{dil}}_{{{stride}}}(\delta)" in line and r"\operatorname{rot}_{180}(W)" in line
    pads = [dilation * (k - 1) - padding for k in kernel]
    assert (rf"\operatorname{{pad}}_{{{pads[0]}}}" if pads[0] == pads[1]
            else rf"\operatorname{{pad}}_{{{pads[0]},{pads[1]}}}") in line
    H, Wd = 7, 8
    sh = m.shapes(n=1, H_in=H, W_in=Wd)
    X, W, G = RNG.normal(size=sh["X"]), RNG.normal(size=sh["W"]), RNG.normal(size=sh["G"])
    out = numeric.compile(m)(X=X, W=W, b=np.zeros(sh["b"]), G=G)
    g = G[0]
    dil = np.zeros((g.shape[0], (g.shape[1] - 1) * stride + 1, (g.shape[2] - 1) * stride + 1))
    dil[:, ::stride, ::stride] = g
    r = [(d + 2 * padding - dilation * (k - 1) - 1) % stride for d, k in zip((H, Wd), kernel)]
    full = np.pad(dil, ((0, 0), (dilation * (kernel[0] - 1), dilation * (kernel[0] - 1) + r[0]),
                        (dilation * (kernel[1] - 1), dilation * (kernel[1] - 1) + r[1])))
    got = _correlate(full, W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), dilation=dilation)
    got = got[:, padding : padding + H, padding : padding + Wd]  # pad_{D(k-1)-P}: P of the D(k-1) cropped
    assert got.shape == X.shape[1:]
    close(out["grad"]["X"][0], got)


def test_case_36_pooling() -> None:
    assert lines("max_pool2d")[0].startswith(
        r"\begin{aligned}\zeta_{x} &= \mathcal{U}^{*}(\zeta \odot \mathbf{1}_{\arg\max}(\mathcal{U}(x)))")
    assert lines("avg_pool2d")[0].startswith(r"\zeta_{x} = \mathcal{U}^{*}\left(\frac{1}{4} \zeta\right)")
    X, G = RNG.normal(size=(1, 1, 4, 4)), RNG.normal(size=(1, 1, 2, 2))
    gmax = numeric.compile(derive.models.get("max_pool2d"))(X=X, G=G)["grad"]["X"][0, 0]
    gavg = numeric.compile(derive.models.get("avg_pool2d"))(X=X, G=G)["grad"]["X"][0, 0]
    for p in range(2):
        for q in range(2):
            win = X[0, 0, 2 * p : 2 * p + 2, 2 * q : 2 * q + 2]
            mask = np.zeros(4)
            mask[np.argmax(win)] = 1  # 1{(i,j) = argmax}: the gradient goes to the maximum
            close(gmax[2 * p : 2 * p + 2, 2 * q : 2 * q + 2], G[0, 0, p, q] * mask.reshape(2, 2))
            close(gavg[2 * p : 2 * p + 2, 2 * q : 2 * q + 2], np.full((2, 2), G[0, 0, p, q] / 4))  # 1/|R|


def test_case_37_residual_block() -> None:
    """Fig 6.14: a^{[l+2]} = S(z^{[l+2]} + a^{[l]}), the skip added before the activation."""
    assert lines("residual_block", part="forward")[3] == r"a^{[\ell+2]} = S(z^{[\ell+2]} + a^{[\ell]})"
    assert lines("residual_block")[-1] == r"\zeta^{[\ell]} = \delta^{[\ell+2]} + W^{[\ell+1]\top} \delta^{[\ell+1]}"
    for act, f in [("relu", lambda z: np.maximum(z, 0)), ("tanh", np.tanh)]:
        m = derive.models.get("residual_block", activation=act)
        A, G = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
        P = {"W1": RNG.normal(size=(3, 3)), "b1": RNG.normal(size=3), "W2": RNG.normal(size=(3, 3)),
             "b2": RNG.normal(size=3)}
        out = numeric.compile(m)(A=A, G=G, **P)
        a1 = f(A @ P["W1"].T + P["b1"])
        close(out["loss"], np.sum(G * f(a1 @ P["W2"].T + P["b2"] + A)))


# -- Chapter 7 ----------------------------------------------------------------------------------------


def _rnn_numpy(P: dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """(7.2), (7.4) and BPTT as case 39 writes it, for each sample, then averaged."""
    T, n, _ = X.shape
    grads = {k: np.zeros_like(v) for k, v in P.items()}
    loss = 0.0
    for i in range(n):
        hs, ys = [np.zeros(P["W_hh"].shape[0])], []
        for t in range(T):
            hs.append(np.tanh(P["W_hh"] @ hs[-1] + P["W_hx"] @ X[t, i] + P["b_h"]))
            ys.append(softmax(P["W_yh"] @ hs[-1] + P["b_y"]))
            loss -= Y[t, i] @ np.log(ys[-1]) / T / n
        carry = np.zeros_like(hs[0])  # W_hh^T delta^{<t+1>}
        for t in range(T - 1, -1, -1):
            dy = (ys[t] - Y[t, i]) / T
            zeta = P["W_yh"].T @ dy + carry
            delta = (1 - hs[t + 1] ** 2) * zeta
            grads["W_yh"] += np.outer(dy, hs[t + 1]) / n
            grads["b_y"] += dy / n
            grads["W_hh"] += np.outer(delta, hs[t]) / n
            grads["W_hx"] += np.outer(delta, X[t, i]) / n
            grads["b_h"] += delta / n
            carry = P["W_hh"].T @ delta
    return loss, grads


def test_cases_38_39_rnn_and_bptt() -> None:
    assert lines("rnn", part="forward")[:2] == [
        r"z^{\langle t\rangle} = W_{hh} h^{\langle t-1\rangle} + W_{hx} x^{\langle t\rangle} + b_{h}",
        r"h^{\langle t\rangle} = S(z^{\langle t\rangle})"]
    bwd = lines("rnn")
    assert bwd[3:6] == [
        r"\zeta^{\langle t\rangle} = W_{hh}^\top \delta^{\langle t+1\rangle} + W_{yh}^\top \delta_y^{\langle t\rangle}",
        r"\delta^{\langle t\rangle} = \dot{S}(z^{\langle t\rangle}) \odot \zeta^{\langle t\rangle}",
        r"g_{W_{hh}} = \sum_{t=1}^{T} \delta^{\langle t\rangle} h^{\langle t-1\rangle\top}"]
    assert lines("rnn", batch=True)[5].startswith(
        r"\begin{aligned}g_{W_{hh}} &= \frac{1}{n} \sum_{t=1}^{T} \Delta^{\langle t\rangle} H^{\langle t-1\rangle\top}")
    m = derive.models.get("rnn")
    assert jacobian_tex(m) == [
        r"\frac{\partial h^{\langle t+1\rangle}}{\partial h^{\langle t\rangle}} = W_{hh}^\top "
        r"\operatorname{diag}\left(\dot{S}(z^{\langle t+1\rangle})\right)"]  # (7.11)
    P = {k: RNG.normal(size=s) * 0.7 for k, s in m.shapes().items() if k not in ("X", "Y")}
    X, Y = RNG.normal(size=(4, 2, 3)), softmax(RNG.normal(size=(4, 2, 3)))
    out = numeric.compile(m)(X=X, Y=Y, **P)
    loss, grads = _rnn_numpy(P, X, Y)
    assert out["loss"] == pytest.approx(loss, rel=1e-12)
    for k, g in grads.items():
        close(out["grad"][k], g)
    # (7.11): the printed Jacobian, W_hh^T diag(sigma'(z)), against a finite difference of one step
    h, x = RNG.normal(size=3), RNG.normal(size=3)
    z = P["W_hh"] @ h + P["W_hx"] @ x + P["b_h"]
    J = np.array([(np.tanh(P["W_hh"] @ (h + 1e-6 * e) + P["W_hx"] @ x + P["b_h"])
                   - np.tanh(P["W_hh"] @ (h - 1e-6 * e) + P["W_hx"] @ x + P["b_h"])) / 2e-6 for e in np.eye(3)])
    np.testing.assert_allclose(J, P["W_hh"].T @ np.diag(1 - np.tanh(z) ** 2), rtol=1e-6, atol=1e-8)


def test_cases_40_41_lstm_gru() -> None:
    fwd = lines("lstm", part="forward")
    assert fwd[0] == r"g_{f}^{\langle t\rangle} = \sigma(W_{fh} h^{\langle t-1\rangle} + W_{fx} x^{\langle t\rangle} + b_{f})"
    assert fwd[4] == (r"c^{\langle t\rangle} = g_{f}^{\langle t\rangle} \odot c^{\langle t-1\rangle} + "
                      r"g_{i}^{\langle t\rangle} \odot \tilde{c}^{\langle t\rangle}")
    bwd = lines("lstm")
    assert r"\delta_{f}^{\langle t\rangle} = \zeta_{g_{f}}^{\langle t\rangle} \odot g_{f}^{\langle t\rangle} \odot (1 - g_{f}^{\langle t\rangle})" in bwd
    assert bwd[3] == (r"\zeta^{\langle t\rangle} = W_{\tilde{c}h}^\top \delta_{\tilde{c}}^{\langle t+1\rangle} + "
                      r"W_{oh}^\top \delta_{o}^{\langle t+1\rangle} + W_{ih}^\top \delta_{i}^{\langle t+1\rangle} + "
                      r"W_{fh}^\top \delta_{f}^{\langle t+1\rangle} + W_{yh}^\top \delta_y^{\langle t\rangle}")
    assert lines("gru", part="forward")[3] == (
        r"h^{\langle t\rangle} = g_{u}^{\langle t\rangle} \odot \tilde{h}^{\langle t\rangle} + "
        r"h^{\langle t-1\rangle} \odot (1 - g_{u}^{\langle t\rangle})")
    # (7.16)-(7.19) forward, written out, against the kernels' loss
    m = derive.models.get("gru")
    P = {k: RNG.normal(size=s) * 0.6 for k, s in m.shapes().items() if k not in ("X", "Y")}
    X, Y = RNG.normal(size=(3, 2, 3)), softmax(RNG.normal(size=(3, 2, 3)))
    loss = 0.0
    for i in range(2):
        h = np.zeros(3)
        for t in range(3):
            gr = sig(P["W_rh"] @ h + P["W_rx"] @ X[t, i] + P["b_r"])
            gu = sig(P["W_uh"] @ h + P["W_ux"] @ X[t, i] + P["b_u"])
            ht = np.tanh(P["W_hh"] @ (gr * h) + P["W_hx"] @ X[t, i] + P["b_h"])
            h = (1 - gu) * h + gu * ht
            loss -= Y[t, i] @ np.log(softmax(P["W_yh"] @ h + P["b_y"])) / 3 / 2
    assert numeric.compile(m)(X=X, Y=Y, **P)["loss"] == pytest.approx(loss, rel=1e-12)


def test_cases_42_44_attention() -> None:
    """(7.24) with time steps as columns: S = K^T Q / sqrt(d), A = S_softmax(S) per column, U = V A."""
    assert lines("attention", part="forward")[:3] == [r"S = \frac{1}{\sqrt{d}} K^\top Q",
                                                      r"A = S_{\mathrm{softmax}}(S)", r"U = V A"]
    assert lines("attention") == [
        r"\zeta_{V} = \zeta_{U} A^\top",
        r"\zeta_{S} = A \odot (V^\top \zeta_{U} - \mathbf{1}^\top (A \odot (V^\top \zeta_{U})))",
        r"\zeta_{Q} = \frac{1}{\sqrt{d}} K \zeta_{S}", r"\zeta_{K} = \frac{1}{\sqrt{d}} Q \zeta_{S}^\top"]
    m = derive.models.get("attention")
    Qa, Ka, Va, Ga = (RNG.normal(size=s) for s in (m.shapes()[k] for k in ("Q", "K", "V", "G")))
    out = numeric.compile(m)(Q=Qa, K=Ka, V=Va, G=Ga)
    for i in range(Qa.shape[0]):
        Q, K, V, Z = Qa[i].T, Ka[i].T, Va[i].T, Ga[i].T  # the book's layout: columns are time steps
        A = softmax(K.T @ Q / math.sqrt(3), axis=0)
        zS = A * (V.T @ Z - np.ones((1, A.shape[0])) @ (A * (V.T @ Z)))
        close(out["grad"]["V"][i].T, Z @ A.T)
        close(out["grad"]["Q"][i].T, K @ zS / math.sqrt(3))
        close(out["grad"]["K"][i].T, Q @ zS.T / math.sqrt(3))


def test_case_43_multihead_attention() -> None:
    assert lines("multihead_attention", part="forward") [:7] == [
        r"Q^{h} = W_{q}^{h} X", r"K^{h} = W_{k}^{h} X", r"V^{h} = W_{v}^{h} X",
        r"S^{h} = \frac{1}{\sqrt{m}} K^{h\top} Q^{h}", r"A^{h} = S_{\mathrm{softmax}}(S^{h})", r"U^{h} = V^{h} A^{h}",
        r"U_{\mathrm{MHA}} = \sum_{h=1}^{H} W_{c}^{h} U^{h}"]
    m = derive.models.get("multihead_attention")
    sh = m.shapes()
    P = {k: RNG.normal(size=sh[k]) for k in ("W_q", "W_k", "W_v", "W_o")}
    Xa, Ga = RNG.normal(size=sh["X"]), RNG.normal(size=sh["G"])
    out = numeric.compile(m)(X=Xa, G=Ga, **P)
    loss = 0.0
    for X, G in zip(Xa, Ga):
        X = X.T  # p x T
        U = sum(P["W_o"][:, h] @ (P["W_v"][h] @ X) @ softmax((P["W_k"][h] @ X).T @ (P["W_q"][h] @ X) / math.sqrt(2),
                                                             axis=0) for h in range(2))
        loss += np.sum(G.T * U)
    close(out["loss"], loss)


def test_case_45_layer_norm() -> None:
    fwd = lines("layer_norm", part="forward")
    assert fwd[:5] == [r"\mu_{z} = \frac{1}{p} \mathbf{1}^\top z", r"z_{c} = z - \mu_{z}",
                       r"\sigma_{z} = \sqrt{\frac{1}{p} \left\|z_{c}\right\|^{2} + \epsilon}",
                       r"\hat{z} = \frac{z_{c}}{\sigma_{z}}", r"\tilde{z} = \gamma \odot \hat{z} + \beta"]
    m = derive.models.get("layer_norm")
    Z, G, gamma, beta = RNG.normal(size=(4, 5)), RNG.normal(size=(4, 5)), RNG.normal(size=5), RNG.normal(size=5)
    out = numeric.compile(m)(Z=Z, G=G, gamma=gamma, beta=beta)
    for z, y, got in zip(Z, G, out["grad"]["Z"]):
        s = math.sqrt(z.var() + 1e-5)
        zn, g = (z - z.mean()) / s, gamma * y
        close(got, (5 * g - g.sum() - zn * (zn @ g)) / (5 * s))  # case 45


def test_case_46_transformer_block() -> None:
    fwd = lines("transformer_block", part="forward")
    assert r"R_{[1]} = X + U_{[1]}" in fwd and r"U_{[2]} = \gamma \odot \hat{R}_{[1]} + \beta" in fwd
    assert r"U_{[3]} = W^{[2]} A^{[1]} + b^{[2]}" in fwd
    assert r"A_{\mathrm{out}} = \tilde{\gamma} \odot \hat{R}_{[2]} + \tilde{\beta}" in fwd
    m = derive.models.get("transformer_block")
    sh = m.shapes()
    P = {k: RNG.normal(size=s) for k, s in sh.items() if k not in ("X", "G")}
    Xa, Ga = RNG.normal(size=sh["X"]), RNG.normal(size=sh["G"])
    out = numeric.compile(m)(X=Xa, G=Ga, **P)

    def ln(R: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
        return g[:, None] * (R - R.mean(0)) / np.sqrt(R.var(0) + 1e-5) + b[:, None]

    loss = 0.0
    for X, G in zip(Xa, Ga):
        X = X.T
        U1 = sum(P["W_o"][:, h] @ (P["W_v"][h] @ X) @ softmax((P["W_k"][h] @ X).T @ (P["W_q"][h] @ X) / math.sqrt(2),
                                                              axis=0) for h in range(2))
        U2 = ln(X + U1, P["gamma1"], P["beta1"])  # (7.31)
        U3 = P["W2"] @ np.maximum(P["W1"] @ U2 + P["b1"][:, None], 0) + P["b2"][:, None]
        loss += np.sum(G.T * ln(U2 + U3, P["gamma2"], P["beta2"]))
    close(out["loss"], loss)


def test_case_47_positional_encoding() -> None:
    fwd = lines("positional_encoding", part="forward")
    assert fwd[1] == r"\tilde{x}^{\langle t\rangle} = x^{\langle t\rangle} + r^{\langle t\rangle}"  # (7.30)
    assert r"r^{\langle t\rangle}_{2k} = \sin(t / M^{2k/p})" in fwd[0]
    T, p = 5, 4
    out = numeric.trace(derive.models.get("positional_encoding"), "reverse", X=np.zeros((1, T, p)),
                        G=np.ones((1, T, p)))
    r = np.broadcast_to(out["r"], (T, p))
    for t in range(1, T + 1):  # t counts from 1, as (7.29) and the figure code
        for k in range(p // 2):
            close(r[t - 1, 2 * k], math.sin(t / 1e4 ** (2 * k / p)))
            close(r[t - 1, 2 * k + 1], math.cos(t / 1e4 ** (2 * k / p)))


def test_case_55_cross_entropy() -> None:
    assert lines("softmax_regression", part="forward")[2] == r"C = - y^\top \log(\hat{y})"
    m = derive.models.get("softmax_regression")
    X, W, b = RNG.normal(size=(6, 3)), RNG.normal(size=(4, 3)), RNG.normal(size=4)
    Y = np.eye(4)[RNG.integers(0, 4, size=6)]  # one-hot: CE is -log yhat_y
    out = numeric.compile(m)(X=X, Y=Y, W=W, b=b)
    yh = softmax(X @ W.T + b)
    close(out["loss"], -np.mean(np.log(yh[np.arange(6), Y.argmax(1)])))


#: BOOK.md case -> the test above that checks it (docs/book.rst lists the same)
COVERED = {
    1: "test_case_01_least_squares", 3: "test_case_03_ridge", 4: "test_cases_04_15_gradient_descent",
    7: "test_cases_07_09_logistic_gradient", 8: "test_cases_08_19_logistic_hessian_and_newton",
    9: "test_cases_07_09_logistic_gradient", 10: "test_case_10_softmax_regression",
    11: "test_case_11_softmax_jacobian", 13: "test_case_13_shallow_autoencoder", 14: "test_case_14_momentum",
    15: "test_cases_04_15_gradient_descent", 16: "test_cases_16_17_adagrad_rmsprop",
    17: "test_cases_16_17_adagrad_rmsprop", 18: "test_case_18_adam",
    19: "test_cases_08_19_logistic_hessian_and_newton", 21: "test_case_21_rosenbrock",
    22: "test_case_22_autodiff_graph", 23: "test_cases_22_23_forward_mode", 24: "test_cases_24_26_27_feedforward_and_backprop",
    26: "test_cases_24_26_27_feedforward_and_backprop", 27: "test_cases_24_26_27_feedforward_and_backprop",
    29: "test_case_29_activation_derivatives", 30: "test_case_30_initialisation",
    31: "test_cases_31_32_batch_norm", 32: "test_cases_31_32_batch_norm", 33: "test_case_33_dropout",
    34: "test_cases_34_35_convolution", 35: "test_cases_34_35_convolution", 36: "test_case_36_pooling",
    37: "test_case_37_residual_block", 38: "test_cases_38_39_rnn_and_bptt", 39: "test_cases_38_39_rnn_and_bptt",
    40: "test_cases_40_41_lstm_gru", 41: "test_cases_40_41_lstm_gru", 42: "test_cases_42_44_attention",
    43: "test_case_43_multihead_attention", 44: "test_cases_42_44_attention", 45: "test_case_45_layer_norm",
    46: "test_case_46_transformer_block", 47: "test_case_47_positional_encoding",
    55: "test_case_55_cross_entropy",
}


def test_every_covered_case_has_its_test() -> None:
    names = set(globals())
    assert all(t in names for t in COVERED.values())
