"""Bad input gets one clear line that names the problem and the fix, from the API and from the CLI.

API errors are typed (``derive.ModelError``, ``derive.ShapeError``, ``derive.UnsupportedError``,
``numeric.InputError``, plain ``ValueError``); the CLI turns every one of them into exit status 2 and a
single ``dlmath <cmd>: error: ...`` line on stderr.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import sympy as sp
import torch

import derive
import numeric
import verify
from derive import nn
from derive.tensor import ARG, apply, einsum, map_, matmul
from verify.cli import main

SIZES = {"n": 5, "p": 3, "K": 4}


def _one_line(msg: str) -> str:
    assert msg.strip(), "empty error message"
    assert "\n" not in msg.strip(), f"error message spans several lines: {msg!r}"
    return msg.strip()


def _cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI, expect exit status 2 and one error line; return that line."""
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 2, f"dlmath {' '.join(argv)} returned {rc}; stderr: {cap.err!r}"
    line = _one_line(cap.err)
    prefix = f"dlmath {argv[0]}: error: "
    assert line.startswith(prefix), line
    assert "Traceback" not in cap.err
    return line[len(prefix):]


@pytest.fixture(scope="module")
def softmax_arrays() -> dict[str, np.ndarray]:
    m = derive.models.get("softmax_regression")
    rng = np.random.default_rng(0)
    arrays = {k: rng.normal(size=s) for k, s in m.shapes(**SIZES).items()}
    # targets are probability vectors (domain 'simplex', checked by the kernels)
    arrays["Y"] = np.exp(arrays["Y"]) / np.exp(arrays["Y"]).sum(-1, keepdims=True)
    return arrays


# ---------------------------------------------------------------------------------------------------
# Models and options
# ---------------------------------------------------------------------------------------------------


def test_unknown_model_lists_known_models() -> None:
    with pytest.raises(derive.ModelError) as ei:
        derive.models.get("no_such_model")
    msg = _one_line(str(ei.value))
    assert "'no_such_model'" in msg
    for name in derive.models.names():
        assert name in msg, f"known model {name} not listed in: {msg}"
    assert "Did you mean" not in msg  # nothing is close


@pytest.mark.parametrize("typo, right", [("softmax_regresion", "softmax_regression"),
                                         ("rosenbrok", "rosenbrock"), ("leaky_rellu", "leaky_relu")])
def test_unknown_model_typo_suggests_the_right_one(typo: str, right: str) -> None:
    with pytest.raises(derive.ModelError) as ei:
        derive.models.get(typo)
    msg = _one_line(str(ei.value))
    hint = re.search(r"Did you mean ([^?]*)\?", msg)
    assert hint is not None, msg
    assert hint.group(1).split(", ")[0] == right, msg


def test_unknown_option_lists_the_entry_options() -> None:
    with pytest.raises(derive.ModelError) as ei:
        derive.models.get("leaky_relu", slop=0.1)
    msg = _one_line(str(ei.value))
    assert "slop" in msg and "slope=0.01" in msg, msg
    with pytest.raises(derive.ModelError) as ei:
        derive.models.get("rosenbrock", layers=3)  # an entry with no options
    msg = _one_line(str(ei.value))
    assert "layers" in msg and "(none)" in msg, msg


def test_shapes_unknown_dimension_names_the_dimensions() -> None:
    m = derive.models.get("softmax_regression")
    with pytest.raises(derive.ModelError) as ei:
        m.shapes(q=3)
    msg = _one_line(str(ei.value))
    assert "q" in msg and all(d in msg for d in ("n", "p", "K")), msg


