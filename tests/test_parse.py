"""``derive.parse``: the matrixcalculus.org language through derive -> numeric -> verify, with no registered
reference (the forward program evaluated eagerly in torch and differentiated by autograd), the closed forms
of the classics against torch autograd, the parser's one-line errors (nothing in the text is ever executed),
the CLI taking an expression wherever it takes a model, and hypothesis-drawn expressions."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sympy as sp
import sympy.parsing.sympy_parser as sympy_parser
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import derive
import numeric
import verify
from derive.functions import leaky_relu, relu, sigmoid, softplus
from derive.parse import ExpressionShapeError, ParseError
from verify.cli import main

EXAMPLES = max(3, settings().max_examples // 3)

LOGISTIC = "sum(log(1 + exp(-y .* (X*w))))"
FOCAL = "z = W*x\np = softmax(z)\n-sum(y .* (1 - p).^2 .* log(p))"
FOCAL_INLINE = "-sum(y .* (1 - softmax(W*x)).^2 .* log(softmax(W*x)))"

#: the issue's named checks: (text, wrt, types, Hessians checked)
NAMED: dict[str, tuple[str, Any, dict[str, str], tuple[str, ...]]] = {
    "quadratic_form": ("x'*A*x", "x", {"x": "vector(n)", "A": "matrix(n,n)"}, ("x",)),
    "least_squares": ("norm2(X*w - y)^2", ["w", "X"], {"X": "matrix(n,p)", "w": "vector(p)", "y": "vector(n)"},
                      ("w",)),
    "logistic": (LOGISTIC, "w", {"X": "matrix(n,p)", "w": "vector(p)", "y": "vector(n)"}, ("w",)),
    "trace": ("tr(A*X*B)", None, {"A": "matrix(n,p)", "X": "matrix(p,q)", "B": "matrix(q,n)"}, ()),
    "logdet": ("logdet(X)", None, {"X": "spd(n)"}, ()),
    "focal": (FOCAL, "W", {"W": "matrix(K,d)", "x": "vector(d)", "y": "vector(K)"}, ()),
    "tied_autoencoder": ("h = sigmoid(W*x + b)\nr = W'*h + c\nnorm2(r - x)^2", None,
                         {"W": "matrix(k,d)", "x": "vector(d)", "b": "vector(k)", "c": "vector(d)"}, ("x", "b", "c")),
    "ones_eye_and_powers": ("vector(1)'*exp(x) + tr(eye + A^2) - sum(matrix(1) .* A) / 2 + 2^-1 * (x'*x)^2",
                            None, {"x": "vector(n)", "A": "matrix(n,n)"}, ("x",)),
}


@pytest.mark.parametrize("name", list(NAMED))
def test_named_expressions_derive_generate_and_verify(name: str) -> None:
    text, wrt, types, hess = NAMED[name]
    m = derive.parse(text, wrt=wrt, **types)
    assert tuple(m.hessian_wrt) == hess
    assert m.name not in verify.REFERENCES
    rep = verify.check(m, examples=EXAMPLES, derandomize=True)
    assert rep.reference == "the eager evaluation of its forward program"
    assert rep.checks["torch kernel: gradients"] <= 1e-10 and rep.checks["numpy kernel: gradients"] <= 1e-10
    if hess:
        assert rep.checks["torch kernel: Hessian"] <= 1e-10
    for backend in ("numpy", "torch"):
        assert "def kernel(" in numeric.source(m, backend)
    assert derive.latex(m).startswith(r"\begin{aligned}")
    # the Reproduce line's model: Model.rebuild is the parse call
    again = eval(m.rebuild, {"derive": derive})  # our own generated code, not user text
    assert [derive.latex(e) for e in again.equations] == [derive.latex(e) for e in m.equations]


def _t(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def test_quadratic_form_hessian_is_A_plus_A_transpose() -> None:
    m = derive.parse("x'*A*x", x="vector(n)", A="matrix(n,n)", wrt="x")
    assert derive.latex(m.equations[0]) == r"C = x^\top A x"
    assert derive.latex(derive.grad(m, "x")) == r"g_{x} = A x + A^\top x"
    assert derive.latex(derive.hessian(m, "x")[0]) == r"H_{x} = A + A^\top"
    rng = np.random.default_rng(0)
    A, x = rng.normal(size=(4, 4)), rng.normal(size=4)
    for backend in ("numpy", "torch"):
        args = {"x": x, "A": A} if backend == "numpy" else {"x": _t(x), "A": _t(A)}
        out = numeric.compile(m, backend, hessian=["x"])(**args)
        np.testing.assert_allclose(np.asarray(out["hessian"]["x"]), A + A.T, rtol=1e-15)
        np.testing.assert_allclose(np.asarray(out["grad"]["x"]), (A + A.T) @ x, rtol=1e-14)


def test_least_squares_in_w_and_X_against_autograd() -> None:
    m = derive.parse("norm2(X*w - y)^2", X="matrix(n,p)", w="vector(p)", y="vector(n)", wrt=["w", "X"])
    assert set(m.params) == {"w", "X"} and set(m.inputs) == {"y"}
    assert derive.latex(derive.grad(m, "w")) == r"g_{w} = 2 X^\top (X w - y)"
    rng = np.random.default_rng(1)
    X, w, y = rng.normal(size=(5, 3)), rng.normal(size=3), rng.normal(size=5)
    Xt, wt = _t(X, True), _t(w, True)
    loss = torch.linalg.vector_norm(Xt @ wt - _t(y)) ** 2
    gX, gw = torch.autograd.grad(loss, [Xt, wt])
    out = numeric.compile(m)(X=X, w=w, y=y)
    assert out["loss"] == pytest.approx(float(loss.detach()), rel=1e-14)
    np.testing.assert_allclose(out["grad"]["w"], gw.numpy(), rtol=1e-13)
    np.testing.assert_allclose(out["grad"]["X"], gX.numpy(), rtol=1e-13)


def test_logistic_loss_hessian_in_w_against_autograd() -> None:
    m = derive.parse(LOGISTIC, X="matrix(n,p)", w="vector(p)", y="vector(n)", wrt=["w"])
    rng = np.random.default_rng(2)
    X, w, y = rng.normal(size=(6, 3)), rng.normal(size=3), np.sign(rng.normal(size=6))
    H = torch.autograd.functional.hessian(lambda v: F.softplus(-_t(y) * (_t(X) @ v)).sum(), _t(w))
    for backend in ("numpy", "torch"):
        args = {"X": X, "w": w, "y": y} if backend == "numpy" else {"X": _t(X), "w": _t(w), "y": _t(y)}
        out = numeric.compile(m, backend, hessian=["w"])(**args)
        np.testing.assert_allclose(np.asarray(out["hessian"]["w"]), H.numpy(), rtol=1e-12, atol=1e-14)
    # stable at margins of 1e3 (log(1 + exp(u)) is softplus): finite, as torch's softplus
    big = numeric.compile(m)(X=X * 1e3, w=w, y=y)
    assert np.isfinite(big["loss"]) and np.isfinite(big["grad"]["w"]).all()


def test_trace_and_logdet_closed_forms() -> None:
    m = derive.parse("tr(A*X*B)", A="matrix(n,p)", X="matrix(p,q)", B="matrix(q,n)")
    assert derive.latex(derive.grad(m, "X")) == r"g_{X} = A^\top B^\top"
    rng = np.random.default_rng(3)
    A, X, B = rng.normal(size=(2, 3)), rng.normal(size=(3, 4)), rng.normal(size=(4, 2))
    np.testing.assert_allclose(numeric.compile(m)(A=A, X=X, B=B)["grad"]["X"], A.T @ B.T, rtol=1e-14)
    m = derive.parse("logdet(X)", X="spd(n)")
    assert derive.latex(derive.grad(m, "X")) == r"g_{X} = X^{-\top}"
    S = rng.normal(size=(3, 3))
    S = S @ S.T + 3 * np.eye(3)
    St = _t(S, True)
    (g,) = torch.autograd.grad(torch.logdet(St), [St])
    np.testing.assert_allclose(numeric.compile(m, "torch")(X=_t(S))["grad"]["X"].numpy(), g.numpy(), rtol=1e-12)
    with pytest.raises(numeric.InputError, match="symmetric"):  # spd is checked at the kernel boundary
        numeric.compile(m)(X=np.array([[2.0, 1.0], [0.0, 2.0]]))


@pytest.mark.parametrize("text", [FOCAL, FOCAL_INLINE])
def test_focal_loss_at_saturated_logits_is_finite_and_equals_torch(text: str) -> None:
    m = derive.parse(text, W="matrix(K,d)", x="vector(d)", y="vector(K)", wrt="W")
    rng = np.random.default_rng(4)
    W, x = rng.normal(size=(4, 3)), rng.normal(size=3) * 300
    y = np.eye(4)[int(np.argsort(W @ x)[-2])]  # the runner-up class: p_y underflows to 0 against the top one
    Wt = _t(W, True)
    logp = torch.log_softmax(Wt @ _t(x), 0)  # the stable torch form
    want = -(_t(y) * (1 - logp.exp()) ** 2 * logp).sum()
    (gW,) = torch.autograd.grad(want, [Wt])
    assert torch.isfinite(gW).all() and float(gW.abs().max()) > 1  # saturated, yet a real gradient
    for backend in ("numpy", "torch"):
        args = {"W": W, "x": x, "y": y} if backend == "numpy" else {"W": _t(W), "x": _t(x), "y": _t(y)}
        out = numeric.compile(m, backend)(**args)
        assert np.isfinite(out["loss"]) and out["loss"] == pytest.approx(float(want.detach()), rel=1e-12)
        g = np.asarray(out["grad"]["W"])
        np.testing.assert_allclose(g, gW.numpy(), rtol=1e-10, atol=1e-10 * float(gW.abs().max()))


def test_precedence_and_the_meaning_of_the_operators() -> None:
    """-2^2 is -(2^2); ' binds tightest; * of two vectors needs a transpose; x*y' is the outer product."""
    rng = np.random.default_rng(5)
    x, y, A = rng.normal(size=3), rng.normal(size=3), rng.normal(size=(3, 3))
    cases = {
        "-2^2 + sum(x)": -4 + x.sum(),
        "x'*A'*y": x @ A.T @ y,
        "sum(x*y')": np.outer(x, y).sum(),
        "x'*y / 2 - 3": x @ y / 2 - 3,
        "sum(x .^ 2 ./ (1 + y .* y))": (x**2 / (1 + y * y)).sum(),
        "sum(2 - x)": (2 - x).sum(),
        "max(x) - min(A) + sum(max(x, y))": x.max() - A.min() + np.maximum(x, y).sum(),
        "sum(diag(A) .* diag(diag(x)*A))": (np.diag(A) * np.diag(np.diag(x) @ A)).sum(),
        "det(A^-1) * det(A)": 1.0,
        "mean(abs(A)) + norm1(x) + norm2(A)": np.abs(A).mean() + np.abs(x).sum() + np.linalg.norm(A),
        "sum(2 .^ x) + sum(abs(y) .^ 1.5)": (2.0**x).sum() + (np.abs(y) ** 1.5).sum(),  # a scalar base broadcasts
    }
    for text, want in cases.items():
        m = derive.parse(text, x="vector(n)", y="vector(n)", A="matrix(n,n)")
        arrays = {k: {"x": x, "y": y, "A": A}[k] for k in [*m.params, *m.inputs]}
        assert numeric.compile(m)(**arrays)["loss"] == pytest.approx(want, rel=1e-12), text


# -- errors: one line, the column, what was expected; nothing executed ------------------------------

BAD = [
    ("A*x", {"A": "matrix(n,p)", "x": "vector(n)"}, ExpressionShapeError, r"column 2: .*matrix\(n,p\).*vector\(n\).*p and n"),
    ("x + y", {"x": "vector(n)", "y": "vector(p)"}, ExpressionShapeError, r"vector\(n\) and vector\(p\)"),
    ("x*y", {"x": "vector(n)", "y": "vector(n)"}, ExpressionShapeError, "x'\\*y is the inner product"),
    ("tr(A)", {"A": "matrix(n,p)"}, ExpressionShapeError, r"square matrix, got matrix\(n,p\)"),
    ("x", {"x": "vector(n)"}, ExpressionShapeError, "must be a scalar"),
    ("foo(x)", {"x": "vector(n)"}, ParseError, "unknown function 'foo'; the known functions are: exp, log"),
    ("sum(z)", {"x": "vector(n)"}, ParseError, "column 5: unknown name 'z'; the known names are: x"),
    ("sum(x", {"x": "vector(n)"}, ParseError, "column 6: expected ',' or '\\)'"),
    ("x'*x +", {"x": "vector(n)"}, ParseError, "column 7: expected an operand"),
    ("2 x", {"x": "vector(n)"}, ParseError, "column 3: expected an operator"),
    ("a = x\nsum(b)", {"x": "vector(n)"}, ParseError, "line 2, column 5: unknown name 'b'"),
    ("sum(vector(1)) + sum(x)", {"x": "vector(n)"}, ParseError, r"size of vector\(1\) does not follow"),
    ("sum(x)", {"x": "vectr(n)"}, ParseError, "not a type; the types are scalar"),
    ("sum(x)", {"x": "vector(n)"}, ParseError, "wrt: 'q' is not a declared variable"),
    ("__import__('os')", {}, ParseError, "unknown function '__import__'"),
    ("x.__class__", {"x": "scalar"}, ParseError, "unexpected character '.'"),
    ("exec(\"print(1)\")", {}, ParseError, "unknown function 'exec'"),
    ("lambda: 0", {}, ParseError, "column 7: unexpected character ':'"),
    ("sum(np)", {"np": "vector(n)"}, ParseError, "cannot be used"),
    # text that would make the reader recurse, or SymPy compute, without end: refused before
    ("(" * 5000 + "s" + ")" * 5000, {"s": "scalar"}, ParseError, "nests more than 200 levels deep"),
    ("-" * 3000 + "s", {"s": "scalar"}, ParseError, "nests more than 200 levels deep"),
    ("s" + " + s" * 3000, {"s": "scalar"}, ParseError, "3001 operations deep .* split it into lines"),
    ("tr(A^100000)", {"A": "matrix(n)"}, ParseError, r"column 5: a matrix power .* at most 32, got 100000"),
    ("s * 2^2^2^2^2^2", {"s": "scalar"}, ParseError, r"the constant 2\^65536 is too large to write exactly"),
    ("sum(x) * 10^100000", {"x": "vector(n)"}, ParseError, "too large to write exactly"),
    ("s * 1.0000001^100000", {"s": "scalar"}, ParseError, "too large to write exactly"),
    # constants that are not finite real numbers of float64
    ("sum(x) + 1e400", {"x": "vector(n)"}, ParseError, "column 10: the number 1e400 is outside the range of float64"),
    ("s + 0." + "0" * 50 + "1", {"s": "scalar"}, ParseError, "more than 40 characters"),
    ("1/0 + sum(x)", {"x": "vector(n)"}, ParseError, "column 2: division by zero"),
    ("sum(x ./ 0)", {"x": "vector(n)"}, ParseError, "column 7: division by zero"),
    ("sum(x ./ (1 - 1))", {"x": "vector(n)"}, ParseError, "division by zero"),
    ("sum(exp(x) ./ (x - x))", {"x": "vector(n)"}, ParseError, r"not a finite real number \(zoo\)"),
    ("0^-1 + s", {"s": "scalar"}, ParseError, "division by zero"),
    ("(-1)^0.5 + s", {"s": "scalar"}, ParseError, r"\(-1\)\^0.5 is not a real number"),
    ("log(0) + s", {"s": "scalar"}, ParseError, r"log\(0\) is not a finite real number"),
    ("sqrt(-2) * s", {"s": "scalar"}, ParseError, r"sqrt\(-2\) is not a finite real number"),
    ("exp(1000) * s", {"s": "scalar"}, ParseError, "overflows float64"),
]


@pytest.mark.parametrize("text,types,err,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_in_one_line(text: str, types: dict[str, str], err: type, match: str) -> None:
    with pytest.raises(err, match=match) as ei:
        derive.parse(text, wrt="q" if "'q'" in match else None, **types)
    assert "\n" not in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_python_in_the_text_is_never_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sentinel = tmp_path / "ran"
    attacks = [f"__import__('os').system('touch {sentinel}')", f"open('{sentinel}', 'w')",
               f"sum(x) + __import__('pathlib').Path('{sentinel}').touch()", "exec('1')"]

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("the text reached eval/exec")

    real_sympify = sp.sympify
    import verify.check  # noqa: F401  (the CLI's verify command imports it lazily; importing runs exec)

    valid = "sum(log(1 + exp(x))) + x'*x"
    # SymPy's polynomial code builds its own helpers with exec once, and imports run exec: both done first
    derive.latex(derive.parse(valid, x="vector(n)").equations[0])

    def no_text(a: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(a, str):
            raise AssertionError(f"the text reached sympify: {a!r}")
        return real_sympify(a, *args, **kwargs)

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    monkeypatch.setattr(sp, "sympify", no_text)
    monkeypatch.setattr(sympy_parser, "parse_expr", refuse)  # where any sympify of a string ends up
    for text in attacks:
        with pytest.raises(ParseError):
            derive.parse(text, x="vector(n)")
        for cmd in ("derive", "backprop", "hessian", "codegen", "verify"):  # the CLI: exit 2, nothing run
            assert main([cmd, text, "-V", "x=vector(n)"]) == 2
    assert not sentinel.exists()
    m = derive.parse(valid, x="vector(n)")  # a valid text needs neither
    assert derive.latex(m.equations[0])


def test_wrt_and_declarations() -> None:
    m = derive.parse("x'*A*x + s*sum(A)", x="vector(n)", A="matrix(n,n)", s="scalar", unused="vector(q)")
    assert list(m.params) == ["x", "A", "s"] and m.hessian_wrt == ("x", "s") and "q" not in m.dims
    m = derive.parse("x'*A*x", x="vector(n)", A="matrix(n)", wrt=["A"])
    assert list(m.params) == ["A"] and list(m.inputs) == ["x"] and m.hessian_wrt == ()
    with pytest.raises(ParseError, match="does not use 'q'"):
        derive.parse("sum(x)", x="vector(n)", q="scalar", wrt="q")
    with pytest.raises(TypeError, match="string"):
        derive.parse("sum(x)", x=3)  # type: ignore[arg-type]


# -- the command line ---------------------------------------------------------------------------------

QF = ["x'*A*x", "-V", "x=vector(n)", "-V", "A=matrix(n,n)"]


def test_cli_takes_an_expression_wherever_it_takes_a_model(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    assert main(["derive", *QF, "--wrt", "x"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [r"C = x^\top A x", r"g_{x} = A x + A^\top x"]
    assert main(["backprop", *QF, "--format", "text"]) == 0
    assert capsys.readouterr().out.splitlines() == ["g_x = A x + Aᵀ x", "g_A = x xᵀ"]
    assert main(["hessian", *QF, "--wrt", "x"]) == 0
    assert capsys.readouterr().out.splitlines() == [r"H_{x} = A + A^\top"]
    path = tmp_path / "k.py"
    assert main(["codegen", *QF, "--wrt", "x", "--backend", "numpy", "-o", str(path)]) == 0
    ns: dict[str, Any] = {}
    exec(compile(path.read_text(), str(path), "exec"), ns)  # the generated module, our own code
    rng = np.random.default_rng(6)
    x, A = rng.normal(size=3), rng.normal(size=(3, 3))
    np.testing.assert_allclose(ns["kernel"](x=x, A=A)["grad"]["x"], (A + A.T) @ x, rtol=1e-14)
    capsys.readouterr()
    assert main(["verify", LOGISTIC, "-V", "X=matrix(n,p)", "-V", "w=vector(p)", "-V", "y=vector(n)",
                 "--wrt", "w", "--examples", "3"]) == 0
    assert "3 examples passed" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["derive", "foo(x)", "-V", "x=vector(n)"], "unknown function 'foo'"),
    (["backprop", "x*y", "-V", "x=vector(n)", "-V", "y=vector(n)"], "cannot multiply"),
    (["codegen", "x'*x", "-V", "x"], "should look like name=type"),
    (["verify", "sum(x)", "-V", "x=vector(n)", "-O", "a=1"], "-O options are for zoo entries"),
    (["hessian", "__import__('os')"], "unknown function '__import__'"),
    (["derive", "softmax_regresion"], "Did you mean softmax_regression"),
    (["verify", "sum(x) + __import__('os').system('true')", "-V", "x=vector(n)"], "unknown function '__import__'"),
    (["derive", "sum(foo(x))", "-V", "x=vector(n)"], "the known functions are: exp, log"),
    (["verify", "x'*A*x", "-V", "x=vector(n)", "-V", "A=matrix(p,q)"],
     "vector(n)' (a row) times matrix(p,q) (n and p differ)"),
    (["hessian", "s * 2^2^2^2^2^2", "-V", "s=scalar"], "too large to write exactly"),
    (["codegen", "(" * 300 + "s" + ")" * 300, "-V", "s=scalar"], "nests more than 200 levels"),
    (["backprop", "s/0", "-V", "s=scalar"], "division by zero"),
])
def test_cli_bad_expressions_exit_2_with_one_line(argv: list[str], match: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err


# -- hypothesis-drawn expressions through derive -> numeric -> verify ---------------------------------

_FUNCS = ["tanh", "sigmoid", "sin", "softplus", "erf", "exp"]


def _vectors() -> st.SearchStrategy[str]:
    """Well-typed vector expressions over x, y: vector(n), A: matrix(n,n), c: scalar."""
    leaf = st.sampled_from(["x", "y", "(A*x)", "(A'*y)"])

    def extend(v: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.builds(lambda f, a: f"{f}({a})", st.sampled_from(_FUNCS[:-1]), v),
            st.builds(lambda op, a, b: f"({a} {op} {b})", st.sampled_from(["+", "-", ".*"]), v, v),
            st.builds(lambda k, a: f"({k}*{a})", st.sampled_from(["c", "2", "0.5"]), v),
            st.builds(lambda a: f"(A*{a})", v),
        )

    return st.recursive(leaf, extend, max_leaves=4)


_LOSSES = st.sampled_from(["sum({})", "({})'*({})", "norm2({})^2", "logsumexp({})", "vector(1)'*exp(tanh({}))"])


@settings(max_examples=max(4, settings().max_examples // 2))
@given(loss=_LOSSES, a=_vectors(), b=_vectors())
def test_drawn_expressions_verify(loss: str, a: str, b: str) -> None:
    text = loss.format(a, b)
    m = derive.parse(text, x="vector(n)", y="vector(n)", A="matrix(n,n)", c="scalar")
    rep = verify.check(m, examples=3, derandomize=True)
    assert rep.examples == 3, text


@pytest.mark.parametrize("text", [
    "sigmoid(softplus(x - x))' * softplus(x - x)",  # found by the thorough profile: ops.softplus(0) in the kernel
    "vector(1)' * exp(tanh(softplus(x - x)))",
    "sum(tanh(x - x + 1) .* x)",  # np.tanh(1) in a torch kernel
    "sum(erf(x - x + 1) .* x) + sum(relu(y - y - 1) .* y)",
    "sum(sigmoid(y - y - 800) .* x) + sum(softplus(y - y + 800) .* x)",  # exp(800) overflows math.exp
    "sum(x ./ (1 + exp(y - y + 800)))",
    "sum(exp(x - x + 800))",
])
def test_constant_subexpressions_compile_and_verify(text: str) -> None:
    """A part of an expression that is a number (x - x = 0 makes softplus(x - x) one) is a number in the
    kernels, computed as floating point would (no torch call on a Python number, no OverflowError)."""
    m = derive.parse(text, x="vector(n)", y="vector(n)")
    with np.errstate(all="ignore"):
        assert verify.check(m, examples=3, derandomize=True).examples == 3


def test_a_scalar_sum_scaling_a_product_operand_keeps_its_parentheses() -> None:
    """Found by the thorough profile: H_yx = 2 (c^2 + c) A A was generated as `(c + t13 * A) @ A`, the scalar
    c + c^2 folded into the product's operand without its parentheses (a wrong Hessian block, 0.143 for 0.095)."""
    m = derive.parse("norm2(A*x + c*(A*x) + c*(A'*y))^2", x="vector(n)", y="vector(n)", A="matrix(n,n)", c="scalar")
    assert "H_y_x" in numeric.source(m, "numpy", hessian=m.hessian_wrt)
    assert verify.check(m, examples=5, derandomize=True).examples == 5


