r"""LaTeX in the book's notation: one set of naming and layout rules for every model.

The rules (the book's, see ``shared/BOOK.md``):

- **Per-sample symbols**, column vectors: ``z = W x + b``; adjoints ``\zeta`` (of activations), ``\delta`` (of
  pre-activations), ``g_W`` (of parameters); normalised values ``\hat z`` / ``\bar z`` never share a symbol
  with an adjoint (the models name them so; :func:`check_names` tests it).
- **Accents over whole names**, scripts outside: ``\zeta_{\tilde h}^{\langle t\rangle}``, ``W^{[2]\top}``.
- **Broadcasts left implicit** as the book does (``z - \mu_z``, ``W X + b``); sums are written with ones
  (``\mathbf{1}^\top \zeta``) or ``\sum``.
- **Matrix form** where the indices form a chain of matrix products (found by a small search over operand
  orders and orientations); a model's :attr:`~derive.program.Model.notation` says which dimensions are the
  column axis (time steps, as ``X \in R^{p \times T}`` in (7.24)) and which print as an index on the symbol
  (heads ``W_q^h``, samples ``z^{(i)}``, time steps ``x^{\langle t\rangle}``); flattened axes print as
  ``\operatorname{vec}``; index notation is the last resort.
- **Batch form** (``batch=True``): gradients averaged over the samples in matrix form with samples as
  columns, ``g_W = \frac{1}{n} \Delta A^\top`` and ``H_w = \frac{1}{n} X D X^\top``, each batch matrix defined on
  the first line that uses it (``\Delta = [\delta^{(1)}, \dots, \delta^{(n)}]``).
- **Hyperparameters are symbols**; :func:`constants_tex` lists their values once under the equations.
- **Small fixed-size results as matrices** (``pmatrix``): the Rosenbrock Hessian, the gradient of a 3-vector.
- **Named intermediates** for shared subexpressions of a printed program (the adjoint of a gate's
  pre-activation becomes ``\delta_f``), and ``aligned`` line breaks where a line is still long.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import sympy as sp
from sympy.printing.latex import LatexPrinter

from .program import Equation, Model
from .tensor import (
    ARG,
    AxisOp,
    Const,
    Einsum,
    Embed,
    Eye,
    Map,
    Node,
    Take,
    Unfold,
    Var,
    add_all,
    einsum,
    embed,
    map_,
    substitute,
    take,
    walk,
)

__all__ = ["latex", "BookPrinter", "equations_tex", "program_tex", "constants_tex", "transpose", "capital",
           "shift_time", "newton_tex", "init_tex", "jacobian_tex", "check_names"]

ATOM, MUL, ADD = 0, 1, 2

#: visible characters of a line (its text form) above which it is broken over several rows
LINE_WIDTH = 110

_GREEK_CAPS = {r"\delta": r"\Delta", r"\theta": r"\Theta", r"\sigma": r"\Sigma", r"\gamma": r"\Gamma",
               r"\zeta": r"\boldsymbol{\zeta}"}


# --------------------------------------------------------------------------------------------------
# Scripts: a symbol is base_{sub}^{sup}; accents stay on the base
# --------------------------------------------------------------------------------------------------


def _group(tex: str, i: int) -> int:
    """The end of the group starting at ``tex[i]`` (a brace group, a command or one character)."""
    if tex[i] == "{":
        depth = 0
        for j in range(i, len(tex)):
            depth += {"{": 1, "}": -1}.get(tex[j], 0)
            if depth == 0:
                return j + 1
        return len(tex)
    if tex[i] == "\\":
        j = i + 1
        while j < len(tex) and tex[j].isalpha():
            j += 1
        return max(j, i + 2)
    return i + 1


def split_scripts(tex: str) -> tuple[str, str, str]:
    """``base, sub, sup`` of a symbol: ``\\zeta_{g_f}^{\\langle t\\rangle}`` -> (``\\zeta``, ``g_f``,
    ``\\langle t\\rangle``). Only scripts at the end of the top level count; anything else is base."""
    depth, i, first = 0, 0, None
    while i < len(tex):
        c = tex[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "\\":
            if tex.startswith(r"\left", i):
                depth += 1
            elif tex.startswith(r"\right", i):
                depth -= 1
            i = _group(tex, i)
            continue
        elif c in "_^" and depth == 0:
            first = i
            break
        i += 1
    if first is None:
        return tex, "", ""
    base, sub, sup = tex[:first], "", ""
    i = first
    while i < len(tex):
        c = tex[i]
        if c not in "_^" or i + 1 >= len(tex):
            return tex, "", ""  # not a plain scripted symbol
        end = _group(tex, i + 1)
        body = tex[i + 1 : end]
        body = body[1:-1] if body.startswith("{") else body
        if c == "_":
            sub += body
        else:
            sup += body
        i = end
    return base, sub, sup


def _compose(base: str, sub: str, sup: str) -> str:
    return base + (f"_{{{sub}}}" if sub else "") + (f"^{{{sup}}}" if sup else "")


def with_sup(tex: str, extra: str) -> str:
    r"""``tex`` with ``extra`` appended to its superscript: ``\delta^{[2]}`` + ``(i)`` -> ``\delta^{[2](i)}``."""
    base, sub, sup = split_scripts(tex)
    if base == tex and ("^" in tex or "_" in tex):
        return rf"\left({tex}\right)^{{{extra}}}"
    return _compose(base, sub, sup + extra)


def transpose(tex: str, prec: int = ATOM) -> str:
    r"""``A^\top``; ``W^{[2]}`` becomes ``W^{[2]\top}`` as in the book."""
    if prec != ATOM:
        return rf"\left({tex}\right)^\top"
    base, sub, sup = split_scripts(tex)
    if base == tex and ("^" in tex or "_" in tex):
        return rf"\left({tex}\right)^\top"
    if not sup:
        return _compose(base, sub, "") + r"^\top"
    if sup == "-1":  # the transpose of an inverse: X^{-\top}
        return _compose(base, sub, r"-\top")
    return _compose(base, sub, sup + r"\top")


def capital(tex: str) -> str:
    r"""The batch matrix of a per-sample vector: ``x -> X``, ``\hat{y} -> \hat{Y}``, ``\delta -> \Delta``,
    ``\mu -> \boldsymbol{\mu}`` (a Greek letter whose capital is a Latin letter or means something else)."""
    for g, G in _GREEK_CAPS.items():
        if tex.startswith(g) and not tex[len(g) : len(g) + 1].isalpha():
            return G + tex[len(g) :]
    gm = re.match(r"^\\(alpha|beta|epsilon|varepsilon|eta|iota|kappa|lambda|mu|nu|xi|rho|tau|upsilon|phi|varphi|"
                  r"chi|psi|omega|pi)(?![a-zA-Z])(.*)$", tex)
    if gm:  # a Greek letter without a capital that reads as a matrix here: the bold letter, as for zeta
        return rf"\boldsymbol{{\{gm.group(1)}}}" + gm.group(2)
    m = re.match(r"^(\\[a-z]+\{)([a-z])(\}.*)$", tex)
    if m:
        return m.group(1) + m.group(2).upper() + m.group(3)
    if tex[:1].isalpha() and tex[:1].islower():
        return tex[0].upper() + tex[1:]
    return tex


_TIME = re.compile(r"\\langle t(?:([+-])(\d+))?\\rangle")


def shift_time(tex: str, by: int = 1) -> str:
    r"""LaTeX with every time index moved by ``by``: ``\langle t\rangle`` -> ``\langle t+1\rangle``."""

    def sub(mt: re.Match[str]) -> str:
        k = (int(mt.group(2)) * (1 if mt.group(1) == "+" else -1) if mt.group(1) else 0) + by
        return r"\langle t" + ("" if k == 0 else f"{k:+d}") + r"\rangle"

    return _TIME.sub(sub, tex)


def _tall(s: str) -> bool:
    return any(k in s for k in (r"\frac", r"\sum", r"\sqrt", r"\begin", r"\left", r"\dot", r"\ddot", r"\big"))


def _tidy(tex: str) -> str:
    r"""``\left( x \right)`` -> ``(x)`` where nothing inside is tall; no stray spaces inside parentheses."""
    out, i = [], 0
    while i < len(tex):
        if tex.startswith(r"\left(", i):
            depth, j = 0, i
            while j < len(tex):
                if tex.startswith(r"\left", j):
                    depth += 1
                    j += 5
                    continue
                if tex.startswith(r"\right", j):
                    depth -= 1
                    if depth == 0:
                        break
                    j += 6
                    continue
                j += 1
            if j < len(tex) and tex.startswith(r"\right)", j):
                inner = _tidy(tex[i + 6 : j]).strip()
                out.append(rf"\left({inner}\right)" if _tall(inner) else f"({inner})")
                i = j + 7
                continue
        out.append(tex[i])
        i += 1
    s = "".join(out)
    return re.sub(r" +", " ", s)


def signed_sum(expr: sp.Expr, show: Any, group: Any, lead: str, key: Any = None) -> str:
    """A sum written ``a + b - c``: positive terms first, each negative one after a minus sign (so the
    text reads as the book writes it, and generated code computes no negation). ``show`` prints a term,
    ``group`` parenthesises a nested sum, ``lead`` is the sign of a negative first term, ``key`` orders the
    terms of one sign."""
    terms = sorted(sp.Add.make_args(expr), key=lambda t: (t.could_extract_minus_sign(),
                                                          *(key(t) if key else ()), t.is_Number))
    out = ""
    for i, t in enumerate(terms):
        neg = t.could_extract_minus_sign()
        body = show(-t if neg else t)
        if (-t if neg else t).is_Add:
            body = group(body)
        out += (" - " if neg else " + ") + body if i else (lead if neg else "") + body
    return out


def _number(v: float) -> str:
    """A hyperparameter's value as the book writes it: 0.1, 10^{-5}, 10^{4}, 0.999."""
    if v == 0:
        return "0"
    if v == int(v) and abs(v) < 1000:
        return str(int(v))
    e = sp.log(abs(v), 10)
    k = round(float(e))
    if abs(10.0**k - abs(v)) <= 1e-12 * abs(v) and abs(k) >= 3:
        return ("-" if v < 0 else "") + f"10^{{{k}}}"
    m, ex = f"{v:.6g}".partition("e")[::2]
    return m if not ex else rf"{m} \cdot 10^{{{int(ex)}}}"