def test_shapes_missing_dimension_says_which_to_pass() -> None:
    b = derive.Builder("no_default", "a model with a dimension without a default", "test")
    b.samples("n", 3)
    p = b.dim("p", 2)
    x = b.input("X", (p,), "x", batched=True)
    b.eq("C", nn.norm2(x), "C")
    m = b.model()
    del m.defaults["p"]  # a dimension whose size nobody gave
    with pytest.raises(derive.ModelError) as ei:
        m.shapes(n=3)
    msg = _one_line(str(ei.value))
    assert "'p'" in msg and "p=" in msg, msg
    assert m.shapes(n=3, p=2) == {"X": (3, 2)}


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_shapes_bad_size(bad: Any) -> None:
    m = derive.models.get("softmax_regression")
    with pytest.raises(derive.ModelError, match=r"dimension p .*positive integer"):
        m.shapes(p=bad)


# ---------------------------------------------------------------------------------------------------
# Arrays given to compiled kernels
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_kernel_wrong_shape_names_the_conflicting_dimension(backend: str,
                                                            softmax_arrays: dict[str, np.ndarray]) -> None:
    m = derive.models.get("softmax_regression")
    f = numeric.compile(m, backend)
    arrays = {**softmax_arrays, "W": np.zeros((4, 2))}  # p is 3 in X, 2 in W
    if backend == "torch":
        arrays = {k: torch.tensor(v) for k, v in arrays.items()}
    with pytest.raises(numeric.InputError) as ei:
        f(**arrays)
    msg = _one_line(str(ei.value))
    assert "dimension p" in msg and "W" in msg and "X" in msg, msg
    assert "2" in msg and "3" in msg and "(n, p)" in msg, msg


def test_kernel_wrong_rank_names_both_shapes(softmax_arrays: dict[str, np.ndarray]) -> None:
    f = numeric.compile(derive.models.get("softmax_regression"))
    with pytest.raises(numeric.InputError) as ei:
        f(**{**softmax_arrays, "W": np.zeros(4)})
    msg = _one_line(str(ei.value))
    assert "W" in msg and "(K, p)" in msg and "(4,)" in msg, msg


def test_kernel_batch_size_conflict(softmax_arrays: dict[str, np.ndarray]) -> None:
    f = numeric.compile(derive.models.get("softmax_regression"))
    with pytest.raises(numeric.InputError) as ei:
        f(**{**softmax_arrays, "Y": np.zeros((SIZES["n"] + 1, SIZES["K"]))})
    msg = _one_line(str(ei.value))
    assert "dimension n" in msg and f"{SIZES['n']}" in msg and f"{SIZES['n'] + 1}" in msg, msg


def test_kernel_fixed_dimension_mismatch() -> None:
    f = numeric.compile(derive.models.get("rosenbrock"))
    with pytest.raises(numeric.InputError) as ei:
        f(theta=np.zeros(3))
    msg = _one_line(str(ei.value))
    assert "theta" in msg and "(2,)" in msg and "(3,)" in msg, msg


def test_kernel_missing_and_unexpected_names(softmax_arrays: dict[str, np.ndarray]) -> None:
    f = numeric.compile(derive.models.get("softmax_regression"))
    without_b = {k: v for k, v in softmax_arrays.items() if k != "b"}
    with pytest.raises(numeric.InputError) as ei:
        f(**without_b)
    msg = _one_line(str(ei.value))
    assert "missing b" in msg and "W, b, X, Y" in msg, msg
    with pytest.raises(numeric.InputError) as ei:
        f(**softmax_arrays, bias=np.zeros(4))
    msg = _one_line(str(ei.value))
    assert "unexpected bias" in msg, msg


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_kernel_mixed_float_dtypes(backend: str, softmax_arrays: dict[str, np.ndarray]) -> None:
    f = numeric.compile(derive.models.get("softmax_regression"), backend)
    arrays: dict[str, Any] = {**softmax_arrays, "W": softmax_arrays["W"].astype(np.float32)}
    if backend == "torch":
        arrays = {k: torch.tensor(v) for k, v in arrays.items()}
    with pytest.raises(numeric.InputError) as ei:
        f(**arrays)
    msg = _one_line(str(ei.value))
    assert "W float32" in msg and "X float64" in msg and "one float dtype" in msg, msg


