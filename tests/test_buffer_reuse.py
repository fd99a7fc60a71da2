"""Torch kernels write a map's result over a buffer of their own that nothing reads after it (numeric.codegen,
``_Emitter.reuse``): ``z1.sigmoid_()`` instead of ``torch.sigmoid(z1)``, ``yhat.sub_(Y)``, a fused ATen
backward into its upstream adjoint (``ops.written_over``). A fresh array costs a page fault per 4 KiB on first
touch, which on this machine is most of an elementwise pass.

The permission is given by the derivation (a value read once, made by a call that returns a new array) and
checked on the printed lines (:func:`numeric.codegen._reuse_violations`); the kernels are verified here as an
implementation would be, which also fails a kernel that changes any of its inputs.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import derive
import numeric
import verify
from numeric import codegen, ops_torch
from numeric.codegen import _Line, _reuse_violations

LOSSES = [n for n in derive.models.names() if not derive.models.get(n).is_update]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", LOSSES)
def test_every_torch_kernel_leaves_its_inputs_alone(name: str, dtype: torch.dtype) -> None:
    """The raw torch kernel, checked as a user's implementation: gradients against autograd, and no input
    changed in place (``verify.check`` compares the arrays it sends before and after the call). In float32 the
    kernel gets float32 copies, which are compared here: its float32-only paths (a loss's product written over a
    scratch buffer, the fused LSTM) run too."""
    m = derive.models.get(name)
    kernel = numeric.compile(m, "torch", check=False)
    n = min(settings().max_examples, 5)
    untouched: list[bool] = []

    def in_float32(**arrays: torch.Tensor) -> dict[str, object]:
        sent = {k: v.float() if v.is_floating_point() else v for k, v in arrays.items()}
        before = {k: v.clone() for k, v in sent.items()}
        out = kernel.raw(**sent)
        untouched.append(all(torch.equal(sent[k], before[k]) for k in sent))
        return out

    impl = kernel.raw if dtype == torch.float64 else in_float32
    report = verify.check(m, impl, backend="torch", examples=n, fd=False)
    assert report.examples == n
    assert any(k.startswith("the implementation") for k in report.checks)
    assert all(untouched) and len(untouched) >= (n if dtype == torch.float32 else 0)


@pytest.mark.parametrize("name", LOSSES)
def test_no_kernel_writes_over_an_argument(name: str) -> None:
    """In every printed torch kernel, what an in-place method or ``ops.written_over`` writes into is a name the
    kernel assigned, never one of its arguments."""
    m = derive.models.get(name)
    src = numeric.source(m, "torch")
    args = set(m.params) | set(m.inputs)
    written = set(re.findall(r"(?<![\w.])([A-Za-z_]\w*)\.[a-z]\w*_\(", src))
    written |= set(re.findall(r"ops\.written_over\([\w.]+, ([A-Za-z_]\w*)[,)]", src))
    assert not written & args, (name, written & args)


def test_the_mlp_writes_over_its_dead_buffers() -> None:
    src = numeric.source(derive.models.get("mlp", layers=3, widths=(8, 8, 8, 3)), "torch")
    assert "a1 = z1.sigmoid_()" in src
    assert "delta3 = yhat.sub_(Y)" in src
    assert "log_yhat.mul_(Y).sum(dim=1)" in src
    assert "ops.written_over(torch.ops.aten.sigmoid_backward, zeta2, a2)" in src
    # a2 is read again (by g_W3 and the backward): never written over
    assert not re.search(r"(?<![\w.])a2\.[a-z]\w*_\(", src)


def _lines(*pairs: tuple[str, str]) -> list[_Line]:
    return [_Line(t, c) for t, c in pairs]


def test_a_buffer_read_once_after_its_line_may_be_written_over() -> None:
    lines = _lines(("z", "torch.addmm(b, X, W.T)"), ("a", "z.sigmoid_()"), ("g", "a @ W"))
    assert _reuse_violations(lines, {"z"}, {"g", "W", "X", "b"}) == set()
    # no reader at all (the line that wrote over it was dropped): nothing to contradict
    assert _reuse_violations(lines[:1], {"z"}, set()) == set()


@pytest.mark.parametrize("lines, why", [
    (_lines(("z", "torch.addmm(b, X, W.T)"), ("a", "z.sigmoid_()"), ("g", "z * a")), "read again"),
    (_lines(("z", "torch.addmm(b, X, W.T)"), ("a", "z.mul_(z)")), "twice in one line"),
    (_lines(("z", "torch.addmm(b, X, W.T)"), ("z", "z.sigmoid_()")), "assigned twice"),
    (_lines(("a", "z.sigmoid_()"),), "never assigned"),
    (_lines(("z", "torch.addmm(b, X, W.T)"), ("a", "z.exp_()")), "kept"),
])
def test_a_printed_line_that_contradicts_the_reuse_is_caught(lines: list[_Line], why: str) -> None:
    keep = {"z"} if why == "kept" else set()
    assert _reuse_violations(lines, {"z"}, keep) == {"z"}, why


def test_a_contradicted_name_is_printed_again_without_the_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the printed lines contradict a reuse, the kernel is printed again with that name banned: here the
    check is made to refuse ``z1`` once, and the new source computes ``sigmoid(z1)`` into a new array while
    the other reuses stay, and the kernel still verifies."""
    real = codegen._reuse_violations
    rounds: list[set[str]] = []

    def refuse_z1(lines: list[object], consumed: set[str], keep: set[str]) -> set[str]:
        bad = real(lines, consumed, keep)  # type: ignore[arg-type]
        if not rounds and "z1" in consumed:
            bad = bad | {"z1"}
        rounds.append(set(consumed))
        return bad

    monkeypatch.setattr(codegen, "_reuse_violations", refuse_z1)
    numeric.kernel.clear_cache()
    try:
        m = derive.models.get("mlp", layers=2, widths=(6, 5, 3))
        src = numeric.source(m, "torch")
        assert len(rounds) == 2 and "z1" in rounds[0] and "z1" not in rounds[1]
        assert "a1 = torch.sigmoid(z1)" in src
        assert "yhat.sub_(Y)" in src
        kernel = numeric.compile(m, "torch", check=False)
        assert verify.check(m, kernel.raw, backend="torch", examples=3, fd=False).examples == 3
    finally:
        numeric.kernel.clear_cache()


