"""Generated kernels are readable, safe, stable and cached.

Readable: one assignment per equation, named as in the book, under a ``# <LaTeX>`` comment. Safe: the
module is plain assignments and a return, and strings a user gives a model (names, LaTeX, section)
never become code. Stable: losses and gradients at logits of order 1e3 are finite and match PyTorch.
Cached: compiling a model twice gives the same kernel. Dtypes: float32 in, float32 out.
"""

from __future__ import annotations

import ast
import collections
import re
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

import derive
import numeric
from derive import nn

BACKENDS = ["numpy", "torch"]
STRUCTURE_MODELS = ["linear_regression", "ridge_regression", "logistic_regression", "softmax_regression",
                    "shallow_autoencoder", "softmax", "log_softmax", "sigmoid", "relu", "leaky_relu",
                    "rosenbrock", "autodiff_example"]
BOOK_NAMES = {
    "softmax_regression": {"z", "yhat", "C", "delta", "g_W", "g_b"},
    "logistic_regression": {"z", "yhat", "C", "delta", "g_w", "g_b"},
    "shallow_autoencoder": {"z_e", "xtilde", "xhat", "delta_e", "delta_d", "g_W_e", "g_b_e", "g_W_d", "g_b_d"},
    "linear_regression": {"yhat", "C", "g_theta"},
    "autodiff_example": {"a1", "a2", "a3", "a4", "a5", "a6", "a6_bar", "a1_bar", "g_theta"},
    "softmax": {"a", "g_Z"},  # (its C = zeta^T a, summed over the batch, is the loss: one dot product, no C)
}
FORBIDDEN_NAMES = {"eval", "exec", "compile", "__import__", "getattr", "setattr", "globals", "locals", "open",
                   "vars", "__builtins__"}


def _kernel_def(src: str) -> ast.FunctionDef:
    tree = ast.parse(src)
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert [d.name for d in defs] == ["kernel"]
    return defs[0]


def _assert_safe_module(src: str) -> None:
    """Top level: a docstring, imports of numpy/torch/numeric only, and one ``def kernel``; the kernel is
    single-name assignments and one final return; nothing reaches eval, exec or the like."""
    tree = ast.parse(src)
    body = list(tree.body)
    assert isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)  # docstring
    for node in body[1:]:
        if isinstance(node, ast.Import):
            assert all(a.name in ("numpy", "torch", "math") for a in node.names), ast.unparse(node)
        elif isinstance(node, ast.ImportFrom):
            assert node.module == "numeric" and all(a.name in ("ops_numpy", "ops_torch") for a in node.names)
        elif isinstance(node, ast.Assign):  # a named constant (hyperparameter): NAME = number
            assert len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), ast.unparse(node)
            assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, float), ast.unparse(node)
        else:
            assert isinstance(node, ast.FunctionDef) and node.name == "kernel", ast.unparse(node)
    fn = _kernel_def(src)
    for st in fn.body[:-1]:
        if isinstance(st, ast.Delete):  # buffers released after their last use
            assert all(isinstance(t, ast.Name) for t in st.targets), ast.unparse(st)
            continue
        assert isinstance(st, ast.Assign) and len(st.targets) == 1, ast.unparse(st)
        target = st.targets[0]
        names = target.elts if isinstance(target, ast.Tuple) else [target]  # yhat, log_yhat = ...
        assert all(isinstance(t, ast.Name) for t in names), ast.unparse(st)
    assert isinstance(fn.body[-1], ast.Return)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            assert node.id not in FORBIDDEN_NAMES, node.id
        if isinstance(node, ast.Attribute):
            assert not node.attr.startswith("__"), ast.unparse(node)
        assert not isinstance(node, (ast.Lambda, ast.Global, ast.Nonlocal, ast.With, ast.Try)), ast.unparse(node)


def _assigned(src: str) -> list[str]:
    out: list[str] = []
    for st in _kernel_def(src).body:
        if isinstance(st, ast.Assign):
            t = st.targets[0]
            out += [e.id for e in (t.elts if isinstance(t, ast.Tuple) else [t]) if isinstance(e, ast.Name)]
    return out


