"""Chapter 5, feedforward deep networks: the activation layers of §5.3 (sigmoid, tanh, ReLU, leaky ReLU,
softplus), each as a layer entry with loss C = sum(G * S(Z))."""

from __future__ import annotations

from typing import Any

from ..program import Model
from . import register
from .ch3 import _layer


@register("sigmoid", "§5.3", "sigmoid activation layer")
def sigmoid_layer() -> Model:
    r"""Sigmoid layer a = sigma(z); delta = zeta * a (1 - a)."""
    return _layer("sigmoid", "sigmoid activation layer", "§5.3", "sigmoid")


@register("tanh", "§5.3", "tanh activation layer")
def tanh_layer() -> Model:
    r"""Tanh layer a = tanh(z); delta = zeta * (1 - a^2)."""
    return _layer("tanh", "tanh activation layer", "§5.3", "tanh")


@register("relu", "§5.3", "ReLU activation layer")
def relu_layer() -> Model:
    r"""ReLU layer a = max(0, z); delta = zeta * 1{z > 0}."""
    return _layer("relu", "ReLU activation layer", "§5.3", "relu")


@register("leaky_relu", "§5.3", "leaky ReLU activation layer")
def leaky_relu_layer(slope: float = 0.01) -> Model:
    r"""Leaky ReLU layer a = max(s z, z); delta = zeta * (1{z > 0} + s 1{z <= 0})."""
    return _layer("leaky_relu", "leaky ReLU activation layer", "§5.3", "leaky_relu", slope=slope)


@register("softplus", "§5.3", "softplus activation layer")
def softplus_layer() -> Model:
    r"""Softplus layer a = log(1 + e^z); delta = zeta * sigma(z)."""
    return _layer("softplus", "softplus activation layer", "§5.3", "softplus")


def _smooth_layer(name: str, title: str, fn: Any, opts: dict[str, Any], kinks: bool = False,
                  consts: tuple[tuple[str, float, str], ...] = ()) -> Model:
    """A layer entry a = f(z), C = sum(G * a), with ``fn(z_arg, *const_symbols)`` the scalar function."""
    from ..nn import dot
    from ..program import Builder
    from ..tensor import map_

    b = Builder(name, title, "§5.3", opts)
    b.samples("n", 4, 1, 6)
    N = b.dim("N", 4, 1, 6)
    z = b.input("Z", (N,), "z", batched=True, adjoint=("g_Z", r"\delta"))
    G = b.input("G", (N,), r"\zeta", batched=True)
    cs = [b.const(c, v, tex) for c, v, tex in consts]
    a = b.eq("a", map_(fn(ARG0, *cs), [z]), "a")
    b.eq("C", dot(G, a), "C")
    return b.model(reduction="sum", diff_inputs=("Z",), kinks=kinks)


@register("gelu", "§5.3", "GELU activation layer")
def gelu_layer(approximate: str = "none") -> Model:
    r"""GELU layer a = z Phi(z) = z (1 + erf(z / sqrt 2)) / 2 (``approximate="none"``), or its tanh form
    z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) / 2 (``approximate="tanh"``), as F.gelu.

    Args:
        approximate: "none" (the exact erf form) or "tanh".
    """
    import sympy as sp

    from ..program import ModelError

    if approximate not in ("none", "tanh"):
        raise ModelError(f"gelu approximate {approximate!r} is unknown; choose 'none' or 'tanh'")
    if approximate == "none":
        def fn(x: Any) -> Any:
            return x * (1 + sp.erf(x / sp.sqrt(2))) / 2
    else:
        def fn(x: Any) -> Any:
            return x * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (x + sp.Float(0.044715) * x**3))) / 2
    return _smooth_layer("gelu", "GELU activation layer", fn,
                         {"approximate": approximate} if approximate != "none" else {})


@register("silu", "§5.3", "SiLU (swish) activation layer")
def silu_layer() -> Model:
    r"""SiLU layer a = z sigma(z); delta = zeta * sigma(z) (1 + z (1 - sigma(z)))."""
    from ..functions import sigmoid as sig

    return _smooth_layer("silu", "SiLU (swish) activation layer", lambda x: x * sig(x), {})


