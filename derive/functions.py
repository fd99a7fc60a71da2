"""Scalar functions of the book that SymPy lacks, each defined in one place.

Every function here carries, through SymPy's own hooks, its derivative (``fdiff``), its LaTeX in the
book's notation (``_latex``) and its NumPy and PyTorch lowering (``_numpycode`` / ``_torchcode``, used by
:mod:`numeric`). Elementwise primitives are built from these and from SymPy's ``exp``, ``log``, ``tanh``,
``sin``, ... ; the derivative of an elementwise map is always ``sympy.diff`` of its scalar definition.

Non-smooth points follow PyTorch (checked against ``torch.autograd`` in the primitive tests):
``relu'(0) = 0``, ``leaky_relu'(0) = slope``, ``|x|'(0) = sign(0) = 0``, ``sign' = 0``, ``maximum`` and
``minimum`` split the gradient evenly at ties, ``clamp`` passes it at its bounds, and ``where`` sends it only
to the selected branch. SymPy's own functions (``Abs``, ``sign``, ``erf``, ``exp``, ...) are used where
SymPy has them; the derivative of a step (a ``DiracDelta``) is taken as 0, PyTorch's convention.
"""

from __future__ import annotations

from typing import Any

import sympy as sp
from sympy.core.function import ArgumentIndexError

__all__ = [
    "sigmoid",
    "softplus",
    "relu",
    "leaky_relu",
    "step",
    "leaky_step",
    "half_step",
    "between",
    "maximum",
    "minimum",
    "clamp",
    "where",
    "inv0",
    "power",
    "SCALAR_FUNCTIONS",
    "KINKED",
    "ACTIVATIONS",
]


def _arg(printer: Any, e: sp.Expr) -> str:
    return str(printer._print(e))


def _real_number(x: sp.Expr) -> bool:
    """Whether ``x`` is a real number (an infinity included), which a function of it evaluates to."""
    return bool(x.is_number and x.is_comparable)


def _power(tex: str, exp: Any) -> str:
    """``f(x)^{k}``: SymPy's printer passes the exponent of a power of a function."""
    return tex if exp is None else rf"\left({tex}\right)^{{{exp}}}"


class _RealValued:
    """For a function whose value is real wherever its arguments are (SymPy then differentiates ``abs`` of it
    by ``sign``, not through ``re`` and ``im``)."""

    args: tuple[sp.Expr, ...]

    def _eval_is_extended_real(self) -> bool | None:
        return True if all(a.is_extended_real for a in self.args) else None


class sigmoid(_RealValued, sp.Function):
    r"""sigma(x) = 1 / (1 + e^{-x}), the logistic function; sigma' = sigma (1 - sigma)."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        s = sigmoid(self.args[0])
        return s * (1 - s)

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if x.is_zero:
            return sp.Rational(1, 2)
        if _real_number(x):  # as SymPy's exp(2) is a number: generated code never calls a torch function on one
            return 1 / (1 + sp.exp(-x)) if x.is_extended_nonnegative else sp.exp(x) / (1 + sp.exp(x))
        return None

    def _eval_rewrite_as_exp(self, x: sp.Expr, **kwargs: Any) -> sp.Expr:
        return 1 / (1 + sp.exp(-x))

    # real and positive at a real argument: abs(sigmoid(x)) is sigmoid(x), and its derivatives stay real (without
    # these, SymPy differentiated abs(sigmoid(x)) twice through re, im and an unevaluated Derivative of sign)
    def _eval_is_positive(self) -> bool | None:
        return True if self.args[0].is_real else None

    def _latex(self, printer: Any, exp: Any = None) -> str:
        return _power(self._latex_body(printer), exp)

    def _latex_body(self, printer: Any) -> str:
        return rf"\sigma\left({_arg(printer, self.args[0])}\right)"

    def _numpycode(self, printer: Any) -> str:
        return f"ops.sigmoid({_arg(printer, self.args[0])})"

    def _torchcode(self, printer: Any) -> str:
        return f"torch.sigmoid({_arg(printer, self.args[0])})"


class softplus(_RealValued, sp.Function):
    r"""softplus(x) = log(1 + e^{x}), computed stably; softplus' = sigma."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sigmoid(self.args[0])

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if _real_number(x):  # log(2) at 0; max(x, 0) + log(1 + e^{-|x|}) stays finite at any x
            return sp.Max(x, 0) + sp.log(1 + sp.exp(-abs(x)))
        return None

    def _eval_rewrite_as_exp(self, x: sp.Expr, **kwargs: Any) -> sp.Expr:
        return sp.log(1 + sp.exp(x))

    def _eval_is_positive(self) -> bool | None:
        return True if self.args[0].is_real else None

    def _latex(self, printer: Any, exp: Any = None) -> str:
        return _power(self._latex_body(printer), exp)

    def _latex_body(self, printer: Any) -> str:
        return rf"\operatorname{{softplus}}\left({_arg(printer, self.args[0])}\right)"

    def _numpycode(self, printer: Any) -> str:
        return f"ops.softplus({_arg(printer, self.args[0])})"

    def _torchcode(self, printer: Any) -> str:
        # logaddexp(x, 0) is exact and stable everywhere (F.softplus switches to x above a threshold).
        x = _arg(printer, self.args[0])
        return f"ops.softplus({x})"