# --------------------------------------------------------------------------------------------------
# Scalar expressions (the bodies of elementwise maps)
# --------------------------------------------------------------------------------------------------


class _ScalarPrinter(LatexPrinter):
    """SymPy's LaTeX printer with tensor arguments: products of tensors print with ``\\odot``, scalar
    coefficients first (``\\frac{1}{T} (\\hat y - y)``), functions as ``\\tanh(z)``. ``precs`` gives each
    argument's precedence, so that a product or sum is parenthesised exactly where it is a factor."""

    def __init__(self, names: dict[sp.Symbol, str], tensors: set[sp.Symbol], symbols: dict[str, str],
                 precs: dict[sp.Symbol, int] | None = None):
        super().__init__({"mul_symbol": None, "fold_short_frac": False})
        self.names, self.tensors, self.symbols = names, tensors, symbols
        self.precs = precs or {}

    def _print_Symbol(self, expr: sp.Symbol, style: str = "plain") -> str:
        if expr in self.names:
            return self.names[expr]
        if expr.name in self.symbols:
            return self.symbols[expr.name]
        return str(super()._print_Symbol(expr))

    def _factor(self, e: sp.Expr) -> str:
        """``e`` printed as a factor of a product: parenthesised if it is a sum or a product itself."""
        t = self._print(e)
        if e.is_Add or (e.is_Symbol and self.precs.get(e, ATOM) != ATOM):
            return rf"\left({t}\right)"
        return t

    def _is_tensor(self, e: sp.Expr) -> bool:
        return bool(e.free_symbols & self.tensors)

    def _print_Add(self, expr: sp.Add, order: str | None = None) -> str:
        # the book's order: products of tensors first, then single tensors, then constants (W x + b, z^2 + eps)
        def key(t: sp.Expr) -> tuple[bool, bool]:
            u = -t if t.could_extract_minus_sign() else t
            return (not self._is_tensor(u), bool(u.is_Symbol or u.is_Number))

        def show(t: sp.Expr) -> str:
            if t.is_Symbol and self.precs.get(t, ATOM) == ADD and any(
                    a.could_extract_minus_sign() and -a == t for a in expr.args):
                return rf"\left({self._print(t)}\right)"
            return str(self._print(t))

        return signed_sum(expr, show, lambda s: rf"\left({s}\right)", "- ", key)

    def _call(self, name: str, x: sp.Expr, exp: Any = None) -> str:
        arg = self._print(x)
        return rf"{name}\left({arg}\right)" if exp is None else rf"{name}^{{{exp}}}\left({arg}\right)"

    def _print_log(self, expr: sp.Expr, exp: Any = None) -> str:
        return self._call(r"\log", expr.args[0], exp)

    def _print_tanh(self, expr: sp.Expr, exp: Any = None) -> str:
        return self._call(r"\tanh", expr.args[0], exp)

    def _print_sin(self, expr: sp.Expr, exp: Any = None) -> str:
        return self._call(r"\sin", expr.args[0], exp)

    def _print_cos(self, expr: sp.Expr, exp: Any = None) -> str:
        return self._call(r"\cos", expr.args[0], exp)

    def _print_Pow(self, expr: sp.Pow) -> str:
        b, e = expr.args
        if self._is_tensor(b) and e == 2 and (b.is_Symbol or b.is_Function):
            s = self._factor(b)
            return rf"{s} \odot {s}"
        if e == -1 and not b.is_Add and (self._is_tensor(b) or b in self.names):
            return rf"\frac{{1}}{{{self._print(b)}}}"
        if b.is_Symbol and self.precs.get(b, ATOM) != ATOM and e != sp.Rational(1, 2):
            return rf"\left({self._print(b)}\right)^{{{self._print(e)}}}"
        return str(super()._print_Pow(expr))

    def _print_Mul(self, expr: sp.Mul) -> str:
        factors = sp.Mul.make_args(expr)
        if not any(f.free_symbols & set(self.names) for f in factors):
            return str(super()._print_Mul(expr))
        const = sp.Mul(*[f for f in factors if not (f.free_symbols & set(self.names))])
        neg = bool(const.as_coeff_Mul()[0] < 0)
        if neg:
            const = -const
        args = [f for f in factors if f.free_symbols & set(self.names)]
        scal = [f for f in args if not self._is_tensor(f)]
        tens = [f for f in args if self._is_tensor(f)]
        # a scalar coefficient first: constants and scalar arguments, their reciprocals in one fraction
        cn, cd = const.as_numer_denom()
        num_s = [f for f in scal if not (f.is_Pow and f.exp.is_negative)]
        den_s = [1 / f for f in scal if f.is_Pow and f.exp.is_negative]
        num_t = [f for f in tens if not (f.is_Pow and f.exp.is_negative)]
        den_t = [1 / f for f in tens if f.is_Pow and f.exp.is_negative]
        lead = ""
        den_all = ([] if cd == 1 else [cd]) + den_s
        dens = [self._print(f) if len(den_all) == 1 else self._factor(f) for f in den_all]
        single = len(num_s) + len(num_t) == 1  # c (A B) is c A B: a lone product needs no parentheses
        fac = (lambda f: self._print(f) if (single and f.is_Symbol and self.precs.get(f) == MUL)  # noqa: E731
               else self._factor(f))
        parts = [fac(f) for f in num_s]
        # the book's order: derivative factors (\dot S(z) \odot \zeta), then tensors
        tparts = [fac(f) for f in sorted(num_t, key=lambda f: not isinstance(f, sp.Function))]
        body = r" \odot ".join(tparts)
        if den_t:
            d = (self._print(den_t[0]) if len(den_t) == 1 else r" \odot ".join(self._factor(f) for f in den_t))
            body = rf"\frac{{{body or 1}}}{{{d}}}"
        if (dens and len(tparts) == 1 and not den_t and not parts and cn == 1
                and (any(f.is_Add for f in den_all) or (den_s and cd == 1))):
            return ("- " if neg else "") + rf"\frac{{{body}}}{{{' '.join(dens)}}}"  # v / (1 - beta^{t+1})
        if dens:
            lead = rf"\frac{{{self._print(cn) if cn != 1 else 1}}}{{{' '.join(dens)}}}"
        elif cn != 1:
            lead = self._factor(cn) if cn.is_Add else self._print(cn)
        out = " ".join(x for x in [lead, *parts, body] if x)
        return ("- " if neg else "") + (out or "1")

    def _coefficient(self, c: sp.Expr) -> str:
        n, d = c.as_numer_denom()
        if d != 1:
            nt = self._print(n)
            return rf"\frac{{{nt}}}{{{self._print(d)}}}"
        t = self._print(c)
        return rf"\left({t}\right)" if c.is_Add else t


# --------------------------------------------------------------------------------------------------
# Index styles: dimensions printed as an index on the symbol
# --------------------------------------------------------------------------------------------------


class _Style:
    """How an index dimension prints: the superscript format and the letters it may bind."""

    def __init__(self, spec: str):
        if spec.startswith("(") and spec.endswith(")"):
            first = spec[1:-1]
            self.fmt = "({})"
        elif spec.startswith(r"\langle"):
            first = spec[len(r"\langle") : -len(r"\rangle")].strip()
            self.fmt = r"\langle {}\rangle"
        else:
            first, self.fmt = spec, "{}"
        pool = {"i": "ijkl", "t": ["t", r"\tau"], "h": ["h", "h'"]}.get(first, [first, first + "'"])
        self.letters = list(pool)

    def sup(self, letter: str) -> str:
        return self.fmt.format(letter)


class _NoLift(Exception):
    pass


# --------------------------------------------------------------------------------------------------
# The printer
# --------------------------------------------------------------------------------------------------


