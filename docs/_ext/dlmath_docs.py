r"""Sphinx directives whose content dlmath produces at build time, and the zoo's pages.

When the build starts, one page per zoo entry is written to ``docs/zoo/NAME.rst`` (generated, not
committed; pages of entries that no longer exist are removed), each holding ``.. dlmath-entry:: NAME``.

``.. dlmath-entry:: NAME``
    The page of one zoo entry: title, book section, options, dimensions, parameters and inputs with their
    symbolic shapes; a picture of its program as a graph (:func:`dlmath.plot.draw_program`); the forward
    program, the backpropagation (adjoint) program and the Hessian blocks the entry declares, as
    ``.. math::`` blocks with one equation per line; the generated NumPy and PyTorch modules; and the
    verification it passes, run while the page is built (``verify.check`` with ``dlmath_verify_examples``
    hypothesis examples, a table of its comparisons). Every equation is printed by :mod:`derive`.

``.. dlmath-zoo::``
    Without arguments: the index of the zoo, a table of every entry (linked to its page) and the toctree
    of the pages. With names as arguments: those entries' equations as sections of the current page.

``.. dlmath-run::``
    Runs its content, statement by statement, as an interactive Python session and shows the transcript
    (``>>>`` lines and what they print or return). Statements share one namespace per page. With
    ``:math:`` the value of the last expression (a LaTeX string, or a list of them) is also rendered.
    With ``:raises: NAME`` the last statement must raise the exception class ``NAME``; the transcript
    then ends with its message, as the interpreter would show it.

``.. dlmath-cli:: dlmath COMMAND ARGS...``
    Runs the ``dlmath`` command line in-process (``verify.cli.main``) and shows the command and its
    output. ``:returncode: N`` is the expected exit status (default 0); ``:language: LANG`` highlights
    the output in a block of its own; ``:math:`` also renders each output line as an equation.

Any failure (an exception, an unexpected exit status) is reported as an error at the directive, so the
``-W`` build fails. Pages that use these directives are re-read on every build, so a change in
``derive/``, ``numeric/`` or ``verify/`` always reaches the site.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import shlex
import traceback
from collections.abc import Iterable, Sequence
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

__all__ = ["setup", "zoo_rst", "math_rst"]

_ENV_KEY = "dlmath_docnames"


# -- rST helpers --------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    """Escape inline-markup characters of plain text for rST."""
    return re.sub(r"([\\`*_|\[\]<>])", r"\\\1", text)


def _align(eq: str) -> str:
    """``lhs = rhs`` -> ``lhs &= rhs`` at the first top-level ``=`` (for multi-line math blocks); an equation that
    is aligned already (an ``aligned`` block with its definitions below) is left as it is."""
    if "&" in eq:
        return eq
    depth = 0
    for i, ch in enumerate(eq):
        if ch in "{(":
            depth += 1
        elif ch in "})":
            depth -= 1
        elif ch == "=" and depth == 0 and eq[i - 1 : i] == " ":
            return eq[:i] + "&" + eq[i:]
    return eq


def math_rst(equations: Sequence[str], indent: str = "") -> list[str]:
    """A ``.. math::`` block showing ``equations`` one per line, aligned at their ``=`` signs."""
    eqs = [e.strip() for e in equations if e.strip()]
    if not eqs:
        return []
    if len(eqs) > 1:
        eqs = [_align(e) for e in eqs]
    lines = [f"{indent}.. math::", ""]
    for i, e in enumerate(eqs):
        if i:
            lines.append("")
        lines.extend(f"{indent}   {line}" for line in e.splitlines())
    lines.append("")
    return lines


def _section(title: str, char: str) -> list[str]:
    return [title, char * max(len(title), 4), ""]


def _literal(text: str) -> str:
    return f"``{text}``"


def _shape_cell(shape: Sequence[Any]) -> str:
    """A shape as rST: ``scalar``, or ``:math:`(K, p)```."""
    import sympy as sp

    if not shape:
        return "scalar"
    return ":math:`(" + ", ".join(sp.latex(d) for d in shape) + ")`"


# -- the zoo ------------------------------------------------------------------------------------------


def _tensor_rows(m: Any) -> list[list[str]]:
    """Rows of the parameters-and-inputs table of a model."""
    grads = set(m.grad_names)
    rows = []
    for kind, table in (("parameter", m.params), ("input", m.inputs)):
        for name, v in table.items():
            array = [m.sample, *v.shape] if v.batched and m.sample is not None else list(v.shape)
            rows.append(
                [
                    _literal(name),
                    kind + (", per sample" if v.batched else ""),
                    f":math:`{v.tex}`",
                    _shape_cell(v.shape),
                    _shape_cell(array),
                    "yes" if name in grads else "no",
                ]
            )
    return rows


def _table(caption: str, header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [f".. list-table:: {caption}", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" for cell in row[1:])
    lines.append("")
    return lines


def _mean_row(m: Any) -> str | None:
    """The model's loss over the batch, as derive prints it (``\\mathcal{C} = \\frac1n \\sum_i C^{(i)}``)."""
    from derive.latex import aligned

    if m.sample is None:
        return None
    rows = aligned([m.equations[-1]], m).split(r"\\")
    if len(rows) != 2:
        return None
    return rows[1].replace("&=", "=", 1)


