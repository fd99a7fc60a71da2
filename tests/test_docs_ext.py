"""The docs extension's guard against pages that load from the network."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docs" / "_ext"))

dlmath_docs = pytest.importorskip("dlmath_docs")


@pytest.mark.parametrize("html", [
    '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>',
    "<script defer src='//cdn.example.org/x.js'></script>",
    '<link rel="stylesheet" href="http://fonts.example.org/css">',
    '<img alt="x" src="https://example.org/logo.png">',
])
def test_remote_loads_are_found(html: str) -> None:
    assert dlmath_docs._REMOTE.search(html)


@pytest.mark.parametrize("html", [
    '<script defer="defer" src="../_static/mathjax/tex-chtml.js"></script>',
    '<link rel="stylesheet" href="_static/alabaster.css">',
    '<a href="https://deeplearningmath.org">the book</a>',
    '<img src="../_images/softmax_regression.png">',
])
def test_local_loads_and_links_pass(html: str) -> None:
    assert not dlmath_docs._REMOTE.search(html)