_BACKWARDS = [(torch.ops.aten.sigmoid_backward, lambda x: (torch.sigmoid(x),)),
              (torch.ops.aten.tanh_backward, lambda x: (torch.tanh(x),)),
              (torch.ops.aten.threshold_backward, lambda x: (x, 0)),
              (torch.ops.aten.leaky_relu_backward, lambda x: (x, 0.1, False)),
              (torch.ops.aten.gelu_backward, lambda x: (x,)),
              (torch.ops.aten.silu_backward, lambda x: (x,))]


@settings(deadline=None)
@given(st.integers(0, len(_BACKWARDS) - 1), st.integers(1, 6), st.integers(1, 6),
       st.sampled_from([torch.float32, torch.float64]), st.integers(0, 2**31 - 1))
def test_written_over_is_the_backward_itself(which: int, n: int, p: int, dtype: torch.dtype, seed: int) -> None:
    """``ops.written_over(op, u, ...)`` returns ``u`` holding exactly ``op(u, ...)``, zeros, infinities and NaNs
    included; where an argument has another shape (``u`` could not hold the result) it is the plain call
    and ``u`` is left as it was."""
    op, rest_of = _BACKWARDS[which]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=dtype)
    x.view(-1)[0] = 0.0
    u = torch.randn(n, p, generator=g, dtype=dtype)
    u.view(-1)[-1] = float("nan") if seed % 2 else float("inf")
    rest = rest_of(x)
    want = op(u, *rest)
    got = ops_torch.written_over(op, u, *rest)
    assert got is u
    assert torch.equal(torch.nan_to_num(got, 7.0, 8.0, 9.0), torch.nan_to_num(want, 7.0, 8.0, 9.0))
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    # u one row, broadcast (the result is not u's to hold; gelu's and silu's oneDNN kernels do not broadcast)
    if isinstance(rest[0], torch.Tensor) and n > 1 and which < 4:
        row = torch.randn(1, p, generator=g, dtype=dtype)
        before = row.clone()
        out = ops_torch.written_over(op, row, *rest)
        assert out is not row and out.shape == (n, p)
        assert torch.equal(row, before)


def test_the_in_place_kernel_under_torch_compile() -> None:
    """fuse=True compiles the generated module, in-place lines and ``ops.written_over`` (its plain call under
    torch.compile) included: the numbers of the unfused kernel."""
    m = derive.models.get("mlp", layers=2, widths=(6, 5, 3))
    g = torch.Generator().manual_seed(0)
    arrays = {"W1": torch.randn(5, 6, generator=g, dtype=torch.float64),
              "W2": torch.randn(3, 5, generator=g, dtype=torch.float64),
              "b1": torch.randn(5, generator=g, dtype=torch.float64),
              "b2": torch.randn(3, generator=g, dtype=torch.float64),
              "X": torch.randn(7, 6, generator=g, dtype=torch.float64),
              "Y": torch.softmax(torch.randn(7, 3, generator=g, dtype=torch.float64), 1)}
    assert "ops.written_over(" in numeric.source(m, "torch") and ".sigmoid_()" in numeric.source(m, "torch")
    plain = numeric.compile(m, "torch")(**arrays)
    fused = numeric.compile(m, "torch", fuse=True)(**arrays)
    assert fused["loss"] == pytest.approx(plain["loss"], rel=1e-12)
    for k in m.grad_names:
        torch.testing.assert_close(fused["grad"][k], plain["grad"][k], rtol=1e-12, atol=1e-14)


