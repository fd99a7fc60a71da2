"""Independent PyTorch reference forwards for the model zoo.

Every entry of :data:`REFERENCES` is a plain function of keyword torch tensors (the model's params and
inputs, batch-first, PyTorch layouts, named as in MODELS.md) and of the model's options (keyword, with
the zoo's defaults) that returns the scalar loss. They are written with ``torch.nn.functional`` wherever
torch has the op and never look at the symbolic derivation, so ``torch.autograd.grad`` on them is an
independent oracle for the derived and generated gradients.

Adding an entry: write a function ``name(*, <params>, <inputs>, <options>=default) -> torch.Tensor``
whose docstring's first line is the formula, and register it with :func:`_register`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

Reference = Callable[..., torch.Tensor]

REFERENCES: dict[str, Reference] = {}


def _register(*names: str) -> Callable[[Reference], Reference]:
    """Register a reference function under one or more zoo entry names.

    Args:
        *names: zoo entry names; the function's own name is used when none are given.

    Returns:
        A decorator that records the function in :data:`REFERENCES` and returns it unchanged.
    """

    def decorator(fn: Reference) -> Reference:
        keys = names or (fn.__name__,)
        for key in keys:
            if key in REFERENCES:
                raise ValueError(f"reference {key!r} registered twice")
            REFERENCES[key] = fn
        return fn

    return decorator


def reference(name: str) -> Reference:
    """REFERENCES[name], with an error that lists the known entries.

    Args:
        name: a zoo entry name, e.g. ``"softmax_regression"``.

    Returns:
        The reference forward ``f(**tensors, **options) -> scalar loss``.

    Raises:
        ValueError: if no reference is registered under ``name``.
    """
    try:
        return REFERENCES[name]
    except KeyError:
        known = ", ".join(sorted(REFERENCES))
        raise ValueError(f"no PyTorch reference for model {name!r}; known: {known}") from None


# ---------------------------------------------------------------------------------------------------
# Activations (shared by layer entries and models that take an ``activation`` option)
# ---------------------------------------------------------------------------------------------------

_ACTIVATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "sigmoid": lambda z, **_: torch.sigmoid(z),
    "tanh": lambda z, **_: torch.tanh(z),
    "relu": lambda z, **_: F.relu(z),
    "leaky_relu": lambda z, slope=0.01, **_: F.leaky_relu(z, negative_slope=slope),
    "softplus": lambda z, **_: torch.logaddexp(z, torch.zeros((), dtype=z.dtype, device=z.device)),
    "identity": lambda z, **_: z,
}


def _activation(name: str, z: torch.Tensor, **options: Any) -> torch.Tensor:
    """S(z) for the named elementwise activation.

    Args:
        name: one of ``sigmoid``, ``tanh``, ``relu``, ``leaky_relu``, ``softplus``, ``identity``.
        z: pre-activation tensor.
        **options: activation options (``slope`` for ``leaky_relu``).

    Returns:
        The activation applied elementwise.

    Raises:
        ValueError: for an unknown activation name.
    """
    try:
        fn = _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(_ACTIVATIONS))}") from None
    return fn(z, **options)


# ---------------------------------------------------------------------------------------------------
# Chapter 2: linear models
# ---------------------------------------------------------------------------------------------------


@_register()
def linear_regression(*, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """C = 1/n sum_i (y_i - x_i^T theta)^2.

    Args:
        theta: coefficients, shape (p,).
        X: design matrix, shape (n, p).
        y: responses, shape (n,).

    Returns:
        The mean squared error (scalar).
    """
    return F.mse_loss(X @ theta, y)


@_register()
def ridge_regression(
    *, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: float = 0.1
) -> torch.Tensor:
    """C = 1/n sum_i (y_i - x_i^T theta)^2 + lam ||theta||^2.

    Args:
        theta: coefficients, shape (p,).
        X: design matrix, shape (n, p).
        y: responses, shape (n,).
        lam: ridge penalty weight.

    Returns:
        The penalised mean squared error (scalar).
    """
    return F.mse_loss(X @ theta, y) + lam * torch.sum(theta * theta)


# ---------------------------------------------------------------------------------------------------
# Chapter 3: logistic and softmax regression, autoencoder
# ---------------------------------------------------------------------------------------------------


@_register("logistic_regression", "newton_logistic")
def logistic_regression(
    *, w: torch.Tensor, b: torch.Tensor, X: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """C = -1/n sum_i [y_i log sigma(z_i) + (1 - y_i) log(1 - sigma(z_i))], z = X w + b.

    Also the loss of ``newton_logistic``.

    Args:
        w: weights, shape (p,).
        b: bias, shape ().
        X: features, shape (n, p).
        y: targets in [0, 1], shape (n,).

    Returns:
        The mean binary cross-entropy with logits (scalar).
    """
    return F.binary_cross_entropy_with_logits(X @ w + b, y)


def _ce(logits: torch.Tensor, Y: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor:
    """F.cross_entropy with probability (one-hot) rows ``Y`` or integer class indices ``y`` (batch mean)."""
    if y is not None:
        return F.cross_entropy(logits, y.long())
    assert Y is not None
    return F.cross_entropy(logits, Y)


@_register()
def softmax_regression(*, W: torch.Tensor, b: torch.Tensor, X: torch.Tensor, Y: torch.Tensor | None = None,
                       y: torch.Tensor | None = None, targets: str = "probabilities") -> torch.Tensor:
    """C = -1/n sum_i sum_k Y_ik log S(W x_i + b)_k (or -1/n sum_i log S(W x_i + b)_{y_i} for labels).

    Args:
        W: weights, shape (K, p).
        b: biases, shape (K,).
        X: features, shape (n, p).
        Y: probability (or one-hot) targets, rows summing to 1, shape (n, K).
        y: integer class indices, shape (n,) (``targets="labels"``).
        targets: probabilities, one_hot or labels (which of Y, y is given).

    Returns:
        The mean cross-entropy (scalar).
    """
    return _ce(F.linear(X, W, b), Y, y)


@_register()
def shallow_autoencoder(
    *,
    W_e: torch.Tensor,
    b_e: torch.Tensor,
    W_d: torch.Tensor,
    b_d: torch.Tensor,
    X: torch.Tensor,
    activation: str = "tanh",
    slope: float = 0.01,
) -> torch.Tensor:
    """C = 1/n sum_i ||x_i - (W_d S(W_e x_i + b_e) + b_d)||^2.

    Args:
        W_e: encoder weights, shape (m, p).
        b_e: encoder biases, shape (m,).
        W_d: decoder weights, shape (p, m).
        b_d: decoder biases, shape (p,).
        X: data, shape (n, p).
        activation: encoder activation S (``tanh``, ``sigmoid``, ``relu``, ``leaky_relu``,
            ``softplus``, ``identity``); the decoder is linear.
        slope: negative slope when ``activation="leaky_relu"``.

    Returns:
        The squared reconstruction error, summed over features and averaged over samples (scalar).
    """
    code = _activation(activation, F.linear(X, W_e, b_e), slope=slope)
    x_hat = F.linear(code, W_d, b_d)
    return F.mse_loss(x_hat, X, reduction="sum") / X.shape[0]


# ---------------------------------------------------------------------------------------------------
# Chapter 4: optimisation test functions
# ---------------------------------------------------------------------------------------------------


@_register()
def rosenbrock(*, theta: torch.Tensor) -> torch.Tensor:
    """C = (1 - theta_1)^2 + 100 (theta_2 - theta_1^2)^2.

    Args:
        theta: the point, shape (2,).

    Returns:
        The Rosenbrock function value (scalar).
    """
    t1, t2 = theta[0], theta[1]
    return (1 - t1) ** 2 + 100 * (t2 - t1**2) ** 2


@_register()
def autodiff_example(*, theta: torch.Tensor) -> torch.Tensor:
    """C = sin(theta_1 theta_2) + exp(theta_2 + theta_3) - 2 theta_3.

    Args:
        theta: the point, shape (3,).

    Returns:
        The function of the book's Figure 4.7 (scalar).
    """
    t1, t2, t3 = theta[0], theta[1], theta[2]
    return torch.sin(t1 * t2) + torch.exp(t2 + t3) - 2 * t3


# ---------------------------------------------------------------------------------------------------
# Layer entries: C = sum(G * f(Z)), so the gradient in Z is the layer's vector-Jacobian product with G
# ---------------------------------------------------------------------------------------------------


def _layer_loss(out: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """C = sum(G * out).

    Args:
        out: the layer's output.
        G: upstream gradient, same shape as ``out``.

    Returns:
        The scalar probe loss whose gradient is the vector-Jacobian product with ``G``.
    """
    return torch.sum(G * out)


@_register()
def sigmoid(*, Z: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """C = sum(G * sigma(Z)), sigma(z) = 1 / (1 + e^{-z}).

    Args:
        Z: pre-activations, shape (n, N).
        G: upstream gradient, shape (n, N).

    Returns:
        The scalar probe loss.
    """
    return _layer_loss(torch.sigmoid(Z), G)


@_register()
def tanh(*, Z: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """C = sum(G * tanh(Z)).

    Args:
        Z: pre-activations, shape (n, N).
        G: upstream gradient, shape (n, N).

    Returns:
        The scalar probe loss.
    """
    return _layer_loss(torch.tanh(Z), G)


@_register()
def relu(*, Z: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """C = sum(G * max(Z, 0)).

    Args:
        Z: pre-activations, shape (n, N).
        G: upstream gradient, shape (n, N).

    Returns:
        The scalar probe loss (ReLU'(0) = 0, torch's convention).
    """
    return _layer_loss(F.relu(Z), G)


@_register()
def leaky_relu(*, Z: torch.Tensor, G: torch.Tensor, slope: float = 0.01) -> torch.Tensor:
    """C = sum(G * where(Z > 0, Z, slope Z)).

    Args:
        Z: pre-activations, shape (n, N).
        G: upstream gradient, shape (n, N).
        slope: negative slope.

    Returns:
        The scalar probe loss.
    """
    return _layer_loss(F.leaky_relu(Z, negative_slope=slope), G)


@_register()
def softplus(*, Z: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """C = sum(G * log(1 + e^Z)).

    Args:
        Z: pre-activations, shape (n, N).
        G: upstream gradient, shape (n, N).

    Returns:
        The scalar probe loss.
    """
    # exact log(1 + e^Z): F.softplus returns Z itself above its threshold (20), an approximation whose
    # error (~2e-9) would mask real disagreements at the 1e-10 tolerance
    return _layer_loss(torch.logaddexp(Z, torch.zeros((), dtype=Z.dtype, device=Z.device)), G)


@_register()
def softmax(*, Z: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """C = sum_i sum_k G_ik e^{Z_ik} / sum_j e^{Z_ij}.

    Args:
        Z: logits, shape (n, N); softmax over the last axis.
        G: upstream gradient, shape (n, N).

    Returns:
        The scalar probe loss.
    """
    return _layer_loss(F.softmax(Z, dim=-1), G)


@_register()
def log_softmax(*, Z: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """C = sum_i sum_k G_ik (Z_ik - log sum_j e^{Z_ij}).

    Args:
        Z: logits, shape (n, N); log-softmax over the last axis.
        G: upstream gradient, shape (n, N).

    Returns:
        The scalar probe loss.
    """
    return _layer_loss(F.log_softmax(Z, dim=-1), G)


@_register()
def mlp(*, X: torch.Tensor, Y: torch.Tensor | None = None, y: torch.Tensor | None = None, layers: int = 3,
        activation: str = "sigmoid", output: str = "softmax_ce", widths: Any = None,
        targets: str = "probabilities", **params: torch.Tensor) -> torch.Tensor:
    """An ``nn.Linear``-style stack: a = S(a W^T + b) for the hidden layers, then the output loss.

    Args:
        X: inputs, shape (n, N_0).
        Y: targets, shape (n, N_L): probability rows (softmax_ce), values in [0, 1] (sigmoid_bce), reals.
        layers: L, the number of affine layers; params W1..WL (N_l, N_{l-1}) and b1..bL (N_l,).
        activation: hidden activation (sigmoid, tanh, relu, leaky_relu, softplus).
        output: softmax_ce (F.cross_entropy with probability targets), sigmoid_bce
            (F.binary_cross_entropy_with_logits summed over outputs), identity_mse (||z - y||^2).
        widths: unused (sizes come from the arrays).
        y: integer class indices (n,) with ``targets="labels"`` (softmax_ce).
        targets: probabilities, one_hot or labels (which of Y, y is given).
        **params: W1, b1, ..., WL, bL.

    Returns:
        The mean loss over the batch.
    """
    a = X
    for l in range(1, layers + 1):
        z = F.linear(a, params[f"W{l}"], params[f"b{l}"])
        a = _activation(activation, z) if l < layers else z
    if output == "softmax_ce":
        return _ce(a, Y, y)
    assert Y is not None
    if output == "sigmoid_bce":
        return F.binary_cross_entropy_with_logits(a, Y, reduction="sum") / a.shape[0]
    return ((a - Y) ** 2).sum(dim=1).mean()


@_register()
def dropout(*, A: torch.Tensor, M: torch.Tensor, G: torch.Tensor, p_keep: float = 0.8) -> torch.Tensor:
    """C = sum(G * M * A / p_keep): inverted dropout with the given mask.

    Args:
        A: activations, shape (n, N).
        M: the 0/1 keep mask, shape (n, N).
        G: upstream gradient, shape (n, N).
        p_keep: keep probability.

    Returns:
        The scalar probe loss.
    """
    return _layer_loss(A * M / p_keep, G)


@_register()
def residual_block(*, W1: torch.Tensor, b1: torch.Tensor, W2: torch.Tensor, b2: torch.Tensor, A: torch.Tensor,
                   G: torch.Tensor, activation: str = "relu") -> torch.Tensor:
    """C = sum(G * S(F.linear(S(F.linear(A, W1, b1)), W2, b2) + A)), the block of Fig 6.14: the skip is added
    before the last activation, a^{[l+2]} = S(z^{[l+2]} + a^{[l]}).

    Args:
        W1, b1, W2, b2: the two dense layers (nn.Linear layout).
        A: block input, shape (n, N).
        G: upstream gradient, shape (n, N).
        activation: S.

    Returns:
        The scalar probe loss.
    """
    h = _activation(activation, F.linear(A, W1, b1))
    return _layer_loss(_activation(activation, F.linear(h, W2, b2) + A), G)


# --------------------------------------------------------------------------------------------------
# Optimizers: torch.optim trajectories
# --------------------------------------------------------------------------------------------------


def optimizer_reference(name: str, **options: Any) -> str:
    """What an update program is verified against: ``torch.optim.Adam`` (and its mapped options), or the
    hand-written torch update where ``torch.optim`` has no such convention (epsilon inside the root)."""
    cls = {"sgd": "SGD", "momentum": "SGD", "nesterov": "SGD", "adagrad": "Adagrad", "rmsprop": "RMSprop",
           "adam": "Adam", "adamw": "AdamW"}.get(name, name)
    if options.get("eps_placement", "outside") == "inside":
        return f"torch.optim.{cls}'s update with epsilon inside the square root (written out in torch)"
    extra = {"momentum": " (momentum; the book's form mapped: lr alpha (1 - beta))" if options.get("form", "book") == "book"
             else " (momentum)", "nesterov": " (nesterov=True)"}.get(name, "")
    return f"torch.optim.{cls}{extra}"


def _eps_inside(name: str, theta: torch.Tensor, grads: list[torch.Tensor], o: dict[str, Any]
                ) -> list[dict[str, torch.Tensor]]:
    """torch.optim's Adagrad, RMSprop, Adam and AdamW with epsilon inside the square root: sqrt(s + eps)
    (a common convention of from-scratch code), written out step by step in torch."""
    th = theta.clone()
    s = torch.zeros_like(th)
    v = torch.zeros_like(th)
    out = []
    for t, g in enumerate(grads, start=1):
        if name == "adagrad":
            lr, eps = o.get("lr", 0.01), o.get("eps", 1e-10)
            s = s + g * g
            th = th - lr * g / torch.sqrt(s + eps)
            out.append({"theta": th.clone(), "s": s.clone()})
        elif name == "rmsprop":
            lr, gam, eps = o.get("lr", 0.01), o.get("gamma", 0.99), o.get("eps", 1e-8)
            s = gam * s + (1 - gam) * g * g
            th = th - lr * g / torch.sqrt(s + eps)
            out.append({"theta": th.clone(), "s": s.clone()})
        else:
            lr, b1, b2, eps = o.get("lr", 1e-3), o.get("beta1", 0.9), o.get("beta2", 0.999), o.get("eps", 1e-8)
            wd = o.get("weight_decay", 0.0 if name == "adam" else 1e-2)
            if name == "adam" and wd:
                g = g + wd * th
            if name == "adamw":
                th = th * (1 - lr * wd)
            v = b1 * v + (1 - b1) * g
            s = b2 * s + (1 - b2) * g * g
            vh, sh = v / (1 - b1**t), s / (1 - b2**t)
            th = th - lr * vh / torch.sqrt(sh + eps)
            out.append({"theta": th.clone(), "v": v.clone(), "s": s.clone(),
                        "t": torch.tensor(float(t), dtype=theta.dtype)})
    return out


def optimizer_trajectory(name: str, theta: torch.Tensor, grads: list[torch.Tensor],
                         **options: Any) -> list[dict[str, torch.Tensor]]:
    """Run ``torch.optim`` for ``len(grads)`` steps from ``theta`` (zero optimizer state).

    Returns the state after each step in dlmath's names (``theta``, ``v``, ``s``, ``t``), mapped from
    torch's (``momentum_buffer``, ``exp_avg``, ``exp_avg_sq``, ``square_avg``, ``sum``, ``step``). The book's
    momentum (``v = beta v + (1 - beta) g``, ``theta -= alpha v``) is torch's SGD momentum with
    ``lr = alpha (1 - beta)``, and ``v_book = (1 - beta) v_torch``.
    """
    if options.get("eps_placement", "outside") == "inside":
        return _eps_inside(name, theta, grads, dict(options))
    p = theta.clone().detach().requires_grad_(True)
    o = options
    opt: torch.optim.Optimizer
    scale_v = 1.0
    if name == "sgd":
        opt = torch.optim.SGD([p], lr=o.get("lr", 0.01), weight_decay=o.get("weight_decay", 0.0))
    elif name == "momentum":
        beta, lr = o.get("beta", 0.9), o.get("lr", 0.01)
        if o.get("form", "book") == "book":
            opt = torch.optim.SGD([p], lr=lr * (1 - beta), momentum=beta)
            scale_v = 1 - beta
        else:
            opt = torch.optim.SGD([p], lr=lr, momentum=beta)
    elif name == "nesterov":
        opt = torch.optim.SGD([p], lr=o.get("lr", 0.01), momentum=o.get("beta", 0.9), nesterov=True)
    elif name == "adagrad":
        opt = torch.optim.Adagrad([p], lr=o.get("lr", 0.01), eps=o.get("eps", 1e-10), foreach=False)
    elif name == "rmsprop":
        opt = torch.optim.RMSprop([p], lr=o.get("lr", 0.01), alpha=o.get("gamma", 0.99), eps=o.get("eps", 1e-8),
                                  foreach=False)
    elif name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        opt = cls([p], lr=o.get("lr", 1e-3), betas=(o.get("beta1", 0.9), o.get("beta2", 0.999)),
                  eps=o.get("eps", 1e-8), weight_decay=o.get("weight_decay", 0.0 if name == "adam" else 1e-2),
                  foreach=False)
    else:
        raise ValueError(f"no torch.optim reference for {name!r}; known: {', '.join(OPTIMIZERS)}")
    out = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        st = opt.state[p]
        d: dict[str, torch.Tensor] = {"theta": p.detach().clone()}
        if "momentum_buffer" in st:
            d["v"] = st["momentum_buffer"].clone() * scale_v
        for k_t, k in (("exp_avg", "v"), ("exp_avg_sq", "s"), ("square_avg", "s"), ("sum", "s")):
            if k_t in st:
                d[k] = st[k_t].clone()
        if "step" in st and name in ("adam", "adamw"):
            d["t"] = torch.as_tensor(st["step"], dtype=theta.dtype).clone()
        out.append(d)
    return out


#: Zoo entries that are update programs, verified with :func:`optimizer_trajectory`.
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")


@_register()
def batch_norm(*, gamma: torch.Tensor, beta: torch.Tensor, Z: torch.Tensor, G: torch.Tensor,
               eps: float = 1e-5) -> torch.Tensor:
    """C = sum(G * F.batch_norm(Z, training=True)): batch statistics, biased variance.

    Args:
        gamma, beta: scale and shift, shape (N,).
        Z: pre-activations, shape (n, N).
        G: upstream gradient, shape (n, N).
        eps: added to the variance.

    Returns:
        The scalar probe loss.
    """
    out = F.batch_norm(Z, None, None, weight=gamma, bias=beta, training=True, eps=eps)
    return _layer_loss(out, G)


@_register()
def layer_norm(*, gamma: torch.Tensor, beta: torch.Tensor, Z: torch.Tensor, G: torch.Tensor,
               eps: float = 1e-5) -> torch.Tensor:
    """C = sum(G * F.layer_norm(Z, (p,), gamma, beta, eps)).

    Args:
        gamma, beta: shape (p,).
        Z: inputs, shape (n, p).
        G: upstream gradient, shape (n, p).
        eps: added to the variance.

    Returns:
        The scalar probe loss.
    """
    return _layer_loss(F.layer_norm(Z, (Z.shape[-1],), gamma, beta, eps), G)


@_register()
def attention(*, Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, G: torch.Tensor,
              causal: bool = False) -> torch.Tensor:
    """C = sum(G * F.scaled_dot_product_attention(Q, K, V, is_causal=causal)).

    Args:
        Q: queries (n, T_q, d); K: keys (n, T_k, d); V: values (n, T_k, d_v).
        G: upstream gradient (n, T_q, d_v).
        causal: mask keys after the query's position (top-left aligned).

    Returns:
        The scalar probe loss.
    """
    return _layer_loss(F.scaled_dot_product_attention(Q, K, V, is_causal=causal), G)


def _mha_module(W_q: torch.Tensor, W_k: torch.Tensor, W_v: torch.Tensor, W_o: torch.Tensor,
                heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.MultiheadAttention's packed weights from per-head ones: in_proj (3p, p), out_proj (p, p)."""
    H, m, p = W_q.shape
    in_proj = torch.cat([W_q.reshape(H * m, p), W_k.reshape(H * m, p), W_v.reshape(H * m, p)], 0)
    return in_proj, W_o.reshape(p, H * m)


