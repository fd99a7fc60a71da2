"""No code from data: the package has exactly one place that executes code (``numeric.kernel.run_generated``,
which runs a module dlmath generated), and no call to a parser that evaluates text.

The test reads every module of the package with :mod:`ast` and fails on any call of ``eval``, ``exec``,
``builtins.compile``, ``sympify``, ``S(...)``, ``nsimplify``, ``parse_expr`` or ``parse_latex``, or an import
of those names, outside that one function: a new call site has to be argued for here, in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("derive", "numeric", "verify", "dlmath")
#: calls that execute or parse text as code (SymPy's sympify/S/nsimplify/parse_expr evaluate strings)
FORBIDDEN = {"eval", "exec", "sympify", "nsimplify", "parse_expr", "parse_latex", "S", "__import__"}
#: the one allowed place: (file, function) -> the forbidden names it may call
ALLOWED = {("numeric/kernel.py", "run_generated"): {"exec", "compile"}}


def _called_name(f: ast.expr) -> str | None:
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return None


def _sites(path: Path) -> list[tuple[str, str, int]]:
    """(function, forbidden name, line) of every forbidden call or import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out: list[tuple[str, str, int]] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            here = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call):
                name = _called_name(child.func)
                # a bare S(...) is a local (the book's activation S); SymPy's is sp.S(...) or imported as S
                if name in FORBIDDEN and not (name == "S" and isinstance(child.func, ast.Name)):
                    out.append((here, name, child.lineno))
                # builtins.compile (not numeric.compile or torch.compile, which compile models, not text)
                if (isinstance(child.func, ast.Attribute) and child.func.attr == "compile"
                        and isinstance(child.func.value, ast.Name) and child.func.value.id == "builtins"):
                    out.append((here, "compile", child.lineno))
            if isinstance(child, ast.ImportFrom):
                for a in child.names:
                    if a.name in FORBIDDEN:
                        out.append((here, a.name, child.lineno))
            visit(child, here)

    visit(tree, "<module>")
    return out


def test_no_code_from_data() -> None:
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for func, name, line in _sites(path):
                if name not in ALLOWED.get((rel, func), set()):
                    found.append(f"{rel}:{line} {name}() in {func}")
    assert not found, ("code-executing or text-parsing calls outside numeric.kernel.run_generated (route "
                       "numbers through derive.tensor.as_number/as_expr, ast.literal_eval or float):\n"
                       + "\n".join(found))


def test_the_allowed_place_exists() -> None:
    """The allow-list is not stale: the one executing call is where the test says it is."""
    sites = _sites(ROOT / "numeric/kernel.py")
    assert {(f, n) for f, n, _ in sites} == {("run_generated", "exec"), ("run_generated", "compile")}


def test_the_scan_finds_a_new_call_site(tmp_path: Path) -> None:
    """The scan sees through aliases of the module and attribute calls (it can fail)."""
    p = tmp_path / "bad.py"
    p.write_text("import sympy as sp\nfrom sympy import sympify\n\ndef f(s):\n"
                 "    return sp.nsimplify(s) + eval(s) + sp.S(s)\n")
    names = sorted(n for _, n, _ in _sites(p))
    assert names == ["S", "eval", "nsimplify", "sympify"]
