r"""Recurrences over a symbolic number of steps: backpropagation through time without unrolling.

A recurrent model's equations describe one time step ``t`` (``h^{<t>} = S(W_hh h^{<t-1>} + W_hx x^{<t>} +
b_h)``, ...). Backpropagation through time differentiates that one step: its objective is
``C^{<t>} / T + zeta~ . h^{<t>}``, where ``zeta~`` is the adjoint carried back from step ``t + 1``.
Reverse mode over the step then gives ``zeta^{<t>}`` in terms of ``zeta^{<t+1>}``, the step's parameter
gradients (summed over t) and the adjoint to carry to step ``t - 1``. Derivation time does not depend on
T; the code generator runs the step as a loop over the actual T, forward and then backward.

A program of several scans (``Model.scans``: a stacked or bidirectional RNN, an encoder and a decoder) is
differentiated scan by scan by the same rule. A scan whose states are read by later scans gets one more
term in its step objective, ``zeta_out^{<t>} . v^{<t>}``, where ``zeta_out^{<t>}`` is the adjoint those
scans send back for step t (the later scan's gradient with respect to ``v^{<t>}``, or row t of its gradient
with respect to the stacked states); a carry that starts from an earlier scan's final state hands the
adjoint it carries out of the first step to that scan's last step. A reverse scan carries the state of step
t + 1, so its adjoint is carried from step t - 1. Each step is derived once, whatever the T's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import sympy as sp

from .program import Equation, Model, ModelError, Scan
from .tensor import ARG, Node, Var, add_all, einsum, map_, walk

__all__ = ["ScanProgram", "scan_program", "scan_programs", "backprop_scan", "printed_adjoints", "sum_times"]


@dataclass
class ScanProgram:
    """The differentiated step of a recurrence.

    Attributes:
        step: the internal one-step model (the model's equations plus the step objective).
        adjoint: its adjoint equations (named adjoints, then gradients).
        carry_in: carry name -> the input holding the adjoint carried back from step t + 1.
        carry_out: carry name -> the gradient equation giving the adjoint to carry to step t - 1.
        params: parameter name -> its per-step gradient equation (summed over t by the kernels).
        scan: the scan (programs of several scans).
        forward: the scan's step equations.
        outputs_in: equation of this scan read by later scans -> the input holding the adjoint they send
            back for step t.
        upstream: equation of an earlier scan read at step t -> its gradient at step t (sent back to it).
        stacks: stacked states of an earlier scan -> their gradient (summed over this scan's steps).
    """

    step: Model
    adjoint: list[Equation]
    carry_in: dict[str, Var]
    carry_out: dict[str, Equation]
    params: dict[str, Equation]
    scan: Scan | None = None
    forward: list[Equation] = field(default_factory=list)
    outputs_in: dict[str, Var] = field(default_factory=dict)
    upstream: dict[str, Equation] = field(default_factory=dict)
    stacks: dict[str, Equation] = field(default_factory=dict)


_CACHE: dict[int, tuple[Model, object]] = {}


def _derive_step(m: Model, sc: Scan, eqs: list[Equation], name: str, extra_inputs: dict[str, Var],
                 params: dict[str, Var], outputs: list[Var], upstream: list[Var], stacked: list[Var],
                 objective: Var) -> ScanProgram:
    """Reverse mode over one step whose objective is ``weight * C^{<t>}`` plus the carried adjoints times the
    next states plus the adjoints sent back by later scans times the states they read."""
    from .autodiff import _adjoint_name, backprop

    defs = {eq.lhs.name: eq.lhs for eq in eqs}
    inputs = {**m.inputs, **extra_inputs}
    carry_in: dict[str, Var] = {}
    total: Node | None = map_(sc.weight * ARG[0], [defs[sc.loss]]) if sc.loss else None
    diff_carries = [prev for prev, nxt in sc.carries if nxt in defs]
    for prev, nxt in sc.carries:
        if nxt not in defs:
            continue  # a carry of data (the previous target, teacher forcing): nothing to differentiate
        h = defs[nxt]
        zin = Var(f"{prev}_carry", h.shape, "input", rf"\tilde{{\zeta}}_{{{nxt}}}", batched=h.batched)
        carry_in[prev] = zin
        inputs[zin.name] = zin
        labels = tuple(range(h.ndim))
        term = einsum([labels, labels], (), [zin, h])
        total = term if total is None else total + term
    outputs_in: dict[str, Var] = {}
    for v in outputs:
        oin = Var(f"{v.name}_out", v.shape, "input", rf"\tilde{{\zeta}}_{{{v.name}}}", batched=v.batched)
        outputs_in[v.name] = oin
        inputs[oin.name] = oin
        labels = tuple(range(v.ndim))
        term = einsum([labels, labels], (), [oin, v])
        total = term if total is None else total + term
    if total is None:
        raise ModelError(f"{m.name}: scan {sc.name or m.name!r} has no loss and nothing later reads its states: "
                         f"it does not affect the loss")
    names = dict(m.adjoint_names)
    for v in upstream:  # the gradient of another scan's state is this scan's contribution to its adjoint
        names[v.name] = (f"{v.name}_from_{name}", rf"\tilde{{\zeta}}_{{{v.name}}}")
    for v in stacked:
        names.setdefault(v.name, (f"{v.name}_bar", _adjoint_name(m, v)[1]))
    obj = objective
    step = Model(
        name=name, title=m.title, section=m.section, dims=m.dims, defaults=m.defaults,
        params=params, inputs=inputs, equations=[*eqs, Equation(obj, total)], reduction="mean",
        sample=m.sample, options=m.options,
        diff_inputs=tuple(diff_carries) + tuple(v.name for v in upstream) + tuple(v.name for v in stacked),
        ranges=m.ranges, adjoint_names=names, inline_adjoints=m.inline_adjoints, kinks=m.kinks,
        constants=m.constants, notation=m.notation,
    )
    adj = backprop(step)
    grads = {eq.lhs.name: eq for eq in adj if eq.kind == "grad"}

    def grad_of(v: Var) -> Equation:
        return grads[_adjoint_name(step, v)[0]]

    return ScanProgram(
        step, adj, carry_in, {p: grad_of(step.tensor(p)) for p in diff_carries},
        {p: grad_of(v) for p, v in params.items()}, sc, list(eqs), outputs_in,
        {v.name: grad_of(v) for v in upstream}, {v.name: grad_of(v) for v in stacked})


def scan_program(m: Model) -> ScanProgram:
    """The step objective of a recurrence, differentiated (cached per model)."""
    if m.scan is None:
        raise ModelError(f"{m.name} is not a recurrence" + (" of one scan: use scan_programs" if m.scans else ""))
    hit = _CACHE.get(id(m))
    if hit is not None and hit[0] is m:
        assert isinstance(hit[1], ScanProgram)
        return hit[1]
    obj = Var("L_step", (), "var", r"L^{\langle t\rangle}", batched=True)
    sc = replace(m.scan, loss=m.equations[-1].lhs.name)
    res = _derive_step(m, sc, list(m.equations), f"{m.name}_step", {}, dict(m.params), [], [], [], obj)
    res.scan = m.scan
    _CACHE[id(m)] = (m, res)
    return res


def _leaves(eqs: list[Equation]) -> list[Var]:
    seen: dict[Var, None] = {}
    for eq in eqs:
        for n in walk([eq.rhs]):
            if isinstance(n, Var):
                seen.setdefault(n)
    return list(seen)


def scan_programs(m: Model) -> list[ScanProgram]:
    """The differentiated steps of a program of several scans, in the program's order (cached per model)."""
    if not m.scans:
        return [scan_program(m)] if m.scan is not None else []
    hit = _CACHE.get(id(m))
    if hit is not None and hit[0] is m:
        assert isinstance(hit[1], list)
        return hit[1]
    by_name = {eq.lhs.name: eq for eq in m.equations}
    owner = {n: sc for sc in m.scans for n in sc.equations}
    # which states each scan's later scans read: step by step (same time) or stacked
    read_later: dict[str, list[Var]] = {sc.name: [] for sc in m.scans}
    for sc in m.scans:
        eqs = [by_name[n] for n in sc.equations]
        for v in _leaves(eqs):
            if v.name in owner and owner[v.name] is not sc and v not in read_later[owner[v.name].name]:
                read_later[owner[v.name].name].append(v)
        for _, src in sc.stacks:
            v = by_name[src].lhs
            if v not in read_later[owner[src].name]:
                read_later[owner[src].name].append(v)
    out: list[ScanProgram] = []
    for sc in m.scans:
        eqs = [by_name[n] for n in sc.equations]
        leaves = _leaves(eqs)
        own = set(sc.equations)
        params = {v.name: v for v in leaves if v.name in m.params}
        upstream = [v for v in leaves if v.name in owner and v.name not in own]
        stacked = [sv for sv, _ in sc.stacks]
        extra = {v.name: v for v in upstream + stacked}
        outputs = sorted(read_later[sc.name], key=lambda v: sc.equations.index(v.name))
        obj = Var(f"L_{sc.name}", (), "var", rf"L_{{{sc.name}}}^{{\langle t\rangle}}", batched=True)
        out.append(_derive_step(m, sc, eqs, f"{m.name}_{sc.name}_step", extra, params, outputs, upstream,
                                stacked, obj))
    _CACHE[id(m)] = (m, out)
    return out


def backprop_scan(m: Model) -> list[Equation]:
    r"""The BPTT equations: the named adjoints of one step, which use the adjoint carried back from step
    t + 1 (the input ``\tilde\zeta``; the printer writes it as that step's expression, ``\zeta^{<t>} = ... +
    W_{hh}^\top \delta^{<t+1>}``), and the parameter gradients of one step, which the kernels sum over
    t = 1, ..., T (and average over the samples). For several scans: the scans' equations from the last
    scan back to the first; what a scan sends back to an earlier one appears inside that scan's adjoints."""
    out: list[Equation] = []
    for prog in reversed(scan_programs(m)):
        hidden = {e.lhs.name for e in [*prog.carry_out.values(), *prog.upstream.values()]}
        for eq in prog.adjoint:
            if eq.kind == "grad" and eq.lhs.name in hidden:
                continue  # sent to step t - 1 or to an earlier scan: it appears inside their adjoints
            batch = m.sample if (eq.kind == "grad" and eq.lhs.batched and eq.lhs.name not in
                                 {e.lhs.name for e in prog.stacks.values()}) else None
            out.append(replace(eq, note="", batch_dim=batch, reduction="mean"))
    return out


def printed_adjoints(m: Model) -> dict[Var, tuple[Node, int]]:
    r"""What the printer writes for the adjoint inputs of the steps: the carried adjoint as the expression of
    the step it comes from (shifted to step t + 1, or t - 1 for a reverse scan), and the adjoint another scan
    sends back as that scan's expression (the same t; row t of a stacked gradient, ``\zeta_H^{<t>}``)."""
    progs = scan_programs(m)
    out: dict[Var, tuple[Node, int]] = {}
    sent: dict[str, list[Node]] = {}
    for prog in progs:
        for v, eq in prog.upstream.items():
            sent.setdefault(v, []).append(eq.rhs)
        assert prog.scan is not None or m.scan is not None
        for sv, src in (prog.scan.stacks if prog.scan is not None else ()):
            g = prog.stacks[sv.name].lhs
            row = Var(f"{g.name}_row", sv.shape[1:], "var", _row_tex(g.tex), batched=g.batched)
            sent.setdefault(src, []).append(row)
    for prog in progs:
        rev = prog.scan is not None and prog.scan.reverse
        for prev, zin in prog.carry_in.items():
            out[zin] = (prog.carry_out[prev].rhs, -1 if rev else 1)
        for v, oin in prog.outputs_in.items():
            total = add_all(sent.get(v, []), oin.shape)
            if total is not None:
                out[oin] = (total, 0)
    return out


def _row_tex(tex: str) -> str:
    return tex + r"^{\langle t\rangle}" if "^" not in tex else tex


def sum_times(m: Model) -> dict[str, sp.Symbol]:
    """Gradient equation name -> the time dimension its per-step values are summed over."""
    out: dict[str, sp.Symbol] = {}
    for prog in scan_programs(m):
        sc = prog.scan if prog.scan is not None else m.scan
        assert sc is not None
        for eq in [*prog.params.values(), *prog.stacks.values()]:
            out[eq.lhs.name] = sc.time
    return out