@register("elu", "§5.3", "ELU activation layer")
def elu_layer(alpha: float = 1.0) -> Model:
    r"""ELU layer a = z for z > 0, alpha (e^z - 1) otherwise (F.elu; its derivative at 0 is alpha, as PyTorch).

    Args:
        alpha: the negative-side scale.
    """
    from ..functions import step
    from ..program import ModelError

    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise ModelError(f"elu alpha must be a number, got {alpha!r}")

    def fn(x: Any, al: Any) -> Any:
        import sympy as sp

        pos, neg = step(x), 1 - step(x)
        # indicators rather than cases (the book's form, and printable everywhere); the exponential only of
        # the non-positive part z (1 - 1{z > 0}): no overflow on the side not taken
        return x * pos + al * (sp.exp(x * neg) - 1) * neg

    return _smooth_layer("elu", "ELU activation layer", fn, {"alpha": alpha}, kinks=True,
                         consts=(("alpha", float(alpha), r"\alpha"),))


@register("linear", "§5.1", "dense (affine) layer")
def linear() -> Model:
    r"""Dense layer z = W a + b (F.linear: W (N_out, N_in), arrays batch-first); a layer entry with
    C = sum(G * z), so its gradients are g_W = delta a^T, g_b = delta, g_A = W^T delta with delta = G."""
    from ..nn import dot
    from ..program import Builder

    b = Builder("linear", "dense (affine) layer", "§5.1")
    b.samples("n", 4, 1, 6)
    Ni = b.dim("N_in", 3, 1, 5)
    No = b.dim("N_out", 2, 1, 5)
    W = b.param("W", (No, Ni), "W")
    bias = b.param("b", (No,), "b")
    a = b.input("A", (Ni,), "a", batched=True, adjoint=("g_A", r"\zeta_{a}"))
    G = b.input("G", (No,), r"\delta", batched=True)
    z = b.eq("z", W @ a + bias, "z")
    b.eq("C", dot(G, z), "C")
    return b.model(reduction="sum", diff_inputs=("A",))


_OUTPUTS = ("softmax_ce", "sigmoid_bce", "identity_mse")


