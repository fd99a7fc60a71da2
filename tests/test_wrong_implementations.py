"""The verifier rejects plausible hand-written bugs and accepts correct hand-written layers.

Every implementation below is a user's "hand-written layer" in NumPy: ``f(**arrays) -> {"loss", "grad"}``.
The wrong ones each carry one typical bug (sign flip, missing transpose, missing 1/n, wrong softmax axis,
missing factor 2, unsummed bias gradient, missing rank-one term, ...); ``verify.check`` must raise
``verify.Mismatch`` naming the model and the parameter that is wrong. The correct ones are written
differently from the vectorised textbook form (explicit loops over samples and classes, explicit
per-sample Jacobians, equivalent algebra) and must pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

import derive
import verify

Array = np.ndarray
Impl = Callable[..., dict[str, Any]]

EXAMPLES = 8


# ---------------------------------------------------------------------------------------------------
# Small numerically stable helpers (the bugs below are never numerical: they differ only by the bug)
# ---------------------------------------------------------------------------------------------------


def _softmax(Z: Array, axis: int) -> Array:
    E = np.exp(Z - Z.max(axis=axis, keepdims=True))
    return E / E.sum(axis=axis, keepdims=True)


def _log_softmax(Z: Array, axis: int) -> Array:
    M = Z.max(axis=axis, keepdims=True)
    return Z - M - np.log(np.exp(Z - M).sum(axis=axis, keepdims=True))


def _sigmoid(z: Array) -> Array:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _bce_with_logits(z: Array, y: Array) -> float:
    # -[y log s + (1-y) log(1-s)] = log(1 + e^z) - y z
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _out(loss: Any, **grad: Any) -> dict[str, Any]:
    return {"loss": float(loss), "grad": grad}


# ---------------------------------------------------------------------------------------------------
# softmax_regression: W (K,p), b (K), X (n,p), Y (n,K); C = -1/n sum_i sum_k Y_ik log S(W x_i + b)_k
# ---------------------------------------------------------------------------------------------------


def softmax_regression_loops(*, W: Array, b: Array, X: Array, Y: Array) -> dict[str, Any]:
    """Correct: explicit loops over samples, classes and features; dC/dz_k = sum(y) s_k - y_k."""
    n, p = X.shape
    K = W.shape[0]
    loss = 0.0
    gW = np.zeros((K, p))
    gb = np.zeros(K)
    for i in range(n):
        z = [b[k] + sum(W[k, j] * X[i, j] for j in range(p)) for k in range(K)]
        zmax = max(z)
        e = [np.exp(zk - zmax) for zk in z]
        total = sum(e)
        log_total = np.log(total)
        y_sum = sum(Y[i, k] for k in range(K))
        for k in range(K):
            loss -= Y[i, k] * (z[k] - zmax - log_total) / n
            dz = (y_sum * e[k] / total - Y[i, k]) / n
            gb[k] += dz
            for j in range(p):
                gW[k, j] += dz * X[i, j]
    return _out(loss, W=gW, b=gb)


def _softmax_regression_forward(W: Array, b: Array, X: Array, Y: Array) -> tuple[float, Array]:
    Z = X @ W.T + b
    loss = -np.sum(Y * _log_softmax(Z, axis=1)) / X.shape[0]
    return float(loss), _softmax(Z, axis=1) - Y


def softmax_regression_sign_flip(*, W: Array, b: Array, X: Array, Y: Array) -> dict[str, Any]:
    """Wrong: delta = Y - S instead of S - Y, in W only."""
    n = X.shape[0]
    loss, delta = _softmax_regression_forward(W, b, X, Y)
    return _out(loss, W=(-delta).T @ X / n, b=delta.sum(axis=0) / n)


def softmax_regression_missing_transpose(*, W: Array, b: Array, X: Array, Y: Array) -> dict[str, Any]:
    """Wrong: X^T delta is (p,K); it is reshaped (not transposed) to W's (K,p) shape.

    The shape is right, so a shape check alone would not catch it; the values differ from
    delta^T X whenever p > 1 and K > 1 (for K == p it is the transpose of the right matrix).
    """
    n = X.shape[0]
    loss, delta = _softmax_regression_forward(W, b, X, Y)
    gW = (X.T @ delta / n).reshape(W.shape)
    return _out(loss, W=gW, b=delta.sum(axis=0) / n)


def softmax_regression_missing_mean(*, W: Array, b: Array, X: Array, Y: Array) -> dict[str, Any]:
    """Wrong: the gradient of W sums over the batch instead of averaging (missing 1/n)."""
    n = X.shape[0]
    loss, delta = _softmax_regression_forward(W, b, X, Y)
    return _out(loss, W=delta.T @ X, b=delta.sum(axis=0) / n)


def softmax_regression_wrong_axis(*, W: Array, b: Array, X: Array, Y: Array) -> dict[str, Any]:
    """Wrong: softmax normalised over the batch axis (axis=0) instead of the classes (axis=1)."""
    n = X.shape[0]
    Z = X @ W.T + b
    loss = -np.sum(Y * _log_softmax(Z, axis=0)) / n
    delta = _softmax(Z, axis=0) - Y
    return _out(loss, W=delta.T @ X / n, b=delta.sum(axis=0) / n)


# ---------------------------------------------------------------------------------------------------
# linear_regression / ridge_regression: theta (p), X (n,p), y (n)
# ---------------------------------------------------------------------------------------------------


def linear_regression_loops(*, theta: Array, X: Array, y: Array) -> dict[str, Any]:
    """Correct: loop over samples; C_i = r_i^2, dC_i/dtheta = -2 r_i x_i."""
    n, p = X.shape
    loss = 0.0
    g = np.zeros(p)
    for i in range(n):
        r = y[i] - sum(X[i, j] * theta[j] for j in range(p))
        loss += r * r / n
        for j in range(p):
            g[j] -= 2.0 * r * X[i, j] / n
    return _out(loss, theta=g)


def linear_regression_missing_two(*, theta: Array, X: Array, y: Array) -> dict[str, Any]:
    """Wrong: d/dtheta (y - X theta)^2 taken as -(y - X theta) x, the factor 2 forgotten."""
    r = y - X @ theta
    return _out(np.mean(r**2), theta=-X.T @ r / X.shape[0])


def ridge_regression_normal_form(lam: float = 0.1) -> Impl:
    """Correct: gradient in normal-equation form 2/n (X^T X theta - X^T y) + 2 lam theta."""

    def f(*, theta: Array, X: Array, y: Array) -> dict[str, Any]:
        n = X.shape[0]
        r = y - X @ theta
        grad = 2.0 / n * (X.T @ X @ theta - X.T @ y) + 2.0 * lam * theta
        return _out(r @ r / n + lam * theta @ theta, theta=grad)

    return f


def ridge_regression_half_penalty(lam: float = 0.1) -> Impl:
    """Wrong: the book-figure convention lam/2 ||theta||^2 used where the model has lam ||theta||^2."""

    def f(*, theta: Array, X: Array, y: Array) -> dict[str, Any]:
        n = X.shape[0]
        r = y - X @ theta
        return _out(r @ r / n + lam * theta @ theta, theta=-2.0 / n * X.T @ r + lam * theta)

    return f


# ---------------------------------------------------------------------------------------------------
# logistic_regression: w (p), b (), X (n,p), y (n)
# ---------------------------------------------------------------------------------------------------


def logistic_regression_einsum(*, w: Array, b: Array, X: Array, y: Array) -> dict[str, Any]:
    """Correct: loss as mean(log(1+e^z) - y z), sigmoid through tanh, contractions with einsum."""
    z = np.einsum("ij,j->i", X, w) + b
    r = _sigmoid(z) - y
    n = X.shape[0]
    return _out(_bce_with_logits(z, y), w=np.einsum("i,ij->j", r, X) / n, b=np.asarray(r.sum() / n))


def logistic_regression_unsummed_bias(*, w: Array, b: Array, X: Array, y: Array) -> dict[str, Any]:
    """Wrong: the gradient of b is left per-sample, shape (n,), instead of summed to shape ()."""
    z = X @ w + b
    r = _sigmoid(z) - y
    n = X.shape[0]
    return _out(_bce_with_logits(z, y), w=X.T @ r / n, b=r / n)


def logistic_regression_missing_mean(*, w: Array, b: Array, X: Array, y: Array) -> dict[str, Any]:
    """Wrong: gradient of w is X^T (sigmoid(z) - y), without the 1/n of the mean loss."""
    z = X @ w + b
    r = _sigmoid(z) - y
    n = X.shape[0]
    return _out(_bce_with_logits(z, y), w=X.T @ r, b=np.asarray(r.sum() / n))


# ---------------------------------------------------------------------------------------------------
# Layer entries: Z (n,N), G (n,N), C = sum(G * f(Z)); grad is the VJP in Z
# ---------------------------------------------------------------------------------------------------


def softmax_layer_jacobian(*, Z: Array, G: Array) -> dict[str, Any]:
    """Correct: per row, the explicit Jacobian J = diag(s) - s s^T, and grad = J^T g."""
    n, N = Z.shape
    loss = 0.0
    gZ = np.zeros_like(Z)
    for i in range(n):
        s = _softmax(Z[i], axis=0)
        J = np.array([[s[a] * ((1.0 if a == c else 0.0) - s[c]) for c in range(N)] for a in range(N)])
        loss += float(G[i] @ s)
        gZ[i] = J.T @ G[i]
    return _out(loss, Z=gZ)


def softmax_layer_missing_rank_one(*, Z: Array, G: Array) -> dict[str, Any]:
    """Wrong: backward returns G * s, forgetting the - s (s . g) term."""
    S = _softmax(Z, axis=1)
    return _out(np.sum(G * S), Z=G * S)


def log_softmax_layer_jacobian(*, Z: Array, G: Array) -> dict[str, Any]:
    """Correct: per row, the explicit Jacobian J = I - 1 s^T, and grad = J^T g."""
    n, N = Z.shape
    loss = 0.0
    gZ = np.zeros_like(Z)
    for i in range(n):
        s = _softmax(Z[i], axis=0)
        J = np.eye(N) - np.outer(np.ones(N), s)
        loss += float(G[i] @ _log_softmax(Z[i], axis=0))
        gZ[i] = J.T @ G[i]
    return _out(loss, Z=gZ)


def log_softmax_layer_missing_softmax_term(*, Z: Array, G: Array) -> dict[str, Any]:
    """Wrong: backward treats log_softmax as the identity, returning G (no - s sum(g) term)."""
    return _out(np.sum(G * _log_softmax(Z, axis=1)), Z=G.copy())


def leaky_relu_layer_loops(slope: float = 0.01) -> Impl:
    """Correct: elementwise loop; derivative 1 for z > 0 and slope otherwise (torch's choice at 0)."""

    def f(*, Z: Array, G: Array) -> dict[str, Any]:
        loss = 0.0
        gZ = np.zeros_like(Z)
        for idx in np.ndindex(*Z.shape):
            z = Z[idx]
            loss += G[idx] * (z if z > 0 else slope * z)
            gZ[idx] = G[idx] * (1.0 if z > 0 else slope)
        return _out(loss, Z=gZ)

    return f


def leaky_relu_layer_wrong_side(slope: float = 0.01) -> Impl:
    """Wrong: the backward applies the slope to the positive side and 1 to the negative side."""

    def f(*, Z: Array, G: Array) -> dict[str, Any]:
        out = np.where(Z > 0, Z, slope * Z)
        return _out(np.sum(G * out), Z=G * np.where(Z > 0, slope, 1.0))

    return f


# ---------------------------------------------------------------------------------------------------
# shallow_autoencoder: W_e (m,p), b_e (m), W_d (p,m), b_d (p), X (n,p); C = 1/n sum_i ||x_i - x_hat_i||^2
# ---------------------------------------------------------------------------------------------------

_ACT: dict[str, tuple[Callable[[Array], Array], Callable[[Array], Array]]] = {
    # activation -> (S(z), S'(z) written in terms of a = S(z))
    "tanh": (np.tanh, lambda a: 1.0 - a * a),
    "sigmoid": (_sigmoid, lambda a: a * (1.0 - a)),
}


def shallow_autoencoder_loops(activation: str = "tanh") -> Impl:
    """Correct: per-sample backprop with outer products."""
    act, dact = _ACT[activation]

    def f(*, W_e: Array, b_e: Array, W_d: Array, b_d: Array, X: Array) -> dict[str, Any]:
        n = X.shape[0]
        loss = 0.0
        g = {"W_e": np.zeros_like(W_e), "b_e": np.zeros_like(b_e)}
        g |= {"W_d": np.zeros_like(W_d), "b_d": np.zeros_like(b_d)}
        for i in range(n):
            x = X[i]
            a = act(W_e @ x + b_e)
            r = W_d @ a + b_d - x
            loss += float(r @ r) / n
            d_out = 2.0 * r / n
            g["W_d"] += np.outer(d_out, a)
            g["b_d"] += d_out
            d_z = (W_d.T @ d_out) * dact(a)
            g["W_e"] += np.outer(d_z, x)
            g["b_e"] += d_z
        return _out(loss, **g)

    return f


def shallow_autoencoder_missing_tanh_prime(
    *, W_e: Array, b_e: Array, W_d: Array, b_d: Array, X: Array
) -> dict[str, Any]:
    """Wrong: the encoder delta is W_d^T delta_out, with tanh'(z) forgotten."""
    n = X.shape[0]
    A = np.tanh(X @ W_e.T + b_e)
    R = A @ W_d.T + b_d - X
    D_out = 2.0 * R / n
    D_z = D_out @ W_d  # should be multiplied by (1 - A**2)
    return _out(np.sum(R * R) / n, W_e=D_z.T @ X, b_e=D_z.sum(axis=0), W_d=D_out.T @ A, b_d=D_out.sum(axis=0))


# ---------------------------------------------------------------------------------------------------
# Chapter 4 test functions: theta (2) / theta (3), no inputs
# ---------------------------------------------------------------------------------------------------


def rosenbrock_closed_form(*, theta: Array) -> dict[str, Any]:
    """Correct: the textbook closed form."""
    t1, t2 = float(theta[0]), float(theta[1])
    u = t2 - t1 * t1
    return _out((1 - t1) ** 2 + 100 * u * u, theta=np.array([-2 * (1 - t1) - 400 * t1 * u, 200 * u]))


def autodiff_example_closed_form(*, theta: Array) -> dict[str, Any]:
    """Correct: the partial derivatives of sin(t1 t2) + exp(t2 + t3) - 2 t3."""
    t1, t2, t3 = (float(t) for t in theta)
    c, e = np.cos(t1 * t2), np.exp(t2 + t3)
    return _out(np.sin(t1 * t2) + e - 2 * t3, theta=np.array([t2 * c, t1 * c + e, e - 2]))


# ---------------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    model: str
    impl: Impl
    options: dict[str, Any] = field(default_factory=dict)
    wrong: tuple[str, ...] = ()  # for a wrong case: the names, one of which the message must name


WRONG = [
    Case("softmax_regression-sign_flip", "softmax_regression", softmax_regression_sign_flip, wrong=("W",)),
    Case(
        "softmax_regression-missing_transpose",
        "softmax_regression",
        softmax_regression_missing_transpose,
        wrong=("W",),
    ),
    Case(
        "softmax_regression-missing_mean", "softmax_regression", softmax_regression_missing_mean, wrong=("W",)
    ),
    Case(
        "softmax_regression-wrong_axis",
        "softmax_regression",
        softmax_regression_wrong_axis,
        wrong=("loss", "W", "b"),
    ),
    Case(
        "linear_regression-missing_two", "linear_regression", linear_regression_missing_two, wrong=("theta",)
    ),
    Case(
        "ridge_regression-half_penalty",
        "ridge_regression",
        ridge_regression_half_penalty(0.5),
        {"lam": 0.5},
        wrong=("theta",),
    ),
    Case(
        "logistic_regression-unsummed_bias",
        "logistic_regression",
        logistic_regression_unsummed_bias,
        wrong=("b",),
    ),
    Case(
        "logistic_regression-missing_mean",
        "logistic_regression",
        logistic_regression_missing_mean,
        wrong=("w",),
    ),
    Case("softmax-missing_rank_one", "softmax", softmax_layer_missing_rank_one, wrong=("Z",)),
    Case(
        "log_softmax-missing_softmax_term",
        "log_softmax",
        log_softmax_layer_missing_softmax_term,
        wrong=("Z",),
    ),
    Case("leaky_relu-wrong_side", "leaky_relu", leaky_relu_layer_wrong_side(), wrong=("Z",)),
    Case(
        "leaky_relu-wrong_side-slope0.2",
        "leaky_relu",
        leaky_relu_layer_wrong_side(0.2),
        {"slope": 0.2},
        wrong=("Z",),
    ),
    # a correct layer run against a model with another option value: the options must reach the check
    Case(
        "leaky_relu-default_slope_vs_0.2",
        "leaky_relu",
        leaky_relu_layer_loops(0.01),
        {"slope": 0.2},
        wrong=("loss", "Z"),
    ),
    Case(
        "shallow_autoencoder-missing_tanh_prime",
        "shallow_autoencoder",
        shallow_autoencoder_missing_tanh_prime,
        wrong=("W_e", "b_e"),
    ),
]

CORRECT = [
    Case("softmax_regression-loops", "softmax_regression", softmax_regression_loops),
    Case("linear_regression-loops", "linear_regression", linear_regression_loops),
    Case("ridge_regression-normal_form", "ridge_regression", ridge_regression_normal_form()),
    Case(
        "ridge_regression-normal_form-lam0.5",
        "ridge_regression",
        ridge_regression_normal_form(0.5),
        {"lam": 0.5},
    ),
    Case("logistic_regression-einsum", "logistic_regression", logistic_regression_einsum),
    Case("softmax-jacobian", "softmax", softmax_layer_jacobian),
    Case("log_softmax-jacobian", "log_softmax", log_softmax_layer_jacobian),
    Case("leaky_relu-loops", "leaky_relu", leaky_relu_layer_loops()),
    Case("leaky_relu-loops-slope0.2", "leaky_relu", leaky_relu_layer_loops(0.2), {"slope": 0.2}),
    Case("shallow_autoencoder-loops", "shallow_autoencoder", shallow_autoencoder_loops()),
    Case(
        "shallow_autoencoder-loops-sigmoid",
        "shallow_autoencoder",
        shallow_autoencoder_loops("sigmoid"),
        {"activation": "sigmoid"},
    ),
    Case("rosenbrock-closed_form", "rosenbrock", rosenbrock_closed_form),
    Case("autodiff_example-closed_form", "autodiff_example", autodiff_example_closed_form),
]


def _names(message: str, name: str) -> bool:
    """Whether ``message`` mentions ``name`` as a whole identifier (so "W" does not match "W_e")."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message) is not None


def _recording(impl: Impl, calls: list[dict[str, Any]]) -> Impl:
    """Wrap ``impl`` so every call's keyword arguments are recorded (checked after verify.check)."""

    def f(**arrays: Any) -> dict[str, Any]:
        calls.append(arrays)
        return impl(**arrays)

    return f


@pytest.mark.parametrize("case", WRONG, ids=[c.id for c in WRONG])
def test_wrong_implementation_is_rejected(case: Case) -> None:
    m = derive.models.get(case.model, **case.options)
    with pytest.raises(verify.Mismatch) as excinfo:
        verify.check(m, implementation=case.impl, backend="numpy", examples=EXAMPLES)
    assert isinstance(excinfo.value, AssertionError)
    message = str(excinfo.value)
    assert case.model in message, f"Mismatch message does not name the model {case.model!r}:\n{message}"
    assert any(_names(message, name) for name in case.wrong), (
        f"Mismatch message names none of {case.wrong}:\n{message}"
    )


@pytest.mark.parametrize("case", CORRECT, ids=[c.id for c in CORRECT])
def test_correct_implementation_is_accepted(case: Case) -> None:
    m = derive.models.get(case.model, **case.options)
    calls: list[dict[str, Any]] = []
    verify.check(m, implementation=_recording(case.impl, calls), backend="numpy", examples=EXAMPLES)
    assert calls, "the implementation was never called"
    expected = set(m.params) | set(m.inputs)
    for arrays in calls:
        assert set(arrays) == expected
        for name, a in arrays.items():
            # a 0-d parameter (logistic b) may come as a NumPy scalar
            assert isinstance(a, (np.ndarray, np.floating)), (name, type(a))
            assert a.dtype == np.float64, (name, a.dtype)


# ---------------------------------------------------------------------------------------------------
# backend="torch": the implementation receives torch tensors and may return torch tensors
# ---------------------------------------------------------------------------------------------------


def softmax_regression_torch(
    *, W: torch.Tensor, b: torch.Tensor, X: torch.Tensor, Y: torch.Tensor
) -> dict[str, Any]:
    """Correct, in torch ops without autograd: dC/dZ = (sum(y) S - Y) / n."""
    n = X.shape[0]
    Z = X @ W.T + b
    M = Z.max(dim=1, keepdim=True).values
    log_S = Z - M - torch.log(torch.exp(Z - M).sum(dim=1, keepdim=True))
    delta = (Y.sum(dim=1, keepdim=True) * torch.exp(log_S) - Y) / n
    return {"loss": -(Y * log_S).sum() / n, "grad": {"W": delta.T @ X, "b": delta.sum(dim=0)}}


def softmax_regression_torch_sign_flip(
    *, W: torch.Tensor, b: torch.Tensor, X: torch.Tensor, Y: torch.Tensor
) -> dict[str, Any]:
    """Wrong, in torch: the bias gradient has its sign flipped."""
    out = softmax_regression_torch(W=W, b=b, X=X, Y=Y)
    out["grad"]["b"] = -out["grad"]["b"]
    return out


def test_torch_backend_passes_and_returns_tensors() -> None:
    m = derive.models.get("softmax_regression")
    calls: list[dict[str, Any]] = []
    verify.check(
        m, implementation=_recording(softmax_regression_torch, calls), backend="torch", examples=EXAMPLES
    )
    assert calls, "the implementation was never called"
    for arrays in calls:
        assert set(arrays) == {"W", "b", "X", "Y"}
        for name, t in arrays.items():
            assert isinstance(t, torch.Tensor), (name, type(t))


def test_torch_backend_rejects_wrong_implementation() -> None:
    m = derive.models.get("softmax_regression")
    with pytest.raises(verify.Mismatch) as excinfo:
        verify.check(m, implementation=softmax_regression_torch_sign_flip, backend="torch", examples=EXAMPLES)
    message = str(excinfo.value)
    assert "softmax_regression" in message
    assert _names(message, "b"), message


# ---------------------------------------------------------------------------------------------------
# The hand-written correct implementations agree with the independent torch references (no engine needed)
# ---------------------------------------------------------------------------------------------------


def _ref_shapes(model: str) -> dict[str, tuple[int, ...]]:
    n, p, K, m, N = 5, 3, 4, 2, 4
    shapes: dict[str, dict[str, tuple[int, ...]]] = {
        "softmax_regression": {"W": (K, p), "b": (K,), "X": (n, p), "Y": (n, K)},
        "linear_regression": {"theta": (p,), "X": (n, p), "y": (n,)},
        "ridge_regression": {"theta": (p,), "X": (n, p), "y": (n,)},
        "logistic_regression": {"w": (p,), "b": (), "X": (n, p), "y": (n,)},
        "softmax": {"Z": (n, N), "G": (n, N)},
        "log_softmax": {"Z": (n, N), "G": (n, N)},
        "leaky_relu": {"Z": (n, N), "G": (n, N)},
        "shallow_autoencoder": {"W_e": (m, p), "b_e": (m,), "W_d": (p, m), "b_d": (p,), "X": (n, p)},
        "rosenbrock": {"theta": (2,)},
        "autodiff_example": {"theta": (3,)},
    }
    return shapes[model]


_NOT_DIFFERENTIATED = {"X", "y", "Y", "G"}


@pytest.mark.parametrize("case", CORRECT + WRONG, ids=[c.id for c in CORRECT + WRONG])
def test_hand_written_against_torch_reference(case: Case) -> None:
    """Sanity of the test data itself: correct cases match autograd on verify.references, wrong ones don't."""
    from verify.references import reference

    rng = np.random.default_rng(0)
    arrays = {k: rng.standard_normal(s) for k, s in _ref_shapes(case.model).items()}
    if "Y" in arrays:
        arrays["Y"] = _softmax(arrays["Y"], axis=1)
    if case.model == "logistic_regression":
        arrays["y"] = rng.uniform(size=arrays["y"].shape)
    tensors = {
        k: torch.tensor(v, dtype=torch.float64, requires_grad=k not in _NOT_DIFFERENTIATED)
        for k, v in arrays.items()
    }
    loss = reference(case.model)(**tensors, **case.options)
    diff = [k for k in tensors if k not in _NOT_DIFFERENTIATED]
    grads = dict(zip(diff, torch.autograd.grad(loss, [tensors[k] for k in diff])))
    out = case.impl(**arrays)
    agree = [bool(np.isclose(out["loss"], loss.item(), rtol=1e-10, atol=1e-12))]
    for k in diff:
        got, want = np.asarray(out["grad"][k]), grads[k].numpy()
        agree.append(got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-10, atol=1e-12)))
    assert all(agree) == (not case.wrong), dict(zip(["loss", *diff], agree))