def _differs(a: Sequence[str], b: Sequence[str]) -> bool:
    return list(a) != list(b)


def entry_rst(name: str) -> list[str]:
    """The rST section of one zoo entry; every equation in it is printed by ``derive``."""
    import derive
    from derive.latex import constants_tex, program_tex

    m = derive.models.get(name)
    opts = derive.models.options(name)
    lines = [f".. _zoo-{name}:", ""]
    lines += _section(f"{_literal(name)} ({m.section})", "-")
    lines += [f"*{_escape(m.title)}*, book {_escape(m.section)}.", ""]
    call = f'derive.models.get("{name}")'
    if opts:
        shown = ", ".join(f"{k}={v!r}" for k, v in opts.items())
        lines += [f"Built by {_literal(call)}; options (defaults): {_literal(shown)}.", ""]
    else:
        lines += [f"Built by {_literal(call)}; no options.", ""]
    if m.dims:
        import sympy as sp

        dims = ", ".join(
            f":math:`{sp.latex(sym)}` = {m.defaults.get(k, '?')}" + (" (samples)" if sym == m.sample else "")
            for k, sym in m.dims.items()
        )
        lines += [f"Dimensions (default sizes): {dims}.", ""]
    if m.diff_inputs:
        g = m.inputs.get("G")
        shown = f" (:math:`{g.tex}` in the equations)" if g is not None else ""
        lines += [
            "A layer entry: its loss is :math:`C = \\sum G \\odot \\text{out}`, summed over the batch, so "
            f"its gradients are the layer's vector-Jacobian products with the upstream gradient ``G``{shown}; "
            "gradients are reported for " + ", ".join(_literal(k) for k in m.grad_names) + ".",
            "",
        ]
    rows = _tensor_rows(m)
    if rows:
        lines += _table(
            f"Parameters and inputs of {_literal(name)}",
            ["name", "kind", "book symbol", "shape in the equations", "array shape", "gradient"],
            rows,
        )

    update = any(e.kind == "update" for e in m.equations)
    lines += _section(("Update rule" if update else "Forward program") + f" of {_literal(name)}", "~")
    L = m.options.get("layers") if isinstance(m.options.get("layers"), int) else None
    lines += math_rst(program_tex(m.equations, layers=L, model=m))
    mean = _mean_row(m)
    if mean and not update:
        lines += ["The loss of a batch:", "", *math_rst([mean])]
    consts = constants_tex(m)
    if consts:
        lines += ["with the hyperparameters (the entry's options):", "", *math_rst([consts])]

    if not update and m.grad_names:
        bp = derive.backprop(m)
        per_sample, batch = program_tex(bp, layers=L, model=m), program_tex(bp, batch=True, layers=L, model=m)
        lines += _section(f"Backpropagation in {_literal(name)}", "~")
        where = ", per sample:" if m.sample is not None else ":"
        lines += [f"The adjoint program, ``derive.backprop(m)``{where}", "", *math_rst(per_sample)]
        if _differs(per_sample, batch):
            lines += ["In batch form (``batch=True``):", "", *math_rst(batch)]

    for p in m.hessian_wrt:
        h = derive.hessian(m, p)
        per_sample, batch = program_tex(h, model=m), program_tex(h, batch=True, model=m)
        lines += _section(f"Hessian of {_literal(name)} in {_literal(p)}", "~")
        lines += [
            f'``derive.hessian(m, "{p}")``' + (", per sample:" if _differs(per_sample, batch) else ":"),
            "",
            *math_rst(per_sample),
        ]
        if _differs(per_sample, batch):
            lines += ["In batch form:", "", *math_rst(batch)]
    return lines


