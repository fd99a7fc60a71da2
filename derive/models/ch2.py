"""Chapter 2, principles of machine learning: least squares and ridge regression (§2.3, §2.5)."""

from __future__ import annotations

from ..nn import dot, norm2
from ..program import Builder, Model
from . import register


def _least_squares(name: str, title: str, section: str, lam: float | None) -> Model:
    b = Builder(name, title, section, {} if lam is None else {"lam": lam})
    b.samples("n", 6, 1, 8)
    p = b.dim("p", 3, 1, 5)
    theta = b.param("theta", (p,), r"\theta")
    x = b.input("X", (p,), "x", batched=True)
    y = b.input("y", (), "y", batched=True)
    yhat = b.eq("yhat", dot(x, theta), r"\hat{y}")
    if lam is None:
        b.eq("C", (y - yhat) ** 2, "C")
    else:
        lamda = b.const("lamda", lam)  # SymPy prints the name lamda as \lambda (lambda is a Python keyword)
        penalty = b.eq("R", lamda * norm2(theta), r"R_{\lambda}")
        b.eq("C", (y - yhat) ** 2 + penalty, "C")
    return b.model(hessian=("theta",))


@register("linear_regression", "§2.3", "least squares: C = 1/n ||y - X theta||^2")
def linear_regression() -> Model:
    r"""Least squares, C = 1/n ||y - X theta||^2; gradient 2/n X^T (X theta - y), Hessian 2/n X^T X."""
    return _least_squares("linear_regression", "least squares: C = 1/n ||y - X theta||^2", "§2.3", None)


@register("ridge_regression", "§2.5", "ridge: C = 1/n ||y - X theta||^2 + lambda ||theta||^2")
def ridge_regression(lam: float = 0.1) -> Model:
    r"""Ridge regression, C = 1/n ||y - X theta||^2 + lam ||theta||^2 (the §2.5 penalty)."""
    return _least_squares("ridge_regression", "ridge: C = 1/n ||y - X theta||^2 + lambda ||theta||^2", "§2.5",
                          lam)
