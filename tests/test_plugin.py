"""The pytest plugin's fixture checks an implementation inside a user's own test suite."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import verify


def _sigmoid_layer(Z: np.ndarray, G: np.ndarray) -> dict[str, Any]:
    s = 1.0 / (1.0 + np.exp(-Z))
    return {"loss": float(np.sum(G * s)), "grad": {"Z": G * s * (1.0 - s)}}


def _sigmoid_layer_wrong(Z: np.ndarray, G: np.ndarray) -> dict[str, Any]:
    s = 1.0 / (1.0 + np.exp(-Z))
    return {"loss": float(np.sum(G * s)), "grad": {"Z": G * s}}  # forgot sigma'


def test_fixture_accepts_and_rejects(dlmath_verify: Any) -> None:
    report = dlmath_verify("sigmoid", _sigmoid_layer, backend="numpy", examples=5)
    assert report.examples == 5
    with pytest.raises(verify.Mismatch, match="gradient Z"):
        dlmath_verify("sigmoid", _sigmoid_layer_wrong, backend="numpy", examples=5)
