"""derive.from_torch: PyTorch code captured with torch.export, derived, generated and verified."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import derive
import numeric
import verify

F = torch.nn.functional
nn = torch.nn
D = torch.float64


class _RMSMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 6)
        self.fc2 = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.gelu(self.fc1(x))
        h = h * torch.rsqrt((h * h).mean(-1, keepdim=True) + 1e-6)
        return self.fc2(h)


class _Sigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x)
        return torch.sigmoid(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return g * s * (1 - s)


class _WrongSigmoid(_Sigmoid):
    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(x)  # the derivative's (1 - s) factor is missing


def test_module_captured_at_one_batch_size_runs_at_another() -> None:
    torch.manual_seed(0)
    mod = _RMSMLP().double()
    m = derive.from_torch(mod, torch.randn(5, 4, dtype=torch.float64))
    assert set(m.params) == {"fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"}
    x = torch.randn(11, 4, dtype=torch.float64)  # another batch size than the captured one
    G = torch.randn(11, 3, dtype=torch.float64)
    arrays = {k: v.detach().numpy() for k, v in {
        "fc1_weight": mod.fc1.weight, "fc1_bias": mod.fc1.bias, "fc2_weight": mod.fc2.weight,
        "fc2_bias": mod.fc2.bias}.items()}
    out = numeric.compile(m, "numpy")(**arrays, x=x.numpy(), G=G.numpy())
    loss = (mod(x) * G).sum()
    loss.backward()
    np.testing.assert_allclose(out["loss"], loss.item(), rtol=1e-12)
    np.testing.assert_allclose(out["grad"]["fc1_weight"], mod.fc1.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    verify.check(m, examples=3)


def test_custom_function_backward_checked_against_its_forward() -> None:
    x = torch.randn(3, 4, dtype=torch.float64)
    verify.check(derive.from_torch(lambda x: _Sigmoid.apply(x).sum(), x), examples=3)
    with pytest.raises(verify.Mismatch) as e:
        verify.check(derive.from_torch(lambda x: _WrongSigmoid.apply(x).sum(), x), examples=3)
    assert "gradient x" in str(e.value)


def test_unsupported_operation_refused_in_one_line() -> None:
    with pytest.raises(derive.ModelError) as e:
        derive.from_torch(lambda x: torch.cumsum(x, 0).sum(), torch.randn(3, 2, dtype=torch.float64))
    assert "cumsum" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------
# captured at one batch size, compiled (numpy and torch) and run at another: loss and gradients equal torch
# autograd on the original code
# ---------------------------------------------------------------------------------------------------


def _r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=D)


def _labels(k: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, k, shape)


def _agree(obj: Any, example: tuple[Any, ...], other: tuple[Any, ...]) -> derive.Model:
    """Capture ``obj`` at ``example``; at ``other`` (other sizes) both generated kernels give torch autograd's
    loss and gradients on the original code (for a layer, the loss sum(G * out) with a random G)."""
    m = derive.from_torch(obj, *example)
    ref = m.reference
    if isinstance(obj, torch.nn.Module):
        fn = copy.deepcopy(obj).double()
        state = {**dict(fn.named_parameters()), **dict(fn.named_buffers())}
    else:
        fn, state = obj, {}
    arrays: dict[str, torch.Tensor] = {k: state[fqn].detach().clone() for k, fqn in {**ref.params, **ref.buffers}.items()}
    tensors = [a for a in other if isinstance(a, torch.Tensor)]
    assert len(tensors) == len(ref.inputs)
    arrays.update({k: a.clone() for k, a in zip(ref.inputs, tensors)})
    leaves = [a.clone().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
              for a in other]
    out = fn(*leaves)
    if ref.outputs:
        outs = torch.utils._pytree.tree_leaves(out)
        for g, o in zip(ref.outputs, outs):
            arrays[g] = torch.randn(o.shape, dtype=D)
        loss = sum((arrays[g] * o).sum() for g, o in zip(ref.outputs, outs))
    else:
        loss = out
    wrt = {k: state[fqn] for k, fqn in ref.params.items()}
    wrt.update({k: a for k, a in zip(ref.inputs, [a for a in leaves if isinstance(a, torch.Tensor)])
                if a.is_floating_point()})
    grads = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
    want = {k: (torch.zeros_like(v) if g is None else g).numpy() for (k, v), g in zip(wrt.items(), grads)}
    for backend in ("numpy", "torch"):
        f = numeric.compile(m, backend)
        got = f(**{k: (v.numpy() if backend == "numpy" else v) for k, v in arrays.items()})
        np.testing.assert_allclose(float(got["loss"]), loss.item(), rtol=1e-10, atol=1e-12, err_msg=backend)
        assert set(got["grad"]) == set(want), (backend, sorted(got["grad"]), sorted(want))
        for k, w in want.items():
            g = got["grad"][k]
            g = g.detach().numpy() if isinstance(g, torch.Tensor) else np.asarray(g)
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-10, err_msg=f"{backend} gradient {k}")
    return m


class _MLP(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 5), act, nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _SwiGLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w1, self.w2, self.w3 = nn.Linear(4, 6, bias=False), nn.Linear(6, 4, bias=False), nn.Linear(4, 6, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class _Frozen(nn.Module):
    """A frozen encoder (requires_grad=False, as in fine-tuning) under a trained head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.head = nn.Linear(4, 5), nn.Linear(5, 2)
        self.encoder.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.encoder(x)))


