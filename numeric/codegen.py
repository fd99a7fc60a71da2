"""Code generation: a model's forward, adjoint (and Hessian) programs as a readable Python module.

The generated module has one function, ``kernel(<params>, <inputs>)``, with one line per equation,
named as in the book, and the equation's LaTeX as a comment above it. Per-sample equations are
lowered to batch form by adding a leading sample axis to batched tensors: contractions gain the sample
index, and gradients (and Hessians) average over it, which folds into the last contraction
(``g_W = delta.T @ X / n``). Subexpressions used more than once are computed once. Logarithms of
sigmoids and softmaxes are rewritten into their stable forms (softplus, log-softmax).

Torch kernels write an elementwise result over a buffer of their own that nothing reads after it
(``a1 = z1.sigmoid_()``, ``delta = yhat.sub_(Y)``, a fused ATen backward into its upstream adjoint): a value
read once in the derived programs, made by a call that returns a new array, never an argument. The printed
lines are checked against that permission (:func:`_reuse_violations`), and a kernel they contradict is
printed again without it.
"""

from __future__ import annotations

import collections
import functools
import math
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sympy as sp
from sympy.printing.numpy import NumPyPrinter

import derive
from derive.latex import equations_tex
from derive.program import Equation, Model
from derive.tensor import (
    ARG,
    Const,
    Einsum,
    Embed,
    Eye,
    LogSoftmax,
    Map,
    Node,
    Softmax,
    Var,
    as_expr,
    map_,
    walk,
)

from ._sympy_torch import TorchPrinter

__all__ = ["Program", "build_program", "generate"]

BACKENDS = ("numpy", "torch")
BATCH = "Z"


@dataclass
class Program:
    """What a kernel computes: the model, and which extra outputs were asked for."""

    model: Model
    hessian: tuple[str, ...] = ()
    forward: list[Equation] = field(default_factory=list)
    adjoint: list[Equation] = field(default_factory=list)
    hessians: dict[tuple[str, str], Equation] = field(default_factory=dict)


def build_program(m: Model, hessian: Sequence[str] = ()) -> Program:
    for h in hessian:
        if h not in m.params:
            raise ValueError(f"{m.name} has no parameter {h!r} to take a Hessian in; "
                             f"its parameters are: {', '.join(m.params)}")
    if m.is_update or m.recurrences:
        if hessian:  # refused, not silently left out of the kernel's results
            raise ValueError(f"{m.name}: Hessians are offered for loss programs without recurrences; drop "
                             f"hessian={list(hessian)!r}")
        return Program(m, (), list(m.equations), [])
    prog = Program(m, tuple(hessian), list(m.equations), list(derive.backprop(m)))
    for a in hessian:
        for b in hessian:
            prog.hessians[(a, b)] = derive.hessian(m, a, b)[0]
    return prog


# --------------------------------------------------------------------------------------------------
# Stable rewrites
# --------------------------------------------------------------------------------------------------


def stabilize(eqs: Sequence[Equation], defs: dict[Var, Node] | None = None) -> list[Equation]:
    """Rewrite ``log(sigma(u))``, ``log(1 - sigma(u))`` and ``log(S_softmax(z))`` into stable forms.

    The book writes the loss through the named output (``C = -y log yhat``); evaluated literally it
    overflows at logits of a few hundred. Here ``log yhat`` becomes ``-softplus(-z)`` or
    ``log_softmax(z)``, computed from the logits.
    """
    defs = defs if defs is not None else {eq.lhs: eq.rhs for eq in eqs}
    out = []
    for eq in eqs:
        out.append(Equation(eq.lhs, _stable_node(eq.rhs, defs), eq.kind, eq.note, eq.batch_dim, eq.reduction))
    return out


def reuse_outputs(eqs: Sequence[Equation], defs: dict[Var, Node]) -> list[Equation]:
    """Write ``\\dot S(z)`` through the named output ``a = S(z)`` where that is possible (sigma' =
    a (1 - a), tanh' = 1 - a^2), as autograd does with saved outputs, instead of recomputing ``S(z)``."""
    from derive.functions import ActivationBase
    from derive.tensor import _derivative, substitute

    outputs: dict[Node, tuple[Var, Any]] = {}
    for v, rhs in defs.items():
        if isinstance(rhs, Map) and isinstance(rhs.fn, ActivationBase):
            # key: the pre-activation as a node (interned, so the same expression is the same key)
            pre = rhs.args[0] if rhs.fn.args[0] == ARG[0] else map_(rhs.fn.args[0], rhs.args)
            outputs[pre] = (v, type(rhs.fn))
    res = []
    for eq in eqs:
        mapping: dict[Node, Node] = {}
        for n in walk([eq.rhs], stop=lambda x: isinstance(x, Var)):
            if not isinstance(n, Map):
                continue
            fn, args = n.fn, list(n.args)
            for f in list(fn.atoms(ActivationBase)):
                if f.order != 1:
                    continue
                z = n.args[ARG.index(f.args[0])] if f.args[0] in ARG[: len(n.args)] else map_(f.args[0], n.args)
                if z not in outputs or outputs[z][0] is eq.lhs:
                    continue
                a, S = outputs[z]
                d = _derivative(S.impl(ARG[0]), 0, 1, True)  # in x = ARG[0] and the output ARG[1]
                if ARG[0] in d.free_symbols:
                    continue
                k = len(args)
                args.append(a)
                fn = fn.xreplace({f: d.xreplace({ARG[1]: ARG[k]})})
            if fn != n.fn:
                mapping[n] = map_(fn, args, n.shape)
        res.append(Equation(eq.lhs, substitute(eq.rhs, mapping), eq.kind, eq.note, eq.batch_dim, eq.reduction)
                   if mapping else eq)
    return res


def _stable_node(root: Node, defs: dict[Var, Node]) -> Node:
    # bottom-up: a rewritten map inside a contraction inside another rewritten map keeps its rewrite
    memo: dict[int, Node] = {}
    for n in walk([root], stop=lambda x: isinstance(x, Var)):
        kids = [memo.get(id(c), c) for c in n.children()]
        n2 = n.with_children(kids) if any(a is not b for a, b in zip(kids, n.children())) else n
        memo[id(n)] = _stable_map(n2, defs) if isinstance(n2, Map) and n2.fn.has(sp.log) else n2
    return memo[id(root)]


def _stable_map(n: Map, defs: dict[Var, Node]) -> Node:
    from derive.functions import sigmoid, softplus

    fn = n.fn
    args = list(n.args)
    for i, a in enumerate(n.args):
        # a named output, or its entry at integer labels (a gather x_y: log of it is the gather of the log)
        var, swap = (a, lambda x: x) if isinstance(a, Var) else _gathered_var(a)
        d = defs.get(var) if var is not None else a if isinstance(a, Softmax) else None  # named or inline
        if isinstance(d, Map) and d.fn == sigmoid(ARG[0]) and len(d.args) == 1:
            u = ARG[len(args)]
            if swap(d.args[0]) is d.args[0]:
                args.append(d.args[0])
                # log sigma(u) = -softplus(-u) = u - softplus(u); log(1 - sigma(u)) = -softplus(u): one pass
                fn = fn.replace(sp.log(1 - ARG[i]), -softplus(u)).replace(sp.log(ARG[i]), u - softplus(u))
            else:
                lo, l1 = ARG[len(args)], ARG[len(args) + 1]
                args += [swap(map_(-softplus(-ARG[0]), d.args)), swap(map_(-softplus(ARG[0]), d.args))]
                fn = fn.replace(sp.log(1 - ARG[i]), l1).replace(sp.log(ARG[i]), lo)
            fn = sp.expand(fn)
        elif isinstance(d, Softmax):
            ls = ARG[len(args)]
            args.append(swap(LogSoftmax(d.x, d.axis)))
            fn = fn.replace(sp.log(ARG[i]), ls)
    return map_(fn, args, n.shape) if fn != n.fn else n


def _gathered_var(a: Node) -> tuple[Var | None, Callable[[Node], Node]]:
    """For a gather ``v_y`` (a contraction of a named ``v`` with a one-hot encoding): ``v`` and the function
    that gathers another tensor shaped like ``v`` at the same labels."""
    from derive.tensor import OneHot

    if not (isinstance(a, Einsum) and len(a.operands) == 2 and any(isinstance(o, OneHot) for o in a.operands)):
        return None, lambda x: x
    k = next(i for i, o in enumerate(a.operands) if not isinstance(o, OneHot))
    v = a.operands[k]
    if not isinstance(v, Var):
        return None, lambda x: x

    def swap(x: Node) -> Node:
        ops = list(a.operands)
        ops[k] = x
        return a.with_children(ops)

    return v, swap


# --------------------------------------------------------------------------------------------------
# Printing scalar expressions
# --------------------------------------------------------------------------------------------------


def _print_add(printer: Any, expr: sp.Add) -> str:
    """``a - b`` rather than ``-b + a``: positive terms first, no negation to compute."""
    from derive.latex import signed_sum

    return signed_sum(expr, printer._print, lambda b: f"({b})", "-")


class _NumpyScalar(NumPyPrinter):
    def __init__(self, names: dict[sp.Symbol, str]):
        super().__init__({"fully_qualified_modules": False, "allow_unknown_functions": False})
        self._module = "np"
        self.names = names

    def _print_Add(self, expr: sp.Add, order: Any = None) -> str:
        return _print_add(self, expr)

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        return self.names.get(expr, str(expr))

    def _print_erf(self, expr: sp.Expr) -> str:
        # SymPy's NumPy printer writes math.erf, which takes one float: scipy.special.erf takes arrays
        return f"ops.erf({self._print(expr.args[0])})"

    def _module_format(self, fqn: str, register: bool = True) -> str:
        return fqn.replace("numpy.", "np.")


class _TorchScalar(TorchPrinter):
    def __init__(self, names: dict[sp.Symbol, str]):
        super().__init__({"fully_qualified_modules": True})
        self.names = names

    def _print_Add(self, expr: sp.Add, order: Any = None) -> str:
        return _print_add(self, expr)

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        return self.names.get(expr, str(expr))

    def _print(self, expr: Any, **kwargs: Any) -> str:
        # sizes and hyperparameters are Python numbers: torch functions reject them, plain Python does not
        if isinstance(expr, sp.Expr) and not expr.is_Atom and not (expr.free_symbols & set(self.names)):
            return "(" + str(sp.pycode(expr, fully_qualified_modules=True)) + ")"
        return str(super()._print(expr, **kwargs))


@functools.lru_cache(maxsize=4096)
def _float_number(e: sp.Expr) -> sp.Expr | None:
    """The value of the number ``e`` as floating point computes it where its formula does not give that:
    NaN where it is not real (``log(-1)``, ``sqrt(-2)``: what torch and NumPy return), an infinity where it
    exceeds the largest double, the double nearest its value where a part of it does (``1/(1 + e^{800})`` would
    raise OverflowError in ``math.exp``); None where the formula prints as it is (``math.sqrt(2)``)."""
    if e.is_Rational or e in (sp.oo, -sp.oo, sp.nan) or isinstance(e, sp.NumberSymbol | sp.Float):
        return None
    v = sp.N(e, 30)
    if v.has(sp.nan, sp.zoo) or not v.is_number:
        return sp.nan
    re_v, im_v = v.as_real_imag()
    if im_v != 0 or not re_v.is_comparable:
        return sp.nan
    x = float(re_v)
    if math.isinf(x):
        return sp.oo if x > 0 else -sp.oo
    for part in sp.preorder_traversal(e):
        if isinstance(part, sp.Expr) and part.is_number and not part.is_Rational and part is not e:
            w = sp.N(part, 30)
            pr, pi = w.as_real_imag()
            if pi != 0 or not pr.is_comparable or math.isinf(float(pr)):
                return sp.Float(x, 17)
    return None


def real_numbers(e: Any) -> Any:
    """``e`` with each part that is a number written as floating point can compute it (:func:`_float_number`):
    generated code never holds a complex number, nor a ``math`` call that overflows."""
    if not isinstance(e, sp.Expr) or e.is_Atom and e is not sp.I and e is not sp.zoo:
        return e
    if e.is_number:
        v = _float_number(e)
        return e if v is None else v
    if not any(a.is_number and not a.is_Rational for a in e.atoms(sp.Function, sp.Pow, sp.Mul, sp.Add)):
        return e
    return e.func(*(real_numbers(a) for a in e.args))


def scalar_code(expr: sp.Expr, names: dict[sp.Symbol, str], backend: str) -> str:
    printer: Any = _NumpyScalar(names) if backend == "numpy" else _TorchScalar(names)
    return str(printer.doprint(real_numbers(expr)))


def dim_code(expr: Any) -> str:
    """Python code of a dimension expression (dimension symbols are local variables). Output sizes such as
    floor((H + 2P - D(k - 1) - 1) / S) + 1 use integer division: floats would round 0.999... down."""
    e = real_numbers(as_expr(expr))
    if e.is_Integer:
        return str(int(e))
    floors = list(e.atoms(sp.floor))
    if not floors:
        return str(sp.pycode(e, fully_qualified_modules=True))
    names = {}
    for i, f in enumerate(floors):
        num, den = sp.fraction(sp.together(f.args[0]))
        if not den.is_Integer:
            return str(sp.pycode(e, fully_qualified_modules=True))
        names[sp.Symbol(f"__floor{i}")] = f"(({dim_code(sp.expand(num))}) // {int(den)})"
    code = str(sp.pycode(e.xreplace({f: s for f, s in zip(floors, names)}), fully_qualified_modules=True))
    for s, c in names.items():
        code = code.replace(str(s), c)
    return code


# --------------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------------


