"""Chapter 7, sequence models: layer normalization, scaled dot-product and multi-head attention, and the
post-LN transformer block (eq. 7.31)."""

from __future__ import annotations

import sympy as sp

from ..functions import named_activation
from ..nn import dot, einsum, mean, softmax, sqrt, sum_  # noqa: F401
from ..program import Builder, Model
from ..tensor import ARG, CausalMask, Node, Var, map_
from . import register


def _layer_norm(b: Builder, z: Node, gamma: Var, beta: Var, eps: sp.Symbol, tag: str,
                names: tuple[str, str, str, str, str, str]) -> Var:
    """z -> gamma * (z - mu) / sqrt(sigma^2 + eps) + beta over the last axis (written per vector).

    ``names`` is the LaTeX of (the input, its mean, the centred input, the deviation, the normalised input,
    the output): normalised values carry a hat, never an adjoint's symbol.
    """
    tz, tmu, tc, tsd, that, tout = names
    if not isinstance(z, Var):
        z = b.eq(f"r{tag}", z, tz)
    mu = b.eq(f"mu{tag}", mean(z, -1), tmu)
    zc = b.eq(f"zc{tag}", z - mu if z.ndim == 1 else z - _spread_last(mu, z), tc, adjoint="inline")
    sd = b.eq(f"sigma{tag}", sqrt(mean(zc**2, -1) + eps), tsd)
    zhat = b.eq(f"zbar{tag}", zc / sd if z.ndim == 1 else zc / _spread_last(sd, z), that)
    return b.eq(f"ln{tag}", gamma * zhat + beta, tout)


def _spread_last(x: Node, like: Node) -> Node:
    """Broadcast ``x`` (``like`` without its last axis) along the last axis."""
    labels = tuple(range(like.ndim))
    return einsum([labels[:-1]], labels, [x], dims=dict(zip(labels, like.shape)))


@register("layer_norm", "§7.5", "layer normalization")
def layer_norm(eps: float = 1e-5) -> Model:
    r"""Layer normalization (7.31): LN(z) = gamma * (z - mu_z) / sqrt(sigma_z^2 + eps) + beta, per sample."""
    b = Builder("layer_norm", "layer normalization", "§7.5", {"eps": eps})
    b.samples("n", 4, 1, 6)
    p = b.dim("p", 4, 1, 6)
    ep = b.const("epsilon", eps)
    gamma = b.param("gamma", (p,), r"\gamma")
    beta = b.param("beta", (p,), r"\beta")
    # moderate: its squares are summed (the variance); the kernels check they stay finite
    z = b.input("Z", (p,), "z", batched=True, adjoint=("g_Z", r"\delta"), domain="moderate")
    G = b.input("G", (p,), r"\zeta_{\tilde{z}}", batched=True)
    out = _layer_norm(b, z, gamma, beta, ep, "", ("z", r"\mu_{z}", r"z_{c}", r"\sigma_{z}", r"\hat{z}", r"\tilde{z}"))
    b.eq("C", dot(G, out), "C")
    return b.model(reduction="sum", diff_inputs=("Z",))


def _attention(b: Builder, Q: Node, K: Node, V: Node, d: sp.Expr, causal: bool, tag: str = "") -> Var:
    """softmax(Q K^T / sqrt(d) [+ causal mask]) V for one sample (rows are time steps)."""
    Tq, Tk = Q.shape[-2], K.shape[-2]
    lead = tuple(range(Q.ndim - 2))
    q, k, v, t, s = (len(lead) + i for i in range(5))
    dims = dict(zip(lead + (q, t, k, v), Q.shape[:-2] + (Tq, d, Tk, V.shape[-1])))
    S = einsum([lead + (q, t), lead + (k, t)], lead + (q, k), [Q, K], dims=dims, coef=1 / sp.sqrt(d))
    if causal:
        S = S + CausalMask(Tq, Tk)
    scores = b.eq(f"S{tag}", S, "S")  # a head axis prints as the superscript h (the model's notation)
    A = b.eq(f"A{tag}", softmax(scores, -1), "A")
    U = einsum([lead + (q, k), lead + (k, v)], lead + (q, v), [A, V], dims=dims)
    del s
    return b.eq(f"U{tag}", U, "U")