def _model_arrays(m: derive.Model, seed: int = 0, **sizes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in m.shapes(**sizes).items():
        v = m.tensor(k)
        if v.domain == "simplex":
            out[k] = rng.dirichlet(np.ones(s[-1]), size=s[:-1])
        elif v.domain == "unit":
            out[k] = rng.uniform(size=s)
        else:
            out[k] = rng.normal(size=s)
    return out


# ---------------------------------------------------------------------------------------------------
# Readable and safe
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", STRUCTURE_MODELS)
def test_one_assignment_per_equation_under_its_latex(name: str, backend: str) -> None:
    m = derive.models.get(name)
    src = numeric.source(m, backend)
    compile(src, f"<{name}>", "exec")  # the source compiles
    _assert_safe_module(src)
    lines = src.splitlines()
    temp = re.compile(r"    t\d+ = ")
    for eq in [*m.equations, *derive.backprop(m)]:
        at = [i for i, line in enumerate(lines)
              if re.match(rf"    ({eq.lhs.name}|{eq.lhs.name}, \w+) = ", line)]  # a softmax with its log
        if not at and eq is m.equations[-1] and backend == "torch":
            # a per-sample loss <G, a> summed over the batch: one dot product, under both equations' LaTeX
            k = next(i for i, line in enumerate(lines) if line.startswith("    loss = "))
            assert lines[k].startswith("    loss = ops.inner(") and lines[k - 2] == f"    # {derive.latex(eq)}"
            continue
        assert len(at) == 1, f"{eq.lhs.name} is assigned {len(at)} times"
        i = at[0] - 1
        # subexpressions hoisted for reuse (and releases of those used up) sit between comment and line
        while temp.match(lines[i]) or lines[i].startswith("    del "):
            i -= 1
        assert lines[i] == f"    # {derive.latex(eq)}", (eq.lhs.name, lines[i])
    targets = _assigned(src)
    dups = [t for t, c in collections.Counter(targets).items() if c > 1]
    assert not dups, f"names assigned twice: {dups}"
    assert "loss" in targets


@pytest.mark.parametrize("name", sorted(BOOK_NAMES))
def test_names_are_the_books(name: str) -> None:
    m = derive.models.get(name)
    for backend in BACKENDS:
        targets = set(_assigned(numeric.source(m, backend)))
        assert BOOK_NAMES[name] <= targets, BOOK_NAMES[name] - targets
        ret = _kernel_def(numeric.source(m, backend)).body[-1]
        text = ast.unparse(ret)
        for p in m.grad_names:
            assert re.search(rf"'{p}': g_{p}\b", text), text


def _tiny_model(name: str = "tiny", section: str = "test", ztex: str = "z") -> derive.Model:
    b = derive.Builder(name, "a tanh layer", section)
    b.samples("n", 3)
    N = b.dim("N", 4)
    z = b.input("Z", (N,), ztex, batched=True)
    G = b.input("G", (N,), r"\zeta", batched=True)
    a = b.eq("a", nn.tanh(z), "a")
    b.eq("C", nn.dot(G, a), "C")
    return b.model(reduction="sum", diff_inputs=("Z",))


def test_latex_with_newlines_stays_in_comments() -> None:
    m = _tiny_model(ztex="z\nimport os\nINJECTED = os.getpid()\n")
    for backend in BACKENDS:
        src = numeric.source(m, backend)
        _assert_safe_module(src)
        assert "INJECTED" not in _assigned(src)
    k = numeric.compile(m)
    assert "INJECTED" not in k.raw.__globals__
    out = k(Z=np.full((3, 4), 0.25), G=np.ones((3, 4)))
    np.testing.assert_allclose(out["grad"]["Z"], np.full((3, 4), 1 - np.tanh(0.25) ** 2), rtol=1e-14)


_PAYLOAD = '"""\nimport os\nINJECTED = os.getpid()\n"""'


@pytest.mark.parametrize("where", ["section", "name", "trace"])
def test_model_strings_never_become_code(where: str) -> None:
    m = _tiny_model(section=_PAYLOAD) if where == "section" else _tiny_model(name="tiny" + _PAYLOAD)
    Z, G = np.full((3, 4), 0.25), np.ones((3, 4))
    try:
        if where == "trace":
            ns = numeric.trace(m, "reverse", Z=Z, G=G)
            assert "INJECTED" not in ns
            src = numeric.codegen.generate_values(m, derive.backprop(m))
        else:
            k = numeric.compile(m)
            assert "INJECTED" not in k.raw.__globals__
            src = k.source
    except ValueError:  # refusing such a model with a clear error is a fix too
        return
    _assert_safe_module(src)


# ---------------------------------------------------------------------------------------------------
# Common subexpressions
# ---------------------------------------------------------------------------------------------------


def _repeated_subexpressions(src: str) -> dict[str, set[int]]:
    """Array subexpressions (calls, operators, indexing that involve a name) found in two statements of one
    path through the kernel (a branch that returns, such as the fused LSTM's, is an alternative to the code
    after it, not a recomputation)."""
    fn = _kernel_def(src)
    sizes = {st.targets[0].id for st in fn.body  # dimensions read off shapes: scalar arithmetic on them is free
             if isinstance(st, ast.Assign) and isinstance(st.targets[0], ast.Name) and node_is_shape(st.value)}
    out: dict[str, set[int]] = {}
    for path in _paths(fn.body):
        seen: dict[str, set[int]] = collections.defaultdict(set)
        for i, st in enumerate(path):
            for node in ast.walk(st):
                if isinstance(node, (ast.Call, ast.BinOp, ast.Subscript, ast.UnaryOp)):
                    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} - {"np", "torch", "ops", "math"}
                    if (names and not names <= sizes and not _is_allocation(node) and not node_is_shape(node)
                            and not _is_view(node) and not _is_loop_range(node)):
                        seen[ast.unparse(node)].add(i)
        out.update({k: v for k, v in seen.items() if len(v) > 1})
    return out


def _paths(body: list[ast.stmt]) -> list[list[ast.stmt]]:
    """The statement sequences one call can run: at an ``if`` whose body returns, that body or what follows."""
    for i, st in enumerate(body):
        if isinstance(st, ast.If) and not st.orelse and st.body and isinstance(st.body[-1], ast.Return):
            return [body[:i] + st.body] + [body[:i] + rest for rest in _paths(body[i + 1:])]
    return [body]


def _is_loop_range(node: ast.AST) -> bool:
    """``range(T)``: the steps of a loop (each loop over the time steps has one), not an array computation."""
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"


def _is_allocation(node: ast.AST) -> bool:
    """``np.zeros(...)``, ``ops.full(...)``: a fresh buffer (for each carried state of a recurrence; a constant
    gradient, such as 1 for both x and y in sum(x + y), each its own array), not a computation."""
    return isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in ("zeros", "zeros_like", "full")


