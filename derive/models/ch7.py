"""Chapter 7, sequence models: layer normalization, scaled dot-product and multi-head attention, and the
post-LN transformer block (eq. 7.31)."""

from __future__ import annotations

import sympy as sp

from ..functions import named_activation
from ..nn import dot, einsum, mean, softmax, sqrt, sum_  # noqa: F401
from ..program import Builder, Model
from ..tensor import ARG, CausalMask, Node, Var, map_
from . import register


def _layer_norm(b: Builder, z: Node, gamma: Var, beta: Var, eps: sp.Symbol, tag: str, tex: str) -> Var:
    """z -> gamma * (z - mu) / sqrt(sigma^2 + eps) + beta over the last axis (written per vector)."""
    if not isinstance(z, Var):
        z = b.eq(f"r{tag}", z, tex)
    mu = b.eq(f"mu{tag}", mean(z, -1), rf"\mu_{{{tex}}}")
    zc = b.eq(f"zc{tag}", z - mu if z.ndim == 1 else z - _spread_last(mu, z), rf"{tex}_{{c}}", adjoint="inline")
    sd = b.eq(f"sigma{tag}", sqrt(mean(zc**2, -1) + eps), rf"\sigma_{{{tex}}}")
    zbar = b.eq(f"zbar{tag}", zc / sd if z.ndim == 1 else zc / _spread_last(sd, z), rf"\bar{{{tex}}}")
    return b.eq(f"ln{tag}", gamma * zbar + beta, rf"\mathrm{{LN}}({tex})")


def _spread_last(x: Node, like: Node) -> Node:
    """Broadcast ``x`` (``like`` without its last axis) along the last axis."""
    labels = tuple(range(like.ndim))
    return einsum([labels[:-1]], labels, [x], dims=dict(zip(labels, like.shape)))


@register("layer_norm")
def layer_norm(eps: float = 1e-5) -> Model:
    r"""Layer normalization (7.31): LN(z) = gamma * (z - mu_z) / sqrt(sigma_z^2 + eps) + beta, per sample."""
    b = Builder("layer_norm", "layer normalization", "§7.5", {"eps": eps})
    b.samples("n", 4, 1, 6)
    p = b.dim("p", 4, 1, 6)
    ep = b.const("epsilon", eps)
    gamma = b.param("gamma", (p,), r"\gamma")
    beta = b.param("beta", (p,), r"\beta")
    z = b.input("Z", (p,), "z", batched=True, adjoint=("g_Z", r"\bar{z}"))
    G = b.input("G", (p,), r"\zeta", batched=True)
    out = _layer_norm(b, z, gamma, beta, ep, "", "z")
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
    sup = "^{h}" if lead else ""
    scores = b.eq(f"S{tag}", S, f"S{sup}")
    A = b.eq(f"A{tag}", softmax(scores, -1), f"A{sup}")
    U = einsum([lead + (q, k), lead + (k, v)], lead + (q, v), [A, V], dims=dims)
    del s
    return b.eq(f"U{tag}", U, f"U{sup}")


@register("attention")
def attention(causal: bool = False) -> Model:
    r"""Scaled dot-product attention (7.20)-(7.22): U = S_softmax(Q K^T / sqrt(d)) V, rows softmaxed."""
    b = Builder("attention", "scaled dot-product attention" + (" with a causal mask" if causal else ""), "§7.4",
                {"causal": causal})
    b.samples("n", 3, 1, 4)
    Tq = b.dim("T_q", 3, 1, 5)
    Tk = b.dim("T_k", 4, 1, 5)
    d = b.dim("d", 3, 1, 4)
    dv = b.dim("d_v", 2, 1, 4)
    Q = b.input("Q", (Tq, d), "Q", batched=True, adjoint=("g_Q", r"\bar{Q}"))
    K = b.input("K", (Tk, d), "K", batched=True, adjoint=("g_K", r"\bar{K}"))
    V = b.input("V", (Tk, dv), "V", batched=True, adjoint=("g_V", r"\bar{V}"))
    G = b.input("G", (Tq, dv), r"\bar{U}", batched=True)
    U = _attention(b, Q, K, V, d, causal)
    b.eq("C", sum_(G * U), "C")
    return b.model(reduction="sum", diff_inputs=("Q", "K", "V"))