class Lowering:
    """Lowers per-sample nodes to batch code for one backend (the ``ctx`` of ``Node.lower``)."""

    def __init__(self, backend: str, model: Model, ref: str):
        self.backend = backend
        self.model = model
        self.ref = ref
        self._batched: dict[int, bool] = {}
        self.sample = dim_code(model.sample) if model.sample is not None else None

    def batched(self, n: Node) -> bool:
        key = id(n)
        if key not in self._batched:
            if isinstance(n, Var):
                self._batched[key] = n.batched
            else:
                self._batched[key] = any(self.batched(c) for c in n.children())
        return self._batched[key]

    def shape_code(self, n: Node) -> str:
        dims = [dim_code(d) for d in n.shape]
        if self.batched(n):
            assert self.sample is not None
            dims = [self.sample, *dims]
        return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"

    # -- primitives that need the context ---------------------------------------------------------
    def const(self, c: Const) -> str:
        v = scalar_code(c.value, {}, self.backend)
        if not c.shape:
            return v
        return f"ops.full({self.shape_code(c)}, {v}, {self.ref})"

    def eye(self, e: Eye) -> str:
        return f"ops.eye({dim_code(e.shape[0])}, {self.ref})"

    def dim(self, d: Any) -> str:
        return dim_code(d)

    def causal_mask(self, c: Node) -> str:
        return f"ops.causal_mask({dim_code(c.shape[0])}, {dim_code(c.shape[1])}, {self.ref})"

    def embed_code(self, e: Embed, x: str) -> str:
        ax = e.axis - e.ndim
        return f"ops.embed({x}, {ax}, {e.index}, {dim_code(e.size)}, {self.ref})"

    def map_code(self, m: Map, args: Sequence[str]) -> str:
        names = {}
        mb = self.batched(m)
        for i, (a, code) in enumerate(zip(m.args, args)):
            if mb and self.batched(a) and a.ndim < m.ndim:
                code = f"{_paren(args[i])}[:, {', '.join(['None'] * (m.ndim - a.ndim))}]"
            names[ARG[i]] = _paren(code)
        return scalar_code(m.fn, names, self.backend)

    def einsum_code(self, e: Einsum, args: Sequence[str], reduce: str | None = None,
                    writable: int | None = None) -> str:
        """Code of a contraction; ``reduce`` (mean/sum) contracts the sample axis too. ``writable``: the index of
        an operand (a buffer nothing else reads) that a Hadamard product may be written over."""
        if reduce is None:
            gathered = self._gather_code(e, args)
            if gathered is not None:
                return gathered
        letters = string.ascii_lowercase
        batched = [self.batched(o) for o in e.operands]
        ins = [("Z" if b else "") + "".join(letters[i] for i in l) for l, b in zip(e.ins, batched)]
        out_b = any(batched) and reduce is None
        out = ("Z" if out_b else "") + "".join(letters[i] for i in e.out)
        coef = e.coef
        if reduce == "mean" and any(batched):
            assert self.model.sample is not None
            coef = coef / self.model.sample
        ops = list(args)
        present = set("".join(ins))
        spread = [c for c in out if c not in present]
        if self.backend == "torch" and not spread:
            gemm = self._torch_gemm(ins, out, ops)
            if gemm is not None:
                fn, a, b = gemm
                if coef == 1:
                    return f"{_paren(a)} @ {_paren(b)}"
                # the scale inside the product (its alpha), not a pass over the result
                return f"ops.matmul({a}, {b}, {dim_code(coef)})"
        if spread and self.backend == "torch":
            inner, idx, tup = self.spread_parts(e, args, coef)
            return f"{_paren(inner)}[{idx}].expand({tup})"
        if spread:
            # broadcast axes: contract what is there, then expand
            inner_out = "".join(c for c in out if c in present)
            inner = self._contract(ins, inner_out, ops)
            idx = ", ".join("None" if c in spread else ":" for c in out)
            shape = [self._letter_dim(e, c) for c in out]
            tup = "(" + ", ".join(shape) + ("," if len(shape) == 1 else "") + ")"
            if self.backend == "torch":
                code = f"{_paren(inner)}[{idx}].expand({tup})"
            else:
                code = f"np.broadcast_to({_paren(inner)}[{idx}], {tup})"
        else:
            code = self._contract(ins, out, ops, writable)
        return _scaled(code, coef)

    def spread_parts(self, e: Einsum, args: Sequence[str], coef: Any = None) -> tuple[str, str, str]:
        """A contraction with broadcast axes (labels only in the output) as the contraction over the axes
        that are there (its scale applied there, to the smaller array), the indexing that adds the others
        (``[:, None]``) and the full shape."""
        letters = string.ascii_lowercase
        batched = [self.batched(o) for o in e.operands]
        ins = [("Z" if b else "") + "".join(letters[i] for i in l) for l, b in zip(e.ins, batched)]
        out = ("Z" if any(batched) else "") + "".join(letters[i] for i in e.out)
        present = set("".join(ins))
        inner_out = "".join(c for c in out if c in present)
        inner = _scaled(self._contract(ins, inner_out, list(args)), e.coef if coef is None else coef)
        idx = ", ".join("None" if c not in present else ":" for c in out)
        shape = [self._letter_dim(e, c) for c in out]
        return inner, idx, "(" + ", ".join(shape) + ("," if len(shape) == 1 else "") + ")"

    def spread_axes(self, e: Einsum) -> frozenset[int]:
        """The axes of a broadcasting contraction's result that its operands span (-1: the sample axis)."""
        present = {lab for l in e.ins for lab in l}
        ax = {i for i, lab in enumerate(e.out) if lab in present}
        return frozenset(ax | ({-1} if self.batched(e) else set()))

    def is_spread(self, n: Node) -> bool:
        return isinstance(n, Einsum) and any(lab not in {x for l in n.ins for x in l} for lab in n.out)

    def torch_gemm(self, e: Einsum, args: Sequence[str], reduce: str | None = None) -> tuple[str, str, str, Any] | None:
        """A contraction that is one matrix product on the torch backend: (addmm | addmv | baddbmm, A, B,
        scale)."""
        if len(e.operands) != 2 or self.backend != "torch" or self._gather_code(e, args) is not None:
            return None
        letters = string.ascii_lowercase
        batched = [self.batched(o) for o in e.operands]
        ins = [("Z" if b else "") + "".join(letters[i] for i in l) for l, b in zip(e.ins, batched)]
        out = ("Z" if any(batched) and reduce is None else "") + "".join(letters[i] for i in e.out)
        coef = e.coef
        if reduce == "mean" and any(batched):
            assert self.model.sample is not None
            coef = coef / self.model.sample
        g = self._torch_gemm(ins, out, list(args))
        return None if g is None else (g[0], g[1], g[2], coef)

    @staticmethod
    def _torch_gemm(ins: Sequence[str], out: str, ops: Sequence[str], t: str = ".T") -> tuple[str, str, str] | None:
        """(addmm | addmv | baddbmm, A, B) with ``A @ B`` the contraction ``ins -> out``, or None."""
        if len(ins) != 2:
            return None
        la, lb = ins
        a, b = ops
        if any(len(set(l)) != len(l) for l in (la, lb, out)):
            return None
        summed = (set(la) & set(lb)) - set(out)
        if set(out) - set(la) - set(lb) or (set(la) | set(lb)) - set(out) - summed or len(summed) != 1:
            return None
        (k,) = summed

        def orient(l: str, x: str, want: str) -> str | None:
            return x if l == want else f"{_paren(x)}{t}" if l == want[::-1] else None

        if len(out) == 2 and len(la) == 2 and len(lb) == 2:
            if out[0] in lb:
                la, lb, a, b = lb, la, b, a
            A, B = orient(la, a, out[0] + k), orient(lb, b, k + out[1])
            return None if A is None or B is None else ("addmm", A, B)
        if len(out) == 1 and {len(la), len(lb)} == {1, 2} and t == ".T":
            if len(la) == 1:
                la, lb, a, b = lb, la, b, a
            A = orient(la, a, out + k)
            return None if A is None or lb != k else ("addmv", A, b)
        if len(out) == 3 and len(la) == 3 and len(lb) == 3 and out[0] == la[0] == lb[0] and t == ".T":
            r = Lowering._torch_gemm([la[1:], lb[1:]], out[1:], [a, b], ".mT")
            return None if r is None or r[0] != "addmm" else ("baddbmm", r[1], r[2])
        return None

    def _gather_code(self, e: Einsum, args: Sequence[str]) -> str | None:
        """``x_y``, a contraction of ``x`` with the one-hot encoding of labels ``y`` along its class axis, as a
        lookup (``ops.gather``): no product with zeros, so an infinite entry away from the label stays out."""
        from derive.tensor import OneHot

        if len(e.operands) != 2:
            return None
        k = next((i for i, o in enumerate(e.operands) if isinstance(o, OneHot)), None)
        if k is None:
            return None
        oh = e.operands[k]
        assert isinstance(oh, OneHot)
        lx, lo = e.ins[1 - k], e.ins[k]
        cls = lo[oh.axis]
        kept = tuple(x for x in lx if x != cls)
        rest = lo[: oh.axis] + lo[oh.axis + 1 :]
        if lx.count(cls) != 1 or len(set(lx)) != len(lx) or e.out != kept or rest not in (kept, ()):
            return None
        idx = oh.index.name
        if not rest and kept and self.batched(oh.index):  # one label per sample, for every position
            idx = f"{idx}[:{', None' * len(kept)}]"
        axis = lx.index(cls) - len(lx)
        return _scaled(f"ops.gather({args[1 - k]}, {idx}, {axis})", e.coef)

    def _letter_dim(self, e: Einsum, c: str) -> str:
        if c == "Z":
            assert self.sample is not None
            return self.sample
        return dim_code(e.dims[string.ascii_lowercase.index(c)])

    def _contract(self, ins: list[str], out: str, ops: list[str], writable: int | None = None) -> str:
        if len(ops) != 2:
            writable = None
        ins, ops = list(ins), list(ops)
        # fold operands whose indices are a subsequence of another's (scalings) by broadcasting
        changed = True
        while changed and len(ops) > 2:
            changed = False
            for i, li in enumerate(ins):
                for j, lj in enumerate(ins):
                    if i != j and set(li) < set(lj) and _subseq(li, lj) and len(ops) > 2:
                        idx = ", ".join(":" if c in li else "None" for c in lj)
                        # (a scalar's code in parentheses too: `c + t13` times A is not `c + t13 * A`)
                        scaled = f"{_paren(ops[i])}[{idx}] * {_paren(ops[j])}" if li else \
                            f"{_paren(ops[i])} * {_paren(ops[j])}"
                        ops[j] = scaled
                        del ins[i], ops[i]
                        changed = True
                        break
                if changed:
                    break
        diagonal = any(len(set(l)) != len(l) for l in ins)  # repeated indices: traces, diagonals
        if len(ops) == 1 and not diagonal:
            return self._single(ins[0], out, ops[0])
        if len(ops) == 2 and not diagonal:
            mm = self._matmul(ins[0], ins[1], out, ops[0], ops[1])
            if mm is not None:
                return mm
            if ins[0] == ins[1] and set(out) <= set(ins[0]):  # a Hadamard product, then sums
                if self.backend == "numpy" and out and set(out) < set(ins[0]):
                    # summed as it multiplies: one pass, no product array (a full sum stays pairwise)
                    return f"np.einsum('{ins[0]},{ins[1]}->{out}', {ops[0]}, {ops[1]})"
                if writable is not None and self.backend == "torch":  # (the same shape: written over in place)
                    return self._single(ins[0], out, f"{ops[writable]}.mul_({ops[1 - writable]})")
                return self._single(ins[0], out, f"{_paren(ops[0])} * {_paren(ops[1])}")
            for i, j in ((0, 1), (1, 0)):  # a sum of one operand, scaled by the other: sum first
                if set(ins[j]) < set(ins[i]) and set(ins[j]) <= set(out) and set(out) <= set(ins[i]):
                    red = self._single(ins[i], out, ops[i])
                    idx = ", ".join(":" if c in ins[j] else "None" for c in out)
                    if "".join(c for c in out if c in ins[j]) == ins[j]:
                        scale = f"{_paren(ops[j])}[{idx}]" if len(ins[j]) < len(out) else ops[j]
                        return f"{_paren(red)} * {_paren(scale)}"
        spec = ",".join(ins) + "->" + out
        if self.backend == "torch":
            return f"torch.einsum('{spec}', {', '.join(ops)})"
        if len(ops) == 2 and not diagonal:  # one (batched) BLAS product between views of the operands
            return f"ops.contract('{spec}', {ops[0]}, {ops[1]})"
        # planning (and BLAS) pays for three or more operands, or for contractions of higher-order tensors
        opt = ", optimize=True" if len(ops) > 2 or any(len(l) >= 4 for l in ins) else ""
        return f"np.einsum('{spec}', {', '.join(ops)}{opt})"

    def _single(self, li: str, out: str, op: str) -> str:
        summed = [i for i, c in enumerate(li) if c not in out]
        kept = "".join(c for c in li if c in out)
        code = op
        if summed:
            ax = tuple(summed)
            axs = str(ax[0]) if len(ax) == 1 else str(ax)
            if len(summed) == len(li):
                code = f"{_paren(op)}.sum()"
            else:
                code = f"{_paren(op)}.sum({'dim' if self.backend == 'torch' else 'axis'}={axs})"
        if kept == out:
            return code
        if len(out) == 2:
            return f"{_paren(code)}.T"
        perm = tuple(kept.index(c) for c in out)
        if self.backend == "torch":
            return f"{_paren(code)}.permute{perm}"
        return f"np.transpose({code}, {perm})"

    def _matmul(self, la: str, lb: str, out: str, a: str, b: str) -> str | None:
        if len(la) > 2 or len(lb) > 2 or len(out) > 2:
            return None
        sa, sb, so = set(la), set(lb), set(out)
        if len(sa) != len(la) or len(sb) != len(lb):
            return None
        shared = sa & sb
        if shared & so or (sa | sb) != (so | shared):
            if not shared and not la:
                return None
            return None
        if len(shared) > 1:
            return None
        if not shared:
            if not la or not lb:  # scalar times tensor
                if (la + lb) != out and len(out) == 2:
                    return None
                if (la + lb) != out:
                    return None
                return f"{_paren(a)} * {_paren(b)}"
            if len(la) == 1 and len(lb) == 1:
                x, y = (a, b) if out == la + lb else (b, a)
                fn = "torch.outer" if self.backend == "torch" else "np.outer"
                return f"{fn}({x}, {y})"
            return None
        (k,) = shared
        # orient a as (rest_a, k) and b as (k, rest_b)
        ra = la.replace(k, "")
        rb = lb.replace(k, "")
        cands = []
        if out == ra + rb:
            a_c = a if (len(la) == 1 or la[-1] == k) else f"{_paren(a)}.T"
            b_c = b if (len(lb) == 1 or lb[0] == k) else f"{_paren(b)}.T"
            cands.append(f"{_paren(a_c)} @ {_paren(b_c)}")
        if out == rb + ra:
            a_t = a if (len(la) == 1 or la[0] == k) else f"{_paren(a)}.T"
            b_t = b if (len(lb) == 1 or lb[-1] == k) else f"{_paren(b)}.T"
            cands.append(f"{_paren(b_t)} @ {_paren(a_t)}")
        if not cands:
            return None
        return min(cands, key=lambda c: c.count(".T"))


#: characters that end a line for Python's tokenizer or for ``str.splitlines`` (and so for linecache and
#: editors), and the other control characters (a NUL makes the module unparsable)
_LINE_BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def comment(text: str) -> str:
    """Text for a generated ``#`` comment: one line, whatever the text holds (a LaTeX label with ``\\r``,
    ``\\n``, ``\\u2028`` or a NUL cannot end the comment and start code). Every generator writes its comments
    through this one helper."""
    return _LINE_BREAKS.sub(" ", str(text))


def _safe(text: str) -> str:
    """Text for a generated docstring: one line (see :func:`comment`), no quotes or backslashes that could
    end it."""
    return re.sub(r"[\\\"\']", " ", comment(text))


def _subseq(a: str, b: str) -> bool:
    it = iter(b)
    return all(c in it for c in a)


def _paren(code: str) -> str:
    if re.fullmatch(r"[A-Za-z_][\w.]*", code) or _balanced_call(code):
        return code
    return f"({code})"


def _balanced_call(code: str) -> bool:
    """True for ``f(...)``/``x[...]``/``(...)`` forms that need no extra parentheses."""
    if not code or code[-1] not in ")]":
        return False
    depth = 0
    for i, ch in enumerate(code):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth == 0 and i != len(code) - 1:
                return False
        elif depth == 0 and not (ch.isalnum() or ch in "._"):
            return False
    return True


def _scaled(code: str, coef: sp.Expr) -> str:
    if coef == 1:
        return code
    if coef == -1:
        return f"-{_paren(code)}"
    num, den = sp.fraction(as_expr(coef))
    if num == 1:
        return f"{_paren(code)} / {_paren(dim_code(den))}"
    if num == -1:
        return f"-{_paren(code)} / {_paren(dim_code(den))}"
    return f"{_paren(dim_code(coef))} * {_paren(code)}"


def _torch_conv(n: Node, code: Callable[[Node], str], low: Lowering, reduce: str | None) -> str | None:
    """On the torch backend, contractions with image windows run as PyTorch's convolution kernels: the
    forward ``W * U(x)`` as ``F.conv2d``, the kernel gradient ``U(x) . delta`` as ``conv2d_weight`` and the
    input gradient ``U*(W^T delta)`` as ``conv2d_input`` (the same sums, without materialising windows)."""
    from derive.tensor import Fold, Unfold

    if low.backend != "torch" or low.model.sample is None:
        return None
    e = n.x if isinstance(n, Fold) else n
    if not isinstance(e, Einsum) or len(e.operands) != 2:
        return None
    if isinstance(n, Fold):
        if reduce is not None or n.x.ndim != 5:
            return None
        for kw_, kd in ((0, 1), (1, 0)):
            W, d = e.operands[kw_], e.operands[kd]
            lw, ld = e.ins[kw_], e.ins[kd]
            if (len(lw) == 4 and len(ld) == 3 and lw[0] == ld[0] and e.out == (*lw[1:], *ld[1:])
                    and not low.batched(W) and low.batched(d)):
                shape = ", ".join([low.sample or "1", *(dim_code(x) for x in n.image)])
                args = f"stride={n.stride}, padding={n.padding}, dilation={n.dilation}"
                return _scaled(f"torch.nn.grad.conv2d_input(({shape}), {code(W)}, {code(d)}, {args})", e.coef)
        return None
    k = next((i for i, o in enumerate(e.operands) if isinstance(o, Unfold) and not o.flat and o.fill == 0), None)
    if k is None:
        return None
    u, other = e.operands[k], e.operands[1 - k]
    assert isinstance(u, Unfold)
    lu, lo = e.ins[k], e.ins[1 - k]
    args = f"stride={u.stride}, padding={u.padding}, dilation={u.dilation}"
    if not low.batched(u):
        return None
    if (reduce is None and len(lo) == 4 and lo[1:] == lu[:3] and e.out == (lo[0], lu[3], lu[4])
            and not low.batched(other)):
        return _scaled(f"torch.nn.functional.conv2d({code(u.x)}, {code(other)}, None, {args})", e.coef)
    if (reduce is not None and len(lo) == 3 and lo[1:] == lu[3:] and e.out == (lo[0], *lu[:3])
            and low.batched(other)):
        wshape = ", ".join(dim_code(e.dims[i]) for i in e.out)
        coef = e.coef / low.model.sample if reduce == "mean" else e.coef
        return _scaled(f"torch.nn.grad.conv2d_weight({code(u.x)}, ({wshape}), {code(other)}, {args})", coef)
    return None