def _mha(X: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor, W_v: torch.Tensor, W_o: torch.Tensor,
         heads: int, causal: bool) -> torch.Tensor:
    """nn.MultiheadAttention (bias-free, batch_first) with our weights swapped in by functional_call."""
    in_proj, out_w = _mha_module(W_q, W_k, W_v, W_o, heads)
    p, T = X.shape[-1], X.shape[-2]
    module = torch.nn.MultiheadAttention(p, heads, bias=False, batch_first=True, dtype=X.dtype, device=X.device)
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=X.device), 1) if causal else None
    state = {"in_proj_weight": in_proj, "out_proj.weight": out_w}
    out, _ = torch.func.functional_call(module, state, (X, X, X), {"need_weights": False, "attn_mask": mask})
    return out


@_register()
def multihead_attention(*, W_q: torch.Tensor, W_k: torch.Tensor, W_v: torch.Tensor, W_o: torch.Tensor,
                        X: torch.Tensor, G: torch.Tensor, heads: int = 2, causal: bool = False) -> torch.Tensor:
    """C = sum(G * MHA(X, X, X)): torch's nn.MultiheadAttention computation (bias-free), weights mapped.

    Args:
        W_q, W_k, W_v: per-head projections (H, m, p); packed as in_proj_weight (3p, p), head-major.
        W_o: output projection (p, H, m); out_proj.weight is its (p, H m) reshape.
        X: inputs (n, T, p); G: upstream gradient (n, T, p).
        heads: H; causal: mask future steps.

    Returns:
        The scalar probe loss.
    """
    return _layer_loss(_mha(X, W_q, W_k, W_v, W_o, heads, causal), G)


