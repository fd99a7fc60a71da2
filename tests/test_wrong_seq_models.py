"""Planted bugs in the encoder-decoder and multi-layer sequence models, each rejected by ``verify.check``.

A user's implementation, written here with explicit loops in torch (autograd for its gradients), is checked
against the zoo's independent reference (``nn.RNN``, ``nn.TransformerDecoderLayer``, ...); the same code
with the bug switched off passes, so the rejection is the bug's. The report must name the wrong quantities:

- ``seq2seq`` without attention: teacher forcing that feeds the decoder the current target y^{<t>} instead of
  the previous one y^{<t-1>} (the answer leaks into the input);
- ``seq2seq`` with attention: scores without the 1/sqrt(m) scale of (7.22);
- ``decoder_block``: self-attention without the causal mask (step t sees the steps after it);
- ``birnn``: the backward direction run forward in time (not reversed);
- ``stacked_rnn``: layer 2 fed the input x^{<t>} instead of the states h^{<t>[1]} of layer 1 (a model with
  p = m, so that the wrong program is well-shaped) -- planted both as an implementation and as a model of
  one's own written with the Builder (derive -> numeric), against the zoo's reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

import derive
import verify
from derive import nn

EXAMPLES = 6
T = torch.Tensor
Loss = Callable[..., T]


def impl(model: derive.Model, loss: Loss) -> Callable[..., dict[str, Any]]:
    """``loss(**tensors, **options)`` and torch autograd's gradients in ``model.grad_names``."""

    def f(**t: T) -> dict[str, Any]:
        leaves = {k: t[k].clone().requires_grad_(True) for k in model.grad_names}
        value = loss(**{**t, **leaves}, **model.options)
        grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
        return {"loss": value.detach(),
                "grad": {k: torch.zeros_like(t[k]) if g is None else g for k, g in zip(leaves, grads)}}

    return f


def check(model: derive.Model, loss: Loss, **kw: Any) -> verify.Report:
    return verify.check(model, implementation=impl(model, loss), backend="torch", examples=EXAMPLES,
                        derandomize=True, **kw)


def failing(model: derive.Model, loss: Loss, **kw: Any) -> tuple[str, set[str]]:
    """The report and the quantities it names, for an implementation that must be rejected. Drawn at normal
    values: at the ``small`` ones (1e-3) the attention scores are 1e-6 and a missing 1/sqrt(m) moves the loss
    by less than float64 resolves (the right twins are checked at every value mode)."""
    with pytest.raises(verify.Mismatch) as ei:
        check(model, loss, values=("normal",), **kw)
    err = ei.value
    assert "the implementation" in str(err), str(err)
    assert err.failures, str(err)
    return str(err), {f.quantity for f in err.failures}


def _ce(o: T, y: T) -> T:
    """Cross entropy of probability rows y with softmax(o), batch mean."""
    return -(y * torch.log_softmax(o, -1)).sum(-1).mean()


def _rnn_steps(X: T, W_hh: T, W_hx: T, b_h: T, h: T | None = None, act: Callable[[T], T] = torch.tanh,
               reverse: bool = False) -> list[T]:
    """h^{<t>} = S(W_hh h^{<t-1>} + W_hx x^{<t>} + b_h) over the rows X[t] (t = T..1 with ``reverse``), the
    states returned in time order."""
    h = torch.zeros(X.shape[1], W_hh.shape[0], dtype=X.dtype) if h is None else h
    order = range(X.shape[0] - 1, -1, -1) if reverse else range(X.shape[0])
    out: dict[int, T] = {}
    for t in order:
        h = act(h @ W_hh.T + X[t] @ W_hx.T + b_h)
        out[t] = h
    return [out[t] for t in range(X.shape[0])]


def _act(activation: str) -> Callable[[T], T]:
    return torch.tanh if activation == "tanh" else torch.relu


# -- seq2seq -------------------------------------------------------------------------------------------------


