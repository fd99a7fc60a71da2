"""Front ends: programs made from other notations. :mod:`derive.frontends.torch` captures PyTorch code
(``derive.from_torch``); it imports torch only when called."""

from __future__ import annotations

from typing import Any

__all__ = ["from_torch"]


def from_torch(module_or_function: Any, *example_args: Any, **options: Any) -> Any:
    """See :func:`derive.frontends.torch.from_torch` (imported on first use: torch loads only then)."""
    from .torch import from_torch as capture

    return capture(module_or_function, *example_args, **options)