@register("attention", "§7.4", "scaled dot-product attention (optionally causal)")
def attention(causal: bool = False) -> Model:
    r"""Scaled dot-product attention (7.20)-(7.22): U = S_softmax(Q K^T / sqrt(d)) V, rows softmaxed."""
    b = Builder("attention", "scaled dot-product attention" + (" with a causal mask" if causal else ""), "§7.4",
                {"causal": causal})
    b.samples("n", 3, 1, 4)
    Tq = b.dim("T_q", 3, 1, 5)
    Tk = b.dim("T_k", 4, 1, 5)
    d = b.dim("d", 3, 1, 4)
    dv = b.dim("d_v", 2, 1, 4)
    # the book's matrix form (7.24): time steps are columns, Q in R^{d x T_q}, U = V S_softmax(K^T Q / sqrt(d))
    b.notation["columns"] = (Tq, Tk)
    Q = b.input("Q", (Tq, d), "Q", batched=True, adjoint=("g_Q", r"\zeta_{Q}"))
    K = b.input("K", (Tk, d), "K", batched=True, adjoint=("g_K", r"\zeta_{K}"))
    V = b.input("V", (Tk, dv), "V", batched=True, adjoint=("g_V", r"\zeta_{V}"))
    G = b.input("G", (Tq, dv), r"\zeta_{U}", batched=True)
    U = _attention(b, Q, K, V, d, causal)
    b.eq("C", sum_(G * U), "C")
    return b.model(reduction="sum", diff_inputs=("Q", "K", "V"))



def _feed_forward(b: Builder, x: Node, T: sp.Expr, p: sp.Expr, N1: sp.Expr, hidden: str, hidden_tex: str) -> Var:
    r"""The position-wise ReLU feed-forward sublayer of a transformer block: ``Z^{[1]} = X W_1^\top + b_1``,
    the hidden activation (named ``hidden``), ``U_{[3]} = A W_2^\top + b_2`` (parameters W1, b1, W2, b2)."""
    W1 = b.param("W1", (N1, p), "W^{[1]}")
    b1 = b.param("b1", (N1,), "b^{[1]}")
    W2 = b.param("W2", (p, N1), "W^{[2]}")
    b2 = b.param("b2", (p,), "b^{[2]}")
    S = named_activation("relu")
    t, i, j = "t", "i", "j"
    dims = {t: T, i: p, j: N1}
    z1 = b.eq("z1", einsum([(t, i), (j, i)], (t, j), [x, W1], dims=dims) + b1, "Z^{[1]}",
              adjoint=("delta1", r"\Delta^{[1]}"))
    a1 = b.eq(hidden, map_(S(ARG[0]), [z1]), hidden_tex)
    return b.eq("u3", einsum([(t, j), (i, j)], (t, i), [a1, W2], dims=dims) + b2, "U_{[3]}")

def _mha(b: Builder, X: Node, H: sp.Symbol, m: sp.Symbol, p: sp.Expr, causal: bool, tag: str = "",
         out_tex: str = "U") -> Var:
    """Multi-head self-attention (7.24)-(7.27), printed in matrix form with the heads as a superscript:
    Q^h = W_q^h X, S^h = K^{h T} Q^h / sqrt(m), A^h = S_softmax(S^h), U^h = V^h A^h, U = sum_h W_c^h U^h."""
    b.notation.setdefault("columns", (X.shape[0],))
    b.notation.setdefault("index", {})[H] = "h"
    Wq = b.param(f"W_q{tag}", (H, m, p), "W_q")
    Wk = b.param(f"W_k{tag}", (H, m, p), "W_k")
    Wv = b.param(f"W_v{tag}", (H, m, p), "W_v")
    Wo = b.param(f"W_o{tag}", (p, H, m), "W_c")
    T = X.shape[0]
    h, t, i, j, c = "h", "t", "i", "j", "c"
    dims = {h: H, t: T, i: p, j: m, c: p}
    Qh = b.eq(f"Qh{tag}", einsum([(t, i), (h, j, i)], (h, t, j), [X, Wq], dims=dims), "Q")
    Kh = b.eq(f"Kh{tag}", einsum([(t, i), (h, j, i)], (h, t, j), [X, Wk], dims=dims), "K")
    Vh = b.eq(f"Vh{tag}", einsum([(t, i), (h, j, i)], (h, t, j), [X, Wv], dims=dims), "V")
    U = _attention(b, Qh, Kh, Vh, m, causal, tag="h" + tag)
    return b.eq(f"mha{tag}", einsum([(h, t, j), (c, h, j)], (t, c), [U, Wo], dims=dims), out_tex)


