"""Chapter 7, encoder-decoder and multi-layer sequence models: the stacked RNN (7.15), the bidirectional RNN
(7.14), the RNN encoder-decoder with teacher forcing and optional dot-product attention (§7.4), and the
transformer decoder block with causal self-attention and cross-attention (§7.5).

The recurrent entries are programs of several scans (:meth:`~derive.program.Builder.scan`): each scan's
step is written for a general t and differentiated once, so derivation time does not depend on the T's.
"""

from __future__ import annotations

import sympy as sp

from ..functions import named_activation
from ..nn import dot, einsum, log, softmax, sum_
from ..program import Builder, Model, ModelError
from ..tensor import ARG, Node, Var, map_
from . import register
from .ch7 import _feed_forward, _layer_norm, _mha
from .specs import MAX_LAYERS, Bool, Choice, Int, Real

_T = r"^{\langle t\rangle}"


def _activation(name: str, activation: str) -> None:
    if activation not in ("tanh", "relu"):
        raise ModelError(f"{name}: activation {activation!r} is not offered; choose 'tanh' or 'relu' (the "
                         f"nonlinearities of nn.RNN, its reference)")


def _head(b: Builder, terms: list[tuple[str, str, Node]], m: sp.Symbol, q: sp.Symbol, y: Var,
          h_tex: str = "o") -> Var:
    """yhat^{<t>} = S_softmax(sum_k W_k h_k + b_y), C^{<t>} = CE(y^{<t>}, yhat^{<t>}); ``terms`` are
    (weight name, its LaTeX, the state it multiplies)."""
    pre: Node | None = None
    for name, tex, h in terms:
        W = b.param(name, (q, h.shape[0]), tex)
        pre = W @ h if pre is None else pre + W @ h
    b_y = b.param("b_y", (q,), "b_{y}")
    assert pre is not None
    o = b.eq("o", pre + b_y, rf"{h_tex}{_T}", adjoint=("delta_y", rf"\delta_y{_T}"))
    yhat = b.eq("yhat", softmax(o), rf"\hat{{y}}{_T}")
    return b.eq("C", -dot(y, log(yhat)), rf"C{_T}")


def _cell(b: Builder, tag: str, sup: str, prev: Var, x: Node, m: sp.Symbol, S: type, tex: tuple[str, str, str],
          state: str = "h") -> Var:
    """z = W_hh h_prev + W_hx x + b_h, h = S(z): one RNN layer's step (7.2), its parameters named with ``tag``
    and printed with the superscript or accent of ``tex`` = (W_hh, W_hx, b_h)."""
    W_hh = b.param(f"W_hh{tag}", (m, m), tex[0])
    W_hx = b.param(f"W_hx{tag}", (m, x.shape[0]), tex[1])
    b_h = b.param(f"b_h{tag}", (m,), tex[2])
    z = b.eq(f"z{tag}", W_hh @ prev + W_hx @ x + b_h, sup.replace("@", "z"),
             adjoint=(f"delta{tag}", sup.replace("@", r"\delta")))
    return b.eq(f"{state}{tag}", map_(S(ARG[0]), [z]), sup.replace("@", state),
                adjoint=(f"zeta{tag}", sup.replace("@", r"\zeta")))


def _dims(b: Builder, time: tuple[str, ...] = ("T",)) -> dict[str, sp.Symbol]:
    d = {t: b.dim(t, 3, 1, 4) for t in time}
    b.samples("n", 2, 1, 3)
    d.update(p=b.dim("p", 2, 1, 3), m=b.dim("m", 3, 1, 3), q=b.dim("q", 3, 2, 3))
    return d


@register("stacked_rnn", "§7.2 (7.15)", "stacked (multi-layer) recurrent network with a softmax head",
          options={"layers": Int(lo=1, hi=MAX_LAYERS), "activation": Choice("tanh", "relu")})
