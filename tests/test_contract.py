"""numeric.ops_numpy.contract: every two-operand contraction the NumPy kernels print, as one np.matmul between
views, equals np.einsum; and the plan it picks is a batch of matrix products, not of matrix-vector products."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numeric import ops_numpy

LETTERS = "Zabcde"


@st.composite
def contractions(draw: st.DrawFn) -> tuple[str, np.ndarray, np.ndarray]:
    la = "".join(draw(st.permutations(LETTERS))[: draw(st.integers(1, 4))])
    lb = "".join(draw(st.permutations(LETTERS))[: draw(st.integers(1, 4))])
    union = sorted(set(la) | set(lb))
    out = "".join(draw(st.permutations(union))[: draw(st.integers(0, len(union)))])
    size = {c: draw(st.integers(1, 5)) for c in union}
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = rng.standard_normal(tuple(size[c] for c in la))
    b = rng.standard_normal(tuple(size[c] for c in lb))
    if draw(st.booleans()):  # operands as transposed views, as the kernels pass them
        a = a.T.copy().T
    return f"{la},{lb}->{out}", a, b


@given(contractions())
def test_contract_equals_einsum(case: tuple[str, np.ndarray, np.ndarray]) -> None:
    spec, a, b = case
    want = np.einsum(spec, a, b)
    got = ops_numpy.contract(spec, a, b)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_contract_keeps_float32_and_propagates_nan_and_inf() -> None:
    a = np.ones((2, 3, 4), np.float32)
    b = np.ones((2, 5, 4), np.float32)
    a[0, 1, 2] = np.nan
    b[1, 0, 0] = np.inf
    got = ops_numpy.contract("Zab,Zcb->Zac", a, b)
    want = np.einsum("Zab,Zcb->Zac", a, b)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def _matmul_calls(spec: str, sa: tuple[int, ...], sb: tuple[int, ...]) -> int:
    plan = ops_numpy._contract_plan(spec, sa, sb)
    assert plan is not None
    shx, shy = plan[4], plan[6]
    return math.prod(max(p, q) for p, q in zip(shx[:-2], shy[:-2]))


# attention's forward and backward contractions (numeric.source(attention, "numpy")): Q K^T, A V, A^T G,
# G V^T, S_bar K, S_bar^T Q, at n = 32, T = 128, d = 64
ATTENTION = [("Zab,Zcb->Zac", (32, 128, 64), (32, 128, 64)), ("Zab,Zbc->Zac", (32, 128, 128), (32, 128, 64)),
             ("Zab,Zac->Zbc", (32, 128, 128), (32, 128, 64)), ("Zab,Zcb->Zca", (32, 128, 64), (32, 128, 64)),
             ("Zab,Zca->Zcb", (32, 128, 64), (32, 128, 128)), ("Zab,Zac->Zcb", (32, 128, 64), (32, 128, 128))]


@pytest.mark.parametrize("spec,sa,sb", ATTENTION)
def test_batched_products_are_matrix_products(spec: str, sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    """One matrix product per sample (32), never one matrix-vector product per sample and row (32 x 128),
    which reads a whole matrix per row: 2.7x slower for G V^T."""
    assert _matmul_calls(spec, sa, sb) == 32
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    np.testing.assert_allclose(ops_numpy.contract(spec, a, b), np.einsum(spec, a, b), rtol=1e-12, atol=1e-10)
