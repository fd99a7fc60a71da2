"""verify's finite-difference check estimates the loss's own rounding noise well enough not to call a right
gradient wrong, and still catches a wrong one, on a VAE whose KL term e^l - 1 - l is a small difference of
O(1) terms at small values (two probes of that noise once measured it 10x too low)."""

from __future__ import annotations

import numpy as np
import pytest

import derive
import numeric
import verify
from verify.check import Mismatch, _finite_difference
from verify.strategies import Example

_EXAMPLE = Example({"m": 4, "k": 1, "n": 6, "p": 2}, 36, "small")


def _case() -> tuple[derive.Model, object, dict[str, np.ndarray], dict[str, np.ndarray]]:
    m = derive.models.get("vae")
    arrays = _EXAMPLE.arrays(m)
    f = numeric.compile(m, "numpy")
    return m, f, arrays, f(**arrays)["grad"]


def test_a_right_gradient_passes_at_a_noisy_small_loss() -> None:
    m, f, arrays, grads = _case()
    assert _finite_difference(m, f, arrays, grads, _EXAMPLE) < 1e-5


@pytest.mark.parametrize("rel", [1e-2, 1e-1])
def test_a_slightly_wrong_gradient_is_still_caught(rel: float) -> None:
    """A 1% error in the largest gradient (the decoder bias's) still fails the check."""
    m, f, arrays, grads = _case()
    wrong = {k: (v * (1 + rel) if k == "b_d" else v) for k, v in grads.items()}
    with pytest.raises(Mismatch, match="finite difference"):
        _finite_difference(m, f, arrays, wrong, _EXAMPLE)


def _cancelling() -> tuple[derive.Model, object, dict[str, np.ndarray], dict[str, np.ndarray], Example]:
    """sum(A x - tanh(A x)) at small values (found by the thorough profile of test_parse): u - tanh(u) at
    u ~ 1e-5 is u^3/3 ~ 1e-17, and tanh(u), rounded as u + c, keeps its rounding error while u moves by whole
    ulps, so the probes at 1e-4 h saw no noise where the step h sees 1e-22 (10x the derivative times h)."""
    m = derive.parse("sum(A*x - tanh(A*x))", x="vector(n)", A="matrix(n,n)")
    ex = Example({"n": 4}, 904, "small")
    arrays = ex.arrays(m)
    f = numeric.compile(m, "numpy")
    return m, f, arrays, f(**arrays)["grad"], ex


def test_a_right_gradient_passes_where_the_rounding_noise_is_still_at_small_steps() -> None:
    m, f, arrays, grads, ex = _cancelling()
    assert _finite_difference(m, f, arrays, grads, ex) < 1e-5


def test_a_gradient_far_above_that_noise_is_still_caught() -> None:
    """The derivative (2e-14) is below the noise of the difference (2e-13), so only an error past that noise can
    show; a gradient 100 times too large does (the exact comparison with torch catches the smaller ones)."""
    m, f, arrays, grads, ex = _cancelling()
    with pytest.raises(Mismatch, match="finite difference"):
        _finite_difference(m, f, arrays, {k: 100 * v for k, v in grads.items()}, ex)


def test_a_right_gradient_passes_where_the_loss_does_not_resolve_the_step() -> None:
    """sum(A x - sin(A x)) at small values (found by the thorough profile of test_parse): u - sin(u) at u ~ 1e-6
    is u^3/6 ~ 1e-19, rounded at u's ulp (1e-22), and moves by 1e-23 over the step, so every difference was 0
    against a tolerance of 1e-17; the step grows until the loss takes distinct values across it."""
    m = derive.parse("sum(A*x - sin(A*x))", x="vector(n)", A="matrix(n,n)")
    ex = Example({"n": 4}, 904, "small")
    arrays = ex.arrays(m)
    f = numeric.compile(m, "numpy")
    grads = f(**arrays)["grad"]
    assert _finite_difference(m, f, arrays, grads, ex) < 1e-5
    with pytest.raises(Mismatch, match="finite difference"):
        _finite_difference(m, f, arrays, {k: 2 * v for k, v in grads.items()}, ex)


def test_a_loss_constant_to_rounding_is_not_measured_and_not_failed() -> None:
    """log(1 + u^2) at u = c A y ~ 1e-9 (small values) is log(1) = 0 in floating point for every step up to 1% of
    the values, while its gradient is 1e-15: no finite difference measures it, so none is taken (it was a
    Mismatch, "finite difference 0"); the comparison with torch autograd still judges the gradient."""
    m = derive.parse("sum(log(1 + (c*(A*y)) .^ 2))", y="vector(n)", A="matrix(n,n)", c="scalar")
    ex = Example({"n": 4}, 904, "small")
    arrays = ex.arrays(m)
    f = numeric.compile(m, "numpy")
    out = f(**arrays)
    assert out["loss"] == 0.0 and any(np.any(g != 0) for g in out["grad"].values())
    assert _finite_difference(m, f, arrays, out["grad"], ex) is None
    rep = verify.check(m, examples=20, values=("small",))
    assert rep.examples == 20 and any("constant to rounding" in n for n in rep.notes)

    def wrong(y: np.ndarray, A: np.ndarray, c: np.ndarray) -> dict[str, object]:
        got = f(y=y, A=A, c=c)
        return {"loss": got["loss"], "grad": {k: 2 * v for k, v in got["grad"].items()}}

    with pytest.raises(Mismatch):  # (at normal values: at small ones the gradient, 1e-15, is below rtol's floor)
        verify.check(m, implementation=wrong, examples=20)
