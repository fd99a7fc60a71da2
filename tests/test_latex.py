"""The LaTeX of every zoo entry renders (matplotlib's mathtext), and reads like the book."""

from __future__ import annotations

import io

import matplotlib
import pytest

matplotlib.use("Agg")
from matplotlib import mathtext  # noqa: E402

import derive  # noqa: E402
from derive.latex import equations_tex  # noqa: E402

_PARSER = mathtext.MathTextParser("path")


def _renders(tex: str) -> None:
    _PARSER.parse(f"${tex}$")


@pytest.mark.parametrize("name", derive.models.names())
def test_every_equation_renders(name: str) -> None:
    m = derive.models.get(name)
    eqs = list(m.equations) + ([] if m.is_update else derive.backprop(m))
    for p in m.hessian_wrt:
        eqs += derive.hessian(m, p)
    for tex in equations_tex(eqs) + equations_tex(eqs, batch=True):
        _renders(tex)


def test_model_block_and_notebook_repr() -> None:
    m = derive.models.get("softmax_regression")
    block = derive.latex(m)
    assert block.startswith(r"\begin{aligned}") and r"\delta &= \hat{y} - y" in block
    assert m._repr_latex_().startswith("$$")
    assert derive.grad(m, "b")._repr_latex_() == r"$g_{b} = \delta$"


def test_book_notation() -> None:
    ae = derive.models.get("shallow_autoencoder")
    got = {e.lhs.name: derive.latex(e) for e in derive.backprop(ae)}
    assert got["delta_d"] == r"\delta_d = 2 \left(\hat{x} - x\right)"
    assert got["delta_e"] == (r"\delta_e = \left(W_d^\top \delta_d\right) \odot \left(1 - \tilde{x} \odot "
                              r"\tilde{x}\right)")
    assert got["g_W_e"] == r"g_{W_e} = \delta_e x^\top"
    sm = derive.models.get("sigmoid")
    assert derive.latex(derive.grad(sm, "Z")) == r"\delta = \zeta \odot a \odot \left(1 - a\right)"
    assert derive.latex(derive.models.get("softmax_regression").equations[0]) == "z = W x + b"


def test_transpose_of_layer_indexed_symbol() -> None:
    from derive.latex import transpose

    assert transpose("W^{[2]}") == r"W^{[2]\top}"
    assert transpose("x") == r"x^\top"


def test_svg_output() -> None:
    buf = io.BytesIO()
    mathtext.math_to_image(r"$\delta = \hat{y} - y$", buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