@pytest.mark.parametrize("text", [
    "sum(abs(softplus(x)))",  # abs of it is itself: positive
    "sum(abs(sigmoid(x) - 0.5) .* y)",
    "norm2(y ./ (1 + exp(abs(softplus(x .^ 2)))))^2",  # found by a fuzz: the Hessian held Derivative(sign(...))
    "sum(abs(relu(x) - y))",
])
def test_abs_of_the_books_functions_has_a_hessian(text: str) -> None:
    """sigmoid, softplus, relu and the other functions are real at real arguments (SymPy was not told, and
    differentiated abs of them twice through re, im and an unevaluated Derivative, which no printer writes)."""
    m = derive.parse(text, x="vector(n)", y="vector(n)")
    assert m.hessian_wrt
    assert verify.check(m, examples=3, derandomize=True).examples == 3


def test_functions_of_numbers_are_their_values() -> None:
    for c in (-800, -3, 0, sp.Rational(1, 2), 5, 800):
        t = torch.tensor(float(c), dtype=torch.float64)
        assert float(sigmoid(c)) == pytest.approx(float(torch.sigmoid(t)), rel=1e-15, abs=0)
        assert float(softplus(c)) == pytest.approx(float(torch.logaddexp(t, torch.zeros(()))), rel=1e-15)
        assert float(relu(c)) == float(torch.relu(t))
        assert float(leaky_relu(c, sp.Rational(1, 10))) == pytest.approx(float(F.leaky_relu(t, 0.1)), rel=1e-15)
    assert (sigmoid(sp.oo), sigmoid(-sp.oo), softplus(sp.oo), softplus(-sp.oo)) == (1, 0, sp.oo, 0)
