"""The primitive table, tested from one spec table (after JAX's ``LAX_GRAD_OPS``).

(a) every primitive in ``derive.tensor.PRIMITIVES`` defines its own rules (vjp, jvp, latex, lower);
(b) ``LAYER_CASES``: one row per primitive use, each a small layer-style model ``C = sum(G * a)`` with
    ``a = <expr>(Z[, params])`` built with ``derive.Builder``; its generated NumPy and PyTorch kernels
    are checked against ``torch.autograd`` on an independent torch expression, in float64 to 1e-10
    relative, on a few random shapes;
(c) ``HESSIAN_CASES``: second derivatives (the jvp rules over the adjoint program) against
    ``torch.autograd.functional.hessian``, for zoo models and small models built from the primitives.
The derivative of every elementwise function comes from ``sympy.diff`` of its scalar definition.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F

import derive
import numeric
from derive import functions as DF
from derive import nn
from derive.tensor import (
    ARG,
    PRIMITIVES,
    CausalMask,
    IndexGrid,
    Node,
    Unfold,
    einsum,
    log_softmax,
    logsumexp,
    map_,
    matmul,
    max_,
    mean,
    outer,
    softmax,
    stop_gradient,
    sum_,
    take,
    walk,
)

RTOL = 1e-10
Tensor = torch.Tensor

# ---------------------------------------------------------------------------------------------------
# (a) the primitive table is complete
# ---------------------------------------------------------------------------------------------------

RULES = ("vjp", "jvp", "latex", "lower")


@pytest.mark.parametrize("cls", PRIMITIVES, ids=lambda c: c.__name__)
def test_primitive_defines_every_rule(cls: type[Node]) -> None:
    for rule in RULES:
        assert getattr(cls, rule) is not getattr(Node, rule), f"{cls.__name__} does not define {rule}"
        assert callable(getattr(cls, rule))
    assert cls.kind != Node.kind, f"{cls.__name__} has no kind of its own"
    assert (cls.__doc__ or "").strip(), f"{cls.__name__} has no docstring"


def test_primitive_kinds_are_distinct() -> None:
    kinds = [c.kind for c in PRIMITIVES]
    assert len(set(kinds)) == len(kinds)
    assert len(set(PRIMITIVES)) == len(PRIMITIVES)


# ---------------------------------------------------------------------------------------------------
# (b) the layer table
# ---------------------------------------------------------------------------------------------------

DIMS = ("R", "S")


@dataclass(frozen=True)
class Case:
    """One row: ``a = build(Z, **params)``; ``ref(Z, **params)`` is the batch-first torch forward."""

    name: str
    z: tuple[str, ...]  # per-sample shape of Z, in dimension names
    build: Callable[..., Node]
    ref: Callable[..., Tensor]
    params: dict[str, tuple[str, ...]] = field(default_factory=dict)
    values: str = "normal"  # normal, positive, ties (small integers), kinks (exact zeros)
    note: str = ""


def _act(fn: sp.Expr) -> Callable[[Node], Node]:
    return lambda Z: map_(fn, [Z])


x_ = ARG[0]
LAYER_CASES: list[Case] = [
    # contractions
    Case("matmul_param", ("S",), lambda Z, W: W @ Z, lambda Z, W: Z @ W.T, {"W": ("R", "S")}),
    Case("vecmat_param", ("S",), lambda Z, W: matmul(Z, W), lambda Z, W: Z @ W, {"W": ("S", "R")}),
    Case("matmat_param", ("R", "S"), lambda Z, W: Z @ W, lambda Z, W: Z @ W, {"W": ("S", "S")}),
    Case("dot_param", ("S",), lambda Z, w: nn.dot(Z, w), lambda Z, w: Z @ w, {"w": ("S",)}),
    Case("transpose", ("R", "S"), lambda Z: Z.T, lambda Z: Z.transpose(1, 2)),
    Case("outer_param", ("R",), lambda Z, v: outer(Z, v), lambda Z, v: Z[:, :, None] * v, {"v": ("S",)}),
    Case("outer_self", ("R",), lambda Z: outer(Z, Z), lambda Z: Z[:, :, None] * Z[:, None, :]),
    Case("trace_einsum", ("R", "R"), lambda Z: einsum([("i", "i")], (), [Z]),
         lambda Z: torch.diagonal(Z, dim1=1, dim2=2).sum(1)),
    Case("bilinear_einsum", ("R",), lambda Z, W, v: einsum([("i",), ("i", "j"), ("j",)], (), [Z, W, v]),
         lambda Z, W, v: (Z @ W) @ v, {"W": ("R", "S"), "v": ("S",)}),
    Case("power_of_mean", ("R", "S"), lambda Z: mean(Z, -1) ** 2, lambda Z: Z.mean(2) ** 2),
    Case("power_of_negated_sum", ("R", "S"), lambda Z: (-sum_(Z, -1)) ** 3, lambda Z: (-Z.sum(2)) ** 3),
    Case("reciprocal_of_mean", ("R", "S"), lambda Z: 1 / mean(Z, -1), lambda Z: 1 / Z.mean(2), values="positive"),
    Case("broadcast_add", ("R", "S"), lambda Z, b: Z + b, lambda Z, b: Z + b, {"b": ("S",)}),
    Case("hadamard_param", ("R", "S"), lambda Z, W: Z * W, lambda Z, W: Z * W, {"W": ("R", "S")}),
    Case("scalar_param", ("S",), lambda Z, c: c * nn.tanh(Z) + c**2, lambda Z, c: c * torch.tanh(Z) + c**2,
         {"c": ()}),
    # reductions
    Case("sum_axis0", ("R", "S"), lambda Z: sum_(Z, 0), lambda Z: Z.sum(1)),
    Case("sum_axis-1", ("R", "S"), lambda Z: sum_(Z, -1), lambda Z: Z.sum(2)),
    Case("sum_all", ("R", "S"), lambda Z: sum_(nn.square(Z)), lambda Z: (Z**2).sum((1, 2))),
    Case("mean_axis0", ("R", "S"), lambda Z: mean(Z, 0), lambda Z: Z.mean(1)),
    Case("mean_axis-1", ("R", "S"), lambda Z: mean(nn.sin(Z), -1), lambda Z: torch.sin(Z).mean(2)),
    Case("mean_all", ("R", "S"), lambda Z: mean(Z), lambda Z: Z.mean((1, 2))),
    # axis primitives
    Case("causal_masked_softmax", ("R", "S"), lambda Z: softmax(Z + CausalMask(Z.shape[0], Z.shape[1]), -1),
         lambda Z: torch.softmax(Z.masked_fill(torch.triu(torch.ones(Z.shape[1:], dtype=torch.bool), 1),
                                               float("-inf")), 2)),
    Case("unfold_avg_pool", ("R", "S", "S"), lambda Z: mean(Unfold(Z, (2, 2), 1, 0, 1, flat=True), 1),
         lambda Z: torch.nn.functional.avg_pool2d(Z, 2, stride=1)),
    Case("unfold_strided_dilated", ("R", "S", "S"),
         lambda Z: nn.sum_(nn.square(Unfold(Z, (2, 1), 2, 1, 2)), (1, 2)),
         lambda Z: (torch.nn.functional.unfold(Z, (2, 1), dilation=2, padding=1, stride=2) ** 2)
         .reshape(Z.shape[0], Z.shape[1], 2, -1).sum(2)
         .reshape(Z.shape[0], Z.shape[1], (Z.shape[2] + 2 - 2 - 1) // 2 + 1, (Z.shape[3] + 2 - 0 - 1) // 2 + 1)),
    Case("index_grid_scaling", ("R", "S"), lambda Z: Z * IndexGrid(Z.shape, 1, "j"),
         lambda Z: Z * torch.arange(Z.shape[2], dtype=Z.dtype)),
    Case("softmax_axis0", ("R", "S"), lambda Z: softmax(Z, 0), lambda Z: torch.softmax(Z, 1)),
    Case("softmax_axis-1", ("R", "S"), lambda Z: softmax(Z, -1), lambda Z: torch.softmax(Z, 2)),
    Case("log_softmax_axis0", ("R", "S"), lambda Z: log_softmax(Z, 0), lambda Z: torch.log_softmax(Z, 1)),
    Case("log_softmax_axis-1", ("R", "S"), lambda Z: log_softmax(Z, -1), lambda Z: torch.log_softmax(Z, 2)),
    Case("logsumexp_axis0", ("R", "S"), lambda Z: logsumexp(Z, 0), lambda Z: torch.logsumexp(Z, 1)),
    Case("logsumexp_axis-1", ("R", "S"), lambda Z: logsumexp(Z, -1), lambda Z: torch.logsumexp(Z, 2)),
    Case("softmax_of_matmul", ("S",), lambda Z, W: softmax(W @ Z), lambda Z, W: torch.softmax(Z @ W.T, 1),
         {"W": ("R", "S")}),
    # max: the gradient goes to the first maximum. torch.max(dim) routes it to the index it returns (the
    # first maximum); torch.amax splits it evenly between ties, so it is not the reference at ties.
    Case("max_axis0", ("R", "S"), lambda Z: max_(Z, 0), lambda Z: torch.max(Z, 1).values),
    Case("max_axis-1", ("R", "S"), lambda Z: max_(Z, -1), lambda Z: torch.max(Z, 2).values),
    Case("max_axis0_ties", ("R", "S"), lambda Z: max_(Z, 0), lambda Z: torch.max(Z, 1).values,
         values="ties"),
    Case("max_axis-1_ties", ("R", "S"), lambda Z: max_(Z, -1), lambda Z: torch.max(Z, 2).values,
         values="ties"),
    # indexing and stop-gradient
    Case("take_axis0", ("R", "S"), lambda Z: take(Z, 0, 1), lambda Z: Z[:, 1, :]),
    Case("take_axis-1", ("R", "S"), lambda Z: take(Z, -1, 0), lambda Z: Z[:, :, 0]),
    Case("take_vector", ("S",), lambda Z: take(Z, 0, 1) * nn.exp(take(Z, 0, 0)),
         lambda Z: Z[:, 1] * torch.exp(Z[:, 0])),
    Case("stop_gradient", ("S",), lambda Z: Z * stop_gradient(Z), lambda Z: Z * Z.detach()),
    Case("stop_gradient_param", ("S",), lambda Z, W: (W @ Z) * stop_gradient(W @ Z),
         lambda Z, W: (Z @ W.T) * (Z @ W.T).detach(), {"W": ("R", "S")}),
    # elementwise
    Case("sigmoid", ("R", "S"), nn.sigmoid, torch.sigmoid),
    Case("tanh", ("R", "S"), nn.tanh, torch.tanh),
    Case("relu", ("R", "S"), nn.relu, F.relu),
    Case("relu_kinks", ("R", "S"), nn.relu, F.relu, values="kinks"),
    Case("leaky_relu", ("R", "S"), lambda Z: nn.leaky_relu(Z, sp.Rational(1, 10)),
         lambda Z: F.leaky_relu(Z, 0.1)),
    Case("leaky_relu_kinks", ("R", "S"), lambda Z: nn.leaky_relu(Z, sp.Rational(1, 10)),
         lambda Z: F.leaky_relu(Z, 0.1), values="kinks"),
    # a learned slope (PReLU): the slope's gradient where(z > 0, 0, z) (torch.prelu's)
    Case("prelu_param", ("R", "S"), lambda Z, s: map_(DF.leaky_relu(x_, ARG[1]), [Z, s]),
         lambda Z, s: torch.where(Z > 0, Z, s * Z), {"s": ("R", "S")}),
    Case("prelu_param_kinks", ("R", "S"), lambda Z, s: map_(DF.leaky_relu(x_, ARG[1]), [Z, s]),
         lambda Z, s: torch.where(Z > 0, Z, s * Z), {"s": ("R", "S")}, values="kinks"),
    Case("softplus", ("R", "S"), nn.softplus, F.softplus),
    Case("exp", ("R", "S"), nn.exp, torch.exp),
    Case("log", ("R", "S"), nn.log, torch.log, values="positive"),
    Case("sin", ("R", "S"), nn.sin, torch.sin),
    Case("cos", ("R", "S"), nn.cos, torch.cos),
    Case("sqrt", ("R", "S"), nn.sqrt, torch.sqrt, values="positive"),
    Case("square", ("R", "S"), nn.square, lambda Z: Z**2),
    Case("cube", ("R", "S"), lambda Z: Z**3, lambda Z: Z**3),
    Case("reciprocal", ("R", "S"), lambda Z: 1 / Z, lambda Z: 1 / Z, values="positive"),
    Case("negate", ("R", "S"), lambda Z: -Z, lambda Z: -Z),
    Case("activation_identity", ("S",), lambda Z: nn.activation("identity", Z), lambda Z: Z),
    Case("composite_map", ("R", "S"), _act(DF.softplus(-x_) * sp.tanh(x_) + sp.exp(-(x_**2)) / 2),
         lambda Z: F.softplus(-Z) * torch.tanh(Z) + torch.exp(-(Z**2)) / 2),
    Case("sigmoid_times_log_sigmoid", ("S",), _act(DF.sigmoid(x_) * sp.log(DF.sigmoid(x_))),
         lambda Z: torch.sigmoid(Z) * F.logsigmoid(Z)),
]

_PRECEDENCE = ("engine bug: numeric/codegen.py Lowering.map_code pastes an operand's code into the scalar "
               "expression without parentheses, so an operand used once, e.g. "
               "mean(tanh(W x))**2, is generated as t.sum(axis=1) / R**2 (and 1/mean(z) as 1/t.sum() / S)")
_LATEX_EXP = ("engine bug: derive/functions.py _latex(self, printer) of sigmoid, softplus, relu, ... takes no "
              "exp= keyword, so SymPy's LaTeX of sigmoid(x)**2 raises TypeError and numeric.source fails")
#: rows that fail because the engine is wrong, and the backends they fail on (kept, strict: a fix turns
#: them into errors, and the entry is then removed here)
BOTH = ("numpy", "torch")
KNOWN_BUGS: dict[str, tuple[str, tuple[str, ...], type[BaseException]]] = {
}


def _params(names: list[str], backends: tuple[str, ...] | None = None) -> list[Any]:
    """pytest params over names (x backends), the known engine bugs marked strict xfail."""
    out = []
    for n in names:
        for be in backends or (None,):
            reason, where, exc = KNOWN_BUGS.get(n, ("", (), AssertionError))
            bug = be in where if be is not None else bool(where)
            marks = [pytest.mark.xfail(strict=True, raises=exc, reason=reason)] if bug else []
            args = (n,) if be is None else (n, be)
            out.append(pytest.param(*args, marks=marks, id=n if be is None else f"{n}-{be}"))
    return out


SHAPE_SEEDS = (0, 1, 2)


def _sizes(seed: int) -> dict[str, int]:
    rng = np.random.default_rng(1000 + seed)
    return {"n": int(rng.integers(1, 5)), "R": int(rng.integers(2, 5)), "S": int(rng.integers(2, 6))}


@functools.cache
def _layer_model(name: str) -> derive.Model:
    case = CASES[name]
    b = derive.Builder(f"prim_{case.name.replace('-', 'm')}", f"primitive test {case.name}", "test")
    b.samples("n", 3)
    dims = {d: b.dim(d, 3) for d in DIMS}
    domain = "positive" if case.values == "positive" else "real"
    Z = b.input("Z", tuple(dims[d] for d in case.z), "z", batched=True, domain=domain)
    params = {k: b.param(k, tuple(dims[d] for d in shape)) for k, shape in case.params.items()}
    out = case.build(Z, **params)
    G = b.input("G", out.shape, r"\zeta", batched=True)
    a = b.eq("a", out, "a")
    labels = tuple(range(a.ndim))
    b.eq("C", einsum([labels, labels], (), [G, a]), "C")
    return b.model(reduction="sum", diff_inputs=("Z",), kinks=case.values in ("kinks", "ties"))


CASES = {c.name: c for c in LAYER_CASES}
assert len(CASES) == len(LAYER_CASES), "duplicate case names"


def _arrays(m: derive.Model, case: Case, seed: int) -> dict[str, np.ndarray]:
    sizes = _sizes(seed)
    rng = np.random.default_rng(seed)
    out = {}
    for k, shape in m.shapes(**sizes).items():
        if k == "Z" and case.values == "positive":
            v = rng.uniform(0.2, 3.0, size=shape)
        elif k == "Z" and case.values == "ties":
            v = rng.integers(0, 3, size=shape).astype(np.float64)
        elif k == "Z" and case.values == "kinks":
            v = rng.normal(size=shape) * rng.integers(0, 2, size=shape)  # about half exact zeros
        else:
            v = rng.normal(size=shape)
        out[k] = v
    return out


def _torch_reference(case: Case, arrays: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
    leaves = {k: torch.tensor(arrays[k], dtype=torch.float64, requires_grad=True) for k in ["Z", *case.params]}
    G = torch.tensor(arrays["G"], dtype=torch.float64)
    out = case.ref(leaves["Z"], **{k: leaves[k] for k in case.params})
    assert out.shape == G.shape, (case.name, tuple(out.shape), tuple(G.shape))
    loss = (G * out).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return float(loss.detach()), {k: (g.numpy() if g is not None else np.zeros(arrays[k].shape))
                                  for k, g in zip(leaves, grads)}


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def assert_close(got: Any, want: Any, what: str, rtol: float = RTOL) -> None:
    """Elementwise relative agreement with a normwise floor: ``|g - w| <= rtol (|w| + max(1, max|w|))``."""
    g, w = _np(got), _np(want)
    assert g.shape == w.shape, f"{what}: shape {g.shape}, expected {w.shape}"
    scale = max(1.0, float(np.max(np.abs(w)))) if w.size else 1.0
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale, err_msg=what)


@pytest.mark.parametrize("name, backend", _params(list(CASES), BOTH))
def test_layer_primitive_matches_torch_autograd(name: str, backend: str) -> None:
    case = CASES[name]
    m = _layer_model(name)
    assert m.grad_names == [*case.params, "Z"]
    f = numeric.compile(m, backend)
    for seed in SHAPE_SEEDS:
        arrays = _arrays(m, case, seed)
        loss, grads = _torch_reference(case, arrays)
        args = arrays if backend == "numpy" else {k: torch.tensor(v) for k, v in arrays.items()}
        out = f(**args)
        where = f"{name} [{backend}] sizes {_sizes(seed)}"
        assert_close(out["loss"], loss, f"{where}: loss")
        for k in m.grad_names:
            assert_close(out["grad"][k], grads[k], f"{where}: gradient {k}")


def test_max_routes_ties_to_the_first_maximum() -> None:
    """At ties the gradient of max goes to the first maximum only (torch.max(dim)), not split (amax)."""
    m = _layer_model("max_axis-1_ties")
    Z = np.array([[[1.0, 2.0, 2.0, 0.0], [3.0, 3.0, 3.0, 3.0]]])
    G = np.array([[5.0, 7.0]])
    for backend in ("numpy", "torch"):
        args: dict[str, Any] = {"Z": Z, "G": G}
        if backend == "torch":
            args = {k: torch.tensor(v) for k, v in args.items()}
        g = _np(numeric.compile(m, backend)(**args)["grad"]["Z"])
        want = np.zeros_like(Z)
        want[0, 0, 1] = 5.0  # the first of the two 2's
        want[0, 1, 0] = 7.0  # the first of the four 3's
        np.testing.assert_array_equal(g, want)
    # the reference choice documented above: amax splits the gradient, max(dim) does not
    Zt = torch.tensor(Z, requires_grad=True)
    (ga,) = torch.autograd.grad((torch.amax(Zt, 2) * torch.tensor(G)).sum(), [Zt])
    assert float(ga[0, 0, 1]) == pytest.approx(2.5)


def test_relu_kink_follows_torch() -> None:
    """ReLU'(0) = 0 and LeakyReLU'(0) = slope, as PyTorch."""
    for name, slope in (("relu_kinks", 0.0), ("leaky_relu_kinks", 0.1)):
        m = _layer_model(name)
        Z, G = np.zeros((2, 2, 3)), np.ones((2, 2, 3))
        g = numeric.compile(m)(Z=Z, G=G)["grad"]["Z"]
        np.testing.assert_array_equal(g, np.full(Z.shape, slope))


def _node_types(m: derive.Model, hessian: bool = False) -> set[type]:
    eqs = [*m.equations, *derive.backprop(m)]
    if hessian:
        for p in m.params:
            eqs += derive.hessian(m, p)
    return {type(n) for n in walk([e.rhs for e in eqs])}


def test_tables_exercise_every_primitive() -> None:
    """Together the layer and Hessian tables reach every primitive of the table."""
    seen: set[type] = set()
    for name in CASES:
        if name not in KNOWN_BUGS:
            seen |= _node_types(_layer_model(name))
    for name in HESSIAN_CASES:
        if name not in KNOWN_BUGS:
            seen |= _node_types(_hessian_model(name), hessian=True)
    for name in OPS:
        seen |= _node_types(op_model(name), hessian=True)
    missing = [c.__name__ for c in PRIMITIVES if c not in seen]
    assert not missing, f"no test row reaches: {missing}"


# ---------------------------------------------------------------------------------------------------
# Elementwise derivatives come from sympy.diff of the scalar definition
# ---------------------------------------------------------------------------------------------------

x = sp.Symbol("x", real=True)


def test_sigmoid_derivative() -> None:
    s = DF.sigmoid(x)
    assert sp.simplify(s.diff(x) - s * (1 - s)) == 0
    # and that is the derivative of its definition 1/(1 + e^{-x})
    assert sp.simplify(s.diff(x).rewrite(sp.exp) - sp.diff(1 / (1 + sp.exp(-x)), x)) == 0


def test_softplus_derivative_is_sigmoid() -> None:
    assert sp.simplify(DF.softplus(x).diff(x) - DF.sigmoid(x)) == 0
    assert sp.simplify(DF.softplus(x).diff(x).rewrite(sp.exp) - sp.diff(sp.log(1 + sp.exp(x)), x)) == 0


@pytest.mark.parametrize("fn", [DF.sigmoid, DF.softplus, DF.relu], ids=lambda f: f.__name__)
def test_latex_of_a_power_of_a_book_function(fn: Any) -> None:
    tex = sp.latex(fn(x) ** 2)
    assert tex.endswith("^{2}") and sp.latex(fn(x)) in tex, tex


def test_relu_and_leaky_relu_derivatives() -> None:
    assert DF.relu(x).diff(x) == DF.step(x)
    assert DF.leaky_relu(x, sp.Rational(1, 10)).diff(x) == DF.leaky_step(x, sp.Rational(1, 10))
    assert DF.step(x).diff(x) == 0


def _lambdify(expr: sp.Expr, var: sp.Symbol = x_) -> Callable[[np.ndarray], np.ndarray]:
    """NumPy function of a scalar SymPy expression (the book's functions print as ``ops.<name>``)."""
    return sp.lambdify(var, expr, modules=[{"ops": numeric.ops_numpy}, "numpy"])  # type: ignore[no-any-return]


MAP_FNS = {str(f): f for f in [DF.sigmoid(x_), sp.tanh(x_), DF.softplus(x_), sp.exp(x_) * sp.sin(x_),
                               sp.log(1 + x_**2), DF.sigmoid(x_) ** 2 * sp.cos(x_),
                               DF.softplus(sp.tanh(x_)) * DF.sigmoid(-x_)]}


@pytest.mark.parametrize("key", _params(list(MAP_FNS)))
def test_map_vjp_is_sympy_diff(key: str) -> None:
    fn = MAP_FNS[key]
    """The adjoint of a map a = f(z) is G * f'(z) with f' = sympy.diff(f): checked through the model."""
    b = derive.Builder("map_vjp", "map", "test")
    b.samples("n", 2)
    N = b.dim("N", 3)
    Z = b.input("Z", (N,), "z", batched=True)
    G = b.input("G", (N,), r"\zeta", batched=True)
    a = b.eq("a", map_(fn, [Z]), "a")
    b.eq("C", nn.dot(G, a), "C")
    m = b.model(reduction="sum", diff_inputs=("Z",))
    (g_eq,) = [e for e in derive.backprop(m) if e.kind == "grad"]
    rng = np.random.default_rng(5)
    Zv, Gv = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    want = Gv * _lambdify(sp.diff(fn, x_))(Zv)
    got = numeric.compile(m)(Z=Zv, G=Gv)["grad"]["Z"]
    assert g_eq.lhs.name == "g_Z"
    assert_close(got, want, f"d/dz {fn}")


def test_every_scalar_function_has_a_consistent_derivative() -> None:
    """For each function the generators know, fdiff agrees with a central difference of its lowering."""
    ops = numeric.ops_numpy
    table = {DF.sigmoid: ops.sigmoid, DF.softplus: ops.softplus, sp.tanh: np.tanh, sp.sin: np.sin,
             sp.cos: np.cos, sp.exp: np.exp, sp.log: np.log, sp.sqrt: np.sqrt, DF.relu: ops.relu}
    pts = np.array([0.3, 0.9, 1.7, 2.5])
    for fn, impl in table.items():
        d = _lambdify(sp.diff(fn(x), x), x)
        h = 1e-6
        fd = (impl(pts + h) - impl(pts - h)) / (2 * h)
        np.testing.assert_allclose(d(pts), fd, rtol=1e-7, atol=1e-8, err_msg=fn.__name__)


# ---------------------------------------------------------------------------------------------------
# (c) Hessians against torch.autograd.functional.hessian
# ---------------------------------------------------------------------------------------------------


def _zoo_hessian(name: str, loss: Callable[..., Tensor], sizes: dict[str, int], seed: int = 0) -> None:
    m = derive.models.get(name)
    rng = np.random.default_rng(seed)
    arrays = {k: rng.uniform(size=s) if m.tensor(k).domain == "unit" else rng.normal(size=s)
              for k, s in m.shapes(**sizes).items()}
    hs = list(m.hessian_wrt)
    for p in hs:
        eqs = derive.hessian(m, p)
        assert len(eqs) == 1 and eqs[0].lhs.shape == m.params[p].shape * 2
    t = {k: torch.tensor(v) for k, v in arrays.items()}

    def f(*ps: Tensor) -> Tensor:
        return loss(**{**t, **dict(zip(hs, ps))})

    H = torch.autograd.functional.hessian(f, tuple(t[p] for p in hs))
    for backend in ("numpy", "torch"):
        args = arrays if backend == "numpy" else t
        out = numeric.compile(m, backend, hessian=hs)(**args)
        assert_close(out["loss"], f(*(t[p] for p in hs)), f"{name} loss")
        for i, a in enumerate(hs):
            for j, b in enumerate(hs):
                key: Any = a if a == b else (a, b)
                assert_close(out["hessian"][key], H[i][j], f"{name} [{backend}] Hessian {key}")


def test_hessian_rosenbrock() -> None:
    def loss(theta: Tensor) -> Tensor:
        return (1 - theta[0]) ** 2 + 100 * (theta[1] - theta[0] ** 2) ** 2

    _zoo_hessian("rosenbrock", loss, {})
    # and at the minimum, the closed form [[802, -400], [-400, 200]] written out
    out = numeric.compile(derive.models.get("rosenbrock"), hessian=["theta"])(theta=np.array([1.0, 1.0]))
    t1, t2 = 1.0, 1.0
    want = np.array([[2 - 400 * (t2 - t1**2) + 800 * t1**2, -400 * t1], [-400 * t1, 200.0]])
    assert_close(out["hessian"]["theta"], want, "rosenbrock Hessian at (1, 1)")


@pytest.mark.parametrize("seed", [0, 1])
def test_hessian_linear_regression(seed: int) -> None:
    def loss(theta: Tensor, X: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(X @ theta, y)

    _zoo_hessian("linear_regression", loss, {"n": 5 + seed, "p": 3 + seed}, seed)


def test_hessian_logistic_regression_blocks() -> None:
    def loss(w: Tensor, b: Tensor, X: Tensor, y: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(X @ w + b, y)

    _zoo_hessian("logistic_regression", loss, {"n": 6, "p": 3})


def test_hessian_autodiff_example() -> None:
    def loss(theta: Tensor) -> Tensor:
        return torch.sin(theta[0] * theta[1]) + torch.exp(theta[1] + theta[2]) - 2 * theta[2]

    _zoo_hessian("autodiff_example", loss, {})


@dataclass(frozen=True)
class HCase:
    """A per-sample model ``C_i = build(W, x_i)`` (loss = mean over i) for a Hessian in ``W``."""

    name: str
    build: Callable[[Node, Node], Node]
    ref: Callable[[Tensor, Tensor], Tensor]  # (W, X batch) -> per-sample losses (n,)
    w: tuple[str, ...] = ("R", "S")


HESSIAN_TABLE = [
    HCase("lse", lambda W, x: logsumexp(W @ x), lambda W, X: torch.logsumexp(X @ W.T, 1)),
    HCase("softmax", lambda W, x: nn.dot(softmax(W @ x), nn.sin(W @ x)),
          lambda W, X: (torch.softmax(X @ W.T, 1) * torch.sin(X @ W.T)).sum(1)),
    HCase("log_softmax", lambda W, x: -take(log_softmax(W @ x), 0, 0),
          lambda W, X: -torch.log_softmax(X @ W.T, 1)[:, 0]),
    HCase("max_squared", lambda W, x: max_(W @ x) ** 2, lambda W, X: torch.max(X @ W.T, 1).values ** 2),
    HCase("tanh_mean", lambda W, x: mean(nn.tanh(W @ x)) ** 2, lambda W, X: torch.tanh(X @ W.T).mean(1) ** 2),
    HCase("sigmoid_sum", lambda W, x: sum_(nn.sigmoid(W @ x) * nn.softplus(W @ x)),
          lambda W, X: (torch.sigmoid(X @ W.T) * F.softplus(X @ W.T)).sum(1)),
    HCase("stop_gradient", lambda W, x: nn.dot(W @ x, stop_gradient(nn.exp(W @ x))),
          lambda W, X: ((X @ W.T) * torch.exp(X @ W.T).detach()).sum(1)),
    HCase("take_vector", lambda W, x: take(W, 0, 0) * take(W, 0, 1) ** 2 * nn.dot(W, x),
          lambda W, X: W[0] * W[1] ** 2 * (X @ W), ("S",)),
    # a slope that is also the input's scale: the slope derivative of leaky_step (1{z <= 0}) in the Hessian
    HCase("prelu_scaled", lambda W, x: sum_(nn.square(map_(DF.leaky_relu(x_, ARG[1]), [W * x, W]))),
          lambda W, X: torch.where(X * W > 0, X * W, W * (X * W)).pow(2).sum(1), ("S",)),
    HCase("quadratic_form", lambda W, x: einsum([("i",), ("i", "j"), ("j",)], (), [x, nn.square(W), x]),
          lambda W, X: ((X @ (W**2)) * X).sum(1), ("S", "S")),
]
HESSIAN_CASES = {c.name: c for c in HESSIAN_TABLE}


@functools.cache
def _hessian_model(name: str) -> derive.Model:
    case = HESSIAN_CASES[name]
    b = derive.Builder(f"hess_{name}", f"Hessian test {name}", "test")
    b.samples("n", 4)
    dims = {d: b.dim(d, 3) for d in DIMS}
    W = b.param("W", tuple(dims[d] for d in case.w))
    x_in = b.input("X", (dims["S"],), "x", batched=True)
    b.eq("C", case.build(W, x_in), "C")
    return b.model(hessian=("W",))


def _mean_loss(case: HCase, X: Tensor, W: Tensor) -> Tensor:
    return case.ref(W, X).mean()


@pytest.mark.parametrize("name, backend", _params(list(HESSIAN_CASES), BOTH))
def test_hessian_of_primitives(name: str, backend: str) -> None:
    case = HESSIAN_CASES[name]
    m = _hessian_model(name)
    for seed in (0, 1):
        sizes = _sizes(seed)
        rng = np.random.default_rng(seed)
        arrays = {k: rng.normal(size=s) for k, s in m.shapes(**sizes).items()}
        t = {k: torch.tensor(v) for k, v in arrays.items()}
        X = t["X"]
        loss = case.ref(t["W"], X).mean()
        H = torch.autograd.functional.hessian(functools.partial(_mean_loss, case, X), t["W"])
        Wl = t["W"].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(case.ref(Wl, t["X"]).mean(), [Wl])
        out = numeric.compile(m, backend, hessian=["W"])(**(arrays if backend == "numpy" else t))
        where = f"{name} [{backend}] sizes {sizes}"
        assert_close(out["loss"], loss, f"{where}: loss")
        assert_close(out["grad"]["W"], g, f"{where}: gradient")
        assert_close(out["hessian"]["W"], H, f"{where}: Hessian")


# ---------------------------------------------------------------------------------------------------
# (d) OP_TABLE: one row per op of the engine's own-math families (abs, sign, erf, elementwise min/max,
#     clamp, where, real powers, gathers by integer labels, linear algebra, norms). Each row is checked on
#     hypothesis-drawn sizes and values: loss, gradients and Hessian-vector products of C = sum(G * op(args))
#     against torch.autograd on the row's own torch expression, and (per-sample form) the batched kernels.
# ---------------------------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from derive.tensor import concat, gather, pad, reshape, slice_  # noqa: E402


@dataclass(frozen=True)
class Op:
    """``out = build(**args)``; ``args``: name -> (shape in dimension names, values). Values: ``real``,
    ``positive``, ``grid`` (a small grid with exact zeros and ties: the kinks), ``invertible`` (a well
    conditioned square matrix), ``spd``, or ``labels:<dim>`` (integers below that size, an input). ``ref``
    takes the args as torch tensors, in order (one sample). ``batched``: the args that are per sample in the
    batched form of the row."""

    name: str
    args: dict[str, tuple[tuple[str, ...], str]]
    build: Callable[..., Node]
    ref: Callable[..., Tensor]
    batched: tuple[str, ...] = ()
    kinks: bool = False


def _labels_dim(values: str) -> str | None:
    return values.split(":", 1)[1] if values.startswith("labels:") else None


def _domain(values: str) -> str:
    return "labels" if values.startswith("labels") else ("spd" if values == "spd" else "real")


X1 = {"x": (("R", "S"), "real")}
OP_TABLE: list[Op] = [
    Op("abs", X1, nn.abs, torch.abs),
    Op("abs_kinks", {"x": (("R", "S"), "grid")}, nn.abs, torch.abs, kinks=True),
    Op("sign", X1, lambda x: nn.sign(x) * nn.exp(x), lambda x: torch.sign(x) * torch.exp(x)),
    Op("sign_kinks", {"x": (("R", "S"), "grid")}, lambda x: nn.sign(x) * x, lambda x: torch.sign(x) * x,
       kinks=True),
    Op("erf", X1, nn.erf, torch.erf),
    Op("erf_composite", X1, lambda x: x * (1 + nn.erf(x / np.sqrt(2))) / 2,
       lambda x: F.gelu(x)),
    Op("maximum", {"a": (("R", "S"), "real"), "b": (("R", "S"), "real")}, nn.maximum, torch.maximum),
    Op("maximum_ties", {"a": (("R", "S"), "grid"), "b": (("R", "S"), "grid")}, nn.maximum, torch.maximum,
       kinks=True),
    Op("minimum_ties", {"a": (("R", "S"), "grid"), "b": (("R", "S"), "grid")}, nn.minimum, torch.minimum,
       kinks=True),
    Op("maximum_broadcast", {"a": (("R", "S"), "real"), "b": (("S",), "real")}, nn.maximum, torch.maximum),
    Op("clamp_numbers", {"x": (("R", "S"), "grid")}, lambda x: nn.clamp(x, -0.5, 0.5) ** 2,
       lambda x: torch.clamp(x, -0.5, 0.5) ** 2, kinks=True),
    Op("clamp_tensors", {"x": (("S",), "grid"), "lo": (("S",), "grid"), "hi": (("S",), "grid")}, nn.clamp,
       torch.clamp, kinks=True),
    Op("where", {"c": (("R", "S"), "grid"), "a": (("R", "S"), "real"), "b": (("R", "S"), "real")},
       lambda c, a, b: nn.where(map_(DF.step(ARG[0]), [c]), nn.exp(a), a * b),
       lambda c, a, b: torch.where(c > 0, torch.exp(a), a * b), kinks=True),
    Op("real_power", {"x": (("R", "S"), "positive")}, lambda x: x**2.5 + x ** (-0.5),
       lambda x: x**2.5 + x ** (-0.5)),
    Op("tensor_power", {"x": (("R", "S"), "positive"), "p": (("R", "S"), "real")}, nn.power, torch.pow),
    Op("gather_rows", {"x": (("R", "S"), "real"), "y": (("R",), "labels:S")},
       lambda x, y: gather(nn.exp(x), y, -1), lambda x, y: torch.exp(x).gather(1, y.long()[:, None])[:, 0],
       batched=("x", "y")),
    Op("gather_table", {"x": (("S",), "real"), "y": ((), "labels:S")}, lambda x, y: take(x, 0, y) ** 2,
       lambda x, y: x[y.long()] ** 2, batched=("y",)),
    Op("cross_entropy_labels", {"z": (("S",), "real"), "y": ((), "labels:S")},
       lambda z, y: -take(log_softmax(z), 0, y), lambda z, y: F.cross_entropy(z[None], y.long()[None]),
       batched=("z", "y")),
    Op("trace", {"x": (("R", "R"), "real")}, nn.trace, torch.trace),
    Op("trace_product", {"a": (("R", "S"), "real"), "x": (("S", "R"), "real")},
       lambda a, x: nn.trace(a @ x) ** 2, lambda a, x: torch.trace(a @ x) ** 2),
    Op("diag_vector", {"v": (("R",), "real")}, lambda v: nn.diag(nn.sin(v)), lambda v: torch.diag(torch.sin(v))),
    Op("diag_matrix", {"x": (("R", "R"), "real")}, lambda x: nn.exp(nn.diag(x)),
       lambda x: torch.exp(torch.diagonal(x))),
    Op("det", {"x": (("R", "R"), "invertible")}, nn.det, torch.linalg.det),
    Op("logdet", {"x": (("R", "R"), "spd")}, nn.logdet, torch.logdet),
    Op("inv", {"x": (("R", "R"), "invertible")}, nn.inv, torch.linalg.inv),
    Op("solve_vector", {"a": (("R", "R"), "invertible"), "b": (("R",), "real")}, nn.solve, torch.linalg.solve),
    Op("solve_matrix", {"a": (("R", "R"), "invertible"), "b": (("R", "S"), "real")}, nn.solve,
       torch.linalg.solve, batched=("b",)),
    Op("norm_vector", {"x": (("S",), "real")}, nn.norm, torch.linalg.vector_norm),
    Op("norm_frobenius", {"x": (("R", "S"), "real")}, lambda x: nn.exp(nn.frobenius(x)),
       lambda x: torch.exp(torch.linalg.matrix_norm(x))),
    Op("norm_squared", {"x": (("R", "S"), "real")}, lambda x: nn.norm(x) ** 2,
       lambda x: torch.linalg.vector_norm(x) ** 2),
    Op("norm1", {"x": (("R", "S"), "grid")}, nn.norm1, lambda x: torch.linalg.vector_norm(x, 1), kinks=True),
    Op("reshape", {"x": (("R", "S"), "real")}, lambda x: nn.exp(reshape(x, (x.shape[0] * x.shape[1],))),
       lambda x: torch.exp(x.reshape(-1))),
    Op("slice_pad", {"x": (("R", "S"), "real")},
       lambda x: nn.exp(pad(nn.sin(slice_(x, 1, 1, x.shape[1])), 1, 0, x.shape[1] + 2)),
       lambda x: torch.exp(torch.nn.functional.pad(torch.sin(x[:, 1:]), (0, 3)))),
    Op("concat", {"a": (("R", "S"), "real"), "b": (("R",), "real")},
       lambda a, b: nn.sin(concat([a, reshape(b, (b.shape[0], 1))], 1)) ** 2,
       lambda a, b: torch.sin(torch.cat([a, b[:, None]], 1)) ** 2),
]
OPS = {o.name: o for o in OP_TABLE}
assert len(OPS) == len(OP_TABLE), "duplicate op names"
OP_DIMS = ("R", "S")


def _op_model(op: Op, batched: bool) -> derive.Model:
    b = derive.Builder(f"op_{op.name}" + ("_batched" if batched else ""), f"op {op.name}", "test")
    if batched:
        b.samples("n", 3, 1, 4)
    dims = {d: b.dim(d, 3, 1, 4) for d in OP_DIMS}
    vs: dict[str, Node] = {}
    for k, (shape, values) in op.args.items():
        sh = tuple(dims[d] for d in shape)
        per_sample = batched and k in op.batched
        if values.startswith("labels") or per_sample:
            vs[k] = b.input(k, sh, batched=per_sample, domain=_domain(values))
        else:
            vs[k] = b.param(k, sh)
    out = op.build(**vs)
    G = b.input("G", out.shape, r"\zeta", batched=batched)
    a = b.eq("out", out, "a")
    labels = tuple(range(a.ndim))
    b.eq("C", einsum([labels, labels], (), [G, a]), "C")
    diff = tuple(k for k in op.batched if k in b.inputs and not op.args[k][1].startswith("labels")) if batched else ()
    hess = () if batched else tuple(b.params)
    return b.model(reduction="sum", diff_inputs=diff, hessian=hess, kinks=op.kinks)


_OP_MODELS: dict[tuple[str, bool], derive.Model] = {}


def op_model(name: str, batched: bool = False) -> derive.Model:
    key = (name, batched)
    if key not in _OP_MODELS:
        _OP_MODELS[key] = _op_model(OPS[name], batched)
    return _OP_MODELS[key]


def _op_values(rng: np.random.Generator, values: str, shape: tuple[int, ...], sizes: dict[str, int]) -> np.ndarray:
    if values == "positive":
        return rng.uniform(0.5, 2.0, size=shape)
    if values == "grid":
        return rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=shape)
    if values in ("invertible", "spd"):
        k = shape[-1]
        a = rng.normal(size=shape)
        if values == "spd":
            return a @ np.swapaxes(a, -1, -2) / k + np.eye(k)
        return a / np.sqrt(k) + 2 * np.eye(k)
    dim = _labels_dim(values)
    if dim is not None:
        return rng.integers(0, sizes[dim], size=shape).astype(np.float64)
    return rng.normal(size=shape)


def _op_arrays(m: derive.Model, op: Op, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for k, shape in m.shapes(**sizes).items():
        out[k] = _op_values(rng, op.args[k][1], shape, sizes) if k in op.args else rng.normal(size=shape)
    return out


def _op_loss(op: Op, t: dict[str, Tensor], batched: tuple[str, ...]) -> Tensor:
    args = {k: t[k] for k in op.args}
    if batched:
        n = t["G"].shape[0]
        outs = [op.ref(*[(v[i] if k in batched else v) for k, v in args.items()]) for i in range(n)]
        out = torch.stack([o.reshape(t["G"].shape[1:]) for o in outs])
    else:
        out = op.ref(*args.values()).reshape(t["G"].shape)
    return (t["G"] * out).sum()


OP_EXAMPLES = max(3, settings().max_examples // 3)


@pytest.mark.parametrize("name", list(OPS))
@settings(max_examples=OP_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_op_gradient_and_hessian_vector_products(name: str, data: st.DataObject) -> None:
    op = OPS[name]
    m = op_model(name)
    sizes = {d: data.draw(st.integers(1, 4), label=d) for d in OP_DIMS}
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    arrays = _op_arrays(m, op, sizes, seed)
    t = {k: torch.tensor(v) for k, v in arrays.items()}
    params = list(m.params)
    leaves = {k: t[k].clone().requires_grad_(True) for k in params}
    loss = _op_loss(op, {**t, **leaves}, ())
    grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True, allow_unused=True)
    rng = np.random.default_rng(seed ^ 1)
    vs = {k: torch.tensor(rng.normal(size=arrays[k].shape)) for k in params}
    for backend in ("numpy", "torch"):
        f = numeric.compile(m, backend, hessian=params)
        out = f(**(arrays if backend == "numpy" else t))
        where = f"{name} [{backend}] sizes {sizes} seed {seed}"
        assert_close(out["loss"], loss.detach(), f"{where}: loss")
        for k, g in zip(params, grads):
            assert_close(out["grad"][k], np.zeros(arrays[k].shape) if g is None else g.detach(),
                         f"{where}: gradient {k}")
            # H v for the block (k, k): torch by double backward, ours from the dense Hessian block
            hv = None
            if g is not None and g.requires_grad:
                (hv,) = torch.autograd.grad((g * vs[k]).sum(), [leaves[k]], retain_graph=True, allow_unused=True)
            want = np.zeros(arrays[k].shape) if hv is None else hv.detach().numpy(force=True)
            H = _np(out["hessian"][k]).reshape(arrays[k].size, arrays[k].size)
            got = (H @ vs[k].numpy().reshape(-1)).reshape(arrays[k].shape)
            assert_close(got, want, f"{where}: Hessian-vector product in {k}")


@pytest.mark.parametrize("name", list(OPS))
def test_op_batched_kernels(name: str) -> None:
    """The per-sample form: batched args gain a leading sample axis in the kernels (gradients per sample)."""
    op = OPS[name]
    batched = op.batched or (next(iter(op.args)),)
    op = Op(op.name, op.args, op.build, op.ref, batched, op.kinks)
    m = _op_model(op, True)
    for seed in (0, 1):
        sizes = {"n": 2 + seed, "R": 2 + seed, "S": 3}
        arrays = _op_arrays(m, op, sizes, seed)
        t = {k: torch.tensor(v) for k, v in arrays.items()}
        grad_names = m.grad_names
        leaves = {k: t[k].clone().requires_grad_(True) for k in grad_names}
        loss = _op_loss(op, {**t, **leaves}, batched)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        for backend in ("numpy", "torch"):
            out = numeric.compile(m, backend)(**(arrays if backend == "numpy" else t))
            where = f"{name} batched [{backend}] sizes {sizes}"
            assert_close(out["loss"], loss.detach(), f"{where}: loss")
            for k, g in zip(grad_names, grads):
                want = np.zeros(arrays[k].shape) if g is None else g.numpy()
                assert_close(out["grad"][k], want, f"{where}: gradient {k}")


def _torch_grads(f: Callable[..., Tensor], *xs: Any) -> list[np.ndarray]:
    ts = [torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True) for x in xs]
    gs = torch.autograd.grad(f(*ts).sum(), ts, allow_unused=True)
    return [np.zeros(np.shape(x)) if g is None else g.numpy() for g, x in zip(gs, xs)]


def _kernel_grads(name: str, **arrays: Any) -> dict[str, np.ndarray]:
    m = op_model(name)
    shape = m.shapes(R=1, S=np.shape(next(iter(arrays.values())))[-1])["G"]
    out = numeric.compile(m)(**arrays, G=np.ones(shape))
    return {k: np.asarray(v) for k, v in out["grad"].items()}


def test_kink_values_follow_torch() -> None:
    """At the non-smooth points the derivatives are PyTorch's, exactly: |x|'(0) = 0, sign' = 0, maximum and
    minimum split ties evenly, clamp passes the gradient at its bounds, norms have gradient 0 at 0."""
    x = np.array([[-1.0, 0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(_kernel_grads("abs_kinks", x=x)["x"], _torch_grads(torch.abs, x)[0])
    np.testing.assert_array_equal(_kernel_grads("abs_kinks", x=x)["x"], [[-1.0, 0.0, 0.0, 1.0]])
    a, b = np.array([[1.0, 2.0, -0.5, 0.0]]), np.array([[1.0, 3.0, -0.5, -1.0]])
    for name, fn in (("maximum_ties", torch.maximum), ("minimum_ties", torch.minimum)):
        got = _kernel_grads(name, a=a, b=b)
        ta, tb = _torch_grads(fn, a, b)
        np.testing.assert_array_equal(got["a"], ta)
        np.testing.assert_array_equal(got["b"], tb)
    np.testing.assert_array_equal(_kernel_grads("maximum_ties", a=a, b=b)["a"], [[0.5, 0.0, 0.5, 1.0]])
    xc = np.array([[-1.0, -0.5, 0.0, 0.5, 1.0]])
    np.testing.assert_array_equal(_kernel_grads("clamp_numbers", x=xc)["x"],
                                  _torch_grads(lambda t: torch.clamp(t, -0.5, 0.5) ** 2, xc)[0])
    # tensor bounds, on every ordering of x, lo and hi (lo > hi included, where the value is hi)
    grid = np.array(np.meshgrid(*[[-1.0, 0.0, 1.0]] * 3)).reshape(3, -1)
    got = _kernel_grads("clamp_tensors", x=grid[0], lo=grid[1], hi=grid[2])
    for k, want in zip(("x", "lo", "hi"), _torch_grads(torch.clamp, *grid)):
        np.testing.assert_array_equal(got[k], want, err_msg=f"clamp gradient in {k}")
    z = np.zeros((1, 3))
    np.testing.assert_array_equal(_kernel_grads("norm_vector", x=z[0])["x"],
                                  _torch_grads(torch.linalg.vector_norm, z[0])[0])
    np.testing.assert_array_equal(_kernel_grads("norm_frobenius", x=z)["x"], np.zeros((1, 3)))
    np.testing.assert_array_equal(_kernel_grads("norm1", x=np.array([[0.0, -2.0, 3.0]]))["x"], [[0.0, -1.0, 1.0]])
    np.testing.assert_array_equal(_kernel_grads("sign_kinks", x=x)["x"], [[-1.0, 0.0, 0.0, 1.0]])


def test_where_keeps_infinity_out_of_the_branch_not_taken() -> None:
    """where(c, a, b) selects: log(x) = -inf (or NaN) where x <= 0 is not taken, so the value is finite. The
    gradient is torch's: 0 through the branch not taken, which at x = 0 is 0 * (1/0) = NaN in torch too
    (torch.where's well-known NaN gradient); elsewhere it is finite."""
    b = derive.Builder("where_inf", "where with an infinite branch", "test")
    N = b.dim("N", 3)
    x = b.param("x", (N,))
    b.eq("C", nn.sum_(nn.where(nn.map_(DF.step(ARG[0]), [x]), nn.log(x), nn.exp(x))))
    m = b.model()
    for xv in (np.array([0.0, 2.0, -1.0]), np.array([-3.0, 2.0, -1.0])):
        for backend in ("numpy", "torch"):
            with np.errstate(divide="ignore", invalid="ignore"):
                out = numeric.compile(m, backend)(x=xv if backend == "numpy" else torch.tensor(xv))
            xt = torch.tensor(xv, requires_grad=True)
            loss = torch.where(xt > 0, torch.log(xt), torch.exp(xt)).sum()
            loss.backward()
            assert np.isfinite(out["loss"])
            assert out["loss"] == pytest.approx(float(loss.detach()), rel=1e-14)
            g = _np(out["grad"]["x"])
            np.testing.assert_allclose(g, xt.grad.numpy(), rtol=1e-14)  # NaN exactly where torch has NaN
            assert np.isfinite(g).all() == (0.0 not in xv)


def test_erf_numpy_lowering_takes_arrays() -> None:
    """SymPy's NumPy printer writes math.erf (one float); the kernels call scipy.special.erf on arrays."""
    src = numeric.source(op_model("erf"), "numpy")
    assert "math.erf" not in src and "ops.erf(" in src
    x = np.linspace(-3, 3, 7)
    np.testing.assert_allclose(numeric.ops_numpy.erf(x), torch.erf(torch.tensor(x)).numpy(), rtol=1e-15)


def test_tensor_power_at_a_zero_base_follows_torch() -> None:
    """x^p with a tensor exponent: d/dx = p x^{p-1} but 0 where p = 0, d/dp = x^p log x but 0 where x = 0 and
    p >= 0 (torch.pow's rules); a literal p x^p / x or x^p log x would be NaN there."""
    grid = np.array(np.meshgrid([0.0, 1.0, 2.0], [0.0, 0.5, 1.0, 2.0])).reshape(2, -1)
    got = _kernel_grads("tensor_power", x=grid[0][None], p=grid[1][None])
    tx, tp = _torch_grads(torch.pow, grid[0], grid[1])
    np.testing.assert_allclose(got["x"][0], tx, rtol=1e-15)  # inf (0.5 * 0^{-1/2}) where torch has it
    np.testing.assert_allclose(got["p"][0], tp, rtol=1e-15)
    assert not np.isnan(got["x"]).any() and np.isfinite(got["p"]).all()


def test_sum_over_a_broadcast_axis_counts_it() -> None:
    """sum_i of a value spread along i is n times the value (a flattened broadcast kept no label for i)."""
    from derive.tensor import ARG, Map, Var, broadcast_to, einsum

    n, p = sp.symbols("n p", integer=True, positive=True)
    th = Var("th", (p,), "param")
    s = einsum([(0, 1)], (1,), [broadcast_to(th, (n, p))])
    assert s.shape == (p,) and isinstance(s, Map) and sp.simplify(s.fn - n * ARG[0]) == 0
    assert np.isclose(float(s.fn.subs({n: 4, ARG[0]: 2.5})), 10.0)


@settings(deadline=None)
@given(st.lists(st.sampled_from([0.0, -1.5, 2.0, float("inf"), -float("inf"), float("nan")]), min_size=1,
                max_size=5), st.integers(1, 3))
def test_numpy_diag_embed_has_exact_zeros_off_the_diagonal_as_torch(values: list[float], rows: int) -> None:
    """diag(v) on NumPy: v on the diagonal and exact zeros elsewhere, even where v holds inf or NaN (a product
    with the identity gives 0 * inf = NaN there), the same array as torch.diag_embed, batched or not."""
    from numeric import ops_numpy

    v = np.array([values] * rows)
    for x in (v[0], v):
        got = ops_numpy.diag_embed(x)
        want = torch.diag_embed(torch.tensor(x)).numpy()
        assert got.shape == want.shape and got.dtype == x.dtype
        np.testing.assert_array_equal(got, want)