def _torch_pool(n: Node, code: Callable[[Node], str], low: Lowering) -> str | None:
    """On the torch backend, pooling over image windows runs as PyTorch's pooling kernels: ``max`` over the
    windows (padded with -inf) as ``F.max_pool2d``, the adjoint ``U*(spread(g) 1_argmax(U(x)))`` as
    ``aten.max_pool2d_with_indices_backward`` (both route to the first maximum of a window, NaN as PyTorch
    does), and the window mean ``c sum U(x)`` (padded with 0, so the divisor is ``k_h k_w``, PyTorch's
    ``count_include_pad``) as ``F.avg_pool2d``. Only where PyTorch takes the windows: padding at most half
    the (dilated) kernel, per-sample (C, H, W) images."""
    from derive.primitives.axis import ArgMaxMask, Max
    from derive.tensor import Fold, Unfold

    if low.backend != "torch" or low.model.sample is None:
        return None

    def windows(u: Node, fill: float) -> str | None:
        if not (isinstance(u, Unfold) and u.flat and u.x.ndim == 3 and low.batched(u.x)):
            return None
        if u.padding and u.fill != fill:
            return None
        kh, kw = u.kernel
        if not (isinstance(kh, int) and isinstance(kw, int)):
            return None
        if any(2 * u.padding > (k - 1) * u.dilation + 1 for k in (kh, kw)):
            return None
        return f"({kh}, {kw}), {u.stride}, {u.padding}, {u.dilation}"

    if isinstance(n, Max) and n.axis % n.x.ndim == 1:
        args = windows(n.x, -math.inf)
        if args is not None:
            return f"torch.nn.functional.max_pool2d({code(n.x.x)}, {args})"  # type: ignore[attr-defined]
        return None
    if isinstance(n, Einsum) and len(n.operands) == 1 and n.ins == ((0, 1, 2, 3),) and n.out == (0, 2, 3):
        u = n.operands[0]
        args = windows(u, 0.0)
        if args is None or not isinstance(u, Unfold) or u.dilation != 1:
            return None
        size = int(u.kernel[0]) * int(u.kernel[1])
        pool = f"{u.kernel}, {u.stride}, {u.padding}"
        if as_expr(n.coef) * size == 1:  # the mean of each window
            return f"torch.nn.functional.avg_pool2d({code(u.x)}, {pool})"
        # another multiple of the window sums: the sums (divisor 1), then the factor
        return _scaled(f"torch.nn.functional.avg_pool2d({code(u.x)}, {pool}, False, True, 1)", n.coef)
    if not isinstance(n, Fold):
        return None
    if isinstance(n.x, Einsum) and len(n.x.operands) == 1 and n.x.ins == ((0, 1, 2),) and n.x.out == (0, 3, 1, 2):
        # the window sums' adjoint: g spread over each window, summed back onto the image
        kh, kw = n.kernel
        if (not n.flat or n.dilation != 1 or len(n.image) != 3 or not isinstance(kh, int)
                or not isinstance(kw, int) or not low.batched(n.x.operands[0])
                or any(2 * n.padding > k for k in (kh, kw))):
            return None
        shape = ", ".join([str(low.sample), *(dim_code(x) for x in n.image)])
        mean = as_expr(n.x.coef) * kh * kw == 1  # the mean's adjoint: PyTorch's divisor, no pass of its own
        call = (f"ops.avg_pool2d_backward({code(n.x.operands[0])}, ({shape}), {n.kernel}, {n.stride}, "
                f"{n.padding}{', True' if mean else ''})")
        return call if mean else _scaled(call, n.x.coef)
    if not (isinstance(n.x, Map) and n.x.fn == ARG[0] * ARG[1] and len(n.x.args) == 2):
        return None
    for k in (0, 1):
        g, mask = n.x.args[k], n.x.args[1 - k]
        if not (isinstance(mask, ArgMaxMask) and mask.axis % mask.x.ndim == 1 and isinstance(mask.x, Unfold)):
            continue
        u = mask.x
        # g spread over the window axis: (C, oh, ow) -> (C, K, oh, ow)
        if not (isinstance(g, Einsum) and len(g.operands) == 1 and g.ins == ((0, 1, 2),) and g.out == (0, 3, 1, 2)):
            continue
        args = windows(u, -math.inf)
        if (args is None or tuple(n.image) != tuple(u.x.shape)
                or (n.kernel, n.stride, n.padding, n.dilation) != (u.kernel, u.stride, u.padding, u.dilation)):
            continue
        return _scaled(f"ops.max_pool2d_backward({code(g.operands[0])}, {code(u.x)}, {args})", g.coef)
    return None


_CONV_INPUT = re.compile(r"torch\.nn\.grad\.conv2d_input\(\(([^()]*)\), (\w+), (\w+), (stride=[^()]*)\)")
_CONV_WEIGHT = re.compile(r"torch\.nn\.grad\.conv2d_weight\((\w+), \(([^()]*)\), (\w+), (stride=[^()]*)\)")
_CONV_BIAS = re.compile(r"torch\.add\((\w+)\[:, None, None\], torch\.nn\.functional\.conv2d\((\w+), (\w+), None, "
                        r"(stride=[^()]*)\)\)")


_INNER = re.compile(r"\((\w+) \* (\w+)\)\.sum\((dim=(?:\d+|\([\d, ]+\)))?\)")
#: the same product written over its first factor (a buffer of the kernel's that only this line reads)
_INNER_SCRATCH = re.compile(r"(\w+)\.mul_\((\w+)\)\.sum\((dim=(?:\d+|\([\d, ]+\)))?\)")


#: calls whose result is always a new array (never a view of, or the same array as, an argument): a buffer such a
#: line makes is the kernel's own
_FRESH_CALLS = ("torch.native_layer_norm(", "torch.native_batch_norm(", "torch.nn.functional.gelu(",
                "torch.nn.functional.silu(", "torch.nn.functional.elu(", "torch.nn.functional.leaky_relu(",
                "torch.nn.functional.conv2d(", "torch.nn.functional.max_pool2d(", "torch.nn.functional.avg_pool2d(",
                "torch.relu(", "torch.sigmoid(", "torch.tanh(", "torch.addmm(",
                "torch.baddbmm(", "torch.add(", "ops.matmul(")


def _scratch(lines: list[Any], name: str, at: int, dead: Sequence[str]) -> bool:
    """Whether ``name`` is a buffer the kernel made (the first target of a line calling one of
    :data:`_FRESH_CALLS`, or a matrix product ``x @ y``) whose last use is line ``at`` (``dead``: that line's
    entry of :func:`_last_uses`, which never lists an argument or a returned value): one its loss may write
    over."""
    if name not in dead:
        return False
    made = [i for i, ln in enumerate(lines[:at]) if isinstance(ln, _Line)
            and ln.target.split(",")[0].strip() == name]
    if len(made) != 1:
        return False
    return _makes_new_array(lines[made[0]].code)


def _makes_new_array(code: str) -> bool:
    """Whether ``code`` is one call of :data:`_FRESH_CALLS` (nothing after its closing parenthesis: no ``.T``, no
    ``.expand(...)``) or a matrix product of two names (transposed views allowed): a new array, never a view of or
    the same array as an argument."""
    if re.fullmatch(r"\w+(?:\.mT|\.T)? @ \w+(?:\.mT|\.T)?", code):
        return True
    if not code.startswith(_FRESH_CALLS):
        return False
    depth = 0
    for i, ch in enumerate(code):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i == len(code) - 1
    return False


def _inner_products(lines: list[Any], sample: str | None, keep: set[str]) -> list[Any]:
    """Torch lines with a per-sample loss that is an elementwise product summed over each sample's entries
    (``C = <G, y>``), read only by the batch's sum or mean, as one dot product over all entries
    (:func:`numeric.ops_torch.inner`): one read of each operand, no product array, no second reduction (the sum
    of the per-sample sums is the sum of all products) in float64 (0.3 ms of 0.6 ms at 4096 x 256, warm);
    float32 keeps the product and torch's sum, whose rounding a BLAS dot does not match. (NumPy's kernels keep
    their einsum.)"""
    out = list(lines)
    for k, ln in enumerate(out):
        if not (isinstance(ln, _Line) and ln.target == "loss"):
            continue
        mt = re.fullmatch(r"(\w+)(?:\.(sum|mean)\(\))?", ln.code)
        if mt is None or (mt.group(2) == "mean" and sample is None):
            continue
        c = mt.group(1)
        at = next((i for i in range(k - 1, -1, -1) if isinstance(out[i], _Line) and out[i].target == c), None)
        if at is None:
            continue
        prod = _INNER.fullmatch(out[at].code)
        written = _INNER_SCRATCH.fullmatch(out[at].code)
        prod = prod if prod is not None else written
        if prod is None or (mt.group(2) is None and prod.group(3) is not None):  # (loss = C: C the full sum)
            continue
        a, b = prod.group(1), prod.group(2)
        readers = [i for i, o in enumerate(out) if isinstance(o, _Line) and re.search(rf"\b{c}\b", o.code)]
        if readers != [k]:
            continue
        total = f"ops.inner({a}, {b})"
        dead = _last_uses(out, keep)[at] if a != b else []
        if written is not None:  # a, written over, is a buffer of the kernel's that no later line reads
            total = f"ops.inner({b}, {a}, True)"
        elif _scratch(out, b, at, dead):
            total = f"ops.inner({a}, {b}, True)"
        elif _scratch(out, a, at, dead):
            total = f"ops.inner({b}, {a}, True)"
        out[k] = _Line("loss", f"{total} / {sample}" if mt.group(2) == "mean" else total, ln.comment)
        out[at] = None
    return [ln for ln in out if ln is not None]


_SOFTMAX_BACKWARD = re.compile(r"\((\w+) - \(\(\((\w+) \* (\w+)\)\.sum\(dim=(\d+)\)\)\[((?::, )*)None((?:, :)*)\]\)\)"
                               r"\.mul_\((\w+)\)")


def _softmax_backwards(lines: list[Any]) -> list[Any]:
    """Torch lines with the adjoint of a softmax's input, ``(u - (A * u).sum(dim=k)[..., None, ...]).mul_(A)`` as
    the planner prints it (the sum broadcast back along ``k``), as one call of ATen's softmax backward
    (:func:`numeric.ops_torch.softmax_backward`; the same formula for any ``A``)."""

    def fused(mt: re.Match[str]) -> str:
        u, x, y, dim, before, after, a = mt.groups()
        if {x, y} != {u, a} or before.count(":") != int(dim) or u == a:
            return mt.group(0)
        return f"ops.softmax_backward({u}, {a}, {dim})"

    return [_Line(ln.target, _SOFTMAX_BACKWARD.sub(fused, ln.code), ln.comment)
            if isinstance(ln, _Line) and ".mul_(" in ln.code else ln for ln in lines]


def _paired_conv_grads(lines: list[Any], args: Sequence[str], fresh: Callable[[], str]) -> list[Any]:
    """Torch lines with the convolutions' calls merged as autograd makes them: a bias added to a convolution's
    output is the convolution's own bias (``F.conv2d(x, w, b)``: no pass of its own), and the input and
    weight gradients of one convolution (``conv2d_input(shape, W, D)`` and ``conv2d_weight(X, shape, D)``, the
    same adjoint ``D`` and arguments), with ``D.sum(dim=(0, 2, 3))`` (its bias gradient) where a line has it,
    are one ``aten.convolution_backward`` (:func:`numeric.ops_torch.conv2d_grads`) instead of two: 20-25% of a
    conv2d layer's forward+backward. The merged call goes where the first of them was, with operands assigned
    before it (or the kernel's arguments)."""
    out = list(lines)
    for k, ln in enumerate(out):
        if isinstance(ln, _Line) and "torch.add(" in ln.code:
            out[k] = _Line(ln.target, _CONV_BIAS.sub(r"torch.nn.functional.conv2d(\2, \3, \1, \4)", ln.code),
                           ln.comment)
    inputs = [(i, mt) for i, ln in enumerate(out) if isinstance(ln, _Line) for mt in _CONV_INPUT.finditer(ln.code)]
    weights = [(i, mt) for i, ln in enumerate(out) if isinstance(ln, _Line) for mt in _CONV_WEIGHT.finditer(ln.code)]
    inserts: dict[int, list[Any]] = {}
    taken: set[tuple[int, int]] = set()
    for j, mw in weights:
        x, wshape, d, conv_args = mw.groups()
        known = set(args) | {t.strip() for ln in out[:j] if isinstance(ln, _Line) for t in ln.target.split(",")}
        if not {x, d} <= known:
            continue
        pair = None
        for i, mi in inputs:
            xshape, w, d2, args2 = mi.groups()
            at = min(i, j)
            before = set(args) | {t.strip() for ln in out[:at] if isinstance(ln, _Line) for t in ln.target.split(",")}
            if (i, mi.start()) not in taken and d2 == d and args2 == conv_args and {x, w, d} <= before:
                pair = (i, mi, xshape, w)
                break
        at = min(j, pair[0]) if pair else j
        total = f"{d}.sum(dim=(0, 2, 3))"
        bias = [k for k, ln in enumerate(out) if isinstance(ln, _Line) and k >= at and total in ln.code]
        if pair is None and not bias:
            continue
        gw = fresh()
        gx = fresh() if pair else None
        gb = fresh() if bias else None
        edits = [(j, mw.group(0), gw)]
        if pair:
            taken.add((pair[0], pair[1].start()))
            edits.append((pair[0], pair[1].group(0), str(gx)))
        for k, old, new in edits:
            ln = out[k]
            out[k] = _Line(ln.target, ln.code.replace(old, new, 1), ln.comment)
        for k in bias:
            ln = out[k]
            out[k] = _Line(ln.target, ln.code.replace(total, str(gb)), ln.comment)
        names = [n for n in (gx, gw, gb) if n is not None]
        moved: list[Any] = []
        for k in sorted({j, *bias, *([pair[0]] if pair else [])}):  # a line that is just a gradient: its name
            ln = out[k]                                                # is the merged call's target
            if ln.code in names and "," not in ln.target:
                names[names.index(ln.code)] = ln.target
                out[k] = None
                if k > at and isinstance(out[k - 1], str):  # (its equation's LaTeX goes with it)
                    moved.append(out[k - 1])
                    out[k - 1] = None
        w_code, x_shape = (pair[3], f"({pair[2]})") if pair else ("None", "None")
        flag = ", True" if gb else ""
        inserts.setdefault(at, []).extend(moved + [
            _Line(", ".join(names), f"ops.conv2d_grads({d}, {x}, {w_code}, {x_shape}, ({wshape}){flag}, {conv_args})")])
    if not inserts:
        return out
    res: list[Any] = []
    for k, ln in enumerate(out):
        res.extend(inserts.get(k, []))
        if ln is not None:
            res.append(ln)
    return res


_MAX_POOL = re.compile(r"torch\.nn\.functional\.max_pool2d\((\w+), (\([^()]*\), \d+, \d+, \d+)\)")
_MAX_POOL_BACKWARD = r"ops\.max_pool2d_backward\(((?:[^()]|\([^()]*\))*?), {x}, {args}\)"


def _pooling_indices(lines: list[Any], fresh: Callable[[], str]) -> list[Any]:
    """Torch lines with a max pooling whose adjoint the kernel also takes: the forward keeps the pooling's
    indices (``ops.max_pool2d_with_indices``, as autograd's forward does) and the backward reads them instead of
    pooling the image again. Only a line that is the pooling alone, of a named array, with the same windows."""
    out = list(lines)
    for k, ln in enumerate(out):
        if not (isinstance(ln, _Line) and "," not in ln.target):
            continue
        mt = _MAX_POOL.fullmatch(ln.code)
        if mt is None:
            continue
        x, args = mt.groups()
        back = re.compile(_MAX_POOL_BACKWARD.format(x=re.escape(x), args=re.escape(args)))
        later = [j for j in range(k + 1, len(out)) if isinstance(out[j], _Line) and back.search(out[j].code)]
        if not later:
            continue
        idx = fresh()
        out[k] = _Line(f"{ln.target}, {idx}", f"ops.max_pool2d_with_indices({x}, {args})", ln.comment)
        tail = f", {x}, {args}, {idx})"
        for j in later:
            lj = out[j]
            out[j] = _Line(lj.target, back.sub(functools.partial(_with_indices, tail=tail), lj.code), lj.comment)
    return out


