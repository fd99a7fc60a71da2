"""PyTorch code of an elementwise map with few memory passes.

A map's scalar expression (SymPy, in ``ARG[i]``) printed literally is one PyTorch operation per SymPy
operation, each reading its operands and writing a new full-size tensor: ``zeta*a*(1 - a)`` is three full
passes and two temporaries. Here the expression is planned instead:

* operands know which axes of the result they span (a reduced vector broadcast along the features spans
  the sample axis only) and are never expanded: broadcasting happens inside the operation;
* constant factors, and every factor spanning fewer axes than the result, are combined first, on the small
  operands (``x * (c / sigma)[:, None]`` rather than ``x / sigma[:, None] * c``);
* sums and products build one fresh buffer and then update it in place (``add_``, ``sub_``, ``mul_``,
  ``div_``, ``addcmul_``, ``addcdiv_``; ``torch.addcmul(b, g, x)`` for ``b + g x``): a buffer made inside the
  expression is used nowhere else, so writing into it is safe;
* the derivatives PyTorch has fused kernels for are recognised by their algebraic form, exactly:
  ``u * y * (1 - y)`` is ``sigmoid_backward(u, y)`` and ``u * (1 - y^2)`` is ``tanh_backward(u, y)``
  (the same products, one pass);
* a whole map equal to GELU (the erf form), SiLU or ELU is ``torch.nn.functional.gelu`` (``silu``, ``elu``),
  and the product of an adjoint with its derivative ``aten.gelu_backward`` (...): SymPy proves the equality
  (for ELU on each side of 0, which also fixes the derivative at 0 to PyTorch's alpha), with a forward value
  an adjoint reuses read as its definition; another form of the same function counts;
* leaky ReLU is ``F.leaky_relu``, and the adjoints ``u step(x)`` and ``u leaky_step(x, s)`` are
  ``aten.threshold_backward`` and ``aten.leaky_relu_backward`` (matched by their form, with a numeric slope).

Nothing here changes what is computed, only the order of the same operations' roundings; one exception: where
``u`` is NaN or infinite at an ``x <= 0``, ReLU's adjoint gives PyTorch's ``0``, not the product's NaN.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp

__all__ = ["Operand", "plan_map"]


@dataclass(frozen=True)
class Operand:
    """Code of a tensor (or number) in a map: the axes of the result it spans, whether it is a buffer made
    inside this expression (safe to update in place), and whether its dtype is floating."""

    code: str
    axes: frozenset[int]
    fresh: bool = False
    floating: bool = True
    number: bool = False  # a Python number (a constant, a size): no tensor at all
    #: a matrix product the operand is, as (addmm | addmv | baddbmm, A, B, alpha): a sum can add into it
    gemm: tuple[str, str, str, sp.Expr] | None = None


# in-place methods of one-argument functions that map float to float
_INPLACE_FUNCS = {"exp": "exp_", "log": "log_", "sigmoid": "sigmoid_", "tanh": "tanh_", "sqrt": "sqrt_",
                  "sin": "sin_", "cos": "cos_", "Abs": "abs_", "erf": "erf_", "log1p": "log1p_",
                  "expm1": "expm1_", "relu": "relu_"}
_TORCH_FUNCS = {"exp": "torch.exp", "log": "torch.log", "sigmoid": "torch.sigmoid", "tanh": "torch.tanh",
                "sqrt": "torch.sqrt", "sin": "torch.sin", "cos": "torch.cos", "Abs": "torch.abs",
                "erf": "torch.erf", "relu": "torch.relu"}


def _paren(code: str) -> str:
    from .codegen import _paren as p

    if re.fullmatch(r"\d+(\.\d*)?", code):
        return code
    return p(code)


class _Planner:
    def __init__(self, ops: dict[sp.Symbol, Operand], printer: Callable[[sp.Expr, dict[sp.Symbol, str]], str],
                 constant: Callable[[sp.Expr], str], hoist: Callable[[str], str] | None = None,
                 shared: Counter[sp.Expr] | None = None, key: Callable[[sp.Expr], sp.Expr] | None = None,
                 memo: dict[sp.Expr, Operand] | None = None):
        self.ops = ops
        self.printer = printer
        self.constant = constant
        self.args = frozenset(ops)
        self.hoist = hoist
        self.shared = shared if shared is not None else Counter()
        self.key = key if key is not None else (lambda e: e)
        self.memo: dict[sp.Expr, Operand] = memo if memo is not None else {}

    def with_factors(self, fn: sp.Expr, factor_of: Callable[[sp.Expr, sp.Expr], sp.Expr | None]) -> sp.Expr:
        """``fn`` with each product that has a shared product among its factors (``factor_of``) written as that
        product's temporary (planned now, once: a symbol of its own among the operands) times the other factors;
        :attr:`key` still sees the products as written, so that a longer product shared in turn stays shared."""
        back: dict[sp.Symbol, sp.Expr] = {}

        def sub(e: sp.Expr, c: sp.Expr = sp.S.One) -> sp.Expr:
            if e.is_Atom or (self.shared[self.key(e)] > 1 and self.key(e) in self.memo):
                return e  # (a shared subexpression computed before, with its factors: read, not planned again)
            f = factor_of(e, c) if e.is_Mul else None
            if f is not None and self.axes(f) == self.axes(e):
                rest = Counter(e.args)
                rest.subtract(f.args)
                if min(rest.values()) >= 0:
                    s = sp.Symbol(f"_factor{len(back)}_{id(self)}", real=True)
                    self.ops[s] = self.emit(f)
                    self.args = frozenset(self.ops)
                    back[s] = f
                    return sp.Mul(s, *[sub(a) for a, c in rest.items() for _ in range(c)])
            args = [sub(a, term_scale(e, a, c)) for a in e.args]
            return e.func(*args) if any(a is not b for a, b in zip(args, e.args)) else e

        out = sub(fn)
        if back:
            key = self.key
            self.key = lambda e: key(e.xreplace(back))
        return out

    # -- helpers -----------------------------------------------------------------------------------------
    def axes(self, e: sp.Expr) -> frozenset[int]:
        out: frozenset[int] = frozenset()
        for s in e.free_symbols & self.args:
            out |= self.ops[s].axes
        return out

    def _shared(self, e: sp.Expr) -> bool:
        """Whether ``e`` is a shared subexpression (computed once, into a temporary, by :meth:`emit`): a term
        then adds that temporary rather than its product afresh (``addcmul``)."""
        return self.hoist is not None and self.shared[self.key(e)] > 1

    def is_const(self, e: sp.Expr) -> bool:
        return not (e.free_symbols & self.args)

    def num(self, e: sp.Expr) -> Operand:
        return Operand(self.constant(e), frozenset(), number=True, floating=not e.is_integer)

    # -- the expression ------------------------------------------------------------------------------------
    def emit(self, e: sp.Expr) -> Operand:
        if e in self.ops:
            return self.ops[e]
        if self.is_const(e):
            return self.num(e)
        k = self.key(e) if self.hoist is not None else e
        if self.hoist is not None and self.shared[k] > 1:
            # a subexpression used more than once (here or in another map over the same arrays): computed
            # once, into a temporary (then read, never updated)
            if k not in self.memo:
                op = self._emit(e)
                self.memo[k] = Operand(self.hoist(op.code), op.axes, False, op.floating)
            return self.memo[k]
        return self._emit(e)

    def _emit(self, e: sp.Expr) -> Operand:
        if e.is_Add:
            return self.add(e)
        if e.is_Mul:
            return self.mul(e)
        if e.is_Pow:
            return self.pow(e)
        if isinstance(e, sp.Function) and len(e.args) == 1 and type(e).__name__ in _TORCH_FUNCS:
            x = self.emit(e.args[0])
            name = type(e).__name__
            if self._writable(x, x.axes):
                return Operand(f"{_paren(x.code)}.{_INPLACE_FUNCS[name]}()", x.axes, True)
            return Operand(f"{_TORCH_FUNCS[name]}({x.code})", x.axes, True, True)
        return self.fallback(e)

    def fallback(self, e: sp.Expr) -> Operand:
        """Printed by the scalar printer, its array arguments planned."""
        names: dict[sp.Symbol, str] = {}
        subs: dict[sp.Expr, sp.Symbol] = {}
        for i, a in enumerate(e.args):
            if self.is_const(a) or a in self.ops:
                continue
            s = sp.Symbol(f"_planned{i}_{id(e)}", real=True)
            names[s] = self.emit(a).code
            subs[a] = s
        for s in e.free_symbols & self.args:
            names[s] = self.ops[s].code  # type: ignore[index]
        code = self.printer(e.xreplace(subs) if subs else e, names)
        return Operand(code, self.axes(e), False, False)

    @staticmethod
    def _writable(x: Operand, axes: frozenset[int]) -> bool:
        """Whether the result of an operation spanning ``axes`` can be written into ``x``."""
        return x.fresh and x.floating and not x.number and x.axes >= axes

    # -- sums --------------------------------------------------------------------------------------------
    def add(self, e: sp.Expr) -> Operand:
        full = self.axes(e)
        terms = list(sp.Add.make_args(e))
        k = sp.Add(*[t for t in terms if self.is_const(t)])
        terms = [t for t in terms if not self.is_const(t)]
        if k != 0 and len(terms) == 1:
            c, rest = self._coeff(terms[0])
            x = self.emit(rest)
            if c == -1:  # k - x: one pass
                return Operand(f"{_paren(self.constant(k))} - {_paren(x.code)}", x.axes, True)
            return self._add_constant(self._scale(x, c, full), k, full)
        if k != 0 and all(self._coeff(t)[0].could_extract_minus_sign() for t in terms):
            # k - x - y ...: the constant first, one pass fewer than negating
            t0 = next((t for t in terms if self._coeff(t)[0] == -1), None)
            if t0 is not None:
                x = self.emit(self._coeff(t0)[1])
                acc = Operand(f"{_paren(self.constant(k))} - {_paren(x.code)}", x.axes, True)
                for t in terms:
                    if t is not t0:
                        acc = self._accumulate(acc, t, full)
                return acc
        acc = self._sum(terms, full)
        return self._add_constant(acc, k, full) if k != 0 else acc

    def _add_constant(self, acc: Operand, k: sp.Expr, full: frozenset[int]) -> Operand:
        neg = k.could_extract_minus_sign()
        kk = self.constant(-k if neg else k)
        if self._writable(acc, full):
            return Operand(f"{_paren(acc.code)}.{'sub_' if neg else 'add_'}({kk})", full, True)
        return Operand(f"{_paren(acc.code)} {'-' if neg else '+'} {_paren(kk)}", full, True, acc.floating)

    def _sum(self, terms: list[sp.Expr], full: frozenset[int]) -> Operand:
        """A sum of non-constant terms."""
        big = [t for t in terms if not self.is_const(t) and self.axes(t) == full]
        small = [t for t in terms if t not in big]
        if not big:  # no term spans every axis (a[:, None] + b[None, :]): pairwise
            return self._pairwise_add(terms, full)
        # the first term: positive if possible, and one that is computed (a fresh buffer) before a bare arg
        big.sort(key=lambda t: (self._coeff(t)[0].could_extract_minus_sign(), self._coeff(t)[1] in self.ops))
        gemms = [t for t in big if self._coeff(t)[1] in self.ops and self.ops[self._coeff(t)[1]].gemm is not None]
        if gemms and (small or len(big) > 1):  # the rest of the sum added inside the matrix product
            g = gemms[0]
            s = self.emit(sp.Add(*[t for t in terms if t is not g]))
            if not s.number:
                c, rest = self._coeff(g)
                return self._gemm(self.ops[rest], s, c, full)
        acc: Operand | None = None
        if small:
            t0 = big.pop(0)
            se = sp.Add(*small)
            c0, rest0 = self._coeff(t0)
            if (c0 == 1 and se.could_extract_minus_sign() and not self.is_const(se)
                    and (rest0 in self.ops or self._two_factors(rest0) is None)):
                # x - s: the small part subtracted from the big term (no negation pass)
                x, s = self.emit(rest0), self.emit(-se)
                acc = Operand(f"{_paren(x.code)}.sub_({s.code})" if self._writable(x, full) else
                              f"{_paren(x.code)} - {_paren(s.code)}", full, True)
            else:
                acc = self._start_with(self.emit(se), t0, full)
        while big:
            t = big.pop(0)
            acc = self._accumulate(acc, t, full) if acc is not None else self.emit(t)
        assert acc is not None
        return acc

    def _pairwise_add(self, terms: list[sp.Expr], full: frozenset[int]) -> Operand:
        acc = self.emit(terms[0])
        for t in terms[1:]:
            acc = self._accumulate(acc, t, full)
        return acc

    def _coeff(self, t: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
        """``t = c * rest`` with ``c`` constant."""
        c, rest = t.as_independent(*self.args, as_Add=False)
        return c, rest

    def _two_factors(self, rest: sp.Expr) -> tuple[sp.Expr, sp.Expr, bool] | None:
        """``rest = a * b`` (or ``a / b``: the flag) with ``a`` spanning the result's axes: for addcmul."""
        factors = list(sp.Mul.make_args(rest))
        if len(factors) < 2:
            return None
        den = [f for f in factors if f.is_Pow and f.exp == -1]
        num = [f for f in factors if f not in den]
        if not num:
            return None
        num.sort(key=lambda f: -len(self.axes(f)))
        if len(den) == 1 and len(num) == 1:
            return num[0], den[0].base, True
        if den:
            return num[0], sp.Mul(*num[1:]) / sp.Mul(*[d.base for d in den]), False
        return num[0], sp.Mul(*num[1:]), False

    def _start_with(self, s: Operand, t: sp.Expr, full: frozenset[int]) -> Operand:
        """``s + t``: the small part ``s`` first, as the base of a fused operation."""
        c, rest = self._coeff(t)
        two = None if self._shared(rest) else self._two_factors(rest)
        if two is not None and not s.number:
            a, b, div = two
            if div:
                return Operand(f"torch.addcdiv({s.code}, {self.emit(a).code}, {self.emit(b).code}"
                               f"{self._value(c)})", full, True)
            return Operand(f"torch.addcmul({s.code}, {self._cmul(a, b, c, full)})", full, True)
        x = self.emit(rest)
        if s.number:
            if c == -1:  # k - x: one pass
                return Operand(f"{_paren(s.code)} - {_paren(x.code)}", full, True)
            x = self._scale(x, c, full)
            if self._writable(x, full):
                return Operand(f"{_paren(x.code)}.add_({s.code})", full, True)
            return Operand(f"{_paren(x.code)} + {_paren(s.code)}", full, True)
        if c == 1:
            return Operand(f"torch.add({s.code}, {x.code})", full, True)
        if c == -1:
            return Operand(f"torch.sub({s.code}, {x.code})", full, True)
        return Operand(f"torch.add({s.code}, {x.code}, alpha={self.constant(c)})", full, True)

    def _gemm(self, g: Operand, s: Operand, c: sp.Expr, full: frozenset[int]) -> Operand:
        """``s + c (A @ B)`` as one ``addmm``/``addmv``/``baddbmm``."""
        assert g.gemm is not None
        fn, a, b, alpha = g.gemm
        alpha = alpha * c
        al = "" if alpha == 1 else f", alpha={self.constant(alpha)}"
        return Operand(f"torch.{fn}({s.code}, {a}, {b}{al})", full, True)

    def _cmul(self, a: sp.Expr, b: sp.Expr, c: sp.Expr, full: frozenset[int]) -> str:
        """The arguments of ``addcmul`` for ``c a b``: the constant joins the smaller factor, if one is."""
        if c != 1 and self.axes(b) != full:
            return f"{self.emit(a).code}, {self.emit(b * c).code}"
        return f"{self.emit(a).code}, {self.emit(b).code}{self._value(c)}"

    def _value(self, c: sp.Expr) -> str:
        return "" if c == 1 else f", value={self.constant(c)}"

    def _scale(self, x: Operand, c: sp.Expr, full: frozenset[int]) -> Operand:
        if c == 1:
            return x
        if c == -1:
            return Operand(f"{_paren(x.code)}.neg_()", x.axes, True) if self._writable(x, x.axes) else \
                Operand(f"-{_paren(x.code)}", x.axes, True, x.floating)
        k = self.constant(c)
        if self._writable(x, x.axes):
            return Operand(f"{_paren(x.code)}.mul_({k})", x.axes, True)
        return Operand(f"{_paren(k)} * {_paren(x.code)}", x.axes, True, True)

    def _accumulate(self, acc: Operand, t: sp.Expr, full: frozenset[int]) -> Operand:
        """``acc + t``, into ``acc`` where it is a fresh buffer of the result's shape."""
        c, rest = self._coeff(t)
        if self.is_const(t):
            k = self.constant(t)
            if self._writable(acc, full):
                return Operand(f"{_paren(acc.code)}.add_({k})", full, True)
            return Operand(f"{_paren(acc.code)} + {_paren(k)}", full, True, acc.floating)
        inplace = self._writable(acc, full)
        two = None if self._shared(rest) else self._two_factors(rest)
        if two is not None and inplace:
            a, b, div = two
            if div:
                return Operand(f"{_paren(acc.code)}.addcdiv_({self.emit(a).code}, {self.emit(b).code}"
                               f"{self._value(c)})", full, True)
            return Operand(f"{_paren(acc.code)}.addcmul_({self._cmul(a, b, c, full)})", full, True)
        if two is not None:
            a, b, div = two
            fn = "torch.addcdiv" if div else "torch.addcmul"
            if div:
                return Operand(f"{fn}({acc.code}, {self.emit(a).code}, {self.emit(b).code}{self._value(c)})",
                               full, True)
            return Operand(f"{fn}({acc.code}, {self._cmul(a, b, c, full)})", full, True)
        x = self.emit(rest)
        if c == -1:
            return Operand(f"{_paren(acc.code)}.sub_({x.code})" if inplace else
                           f"{_paren(acc.code)} - {_paren(x.code)}", full, True, acc.floating or x.floating)
        if c == 1:
            return Operand(f"{_paren(acc.code)}.add_({x.code})" if inplace else
                           f"{_paren(acc.code)} + {_paren(x.code)}", full, True, acc.floating or x.floating)
        k = self.constant(c)
        if inplace:
            return Operand(f"{_paren(acc.code)}.add_({x.code}, alpha={k})", full, True)
        return Operand(f"torch.add({acc.code}, {x.code}, alpha={k})", full, True)

    # -- products ------------------------------------------------------------------------------------------
    def mul(self, e: sp.Expr) -> Operand:
        full = self.axes(e)
        c, rest = self._coeff(e)
        factors = list(sp.Mul.make_args(rest))
        fused = self._fused_backward(factors)
        if fused is not None:
            x, others = fused
            if not others and c == 1:
                return x
            return self.product([x], others, c, full)
        return self.product([], factors, c, full)

    def _fused_backward(self, factors: list[sp.Expr]) -> tuple[Operand, list[sp.Expr]] | None:
        """``u y (1 - y)`` as ``sigmoid_backward(u, y)``, ``u (1 - y^2)`` as ``tanh_backward(u, y)``."""
        for i, f in enumerate(factors):
            if not f.is_Add or len(f.args) != 2 or sp.S.One not in f.args:
                continue
            other = next(a for a in f.args if a != 1)
            c, y = other.as_coeff_Mul()
            if c != -1 or self.is_const(y):
                continue
            rest = factors[:i] + factors[i + 1:]
            if y.is_Pow and y.exp == 2:  # 1 - y^2
                y = y.base
                kind = "tanh"
            elif y in rest:  # y (1 - y)
                rest.remove(y)
                kind = "sigmoid"
            else:
                continue
            if not rest:
                continue
            yax = self.axes(y)
            # the upstream factor: the one spanning the most axes (so that the fused op has the full shape)
            rest.sort(key=lambda r: -len(self.axes(r)))
            u = rest[0]
            if self.axes(u) | yax != self.axes(u) or self.axes(u) != self.axes(sp.Mul(*factors)):
                continue
            uo, yo = self.emit(u), self.emit(y)
            if uo.number or yo.number:
                continue
            return _aten_backward(f"{kind}_backward", uo, yo.code, uo.axes), rest[1:]
        return None

    def product(self, done: list[Operand], factors: list[sp.Expr], c: sp.Expr, full: frozenset[int]) -> Operand:
        num = [f for f in factors if not (f.is_Pow and f.exp == -1)]
        den = [f.base for f in factors if f.is_Pow and f.exp == -1]
        big_num = [f for f in num if self.axes(f) == full]
        big_den = [f for f in den if self.axes(f) == full]
        small_num = [f for f in num if f not in big_num]
        small_den = [f for f in den if f not in big_den]
        big_ops = list(done) + [self.emit(f) for f in big_num]
        # the constant and the factors spanning fewer axes: combined on their own (small) shape
        small: Operand | None = None
        if small_num or (small_den and (c != 1 or not big_ops)) or (c != 1 and not big_ops):
            small = self.emit_small(c, small_num, small_den)
            small_den = []
        elif c != 1:
            small = self.num(c)
        if not big_ops:
            # only denominators span every axis: the small numerator divided by them
            acc = small if small is not None else self.num(sp.S.One)
            for d in big_den:
                dd = self.emit(d)
                if acc.number and acc.code in ("1", "1.0"):
                    acc = Operand(f"torch.reciprocal({dd.code})", full, True)
                elif self._writable(acc, full):
                    acc = Operand(f"{_paren(acc.code)}.div_({dd.code})", full, True)
                else:
                    acc = Operand(f"{_paren(acc.code)} / {_paren(dd.code)}", full, True)
            return acc
        # start from a fresh buffer of the full shape where one is made anyway
        big_ops.sort(key=lambda o: not self._writable(o, full))
        acc = big_ops[0]
        for o in big_ops[1:] + ([small] if small is not None else []):
            acc = self._times(acc, o, full)
        for d in small_den + big_den:
            dd = self.emit(d)
            acc = Operand(f"{_paren(acc.code)}.div_({dd.code})" if self._writable(acc, full) else
                          f"{_paren(acc.code)} / {_paren(dd.code)}", full, True, acc.floating or dd.floating)
        return acc

    def _times(self, acc: Operand, o: Operand, full: frozenset[int]) -> Operand:
        if o.number and o.code in ("1", "1.0"):
            return acc
        if o.number and o.code in ("-1", "-1.0"):
            return self._scale(acc, sp.S.NegativeOne, full)
        if self._writable(acc, full):
            return Operand(f"{_paren(acc.code)}.mul_({o.code})", full, True)
        if self._writable(o, full):
            return Operand(f"{_paren(o.code)}.mul_({acc.code})", full, True)
        return Operand(f"{_paren(acc.code)} * {_paren(o.code)}", full, True, acc.floating or o.floating)

    def emit_small(self, c: sp.Expr, num: list[sp.Expr], den: list[sp.Expr]) -> Operand:
        """``c * prod(num) / prod(den)`` over factors spanning fewer axes than the result."""
        if not num and not den:
            return self.num(c)
        ax = self.axes(sp.Mul(*num, *den))
        ops = [self.emit(f) for f in num]
        acc: Operand
        if not ops:
            acc = self.num(c)
        else:
            acc = ops[0]
            for o in ops[1:]:
                acc = self._times(acc, o, acc.axes | o.axes)
            if c != 1:
                acc = self._scale(acc, c, ax)
        for d in den:
            dd = self.emit(d)
            if acc.number and acc.code in ("1", "1.0"):
                acc = Operand(f"torch.reciprocal({dd.code})", dd.axes, True)
                continue
            acc = Operand(f"{_paren(acc.code)}.div_({dd.code})" if self._writable(acc, acc.axes | dd.axes) else
                          f"{_paren(acc.code)} / {_paren(dd.code)}", acc.axes | dd.axes, True,
                          acc.floating or dd.floating)
        return acc

    # -- powers ----------------------------------------------------------------------------------------------
    def pow(self, e: sp.Expr) -> Operand:
        b, q = e.as_base_exp()
        if self.is_const(q) and not self.is_const(b):
            x = self.emit(b)
            inplace = self._writable(x, x.axes)
            special = {sp.Integer(2): "square", sp.S.Half: "sqrt", -sp.S.Half: "rsqrt", sp.S.NegativeOne: "reciprocal"}
            if q in special:
                f = special[q]
                return Operand(f"{_paren(x.code)}.{f}_()" if inplace else f"torch.{f}({x.code})", x.axes, True)
            k = self.constant(q)
            return Operand(f"{_paren(x.code)}.pow_({k})" if inplace else f"torch.pow({x.code}, {k})", x.axes, True)
        return self.fallback(e)