class BookPrinter:
    """Prints nodes, equations and programs of one model in the book's notation.

    Args:
        model: the model whose :attr:`~derive.program.Model.notation` (column and index dimensions, constant
            symbols) and recurrence (the adjoint carried from step t + 1) the printer follows; optional.
        batch: print batch-averaged gradients and Hessians in matrix form.
    """

    def __init__(self, model: Model | None = None, batch: bool = False):
        nota = model.notation if model is not None else {}
        self.model = model
        self.batch = batch
        self.columns: set[Any] = set(nota.get("columns", ()))
        self.index: dict[Any, _Style] = {d: _Style(s) for d, s in nota.get("index", {}).items()}
        self.symbols: dict[str, str] = dict(nota.get("symbols", {}))
        self.where: list[str] = []
        self.defined: set[str] = set()
        self.lifted: dict[Var, Var] = {}
        self.carried: dict[Var, Node] = {}
        self.shifts: dict[Var, int] = {}
        self.sum_time: dict[str, Any] = {}
        self.sample_sup = ""
        self._memo: dict[Any, tuple[str, int]] = {}
        self._dim_names = {str(d) for d in (model.dims.values() if model is not None else ())}
        if model is not None and model.recurrences:
            self._carries(model)

    def _carries(self, m: Model) -> None:
        """The adjoint carried from step t + 1 prints as that step's expression (BPTT as the book writes it;
        from step t - 1 in a reverse scan), and the adjoint a later scan sends back as that scan's expression."""
        from .scan import printed_adjoints, sum_times

        for v, (node, shift) in printed_adjoints(m).items():
            self.carried[v] = node
            self.shifts[v] = shift
        self.sum_time = sum_times(m)

    # -- nodes ------------------------------------------------------------------------------------
    def _idx_axes(self, n: Node) -> list[int]:
        return [k for k, d in enumerate(n.shape) if d in self.index] if self.index else []

    def _fresh(self, dim: Any, scope: Iterable[str]) -> str:
        used = set(scope)
        for c in self.index[dim].letters:
            if c not in used:
                return c
        return self.index[dim].letters[-1] + "'"

    def _default_letters(self, n: Node, scope: frozenset[str] = frozenset()) -> tuple[str, ...]:
        out: list[str] = []
        for k in self._idx_axes(n):
            c = self._fresh(n.shape[k], set(scope) | set(out))
            out.append(c)
        return tuple(out)

    def _sups(self, n: Node, letters: Sequence[str]) -> str:
        return "".join(self.index[n.shape[k]].sup(c) for k, c in zip(self._idx_axes(n), letters))

    def node(self, n: Node, letters: tuple[str, ...] | None = None,
             scope: frozenset[str] = frozenset()) -> tuple[str, int]:
        """``(tex, precedence)`` of a node; ``letters`` are the indices its index axes print with."""
        if letters is None:
            letters = self._default_letters(n, scope)
        key = (id(n), letters, scope)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._one(n, letters, scope | frozenset(letters))
            self._memo[key] = hit
        return hit

    def _child(self, parent: Node, letters: tuple[str, ...], c: Node, scope: frozenset[str]) -> tuple[str, int]:
        """A child sharing its parent's index axes in order (maps, axis ops, windows)."""
        k = len(self._idx_axes(c))
        if k == len(letters):
            return self.node(c, letters, scope)
        return self.node(c, None, scope)

    def _one(self, n: Node, letters: tuple[str, ...], scope: frozenset[str]) -> tuple[str, int]:
        if isinstance(n, Var):
            if n in self.carried:
                tex, prec = self.node(self.carried[n])
                return shift_time(tex, self.shifts.get(n, 1)), prec
            return self._var(n, letters), ATOM
        if isinstance(n, Einsum):
            return self.einsum(n, letters, scope)
        if isinstance(n, Map):
            return self.map(n, letters, scope)
        if isinstance(n, Const):
            v = n.value
            if not n.shape:
                return self._scalar_tex(v), (ATOM if (v.is_Atom and v >= 0) else ADD)
            if v == 0:
                return r"\mathbf{0}", ATOM
            return (r"\mathbf{1}" if v == 1 else rf"{self._scalar_tex(v)}\,\mathbf{{1}}"), ATOM
        from .tensor import ArgMaxMask, Fold

        if isinstance(n, Fold) and isinstance(n.x, Einsum) and not self.lifted:
            full = self._full_convolution(n, scope)
            if full is not None:
                return full, MUL
        if isinstance(n, Unfold):
            self._windows(n, n.x)
        elif isinstance(n, Fold):
            self._note(r"\mathcal{U}^{*}", r"\text{its adjoint: window entries summed back onto the image}")
        elif isinstance(n, ArgMaxMask):
            self._note(r"\mathbf{1}_{\arg\max}", r"\text{1 at the first maximum of each window, 0 elsewhere}")
        args = [self._child(n, letters, c, scope)[0] for c in n.children()]
        tex = n.latex(args, self)
        return tex, ATOM

    def _note(self, sym: str, what: str) -> None:
        """A symbol defined on the first line that uses it."""
        if sym not in self.defined:
            self.defined.add(sym)
            self.where.append(f"{sym}: {what}")

    def _windows(self, u: Any, x: Node) -> None:
        kh, kw = u.kernel
        opts = ", ".join(p for p in (f"stride {u.stride}" if u.stride != 1 else "",
                                     f"padding {u.padding}" if u.padding else "",
                                     f"dilation {u.dilation}" if u.dilation != 1 else "") if p)
        self._note(r"\mathcal{U}", rf"\text{{the }} {kh} \times {kw} \text{{ windows of the image" +
                   (f" ({opts})" if opts else "") + "}")

    def _scalar_tex(self, v: sp.Expr) -> str:
        return str(_ScalarPrinter({}, set(), self.symbols).doprint(v))

    def _var(self, v: Var, letters: Sequence[str]) -> str:
        tex = v.tex
        if v in self.lifted:
            self._define(v)
        sups = self._sups(v, letters)
        if self.sample_sup and v.batched:
            sups += self.sample_sup
        return with_sup(tex, sups) if sups else tex

    def _define(self, v: Var) -> None:
        """``X = [x^{(1)}, \\dots, x^{(n)}]`` on the first line that uses the batch matrix ``X``."""
        if v.tex in self.defined:
            return
        self.defined.add(v.tex)
        per = self.lifted[v].tex
        n = sp.latex(v.shape[0])
        self.where.append(rf"{v.tex} = \left[{with_sup(per, '(1)')}, \dots, {with_sup(per, f'({n})')}\right]")

    # -- elementwise maps -------------------------------------------------------------------------
    def map(self, n: Map, letters: tuple[str, ...], scope: frozenset[str]) -> tuple[str, int]:
        kids = [self.node(a, letters if a.shape == n.shape else None, scope) for a in n.args]
        stacked = self._stack(n, kids)
        if stacked:
            return stacked, ATOM
        names, precs = {}, {}
        tensors = set()
        for i, ((tex, prec), a) in enumerate(zip(kids, n.args)):
            names[ARG[i]], precs[ARG[i]] = tex, prec
            if not (a.shape == () or _scalar_broadcast(a)):
                tensors.add(ARG[i])
        tex = _ScalarPrinter(names, tensors, self.symbols, precs).doprint(n.fn)
        fn = n.fn
        if fn.is_Add or fn.could_extract_minus_sign():
            prec = ADD
        elif fn.is_Pow and fn.exp == -1:
            prec = ATOM  # \frac{1}{x}
        elif fn.is_Mul or (fn.is_Pow and bool(fn.base.free_symbols & set(names))):
            prec = MUL
        else:
            prec = ATOM
        return tex, prec

    def _stack(self, n: Map, kids: Sequence[tuple[str, int]]) -> str | None:
        """``e_1(a) + e_2(b)`` prints as the column ``(a, b)^T``."""
        if n.ndim != 1 or not n.fn.is_Add or not n.shape[0].is_Integer:
            return None
        entries: dict[int, str] = {}
        for t in sp.Add.make_args(n.fn):
            if not t.is_Symbol or t not in ARG:  # a named constant is no stacked entry
                return None
            i = ARG.index(t)
            a = n.args[i]
            if not isinstance(a, Embed) or a.index in entries:
                return None
            entries[a.index] = self.node(a.x)[0]
        size = int(n.shape[0])
        return r"\begin{pmatrix}" + r" \\ ".join(entries.get(i, "0") for i in range(size)) + r"\end{pmatrix}"

    # hooks the primitives call (their ``latex`` methods)
    def einsum_latex(self, e: Einsum, args: Sequence[str]) -> str:
        return self.einsum(e, self._default_letters(e), frozenset())[0]

    def map_latex(self, m: Map, args: Sequence[str]) -> str:
        return self.map(m, self._default_letters(m), frozenset())[0]

    # -- contractions -----------------------------------------------------------------------------
    def einsum(self, e: Einsum, letters: tuple[str, ...], scope: frozenset[str]) -> tuple[str, int]:
        dims = e.index_dims()
        idx = {lab for l in e.ins for lab in l if dims[lab] in self.index} | {
            lab for lab in e.out if dims[lab] in self.index}
        if not idx:
            return self._contraction(e, scope)
        # index labels: those of the output take the given letters, summed ones bind fresh letters
        let: dict[int, str] = {}
        out_idx = [lab for lab in e.out if lab in idx]
        for lab, c in zip(out_idx, letters):
            let[lab] = c
        bound = set(scope) | set(letters)
        sums = []
        for lab in sorted(idx - set(e.out)):
            c = self._fresh(dims[lab], bound)
            bound.add(c)
            let[lab] = c
            sums.append((c, dims[lab]))
        inner_scope = frozenset(bound)
        kids = []
        for l, o in zip(e.ins, e.operands):
            ol = tuple(let[x] for x in l if x in idx)
            kids.append(self.node(o, ol if len(ol) == len(self._idx_axes(o)) else None, inner_scope))
        ins = [tuple(x for x in l if x not in idx) for l in e.ins]
        out = tuple(x for x in e.out if x not in idx)
        summed = idx - set(e.out)
        # factors that do not depend on the summed index stand outside the sum: s \odot \sum_j x^{(j)}
        outer = [k for k, l in enumerate(e.ins) if not (set(l) & summed)] if sums else []
        if outer and len(outer) < len(e.ins) and all(ins[k] == out for k in outer):
            inner = [k for k in range(len(e.ins)) if k not in outer]
            body, prec = self._chain_or_index(e, [kids[k] for k in inner], [ins[k] for k in inner], out, dims,
                                              coef=1, nodes=[e.operands[k] for k in inner])
            pre = "".join(rf"\sum_{{{c}=1}}^{{{sp.latex(d)}}} " for c, d in sums)
            body = pre + (rf"\left({body}\right)" if prec == ADD else body)
            facs = [kids[k][0] if kids[k][1] == ATOM else rf"\left({kids[k][0]}\right)" for k in outer]
            body = r" \odot ".join([*facs, body])
            sums = []
            prec = MUL
        else:
            body, prec = self._chain_or_index(e, kids, ins, out, dims, coef=1, nodes=list(e.operands))
        coef_tex, neg = _coef(e.coef, self.symbols)
        if sums:
            pre = "".join(rf"\sum_{{{c}=1}}^{{{sp.latex(d)}}} " for c, d in sums)
            body = pre + (rf"\left({body}\right)" if prec == ADD else body)
            prec = MUL
        tex = coef_tex + body
        if neg:
            return "- " + tex, ADD
        return tex, (MUL if coef_tex else prec)

    def _contraction(self, e: Einsum, scope: frozenset[str]) -> tuple[str, int]:
        conv = self._convolution(e, scope)
        if conv is not None:
            return conv
        norm = self._norm2(e, scope) or self._gather(e, scope)
        if norm is not None:
            return norm
        inner = self._inner(e, scope)
        if inner is not None:
            return inner
        op = e.operands[0]
        if (len(e.operands) == 1 and isinstance(op, Unfold) and op.flat and len(e.out) == 3
                and e.ins[0][1] not in e.out and e.coef == sp.Rational(1, op.kernel[0] * op.kernel[1])):
            return rf"\operatorname{{mean}}\left({self.node(op, None, scope)[0]}\right)", ATOM
        kids = [self.node(o, None, scope) for o in e.operands]
        dims = e.index_dims()
        body, prec = self._chain_or_index(e, kids, [tuple(l) for l in e.ins], tuple(e.out), dims, coef=1,
                                          nodes=list(e.operands))
        if body == "":
            return self._scalar_tex(e.coef), ATOM
        coef_tex, neg = _coef(e.coef, self.symbols)
        if coef_tex and prec == ADD:
            body = rf"\left({body}\right)"
        tex = coef_tex + body
        if neg:
            return "- " + tex, ADD
        return tex, (MUL if coef_tex else prec)

    def _chain_or_index(self, e: Einsum, kids: Sequence[tuple[str, int]], ins: Sequence[tuple[int, ...]],
                        out: tuple[int, ...], dims: dict[Any, Any], coef: Any,
                        nodes: Sequence[Node] | None = None) -> tuple[str, int]:
        """The contraction of printed operands ``kids`` (matrix labels only) as a matrix product."""
        # broadcast axes are left implicit, as the book writes z - mu_z and W X + b
        present = {x for l in ins for x in l}
        out_eff = tuple(x for x in out if x in present)
        scalars, ops = [], []
        pairs: list[tuple[str, str]] = []
        if len(kids) == 1 and not ins[0]:
            return kids[0]  # a scalar spread over a tensor: the broadcast is implicit
        for k, ((tex, prec), l) in enumerate(zip(kids, ins)):
            node = nodes[k] if nodes is not None else None
            if not l:
                scalars.append(tex if prec == ATOM else rf"\left({tex}\right)")
                continue
            if (node is not None and not out_eff and len(ins) == 1 and isinstance(node, Map)
                    and node.fn == ARG[0] * ARG[1] and all(a.shape == node.shape for a in node.args)):
                a, b = (self.node(x, None, frozenset())[0] for x in node.args)
                pairs.append((a, b))
                continue
            ops.append((tex, prec, l))
        # operands indexed alike are one Hadamard product (sum_k A_qk B_qk = 1^T (A \odot B))
        merged: list[tuple[str, int, tuple[int, ...]]] = []
        for tex, prec, l in ops:
            same = next((j for j, m in enumerate(merged) if m[2] == l and len(set(l)) == len(l)), None)
            if same is None:
                merged.append((tex, prec, l))
                continue
            t0, p0, _ = merged[same]
            if not out_eff and len(ops) == 2:
                pairs.append((t0 if p0 == ATOM else rf"\left({t0}\right)", tex if prec == ATOM else rf"\left({tex}\right)"))
                merged.pop(same)
                continue
            w = [t if p == ATOM else rf"\left({t}\right)" for t, p in ((t0, p0), (tex, prec))]
            merged[same] = (rf"{w[0]} \odot {w[1]}", MUL, l)
        ops = merged
        if pairs and not ops:
            (a, b), rank = pairs[0], len(ins[0]) if ins else 0
            tex = rf"{transpose(a)} {b}" if rank == 1 else rf"\langle {a}, {b}\rangle"
            return " ".join([*scalars, tex]), MUL
        if not ops:
            return " ".join(scalars), (MUL if len(scalars) > 1 else ATOM)
        if len(ops) == 1 and ops[0][2] == out_eff:
            t, p, _ = ops[0]
            if scalars:
                return " ".join([*scalars, t if p != ADD else rf"\left({t}\right)"]), MUL
            return t, p
        scaled = self._hadamard(ops, out_eff, dims) if len(out_eff) <= 1 else None
        chain = _chain(ops, out_eff, dims, self.columns)
        if chain is None:
            fused = _fuse(ops, out_eff, dims, self.columns)
            if fused is not None:
                chain = fused
        if chain is None and scaled is not None:
            chain = scaled
        if chain is None:
            return self._index_form(e, [k[0] for k in kids], [k[1] for k in kids], ins, out, scalars), ADD
        if self.lifted and r"\operatorname{diag}" in chain:
            chain = self._name_diagonals(chain)
        body = " ".join([*scalars, chain])
        if not scalars and chain.startswith(r"\operatorname{vec}^{-1}\left(") and chain.endswith(r"\right)"):
            return body, ATOM
        return body, MUL

    def _name_diagonals(self, chain: str) -> str:
        r"""In a batch form, a diagonal of per-sample weights is named as the book does:
        ``X D X^\top``, ``D = \operatorname{diag}(\hat y \odot (1 - \hat y))``."""
        out, k, i = "", 0, 0
        key = r"\operatorname{diag}\left("
        while True:
            j = chain.find(key, i)
            if j < 0:
                return out + chain[i:]
            d, e = 1, j + len(key)
            while e < len(chain) and d:
                if chain.startswith(r"\left", e):
                    d += 1
                    e += 5
                elif chain.startswith(r"\right", e):
                    d -= 1
                    e += 6
                else:
                    e += 1
            end = e + 1  # past the closing parenthesis
            name = "D" if k == 0 else f"D_{{{k + 1}}}"
            k += 1
            self.where.append(f"{name} = {chain[j:end]}")
            out += chain[i:j] + name
            i = end

    def _hadamard(self, ops: list[tuple[str, int, tuple[int, ...]]], out: tuple[int, ...],
                  dims: dict[Any, Any]) -> str | None:
        """``sum_i A_ij s_j`` prints as ``s \\odot (A^T 1)``: an operand indexed only by output indices that
        another operand also carries scales the result elementwise."""
        if len(ops) < 2:
            return None
        for k, (tex, prec, l) in enumerate(ops):
            if not l or not set(l) <= set(out) or len(set(l)) != len(l) or l != tuple(x for x in out if x in l):
                continue
            rest = [o for j, o in enumerate(ops) if j != k]
            if not all(any(x in o[2] for o in rest) for x in l):
                continue
            r = _chain(rest, out, dims, self.columns)
            if r is None:
                continue
            w = tex if prec == ATOM else rf"\left({tex}\right)"
            single = len(rest) == 1
            return f"{w} \\odot " + (r if single else f"\\left({r}\\right)")
        return None

    def _inner(self, e: Einsum, scope: frozenset[str]) -> tuple[str, int] | None:
        r"""A full sum of a product of two same-shaped tensors: ``\zeta^\top a`` for vectors,
        ``\langle G, Z\rangle`` (the Frobenius inner product) for matrices and images."""
        if e.out or len(e.operands) > 2:
            return None
        if len(e.operands) == 2 and e.ins[0] == e.ins[1] and len(set(e.ins[0])) == len(e.ins[0]):
            a, b = e.operands
        elif (len(e.operands) == 1 and isinstance(e.operands[0], Map) and e.operands[0].fn == ARG[0] * ARG[1]
              and all(x.shape == e.operands[0].shape for x in e.operands[0].args)):
            a, b = e.operands[0].args
        else:
            return None
        if a.ndim < 2:
            return None
        ta, tb = self.node(a, None, scope)[0], self.node(b, None, scope)[0]
        coef_tex, neg = _coef(e.coef, self.symbols)
        tex = coef_tex + rf"\langle {ta}, {tb}\rangle"
        return ("- " + tex, ADD) if neg else (tex, MUL if coef_tex else ATOM)

    def _convolution(self, e: Einsum, scope: frozenset[str]) -> tuple[str, int] | None:
        r"""Contractions with image windows print as correlations: ``W \star x`` (a convolution layer) and
        ``x \star \delta`` (its kernel gradient, the correlation of the input with delta)."""
        if len(e.operands) != 2:
            return None
        k = next((i for i, o in enumerate(e.operands) if isinstance(o, Unfold) and not o.flat), None)
        if k is None:
            return None
        u = e.operands[k]
        assert isinstance(u, Unfold)
        other, lo, lu = e.operands[1 - k], e.ins[1 - k], e.ins[k]
        c, i, j, p, q = lu
        sub = _window_sub(u.stride, u.padding, u.dilation)
        xt, _ = self.node(u.x, None, scope)
        ot, oprec = self.node(other, None, scope)
        ot = ot if oprec == ATOM else rf"\left({ot}\right)"
        c_tex, neg = _coef(e.coef, self.symbols)
        if len(lo) == 4 and lo[1:] == (c, i, j) and e.out == (lo[0], p, q):
            tex = f"{c_tex}{ot} \\star{sub} {xt}"
        elif len(lo) == 3 and lo[1:] == (p, q) and e.out == (lo[0], c, i, j):
            tex = f"{c_tex}{xt} \\star{sub} {ot}"
        else:
            return None
        return ("- " + tex, ADD) if neg else (tex, MUL)

    def _full_convolution(self, f: Any, scope: frozenset[str]) -> str | None:
        r"""The adjoint of the windows applied to ``W^T delta``: the full convolution of delta, dilated by
        the stride, with the flipped kernel, ``\operatorname{pad}(\operatorname{dil}_S(\delta)) \star_D
        \operatorname{rot}_{180}(W)``; the padding is D(k - 1) - P on each side (plus the r rows a strided
        convolution never reached), so the result has the input's shape."""
        e = f.x
        if len(e.operands) != 2:
            return None
        for kw_, kd in ((0, 1), (1, 0)):
            lw, ld = e.ins[kw_], e.ins[kd]
            if len(lw) == 4 and len(ld) == 3 and lw[0] == ld[0] and e.out == (lw[1], lw[2], lw[3], ld[1], ld[2]):
                wt, _ = self.node(e.operands[kw_], None, scope)
                dt, _ = self.node(e.operands[kd], None, scope)
                c_tex, neg = _coef(e.coef, self.symbols)
                S, P, D = f.stride, f.padding, f.dilation
                pads = [D * (k - 1) - P for k in f.kernel]
                pad = str(pads[0]) if pads[0] == pads[1] else f"{pads[0]},{pads[1]}"
                inner = rf"\operatorname{{dil}}_{{{S}}}\left({dt}\right)" if S != 1 else dt
                padded = rf"\operatorname{{pad}}_{{{pad}}}\left({inner}\right)" if any(pads) else inner
                star = r"\star" + (f"_{{D={D}}}" if D != 1 else "")
                tex = rf"{c_tex}{padded} {star} \operatorname{{rot}}_{{180}}\left({wt}\right)"
                if S != 1:
                    H, W = f.image[1:]
                    rs = [sp.latex(sp.Mod(d + 2 * P - D * (k - 1) - 1, S)).replace(r"\bmod", r"\operatorname{mod}")
                          for d, k in zip((H, W), f.kernel)]
                    self.where.append(
                        rf"\operatorname{{dil}}_{{{S}}} \text{{ inserts }} S - 1 = {S - 1} \text{{ zeros between entries, }}"
                        rf"\operatorname{{pad}}_{{{pad}}} \text{{ pads by }} D(k - 1) - P = {pad}"
                        rf"\text{{, and by }} r_H = {rs[0]},\ r_W = {rs[1]} \text{{ more at the end}}")
                return "- " + tex if neg else tex
        return None

    def _norm2(self, e: Einsum, scope: frozenset[str]) -> tuple[str, int] | None:
        """``sum(x ** 2)`` prints as ``\\|x\\|^2``."""
        op = e.operands[0]
        if len(e.operands) == 1 and not e.out and isinstance(op, Map) and op.fn.is_Pow and op.fn.exp == 2:
            inner, _ = self.node(map_(op.fn.base, op.args, op.shape), None, scope)
            c_tex, neg = _coef(e.coef, self.symbols)
            return f"{'- ' if neg else ''}{c_tex}" + rf"\left\|{inner}\right\|^{{2}}", (ADD if neg else MUL)
        return None

    def _gather(self, e: Einsum, scope: frozenset[str]) -> tuple[str, int] | None:
        """A contraction of a vector with the one-hot encoding of a label prints as its entry: ``x_{y}``."""
        from .tensor import OneHot

        if len(e.operands) != 2 or e.out or self.lifted:
            return None
        k = next((i for i, o in enumerate(e.operands) if isinstance(o, OneHot) and o.ndim == 1), None)
        if k is None or e.operands[1 - k].ndim != 1:
            return None
        oh = e.operands[k]
        tex, prec = self.node(e.operands[1 - k], None, scope)
        bare = re.fullmatch(r"\\?[A-Za-z]+|\\[a-z]+\{[A-Za-z]\}", tex)
        base = tex if bare else rf"\left[{tex}\right]"
        c_tex, neg = _coef(e.coef, self.symbols)
        body = f"{c_tex}{base}_{{{self.node(oh.children()[0], None, scope)[0]}}}"
        return ("- " + body, ADD) if neg else (body, MUL if c_tex else ATOM)

    def _index_form(self, e: Einsum, texs: Sequence[str], precs: Sequence[int], ins: Sequence[tuple[int, ...]],
                    out: tuple[int, ...], scalars: Sequence[str]) -> str:
        pool = [c for c in "ijklpqrsuvwabcdefgh" if c not in self._dim_names]
        names: dict[int, str] = {}
        for lab in [*out, *sorted({x for l in ins for x in l} - set(out))]:
            names.setdefault(lab, pool[len(names) % len(pool)])
        summed = sorted({x for l in ins for x in l} - set(out))
        factors = list(scalars)
        for tex, prec, l in zip(texs, precs, ins):
            if not l:
                continue
            t = tex if prec == ATOM else rf"\left({tex}\right)"
            factors.append(f"{{{t}}}_{{{''.join(names[i] for i in l)}}}")
        s = (r"\sum_{" + ",".join(names[i] for i in summed) + "} ") if summed else ""
        body = f"{s}{' '.join(factors)}"
        if out:
            body = rf"\left[{body}\right]_{{{''.join(names[i] for i in out)}}}"
        return body

    # -- small fixed-size results as matrices ----------------------------------------------------
    def matrix(self, n: Node) -> str | None:
        """A result of integer shape with at most 16 entries, entry by entry (``pmatrix``), or ``None``."""
        if not n.shape or n.ndim > 2 or not all(d.is_Integer for d in n.shape):
            return None
        size = [int(d) for d in n.shape]
        if size[0] * (size[1] if n.ndim == 2 else 1) > 16:
            return None
        if any(isinstance(v, Var) and v.ndim and split_scripts(v.tex) != (v.tex, "", "") for v in walk([n])):
            return None  # entries of a scripted vector (\dot a_1) read better as the vector itself
        try:
            grid = [[_entry(n, (i, j) if n.ndim == 2 else (i,)) for j in range(size[1] if n.ndim == 2 else 1)]
                    for i in range(size[0])]
        except _NoLift:
            return None
        rows = [" & ".join(self.node(x)[0] for x in row) for row in grid]
        return r"\begin{pmatrix}" + r" \\ ".join(rows) + r"\end{pmatrix}"

    # -- batch form --------------------------------------------------------------------------------
    def _lift(self, n: Node, memo: dict[int, Node]) -> Node:
        """``n`` with a leading sample axis: the batch of its per-sample values (samples as columns)."""
        if id(n) in memo:
            return memo[id(n)]
        if not _batched(n):
            return n
        N = self._n
        if isinstance(n, Var):
            if n.ndim > 1:
                raise _NoLift
            tex = n.tex if n.ndim == 0 else capital(n.tex)
            if self.carried and n in self.carried:
                raise _NoLift
            v = Var(n.name + "_batch", (N, *n.shape), "var", tex)
            self.lifted[v] = n
            res: Node = v
        elif isinstance(n, Einsum):
            ops = [self._lift(o, memo) for o in n.operands]
            B = ("_B",)
            ins = [((B,) + tuple(l)) if _batched(o) else tuple(l) for l, o in zip(n.ins, n.operands)]
            dims: dict[Any, Any] = dict(n.index_dims())
            dims[B] = N
            res = einsum(ins, (B, *n.out), ops, dims=dims, coef=n.coef)
        elif isinstance(n, Map):
            args = []
            for a in n.args:
                if _batched(a):
                    args.append(self._lift(a, memo))
                elif a.shape == ():
                    args.append(a)
                else:
                    labels = tuple(range(a.ndim + 1))
                    args.append(einsum([labels[1:]], labels, [a], dims=dict(zip(labels, (N, *a.shape)))))
            res = map_(n.fn, args, (N, *n.shape))
        elif isinstance(n, AxisOp):
            res = type(n)(self._lift(n.x, memo), n.axis + 1)
        elif isinstance(n, Take):
            res = take(self._lift(n.x, memo), n.axis + 1, n.index)
        elif isinstance(n, Embed):
            res = embed(self._lift(n.x, memo), n.axis + 1, n.index, n.size)
        else:
            raise _NoLift
        memo[id(n)] = res
        return res

    def batch_form(self, eq: Equation) -> str:
        """The batch form of a per-sample gradient or Hessian: its (averaged) sum over the samples."""
        n = eq.batch_dim
        self._n = n
        mean = eq.reduction == "mean"
        terms = _terms(eq.rhs)
        texs: list[tuple[bool, str, int]] = []
        saved = set(self.columns)
        self.columns.add(n)
        try:
            for t in terms:
                texs.append(self._batch_term(t, n, mean))
        except _NoLift:
            texs = []
        finally:
            self.columns = saved
        if not texs:  # not expressible with samples as columns: the sum over samples, written out
            self.where = [w for w in self.where if not any(v.tex in w for v in self.lifted)]
            self.sample_sup = "(i)"
            try:
                body, prec = self.node(eq.rhs)
            finally:
                self.sample_sup = ""
            pre = (rf"\frac{{1}}{{{sp.latex(n)}}} " if mean else "") + rf"\sum_{{i=1}}^{{{sp.latex(n)}}} "
            return pre + (rf"\left({body}\right)" if prec == ADD else body)
        out = ""
        for k, (neg, tex, _prec) in enumerate(texs):
            if neg:
                out += (" - " if k else "- ") + tex
            else:
                out += (" + " if k else "") + tex
        return out

    def _batch_term(self, t: Node, n: Any, mean: bool) -> tuple[bool, str, int]:
        c, t = _split_coef(t)
        if not _batched(t):  # the same for every sample: the mean is the term, the sum n times it
            coef = c if mean else c * n
        else:
            lifted = self._lift(t, {})
            labels = tuple(range(t.ndim + 1))
            t = einsum([labels], labels[1:], [lifted], dims=dict(zip(labels, (n, *t.shape))))
            coef = c / n if mean else c
        neg = bool(coef.could_extract_minus_sign())
        if neg:
            coef = -coef
        tex, prec = self.node(t)
        if coef != 1:
            ct, _ = _coef(coef, self.symbols)
            tex = ct + (rf"\left({tex}\right)" if prec == ADD else tex)
            prec = MUL
        return neg, tex, prec

    # -- equations and programs ---------------------------------------------------------------------
    def equation(self, eq: Equation, scan_sum: bool = False) -> str:
        """``lhs = rhs`` (with its definitions), in batch form where the printer prints batches."""
        self.where = []
        self._memo = {}
        letters = self._default_letters(eq.lhs)
        lhs = eq.lhs.tex
        sups = self._sups(eq.lhs, letters)
        lhs = with_sup(lhs, sups) if sups else lhs
        if self.model is not None and self.model.is_update and eq.lhs.tex in {v.tex for v in self.model.params.values()}:
            lhs += r" \leftarrow"
        if self.batch and eq.batch_dim is not None:
            rhs = self.batch_form(eq)
        else:
            mat = self.matrix(eq.rhs) if eq.kind in ("grad", "hessian", "tangent") else None
            rhs = mat if mat is not None else self.node(eq.rhs, letters)[0]
        if scan_sum and eq.lhs.name in self.sum_time:
            T = sp.latex(self.sum_time[eq.lhs.name])
            if rhs.startswith(r"\frac{1}{") and self.batch:
                k = rhs.index("}", 7) + 1
                k = rhs.index("}", k) + 1
                rhs = rhs[:k] + rf" \sum_{{t=1}}^{{{T}}} " + rhs[k:].lstrip()
            else:
                rhs = rf"\sum_{{t=1}}^{{{T}}} " + (rf"\left({rhs}\right)" if _top_sum(rhs) else rhs)
        s = f"{lhs} = {rhs}" if not lhs.endswith(r"\leftarrow") else f"{lhs} {rhs}"
        s = s.replace(r"\leftarrow = ", r"\leftarrow ")
        if self.where:
            s += r",\quad " + r",\quad ".join(self.where)
        if eq.note:
            s += rf"\qquad {eq.note}"
        return _break(_tidy(s))

    def program(self, eqs: Sequence[Equation], layers: int | None = None, display: bool = True) -> list[str]:
        """The printed program: with ``display``, shared subexpressions named, intermediates named by their
        own expression left out and layers folded; without it, exactly one string per equation."""
        if not display:
            return [self.equation(e, scan_sum=self.model is not None and bool(self.model.recurrences)
                                  and e.kind == "grad") for e in eqs]
        eqs = self._named(list(eqs))
        scan = self.model is not None and bool(self.model.recurrences)
        texs = []
        for e in eqs:
            s = self.equation(e, scan_sum=scan and e.kind == "grad")
            if s == f"{e.lhs.tex} = {e.lhs.tex}" and len(eqs) > 1:
                continue  # an intermediate named by its own expression (z + a, t + 1): nothing to print
            texs.append(s)
        if layers:
            forward = bool(eqs) and all(e.kind == "forward" for e in eqs)
            texs = fold_layers(texs, layers, ascending=forward)
        return texs

    def _named(self, eqs: list[Equation]) -> list[Equation]:
        r"""A subexpression that is a bias gradient and also appears in other equations (the adjoint of a
        gate's pre-activation, used by g_W, g_b and the carried adjoint) gets its name: g_{b_f} = \delta_f."""
        if not eqs or eqs[0].kind == "forward":
            return eqs
        eqs = self._recognise(eqs)
        used_lhs = {e.lhs.tex for e in eqs} | ({e.lhs.tex for e in self.model.equations} if self.model else set())
        shared: dict[Node, Var] = {}
        extra_roots = list(self.carried.values())
        for e in eqs:
            if e.kind != "grad" or isinstance(e.rhs, Var) or not isinstance(e.rhs, (Map, Einsum)):
                continue
            base, sub, sup = split_scripts(e.lhs.tex)
            if not base.startswith("g") or not sub.startswith("b"):
                continue
            pb, psub, psup = split_scripts(sub)
            if pb != "b":
                continue
            roots = [x.rhs for x in eqs if x is not e] + extra_roots
            if not any(e.rhs in walk([r], stop=lambda m: isinstance(m, Var)) for r in roots):
                continue
            time = r"\langle t\rangle" if self.model is not None and self.model.recurrences else ""
            tex = _compose(r"\delta", psub, psup + sup + time)
            if tex in used_lhs:
                continue
            used_lhs.add(tex)
            shared[e.rhs] = Var("delta_" + e.lhs.name, e.rhs.shape, "adjoint", tex, batched=_batched(e.rhs))
        if not shared:
            return eqs
        out: list[Equation] = []
        done: set[Node] = set()
        for e in eqs:
            for expr, v in shared.items():
                if expr not in done and expr in walk([e.rhs], stop=lambda m: isinstance(m, Var)):
                    out.append(Equation(v, substitute(expr, {}), "adjoint"))
                    done.add(expr)
            rhs = substitute(e.rhs, dict(shared))
            out.append(replace(e, rhs=rhs))
        self.carried = {k: substitute(r, dict(shared)) for k, r in self.carried.items()}
        return out


    @staticmethod
    def _recognise(eqs: list[Equation]) -> list[Equation]:
        r"""A later equation that contains the right-hand side of a named adjoint uses its name
        (``\zeta^{[\ell]} = \delta^{[\ell+2]} + W^{[\ell+1]\top} \delta^{[\ell+1]}`` in a residual block)."""
        named: dict[Node, Var] = {}
        out = []
        for e in eqs:
            rhs = substitute(e.rhs, dict(named)) if named else e.rhs
            out.append(replace(e, rhs=rhs) if rhs is not e.rhs else e)
            if e.kind == "adjoint" and isinstance(e.rhs, (Map, Einsum)) and e.rhs not in named:
                named[e.rhs] = e.lhs
        return out


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _batched(n: Node) -> bool:
    return any(isinstance(v, Var) and v.batched for v in walk([n]))