def _is_view(node: ast.AST) -> bool:
    """``x[:, None]``, ``x[t]``: a broadcasting view of a name or its entry at a loop's step (an array's row, a
    tape's record), which costs nothing to form again."""
    return (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)
            and all(isinstance(e, (ast.Slice, ast.Name)) or (isinstance(e, ast.Constant) and e.value is None)
                    for e in (node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice])))


def node_is_shape(node: ast.AST) -> bool:
    return ".shape[" in ast.unparse(node)


def test_logistic_hessian_computes_yhat_one_minus_yhat_once() -> None:
    m = derive.models.get("logistic_regression")
    for backend in BACKENDS:
        src = numeric.source(m, backend, hessian=["w"]).replace(" ", "")
        assert src.count("(1-yhat)") == 1 and re.search(r"yhat\*\(1-yhat\)|\(1-yhat\)\.mul_\(yhat\)", src), src


# shared subexpressions of maps (rosenbrock's theta_2 - theta_1^2, elu's 1{z > 0}, silu's sigma(z), the cells'
# gates) are computed once, a product summed as it is made (sigmoid's G * a in C) is no product array, the
# recurrences' loops (both backends) tape what their backward reads again (tanh(c), 1 - g_u), a negation that is a
# function's argument is shared (gan's -u in softplus(-u) and sigma(-u)), and so is a product that is a factor of a
# longer one (NumPy GELU's sqrt(2) z / 2, erf's argument, in its derivative's sqrt(2) z exp(-z^2/2) / (2 sqrt(pi)))


@pytest.mark.parametrize("name", derive.models.names())
def test_no_subexpression_is_computed_twice(name: str) -> None:
    m = derive.models.get(name)
    for backend in BACKENDS:
        assert _repeated_subexpressions(numeric.source(m, backend)) == {}
    assert _repeated_subexpressions(numeric.source(derive.models.get("logistic_regression"), "numpy",
                                                   hessian=["w"])) == {}


@pytest.mark.parametrize("text", ["sum(tanh(x .* y) .* z + x .* y .* exp(z))",
                                  "sum(exp(x .* y .* z) + log(1 + (x .* y) .^ 2))",
                                  "sum(softplus(-x .* y) + sigmoid(-x .* y) .* z)"])
def test_a_shared_product_inside_a_longer_product_is_computed_once(text: str) -> None:
    """A user's expression whose product of arrays is a factor of a longer product (x y in tanh(x y) and in
    x y e^z, and in their adjoints): computed once, on both backends, and the kernels agree with autograd."""
    import verify

    m = derive.parse(text, x="vector(n)", y="vector(n)", z="vector(n)", wrt=["x", "y", "z"])
    for backend in BACKENDS:
        src = numeric.source(m, backend)
        assert _repeated_subexpressions(src) == {}, (backend, src)
        report = verify.check(m, backend=backend, examples=4)
        assert report.examples == 4 and report.checks, report


def _elementwise_sums() -> Any:
    """Drawn elementwise expressions over the vectors x, y, z: products (which share factors), negations, sums
    and the functions whose derivatives repeat their arguments; wrapped in ``sum``."""
    from hypothesis import strategies as st

    leaf = st.sampled_from(["x", "y", "z", "(x .* y)", "(-x)"])

    def extend(v: Any) -> Any:
        return st.one_of(
            st.builds(lambda f, a: f"{f}({a})", st.sampled_from(["tanh", "sigmoid", "softplus", "exp", "sin"]), v),
            st.builds(lambda op, a, b: f"({a} {op} {b})", st.sampled_from([".*", ".*", "+", "-"]), v, v),
            st.builds(lambda k, a: f"({k}*{a})", st.sampled_from(["2", "0.5", "-1"]), v),
        )

    return st.builds(lambda e: f"sum({e})", st.recursive(leaf, extend, max_leaves=5))


def _elementwise_model(text: str) -> derive.Model:
    used = set(re.findall(r"\b[xyz]\b", text))
    return derive.parse(text, **dict.fromkeys(sorted(used), "vector(n)"))