def _sandwich(kind: str) -> derive.Model:
    """A user's two-layer block ``C = <G, W2 f(W1 x)>`` (not a zoo entry): the adjoint of ``f``'s output is a
    fresh product, ``W2^T G``, so ``f``'s fused backward writes into it."""
    import sympy as sp

    from derive.functions import leaky_relu, relu, sigmoid, step
    from derive.nn import dot
    from derive.tensor import ARG, map_

    x0 = ARG[0]
    fns = {"gelu": x0 * (1 + sp.erf(x0 / sp.sqrt(2))) / 2, "silu": x0 * sigmoid(x0),
           "elu": x0 * step(x0) + (sp.exp(x0 * (1 - step(x0))) - 1) * (1 - step(x0)),
           "leaky_relu": leaky_relu(x0, sp.Rational(1, 10)), "relu": relu(x0), "tanh": sp.tanh(x0),
           "sigmoid": sigmoid(x0)}
    b = derive.Builder(f"sandwich_{kind}", "a block with a fused activation backward", "test")
    b.samples("n", 4, 1, 6)
    d = b.dim("d", 3, 1, 5)
    W1, W2 = b.param("W1", (d, d)), b.param("W2", (d, d))
    x = b.input("X", (d,), "x", batched=True)
    g = b.input("G", (d,), "g", batched=True)
    z = b.eq("z", W1 @ x, "z")
    a = b.eq("a", map_(fns[kind], [z]), "a")
    b.eq("C", dot(g, W2 @ a), "C")
    return b.model(reduction="sum", kinks=kind in ("elu", "leaky_relu", "relu"))


@pytest.mark.parametrize("kind, backward", [("gelu", "gelu_backward"), ("silu", "silu_backward"),
                                            ("elu", "elu_backward"), ("leaky_relu", "leaky_relu_backward"),
                                            ("relu", "threshold_backward"), ("tanh", "tanh_backward"),
                                            ("sigmoid", "sigmoid_backward")])
def test_each_fused_backward_written_over_its_adjoint_verifies(kind: str, backward: str) -> None:
    """Every branch of ``ops.written_over`` in a model of a user's, through derive -> numeric -> verify: the
    generated kernels against autograd (float64), and the raw torch kernel in float32 as an implementation."""
    m = _sandwich(kind)
    assert f"ops.written_over(torch.ops.aten.{backward}, " in numeric.source(m, "torch")
    assert verify.check(m, backend="torch", examples=4).examples == 4
    kernel = numeric.compile(m, "torch", check=False)

    def in_float32(**arrays: torch.Tensor) -> dict[str, object]:
        return kernel.raw(**{k: v.float() for k, v in arrays.items()})

    assert verify.check(m, in_float32, backend="torch", examples=4, fd=False).examples == 4


@pytest.mark.parametrize("name", LOSSES)
def test_tensors_that_require_grad_run_the_variant_without_reuse(name: str) -> None:
    """Arguments that require grad (autograd through the kernel) run the code that writes over none of its own
    buffers (``numeric.source(m, 'torch', reuse=False)``): the same values as the plain call."""
    m = derive.models.get(name)
    kernel = numeric.compile(m, "torch")
    t = {a: torch.tensor(v) for a, v in verify.example(m, seed=1, sizes={d: 3 for d in m.dims}).items()}
    want = kernel(**t)
    req = {a: v.clone().requires_grad_(True) if a in m.grad_names and v.is_floating_point() else v
           for a, v in t.items()}
    got = kernel(**req)
    assert got["loss"] == want["loss"]
    for g in m.grad_names:
        assert torch.equal(got["grad"][g].detach(), want["grad"][g]), g
    plain = numeric.source(m, "torch", kernel.hessian, reuse=False)
    assigned = set(re.findall(r"^    (\w+) = ", plain, re.M))
    written = set(re.findall(r"(?<![\w.])([A-Za-z_]\w*)\.[a-z]\w*_\(", plain))
    written |= set(re.findall(r"ops\.written_over\([\w.]+, ([A-Za-z_]\w*)[,)]", plain))
    assert not written & assigned, written & assigned  # (only temporaries made inside one expression)
    assert (kernel._autograd_raw is kernel.raw) == (plain == kernel.source)


@pytest.mark.parametrize("name", ["mlp", "dqn", "wgan_gp", "logistic_regression", "residual_block"])
def test_autograd_runs_back_through_a_kernel_that_reuses_buffers(name: str) -> None:
    """A gradient the kernel returns for arguments that require grad is differentiable again (a Hessian-vector
    product through the kernel), as it was before buffers were written over: it matches autograd's own."""
    m = derive.models.get(name)
    assert numeric.source(m, "torch", reuse=False) != numeric.source(m, "torch")
    t = {a: torch.tensor(v) for a, v in verify.example(m, seed=2, sizes={d: 3 for d in m.dims}).items()}
    leaf = m.grad_names[0]
    x = t[leaf].clone().requires_grad_(True)
    g = numeric.compile(m, "torch")(**{**t, leaf: x})["grad"][leaf]
    v = torch.ones_like(x)
    (hv,) = torch.autograd.grad((g * v).sum(), [x])
    from verify.references import reference

    ref = reference(name)
    y = t[leaf].clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(ref(**{**t, leaf: y}, **m.options), [y], create_graph=True)
    (hv_ref,) = torch.autograd.grad((g_ref * v).sum(), [y])
    torch.testing.assert_close(hv, hv_ref, rtol=1e-9, atol=1e-12)
