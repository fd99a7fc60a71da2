"""PyTorch's native kernels in the torch backend, used only where SymPy proves the math equal: the fused LSTM
(numeric.native_rnn), found only where the step is an LSTM and equal to the loop, and fused activations.

The float64 checks of the zoo run the generated loop (PyTorch fuses the LSTM only for float32 on a CPU), so
here the fused path is checked in float32 against the loop it replaces, against nn.LSTM's autograd and
against the float64 loop, on hypothesis-drawn sizes.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import derive
import numeric
import verify
from derive.functions import leaky_relu, relu, step, where
from derive.functions import sigmoid as sigmoid_fn
from derive.models.ch7 import _gate, _head, _seq_builder, _seq_inputs
from derive.nn import sigmoid, tanh
from derive.program import Model
from derive.tensor import ARG, map_
from numeric import ops_numpy, ops_torch

fused = pytest.mark.skipif(not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
                           reason="this PyTorch has no oneDNN: the fused LSTM path cannot run")


def _variant(kind: str) -> Model:
    """An LSTM written with its gates renamed, or a step that looks like one but is not."""
    b, d = _seq_builder(f"lstm_{kind}", "an LSTM variant", "test", {})
    io = _seq_inputs(b, d, ("h", "c"))
    h0, c0, x = io["h"], io["c"], io["X"]
    gf = _gate(b, "f", h0, x, d)
    gi = _gate(b, "i", h0, x, d)
    go = _gate(b, "o", h0, x, d)
    ct = _gate(b, "c", h0, x, d, fn="tanh", tex=r"\tilde{c}")
    if kind == "swapped":  # "g_i" forgets and "g_f" lets in: still an LSTM, the roles read from the equations
        c = b.eq("c", gi * c0 + gf * ct, "c")
    elif kind == "coupled":  # c = f c_prev + (1 - f) c~: not an LSTM's cell (and g_i only scales the output)
        c = b.eq("c", gf * c0 + (1 - gf) * ct, "c")
    else:
        c = b.eq("c", gf * c0 + gi * ct, "c")
    if kind == "sigmoid_out":
        h = b.eq("h", go * sigmoid(c), "h")
    elif kind == "coupled":
        h = b.eq("h", go * gi * tanh(c), "h")
    else:
        h = b.eq("h", go * tanh(c), "h")
    _head(b, c if kind == "head_on_c" else h, d["q"], d["m"])
    return b.scan_model(d["T"], {"h_prev": h, "c_prev": c}, ("X", io["Y"].name), 1 / d["T"])


@pytest.mark.parametrize("name", ["lstm", "swapped"])
def test_an_lstm_gets_the_fused_kernel(name: str) -> None:
    m = derive.models.get("lstm") if name == "lstm" else _variant(name)
    assert "ops.fused_lstm(X)" in numeric.source(m, "torch")
    assert "fused_lstm" not in numeric.source(m, "numpy")


@pytest.mark.parametrize("name", ["coupled", "sigmoid_out", "head_on_c", "gru", "rnn"])
def test_other_recurrences_keep_the_loop(name: str) -> None:
    m = derive.models.get(name) if name in ("gru", "rnn") else _variant(name)
    src = numeric.source(m, "torch")
    assert "fused_lstm" not in src and "for t in range(" in src


def _arrays(m: Model, sizes: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in m.shapes(**sizes).items():
        if name in m.carries:
            continue
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        if m.tensor(name).domain == "simplex":
            x = torch.softmax(x, -1)
        elif len(shape) == 2 and m.tensor(name).role == "param":
            x = x / shape[1] ** 0.5
        out[name] = x
    return out


def _nn_lstm(t: dict[str, torch.Tensor], order: tuple[str, str, str, str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The loss and gradients by nn.LSTM and autograd, with ``order`` naming the gates PyTorch calls i, f, g, o."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in t.items() if k not in ("X", "Y")}
    i, f, g, o = order
    X = t["X"]
    m = leaves["W_fh"].shape[0]
    lstm = torch.nn.LSTM(X.shape[-1], m, dtype=X.dtype)
    state = {"weight_ih_l0": torch.cat([leaves[f"W_{k}x"] for k in order]),
             "weight_hh_l0": torch.cat([leaves[f"W_{k}h"] for k in order]),
             "bias_ih_l0": torch.cat([leaves[f"b_{k}"] for k in order]),
             "bias_hh_l0": torch.zeros(4 * m, dtype=X.dtype)}
    H, _ = torch.func.functional_call(lstm, state, (X,))
    q = leaves["W_yh"].shape[0]
    logits = torch.nn.functional.linear(H, leaves["W_yh"], leaves["b_y"]).reshape(-1, q)
    loss = torch.nn.functional.cross_entropy(logits, t["Y"].reshape(-1, q))
    names = sorted(leaves)
    return loss.detach(), dict(zip(names, torch.autograd.grad(loss, [leaves[k] for k in names])))


@fused
@given(T=st.integers(1, 6), n=st.integers(1, 4), p=st.integers(1, 5), m=st.integers(1, 5), q=st.integers(2, 4),
       seed=st.integers(0, 2**16), swapped=st.booleans())
def test_fused_lstm_equals_the_loop_and_nn_lstm(T: int, n: int, p: int, m: int, q: int, seed: int,
                                                swapped: bool) -> None:
    model = _variant("swapped") if swapped else derive.models.get("lstm")
    t64 = _arrays(model, {"T": T, "n": n, "p": p, "m": m, "q": q}, seed)
    t32 = {k: v.float() for k, v in t64.items()}
    k = numeric.compile(model, "torch")
    assert ops_torch.fused_lstm(t32["X"])
    fused_out = k(**t32)
    with ops_torch.native_kernels(False):
        assert not ops_torch.fused_lstm(t32["X"])
        loop = k(**t32)
    exact = k(**t64)  # float64: the loop
    ref_loss, ref = _nn_lstm(t32, ("f", "i", "c", "o") if swapped else ("i", "f", "c", "o"))
    assert fused_out["loss"] == pytest.approx(exact["loss"], rel=1e-5, abs=1e-6)
    assert loop["loss"] == pytest.approx(exact["loss"], rel=1e-5, abs=1e-6)
    assert float(ref_loss) == pytest.approx(exact["loss"], rel=1e-5, abs=1e-6)
    for name, g in exact["grad"].items():
        scale = float(g.abs().max()) + 1e-3
        for who, got in (("fused", fused_out["grad"][name]), ("loop", loop["grad"][name]), ("nn.LSTM", ref[name])):
            assert got.dtype == torch.float32 and got.shape == g.shape, (who, name)
            err = float((got.double() - g).abs().max())
            assert err <= 2e-5 * scale, f"{who} {name}: off by {err:.2e} (largest |g| {scale:.2e})"


@fused
def test_fused_path_is_not_taken_where_pytorch_has_no_fused_kernel() -> None:
    x32 = torch.zeros(2, 1, 3)
    assert ops_torch.fused_lstm(x32)
    assert not ops_torch.fused_lstm(x32.double())
    with torch.inference_mode():
        assert not ops_torch.fused_lstm(torch.zeros(2, 1, 3))
    with ops_torch.native_kernels(False):
        assert not ops_torch.fused_lstm(x32)
    assert ops_torch.fused_lstm(x32)


@fused
def test_fused_lstm_leaves_its_inputs_alone() -> None:
    """Inputs that require grad (a training loop's parameters) are read, not differentiated or kept in a graph."""
    model = derive.models.get("lstm")
    t = {k: v.float() for k, v in _arrays(model, {"T": 3, "n": 2, "p": 2, "m": 3, "q": 2}, 0).items()}
    req = {k: (v.clone().requires_grad_(True) if k.startswith(("W", "b")) else v) for k, v in t.items()}
    out = numeric.compile(model, "torch")(**req)
    assert all(p.grad is None for p in req.values())
    plain = numeric.compile(model, "torch")(**t)
    for name, g in plain["grad"].items():
        assert torch.equal(out["grad"][name].detach(), g)


def _activation_model(fn: sp.Expr, consts: dict[str, float] | None = None) -> Model:
    b = derive.Builder("act")
    for name, value in (consts or {}).items():
        b.const(name, value)
    b.samples("n", 3)
    d = b.dim("d", 4)
    W = b.param("W", (d, d))
    x = b.input("X", (d,), "x", batched=True)
    g = b.input("G", (d,), "g", batched=True)
    a = b.eq("a", map_(fn, [W @ x]), "a")
    b.eq("C", derive.nn.sum_(g * a), "C")
    return b.model()


u = ARG[0]


def _elu_ref(alpha: float) -> Any:
    return lambda z: torch.where(z > 0, z, alpha * torch.expm1(z))


_FORMS = [  # (the map, the same function in torch, the native kernel it runs as, or None)
    (u * (1 + sp.erf(u / sp.sqrt(2))) / 2, lambda z: z * (1 + torch.erf(z / 2**0.5)) / 2, "gelu"),  # the zoo's
    (u / 2 + u * sp.erf(sp.sqrt(2) * u / 2) / 2, lambda z: z / 2 + z * torch.erf(z / 2**0.5) / 2, "gelu"),
    (u * (1 + sp.erf(u / 2)) / 2, lambda z: z * (1 + torch.erf(z / 2)) / 2, None),  # another scale: not GELU
    (u * sp.erf(u), lambda z: z * torch.erf(z), None),
    (u * sigmoid_fn(u), lambda z: z * torch.sigmoid(z), "silu"),
    (u * sigmoid_fn(2 * u), lambda z: z * torch.sigmoid(2 * z), None),
    (u * step(u) + (sp.exp(u * (1 - step(u))) - 1) * (1 - step(u)) * 2, _elu_ref(2.0), "elu"),  # the zoo's form
    (where(step(u), u, (sp.exp(u) - 1) / 2), _elu_ref(0.5), "elu"),  # from_torch's form
    (where(step(u), u, sp.exp(2 * u) - 1), lambda z: torch.where(z > 0, z, torch.expm1(2 * z)), None),
    (where(step(u), 2 * u, sp.exp(u) - 1), lambda z: torch.where(z > 0, 2 * z, torch.expm1(z)), None),
    (relu(u), torch.relu, "relu"),  # (its adjoint u step(z), ReLU's derivative 0 at the kink, as threshold_backward)
    (leaky_relu(u, sp.Rational(1, 100)), lambda z: torch.nn.functional.leaky_relu(z, 0.01), "leaky_relu"),
    (leaky_relu(u, sp.Rational(1, 5)), lambda z: torch.nn.functional.leaky_relu(z, 0.2), "leaky_relu"),
    (u * step(u) * 2, lambda z: 2 * torch.relu(z), None),  # (2 ReLU: a product, printed as such)
]

#: the calls that show a native activation kernel in the source: forward, backward
_NATIVE_CALLS = {"gelu": ("torch.nn.functional.gelu(", "aten.gelu_backward("),
                 "silu": ("torch.nn.functional.silu(", "aten.silu_backward("),
                 "elu": ("torch.nn.functional.elu(", "aten.elu_backward("),
                 "relu": ("torch.relu(", "aten.threshold_backward("),
                 "leaky_relu": ("torch.nn.functional.leaky_relu(", "aten.leaky_relu_backward(")}


@pytest.mark.parametrize("case", range(len(_FORMS)))
def test_activations_run_as_native_kernels_only_where_sympy_proves_them_equal(case: int) -> None:
    fn, ref_fn, native = _FORMS[case]
    m = _activation_model(fn)
    src = numeric.source(m, "torch")
    for name, (fwd, bwd) in _NATIVE_CALLS.items():
        assert (fwd in src and bwd in src) == (native == name), src
    g = torch.Generator().manual_seed(case)
    arrays = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in m.shapes(n=5, d=4).items()}
    arrays["X"][0] = torch.tensor([0.0, -40.0, 40.0, 1e-3])
    arrays["W"][0] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # z = 0 exactly, and far tails in the next rows
    got = numeric.compile(m, "torch")(**arrays)
    W = arrays["W"].clone().requires_grad_(True)
    loss = (arrays["G"] * ref_fn(arrays["X"] @ W.T)).sum(1).mean()
    (gW,) = torch.autograd.grad(loss, [W])
    assert got["loss"] == pytest.approx(loss.item(), rel=1e-13, abs=1e-15)
    torch.testing.assert_close(got["grad"]["W"], gW, rtol=1e-12, atol=1e-14)