@_register()
def transformer_block(*, X: torch.Tensor, G: torch.Tensor, heads: int = 2, eps: float = 1e-5,
                      **params: torch.Tensor) -> torch.Tensor:
    """C = sum(G * nn.TransformerEncoderLayer(norm_first=False, activation="relu", dropout=0)(X)),
    with the layer's weights set from ours (attention bias-free, as the block of (7.31)).

    Args:
        X: inputs (n, T, p); G: upstream gradient (n, T, p).
        heads: H; eps: layer-norm epsilon.
        **params: W_q, W_k, W_v, W_o, gamma1, beta1, W1, b1, W2, b2, gamma2, beta2.

    Returns:
        The scalar probe loss.
    """
    P = params
    p = X.shape[-1]
    layer = torch.nn.TransformerEncoderLayer(p, heads, dim_feedforward=P["W1"].shape[0], dropout=0.0,
                                             activation="relu", batch_first=True, norm_first=False,
                                             layer_norm_eps=eps, bias=True, dtype=X.dtype, device=X.device)
    in_proj, out_w = _mha_module(P["W_q"], P["W_k"], P["W_v"], P["W_o"], heads)
    zero_p = torch.zeros(p, dtype=X.dtype, device=X.device)
    # functional call: our tensors (which carry autograd) replace the module's parameters
    state = {
        "self_attn.in_proj_weight": in_proj, "self_attn.in_proj_bias": torch.zeros(3 * p, dtype=X.dtype,
                                                                                     device=X.device),
        "self_attn.out_proj.weight": out_w, "self_attn.out_proj.bias": zero_p,
        "linear1.weight": P["W1"], "linear1.bias": P["b1"], "linear2.weight": P["W2"], "linear2.bias": P["b2"],
        "norm1.weight": P["gamma1"], "norm1.bias": P["beta1"], "norm2.weight": P["gamma2"], "norm2.bias": P["beta2"],
    }
    out = torch.func.functional_call(layer, state, (X,))
    return _layer_loss(out, G)


