"""Independent PyTorch references for the encoder-decoder and multi-layer sequence entries of Chapter 7:
``stacked_rnn`` (``nn.RNN(num_layers=L)``), ``birnn`` (``nn.RNN(bidirectional=True)``), ``seq2seq``
(``nn.RNN`` encoder and decoder; with attention, ``F.scaled_dot_product_attention`` and ``nn.RNNCell`` in a
loop) and ``decoder_block`` (``nn.TransformerDecoderLayer``). Weights are swapped into the torch modules by
``torch.func.functional_call``, so autograd differentiates torch's own computation. Arrays are time-major
for the recurrences, (T, n, ...), as the zoo's sequences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .references import _layer_loss, _mha_module, _register, _seq_loss

__all__ = ["stacked_rnn", "birnn", "seq2seq", "decoder_block"]


def _rnn_state(prefix: str, W_hx: torch.Tensor, W_hh: torch.Tensor, b_h: torch.Tensor, suffix: str = "l0"
               ) -> dict[str, torch.Tensor]:
    """nn.RNN's parameters of one layer (direction): weight_ih = W_hx, weight_hh = W_hh, bias_ih = b_h,
    bias_hh = 0 (the book's recurrence has one bias)."""
    return {f"{prefix}weight_ih_{suffix}": W_hx, f"{prefix}weight_hh_{suffix}": W_hh,
            f"{prefix}bias_ih_{suffix}": b_h, f"{prefix}bias_hh_{suffix}": torch.zeros_like(b_h)}


@_register()
def stacked_rnn(*, X: torch.Tensor, Y: torch.Tensor, layers: int = 2, activation: str = "tanh",
                **P: torch.Tensor) -> torch.Tensor:
    """nn.RNN(num_layers=L) (weight_ih_l{k} = W_hx{k+1}, weight_hh_l{k} = W_hh{k+1}, bias_ih = b_h{k+1},
    bias_hh = 0) + a linear softmax head on the top layer, loss 1/T sum_t CE.

    Args:
        X: (T, n, p) time-major inputs; Y: (T, n, q) probability rows.
        layers: L; activation: tanh or relu (nn.RNN's nonlinearity).
        **P: W_hh1, W_hx1, b_h1, ..., W_hhL, W_hxL, b_hL, W_yh, b_y.

    Returns:
        The loss, averaged over samples.
    """
    state: dict[str, torch.Tensor] = {}
    for k in range(layers):
        state.update(_rnn_state("", P[f"W_hx{k + 1}"], P[f"W_hh{k + 1}"], P[f"b_h{k + 1}"], f"l{k}"))
    m = P["W_hh1"].shape[0]
    net = torch.nn.RNN(X.shape[-1], m, num_layers=layers, nonlinearity=activation, dtype=X.dtype, device=X.device)
    H, _ = torch.func.functional_call(net, state, (X,))
    return _seq_loss([F.linear(H[t], P["W_yh"], P["b_y"]) for t in range(X.shape[0])], Y)


@_register()
def birnn(*, X: torch.Tensor, Y: torch.Tensor, W_hh_f: torch.Tensor, W_hx_f: torch.Tensor, b_h_f: torch.Tensor,
          W_hh_b: torch.Tensor, W_hx_b: torch.Tensor, b_h_b: torch.Tensor, W_yh_f: torch.Tensor,
          W_yh_b: torch.Tensor, b_y: torch.Tensor, activation: str = "tanh") -> torch.Tensor:
    """nn.RNN(bidirectional=True) (the forward direction's weights *_l0, the backward's *_l0_reverse) + a linear
    softmax head on the concatenated states, weight W_yh = [W_yh_f, W_yh_b] (q, 2m), loss 1/T sum_t CE.

    Args:
        X: (T, n, p) time-major inputs; Y: (T, n, q) probability rows.
        W_hh_f, W_hx_f, b_h_f: the forward direction; W_hh_b, W_hx_b, b_h_b: the backward direction.
        W_yh_f, W_yh_b (q, m), b_y (q,): the head.
        activation: tanh or relu.

    Returns:
        The loss, averaged over samples.
    """
    state = {**_rnn_state("", W_hx_f, W_hh_f, b_h_f), **_rnn_state("", W_hx_b, W_hh_b, b_h_b, "l0_reverse")}
    net = torch.nn.RNN(X.shape[-1], W_hh_f.shape[0], nonlinearity=activation, bidirectional=True, dtype=X.dtype,
                       device=X.device)
    H, _ = torch.func.functional_call(net, state, (X,))  # (T, n, 2m): [forward, backward] per step
    W_yh = torch.cat([W_yh_f, W_yh_b], 1)
    return _seq_loss([F.linear(H[t], W_yh, b_y) for t in range(X.shape[0])], Y)


@_register()
def seq2seq(*, X: torch.Tensor, Y: torch.Tensor, W_hh: torch.Tensor, W_hx: torch.Tensor, b_h: torch.Tensor,
            W_ss: torch.Tensor, W_sy: torch.Tensor, b_s: torch.Tensor, W_ys: torch.Tensor, b_y: torch.Tensor,
            W_su: torch.Tensor | None = None, attention: bool = False, activation: str = "tanh") -> torch.Tensor:
    """An nn.RNN encoder over X; a decoder started from its last state and fed the previous target (teacher
    forcing, a zero vector first): nn.RNN without attention; with it, at each step the context
    F.scaled_dot_product_attention(s^{<t-1>}, H, H) over the encoder states and nn.RNNCell on [y^{<t-1>}; u]
    (weight_ih = [W_sy, W_su]); a linear softmax head, loss 1/T_out sum_t CE.

    Args:
        X: (T_in, n, p) source sequence; Y: (T_out, n, q) target probability rows.
        W_hh, W_hx, b_h: the encoder; W_ss, W_sy, b_s (and W_su): the decoder; W_ys, b_y: the head.
        attention: dot-product attention of the decoder over the encoder states.
        activation: tanh or relu.

    Returns:
        The loss, averaged over samples.
    """
    m = W_hh.shape[0]
    enc = torch.nn.RNN(X.shape[-1], m, nonlinearity=activation, dtype=X.dtype, device=X.device)
    H, h_last = torch.func.functional_call(enc, _rnn_state("", W_hx, W_hh, b_h), (X,))
    Y_prev = torch.cat([torch.zeros_like(Y[:1]), Y[:-1]], 0)  # teacher forcing: y^{<t-1>}, y^{<0>} = 0
    if not attention:
        dec = torch.nn.RNN(Y.shape[-1], m, nonlinearity=activation, dtype=X.dtype, device=X.device)
        S, _ = torch.func.functional_call(dec, _rnn_state("", W_sy, W_ss, b_s), (Y_prev, h_last))
        states = list(S)
    else:
        assert W_su is not None, "seq2seq with attention needs W_su"
        cell = torch.nn.RNNCell(Y.shape[-1] + m, m, nonlinearity=activation, dtype=X.dtype, device=X.device)
        cell_state = {"weight_ih": torch.cat([W_sy, W_su], 1), "weight_hh": W_ss, "bias_ih": b_s,
                      "bias_hh": torch.zeros_like(b_s)}
        keys = H.transpose(0, 1)  # (n, T_in, m): keys and values are the encoder states
        s = h_last[0]
        states = []
        for t in range(Y.shape[0]):
            u = F.scaled_dot_product_attention(s[:, None, :], keys, keys)[:, 0]
            s = torch.func.functional_call(cell, cell_state, (torch.cat([Y_prev[t], u], -1), s))
            states.append(s)
    return _seq_loss([F.linear(s, W_ys, b_y) for s in states], Y)


@_register()
def decoder_block(*, X: torch.Tensor, E: torch.Tensor, G: torch.Tensor, heads: int = 2, eps: float = 1e-5,
                  **P: torch.Tensor) -> torch.Tensor:
    """C = sum(G * nn.TransformerDecoderLayer(norm_first=False, activation="relu", dropout=0)(X, E, causal
    tgt_mask)), the layer's weights set from ours (attention bias-free).

    Args:
        X: decoder inputs (n, T, p); E: encoder output, the memory (n, T_e, p); G: upstream gradient (n, T, p).
        heads: H; eps: layer-norm epsilon.
        **P: W_q, W_k, W_v, W_o (self-attention), W_q_c, W_k_c, W_v_c, W_o_c (cross-attention), gamma1..3,
            beta1..3, W1, b1, W2, b2.

    Returns:
        The scalar probe loss.
    """
    p, T = X.shape[-1], X.shape[-2]
    layer = torch.nn.TransformerDecoderLayer(p, heads, dim_feedforward=P["W1"].shape[0], dropout=0.0,
                                             activation="relu", batch_first=True, norm_first=False,
                                             layer_norm_eps=eps, bias=True, dtype=X.dtype, device=X.device)
    zero_p = torch.zeros(p, dtype=X.dtype, device=X.device)
    zero_3p = torch.zeros(3 * p, dtype=X.dtype, device=X.device)
    state: dict[str, torch.Tensor] = {}
    for mod, tag in (("self_attn", ""), ("multihead_attn", "_c")):
        in_proj, out_w = _mha_module(P[f"W_q{tag}"], P[f"W_k{tag}"], P[f"W_v{tag}"], P[f"W_o{tag}"], heads)
        state.update({f"{mod}.in_proj_weight": in_proj, f"{mod}.in_proj_bias": zero_3p,
                      f"{mod}.out_proj.weight": out_w, f"{mod}.out_proj.bias": zero_p})
    state.update({"linear1.weight": P["W1"], "linear1.bias": P["b1"], "linear2.weight": P["W2"],
                  "linear2.bias": P["b2"]})
    for k in (1, 2, 3):
        state.update({f"norm{k}.weight": P[f"gamma{k}"], f"norm{k}.bias": P[f"beta{k}"]})
    mask = torch.nn.Transformer.generate_square_subsequent_mask(T, device=X.device, dtype=X.dtype)
    out = torch.func.functional_call(layer, state, (X, E), {"tgt_mask": mask, "tgt_is_causal": True})
    return _layer_loss(out, G)
