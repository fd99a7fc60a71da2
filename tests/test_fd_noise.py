"""verify's finite-difference check estimates the loss's own rounding noise well enough not to call a right
gradient wrong, and still catches a wrong one, on a VAE whose KL term e^l - 1 - l is a small difference of
O(1) terms at small values (two probes of that noise once measured it 10x too low)."""

from __future__ import annotations

import numpy as np
import pytest

import derive
import numeric
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
