"""SymPy's PyTorch printer, without importing PyTorch.

``sympy.printing.pytorch`` imports torch when it is imported, only to read ``torch.__version__`` as the
default of a setting (``torch_version``) that its printing never uses. Generating torch source code is
symbolic work and should not pay PyTorch's import (seconds): the module is imported here with torch
hidden, unless torch is already imported. The printer's output is the same either way.
"""

from __future__ import annotations

import sys

if "torch" in sys.modules or "sympy.printing.pytorch" in sys.modules:
    from sympy.printing.pytorch import TorchPrinter
else:
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError: sympy skips it
    try:
        from sympy.printing.pytorch import TorchPrinter
    finally:
        del sys.modules["torch"]

__all__ = ["TorchPrinter"]
