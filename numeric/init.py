"""Sampling initial weights from the closed forms of :mod:`derive.init`."""

from __future__ import annotations

from typing import Any

import numpy as np
import sympy as sp

from derive import init as closed

__all__ = ["variance", "sample"]


def variance(kind: str, fan_in: int, fan_out: int) -> float:
    """Var(W) for ``kind`` in glorot, he (from the derived closed forms)."""
    forms = {"glorot": closed.glorot_variance(), "he": closed.he_variance()}
    if kind not in forms:
        raise ValueError(f"unknown initialisation {kind!r}; choose one of: {', '.join(forms)}")
    return float(forms[kind].subs({closed.N_in: fan_in, closed.N_out: fan_out}))


def sample(kind: str, shape: tuple[int, int], rng: np.random.Generator, distribution: str = "normal") -> Any:
    """A weight matrix of ``shape`` (N_l, N_{l-1}), PyTorch layout, with the variance of ``kind``."""
    fan_out, fan_in = shape
    v = variance(kind, fan_in, fan_out)
    if distribution == "normal":
        return rng.normal(0.0, np.sqrt(v), size=shape)
    if distribution == "uniform":
        r = float(closed.uniform_bound(sp.Float(v)))
        return rng.uniform(-r, r, size=shape)
    raise ValueError(f"distribution must be 'normal' or 'uniform', got {distribution!r}")