def stacked_rnn(layers: int = 2, activation: str = "tanh") -> Model:
    r"""Stacked RNN (7.15): h^{<t>[1]} = S(W_hh^{[1]} h^{<t-1>[1]} + W_hx^{[1]} x^{<t>} + b_h^{[1]}), and for
    l = 2..L h^{<t>[l]} = S(W_hh^{[l]} h^{<t-1>[l]} + W_hx^{[l]} h^{<t>[l-1]} + b_h^{[l]}); a softmax head on
    h^{<t>[L]}, C = 1/T sum_t CE. One scan per layer, each reading the states of the layer below."""
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        raise ModelError(f"stacked_rnn: layers must be a positive integer, got {layers!r}")
    _activation("stacked_rnn", activation)
    b = Builder("stacked_rnn", "stacked (multi-layer) recurrent network with a softmax head", "§7.2 (7.15)",
                {"layers": layers, "activation": activation})
    d = _dims(b)
    T, m = d["T"], d["m"]
    X = b.input("X", (d["p"],), rf"x{_T}", batched=True)
    Y = b.input("Y", (d["q"],), rf"y{_T}", batched=True, domain="simplex")
    S = named_activation(activation)
    below: Node = X
    for l in range(1, layers + 1):
        prev = b.input(f"h{l}_prev", (m,), rf"h^{{\langle t-1\rangle[{l}]}}", batched=True)
        h = _cell(b, str(l), f"@^{{\\langle t\\rangle[{l}]}}", prev, below, m, S,
                  (rf"W_{{hh}}^{{[{l}]}}", rf"W_{{hx}}^{{[{l}]}}", rf"b_{{h}}^{{[{l}]}}"))
        if l < layers:
            b.scan(f"layer{l}", T, {prev.name: h}, ("X",) if l == 1 else ())
        below = h
    C = _head(b, [("W_yh", "W_{yh}", below)], m, d["q"], Y)
    assert isinstance(below, Var)
    b.scan(f"layer{layers}", T, {f"h{layers}_prev": below}, ("X", "Y") if layers == 1 else ("Y",), loss=C)
    return b.scans_model(kinks=activation == "relu")


@register("birnn", "§7.2 (7.14)", "bidirectional recurrent network with a softmax head",
          options={"activation": Choice("tanh", "relu")})
def birnn(activation: str = "tanh") -> Model:
    r"""Bidirectional RNN (7.14): a forward state h->^{<t>} = S(W->_hh h->^{<t-1>} + W->_hx x^{<t>} + b->_h), a
    backward state h<-^{<t>} = S(W<-_hh h<-^{<t+1>} + W<-_hx x^{<t>} + b<-_h) run from t = T down to 1, and a
    softmax head on both, yhat^{<t>} = S_softmax(W_{y h->} h->^{<t>} + W_{y h<-} h<-^{<t>} + b_y) (one weight
    W_yh = [W_{y h->}, W_{y h<-}] on the concatenated states); C = 1/T sum_t CE. Three scans."""
    _activation("birnn", activation)
    b = Builder("birnn", "bidirectional recurrent network with a softmax head", "§7.2 (7.14)",
                {"activation": activation})
    d = _dims(b)
    T, m = d["T"], d["m"]
    X = b.input("X", (d["p"],), rf"x{_T}", batched=True)
    Y = b.input("Y", (d["q"],), rf"y{_T}", batched=True, domain="simplex")
    S = named_activation(activation)
    fprev = b.input("hf_prev", (m,), r"\overrightarrow{h}^{\langle t-1\rangle}", batched=True)
    hf = _cell(b, "_f", r"\overrightarrow{@}^{\langle t\rangle}", fprev, X, m, S,
               (r"\overrightarrow{W}_{hh}", r"\overrightarrow{W}_{hx}", r"\overrightarrow{b}_{h}"))
    b.scan("forward", T, {"hf_prev": hf}, ("X",))
    bprev = b.input("hb_prev", (m,), r"\overleftarrow{h}^{\langle t+1\rangle}", batched=True)
    hb = _cell(b, "_b", r"\overleftarrow{@}^{\langle t\rangle}", bprev, X, m, S,
               (r"\overleftarrow{W}_{hh}", r"\overleftarrow{W}_{hx}", r"\overleftarrow{b}_{h}"))
    b.scan("backward", T, {"hb_prev": hb}, ("X",), reverse=True)
    C = _head(b, [("W_yh_f", r"W_{y\overrightarrow{h}}", hf), ("W_yh_b", r"W_{y\overleftarrow{h}}", hb)], m,
              d["q"], Y)
    b.scan("head", T, {}, ("Y",), loss=C)
    return b.scans_model(kinks=activation == "relu")


@register("seq2seq", "§7.4", "RNN encoder-decoder with teacher forcing (optionally with attention)",
          options={"attention": Bool(), "activation": Choice("tanh", "relu")})