def _scalar_broadcast(a: Node) -> bool:
    """A scalar spread over a tensor (printed as the scalar: the broadcast is implicit)."""
    return isinstance(a, Einsum) and not {x for l in a.ins for x in l}


def _coef(c: sp.Expr, symbols: dict[str, str] | None = None) -> tuple[str, bool]:
    """LaTeX prefix for a scalar coefficient, and whether it is negative."""
    if c == 1:
        return "", False
    if c == -1:
        return "", True
    neg = bool(c.could_extract_minus_sign())
    a = -c if neg else c
    p = _ScalarPrinter({}, set(), symbols or {})
    return p._coefficient(a) + " ", neg


def _terms(rhs: Node) -> list[Node]:
    """The terms of a sum (a map whose body is a sum of its arguments' terms), else ``[rhs]``."""
    if isinstance(rhs, Map):
        fn = sp.expand(rhs.fn, deep=False, mul=True, multinomial=False, power_exp=False, power_base=False,
                       log=False)
        if fn.is_Add:
            batched = {ARG[i] for i, a in enumerate(rhs.args) if _batched(a)}
            per = [t for t in sp.Add.make_args(fn) if t.free_symbols & batched]
            same = [t for t in sp.Add.make_args(fn) if not t.free_symbols & batched]
            if not same:  # nothing to take out of the sum over the samples
                return [rhs]
            parts = [map_(t, rhs.args, rhs.shape) for t in same]
            return ([map_(sp.Add(*per), rhs.args, rhs.shape)] if per else []) + parts
    return [rhs]