@_register()
def conv2d(*, W: torch.Tensor, b: torch.Tensor, X: torch.Tensor, G: torch.Tensor, kernel: Any = None,
           stride: int = 1, padding: int = 0, dilation: int = 1) -> torch.Tensor:
    """C = sum(G * F.conv2d(X, W, b, stride, padding, dilation)) (cross-correlation, NCHW).

    Args:
        W: kernel (C_out, C_in, k_h, k_w); b: bias (C_out,).
        X: images (n, C_in, H, W); G: upstream gradient (n, C_out, H', W').
        kernel: (k_h, k_w), implied by W.
        stride, padding, dilation: as F.conv2d.

    Returns:
        The scalar probe loss.
    """
    return _layer_loss(F.conv2d(X, W, b, stride=stride, padding=padding, dilation=dilation), G)


@_register()
def max_pool2d(*, X: torch.Tensor, G: torch.Tensor, kernel: int = 2, stride: int | None = None,
               padding: int = 0) -> torch.Tensor:
    """C = sum(G * F.max_pool2d(X, kernel, stride, padding)).

    Args:
        X: images (n, C, H, W); G: upstream gradient (n, C, H', W').
        kernel, stride, padding: as F.max_pool2d.

    Returns:
        The scalar probe loss.
    """
    return _layer_loss(F.max_pool2d(X, kernel, stride or kernel, padding), G)