def _mha(b: Builder, X: Node, H: sp.Symbol, m: sp.Symbol, p: sp.Expr, causal: bool, tag: str = "") -> Var:
    Wq = b.param(f"W_q{tag}", (H, m, p), "W_q")
    Wk = b.param(f"W_k{tag}", (H, m, p), "W_k")
    Wv = b.param(f"W_v{tag}", (H, m, p), "W_v")
    Wo = b.param(f"W_o{tag}", (p, H, m), "W_c")
    T = X.shape[0]
    h, t, i, j, c = "h", "t", "i", "j", "c"
    dims = {h: H, t: T, i: p, j: m, c: p}
    Qh = b.eq(f"Qh{tag}", einsum([(t, i), (h, j, i)], (h, t, j), [X, Wq], dims=dims), "Q^{h}")
    Kh = b.eq(f"Kh{tag}", einsum([(t, i), (h, j, i)], (h, t, j), [X, Wk], dims=dims), "K^{h}")
    Vh = b.eq(f"Vh{tag}", einsum([(t, i), (h, j, i)], (h, t, j), [X, Wv], dims=dims), "V^{h}")
    U = _attention(b, Qh, Kh, Vh, m, causal, tag="h" + tag)
    return b.eq(f"mha{tag}", einsum([(h, t, j), (c, h, j)], (t, c), [U, Wo], dims=dims), "u")


@register("multihead_attention")
def multihead_attention(heads: int = 2, causal: bool = False) -> Model:
    r"""Multi-head self-attention (7.24)-(7.27) with heads as a dimension: u = sum_h W_c^h U^h."""
    b = Builder("multihead_attention", "multi-head self-attention", "§7.5", {"heads": heads, "causal": causal})
    b.samples("n", 2, 1, 3)
    H = b.dim("H", heads, heads, heads)
    m = b.dim("m", 2, 1, 3)
    T = b.dim("T", 3, 1, 4)
    p = H * m
    X = b.input("X", (T, p), "X", batched=True, adjoint=("g_X", r"\bar{X}"))
    G = b.input("G", (T, p), r"\bar{u}", batched=True)
    u = _mha(b, X, H, m, p, causal)
    b.eq("C", sum_(G * u), "C")
    return b.model(reduction="sum", diff_inputs=("X",))


@register("transformer_block")
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
    X = b.input("X", (T, p), "X", batched=True, adjoint=("g_X", r"\bar{X}"))
    G = b.input("G", (T, p), r"\bar{a}", batched=True)
    u1 = _mha(b, X, H, m, p, False)
    g1 = b.param("gamma1", (p,), r"\gamma")
    be1 = b.param("beta1", (p,), r"\beta")
    u2 = _layer_norm(b, X + u1, g1, be1, ep, "1", "u")
    W1 = b.param("W1", (N1, p), "W^{[1]}")
    b1 = b.param("b1", (N1,), "b^{[1]}")
    W2 = b.param("W2", (p, N1), "W^{[2]}")
    b2 = b.param("b2", (p,), "b^{[2]}")
    S = named_activation("relu")
    t, i, j = "t", "i", "j"
    dims = {t: T, i: p, j: N1}
    z1 = b.eq("z1", einsum([(t, i), (j, i)], (t, j), [u2, W1], dims=dims) + b1, "z^{[1]}")
    a1 = b.eq("a1", map_(S(ARG[0]), [z1]), "a^{[1]}")
    u3 = b.eq("u3", einsum([(t, j), (i, j)], (t, i), [a1, W2], dims=dims) + b2, "u_{[3]}")
    g2 = b.param("gamma2", (p,), r"\tilde{\gamma}")
    be2 = b.param("beta2", (p,), r"\tilde{\beta}")
    out = _layer_norm(b, u2 + u3, g2, be2, ep, "2", "v")
    b.eq("C", sum_(G * out), "C")
    return b.model(reduction="sum", diff_inputs=("X",), kinks=True)