def _seq2seq(leak: bool = False, unscaled: bool = False) -> Loss:
    def loss(*, X: T, Y: T, W_hh: T, W_hx: T, b_h: T, W_ss: T, W_sy: T, b_s: T, W_ys: T, b_y: T,
             W_su: T | None = None, attention: bool = False, activation: str = "tanh") -> T:
        S = _act(activation)
        H = _rnn_steps(X, W_hh, W_hx, b_h, act=S)
        s = H[-1]
        Hs = torch.stack(H, 1)  # (n, T_in, m)
        total = torch.zeros((), dtype=X.dtype)
        for t in range(Y.shape[0]):
            y_in = Y[t] if leak else (Y[t - 1] if t > 0 else torch.zeros_like(Y[0]))  # the bug: y^{<t>}
            pre = s @ W_ss.T + y_in @ W_sy.T + b_s
            if attention:
                assert W_su is not None
                scale = 1.0 if unscaled else 1 / math.sqrt(W_hh.shape[0])  # the bug: no 1/sqrt(m)
                alpha = torch.softmax(torch.einsum("ntj,nj->nt", Hs, s) * scale, -1)
                pre = pre + torch.einsum("ntj,nt->nj", Hs, alpha) @ W_su.T
            s = S(pre)
            total = total + _ce(s @ W_ys.T + b_y, Y[t])
        return total / Y.shape[0]

    return loss


def test_seq2seq_teacher_forcing_with_the_current_target_is_rejected() -> None:
    m = derive.models.get("seq2seq")
    check(m, _seq2seq())
    text, names = failing(m, _seq2seq(leak=True))
    # the decoder's input weight and everything downstream of its input differ, and so does the loss
    assert "the loss" in names and "gradient W_sy" in names, text


def test_seq2seq_attention_without_the_scale_is_rejected() -> None:
    m = derive.models.get("seq2seq", attention=True)
    check(m, _seq2seq())
    text, names = failing(m, _seq2seq(unscaled=True))
    assert "the loss" in names and "gradient W_su" in names, text


# -- decoder_block -------------------------------------------------------------------------------------------


