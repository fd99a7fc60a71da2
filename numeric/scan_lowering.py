"""Recurrences lowered as cuDNN runs them: the loop holds only the products with the carried state.

Three rewrites of a scan's step, applied by :func:`numeric.codegen.generate_scan` and
:func:`numeric.codegen.generate_scans` (on either backend):

* **stacked gates** (forward): the products ``W_gh h^{<t-1>}`` of one state with several weights (the four
  LSTM gates, GRU's reset and update gates) become one product with the weights concatenated once, before
  the loop (``h @ [W_fh; W_ih; W_oh; W_ch]^T``); where every such gate adds a projection of the same input
  sequence and (for all or none) a bias, those are concatenated too and computed for all steps at once before
  the loop, so one step costs one ``addmm`` and a split into the gates' slices;
* **stacked adjoints** (backward): the adjoint carried to the previous state, ``sum_g W_gh^T delta_g``, is one
  product of the concatenated deltas with the same concatenated weights;
* **gradients after the loop**: a parameter gradient sums ``delta_g^{<t>} h^{<t-1>T}`` over the steps; the
  loop only stores the per-step values it needs (in Python lists: no copies), and one GEMM over all
  ``T * n`` rows computes the sum after the loop.

Every rewrite keeps the arithmetic of the step (the same products and sums, grouped differently); the
generated code says in its comments which equations they come from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from derive.program import Equation
from derive.tensor import ARG, Einsum, Map, Node, Var, map_, substitute, walk


def _cat(backend: str) -> str:
    return "np.concatenate" if backend == "numpy" else "torch.cat"


@dataclass
class _Member:
    node: Map  # the map whose argument is W h (a gate's activation)
    add: sp.Expr  # the sum in the map's expression holding W h as a term
    product: int  # the argument index of W h
    extras: list[int]  # argument indices of the terms folded into the hoisted projection
    weight: Var  # W (k, j)
    var: Var  # the gate's slice of the stacked product (pre-activation)
    proj: Var | None = None  # the input weight of the folded projection, if any
    bias: Var | None = None


@dataclass
class _Group:
    state: Var
    members: list[_Member]
    weight: str = ""  # the concatenated weights' name
    product: str = ""  # the stacked product's name in the loop
    hoisted: str = ""  # the hoisted projections of all steps (or "")
    seq: Var | None = None
    mixed: bool = False  # the gates project different sequences


@dataclass
class Stacking:
    """The rewritten forward step and the code around it (lines without indentation)."""

    forward: list[Equation]
    before: list[str] = field(default_factory=list)  # before the loop
    step: list[str] = field(default_factory=list)  # at the top of the loop body
    groups: list[_Group] = field(default_factory=list)


class Names:
    """Fresh identifiers for generated code, never a name of the model or one given out before."""

    def __init__(self, taken: Iterable[str]):
        self.taken = set(taken)

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}{k}"
        self.taken.add(name)
        return name


def _weight_times(e: Node, vectors: set[Var]) -> tuple[Var, Var] | None:
    """(W, v) for ``W v``: ``W`` a parameter (k, j), ``v`` one of ``vectors`` (j,) (a carried state, or a
    sequence input at step t); else None."""
    if not isinstance(e, Einsum) or len(e.operands) != 2 or e.coef != 1:
        return None
    for kw in (0, 1):
        W, v = e.operands[kw], e.operands[1 - kw]
        lw, lv = e.ins[kw], e.ins[1 - kw]
        if (isinstance(W, Var) and W.role == "param" and not W.batched and W.ndim == 2 and isinstance(v, Var)
                and v in vectors and v.ndim == 1 and len(lw) == 2 and lw[0] != lw[1] and lv == (lw[1],)
                and e.out == (lw[0],)):
            return W, v
    return None


def _term_args(add: sp.Expr) -> list[int]:
    """Indices i of the map arguments that are plain terms (coefficient 1) of ``add``."""
    return [ARG.index(t) for t in add.args if t in ARG]


def stack_gates(forward: Sequence[Equation], states: set[Var], seqs: set[Var], backend: str,
                names: Names, dim: Callable[[Any], str]) -> Stacking:
    """Group the products of each carried state with parameters across the step's maps (see the module
    docstring); ``dim`` prints a dimension."""
    groups: dict[Var, _Group] = {}
    seen: set[int] = set()
    for eq in forward:
        for n in walk([eq.rhs], stop=lambda x: isinstance(x, Var)):
            if not isinstance(n, Map) or id(n) in seen:
                continue
            seen.add(id(n))
            for add in sp.preorder_traversal(n.fn):
                if not isinstance(add, sp.Add):
                    continue
                terms = _term_args(add)
                hit = next(((i, _weight_times(n.args[i], states)) for i in terms
                            if _weight_times(n.args[i], states) is not None), None)
                if hit is None:
                    continue
                i, wh = hit
                assert wh is not None
                W, h = wh
                g = groups.setdefault(h, _Group(h, []))
                var = Var(names(f"pre_{W.name}"), (W.shape[0],), "var", batched=True)
                mem = _Member(n, add, i, [], W, var)
                # the other terms: a projection of a sequence input and a bias, folded into the hoisted part
                for j in terms:
                    if j == i:
                        continue
                    a = n.args[j]
                    pr = _weight_times(a, seqs)
                    if pr is not None and mem.proj is None and pr[0].shape[0] == W.shape[0]:
                        mem.proj = pr[0]
                        mem.extras.append(j)
                        if g.seq is None:
                            g.seq = pr[1]
                        g.mixed = g.mixed or g.seq is not pr[1]
                    elif (isinstance(a, Var) and a.role == "param" and not a.batched and a.shape == (W.shape[0],)
                          and mem.bias is None):
                        mem.bias = a
                        mem.extras.append(j)
                g.members.append(mem)
                break  # one stacked product per map
    out = Stacking(list(forward))
    cat = _cat(backend)
    mapping: dict[Node, Node] = {}
    for g in groups.values():
        ms = g.members
        if len({id(mm.node) for mm in ms}) != len(ms):
            continue
        # the projections and biases fold in only where every gate has them alike
        fold = (g.seq is not None and not g.mixed and all(mm.proj is not None for mm in ms)
                and (all(mm.bias is not None for mm in ms) or all(mm.bias is None for mm in ms)))
        g.weight = names(f"W_{g.state.name}") if len(ms) > 1 else ms[0].weight.name
        if len(ms) > 1:
            out.before.append(f"{g.weight} = {cat}([{', '.join(mm.weight.name for mm in ms)}], 0)")
        hs = g.state.name
        g.product = names(f"{g.state.name}_gates")
        if fold:
            assert g.seq is not None
            wx = names(f"W_{g.seq.name}") if len(ms) > 1 else str(ms[0].proj.name if ms[0].proj else "")
            if len(ms) > 1:
                out.before.append(f"{wx} = {cat}([{', '.join(mm.proj.name for mm in ms if mm.proj)}], 0)")
            bias = ""
            if ms[0].bias is not None:
                bias = names(f"b_{g.seq.name}") if len(ms) > 1 else ms[0].bias.name
                if len(ms) > 1:
                    out.before.append(f"{bias} = {cat}([{', '.join(mm.bias.name for mm in ms if mm.bias)}])")
            g.hoisted = names(f"{g.seq.name}_gates")
            x = g.seq.name
            if backend == "torch":
                out.before.append(f"{g.hoisted} = torch.nn.functional.linear({x}, {wx}{', ' + bias if bias else ''})")
                out.step.append(f"{g.product} = torch.addmm({g.hoisted}[t], {hs}, {g.weight}.T)")
            else:
                out.before.append(f"{g.hoisted} = {x} @ {wx}.T" + (f" + {bias}" if bias else ""))
                out.step.append(f"{g.product} = {g.hoisted}[t] + {hs} @ {g.weight}.T")
        else:
            for mm in ms:
                mm.extras = []
            out.step.append(f"{g.product} = {hs} @ {g.weight}.T")
        if len(ms) == 1:
            out.step.append(f"{ms[0].var.name} = {g.product}")
        elif backend == "torch":
            sizes = ", ".join(dim(mm.weight.shape[0]) for mm in ms)
            out.step.append(f"{', '.join(mm.var.name for mm in ms)} = {g.product}.split([{sizes}], -1)")
        else:
            off: Any = 0
            for mm in ms:
                end = off + mm.weight.shape[0]
                out.step.append(f"{mm.var.name} = {g.product}[:, {dim(off)}:{dim(end)}]")
                off = end
        for mm in ms:
            k = len(mm.node.args)
            removed = {ARG[mm.product], *(ARG[j] for j in mm.extras)}
            new_add = sp.Add(*[t for t in mm.add.args if t not in removed], ARG[k])
            mapping[mm.node] = map_(mm.node.fn.xreplace({mm.add: new_add}), [*mm.node.args, mm.var], mm.node.shape)
        out.groups.append(g)
    if mapping:
        out.forward = [Equation(eq.lhs, substitute(eq.rhs, mapping), eq.kind, eq.note, eq.batch_dim, eq.reduction)
                       for eq in forward]
    return out


@dataclass
class BackStack:
    """A stacked product ``[delta_1, ..., delta_K] @ [W_1; ...; W_K]`` replacing ``sum_g W_g^T delta_g``."""

    var: Var
    deltas: list[Node]
    weight: str


def _adjoint_product(e: Node) -> tuple[Var, Node] | None:
    """(W, d) for ``W^T d`` (``W`` a parameter (k, j), ``d`` a per-sample (k,) adjoint), else None."""
    if not isinstance(e, Einsum) or len(e.operands) != 2 or e.coef != 1:
        return None
    for kw in (0, 1):
        W, d = e.operands[kw], e.operands[1 - kw]
        lw, ld = e.ins[kw], e.ins[1 - kw]
        if (isinstance(W, Var) and W.role == "param" and not W.batched and W.ndim == 2 and d.ndim == 1
                and len(lw) == 2 and lw[0] != lw[1] and ld == (lw[0],) and e.out == (lw[1],)):
            return W, d
    return None


def stack_adjoints(eqs: Sequence[Equation], groups: Sequence[_Group], names: Names
                   ) -> tuple[list[Equation], dict[str, list[BackStack]]]:
    """The equations with each ``sum_g W_g^T delta_g`` over a whole stacked group replaced by one variable,
    and per equation (by its left-hand side's name) the stacked products to compute before it."""
    by_weight: dict[frozenset[Var], _Group] = {}
    for g in groups:
        ws = [mm.weight for mm in g.members]
        if len(ws) > 1 and len(set(ws)) == len(ws):
            by_weight[frozenset(ws)] = g
    out: list[Equation] = []
    before: dict[str, list[BackStack]] = {}
    if not by_weight:
        return list(eqs), before
    for eq in eqs:
        mapping: dict[Node, Node] = {}
        for n in walk([eq.rhs], stop=lambda x: isinstance(x, Var)):
            if not isinstance(n, Map) or n in mapping:
                continue
            for add in sp.preorder_traversal(n.fn):
                if not isinstance(add, sp.Add):
                    continue
                prods: dict[Var, tuple[int, Node]] = {}
                for i in _term_args(add):
                    wd = _adjoint_product(n.args[i])
                    if wd is not None:
                        prods.setdefault(wd[0], (i, wd[1]))
                hit = by_weight.get(frozenset(prods))
                if hit is None or len(prods) != len(hit.members):
                    continue
                g = hit
                j = g.members[0].weight.shape[1]
                var = Var(names(f"{g.state.name}_back"), (j,), "var", batched=True)
                k = len(n.args)
                removed = {ARG[prods[mm.weight][0]] for mm in g.members}
                new_add = sp.Add(*[t for t in add.args if t not in removed], ARG[k])
                mapping[n] = map_(n.fn.xreplace({add: new_add}), [*n.args, var], n.shape)
                before.setdefault(eq.lhs.name, []).append(
                    BackStack(var, [prods[mm.weight][1] for mm in g.members], g.weight))
                break
        out.append(Equation(eq.lhs, substitute(eq.rhs, mapping), eq.kind, eq.note, eq.batch_dim, eq.reduction)
                   if mapping else eq)
    return out, before


def frontier(root: Node, batched: Callable[[Node], bool], temps: dict[int, str]) -> list[Node]:
    """The per-step values a gradient reads: its batched leaves and the loop's temporaries it uses (the
    rest of it is recomputed for all steps at once)."""
    out: list[Node] = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if not batched(n):
            continue
        if isinstance(n, Var) or id(n) in temps:
            out.append(n)
            continue
        stack.extend(n.children())
    return out


__all__ = ["Names", "Stacking", "BackStack", "stack_gates", "stack_adjoints", "frontier"]