def _split_coef(t: Node) -> tuple[sp.Expr, Node]:
    """``c * t'`` with c a scalar constant pulled out of a map or a contraction."""
    if isinstance(t, Einsum) and t.coef != 1:
        return t.coef, einsum(t.ins, t.out, t.operands, dims=t.index_dims())
    if isinstance(t, Map):
        c, rest = t.fn.as_independent(*ARG[: len(t.args)], as_Add=False)
        if c != 1 and rest != t.fn:
            inner = map_(rest, t.args, t.shape)
            c2, inner = _split_coef(inner) if not (isinstance(inner, Map) and inner.fn == t.fn) else (1, inner)
            return c * c2, inner
    return sp.Integer(1), t


def _levels(s: str) -> list[int]:
    """The nesting depth at each character of LaTeX: braces, ``\\left``/``\\right`` and parentheses."""
    out, d, i = [0] * len(s), 0, 0
    while i < len(s):
        for tok, step in ((r"\left", 1), (r"\right", -1)):
            if s.startswith(tok, i):
                d += step
                for j in range(i, min(i + len(tok) + 1, len(s))):
                    out[j] = d
                i += len(tok) + 1
                break
        else:
            c = s[i]
            if c in "{(":
                d += 1
            elif c in "})":
                d -= 1
            out[i] = d
            i += 1
    return out