@_register()
def avg_pool2d(*, X: torch.Tensor, G: torch.Tensor, kernel: int = 2, stride: int | None = None,
               padding: int = 0) -> torch.Tensor:
    """C = sum(G * F.avg_pool2d(X, kernel, stride, padding)) (zero padding counted).

    Args:
        X: images (n, C, H, W); G: upstream gradient (n, C, H', W').
        kernel, stride, padding: as F.avg_pool2d.

    Returns:
        The scalar probe loss.
    """
    return _layer_loss(F.avg_pool2d(X, kernel, stride or kernel, padding), G)


@_register()
def cnn(*, W1: torch.Tensor, b1: torch.Tensor, W2: torch.Tensor, b2: torch.Tensor, X: torch.Tensor,
        Y: torch.Tensor | None = None, y: torch.Tensor | None = None, channels: int = 2, classes: int = 3,
        targets: str = "probabilities") -> torch.Tensor:
    """F.cross_entropy(Linear(flatten(max_pool2d(relu(conv2d(X, W1, b1, padding=1)), 2))), Y).

    Args:
        W1: conv kernel (C_1, C_in, 3, 3); b1: (C_1,).
        W2: dense weight (K, C_1, H/2, W/2), flattened to nn.Linear's (K, C_1 H/2 W/2); b2: (K,).
        X: images (n, C_in, H, W); Y: probability rows (n, K); y: class indices (n,) for labels targets.
        channels, classes: C_1 and K (implied by the weights).
        targets: probabilities, one_hot or labels.

    Returns:
        The mean loss.
    """
    h = F.max_pool2d(F.relu(F.conv2d(X, W1, b1, padding=1)), 2)
    return _ce(F.linear(h.flatten(1), W2.flatten(1), b2), Y, y)