def term_scale(e: sp.Expr, a: sp.Expr, c: sp.Expr) -> sp.Expr:
    """The coefficient the sharing counted the argument ``a`` of ``e`` with, given ``e``'s own ``c``: the terms
    of ``k (x y s + t)`` kept unevaluated (``-(x y s + t)``, as factor_terms leaves it) were counted over the
    maps as xreplace rebuilds them, which distributes ``k`` (``-x y s - t``): a product term of that sum as ``k``
    times it (times the coefficients of the sums around it); anything else as itself (1)."""
    if e.is_Add:
        return c
    if e.is_Mul and len(e.args) == 2 and e.args[0].is_Number and a is e.args[1] and a.is_Add:
        return c * e.args[0]
    return sp.S.One


def shared_subexpressions(fn: sp.Expr, args: frozenset[sp.Symbol]) -> Counter[sp.Expr]:
    """How often each subexpression of ``fn`` that involves ``args`` occurs. A negation counts only as a
    function's argument (``softplus(-u)`` and ``sigmoid(-u)``: ``-u`` is a pass of its own there), as the whole
    of ``fn`` or as a term of its top-level sum; elsewhere it folds into a subtraction."""
    out: Counter[sp.Expr] = Counter()
    # a negation that is the whole expression or a term of its top-level sum: counted too (the gradient -tanh(x)
    # of y in sum(tanh(-x) (x + y)) is also the first term of x's, and a pass of its own in NumPy)
    stack: list[tuple[sp.Expr, bool]] = [(fn, True)]
    while stack:
        x, counted = stack.pop()
        if x.is_Atom:
            continue
        if x.free_symbols & args and (counted or not (x.is_Mul and x.args[0] == -1 and len(x.args) == 2)):
            out[x] += 1
        stack.extend((a, isinstance(x, sp.Function) or (x is fn and x.is_Add)) for a in x.args)
    return out