def seq2seq(attention: bool = False, activation: str = "tanh") -> Model:
    r"""RNN encoder-decoder (§7.4). Encoder h^{<t>} = S(W_hh h^{<t-1>} + W_hx x^{<t>} + b_h), t = 1..T_in;
    decoder from s^{<0>} = h^{<T_in>} with teacher forcing (it reads the previous target, y^{<0>} = 0):
    s^{<t>} = S(W_ss s^{<t-1>} + W_sy y^{<t-1>} [+ W_su u^{<t>}] + b_s), yhat^{<t>} = S_softmax(W_ys s^{<t>} +
    b_y), t = 1..T_out, C = 1/T_out sum_t CE. With ``attention``, (7.20)-(7.22) with query s^{<t-1>} and keys
    and values the encoder states H = [h^{<1>}, ..., h^{<T_in>}]: alpha^{<t>} = S_softmax(H s^{<t-1>} /
    sqrt(m)), u^{<t>} = H^T alpha^{<t>}."""
    if not isinstance(attention, bool):
        raise ModelError(f"seq2seq: attention must be True or False, got {attention!r}")
    _activation("seq2seq", activation)
    title = "RNN encoder-decoder with teacher forcing" + (" and dot-product attention" if attention else "")
    b = Builder("seq2seq", title, "§7.4", {"attention": attention, "activation": activation})
    d = _dims(b, ("T_in", "T_out"))
    m = d["m"]
    X = b.input("X", (d["p"],), rf"x{_T}", batched=True)
    Y = b.input("Y", (d["q"],), rf"y{_T}", batched=True, domain="simplex")
    S = named_activation(activation)
    hprev = b.input("h_prev", (m,), r"h^{\langle t-1\rangle}", batched=True)
    h = _cell(b, "", rf"@{_T}", hprev, X, m, S, ("W_{hh}", "W_{hx}", "b_{h}"))
    b.scan("encoder", d["T_in"], {"h_prev": h}, ("X",))
    sprev = b.input("s_prev", (m,), r"s^{\langle t-1\rangle}", batched=True)
    yprev = b.input("y_prev", (d["q"],), r"y^{\langle t-1\rangle}", batched=True, domain="simplex")
    W_ss = b.param("W_ss", (m, m), "W_{ss}")
    W_sy = b.param("W_sy", (m, d["q"]), "W_{sy}")
    pre: Node = W_ss @ sprev + W_sy @ yprev
    if attention:
        # H = [h^{<1>}, ..., h^{<T_in>}] has the encoder's steps as its columns (the book's layout): e = H^T s / sqrt(m)
        b.notation["columns"] = (d["T_in"],)
        H = b.stack("H", h, "H")
        tau, j = "tau", "j"
        dims = {tau: d["T_in"], j: m}
        e = b.eq("e", einsum([(tau, j), (j,)], (tau,), [H, sprev], dims=dims, coef=1 / sp.sqrt(m)),
                 rf"e{_T}")
        alpha = b.eq("alpha", softmax(e), rf"\alpha{_T}")
        u = b.eq("u", einsum([(tau, j), (tau,)], (j,), [H, alpha], dims=dims), rf"u{_T}")
        W_su = b.param("W_su", (m, m), "W_{su}")
        pre = pre + W_su @ u
    b_s = b.param("b_s", (m,), "b_{s}")
    zs = b.eq("z_s", pre + b_s, rf"z_s{_T}", adjoint=("delta_s", rf"\delta_s{_T}"))
    s = b.eq("s", map_(S(ARG[0]), [zs]), rf"s{_T}", adjoint=("zeta_s", rf"\zeta_s{_T}"))
    C = _head(b, [("W_ys", "W_{ys}", s)], m, d["q"], Y)
    b.scan("decoder", d["T_out"], {"s_prev": s, "y_prev": Y}, ("Y",), loss=C, init={"s_prev": h})
    return b.scans_model(kinks=activation == "relu")


def _cross_mha(b: Builder, Xq: Node, Xkv: Node, H: sp.Symbol, m: sp.Symbol, p: sp.Expr, tag: str,
               out_tex: str) -> Var:
    """Multi-head cross-attention: queries from ``Xq`` (T, p), keys and values from ``Xkv`` (T_e, p), heads as
    a superscript h: Q^h = W_q^h Xq, K^h = W_k^h Xkv, V^h = W_v^h Xkv, U = sum_h W_c^h U^h."""
    Wq = b.param(f"W_q{tag}", (H, m, p), r"\tilde{W}_q")
    Wk = b.param(f"W_k{tag}", (H, m, p), r"\tilde{W}_k")
    Wv = b.param(f"W_v{tag}", (H, m, p), r"\tilde{W}_v")
    Wo = b.param(f"W_o{tag}", (p, H, m), r"\tilde{W}_c")
    T, Te = Xq.shape[0], Xkv.shape[0]
    h, t, s, i, j, c = "h", "t", "s", "i", "j", "c"
    dims = {h: H, t: T, s: Te, i: p, j: m, c: p}
    Qh = b.eq(f"Qh{tag}", einsum([(t, i), (h, j, i)], (h, t, j), [Xq, Wq], dims=dims), r"\tilde{Q}")
    Kh = b.eq(f"Kh{tag}", einsum([(s, i), (h, j, i)], (h, s, j), [Xkv, Wk], dims=dims), r"\tilde{K}")
    Vh = b.eq(f"Vh{tag}", einsum([(s, i), (h, j, i)], (h, s, j), [Xkv, Wv], dims=dims), r"\tilde{V}")
    # scores, weights and head outputs of the cross-attention carry a tilde (the self-attention's do not)
    Sc = b.eq(f"S{tag}", einsum([(h, t, j), (h, s, j)], (h, t, s), [Qh, Kh], dims=dims, coef=1 / sp.sqrt(m)),
              r"\tilde{S}")
    A = b.eq(f"A{tag}", softmax(Sc, -1), r"\tilde{A}")
    U = b.eq(f"U{tag}", einsum([(h, t, s), (h, s, j)], (h, t, j), [A, Vh], dims=dims), r"\tilde{U}")
    return b.eq(f"mha{tag}", einsum([(h, t, j), (c, h, j)], (t, c), [U, Wo], dims=dims), out_tex)


