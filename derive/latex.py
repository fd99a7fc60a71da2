r"""LaTeX in the book's notation.

Per-sample equations print with column vectors (``z = W x + b``), ``\odot`` for Hadamard products,
``^\top`` transposes (``W^{[\ell]\top}``), ``\sigma`` and ``S_{\mathrm{softmax}}``. Contractions print as
matrix products when their indices form a chain (found by a small search over operand orders and
orientations), and in index notation otherwise. With ``batch=True`` a gradient or Hessian that averages
per-sample quantities prints in batch form: per-sample vectors become the matrices of the batch
(``x -> X``) and per-sample scalars become diagonal matrices, e.g. ``H_w = \frac{1}{n} X^\top D X``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

import sympy as sp
from sympy.printing.latex import LatexPrinter

from .program import Equation, Model
from .tensor import ARG, Const, Einsum, Map, Node, Var, walk

__all__ = ["latex", "BookPrinter"]

ATOM, MUL, ADD = 0, 1, 2

_GREEK_CAPS = {r"\delta": r"\Delta", r"\zeta": r"\Zeta", r"\theta": r"\Theta", r"\sigma": r"\Sigma"}


def transpose(tex: str, prec: int = ATOM) -> str:
    r"""``A^\top``; ``W^{[2]}`` becomes ``W^{[2]\top}`` as in the book."""
    if prec != ATOM:
        return rf"\left({tex}\right)^\top"
    m = re.fullmatch(r"(.*)\^\{(.*)\}", tex)
    if m and m.group(1).count("{") == m.group(1).count("}"):
        if m.group(2) == "-1":  # the transpose of an inverse: X^{-\top}
            return rf"{m.group(1)}^{{-\top}}"
        return rf"{m.group(1)}^{{{m.group(2)}\top}}"
    if "^" in tex:
        return rf"\left({tex}\right)^\top"
    return tex + r"^\top"


def capital(tex: str) -> str:
    r"""The batch matrix of a per-sample vector: ``x -> X``, ``\hat{y} -> \hat{Y}``, ``\delta -> \Delta``."""
    for g, G in _GREEK_CAPS.items():
        if tex.startswith(g) and G != r"\Zeta":
            return G + tex[len(g):]
    m = re.match(r"^(\\[a-z]+\{)([a-z])(\}.*)$", tex)
    if m:
        return m.group(1) + m.group(2).upper() + m.group(3)
    if tex[:1].isalpha() and tex[:1].islower():
        return tex[0].upper() + tex[1:]
    return tex


def signed_sum(expr: sp.Expr, show: Any, group: Any, lead: str) -> str:
    """A sum written ``a + b - c``: positive terms first, each negative one after a minus sign (so the
    text reads as the book writes it, and generated code computes no negation). ``show`` prints a term,
    ``group`` parenthesises a nested sum, ``lead`` is the sign of a negative first term."""
    terms = sorted(sp.Add.make_args(expr), key=lambda t: (t.could_extract_minus_sign(), t.is_Number))
    out = ""
    for i, t in enumerate(terms):
        neg = t.could_extract_minus_sign()
        body = show(-t if neg else t)
        if (-t if neg else t).is_Add:
            body = group(body)
        out += (" - " if neg else " + ") + body if i else (lead if neg else "") + body
    return out


class _ScalarPrinter(LatexPrinter):
    """SymPy's LaTeX printer with tensor arguments: products of tensors print with ``\\odot``."""

    def __init__(self, names: dict[sp.Symbol, str], tensors: set[sp.Symbol]):
        super().__init__({"mul_symbol": None, "fold_short_frac": False})
        self.names, self.tensors = names, tensors

    def _print_Symbol(self, expr: sp.Symbol, style: str = "plain") -> str:
        if expr in self.names:
            return self.names[expr]
        return super()._print_Symbol(expr)

    def _is_tensor(self, e: sp.Expr) -> bool:
        return bool(e.free_symbols & self.tensors)

    def _print_Add(self, expr: sp.Add, order: str | None = None) -> str:
        return signed_sum(expr, self._print, lambda s: rf"\left({s}\right)", "- ")

    def _print_Pow(self, expr: sp.Pow) -> str:
        b, e = expr.args
        if self._is_tensor(b) and e == 2 and b.is_Symbol:
            s = self._print(b)
            return rf"{s} \odot {s}"
        return str(super()._print_Pow(expr))

    def _print_Mul(self, expr: sp.Mul) -> str:
        factors = sp.Mul.make_args(expr)
        tens = [f for f in factors if self._is_tensor(f)]
        if not tens or any(f.is_Pow and f.exp.is_negative for f in tens):
            return str(super()._print_Mul(expr))
        scal = sp.Mul(*[f for f in factors if not self._is_tensor(f)])
        if len(tens) == 1 and any(f.is_Pow and f.exp.is_negative for f in sp.Mul.make_args(scal)):
            return str(super()._print_Mul(expr))  # v / (1 - beta^t) as a fraction
        neg = scal.as_coeff_Mul()[0] < 0
        if neg:
            scal = -scal
        parts = []
        # the book's order: scalars, then derivative factors (\dot S(z) \odot \zeta), then tensors
        for f in sorted(tens, key=lambda f: not isinstance(f, sp.Function)):
            t = self._print(f)
            parts.append(rf"\left({t}\right)" if f.is_Add else t)
        body = r" \odot ".join(parts)
        if scal != 1:
            st = self._print(scal)
            body = (rf"\left({st}\right)" if scal.is_Add else st) + " " + body
        return ("- " if neg else "") + body


