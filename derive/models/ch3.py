"""Chapter 3, simple neural networks: logistic and softmax regression, the shallow autoencoder, and the
softmax layers (§3.2, §3.3, §3.5)."""

from __future__ import annotations

from ..nn import activation as act
from ..nn import dot, log, log_softmax, norm2, sigmoid, softmax
from ..program import Builder, Model
from . import register


def _logistic(name: str, title: str, section: str, newton: bool) -> Model:
    b = Builder(name, title, section)
    # Newton needs a nonsingular Hessian X~^T D X~: more samples than parameters
    b.samples("n", 10, 8, 14) if newton else b.samples("n", 6, 1, 8)
    p = b.dim("p", 3, 1, 4 if newton else 5)
    w = b.param("w", (p,), "w")
    bias = b.param("b", (), "b")
    x = b.input("X", (p,), "x", batched=True)
    y = b.input("y", (), "y", batched=True, domain="unit")
    z = b.eq("z", dot(w, x) + bias, "z", adjoint=("delta", r"\delta"))
    yhat = b.eq("yhat", sigmoid(z), r"\hat{y}")
    b.eq("C", -(y * log(yhat) + (1 - y) * log(1 - yhat)), r"C")
    return b.model(hessian=("w", "b"), newton=newton)


@register("logistic_regression", "§3.2", "logistic regression with binary cross entropy")
def logistic_regression() -> Model:
    r"""Logistic regression, yhat = sigma(b + w^T x), C = 1/n sum CE_binary(y, yhat)."""
    return _logistic("logistic_regression", "logistic regression with binary cross entropy", "§3.2", False)


@register("softmax_regression", "§3.3", "multinomial regression with categorical cross entropy")
def softmax_regression(targets: str = "probabilities") -> Model:
    r"""Softmax regression, yhat = S_softmax(W x + b), C = 1/n sum CE(y, yhat); dC/dz = yhat - y.

    Args:
        targets: "probabilities" (Y (n, K) rows on the simplex, the default), "one_hot" (the same Y, drawn
            one-hot) or "labels" (integer class indices y (n,); C = -log yhat_y).
    """
    from ._targets import check_targets, cross_entropy, target_input

    targets = check_targets("softmax_regression", targets)
    b = Builder("softmax_regression", "multinomial regression with categorical cross entropy", "§3.3",
                {"targets": targets} if targets != "probabilities" else None)
    b.samples("n", 6, 1, 8)
    p = b.dim("p", 3, 1, 5)
    K = b.dim("K", 4, 2, 5)
    W = b.param("W", (K, p), "W")
    bias = b.param("b", (K,), "b")
    x = b.input("X", (p,), "x", batched=True)
    y = target_input(b, targets, K)
    z = b.eq("z", W @ x + bias, "z", adjoint=("delta", r"\delta"))
    yhat = b.eq("yhat", softmax(z), r"\hat{y}")
    b.eq("C", cross_entropy(y, yhat), "C")
    return b.model()


@register("shallow_autoencoder", "§3.5", "shallow autoencoder with a linear decoder")
def shallow_autoencoder(activation: str = "tanh") -> Model:
    r"""Shallow autoencoder x -> S_e(W_e x + b_e) -> W_d xtilde + b_d, C = 1/n sum ||x - xhat||^2."""
    b = Builder("shallow_autoencoder", "shallow autoencoder with a linear decoder", "§3.5",
                {"activation": activation})
    b.samples("n", 5, 1, 6)
    p = b.dim("p", 4, 1, 5)
    m = b.dim("m", 2, 1, 4)
    W_e = b.param("W_e", (m, p), "W_e")
    b_e = b.param("b_e", (m,), "b_e")
    W_d = b.param("W_d", (p, m), "W_d")
    b_d = b.param("b_d", (p,), "b_d")
    x = b.input("X", (p,), "x", batched=True)
    z_e = b.eq("z_e", W_e @ x + b_e, "z_e", adjoint=("delta_e", r"\delta_e"))
    xt = b.eq("xtilde", act(activation, z_e), r"\tilde{x}")
    xh = b.eq("xhat", W_d @ xt + b_d, r"\hat{x}", adjoint=("delta_d", r"\delta_d"))
    b.eq("C", norm2(x - xh), "C")
    # no "large" mode: inputs of a few hundred saturate the encoder, where 1 - tanh^2 is decided by the
    # rounding of tanh itself (a reconstruction loss has no logits for that mode to stress)
    return b.model(kinks=activation in ("relu", "leaky_relu"), hard=())


def _layer(name: str, title: str, section: str, fn_name: str, **opts: object) -> Model:
    b = Builder(name, title, section, opts)
    b.samples("n", 4, 1, 6)
    N = b.dim("N", 4, 1, 6)
    z = b.input("Z", (N,), "z", batched=True, adjoint=("g_Z", r"\delta"))
    G = b.input("G", (N,), r"\zeta", batched=True)
    if fn_name == "softmax":
        out = softmax(z)
    elif fn_name == "log_softmax":
        out = log_softmax(z)
    elif fn_name == "leaky_relu":  # the slope is a hyperparameter: a symbol in the equations (the book's epsilon)
        out = act(fn_name, z, b.const("slope", opts.get("slope", 0.01), r"\epsilon"))  # type: ignore[arg-type]
    else:
        out = act(fn_name, z)
    a = b.eq("a", out, "a")
    b.eq("C", dot(G, a), "C")
    return b.model(reduction="sum", diff_inputs=("Z",), kinks=fn_name in ("relu", "leaky_relu"))


@register("softmax", "§3.3", "softmax layer")
def softmax_layer() -> Model:
    r"""Softmax layer a = S_softmax(z); its vector-Jacobian product is a (zeta - a^T zeta)."""
    return _layer("softmax", "softmax layer", "§3.3", "softmax")


@register("log_softmax", "§3.3", "log-softmax layer")
def log_softmax_layer() -> Model:
    r"""Log-softmax layer a = z - LSE(z); its vector-Jacobian product is zeta - S(z) 1^T zeta."""
    return _layer("log_softmax", "log-softmax layer", "§3.3", "log_softmax")