def test_kernel_non_numeric_dtype(softmax_arrays: dict[str, np.ndarray]) -> None:
    f = numeric.compile(derive.models.get("softmax_regression"))
    with pytest.raises(numeric.InputError, match=r"array W has dtype .*float32 or float64"):
        f(**{**softmax_arrays, "W": np.full((4, 3), "a")})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_kernel_non_finite(bad: float, backend: str, softmax_arrays: dict[str, np.ndarray]) -> None:
    f = numeric.compile(derive.models.get("softmax_regression"), backend)
    X = softmax_arrays["X"].copy()
    X[1, 2] = bad
    arrays: dict[str, Any] = {**softmax_arrays, "X": X}
    if backend == "torch":
        arrays = {k: torch.tensor(v) for k, v in arrays.items()}
    with pytest.raises(numeric.InputError) as ei:
        f(**arrays)
    msg = _one_line(str(ei.value))
    assert "array X" in msg and "NaN" in msg and "finite" in msg, msg


def test_valid_arrays_pass_the_checks(softmax_arrays: dict[str, np.ndarray]) -> None:
    out = numeric.compile(derive.models.get("softmax_regression"))(**softmax_arrays)
    assert np.isfinite(out["loss"]) and set(out["grad"]) == {"W", "b"}


# ---------------------------------------------------------------------------------------------------
# Building equations
# ---------------------------------------------------------------------------------------------------


def _layer(fn: Any) -> derive.Model:
    b = derive.Builder("custom_layer", "a layer with a custom elementwise function", "test")
    b.samples("n", 3)
    N = b.dim("N", 4)
    z = b.input("Z", (N,), "z", batched=True)
    G = b.input("G", (N,), r"\zeta", batched=True)
    a = b.eq("a", fn(z), "a")
    b.eq("C", nn.dot(G, a), "C")
    return b.model(reduction="sum", diff_inputs=("Z",))


def test_apply_unsupported_function_names_it() -> None:
    z = derive.Var("z", (sp.Symbol("N"),))
    with pytest.raises(derive.UnsupportedError) as ei:
        apply(lambda x: sp.gamma(x), z)
    msg = _one_line(str(ei.value))
    assert "gamma()" in msg and "supported functions" in msg and "tanh" in msg, msg


def test_apply_supported_function_builds() -> None:
    m = _layer(lambda z: apply(lambda x: sp.tanh(x) * sp.exp(x), z))
    out = numeric.compile(m)(Z=np.full((3, 4), 0.5), G=np.ones((3, 4)))
    want = np.tanh(0.5) * np.exp(0.5) * 12
    assert abs(out["loss"] - want) <= 1e-12 * abs(want)


@pytest.mark.parametrize("fn", [
    pytest.param(sp.asinh, id="asinh"), pytest.param(sp.atan, id="atan"), pytest.param(sp.gamma, id="gamma"),
    pytest.param(sp.Heaviside, id="Heaviside"),
    pytest.param(lambda a: sp.Max(a, 0), id="Max"),
    pytest.param(lambda a: sp.Min(a, 0), id="Min"),
])
def test_map_unsupported_function_is_rejected(fn: Any) -> None:
    name = type(fn(ARG[0])).__name__
    with pytest.raises(derive.UnsupportedError) as ei:
        m = _layer(lambda z: map_(fn(ARG[0]), [z]))
        numeric.compile(m)
    msg = _one_line(str(ei.value))
    assert f"{name}()" in msg and "supported functions" in msg, msg


@pytest.mark.parametrize("name", ["1x", "a-b", "", "x y", "__dunder"])
def test_invalid_tensor_name(name: str) -> None:
    with pytest.raises(ValueError) as ei:
        derive.Var(name, ())
    msg = _one_line(str(ei.value))
    assert repr(name) in msg and "identifier" in msg, msg