@settings(max_examples=max(4, settings().max_examples // 2))
@given(text=_elementwise_sums())
def test_drawn_elementwise_expressions_agree_with_autograd(text: str) -> None:
    """Hypothesis-drawn expressions with shared products, negations and function arguments (what the factor
    sharing rewrites): both kernels agree with autograd, and every gradient is its own array."""
    import verify

    m = _elementwise_model(text)
    for backend in BACKENDS:
        report = verify.check(m, backend=backend, examples=3, derandomize=True)
        assert report.examples == 3 and report.checks, (text, report)
        _assert_distinct_gradients(m, backend)


def _assert_distinct_gradients(m: derive.Model, backend: str) -> None:
    """Every gradient the kernel returns is its own array, sharing memory with no argument and no other gradient
    (two equal gradients: a copy, not one array twice; a gradient equal to an argument: a copy of it)."""
    a = _model_arrays(m, 0, n=5)
    args: dict[str, Any] = a if backend == "numpy" else {k: torch.tensor(v) for k, v in a.items()}
    grads = numeric.compile(m, backend)(**args)["grad"]

    def memory(x: Any) -> int:
        return int(x.__array_interface__["data"][0] if backend == "numpy" else x.untyped_storage().data_ptr())

    seen = [memory(v) for v in args.values()]
    for k, g in grads.items():
        assert memory(g) not in seen, (m.name, backend, k)
        seen.append(memory(g))


# found by drawing such expressions (the thorough profile), each a pass computed twice before: two equal
# gradients (a copy now), a constant and its array in two chains (2 x in 2 x y and 2 x t), a negation that is
# one gradient and a term of another, a product (x y, softplus's argument) inside a term of a negated sum
# (g_x = -(x y sigma(x y) + softplus(x y)), whose products were counted with the sum's -1)
@pytest.mark.parametrize("text", ["sum(tanh((y - (-x))))", "sum(tanh((2*(x .* y))))",
                                  "sum((tanh((-x)) .* (x + y)))", "sum(tanh(-x) .* (x + y + z))",
                                  "sum(((-x) .* softplus((x .* y))))"])
def test_drawn_expressions_compute_each_subexpression_once(text: str) -> None:
    m = _elementwise_model(text)
    for backend in BACKENDS:
        src = numeric.source(m, backend)
        assert _repeated_subexpressions(src) == {}, (backend, src)
        _assert_distinct_gradients(m, backend)


@pytest.mark.parametrize("name", ["logistic_regression", "rosenbrock", "autodiff_example"])
def test_no_subexpression_is_computed_twice_with_hessians(name: str) -> None:
    m = derive.models.get(name)
    assert _repeated_subexpressions(numeric.source(m, "numpy", hessian=m.hessian_wrt)) == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_hessian_block_equal_to_another_is_its_copy_not_the_same_array(backend: str) -> None:
    """logistic's H_wb and H_bw come out as the same code: computed once, returned as two arrays, equal to
    autograd's Hessian blocks."""
    m = derive.models.get("logistic_regression")
    a = _model_arrays(m, 0, n=7)
    args: dict[str, Any] = a if backend == "numpy" else {k: torch.tensor(v) for k, v in a.items()}
    H = numeric.compile(m, backend, hessian=["w", "b"])(**args)["hessian"]
    assert H[("w", "b")] is not H[("b", "w")]
    X, y = torch.tensor(a["X"]), torch.tensor(a["y"])

    def loss(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(X @ w + b, y)

    (_, hwb), (hbw, _) = torch.autograd.functional.hessian(loss, (torch.tensor(a["w"]), torch.tensor(a["b"])))
    for got, want in ((H[("w", "b")], hwb), (H[("b", "w")], hbw)):
        _assert_close(got, want.reshape(-1), 1e-12, "H_wb / H_bw")


# ---------------------------------------------------------------------------------------------------
# Numerically stable forms
# ---------------------------------------------------------------------------------------------------

UNSTABLE = [r"np\.log\(ops\.softmax", r"torch\.log\(torch\.softmax", r"log\(\s*(np\.|torch\.)?exp\(",
            r"np\.log\(ops\.sigmoid", r"torch\.log\(torch\.sigmoid", r"log\(1 - yhat", r"log\(yhat"]


def _assert_close(got: Any, want: Any, rtol: float, what: str) -> None:
    g = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    w = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    assert g.shape == w.shape, (what, g.shape, w.shape)
    assert np.all(np.isfinite(g)), (what, g)
    scale = max(1.0, float(np.max(np.abs(w)))) if w.size else 1.0
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale, err_msg=what)


def _softmax_reference(a: dict[str, np.ndarray]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    W = torch.tensor(a["W"], requires_grad=True)
    b = torch.tensor(a["b"], requires_grad=True)
    loss = F.cross_entropy(torch.tensor(a["X"]) @ W.T + b, torch.tensor(a["Y"]))  # probability targets
    gW, gb = torch.autograd.grad(loss, [W, b])
    return loss, {"W": gW, "b": gb}


def _logistic_reference(a: dict[str, np.ndarray]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    w = torch.tensor(a["w"], requires_grad=True)
    b = torch.tensor(a["b"], requires_grad=True)
    loss = F.binary_cross_entropy_with_logits(torch.tensor(a["X"]) @ w + b, torch.tensor(a["y"]))
    gw, gb = torch.autograd.grad(loss, [w, b])
    return loss, {"w": gw, "b": gb}


REFS = {"softmax_regression": _softmax_reference, "logistic_regression": _logistic_reference}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(REFS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_large_logits_are_stable(name: str, backend: str, seed: int) -> None:
    m = derive.models.get(name)
    a = _model_arrays(m, seed, n=7)
    a["X"] = a["X"] * 1e3
    if name == "logistic_regression":
        a["y"] = np.round(a["y"])  # hard labels: the wrong side costs a loss of order 1e3
    loss, grads = REFS[name](a)
    assert float(loss.detach()) > 10.0  # logits of order 1e3 really are in play
    args: dict[str, Any] = a if backend == "numpy" else {k: torch.tensor(v) for k, v in a.items()}
    out = numeric.compile(m, backend)(**args)
    _assert_close(out["loss"], loss.detach(), 1e-10, "loss")
    for k, want in grads.items():
        _assert_close(out["grad"][k], want, 1e-10, f"gradient {k}")


def test_literal_formula_would_overflow() -> None:
    """The stable rewrite matters: the book's formula evaluated literally is not finite at these logits."""
    m = derive.models.get("softmax_regression")
    a = _model_arrays(m, 0, n=7)
    z = (a["X"] * 1e3) @ a["W"].T + a["b"]
    with np.errstate(all="ignore"):
        naive = -np.mean(np.sum(a["Y"] * np.log(np.exp(z) / np.exp(z).sum(1, keepdims=True)), 1))
    assert not np.isfinite(naive)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["softmax_regression", "logistic_regression", "log_softmax",
                                  "shallow_autoencoder", "newton_logistic", "softplus"])
def test_source_has_no_unstable_patterns(name: str, backend: str) -> None:
    m = derive.models.get(name)
    src = numeric.source(m, backend, hessian=m.hessian_wrt)
    code = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith("#"))
    for pat in UNSTABLE:
        assert not re.search(pat, code), (pat, code)


# ---------------------------------------------------------------------------------------------------
# The kernel cache
# ---------------------------------------------------------------------------------------------------


def test_compile_is_cached() -> None:
    m = derive.models.get("softmax_regression")
    k1 = numeric.compile(m)
    assert numeric.compile(m) is k1
    assert numeric.compile(m, "numpy") is k1
    assert numeric.compile(m, "torch") is not k1
    assert numeric.compile(m, "torch") is numeric.compile(m, "torch")
    assert numeric.compile(m, hessian=["W"]) is not k1
    assert numeric.source(m) is numeric.source(m)
    other = derive.models.get("logistic_regression")
    assert numeric.compile(other) is not k1


def test_clear_cache_recompiles() -> None:
    m = derive.models.get("linear_regression")
    k1 = numeric.compile(m)
    numeric.clear_cache()
    k2 = numeric.compile(m)
    assert k2 is not k1 and k2.source == k1.source
    assert numeric.compile(m) is k2


# ---------------------------------------------------------------------------------------------------
# float32
# ---------------------------------------------------------------------------------------------------


def _float32_pair(m: derive.Model, backend: str, hs: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    a64: dict[str, Any] = _model_arrays(m, 4)
    a32: dict[str, Any] = {k: v.astype(np.float32) for k, v in a64.items()}
    if backend == "torch":
        a64 = {k: torch.tensor(v) for k, v in a64.items()}
        a32 = {k: torch.tensor(v) for k, v in a32.items()}
    f = numeric.compile(m, backend, hessian=hs)
    return f(**a64), f(**a32)


def _check_float32(what: str, g32: Any, g64: Any, backend: str) -> None:
    want_type = torch.Tensor if backend == "torch" else (np.ndarray, np.floating)
    assert isinstance(g32, want_type), (what, type(g32))
    assert str(g32.dtype).endswith("float32"), (what, g32.dtype)
    assert str(g64.dtype).endswith("float64"), (what, g64.dtype)
    g32n = g32.numpy() if isinstance(g32, torch.Tensor) else np.asarray(g32)
    g64n = g64.numpy() if isinstance(g64, torch.Tensor) else np.asarray(g64)
    np.testing.assert_allclose(g32n.astype(np.float64), g64n, rtol=1e-4,
                               atol=1e-4 * max(1.0, float(np.max(np.abs(g64n)))), err_msg=what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["softmax_regression", "logistic_regression", "linear_regression",
                                  "shallow_autoencoder", "sigmoid", "log_softmax", "rosenbrock",
                                  "autodiff_example"])
def test_float32_in_float32_out(name: str, backend: str) -> None:
    m = derive.models.get(name)
    o64, o32 = _float32_pair(m, backend, [])
    assert o32["loss"] == pytest.approx(o64["loss"], rel=1e-4, abs=1e-4)
    for k in m.grad_names:
        _check_float32(f"gradient {k}", o32["grad"][k], o64["grad"][k], backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["logistic_regression", "linear_regression", "rosenbrock", "autodiff_example"])
def test_float32_hessian(name: str, backend: str) -> None:
    m = derive.models.get(name)
    hs = list(m.hessian_wrt)
    o64, o32 = _float32_pair(m, backend, hs)
    for a in hs:
        for b in hs:
            key: Any = a if a == b else (a, b)
            _check_float32(f"Hessian {key}", o32["hessian"][key], o64["hessian"][key], backend)


def test_fused_torch_kernel_matches() -> None:
    """fuse=True runs the generated module through torch.compile: same numbers (float64, 1e-12)."""
    m = derive.models.get("layer_norm")
    arrays = {k: torch.tensor(v) for k, v in _model_arrays(m, n=5, p=7).items()}
    plain = numeric.compile(m, "torch")(**arrays)
    fused = numeric.compile(m, "torch", fuse=True)(**arrays)
    assert fused["loss"] == pytest.approx(plain["loss"], rel=1e-12)
    for k in m.grad_names:
        np.testing.assert_allclose(fused["grad"][k].numpy(), plain["grad"][k].numpy(), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="backend='torch'"):
        numeric.compile(m, "numpy", fuse=True)


def test_fused_kernel_compiles_once_for_every_batch_size() -> None:
    """fuse=True compiles the sample axis as a symbol: a second and a third batch size reuse the compiled graph
    (no recompilation), the feature sizes stay static, and every call gives the unfused kernel's numbers."""
    from torch._dynamo.utils import counters

    m = derive.models.get("softmax_regression")
    k = numeric.compile(m, "torch", fuse=True)
    plain = numeric.compile(m, "torch")
    graphs = []
    for n in (6, 11, 17):
        arrays = {k2: torch.tensor(v) for k2, v in _model_arrays(m, n=n, p=5, K=3).items()}
        got, want = k(**arrays), plain(**arrays)
        graphs.append(counters["stats"]["unique_graphs"])
        assert not any(hasattr(a, "_dynamo_weak_dynamic_indices") for a in arrays.values())  # (the caller's: unmarked)
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-12)
        for g in m.grad_names:
            np.testing.assert_allclose(got["grad"][g].numpy(), want["grad"][g].numpy(), rtol=1e-12, atol=1e-14)
    assert graphs[1] == graphs[0] and graphs[2] == graphs[0], graphs


def test_fused_program_of_several_scans_matches_the_unfused_kernel() -> None:
    """fuse=True on a program of two scans (a bidirectional RNN, one reverse): the same numbers (float64)."""
    from numeric.fuse_steps import compile_steps

    model = derive.models.get("birnn")
    assert compile_steps(numeric.source(model, "torch")).count("torch.compile(_step") >= 4
    g = torch.Generator().manual_seed(1)
    sizes = {str(d): 3 for d in model.dims.values()}
    arrays = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in model.shapes(**sizes).items()}
    for k in arrays:
        if model.tensor(k).domain == "simplex":
            arrays[k] = torch.softmax(arrays[k], -1)
    plain = numeric.compile(model, "torch")(**arrays)
    fused = numeric.compile(model, "torch", fuse=True)(**arrays)
    assert fused["loss"] == pytest.approx(plain["loss"], rel=1e-12)
    for k in model.grad_names:
        np.testing.assert_allclose(fused["grad"][k].numpy(), plain["grad"][k].numpy(), rtol=1e-12, atol=1e-14)


def test_fused_recurrence_compiles_its_steps_and_keeps_the_loops() -> None:
    """fuse=True on a recurrence: the tensor statements of each loop body become compiled step functions, the
    loops over t stay in Python (nothing unrolled), and the numbers are the unfused kernel's (float64)."""
    from numeric.fuse_steps import compile_steps

    model = derive.models.get("gru")
    src = compile_steps(numeric.source(model, "torch"))
    assert src.count("torch.compile(_step") == 2 and src.count("for t in range(") == 2
    assert "_step1(" in src.split("def kernel")[1] and "tape.append(" in src.split("def kernel")[1]
    sizes = {"T": 3, "n": 2, "p": 3, "m": 4, "q": 2}
    g = torch.Generator().manual_seed(0)
    arrays = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in model.shapes(**sizes).items()}
    arrays["Y"] = torch.softmax(arrays["Y"], -1)  # probability rows (domain simplex)
    m = model
    plain = numeric.compile(m, "torch")(**arrays)
    fused = numeric.compile(m, "torch", fuse=True)(**arrays)
    longer = {k: (torch.cat([v, v]) if k in ("X", "Y") else v) for k, v in arrays.items()}
    again = numeric.compile(m, "torch", fuse=True)(**longer)  # another T: the same compiled steps
    assert fused["loss"] == pytest.approx(plain["loss"], rel=1e-12)
    assert again["loss"] == pytest.approx(numeric.compile(m, "torch")(**longer)["loss"], rel=1e-12)
    for k in m.grad_names:
        np.testing.assert_allclose(fused["grad"][k].numpy(), plain["grad"][k].numpy(), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------------
# Normalisations as PyTorch's native kernels, only where the equations are the ones they compute
# ---------------------------------------------------------------------------------------------------


def _norm_variant(kind: str) -> derive.Model:
    """A layer norm written as the zoo's (``exact``) or with one change the native kernel does not make."""
    from derive.nn import mean, sqrt

    b = derive.Builder(f"ln_{kind}", "layer norm variant", "test")
    b.samples("n", 4, 2, 6)
    p = b.dim("p", 4, 2, 6)
    ep = b.const("epsilon", 1e-5)
    gamma = b.param("gamma", (p,), r"\gamma")
    beta = b.param("beta", (p,), r"\beta")
    z = b.input("Z", (p,), "z", batched=True, domain="moderate")
    G = b.input("G", (p,), "G", batched=True)
    mu = b.eq("mu", mean(z, -1), r"\mu")
    zc = b.eq("zc", z - mu, "z_c")
    var = mean(zc**2, -1) * p / (p - 1) if kind == "unbiased" else mean(zc**2, -1)
    sd = b.eq("sigma", sqrt(var + ep) if kind != "no_eps" else sqrt(var + ep) + ep, r"\sigma")
    zbar = b.eq("zbar", zc / sd, r"\hat z")
    out = b.eq("ln", gamma * zbar + beta, r"\tilde z")
    b.eq("C", nn.dot(G, out), "C")
    return b.model(reduction="sum", diff_inputs=("Z",))


@pytest.mark.parametrize("name", ["layer_norm", "batch_norm", "transformer_block"])
def test_normalisations_run_natively(name: str) -> None:
    src = numeric.source(derive.models.get(name), "torch")
    kind = "batch" if name == "batch_norm" else "layer"
    assert f"torch.native_{kind}_norm(" in src and f"native_{kind}_norm_backward(" in src, src
    # the centred input and the adjoint of the normalised one are not computed: the native kernels do without
    assert not re.search(r"^ +(zc\w*|zbar\w*_bar) = ", src, re.M), src


@pytest.mark.parametrize("name, merged", [("conv2d", "g_X, g_W, g_b = ops.conv2d_grads("),
                                          ("cnn", ", None, None, (C_1, C_in, 3, 3), True, ")])
def test_a_convolutions_gradients_are_one_backward_call(name: str, merged: str) -> None:
    """The bias is the convolution's own, and the input, weight and bias gradients of one convolution come from
    one aten.convolution_backward (autograd's call), not two nn.grad calls and a sum; verify.check agrees."""
    import verify

    m = derive.models.get(name)
    src = numeric.source(m, "torch")
    assert merged in src and "torch.nn.grad." not in src and "None], torch.nn.functional.conv2d(" not in src, src
    assert re.search(r"functional\.conv2d\(X, W1?, b1?, ", src), src
    report = verify.check(m, backend="torch", examples=4)
    assert report.examples == 4 and report.checks, report


@pytest.mark.parametrize("name", ["layer_norm", "batch_norm", "attention", "conv2d", "gelu"])
def test_a_loss_that_is_an_inner_product_is_one_dot_product(name: str) -> None:
    """C = <G, y> per sample, summed over the batch (or the whole batch's, for batch norm): the torch loss is
    one dot product, and C no array of its own; the NumPy kernel keeps its einsum (its float32 dot is less
    exact)."""
    m = derive.models.get(name)
    src = numeric.source(m, "torch")
    assert re.search(r"^    loss = ops\.inner\(G, \w+(, True)?\)$", src, re.M) and not re.search(r"^    C = ", src, re.M), src
    assert "ops.inner(" not in numeric.source(m, "numpy")


def test_a_loss_overwrites_only_buffers_the_kernel_made() -> None:
    """ops.inner(a, b, True) writes the product over b: only where b is the kernel's own (a native norm's output, a
    layer's activation) and read no more; an input, or a value read later, is never written over."""
    for name, scratch in (("layer_norm", "ln"), ("batch_norm", "ztilde"), ("gelu", "a"), ("attention", "U"),
                          ("conv2d", "z"), ("linear", "z")):
        assert f"loss = ops.inner(G, {scratch}, True)" in numeric.source(derive.models.get(name), "torch")
    for name in ("softmax", "dropout"):  # a read again by the backward; a product of an input (maybe the input)
        src = numeric.source(derive.models.get(name), "torch")
        assert "ops.inner(" in src and ", True)" not in src.split("loss = ")[1].splitlines()[0], src


# (that no kernel changes its arguments: tests/test_buffer_reuse.py, every zoo entry in float64 and float32)


def _own_inner_model(on_input: bool) -> derive.Model:
    """A user's layer whose loss is <G, relu(W x)> (a buffer the kernel makes), or ``on_input``: <G, x>, the
    input itself (never written over)."""
    b = derive.Builder("own_inner", "a loss that is an inner product", "test")
    b.samples("n", 5, 1, 7)
    d = b.dim("d", 4, 1, 6)
    W = b.param("W", (d, d))
    x = b.input("X", (d,), "x", batched=True)
    g = b.input("G", (d,), "g", batched=True)
    if on_input:
        b.eq("C", nn.dot(g, x), "C")
        return b.model()
    a = b.eq("a", nn.relu(W @ x), "a")
    b.eq("C", nn.dot(g, a), "C")
    return b.model()


@pytest.mark.parametrize("on_input", [False, True])
def test_a_users_inner_product_loss_passes_verify_check_in_float32(on_input: bool) -> None:
    """The scratch path of ops.inner (float32 only) through verify.check: the compiled kernel, called in float32,
    as the implementation; its arguments are never written over."""
    import verify

    m = _own_inner_model(on_input)
    src = numeric.source(m, "torch")
    assert ("loss = ops.inner(G, a, True)" if not on_input else "loss = ops.inner(G, X)") in src, src
    k = numeric.compile(m, "torch")
    seen: list[bool] = []

    def in_float32(**arrays: torch.Tensor) -> dict[str, Any]:
        a32 = {name: v.float() for name, v in arrays.items()}
        before = {name: v.clone() for name, v in a32.items()}
        out = k(**a32)
        seen.append(all(torch.equal(a32[n], before[n]) for n in a32))
        return out

    report = verify.check(m, implementation=in_float32, backend="torch", examples=6)
    assert report.examples == 6 and seen and all(seen), report


def test_inner_writes_over_a_scratch_buffer_only_where_it_may() -> None:
    from numeric.ops_torch import inner

    g = torch.Generator().manual_seed(1)
    a = torch.randn(64, 33, generator=g)
    b = torch.randn(64, 33, generator=g)
    want = (a * b).sum()
    kept = b.clone()
    assert torch.equal(inner(a, b), want) and torch.equal(b, kept)  # no scratch: b is left alone
    view = kept.clone()[:, :]  # a view: never written over
    assert torch.equal(inner(a, view, True), want) and torch.equal(view, kept)
    grad = kept.clone().requires_grad_(True)
    assert torch.equal(inner(a, grad, True).detach(), want) and torch.equal(grad.detach(), kept)
    assert torch.equal(inner(a, b, True), want)  # bit for bit the product's sum, written over b
    assert torch.equal(b, a * kept)


def test_inner_equals_the_summed_product() -> None:
    from numeric.ops_torch import inner

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        a = torch.randn(64, 33, generator=g, dtype=dtype)
        b = torch.randn(64, 33, generator=g, dtype=dtype)
        for x, y in ((a, b), (a.mT, b.mT), (a, b[:1]), (a[:, :1], b)):  # contiguous, transposed, broadcast
            want = (x.double() * y.double()).sum()
            tol = 1e-5 if dtype == torch.float32 else 1e-13
            assert inner(x, y).dtype == dtype and abs(float(inner(x, y)) - float(want)) <= tol * float(
                (x.double() * y.double()).abs().sum())
    nan = torch.tensor([1.0, float("nan")])
    assert torch.isnan(inner(nan, torch.ones(2))) and inner(torch.tensor([float("inf")]), torch.ones(1)) == float("inf")
    # float32 over 10^6 terms that cancel to order 1 (silu's layer loss): as exact as torch's own sum (a BLAS dot
    # is off by ~5e-4 here, which the layers benchmark caught as a mismatch with eager)
    G = torch.randn(4096, 256, generator=g)
    Y = F.silu(torch.randn(4096, 256, generator=g))
    exact = float((G.double() * Y.double()).sum())
    assert abs(float(inner(G, Y)) - exact) <= 2e-4


@pytest.mark.parametrize("name", ["softmax", "attention", "multihead_attention", "transformer_block"])
def test_a_softmax_adjoint_is_atens_softmax_backward(name: str) -> None:
    src = numeric.source(derive.models.get(name), "torch")
    assert "ops.softmax_backward(" in src and not re.search(r"\.sum\(dim=\d+\)\)\[[:, ]*None\]\)\)\.mul_\(", src), src


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [0, 1, 2])
def test_softmax_backward_equals_autograd(dim: int, dtype: torch.dtype) -> None:
    """ops_torch.softmax_backward against autograd through torch.softmax (wide logits: saturated rows), and its
    printed form where the adjoint only broadcasts against the softmax (ATen's kernel needs one shape)."""
    from numeric.ops_torch import softmax_backward

    g = torch.Generator().manual_seed(dim)
    x = (torch.randn(3, 5, 7, generator=g, dtype=torch.float64) * 30).to(dtype).requires_grad_(True)
    u = torch.randn(3, 5, 7, generator=g, dtype=torch.float64).to(dtype)
    a = torch.softmax(x, dim)
    (want,) = torch.autograd.grad(a, [x], u, retain_graph=True)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-14}
    torch.testing.assert_close(softmax_backward(u, a.detach(), dim), want, **tol)
    small = u[:1]  # (1, 5, 7): broadcast along axis 0
    (want_b,) = torch.autograd.grad(a, [x], small.expand_as(a))
    torch.testing.assert_close(softmax_backward(small, a.detach(), dim), want_b, **tol)