class BookPrinter:
    """Prints nodes, equations and models; ``batch=True`` prints batch-averaged outputs in matrix form."""

    def __init__(self, batch: bool = False, sample: sp.Symbol | None = None):
        self.batch = batch
        self.sample = sample
        self.where: list[str] = []

    # -- nodes ------------------------------------------------------------------------------------
    def node(self, n: Node) -> tuple[str, int]:
        memo: dict[int, tuple[str, int]] = {}
        for m in walk([n], stop=lambda x: isinstance(x, Var)):
            memo[id(m)] = self._one(m, [memo[id(c)] for c in m.children()])
        return memo[id(n)]

    def _one(self, n: Node, kids: Sequence[tuple[str, int]]) -> tuple[str, int]:
        if isinstance(n, Var):
            tex = capital(n.tex) if (self.batch and n.batched and n.ndim == 1) else n.tex
            return tex, ATOM
        if isinstance(n, Einsum):
            conv = self._convolution(n)
            return conv if conv is not None else self.einsum(n, kids)
        from .tensor import Fold

        if isinstance(n, Fold) and isinstance(n.x, Einsum) and not self.batch:
            full = self._full_convolution(n)
            if full is not None:
                return full, MUL
        if isinstance(n, Map):
            return self.map(n, kids)
        if isinstance(n, Const):
            tex = n.latex([], self)
            return tex, (ATOM if (n.value.is_Atom and n.value >= 0) or n.shape else ADD)
        args = [k[0] for k in kids]
        return n.latex(args, self), ATOM

    def map(self, n: Map, kids: Sequence[tuple[str, int]]) -> tuple[str, int]:
        stacked = self._stack(n, kids)
        if stacked:
            return stacked, ATOM
        names = {}
        tensors = set()
        bases = {b for p in n.fn.atoms(sp.Pow) for b in p.base.free_symbols}
        hadamard = n.fn.is_Mul and sum(1 for a in n.args if a.shape != ()) >= 2
        for i, ((tex, prec), a) in enumerate(zip(kids, n.args)):
            wrap = prec == ADD or (prec == MUL and (ARG[i] in bases or (hadamard and a.shape != ())))
            names[ARG[i]] = rf"\left({tex}\right)" if wrap else tex
            if a.shape != () or (self.batch and _batched(a)):
                tensors.add(ARG[i])
        tex = _ScalarPrinter(names, tensors).doprint(n.fn)
        fn = n.fn
        if fn.is_Add or fn.could_extract_minus_sign():
            prec = ADD
        elif fn.is_Mul or (fn.is_Pow and bool(fn.base.free_symbols & tensors)):
            prec = MUL
        else:
            prec = ATOM
        return tex, prec

    def _stack(self, n: Map, kids: Sequence[tuple[str, int]]) -> str | None:
        """``e_1(a) + e_2(b)`` prints as the vector ``(a, b)^T``."""
        from .tensor import Embed

        if n.ndim != 1 or not n.fn.is_Add or not n.shape[0].is_Integer:
            return None
        entries: dict[int, str] = {}
        for t in sp.Add.make_args(n.fn):
            if not t.is_Symbol:
                return None
            i = ARG.index(t)
            a = n.args[i]
            if not isinstance(a, Embed) or a.index in entries:
                return None
            entries[a.index] = self.node(a.x)[0]
        size = int(n.shape[0])
        return r"\left(" + r",\; ".join(entries.get(i, "0") for i in range(size)) + r"\right)^\top"

    def einsum_latex(self, e: Einsum, args: Sequence[str]) -> str:
        return self.einsum(e, [(a, MUL) for a in args])[0]

    def map_latex(self, m: Map, args: Sequence[str]) -> str:
        return self.map(m, [(a, MUL) for a in args])[0]

    def einsum(self, e: Einsum, kids: Sequence[tuple[str, int]]) -> tuple[str, int]:
        ins = list(e.ins)
        texs = [k[0] for k in kids]
        precs = [k[1] for k in kids]
        ranks = [len(l) for l in ins]
        out = e.out
        coef = e.coef
        scalars: list[str] = []
        ops: list[tuple[str, int, tuple[int, ...], str]] = []  # tex, prec, labels, kind(m|v|d)
        batch_label = -1
        norm = self._norm2(e, kids) or self._gather(e, kids)
        if norm:
            return norm
        present = {x for l in ins for x in l}
        spread = [x for x in out if x not in present]
        if spread and not self.batch:
            from .tensor import einsum as _einsum

            inner = _einsum(e.ins, tuple(x for x in out if x in present), e.operands,
                            dims=e.index_dims(), coef=e.coef)
            itex, iprec = self.node(inner)
            if inner.ndim == 0:
                return rf"\left({itex}\right) \mathbf{{1}}", MUL
            if inner.ndim == 1 and len(out) == 2:
                t = itex if iprec == ATOM else rf"\left({itex}\right)"
                if out[0] in spread:
                    return rf"\mathbf{{1}} {transpose(itex, iprec)}", MUL
                return rf"{t} \mathbf{{1}}^\top", MUL
            if len(out) > 2 and inner.ndim >= 1:  # a bias over an image: broadcast left implicit
                return itex, iprec
        scaled = self._hadamard_scaling(e)
        if scaled is not None:
            return scaled
        n_batched = sum(1 for o in e.operands if _batched(o)) if self.batch else 0
        for tex, prec, l, o in zip(texs, precs, ins, e.operands):
            if self.batch and _batched(o):
                if len(l) == 0 and n_batched < 3:
                    ops.append((tex if prec == ATOM else rf"\left({tex}\right)", ATOM, (batch_label,), "m"))
                    continue
                if len(l) == 0:
                    name = f"D_{{{len(self.where) + 1}}}" if self.where else "D"
                    self.where.append(rf"{name} = \operatorname{{diag}}\left({tex}\right)")
                    ops.append((name, ATOM, (batch_label, batch_label), "d"))
                    continue
                if len(l) == 1:
                    t = capital(tex) if prec == ATOM else tex
                    ops.append((t, prec, (batch_label, *l), "m"))
                    continue
            if len(l) == 0:
                scalars.append(tex if prec != ADD else rf"\left({tex}\right)")
            else:
                ops.append((tex, prec, l, "m"))
        del ranks
        chain = _chain(ops, out) if ops else ""
        if chain is None:
            return self._index_form(e, texs, precs), ADD
        parts = [*scalars, chain] if chain else scalars
        body = " ".join(p for p in parts if p)
        c_tex, neg = _coef(coef)
        if not body:
            return sp.latex(coef), ATOM
        tex = f"{c_tex}{body}"
        return ("- " + tex if neg else tex), (ADD if neg else MUL)

    def _convolution(self, e: Einsum) -> tuple[str, int] | None:
        r"""Contractions with image windows print as correlations: ``W \star x`` (a convolution layer) and
        ``x \star \delta`` (its kernel gradient, the correlation of the input with delta)."""
        from .tensor import Unfold

        if len(e.operands) != 2 or self.batch:
            return None
        k = next((i for i, o in enumerate(e.operands) if isinstance(o, Unfold) and not o.flat), None)
        if k is None:
            return None
        u = e.operands[k]
        assert isinstance(u, Unfold)
        other, lo, lu = e.operands[1 - k], e.ins[1 - k], e.ins[k]
        c, i, j, p, q = lu
        sub = self._window_sub(u)
        xt, _ = self.node(u.x)
        ot, oprec = self.node(other)
        ot = ot if oprec == ATOM else rf"\left({ot}\right)"
        c_tex, neg = _coef(e.coef)
        if len(lo) == 4 and lo[1:] == (c, i, j) and e.out == (lo[0], p, q):
            tex = f"{c_tex}{ot} \\star{sub} {xt}"
        elif len(lo) == 3 and lo[1:] == (p, q) and e.out == (lo[0], c, i, j):
            tex = f"{c_tex}{xt} \\star{sub} {ot}"
        else:
            return None
        return ("- " + tex, ADD) if neg else (tex, MUL)

    def _full_convolution(self, f: Any) -> str | None:
        r"""The adjoint of the windows applied to ``W^T delta``: the full convolution of delta with the flipped
        kernel, ``\operatorname{pad}(\delta) \star \operatorname{rot}_{180}(W)``."""
        e = f.x
        if len(e.operands) != 2:
            return None
        for kw_, kd in ((0, 1), (1, 0)):
            lw, ld = e.ins[kw_], e.ins[kd]
            if len(lw) == 4 and len(ld) == 3 and lw[0] == ld[0] and e.out == (lw[1], lw[2], lw[3], ld[1], ld[2]):
                wt, _ = self.node(e.operands[kw_])
                dt, _ = self.node(e.operands[kd])
                c_tex, neg = _coef(e.coef)
                sub = self._window_sub(f)
                tex = (rf"{c_tex}\operatorname{{pad}}\left({dt}\right) \star{sub} "
                       rf"\operatorname{{rot}}_{{180}}\left({wt}\right)")
                return "- " + tex if neg else tex
        return None

    @staticmethod
    def _window_sub(u: Any) -> str:
        parts = [f"S={u.stride}" if u.stride != 1 else "", f"P={u.padding}" if u.padding else "",
                 f"D={u.dilation}" if u.dilation != 1 else ""]
        parts = [p for p in parts if p]
        return f"_{{{','.join(parts)}}}" if parts else ""

    def _hadamard_scaling(self, e: Einsum) -> tuple[str, int] | None:
        """``sum_i A_ij s_j`` prints as ``s \\odot (A^T 1)``: an operand indexed only by output indices
        that another operand also carries scales the result elementwise."""
        from .tensor import einsum as _einsum

        if len(e.operands) < 2 or self.batch:
            return None
        for k, (l, o) in enumerate(zip(e.ins, e.operands)):
            if not l or not set(l) <= set(e.out) or len(set(l)) != len(l):
                continue
            rest_ins = [m for j, m in enumerate(e.ins) if j != k]
            if not all(any(x in m for m in rest_ins) for x in l):
                continue
            rest = _einsum(rest_ins, e.out, [p for j, p in enumerate(e.operands) if j != k],
                           dims=e.index_dims())
            if l != tuple(x for x in e.out if x in l):
                continue
            rtex, rprec = self.node(rest)
            otex, oprec = self.node(o)
            wrap = lambda t, p: t if p == ATOM else rf"\left({t}\right)"  # noqa: E731
            c_tex, neg = _coef(e.coef)
            tex = f"{c_tex}{wrap(otex, oprec)} \\odot {wrap(rtex, rprec)}"
            return ("- " + tex, ADD) if neg else (tex, MUL)
        return None

    def _norm2(self, e: Einsum, kids: Sequence[tuple[str, int]]) -> tuple[str, int] | None:
        """``sum(x ** 2)`` prints as ``\\|x\\|^2``."""
        op = e.operands[0]
        if (len(e.operands) == 1 and not e.out and isinstance(op, Map) and op.fn.is_Pow
                and op.fn.exp == 2 and not self.batch):
            from .tensor import map_

            inner, _ = self.node(map_(op.fn.base, op.args, op.shape))
            c_tex, neg = _coef(e.coef)
            return f"{'- ' if neg else ''}{c_tex}" + rf"\left\|{inner}\right\|^{{2}}", (ADD if neg else MUL)
        return None

    def _gather(self, e: Einsum, kids: Sequence[tuple[str, int]]) -> tuple[str, int] | None:
        """A contraction of a vector with the one-hot encoding of a label prints as its entry: ``x_{y}``."""
        from .tensor import OneHot

        if len(e.operands) != 2 or e.out or self.batch:
            return None
        k = next((i for i, o in enumerate(e.operands) if isinstance(o, OneHot) and o.ndim == 1), None)
        if k is None or e.operands[1 - k].ndim != 1:
            return None
        oh = e.operands[k]
        tex, prec = kids[1 - k]
        bare = re.fullmatch(r"\\?[A-Za-z]+|\\[a-z]+\{[A-Za-z]\}", tex)
        base = tex if bare else rf"\left[{tex}\right]"
        c_tex, neg = _coef(e.coef)
        body = f"{c_tex}{base}_{{{self.node(oh.children()[0])[0]}}}"
        return ("- " + body, ADD) if neg else (body, MUL if c_tex else ATOM)

    def _index_form(self, e: Einsum, texs: Sequence[str], precs: Sequence[int]) -> str:
        letters = "ijklmnopqrstuvwabcdefgh"
        summed = sorted({l for ls in e.ins for l in ls} - set(e.out))
        factors = []
        for tex, prec, l in zip(texs, precs, e.ins):
            t = tex if prec == ATOM else rf"\left({tex}\right)"
            factors.append(f"{{{t}}}_{{{''.join(letters[i % len(letters)] for i in l)}}}" if l else t)
        c_tex, neg = _coef(e.coef)
        s = (r"\sum_{" + ",".join(letters[i % len(letters)] for i in summed) + "} ") if summed else ""
        body = f"{'- ' if neg else ''}{c_tex}{s}{' '.join(factors)}"
        if e.out:
            body = rf"\left[{body}\right]_{{{''.join(letters[i % len(letters)] for i in e.out)}}}"
        return body

    # -- equations and models ---------------------------------------------------------------------
    def equation(self, eq: Equation) -> str:
        self.where = []
        lhs = eq.lhs.tex
        if self.batch and eq.batch_dim is not None:
            rhs = self.batch_form(eq)
        else:
            self.batch = False
            rhs, _ = self.node(eq.rhs)
        s = f"{lhs} = {rhs}"
        if self.where:
            s += r",\quad " + r",\quad ".join(self.where)
        if eq.note:
            s += rf"\qquad {eq.note}"
        return s


    def batch_form(self, eq: Equation) -> str:
        """The batch form of a per-sample gradient or Hessian: its (scaled) sum over the samples."""
        n = sp.latex(eq.batch_dim)
        pre = rf"\frac{{1}}{{{n}}} " if eq.reduction == "mean" else ""
        r = eq.rhs
        if isinstance(r, Einsum):
            if eq.reduction == "mean":
                from .tensor import einsum

                r2 = einsum(r.ins, r.out, r.operands, dims=r.index_dims(), coef=r.coef / eq.batch_dim)
                if isinstance(r2, Einsum):
                    return self.node(r2)[0]
            tex, prec = self.node(r)
            return pre + (rf"\left({tex}\right)" if prec == ADD and pre else tex)
        if isinstance(r, Var) and r.ndim <= 1:
            return pre + (transpose(capital(r.tex)) + r" \mathbf{1}" if r.ndim == 1 else rf"\mathbf{{1}}^\top {r.tex}")
        self.batch = False
        tex, _ = self.node(r)
        return pre + rf"\sum_{{i=1}}^{{{n}}} \left({tex}\right)^{{(i)}}"


