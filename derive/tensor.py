"""The tensor IR and its primitive table (the families live in :mod:`derive.primitives`).

This module is the stable import point: ``from derive.tensor import Einsum, map_, ...``.
"""

from __future__ import annotations

from .primitives import *  # noqa: F403
from .primitives import PRIMITIVES, __all__  # noqa: F401
from .primitives.contraction import _axis, _centered, _constant_along, _dims  # noqa: F401
from .primitives.elementwise import _TMP, _derivative  # noqa: F401