def zoo_rst(names: Sequence[str] | None = None) -> list[str]:
    """The rST of zoo entries as sections of one page: a summary table, then one section per entry."""
    import derive

    names = list(names) if names else derive.models.names()
    rows = []
    for name in names:
        m = derive.models.get(name)
        rows.append([f":ref:`{name} <zoo-{name}>`", _escape(m.section), _escape(m.title)])
    lines = _table("The entries, in book order", ["entry", "book", "what"], rows)
    for name in names:
        lines += entry_rst(name)
    return lines


#: where the entry pages go, relative to the source directory
ZOO_DIR = "zoo"

#: gallery examples whose pictures belong on an entry's page too: entry -> (example, caption)
GALLERY = {
    "autodiff_example": ("plot_autodiff_graph", "Fig 4.7 with its forward values and reverse-mode adjoints"),
    "rosenbrock": ("plot_rosenbrock", "The surface with gradient-descent and Newton paths"),
    **{a: ("plot_activations", "The activation functions and their derivatives, from the generated kernels")
       for a in ("sigmoid", "tanh", "relu", "leaky_relu", "softplus")},
}


def index_rst() -> list[str]:
    """The zoo's index: one row per entry, linked to its page, and the toctree of the pages."""
    import derive

    rows = []
    for name in derive.models.names():
        section, title = derive.models.about(name)
        rows.append([f":doc:`{name} <{ZOO_DIR}/{name}>`", _escape(section), _escape(title)])
    lines = _table("The entries, in book order", ["entry", "book", "what"], rows)
    lines += [".. toctree::", "   :hidden:", "   :maxdepth: 1", ""]
    lines += [f"   {ZOO_DIR}/{name}" for name in derive.models.names()]
    return [*lines, ""]


