"""Weight initialisation: closed forms derived from the variance argument, checked by sampling."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

from derive import init as closed
from numeric import init


def test_closed_forms() -> None:
    assert sp.simplify(closed.glorot_variance() - 2 / (closed.N_in + closed.N_out)) == 0
    assert sp.simplify(closed.he_variance() - 2 / closed.N_in) == 0
    assert sp.simplify(closed.uniform_bound(closed.glorot_variance()) - sp.sqrt(6 / (closed.N_in + closed.N_out))) == 0


@pytest.mark.parametrize("kind,torch_init", [
    ("glorot", lambda w: torch.nn.init.xavier_normal_(w)),
    ("he", lambda w: torch.nn.init.kaiming_normal_(w, nonlinearity="relu")),
])
@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_sampled_variance_matches(kind: str, torch_init: object, distribution: str) -> None:
    shape = (300, 200)
    w = init.sample(kind, shape, np.random.default_rng(0), distribution)
    v = init.variance(kind, fan_in=200, fan_out=300)
    # the sample variance of N draws has relative standard deviation about sqrt(2/N) (normal) or less
    tol = 6 * np.sqrt(2 / w.size)
    assert abs(w.var() / v - 1) < tol
    t = torch.empty(shape, dtype=torch.float64)
    torch.manual_seed(0)
    torch_init(t)  # type: ignore[operator]
    assert abs(float(t.var()) / v - 1) < tol


def test_he_keeps_the_signal_variance_through_relu_layers() -> None:
    """With Var W = 2/N the pre-activation variance stays of order one through 10 ReLU layers (finite width
    makes it wander by a modest factor); with Var W = 1/N it halves at every layer."""

    def run(var: float) -> list[float]:
        rng = np.random.default_rng(1)
        a, out = rng.normal(size=(2000, 256)), []
        for _ in range(10):
            z = a @ rng.normal(0.0, np.sqrt(var), size=(256, 256)).T
            out.append(float(z.var()))
            a = np.maximum(z, 0)
        return out

    he = run(init.variance("he", 256, 256))
    assert max(he[1:]) / min(he[1:]) < 2.0
    half = run(1 / 256)
    assert half[-1] / half[1] < 0.02


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="glorot, he"):
        init.variance("lecun2", 3, 3)