def test_matmul_shape_mismatch_names_both_shapes() -> None:
    n, p, q, r = sp.symbols("n p q r", integer=True, positive=True)
    A, B = derive.Var("A", (n, p)), derive.Var("B", (q, r))
    for op in (lambda: matmul(A, B), lambda: A @ B):
        with pytest.raises(derive.ShapeError) as ei:
            op()
        msg = _one_line(str(ei.value))
        assert "(n, p)" in msg and "(q, r)" in msg, msg
    T = derive.Var("T", (n, p, q))
    with pytest.raises(derive.ShapeError, match=r"\(n, p, q\)"):
        matmul(T, B)


def test_einsum_shape_mismatch_names_both_sizes() -> None:
    n, p, q, r = sp.symbols("n p q r", integer=True, positive=True)
    A, B = derive.Var("A", (n, p)), derive.Var("B", (q, r))
    with pytest.raises(derive.ShapeError) as ei:
        einsum([("i", "k"), ("k", "j")], ("i", "j"), [A, B])
    msg = _one_line(str(ei.value))
    assert "'k'" in msg and " p " in msg and " q " in msg and "(q, r)" in msg, msg
    with pytest.raises(derive.ShapeError, match=r"do not fit an operand of shape \(n, p\)"):
        einsum([("i",)], ("i",), [A])


def test_elementwise_shape_mismatch() -> None:
    n, p = sp.symbols("n p", integer=True, positive=True)
    with pytest.raises(derive.ShapeError) as ei:
        derive.Var("a", (n,)) + derive.Var("b", (p,))
    msg = _one_line(str(ei.value))
    assert "(n,)" in msg and "(p,)" in msg, msg


def test_loss_must_be_scalar() -> None:
    b = derive.Builder("vector_loss", "a non-scalar loss", "test")
    p = b.dim("p", 2)
    w = b.param("w", (p,))
    b.eq("C", nn.tanh(w), "C")
    with pytest.raises(derive.ShapeError, match=r"scalar loss, got shape \(p,\)"):
        b.model()


# ---------------------------------------------------------------------------------------------------
# Backends and devices
# ---------------------------------------------------------------------------------------------------


def test_check_unknown_backend() -> None:
    with pytest.raises(ValueError) as ei:
        verify.check(derive.models.get("softmax_regression"), backend="jax", examples=1)
    msg = _one_line(str(ei.value))
    assert "'jax'" in msg and "numpy" in msg and "torch" in msg, msg


def test_compile_unknown_backend() -> None:
    with pytest.raises(ValueError) as ei:
        numeric.compile(derive.models.get("softmax_regression"), backend="jax")
    msg = _one_line(str(ei.value))
    assert "'jax'" in msg and "numpy" in msg and "torch" in msg, msg


def test_compile_not_a_model() -> None:
    with pytest.raises(TypeError, match=r"takes a model .*not str"):
        numeric.compile("softmax_regression")  # type: ignore[arg-type]


def test_compile_cuda_without_gpu() -> None:
    m = derive.models.get("softmax_regression")
    if torch.cuda.is_available():  # with a GPU the same call must work
        assert numeric.compile(m, backend="torch", device="cuda").device == "cuda"
        return
    with pytest.raises(ValueError) as ei:
        numeric.compile(m, backend="torch", device="cuda")
    msg = _one_line(str(ei.value))
    assert "cuda" in msg and "device='cpu'" in msg, msg
    with pytest.raises(ValueError, match="no CUDA device"):
        verify.check(m, device="cuda", examples=1)


def test_device_needs_torch_backend() -> None:
    with pytest.raises(ValueError, match="backend='torch'"):
        numeric.compile(derive.models.get("softmax_regression"), backend="numpy", device="cpu")


# ---------------------------------------------------------------------------------------------------
# The CLI: exit status 2 and one line `dlmath <cmd>: error: ...`
# ---------------------------------------------------------------------------------------------------


def test_cli_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    msg = _cli_error(capsys, ["derive", "softmax_regresion"])
    assert "Did you mean softmax_regression" in msg and "Known models:" in msg, msg


def test_cli_unknown_option(capsys: pytest.CaptureFixture[str]) -> None:
    msg = _cli_error(capsys, ["backprop", "leaky_relu", "-O", "slop=0.1"])
    assert "slop" in msg and "slope=0.01" in msg, msg