def _with_indices(mt: re.Match[str], tail: str) -> str:
    return f"ops.max_pool2d_backward({mt.group(1)}{tail}"


def _reuse_violations(lines: Sequence[Any], consumed: set[str], keep: set[str]) -> set[str]:
    """The names of ``consumed`` (buffers a map was allowed to write over, :attr:`_Emitter.reuse`) whose printed
    ``lines`` contradict that permission: one line must assign the name, and at most one later line read it,
    once (a name in ``keep``, an argument or a result, is never one to write over). Counted on the final text,
    after every line pass, so that whatever printed a name twice is caught."""
    bad: set[str] = set()
    for name in consumed:
        mention = re.compile(rf"(?<![\w.]){re.escape(name)}(?!\w)")
        made = [i for i, ln in enumerate(lines) if isinstance(ln, _Line)
                and name in (t.strip() for t in ln.target.split(","))]
        reads = [(i, len(mention.findall(ln.code))) for i, ln in enumerate(lines)
                 if isinstance(ln, _Line) and mention.search(ln.code)]
        if name in keep or len(made) != 1 or len(reads) > 1 or any(c != 1 or i <= made[0] for i, c in reads):
            bad.add(name)
    return bad


def _last_uses(lines: Sequence[Any], keep: set[str]) -> list[list[str]]:
    """Per line, the variables whose last use it is (not arguments or outputs): releasing their buffers
    there lets the allocator reuse memory instead of mapping fresh pages (about 1 ms of a 3 ms kernel at
    n = 4096 on this machine)."""
    assigned: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, ln in enumerate(lines):
        if isinstance(ln, str):
            continue
        for name in re.findall(r"[A-Za-z_]\w*", ln.code):
            if name in assigned:
                last[name] = i
        for t in ln.target.replace(" ", "").split(","):
            assigned.setdefault(t, i)
            last.setdefault(t, i)
    out: list[list[str]] = [[] for _ in lines]
    for name, at in last.items():
        if name not in keep:
            out[at].append(name)
    return out


@dataclass
class _Line:
    target: str
    code: str
    comment: str = ""


def _constants(m: Model) -> list[str]:
    return [f"{k} = {v!r}" for k, v in m.constants.items()]


def _module(m: Model, backend: str, doc: Sequence[str], names: Sequence[str], body: Sequence[str], ret: str,
            eqs: Sequence[Equation], dims: Sequence[sp.Symbol] = (), footer: Sequence[str] = ()) -> str:
    """A generated module: docstring, imports, named constants, and ``kernel`` with the dimensions it uses
    (those of ``eqs``, and ``dims``) read off the array shapes (then the lines of ``footer``)."""
    words = set(re.findall(r"\w+", "\n".join(body)))  # one pass (a search per dimension was quadratic in depth)
    header = [f"    {d} = {c}" for d, c in _dim_sources(m, _dims_needed(eqs, m) | set(dims)).items() if d in words]
    from .aliasing import owned_return

    # never an argument, or a view of one, returned (nor one array as two results): a copy where one may be
    ret = owned_return([a for a in names if a.isidentifier()], body, ret)
    lib = "numpy as np\nfrom numeric import ops_numpy as ops" if backend == "numpy" else \
        "torch\nfrom numeric import ops_torch as ops"
    return "\n".join([f'"""{doc[0]}', *doc[1:], '"""', "", f"import math\n\nimport {lib}", "", *_constants(m),
                      "", "", f"def kernel({', '.join(names)}):", *header, *body, f"    return {ret}", *footer, ""])


def generate_update(m: Model, backend: str) -> str:
    """The module of an update program: ``kernel(<state>, g) -> {state: next value}``."""
    names = list(m.params) + list(m.inputs)
    low = Lowering(backend, m, names[0])
    texs = equations_tex(m.equations)
    body: list[str] = []
    for eq, tx in zip(m.equations, texs):
        body.append("    # " + comment(tx))
        body.append(f"    {eq.lhs.name} = {_plain_code(eq.rhs, backend, low)}")
    ret = "{" + ", ".join(f'"{k}": {v}' for k, v in m.update.items()) + "}"
    doc = [f"dlmath update program {_safe(m.name)} ({_safe(m.section)}), {backend} backend. Generated by dlmath; "
           "do not edit.", "", "kernel(state..., g) returns the next state."]
    return _module(m, backend, doc, names, body, ret, m.equations)


def generate_scan(m: Model, backend: str) -> str:
    """The module of a recurrence: the step's forward equations in a loop over t = 1..T (saving what the
    backward pass needs), then its adjoint equations in a loop over t = T..1 that carries the adjoint of the
    state back. Only what the recurrence needs runs in the loops: the equations no state depends on (the output
    layer, the loss) run for all steps at once after the forward loop, as do the adjoints that do not depend on
    the carried adjoint and the products of those with parameters; the parameter gradients sum over the steps
    after the backward loop, one product over all ``T n`` rows each. The products of the state with the gates'
    weights run stacked, one product per step forward and one backward (see :mod:`numeric.scan_lowering`)."""
    from derive.scan import scan_program
    from derive.tensor import substitute

    from .scan_lowering import Names, stack_adjoints, stack_gates

    assert m.scan is not None
    sp_ = scan_program(m)
    step = sp_.step
    names = [k for k in [*m.params, *m.inputs] if k not in m.carries]
    low = Lowering(backend, step, names[0])
    forward = stabilize(list(m.equations))
    defs = {eq.lhs: eq.rhs for eq in m.equations}
    adjoint = reuse_outputs([e for e in sp_.adjoint if e.kind != "grad"], defs)
    grads = reuse_outputs([e for e in sp_.adjoint if e.kind == "grad"], defs)
    texs = dict(zip([e.lhs.name for e in m.equations], equations_tex(list(m.equations))))
    atexs = dict(zip([e.lhs.name for e in sp_.adjoint], equations_tex(sp_.adjoint)))
    zeros = "np.zeros" if backend == "numpy" else "torch.zeros"
    zeros_like = "np.zeros_like" if backend == "numpy" else "torch.zeros_like"
    cat = "np.concatenate" if backend == "numpy" else "torch.cat"
    like = names[0]
    T = dim_code(m.scan.time)
    seqs = m.scan.sequences
    seq_vars = {s: m.inputs[s].name for s in seqs}
    rename = {v: f"{v}_t" for v in seq_vars.values()}
    carried = {prev: sp_.carry_in[prev].name for prev, _ in m.scan.carries}
    fresh = Names(_Emitter([e.rhs for e in forward + adjoint + grads], backend, low).taken)
    low_all = Lowering(backend, step, like)  # code over all T n rows at once
    low_all.sample = f"({T} * {low.sample})"

    # -- what the recurrence needs in its loop; the rest runs for all steps at once ------------------------
    lhs = {eq.lhs.name for eq in forward}
    loss = m.equations[-1].lhs.name
    need = {nxt for _, nxt in m.scan.carries}
    for eq in reversed(forward):
        if eq.lhs.name in need:
            need |= {v.name for v in walk([eq.rhs]) if isinstance(v, Var) and v.name in lhs}
    if loss in need:
        need = set(lhs)
    core = [eq for eq in forward if eq.lhs.name in need]
    tail = [eq for eq in forward if eq.lhs.name not in need]
    states = [m.inputs[p].name for p, _ in m.scan.carries]
    avail = lhs | set(states) | set(seq_vars.values())  # per-step values that can be had for all steps
    pre: list[Equation] = []  # adjoints that do not depend on the carried adjoints
    for eq in adjoint:
        leaves = [v for v in walk([eq.rhs]) if isinstance(v, Var)]
        if low.batched(eq.rhs) and all(not v.batched or v.name in avail for v in leaves):
            pre.append(eq)
            avail.add(eq.lhs.name)
    rest = [eq for eq in adjoint if eq not in pre]
    carry_names = {e.lhs.name for e in sp_.carry_out.values()}
    in_loop = rest + [e for e in grads if e.lhs.name in carry_names]
    param_grads = [e for e in grads if e.lhs.name not in carry_names]

    body: list[str] = []
    for prev, _ in m.scan.carries:
        shape = low.shape_code(m.inputs[prev])
        kw = f"dtype={like}.dtype" + (f", device={like}.device" if backend == "torch" else "")
        body.append(f"    {prev} = {zeros}({shape}, {kw})")
        body.append(f"    {carried[prev]} = {zeros_like}({prev})")
    stacking = stack_gates(core, {m.inputs[p] for p, _ in m.scan.carries}, {m.inputs[s] for s in seqs},
                           backend, fresh, dim_code)
    body.extend(f"    {ln}" for ln in stacking.before)
    body.append("    tape = []")
    # Projections of the sequences by parameters (W_hx x^{<t>}) do not depend on the state: they are
    # computed for all t at once before the loop (one matrix product instead of T small ones).
    fwd_eqs = stacking.forward
    fwd = _Emitter([e.rhs for e in fwd_eqs], backend, low, "f")
    # a subexpression the backward loop reads too (tanh(c)): computed once, taped
    fwd._count_shared([e.rhs for e in in_loop])
    for i, (node, code) in enumerate(_hoisted_projections(fwd_eqs, m, low, backend)):
        body.append(f"    xw{i + 1} = {code}")
        fwd.temps[id(node)] = f"xw{i + 1}[t]"
    loop: list[str] = []
    loop.extend(f"        {ln}" for ln in stacking.step)
    for eq in fwd_eqs:
        code = fwd.code(eq.rhs)
        loop.extend(f"        {t} = {_rename(c, rename)}" for t, c in fwd.take())
        loop.append("        # " + comment(texs[eq.lhs.name]))
        loop.append(f"        {eq.lhs.name} = {_rename(code, rename)}")
    if not tail:
        loop.append(f"        loss = loss + {loss}.mean() * {_paren(dim_code(m.scan.weight))}")
    # the shared subexpressions the forward loop computed (the backward's own join the same memo later)
    shared_fwd = [c for memo in fwd.shared_memo.values() for op in memo.values()
                  for c in [op if isinstance(op, str) else op.code] if re.fullmatch(r"[A-Za-z_]\w*", c)]

    # -- after the forward loop: the flattened (T n, ...) arrays of the values needed for all steps --------
    back_eqs, back_stacks = stack_adjoints(in_loop, stacking.groups, fresh)
    hoist: dict[int, tuple[Node, str]] = {}  # products the backward loop reads, computed for all steps
    for eq in back_eqs:
        for nd in walk([eq.rhs], stop=lambda x: isinstance(x, Var) or id(x) in hoist):
            if (isinstance(nd, Einsum) and id(nd) not in hoist and low.batched(nd)
                    and all(not v.batched or v.name in avail for v in walk([nd]) if isinstance(v, Var))):
                hoist[id(nd)] = (nd, fresh("zw"))
    roots = [e.rhs for e in tail + pre] + [nd for nd, _ in hoist.values()]
    used = {v.name for v in walk(roots) if isinstance(v, Var) and v.batched}
    flat: dict[str, str] = {}
    post_fwd: list[str] = []
    keep_fwd: list[str] = []
    stacked_lines: dict[str, int] = {}  # a loop value -> the line of post_fwd that stacks its steps
    for v in [*states, *(eq.lhs.name for eq in core), *seq_vars.values()]:
        if v in seq_vars.values():
            flat[v] = fresh(f"{v}_all")
            post_fwd.append(f"    {flat[v]} = {v}.reshape(-1, *{v}.shape[2:])")
        elif v in used:
            flat[v] = fresh(f"{v}_all")
            hist = fresh(f"{v}_fs")
            body.append(f"    {hist} = [None] * {T}")
            keep_fwd.append(f"        {hist}[t] = {v}")
            post_fwd.append(f"    {flat[v]} = {cat}({hist})")
            stacked_lines[v] = len(post_fwd) - 1
    for eq in tail + pre:
        flat[eq.lhs.name] = fresh(f"{eq.lhs.name}_all")
    mapping: dict[Node, Node] = {}
    for leaf in walk(roots):
        if isinstance(leaf, Var) and leaf.batched and leaf.name in flat:
            mapping[leaf] = Var(flat[leaf.name], leaf.shape, leaf.role, batched=True, domain=leaf.domain)
    post = _Emitter([substitute(r, mapping) for r in roots], backend, low_all, "a")
    post.taken |= fresh.taken
    post_rhs = [substitute(eq.rhs, mapping) for eq in tail + pre]
    partners = _log_softmax_partners(post_rhs)
    for i, eq in enumerate(tail + pre):
        if i in partners:  # the softmax and its log-softmax from one exponential (as in _kernel)
            sm = post_rhs[i]
            assert isinstance(sm, Softmax)
            log_name = fresh(f"log_{eq.lhs.name}_all")
            post.temps[id(partners[i])] = log_name
            code = post.code(sm.x)
            post_fwd.extend(f"    {t} = {c}" for t, c in post.take())
            post_fwd.append("    # " + comment(texs[eq.lhs.name] if eq in tail else atexs[eq.lhs.name]) + " (all steps)")
            post_fwd.append(f"    {flat[eq.lhs.name]}, {log_name} = ops.softmax_and_log({code}, {sm._code_axis()})")
            continue
        code = post.code(post_rhs[i])
        post_fwd.extend(f"    {t} = {c}" for t, c in post.take())
        tex = texs[eq.lhs.name] if eq in tail else atexs[eq.lhs.name]
        post_fwd.append("    # " + comment(tex) + " (all steps)")
        post_fwd.append(f"    {flat[eq.lhs.name]} = {code}")
        if eq.lhs.name == loss:
            post_fwd.append(f"    loss = {flat[loss]}.mean() * {T} * {_paren(dim_code(m.scan.weight))}")
    steps: dict[str, str] = {}  # flattened array -> its (T, n, ...) view
    bwd = _Emitter([e.rhs for e in back_eqs + param_grads], backend, low, "b")
    # the step's shared subexpressions, as the forward loop computed them
    bwd.node_symbols, bwd.shared_memo = fwd.node_symbols, fwd.shared_memo
    bwd.shared.update(fwd.shared)
    for nd, name in hoist.values():
        code = post.code(substitute(nd, mapping))
        post_fwd.extend(f"    {t} = {c}" for t, c in post.take())
        post_fwd.append(f"    {name} = {code}")
        steps[name] = fresh(f"{name}_steps")
        bwd.temps[id(nd)] = f"{steps[name]}[t]"

    # -- the backward loop: the carried adjoints ---------------------------------------------------------
    for d in (d for bs in back_stacks.values() for b in bs for d in b.deltas):
        bwd.parents[id(d)] = bwd.parents.get(id(d), 0) + 1
    bloop: list[str] = []
    for eq in back_eqs:
        for bs in back_stacks.get(eq.lhs.name, []):
            ds = [bwd.code(d, False) for d in bs.deltas]
            bloop.extend(f"        {t} = {_rename(c, rename)}" for t, c in bwd.take())
            bloop.append(f"        {bs.var.name} = {cat}([{', '.join(_rename(d, rename) for d in ds)}], -1) @ {bs.weight}")
        code = bwd.code(eq.rhs)
        bloop.extend(f"        {t} = {_rename(c, rename)}" for t, c in bwd.take())
        bloop.append("        # " + comment(atexs[eq.lhs.name]))
        if eq.lhs.name in carry_names:
            prev = next(p for p, e in sp_.carry_out.items() if e.lhs.name == eq.lhs.name)
            bloop.append(f"        {carried[prev]} = {_rename(code, rename)}")
        else:
            bloop.append(f"        {eq.lhs.name} = {_rename(code, rename)}")
    looped = {*states, *(e.lhs.name for e in core)}
    known = dict(flat)
    known_nodes = {id(nd): name for nd, name in hoist.values()}
    before, keep, after = _deferred_grads(param_grads, bwd, low, backend, T, known, rename, fresh, atexs,
                                          known_nodes=known_nodes)
    # per-step values the backward loop reads: from the tape (the loop's values), or rows of the flattened
    text = "\n".join(ln for ln in bloop + keep if not ln.lstrip().startswith("#"))
    tape = [v for v in [*states, *(eq.lhs.name for eq in core), *shared_fwd]
            if re.search(rf"\b{re.escape(v)}\b", text)]
    reads = []
    for s_ in seq_vars.values():
        if re.search(rf"\b{re.escape(rename[s_])}\b", text):
            reads.append(f"        {rename[s_]} = {s_}[t]")
    for v, fl in flat.items():
        if v not in looped and v not in seq_vars.values() and re.search(rf"\b{re.escape(v)}\b", text):
            steps[fl] = fresh(f"{v}_steps")
            reads.append(f"        {v} = {steps[fl]}[t]")
    fwd_text = "\n".join(ln for ln in loop if not ln.lstrip().startswith("#"))
    body.append(f"    for t in range({T}):")
    for s_ in seq_vars.values():
        if re.search(rf"\b{re.escape(rename[s_])}\b", fwd_text):
            body.append(f"        {rename[s_]} = {s_}[t]")
    body.extend(loop)
    if tape:
        body.append("        tape.append((" + ", ".join(tape) + ",))")
    body.extend(keep_fwd)
    for prev, nxt in m.scan.carries:
        body.append(f"        {prev} = {nxt}")
    if not tail:
        body.insert(body.index("    tape = []"), "    loss = 0.0")
    body.extend(post_fwd)
    for fl, st in steps.items():
        body.append(f"    {st} = {fl}.reshape({T}, -1, *{fl}.shape[1:])")
    body.extend(before)
    body.append(f"    for t in range({T} - 1, -1, -1):")
    if tape:
        body.append("        (" + ", ".join(tape) + ",) = tape[t]")
    body.extend(reads)
    body.extend(bloop)
    body.extend(keep)
    body.extend(after)
    ret = ", ".join(f'"{k}": {e.lhs.name}' for k, e in sp_.params.items())
    doc = [f"dlmath kernel for the recurrence {_safe(m.name)} ({_safe(m.section)}), {backend} backend. Generated by "
           "dlmath; do not edit.", "",
           "The step equations the recurrence needs run in a loop over the T time steps, the others for all",
           "steps at once; backpropagation through time runs the loop backwards, carrying the adjoint of the",
           "state; the parameter gradients sum over all steps after it. Sequences are time-major: (T, n, ...)."]
    if backend == "torch":
        native = _native_lstm(m, sp_, core, stacking, low, fresh, post_fwd, stacked_lines, flat, hoist, rest,
                              param_grads, tail + pre, T, rename, atexs, ret)
        if native:
            body = native + body
            doc += ["", "A recurrence checked to be an LSTM runs as PyTorch's fused LSTM kernel, forward and backward,",
                    "where PyTorch has one (a CPU with oneDNN, float32; see numeric.native_rnn)."]
    return _module(m, backend, doc, names, body, f'{{"loss": loss, "grad": {{{ret}}}}}',
                   list(m.equations) + sp_.adjoint)