@register("mlp", "§5.1-5.4", "feedforward network (any depth, activation and output loss)")
def mlp(layers: int = 3, widths: tuple[int, ...] | None = None, activation: str = "sigmoid",
        output: str = "softmax_ce", targets: str = "probabilities") -> Model:
    r"""Feedforward network z^{[l]} = W^{[l]} a^{[l-1]} + b^{[l]}, a^{[l]} = S(z^{[l]}), with an output loss.

    Args:
        layers: L >= 1, the number of affine layers.
        widths: default sizes N_0, ..., N_L (L + 1 numbers).
        activation: S for the hidden layers: sigmoid, tanh, relu, leaky_relu, softplus.
        output: softmax_ce (softmax and categorical cross entropy), sigmoid_bce (sigmoid and binary cross
            entropy summed over outputs) or identity_mse (squared error ||yhat - y||^2).
        targets: with softmax_ce, "probabilities" (Y (n, N_L) rows on the simplex, the default), "one_hot"
            (the same Y, drawn one-hot) or "labels" (integer class indices y (n,); C = -log yhat_y).
    """
    from ..functions import named_activation
    from ..nn import log, norm2, sigmoid, softmax
    from ..program import Builder, ModelError
    from ..tensor import map_
    from ._targets import check_targets, cross_entropy, target_input

    if not isinstance(layers, int) or layers < 1:
        raise ModelError(f"mlp needs layers >= 1, got {layers!r}")
    if output not in _OUTPUTS:
        raise ModelError(f"mlp output {output!r} is unknown; choose one of: {', '.join(_OUTPUTS)}")
    acts = ("sigmoid", "tanh", "relu", "leaky_relu", "softplus")
    if activation not in acts:
        raise ModelError(f"mlp activation {activation!r} is unknown; choose one of: {', '.join(acts)}")
    targets = check_targets("mlp", targets)
    if targets != "probabilities" and output != "softmax_ce":
        raise ModelError(f"mlp targets={targets!r} needs output='softmax_ce' (categorical targets), got "
                         f"output={output!r}")
    L = layers
    if widths is None:
        widths = tuple([3] + [4] * (L - 1) + [3])
    widths = tuple(widths)
    if len(widths) != L + 1 or any(not isinstance(w, int) or w < 1 for w in widths):
        raise ModelError(f"mlp with layers={L} needs widths of L + 1 = {L + 1} positive integers, got {widths!r}")
    b = Builder("mlp", f"feedforward network, {L} layers, {activation} hidden, {output} output", "§5.1-5.4",
                {"layers": L, "widths": widths, "activation": activation, "output": output,
                 **({"targets": targets} if targets != "probabilities" else {})})
    b.samples("n", 5, 1, 6)
    N = [b.dim(f"N{l}", widths[l], 1, 4, tex=f"N_{l}") for l in range(L + 1)]
    S = named_activation(activation)
    a = b.input("X", (N[0],), "a^{[0]}", batched=True)
    domain = {"softmax_ce": "simplex", "sigmoid_bce": "unit", "identity_mse": "real"}[output]
    y = (target_input(b, targets, N[L]) if output == "softmax_ce" else
         b.input("Y", (N[L],), "y", batched=True, domain=domain))
    Ws = [b.param(f"W{l}", (N[l], N[l - 1]), f"W^{{[{l}]}}") for l in range(1, L + 1)]
    bs = [b.param(f"b{l}", (N[l],), f"b^{{[{l}]}}") for l in range(1, L + 1)]
    for l in range(1, L + 1):
        z = b.eq(f"z{l}", Ws[l - 1] @ a + bs[l - 1], f"z^{{[{l}]}}", adjoint=(f"delta{l}", rf"\delta^{{[{l}]}}"))
        if l < L:
            a = b.eq(f"a{l}", map_(S(ARG0), [z]), f"a^{{[{l}]}}", adjoint=(f"zeta{l}", rf"\zeta^{{[{l}]}}"))
    if output == "softmax_ce":
        yhat = b.eq("yhat", softmax(z), r"\hat{y}")
        b.eq("C", cross_entropy(y, yhat), "C")
    elif output == "sigmoid_bce":
        yhat = b.eq("yhat", sigmoid(z), r"\hat{y}")
        from ..tensor import sum_

        b.eq("C", -sum_(y * log(yhat) + (1 - y) * log(1 - yhat)), "C")
    else:
        b.eq("C", norm2(z - y), "C")
    return b.model(kinks=activation in ("relu", "leaky_relu"))


from ..tensor import ARG as _ARG  # noqa: E402

ARG0 = _ARG[0]


@register("dropout", "§5.7", "inverted dropout with a given mask")
def dropout(p_keep: float = 0.8) -> Model:
    r"""Inverted dropout with a given Bernoulli mask: a~ = m * a / p_keep; its backward is m * zeta / p_keep."""
    from ..nn import dot
    from ..program import Builder, ModelError

    if not 0 < p_keep <= 1:
        raise ModelError(f"dropout needs 0 < p_keep <= 1, got {p_keep!r}")
    b = Builder("dropout", "inverted dropout with a given mask", "§5.7", {"p_keep": p_keep})
    b.samples("n", 4, 1, 6)
    N = b.dim("N", 4, 1, 6)
    a = b.input("A", (N,), "a", batched=True, adjoint=("g_A", r"\zeta"))
    mask = b.input("M", (N,), "m", batched=True, domain="mask")
    G = b.input("G", (N,), r"\zeta_{\tilde{a}}", batched=True)
    pk = b.const("p_keep", p_keep, r"p_{\mathrm{keep}}")
    at = b.eq("a_tilde", mask * a / pk, r"\tilde{a}")
    b.eq("C", dot(G, at), "C")
    return b.model(reduction="sum", diff_inputs=("A",))