def test_cli_malformed_option(capsys: pytest.CaptureFixture[str]) -> None:
    msg = _cli_error(capsys, ["derive", "leaky_relu", "-O", "slope"])
    assert "key=value" in msg, msg


def test_cli_unknown_gradient(capsys: pytest.CaptureFixture[str]) -> None:
    msg = _cli_error(capsys, ["derive", "softmax_regression", "--wrt", "Q"])
    assert "'Q'" in msg and "W, b" in msg, msg


def test_cli_unknown_hessian_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    msg = _cli_error(capsys, ["codegen", "rosenbrock", "--hessian", "q"])
    assert "'q'" in msg and "theta" in msg, msg


def test_cli_trace_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    msg = _cli_error(capsys, ["trace", "autodiff_example", "--at", "theta=a,b"])
    assert "numbers" in msg, msg
    msg = _cli_error(capsys, ["trace", "autodiff_example", "--at", "theta=1,2"])
    assert "theta" in msg and "(3,)" in msg and "(2,)" in msg, msg


@pytest.mark.parametrize("spec, needle", [
    ("no_colon", "module:function"),
    ("mod:", "module:function"),
    ("mod:not-an-identifier", "module:function"),
    ("dlmath_no_such_module_xyz:f", "No module named 'dlmath_no_such_module_xyz'"),
    ("numpy:no_such_function", "has no 'no_such_function'"),
    ("math:pi", "not callable"),
])
def test_cli_verify_bad_impl(capsys: pytest.CaptureFixture[str], spec: str, needle: str) -> None:
    msg = _cli_error(capsys, ["verify", "softmax_regression", "--impl", spec, "--examples", "1"])
    assert "--impl" in msg and repr(spec) in msg and needle in msg, msg


def test_cli_verify_needs_model_or_all(capsys: pytest.CaptureFixture[str]) -> None:
    msg = _cli_error(capsys, ["verify"])
    assert "MODEL" in msg and "--all" in msg, msg
    msg = _cli_error(capsys, ["verify", "softmax_regression", "--all"])
    assert "MODEL" in msg and "--all" in msg, msg


def test_cli_verify_bad_examples(capsys: pytest.CaptureFixture[str]) -> None:
    msg = _cli_error(capsys, ["verify", "softmax_regression", "--examples", "0"])
    assert "at least 1" in msg, msg


def test_cli_verify_cuda_without_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():  # with a GPU the same command must work
        assert main(["verify", "softmax_regression", "--device", "cuda", "--examples", "1"]) == 0
        return
    msg = _cli_error(capsys, ["verify", "softmax_regression", "--device", "cuda", "--examples", "1"])
    assert "cuda" in msg and "device='cpu'" in msg, msg


def test_cli_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["verify", "softmax_regression", "--backend", "jax"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'jax'" in err and "dlmath verify: error:" in err, err
    with pytest.raises(SystemExit) as ei:
        main(["no_such_command"])
    assert ei.value.code == 2


def test_cli_errors_do_not_leak_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["codegen", "no_such_model"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.startswith("dlmath codegen: error: unknown model")



@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_singular_matrix_the_kernel_inverts_is_named(backend: str) -> None:
    """det(x y^T) is singular for every x and y (found by a fuzz of derive.parse): its derived gradient, det(A)
    A^{-T}, inverts it. The kernel says so in one line, not with LinAlgError from inside the generated code."""
    m = derive.parse("det(x*y') + sum(x)", x="vector(n)", y="vector(n)")
    f = numeric.compile(m, backend)
    a = {"x": np.ones(3), "y": np.arange(3.0)}
    with pytest.raises(numeric.InputError) as e:
        f(**(a if backend == "numpy" else {k: torch.tensor(v) for k, v in a.items()}))
    assert "singular matrix" in _one_line(str(e.value))
    assert main(["verify", "det(x*y') + sum(x)", "-V", "x=vector(n)", "-V", "y=vector(n)", "--examples", "2"]) == 2
