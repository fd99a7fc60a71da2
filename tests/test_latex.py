"""Every entry's printed equations render with a real TeX engine (pdflatex with amsmath where installed;
matplotlib's mathtext otherwise, environment by environment), their text form reads without LaTeX, and the
printer's naming rules hold for every entry: adjoints never share a symbol with a forward quantity, no
accent covers a script, no rank-one broadcast with ones, no blackboard-bold one, no line too long.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
from matplotlib import mathtext  # noqa: E402

import derive  # noqa: E402
from derive.latex import (  # noqa: E402
    check_names,
    constants_tex,
    equations_tex,
    init_tex,
    jacobian_tex,
    newton_tex,
    program_tex,
    split_scripts,
    transpose,
    with_sup,
)
from derive.textform import to_text, unknown  # noqa: E402

NAMES = derive.models.names()
PDFLATEX = shutil.which("pdflatex")


def printed(name: str) -> list[str]:
    """Everything dlmath prints for an entry: forward, backprop per sample and in batch form, Hessians, the
    extras (Newton step, RNN Jacobian, initialisation), the hyperparameters, and the whole model block."""
    m = derive.models.get(name)
    L = m.options.get("layers") if isinstance(m.options.get("layers"), int) else None
    out = program_tex(m.equations, layers=L, model=m) + equations_tex(m.equations, model=m)
    if not m.is_update:
        bp = derive.backprop(m)
        out += program_tex(bp, layers=L, model=m) + program_tex(bp, batch=True, layers=L, model=m)
        out += equations_tex(bp, model=m) + equations_tex(bp, batch=True, model=m)
        for p in m.hessian_wrt:
            h = derive.hessian(m, p)
            out += equations_tex(h, model=m) + equations_tex(h, batch=True, model=m)
        out += jacobian_tex(m) + (newton_tex(m) if m.newton else [])
    if any(p.startswith("W") for p in m.params):
        out += init_tex(m)
    c = constants_tex(m)
    if c:
        out.append(c)
    out.append(derive.latex(m))
    return out


_PARSER = mathtext.MathTextParser("path")


def _mathtext_pieces(tex: str) -> list[str]:
    """mathtext has no environments: an ``aligned`` block renders row by row, a matrix cell by cell (with
    the matrix itself replaced by a symbol); everything else as it is."""
    pieces = []

    def cells(mt: re.Match[str]) -> str:
        for row in re.split(r"\\\\", mt.group(1)):
            pieces.extend(c for c in row.split("&") if c.strip())
        return "M"

    tex = re.sub(r"\\begin\{pmatrix\}(.*?)\\end\{pmatrix\}", cells, tex)
    tex = tex.replace(r"\textbf", r"\mathbf")
    tex = re.sub(r"\\begin\{aligned\}(\[t\])?|\\end\{aligned\}", "", tex)
    rows = re.split(r"\\\\(?:\[\w+\])?", tex)
    pieces.extend(r.replace("&", "") for r in rows if r.strip())
    return pieces


def _pdflatex(texs: dict[str, list[str]], tmp: Path) -> str:
    body = []
    for name, eqs in texs.items():
        body.append(rf"\section*{{{name.replace('_', ' ')}}}")
        body.extend(rf"\[ {t} \]" for t in eqs)
    doc = "\n".join([r"\documentclass{article}", r"\usepackage{amsmath,amssymb}", r"\usepackage[margin=1cm]{geometry}",
                     r"\begin{document}", *body, r"\end{document}"])
    (tmp / "eqs.tex").write_text(doc, encoding="utf-8")
    r = subprocess.run([PDFLATEX, "-halt-on-error", "-interaction=nonstopmode", "eqs.tex"], cwd=tmp,
                       capture_output=True, text=True, timeout=120)
    if r.returncode == 0:
        return ""
    log = r.stdout
    k = log.find("\n!")
    return log[k : k + 600] if k >= 0 else log[-600:]


def test_every_entry_renders_with_a_tex_engine(tmp_path: Path) -> None:
    from derive import book

    texs = {name: list(dict.fromkeys(printed(name))) for name in NAMES}
    texs["book"] = [t for k in book.CASES for t in book.show(k)]  # the docs page "The book, side by side"
    if PDFLATEX:
        texs["the book's own equations"] = [t for c in book.CASES.values() for t in c.book]
        err = _pdflatex(texs, tmp_path)
        if err:  # find the entry, then the equation, that pdflatex refuses
            for name, eqs in texs.items():
                (tmp_path / name).mkdir()
                if not _pdflatex({name: eqs}, tmp_path / name):
                    continue
                for k, t in enumerate(eqs):
                    d = tmp_path / name / str(k)
                    d.mkdir()
                    e = _pdflatex({name: [t]}, d)
                    assert not e, f"pdflatex refuses {name}: {t}\n{e}"
            pytest.fail(err)
        return
    for name, eqs in texs.items():  # no TeX installed (a clean CI machine): matplotlib's mathtext
        for t in eqs:
            for piece in _mathtext_pieces(t):
                try:
                    _PARSER.parse(f"${piece}$")
                except ValueError as e:
                    raise AssertionError(f"mathtext refuses {name}: {piece}\n{e}") from None


@pytest.mark.parametrize("name", NAMES)
def test_text_form_reads_without_latex(name: str) -> None:
    unknown()
    for t in printed(name):
        text = to_text(t)
        assert not unknown(), (name, t)
        assert "\\" not in text and not re.search(r"[{}]", re.sub(r"1\{[^{}]*\}", "", text)), (name, text)


@pytest.mark.parametrize("tex,text", [
    (r"\operatorname{LeakyReLU}_{\frac{1}{10}}\left(z\right)", "LeakyReLU_(1/10)(z)"),
    (r"\mathbf{1}\{z > 0\} + \epsilon\,\mathbf{1}\{z \leq 0\}", "1{z > 0} + ε 1{z ≤ 0}"),
    (r"W^{[2]\top} \delta^{[2]}", "W^[2]ᵀ δ^[2]"),
    (r"\hat{\sigma} = \sqrt{\frac{1}{n} \sum_{i=1}^{n} z^{(i)} + \epsilon}", "σ̂ = √(1/n Σ_(i=1)^n z^(i) + ε)"),
    (r"H = \begin{pmatrix}a & b \\ c & d\end{pmatrix}", "H = [a, b; c, d]"),
    (r"x^{2} \leq q", "x² ≤ q"),
])
def test_text_form_of_the_issue_cases(tex: str, text: str) -> None:
    assert to_text(tex) == text


@pytest.mark.parametrize("name", NAMES)
def test_naming_rules(name: str) -> None:
    """One set of rules for every entry (the issue's items 1, 2, 3, 6, 8)."""
    m = derive.models.get(name)
    assert check_names(m) == [], "an adjoint shares a symbol with a forward quantity"
    for t in printed(name):
        assert r"\mathbb{1}" not in t, t
        # accents over whole names: \bar{z^{[1]}} or \bar{\tilde h^{<t>}} never appear
        for acc in re.finditer(r"\\(bar|hat|tilde)\{", t):
            depth, j = 0, acc.end() - 1
            while j < len(t):
                depth += {"{": 1, "}": -1}.get(t[j], 0)
                if depth == 0:
                    break
                j += 1
            inner = t[acc.end() : j]
            assert "^" not in inner and "_" not in inner, (name, t)
        # broadcasts are implicit: no outer product with a ones vector
        assert not re.search(r"\\mathbf\{1\} \S+\^\\top|\S \\mathbf\{1\}\^\\top(?! \S)", t), (name, t)
        for row in re.split(r"\\\\(?:\[\w+\])?", t):
            if r"\begin{pmatrix}" in row or r"\begin{aligned}" not in t and "&=" in row:
                continue
            assert len(to_text(row)) <= 150, (name, to_text(row))


def test_hyperparameters_are_symbols_listed_once() -> None:
    ridge = derive.models.get("ridge_regression", lam=0.25)
    assert equations_tex(ridge.equations, model=ridge)[1] == r"R_{\lambda} = \lambda \left\|\theta\right\|^{2}"
    assert constants_tex(ridge) == r"\lambda = 0.25"
    drop = derive.models.get("dropout", p_keep=0.8)
    assert equations_tex(drop.equations, model=drop)[0] == r"\tilde{a} = \frac{1}{p_{\mathrm{keep}}} m \odot a"
    leaky = derive.models.get("leaky_relu", slope=0.1)
    assert derive.latex(leaky.equations[0]) == r"a = \operatorname{LeakyReLU}_{\epsilon}(z)"
    assert constants_tex(leaky) == r"\epsilon = 0.1"
    block = derive.latex(derive.models.get("adam"))
    assert block.count(r"\beta_{1} = 0.9") == 1 and r"\epsilon = 10^{-8}" in block


def test_scripts_helpers() -> None:
    assert transpose("W^{[2]}") == r"W^{[2]\top}"
    assert transpose("x") == r"x^\top"
    assert transpose(r"\zeta_{g_{f}}^{\langle t\rangle}") == r"\zeta_{g_{f}}^{\langle t\rangle\top}"
    assert with_sup(r"\delta^{[\ell]}", "(i)") == r"\delta^{[\ell](i)}"
    assert with_sup("R^{c}_{[1]}", "h") == "R_{[1]}^{ch}"
    assert split_scripts(r"\hat{R}_{[1]}") == (r"\hat{R}", "[1]", "")


def test_model_block_and_notebook_repr() -> None:
    m = derive.models.get("softmax_regression")
    block = derive.latex(m)
    assert block.startswith(r"\begin{aligned}") and r"\delta &= \hat{y} - y" in block
    assert m._repr_latex_().startswith("$$")
    assert derive.grad(m, "b")._repr_latex_() == r"$g_{b} = \delta$"


def test_png_output() -> None:
    buf = io.BytesIO()
    mathtext.math_to_image(r"$\delta = \hat{y} - y$", buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def _user_mlp() -> derive.Model:
    """A user's model with no adjoint names (every adjoint inlined), as issue 8 found it."""
    from derive.nn import norm2, tanh

    b = derive.Builder("user_mlp", "a user's two-layer network", "test")
    b.samples("n", 5)
    p, h, q = b.dim("p", 3), b.dim("h", 4), b.dim("q", 2)
    W1, W3, b3 = b.param("W1", (h, p), "W_1"), b.param("W3", (q, h), "W_3"), b.param("b3", (q,), "b_3")
    x, y = b.input("X", (p,), "x", batched=True), b.input("Y", (q,), "y", batched=True)
    a = b.eq("a", tanh(W1 @ x), "a")
    b.eq("C", norm2(W3 @ a + b3 - y), "C")
    return b.model()


def test_batch_form_with_inlined_adjoints_is_shape_consistent() -> None:
    """Issue 8's defect: the batch form printed g_{W_3} = (2/n)(W_3 A^T 1 - Y)^T A. Each per-sample operand is
    now lifted as a whole (samples as columns): (2/n)(W_3 A + b_3 - Y) A^T, with A and Y defined; and the
    numbers of that printed formula are the kernel's gradient."""
    import numpy as np

    import numeric

    m = _user_mlp()
    got = {e.lhs.name: t for e, t in zip(derive.backprop(m), equations_tex(derive.backprop(m), batch=True, model=m))}
    assert got["g_W3"] == (r"g_{W_3} = \frac{2}{n} (W_3 A + b_3 - Y) A^\top,\quad A = \left[a^{(1)}, \dots, "
                           r"a^{(n)}\right],\quad Y = \left[y^{(1)}, \dots, y^{(n)}\right]")
    assert got["g_b3"].startswith(r"g_{b_3} = \frac{2}{n} (W_3 A - Y) \mathbf{1} + 2 b_3")
    rng = np.random.default_rng(5)
    X, Y = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    W1, W3, b3 = rng.normal(size=(4, 3)), rng.normal(size=(2, 4)), rng.normal(size=2)
    out = numeric.compile(m)(X=X, Y=Y, W1=W1, W3=W3, b3=b3)
    A, Yc = np.tanh(W1 @ X.T), Y.T  # samples as columns, as printed
    np.testing.assert_allclose(out["grad"]["W3"], 2 / 5 * (W3 @ A + b3[:, None] - Yc) @ A.T, rtol=1e-12)
    np.testing.assert_allclose(out["grad"]["b3"], 2 / 5 * (W3 @ A - Yc) @ np.ones(5) + 2 * b3, rtol=1e-12)


def test_dlmath_derive_prints_what_is_computed(capsys: pytest.CaptureFixture[str]) -> None:
    from verify.cli import main

    assert main(["derive", "sgd"]) == 0  # an optimizer: its update, then exit 0
    assert capsys.readouterr().out.splitlines()[1:] == [r"\theta^{(t+1)} = \theta^{(t)} - \alpha g^{(t)}",
                                                        r"\text{with } \alpha = 0.01"]
    assert main(["derive", "mlp", "--init", "-O", "activation=relu", "--format", "text"]) == 0
    assert "Var(W^[ℓ]_ij) = 2/(N_(ℓ-1)) (He, relu layers)" in capsys.readouterr().out
    assert main(["derive", "newton_logistic"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == r"\theta^{(t+1)} = \theta^{(t)} - H^{-1} g"
    assert main(["derive", "rnn", "--format", "text"]) == 0
    assert "(∂ h^⟨t+1⟩)/(∂ h^⟨t⟩) = W_hhᵀ diag(S\u0307(z^⟨t+1⟩))" in capsys.readouterr().out
    assert main(["derive", "leaky_relu", "-O", "slope=0.1", "--format", "text"]) == 0
    out = capsys.readouterr().out
    assert "a = LeakyReLU_ε(z)" in out and "δ = (1{z > 0} + ε 1{z ≤ 0}) ⊙ ζ" in out and "with ε = 0.1" in out
    assert main(["derive", "adam", "--format", "text"]) == 0
    out = capsys.readouterr().out
    assert "t_next" not in out and "β_1^(t + 1)" in out


def test_mlp_forward_counts_layers_up() -> None:
    m = derive.models.get("mlp", layers=4)
    fwd = program_tex(m.equations, layers=4, model=m)
    assert fwd[0].endswith(r"\qquad \ell = 1, \dots, L") and fwd[1].endswith(r"\qquad \ell = 1, \dots, L-1")


@pytest.mark.parametrize("name", [n for n in NAMES if derive.models.get(n).is_update])
def test_derive_on_an_optimizer_prints_the_update_and_succeeds(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from verify.cli import main

    assert main(["derive", name]) == 0
    out = capsys.readouterr().out.splitlines()
    m = derive.models.get(name)
    assert out[1 : 1 + len(program_tex(m.equations, model=m))] == program_tex(m.equations, model=m)
    assert out[-1].startswith(r"\text{with } ")
