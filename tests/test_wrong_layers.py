"""verify.check rejects planted bugs in hand-written batch-norm backward and Adam, and accepts correct
versions written differently (loops, other algebra)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import derive
import verify

Impl = Callable[..., dict[str, Any]]


def _bn(drop_mean_term: bool = False, drop_var_term: bool = False, eps_outside: bool = False) -> Impl:
    def f(gamma: np.ndarray, beta: np.ndarray, Z: np.ndarray, G: np.ndarray) -> dict[str, Any]:
        n = Z.shape[0]
        mu = Z.mean(0)
        var = ((Z - mu) ** 2).mean(0)
        sd = np.sqrt(var) + 1e-5 if eps_outside else np.sqrt(var + 1e-5)
        zbar = (Z - mu) / sd
        out = gamma * zbar + beta
        g = G * gamma
        # the three-term form: gamma / (n sigma) [n g - sum g - zbar sum(g zbar)]
        dZ = n * g
        if not drop_mean_term:
            dZ = dZ - g.sum(0)
        if not drop_var_term:
            dZ = dZ - zbar * (g * zbar).sum(0)
        dZ = dZ / (n * sd)
        return {"loss": float((G * out).sum()), "grad": {"gamma": (G * zbar).sum(0), "beta": G.sum(0), "Z": dZ}}

    return f


def _bn_loops(gamma: np.ndarray, beta: np.ndarray, Z: np.ndarray, G: np.ndarray) -> dict[str, Any]:
    """Batch norm backward by the chain rule through mu and sigma^2, one column at a time."""
    n, N = Z.shape
    dZ, dgamma, dbeta, loss = np.zeros_like(Z), np.zeros(N), np.zeros(N), 0.0
    for j in range(N):
        z = Z[:, j]
        mu = sum(z) / n
        var = sum((zi - mu) ** 2 for zi in z) / n
        s = (var + 1e-5) ** 0.5
        zbar = [(zi - mu) / s for zi in z]
        loss += sum(G[i, j] * (gamma[j] * zbar[i] + beta[j]) for i in range(n))
        dzbar = [G[i, j] * gamma[j] for i in range(n)]
        dvar = sum(dzbar[i] * (z[i] - mu) for i in range(n)) * (-0.5) * s**-3
        dmu = -sum(dzbar) / s + dvar * sum(-2 * (zi - mu) for zi in z) / n
        for i in range(n):
            dZ[i, j] = dzbar[i] / s + dvar * 2 * (z[i] - mu) / n + dmu / n
        dgamma[j] = sum(G[i, j] * zbar[i] for i in range(n))
        dbeta[j] = sum(G[:, j])
    return {"loss": loss, "grad": {"gamma": dgamma, "beta": dbeta, "Z": dZ}}


def _adam(bias_correction: bool = True, eps_inside: bool = False, lr: float = 1e-3) -> Impl:
    def f(theta: np.ndarray, v: np.ndarray, s: np.ndarray, t: np.ndarray, g: np.ndarray) -> dict[str, Any]:
        t1 = t + 1
        v1 = 0.9 * v + 0.1 * g
        s1 = 0.999 * s + 0.001 * g * g
        vh, sh = (v1 / (1 - 0.9**t1), s1 / (1 - 0.999**t1)) if bias_correction else (v1, s1)
        denom = np.sqrt(sh + 1e-8) if eps_inside else np.sqrt(sh) + 1e-8
        return {"theta": theta - lr * vh / denom, "v": v1, "s": s1, "t": t1}

    return f


def _adam_loops(theta: np.ndarray, v: np.ndarray, s: np.ndarray, t: np.ndarray, g: np.ndarray) -> dict[str, Any]:
    """Adam written with a step size alpha_t = alpha sqrt(1 - b2^t) / (1 - b1^t) and eps rescaled, per entry."""
    t1 = float(t) + 1
    out_t, out_v, out_s = np.empty_like(theta), np.empty_like(v), np.empty_like(s)
    for i in range(theta.size):
        out_v[i] = 0.9 * v[i] + (1 - 0.9) * g[i]
        out_s[i] = 0.999 * s[i] + (1 - 0.999) * g[i] ** 2
        c2 = (1 - 0.999**t1) ** 0.5
        step = 1e-3 / (1 - 0.9**t1) * c2
        out_t[i] = theta[i] - step * out_v[i] / (out_s[i] ** 0.5 + 1e-8 * c2)
    return {"theta": out_t, "v": out_v, "s": out_s, "t": np.asarray(t1)}


WRONG = [
    ("batch_norm", _bn(drop_mean_term=True), "gradient Z"),
    ("batch_norm", _bn(drop_var_term=True), "gradient Z"),
    ("batch_norm", _bn(eps_outside=True), None),
    ("adam", _adam(bias_correction=False), "state theta"),
    ("adam", _adam(eps_inside=True), "state theta"),
    ("adam", _adam(lr=1e-2), "state theta"),
]


@pytest.mark.parametrize("name,impl,names", WRONG, ids=[
    "bn-no-mean-term", "bn-no-variance-term", "bn-eps-outside-sqrt", "adam-no-bias-correction",
    "adam-eps-inside-sqrt", "adam-wrong-lr"])
def test_wrong_is_rejected(name: str, impl: Impl, names: str | None) -> None:
    with pytest.raises(verify.Mismatch) as ei:
        verify.check(derive.models.get(name), implementation=impl, backend="numpy", examples=15)
    assert name in str(ei.value)
    if names:
        assert names in str(ei.value)


@pytest.mark.parametrize("name,impl", [("batch_norm", _bn()), ("batch_norm", _bn_loops), ("adam", _adam()),
                                       ("adam", _adam_loops)],
                         ids=["bn-three-term", "bn-loops", "adam", "adam-rescaled-loops"])
def test_correct_is_accepted(name: str, impl: Impl) -> None:
    report = verify.check(derive.models.get(name), implementation=impl, backend="numpy", examples=15)
    assert report.examples == 15


@pytest.mark.parametrize("layers", [1, 2, 4])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "leaky_relu", "softplus"])
@pytest.mark.parametrize("output", ["softmax_ce", "sigmoid_bce", "identity_mse"])
def test_mlp_options_verify(layers: int, activation: str, output: str) -> None:
    m = derive.models.get("mlp", layers=layers, activation=activation, output=output)
    verify.check(m, examples=4, derandomize=True)