def _native_lstm(m: Model, sp_: Any, core: Sequence[Equation], stacking: Any, low: Lowering, fresh: Any,
                 post_fwd: Sequence[str], stacked_lines: dict[str, int], flat: dict[str, str],
                 hoist: dict[int, tuple[Node, str]], adjoint: Sequence[Equation], param_grads: Sequence[Equation],
                 outside: Sequence[Equation], T: str, rename: dict[str, str], atexs: dict[str, str],
                 ret: str) -> list[str]:
    """Lines that run a recurrence found to be an LSTM (:func:`numeric.native_rnn.find_lstm`) as PyTorch's
    fused kernel and return, where ``ops.fused_lstm`` says PyTorch has one; [] if it is not an LSTM or the
    rest of the program reads more of it than the states ``h``."""
    from .native_rnn import TORCH_ORDER, external_adjoint, find_lstm

    assert m.scan is not None
    lstm = find_lstm(core, stacking, m.scan.carries, m.inputs, low)
    if lstm is None or lstm.h.name not in stacked_lines or not any(ln.startswith("    loss = ") for ln in post_fwd):
        return []
    # the rest of the program reads only h (so the adjoint of c and of the gates comes from the loop alone)
    loop_vals = {*(eq.lhs.name for eq in core), lstm.h_prev, lstm.c_prev}
    gate_params = {v.name for mem in lstm.gates.values() for v in (mem.weight, mem.proj, mem.bias) if v is not None}
    roots = [e.rhs for e in outside] + [nd for nd, _ in hoist.values()]
    read = {v.name for v in walk(roots) if isinstance(v, Var)}
    if (read & loop_vals) - {lstm.h.name} or read & gate_params or set(stacked_lines) != {lstm.h.name}:
        return []
    carry = sp_.carry_in[lstm.h_prev]
    ext = next((x for x in (external_adjoint(eq, carry) for eq in adjoint) if x is not None), None)
    if ext is None or id(ext) not in hoist:
        return []
    grad_of = {p: sp_.params[p].lhs.name for p in gate_params if p in sp_.params}
    if set(grad_of) != gate_params:
        return []
    others = [e for e in param_grads if e.lhs.name not in grad_of.values()]
    em = _Emitter([e.rhs for e in others], "torch", low, "b")
    before, keep, after = _deferred_grads(others, em, low, "torch", T, dict(flat), rename, fresh, atexs,
                                          known_nodes={id(nd): name for nd, name in hoist.values()})
    if before or keep:
        return []
    x = lstm.seq.name
    gates = [lstm.gates[k] for k in TORCH_ORDER]
    wx, wh, b, hs, back = (fresh(s) for s in ("W_lstm_x", "W_lstm_h", "b_lstm", "h_lstm", "lstm_backward"))
    out = [f"    if ops.fused_lstm({x}):",
           "        # the recurrence is an LSTM (checked by numeric.native_rnn): PyTorch's fused kernel, forward",
           "        # and backward, with the gates stacked in its order (i, f, g, o)",
           f"        {wx} = torch.cat([{', '.join(g.proj.name for g in gates if g.proj is not None)}], 0)",
           f"        {wh} = torch.cat([{', '.join(g.weight.name for g in gates)}], 0)"]
    if lstm.bias:
        out.append(f"        {b} = torch.cat([{', '.join(g.bias.name for g in gates if g.bias is not None)}])")
    out.append(f"        {hs}, {back} = ops.lstm({x}, {wx}, {wh}, {b if lstm.bias else 'None'})")
    zeta = hoist[id(ext)][1]
    # the mean's 1/n as the alpha of the product that makes zeta, where only the fused backward reads zeta (which
    # is linear in it): no pass over the weight gradients afterwards
    product = re.compile(rf"    {re.escape(zeta)} = ([\w.]+) @ ([\w.]+)")
    mention = re.compile(rf"(?<![\w.]){re.escape(zeta)}(?!\w)")
    scaled = em.reduction == "mean" and sum(len(mention.findall(ln)) for ln in [*post_fwd, *after]) == 1 and \
        any(product.fullmatch(ln) for ln in post_fwd)
    for i, ln in enumerate(post_fwd):
        if i == stacked_lines[lstm.h.name]:
            out.append(f"        {flat[lstm.h.name]} = {hs}.reshape(-1, {hs}.shape[-1])")
        elif scaled and product.fullmatch(ln):
            out.append(product.sub(rf"        {zeta} = ops.matmul(\1, \2, 1/{low.sample})", ln))
        else:
            out.append("    " + ln)
    grads = [fresh(s) for s in ("g_lstm_x", "g_lstm_h", "g_lstm_b")][:3 if lstm.bias else 2]
    out.append(f"        # the adjoint of h from the rest of the program, {_safe(zeta)}, through the fused backward")
    out.append(f"        {', '.join(grads)} = {back}({zeta}.reshape({T}, -1, {zeta}.shape[-1]))")
    sizes = "[" + ", ".join(dim_code(g.weight.shape[0]) for g in gates) + "]"
    for k, attr in enumerate(("proj", "weight", "bias")[:len(grads)]):
        names = [grad_of[getattr(g, attr).name] for g in gates]
        # the fused backward's results are fresh arrays of this kernel's: the mean's 1/n in place (no new array)
        total = f"{grads[k]}.div_({low.sample})" if em.reduction == "mean" and not scaled else grads[k]
        out.append(f"        {', '.join(names)} = {total}.split({sizes})")
    out.extend("    " + ln for ln in after)
    out.append(f'        return {{"loss": loss, "grad": {{{ret}}}}}')
    return out


def _deferred_grads(grads: Sequence[Equation], bwd: _Emitter, low: Lowering, backend: str, T: str,
                    seq_vars: dict[str, str], rename: dict[str, str], fresh: Any, atexs: dict[str, str],
                    accumulate: bool = False, known_nodes: dict[int, str] | None = None
                    ) -> tuple[list[str], list[str], list[str]]:
    """Parameter gradients summed over the steps after the backward loop: the loop keeps the per-step values
    each gradient reads (lists, no copies; a sequence input is read whole), and one contraction over all
    ``T n`` rows replaces T per-step products. Returns the lines before the loop, at the end of its body
    and after it. A gradient that does not depend on the sample stays summed in the loop. ``seq_vars`` maps the
    names of values whose (T n, ...) array exists (or, for sequences given whole, is its own name) to it, and
    ``known_nodes`` does the same for nodes."""
    from derive.tensor import substitute

    from .scan_lowering import frontier

    before: list[str] = []
    keep: list[str] = []
    after: list[str] = []
    cat = "np.concatenate" if backend == "numpy" else "torch.cat"
    flat: dict[int, Var] = {}
    mapping: dict[Node, Node] = {}
    rows = []
    for eq in grads:
        if not low.batched(eq.rhs):
            code = bwd.reduced(eq.rhs)
            keep.extend(f"        {t} = {_rename(c, rename)}" for t, c in bwd.take())
            keep.append("        # " + comment(atexs[eq.lhs.name]))
            keep.append(f"        {eq.lhs.name} = {eq.lhs.name} + {_rename(code, rename)}")
            if not accumulate:
                before.append(f"    {eq.lhs.name} = 0.0")
            continue
        rows.append(eq)
        for f in frontier(eq.rhs, low.batched, bwd.temps):
            if id(f) in flat:
                continue
            if id(f) in (known_nodes or {}):
                mapping[f] = flat[id(f)] = Var((known_nodes or {})[id(f)], f.shape, "var", batched=True)
                continue
            if isinstance(f, Var) and f.name in seq_vars and seq_vars[f.name] != f.name:
                mapping[f] = flat[id(f)] = Var(seq_vars[f.name], f.shape, f.role, batched=True, domain=f.domain)
                continue
            base = f.name if isinstance(f, Var) else bwd.temps[id(f)]
            v = (Var(fresh(f"{base}_all"), f.shape, f.role, batched=True, domain=f.domain) if isinstance(f, Var)
                 else Var(fresh(f"{base}_all"), f.shape, "var", batched=True))
            flat[id(f)] = v
            mapping[f] = v
            if isinstance(f, Var) and f.name in seq_vars:
                after.append(f"    {v.name} = {f.name}.reshape(-1, *{f.name}.shape[2:])")
            else:
                hist = fresh(f"{base}_hs")
                before.append(f"    {hist} = [None] * {T}")
                keep.append(f"        {hist}[t] = {_rename(base, rename)}")
                after.append(f"    {v.name} = {cat}({hist})")
    if not rows:
        return before, keep, after
    low_all = Lowering(low.backend, low.model, low.ref)
    low_all.sample = f"({T} * {low.sample})"
    eqs = [(eq, substitute(eq.rhs, mapping)) for eq in rows]
    post = _Emitter([r for _, r in eqs], backend, low_all, "s", "sum")
    post.taken |= fresh.taken
    for eq, r in eqs:
        code = post.reduced(r)
        after.extend(f"    {t} = {c}" for t, c in post.take())
        after.append("    # " + comment(atexs[eq.lhs.name]) + " (summed over t)")
        total = f"{_paren(code)} / {low.sample}" if bwd.reduction == "mean" else code
        gemm = re.fullmatch(r"([\w.]+) @ ([\w.]+)", code) if backend == "torch" else None
        if gemm is not None and bwd.reduction == "mean":  # the 1/n as the product's alpha, not a pass of its own
            total = f"ops.matmul({gemm.group(1)}, {gemm.group(2)}, 1/{low.sample})"
        after.append(f"    {eq.lhs.name} = " + (f"{eq.lhs.name} + {total}" if accumulate else total))
    return before, keep, after


