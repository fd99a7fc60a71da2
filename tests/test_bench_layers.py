"""The layers benchmark's device table (``numeric.bench_layers.device_rows``): the CUDA table where a GPU is
present, run here on the CPU through the same code (only the synchronisation differs)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from numeric import bench_layers
from numeric.bench import Settings


def _settings(*cases: str) -> Settings:
    return Settings(n=8, p=4, K=3, rounds=3, warmup=1, min_sample_s=0.0, derive_rounds=1, derive_models=None,
                    settle_s=0.0, cases=cases)


def _ratios(cell: str) -> list[float]:
    return [float(v) for v in cell.split(" / ")]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no GPU here: the CUDA table runs where one is present"))])
def test_device_rows_time_agreeing_kernels(device: str) -> None:
    rows, problems = bench_layers.device_rows(_settings("softmax_regression", "layer_norm", "lstm"), device, True)
    assert problems == []
    assert [r[0] for r in rows] == ["softmax_regression", "layer_norm", "lstm (vs nn.LSTM)"]
    for row in rows:
        torch_, raw, compiled, checked_raw, eager_ms = row[1:]
        assert all(v > 0 for v in _ratios(torch_) + _ratios(raw) + _ratios(checked_raw) + _ratios(eager_ms))
        assert compiled == "- / -"  # quick: no torch.compile


def test_device_rows_report_a_kernel_that_disagrees_with_eager(monkeypatch: Any) -> None:
    """A row whose eager formulation computes other math is a mismatch, not a timing."""
    case = next(c for c in bench_layers.CASES if c.name == "softmax_regression")
    wrong = bench_layers.Case(case.name, case.label, case.options, case.full, case.small,
                              lambda t: 2 * case.eager(t))
    monkeypatch.setattr(bench_layers, "CASES", [wrong])
    _, problems = bench_layers.device_rows(_settings("softmax_regression"), "cpu", True)
    assert len(problems) == 2 and all("torch differs from eager" in p for p in problems)


def test_layer_sizes_section_runs_the_rows_at_other_sizes(capsys: Any) -> None:
    assert {c.name for c in bench_layers.OTHER_SIZES} == {"softmax_regression", "mlp", "layer_norm", "batch_norm",
                                                          "attention", "lstm"}
    assert bench_layers.bench_layer_sizes(_settings("softmax_regression", "mlp")) == 0
    out = capsys.readouterr().out
    assert "softmax_regression n=1024 p=784 K=10" in out and "mlp 128x4-10 n=1024" in out and "lstm" not in out


def test_numpy_closed_forms_agree_with_the_torch_ones() -> None:
    """The benchmark's hand-written NumPy closed forms (what ``numpy/np closed`` divides by) compute the loss and
    the gradients of the torch closed forms, which the benchmark checks against eager autograd."""
    import derive

    cases = [c for c in bench_layers.CASES if c.np_closed is not None]
    assert {c.name for c in cases} == {"logistic_regression", "softmax_regression", "mlp", "layer_norm",
                                       "batch_norm"}
    for case in cases:
        m = derive.models.get(case.name, **case.options)
        t = bench_layers._arrays(m, list(m.shapes(**case.small)), case.small, torch.float64)
        want = case.closed(**t)
        got = case.np_closed(**{k: v.numpy() for k, v in t.items()})
        assert len(got) == len(want) == 1 + len(m.grad_names)
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), torch.as_tensor(w).numpy(), rtol=1e-10, atol=1e-12)
