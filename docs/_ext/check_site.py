"""Look at the built site in headless Chromium with no network: every equation rendered, every picture there.

Usage (after ``make docs``; needs a ``chromium`` binary, e.g. Debian's package)::

    python docs/_ext/check_site.py [docs/_build/html] [--screenshot DIR]

Each page is opened from disk with every host name unresolvable (``--host-resolver-rules``), so anything
the page tried to fetch from the network would be missing. After MathJax has run (``--dump-dom`` with a
virtual time budget), each math element of the page must hold a rendered ``mjx-container`` and no
``mjx-merror``; each ``<img>`` must point at a file of the site. Exit status 1 and one line per problem
otherwise. ``--screenshot DIR`` also saves a PNG of a few pages to look at.
"""

from __future__ import annotations

import argparse
import html.parser
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

SHOTS = ("index.html", "zoo/softmax_regression.html", "zoo/autodiff_example.html", "auto_examples/plot_rosenbrock.html")


class _Page(html.parser.HTMLParser):
    """Counts math elements (Sphinx's ``class="math"``), rendered MathJax containers, errors and images."""

    def __init__(self) -> None:
        super().__init__()
        self.math = self.rendered = self.errors = 0
        self.images: list[str] = []
        self._depth: list[bool] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "math" in (a.get("class") or "").split():
            self.math += 1
        if tag == "mjx-container" and "MathJax" in (a.get("class") or "").split():
            self.rendered += 1
        if tag == "mjx-merror":
            self.errors += 1
        if tag == "img" and a.get("src"):
            self.images.append(a["src"] or "")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    sys.exit("no chromium binary found (Debian: apt-get install chromium)")


def browse(page: Path, profile: Path, *extra: str) -> str:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--disable-background-networking", "--no-first-run",
           "--virtual-time-budget=15000", *extra, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", nargs="?", default="docs/_build/html", type=Path)
    ap.add_argument("--screenshot", type=Path, help="save PNG screenshots of a few pages here")
    args = ap.parse_args(argv)
    site = args.site.resolve()
    problems: list[str] = []
    total = 0
    with tempfile.TemporaryDirectory() as tmp:
        profile = Path(tmp) / "profile"
        for page in sorted(site.rglob("*.html")):
            rel = page.relative_to(site)
            if rel.parts[0] in ("_modules", "_sources"):
                continue
            p = _Page()
            p.feed(browse(page, profile, "--dump-dom"))
            total += p.math
            if p.rendered < p.math:
                problems.append(f"{rel}: {p.math - p.rendered} of {p.math} equations not rendered")
            if p.errors:
                problems.append(f"{rel}: {p.errors} MathJax errors")
            for src in p.images:
                url = urlparse(src)
                if url.scheme not in ("", "file") or not (page.parent / unquote(url.path)).resolve().is_file():
                    problems.append(f"{rel}: picture {src} missing")
            print(f"{rel}: {p.math} equations, {p.rendered} rendered, {len(p.images)} pictures")
        if args.screenshot:
            args.screenshot.mkdir(parents=True, exist_ok=True)
            for rel_name in SHOTS:
                out = args.screenshot / (rel_name.replace("/", "_").replace(".html", ".png"))
                browse(site / rel_name, profile, f"--screenshot={out}", "--window-size=1280,2400",
                       "--hide-scrollbars")
    for line in problems:
        print("PROBLEM", line)
    print(f"{total} equations checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