@register("multihead_attention", "§7.5", "multi-head self-attention")
def multihead_attention(heads: int = 2, causal: bool = False) -> Model:
    r"""Multi-head self-attention (7.24)-(7.27) with heads as a dimension: u = sum_h W_c^h U^h."""
    b = Builder("multihead_attention", "multi-head self-attention", "§7.5", {"heads": heads, "causal": causal})
    b.samples("n", 2, 1, 3)
    H = b.dim("H", heads, heads, heads)
    m = b.dim("m", 2, 1, 3)
    T = b.dim("T", 3, 1, 4)
    p = H * m
    X = b.input("X", (T, p), "X", batched=True, adjoint=("g_X", r"\zeta_{X}"))
    G = b.input("G", (T, p), r"\zeta_{\mathrm{MHA}}", batched=True)
    u = _mha(b, X, H, m, p, causal, out_tex=r"U_{\mathrm{MHA}}")
    b.eq("C", sum_(G * u), "C")
    return b.model(reduction="sum", diff_inputs=("X",))


@register("transformer_block", "§7.5 (7.31)", "post-LN transformer encoder block")
def transformer_block(heads: int = 2, eps: float = 1e-5) -> Model:
    r"""The post-LN transformer block (7.31): u2 = LN(x + MHA(x)), out = LN(u2 + W2 ReLU(W1 u2 + b1) + b2)."""
    b = Builder("transformer_block", "post-LN transformer encoder block", "§7.5 (7.31)",
                {"heads": heads, "eps": eps})
    b.samples("n", 2, 1, 3)
    H = b.dim("H", heads, heads, heads)
    m = b.dim("m", 2, 1, 3)
    T = b.dim("T", 3, 1, 4)
    N1 = b.dim("N1", 4, 1, 5, tex="N_1")
    p = H * m
    ep = b.const("epsilon", eps)
    X = b.input("X", (T, p), "X", batched=True, adjoint=("g_X", r"\zeta_{X}"), domain="moderate")
    G = b.input("G", (T, p), r"\zeta_{\mathrm{out}}", batched=True)
    u1 = _mha(b, X, H, m, p, False, out_tex=r"U_{[1]}")
    g1 = b.param("gamma1", (p,), r"\gamma")
    be1 = b.param("beta1", (p,), r"\beta")
    u2 = _layer_norm(b, X + u1, g1, be1, ep, "1",
                     (r"R_{[1]}", r"\mu_{[1]}", r"R^{c}_{[1]}", r"\sigma_{[1]}", r"\hat{R}_{[1]}", r"U_{[2]}"))
    u3 = _feed_forward(b, u2, T, p, N1, "a1", "A^{[1]}")
    g2 = b.param("gamma2", (p,), r"\tilde{\gamma}")
    be2 = b.param("beta2", (p,), r"\tilde{\beta}")
    out = _layer_norm(b, u2 + u3, g2, be2, ep, "2",
                      (r"R_{[2]}", r"\mu_{[2]}", r"R^{c}_{[2]}", r"\sigma_{[2]}", r"\hat{R}_{[2]}", r"A_{\mathrm{out}}"))
    b.eq("C", sum_(G * out), "C")
    return b.model(reduction="sum", diff_inputs=("X",), kinks=True)


def _seq_builder(name: str, title: str, section: str, options: dict[str, object],
                 targets: str = "probabilities") -> tuple[Builder, dict[str, sp.Symbol]]:
    from ._targets import check_targets

    if check_targets(name, targets) != "probabilities":
        options = {**options, "targets": targets}
    b = Builder(name, title, section, options)
    T = b.dim("T", 4, 1, 12)
    b.samples("n", 2, 1, 3)
    dims = {"T": T, "p": b.dim("p", 3, 1, 3), "m": b.dim("m", 3, 1, 4), "q": b.dim("q", 3, 2, 3)}
    return b, dims