def graph_png(name: str, path: Any) -> None:
    """Draw the program of entry ``name`` (:func:`dlmath.plot.draw_program`) into the PNG file ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import derive
    import dlmath.plot

    m = derive.models.get(name)
    fig = dlmath.plot.draw_program(m)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    if not path.exists() or path.read_bytes() != buf.getvalue():
        path.write_bytes(buf.getvalue())


def _code_rst(title: str, source: str, open_: bool) -> list[str]:
    lines = [".. raw:: html", "", f"   <details{' open' if open_ else ''}><summary>{title}</summary>", ""]
    lines += [".. code-block:: python", ""]
    lines += [f"   {line}" if line else "" for line in source.splitlines()]
    return [*lines, "", ".. raw:: html", "", "   </details>", ""]


def page_rst(name: str, examples: int, graph: str) -> list[str]:
    """The whole page of entry ``name``: :func:`entry_rst` with the title as the page title, the program's
    graph (the image file ``graph``), the generated code and a verification run with ``examples``."""
    import derive
    import numeric
    import verify

    m = derive.models.get(name)
    lines = entry_rst(name)
    lines[2:4] = _section(lines[2], "=")[:2]  # the entry's section title becomes the page title
    body = lines[4:]
    head = lines[:4]
    fig = [f".. figure:: {graph}", "   :alt: the program of " + name + " as a graph", "",
           "   The program as a graph: parameters and inputs on the left, each equation one node, in the order "
           "of evaluation" + (" (dashed: the state carried to the next time step)" if m.scan else "") + ".", ""]
    gallery = GALLERY.get(name)
    if gallery:
        ex, caption = gallery
        fig += [f".. figure:: /auto_examples/images/sphx_glr_{ex}_001.png", f"   :target: ../auto_examples/{ex}.html",
                "", f"   {caption} (:doc:`the gallery example </auto_examples/{ex}>`).", ""]
    code = _section(f"Generated code of {_literal(name)}", "~")
    code += ["``numeric.source(m, backend)``: the module ``numeric.compile(m, backend)`` runs, one line per "
             "equation with the equation's LaTeX above it.", ""]
    code += _code_rst("NumPy", numeric.source(m, "numpy"), True)
    code += _code_rst("PyTorch", numeric.source(m, "torch"), False)
    report = verify.check(m, examples=examples, derandomize=True)
    ver = _section(f"Verification of {_literal(name)}", "~")
    ver += [f"``verify.check(m, examples={examples}, derandomize=True)``, run when this page was built: "
            f"{report.examples} hypothesis-drawn examples (shapes and values from the entry's declared domains), "
            f"float64, {report.backend} on {report.device}, every comparison within its tolerance "
            f"(the kernels: relative {report.rtol:g}). More examples: ``dlmath verify {name} --examples 200``.", ""]
    ver += _table(f"What ``verify.check`` compared for {_literal(name)}", ["comparison", "largest scaled error"],
                  [[_escape(k), f"{v:.1e}"] for k, v in report.checks.items()])
    return [*head, *body[:_first_subsection(body)], *fig, *body[_first_subsection(body):], *code, *ver]


def _first_subsection(lines: Sequence[str]) -> int:
    """Index of the first ``~~~`` section title in ``lines`` (the forward program)."""
    for i in range(1, len(lines)):
        if lines[i] and set(lines[i]) == {"~"} and lines[i - 1]:
            return i - 1
    return len(lines)


def write_pages(app: Sphinx) -> None:
    """Write ``docs/zoo/NAME.rst`` for every zoo entry (only where it changed) and remove stale pages."""
    from pathlib import Path

    import derive

    out = Path(app.srcdir) / ZOO_DIR
    (out / "_graphs").mkdir(parents=True, exist_ok=True)
    names = derive.models.names()
    for name in names:
        page = out / f"{name}.rst"
        text = (f".. generated by docs/_ext/dlmath_docs.py: do not edit\n\n.. dlmath-entry:: {name}\n")
        if not page.exists() or page.read_text() != text:
            page.write_text(text)
    for stale in out.glob("*.rst"):
        if stale.stem not in names:
            stale.unlink()
    for stale in (out / "_graphs").glob("*.png"):
        if stale.stem not in names:
            stale.unlink()


# -- directives ---------------------------------------------------------------------------------------


class _DlmathDirective(SphinxDirective):
    def note_doc(self) -> None:
        docs: set[str] = getattr(self.env, _ENV_KEY, set())
        docs.add(self.env.docname)
        setattr(self.env, _ENV_KEY, docs)

    def parse(self, lines: Sequence[str], titles: bool = False) -> list[nodes.Node]:
        container = nodes.Element()
        content = StringList(list(lines), source=f"<generated by {self.name} in {self.env.docname}>")
        if titles:
            nested_parse_with_titles(self.state, content, container)
        else:
            self.state.nested_parse(content, self.content_offset, container)
        return list(container.children)

    def fail(self, what: str, exc: BaseException) -> Exception:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-4))
        return self.error(f"{self.name}: {what} failed: {type(exc).__name__}: {exc}\n{tb}")


class ZooDirective(_DlmathDirective):
    """``.. dlmath-zoo:: [NAME ...]``: the zoo's index, or the named entries' sections, generated by derive."""

    optional_arguments = 1
    final_argument_whitespace = True

    def run(self) -> list[nodes.Node]:
        self.note_doc()
        names = self.arguments[0].split() if self.arguments else None
        try:
            lines = zoo_rst(names) if names else index_rst()
        except Exception as e:
            raise self.fail("generating the zoo", e) from e
        return self.parse(lines, titles=bool(names))


class EntryDirective(_DlmathDirective):
    """``.. dlmath-entry:: NAME``: the page of one zoo entry (equations, graph, code, verification)."""

    required_arguments = 1
    option_spec = {"examples": directives.positive_int}

    def run(self) -> list[nodes.Node]:
        from pathlib import Path

        self.note_doc()
        name = self.arguments[0]
        examples = self.options.get("examples", self.config.dlmath_verify_examples)
        graph = Path(self.env.srcdir) / ZOO_DIR / "_graphs" / f"{name}.png"
        try:
            graph.parent.mkdir(parents=True, exist_ok=True)
            graph_png(name, graph)
            lines = page_rst(name, examples, f"/{ZOO_DIR}/_graphs/{name}.png")
        except Exception as e:
            raise self.fail(f"generating the page of {name!r}", e) from e
        return self.parse(lines, titles=True)


class RunDirective(_DlmathDirective):
    """``.. dlmath-run::``: Python statements run at build time, shown as an interactive session."""

    has_content = True
    option_spec = {"math": directives.flag, "raises": directives.unchanged_required}

    def run(self) -> list[nodes.Node]:
        self.note_doc()
        ns = self.env.temp_data.setdefault("dlmath_namespace", {"__name__": "__dlmath_docs__"})
        source = "\n".join(self.content)
        try:
            tree = ast.parse(source)
        except SyntaxError as e:
            raise self.fail("parsing", e) from e
        lines = source.splitlines()
        transcript: list[str] = []
        value: Any = None
        raises = self.options.get("raises")
        filename = f"<{self.env.docname}.rst:{self.lineno}>"
        for i, stmt in enumerate(tree.body):
            start = min([stmt.lineno, *(d.lineno for d in getattr(stmt, "decorator_list", []))])
            seg = lines[start - 1 : stmt.end_lineno]
            transcript.append(">>> " + seg[0])
            transcript.extend("... " + line for line in seg[1:])
            if hasattr(stmt, "body"):
                transcript.append("...")
            buf = io.StringIO()
            last = i == len(tree.body) - 1
            try:
                with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                    if isinstance(stmt, ast.Expr):
                        code = compile(ast.Expression(stmt.value), filename, "eval")
                        value = eval(code, ns)
                        if value is not None:
                            print(repr(value))
                    else:
                        exec(compile(ast.Module([stmt], []), filename, "exec"), ns)
                        value = None
            except Exception as e:
                transcript.extend(buf.getvalue().rstrip("\n").splitlines())
                if raises and last and type(e).__name__ == raises:
                    cls = (
                        type(e).__name__
                        if type(e).__module__ == "builtins"
                        else f"{type(e).__module__}.{type(e).__name__}"
                    )
                    transcript += ["Traceback (most recent call last):", "  ...", f"{cls}: {e}"]
                    break
                raise self.fail(f"running line {start} of the block", e) from e
            transcript.extend(buf.getvalue().rstrip("\n").splitlines())
            if raises and last:
                raise self.error(f"{self.name}: the last statement was expected to raise {raises}")
        text = "\n".join(transcript)
        block = nodes.literal_block(text, text, language="pycon")
        self.set_source_info(block)
        out: list[nodes.Node] = [block]
        if "math" in self.options:
            eqs = [value] if isinstance(value, str) else value
            if not isinstance(eqs, (list, tuple)) or not all(isinstance(e, str) for e in eqs):
                raise self.error(
                    f"{self.name}: with :math: the last expression must give a LaTeX string "
                    f"or a list of them, not {type(value).__name__}"
                )
            out += self.parse(math_rst(eqs))
        return out


class CliDirective(_DlmathDirective):
    """``.. dlmath-cli:: dlmath COMMAND ...``: the command line, run in-process at build time."""

    required_arguments = 1
    final_argument_whitespace = True
    option_spec = {
        "returncode": directives.nonnegative_int,
        "language": directives.unchanged_required,
        "math": directives.flag,
    }

    def run(self) -> list[nodes.Node]:
        from verify.cli import main

        self.note_doc()
        command = " ".join(self.arguments[0].split())
        argv = shlex.split(command)
        if not argv or argv[0] != "dlmath":
            raise self.error(f"{self.name}: the command must start with 'dlmath', got {command!r}")
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                try:
                    rc = main(argv[1:])
                except SystemExit as e:  # argparse: --help, usage errors
                    rc = e.code if isinstance(e.code, int) else 1
        except Exception as e:
            raise self.fail(f"running {command!r}", e) from e
        want = self.options.get("returncode", 0)
        output = buf.getvalue().rstrip("\n")
        if rc != want:
            raise self.error(f"{self.name}: {command!r} exited with status {rc}, expected {want}:\n{output}")
        language = self.options.get("language")
        out: list[nodes.Node] = []
        if language:
            shown = f"$ {command}"
            out.append(nodes.literal_block(shown, shown, language="console"))
            out.append(nodes.literal_block(output, output, language=language))
        else:
            shown = f"$ {command}\n{output}" if output else f"$ {command}"
            out.append(nodes.literal_block(shown, shown, language="console"))
        for block in out:
            self.set_source_info(block)
        if "math" in self.options:
            out += self.parse(math_rst(output.splitlines()))
        return out


# -- regeneration on every build ------------------------------------------------------------------------


def _purge(app: Sphinx, env: BuildEnvironment, docname: str) -> None:
    getattr(env, _ENV_KEY, set()).discard(docname)


def _merge(app: Sphinx, env: BuildEnvironment, docnames: Iterable[str], other: BuildEnvironment) -> None:
    docs: set[str] = getattr(env, _ENV_KEY, set())
    docs |= getattr(other, _ENV_KEY, set())
    setattr(env, _ENV_KEY, docs)


def _outdated(
    app: Sphinx, env: BuildEnvironment, added: set[str], changed: set[str], removed: set[str]
) -> list[str]:
    """Re-read every page whose content dlmath generates: the code may have changed since."""
    return sorted(d for d in getattr(env, _ENV_KEY, set()) if d in env.found_docs and d not in removed)


_REMOTE = re.compile(r"""<(?:script|img|iframe)\b[^>]*\bsrc=["'](?:https?:)?//|<link\b[^>]*\bhref=["'](?:https?:)?//""",
                     re.IGNORECASE)


def check_offline(app: Sphinx, exc: BaseException | None) -> None:
    """Fail the build if a page loads a script, style sheet, image or frame from the network."""
    from pathlib import Path

    if exc is not None or app.builder.format != "html":
        return
    bad = []
    for page in sorted(Path(app.outdir).rglob("*.html")):
        for hit in _REMOTE.finditer(page.read_text(encoding="utf-8", errors="replace")):
            bad.append(f"{page.relative_to(app.outdir)}: {hit.group(0)[:120]}")
    if bad:
        raise RuntimeError("pages load from the network (the site must work offline):\n  " + "\n  ".join(bad))


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("dlmath_verify_examples", 3, "env", [int])
    app.connect("builder-inited", write_pages)
    app.connect("build-finished", check_offline)
    app.add_directive("dlmath-entry", EntryDirective)
    app.add_directive("dlmath-zoo", ZooDirective)
    app.add_directive("dlmath-run", RunDirective)
    app.add_directive("dlmath-cli", CliDirective)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("env-get-outdated", _outdated)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True, "env_version": 1}