def _seq_loss(logits: list[torch.Tensor], Y: torch.Tensor | None, y: torch.Tensor | None = None) -> torch.Tensor:
    """1/T sum_t F.cross_entropy(head(h_t), Y_t) (probability rows Y (T, n, q) or labels y (T, n); mean over
    samples)."""
    return torch.stack([_ce(o, None if Y is None else Y[t], None if y is None else y[t])
                        for t, o in enumerate(logits)]).mean()


@_register()
def rnn(*, W_hh: torch.Tensor, W_hx: torch.Tensor, b_h: torch.Tensor, W_yh: torch.Tensor, b_y: torch.Tensor,
        X: torch.Tensor, Y: torch.Tensor | None = None, y: torch.Tensor | None = None, activation: str = "tanh",
        targets: str = "probabilities") -> torch.Tensor:
    """nn.RNN (weight_ih = W_hx, weight_hh = W_hh, bias_ih = b_h, bias_hh = 0) + a linear softmax head.

    Args:
        W_hh (m, m), W_hx (m, p), b_h (m,): the recurrence; W_yh (q, m), b_y (q,): the head.
        X: (T, n, p) time-major inputs; Y: (T, n, q) probability rows.
        activation: tanh or relu (nn.RNN's nonlinearity).

    Returns:
        The loss 1/T sum_t CE, averaged over samples.
    """
    state = {"weight_ih_l0": W_hx, "weight_hh_l0": W_hh, "bias_ih_l0": b_h, "bias_hh_l0": torch.zeros_like(b_h)}
    cell = torch.nn.RNN(W_hx.shape[1], W_hh.shape[0], nonlinearity=activation, dtype=X.dtype, device=X.device)
    H, _ = torch.func.functional_call(cell, state, (X,))
    return _seq_loss([F.linear(H[t], W_yh, b_y) for t in range(X.shape[0])], Y, y)