def _batched(n: Node) -> bool:
    return any(isinstance(v, Var) and v.batched for v in walk([n]))


def _coef(c: sp.Expr) -> tuple[str, bool]:
    """LaTeX prefix for a scalar coefficient, and whether it is negative."""
    if c == 1:
        return "", False
    if c == -1:
        return "", True
    neg = bool(c.could_extract_minus_sign())
    a = -c if neg else c
    return sp.latex(a) + " ", neg


def _chain(ops: list[tuple[str, int, tuple[int, ...], str]], out: tuple[int, ...]) -> str | None:
    """Print a contraction of vectors and matrices as a matrix product, if its indices form a chain.

    Each operand becomes a matrix (row label, column label), vectors as columns or rows (``None`` for a
    unit dimension), diagonal factors as (l, l). A chain is valid when adjacent labels agree, the ends
    are the output labels, and every summed label is used exactly once between neighbours.
    """
    if len(ops) > 5 or any(len(l) > 2 or (len(set(l)) != len(l) and k != "d") for _, _, l, k in ops) or len(out) > 2:
        return None
    counts: dict[int, int] = {}
    for _, _, l, _kind in ops:
        for x in set(l):
            counts[x] = counts.get(x, 0) + 1
    extra: list[tuple[str, int, tuple[int, ...], str]] = []
    for x, c in counts.items():
        if c == 1 and x not in out:
            extra.append((r"\mathbf{1}", ATOM, (x,), "m"))  # a pure sum: contract with a ones vector
    for x in out:
        if x not in counts:
            extra.append((r"\mathbf{1}", ATOM, (x,), "m"))  # a broadcast axis: an outer product with ones
    allops = ops + extra
    r0 = out[0] if out else None
    c0 = out[1] if len(out) == 2 else None
    best: tuple[int, str] | None = None
    for perm in itertools.permutations(range(len(allops))):
        for orient in itertools.product((0, 1), repeat=len(allops)):
            mats: list[tuple[Any, Any, str, int]] = []
            for i, o in zip(perm, orient):
                tex, prec, l, kind = allops[i]
                if kind == "d":
                    mats.append((l[0], l[0], tex, 0))
                elif len(l) == 2:
                    mats.append((l[0], l[1], tex, 0) if o == 0 else (l[1], l[0], transpose(tex, prec), 1))
                    if o == 0 and prec != ATOM:
                        mats[-1] = (l[0], l[1], rf"\left({tex}\right)", 0)
                elif len(l) == 1:
                    t = tex if prec == ATOM else rf"\left({tex}\right)"
                    mats.append((l[0], None, t, 0) if o == 0 else (None, l[0], transpose(tex, prec), 1))
                else:
                    return None
            if mats[0][0] != r0 or mats[-1][1] != c0:
                continue
            used: dict[int, int] = {}
            ok = True
            for a, b in zip(mats, mats[1:]):
                if a[1] != b[0]:
                    ok = False
                    break
                if a[1] is not None:
                    used[a[1]] = used.get(a[1], 0) + 1
            if not ok:
                continue
            summed = {x for x in counts if x not in out}
            if set(used) != summed or any(v != (2 if _is_diag_label(allops, x) else 1) for x, v in used.items()):
                continue
            score = sum(m[3] for m in mats) * 10 + sum(abs(p - i) for i, p in enumerate(perm))
            if best is None or score < best[0]:
                best = (score, " ".join(m[2] for m in mats))
    return best[1] if best else None