def _head(b: Builder, h: Node, q: sp.Symbol, m: sp.Symbol) -> None:
    """yhat^{<t>} = S_softmax(W_yh h^{<t>} + b_y), C^{<t>} = CE(y^{<t>}, yhat^{<t>})."""

    W_yh = b.param("W_yh", (q, m), "W_{yh}")
    b_y = b.param("b_y", (q,), "b_{y}")
    from ._targets import cross_entropy

    y = b.inputs["Y"] if "Y" in b.inputs else b.inputs["y"]
    o = b.eq("o", W_yh @ h + b_y, r"o^{\langle t\rangle}", adjoint=("delta_y", r"\delta_y^{\langle t\rangle}"))
    yhat = b.eq("yhat", softmax(o), r"\hat{y}^{\langle t\rangle}")
    b.eq("C", cross_entropy(y, yhat), r"C^{\langle t\rangle}")


def _seq_inputs(b: Builder, d: dict[str, sp.Symbol], carries: tuple[str, ...],
                targets: str = "probabilities") -> dict[str, Var]:
    from ._targets import target_input

    out = {"X": b.input("X", (d["p"],), r"x^{\langle t\rangle}", batched=True),
           "Y": target_input(b, targets, d["q"], r"y^{\langle t\rangle}")}
    for c in carries:
        out[c] = b.input(f"{c}_prev", (d["m"],), rf"{c}^{{\langle t-1\rangle}}", batched=True)
    return out


@register("rnn", "§7.2", "recurrent neural network with a softmax head")
def rnn(activation: str = "tanh", targets: str = "probabilities") -> Model:
    r"""Recurrent network (7.2), (7.4): h^{<t>} = S(W_hh h^{<t-1>} + W_hx x^{<t>} + b_h), softmax head,
    C = 1/T sum_t CE; written for a general step t, with BPTT as a recurrence.

    Args:
        activation: S (tanh, relu, ...).
        targets: "probabilities" (Y (T, n, q) rows on the simplex, the default), "one_hot" (the same Y,
            drawn one-hot) or "labels" (integer class indices y (T, n); C^{<t>} = -log yhat^{<t>}_y).
    """
    b, d = _seq_builder("rnn", "recurrent neural network with a softmax head", "§7.2", {"activation": activation},
                        targets)
    io = _seq_inputs(b, d, ("h",), targets)
    S = named_activation(activation)
    W_hh = b.param("W_hh", (d["m"], d["m"]), "W_{hh}")
    W_hx = b.param("W_hx", (d["m"], d["p"]), "W_{hx}")
    b_h = b.param("b_h", (d["m"],), "b_{h}")
    z = b.eq("z", W_hh @ io["h"] + W_hx @ io["X"] + b_h, r"z^{\langle t\rangle}",
             adjoint=("delta", r"\delta^{\langle t\rangle}"))
    h = b.eq("h", map_(S(ARG[0]), [z]), r"h^{\langle t\rangle}", adjoint=("zeta", r"\zeta^{\langle t\rangle}"))
    _head(b, h, d["q"], d["m"])
    return b.scan_model(d["T"], {"h_prev": h}, ("X", io["Y"].name), 1 / d["T"],
                        kinks=activation in ("relu", "leaky_relu"))


def _gate(b: Builder, tag: str, h: Node, x: Node, d: dict[str, sp.Symbol], fn: str = "sigmoid",
          tex: str | None = None, reset: Node | None = None) -> Var:
    """g = S(W_{tag h} h + W_{tag x} x + b_tag), with h replaced by reset * h when given."""
    sym = r"\tilde{c}" if tag == "c" else tag  # the LSTM candidate's weights are W_{c~h}, W_{c~x}, b_{c~} (7.16)
    Wh = b.param(f"W_{tag}h", (d["m"], d["m"]), f"W_{{{sym}h}}")
    Wx = b.param(f"W_{tag}x", (d["m"], d["p"]), f"W_{{{sym}x}}")
    bb = b.param(f"b_{tag}", (d["m"],), f"b_{{{sym}}}")
    pre = Wh @ h + Wx @ x + bb
    act = named_activation(fn) if fn != "sigmoid" else None
    val = map_(act(ARG[0]), [pre]) if act else _sig(pre)
    gate = tex or rf"g_{{{tag}}}^{{\langle t\rangle}}"
    name = gate.split("^")[0]
    return b.eq(f"g_{tag}", val, gate, adjoint=(f"gbar_{tag}", rf"\zeta_{{{name}}}^{{\langle t\rangle}}"))


