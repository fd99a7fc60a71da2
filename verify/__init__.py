"""dlmath's verification layer: hypothesis strategies, independent PyTorch references, comparisons and
reports, and the ``dlmath`` command line."""

from __future__ import annotations

from .check import Mismatch, Report, check, compare, example, reproduce, resolve_reference
from .evaluate import eager_reference
from .references import REFERENCES, reference

__all__ = ["check", "Mismatch", "Report", "compare", "example", "reference", "REFERENCES", "resolve_reference",
           "reproduce", "eager_reference"]