def _is_diag_label(ops: list[tuple[str, int, tuple[int, ...], str]], x: int) -> bool:
    return any(k == "d" and l[0] == x for _, _, l, k in ops)


def latex(obj: Any, batch: bool = False) -> str:
    r"""LaTeX of a model (forward program and backprop, aligned), an equation, a list of equations, or
    an expression, in the book's notation.

    Args:
        obj: a :class:`Model`, :class:`Equation`, list of equations, or tensor expression.
        batch: print batch-averaged gradients and Hessians in matrix form (``\frac{1}{n} X^\top D X``).

    Example:
        >>> import derive
        >>> m = derive.models.get("softmax_regression")
        >>> derive.latex(derive.grad(m, "b"))
        'g_{b} = \\delta'
    """
    if isinstance(obj, Model):
        from .autodiff import backprop

        L = obj.options.get("layers") if isinstance(obj.options.get("layers"), int) else None
        if obj.is_update:
            return r"\begin{aligned}" + aligned(obj.equations, None) + r"\end{aligned}"
        fwd = aligned(obj.equations, obj, layers=L)
        bwd = aligned(backprop(obj), obj, layers=L)
        return (r"\begin{aligned}&\textbf{forward}\\" + fwd + r"\\[4pt]&\textbf{backward}\\" + bwd
                + r"\end{aligned}")
    if isinstance(obj, Equation):
        return _eq_tex(obj, batch)
    if isinstance(obj, (list, tuple)) and all(isinstance(e, Equation) for e in obj):
        return r"\begin{aligned}" + aligned(list(obj), None, batch) + r"\end{aligned}"
    if isinstance(obj, Node):
        return BookPrinter(batch).node(obj)[0]
    raise TypeError(f"derive.latex takes a Model, an Equation, a list of equations or an expression, "
                    f"not {type(obj).__name__}")