class step(_RealValued, sp.Function):
    r"""step(x) = 1 if x > 0 else 0: the derivative of ReLU with PyTorch's convention step(0) = 0."""

    nargs = 1

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if _real_number(x):
            return sp.S.One if x > 0 else sp.S.Zero
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.S.Zero

    def _latex(self, printer: Any, exp: Any = None) -> str:
        return _power(self._latex_body(printer), exp)

    def _latex_body(self, printer: Any) -> str:
        return rf"\mathbf{{1}}\{{{_arg(printer, self.args[0])} > 0\}}"

    def _numpycode(self, printer: Any) -> str:
        x = _arg(printer, self.args[0])
        return f"ops.step({x})"

    def _torchcode(self, printer: Any) -> str:
        return f"ops.step({_arg(printer, self.args[0])})"


class relu(_RealValued, sp.Function):
    r"""ReLU(x) = max(0, x); ReLU'(x) = 1{x > 0} (PyTorch: 0 at the kink)."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return step(self.args[0])

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        return sp.Max(x, 0) if _real_number(x) else None

    def _eval_is_extended_nonnegative(self) -> bool | None:
        return True if self.args[0].is_extended_real else None

    def _latex(self, printer: Any, exp: Any = None) -> str:
        return _power(self._latex_body(printer), exp)

    def _latex_body(self, printer: Any) -> str:
        return rf"\operatorname{{ReLU}}\left({_arg(printer, self.args[0])}\right)"

    def _numpycode(self, printer: Any) -> str:
        return f"ops.relu({_arg(printer, self.args[0])})"

    def _torchcode(self, printer: Any) -> str:
        return f"torch.relu({_arg(printer, self.args[0])})"


class leaky_step(_RealValued, sp.Function):
    r"""leaky_step(x, s) = 1 if x > 0 else s: the derivative of leaky ReLU (PyTorch: s at the kink). Its own
    derivative is 0 in x and 1{x <= 0} in the slope (a learned slope's second derivatives)."""

    nargs = 2

    @classmethod
    def eval(cls, x: sp.Expr, s: sp.Expr) -> sp.Expr | None:
        if _real_number(x) and s.is_number:
            return sp.S.One if x > 0 else s
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        if argindex == 1:
            return sp.S.Zero
        if argindex == 2:
            return where(step(self.args[0]), 0, 1)
        raise ArgumentIndexError(self, argindex)

    def _latex(self, printer: Any, exp: Any = None) -> str:
        return _power(self._latex_body(printer), exp)

    def _latex_body(self, printer: Any) -> str:
        x, s = (_arg(printer, a) for a in self.args)
        return rf"\left(\mathbf{{1}}\{{{x} > 0\}} + {s}\,\mathbf{{1}}\{{{x} \leq 0\}}\right)"

    def _numpycode(self, printer: Any) -> str:
        x, s = (_arg(printer, a) for a in self.args)
        return f"ops.leaky_step({x}, {s})"

    def _torchcode(self, printer: Any) -> str:
        x, s = (_arg(printer, a) for a in self.args)
        return f"ops.leaky_step({x}, {s})"


class leaky_relu(_RealValued, sp.Function):
    r"""LeakyReLU(x; s) = x if x > 0 else s x (max(s x, x) for 0 <= s < 1); its derivative is 1 for x > 0 and
    s otherwise in x, and 0 for x > 0 and x otherwise in the slope (a learned slope, as PReLU's: a selection,
    so an infinite x > 0 gives 0, as ``torch.prelu``'s gradient does)."""

    nargs = 2

    @classmethod
    def eval(cls, x: sp.Expr, s: sp.Expr) -> sp.Expr | None:
        if _real_number(x) and s.is_number:
            return x if x > 0 else s * x
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        if argindex == 1:
            return leaky_step(*self.args)
        if argindex == 2:
            return where(step(self.args[0]), 0, self.args[0])
        raise ArgumentIndexError(self, argindex)

    def _latex(self, printer: Any, exp: Any = None) -> str:
        return _power(self._latex_body(printer), exp)

    def _latex_body(self, printer: Any) -> str:
        x, s = (_arg(printer, a) for a in self.args)
        return rf"\operatorname{{LeakyReLU}}_{{{s}}}\left({x}\right)"

    def _numpycode(self, printer: Any) -> str:
        x, s = (_arg(printer, a) for a in self.args)
        return f"ops.leaky_relu({x}, {s})"

    def _torchcode(self, printer: Any) -> str:
        x, s = (_arg(printer, a) for a in self.args)
        return f"ops.leaky_relu({x}, {s})"


class CallBase(sp.Function):
    """A function that generated code calls by name: ``numpy_name(args...)`` / ``torch_name(args...)``."""

    numpy_name: str = ""
    torch_name: str = ""

    def _call(self, printer: Any, name: str) -> str:
        return f"{name}(" + ", ".join(_arg(printer, a) for a in self.args) + ")"

    def _numpycode(self, printer: Any) -> str:
        return self._call(printer, self.numpy_name)

    def _torchcode(self, printer: Any) -> str:
        return self._call(printer, self.torch_name)


class half_step(_RealValued, CallBase):
    r"""H(x) = 1 if x > 0, 1/2 if x = 0, 0 if x < 0: the derivative of ``maximum`` in its first argument
    (PyTorch splits the gradient of ``torch.maximum``/``torch.minimum`` evenly at ties)."""

    nargs = 1
    numpy_name = torch_name = "ops.half_step"

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if _real_number(x):
            return sp.S.One if x > 0 else (sp.S.Zero if x < 0 else sp.S.Half)
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.S.Zero

    def _latex(self, printer: Any, exp: Any = None) -> str:
        return _power(rf"H\left({_arg(printer, self.args[0])}\right)", exp)


class between(_RealValued, CallBase):
    r"""1{lo <= x <= hi}: the derivative of ``clamp(x, lo, hi)`` in x (PyTorch passes the gradient at the
    bounds)."""

    nargs = 3
    numpy_name = torch_name = "ops.between"

    @classmethod
    def eval(cls, x: sp.Expr, lo: sp.Expr, hi: sp.Expr) -> sp.Expr | None:
        if all(_real_number(a) for a in (x, lo, hi)):
            return sp.S.One if lo <= x <= hi else sp.S.Zero
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.S.Zero

    def _latex(self, printer: Any, exp: Any = None) -> str:
        x, lo, hi = (_arg(printer, a) for a in self.args)
        return _power(rf"\mathbf{{1}}\{{{lo} \leq {x} \leq {hi}\}}", exp)


class ExtremumBase(_RealValued, CallBase):
    """Elementwise max or min of two arguments; at a tie each argument gets half the gradient."""

    nargs = 2
    #: +1 for the maximum, -1 for the minimum
    direction: int = 1
    tex = r"\max"

    @classmethod
    def eval(cls, a: sp.Expr, b: sp.Expr) -> sp.Expr | None:
        if a == b:
            return a
        if _real_number(a) and _real_number(b):
            return sp.Max(a, b) if cls.direction > 0 else sp.Min(a, b)
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        a, b = self.args
        if argindex not in (1, 2):
            raise ArgumentIndexError(self, argindex)
        gap = a - b if argindex == 1 else b - a
        return half_step(self.direction * gap)

    def _latex(self, printer: Any, exp: Any = None) -> str:
        a, b = (_arg(printer, x) for x in self.args)
        return _power(rf"{self.tex}\left({a}, {b}\right)", exp)


class maximum(ExtremumBase):
    r"""max(a, b) elementwise; at a tie each argument gets half the gradient, as ``torch.maximum``."""

    direction = 1
    tex = r"\max"
    numpy_name, torch_name = "np.maximum", "ops.maximum"


class minimum(ExtremumBase):
    r"""min(a, b) elementwise; at a tie each argument gets half the gradient, as ``torch.minimum``."""

    direction = -1
    tex = r"\min"
    numpy_name, torch_name = "np.minimum", "ops.minimum"


class clamp(_RealValued, CallBase):
    r"""clamp(x, lo, hi) = min(max(x, lo), hi) elementwise, as ``torch.clamp``: the gradient goes to x where
    lo <= x <= hi (bounds included), to lo where x < lo < hi, and to hi where x > hi or lo > hi (then the
    value is hi); where x < lo = hi no argument gets it (PyTorch's rules, checked in the primitive tests)."""

    nargs = 3
    numpy_name = torch_name = "ops.clamp"

    @classmethod
    def eval(cls, x: sp.Expr, lo: sp.Expr, hi: sp.Expr) -> sp.Expr | None:
        if all(_real_number(a) for a in (x, lo, hi)):
            return sp.Min(sp.Max(x, lo), hi)
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        x, lo, hi = self.args
        if argindex == 1:
            return between(x, lo, hi)
        if argindex == 2:
            return step(lo - x) * step(hi - lo)
        if argindex == 3:
            above, crossed = step(x - hi), step(lo - hi)
            return above + crossed - above * crossed
        raise ArgumentIndexError(self, argindex)

    def _latex(self, printer: Any, exp: Any = None) -> str:
        x, lo, hi = (_arg(printer, a) for a in self.args)
        return _power(rf"\operatorname{{clamp}}\left({x}, {lo}, {hi}\right)", exp)


class where(_RealValued, CallBase):
    r"""where(c, a, b) = a where c != 0, else b: a selection, never ``c a + (1 - c) b`` (an infinity in the
    branch not taken does not become NaN). Its gradient goes to the selected branch only (``torch.where``)."""

    nargs = 3
    numpy_name = torch_name = "ops.where"

    @classmethod
    def eval(cls, c: sp.Expr, a: sp.Expr, b: sp.Expr) -> sp.Expr | None:
        if a == b:
            return a
        if _real_number(c):
            return a if c != 0 else b
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        c = self.args[0]
        if argindex == 1:
            return sp.S.Zero
        if argindex == 2:
            return where(c, 1, 0)
        if argindex == 3:
            return where(c, 0, 1)
        raise ArgumentIndexError(self, argindex)

    def _latex(self, printer: Any, exp: Any = None) -> str:
        c, a, b = (_arg(printer, x) for x in self.args)
        return _power(rf"\begin{{cases}} {a} & {c} \neq 0 \\ {b} & \text{{otherwise}} \end{{cases}}", exp)


class power(CallBase):
    r"""b^e elementwise for a tensor exponent ``e`` (a number exponent is SymPy's own power), as
    ``torch.pow``: d/db = e b^{e-1}, taken as 0 where e = 0; d/de = b^e log b, taken as 0 where b = 0 and
    e >= 0 (PyTorch's rules at a zero base)."""

    nargs = 2
    numpy_name, torch_name = "np.power", "torch.pow"

    @classmethod
    def eval(cls, b: sp.Expr, e: sp.Expr) -> sp.Expr | None:
        if e.is_number or b.is_number and b == 1:
            return b**e
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        b, e = self.args
        if argindex == 1:
            return where(e, e * power(b, e - 1), 0)
        if argindex == 2:
            ylog = power(b, e) * sp.log(b)
            return where(b, ylog, where(step(-e), ylog, 0))
        raise ArgumentIndexError(self, argindex)

    def _latex(self, printer: Any, exp: Any = None) -> str:
        b, e = self.args
        base = _arg(printer, b)
        if not (b.is_Symbol or b.is_Atom):
            base = rf"\left({base}\right)"
        return _power(f"{base}^{{{_arg(printer, e)}}}", exp)


class inv0(_RealValued, CallBase):
    r"""1/x for x != 0, and 0 at x = 0: the factor of the Euclidean norm's gradient x / ||x||, which PyTorch
    takes as 0 at x = 0 (``torch.linalg.vector_norm``); it prints as 1/x."""

    nargs = 1
    numpy_name = torch_name = "ops.inv0"

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if x.is_number:
            return sp.S.Zero if x == 0 else 1 / x
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return -inv0(self.args[0]) ** 2

    def _latex(self, printer: Any, exp: Any = None) -> str:
        tex = rf"\frac{{1}}{{{_arg(printer, self.args[0])}}}"
        return tex if exp is None else rf"\left({tex}\right)^{{{exp}}}"


class ActivationBase(sp.Function):
    """A named activation ``S`` printed as the book's generic ``S(z)``, with derivative ``\\dot S(z)``.

    Subclasses (made by :func:`named_activation`) carry the concrete scalar definition in ``impl``; the
    code generators lower ``S`` and ``\\dot S`` to that definition and its ``sympy.diff``.
    """

    nargs = 1
    impl: Any = None
    order: int = 0
    symbol: str = "S"

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return named_activation(self.activation_name, self.slope, self.order + 1)(self.args[0])

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        return cls.impl(x) if cls.impl is not None and x.is_number else None  # type: ignore[no-any-return]

    activation_name: str = ""
    slope: Any = None

    def concrete(self) -> sp.Expr:
        """The concrete scalar expression this stands for."""
        return self.impl(self.args[0])  # type: ignore[no-any-return]

    def _latex(self, printer: Any, exp: Any = None) -> str:
        return _power(self._latex_body(printer), exp)

    def _latex_body(self, printer: Any) -> str:
        dots = {0: "", 1: r"\dot", 2: r"\ddot"}.get(self.order, "")
        head = f"{dots}{{{self.symbol}}}" if dots else self.symbol
        return rf"{head}\left({_arg(printer, self.args[0])}\right)"

    def _numpycode(self, printer: Any) -> str:
        return "(" + str(printer._print(self.concrete())) + ")"

    def _torchcode(self, printer: Any) -> str:
        return "(" + str(printer._print(self.concrete())) + ")"


def concrete_activations(e: sp.Expr) -> sp.Expr:
    """``e`` with the book's named activations (``S_tanh``, ``\\dot S``...) replaced by their formulas."""
    return e.replace(lambda x: isinstance(x, ActivationBase), lambda x: x.concrete())


_NAMED: dict[tuple[str, Any, int], type] = {}


def named_activation(name: str, slope: Any = None, order: int = 0) -> type:
    """The SymPy function class of activation ``name`` printed generically (``S``, ``\\dot S``, ...).

    ``order`` is the derivative order. Classes are cached, so equal activations are the same function.
    """
    key = (name, slope, order)
    if key not in _NAMED:
        base = activation(name, slope if slope is not None else DEFAULT_SLOPE)
        x = base.variables[0]
        impl = sp.Lambda(x, sp.diff(base.expr, x, order)) if order else base
        cls_name = f"S_{name}" + ("_" + "d" * order if order else "")
        _NAMED[key] = type(cls_name, (ActivationBase,), {
            "impl": impl, "order": order, "activation_name": name, "slope": slope, "nargs": 1,
        })
    return _NAMED[key]


#: Scalar functions allowed inside elementwise maps: SymPy class -> (numpy name, torch name).
#: Anything else in an equation is rejected with a message naming it (see ``derive.tensor.check_scalar``).
SCALAR_FUNCTIONS: dict[type, tuple[str, str]] = {
    sp.exp: ("np.exp", "torch.exp"),
    sp.log: ("np.log", "torch.log"),
    sp.tanh: ("np.tanh", "torch.tanh"),
    sp.sin: ("np.sin", "torch.sin"),
    sp.cos: ("np.cos", "torch.cos"),
    sp.sqrt: ("np.sqrt", "torch.sqrt"),
    sp.floor: ("np.floor", "torch.floor"),
    sigmoid: ("ops.sigmoid", "torch.sigmoid"),
    softplus: ("ops.softplus", "ops.softplus"),
    relu: ("ops.relu", "torch.relu"),
    step: ("ops.step", "ops.step"),
    leaky_relu: ("ops.leaky_relu", "ops.leaky_relu"),
    leaky_step: ("ops.leaky_step", "ops.leaky_step"),
    sp.Abs: ("abs", "abs"),
    sp.sign: ("np.sign", "torch.sign"),
    sp.erf: ("ops.erf", "torch.erf"),
    half_step: ("ops.half_step", "ops.half_step"),
    between: ("ops.between", "ops.between"),
    maximum: ("np.maximum", "ops.maximum"),
    minimum: ("np.minimum", "ops.minimum"),
    clamp: ("ops.clamp", "ops.clamp"),
    where: ("ops.where", "ops.where"),
    inv0: ("ops.inv0", "ops.inv0"),
    power: ("np.power", "torch.pow"),
}

#: Functions that are not smooth everywhere (kinks, steps, ties): models using them are checked at exact
#: zeros and ties too, with PyTorch's conventions there.
KINKED: frozenset[type] = frozenset({
    sp.Abs, sp.sign, sp.floor, relu, step, leaky_relu, leaky_step, half_step, between, maximum, minimum, clamp,
    where, inv0, power,
})

_x = sp.Symbol("x", real=True)
DEFAULT_SLOPE = sp.Rational(1, 100)


def _activation_table() -> dict[str, sp.Lambda]:
    table = {
        "sigmoid": sp.Lambda(_x, sigmoid(_x)),
        "tanh": sp.Lambda(_x, sp.tanh(_x)),
        "relu": sp.Lambda(_x, relu(_x)),
        "softplus": sp.Lambda(_x, softplus(_x)),
        "identity": sp.Lambda(_x, _x),
        "exp": sp.Lambda(_x, sp.exp(_x)),
        "square": sp.Lambda(_x, _x**2),
    }
    # Invariant (asserted at import, as the table is the single source of activations): every entry is
    # built only from functions the code generators know.
    for name, lam in table.items():
        for f in lam.expr.atoms(sp.Function):
            assert type(f) in SCALAR_FUNCTIONS, (name, f)
    return table


#: Named scalar activations (one-argument); ``leaky_relu`` takes its slope and is built on demand.
ACTIVATIONS: dict[str, sp.Lambda] = _activation_table()


def activation(name: str, slope: float | sp.Expr = DEFAULT_SLOPE) -> sp.Lambda:
    """The scalar activation called ``name`` as a SymPy ``Lambda``.

    Args:
        name: one of ``sorted(ACTIVATIONS) + ["leaky_relu"]``.
        slope: the negative-side slope of ``leaky_relu``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name == "leaky_relu":
        from .primitives.base import as_number

        return sp.Lambda(_x, leaky_relu(_x, as_number(slope, 'the leaky ReLU slope')))
    try:
        return ACTIVATIONS[name]
    except KeyError:
        known = ", ".join(sorted([*ACTIVATIONS, "leaky_relu"]))
        raise ValueError(f"unknown activation {name!r}; known activations: {known}") from None