def plan_map(fn: sp.Expr, ops: dict[sp.Symbol, Operand], printer: Callable[[sp.Expr, dict[sp.Symbol, str]], str],
             constant: Callable[[sp.Expr], str], hoist: Callable[[str], str] | None = None,
             shared: Counter[sp.Expr] | None = None, key: Callable[[sp.Expr], sp.Expr] | None = None,
             memo: dict[sp.Expr, Operand] | None = None, defs: dict[sp.Symbol, sp.Expr] | None = None,
             factor_of: Callable[[sp.Expr, sp.Expr], sp.Expr | None] | None = None) -> Operand:
    """The planned code of ``fn`` over the operands ``ops`` (keyed by their ``ARG`` symbols).

    ``printer(expr, names)`` prints what the planner does not plan (a function it has no in-place form
    for, a selection, a comparison) with the scalar printer, ``names`` mapping symbols to code;
    ``constant(expr)`` prints a constant (numbers, sizes, hyperparameters). With ``hoist`` (code -> the name
    of a temporary holding it), subexpressions that ``shared`` counts more than once (by ``key``: the
    subexpression written over the arrays rather than this map's arguments) are computed once, and ``memo``
    (shared by the maps of one kernel) holds them; ``factor_of(product)``, a shared product among a longer
    product's factors (or None), which is then computed once and multiplied by the other factors."""
    native = _native_activation(fn, ops, constant, defs)
    if native is not None:
        return native
    if shared is None:
        shared = shared_subexpressions(fn, frozenset(ops))
    planner = _Planner(dict(ops), printer, constant, hoist, shared, key, memo)
    if factor_of is not None and hoist is not None:
        fn = planner.with_factors(fn, factor_of)
    return planner.emit(fn)


