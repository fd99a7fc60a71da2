"""The cheap input checks of compiled kernels still check everything, on every call.

``numeric.kernel`` checks names, shapes and dtypes once per signature (the shapes and dtypes of arrays already
of the backend's own type) and checks the declared domains on every call through fast passes (row sums by a
matrix-vector product with ones, sums of squares by a dot product, one-hot rows by two reads), falling back to
the full test to name a problem. These tests assert that nothing gets through: after a good call, a bad one
is still rejected with the same message; values at the edge of each domain are decided as the domain says;
strided, 3-axis and float32 arrays go through the same checks. No timings are asserted here.
"""

from __future__ import annotations

import math
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import derive
import numeric
from numeric import InputError

BACKENDS = ("numpy", "torch")


def _model(name: str, **opts: Any) -> derive.Model:
    return derive.models.get(name, **opts)


def _arrays(name: str, backend: str, dtype: Any = np.float64, **sizes: int) -> dict[str, Any]:
    m = _model(name)
    rng = np.random.default_rng(3)
    out: dict[str, Any] = {}
    for k, shape in m.shapes(**sizes).items():
        v = m.tensor(k)
        x = rng.normal(size=shape)
        if v.domain == "simplex":
            x = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
        elif v.domain == "one_hot":
            x = np.eye(shape[-1])[rng.integers(0, shape[-1], size=shape[:-1])]
        elif v.domain == "labels":
            x = rng.integers(0, 2, size=shape).astype(np.float64)
        elif v.domain == "count":
            x = np.full(shape, 3.0)
        out[k] = x.astype(dtype)
    return _backend(out, backend)


def _backend(a: dict[str, Any], backend: str) -> dict[str, Any]:
    return {k: torch.as_tensor(v) for k, v in a.items()} if backend == "torch" else a


def _call(name: str, backend: str, a: dict[str, Any], **changes: Any) -> Any:
    return numeric.compile(_model(name), backend)(**{**a, **_backend(changes, backend)})


