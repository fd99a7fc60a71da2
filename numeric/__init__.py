"""dlmath's numeric layer: generated NumPy and PyTorch kernels from the derived equations, and benchmarks.

This package never imports hypothesis or pytest.
"""

from __future__ import annotations

from .kernel import InputError, Kernel, clear_cache, compile, source, trace

__all__ = ["compile", "source", "Kernel", "InputError", "clear_cache", "trace"]