def _gelu(x: sp.Expr) -> sp.Expr:
    return x * (1 + sp.erf(x / sp.sqrt(2))) / 2


def _silu(x: sp.Expr) -> sp.Expr:
    from derive.functions import sigmoid

    return x * sigmoid(x)


#: activations PyTorch has fused forward and backward kernels for: (a function the map must contain, the
#: activation, its forward call, the ATen backward ``(u, x)`` for ``u * f'(x)``)
_NATIVE_ACTIVATIONS: list[tuple[str, Callable[[sp.Expr], sp.Expr], str, str]] = [
    ("erf", _gelu, "torch.nn.functional.gelu({x})", "gelu_backward"),
    ("sigmoid", _silu, "torch.nn.functional.silu({x})", "silu_backward"),
]


def _native_activation(fn: sp.Expr, ops: dict[sp.Symbol, Operand], constant: Callable[[sp.Expr], str],
                       defs: dict[sp.Symbol, sp.Expr] | None = None) -> Operand | None:
    """A map that is exactly an activation PyTorch has a fused kernel for, ``f(x)``, or the product ``u f'(x)``
    of an upstream adjoint with its derivative, as that kernel's call (one pass instead of several). ``defs``
    gives arguments that are other maps' results (a reused forward value) as expressions of this map's
    arguments. The equality is SymPy's (the expanded difference is 0; for ELU, on either side of 0), never a
    guess from the form."""
    if defs:
        fn = fn.xreplace(defs)
    args = fn.free_symbols & set(ops)
    syms = [s for s in sorted(args, key=str) if not ops[s].number and ops[s].floating]
    if len(syms) not in (1, 2) or len(syms) != len(args):
        return None
    names = {type(f).__name__ for f in fn.atoms(sp.Function)}
    for x in syms:
        ox = ops[x]
        u = next((s for s in syms if s != x), None)
        if u is not None and ops[u].axes != ox.axes:
            continue
        for marker, f, fwd, bwd in _NATIVE_ACTIVATIONS:
            if marker not in names:
                continue
            if u is None and _same(fn, f(x)):
                return Operand(fwd.format(x=ox.code), ox.axes, True)
            if u is not None and _same(fn, u * sp.diff(f(x), x)):
                return _aten_backward(bwd, ops[u], ox.code, ox.axes)
        if "step" in names and "exp" in names:
            alpha = _elu_alpha(fn, x, u)
            if alpha is not None:
                a = constant(alpha)
                if u is None:
                    return Operand(f"torch.nn.functional.elu({ox.code}, {a})", ox.axes, True)
                return _aten_backward("elu_backward", ops[u], f"{a}, 1, 1, False, {ox.code}", ox.axes)
        piecewise = _piecewise_linear(fn, x, u, ops, constant)
        if piecewise is not None:
            return piecewise
    return None