@_register()
def lstm(*, X: torch.Tensor, Y: torch.Tensor | None = None, y: torch.Tensor | None = None,
         targets: str = "probabilities", **P: torch.Tensor) -> torch.Tensor:
    """nn.LSTM with weights mapped (gate order i, f, g, o: weight_ih = [W_ix; W_fx; W_cx; W_ox]) + head.

    Args:
        X: (T, n, p); Y: (T, n, q).
        **P: W_fh, W_fx, b_f, W_ih, W_ix, b_i, W_oh, W_ox, b_o, W_ch, W_cx, b_c, W_yh, b_y.

    Returns:
        The loss 1/T sum_t CE, averaged over samples.
    """
    m = P["W_fh"].shape[0]
    state = {"weight_ih_l0": torch.cat([P["W_ix"], P["W_fx"], P["W_cx"], P["W_ox"]]),
             "weight_hh_l0": torch.cat([P["W_ih"], P["W_fh"], P["W_ch"], P["W_oh"]]),
             "bias_ih_l0": torch.cat([P["b_i"], P["b_f"], P["b_c"], P["b_o"]]),
             "bias_hh_l0": torch.zeros(4 * m, dtype=X.dtype, device=X.device)}
    cell = torch.nn.LSTM(X.shape[-1], m, dtype=X.dtype, device=X.device)
    H, _ = torch.func.functional_call(cell, state, (X,))
    return _seq_loss([F.linear(H[t], P["W_yh"], P["b_y"]) for t in range(X.shape[0])], Y, y)


@_register()
def gru(*, X: torch.Tensor, Y: torch.Tensor | None = None, y: torch.Tensor | None = None, variant: str = "book",
        targets: str = "probabilities", **P: torch.Tensor) -> torch.Tensor:
    """variant="torch": nn.GRU with weights mapped (gates r, z, n; bias_hh = 0) + head. variant="book": the
    book's equations (7.18)-(7.19), written out step by step in torch.

    Args:
        X: (T, n, p); Y: (T, n, q).
        variant: "book" or "torch".
        **P: W_rh, W_rx, b_r, W_uh, W_ux, b_u, W_hh, W_hx, b_h, W_yh, b_y.

    Returns:
        The loss 1/T sum_t CE, averaged over samples.
    """
    m = P["W_rh"].shape[0]
    T = X.shape[0]
    if variant == "torch":
        state = {"weight_ih_l0": torch.cat([P["W_rx"], P["W_ux"], P["W_hx"]]),
                 "weight_hh_l0": torch.cat([P["W_rh"], P["W_uh"], P["W_hh"]]),
                 "bias_ih_l0": torch.cat([P["b_r"], P["b_u"], P["b_h"]]),
                 "bias_hh_l0": torch.zeros(3 * m, dtype=X.dtype, device=X.device)}
        cell = torch.nn.GRU(X.shape[-1], m, dtype=X.dtype, device=X.device)
        H, _ = torch.func.functional_call(cell, state, (X,))
        hs = [H[t] for t in range(T)]
    else:
        h = torch.zeros(X.shape[1], m, dtype=X.dtype, device=X.device)
        hs = []
        for t in range(T):
            r = torch.sigmoid(F.linear(h, P["W_rh"]) + F.linear(X[t], P["W_rx"], P["b_r"]))
            u = torch.sigmoid(F.linear(h, P["W_uh"]) + F.linear(X[t], P["W_ux"], P["b_u"]))
            cand = torch.tanh(F.linear(r * h, P["W_hh"]) + F.linear(X[t], P["W_hx"], P["b_h"]))
            h = (1 - u) * h + u * cand
            hs.append(h)
    return _seq_loss([F.linear(h_t, P["W_yh"], P["b_y"]) for h_t in hs], Y, y)


