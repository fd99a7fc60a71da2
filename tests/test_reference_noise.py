"""verify's estimate of the reference's rounding noise (the reference rerun on inputs moved by an ulp or so) is
rounding, not the decisions a move takes at a kink or tie: an mlp with ReLU at exact zeros of W x + b once got
a noise of 10 times its W2 gradient's scale, and any error in that gradient passed at that example."""

from __future__ import annotations

import numpy as np
import pytest

import derive
from verify.check import NOISE, RTOL, _compare_out, _reference, resolve_reference
from verify.strategies import Example

_SIZES = {"n": 3, "N0": 3, "N1": 3, "N2": 3, "N3": 3}
_EXAMPLE = Example(_SIZES, 5, "kinks")


def _case() -> tuple[derive.Model, dict[str, np.ndarray], float, dict[str, np.ndarray]]:
    m = derive.models.get("mlp", activation="relu")
    arrays = _EXAMPLE.arrays(m)
    ref, _ = resolve_reference(m, None)
    loss, grads, _, _ = _reference(m, ref, arrays, "cpu", hessian=False)
    return m, arrays, loss, grads


def test_the_noise_at_kinks_is_rounding() -> None:
    m, _, _, grads = _case()
    for k in m.grad_names:
        assert NOISE[k] <= 1e-9 * max(1.0, float(np.max(np.abs(grads[k])))), k


@pytest.mark.parametrize("k", ["W1", "W2", "b2"])
def test_a_wrong_gradient_fails_at_that_example(k: str) -> None:
    m, arrays, loss, grads = _case()
    noise = dict(NOISE)
    wrong = {**grads, k: grads[k] * 1.01}
    fails = _compare_out(m, "the implementation", {"loss": loss, "grad": wrong}, loss, grads, {}, {}, RTOL, None,
                         noise=noise, arrays=arrays)
    assert [f.quantity for f in fails] == [f"gradient {k}"]
    assert not _compare_out(m, "the implementation", {"loss": loss, "grad": grads}, loss, grads, {}, {}, RTOL,
                            None, noise=noise, arrays=arrays)
