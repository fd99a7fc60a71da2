r"""Weight initialisation (§5.5) as closed forms of the variance argument.

For z_i = sum_j W_ij a_j with independent zero-mean weights, Var z_i = N_{l-1} Var(W) E[a_j^2]. Keeping
the variance of the signal constant through the forward pass gives Var(W) = 1 / (N_{l-1} E-factor);
through the backward pass the same with N_l. The closed forms below are solved from those equations
with SymPy (not typed in), and ``numeric.init`` samples from them.
"""

from __future__ import annotations

import sympy as sp

__all__ = ["N_in", "N_out", "glorot_variance", "he_variance", "uniform_bound", "variance_equations"]

N_in, N_out = sp.symbols("N_{l-1} N_l", positive=True)
_v, _q = sp.symbols("v q", positive=True)


def variance_equations(activation: str = "tanh") -> tuple[sp.Eq, sp.Eq]:
    """The forward and backward variance-preservation conditions for Var(W) = v.

    ``q`` is E[a^2] / Var(z) for the activation: 1 for tanh near 0 (and identity), 1/2 for ReLU (half of
    a symmetric distribution is zeroed).
    """
    q = {"tanh": sp.Integer(1), "identity": sp.Integer(1), "relu": sp.Rational(1, 2)}[activation]
    forward = sp.Eq(N_in * _v * q, 1)  # Var z^{[l]} = Var z^{[l-1]}
    backward = sp.Eq(N_out * _v * q, 1)  # Var zeta^{[l-1]} = Var zeta^{[l]}
    return forward, backward


def glorot_variance() -> sp.Expr:
    r"""Glorot/Xavier: the harmonic compromise of the two conditions, Var W = 2 / (N_{l-1} + N_l)."""
    f, b = variance_equations("tanh")
    vf, vb = sp.solve(f, _v)[0], sp.solve(b, _v)[0]
    return sp.simplify(2 / (1 / vf + 1 / vb))


def he_variance() -> sp.Expr:
    r"""He/Kaiming for ReLU: the forward condition with E[a^2] = Var(z)/2, Var W = 2 / N_{l-1}."""
    f, _ = variance_equations("relu")
    return sp.simplify(sp.solve(f, _v)[0])


def uniform_bound(variance: sp.Expr) -> sp.Expr:
    """r with Var U[-r, r] = r^2 / 3 = ``variance``."""
    r = sp.Symbol("r", positive=True)
    return sp.solve(sp.Eq(r**2 / 3, variance), r)[0]
