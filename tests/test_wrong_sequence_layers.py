"""verify.check rejects planted bugs in hand-written convolution, BPTT, attention and LSTM code, and accepts
the correct versions (written independently here, with loops)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import derive
import verify

Impl = Callable[..., dict[str, Any]]


# -- convolution (stride 1, no padding): dW = x * delta, dX = full convolution with the flipped kernel ----

def _conv(flip: bool = True) -> Impl:
    def f(W: np.ndarray, b: np.ndarray, X: np.ndarray, G: np.ndarray) -> dict[str, Any]:
        n, C, H, Wd = X.shape
        O, _, kh, kw = W.shape
        oh, ow = H - kh + 1, Wd - kw + 1
        z = np.zeros((n, O, oh, ow))
        for i in range(kh):
            for j in range(kw):
                z += np.einsum("oc,ncpq->nopq", W[:, :, i, j], X[:, :, i : i + oh, j : j + ow])
        z += b[None, :, None, None]
        dW = np.zeros_like(W)
        for i in range(kh):
            for j in range(kw):
                dW[:, :, i, j] = np.einsum("nopq,ncpq->oc", G, X[:, :, i : i + oh, j : j + ow])
        # the input gradient: pad delta by k - 1 and correlate with the kernel rotated by 180 degrees
        Gp = np.pad(G, ((0, 0), (0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1)))
        Wr = W[:, :, ::-1, ::-1] if flip else W
        dX = np.zeros_like(X)
        for i in range(kh):
            for j in range(kw):
                dX += np.einsum("oc,nopq->ncpq", Wr[:, :, i, j], Gp[:, :, i : i + H, j : j + Wd])
        return {"loss": float((G * z).sum()), "grad": {"W": dW, "b": G.sum((0, 2, 3)), "X": dX}}

    return f


# -- RNN with BPTT -------------------------------------------------------------------------------------

def _softmax(o: np.ndarray) -> np.ndarray:
    e = np.exp(o - o.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _rnn(recurrent_term: bool = True) -> Impl:
    def f(W_hh: np.ndarray, W_hx: np.ndarray, b_h: np.ndarray, W_yh: np.ndarray, b_y: np.ndarray,
          X: np.ndarray, Y: np.ndarray) -> dict[str, Any]:
        T, n, _ = X.shape
        hs, yhats = [np.zeros((n, W_hh.shape[0]))], []
        loss = 0.0
        for t in range(T):
            hs.append(np.tanh(hs[-1] @ W_hh.T + X[t] @ W_hx.T + b_h))
            yh = _softmax(hs[-1] @ W_yh.T + b_y)
            yhats.append(yh)
            loss += float(-(Y[t] * np.log(yh)).sum(1).mean()) / T
        g = {k: np.zeros_like(v) for k, v in dict(W_hh=W_hh, W_hx=W_hx, b_h=b_h, W_yh=W_yh, b_y=b_y).items()}
        carry = np.zeros_like(hs[0])
        for t in reversed(range(T)):
            dy = (yhats[t] - Y[t]) / (T * n)
            g["W_yh"] += dy.T @ hs[t + 1]
            g["b_y"] += dy.sum(0)
            zeta = dy @ W_yh + (carry if recurrent_term else 0.0)
            delta = zeta * (1 - hs[t + 1] ** 2)
            g["W_hh"] += delta.T @ hs[t]
            g["W_hx"] += delta.T @ X[t]
            g["b_h"] += delta.sum(0)
            carry = delta @ W_hh
        return {"loss": loss, "grad": g}

    return f


# -- attention -------------------------------------------------------------------------------------------

def _attention(rank_one: bool = True) -> Impl:
    def f(Q: np.ndarray, K: np.ndarray, V: np.ndarray, G: np.ndarray) -> dict[str, Any]:
        d = Q.shape[-1]
        A = _softmax(Q @ K.transpose(0, 2, 1) / np.sqrt(d))
        U = A @ V
        dA = G @ V.transpose(0, 2, 1)
        dS = A * (dA - (A * dA).sum(-1, keepdims=True)) if rank_one else A * dA
        return {"loss": float((G * U).sum()),
                "grad": {"Q": dS @ K / np.sqrt(d), "K": dS.transpose(0, 2, 1) @ Q / np.sqrt(d),
                         "V": A.transpose(0, 2, 1) @ G}}

    return f


# -- LSTM, written by hand in torch (autograd for its gradients): the bug is in the forward ---------------

def _lstm(swap: bool = False) -> Impl:
    def f(**a: torch.Tensor) -> dict[str, Any]:
        P = {k: v.clone().requires_grad_(True) for k, v in a.items() if k not in ("X", "Y")}
        X, Y = a["X"], a["Y"]
        h = torch.zeros(X.shape[1], P["W_fh"].shape[0], dtype=X.dtype)
        c = torch.zeros_like(h)
        loss = torch.zeros((), dtype=X.dtype)
        for t in range(X.shape[0]):
            def gate(k: str, h: torch.Tensor = h, x: torch.Tensor = X[t]) -> torch.Tensor:
                return h @ P[f"W_{k}h"].T + x @ P[f"W_{k}x"].T + P[f"b_{k}"]

            f_, i_ = torch.sigmoid(gate("f")), torch.sigmoid(gate("i"))
            if swap:
                f_, i_ = i_, f_  # forget and input gates exchanged
            o_, cand = torch.sigmoid(gate("o")), torch.tanh(gate("c"))
            c = f_ * c + i_ * cand
            h = o_ * torch.tanh(c)
            logits = h @ P["W_yh"].T + P["b_y"]
            loss = loss - (Y[t] * torch.log_softmax(logits, -1)).sum(-1).mean() / X.shape[0]
        grads = torch.autograd.grad(loss, list(P.values()))
        return {"loss": loss.detach(), "grad": dict(zip(P, grads))}

    return f


CASES = [
    ("conv2d", {}, _conv(flip=False), _conv(flip=True), "numpy", "gradient X"),
    ("rnn", {}, _rnn(recurrent_term=False), _rnn(recurrent_term=True), "numpy", "gradient W_hh"),
    ("attention", {}, _attention(rank_one=False), _attention(rank_one=True), "numpy", "gradient"),
    ("lstm", {}, _lstm(swap=True), _lstm(swap=False), "torch", "lstm"),
]


@pytest.mark.parametrize("name,opts,wrong,right,backend,names", CASES, ids=[
    "conv-without-flip", "bptt-without-recurrent-term", "attention-without-rank-one-term", "lstm-swapped-gates"])
def test_planted_bug_is_rejected_and_fix_accepted(name: str, opts: dict[str, Any], wrong: Impl, right: Impl,
                                                  backend: str, names: str) -> None:
    m = derive.models.get(name, **opts)
    kw = {"examples": 10, "backend": backend, "derandomize": True}
    with pytest.raises(verify.Mismatch) as ei:
        verify.check(m, implementation=wrong, **kw)
    assert names in str(ei.value)
    assert verify.check(m, implementation=right, **kw).examples == 10
