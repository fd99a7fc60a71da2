"""derive.from_torch: PyTorch code captured with torch.export, derived, generated and verified."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import derive
import numeric
import verify


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
