r"""
Verify your own layer
=====================

You wrote a forward and a backward pass by hand (a custom layer, a fused kernel) and want proof that it
matches the math. ``verify.check`` runs it on hypothesis-drawn shapes and values against PyTorch autograd
on an independent reference, in float64, and either returns a report or raises ``verify.Mismatch`` with
everything needed to reproduce the failure (``derandomize=True`` below makes this page draw the same
examples on every build). The same check runs in your test suite through the pytest
fixture ``dlmath_verify``.

Here: softmax regression, :math:`C = \frac1n \sum_i -y_i^\top \log S_{\mathrm{softmax}}(W x_i + b)`, written
by hand in NumPy, once right and once with a classic bug.
"""

import numpy as np

import derive
import verify

m = derive.models.get("softmax_regression")
print(m.shapes(n=8, p=3, K=4))  # the arrays: batch-first, W as nn.Linear's (out, in)


def softmax_regression(W, b, X, Y):
    z = X @ W.T + b
    z = z - z.max(axis=1, keepdims=True)
    log_yhat = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # log-softmax: no log(0) at large logits
    n = X.shape[0]
    loss = -np.sum(Y * log_yhat) / n
    delta = (np.exp(log_yhat) - Y) / n
    return {"loss": loss, "grad": {"W": delta.T @ X, "b": delta.sum(axis=0)}}


report = verify.check(m, implementation=softmax_regression, backend="numpy", examples=10, derandomize=True)
print(report)

# %%
# The verification draws hard values too: logits of order 1e3, where the textbook
# ``np.log(softmax(z))`` takes the log of an exact zero. That version fails on them:


def softmax_regression_naive(W, b, X, Y):
    z = X @ W.T + b
    yhat = np.exp(z - z.max(axis=1, keepdims=True))
    yhat /= yhat.sum(axis=1, keepdims=True)
    out = softmax_regression(W, b, X, Y)
    with np.errstate(divide="ignore"):
        out["loss"] = -np.sum(Y * np.log(yhat)) / X.shape[0]
    return out


try:
    verify.check(m, implementation=softmax_regression_naive, backend="numpy", examples=10, derandomize=True)
except verify.Mismatch as e:
    print(e)
else:
    raise AssertionError("the naive log-softmax was expected to fail")

# %%
# And a classic bug: the bias gradient not summed over the batch (one sample's gradient only).


def softmax_regression_bug(W, b, X, Y):
    out = softmax_regression(W, b, X, Y)
    z = X @ W.T + b
    yhat = np.exp(z - z.max(axis=1, keepdims=True))
    yhat /= yhat.sum(axis=1, keepdims=True)
    out["grad"]["b"] = (yhat - Y)[0] / X.shape[0]
    return out


try:
    verify.check(m, implementation=softmax_regression_bug, backend="numpy", examples=10, derandomize=True)
except verify.Mismatch as e:
    print(e)
else:
    raise AssertionError("the unsummed bias gradient was expected to fail")