def generate_scans(m: Model, backend: str) -> str:
    """The module of a program of several scans: each scan's step equations in a loop over its time steps
    (t = T..1 for a reverse scan), in the program's order, keeping the states later scans read; then
    backpropagation through time scan by scan from the last, each loop carrying its state's adjoint and
    adding the adjoints its scan sends back to the earlier scans it read. Gate products run stacked and the
    parameter gradients sum over each scan's steps after its backward loop, as in :func:`generate_scan`."""
    from derive.scan import scan_programs

    from .scan_lowering import Names, stack_adjoints, stack_gates

    progs = scan_programs(m)
    scans = {sc.name: sc for sc in m.scans}
    names = [k for k in [*m.params, *m.inputs] if k not in m.carries]
    like = names[0]
    low = Lowering(backend, m, like)
    defs = {eq.lhs: eq.rhs for eq in m.equations}
    texs = dict(zip([e.lhs.name for e in m.equations], equations_tex(list(m.equations))))
    zeros = "np.zeros" if backend == "numpy" else "torch.zeros"
    kw = f"dtype={like}.dtype" + (f", device={like}.device" if backend == "torch" else "")
    stack = "np.stack" if backend == "numpy" else "torch.stack"
    body: list[str] = ["    loss = 0.0"]
    saved: list[list[str]] = []
    renames: list[dict[str, str]] = []
    fresh = Names(_Emitter([e.rhs for e in m.equations] + [e.rhs for pr in progs for e in pr.adjoint], backend,
                           low).taken)
    groups = []
    # -- forward: the scans in order -------------------------------------------------------------------
    for pr in progs:
        sc = pr.scan
        assert sc is not None
        T = dim_code(sc.time)
        loop = f"range({T} - 1, -1, -1)" if sc.reverse else f"range({T})"
        body.append(f"    # scan {sc.name}: t = {'T, ..., 1' if sc.reverse else '1, ..., T'} over {_safe(str(sc.time))}")
        starts = dict(sc.init)
        for prev, _ in sc.carries:
            if prev in starts:
                src_prev = next(p for sc2 in m.scans for p, nxt in sc2.carries if nxt == starts[prev])
                body.append(f"    {prev} = {src_prev}")
            else:
                body.append(f"    {prev} = {zeros}({low.shape_code(m.inputs[prev])}, {kw})")
        for sv, src in sc.stacks:
            body.append(f"    {sv.name} = {stack}({src}_seq, 1)")
        rename = {s: f"{s}_t" for s in sc.sequences}
        renames.append(rename)
        forward = stabilize(pr.forward, defs)
        stacking = stack_gates(forward, {m.inputs[p] for p, _ in sc.carries}, {m.inputs[s] for s in sc.sequences},
                               backend, fresh, dim_code)
        groups.append(stacking.groups)
        body.extend(f"    {ln}" for ln in stacking.before)
        upstream = list(pr.upstream)
        keep = [*(p for p, _ in sc.carries), *sc.sequences, *upstream, *(e.lhs.name for e in forward)]
        saved.append(keep)
        body.append(f"    tape_{sc.name} = [None] * {T}")
        for v in pr.outputs_in:
            body.append(f"    {v}_seq = [None] * {T}")
        body.append(f"    for t in {loop}:")
        for s_ in sc.sequences:
            body.append(f"        {s_}_t = {s_}[t]")
        for u in upstream:
            body.append(f"        {u} = {u}_seq[t]")
        body.extend(f"        {ln}" for ln in stacking.step)
        fwd = _Emitter([e.rhs for e in stacking.forward], backend, low, f"{sc.name}_f")
        for eq in stacking.forward:
            code = fwd.code(eq.rhs)
            body.extend(f"        {t} = {_rename(c, rename)}" for t, c in fwd.take())
            body.append("        # " + texs[eq.lhs.name].replace("\n", " "))
            body.append(f"        {eq.lhs.name} = {_rename(code, rename)}")
        if sc.loss is not None:
            body.append(f"        loss = loss + {sc.loss}.mean() * {_paren(dim_code(sc.weight))}")
        body.append(f"        tape_{sc.name}[t] = (" + ", ".join(rename.get(v, v) for v in keep) + ",)")
        for v in pr.outputs_in:
            body.append(f"        {v}_seq[t] = {v}")
        for prev, nxt in sc.carries:
            body.append(f"        {prev} = {rename.get(nxt, nxt)}")
    # -- backward: the scans from the last -------------------------------------------------------------
    grads: dict[str, str] = {}
    for pr in progs:
        for p, eq in pr.params.items():
            grads.setdefault(p, eq.lhs.name)
    for g in dict.fromkeys(grads.values()):
        body.append(f"    {g} = 0.0")
    for pr in progs:  # per step, the adjoints that later scans send back to the states they read
        assert pr.scan is not None
        for v in pr.outputs_in:
            body.append(f"    {v}_up = [0.0] * {dim_code(pr.scan.time)}")
    seeds: dict[str, str] = {}  # a carried state's name -> the adjoint a later scan hands its last step
    for k in range(len(progs) - 1, -1, -1):
        pr = progs[k]
        sc = pr.scan
        assert sc is not None
        T = dim_code(sc.time)
        rename = renames[k]
        loop = f"range({T})" if sc.reverse else f"range({T} - 1, -1, -1)"
        body.append(f"    # backpropagation through scan {sc.name}")
        for prev, zin in pr.carry_in.items():
            nxt = dict(sc.carries)[prev]
            zl = "np.zeros_like" if backend == "numpy" else "torch.zeros_like"
            body.append(f"    {zin.name} = " + seeds.get(nxt, f"{zl}({prev})"))
        for sv, _ in sc.stacks:
            body.append(f"    {pr.stacks[sv.name].lhs.name} = 0.0")
        adjoint = reuse_outputs([e for e in pr.adjoint if e.kind != "grad"], defs)
        grad_eqs = reuse_outputs([e for e in pr.adjoint if e.kind == "grad"], defs)
        atexs = dict(zip([e.lhs.name for e in pr.adjoint], equations_tex(pr.adjoint)))
        loop_lines: list[str] = []
        for v, oin in pr.outputs_in.items():
            loop_lines.append(f"        {oin.name} = {v}_up[t]")
        carried = {e.lhs.name: p for p, e in pr.carry_out.items()}
        ups = {e.lhs.name: u for u, e in pr.upstream.items()}
        stacked = {e.lhs.name for e in pr.stacks.values()}
        per_step = [e for e in grad_eqs if e.lhs.name in carried or e.lhs.name in ups or e.lhs.name in stacked]
        summed = [e for e in grad_eqs if e not in per_step]
        back_eqs, back_stacks = stack_adjoints(adjoint + per_step, groups[k], fresh)
        extra_roots = [d for bs in back_stacks.values() for b in bs for d in b.deltas]
        bwd = _Emitter([e.rhs for e in back_eqs + summed] + extra_roots, backend, low, f"{sc.name}_b")
        for eq in back_eqs:
            for bs in back_stacks.get(eq.lhs.name, []):
                ds = [bwd.code(d, False) for d in bs.deltas]
                loop_lines.extend(f"        {t} = {_rename(c, rename)}" for t, c in bwd.take())
                loop_lines.append(f"        {bs.var.name} = {'np.concatenate' if backend == 'numpy' else 'torch.cat'}"
                                  f"([{', '.join(_rename(d, rename) for d in ds)}], -1) @ {bs.weight}")
            code = bwd.code(eq.rhs)
            loop_lines.extend(f"        {t} = {_rename(c, rename)}" for t, c in bwd.take())
            loop_lines.append("        # " + comment(atexs[eq.lhs.name]))
            if eq.lhs.name in carried:
                loop_lines.append(f"        {pr.carry_in[carried[eq.lhs.name]].name} = {_rename(code, rename)}")
            elif eq.lhs.name in ups:
                u = ups[eq.lhs.name]
                loop_lines.append(f"        {u}_up[t] = {u}_up[t] + {_rename(code, rename)}")
            elif eq.lhs.name in stacked:
                loop_lines.append(f"        {eq.lhs.name} = {eq.lhs.name} + {_rename(code, rename)}")
            else:
                loop_lines.append(f"        {eq.lhs.name} = {_rename(code, rename)}")
        seq_names = {s_: s_ for s_ in sc.sequences}
        before, keep, after = _deferred_grads(summed, bwd, low, backend, T, seq_names, rename, fresh, atexs,
                                              accumulate=True)
        body.extend(before)
        body.append(f"    for t in {loop}:")
        body.append("        (" + ", ".join(rename.get(v, v) for v in saved[k]) + f",) = tape_{sc.name}[t]")
        body.extend(loop_lines)
        body.extend(keep)
        body.extend(after)
        for sv, src in sc.stacks:
            To = dim_code(next(sc2.time for sc2 in scans.values() if src in sc2.equations))
            g = pr.stacks[sv.name].lhs.name
            body.append(f"    for t in range({To}):")
            body.append(f"        {src}_up[t] = {src}_up[t] + {g}[:, t]")
        for prev, nxt in sc.init:
            seeds[nxt] = pr.carry_in[prev].name
    ret = ", ".join(f'"{p}": {g}' for p, g in grads.items())
    doc = [f"dlmath kernel for the recurrences {_safe(m.name)} ({_safe(m.section)}), {backend} backend. Generated "
           "by dlmath; do not edit.", "",
           "Each scan's step equations run in a loop over its time steps, in order; backpropagation through",
           "time runs the scans backwards from the last, each carrying the adjoint of its state and sending",
           "the adjoints of the states it read back to the earlier scans. Sequences are time-major: (T, n, ...)."]
    eqs = list(m.equations) + [e for pr in progs for e in pr.adjoint]
    return _module(m, backend, doc, names, body, f'{{"loss": loss, "grad": {{{ret}}}}}', eqs,
                   [pr.scan.time for pr in progs if pr.scan is not None])


def _factor_in(factor_of: dict[sp.Expr, sp.Expr], e: sp.Expr, k: sp.Expr, c: sp.Expr,
               keys: dict[sp.Symbol, sp.Symbol]) -> sp.Expr | None:
    """The shared product inside the product ``e`` (``k``: ``e`` over the arrays), as it was counted: ``e``
    itself, or ``c e`` where ``e`` is a term of a sum scaled by ``c`` (:func:`numeric.torch_maps.term_scale`)."""
    if not e.is_Mul:
        return None
    f = factor_of.get(k)
    if f is None and c != 1:
        f = factor_of.get((c * e).xreplace(keys))
    return f


#: the most products of the maps of one kernel among which :meth:`_Emitter._share_factors` looks for common factors
_FACTOR_SEARCH_MAX = 400


