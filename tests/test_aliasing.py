"""No kernel returns an argument, a view of one, or one array as two results (numeric.aliasing): autograd never
does, and a caller that updates one array before reading another's gradient would read a changed value."""

from __future__ import annotations

import ast
from typing import Any

import numpy as np
import pytest
import torch

import derive
import numeric
from numeric.aliasing import owned_return
from verify.check import example

BACKENDS = ["numpy", "torch"]


def _shares(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and a.numel() > 0
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return bool(np.shares_memory(a, b))
    return False


def _results(out: dict[str, Any]) -> list[tuple[str, Any]]:
    found = []
    for key, v in out.items():
        if isinstance(v, dict):
            found += [(f"{key}[{k!r}]", w) for k, w in v.items()]
        else:
            found.append((key, v))
    return found


def _assert_owned(m: derive.Model, backend: str, arrays: dict[str, np.ndarray], **options: Any) -> None:
    args: dict[str, Any] = arrays if backend == "numpy" else {k: torch.tensor(v) for k, v in arrays.items()}
    out = numeric.compile(m, backend, **options)(**args)
    results = _results(out)
    for i, (name, v) in enumerate(results):
        for a, x in args.items():
            assert not _shares(v, x), f"{m.name} ({backend}): {name} shares memory with the argument {a}"
        for other, w in results[:i]:
            assert not _shares(v, w), f"{m.name} ({backend}): {name} shares memory with {other}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", derive.models.names())
def test_no_zoo_kernel_returns_memory_of_its_arguments(name: str, backend: str) -> None:
    m = derive.models.get(name)
    _assert_owned(m, backend, example(m, 0, {}))
    if m.hessian_wrt:
        _assert_owned(m, backend, example(m, 0, {}), hessian=list(m.hessian_wrt))


# each returned an argument or a view of one before: the argument itself, its transpose, its broadcast
@pytest.mark.parametrize("text, shapes", [
    ("sum(x .* y)", {"x": "vector(n)", "y": "vector(n)"}),
    ("sum(A .* B)", {"A": "matrix(n, n)", "B": "matrix(n, n)"}),
    ("sum(A' .* B)", {"A": "matrix(n, n)", "B": "matrix(n, n)"}),
    ("sum(A * x)", {"A": "matrix(n, n)", "x": "vector(n)"}),
    ("sum(x .* x .* y)", {"x": "vector(n)", "y": "vector(n)"}),
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_gradient_equal_to_an_argument_is_a_copy(text: str, shapes: dict[str, str], backend: str) -> None:
    m = derive.parse(text, **shapes)
    arrays = {k: np.random.default_rng(0).normal(size=s) for k, s in m.shapes(n=4).items()}
    _assert_owned(m, backend, arrays)
    # and the copy is the value: the gradients agree with autograd
    import verify

    assert verify.check(m, backend=backend, examples=3, derandomize=True).examples == 3


def _wrapped(body: str, ret: str, args: tuple[str, ...] = ("x", "y")) -> set[str]:
    """The names ``owned_return`` wraps in ``ops.own`` (a copy)."""
    out = owned_return(list(args), ["    " + ln for ln in body.strip().splitlines()], ret)
    tree = ast.parse(out, mode="eval")
    return {ast.unparse(n.args[0]) for n in ast.walk(tree)
            if isinstance(n, ast.Call) and ast.unparse(n.func) == "ops.own"}


@pytest.mark.parametrize("body, ret, wrapped", [
    ("a = x + y", "{'a': a}", set()),  # arithmetic: a new array
    ("a = x", "{'a': a}", {"a"}),
    ("a = x.T\nb = a[None, :]", "{'b': b}", {"b"}),  # a view of a view
    ("a = np.broadcast_to(x, (3, 3))", "{'a': a}", {"a"}),
    ("a = x.expand(3, 3).reshape(9)", "{'a': a}", {"a"}),
    ("a = x * 2\nb = a.mul_(3)", "{'a': a, 'b': b}", {"b"}),  # an in-place method returns its array
    ("a = x * 2\nb = a", "{'a': a, 'b': b}", {"b"}),  # one array as two results: the second a copy
    ("a = x * 2", "{'a': a, 'b': a}", {"a"}),
    ("a = np.einsum('ij->ji', x)", "{'a': a}", {"a"}),  # one operand: a transpose, a view
    ("a = np.einsum('ij,jk->ik', x, y)", "{'a': a}", set()),  # a product: new
    ("a = x.sum(axis=0)\nb = ops.contract('ij,j->i', x, y)", "{'a': a, 'b': b}", set()),
    ("c = x * 1\na = torch.mul(y, 2, out=c)", "{'a': a, 'c': c}", {"c"}),
    ("a, b = ops.softmax_and_log(x, -1)", "{'a': a, 'b': b}", set()),  # two new arrays
    ("a, b = x, y", "{'a': a, 'b': b}", {"a", "b"}),
    ("a, b = torch.unbind(x)", "{'a': a}", {"a"}),
    ("h = x * 1\nfor t in range(3):\n    g = h\n    h = y", "{'g': g}", {"g"}),  # carried round a loop
    ("a = x * 1\nif flag:\n    a = y", "{'a': a}", {"a"}),  # either branch
    ("a = ops.written_over(torch.ops.aten.sigmoid_backward, u, y)", "{'a': a}", {"a"}),
    ("a = max(x, y)", "{'a': a}", {"a"}),
    ("a = some_function(x)", "{'a': a}", set()),  # (a plain call of the kernel's computes)
    ("a = (lambda v: v)(x)", "{'a': a}", {"a"}),  # unknown forms: a view of all they mention
])
def test_the_analysis_finds_every_view(body: str, ret: str, wrapped: set[str]) -> None:
    assert _wrapped(body, ret) == wrapped


def test_an_unchanged_return_keeps_its_text() -> None:
    ret = '{"loss": loss, "grad": {"x": g_x}}'
    assert owned_return(["x"], ["    loss = x.sum()", "    g_x = x * 2"], ret) == ret
    assert owned_return(["x"], ["    loss = x.sum()", "    g_x = x"], ret) == \
        '{"loss": loss, "grad": {"x": ops.own(g_x)}}'


@pytest.mark.parametrize("backend", BACKENDS)
def test_own_copies_arrays_and_passes_numbers(backend: str) -> None:
    from numeric import ops_numpy, ops_torch

    ops = ops_numpy if backend == "numpy" else ops_torch
    x = np.arange(6.0).reshape(2, 3)
    v = np.broadcast_to(x[0], (2, 3)) if backend == "numpy" else torch.tensor(x)[0].expand(2, 3)
    c = ops.own(v)
    assert not _shares(c, v) and c.shape == v.shape and np.array_equal(np.asarray(c), np.asarray(v))
    assert ops.own(1.5) == 1.5