def _top_level(tex: str, token: str) -> bool:
    """Whether ``token`` occurs in ``tex`` outside every group."""
    lv = _levels(tex)
    return any(lv[i] == 0 and tex.startswith(token, i) for i in range(len(tex)))


def _top_sum(tex: str) -> bool:
    """Whether ``tex`` is a sum at its top level (a plus or minus sign outside every group)."""
    lv = _levels(tex)
    return any(lv[i] == 0 and tex.startswith((" + ", " - "), i) for i in range(1, len(tex)))


def _window_sub(stride: int, padding: int, dilation: int) -> str:
    parts = [f"S={stride}" if stride != 1 else "", f"P={padding}" if padding else "",
             f"D={dilation}" if dilation != 1 else ""]
    parts = [p for p in parts if p]
    return f"_{{{','.join(parts)}}}" if parts else ""


def _entry(n: Node, idx: tuple[int, ...]) -> Node:
    """The scalar entry ``n[idx]`` of a node of integer shape, as a node."""
    if isinstance(n, Embed):
        if idx[n.axis] != n.index:
            return Const(0)
        return _entry(n.x, idx[: n.axis] + idx[n.axis + 1 :])
    if isinstance(n, Take):
        return _entry(n.x, idx[: n.axis] + (n.index,) + idx[n.axis :])
    if isinstance(n, Const):
        return Const(n.value)
    if isinstance(n, Eye):
        return Const(1 if idx[0] == idx[1] else 0)
    if isinstance(n, Var):
        out: Node = n
        for i in idx:
            out = take(out, 0, i)
        return out
    if isinstance(n, Map):
        return map_(n.fn, [_entry(a, idx) if a.shape else a for a in n.args], ())
    if isinstance(n, Einsum):
        summed = sorted({x for l in n.ins for x in l} - set(n.out))
        dims = n.index_dims()
        if not all(dims[x].is_Integer for x in summed):
            raise _NoLift
        val = dict(zip(n.out, idx))
        total: list[Node] = []
        for combo in itertools.product(*[range(int(dims[x])) for x in summed]):
            val.update(zip(summed, combo))
            factors = [_entry(o, tuple(val[x] for x in l)) for l, o in zip(n.ins, n.operands)]
            total.append(map_(n.coef * sp.Mul(*ARG[: len(factors)]), factors, ()))
        return add_all(total, ()) or Const(0)
    raise _NoLift


def _chain(ops: Sequence[tuple[str, int, tuple[int, ...]]], out: tuple[int, ...], dims: dict[Any, Any],
           columns: set[Any]) -> str | None:
    """A contraction of vectors and matrices as a matrix product, if its indices form a chain.

    Each operand becomes a matrix (row label, column label): vectors are columns, or rows when their axis is
    a column dimension (a per-sample scalar in batch form); a matrix whose first axis is a column dimension
    prints as its transpose (time steps, samples as columns). A vector whose label is shared by two other
    factors, or by the output and a matrix, is a diagonal matrix. Summed labels of one operand contract with
    a ones vector.
    """
    if len(ops) > 5 or len(out) > 2 or any(len(l) > 2 or len(set(l)) != len(l) for _, _, l in ops):
        return None
    count: dict[int, int] = {}
    for _, _, l in ops:
        for x in l:
            count[x] = count.get(x, 0) + 1
    items: list[tuple[str, int, tuple[int, ...], str]] = []
    for tex, prec, l in ops:
        kind = "m"
        if len(l) == 1:
            x = l[0]
            if count[x] >= 3 or (x in out and count[x] == 2 and len(out) == 2):
                kind = "d"
            elif dims.get(x) in columns:
                kind = "r"
        elif dims.get(l[0]) in columns:
            kind = "t"  # printed transposed: the symbol is the matrix with that axis as columns
        items.append((tex, prec, l, kind))
    for x, c in count.items():
        if c == 1 and x not in out:
            items.append((r"\mathbf{1}", ATOM, (x,), "m"))
    if len(items) > 6:
        return None
    target: tuple[Any, Any]
    if len(out) == 2:
        target = (out[1], out[0]) if dims.get(out[0]) in columns else (out[0], out[1])
    elif len(out) == 1:
        target = (None, out[0]) if dims.get(out[0]) in columns else (out[0], None)
    else:
        target = (None, None)

    def forms(item: tuple[str, int, tuple[int, ...], str]) -> list[tuple[Any, Any, str, int]]:
        tex, prec, l, kind = item
        # a matrix product inside a matrix product needs no parentheses ((A X) B = A X B); a sum, a negation
        # or a Hadamard product does
        plain = prec == ATOM or (prec == MUL and not _top_level(tex, r"\odot") and not tex.startswith("- "))
        wrapped = tex if plain else rf"\left({tex}\right)"
        if kind == "d":
            return [(l[0], l[0], rf"\operatorname{{diag}}\left({tex}\right)", 0)]
        if len(l) == 2:
            a, b = (l[1], l[0]) if kind == "t" else (l[0], l[1])
            return [(a, b, wrapped, 0), (b, a, transpose(tex, prec), 1)]
        if kind == "r":
            return [(None, l[0], wrapped, 0), (l[0], None, transpose(tex, prec), 1)]
        return [(l[0], None, wrapped, 0), (None, l[0], transpose(tex, prec), 1)]

    best: tuple[int, str] | None = None
    n = len(items)
    all_forms = [forms(it) for it in items]

    def search(chain: list[tuple[Any, Any, str, int]], order: list[int], used: set[int]) -> None:
        nonlocal best
        if len(order) == n:
            if chain[0][0] != target[0] or chain[-1][1] != target[1]:
                return
            if not _valid(chain, [items[i] for i in order], out):
                return
            # fewest transposes (a transposed ones vector counts half: 1^T x reads as a sum), book order
            score = sum(m[3] * (5 if m[2].startswith(r"\mathbf{1}") else 10) for m in chain) + sum(
                abs(p - i) for i, p in enumerate(order))
            if best is None or score < best[0]:
                best = (score, " ".join(m[2] for m in chain))
            return
        for i in range(n):
            if i in used:
                continue
            for f in all_forms[i]:
                if chain and chain[-1][1] != f[0]:
                    continue
                if not chain and f[0] != target[0]:
                    continue
                search([*chain, f], [*order, i], used | {i})

    search([], [], set())
    return best[1] if best else None


