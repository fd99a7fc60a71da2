"""pytest plugin: ``dlmath_verify`` checks your implementation of a zoo entry in your own test suite.

Installed with dlmath (entry point ``pytest11``)::

    def test_my_softmax_layer(dlmath_verify):
        dlmath_verify("softmax_regression", my_softmax_regression, backend="numpy")

The number of examples follows ``--dlmath-examples`` (default: the active hypothesis profile's
``max_examples``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .check import Report

# verify.check (PyTorch, hypothesis) is imported when the fixture is used: the plugin loads in every pytest
# run of the environment, and a run that does not verify anything should not pay for PyTorch


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("dlmath")
    group.addoption("--dlmath-examples", type=_examples, default=None,
                    help="examples per dlmath verification (default: the hypothesis profile's max_examples)")
    group.addoption("--dlmath-device", default="cpu", help="torch device for dlmath verification")


def _examples(text: str) -> int:
    """``--dlmath-examples N``: an integer >= 1 (0 would silently mean the profile's default)."""
    import argparse

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dlmath-examples takes an integer >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--dlmath-examples takes an integer >= 1, got {n}")
    return n


@pytest.fixture
def dlmath_verify(request: Any) -> Callable[..., Report]:
    """``dlmath_verify(model, implementation=None, **kwargs)`` -> :class:`verify.Report` (raises on mismatch)."""
    from hypothesis import settings

    from .check import check

    examples = request.config.getoption("--dlmath-examples")
    if examples is None:
        examples = settings().max_examples
    device = request.config.getoption("--dlmath-device")

    def run(model: Any, implementation: Callable[..., Any] | None = None, **kwargs: Any) -> Report:
        kwargs.setdefault("examples", examples)
        kwargs.setdefault("device", device)
        return check(model, implementation=implementation, **kwargs)

    return run