SR = "softmax_regression"
SR_SIZES = {"n": 6, "p": 3, "K": 4}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_call_after_good_ones_is_still_rejected(backend: str) -> None:
    a = _arrays(SR, backend, **SR_SIZES)
    for _ in range(3):
        _call(SR, backend, a)
    with pytest.raises(InputError, match="dimension p"):
        _call(SR, backend, a, W=np.zeros((4, 2)))
    with pytest.raises(InputError, match=r"\(K, p\)"):
        _call(SR, backend, a, W=np.zeros(4))
    with pytest.raises(InputError, match="one float dtype"):
        _call(SR, backend, a, W=np.zeros((4, 3), np.float32))
    with pytest.raises(InputError, match="float16"):
        _call(SR, backend, a, X=np.zeros((6, 3), np.float16))
    with pytest.raises(InputError, match="missing b"):
        numeric.compile(_model(SR), backend)(**{k: v for k, v in a.items() if k != "b"})
    with pytest.raises(InputError, match="unexpected bias"):
        numeric.compile(_model(SR), backend)(**a, bias=a["b"])
    with pytest.raises(InputError, match="dimension n is 0"):
        _call(SR, backend, a, X=np.zeros((0, 3)), Y=np.zeros((0, 4)))
    # and the good call still passes, with another batch size too
    _call(SR, backend, a)
    _call(SR, backend, _arrays(SR, backend, **{**SR_SIZES, "n": 9}))


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_arrays_are_cast_on_every_call(backend: str) -> None:
    a = _arrays(SR, backend, **SR_SIZES)
    x = np.arange(18).reshape(6, 3) % 3
    first = _call(SR, backend, a, X=x)
    again = _call(SR, backend, a, X=x)
    ref = _call(SR, backend, a, X=x.astype(np.float64))
    assert first["loss"] == again["loss"] == ref["loss"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_simplex_rows_are_checked_on_every_call(backend: str, dtype: Any) -> None:
    a = _arrays(SR, backend, dtype, **SR_SIZES)
    _call(SR, backend, a)
    Y = np.asarray(a["Y"], dtype=np.float64).copy()
    Y[4, 1] += 1e-3
    with pytest.raises(InputError, match=r"row 4 sums to 1\.00"):
        _call(SR, backend, a, Y=Y.astype(dtype))
    Y[4, 1] = np.nan
    with pytest.raises(InputError, match=r"Y contains NaN or infinity \(its row 4\)"):
        _call(SR, backend, a, Y=Y.astype(dtype))
    _call(SR, backend, a)


@pytest.mark.parametrize("backend", BACKENDS)
def test_simplex_tolerance_is_the_domain_s(backend: str) -> None:
    """Rows off by a few roundings pass; off by a hundred times the tolerance they do not."""
    a = _arrays(SR, backend, **SR_SIZES)
    tol = 8 * 4 * np.finfo(np.float64).eps
    Y = np.full((6, 4), 0.25)
    Y[2, 0] += tol / 4
    _call(SR, backend, a, Y=Y)
    Y[2, 0] += 100 * tol
    with pytest.raises(InputError, match="row 2 sums to"):
        _call(SR, backend, a, Y=Y)


def test_simplex_strided_and_three_axis_arrays_are_checked() -> None:
    a = _arrays(SR, "torch", **SR_SIZES)
    Yt = torch.as_tensor(np.full((4, 6), 0.25)).T  # a transposed view: not contiguous
    _call(SR, "torch", a, Y=Yt)
    bad = Yt.clone()
    bad[5, 3] = 0.5
    with pytest.raises(InputError, match="row 5 sums to 1.25"):
        _call(SR, "torch", a, Y=bad.T.contiguous().T)
    sizes = {"T": 4, "n": 2, "p": 3, "m": 3, "q": 3}
    for backend in BACKENDS:
        r = _arrays("rnn", backend, **sizes)
        _call("rnn", backend, r)
        Y = np.asarray(r["Y"]).copy()
        Y[3, 1] = [0.5, 0.5, 0.5]
        with pytest.raises(InputError, match=r"row \(3, 1\) sums to 1.5"):
            _call("rnn", backend, r, Y=Y)
        if backend == "torch":  # a strided 3-axis view
            Yv = torch.as_tensor(np.ascontiguousarray(np.swapaxes(Y, 0, 1))).transpose(0, 1)
            with pytest.raises(InputError, match=r"row \(3, 1\) sums to 1.5"):
                _call("rnn", backend, r, Y=Yv)


def test_simplex_float32_at_lower_matmul_precision() -> None:
    a = _arrays(SR, "torch", np.float32, **SR_SIZES)
    Y = np.full((6, 4), 0.25, np.float32)
    Y[1, 2] = 0.2501
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        with pytest.raises(InputError, match="row 1 sums to"):
            _call(SR, "torch", a, Y=Y)
    finally:
        torch.set_float32_matmul_precision(before)


LN = "layer_norm"
LN_SIZES = {"n": 4, "p": 3}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_moderate_limit_is_decided_exactly(backend: str, dtype: Any) -> None:
    """``max|Z| <= sqrt(max float / size)``: just under the limit passes, just over it is named."""
    a = _arrays(LN, backend, dtype, **LN_SIZES)
    _call(LN, backend, a)
    limit = math.sqrt(float(np.finfo(dtype).max) / 12)
    for big, ok in ((0.99 * limit, True), (1.01 * limit, False), (-1.01 * limit, False)):
        Z = np.asarray(a["Z"], dtype=np.float64).copy()
        Z[2, 1] = big
        if ok:
            with np.errstate(all="ignore"):
                numeric.compile(_model(LN), backend, check=True)._prepare({**a, **_backend({"Z": Z.astype(dtype)},
                                                                                             backend)})
        else:
            with pytest.raises(InputError, match="rescale Z"):
                _call(LN, backend, a, Z=Z.astype(dtype))
    for bad in (np.nan, np.inf, -np.inf):
        Z = np.asarray(a["Z"], dtype=np.float64).copy()
        Z[0, 0] = bad
        with pytest.raises(InputError, match="Z contains NaN or infinity"):
            _call(LN, backend, a, Z=Z.astype(dtype))
    _call(LN, backend, a)


@pytest.mark.parametrize("backend", BACKENDS)
def test_moderate_strided_arrays_are_checked(backend: str) -> None:
    a = _arrays(LN, backend, **LN_SIZES)
    Z = np.asfortranarray(np.full((4, 3), 1e200) * [1, 2, 3])
    with pytest.raises(InputError, match="3e\\+200"):
        _call(LN, backend, a, Z=Z if backend == "numpy" else torch.as_tensor(Z.T.copy()).T)


@pytest.mark.parametrize("backend", BACKENDS)
def test_moderate_many_small_squares(backend: str) -> None:
    """A sum of squares that rounds low never lets a value over the limit through: all equal values right at
    the limit's edge."""
    a = _arrays("batch_norm", backend, np.float32, n=64, N=32)
    limit = math.sqrt(float(np.finfo(np.float32).max) / (64 * 32))
    Z = np.full((64, 32), 0.999 * limit, np.float32)
    numeric.compile(_model("batch_norm"), backend)._prepare({**a, **_backend({"Z": Z}, backend)})
    Z[63, 31] = 1.01 * limit
    with pytest.raises(InputError, match="rescale Z"):
        _call("batch_norm", backend, a, Z=Z)


@settings(deadline=None)
@given(name=st.sampled_from(["layer_norm", "batch_norm"]), backend=st.sampled_from(BACKENDS),
       dtype=st.sampled_from([np.float32, np.float64]), factor=st.floats(0.05, 3.0), sign=st.sampled_from([-1, 1]),
       count=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_moderate_check_from_the_norms_results_decides_as_the_direct_check(
        name: str, backend: str, dtype: Any, factor: float, sign: int, count: int, seed: int) -> None:
    """Layer and batch norm kernels check their 'moderate' input from the native norm's mean and 1/sigma (no pass
    over the input): a call is refused exactly when the direct check refuses the input, values around the
    limit included, and with the same message."""
    sizes = {"n": 4, "p": 3} if name == "layer_norm" else {"n": 4, "N": 3}
    k = numeric.compile(_model(name), backend)
    assert k._witnessed == {"Z"}
    with mock.patch.object(numeric.kernel, "_WITNESS_MIN", 0):  # (small inputs are checked directly)
        _witness_decides_as_the_direct_check(name, k, backend, dtype, factor, sign, count, seed, sizes)


def _witness_decides_as_the_direct_check(name: str, k: Any, backend: str, dtype: Any, factor: float, sign: int,
                                         count: int, seed: int, sizes: dict[str, int]) -> None:
    a = _arrays(name, backend, dtype, **sizes)
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(4, 3))
    limit = math.sqrt(float(np.finfo(dtype).max) / Z.size)
    for i in rng.choice(Z.size, count, replace=False):
        Z.flat[i] = sign * factor * limit
    Z = Z.astype(dtype)
    try:
        with np.errstate(all="ignore"):
            numeric.kernel._check_moderate(name, "Z", _backend({"Z": Z}, backend)["Z"])
        direct = None
    except InputError as e:
        direct = str(e)
    if direct is None:
        with np.errstate(all="ignore"):
            k(**{**a, **_backend({"Z": Z}, backend)})
    else:
        with pytest.raises(InputError) as got:
            k(**{**a, **_backend({"Z": Z}, backend)})
        assert str(got.value) == direct


def _ln_reading_z_twice() -> derive.Model:
    """A layer norm of Z whose loss also reads Z itself: Z is not only the norm's, so its check stays a pass."""
    from derive import nn
    from derive.nn import mean, sqrt

    b = derive.Builder("ln_and_z", "layer norm and its input", "test")
    b.samples("n", 4, 2, 6)
    p = b.dim("p", 4, 2, 6)
    ep = b.const("epsilon", 1e-5)
    gamma = b.param("gamma", (p,), r"\gamma")
    z = b.input("Z", (p,), "z", batched=True, domain="moderate")
    G = b.input("G", (p,), "G", batched=True)
    mu = b.eq("mu", mean(z, -1), r"\mu")
    zc = b.eq("zc", z - mu, "z_c")
    sd = b.eq("sigma", sqrt(mean(zc**2, -1) + ep), r"\sigma")
    zbar = b.eq("zbar", zc / sd, r"\hat z")
    out = b.eq("ln", gamma * zbar, r"\tilde z")
    b.eq("C", nn.dot(G, out) + nn.dot(G, z), "C")
    return b.model(reduction="sum")


@pytest.mark.parametrize("backend", BACKENDS)
def test_moderate_input_read_outside_the_norm_keeps_its_pass(backend: str, monkeypatch: Any) -> None:
    calls: list[str] = []
    real = numeric.kernel._check_moderate

    def spy(*args: Any, **kw: Any) -> None:
        calls.append(args[1])
        real(*args, **kw)

    monkeypatch.setattr(numeric.kernel, "_check_moderate", spy)
    monkeypatch.setitem(numeric.kernel._DOMAIN_CHECKS, "moderate", spy)  # (read when a kernel is made)
    m = _ln_reading_z_twice()
    k = numeric.compile(m, backend)
    assert "native_layer_norm" in k.source and k._witnessed == frozenset()
    rng = np.random.default_rng(0)
    a = _backend({n: rng.normal(size=s) for n, s in m.shapes(n=3, p=4).items()}, backend)
    k(**a)
    assert calls == ["Z"]
    calls.clear()
    ln = numeric.compile(_model("layer_norm"), backend)  # the zoo's: read by its norm only, checked from it
    ln(**_arrays("layer_norm", backend, n=4, p=3))
    assert calls == ["Z"]  # ... when large enough to make that cheaper: a small one is checked directly
    calls.clear()
    monkeypatch.setattr(numeric.kernel, "_WITNESS_MIN", 12)
    ln(**_arrays("layer_norm", backend, n=4, p=3))
    assert calls == []
    monkeypatch.setattr(numeric.kernel, "_WITNESS_MIN", 13)
    ln(**_arrays("layer_norm", backend, n=4, p=3))
    assert calls == ["Z"]


DQN = "dqn"


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_hot_rows_are_exactly_one_hot(backend: str) -> None:
    a = _arrays(DQN, backend, n=4)
    _call(DQN, backend, a)
    A = np.asarray(a["A"]).copy()
    A[0] = -0.0 * A[0]
    A[0, 2] = 1.0
    _call(DQN, backend, a, A=A)  # -0.0 is 0
    for row, match in (([0.5, 0.5, 0.0], "row 2"), ([1.0, 1e-20, 0.0], "row 2"), ([1.0, 1.0, -1.0], "row 2"),
                       ([0.0, 0.0, 0.0], "row 2"), ([np.nan, 0.0, 0.0], "row 2"), ([2.0, 0.0, -1.0], "row 2")):
        B = np.asarray(a["A"]).copy()
        B[2] = row
        with pytest.raises(InputError, match=match):
            _call(DQN, backend, a, A=B)
    # rows that each sum to 1 but share their nonzeros unevenly: one row two, another none
    C = np.asarray(a["A"]).copy()
    C[1] = [0.0, 0.0, 0.0]
    C[3] = [0.5, 0.5, 0.0]
    with pytest.raises(InputError, match="row 1"):
        _call(DQN, backend, a, A=C)


MLP_LABELS = {"targets": "labels"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_are_checked_on_every_call(backend: str) -> None:
    m = _model("mlp", **MLP_LABELS)
    k = numeric.compile(m, backend)
    rng = np.random.default_rng(0)
    a = {n: rng.normal(size=s) for n, s in m.shapes(n=5).items()}
    a["y"] = np.array([0.0, 1.0, 2.0, 1.0, 0.0])
    a = _backend(a, backend)
    k(**a)
    for y, match in (([0.0, 1.0, 2.0, 3.0, 0.0], "labels 0, 1, ..., 2"), ([0.0, 1.5, 2.0, 1.0, 0.0], "1.5"),
                     ([0.0, -1.0, 2.0, 1.0, 0.0], "-1"), ([0.0, np.nan, 2.0, 1.0, 0.0], "integer labels")):
        with pytest.raises(InputError, match=match):
            k(**{**a, **_backend({"y": np.array(y)}, backend)})
    k(**a)


@pytest.mark.parametrize("backend", BACKENDS)
def test_spd_checked_for_torch_and_numpy_arrays(backend: str) -> None:
    f = numeric.compile(derive.parse("x'*A*x", x="vector(n)", A="spd(n)"), backend)
    ok = _backend({"x": np.ones(3), "A": 2 * np.eye(3) + 0.1}, backend)
    f(**ok)
    with pytest.raises(InputError, match="not symmetric"):
        f(**{**ok, **_backend({"A": np.triu(np.ones((3, 3)))}, backend)})
    with pytest.raises(InputError, match="not positive definite"):
        f(**{**ok, **_backend({"A": -np.eye(3)}, backend)})
    A = 2 * np.eye(3)
    A[1, 1] = np.nan
    with pytest.raises(InputError, match="spd"):
        f(**{**ok, **_backend({"A": A}, backend)})
    f(**ok)


@pytest.mark.parametrize("backend", BACKENDS)
def test_count_checked_on_every_call(backend: str) -> None:
    m = _model("adam")
    k = numeric.compile(m, backend)
    a = _arrays("adam", backend)
    a["s"] = abs(a["s"])  # a second moment
    k(**a)
    for t in (-1.0, 0.5, np.nan):
        with pytest.raises(InputError, match="step count"):
            k(**{**a, **_backend({"t": np.array(t)}, backend)})
    k(**a)


def test_torch_tensors_on_the_kernel_device_and_off_it() -> None:
    m = _model(SR)
    k = numeric.compile(m, "torch", device="cpu")
    a = _arrays(SR, "torch", **SR_SIZES)
    k(**a)
    k(**{**a, "X": np.asarray(a["X"])})  # a NumPy array among tensors: converted, checked the long way
    with pytest.raises(InputError, match="row 0 sums to 1.2"):
        k(**{**a, "Y": torch.full((6, 4), 0.3, dtype=torch.float64)})