def test_frozen_parameters_are_held_fixed() -> None:
    """PyTorch gives no gradient to a parameter with requires_grad=False: the captured model holds it fixed, as
    it holds a buffer (an input without a gradient), and derives the trained ones."""
    m = derive.from_torch(_Frozen(), _r(3, 4))
    assert sorted(m.grad_names) == ["head_bias", "head_weight", "x"]
    assert {"encoder_weight", "encoder_bias"} <= set(m.inputs)
    verify.check(m, examples=3)


class _Residual(nn.Module):
    """Held-out style: norm, residual, a loss inside the module."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.proj, self.head = nn.LayerNorm(4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = x + torch.tanh(self.proj(self.norm(x)))
        return F.cross_entropy(self.head(h), y)


class _CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1))


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x), torch.tanh(self.b(x))


class _TinyLM(nn.Module):
    """Embedding, norm, head, and the loss over the flattened batch and time axes."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.norm, self.head = nn.Embedding(10, 8), nn.LayerNorm(8), nn.Linear(8, 10)

    def forward(self, idx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.head(self.norm(self.emb(idx))).view(-1, 10), y.view(-1))


def _bn_eval() -> nn.Module:
    bn = nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn.eval()


_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU("tanh"), "silu": nn.SiLU, "softplus": nn.Softplus,
    "leaky_relu": lambda: nn.LeakyReLU(0.2), "elu": lambda: nn.ELU(0.7), "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
}