class _Emitter:
    """Code of expressions with shared subexpressions hoisted into temporaries (``t1 = ...``), and of
    per-sample gradients reduced over the batch. ``take()`` hands over the temporaries made since."""

    def __init__(self, roots: Sequence[Node], backend: str, low: Lowering, prefix: str = "t",
                 reduction: str = "mean"):
        self.backend, self.low, self.prefix, self.reduction = backend, low, prefix, reduction
        self.parents: dict[int, int] = {}
        #: how often each named value (an equation's result) is read, over all ``roots``
        self.reads: collections.Counter[str] = collections.Counter()
        for r in roots:
            for n in walk([r], stop=lambda x: isinstance(x, Var)):
                for i, c in enumerate(n.children()):
                    # an argument used several times in a map's expression is computed once too
                    uses = n.fn.count(ARG[i]) if isinstance(n, Map) else 1
                    self.parents[id(c)] = self.parents.get(id(c), 0) + max(uses, 1)
                    if isinstance(c, Var):
                        self.reads[c.name] += max(uses, 1)
            self.parents[id(r)] = self.parents.get(id(r), 0) + 1
            if isinstance(r, Var):
                self.reads[r.name] += 1
        #: torch: named buffers the kernel made (fresh arrays, see :meth:`fresh_result`) read once, by a map
        #: that may write its result over them (``z1.sigmoid_()``, ``yhat.sub_(Y)``): :func:`generate` fills it
        #: and checks the printed lines afterwards (:func:`_reuse_violations`); ``consumed`` records each offer
        self.reuse: set[str] = set()
        self.consumed: set[str] = set()
        self.temps: dict[int, str] = {}
        self.pending: list[tuple[str, str]] = []
        self.count = 0
        # torch: how many parents of a node are elementwise maps (they broadcast its unexpanded view)
        self.map_parents: dict[int, int] = {}
        self.inner: dict[int, str] = {}  # a shared broadcasting contraction: the temporary of its small part
        self.made: dict[int, Any] = {}  # the planned operand of a map (its freshness, the axes it spans)
        self.node_symbols: dict[int, sp.Symbol] = {}
        self._defs: dict[Var, Node] | None = None  # the model's equations, for _arg_definitions
        self.shared: collections.Counter[sp.Expr] = collections.Counter()
        self.factor_of: dict[sp.Expr, sp.Expr] = {}  # a product -> a shared product among its factors
        self.shared_memo: dict[Any, Any] = {}
        self._count_shared(roots)
        self.scaled: dict[int, tuple[Node, sp.Expr]] = {}  # a contraction -> the same one unscaled, the factor
        self._share_scaled(roots)
        for r in roots:
            for n in walk([r], stop=lambda x: isinstance(x, Var)):
                if isinstance(n, Map):
                    for i, c in enumerate(n.children()):
                        self.map_parents[id(c)] = self.map_parents.get(id(c), 0) + max(n.fn.count(ARG[i]), 1)
        # temporaries never take a name of the model (a parameter may be called t1, or b1 in a recurrence)
        m = low.model
        self.taken = {*m.params, *m.inputs, *m.constants, *(str(d) for d in m.dims.values()),
                      *(eq.lhs.name for eq in m.equations), *(a for a, _ in m.adjoint_names.values())}
        for r in roots:
            self.taken.update(n.name for n in walk([r], stop=lambda x: isinstance(x, Var)) if isinstance(n, Var))

    def _share_scaled(self, roots: Sequence[Node]) -> None:
        """Contractions of the same operands that differ only by a constant factor (``10 K q`` in a value, ``K q``
        in its adjoint): the unscaled one is computed once and the others scale it (a pass over the result
        instead of another product)."""
        groups: dict[Any, dict[int, Einsum]] = {}
        for r in roots:
            for n in walk([r], stop=lambda x: isinstance(x, Var)):
                if isinstance(n, Einsum) and n.operands:
                    key = (n.ins, n.out, tuple(id(o) for o in n.operands), n.dims)
                    groups.setdefault(key, {})[id(n)] = n
        for nodes in groups.values():
            base = next((n for n in nodes.values() if n.coef == 1), None)
            if base is None or len(nodes) < 2:
                continue
            for n in nodes.values():
                if n is not base and as_expr(n.coef).is_constant():
                    self.scaled[id(n)] = (base, as_expr(n.coef))
                    self.parents[id(base)] = self.parents.get(id(base), 0) + 1

    def code(self, n: Node, top: bool = True) -> str:
        if isinstance(n, Var):
            return n.name
        if id(n) in self.temps:
            return self.temps[id(n)]
        if id(n) in self.scaled:
            base, coef = self.scaled[id(n)]
            scaled = _scaled(self.code(base, False), coef)
            if not top and self.parents.get(id(n), 0) > 1:
                t = self._name()
                self.pending.append((t, scaled))
                self.temps[id(n)] = t
                return t
            return scaled
        code = self._torch_code(n, top) if self.backend == "torch" else self._numpy_map(n) if isinstance(n, Map) \
            else None
        if code is None:
            conv = _torch_conv(n, lambda c: self.code(c, False), self.low, None)
            if conv is None:
                conv = _torch_pool(n, lambda c: self.code(c, False), self.low)
            if conv is None and self.backend == "torch" and isinstance(n, Einsum):
                conv = self._hadamard_in_place(n)
            code = conv if conv is not None else n.lower([self.code(c, False) for c in n.children()],
                                                         self.backend, self.low)
        if self.backend == "torch" and self.low.is_spread(n) and self.parents.get(id(n), 0) <= 1 + \
                self.map_parents.get(id(n), 0):
            return code  # a view of a shared (hoisted) contraction: nothing to compute again
        if not top and self.parents.get(id(n), 0) > 1 and not isinstance(n, Const):
            self.count += 1
            while f"{self.prefix}{self.count}" in self.taken:
                self.count += 1
            t = f"{self.prefix}{self.count}"
            self.pending.append((t, code))
            self.temps[id(n)] = t
            return t
        return code

    def _hadamard_in_place(self, n: Einsum) -> str | None:
        """A product of two arrays of one shape (then sums, ``(Y * log_yhat).sum(dim=1)``) written over the one
        that is a buffer nothing else reads (:attr:`reuse`): ``log_yhat.mul_(Y).sum(dim=1)``; else None."""
        if len(n.operands) != 2 or n.ins[0] != n.ins[1] or n.operands[0] is n.operands[1] or self.low.is_spread(n):
            return None
        a, b = n.operands
        if a.shape != b.shape or self.low.batched(a) != self.low.batched(b):
            return None
        for k, x in enumerate((a, b)):
            name = x.name if isinstance(x, Var) else self.temps.get(id(x))
            if name is not None and name in self.reuse:
                codes = [self.code(c, False) for c in n.children()]
                self.consumed.add(name)
                return self.low.einsum_code(n, codes, writable=k)
        return None

    def fresh_result(self, n: Node, code: str) -> bool:
        """Whether ``code``, the printed value of ``n`` (a whole equation), is an array of ``n``'s full shape
        that no other name holds: a new buffer, or one a map wrote over (:attr:`reuse`). A bare name (an alias),
        a view (a transpose, an expanded broadcast) or a call not known to make a new array is not."""
        if re.fullmatch(r"[A-Za-z_]\w*", code) or id(n) in self.temps:
            return False
        if isinstance(n, Map):
            op = self.made.get(id(n))
            return bool(op is not None and op.fresh and op.floating and not op.number
                        and op.axes == self._full_axes(n))
        return _makes_new_array(code)

    def _name(self) -> str:
        self.count += 1
        while f"{self.prefix}{self.count}" in self.taken:
            self.count += 1
        return f"{self.prefix}{self.count}"

    def _hoist(self, code: str) -> str:
        t = self._name()
        self.pending.append((t, code))
        return t

    def _spread_inner(self, n: Einsum) -> tuple[str, str, str]:
        """The small part of a broadcasting contraction (hoisted when shared), its indexing and full shape."""
        inner, idx, tup = self.low.spread_parts(n, [self.code(c, False) for c in n.children()])
        if id(n) in self.inner:
            return self.inner[id(n)], idx, tup
        if self.parents.get(id(n), 0) > 1 and not re.fullmatch(r"[A-Za-z_]\w*", inner):
            inner = self.inner[id(n)] = self._hoist(inner)
        return inner, idx, tup

    def _torch_code(self, n: Node, top: bool) -> str | None:
        """Torch code of maps (planned: few passes, in place) and broadcasts (unexpanded in maps)."""
        if self.low.is_spread(n):
            assert isinstance(n, Einsum)
            inner, idx, tup = self._spread_inner(n)
            return f"{_paren(inner)}[{idx}].expand({tup})"
        if isinstance(n, Einsum) and len(n.operands) == 1 and isinstance(n.operands[0], Map):
            code = self._sum_of_product(n)
            if code is not None:
                return code
        if isinstance(n, Map):
            op = self._planned_map(n)
            if op is None:
                return None
            code = op.code
            full = self._full_axes(n)
            if op.axes != full:  # no operand spans every axis: the value has the shape it claims
                code = f"{_paren(code)}.expand({self.low.shape_code(n)})" + (".contiguous()" if top else "")
            self.made[id(n)] = op
            return code
        return None

    def _sum_of_product(self, n: Einsum) -> str | None:
        """A sum of squares as the squared norm: one pass, no array of the squares."""
        (x,) = n.operands
        assert isinstance(x, Map)
        if id(x) in self.temps or self.parents.get(id(x), 0) > 1:
            return None
        (li,) = n.ins
        summed = [i for i, lab in enumerate(li) if lab not in n.out]
        if not summed or tuple(lab for lab in li if lab in n.out) != n.out:
            return None
        off = 1 if self.low.batched(x) else 0
        if x.fn == ARG[0] ** 2:
            dims = tuple(i + off for i in summed)
            dim = "" if len(summed) == len(li) and not off else f", dim={dims[0]}" if len(dims) == 1 else \
                f", dim={dims}"
            return _scaled(f"torch.linalg.vector_norm({self.code(x.args[0], False)}{dim}).square()", n.coef)
        # (a sum of a product stays a product then a sum: a batched dot product, torch.einsum's bmm, reads
        # half as much but sums each row in order, losing float32 digits that cascade summation keeps)
        return None

    def _full_axes(self, n: Node) -> frozenset[int]:
        return frozenset(range(n.ndim)) | (frozenset({-1}) if self.low.batched(n) else frozenset())

    def _operand(self, a: Node, m: Map, uses: int = 2) -> Any:
        """The planner's operand for the argument ``a`` of ``m``, read ``uses`` times in its expression."""
        from .torch_maps import Operand

        low = self.low
        mb = low.batched(m)
        if isinstance(a, Var) and a.domain in ("labels", "mask"):
            return None  # possibly integer or boolean arrays: printed as written
        name = a.name if isinstance(a, Var) else self.temps.get(id(a))
        if (name is not None and name in self.reuse and uses == 1 and a.shape == m.shape
                and low.batched(a) == mb):
            # a buffer of this kernel's that nothing else reads: the map may write its result over it
            self.consumed.add(name)
            return Operand(name, self._full_axes(m), True)
        if low.is_spread(a) and id(a) not in self.temps:
            assert isinstance(a, Einsum)
            inner, idx, _ = self._spread_inner(a)
            return Operand(f"{_paren(inner)}[{idx}]", low.spread_axes(a))
        inline = id(a) not in self.temps and not isinstance(a, Var) and self.parents.get(id(a), 0) <= 1
        gemm = low.torch_gemm(a, [self.code(c, False) for c in a.children()]) \
            if inline and isinstance(a, Einsum) else None
        code = self.code(a, False)
        if mb and low.batched(a) and a.ndim < m.ndim:
            code = f"{_paren(code)}[:, {', '.join(['None'] * (m.ndim - a.ndim))}]"
            axes = frozenset({-1})
        elif a.ndim < m.ndim:
            axes = frozenset()
        else:
            axes = self._full_axes(a)
        fresh = False
        if inline and isinstance(a, Einsum) and axes == self._full_axes(m):
            fresh = gemm is not None or len(a.operands) > 1 or len(a.out) < len(a.ins[0]) or a.coef != 1
        elif inline and id(a) in self.made:
            fresh = self.made[id(a)].fresh
        if isinstance(a, Const):
            return Operand(_paren(code), axes, number=not a.shape)
        return Operand(_paren(code), axes, fresh, True, False, gemm)

    def _numpy_map(self, m: Map) -> str | None:
        """A map whose expression shares subexpressions with itself or other maps (over the same arrays):
        those computed once, into temporaries; the rest printed as written. None: nothing shared."""
        from .torch_maps import term_scale

        keys = self._arg_keys(m)
        if not any(self.shared[x] > 1 or x in self.factor_of for x in sp.preorder_traversal(m.fn.xreplace(keys))
                   if not x.is_Atom):
            return None
        names: dict[sp.Symbol, str] = {}
        mb = self.low.batched(m)
        for i, a in enumerate(m.args):
            code = self.code(a, False)
            if mb and self.low.batched(a) and a.ndim < m.ndim:
                code = f"{_paren(code)}[:, {', '.join(['None'] * (m.ndim - a.ndim))}]"
            names[ARG[i]] = _paren(code)
        temps: dict[sp.Symbol, str] = {}
        memo = self._memo(m)
        local = {v: k for k, v in keys.items()}

        def shared_symbol(k: sp.Expr, e2: sp.Expr) -> sp.Symbol:
            if k not in memo:
                memo[k] = self._hoist(scalar_code(e2, {**names, **temps}, self.backend))
            s = sp.Symbol(f"_shared{len(temps)}_{memo[k]}", real=True)
            temps[s] = memo[k]
            return s

        def hoisted(e: sp.Expr, c: sp.Expr = sp.S.One) -> sp.Expr:
            if e.is_Atom:
                return e
            k = e.xreplace(keys)
            shared = self.shared[k] > 1 and bool(e.free_symbols & set(keys))
            if shared and k in memo:  # computed before (its factors with it)
                return shared_symbol(k, e)
            e2 = None
            factor = _factor_in(self.factor_of, e, k, c, keys)
            if factor is not None:
                # a shared product inside this longer one: that product once, times the other factors
                f = factor.xreplace(local)
                rest = collections.Counter(e.args)
                rest.subtract(f.args)
                if min(rest.values()) >= 0:
                    e2 = sp.Mul(shared_symbol(factor, f.func(*[hoisted(a) for a in f.args])),
                                *[hoisted(a) for a, c in rest.items() for _ in range(c)])
            if e2 is None:
                e2 = e.func(*[hoisted(a, term_scale(e, a, c)) for a in e.args]) if e.args else e
            return shared_symbol(k, e2) if shared else e2

        return scalar_code(hoisted(m.fn), {**names, **temps}, self.backend)

    def _memo(self, m: Map) -> dict[sp.Expr, Any]:
        """The shared subexpressions computed so far for maps of ``m``'s shape (a per-sample scalar broadcast
        in a vector map, ``x[:, None]``, has another shape than in a scalar map)."""
        memo: dict[sp.Expr, Any] = self.shared_memo.setdefault((tuple(m.shape), self.low.batched(m)), {})
        return memo

    def _arg_keys(self, m: Map) -> dict[sp.Symbol, sp.Symbol]:
        """A map's argument symbols as symbols of the arrays they stand for (one per node)."""
        return {ARG[i]: self._node_symbol(a) for i, a in enumerate(m.args)}

    def _node_symbol(self, a: Node) -> sp.Symbol:
        if id(a) not in self.node_symbols:
            self.node_symbols[id(a)] = sp.Symbol(f"_node{len(self.node_symbols)}", real=True)
        return self.node_symbols[id(a)]

    def _count_shared(self, roots: Sequence[Node]) -> None:
        """Subexpressions of the maps' expressions, over the arrays, counted across all maps (torch)."""
        from derive.functions import concrete_activations

        from .torch_maps import shared_subexpressions

        seen: set[int] = set()
        for r in roots:
            for n in walk([r], stop=lambda x: isinstance(x, Var)):
                if isinstance(n, Map) and id(n) not in seen:
                    seen.add(id(n))
                    fn = concrete_activations(n.fn)
                    keys = self._arg_keys(n)
                    self.shared.update(shared_subexpressions(fn.xreplace(keys), frozenset(keys.values())))
        self._share_factors()

    def _share_factors(self) -> None:
        """A product of the maps (``sqrt(2) z / 2`` in GELU's ``erf``) that is a factor of a longer one (its
        derivative's ``sqrt(2) z exp(-z^2/2) / (2 sqrt(pi))``): :attr:`factor_of` maps the longer product to the
        largest such factor, which :meth:`_numpy_map` (and the torch planner) computes once and multiplies by the
        other factors, and the factor counts as shared (a negation is not a factor: it folds into the product);
        likewise the common factors of two products (of two arrays or more)."""
        arrays = set(self.node_symbols.values())
        products = [x for x in self.shared if x.is_Mul and not (x.args[0] == -1 and len(x.args) == 2)]
        if len(products) > _FACTOR_SEARCH_MAX:  # (the search is quadratic: a huge program keeps its products whole)
            return
        counts = {x: collections.Counter(x.args) for x in products}
        # torch: a factor of one array and constants would cost a pass of its own, where the planner folds the
        # constants into the longer product's one pass (NumPy prints them as a chain of passes, left to right)
        least = 2 if self.backend == "torch" else 1
        factors = [a for a in products if sum(1 for f in a.args if f.free_symbols & arrays) >= least]
        best: dict[sp.Expr, list[sp.Expr]] = collections.defaultdict(list)
        for b in products:
            best[b] += [a for a in factors if a != b and all(counts[b][f] >= c for f, c in counts[a].items())]
        # two products with a common product of two arrays or more (x y in x y z and in x y e^{x y z}), neither a
        # factor of the other: that product, once; on NumPy also an array and constants (2 x in 2 x y and 2 x t,
        # which NumPy would compute twice as the first pass of each chain)
        for i, b1 in enumerate(products):
            for b2 in products[i + 1:]:
                common = [f for f in b1.args if counts[b2][f] and (least == 1 or f.free_symbols & arrays)]
                if len(common) >= 2 and sum(1 for f in common if f.free_symbols & arrays) >= least:
                    a = sp.Mul(*common)
                    if a != b1 and a != b2 and a.is_Mul and set(a.args) == set(common):
                        best[b1].append(a)
                        best[b2].append(a)
        def size(x: sp.Expr) -> tuple[int, int]:  # the most factors, then the most over arrays (x y before -sigma)
            return len(x.args), sum(1 for f in x.args if f.free_symbols & arrays)

        for b, inside in best.items():
            if inside:
                a = max(inside, key=lambda x: (*size(x), sp.default_sort_key(x)))
                self.factor_of[b] = a
                self.shared[a] += self.shared[b]

    def _planned_map(self, m: Map) -> Any:
        from derive.functions import concrete_activations

        from .torch_maps import plan_map

        fn = concrete_activations(m.fn)
        ops = {}
        for i, a in enumerate(m.args):
            if ARG[i] in fn.free_symbols:
                op = self._operand(a, m, fn.count(ARG[i]))
                if op is None:
                    return None
                ops[ARG[i]] = op
        keys = self._arg_keys(m)
        local = {v: k for k, v in keys.items()}

        def factor_of(e: sp.Expr, c: sp.Expr) -> sp.Expr | None:
            f = _factor_in(self.factor_of, e, e.xreplace(keys), c, keys)
            return f.xreplace(local) if f is not None else None

        return plan_map(fn, ops, lambda e, names: scalar_code(e, {**names, **{s: o.code for s, o in ops.items()}},
                                                               "torch"),
                        lambda e: scalar_code(e, {}, "torch"), self._hoist, self.shared,
                        lambda e: e.xreplace(keys), self._memo(m), self._arg_definitions(m, fn),
                        factor_of if self.factor_of else None)

    def _arg_definitions(self, m: Map, fn: sp.Expr) -> dict[sp.Symbol, sp.Expr]:
        """The arguments of ``m`` that are results of other maps over ``m``'s own arguments (a forward value an
        adjoint reuses), as expressions of those arguments' symbols."""
        from derive.functions import concrete_activations

        if self._defs is None:
            self._defs = {eq.lhs: eq.rhs for eq in self.low.model.equations}
        out: dict[sp.Symbol, sp.Expr] = {}
        for i, a in enumerate(m.args):
            d = self._defs.get(a) if isinstance(a, Var) and ARG[i] in fn.free_symbols else None
            if not isinstance(d, Map):
                continue
            sub: dict[sp.Expr, sp.Expr] = {}
            for j, b in enumerate(d.args):
                if ARG[j] not in d.fn.free_symbols:
                    continue
                k = next((k for k, c in enumerate(m.args) if c is b or (isinstance(c, Var) and c == b)), None)
                if k is None:
                    break
                sub[ARG[j]] = ARG[k]
            else:
                out[ARG[i]] = concrete_activations(d.fn).xreplace(sub)
        return out

    def reduced(self, n: Node) -> str:
        """The batch mean (or sum) of a per-sample gradient, folded into its last contraction."""
        how = self.reduction
        if not self.low.batched(n):
            return self.code(n) if how == "mean" else f"{self.low.sample} * {_paren(self.code(n))}"
        if isinstance(n, Einsum):
            conv = _torch_conv(n, lambda c: self.code(c, False), self.low, how)
            if conv is not None:
                return conv
            return self.low.einsum_code(n, [self.code(c, False) for c in n.children()], reduce=how)
        if isinstance(n, Map) and n.fn.is_Add:
            return " + ".join(_paren(self.reduced(map_(t, n.args, n.shape))) for t in sp.Add.make_args(n.fn))
        return f"{_paren(self.code(n))}.{how}(0)"

    def take(self) -> list[tuple[str, str]]:
        out, self.pending = self.pending, []
        return out


def _hoisted_projections(forward: Sequence[Equation], m: Model, low: Lowering, backend: str) -> list[tuple[Node, str]]:
    """Matrix products of a sequence input with parameters only, as code over the whole (T, n, ...) array."""
    assert m.scan is not None
    seqs = {m.inputs[s] for s in m.scan.sequences}
    params = set(m.params.values())
    out: list[tuple[Node, str]] = []
    seen: set[int] = set()
    for eq in forward:
        for n in walk([eq.rhs], stop=lambda x: isinstance(x, Var)):
            if not isinstance(n, Einsum) or id(n) in seen:
                continue
            leaves = {v for v in walk([n]) if isinstance(v, Var)}
            if leaves <= seqs | params and leaves & seqs:
                code = _plain_code(n, backend, low)
                if "@" in code and "einsum" not in code:  # a matmul broadcasts over the leading T axis
                    seen.add(id(n))
                    out.append((n, code))
    return out


def _log_softmax_partners(rhss: Sequence[Node]) -> dict[int, Node]:
    """For each of ``rhss`` that is a softmax whose log-softmax (same logits, same axis) another reads,
    its index -> that log-softmax node: the two are computed together, from one exponential."""
    out: dict[int, Node] = {}
    for i, r in enumerate(rhss):
        if isinstance(r, Softmax):
            ls = LogSoftmax(r.x, r.axis)
            if any(n is ls for n in walk(list(rhss), stop=lambda x: isinstance(x, Var))):
                out[i] = ls
    return out


def _rename(code: str, names: dict[str, str]) -> str:
    for a, b in names.items():
        code = re.sub(rf"\b{re.escape(a)}\b", b, code)
    return code


def _is_number(code: str) -> bool:
    try:
        float(code)
    except ValueError:
        return False
    return True