def _sig(x: Node) -> Node:
    from ..nn import sigmoid

    return sigmoid(x)


@register("lstm", "§7.3", "long short-term memory network with a softmax head")
def lstm(targets: str = "probabilities") -> Model:
    r"""LSTM (7.16)-(7.17): gates g_f, g_i, g_o = sigma(W h^{<t-1>} + W x^{<t>} + b), candidate
    c~ = tanh(...), c^{<t>} = g_f * c^{<t-1>} + g_i * c~, h^{<t>} = g_o * tanh(c^{<t>}); softmax head.

    Args:
        targets: "probabilities" (Y (T, n, q), the default), "one_hot" or "labels" (y (T, n)).
    """
    from ..nn import tanh

    b, d = _seq_builder("lstm", "long short-term memory network with a softmax head", "§7.3", {}, targets)
    io = _seq_inputs(b, d, ("h", "c"), targets)
    h0, c0, x = io["h"], io["c"], io["X"]
    gf = _gate(b, "f", h0, x, d)
    gi = _gate(b, "i", h0, x, d)
    go = _gate(b, "o", h0, x, d)
    ct = _gate(b, "c", h0, x, d, fn="tanh", tex=r"\tilde{c}^{\langle t\rangle}")
    c = b.eq("c", gf * c0 + gi * ct, r"c^{\langle t\rangle}", adjoint=("zeta_c", r"\zeta_c^{\langle t\rangle}"))
    h = b.eq("h", go * tanh(c), r"h^{\langle t\rangle}", adjoint=("zeta", r"\zeta^{\langle t\rangle}"))
    _head(b, h, d["q"], d["m"])
    return b.scan_model(d["T"], {"h_prev": h, "c_prev": c}, ("X", io["Y"].name), 1 / d["T"])


def _gru_step(b: Builder, h0: Node, x: Node, d: dict[str, sp.Symbol], variant: str,
              adjoint: tuple[str, str] | None = None) -> Var:
    r"""One GRU step (7.18)-(7.19) from ``h0`` and ``x``: the reset and update gates, the candidate
    ``\tilde h`` and the new state ``h``, in the book's form or torch's (the reset gate after ``W_{hh} h``)."""
    from ..nn import tanh

    gr = _gate(b, "r", h0, x, d)
    gu = _gate(b, "u", h0, x, d)
    W_hh = b.param("W_hh", (d["m"], d["m"]), r"W_{\tilde{h}h}")
    W_hx = b.param("W_hx", (d["m"], d["p"]), r"W_{\tilde{h}x}")
    b_h = b.param("b_h", (d["m"],), r"b_{\tilde{h}}")
    if variant == "book":
        ht = b.eq("h_tilde", tanh(W_hh @ (gr * h0) + W_hx @ x + b_h), r"\tilde{h}^{\langle t\rangle}")
        return b.eq("h", (1 - gu) * h0 + gu * ht, r"h^{\langle t\rangle}", adjoint=adjoint)
    ht = b.eq("h_tilde", tanh(W_hx @ x + b_h + gr * (W_hh @ h0)), r"\tilde{h}^{\langle t\rangle}")
    return b.eq("h", (1 - gu) * ht + gu * h0, r"h^{\langle t\rangle}", adjoint=adjoint)


