"""Reverse mode over a program (backprop), and forward mode over the adjoint program (Hessians).

Both walk the named equations and apply each primitive's own rule (:meth:`Node.vjp`,
:meth:`Node.jvp`); no model has a hand-written backward. Results are cached per model object.
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy as sp

from .program import Equation, Equations, Model, ModelError
from .tensor import Const, Node, Var, add_all, einsum, is_zero, walk

__all__ = ["backprop", "grad", "hessian", "tangents", "forward_mode", "clear_caches"]

_BACKPROP: dict[int, tuple[Model, list[Equation]]] = {}
_HESSIAN: dict[tuple[int, str, str], tuple[Model, list[Equation]]] = {}
#: per model: its equations that are elementwise products (what :func:`recognize` writes back by name)
_PRODUCTS: dict[int, tuple[Model, int, list[tuple[Var, Node]]]] = {}


def clear_caches() -> None:
    """Forget cached derivations of the core (``derive.clear_caches`` also clears the zoo's cache)."""
    _BACKPROP.clear()
    _HESSIAN.clear()
    _PRODUCTS.clear()
    from .scan import _CACHE as _SCANS
    from .tensor import _derivative, simplify_scalar

    _SCANS.clear()
    simplify_scalar.cache_clear()
    _derivative.cache_clear()


def _adjoint_name(m: Model, v: Var) -> tuple[str, str]:
    if v.name in m.adjoint_names:
        return m.adjoint_names[v.name]
    if v.role == "param" or v.role == "input":
        base, sup = (v.tex.split("^", 1) + [""])[:2]
        tex = f"g_{{{base}}}" + (f"^{sup}" if sup else "")
        return "g_" + v.name, tex
    # the book's names: delta for a pre-activation z, zeta for an activation a or state h, zeta_v otherwise,
    # with the symbol's superscripts (layer, time) outside: \zeta_{\tilde h}^{<t>}, never \bar over a name
    base, sup = (v.tex.split("^", 1) + [""])[:2] if not v.tex.startswith("\\") or "^" in v.tex else (v.tex, "")
    sup = f"^{sup}" if sup else ""
    book = {"z": r"\delta", "Z": r"\Delta", "a": r"\zeta", "h": r"\zeta"}
    tex = book[base] + sup if base in book else rf"\zeta_{{{base}}}{sup}"
    return v.name + "_bar", tex


def _needs(roots: Sequence[Node], targets: set[Var]) -> set[int]:
    """ids of nodes (within equations, not entering Vars) that depend on a target Var."""
    dep: set[int] = set()
    for n in walk(roots, stop=lambda x: isinstance(x, Var)):
        if (isinstance(n, Var) and n in targets) or any(id(c) in dep for c in n.children()):
            dep.add(id(n))
    return dep


def _expr_vjp(root: Node, g: Node, out: Var, targets: set[Var]) -> dict[Var, list[Node]]:
    """Reverse sweep through one equation's expression; returns contributions to the target Vars."""
    dep = _needs([root], targets)
    order = [n for n in walk([root], stop=lambda x: isinstance(x, Var)) if id(n) in dep]
    bars: dict[int, list[Node]] = {id(root): [g]}
    res: dict[Var, list[Node]] = {}
    for n in reversed(order):
        gs = bars.pop(id(n), [])
        gn = add_all(gs, n.shape)
        if gn is None:
            continue
        if isinstance(n, Var):
            res.setdefault(n, []).append(gn)
            continue
        contribs = n.vjp(gn, out if n is root else n)
        for c, cb in zip(n.children(), contribs):
            if id(c) in dep and not is_zero(cb):
                assert cb is not None
                bars.setdefault(id(c), []).append(cb)
    return res


def backprop(m: Model) -> list[Equation]:
    """The adjoint program of ``m``: reverse mode over its equations, simplified.

    The adjoint of an equation's left-hand side is named (``\\delta``, ``\\zeta`` as the model declares,
    else ``\\bar v``) when the model names it or when several gradients need it; otherwise it is
    inlined, which lets the simplifier reach closed forms such as ``\\delta = \\hat y - y``. The program
    ends with one ``g_<name>`` equation per entry of ``m.grad_names``.
    """
    hit = _BACKPROP.get(id(m))
    if hit is not None and hit[0] is m:
        return hit[1]
    if m.is_update:
        raise ModelError(f"{m.name} is an update program (state in, next state out) and has no loss to "
                         f"differentiate; print it with derive.latex(m) and run it with numeric.compile(m)")
    if m.recurrences:
        from .scan import backprop_scan

        res = Equations(backprop_scan(m))
        _BACKPROP[id(m)] = (m, res)
        return res
    leaves = [m.tensor(n) for n in m.grad_names]
    targets: set[Var] = set(leaves)
    # forward vars that depend on a differentiable leaf
    for eq in m.equations:
        if any(isinstance(n, Var) and n in targets for n in walk([eq.rhs])):
            targets.add(eq.lhs)
    adj: dict[Var, list[Node]] = {m.loss_var: [Const(1)]}
    out: list[Equation] = []
    # a gradient is emitted as soon as the first equation using its leaf has been swept (book order:
    # delta^{[l]}, g_W^{[l]}, g_b^{[l]}, zeta^{[l-1]}, ...)
    # (one pass over the program: scanning it once per leaf made deep networks quadratic in depth)
    first: dict[int, int] = {}
    wanted = {id(leaf) for leaf in leaves}
    for i, e in enumerate(m.equations):
        for n in walk([e.rhs]):
            if isinstance(n, Var) and id(n) in wanted and id(n) not in first:
                first[id(n)] = i
    first_use: dict[int, list[Var]] = {}
    for leaf in leaves:
        first_use.setdefault(first.get(id(leaf), -1), []).append(leaf)
    for leaf in first_use.pop(-1, []):
        out.append(_grad_eq(m, leaf, []))
    for i in range(len(m.equations) - 1, -1, -1):
        eq = m.equations[i]
        _sweep(m, eq, adj, targets, out)
        for leaf in first_use.get(i, []):
            out.append(_grad_eq(m, leaf, adj.get(leaf, [])))
    out = Equations(out)
    _BACKPROP[id(m)] = (m, out)
    return out


def recognize(g: Node, m: Model) -> Node:
    """Write named forward quantities back into an adjoint: where an elementwise map contains the
    defining expression of a named variable (``z_c / sigma`` for ``\\bar z``), use the name."""
    from .tensor import ARG, Map, map_, substitute

    hit = _PRODUCTS.get(id(m))
    if hit is not None and hit[0] is m and hit[1] == len(m.equations):
        defs = hit[2]
    else:  # computed once per model (once per adjoint made deep programs quadratic in depth)
        defs = [(eq.lhs, eq.rhs) for eq in m.equations
                if isinstance(eq.rhs, Map) and eq.rhs.fn.is_Mul and len(eq.rhs.args) >= 2]
        _PRODUCTS[id(m)] = (m, len(m.equations), defs)
    if not defs:
        return g
    mapping: dict[Node, Node] = {}
    for n in walk([g], stop=lambda x: isinstance(x, Var)):
        if not isinstance(n, Map):
            continue
        fn, args = n.fn, list(n.args)
        for v, d in defs:
            assert isinstance(d, Map)
            if v in args or not all(a in args for a in d.args):
                continue
            pattern = d.fn.xreplace({ARG[j]: ARG[args.index(a)] for j, a in enumerate(d.args)})
            new = fn.subs(pattern, ARG[len(args)])
            if new != fn:
                fn = new
                args.append(v)
        if fn != n.fn:
            mapping[n] = map_(fn, args, n.shape)
    return substitute(g, mapping) if mapping else g


def _grad_eq(m: Model, leaf: Var, contribs: list[Node]) -> Equation:
    g = add_all(contribs, leaf.shape)
    g = recognize(g, m) if g is not None else None
    name, tex = _adjoint_name(m, leaf)
    rhs = g if g is not None else Const(0, leaf.shape)
    lhs = Var(name, leaf.shape, "grad", tex, batched=_batched(rhs, leaf))
    reduces = m.sample if (lhs.batched and not leaf.batched) else None
    return Equation(lhs, rhs, "grad", batch_dim=reduces, reduction=m.reduction)


def _sweep(m: Model, eq: Equation, adj: dict[Var, list[Node]], targets: set[Var], out: list[Equation]) -> None:
    """Reverse sweep through one equation: name its adjoint if needed, pass contributions to its leaves."""
    v = eq.lhs
    g = add_all(adj.pop(v, []), v.shape)
    if g is None or v not in targets:
        return
    users = [n for n in walk([eq.rhs]) if isinstance(n, Var) and n in targets]
    if v is m.loss_var and v.name in m.adjoint_names:  # the seed, where the model names it
        name, tex = _adjoint_name(m, v)
        out.append(Equation(Var(name, v.shape, "adjoint", tex), g, "adjoint"))
    g = recognize(g, m)
    # a per-sample adjoint that is a constant (the adjoint of a term of the loss, 1 or -1) stays inline: naming
    # it would make a per-sample variable of a number (a model-level one, as Fig 4.7's, is named as the book does)
    if (v is not m.loss_var and (v.name in m.adjoint_names or len(users) > 1) and not isinstance(g, Var)
            and not (isinstance(g, Const) and getattr(v, "batched", False))
            and v.name not in m.inline_adjoints):
        name, tex = _adjoint_name(m, v)
        gv = Var(name, v.shape, "adjoint", tex, batched=_batched(g, v))
        out.append(Equation(gv, g, "adjoint"))
        g = gv
    for leaf, cs in _expr_vjp(eq.rhs, g, v, targets).items():
        adj.setdefault(leaf, []).extend(cs)


def _batched(expr: Node, like: Var) -> bool:
    return like.batched or any(isinstance(n, Var) and n.batched for n in walk([expr]))


def grad(m: Model, name: str) -> Equation:
    """The gradient equation ``g_<name> = ...`` of the loss with respect to a parameter or input."""
    if m.recurrences and name in m.params:
        from .scan import scan_programs

        return next(p.params[name] for p in scan_programs(m) if name in p.params)
    if name not in m.grad_names:
        raise ModelError(f"{m.name} has no gradient with respect to {name!r}; "
                         f"gradients exist for: {', '.join(m.grad_names)}")
    for eq in backprop(m):
        if eq.kind == "grad" and eq.lhs.name == _adjoint_name(m, m.tensor(name))[0]:
            return eq
    raise AssertionError("unreachable: backprop emits every gradient")


def _identity(v: Var) -> Node:
    """The tangent seed d v / d v: shape ``v.shape + v.shape``."""
    if v.ndim == 0:
        return Const(1)
    from .tensor import Eye

    r = v.ndim
    ins = [(i, r + i) for i in range(r)]
    dims = dict(enumerate(v.shape + v.shape))
    return einsum(ins, tuple(range(2 * r)), [Eye(d) for d in v.shape], dims=dims)


def tangents(program: Sequence[Equation], wrt: Var, only: set[Var] | None = None) -> dict[Var, Node]:
    """Forward mode: the tangent ``d v / d wrt`` (shape ``v.shape + wrt.shape``) of each equation.

    ``only`` restricts the sweep to the equations that the named targets depend on.
    """
    need: set[Var] | None = None
    if only is not None:
        by_name = {eq.lhs: eq for eq in program}
        need = set()
        stack = list(only)
        while stack:
            v = stack.pop()
            if v in need:
                continue
            need.add(v)
            if v in by_name:
                stack.extend(n for n in walk([by_name[v].rhs]) if isinstance(n, Var))
    tan: dict[Var, Node] = {wrt: _identity(wrt)}
    for eq in program:
        if need is not None and eq.lhs not in need:
            continue
        t = _expr_jvp(eq.rhs, tan, wrt.shape, eq.lhs)
        if t is not None:
            tan[eq.lhs] = t
    return tan


def forward_mode(m: Model, wrt: str) -> list[Equation]:
    """Forward-mode trace: one tangent equation ``\\dot v = dv/d(wrt)`` per equation of ``m``.

    Each tangent is written through the tangents of the variables it uses (the book's
    ``\\dot a_k = sum_j (da_k/da_j) \\dot a_j``); the column ``i`` of every tangent is the sweep seeded
    with ``e_i``. Equations that do not depend on ``wrt`` get no tangent.
    """
    if wrt not in m.params:
        raise ModelError(f"{m.name} has no parameter {wrt!r}; its parameters are: {', '.join(m.params)}")
    v0 = m.params[wrt]
    tan: dict[Var, Node] = {v0: _identity(v0)}
    out: list[Equation] = []
    for eq in m.equations:
        t = _expr_jvp(eq.rhs, tan, v0.shape, eq.lhs)
        if t is None:
            continue
        name = f"{eq.lhs.name}_dot"
        tex = _dot_tex(eq.lhs.tex)
        tv = Var(name, eq.lhs.shape + v0.shape, "tangent", tex, batched=_batched(t, eq.lhs))
        out.append(Equation(tv, t, "tangent"))
        tan[eq.lhs] = tv
    return Equations(out)


def _dot_tex(tex: str) -> str:
    base, _, sub = tex.partition("_")
    return rf"\dot{{{base}}}" + (f"_{sub}" if sub else "")


def _expr_jvp(root: Node, tan: dict[Var, Node], tshape: tuple[sp.Expr, ...], out: Var) -> Node | None:
    memo: dict[int, Node | None] = {}
    for n in walk([root], stop=lambda x: isinstance(x, Var)):
        if isinstance(n, Var):
            memo[id(n)] = tan.get(n)
            continue
        ts = [memo[id(c)] for c in n.children()]
        memo[id(n)] = None if all(is_zero(t) for t in ts) else n.jvp(ts, tshape, out if n is root else n)
    return memo[id(root)]


def hessian(m: Model, name: str, name2: str | None = None) -> list[Equation]:
    """The Hessian block ``d^2 C / d name d name2`` by forward mode over the adjoint program.

    Returns the equations ``H = ...`` (a single equation: intermediate tangents are inlined). The
    Hessian of a per-sample model is per sample; the generated code averages it over the batch, which
    for logistic regression gives ``X^T D X / n`` with ``D = diag(yhat (1 - yhat))``.
    """
    name2 = name2 or name
    if m.recurrences or m.is_update:
        raise ModelError(f"{m.name}: Hessians are offered for loss programs without recurrences")
    for nm in (name, name2):
        if nm not in m.params:
            raise ModelError(f"{m.name} has no parameter {nm!r} to take a Hessian in; "
                             f"its parameters are: {', '.join(m.params)}")
    key = (id(m), name, name2)
    hit = _HESSIAN.get(key)
    if hit is not None and hit[0] is m:
        return hit[1]
    bp = backprop(m)
    g_eq = grad(m, name)
    program = [*m.equations, *bp]
    wrt = m.params[name2]
    tan = tangents(program, wrt, only={g_eq.lhs})
    h = tan.get(g_eq.lhs)
    shape = g_eq.lhs.shape + wrt.shape
    rhs = h if h is not None else Const(0, shape)
    base = m.params[name].tex if name == name2 else f"{m.params[name].tex}{m.params[name2].tex}"
    hname = f"H_{name}" if name == name2 else f"H_{name}_{name2}"
    lhs = Var(hname, shape, "hessian", f"H_{{{base}}}", batched=_batched(rhs, g_eq.lhs))
    res = Equations([Equation(lhs, rhs, "hessian", batch_dim=m.sample if lhs.batched else None,
                              reduction=m.reduction)])
    _HESSIAN[key] = (m, res)
    return res


def count_nodes(eqs: Sequence[Equation]) -> int:
    """Size of a program: the number of distinct expression nodes (equation boundaries kept)."""
    return len(walk([e.rhs for e in eqs], stop=lambda x: isinstance(x, Var)))