def _valid(chain: Sequence[tuple[Any, Any, str, int]], items: Sequence[tuple[str, int, tuple[int, ...], str]],
           out: tuple[int, ...]) -> bool:
    """Whether a matrix product computes the contraction: every label's factors are consecutive; a summed
    label joins exactly two non-diagonal factors, an output label reaches its end of the product through
    diagonal factors only."""
    positions: dict[Any, list[int]] = {}
    for k, (r, c, _, _) in enumerate(chain):
        for x in {r, c} - {None}:
            positions.setdefault(x, []).append(k)
    for x, ks in positions.items():
        if ks != list(range(ks[0], ks[-1] + 1)):
            return False
        plain = [k for k in ks if items[k][3] != "d"]
        if x in out:
            if len(plain) > 1:
                return False
            if ks[0] != 0 and ks[-1] != len(chain) - 1:
                return False
        elif len(plain) != 2:
            return False
    return True


def _fuse(ops: Sequence[tuple[str, int, tuple[int, ...]]], out: tuple[int, ...], dims: dict[Any, Any],
          columns: set[Any]) -> str | None:
    r"""Labels that always appear together, in order, are one flattened axis: ``W^{[2]} \operatorname{vec}(p)``
    (a dense layer on a pooled image), ``\operatorname{vec}^{-1}(W^\top \delta)`` for the adjoint back."""
    seqs = [list(l) for _, _, l in ops] + [list(out)]
    merged = False
    changed = True
    while changed:
        changed = False
        labels = {x for s in seqs for x in s}
        for x in labels:
            holders = [s for s in seqs if x in s]
            nxt = {s[s.index(x) + 1] if s.index(x) + 1 < len(s) else None for s in holders}
            if len(nxt) != 1 or None in nxt:
                continue
            y = nxt.pop()
            if all((y in s) == (x in s) for s in seqs):
                for s in seqs:
                    if y in s:
                        s.remove(y)
                changed = merged = True
                break
    if not merged:
        return None
    new_ops = []
    for (tex, prec, l), s in zip(ops, seqs):
        if len(s) == 1 and len(l) > 1 and tex == "I":
            return None  # vec(I) reads as nothing the book writes: index notation instead
        if len(s) == 1 and len(l) > 1:
            new_ops.append((rf"\operatorname{{vec}}\left({tex}\right)", ATOM, tuple(s)))
        else:
            new_ops.append((tex, prec, tuple(s)))
    new_out = tuple(seqs[-1])
    chain = _chain(new_ops, new_out, dims, columns)
    if chain is None:
        return None
    if len(new_out) == 1 and len(out) > 1:
        return rf"\operatorname{{vec}}^{{-1}}\left({chain}\right)"
    return chain


def fold_layers(texs: Sequence[str], L: int, ascending: bool = False) -> list[str]:
    """Fold equations that repeat over the layer index into one equation with a symbolic ``\\ell``.

    Forward programs count layers up (``\\ell = 1, \\dots, L``), backward programs down.
    """
    templates: dict[str, list[int]] = {}
    order: list[str] = []
    plain: dict[str, str] = {}
    for t in texs:
        ks = [int(k) for k in _LAYER.findall(t)]
        if not ks:
            key = "\x00" + t
            templates.setdefault(key, [])
            order.append(key)
            plain[key] = t
            continue
        top = max(ks)
        tpl = _LAYER.sub(_relative(top), t)
        if tpl not in templates:
            templates[tpl] = []
            order.append(tpl)
        templates[tpl].append(top)
    out = []
    for key in order:
        if key in plain:
            out.append(plain[key])
            continue
        tops = templates[key]

        def render(var: str, top: int = 0, key: str = key) -> str:
            return re.sub("\x01(-?\\d+)\x01", lambda mt: _layer_label(top + int(mt.group(1)), L, var)
                          if var == "L" else _layer_label(int(mt.group(1)), L, var), key)

        if len(tops) == 1:
            out.append(render("L", tops[0]) if tops[0] == L else _layer_plain(key, tops[0]))
            continue
        hi, lo = max(tops), min(tops)
        top_tex = _layer_label(hi, L, "L") if hi >= L - 1 else str(hi)
        rng = rf"\ell = {lo}, \dots, {top_tex}" if ascending else rf"\ell = {top_tex}, \dots, {lo}"
        out.append(render(r"\ell") + rf"\qquad {rng}")
    return out


_LAYER = re.compile(r"\[(\d+)\]")


def _layer_label(k: int, L: int, var: str) -> str:
    if var == "L":
        d = k - L
        return "L" if d == 0 else f"L{d:+d}"
    return f"{var}" if k == 0 else f"{var}{k:+d}"


def _relative(top: int) -> Any:
    def sub(mt: re.Match[str]) -> str:
        return "[\x01" + str(int(mt.group(1)) - top) + "\x01]"

    return sub


def _layer_plain(tpl: str, top: int) -> str:
    return re.sub("\x01(-?\\d+)\x01", lambda mt: str(top + int(mt.group(1))), tpl)


def _break(s: str, width: int = LINE_WIDTH) -> str:
    r"""A line longer than ``width`` visible characters as ``\begin{aligned}`` rows, broken before top-level
    plus and minus signs (and before its definitions)."""
    from .textform import to_text

    if len(to_text(s)) <= width or r"\begin{aligned}" in s:
        return s
    head, sep, rhs = s.partition(" = ")
    if not sep:
        return s
    where = ""
    k = rhs.find(r",\quad ")
    if k >= 0 and _levels(rhs)[k] == 0:
        rhs, where = rhs[:k], rhs[k + len(r",\quad ") :]
    pieces = _split_top(rhs)
    rows: list[str] = []
    cur = ""
    for p in pieces:
        if cur and len(to_text(cur + p)) > width - 10:
            rows.append(cur)
            cur = p.lstrip()
        else:
            cur += p
    rows.append(cur)
    if where:
        rows.extend(w for w in where.split(r",\quad "))
    body = (f"{head} &= {rows[0]}" + "".join(rf" \\ &\quad {r}" for r in rows[1:]))
    return r"\begin{aligned}" + body + r"\end{aligned}"


def _split_top(s: str) -> list[str]:
    """``a + b - c`` -> [``a``, `` + b``, `` - c``] at the top level."""
    lv = _levels(s)
    cuts = [i for i in range(1, len(s)) if lv[i] == 0 and s.startswith((" + ", " - "), i) and s[:i].strip()]
    return [s[i:j] for i, j in zip([0, *cuts], [*cuts, len(s)])]


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def _owner(eqs: Sequence[Equation]) -> Model | None:
    """The model a list of equations was derived from (its forward program, its cached backprop or
    Hessian), so that printing an equation alone follows the model's notation."""
    from . import autodiff

    want = {id(e) for e in eqs}
    cands: list[Model] = [m for m, _ in autodiff._BACKPROP.values()]
    for m, res in [*autodiff._BACKPROP.values(), *autodiff._HESSIAN.values()]:
        if any(id(e) in want for e in res):
            return m
    from . import models

    for m in [*cands, *models._CACHE.values()]:
        if any(id(e) in want for e in m.equations):
            return m
    return None


def equations_tex(eqs: Sequence[Equation], batch: bool = False, layers: int | None = None,
                  model: Model | None = None) -> list[str]:
    """One LaTeX string per equation, in order (each renders on its own): what generated code puts above
    each assignment. :func:`program_tex` is the printed program, as the CLI and the docs show it.

    With ``layers=L``, equations that differ only in their layer index ``[l]`` are printed once, with
    the index symbolic (``\\delta^{[\\ell]} = \\dot S(z^{[\\ell]}) \\odot \\zeta^{[\\ell]}``, for
    ``\\ell = L-1, \\dots, 1``), and the boundary cases with indices counted from ``L``. ``model`` gives the
    notation (found from the derivation caches when omitted).
    """
    m = model if model is not None else _owner(eqs)
    if layers:
        return BookPrinter(m, batch).program(eqs, layers)
    return BookPrinter(m, batch).program(eqs, display=False)


def program_tex(eqs: Sequence[Equation], batch: bool = False, layers: int | None = None,
                model: Model | None = None) -> list[str]:
    """The printed program: shared adjoints named (the adjoint of a gate's pre-activation is ``\\delta_f``),
    intermediates named by their own expression (``z + a``, ``t + 1``) left out, repeated layers folded."""
    m = model if model is not None else _owner(eqs)
    return BookPrinter(m, batch).program(eqs, layers)


def constants_tex(m: Model) -> str | None:
    r"""The values of a model's hyperparameters, listed once: ``\lambda = 0.1,\ \epsilon = 10^{-5}``."""
    used = {str(s) for e in m.equations for x in walk([e.rhs]) if isinstance(x, (Map, Einsum))
            for s in (x.fn if isinstance(x, Map) else x.coef).free_symbols}
    shown = {k: v for k, v in m.constants.items() if k in used}
    if not shown:
        return None
    p = _ScalarPrinter({}, set(), dict(m.notation.get("symbols", {})))
    return r",\quad ".join(f"{p.doprint(sp.Symbol(k, real=True))} = {_number(v)}" for k, v in shown.items())