def generate(prog: Program, backend: str, reuse: bool = True) -> str:
    """The generated module's source text; ``reuse=False``: torch code that writes over no buffer of its own
    (``_Emitter.reuse`` stays empty)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    m = prog.model
    if m.is_update:
        return generate_update(m, backend)
    if m.scans:
        return generate_scans(m, backend)
    if m.scan is not None:
        return generate_scan(m, backend)
    names = list(m.params) + list(m.inputs)
    ref = names[0]
    low = Lowering(backend, m, ref)
    forward = stabilize(prog.forward)
    defs = {eq.lhs: eq.rhs for eq in prog.forward}
    # the adjoint and Hessian programs use log yhat too (a focal loss's gradient has p log p): stable there
    adjoint = reuse_outputs(stabilize(prog.adjoint, defs), defs)
    hessians = dict(zip(prog.hessians, reuse_outputs(stabilize(list(prog.hessians.values()), defs), defs)))
    all_eqs = forward + adjoint + list(hessians.values())
    fwd_tex = equations_tex(prog.forward)
    adj_tex = equations_tex(prog.adjoint)
    hes_tex = equations_tex(list(prog.hessians.values()))
    tex = dict(zip([id(e) for e in all_eqs], fwd_tex + adj_tex + hes_tex))

    # torch: a map may write its result over a buffer of the kernel's that it alone reads (Emitter.reuse); where
    # the printed lines show that buffer read again (a gradient's sum printed term by term), it is printed
    # again without that name (each round bans at least one more name, so this ends)
    def lines_for(banned: set[str]) -> tuple[_Emitter, list[Any], set[str], list[str], dict[str, Any]]:
        em = _Emitter([e.rhs for e in all_eqs], backend, low, "t", m.reduction)
        lines: list[_Line | str] = []

        def code_of(n: Node, top: bool = False) -> str:
            code = em.code(n, top)
            lines.extend(_Line(t, c) for t, c in em.take())
            return code

        def reduced(n: Node) -> str:
            code = em.reduced(n)
            lines.extend(_Line(t, c) for t, c in em.take())
            return code

        # a softmax and the log-softmax of the same logits (the stable loss) share one exponential
        pairs: dict[int, str] = {}
        pair_reads: dict[str, int] = {}
        for i, ls in _log_softmax_partners([e.rhs for e in forward]).items():
            pairs[id(forward[i])] = f"log_{forward[i].lhs.name}"
            em.temps[id(ls)] = f"log_{forward[i].lhs.name}"
            pair_reads[f"log_{forward[i].lhs.name}"] = em.parents.get(id(ls), 0)
        # what the kernel returns or reads by name after the equations: never written over
        protected = {*names, "loss", forward[-1].lhs.name, *(_grad_of(m, g) for g in m.grad_names),
                     *(eq.lhs.name for eq in hessians.values())} | banned

        def offer(name: str, reads: int, fresh: bool) -> None:
            if reuse and backend == "torch" and fresh and reads == 1 and name not in protected:
                em.reuse.add(name)
        grad_leaf = {_grad_of(m, k): k for k in m.grad_names}  # gradient name -> its leaf, looked up once
        grad_codes: dict[str, str] = {}  # a gradient's code -> the first gradient with that code
        native = _native_norms(forward, adjoint, m, low, em)
        for eq in forward + adjoint:
            lines.append(f"# {tex[id(eq)]}")
            if id(eq) in native.lines:
                for target, code in native.lines[id(eq)]:
                    if not target:
                        lines.append(code)
                        continue
                    code = re.sub(r"\{(\w+)\}", lambda g: code_of(native.nodes[g.group(1)]), code)
                    lines.append(_Line(target, code))
                if eq is not forward[-1]:
                    continue
            elif id(eq) in pairs and isinstance(eq.rhs, Softmax):
                x = code_of(eq.rhs.x)
                lines.append(_Line(f"{eq.lhs.name}, {pairs[id(eq)]}",
                                   f"ops.softmax_and_log({x}, {eq.rhs._code_axis()})"))
                offer(eq.lhs.name, em.reads[eq.lhs.name], True)  # (two new arrays)
                offer(pairs[id(eq)], pair_reads[pairs[id(eq)]], True)
                continue
            if eq.kind == "grad":
                leaf = m.tensor(grad_leaf[eq.lhs.name])
                if m.sample is None:
                    code = code_of(eq.rhs, True)
                elif leaf.batched and backend == "torch" and m.reduction == "mean" and low.batched(eq.rhs):
                    # a per-sample input: its gradient stays per sample, the mean's 1/n joins its expression
                    code = code_of(map_(ARG[0] / m.sample, [eq.rhs], eq.rhs.shape), True)
                elif leaf.batched:  # a per-sample input: its gradient stays per sample
                    code = code_of(eq.rhs, True)
                    if not low.batched(eq.rhs):  # the same for every sample (or zero): one row per sample
                        code = f"{_paren(code)} * ops.full({low.shape_code(leaf)}, 1.0, {ref})"
                    if m.reduction == "mean":
                        code = f"{_paren(code)} / {low.sample}"
                else:
                    code = reduced(eq.rhs)
                if _is_number(code):  # identically a number (wgan_gp's g_b2 = 0): still an array of the leaf's shape
                    code = f"ops.full({low.shape_code(leaf)}, {code}, {ref})"
                # a gradient that comes out as the same code as an earlier one (x and y in sum(tanh(x + y))): a copy
                # of that one, one pass instead of the expression's passes again, and never the same array twice
                # (y and z in sum(tanh(-x) (x + y + z)), both a shared temporary); as for the Hessian blocks below;
                # a constant is filled, not copied
                if code in grad_codes and eq.lhs.shape and not code.startswith("ops.full("):
                    code = f"{grad_codes[code]}.{'clone' if backend == 'torch' else 'copy'}()"
                else:
                    grad_codes.setdefault(code, eq.lhs.name)
                lines.append(_Line(eq.lhs.name, code))
            else:
                code = code_of(eq.rhs, True)
                lines.append(_Line(eq.lhs.name, code))
                offer(eq.lhs.name, em.reads[eq.lhs.name], em.fresh_result(eq.rhs, code))
            if eq is forward[-1]:
                loss = eq.lhs.name
                if m.sample is not None and low.batched(eq.lhs):
                    op = "mean" if m.reduction == "mean" else "sum"
                    lines.append(f"# \\mathcal{{C}} = {'mean' if op == 'mean' else 'sum'} over the batch")
                    lines.append(_Line("loss", f"{loss}.{op}()"))
                else:
                    lines.append(_Line("loss", loss))
        # a block that comes out as the same code as an earlier one (logistic's H_w_b and H_b_w, both (p,)): a copy
        # of that one (the kernel is straight-line code with fresh names, so the same text is the same value; a
        # copy, so that the two blocks returned are not one array)
        blocks: dict[str, str] = {}
        for eq in hessians.values():
            lines.append(f"# {tex[id(eq)]}")
            code = reduced(eq.rhs) if m.sample is not None else code_of(eq.rhs, True)
            if code in blocks and eq.lhs.shape and not re.fullmatch(r"[\w.]+", code):  # (an array: it has .copy())
                code = f"{blocks[code]}.{'clone' if backend == 'torch' else 'copy'}()"
            else:
                blocks.setdefault(code, eq.lhs.name)
            lines.append(_Line(eq.lhs.name, code))

        grads = {g: _grad_of(m, g) for g in m.grad_names}
        ret = ["\"loss\": loss", "\"grad\": {" + ", ".join(f'"{k}": {v}' for k, v in grads.items()) + "}"]
        if hessians:
            hs = ", ".join((f'"{a}": {eq.lhs.name}' if a == b else f'("{a}", "{b}"): {eq.lhs.name}')
                           for (a, b), eq in hessians.items())
            ret.append("\"hessian\": {" + hs + "}")

        keep = set(names) | {"loss"} | set(grads.values()) | {eq.lhs.name for eq in hessians.values()}
        witness = _witnesses(native, all_eqs, forward[-1])
        for witnessed in witness.values():
            keep |= {v for w in witnessed for v in re.findall(r"\w+", w)}
        # values nothing reads are not computed: those native kernels made unnecessary (z_c, the adjoint of zbar),
        # an operand a fused call reads in another form (the unfolded windows of a convolution run as conv2d);
        # otherwise every equation keeps its line under its LaTeX
        lines = _live(lines, keep if native.lines else keep | {eq.lhs.name for eq in forward + adjoint})
        if backend == "torch":
            lines = _pooling_indices(_paired_conv_grads(lines, names, em._name), em._name)
            lines = _softmax_backwards(_inner_products(lines, low.sample, keep))
        return em, lines, keep, ret, witness

    banned: set[str] = set()
    while True:
        em, lines, keep, ret, witness = lines_for(banned)
        bad = _reuse_violations(lines, em.consumed, keep) if backend == "torch" else set()
        if not bad:
            break
        banned |= bad
    body: list[str] = []
    for ln, dead in zip(lines, _last_uses(lines, keep)):
        if isinstance(ln, str):
            body.append("    " + comment(ln))
        else:
            body.append(f"    {ln.target} = {ln.code}")
            if dead:
                body.append(f"    del {', '.join(dead)}")
    doc = [f"dlmath kernel for {_safe(m.name)} ({_safe(m.section)}), {backend} backend. Generated by dlmath; do not "
           "edit.", "", "Arrays are batch-first; per-sample equations (the comments) gain a leading sample axis."]
    args = list(names)
    if witness:
        doc += ["", f"Given ``{WITNESS_ARG}={{}}``, the kernel puts there, per input of domain 'moderate' that only "
                "native norms read, their (mean, 1/sigma): numeric.kernel bounds the input by them."]
        args += ["*", f"{WITNESS_ARG}=None"]
        body.append(f"    if {WITNESS_ARG} is not None:")
        entries = ", ".join(f"{k!r}: ({', '.join(v)},)" for k, v in witness.items())
        body.append(f"        {WITNESS_ARG}.update({{{entries}}})")
    footer = [f"kernel.witnessed = {tuple(witness)!r}"] if witness else []
    return _module(m, backend, doc, args, body, "{" + ", ".join(ret) + "}", all_eqs, footer=footer)


@dataclass
class _NativeNorms:
    """Per equation (by id), the lines that replace it; ``{key}`` in a line is the code of ``nodes[key]``."""

    lines: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    #: an input of domain 'moderate' that a native norm reads -> ``(mean, 1/sigma)`` of each such norm (the
    #: witnesses, see _witnesses)
    witness: dict[str, list[str]] = field(default_factory=dict)


def _native_norms(forward: Sequence[Equation], adjoint: Sequence[Equation], m: Model, low: Lowering,
                  em: _Emitter) -> _NativeNorms:
    """Layer and batch normalisations (found and checked by :mod:`numeric.norms`) as PyTorch's native
    forward and backward kernels (numpy: the functions of :mod:`numeric.ops_numpy` with their signatures,
    a few passes each)."""
    from .norms import find_norms, match_backward

    out = _NativeNorms()
    torch_ = low.backend == "torch"
    lib, aten = ("torch.", "torch.ops.aten.") if torch_ else ("ops.", "ops.")
    recip = "torch.reciprocal({})" if torch_ else "(1 / {})"
    # the native backward's gradients are sums; a mean would need one more pass
    backward_ok = m.sample is None or m.reduction == "sum"
    for k, nm in enumerate(find_norms(forward, low)):
        fwd = {e.lhs: e for e in forward}
        if any(id(fwd[v]) in out.lines for v in (nm.mu, nm.zc, nm.sigma, nm.zbar)):
            continue
        z = f"z{k}"
        out.nodes[z] = nm.z
        mean, rstd = em._name(), em._name()
        eps = scalar_code(nm.eps, {}, low.backend)
        g = nm.gamma.name if nm.gamma is not None else "None"
        b = nm.beta.name if nm.beta is not None else "None"
        y = nm.out.name if nm.out is not None else nm.zbar.name
        if nm.kind == "layer":
            shape = "(" + ", ".join(dim_code(nm.zbar.shape[i]) for i in nm.axes) + ",)"
            call = f"{lib}native_layer_norm({{{z}}}, {shape}, {g}, {b}, {eps})"
            mu_code = f"{mean}.reshape({low.shape_code(nm.mu)})"
            sigma_code = f"{recip.format(rstd)}.reshape({low.shape_code(nm.sigma)})"
        else:
            call = f"{lib}native_batch_norm({{{z}}}, {g}, {b}, None, None, True, 0.0, {eps})"
            mu_code, sigma_code = mean, recip.format(rstd)
        what = "layer" if nm.kind == "layer" else "batch"
        who = "PyTorch's native" if torch_ else "numeric.ops_numpy's"
        note = (f"# this and the next {3 if nm.out is None else 4} equations as {who} {what} norm, with its mean "
                "and 1/sigma (checked equal by numeric.norms)")
        out.lines[id(fwd[nm.mu])] = [("", note), (f"{y}, {mean}, {rstd}", call), (nm.mu.name, mu_code)]
        if isinstance(nm.z, Var) and nm.z.domain == "moderate":
            out.witness.setdefault(nm.z.name, []).append(f"({mean}, {rstd})")
        out.lines[id(fwd[nm.zc])] = [(nm.zc.name, f"{{{z}}} - {mean}")]
        out.lines[id(fwd[nm.sigma])] = [(nm.sigma.name, sigma_code)]
        scaled = f"({{{z}}} - {mean}).mul_({rstd})" if torch_ else f"({{{z}}} - {mean}) * {rstd}"
        out.lines[id(fwd[nm.zbar])] = [(nm.zbar.name, scaled)] if nm.out is not None else []
        if nm.out is not None:
            out.lines[id(fwd[nm.out])] = []
        bw = match_backward(nm, adjoint, low, m.reduction if m.sample is not None else "sum") \
            if backward_ok else None
        if bw is None:
            continue
        up = f"u{k}"
        out.nodes[up] = bw.grad_out
        order = [id(e) for e in adjoint]
        first = min(bw.targets.values(), key=lambda e: order.index(id(e)))
        names = [bw.targets[i].lhs.name if i in bw.targets else em._name() for i in range(3)]
        mask = "[" + ", ".join(str(i in bw.targets) for i in range(3)) + "]"
        wg = g if bw.weighted else "None"
        wb = b if bw.weighted else "None"
        if nm.kind == "layer":
            shape = "(" + ", ".join(dim_code(nm.zbar.shape[i]) for i in nm.axes) + ",)"
            call = (f"{aten}native_layer_norm_backward({{{up}}}, {{{z}}}, {shape}, {mean}, {rstd}, {wg}, "
                    f"{wb}, {mask})")
        else:
            call = (f"{aten}native_batch_norm_backward({{{up}}}, {{{z}}}, {wg}, None, None, {mean}, {rstd}, "
                    f"True, {eps}, {mask})")
        for e in bw.targets.values():
            out.lines[id(e)] = []
        out.lines[id(first)] = [("", f"# its backward, native: the adjoints {', '.join(e.lhs.name for e in bw.targets.values())}"
                                     " (checked equal by numeric.norms)"), (", ".join(names), call)]
    return out


#: the keyword through which a kernel hands its witnesses to numeric.kernel (no array is named so: check_name
#: refuses names that start with two underscores)
WITNESS_ARG = "__witness"


def _witnesses(native: _NativeNorms, eqs: Sequence[Equation], last: Equation) -> dict[str, list[str]]:
    """The inputs of domain 'moderate' whose check can be made from the kernel's own results: those that only
    native norms read (every equation reading them is replaced by one). A norm's mean and 1/sigma per group of
    ``c`` entries bound the input: ``|z| <= |mean| + sqrt(c) / (1/sigma)``, so ``numeric.kernel`` skips the pass
    over the input and reads these few values after the call instead (:meth:`numeric.kernel.Kernel.
    _check_witness`; the input's own check runs when the bound does not settle it)."""
    out = {}
    for name, pairs in native.witness.items():
        readers = [e for e in eqs if any(isinstance(v, Var) and v.name == name for v in walk([e.rhs]))]
        if all(id(e) in native.lines and e is not last for e in readers):
            out[name] = pairs
    return out


def _live(lines: list[Any], keep: set[str]) -> list[Any]:
    """``lines`` without the assignments whose values nothing later reads (every line is pure)."""
    used = set(keep)
    res: list[Any] = []
    for ln in reversed(lines):
        if isinstance(ln, _Line):
            targets = [t.strip() for t in ln.target.split(",")]
            if not any(t in used for t in targets):
                continue
            used |= set(re.findall(r"[A-Za-z_]\w*", ln.code))
        res.append(ln)
    return res[::-1]


def generate_values(m: Model, extra: Sequence[Equation], backend: str = "numpy") -> str:
    """A module whose ``kernel`` returns every named value of the forward program and ``extra``
    (per sample, unreduced): the traces of forward and reverse mode."""
    names = list(m.params) + list(m.inputs)
    low = Lowering(backend, m, names[0])
    eqs = stabilize(list(m.equations)) + list(extra)
    texs = equations_tex(list(m.equations) + list(extra))
    body: list[str] = []
    for eq, tx in zip(eqs, texs):
        body.append("    # " + comment(tx))
        body.append(f"    {eq.lhs.name} = {_plain_code(eq.rhs, backend, low)}")
    ret = "{" + ", ".join(f'"{e.lhs.name}": {e.lhs.name}' for e in eqs) + "}"
    return _module(m, backend, [f"dlmath values of {_safe(m.name)}. Generated by dlmath."], names, body, ret, eqs)


def _plain_code(root: Node, backend: str, low: Lowering) -> str:
    memo: dict[int, str] = {}
    for n in walk([root], stop=lambda x: isinstance(x, Var)):
        memo[id(n)] = n.name if isinstance(n, Var) else n.lower([memo[id(c)] for c in n.children()], backend, low)
    return memo[id(root)]


def _grad_of(m: Model, name: str) -> str:
    from derive.autodiff import _adjoint_name

    return _adjoint_name(m, m.tensor(name))[0]


def _dims_needed(eqs: Sequence[Equation], m: Model) -> set[sp.Symbol]:
    dims = set(m.dims.values())
    syms: set[sp.Symbol] = set()
    if m.sample is not None:
        syms.add(m.sample)
    for eq in eqs:
        for n in walk([eq.rhs], stop=lambda x: isinstance(x, Var)):
            if not isinstance(n, Var):  # sizes a node's code may name (fills, one-hot and identity sizes)
                for d in n.shape:
                    syms |= as_expr(d).free_symbols
            if isinstance(n, Einsum):
                syms |= n.coef.free_symbols
                for d in n.dims:
                    syms |= as_expr(d).free_symbols
            if isinstance(n, Map):
                syms |= {s for s in n.fn.free_symbols if s in dims}
    return {s for s in syms if s in dims}


def _dim_sources(m: Model, needed: set[sp.Symbol]) -> dict[str, str]:
    """``dim = array.shape[k]`` lines for the dimensions the code refers to."""
    first: dict[Any, str] = {}  # dimension -> the first array axis that has it (one pass over the arrays)
    carries = set(m.carries)
    for name, v in {**m.params, **m.inputs}.items():
        if name in carries:
            continue
        for k, d in enumerate(m.array_dims(v)):
            first.setdefault(d, f"{name}.shape[{k}]")
    out: dict[str, str] = {}
    for d in sorted(needed, key=str):
        if d not in first:
            raise ValueError(f"{m.name}: dimension {d} cannot be read off any array shape")
        out[dim_code(d)] = first[d]
    return out
