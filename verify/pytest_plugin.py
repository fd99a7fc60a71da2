"""pytest plugin: ``dlmath_verify`` checks your implementation of a zoo entry in your own test suite.

Installed with dlmath (entry point ``pytest11``)::

    def test_my_softmax_layer(dlmath_verify):
        dlmath_verify("softmax_regression", my_softmax_regression, backend="numpy")

or, for your own PyTorch code (an ``nn.Module`` or a function of tensors) with its example arguments::

    def test_my_block(dlmath_verify):
        dlmath_verify(MyBlock(8), torch.randn(4, 8))   # derive.from_torch(module, *args), then verify.check

The number of examples follows ``--dlmath-examples`` (default: the active hypothesis profile's
``max_examples``); the examples are the same on every run (``--dlmath-seed`` or ``DLMATH_SEED`` draws
others), in CI and elsewhere.
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
    group.addoption("--dlmath-seed", type=_seed, default=None,
                    help="draw other examples (default: DLMATH_SEED, else 0: the same examples every run)")


def _examples(text: str) -> int:
    """``--dlmath-examples N``: an integer >= 1 (0 would silently mean the profile's default)."""
    import argparse

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dlmath-examples takes an integer >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--dlmath-examples takes an integer >= 1 (the number of examples per "
                                         f"verification), got {n}")
    return n


def _seed(text: str) -> int:
    import argparse

    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"--dlmath-seed takes a non-negative integer, got {text!r}")
    return n


@pytest.fixture
def dlmath_verify(request: Any) -> Callable[..., Report]:
    """``dlmath_verify(model, implementation=None, **kwargs)`` -> :class:`verify.Report` (raises on mismatch).

    ``model`` is a zoo name or a model (then a second positional argument is the implementation), or your
    PyTorch code, an ``nn.Module`` or a function of tensors, followed by its example arguments: it is captured
    with ``derive.from_torch(module, *args)`` and the derived gradients are checked against torch autograd
    through your code (hand-written backwards included). Keywords are those of :func:`verify.check`.
    """
    config = request.config
    examples = config.getoption("--dlmath-examples")
    device = config.getoption("--dlmath-device")
    seed = config.getoption("--dlmath-seed")

    def run(model: Any, *args: Any, implementation: Any = None, **kwargs: Any) -> Report:
        __tracebackhide__ = True  # a failure shows the report, not dlmath's frames
        from .check import Mismatch, check

        m, implementation = _model(model, args, implementation, kwargs)
        if examples is not None:
            kwargs.setdefault("examples", examples)
        else:
            from hypothesis import settings

            kwargs.setdefault("examples", settings().max_examples)
        kwargs.setdefault("device", device)
        if seed is not None:
            kwargs.setdefault("seed", seed)
        from derive import ModelError

        try:
            return check(m, implementation=implementation, **kwargs)
        except (Mismatch, ModelError) as e:
            # raised afresh here: pytest shows the test's line and the report, not hypothesis' and dlmath's
            # frames (errors of the implementation are in the report; other errors keep their traceback: they
            # may come from a reference= of yours)
            raise e.with_traceback(None) from None

    return run


def _model(model: Any, args: tuple[Any, ...], implementation: Any, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The model to check and the implementation: a zoo name or model as given (a positional argument after
    it is the implementation), else PyTorch code captured with its example arguments."""
    __tracebackhide__ = True
    from derive.program import Model

    if isinstance(model, (str, Model)):
        if len(args) > 1 or (args and implementation is not None):
            raise TypeError(f"dlmath_verify({model if isinstance(model, str) else model.name!r}, ...) takes one "
                            f"implementation, got {len(args) + (implementation is not None)}; options go by keyword")
        return model, (args[0] if args else implementation)
    if not callable(model):
        raise TypeError(f"dlmath_verify takes a zoo name, a model, or a torch module or function with its example "
                        f"arguments, not {type(model).__name__}")
    if not args:
        raise TypeError(f"dlmath_verify({getattr(model, '__name__', type(model).__name__)}) needs example arguments "
                        "for PyTorch code, e.g. dlmath_verify(module, torch.randn(8, 3))")
    import derive

    return derive.from_torch(model, *args, name=kwargs.pop("name", None)), implementation