def _conv_grads_reference(G: torch.Tensor, X: torch.Tensor, W: torch.Tensor, **conv: Any) -> list[torch.Tensor]:
    X, W = X.clone().requires_grad_(True), W.clone().requires_grad_(True)
    b = torch.zeros(W.shape[0], dtype=W.dtype, requires_grad=True)
    out = F.conv2d(X, W, b, **conv)
    return list(torch.autograd.grad(out, [X, W, b], G))


@pytest.mark.parametrize("seed", range(6))
def test_conv2d_grads_equal_autograds(seed: int) -> None:
    """ops_torch.conv2d_grads against autograd's gradients of F.conv2d over strides, paddings and dilations,
    with and without the input and bias gradients, and where the shapes it is given are not the arrays' own
    (an input of 7x7 and one of 8x8 make the same 4x4 output at stride 2): the separate calls then run."""
    from numeric.ops_torch import conv2d_grads

    g = torch.Generator().manual_seed(seed)
    stride, padding, dilation = (1 + seed % 2, (seed // 2) % 2, 1 + (seed // 4))
    n, c_in, c_out, h, w, k = 2, 3, 4, 7 + seed % 3, 6 + seed % 2, 3
    X = torch.randn(n, c_in, h, w, generator=g, dtype=torch.float64)
    W = torch.randn(c_out, c_in, k, k, generator=g, dtype=torch.float64)
    conv = {"stride": stride, "padding": padding, "dilation": dilation}
    G = torch.randn(F.conv2d(X, W, **conv).shape, generator=g, dtype=torch.float64)
    gx, gw, gb = _conv_grads_reference(G, X, W, **conv)
    for got, want in ((conv2d_grads(G, X, W, tuple(X.shape), tuple(W.shape), True, **conv), (gx, gw, gb)),
                      (conv2d_grads(G, X, W, tuple(X.shape), tuple(W.shape), **conv), (gx, gw)),
                      (conv2d_grads(G, X, None, None, tuple(W.shape), True, **conv), (gw, gb)),
                      (conv2d_grads(G, X, None, None, tuple(W.shape), **conv), (gw,))):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # the shapes disagree with the arrays: each gradient from its own call, of the shape asked for
    X7 = torch.randn(n, c_in, 7, 7, generator=g, dtype=torch.float64)
    G4 = torch.randn(n, c_out, 4, 4, generator=g, dtype=torch.float64)
    got = conv2d_grads(G4, X7, W, (n, c_in, 8, 8), tuple(W.shape), True, stride=2, padding=1, dilation=1)
    X8 = torch.zeros(n, c_in, 8, 8, dtype=torch.float64)
    want_x8 = _conv_grads_reference(G4, X8, W, stride=2, padding=1)[0]
    want_w7, want_b = _conv_grads_reference(G4, X7, W, stride=2, padding=1)[1:]
    for a, b in zip(got, (want_x8, want_w7, want_b)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["exact", "unbiased", "no_eps"])
def test_native_norm_only_for_the_same_equations(kind: str) -> None:
    m = _norm_variant(kind)
    src = numeric.source(m, "torch")
    assert ("native_layer_norm" in src) == (kind == "exact"), src
    # either way the kernel is the derivative of its equations (autograd of the same formula in float64)
    g = torch.Generator().manual_seed(0)
    a = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in m.shapes(n=5, p=4).items()
         if k in ("gamma", "beta", "Z", "G")}
    out = numeric.compile(m, "torch")(**a)
    t = {k: v.clone().requires_grad_(True) for k, v in a.items()}
    zc = t["Z"] - t["Z"].mean(-1, keepdim=True)
    var = (zc**2).mean(-1, keepdim=True) * (4 / 3 if kind == "unbiased" else 1)
    sd = (var + 1e-5).sqrt() + (1e-5 if kind == "no_eps" else 0)
    loss = (t["G"] * (t["gamma"] * zc / sd + t["beta"])).sum()
    grads = torch.autograd.grad(loss, [t["gamma"], t["beta"], t["Z"]])
    _assert_close(out["loss"], loss, 1e-10, "loss")
    for k, gr in zip(["gamma", "beta", "Z"], grads):
        _assert_close(out["grad"][k], gr, 1e-10, k)
