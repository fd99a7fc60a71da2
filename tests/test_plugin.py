"""The pytest plugin's fixture checks an implementation inside a user's own test suite."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import verify


def _sigmoid_layer(Z: np.ndarray, G: np.ndarray) -> dict[str, Any]:
    s = 0.5 * (1.0 + np.tanh(0.5 * Z))  # the logistic function, finite at |Z| = 1000
    return {"loss": float(np.sum(G * s)), "grad": {"Z": G * s * (1.0 - s)}}


def _sigmoid_layer_wrong(Z: np.ndarray, G: np.ndarray) -> dict[str, Any]:
    s = 0.5 * (1.0 + np.tanh(0.5 * Z))  # the logistic function, finite at |Z| = 1000
    return {"loss": float(np.sum(G * s)), "grad": {"Z": G * s}}  # forgot sigma'


def test_fixture_accepts_and_rejects(dlmath_verify: Any) -> None:
    report = dlmath_verify("sigmoid", _sigmoid_layer, backend="numpy", examples=5)
    assert report.examples == 5
    with pytest.raises(verify.Mismatch, match="gradient Z"):
        dlmath_verify("sigmoid", _sigmoid_layer_wrong, backend="numpy", examples=5)


class _Affine(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x))


class _SquareWrongBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return g * x  # forgot the 2


def _square_loss(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return _SquareWrongBackward.apply(x @ w).sum()


def test_fixture_takes_torch_code_with_example_arguments(dlmath_verify: Any) -> None:
    report = dlmath_verify(_Affine(), torch.randn(4, 3), examples=3)
    assert report.model == "_Affine" and report.examples == 3 and "torch kernel: gradients" in report.checks
    f = lambda x, w: torch.nn.functional.softplus(x @ w).sum()  # noqa: E731
    assert dlmath_verify(f, torch.randn(4, 3), torch.randn(3), examples=2, name="softplus_loss").model == "softplus_loss"
    with pytest.raises(verify.Mismatch):
        dlmath_verify(_square_loss, torch.randn(4, 3), torch.randn(3), examples=3)
    with pytest.raises(TypeError, match=r"needs example arguments"):
        dlmath_verify(_Affine())
    with pytest.raises(TypeError, match=r"takes one implementation"):
        dlmath_verify("sigmoid", _sigmoid_layer, _sigmoid_layer)


_USER_TESTS = '''
import numpy as np


def sigmoid_layer_wrong(Z, G):
    s = 0.5 * (1 + np.tanh(Z / 2))
    return {"loss": float(np.sum(G * s)), "grad": {"Z": G * s}}


def test_sigmoid(dlmath_verify):
    dlmath_verify("sigmoid", sigmoid_layer_wrong, backend="numpy", examples=4)
'''


def _pytest(tmp_path: Path, *args: str, ci: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "DLMATH_SEED", "HYPOTHESIS_PROFILE")}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_a_failure_shows_the_report_not_dlmaths_frames_and_the_same_under_ci(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(_USER_TESTS)
    runs = [_pytest(tmp_path, ci=ci) for ci in (None, "true")]
    reports = []
    for r in runs:
        assert r.returncode == 1, r.stdout + r.stderr
        out = r.stdout
        assert "verify.check.Mismatch: sigmoid: the implementation disagrees" in out or "Mismatch: sigmoid:" in out, out
        assert "gradient Z" in out and "Reproduce: verify.example(" in out, out
        # the test's own frame, and none of dlmath's or hypothesis' (verify/check.py, hypothesis/core.py)
        assert "test_user.py:" in out
        assert not re.search(r"(verify|hypothesis)[/\\]\w+\.py:\d+", out), out
        assert "Failing test case" not in out  # hypothesis' note on dlmath's internal call
        reports.append([line for line in out.splitlines() if line.startswith("E ")])
    assert reports[0] == reports[1] and len(reports[0]) >= 3  # deterministic, with CI set or not


def test_dlmath_examples_zero_is_refused(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(_USER_TESTS)
    r = _pytest(tmp_path, "--dlmath-examples=0")
    assert r.returncode == 4, r.stdout + r.stderr  # pytest's usage error, before any test runs
    assert "--dlmath-examples takes an integer >= 1" in r.stderr and "got 0" in r.stderr, r.stderr


def test_the_plugin_loads_without_torch_hypothesis_or_sympy() -> None:
    """The plugin loads in every pytest run of the environment: its import adds only dlmath's small modules
    (its cost is measured in ``dlmath bench --only plugin``)."""
    from numeric.bench import SECTIONS
    from verify import bench_plugin

    added = bench_plugin._added_modules()
    assert "dlmath.pytest_plugin" in added
    assert not [m for m in added if m.split(".")[0] in bench_plugin.HEAVY or m in bench_plugin.HEAVY], added
    assert "plugin" in SECTIONS
