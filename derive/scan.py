r"""Recurrences over a symbolic number of steps: backpropagation through time without unrolling.

A recurrent model's equations describe one time step ``t`` (``h^{<t>} = S(W_hh h^{<t-1>} + W_hx x^{<t>} +
b_h)``, ...). Backpropagation through time differentiates that one step: its objective is
``C^{<t>} / T + zeta~ . h^{<t>}``, where ``zeta~`` is the adjoint carried back from step ``t + 1``.
Reverse mode over the step then gives ``zeta^{<t>}`` in terms of ``zeta^{<t+1>}``, the step's parameter
gradients (summed over t) and the adjoint to carry to step ``t - 1``. Derivation time does not depend on
T; the code generator runs the step as a loop over the actual T, forward and then backward.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .program import Equation, Model, ModelError
from .tensor import ARG, Var, einsum, map_

__all__ = ["ScanProgram", "scan_program", "backprop_scan"]


@dataclass
class ScanProgram:
    """The differentiated step of a recurrence.

    Attributes:
        step: the internal one-step model (the model's equations plus the step objective).
        adjoint: its adjoint equations (named adjoints, then gradients).
        carry_in: carry name -> the input holding the adjoint carried back from step t + 1.
        carry_out: carry name -> the gradient equation giving the adjoint to carry to step t - 1.
        params: parameter name -> its per-step gradient equation (summed over t by the kernels).
    """

    step: Model
    adjoint: list[Equation]
    carry_in: dict[str, Var]
    carry_out: dict[str, Equation]
    params: dict[str, Equation]


_CACHE: dict[int, tuple[Model, ScanProgram]] = {}
def scan_program(m: Model) -> ScanProgram:
    """The step objective of a recurrence, differentiated (cached per model)."""
    from .autodiff import _adjoint_name, backprop

    if m.scan is None:
        raise ModelError(f"{m.name} is not a recurrence")
    hit = _CACHE.get(id(m))
    if hit is not None and hit[0] is m:
        return hit[1]
    sc = m.scan
    loss = m.equations[-1].lhs
    defs = {eq.lhs.name: eq.lhs for eq in m.equations}
    carry_in: dict[str, Var] = {}
    inputs = dict(m.inputs)
    total = map_(sc.weight * ARG[0], [loss])
    for prev, nxt in sc.carries:
        h = defs[nxt]
        zin = Var(f"{prev}_carry", h.shape, "input", rf"\tilde{{\zeta}}_{{{nxt}}}", batched=h.batched)
        carry_in[prev] = zin
        inputs[zin.name] = zin
        labels = tuple(range(h.ndim))
        total = total + einsum([labels, labels], (), [zin, h])
    obj = Var("L_step", (), "var", r"L^{\langle t\rangle}", batched=True)
    step = Model(
        name=f"{m.name}_step", title=m.title, section=m.section, dims=m.dims, defaults=m.defaults,
        params=m.params, inputs=inputs, equations=[*m.equations, Equation(obj, total)], reduction="mean",
        sample=m.sample, options=m.options, diff_inputs=tuple(p for p, _ in sc.carries), ranges=m.ranges,
        adjoint_names=m.adjoint_names, inline_adjoints=m.inline_adjoints, kinks=m.kinks, constants=m.constants,
        notation=m.notation,
    )
    adj = backprop(step)
    grads = {eq.lhs.name: eq for eq in adj if eq.kind == "grad"}
    carry_out = {p: grads[_adjoint_name(step, step.tensor(p))[0]] for p, _ in sc.carries}
    params = {p: grads[_adjoint_name(step, step.params[p])[0]] for p in m.params}
    res = ScanProgram(step, adj, carry_in, carry_out, params)
    _CACHE[id(m)] = (m, res)
    return res


def backprop_scan(m: Model) -> list[Equation]:
    r"""The BPTT equations: the named adjoints of one step, which use the adjoint carried back from step
    t + 1 (the input ``\tilde\zeta``; the printer writes it as that step's expression, ``\zeta^{<t>} = ... +
    W_{hh}^\top \delta^{<t+1>}``), and the parameter gradients of one step, which the kernels sum over
    t = 1, ..., T (and average over the samples)."""
    prog = scan_program(m)
    carried_names = {e.lhs.name for e in prog.carry_out.values()}
    out: list[Equation] = []
    for eq in prog.adjoint:
        if eq.kind == "grad" and eq.lhs.name in carried_names:
            continue  # the adjoint carried to step t - 1: it appears inside the adjoints of step t - 1
        batch = m.sample if (eq.kind == "grad" and eq.lhs.batched) else None
        out.append(replace(eq, note="", batch_dim=batch, reduction="mean"))
    return out
