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