@register("gru", "§7.3", "gated recurrent unit (book form) with a softmax head")
def gru(variant: str = "book", targets: str = "probabilities") -> Model:
    r"""GRU (7.18)-(7.19). ``variant="book"``: h = (1 - g_u) * h^{<t-1>} + g_u * tanh(W_hh (g_r * h^{<t-1>}) +
    W_hx x + b_h); ``variant="torch"``: nn.GRU's form, h = (1 - g_u) * tanh(W_hx x + b_h + g_r * (W_hh h)) +
    g_u * h^{<t-1>} (its update gate is 1 - the book's, and the reset gate acts after W_hh).

    Args:
        variant: "book" or "torch".
        targets: "probabilities" (Y (T, n, q), the default), "one_hot" or "labels" (y (T, n)).
    """
    from ..program import ModelError

    if variant not in ("book", "torch"):
        raise ModelError(f"gru variant {variant!r} is unknown; choose 'book' or 'torch'")
    b, d = _seq_builder("gru", f"gated recurrent unit ({variant} form) with a softmax head", "§7.3",
                        {"variant": variant}, targets)
    io = _seq_inputs(b, d, ("h",), targets)
    h0, x = io["h"], io["X"]
    h = _gru_step(b, h0, x, d, variant, adjoint=("zeta", r"\zeta^{\langle t\rangle}"))
    _head(b, h, d["q"], d["m"])
    return b.scan_model(d["T"], {"h_prev": h}, ("X", io["Y"].name), 1 / d["T"])


@register("positional_encoding", "§7.5 (7.29)", "sinusoidal positional encoding")
def positional_encoding(M: float = 10000.0) -> Model:
    r"""Positional encoding (7.29)-(7.30): r^{<t>}_{2i} = sin(t / M^{2i/p}), r^{<t>}_{2i+1} = cos(t / M^{2i/p}),
    added to the inputs, x~^{<t>} = x^{<t>} + r^{<t>}; a layer entry with loss sum(G * x~)."""
    from ..tensor import IndexGrid

    b = Builder("positional_encoding", "sinusoidal positional encoding", "§7.5 (7.29)", {"M": M})
    b.samples("n", 2, 1, 3)
    T = b.dim("T", 4, 1, 6)
    p = b.dim("p", 4, 1, 6)
    Mc = b.const("M", M)
    b.notation["index"] = {T: r"\langle t\rangle"}  # printed per time step, x^{<t>}, as (7.30)
    X = b.input("X", (T, p), "x", batched=True, adjoint=("g_X", r"\zeta_{x}"))
    G = b.input("G", (T, p), r"\zeta_{\tilde{x}}", batched=True)
    t, i = IndexGrid((T, p), 0, "t", start=1), IndexGrid((T, p), 1, "i")  # t = 1, ..., T as (7.29)
    two_k = 2 * sp.floor(ARG[1] / 2)  # the even index 2k of column i
    # sin(theta + pi/2) = cos(theta): one formula for the even (sin) and odd (cos) columns
    r = b.eq("r", map_(sp.sin(ARG[0] / Mc ** (two_k / p) + sp.pi / 2 * (ARG[1] - two_k)), [t, i]),
             "r",
             note=r"r^{\langle t\rangle}_{2k} = \sin(t / M^{2k/p}),\ r^{\langle t\rangle}_{2k+1} = \cos(t / M^{2k/p})")
    xt = b.eq("x_tilde", X + r, r"\tilde{x}")
    b.eq("C", sum_(G * xt), "C")
    return b.model(reduction="sum", diff_inputs=("X",))


def _cell_builder(name: str, title: str, section: str, options: dict[str, object]) -> tuple[Builder, dict[str, sp.Symbol]]:
    b = Builder(name, title, section, options)
    b.samples("n", 3, 1, 4)
    return b, {"p": b.dim("p", 3, 1, 4), "m": b.dim("m", 3, 1, 4)}


@register("rnn_cell", "§7.2", "one step of a recurrent layer (nn.RNNCell)")
def rnn_cell(activation: str = "tanh") -> Model:
    r"""One RNN step (7.2): h = S(W_hh h^{<t-1>} + W_hx x + b_h); a layer entry with upstream gradient G_h,
    C = sum(G_h * h), gradients in the weights, x and h^{<t-1>}.

    Args:
        activation: S (tanh or relu, as nn.RNNCell's nonlinearity).
    """
    b, d = _cell_builder("rnn_cell", "one step of a recurrent layer (nn.RNNCell)", "§7.2", {"activation": activation})
    S = named_activation(activation)
    W_hh = b.param("W_hh", (d["m"], d["m"]), "W_{hh}")
    W_hx = b.param("W_hx", (d["m"], d["p"]), "W_{hx}")
    b_h = b.param("b_h", (d["m"],), "b_{h}")
    x = b.input("X", (d["p"],), r"x^{\langle t\rangle}", batched=True, adjoint=("g_X", r"\zeta_{x}"))
    h0 = b.input("H_prev", (d["m"],), r"h^{\langle t-1\rangle}", batched=True, adjoint=("g_H_prev", r"\zeta_{h}^{\langle t-1\rangle}"))
    G = b.input("G_h", (d["m"],), r"\zeta^{\langle t\rangle}", batched=True)
    z = b.eq("z", W_hh @ h0 + W_hx @ x + b_h, r"z^{\langle t\rangle}", adjoint=("delta", r"\delta^{\langle t\rangle}"))
    h = b.eq("h", map_(S(ARG[0]), [z]), r"h^{\langle t\rangle}")
    b.eq("C", dot(G, h), "C")
    return b.model(reduction="sum", diff_inputs=("X", "H_prev"), kinks=activation in ("relu", "leaky_relu"))


