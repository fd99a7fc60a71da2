"""dlmath's numeric layer: generated NumPy and PyTorch kernels from the derived equations, and benchmarks.

This package never imports hypothesis or pytest.
"""

from __future__ import annotations

from dlmath import _packages

_packages.require()  # one line with the fix if another distribution owns derive, numeric or verify

from .kernel import InputError, Kernel, clear_cache, compile, source, trace

__all__ = ["compile", "source", "Kernel", "InputError", "clear_cache", "trace"]