@register("decoder_block", "§7.5", "post-LN transformer decoder block (causal self-attention, cross-attention)",
          options={"heads": Int(lo=1, hi=64), "eps": Real(lo=0)})
def decoder_block(heads: int = 2, eps: float = 1e-5) -> Model:
    r"""The post-LN transformer decoder block (§7.5): u1 = LN(x + MHA_causal(x)), u2 = LN(u1 + MHA(u1, E, E))
    (cross-attention over the encoder output E), out = LN(u2 + W2 ReLU(W1 u2 + b1) + b2); a layer entry with
    loss sum(G * out) and gradients in every parameter, the decoder input X and the encoder output E."""
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise ModelError(f"decoder_block: heads must be a positive integer, got {heads!r}")
    b = Builder("decoder_block", "post-LN transformer decoder block (causal self-attention, cross-attention)",
                "§7.5", {"heads": heads, "eps": eps})
    b.samples("n", 2, 1, 2)
    H = b.dim("H", heads, heads, heads)
    m = b.dim("m", 2, 1, 2)
    T = b.dim("T", 3, 1, 3)
    Te = b.dim("T_e", 2, 1, 3)
    N1 = b.dim("N1", 3, 1, 3, tex="N_1")
    p = H * m
    ep = b.const("epsilon", eps)
    b.notation["columns"] = (T, Te)
    # layer norms of the inputs: moderate values, as transformer_block's (checked at the kernel boundary)
    X = b.input("X", (T, p), "X", batched=True, adjoint=("g_X", r"\zeta_{X}"), domain="moderate")
    E = b.input("E", (Te, p), "E", batched=True, adjoint=("g_E", r"\zeta_{E}"), domain="moderate")
    G = b.input("G", (T, p), r"\zeta_{\mathrm{out}}", batched=True)
    u1 = _mha(b, X, H, m, p, True, out_tex=r"U_{[1]}")
    g1 = b.param("gamma1", (p,), r"\gamma^{[1]}")
    be1 = b.param("beta1", (p,), r"\beta^{[1]}")
    a1 = _layer_norm(b, X + u1, g1, be1, ep, "1",
                     (r"R_{[1]}", r"\mu_{[1]}", r"R^{c}_{[1]}", r"\sigma_{[1]}", r"\hat{R}_{[1]}", r"A_{[1]}"))
    u2 = _cross_mha(b, a1, E, H, m, p, "_c", r"U_{[2]}")
    g2 = b.param("gamma2", (p,), r"\gamma^{[2]}")
    be2 = b.param("beta2", (p,), r"\beta^{[2]}")
    a2 = _layer_norm(b, a1 + u2, g2, be2, ep, "2",
                     (r"R_{[2]}", r"\mu_{[2]}", r"R^{c}_{[2]}", r"\sigma_{[2]}", r"\hat{R}_{[2]}", r"A_{[2]}"))
    u3 = _feed_forward(b, a2, T, p, N1, "f1", "F^{[1]}")
    g3 = b.param("gamma3", (p,), r"\gamma^{[3]}")
    be3 = b.param("beta3", (p,), r"\beta^{[3]}")
    out = _layer_norm(b, a2 + u3, g3, be3, ep, "3",
                      (r"R_{[3]}", r"\mu_{[3]}", r"R^{c}_{[3]}", r"\sigma_{[3]}", r"\hat{R}_{[3]}", r"A_{\mathrm{out}}"))
    b.eq("C", sum_(G * out), "C")
    return b.model(reduction="sum", diff_inputs=("X", "E"), kinks=True)