@register("lstm_cell", "§7.3", "one step of an LSTM layer (nn.LSTMCell)")
def lstm_cell() -> Model:
    r"""One LSTM step (7.16)-(7.17) from (h^{<t-1>}, c^{<t-1>}); a layer entry with upstream gradients G_h, G_c
    of h and c, C = sum(G_h * h) + sum(G_c * c), gradients in the weights, x, h^{<t-1>} and c^{<t-1>}."""
    from ..nn import tanh

    b, d = _cell_builder("lstm_cell", "one step of an LSTM layer (nn.LSTMCell)", "§7.3", {})
    x = b.input("X", (d["p"],), r"x^{\langle t\rangle}", batched=True, adjoint=("g_X", r"\zeta_{x}"))
    h0 = b.input("H_prev", (d["m"],), r"h^{\langle t-1\rangle}", batched=True, adjoint=("g_H_prev", r"\zeta_{h}^{\langle t-1\rangle}"))
    c0 = b.input("C_prev", (d["m"],), r"c^{\langle t-1\rangle}", batched=True, adjoint=("g_C_prev", r"\zeta_{c}^{\langle t-1\rangle}"))
    Gh = b.input("G_h", (d["m"],), r"\zeta_{h}^{\langle t\rangle}", batched=True)
    Gc = b.input("G_c", (d["m"],), r"\bar{\zeta}_{c}^{\langle t\rangle}", batched=True)
    gf = _gate(b, "f", h0, x, d)
    gi = _gate(b, "i", h0, x, d)
    go = _gate(b, "o", h0, x, d)
    ct = _gate(b, "c", h0, x, d, fn="tanh", tex=r"\tilde{c}^{\langle t\rangle}")
    c = b.eq("c", gf * c0 + gi * ct, r"c^{\langle t\rangle}")
    h = b.eq("h", go * tanh(c), r"h^{\langle t\rangle}")
    b.eq("C", dot(Gh, h) + dot(Gc, c), "C")
    return b.model(reduction="sum", diff_inputs=("X", "H_prev", "C_prev"))


@register("gru_cell", "§7.3", "one step of a GRU layer (book form; nn.GRUCell with variant='torch')")
def gru_cell(variant: str = "book") -> Model:
    r"""One GRU step (7.18)-(7.19) in the book's form, or nn.GRUCell's (``variant="torch"``; see ``gru``); a
    layer entry with upstream gradient G_h, C = sum(G_h * h), gradients in the weights, x and h^{<t-1>}.

    Args:
        variant: "book" or "torch".
    """
    from ..program import ModelError

    if variant not in ("book", "torch"):
        raise ModelError(f"gru_cell variant {variant!r} is unknown; choose 'book' or 'torch'")
    b, d = _cell_builder("gru_cell", f"one step of a GRU layer ({variant} form)", "§7.3", {"variant": variant})
    x = b.input("X", (d["p"],), r"x^{\langle t\rangle}", batched=True, adjoint=("g_X", r"\zeta_{x}"))
    h0 = b.input("H_prev", (d["m"],), r"h^{\langle t-1\rangle}", batched=True, adjoint=("g_H_prev", r"\zeta_{h}^{\langle t-1\rangle}"))
    G = b.input("G_h", (d["m"],), r"\zeta^{\langle t\rangle}", batched=True)
    h = _gru_step(b, h0, x, d, variant)
    b.eq("C", dot(G, h), "C")
    return b.model(reduction="sum", diff_inputs=("X", "H_prev"))
