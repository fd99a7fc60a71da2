"""Chapter 4, optimization algorithms: Rosenbrock, the automatic-differentiation example of Fig 4.7,
and Newton's method for logistic regression (§4.1, §4.4, §4.6)."""

from __future__ import annotations

from ..nn import exp, sin, take
from ..program import Builder, Model
from . import register
from .ch3 import _logistic


@register("rosenbrock", "§4.1", "Rosenbrock's banana function")
def rosenbrock() -> Model:
    r"""Rosenbrock's function C = (1 - theta_1)^2 + 100 (theta_2 - theta_1^2)^2, minimum at (1, 1)."""
    b = Builder("rosenbrock", "Rosenbrock's banana function", "§4.1")
    theta = b.param("theta", (2,), r"\theta")
    t1, t2 = take(theta, 0, 0), take(theta, 0, 1)
    b.eq("C", (1 - t1) ** 2 + 100 * (t2 - t1**2) ** 2, "C")
    return b.model(hessian=("theta",))


@register("autodiff_example", "§4.4", "automatic differentiation on the graph of Fig 4.7")
def autodiff_example() -> Model:
    r"""The computational graph of Fig 4.7: C = sin(theta_1 theta_2) + exp(theta_2 + theta_3) - 2 theta_3."""
    b = Builder("autodiff_example", "automatic differentiation on the graph of Fig 4.7", "§4.4")
    theta = b.param("theta", (3,), r"\theta")
    t1, t2, t3 = (take(theta, 0, i) for i in range(3))
    bar = {f"a{k}": (f"a{k}_bar", rf"\bar{{a}}_{{{k}}}") for k in range(1, 7)}
    a1 = b.eq("a1", t1 * t2, "a_{1}", adjoint=bar["a1"])
    a2 = b.eq("a2", t2 + t3, "a_{2}", adjoint=bar["a2"])
    a3 = b.eq("a3", -2 * t3, "a_{3}", adjoint=bar["a3"])
    a4 = b.eq("a4", sin(a1), "a_{4}", adjoint=bar["a4"])
    a5 = b.eq("a5", exp(a2), "a_{5}", adjoint=bar["a5"])
    b.eq("a6", a4 + a5 + a3, "a_{6}", adjoint=bar["a6"])
    return b.model(hessian=("theta",))


@register("newton_logistic", "§4.6", "Newton's method for logistic regression")
def newton_logistic() -> Model:
    r"""One Newton step for logistic regression, theta <- theta - H^{-1} g, with H = X~^T D X~ / n."""
    return _logistic("newton_logistic", "Newton's method for logistic regression", "§4.6", True)