def _piecewise_linear(fn: sp.Expr, x: sp.Symbol, u: sp.Symbol | None, ops: dict[sp.Symbol, Operand],
                      constant: Callable[[sp.Expr], str]) -> Operand | None:
    """Leaky ReLU ``leaky_relu(x, s)`` as ``F.leaky_relu``, and the adjoints ``u step(x)`` (ReLU's) and
    ``u leaky_step(x, s)`` as ``aten.threshold_backward`` and ``aten.leaky_relu_backward``: one pass where the
    printed forms take three (a comparison, a cast or a selection, a product). Matched structurally, with a
    constant slope (a number or a hyperparameter, :func:`_constant_slope`). Both kernels select ``u`` where
    ``x > 0`` and ``0`` or ``s u`` elsewhere: the same values as the products (a zero of either sign), but
    for ReLU where ``u`` is NaN or infinite at an ``x <= 0``: there the product is NaN and the selection 0, as
    PyTorch's own ReLU backward gives."""
    from derive.functions import leaky_relu, leaky_step, step

    ox = ops[x]
    if u is None:
        for f in fn.atoms(leaky_relu):
            if fn == f and f.args[0] == x and _constant_slope(f.args[1], ops):
                return Operand(f"torch.nn.functional.leaky_relu({ox.code}, {constant(f.args[1])})", ox.axes, True)
        return None
    ou = ops[u]
    if fn == u * step(x):
        return _aten_backward("threshold_backward", ou, f"{ox.code}, 0", ox.axes)
    for f in fn.atoms(leaky_step):
        if f.args[0] == x and _constant_slope(f.args[1], ops) and fn == u * f:
            return _aten_backward("leaky_relu_backward", ou, f"{ox.code}, {constant(f.args[1])}, False", ox.axes)
    return None