def check_names(m: Model) -> list[str]:
    """Symbols printed on the left of both a forward and an adjoint equation (should be none)."""
    from .autodiff import backprop

    if m.is_update:
        return []
    fwd = {e.lhs.tex for e in m.equations} | {v.tex for v in m.inputs.values()}
    return sorted(fwd & {e.lhs.tex for e in backprop(m)})


def latex(obj: Any, batch: bool = False, model: Model | None = None) -> str:
    r"""LaTeX of a model (forward program and backprop, aligned, with its hyperparameters), an equation, a
    list of equations, or an expression, in the book's notation.

    Args:
        obj: a :class:`Model`, :class:`Equation`, list of equations, or tensor expression.
        batch: print batch-averaged gradients and Hessians in matrix form (``\frac{1}{n} X D X^\top``).
        model: the model whose notation an equation follows (found from the derivation caches if omitted).

    Example:
        >>> import derive
        >>> m = derive.models.get("softmax_regression")
        >>> derive.latex(derive.grad(m, "b"))
        'g_{b} = \\delta'
    """
    if isinstance(obj, Model):
        from .autodiff import backprop

        L = obj.options.get("layers") if isinstance(obj.options.get("layers"), int) else None
        consts = constants_tex(obj)
        tail = (r"\\[4pt]&" + consts) if consts else ""
        if obj.is_update:
            return r"\begin{aligned}" + aligned(obj.equations, obj) + tail + r"\end{aligned}"
        fwd = aligned(obj.equations, obj, layers=L)
        bwd = aligned(backprop(obj), obj, batch=batch, layers=L)
        return (r"\begin{aligned}&\textbf{forward}\\" + fwd + r"\\[4pt]&\textbf{backward}\\" + bwd + tail
                + r"\end{aligned}")
    if isinstance(obj, Equation):
        return equations_tex([obj], batch, model=model)[0]
    if isinstance(obj, (list, tuple)) and all(isinstance(e, Equation) for e in obj):
        return r"\begin{aligned}" + aligned(list(obj), model, batch) + r"\end{aligned}"
    if isinstance(obj, Node):
        return _tidy(BookPrinter(model, batch).node(obj)[0])
    raise TypeError(f"derive.latex takes a Model, an Equation, a list of equations or an expression, "
                    f"not {type(obj).__name__}")


def aligned(eqs: Sequence[Equation], model: Model | None, batch: bool = False, layers: int | None = None) -> str:
    """The rows of an ``aligned`` block: one per equation, long ones broken over several rows."""
    rows = []
    for s in program_tex(eqs, batch, layers, model=model):
        if s.startswith(r"\begin{aligned}"):
            rows.append(s[len(r"\begin{aligned}") : -len(r"\end{aligned}")])
            continue
        if r" \leftarrow " in s:
            lhs, rhs = s.split(r" \leftarrow ", 1)
            rows.append(rf"{lhs} &\leftarrow {rhs}")
            continue
        lhs, rhs = s.split(" = ", 1)
        rows.append(f"{lhs} &= {rhs}")
    if model is not None and model.sample is not None and eqs and eqs[-1].kind == "forward" and not model.is_update:
        n = sp.latex(model.sample)
        red = (rf"\frac{{1}}{{{n}}}\sum_{{i=1}}^{{{n}}}" if model.reduction == "mean"
               else rf"\sum_{{i=1}}^{{{n}}}")
        if model.scans:
            rows.extend(_scan_rows(model))
            terms = []
            for sc in model.scans:
                if sc.loss is None:
                    continue
                T = sp.latex(sc.time)
                w = "" if sc.weight == 1 else sp.latex(sc.weight) + " "
                loss = next(e.lhs.tex for e in model.equations if e.lhs.name == sc.loss)
                terms.append(rf"{w}\sum_{{t=1}}^{{{T}}} " + with_sup(loss, "(i)"))
            rows.append(r"\mathcal{C} &= " + red + " " + " + ".join(terms))
        elif model.scan is not None:
            T = sp.latex(model.scan.time)
            rows.append(r"\mathcal{C} &= " + red + rf" \frac{{1}}{{{T}}}\sum_{{t=1}}^{{{T}}} C^{{\langle t\rangle(i)}}")
        else:
            rows.append(r"\mathcal{C} &= " + red + " C^{(i)}")
    return r"\\".join(rows)


def _at_time(tex: str, at: str) -> str:
    r"""``tex`` with its time index ``\langle t+k\rangle`` at ``t = at`` (``at`` a LaTeX value: 1, T)."""

    def sub(mt: re.Match[str]) -> str:
        k = (int(mt.group(2)) * (1 if mt.group(1) == "+" else -1)) if mt.group(1) else 0
        if at.isdigit():
            return rf"\langle {int(at) + k}\rangle"
        return rf"\langle {at}" + ("" if k == 0 else f"{k:+d}") + r"\rangle"

    return _TIME.sub(sub, tex)


def _scan_rows(m: Model) -> list[str]:
    r"""How the scans of a program connect: stacked states ``H = [h^{<1>}, \dots, h^{<T>}]`` and carries that
    start from an earlier scan's final state ``s^{<0>} = h^{<T_{in}>}`` (other states start at 0)."""
    defs = {e.lhs.name: e.lhs for e in m.equations}
    rows = []
    for sc in m.scans:
        T = sp.latex(sc.time)
        for prev, src in sc.init:
            first = "1" if not sc.reverse else T
            lhs = _at_time(m.inputs[prev].tex, first)
            rows.append(f"{lhs} &= {_at_time(defs[src].tex, _final(m, src))}")
        for sv, src in sc.stacks:
            owner = next(s for s in m.scans if src in s.equations)
            To = sp.latex(owner.time)
            h = defs[src].tex
            rows.append(rf"{sv.tex} &= \left[{_at_time(h, '1')}, \dots, {_at_time(h, To)}\right]")
    return rows


def _final(m: Model, src: str) -> str:
    sc = next(s for s in m.scans if src in s.equations)
    return "1" if sc.reverse else sp.latex(sc.time)


# --------------------------------------------------------------------------------------------------
# What the kernels compute beyond the adjoint program
# --------------------------------------------------------------------------------------------------


def newton_tex(m: Model) -> list[str]:
    r"""One Newton step over the parameters jointly (what ``numeric.compile`` returns as ``newton``):
    ``\theta^{(t+1)} = \theta^{(t)} - H^{-1} g`` with the Hessian blocks and gradients in batch form."""
    from .autodiff import grad, hessian

    names = list(m.hessian_wrt)
    eqs: list[Equation] = [grad(m, p) for p in names]
    for i, a in enumerate(names):
        for b in names[i:]:
            eqs += hessian(m, a, None if a == b else b)
    lines = program_tex(eqs, batch=True, model=m)
    texs = {p: m.params[p].tex for p in names}
    blocks = []
    for a in names:
        row = []
        for b in names:
            if a == b:
                row.append(f"H_{{{texs[a]}}}")
            elif names.index(a) < names.index(b):
                row.append(f"H_{{{texs[a]}{texs[b]}}}")
            else:
                row.append(transpose(f"H_{{{texs[b]}{texs[a]}}}"))
        blocks.append(" & ".join(row))
    theta = r"\begin{pmatrix}" + r" \\ ".join(texs[p] for p in names) + r"\end{pmatrix}"
    g = r"\begin{pmatrix}" + r" \\ ".join(f"g_{{{texs[p]}}}" for p in names) + r"\end{pmatrix}"
    H = r"\begin{pmatrix}" + r" \\ ".join(blocks) + r"\end{pmatrix}"
    return [*lines, rf"\theta = {theta},\quad g = {g},\quad H = {H}",
            r"\theta^{(t+1)} = \theta^{(t)} - H^{-1} g"]


def init_tex(m: Model) -> list[str]:
    r"""The initialisation variances of a network's weights (§5.5): Glorot ``\frac{2}{N_{\ell-1} + N_\ell}``
    for sigmoid and tanh layers, He ``\frac{2}{N_{\ell-1}}`` for ReLU layers, from :mod:`derive.init`."""
    from . import init

    act = m.options.get("activation", "tanh")
    kind = "He" if act in ("relu", "leaky_relu") else "Glorot"
    var = init.he_variance() if kind == "He" else init.glorot_variance()
    ell = {init.N_in: sp.Symbol(r"N_{\ell-1}", positive=True), init.N_out: sp.Symbol(r"N_{\ell}", positive=True)}
    v = sp.latex(var.subs(ell))
    r = sp.latex(init.uniform_bound(var).subs(ell))
    rng = r"\qquad \ell = 1, \dots, L"
    return [rf"\operatorname{{Var}}\left(W^{{[\ell]}}_{{ij}}\right) = {v}\quad \text{{({kind}, {act} layers)}}{rng}",
            rf"W^{{[\ell]}}_{{ij}} \sim \mathcal{{N}}\left(0, {v}\right) \text{{ or }} U\left[-r, r\right],\ r = {r},"
            r"\quad b^{[\ell]} = \mathbf{0}"]


def jacobian_tex(m: Model) -> list[str]:
    r"""The Jacobian of one step of a recurrence in the book's layout (7.11),
    ``\frac{\partial h^{\langle t+1\rangle}}{\partial h^{\langle t\rangle}} = W_{hh}^\top \operatorname{diag}(\dot S(z^{\langle t+1\rangle}))``
    (the transpose of the usual Jacobian, so that ``\zeta^{\langle t\rangle}`` is it times ``\zeta^{\langle t+1\rangle}``)."""
    from .autodiff import tangents
    from .textform import to_text

    if m.scan is None:
        return []
    out = []
    defs = {e.lhs.name: e.lhs for e in m.equations}
    for prev, nxt in m.scan.carries:
        hp, h = m.inputs[prev], defs[nxt]
        if h.ndim != 1:
            continue
        tan = tangents(m.equations, hp, only={h}).get(h)
        if tan is None:
            continue
        jac = einsum([(0, 1)], (1, 0), [tan])  # the book's layout: d h_j / d hprev_i at (i, j)
        p = BookPrinter(m)
        tex = shift_time(p.node(jac)[0])
        if len(to_text(tex)) > LINE_WIDTH:
            continue  # a gated step's Jacobian is no line to read: its adjoints say the same, term by term
        out.append(rf"\frac{{\partial {shift_time(h.tex)}}}{{\partial {shift_time(hp.tex)}}} = {tex}")
    return [_tidy(t) for t in out]
