"""Sphinx configuration of the dlmath documentation.

Everything is local, and the site works offline: the built-in alabaster theme, MathJax bundled with the
site (``sphinx-mathjax-offline`` copies it into ``_static/mathjax``), no intersphinx, no script or style
sheet from the network (the build fails if a page loads one). The equations, outputs and pictures on the
site are produced at build time by the local extension ``docs/_ext/dlmath_docs.py`` (the zoo pages, the
``dlmath-run``/``dlmath-cli`` transcripts) and by sphinx-gallery (``docs/examples/`` run into
``docs/auto_examples/``).
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
import dlmath  # noqa: E402

release = version = dlmath.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 bundled into _static/mathjax: equations render offline
    "sphinx_gallery.gen_gallery",
    "dlmath_docs",
]

root_doc = "index"
exclude_patterns = ["_build", "examples/README.rst", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.json", "auto_examples/*.md5"]
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
html_static_path = ["_static"]
html_css_files = ["dlmath.css"]
html_theme_options = {
    "description": "derive, print, generate and verify the mathematics of deep learning",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "230px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
html_show_sourcelink = True

# the gallery: docs/examples/*.py run at build time, their figures and output captured
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "write_computation_times": False,
    "show_memory": False,
    "show_signature": False,
    "remove_config_comments": True,
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
    "within_subsection_order": "sphinx_gallery.sorting.FileNameSortKey",
}

# the zoo: one page per entry, written to docs/zoo/ when the build starts (dlmath_docs)
dlmath_verify_examples = 3  # hypothesis examples of the verification run on each entry's page