def positional_table(T: int, p: int, M: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """r[t, 2k] = sin(t / M^(2k/p)), r[t, 2k+1] = cos(t / M^(2k/p)) for t = 1, ..., T (as (7.29) and the
    figure code count it; row 0 of the table is t = 1), written independently with arange."""
    pos = torch.arange(1, T + 1, dtype=dtype)[:, None]
    k = torch.arange(0, p, 2, dtype=dtype)
    angle = pos / M ** (k / p)
    r = torch.zeros(T, p, dtype=dtype)
    r[:, 0::2] = torch.sin(angle)
    r[:, 1::2] = torch.cos(angle[:, : p // 2])
    return r


@_register()
def positional_encoding(*, X: torch.Tensor, G: torch.Tensor, M: float = 10000.0) -> torch.Tensor:
    """C = sum(G * (X + r)) with the table of (7.29).

    Args:
        X: inputs (n, T, p); G: upstream gradient (n, T, p).
        M: the base (10^4 in the book).

    Returns:
        The scalar probe loss.
    """
    return _layer_loss(X + positional_table(X.shape[1], X.shape[2], M, X.dtype).to(X.device), G)


# ---------------------------------------------------------------------------------------------------
# Layer entries users reach for: dense layer, GELU/SiLU/ELU, single recurrent steps
# ---------------------------------------------------------------------------------------------------


@_register()
def linear(*, W: torch.Tensor, b: torch.Tensor, A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """C = sum(G * F.linear(A, W, b)).

    Args:
        W: (N_out, N_in); b: (N_out,); A: (n, N_in); G: upstream gradient (n, N_out).

    Returns:
        The scalar probe loss.
    """
    return _layer_loss(F.linear(A, W, b), G)


@_register()
def gelu(*, Z: torch.Tensor, G: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """C = sum(G * F.gelu(Z, approximate=approximate)).

    Args:
        Z: (n, N); G: (n, N); approximate: "none" or "tanh".

    Returns:
        The scalar probe loss.
    """
    return _layer_loss(F.gelu(Z, approximate=approximate), G)


@_register()
def silu(*, Z: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """C = sum(G * F.silu(Z)).

    Args:
        Z: (n, N); G: (n, N).

    Returns:
        The scalar probe loss.
    """
    return _layer_loss(F.silu(Z), G)


@_register()
def elu(*, Z: torch.Tensor, G: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """C = sum(G * F.elu(Z, alpha)).

    Args:
        Z: (n, N); G: (n, N); alpha: the negative-side scale.

    Returns:
        The scalar probe loss.
    """
    return _layer_loss(F.elu(Z, alpha=alpha), G)


@_register()
def rnn_cell(*, W_hh: torch.Tensor, W_hx: torch.Tensor, b_h: torch.Tensor, X: torch.Tensor, H_prev: torch.Tensor,
             G_h: torch.Tensor, activation: str = "tanh") -> torch.Tensor:
    """C = sum(G_h * nn.RNNCell(X, H_prev)) with weight_ih = W_hx, weight_hh = W_hh, bias_ih = b_h, bias_hh = 0.

    Args:
        W_hh (m, m), W_hx (m, p), b_h (m,); X (n, p); H_prev (n, m); G_h (n, m).
        activation: tanh or relu.

    Returns:
        The scalar probe loss.
    """
    cell = torch.nn.RNNCell(W_hx.shape[1], W_hh.shape[0], nonlinearity=activation, dtype=X.dtype, device=X.device)
    state = {"weight_ih": W_hx, "weight_hh": W_hh, "bias_ih": b_h, "bias_hh": torch.zeros_like(b_h)}
    return _layer_loss(torch.func.functional_call(cell, state, (X, H_prev)), G_h)


@_register()
def lstm_cell(*, X: torch.Tensor, H_prev: torch.Tensor, C_prev: torch.Tensor, G_h: torch.Tensor, G_c: torch.Tensor,
              **P: torch.Tensor) -> torch.Tensor:
    """C = sum(G_h * h) + sum(G_c * c) for (h, c) = nn.LSTMCell(X, (H_prev, C_prev)), weights mapped (gate order
    i, f, g, o; bias_hh = 0).

    Args:
        X (n, p); H_prev, C_prev, G_h, G_c (n, m).
        **P: W_fh, W_fx, b_f, W_ih, W_ix, b_i, W_oh, W_ox, b_o, W_ch, W_cx, b_c.

    Returns:
        The scalar probe loss.
    """
    m = P["W_fh"].shape[0]
    state = {"weight_ih": torch.cat([P["W_ix"], P["W_fx"], P["W_cx"], P["W_ox"]]),
             "weight_hh": torch.cat([P["W_ih"], P["W_fh"], P["W_ch"], P["W_oh"]]),
             "bias_ih": torch.cat([P["b_i"], P["b_f"], P["b_c"], P["b_o"]]),
             "bias_hh": torch.zeros(4 * m, dtype=X.dtype, device=X.device)}
    cell = torch.nn.LSTMCell(X.shape[-1], m, dtype=X.dtype, device=X.device)
    h, c = torch.func.functional_call(cell, state, (X, (H_prev, C_prev)))
    return _layer_loss(h, G_h) + _layer_loss(c, G_c)


@_register()
def gru_cell(*, X: torch.Tensor, H_prev: torch.Tensor, G_h: torch.Tensor, variant: str = "book",
             **P: torch.Tensor) -> torch.Tensor:
    """variant="torch": C = sum(G_h * nn.GRUCell(X, H_prev)) with weights mapped (gates r, z, n; bias_hh = 0);
    variant="book": the book's step (7.18)-(7.19) written out in torch.

    Args:
        X (n, p); H_prev, G_h (n, m); variant: "book" or "torch".
        **P: W_rh, W_rx, b_r, W_uh, W_ux, b_u, W_hh, W_hx, b_h.

    Returns:
        The scalar probe loss.
    """
    m = P["W_rh"].shape[0]
    if variant == "torch":
        state = {"weight_ih": torch.cat([P["W_rx"], P["W_ux"], P["W_hx"]]),
                 "weight_hh": torch.cat([P["W_rh"], P["W_uh"], P["W_hh"]]),
                 "bias_ih": torch.cat([P["b_r"], P["b_u"], P["b_h"]]),
                 "bias_hh": torch.zeros(3 * m, dtype=X.dtype, device=X.device)}
        cell = torch.nn.GRUCell(X.shape[-1], m, dtype=X.dtype, device=X.device)
        return _layer_loss(torch.func.functional_call(cell, state, (X, H_prev)), G_h)
    h = H_prev
    r = torch.sigmoid(F.linear(h, P["W_rh"]) + F.linear(X, P["W_rx"], P["b_r"]))
    u = torch.sigmoid(F.linear(h, P["W_uh"]) + F.linear(X, P["W_ux"], P["b_u"]))
    cand = torch.tanh(F.linear(r * h, P["W_hh"]) + F.linear(X, P["W_hx"], P["b_h"]))
    return _layer_loss((1 - u) * h + u * cand, G_h)


from . import references_ch8  # noqa: E402,F401,I001  (Chapter 8 and Appendix B register themselves)
from . import references_seq  # noqa: E402,F401  (seq2seq, decoder_block, birnn, stacked_rnn)
