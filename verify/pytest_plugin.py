"""pytest plugin: ``dlmath_verify`` checks your implementation of a zoo entry in your own test suite.

Installed with dlmath (entry point ``pytest11``)::

    def test_my_softmax_layer(dlmath_verify):
        dlmath_verify("softmax_regression", my_softmax_regression, backend="numpy")

The number of examples follows ``--dlmath-examples`` (default: the active hypothesis profile's
``max_examples``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings

from .check import Report, check


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("dlmath")
    group.addoption("--dlmath-examples", type=int, default=None,
                    help="examples per dlmath verification (default: the hypothesis profile's max_examples)")
    group.addoption("--dlmath-device", default="cpu", help="torch device for dlmath verification")


@pytest.fixture
def dlmath_verify(request: Any) -> Callable[..., Report]:
    """``dlmath_verify(model, implementation=None, **kwargs)`` -> :class:`verify.Report` (raises on mismatch)."""
    examples = request.config.getoption("--dlmath-examples") or settings().max_examples
    device = request.config.getoption("--dlmath-device")

    def run(model: Any, implementation: Callable[..., Any] | None = None, **kwargs: Any) -> Report:
        kwargs.setdefault("examples", examples)
        kwargs.setdefault("device", device)
        return check(model, implementation=implementation, **kwargs)

    return run
