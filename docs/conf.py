"""Sphinx configuration of the dlmath documentation.

Everything is local: the built-in alabaster theme, MathJax for math (loaded by the reader's browser), no
intersphinx. The equations and outputs on the site are produced at build time by the local extension
``docs/_ext/dlmath_docs.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # the packages, also when dlmath is not installed

project = "dlmath"
author = "the dlmath authors"
copyright = "2024, the dlmath authors"
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "dlmath_docs",
]

root_doc = "index"
exclude_patterns = ["_build"]
templates_path: list[str] = []
nitpicky = False

# autodoc: signatures as written, type hints in the description, members in source order
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "alabaster"
html_title = "dlmath"
html_static_path: list[str] = []
html_theme_options = {
    "description": "derive, print, generate and verify the mathematics of deep learning",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "230px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
html_show_sourcelink = True