def _eq_tex(eq: Equation, batch: bool = False) -> str:
    return BookPrinter(batch and eq.batch_dim is not None).equation(eq)


def equations_tex(eqs: Sequence[Equation], batch: bool = False, layers: int | None = None) -> list[str]:
    """One LaTeX string per equation (each renders on its own, e.g. in matplotlib's mathtext).

    With ``layers=L``, equations that differ only in their layer index ``[l]`` are printed once, with
    the index symbolic (``\\delta^{[\\ell]} = \\dot S(z^{[\\ell]}) \\odot \\zeta^{[\\ell]}``, for
    ``\\ell = L-1, \\dots, 1``), and the boundary cases with indices counted from ``L``.
    """
    texs = [_eq_tex(e, batch) for e in eqs]
    return fold_layers(texs, layers) if layers else texs


_LAYER = re.compile(r"\[(\d+)\]")


def _layer_label(k: int, L: int, var: str) -> str:
    if var == "L":
        d = k - L
        return "L" if d == 0 else f"L{d:+d}"
    return f"{var}" if k == 0 else f"{var}{k:+d}"


def fold_layers(texs: Sequence[str], L: int) -> list[str]:
    """Fold equations that repeat over the layer index into one equation with a symbolic ``\\ell``."""
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
            out.append(render("L", tops[0]) if tops[0] == L else _LAYER_plain(key, tops[0]))
            continue
        hi, lo = max(tops), min(tops)
        rng = rf"\ell = {_layer_label(hi, L, 'L') if hi >= L - 1 else hi}, \dots, {lo}"
        out.append(render(r"\ell") + rf"\qquad {rng}")
    return out


def _relative(top: int) -> Any:
    def sub(mt: re.Match[str]) -> str:
        return "[\x01" + str(int(mt.group(1)) - top) + "\x01]"

    return sub


def _LAYER_plain(tpl: str, top: int) -> str:
    return re.sub("\x01(-?\\d+)\x01", lambda mt: str(top + int(mt.group(1))), tpl)


def aligned(eqs: Sequence[Equation], model: Model | None, batch: bool = False, layers: int | None = None) -> str:
    rows = []
    for s in equations_tex(eqs, batch, layers):
        lhs, rhs = s.split(" = ", 1)
        rows.append(f"{lhs} &= {rhs}")
    if model is not None and model.sample is not None and eqs and eqs[-1].kind == "forward":
        n = sp.latex(model.sample)
        red = (rf"\frac{{1}}{{{n}}}\sum_{{i=1}}^{{{n}}}" if model.reduction == "mean"
               else rf"\sum_{{i=1}}^{{{n}}}")
        rows.append(r"\mathcal{C} &= " + red + " C^{(i)}")
    return r"\\".join(rows)