#: name -> (factory of the code, example args, other-size args); each a plain function, a module or a layer
_CASES: dict[str, tuple[Callable[[], Any], Callable[[], tuple[Any, ...]], Callable[[], tuple[Any, ...]]]] = {
    **{f"mlp_{k}": ((lambda a=a: _MLP(a())), lambda: (_r(5, 4),), lambda: (_r(7, 4),)) for k, a in _ACTS.items()},
    "arithmetic": (lambda: lambda x, y: ((x + y) * x - y / (x * x + 1) + x**3 - torch.neg(y) + torch.rsqrt(y * y + 1)
                                         + torch.sqrt(x * x + 2) + torch.pow(x * x + 1, 0.5)).exp().log().sum(),
                   lambda: (_r(3, 4), _r(3, 4)), lambda: (_r(6, 4), _r(6, 4))),
    "softmax_log_softmax": (lambda: lambda x: (torch.softmax(x, -1) * x).sum() + torch.log_softmax(x, 0).mean(),
                            lambda: (_r(3, 4),), lambda: (_r(5, 4),)),
    "sum_mean_amax_var": (lambda: lambda x: x.sum(0).amax(-1) + x.mean() + x.var(1).sum() + x.amax(),
                          lambda: (_r(3, 4),), lambda: (_r(6, 4),)),
    "views": (lambda: lambda x: torch.cat([x.view(-1, 2, 2).permute(2, 0, 1).reshape(2, -1),
                                           x.transpose(0, 1).reshape(2, -1)], 1).unsqueeze(0).expand(3, -1, -1),
              lambda: (_r(3, 4),), lambda: (_r(5, 4),)),
    "squeeze_slice": (lambda: lambda x: (x.unsqueeze(1).squeeze(1)[:, 1:3] * x[:, :2]).sum() + x[1:].sum(),
                      lambda: (_r(3, 4),), lambda: (_r(5, 4),)),
    "where": (lambda: lambda x: torch.where(x > 0, x * x, -x).sum(), lambda: (_r(3, 4),), lambda: (_r(6, 4),)),
    "constants_like": (lambda: lambda x: (torch.ones_like(x) * x.sigmoid() + torch.zeros_like(x) + x.new_ones(x.shape)
                                          + torch.full_like(x, 2.5) * x).pow(2).sum(),
                       lambda: (_r(3, 4),), lambda: (_r(6, 4),)),
    "mm_addmm_matmul": (lambda: lambda a, b, c: torch.mm(a, b).sum() + torch.addmm(c, a, b).tanh().sum()
                        + torch.matmul(a, b).exp().sum(),
                        lambda: (_r(3, 4), _r(4, 2), _r(3, 2)), lambda: (_r(5, 4), _r(4, 2), _r(5, 2))),
    "bmm": (lambda: lambda a, b: torch.bmm(a, b).sigmoid().sum() + (a @ b).sum(),
            lambda: (_r(2, 3, 4), _r(2, 4, 5)), lambda: (_r(3, 3, 4), _r(3, 4, 5))),
    "linear_function": (lambda: lambda x, w, b: F.linear(x, w, b).relu().sum(),
                        lambda: (_r(3, 4), _r(2, 4), _r(2)), lambda: (_r(6, 4), _r(2, 4), _r(2))),
    "layer_norm": (lambda: nn.LayerNorm(4), lambda: (_r(3, 4),), lambda: (_r(6, 4),)),
    "rms_norm": (lambda: nn.RMSNorm(4), lambda: (_r(3, 4),), lambda: (_r(6, 4),)),
    "batch_norm_train": (lambda: nn.BatchNorm1d(4), lambda: (_r(5, 4),), lambda: (_r(7, 4),)),
    "batch_norm_eval": (_bn_eval, lambda: (_r(5, 4),), lambda: (_r(7, 4),)),
    "batch_norm_2d": (lambda: nn.BatchNorm2d(2), lambda: (_r(2, 2, 3, 3),), lambda: (_r(3, 2, 3, 3),)),
    "group_norm": (lambda: nn.GroupNorm(2, 4), lambda: (_r(3, 4, 5),), lambda: (_r(5, 4, 5),)),
    "conv2d": (lambda: nn.Conv2d(2, 3, 3, padding=1), lambda: (_r(2, 2, 5, 5),), lambda: (_r(3, 2, 5, 5),)),
    "conv2d_strided": (lambda: nn.Conv2d(2, 3, (2, 3), stride=2), lambda: (_r(2, 2, 6, 7),), lambda: (_r(3, 2, 6, 7),)),
    "conv1d": (lambda: nn.Conv1d(2, 3, 3, padding=1), lambda: (_r(2, 2, 6),), lambda: (_r(3, 2, 6),)),
    "max_pool2d": (lambda: nn.MaxPool2d(2), lambda: (_r(2, 2, 4, 4),), lambda: (_r(3, 2, 4, 4),)),
    "avg_pool2d": (lambda: nn.AvgPool2d(2), lambda: (_r(2, 2, 4, 4),), lambda: (_r(3, 2, 4, 4),)),
    "cnn": (_CNN, lambda: (_r(2, 1, 4, 4),), lambda: (_r(3, 1, 4, 4),)),
    "embedding": (lambda: nn.Embedding(7, 3), lambda: (_labels(7, 2, 4),), lambda: (_labels(7, 3, 5),)),
    "attention": (lambda: lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
                  lambda: (_r(2, 3, 4), _r(2, 3, 4), _r(2, 3, 4)), lambda: (_r(3, 5, 4), _r(3, 5, 4), _r(3, 5, 4))),
    "attention_causal": (lambda: lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                         lambda: (_r(2, 3, 4), _r(2, 3, 4), _r(2, 3, 4)), lambda: (_r(3, 5, 4), _r(3, 5, 4), _r(3, 5, 4))),
    "multihead_attention": (lambda: nn.MultiheadAttention(8, 2, batch_first=True),
                            lambda: (_r(2, 3, 8), _r(2, 3, 8), _r(2, 3, 8)), lambda: (_r(3, 4, 8), _r(3, 4, 8), _r(3, 4, 8))),
    "cross_entropy": (lambda: lambda x, y: F.cross_entropy(x, y), lambda: (_r(4, 3), _labels(3, 4)),
                      lambda: (_r(6, 3), _labels(3, 6))),
    "mse_loss": (lambda: lambda x, y: F.mse_loss(x, y), lambda: (_r(4, 3), _r(4, 3)), lambda: (_r(6, 3), _r(6, 3))),
    "bce_with_logits": (lambda: lambda x, y: F.binary_cross_entropy_with_logits(x, y),
                        lambda: (_r(4, 3), torch.rand(4, 3, dtype=D)), lambda: (_r(6, 3), torch.rand(6, 3, dtype=D))),
    "swiglu": (_SwiGLU, lambda: (_r(3, 4),), lambda: (_r(5, 4),)),
    "residual_norm_loss": (_Residual, lambda: (_r(3, 4), _labels(3, 3)), lambda: (_r(6, 4), _labels(3, 6))),
    "normalize_norm": (lambda: lambda x: F.normalize(x, dim=-1).sum() * x.norm(), lambda: (_r(3, 4),), lambda: (_r(5, 4),)),
    "einsum_stack_max": (lambda: lambda a, b: torch.stack([torch.einsum("bi,ij->bj", a, b), a[:, :2]], 1)
                         .max(dim=1).values.sum(), lambda: (_r(3, 4), _r(4, 2)), lambda: (_r(5, 4), _r(4, 2))),
    "gru_cell": (lambda: nn.GRUCell(3, 4), lambda: (_r(2, 3),), lambda: (_r(5, 3),)),
    # torch.export unrolls the loop over time: the sequence length is the example's, the batch stays dynamic
    "lstm_two_outputs_nested": (lambda: nn.LSTM(3, 4, batch_first=True), lambda: (_r(2, 3, 3),), lambda: (_r(4, 3, 3),)),
    "two_outputs": (lambda: _TwoHeads(), lambda: (_r(3, 4),), lambda: (_r(6, 4),)),
    "frozen_encoder": (_Frozen, lambda: (_r(3, 4),), lambda: (_r(6, 4),)),
    "tiny_language_model": (lambda: _TinyLM(), lambda: (_labels(10, 2, 5), _labels(10, 2, 5)),
                            lambda: (_labels(10, 3, 7), _labels(10, 3, 7))),
    "number_argument": (lambda: lambda x, a: (x * a).sigmoid().sum(), lambda: (_r(3, 4), 0.5), lambda: (_r(5, 4), 0.5)),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_captured_code_equals_autograd_at_another_size(case: str) -> None:
    torch.manual_seed(1)
    make, example, other = _CASES[case]
    obj = make()
    if isinstance(obj, nn.Module):
        obj = obj.double()
    _agree(obj, example(), other())


def test_flatten_into_linear_pins_the_image_size_and_keeps_the_batch_dynamic() -> None:
    torch.manual_seed(2)
    m = _agree(_CNN().double(), (_r(2, 1, 4, 4),), (_r(5, 1, 4, 4),))
    assert [str(d) for d in m.inputs["x"].shape[1:]] == ["1", "4", "4"]


# ---------------------------------------------------------------------------------------------------
# custom autograd.Functions: traced through the forward, the hand-written backward checked against it
# ---------------------------------------------------------------------------------------------------


class _Swish(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return g * (s + x * s * (1 - s))


class _WrongSwish(_Swish):
    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(x)  # forgets the x s (1 - s) term


class _SwishLayer(nn.Module):
    def __init__(self, fn: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.fc, self.fn = nn.Linear(3, 4), fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn.apply(self.fc(x))


def test_custom_function_module_runs_at_another_size_and_its_backward_is_accepted() -> None:
    torch.manual_seed(3)
    layer = _SwishLayer(_Swish).double()
    _agree(layer, (_r(4, 3),), (_r(9, 3),))
    verify.check(derive.from_torch(layer, _r(4, 3)), examples=3)


def test_wrong_custom_backward_rejected_naming_the_input_and_the_index() -> None:
    torch.manual_seed(4)
    x = _r(3, 4)
    with pytest.raises(verify.Mismatch) as e:
        verify.check(derive.from_torch(lambda x: _WrongSwish.apply(x).sum(), x), examples=3)
    text = str(e.value)
    assert ("your backward for `x` disagrees with the derivative of your forward (and with finite differences) "
            "at index (") in text
    assert "_WrongSwish" in text and "the backward is wrong" in text


def test_wrong_custom_backward_inside_a_module_blames_the_backward_for_a_parameter() -> None:
    torch.manual_seed(5)
    with pytest.raises(verify.Mismatch) as e:
        verify.check(derive.from_torch(_SwishLayer(_WrongSwish).double(), _r(4, 3)), examples=3)
    assert "your backward for `fc_" in str(e.value) and "the backward is wrong" in str(e.value)


# ---------------------------------------------------------------------------------------------------
# refusals: one line, naming the operation and the user's line
# ---------------------------------------------------------------------------------------------------


def _cumulative(x: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(x, 0).sum()  # the line the refusal names


def test_unsupported_operation_refused_naming_the_operation_and_the_users_line() -> None:
    with pytest.raises(derive.ModelError) as e:
        derive.from_torch(_cumulative, _r(3, 2))
    text = str(e.value)
    assert "\n" not in text
    assert "aten.cumsum" in text and "test_from_torch.py" in text and "torch.cumsum(x, 0).sum()" in text


def test_random_dropout_refused_with_the_fix() -> None:
    mod = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).double().train()
    with pytest.raises(derive.ModelError) as e:
        derive.from_torch(mod, _r(4, 3))
    assert "\n" not in str(e.value) and "eval" in str(e.value)


class _InPlaceReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        h.relu_()
        h.mul_(2.0)  # overwrites relu's output, which autograd saved: torch itself cannot differentiate this
        return h.sum()


def test_code_autograd_cannot_differentiate_is_named_with_the_fix() -> None:
    """torch.export captures the functional form, so dlmath derives it; verify's reference is autograd on the
    user's own code, which raises: verify says so in one line, with the fix and the example, not torch's
    traceback (and the CLI exits 2)."""
    m = derive.from_torch(_InPlaceReLU().double(), _r(5, 4))
    with pytest.raises(verify.ReferenceFailed) as e:
        verify.check(m, examples=2)
    text = str(e.value)
    assert "\n" not in text and "in-place" in text and "h = h.relu()" in text and "seed 0" in text


def test_a_reference_that_raises_is_named_with_the_example() -> None:
    def ref(*, Z: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        return (G * torch.tanh(Z @ torch.ones(3, 3, dtype=Z.dtype))).sum()  # only for Z with 3 columns

    m = derive.models.get("tanh")
    with pytest.raises(verify.ReferenceFailed, match=r"the reference raised RuntimeError.*sizes .*seed"):
        verify.check(m, reference=ref, examples=20, values=("normal",))


def test_a_float64_reference_still_judges_a_float32_implementation() -> None:
    """verify reruns the reference in float32 to measure float32's own error; a reference that pins float64
    (here a float64 matrix product) raises there, and that rerun is skipped, as before ReferenceFailed."""
    def ref(*, Z: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(Z.shape[-1], dtype=torch.float64)
        return (G * torch.tanh(Z @ eye)).sum()

    def impl(Z: np.ndarray, G: np.ndarray) -> dict[str, object]:
        z, g = Z.astype(np.float32), G.astype(np.float32)
        t = np.tanh(z)
        return {"loss": float(np.sum(g * t)), "grad": {"Z": g * (1 - t * t)}}

    m = derive.models.get("tanh")
    assert verify.check(m, implementation=impl, reference=ref, backend="numpy", examples=3,
                        values=("normal",)).examples == 3


# ---------------------------------------------------------------------------------------------------
# nn.TransformerEncoderLayer: captured, derived, verified
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_transformer_encoder_layer_captured_derived_and_verified(mode: str) -> None:
    torch.manual_seed(6)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dropout=0).double()
    layer.train(mode == "train")
    m = _agree(layer, (_r(3, 2, 16),), (_r(5, 3, 16),))  # (sequence, batch, features): both sizes dynamic
    assert len(m.dims) == 2 and {"self_attn_in_proj_weight", "linear1_weight", "norm2_bias"} <= set(m.params)
    assert derive.backprop(m)
    verify.check(m, examples=2)


# ---------------------------------------------------------------------------------------------------
# the CLI: dlmath derive / verify --torch MODULE:FACTORY
# ---------------------------------------------------------------------------------------------------

_FACTORIES = '''
import torch


class Sig(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sigmoid(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(x)  # wrong: the (1 - s) factor is missing


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)), (torch.randn(3, 4),)


def wrong():
    return (lambda x: Sig.apply(x).sum()), torch.randn(3, 4)


def broken():
    raise RuntimeError("no weights here")


def not_a_pair():
    return 3
'''


@pytest.fixture
def factories(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    import uuid

    name = f"torch_factories_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(_FACTORIES)
    monkeypatch.chdir(tmp_path)
    return name


def test_cli_derive_and_verify_torch_factory(factories: str, capsys: pytest.CaptureFixture[str]) -> None:
    from verify.cli import main

    assert main(["derive", "--torch", f"{factories}:mlp", "--format", "latex"]) == 0
    out = capsys.readouterr().out
    assert r"W_{0} \mathrm{input}^{(i)} + b_{0}" in out and "g_{W_{2}}" in out
    assert main(["verify", "--torch", f"{factories}:mlp", "--examples", "2"]) == 0
    assert main(["verify", "--torch", f"{factories}:wrong", "--examples", "2"]) == 1
    err = capsys.readouterr().err
    assert "your backward for `x` disagrees with the derivative of your forward (and with finite differences)" in err


@pytest.mark.parametrize("spec, says", [
    ("{m}", "should look like MODULE:FACTORY"),
    ("no_such_module_here:f", "cannot import 'no_such_module_here'"),
    ("{m}:nope", "has no function 'nope'"),
    ("{m}:broken", "broken() raised RuntimeError: no weights here"),
    ("{m}:not_a_pair", "should return (module_or_function, example_args)"),
])
def test_cli_bad_torch_factory_exits_2_in_one_line(factories: str, spec: str, says: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from verify.cli import main

    for cmd in ("derive", "verify"):
        assert main([cmd, "--torch", spec.format(m=factories)]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err


def test_cli_model_and_torch_together_refused(factories: str, capsys: pytest.CaptureFixture[str]) -> None:
    from verify.cli import main

    assert main(["derive", "softmax_regression", "--torch", f"{factories}:mlp"]) == 2
    assert "not both" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# printing: one equation per layer step, with the module's names
# ---------------------------------------------------------------------------------------------------


def test_linear_layers_print_as_the_book_writes_them() -> None:
    m = derive.from_torch(_MLP(nn.GELU()), torch.randn(5, 4))
    tex = derive.latex(m)
    assert r"z_{1}^{(i)} &= W_{1} x^{(i)} + b_{1}" in tex and r"z_{2}^{(i)} &= W_{2} a_{1}^{(i)} + b_{2}" in tex
    assert "permute" not in tex and "reshape" not in tex
    assert [e.lhs.tex for e in m.equations][:3] == ["z_{1}", "a_{1}", "z_{2}"]
    back = derive.latex(derive.backprop(m))
    assert r"g_{W_{1}} &= \sum_{i=1}^{n} \zeta_{z_{1}}^{(i)} x^{(i)\top}" in back


def test_transformer_layer_prints_attention_and_norms_as_named_steps() -> None:
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0)
    m = derive.from_torch(layer, torch.randn(3, 2, 16))
    texs = [e.lhs.tex for e in m.equations]
    for name in ("Q", "K", "V", "U", r"\mu_{1}", r"\sigma_{1}", r"\hat{z}_{1}", "z_{1}", "a_{1}", "z_{2}",
                 r"\mu_{2}", r"\sigma_{2}", r"\hat{z}_{2}"):
        assert name in texs, (name, texs)
    tex = derive.latex(m.equations)
    assert r"\hat{z}_{1} &= \frac{\gamma_{1} \odot (h_{2} - \mu_{1})}{\sigma_{1}} + \beta_{1}" in tex
    assert r"a_{1} &= \operatorname{ReLU}(z_{1})" in tex
