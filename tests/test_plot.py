"""Program graphs (dlmath.plot): the dependency structure of every zoo entry, and Fig 4.7's graph."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import networkx as nx  # noqa: E402
import pytest  # noqa: E402

import derive  # noqa: E402
import dlmath.plot  # noqa: E402
from derive.tensor import Var, walk  # noqa: E402


@pytest.mark.parametrize("name", derive.models.names())
def test_program_graph_has_every_equation_and_its_operands(name: str) -> None:
    m = derive.models.get(name)
    g = dlmath.plot.program_graph(m, components=False)
    recurrent = [(u, v) for u, v, r in g.edges(data="recurrent") if r]
    dag = g.copy()
    dag.remove_edges_from(recurrent)
    assert nx.is_directed_acyclic_graph(dag)
    for eq in m.equations:
        used = {n.name for n in walk([eq.rhs], stop=lambda x: isinstance(x, Var)) if isinstance(n, Var)}
        assert set(dag.predecessors(eq.lhs.name)) == used - {eq.lhs.name}, eq.lhs.name
    assert {n for n, k in g.nodes(data="kind") if k == "parameter"} <= set(m.params)
    assert len(recurrent) == (len(m.scan.carries) if m.scan else 0)


def test_fig_4_7() -> None:
    """The book's graph: theta_1, theta_2 -> a1; theta_2, theta_3 -> a2; theta_3 -> a3; a1 -> a4;
    a2 -> a5; a3, a4, a5 -> a6."""
    g = dlmath.plot.program_graph(derive.models.get("autodiff_example"))
    t1, t2, t3 = "theta[0]", "theta[1]", "theta[2]"
    assert set(g.edges) == {(t1, "a1"), (t2, "a1"), (t2, "a2"), (t3, "a2"), (t3, "a3"), ("a1", "a4"),
                            ("a2", "a5"), ("a3", "a6"), ("a4", "a6"), ("a5", "a6")}
    assert g.nodes[t1]["tex"] == r"\theta_{1}" and g.nodes["a6"]["kind"] == "loss"


def test_draw_program_places_every_node_after_its_operands() -> None:
    m = derive.models.get("lstm")
    fig = dlmath.plot.draw_program(m, values={"h": "h"})
    g = dlmath.plot.program_graph(m)
    g.remove_edges_from([(u, v) for u, v, r in g.edges(data="recurrent") if r])
    pos = dlmath.plot._positions(g)
    assert all(pos[u][0] < pos[v][0] for u, v in g.edges)
    assert fig.axes and len(fig.axes[0].texts) >= 1
