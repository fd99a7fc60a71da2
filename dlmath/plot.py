"""Pictures of programs: the computational graph of a model's equations.

:func:`program_graph` turns a program into a :mod:`networkx` graph (one node per parameter, input and
equation, an edge wherever an equation uses a variable); :func:`draw_program` draws it with matplotlib,
left to right in the order of evaluation, labelled with the book's symbols, optionally annotated with
values (e.g. the forward and reverse traces of :func:`numeric.trace`). Both import their libraries
(``pip install dlmath[plot]``) when called.

Example:
    >>> import derive, dlmath.plot
    >>> g = dlmath.plot.program_graph(derive.models.get("softmax_regression"))
    >>> sorted(g.predecessors("yhat"))
    ['z']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from derive.program import Equation, Model

__all__ = ["program_graph", "draw_program"]

#: node kind -> (face colour, marker) of :func:`draw_program`
STYLE = {
    "parameter": ("#f4a261", "s"),
    "input": ("#a8dadc", "s"),
    "component": ("#a8dadc", "s"),
    "carry": ("#d8f3dc", "s"),
    "forward": ("#e9ecef", "o"),
    "update": ("#e9ecef", "o"),
    "loss": ("#e76f51", "D"),
}


def program_graph(m: Model, program: Sequence[Equation] | None = None, components: bool = True) -> Any:
    """The dependency graph of ``program`` (default: the model's forward program) as a ``networkx.DiGraph``.

    Nodes are named as the variables (``W``, ``z``, ...) and carry ``kind`` (``parameter``, ``input``,
    ``component``, ``carry``, ``forward``, ``update``, ``loss``) and ``tex`` (the book's symbol). With
    ``components``, an element taken from a vector parameter or input (``theta_1``, as in Fig 4.7) is a
    node of its own, named ``theta[0]``. For a recurrence (one time step ``t``), the previous states
    (``h^{<t-1>}``) are ``carry`` nodes, and an edge marked ``recurrent`` goes from each new state back to
    its previous-state node.
    """
    import networkx as nx

    from derive.latex import latex
    from derive.primitives.indexing import Take
    from derive.tensor import Var, walk

    eqs = list(m.equations if program is None else program)
    defined = {e.lhs.name for e in eqs}
    g = nx.DiGraph()

    def is_component(n: Any) -> bool:
        return components and isinstance(n, Take) and isinstance(n.x, Var) and n.x.name not in defined

    def leaf(v: Any) -> str:
        if v.name not in g:
            kind = "parameter" if v.name in m.params else ("carry" if v.name in m.carries else "input")
            g.add_node(v.name, kind=kind, tex=v.tex)
        return str(v.name)

    for i, eq in enumerate(eqs):
        last = i == len(eqs) - 1 and eq.kind == "forward" and not m.is_update
        g.add_node(eq.lhs.name, kind="loss" if last else ("update" if eq.kind == "update" else "forward"),
                   tex=eq.lhs.tex)
        for n in walk([eq.rhs], stop=lambda x: isinstance(x, Var) or is_component(x)):
            if isinstance(n, Take) and isinstance(n.x, Var) and is_component(n):
                name = f"{n.x.name}[{n.index}]"
                g.add_node(name, kind="component", tex=latex(n))
                g.add_edge(name, eq.lhs.name)
            elif isinstance(n, Var) and n.name != eq.lhs.name:
                src = n.name if n.name in defined else leaf(n)
                g.add_edge(src, eq.lhs.name)
    if m.scan is not None and program is None:
        for prev, new in m.scan.carries:
            if prev in g and new in g:
                g.add_edge(new, prev, recurrent=True)
    return g


_LEAVES = ("parameter", "input", "component", "carry")


def _positions(g: Any) -> dict[str, tuple[float, float]]:
    """A layered layout, left to right in the order of evaluation: each equation one column right of its
    latest operand, each leaf just left of its first use (a target used only by the loss sits beside the
    loss, not at the far left); within a column, nodes ordered by the mean height of their neighbours in
    the columns already placed (a few barycentre sweeps, which remove most crossings)."""
    import networkx as nx

    col: dict[str, int] = {}
    for n in nx.topological_sort(g):
        if g.nodes[n]["kind"] not in _LEAVES:
            col[n] = 1 + max((col[p] for p in g.predecessors(n) if p in col), default=0)
    for n in g.nodes:
        if n not in col:
            col[n] = min((col[s] for s in g.successors(n)), default=1) - 1
    columns: dict[int, list[str]] = {}
    for n in g.nodes:  # insertion order: the program's order
        columns.setdefault(col[n], []).append(n)
    rank = {n: float(i) for nodes in columns.values() for i, n in enumerate(nodes)}

    def centre(nodes: list[str]) -> None:
        for i, n in enumerate(nodes):
            rank[n] = i - (len(nodes) - 1) / 2

    for nodes in columns.values():
        centre(nodes)
    keys = sorted(columns)
    for sweep in range(4):
        order = keys if sweep % 2 == 0 else keys[::-1]
        for k in order:
            nodes = columns[k]
            nbrs = {n: [m for m in (*g.predecessors(n), *g.successors(n)) if col[m] != k] for n in nodes}
            nodes.sort(key=lambda n: sum(rank[m] for m in nbrs[n]) / len(nbrs[n]) if nbrs[n] else rank[n])
            centre(nodes)
    return {n: (float(col[n]), -rank[n]) for n in g.nodes}


def _label(tex: str, name: str) -> str:
    """``$tex$`` where matplotlib's mathtext can typeset it, else the plain name."""
    from matplotlib.mathtext import MathTextParser

    try:
        MathTextParser("path").parse(f"${tex}$")
    except ValueError:
        return name
    return f"${tex}$"


def draw_program(m: Model, program: Sequence[Equation] | None = None, *, values: Mapping[str, str] | None = None,
                 ax: Any = None, components: bool = True, title: str | None = None) -> Any:
    """Draw :func:`program_graph` with matplotlib; return the figure.

    Args:
        m: the model.
        program: the equations to draw (default: the forward program).
        values: text to print under nodes, by node name (e.g. ``{"a1": "2.0"}``).
        ax: the matplotlib axes to draw on (default: a new figure sized to the graph).
        components: draw elements of vectors (``theta_1``) as nodes of their own.
        title: the axes title.
    """
    import matplotlib.pyplot as plt
    import networkx as nx

    g = program_graph(m, program, components)
    recurrent = [(u, v) for u, v, r in g.edges(data="recurrent") if r]
    dag = g.copy()
    dag.remove_edges_from(recurrent)
    pos = _positions(dag)
    xs = {x for x, _ in pos.values()}
    nrows = max(sum(1 for x, _ in pos.values() if x == c) for c in xs)
    if ax is None:
        fig, ax = plt.subplots(figsize=(min(1.5 * len(xs) + 1.2, 16), min(0.8 * nrows + 1.4, 11)))
    else:
        fig = ax.figure
    nx.draw_networkx_edges(dag, pos, ax=ax, arrows=True, arrowstyle="-|>", arrowsize=12, node_size=900,
                           edge_color="#6c757d", width=1.0)
    if recurrent:
        nx.draw_networkx_edges(g, pos, edgelist=recurrent, ax=ax, arrows=True, arrowstyle="-|>", arrowsize=12,
                               node_size=900, edge_color="#2a9d8f", width=1.2, style="dashed",
                               connectionstyle="arc3,rad=0.35")
    for kind, (face, marker) in STYLE.items():
        nodes = [n for n in g.nodes if g.nodes[n]["kind"] == kind]
        if nodes:
            nx.draw_networkx_nodes(g, pos, nodelist=nodes, node_color=face, node_shape=marker, node_size=900,
                                   edgecolors="#343a40", linewidths=1.0, ax=ax, label=kind)
    labels = {n: _label(g.nodes[n]["tex"], n) for n in g.nodes}
    nx.draw_networkx_labels(g, pos, labels=labels, font_size=11, ax=ax)
    if values:
        for n, text in values.items():
            if n in pos:
                x, y = pos[n]
                ax.annotate(text, (x, y), xytext=(0, -24), textcoords="offset points", ha="center", va="top",
                            fontsize=8, color="#1d3557")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=len(STYLE), frameon=False, fontsize=8,
              markerscale=0.45)
    if title:
        ax.set_title(title, fontsize=11)
    ax.margins(0.12, 0.2)
    ax.axis("off")
    fig.tight_layout()
    return fig