def _aten_backward(name: str, u: Operand, rest: str, axes: frozenset[int]) -> Operand:
    """``aten.<name>(u, rest)``, the fused backward of the upstream adjoint ``u``: written over ``u``
    (``ops.written_over``) where ``u`` is a buffer made for this expression, or one of the kernel's that nothing
    else reads, with the result's axes."""
    if _Planner._writable(u, axes):
        return Operand(f"ops.written_over(torch.ops.aten.{name}, {u.code}, {rest})", axes, True)
    return Operand(f"torch.ops.aten.{name}({u.code}, {rest})", axes, True)


def _constant_slope(s: sp.Expr, ops: dict[sp.Symbol, Operand]) -> bool:
    """Whether a slope is a constant the generated module holds as a Python number: a number, or a
    hyperparameter (printed by name, a module-level number) that no array operand of the function is."""
    return bool(s.is_number or (s.free_symbols and not s.free_symbols & set(ops) and s.is_real is not False))


def _elu_alpha(fn: sp.Expr, x: sp.Symbol, u: sp.Symbol | None) -> sp.Expr | None:
    """alpha if ``fn`` is ELU(x) = x (x > 0), alpha (e^x - 1) (x <= 0) (or, with ``u``, u times its derivative
    with PyTorch's alpha at 0), its indicators ``step(x)`` and selections ``where(step(x), ...)`` resolved on each
    side of 0; else None."""
    from derive.functions import step

    if fn.atoms(step) != {step(x)}:
        return None
    up = 1 if u is None else u
    pos = fn.xreplace({step(x): sp.S.One})  # x > 0 (where(1, a, b) evaluates to a)
    neg = fn.xreplace({step(x): sp.S.Zero})  # x <= 0
    if pos.has(step) or neg.has(step) or not _same(pos, up * (x if u is None else 1)):
        return None
    try:
        rest = sp.cancel(neg / (up * (sp.exp(x) - 1 if u is None else sp.exp(x))))
    except (sp.PolynomialError, TypeError, ValueError):
        return None
    if rest.free_symbols & {x, u} or rest == 0 or rest.has(sp.exp):
        return None
    return rest


def _same(a: sp.Expr, b: sp.Expr) -> bool:
    return bool(sp.expand(a - b) == 0)
