"""LSTM recurrences found in a program and run as PyTorch's fused LSTM kernel (torch backend).

A recurrence whose step is, over carried states ``h^{<t-1>}``, ``c^{<t-1>}`` and one input sequence ``x^{<t>}``,

    g_f = sigma(W_fh h + W_fx x + b_f),  g_i = sigma(W_ih h + W_ix x + b_i),  g_o = sigma(W_oh h + W_ox x + b_o),
    g_c = tanh(W_ch h + W_cx x + b_c),   c = g_f c_prev + g_i g_c,   h = g_o tanh(c)

(biases all present or all absent, the states starting at 0) is what ``torch.lstm`` computes: one call over
all steps, with the gate weights stacked in PyTorch's order (i, f, g, o). On a CPU with oneDNN, for float32,
PyTorch runs that call as one fused kernel (``mkldnn_rnn_layer``) and its backward as one more, so the
generated kernel calls it there instead of looping over the steps in Python; elsewhere (float64, CUDA, or
oneDNN disabled) it runs the loop of :func:`numeric.codegen.generate_scan`.

Nothing is taken on trust from names: the gates are the stacked products :func:`numeric.scan_lowering.
stack_gates` found (a weight times ``h^{<t-1>}`` plus a weight times ``x^{<t>}`` plus a bias), and every
equation of the step is read into a scalar expression that must equal the one above exactly (SymPy's
``cancel`` of the difference is 0), which also decides which gate is which. The backward is the native
kernel's: the adjoint the rest of the program sends to ``h^{<t>}`` (for all steps at once) goes into the
fused backward, which returns the gradients of the stacked weights and biases. That is used only where
nothing outside the recurrence reads ``c`` or a gate, and the gate parameters appear nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sympy as sp

from derive.functions import concrete_activations as _concrete
from derive.functions import sigmoid
from derive.program import Equation
from derive.tensor import ARG, Map, Node, Var

from .norms import _equal, _Sym
from .scan_lowering import Stacking, _Member

__all__ = ["LSTMMatch", "find_lstm", "external_adjoint"]

#: PyTorch's gate order in ``weight_ih`` / ``weight_hh`` / ``bias``
TORCH_ORDER = ("i", "f", "g", "o")


@dataclass
class LSTMMatch:
    seq: Var  # x^{<t>}
    h_prev: str
    c_prev: str
    h: Var  # h^{<t>}
    gates: dict[str, _Member]  # "i", "f", "g", "o" -> the gate's stacked product
    bias: bool


def find_lstm(core: Sequence[Equation], stacking: Stacking, carries: Sequence[tuple[str, str]],
              inputs: dict[str, Var], low: Any) -> LSTMMatch | None:
    """The LSTM of a recurrence's step equations ``core`` (see the module docstring), or None."""
    if len(carries) != 2 or len(core) != 6 or len(stacking.groups) != 1:
        return None
    grp = stacking.groups[0]
    if len(grp.members) != 4 or not grp.hoisted or grp.seq is None or grp.mixed:
        return None
    h_prev = grp.state
    c_name = next((p for p, _ in carries if p != h_prev.name), None)
    if c_name is None or c_name not in inputs or h_prev.name not in dict(carries):
        return None
    c_prev = inputs[c_name]
    shape = tuple(h_prev.shape)
    if len(shape) != 1 or tuple(c_prev.shape) != shape or not h_prev.batched or not c_prev.batched:
        return None
    x = grp.seq
    if x.ndim != 1 or not x.batched:
        return None
    bias = grp.members[0].bias is not None
    eqs = {eq.lhs.name: eq for eq in core}
    sym = _Sym(shape, (), True, low)
    P, E1, E2 = sp.symbols("P E_1 E_2", real=True)
    kinds: dict[str, str] = {}  # gate lhs -> "sigmoid" / "tanh"
    members: dict[str, _Member] = {}
    for mem in grp.members:
        eq = next((e for e in core if e.rhs is mem.node), None)
        if eq is None or tuple(eq.lhs.shape) != shape or tuple(mem.weight.shape) != (shape[0], shape[0]):
            return None
        if len(mem.extras) != (2 if bias else 1) or mem.proj is None or (mem.bias is not None) != bias:
            return None
        node = mem.node
        extras = [node.args[j] for j in mem.extras]
        proj = next(a for a in extras if not isinstance(a, Var))
        ctx: dict[Node, sp.Expr] = {node.args[mem.product]: P, proj: E1}
        if bias:
            ctx[next(a for a in extras if isinstance(a, Var))] = E2
        used = {i for i in range(len(node.args)) if ARG[i] in node.fn.free_symbols}
        if used != {mem.product, *mem.extras}:
            return None
        val = sym.of(node, ctx)
        if val is None:
            return None
        val = _concrete(val)
        pre = P + E1 + (E2 if bias else 0)
        if _equal(val, sigmoid(pre)):
            kinds[eq.lhs.name] = "sigmoid"
        elif _equal(val, sp.tanh(pre)):
            kinds[eq.lhs.name] = "tanh"
        else:
            return None
        members[eq.lhs.name] = mem
    if sorted(kinds.values()) != ["sigmoid", "sigmoid", "sigmoid", "tanh"]:
        return None
    nxt = dict(carries)
    c_eq, h_eq = eqs.get(nxt[c_name]), eqs.get(nxt[h_prev.name])
    if c_eq is None or h_eq is None or set(eqs) != {*kinds, c_eq.lhs.name, h_eq.lhs.name}:
        return None
    sym_of = {g: sp.Symbol(f"G_{k}", real=True) for k, g in enumerate(kinds)}
    gate_vars: dict[Node, sp.Expr] = {eqs[g].lhs: s for g, s in sym_of.items()}
    Cp, C = sp.symbols("C_p C", real=True)
    cv = sym.of(c_eq.rhs, {**gate_vars, c_prev: Cp})
    hv = sym.of(h_eq.rhs, {**gate_vars, c_eq.lhs: C})
    if cv is None or hv is None:
        return None
    cv, hv = sp.expand(_concrete(cv)), _concrete(hv)
    tanh_gate = next(g for g, k in kinds.items() if k == "tanh")
    sig = [g for g, k in kinds.items() if k == "sigmoid"]
    # c = g_f c_prev + g_i g_c: the gate times c_prev is f, the one times the tanh gate is i; o is left
    for f in sig:
        for i in sig:
            if i == f:
                continue
            o = next(g for g in sig if g not in (f, i))
            if (_equal(cv, sym_of[f] * Cp + sym_of[i] * sym_of[tanh_gate])
                    and _equal(hv, sym_of[o] * sp.tanh(C))):
                return LSTMMatch(x, h_prev.name, c_name, h_eq.lhs,
                                 {"i": members[i], "f": members[f], "g": members[tanh_gate], "o": members[o]},
                                 bias)
    return None


def external_adjoint(eq: Equation, carry: Var) -> Node | None:
    """The part of an adjoint ``carry + E`` that is not the carried adjoint, if ``eq`` is that sum."""
    rhs = eq.rhs
    if not isinstance(rhs, Map) or carry not in rhs.args:
        return None
    k = rhs.args.index(carry)
    rest = sp.expand(rhs.fn - ARG[k])
    if ARG[k] in rest.free_symbols or rest not in ARG:
        return None
    return rhs.args[ARG.index(rest)]
