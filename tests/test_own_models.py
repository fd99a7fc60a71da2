"""Models of one's own: Builder-made models verified with ``verify.check`` and no registered reference (the
forward program evaluated eagerly in torch), the matrix-calculus classics with their closed forms, and the
engine defects of issue 8 (each with its regression test)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F
from hypothesis import settings

import derive
import numeric
import verify
from derive import nn
from derive.tensor import ARG, Node, gather, log_softmax, map_, softmax, take

EXAMPLES = max(4, settings().max_examples // 2)


def build(name: str, loss: Callable[..., Node], args: dict[str, tuple[tuple[str, ...], str]],
          hessian: tuple[str, ...] = ()) -> derive.Model:
    """A one-equation model ``C = loss(**args)``; ``args``: name -> (shape in dimension names, kind), the kind
    ``param`` or an input domain (``real``, ``spd``, ``labels``). Every real input is differentiated too."""
    b = derive.Builder(name, name, "own model")
    dims: dict[str, sp.Symbol] = {}
    vs: dict[str, Node] = {}
    for k, (shape, kind) in args.items():
        sh = tuple(dims[d] if d in dims else dims.setdefault(d, b.dim(d, 3, 1, 4)) for d in shape)
        vs[k] = b.param(k, sh) if kind == "param" else b.input(k, sh, domain=kind)
    b.eq("C", loss(**vs))
    diff = tuple(k for k, (_, kind) in args.items() if kind not in ("param", "labels"))
    return b.model(diff_inputs=diff, hessian=hessian)


def per_sample(name: str, loss: Callable[..., Node], K: int = 4, hard: tuple[str, ...] = ()) -> derive.Model:
    """A per-sample classifier ``z = W x``, ``C = loss(z, y)`` with integer labels ``y`` (mean over samples)."""
    b = derive.Builder(name, name, "own model")
    b.samples("n", 4, 1, 6)
    p = b.dim("p", 3, 1, 4)
    k = b.dim("K", K, 2, 5)
    W = b.param("W", (k, p))
    x = b.input("X", (p,), batched=True)
    y = b.input("y", (), batched=True, domain="labels")
    z = b.eq("z", W @ x, adjoint=("delta", r"\delta"))
    b.eq("C", loss(z, y))
    return b.model(hard=hard)


# -- the held-out kind: derive, generate and verify with no registered reference ------------------

HELD = {
    "quadratic_form": (lambda x, A: nn.dot(x, A @ x), {"x": (("n",), "param"), "A": (("n", "n"), "param")}, ("x",)),
    "least_squares": (lambda X, w, y: nn.norm(X @ w - y) ** 2,
                      {"X": (("n", "p"), "param"), "w": (("p",), "param"), "y": (("n",), "real")}, ("w", "X")),
    "logistic_sum": (lambda X, w, y: nn.sum_(nn.log(1 + nn.exp(-y * (X @ w)))),
                     {"X": (("n", "p"), "real"), "w": (("p",), "param"), "y": (("n",), "real")}, ("w",)),
    "trace_AXB": (lambda A, X, B: nn.trace(A @ X @ B),
                  {"A": (("n", "p"), "param"), "X": (("p", "q"), "param"), "B": (("q", "n"), "param")}, ()),
    "logdet_spd": (lambda X: nn.logdet(X), {"X": (("n", "n"), "spd")}, ()),
    "inverse_quadratic": (lambda x, A: nn.dot(x, nn.inv(A) @ x), {"x": (("n",), "param"), "A": (("n", "n"), "spd")},
                          ("x",)),
    "huber": (lambda r: nn.sum_(nn.where(map_(derive.functions.step(1 - sp.Abs(ARG[0])), [r]), r**2 / 2,
                                         nn.abs(r) - sp.Rational(1, 2))), {"r": (("n",), "param")}, ()),
    "l1_and_clamp": (lambda x, W: nn.norm1(W @ x) + nn.sum_(nn.clamp(x, -1, 1) ** 2),
                     {"x": (("p",), "param"), "W": (("n", "p"), "param")}, ()),
    "solve_and_det": (lambda A, b: nn.dot(b, nn.solve(A, b)) + nn.det(A),
                      {"A": (("n", "n"), "spd"), "b": (("n",), "param")}, ("b",)),
    "gelu_erf": (lambda x, W: nn.sum_(nn.erf(W @ x) * (W @ x)), {"x": (("p",), "param"), "W": (("n", "p"), "param")},
                 ("x",)),
    "frobenius_diag": (lambda X: nn.frobenius(X - nn.diag(nn.diag(X))) + nn.sum_(nn.maximum(nn.diag(X), 0)),
                       {"X": (("n", "n"), "param")}, ()),
}


@pytest.mark.parametrize("name", list(HELD))
def test_own_model_verifies_without_a_registered_reference(name: str) -> None:
    loss, args, hess = HELD[name]
    m = build(name, loss, args, hess)
    assert name not in verify.REFERENCES
    rep = verify.check(m, examples=EXAMPLES, derandomize=True)
    assert rep.examples == EXAMPLES
    assert rep.reference == "the eager evaluation of its forward program"
    assert "large" not in rep.modes
    assert rep.checks["torch kernel: gradients"] <= 1e-10
    if hess:
        assert rep.checks["torch kernel: Hessian"] <= 1e-10
    for backend in ("numpy", "torch"):
        assert "def kernel(" in numeric.source(m, backend)
    assert derive.latex(m)


def test_quadratic_form_hessian_is_A_plus_A_transpose() -> None:
    loss, args, hess = HELD["quadratic_form"]
    m = build("quadratic_form", loss, args, hess)
    assert derive.latex(derive.hessian(m, "x")[0]) == r"H_{x} = A + A^\top"
    assert derive.latex(derive.grad(m, "x")) == r"g_{x} = A x + A^\top x"
    rng = np.random.default_rng(0)
    A, x = rng.normal(size=(4, 4)), rng.normal(size=4)
    out = numeric.compile(m, hessian=["x"])(x=x, A=A)
    np.testing.assert_allclose(out["hessian"]["x"], A + A.T, rtol=1e-15)


def test_matrix_gradients_print_in_matrix_form() -> None:
    m = build("logdet_spd", *HELD["logdet_spd"][:2])
    assert derive.latex(derive.grad(m, "X")) == r"g_{X} = X^{-\top}"
    m = build("inverse_quadratic", *HELD["inverse_quadratic"][:2])
    assert derive.latex(derive.grad(m, "A")) == r"g_{A} = - A^{-\top} x x^\top A^{-\top}"
    m = build("trace_AXB", *HELD["trace_AXB"][:2])
    assert derive.latex(derive.grad(m, "X")) == r"g_{X} = A^\top B^\top"
    assert derive.latex(m.equations[0]).startswith(r"C = \operatorname{tr}(")
    m = build("least_squares", *HELD["least_squares"][:2])
    assert derive.latex(derive.grad(m, "w")) == r"g_{w} = 2 X^\top (X w - y)"
    assert derive.latex(m.equations[0]) == r"C = \left\|X w - y\right\|^{2}"


def test_logistic_sum_hessian_against_torch() -> None:
    loss, args, _ = HELD["logistic_sum"]
    m = build("logistic_sum", loss, args, ("w",))
    rng = np.random.default_rng(1)
    X, w, y = rng.normal(size=(6, 3)), rng.normal(size=3), np.sign(rng.normal(size=6))
    out = numeric.compile(m, "torch", hessian=["w"])(X=torch.tensor(X), w=torch.tensor(w), y=torch.tensor(y))
    Xt, yt = torch.tensor(X), torch.tensor(y)
    H = torch.autograd.functional.hessian(lambda wt: F.softplus(-yt * (Xt @ wt)).sum(), torch.tensor(w))
    np.testing.assert_allclose(out["hessian"]["w"].numpy(), H.numpy(), rtol=1e-12, atol=1e-14)


def test_spd_inputs_are_checked_at_the_kernel_boundary() -> None:
    m = build("logdet_spd", *HELD["logdet_spd"][:2])
    f = numeric.compile(m)
    with pytest.raises(numeric.InputError, match="symmetric"):
        f(X=np.array([[2.0, 1.0], [0.0, 2.0]]))
    with pytest.raises(numeric.InputError, match="positive definite"):
        f(X=np.array([[1.0, 2.0], [2.0, 1.0]]))
    assert f(X=np.array([[2.0, 1.0], [1.0, 2.0]]))["loss"] == pytest.approx(np.log(3.0), rel=1e-15)


# -- integer labels: cross entropy with class indices, table lookups -------------------------------


def test_cross_entropy_with_class_indices() -> None:
    m = per_sample("ce_labels", lambda z, y: -take(log_softmax(z), 0, y), hard=("large",))
    eqs = {e.lhs.name: e for e in derive.backprop(m)}
    assert derive.latex(eqs["delta"]) == r"\delta = S_{\mathrm{softmax}}(z) - e_{y}"
    # against F.cross_entropy (a stable reference, so large logits are drawn too)
    def ref(W: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(X @ W.T, y.long())

    rep = verify.check(m, examples=EXAMPLES, derandomize=True, reference=ref)
    assert "large" in rep.modes and rep.reference == "the given reference"
    rep = verify.check(m, examples=EXAMPLES, derandomize=True)  # and the eager evaluation of the program
    assert rep.reference.startswith("the eager")


def test_labels_are_checked_at_the_kernel_boundary() -> None:
    m = per_sample("ce_labels_check", lambda z, y: -take(log_softmax(z), 0, y))
    f = numeric.compile(m)
    W, X = np.ones((4, 3)), np.ones((2, 3))
    for bad, why in ((np.array([0.0, 4.0]), "0, 1, ..., 3"), (np.array([0.5, 1.0]), "integer"),
                     (np.array([-1.0, 1.0]), "0, 1, ..., 3")):
        with pytest.raises(numeric.InputError, match=why.replace(".", r"\.")):
            f(W=W, X=X, y=bad)
    assert np.isfinite(f(W=W, X=X, y=np.array([0, 3]))["loss"])


def test_gather_from_a_table_by_an_integer_step() -> None:
    """A table indexed by a per-sample integer (a noise schedule at step t): x_t = a_t x."""
    b = derive.Builder("table_lookup", "table lookup", "own model")
    b.samples("n", 4, 1, 5)
    T = b.dim("T", 5, 1, 6)
    p = b.dim("p", 3, 1, 4)
    a = b.param("a", (T,))
    t = b.input("t", (), batched=True, domain="labels")
    x = b.input("X", (p,), batched=True)
    b.eq("C", nn.sum_(nn.square(take(a, 0, t) * x)))
    m = b.model()
    verify.check(m, examples=EXAMPLES, derandomize=True)
    rng = np.random.default_rng(0)
    av, tv, Xv = rng.normal(size=5), np.array([0, 4, 4, 2]), rng.normal(size=(4, 3))
    g = numeric.compile(m)(a=av, t=tv, X=Xv)["grad"]["a"]
    want = np.zeros(5)
    for i, k in enumerate(tv):
        want[k] += 2 * av[k] * (Xv[i] ** 2).sum() / 4
    np.testing.assert_allclose(g, want, rtol=1e-14)


def test_take_with_a_tensor_index_is_a_gather_or_refused() -> None:
    """Defect: take(x, 0, tensor) was accepted and generated code with a SyntaxError."""
    x = derive.Var("x", (sp.Symbol("K", positive=True, integer=True),), "param")
    y = derive.Var("y", (), "input", domain="labels")
    assert gather(x, y) is take(x, 0, y)
    z = derive.Var("z", (), "input")
    with pytest.raises(derive.UnsupportedError, match="domain='labels'"):
        take(x, 0, z)
    with pytest.raises(TypeError, match="integer position or a labels tensor"):
        take(x, 0, 1.5)  # type: ignore[arg-type]
    with pytest.raises(derive.ShapeError, match=r"\(K,\)"):
        gather(derive.Var("X", (sp.Symbol("K"), sp.Symbol("J")), "param"), derive.Var("w", (sp.Symbol("Q"),), "input",
                                                                                       domain="labels"))


# -- defects ----------------------------------------------------------------------------------------


def _focal(gamma: int = 2) -> derive.Model:
    def loss(z: Node, y: Node) -> Node:
        p = take(softmax(z), 0, y)
        return -((1 - p) ** gamma) * nn.log(p)

    b = derive.Builder("focal_loss", "focal loss with class indices", "own model")
    b.samples("n", 4, 1, 6)
    p_ = b.dim("p", 3, 1, 4)
    K = b.dim("K", 4, 2, 5)
    W = b.param("W", (K, p_))
    x = b.input("X", (p_,), batched=True)
    y = b.input("y", (), batched=True, domain="labels")
    z = b.eq("z", W @ x)
    s = b.eq("s", softmax(z), "s")
    b.eq("C", -nn.dot(map_((1 - ARG[0]) ** gamma * sp.log(ARG[0]), [s]), derive.tensor.OneHot(y, K)))
    del loss
    return b.model()


def _torch_focal(W: torch.Tensor, X: torch.Tensor, y: torch.Tensor, gamma: int = 2) -> torch.Tensor:
    logp = torch.log_softmax(X @ W.T, 1).gather(1, y.long()[:, None])[:, 0]
    return (-((1 - logp.exp()) ** gamma) * logp).mean()


def test_focal_loss_is_finite_at_saturated_logits() -> None:
    """Defect: the gradient held (1 - p)^2 / p times p, i.e. 0/0 where the softmax saturates. The
    simplifier no longer keeps a form dividing by what the cancelled form does not, and log p of a softmax
    is the stable log-softmax in the adjoint too."""
    m = _focal()
    rng = np.random.default_rng(0)
    W, X, y = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)) * 300, np.array([0, 1, 2, 3, 1])
    Wt = torch.tensor(W, requires_grad=True)
    want = _torch_focal(Wt, torch.tensor(X), torch.tensor(y))
    (gW,) = torch.autograd.grad(want, [Wt])
    assert torch.isfinite(gW).all()
    for backend in ("numpy", "torch"):
        args: dict[str, Any] = {"W": W, "X": X, "y": y}
        if backend == "torch":
            args = {k: torch.tensor(v) for k, v in args.items()}
        out = numeric.compile(m, backend)(**args)
        assert np.isfinite(out["loss"]) and out["loss"] == pytest.approx(float(want.detach()), rel=1e-12)
        g = np.asarray(out["grad"]["W"])
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, gW.numpy(), rtol=1e-10, atol=1e-10 * float(np.abs(gW.numpy()).max()))
    # and verified on drawn values, large logits included, against the stable torch focal loss
    rep = verify.check(m, examples=EXAMPLES, derandomize=True,
                       reference=lambda W, X, y: _torch_focal(W, X, y))
    assert "large" in rep.modes


def test_simplifier_keeps_no_removable_division() -> None:
    p, L = sp.symbols("p L", real=True)
    from derive.tensor import simplify_scalar

    e = simplify_scalar(p * ((1 - p) ** 2 / p + L * (2 * p - 2)))
    assert not any(f.exp.is_negative for f in e.atoms(sp.Pow)), e
    assert sp.simplify(e - ((1 - p) ** 2 + p * L * (2 * p - 2))) == 0


@pytest.mark.parametrize("form", ["1 + exp(x)", "exp(x) + 1", "1 + exp(-x)", "exp(x) + exp(2x)"])
def test_log_of_one_plus_exp_is_softplus(form: str) -> None:
    """Defect: log(exp(x) + 1) stayed literal, so the loss was inf at x = 400."""
    b = derive.Builder("log1pexp", "log(1 + e^x)", "own model")
    N = b.dim("N", 3)
    x = b.param("x", (N,))
    body = {"1 + exp(x)": sp.log(1 + sp.exp(ARG[0])), "exp(x) + 1": sp.log(sp.exp(ARG[0]) + 1),
            "1 + exp(-x)": sp.log(1 + sp.exp(-ARG[0])), "exp(x) + exp(2x)": sp.log(sp.exp(ARG[0]) + sp.exp(2 * ARG[0]))}
    b.eq("C", nn.sum_(map_(body[form], [x])))
    m = b.model()
    assert not m.loss.has(sp.log) if hasattr(m.loss, "has") else True
    xv = np.array([400.0, -400.0, 0.5])
    xt = torch.tensor(xv, requires_grad=True)
    torch_form = {"1 + exp(x)": lambda t: F.softplus(t, threshold=1000), "exp(x) + 1": lambda t: F.softplus(t, threshold=1000),
                  "1 + exp(-x)": lambda t: F.softplus(-t, threshold=1000),
                  "exp(x) + exp(2x)": lambda t: torch.logaddexp(t, 2 * t)}[form]
    want = torch_form(xt).sum()
    want.backward()
    for backend in ("numpy", "torch"):
        out = numeric.compile(m, backend)(x=xv if backend == "numpy" else torch.tensor(xv))
        assert np.isfinite(out["loss"]) and out["loss"] == pytest.approx(float(want.detach()), rel=1e-14)
        np.testing.assert_allclose(np.asarray(out["grad"]["x"]), xt.grad.numpy(), rtol=1e-14)
    assert "softplus" in numeric.source(m)


# -- verify.check for any model: reference order, reproduce lines, planted bugs ---------------------


def test_reference_lookup_order() -> None:
    m = build("quadratic_form", *HELD["quadratic_form"][:2])
    _, src = verify.resolve_reference(m)
    assert src == "the eager evaluation of its forward program"
    m.reference = lambda x, A: x @ A @ x
    assert verify.resolve_reference(m)[1] == "the model's reference"
    assert verify.resolve_reference(m, reference=lambda x, A: x @ A @ x)[1] == "the given reference"
    z = derive.models.get("softmax_regression")
    assert z.rebuild == "derive.models.get('softmax_regression')"
    assert verify.resolve_reference(z)[1] == "the zoo's reference"
    with pytest.raises(TypeError, match="callable"):
        verify.resolve_reference(z, reference="F.cross_entropy")  # type: ignore[arg-type]


def test_a_wrong_reference_is_a_mismatch_with_a_reproduce_line() -> None:
    """The kernels are compared with the reference given: a wrong one (A^T A instead of A) is reported, and
    the Reproduce line rebuilds the example through Model.rebuild."""
    m = build("quadratic_form", *HELD["quadratic_form"][:2])
    m.rebuild = "build('quadratic_form', *HELD['quadratic_form'][:2])"
    with pytest.raises(verify.Mismatch) as ei:
        verify.check(m, examples=5, derandomize=True, reference=lambda x, A: x @ (A.T @ A) @ x)
    msg = str(ei.value)
    assert "Reproduce: verify.example(build('quadratic_form'" in msg
    line = msg.split("Reproduce: ", 1)[1]
    arrays = eval(line, {"verify": verify, "build": build, "HELD": HELD})  # our own report's code
    assert set(arrays) == {"x", "A"}
    m.rebuild = None
    with pytest.raises(verify.Mismatch, match="with m the model 'quadratic_form' that was checked"):
        verify.check(m, examples=5, derandomize=True, reference=lambda x, A: x @ (A.T @ A) @ x)


def test_a_wrong_implementation_of_an_own_model_is_caught() -> None:
    m = build("logdet_spd", *HELD["logdet_spd"][:2])

    def impl(X: np.ndarray) -> dict[str, Any]:
        return {"loss": np.linalg.slogdet(X)[1], "grad": {"X": np.linalg.inv(X)}}  # missing transpose: fine (spd)

    verify.check(m, implementation=impl, backend="numpy", examples=4, derandomize=True)

    def wrong(X: np.ndarray) -> dict[str, Any]:
        return {"loss": np.linalg.slogdet(X)[1], "grad": {"X": X}}

    with pytest.raises(verify.Mismatch, match="gradient X"):
        verify.check(m, implementation=wrong, backend="numpy", examples=4, derandomize=True)


def test_eager_reference_is_independent_of_the_generated_code() -> None:
    """The eager evaluator maps primitives to torch itself: its value is torch's, not the kernel's."""
    from verify.evaluate import evaluate

    m = build("frobenius_diag", *HELD["frobenius_diag"][:2])
    X = torch.tensor(np.random.default_rng(0).normal(size=(3, 3)))
    want = torch.linalg.matrix_norm(X - torch.diag(torch.diagonal(X))) + torch.relu(torch.diagonal(X)).sum()
    assert float(evaluate(m, {"X": X})) == pytest.approx(float(want), rel=1e-15)


LOSS_ENTRIES = [n for n in derive.models.names() if not derive.models.get(n).is_update]


@pytest.mark.parametrize("name", LOSS_ENTRIES)
def test_eager_evaluation_agrees_with_the_zoo_reference(name: str) -> None:
    """The eager evaluator (what verifies models of one's own) against every hand-written zoo reference
    (torch.nn.functional, nn modules): the same loss and gradients, recurrences and convolutions included."""
    from verify.evaluate import evaluate

    m = derive.models.get(name)
    arrays = verify.example(m, seed=3, sizes=dict(m.defaults))
    t = {k: torch.tensor(v) for k, v in arrays.items()}
    l1 = {k: t[k].clone().requires_grad_(True) for k in m.grad_names}
    a = evaluate(m, {**t, **l1})
    ga = torch.autograd.grad(a, list(l1.values()), allow_unused=True)
    l2 = {k: t[k].clone().requires_grad_(True) for k in m.grad_names}
    b = verify.REFERENCES[name](**{**t, **l2}, **m.options)
    gb = torch.autograd.grad(b, list(l2.values()), allow_unused=True)
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-12, abs=1e-12)
    for k, x, y in zip(m.grad_names, ga, gb):
        want = np.zeros(arrays[k].shape) if y is None else y.numpy()
        got = np.zeros(arrays[k].shape) if x is None else x.numpy()
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * max(1.0, float(np.abs(want).max(initial=0))),
                                   err_msg=f"{name}: gradient {k}")


def test_gather_is_a_lookup_where_other_entries_are_infinite() -> None:
    """-log(p)_y with p = 0 away from the label: the kernels look the entry up (no 0 * inf = NaN), and the
    gradient is -1/p_y at the label and 0 elsewhere (e_y f(p) = e_y f(p_y))."""
    b = derive.Builder("nll_probs", "negative log-likelihood of given probabilities", "own model")
    b.samples("n", 2)
    K = b.dim("K", 3)
    P = b.input("P", (K,), batched=True, domain="unit")
    y = b.input("y", (), batched=True, domain="labels")
    b.eq("C", -take(nn.log(P), 0, y))
    m = b.model(diff_inputs=("P",))
    Pv, yv = np.array([[0.0, 0.5, 0.5], [0.25, 0.0, 0.75]]), np.array([1, 2])
    for backend in ("numpy", "torch"):
        with np.errstate(divide="ignore"):
            out = numeric.compile(m, backend)(**({"P": Pv, "y": yv} if backend == "numpy" else
                                                 {"P": torch.tensor(Pv), "y": torch.tensor(yv)}))
        assert out["loss"] == pytest.approx(-(np.log(0.5) + np.log(0.75)) / 2, rel=1e-15)
        np.testing.assert_allclose(np.asarray(out["grad"]["P"]), [[0, -1 / 0.5 / 2, 0], [0, 0, -1 / 0.75 / 2]],
                                   rtol=1e-15)
