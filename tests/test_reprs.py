"""Notebook displays: programs (lists of equations) as aligned LaTeX, reports as a short table."""

from __future__ import annotations

import re

import derive
import verify


def _rows(tex: str) -> list[str]:
    """The top-level rows of an aligned block (row breaks inside a nested matrix or aligned block stay)."""
    assert tex.startswith("$$\\begin{aligned}") and tex.endswith("\\end{aligned}$$"), tex
    body = tex[len("$$\\begin{aligned}") : -len("\\end{aligned}$$")]
    rows, depth, start, i = [], 0, 0, 0
    while i < len(body):
        if body.startswith("\\begin{", i):
            depth += 1
        elif body.startswith("\\end{", i):
            depth -= 1
        elif body.startswith("\\\\", i) and depth == 0:
            rows.append(body[start:i])
            start = i + 2
            i += 2
            continue
        i += 1
    return [*rows, body[start:]]


def test_backprop_and_programs_render_as_aligned_latex() -> None:
    m = derive.models.get("softmax_regression")
    bp = derive.backprop(m)
    assert isinstance(bp, list) and all(isinstance(e, derive.Equation) for e in bp)
    rows = _rows(bp._repr_latex_())
    assert [r.split(" &= ")[0] for r in rows] == [derive.latex(e).split(" = ")[0] for e in bp]
    assert rows[0].replace(" ", "") == r"\delta&=\hat{y}-y"
    # the forward program and Hessian blocks too; one aligned row per equation, each with one "&="
    for eqs in (m.equations, derive.hessian(derive.models.get("logistic_regression"), "w"),
                derive.forward_mode(derive.models.get("autodiff_example"), "theta"),
                derive.backprop(derive.models.get("rnn"))):
        rows = _rows(eqs._repr_latex_())
        assert len(rows) == len(eqs) and all(r.count("&=") == 1 for r in rows), rows


def test_report_shows_a_short_table() -> None:
    m = derive.models.get("sigmoid")
    report = verify.check(m, backend="numpy", examples=2)
    html = report._repr_html_()
    cells = re.findall(r"<td[^>]*>(.*?)</td>", html)
    assert cells[0::2] == list(report.checks)
    assert [float(c) for c in cells[1::2]] == [float(f"{v:.1e}") for v in report.checks.values()]
    assert "sigmoid</b>: 2 examples passed" in html
    text = str(report).splitlines()
    assert text[0] == "sigmoid: 2 examples passed (numpy, cpu, float64)"
    assert text[1].startswith("  reference: torch autograd on the zoo's reference") and "reference: torch" in html
    assert len(text) == 2 + len(report.checks)
    assert repr(report).startswith("<Report sigmoid: 2 examples") and "\n" not in repr(report)