@register("residual_block", "§6.5", "residual (skip) connection around two dense layers")
def residual_block(activation: str = "relu") -> Model:
    r"""Residual block of Fig 6.14: a^{[l+2]} = S(z^{[l+2]} + a^{[l]}), z^{[l+2]} = W^{[l+2]} S(W^{[l+1]} a^{[l]} +
    b^{[l+1]}) + b^{[l+2]}: the skip is added before the last activation."""
    from ..functions import named_activation
    from ..nn import dot
    from ..program import Builder
    from ..tensor import map_

    b = Builder("residual_block", "residual (skip) connection around two dense layers", "§6.5",
                {"activation": activation})
    b.samples("n", 4, 1, 6)
    N = b.dim("N", 3, 1, 5)
    S = named_activation(activation)
    W1 = b.param("W1", (N, N), r"W^{[\ell+1]}")
    b1 = b.param("b1", (N,), r"b^{[\ell+1]}")
    W2 = b.param("W2", (N, N), r"W^{[\ell+2]}")
    b2 = b.param("b2", (N,), r"b^{[\ell+2]}")
    a = b.input("A", (N,), r"a^{[\ell]}", batched=True, adjoint=("g_A", r"\zeta^{[\ell]}"))
    G = b.input("G", (N,), r"\zeta^{[\ell+2]}", batched=True)
    z1 = b.eq("z1", W1 @ a + b1, r"z^{[\ell+1]}", adjoint=("delta1", r"\delta^{[\ell+1]}"))
    a1 = b.eq("a1", map_(S(ARG0), [z1]), r"a^{[\ell+1]}", adjoint=("zeta1", r"\zeta^{[\ell+1]}"))
    z2 = b.eq("z2", W2 @ a1 + b2, r"z^{[\ell+2]}")
    # the skip sum is named once (forward and backward share it) and printed as itself
    skip = b.eq("z2_skip", z2 + a, r"z^{[\ell+2]} + a^{[\ell]}", adjoint=("delta2", r"\delta^{[\ell+2]}"))
    out = b.eq("a_out", map_(S(ARG0), [skip]), r"a^{[\ell+2]}")
    b.eq("C", dot(G, out), "C")
    return b.model(reduction="sum", diff_inputs=("A",), kinks=activation in ("relu", "leaky_relu"))


@register("batch_norm", "§5.6", "batch normalization (training-mode statistics)")
def batch_norm(eps: float = 1e-5) -> Model:
    r"""Batch normalization in training mode: per neuron over the batch, zbar = (z - mu) / sqrt(sigma^2 + eps),
    ztilde = gamma * zbar + beta; a layer entry with loss sum(G * ztilde)."""
    from ..nn import mean, sqrt, sum_
    from ..program import Builder

    b = Builder("batch_norm", "batch normalization (training-mode statistics)", "§5.6", {"eps": eps})
    n = b.dim("n", 5, 2, 6)
    N = b.dim("N", 3, 1, 4)
    ep = b.const("epsilon", eps)
    gamma = b.param("gamma", (N,), r"\gamma")
    beta = b.param("beta", (N,), r"\beta")
    # printed per sample as the book writes it (z^{(i)}, sums over the batch as sum_i): the arrays are (n, N)
    b.notation["index"] = {n: "(i)"}
    Z = b.input("Z", (n, N), "z", adjoint=("g_Z", r"\delta"), domain="moderate")  # squared: checked finite
    G = b.input("G", (n, N), r"\zeta_{\tilde{z}}")
    mu = b.eq("mu", mean(Z, 0), r"\hat{\mu}")
    zc = b.eq("zc", Z - mu, r"z_{c}", adjoint="inline")
    sd = b.eq("sigma", sqrt(mean(zc**2, 0) + ep), r"\hat{\sigma}")
    zbar = b.eq("zbar", zc / sd, r"\bar{z}", adjoint=("zbar_bar", r"\zeta_{\bar{z}}"))
    zt = b.eq("ztilde", gamma * zbar + beta, r"\tilde{z}")
    b.eq("C", sum_(G * zt), "C")
    return b.model(reduction="sum", diff_inputs=("Z",))