def _npy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.numpy()


@given(n=st.integers(1, 5), p=st.integers(1, 6), extra=st.integers(0, 2), affine=st.booleans(),
       seed=st.integers(0, 2**16))
def test_numpy_norm_kernels_equal_pytorchs_native_ones(n: int, p: int, extra: int, affine: bool, seed: int) -> None:
    """ops_numpy's layer and batch norm, forward and backward, against torch.native_* on the same values."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, *([2] * extra), p)
    z, up = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2))
    k = 1 + (extra > 0)  # the normalised axes: the last one or two
    norm = shape[len(shape) - k:]
    w, b = (torch.randn(norm, generator=g, dtype=torch.float64) if affine else None for _ in range(2))
    y, mean, rstd = torch.native_layer_norm(z, norm, w, b, 1e-5)
    got = ops_numpy.native_layer_norm(z.numpy(), norm, _npy(w), _npy(b), 1e-5)
    for a, e in zip(got, (y, mean, rstd)):
        np.testing.assert_allclose(a, e.numpy(), rtol=1e-12, atol=1e-12)
    mask = [True, affine, affine]
    ref = torch.ops.aten.native_layer_norm_backward(up, z, norm, mean, rstd, w, b, mask)
    got = ops_numpy.native_layer_norm_backward(up.numpy(), z.numpy(), norm, mean.numpy(), rstd.numpy(), _npy(w),
                                               _npy(b), mask)
    for a, e in zip(got, ref):
        assert (a is None) == (e is None)
        if e is not None:
            np.testing.assert_allclose(a, e.numpy(), rtol=1e-10, atol=1e-12)
    z2, up2 = z.reshape(n, -1), up.reshape(n, -1)
    w2, b2 = (torch.randn(z2.shape[1], generator=g, dtype=torch.float64) if affine else None for _ in range(2))
    y, mean, rstd = torch.native_batch_norm(z2, w2, b2, None, None, True, 0.0, 1e-5)
    got = ops_numpy.native_batch_norm(z2.numpy(), _npy(w2), _npy(b2), None, None, True, 0.0, 1e-5)
    for a, e in zip(got, (y, mean, rstd)):
        np.testing.assert_allclose(a, e.numpy(), rtol=1e-12, atol=1e-12)
    ref = torch.ops.aten.native_batch_norm_backward(up2, z2, w2, None, None, mean, rstd, True, 1e-5, mask)
    got = ops_numpy.native_batch_norm_backward(up2.numpy(), z2.numpy(), _npy(w2), None, None, mean.numpy(),
                                               rstd.numpy(), True, 1e-5, mask)
    for a, e in zip(got, ref):
        assert (a is None) == (e is None)
        if e is not None:
            np.testing.assert_allclose(a, e.numpy(), rtol=1e-10, atol=1e-12)


@given(rows=st.integers(1, 6), width=st.integers(1, 20), axis=st.sampled_from([-1, 0]),
       dtype=st.sampled_from([torch.float32, torch.float64]), specials=st.booleans(),
       scale=st.sampled_from([1.0, 30.0, 1e3]), seed=st.integers(0, 2**16))
def test_softmax_helpers_equal_torchs_on_every_row_width(rows: int, width: int, axis: int, dtype: torch.dtype,
                                                         specials: bool, scale: float, seed: int) -> None:
    """ops_torch's softmax, log-softmax and the pair, whose narrow rows (5 to 15 entries) take whole-tensor
    passes instead of ATen's per-row loop: equal to torch's to rounding, NaN and infinity where torch has them,
    logits up to thousands (where only the true maximum keeps the exponentials finite)."""
    g = torch.Generator().manual_seed(seed)
    shape = (rows, width) if axis == -1 else (width, rows)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    if specials:
        flat = x.view(-1)
        picks = torch.randint(0, flat.numel(), (3,), generator=g)
        for i, v in zip(picks.tolist(), (math.inf, -math.inf, math.nan)):
            flat[i] = v
    before = x.nan_to_num()
    eps = torch.finfo(dtype).eps
    ref_s, ref_l = torch.softmax(x, axis), torch.log_softmax(x, axis)
    pair = ops_torch.softmax_and_log(x, axis)
    for got, ref in ((ops_torch.softmax(x, axis), ref_s), (ops_torch.log_softmax(x, axis), ref_l),
                     (pair[0], ref_s), (pair[1], ref_l)):
        assert torch.equal(got.isnan(), ref.isnan()) and torch.equal(got.isinf(), ref.isinf())
        ok = ~ref.isnan() & ~ref.isinf()
        torch.testing.assert_close(got[ok], ref[ok], rtol=64 * eps, atol=64 * eps)
    assert torch.equal(x.nan_to_num(), before)  # the input is left alone (no in-place pass on it)


@given(lead=st.lists(st.integers(1, 5), min_size=1, max_size=2), width=st.integers(1, 20),
       last=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]), specials=st.booleans(),
       scale=st.sampled_from([1.0, 30.0, 1e3]), seed=st.integers(0, 2**16))
def test_numpy_softmax_helpers_equal_torchs_on_every_row_width(lead: list[int], width: int, last: bool, dtype: Any,
                                                               specials: bool, scale: float, seed: int) -> None:
    """ops_numpy's softmax, log-softmax and the pair (narrow rows: a pass per column for the max, a product with
    ones for the sum) against torch's, NaN and infinity included, along the last axis or the first; logits up to
    thousands, where only the true maximum keeps the exponentials finite."""
    rng = np.random.default_rng(seed)
    shape = (*lead, width) if last else (width, *lead)
    axis = -1 if last else 0
    x = (rng.normal(size=shape) * scale).astype(dtype)
    if specials:
        for i, v in zip(rng.choice(x.size, min(3, x.size), replace=False), (np.inf, -np.inf, np.nan)):
            x.flat[i] = v
    before = x.copy()
    t = torch.from_numpy(x)
    ref_s, ref_l = torch.softmax(t, axis).numpy(), torch.log_softmax(t, axis).numpy()
    scale_l = np.maximum(1.0, np.abs(np.nan_to_num(ref_l, posinf=0.0, neginf=0.0)))  # log-softmax up to ~1e3
    with np.errstate(all="ignore"):
        pair = ops_numpy.softmax_and_log(x, axis)
        got = [ops_numpy.softmax(x, axis), ops_numpy.log_softmax(x, axis), *pair]
    eps = float(np.finfo(dtype).eps)
    for g, r, sc in zip(got, (ref_s, ref_l, ref_s, ref_l), (1.0, scale_l, 1.0, scale_l)):
        assert g.dtype == dtype and g.shape == r.shape
        np.testing.assert_array_equal(np.isnan(g), np.isnan(r))
        np.testing.assert_array_equal(np.isinf(g), np.isinf(r))
        ok = np.isfinite(r)
        np.testing.assert_array_less(np.abs(g[ok] - r[ok]), (64 * eps * (1 + np.abs(r)) * sc)[ok] + 1e-300)
    np.testing.assert_array_equal(x, before)


def test_numpy_sigmoid_is_within_two_ulp_of_the_exact_value() -> None:
    """ops_numpy.sigmoid (1/(1 + e^{-x}) in place) against float64 expit rounded, over the whole range, with
    0 where the exact value is below the smallest normal number and NaN for NaN."""
    from scipy.special import expit

    for dtype in (np.float32, np.float64):
        x = np.concatenate([np.linspace(-800, 800, 40001), [np.inf, -np.inf, 0.0, -0.0]]).astype(dtype)
        got = ops_numpy.sigmoid(x)
        assert got.dtype == dtype
        exact = expit(x.astype(np.longdouble) if dtype == np.float64 else x.astype(np.float64))
        normal = exact >= np.finfo(dtype).tiny
        ulp = np.abs(got[normal] - exact[normal]) / (exact[normal] * np.finfo(dtype).eps)
        assert float(ulp.max()) <= 2.0
        assert np.all(got[~normal] <= np.finfo(dtype).tiny)
        assert np.isnan(ops_numpy.sigmoid(np.array([np.nan], dtype=dtype))).all()
    assert ops_numpy.sigmoid(0.0) == 0.5 and ops_numpy.sigmoid(np.array(2)) == pytest.approx(expit(2.0), rel=1e-15)


@settings(deadline=None)
@given(slope=st.one_of(st.sampled_from([0.0, 0.01, 0.2, 1.0, 1.5, -0.3, 1 / 3]), st.floats(-4, 4)),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_numpy_leaky_relu_helpers_equal_torchs_exactly(slope: float, dtype: Any, seed: int) -> None:
    """ops_numpy.leaky_relu and u * leaky_step (selections by maximum and minimum, not np.where) against
    F.leaky_relu and aten.leaky_relu_backward, bit for bit: signed zeros, infinities, NaN, the largest floats."""
    rng = np.random.default_rng(seed)
    fmax = float(np.finfo(dtype).max)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, fmax, -fmax, 1.0, -1.0]
    x = np.concatenate([special, rng.normal(size=200) * 10]).astype(dtype)
    u = np.concatenate([rng.normal(size=x.size - 3), [np.inf, np.nan, -0.0]]).astype(dtype)
    with np.errstate(all="ignore"):
        fwd, back = ops_numpy.leaky_relu(x, slope), u * ops_numpy.leaky_step(x, slope)
    want_fwd = torch.nn.functional.leaky_relu(torch.from_numpy(x), slope).numpy()
    want_back = torch.ops.aten.leaky_relu_backward(torch.from_numpy(u), torch.from_numpy(x), slope, False).numpy()
    for got, want in ((fwd, want_fwd), (back, want_back)):
        assert got.dtype == dtype
        assert np.array_equal(got, want, equal_nan=True)
        assert np.array_equal(np.signbit(got), np.signbit(want)) or slope == 0


@settings(deadline=None)
@given(slope=st.one_of(st.sampled_from([0.0, 0.01, 0.2, 1.0, 1.5, -0.3, 1 / 3]), st.floats(-4, 4)),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_torch_leaky_relu_helpers_equal_the_selections_exactly(slope: float, dtype: torch.dtype, seed: int) -> None:
    """ops_torch.leaky_relu and leaky_step, one native pass for a number slope, against the selections they
    replace (torch.where), bit for bit: signed zeros, infinities, NaN, the largest floats; a tensor of slopes
    keeps the selection."""
    g = torch.Generator().manual_seed(seed)
    fmax = torch.finfo(dtype).max
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 1e-45, -1e-45, fmax, -fmax, 1.0, -1.0],
                           dtype=dtype)
    x = torch.cat([special, torch.randn(200, generator=g, dtype=dtype) * 10])
    one = torch.ones((), dtype=dtype)
    for s in (slope, torch.full((), slope, dtype=dtype)):
        got_fwd, got_step = ops_torch.leaky_relu(x, s), ops_torch.leaky_step(x, s)
        want_fwd, want_step = torch.where(x > 0, x, s * x), torch.where(x > 0, one, one * s)
        for got, want in ((got_fwd, want_fwd), (got_step, want_step)):
            assert got.dtype == dtype and got.shape == x.shape
            assert torch.equal(torch.isnan(got), torch.isnan(want))
            ok = ~torch.isnan(want)
            assert torch.equal(got[ok], want[ok])
            assert torch.equal(torch.signbit(got[ok]), torch.signbit(want[ok]))


def test_a_hyperparameter_slope_runs_as_the_native_leaky_relu() -> None:
    """A slope given as a constant (the zoo's leaky_relu layer, a Builder model's b.const) is a module-level
    number, so F.leaky_relu and aten.leaky_relu_backward take it as the numeric slope does; the model passes
    verify.check. A slope that is a parameter (PReLU's) stays a selection, and is differentiated too."""
    fwd, bwd = _NATIVE_CALLS["leaky_relu"]
    zoo = numeric.source(derive.models.get("leaky_relu"), "torch")
    assert fwd in zoo and bwd in zoo, zoo
    s = sp.Symbol("s", real=True)
    m = _activation_model(leaky_relu(u, s), {"s": 0.2})
    src = numeric.source(m, "torch")
    assert fwd in src and bwd in src, src
    report = verify.check(m, backend="torch", examples=8)
    assert report.examples == 8 and report.checks, report
    b = derive.Builder("prelu")
    b.samples("n", 3)
    d = b.dim("d", 4)
    W = b.param("W", (d, d))
    a_ = b.param("a", (d,))
    x = b.input("X", (d,), "x", batched=True)
    gg = b.input("G", (d,), "g", batched=True)
    h = b.eq("h", map_(leaky_relu(ARG[0], ARG[1]), [W @ x, a_]), "h")
    b.eq("C", derive.nn.sum_(gg * h), "C")
    prelu = b.model()
    src = numeric.source(prelu, "torch")
    assert fwd not in src, src
    for backend in ("torch", "numpy"):  # the slope's gradient, where(z > 0, 0, z) g, against autograd
        report = verify.check(prelu, backend=backend, examples=6)
        assert report.examples == 6 and report.checks, report


@fused
def test_fused_lstm_passes_verify_check_in_float32() -> None:
    """The fused path through the same verify.check as every kernel: the compiled torch kernel, called in
    float32 (where the fused LSTM runs), as the implementation, against the zoo's reference."""
    model = derive.models.get("lstm")
    k = numeric.compile(model, "torch")
    taken = []

    def in_float32(**arrays: torch.Tensor) -> dict[str, Any]:
        a32 = {name: v.float() for name, v in arrays.items()}
        taken.append(ops_torch.fused_lstm(a32["X"]))
        return k(**a32)

    report = verify.check(model, implementation=in_float32, backend="torch", examples=6)
    assert report.examples == 6 and taken and all(taken), report
    assert any("implementation" in what for what in report.checks), report.checks


def test_the_means_1_over_n_is_a_gemm_alpha_in_recurrent_kernels() -> None:
    """The mean's 1/n joins the product that makes a recurrence's weight gradient (``ops.matmul(..., 1/n)``), and
    in the fused LSTM the product that makes the states' adjoint (its backward is linear in it): no pass over
    the results afterwards. (The gradients themselves: the fused LSTM's verify.check above, and the zoo's.)"""
    src = numeric.source(derive.models.get("lstm"), "torch")
    fused_part = src.split("if ops.fused_lstm(X):")[1].split("return")[0]
    assert "zw = ops.matmul(delta_y_all, W_yh, 1/n)" in fused_part and ".div_(" not in fused_part
    assert "g_W_yh = ops.matmul(delta_y_all.T, h_all, 1/n)" in src
    assert not re.search(r"^    g_W\w* = \(\w+(\.T)? @ \w+\) / n$", src, re.M)


def _narrow_classifier() -> Model:
    """Softmax cross entropy with 6 to 14 classes drawn (the zoo's entries draw at most 5): every example takes
    the narrow-row softmax of both backends."""
    b = derive.Builder("narrow_softmax", "softmax classifier with ten-odd classes", "test")
    b.samples("n", 6, 1, 8)
    p, K = b.dim("p", 3, 1, 4), b.dim("K", 10, 6, 14)
    W = b.param("W", (K, p))
    x = b.input("X", (p,), "x", batched=True)
    y = b.input("Y", (K,), "y", batched=True, domain="simplex")
    z = b.eq("z", W @ x, "z")
    b.eq("C", -derive.nn.dot(y, derive.nn.log_softmax(z)), "C")
    return b.model()


def test_narrow_softmax_kernels_pass_verify_check(monkeypatch: Any) -> None:
    """The narrow-row softmax helpers through verify.check like every kernel (both backends, the program's eager
    evaluation as the reference, finite differences), on class counts that take them."""
    narrow: list[bool] = []
    real = ops_torch._narrow_rows

    def spy(x: torch.Tensor, axis: int) -> bool:
        narrow.append(real(x, axis))
        return narrow[-1]

    monkeypatch.setattr(ops_torch, "_narrow_rows", spy)
    m = _narrow_classifier()
    report = verify.check(m, backend="torch", examples=8)
    assert report.examples == 8 and report.checks, report
    assert narrow and all(narrow)
    src = numeric.source(m, "torch")
    assert "ops.softmax_and_log(" in src or "ops.log_softmax(" in src, src


@pytest.mark.parametrize("case", [i for i, f in enumerate(_FORMS) if f[2] is not None])
def test_native_activation_kernels_pass_verify_check(case: int) -> None:
    """The models whose maps run as PyTorch's activation kernels, through verify.check (float64, the program's
    eager evaluation as the reference, finite differences, kinks for ELU)."""
    report = verify.check(_activation_model(_FORMS[case][0]), backend="torch", examples=8)
    assert report.examples == 8 and report.checks, report


def _pool_model(kind: str, kernel: int, stride: int, padding: int, dilation: int, fill: float) -> Model:
    """Pooling over windows as the zoo writes it (derive.models.ch6), with any dilation and padding value."""
    from derive.primitives.axis import Max
    from derive.primitives.windows import Unfold, conv_out

    b = derive.Builder(f"{kind}_pool", "pooling", "test")
    b.samples("n", 2, 1, 3)
    C = b.dim("C_in", 2, 1, 3)
    lo = dilation * (kernel - 1) + 1
    H, W = (b.dim(d, lo + 1, lo, lo + 3) for d in ("H_in", "W_in"))
    x = b.input("X", (C, H, W), "x", batched=True, adjoint=("g_X", r"\zeta_{x}"))
    oh, ow = (conv_out(d, kernel, stride, padding, dilation) for d in (H, W))
    G = b.input("G", (C, oh, ow), r"\zeta", batched=True)
    U = Unfold(x, (kernel, kernel), stride, padding, dilation, flat=True, fill=fill)
    a = b.eq("a", Max(U, 1) if kind == "max" else derive.nn.mean(U, 1), "a")
    b.eq("C", derive.nn.sum_(G * a), "C")
    return b.model(reduction="sum", diff_inputs=("X",), kinks=kind == "max")


# (kind, kernel, stride, padding, dilation, the padding's value, whether it runs as PyTorch's pooling)
_POOLS = [("max", 2, 2, 0, 1, -math.inf, True), ("max", 3, 2, 1, 1, -math.inf, True),
          ("max", 2, 1, 0, 1, -math.inf, True), ("max", 3, 1, 1, 2, -math.inf, True),
          ("max", 3, 1, 1, 1, 0.0, False),  # windows padded with zeros: not PyTorch's max pooling
          ("avg", 2, 2, 0, 1, 0.0, True), ("avg", 3, 2, 1, 1, 0.0, True), ("avg", 3, 1, 1, 1, 0.0, True),
          ("avg", 2, 1, 0, 2, 0.0, False)]  # a dilated mean: PyTorch's average pooling has no dilation
_POOL_CALLS = {"max": ("ops.max_pool2d_with_indices(", "ops.max_pool2d_backward("),
               "avg": ("torch.nn.functional.avg_pool2d(", "ops.avg_pool2d_backward(")}


@pytest.mark.parametrize("kind, kernel, stride, padding, dilation, fill, native", _POOLS)
def test_pooling_runs_as_pytorchs_kernels_where_it_is_theirs(kind: str, kernel: int, stride: int, padding: int,
                                                             dilation: int, fill: float, native: bool) -> None:
    """Max and mean pooling, forward and backward, as PyTorch's pooling kernels (111 -> 5.5 ms for max pooling
    at 32 x 64 x 32 x 32, where the windows were unfolded and masked), and the unfolded windows where the math
    is not PyTorch's pooling; either way through verify.check, and for PyTorch's, autograd's gradient bit for
    bit on ties, -inf and NaN."""
    m = _pool_model(kind, kernel, stride, padding, dilation, fill)
    src = numeric.source(m, "torch")
    fwd, bwd = _POOL_CALLS[kind]
    assert (fwd in src and bwd in src) == native, src
    assert ("ops.unfold(" in src) != native, src
    report = verify.check(m, backend="torch", examples=6)
    assert report.examples == 6 and report.checks, report
    if not native:
        return
    g = torch.Generator().manual_seed(kernel + 7 * padding + 11 * dilation)
    X = torch.randint(-2, 3, (3, 2, 7, 9), generator=g).double()  # many ties in each window
    X[0, 0, 0, :3] = math.nan
    X[1, 1, 2:5, 2:5] = -math.inf
    Xr = X.clone().requires_grad_(True)
    if kind == "max":
        a = torch.nn.functional.max_pool2d(Xr, kernel, stride, padding, dilation)
    else:
        a = torch.nn.functional.avg_pool2d(Xr, kernel, stride, padding)
    G = torch.randn(a.shape, generator=g, dtype=torch.float64)
    (want,) = torch.autograd.grad((G * a).sum(), [Xr])
    out = numeric.compile(m, "torch", check=False).raw(X=X, G=G)
    assert torch.equal(torch.isnan(out["grad"]["X"]), torch.isnan(want))
    ok = ~torch.isnan(want)
    assert torch.equal(out["grad"]["X"][ok], want[ok])
    zoo = numeric.source(derive.models.get(f"{kind}_pool2d"), "torch")
    assert fwd in zoo and bwd in zoo, zoo