def _mha(Xq: T, Xkv: T, Wq: T, Wk: T, Wv: T, Wo: T, causal: bool) -> T:
    """sum_h W_c^h (V^h softmax((Q^h)^T K^h / sqrt(m))), heads as the first axis of W_q, W_k, W_v (H, m, p)
    and the middle one of W_o (p, H, m); rows of Xq and Xkv are time steps."""
    Q = torch.einsum("ntp,hjp->nhtj", Xq, Wq)
    K = torch.einsum("nsp,hjp->nhsj", Xkv, Wk)
    V = torch.einsum("nsp,hjp->nhsj", Xkv, Wv)
    scores = torch.einsum("nhtj,nhsj->nhts", Q, K) / math.sqrt(Wq.shape[1])
    if causal:
        Tq, Tk = scores.shape[-2:]
        later = torch.ones(Tq, Tk, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(later, float("-inf"))
    U = torch.einsum("nhts,nhsj->nhtj", torch.softmax(scores, -1), V)
    return torch.einsum("nhtj,phj->ntp", U, Wo)


def _decoder_block(causal: bool = True) -> Loss:
    def loss(*, X: T, E: T, G: T, heads: int = 2, eps: float = 1e-5, **P: T) -> T:
        def ln(z: T, k: int) -> T:
            return torch.nn.functional.layer_norm(z, (z.shape[-1],), P[f"gamma{k}"], P[f"beta{k}"], eps)

        a1 = ln(X + _mha(X, X, P["W_q"], P["W_k"], P["W_v"], P["W_o"], causal), 1)  # the bug: causal=False
        a2 = ln(a1 + _mha(a1, E, P["W_q_c"], P["W_k_c"], P["W_v_c"], P["W_o_c"], False), 2)
        ff = torch.relu(a2 @ P["W1"].T + P["b1"]) @ P["W2"].T + P["b2"]
        return (G * ln(a2 + ff, 3)).sum()

    return loss


def test_decoder_block_without_the_causal_mask_is_rejected() -> None:
    m = derive.models.get("decoder_block")
    check(m, _decoder_block(causal=True))
    text, names = failing(m, _decoder_block(causal=False))
    assert "the loss" in names and "gradient X" in names, text


# -- birnn ---------------------------------------------------------------------------------------------------


def _birnn(reversed_backward: bool = True) -> Loss:
    def loss(*, X: T, Y: T, W_hh_f: T, W_hx_f: T, b_h_f: T, W_hh_b: T, W_hx_b: T, b_h_b: T, W_yh_f: T,
             W_yh_b: T, b_y: T, activation: str = "tanh") -> T:
        S = _act(activation)
        fwd = _rnn_steps(X, W_hh_f, W_hx_f, b_h_f, act=S)
        bwd = _rnn_steps(X, W_hh_b, W_hx_b, b_h_b, act=S, reverse=reversed_backward)  # the bug: not reversed
        return sum((_ce(f @ W_yh_f.T + b @ W_yh_b.T + b_y, Y[t]) for t, (f, b) in enumerate(zip(fwd, bwd))),
                   torch.zeros((), dtype=X.dtype)) / X.shape[0]

    return loss


def test_birnn_backward_direction_not_reversed_is_rejected() -> None:
    m = derive.models.get("birnn")
    check(m, _birnn())
    text, names = failing(m, _birnn(reversed_backward=False))
    # the backward direction's weights and the head reading it; the forward direction's recurrence is intact
    assert "the loss" in names and names & {"gradient W_hh_b", "gradient W_hx_b", "gradient W_yh_b"}, text


# -- stacked_rnn: layer 2 fed the input -----------------------------------------------------------------------


def _stacked(fed_input: bool = False) -> Loss:
    def loss(*, X: T, Y: T, layers: int = 2, activation: str = "tanh", **P: T) -> T:
        S = _act(activation)
        H = _rnn_steps(X, P["W_hh1"], P["W_hx1"], P["b_h1"], act=S)
        below = X if fed_input else torch.stack(H)  # the bug: layer 2 reads x^{<t>}
        H2 = _rnn_steps(below, P["W_hh2"], P["W_hx2"], P["b_h2"], act=S)
        return sum((_ce(h @ P["W_yh"].T + P["b_y"], Y[t]) for t, h in enumerate(H2)),
                   torch.zeros((), dtype=X.dtype)) / X.shape[0]

    return loss


def _square_stacked_rnn(fed_input: bool = False) -> derive.Model:
    """A two-layer stacked RNN of one's own with inputs as wide as the states (p = m), so that layer 2 can be
    (wrongly) fed the input x^{<t>}: W_hx^{[2]} is m x m either way."""
    b = derive.Builder("my_stacked_rnn", "two-layer RNN, own", "test", {"layers": 2, "activation": "tanh"})
    Tdim = b.dim("T", 3, 2, 4)
    b.samples("n", 2, 1, 3)
    m, q = b.dim("m", 3, 1, 3), b.dim("q", 3, 2, 3)
    X = b.input("X", (m,), batched=True)
    Y = b.input("Y", (q,), batched=True, domain="simplex")
    below: Any = X
    states = []
    for layer in (1, 2):
        prev = b.input(f"h{layer}_prev", (m,), batched=True)
        W_hh, W_hx, b_h = b.param(f"W_hh{layer}", (m, m)), b.param(f"W_hx{layer}", (m, m)), b.param(f"b_h{layer}", (m,))
        h = b.eq(f"h{layer}", nn.tanh(W_hh @ prev + W_hx @ (X if fed_input and layer == 2 else below) + b_h))
        states.append(h)
        if layer == 1:
            b.scan("layer1", Tdim, {"h1_prev": h}, ("X",))
        below = h
    W_yh, b_y = b.param("W_yh", (q, m)), b.param("b_y", (q,))
    C = b.eq("C", -nn.dot(Y, nn.log(nn.softmax(W_yh @ states[1] + b_y))))
    b.scan("layer2", Tdim, {"h2_prev": states[1]}, ("X", "Y") if fed_input else ("Y",), loss=C)
    return b.scans_model()


def test_stacked_rnn_layer_two_fed_the_input_is_rejected() -> None:
    ref = verify.REFERENCES["stacked_rnn"]
    right = _square_stacked_rnn()
    check(right, _stacked(), reference=ref)
    text, names = failing(right, _stacked(fed_input=True), reference=ref)
    # layer 2's input weight sees other inputs, and layer 1 no longer reaches the loss at all
    assert "the loss" in names and "gradient W_hx2" in names and "gradient W_hx1" in names, text
    # the same bug in the model: derive -> numeric computes the wrong program, and the zoo's reference says so
    with pytest.raises(verify.Mismatch) as ei:
        verify.check(_square_stacked_rnn(fed_input=True), reference=ref, examples=EXAMPLES, derandomize=True)
    names = {f.quantity for f in ei.value.failures}
    assert "the loss" in names and "gradient W_hx2" in names, str(ei.value)
