r"""The expression language of matrixcalculus.org, parsed into a model.

``derive.parse("x'*A*x", x="vector(n)", A="matrix(n,n)")`` reads the text with a hand-written tokenizer and
recursive-descent parser (nothing in the text is ever evaluated: no ``eval``, no ``sympify``), infers every
shape by unification over the declared dimensions, and builds the same program of tensor equations that the
zoo's builders make, so derivation, printing, code generation and verification know nothing of where it came
from.

The language
============

========================  ===================================================================================
``A'``                    transpose (a vector ``x`` is a column, ``x'`` a row)
``A*B``                   matrix product, or scalar product when one side is a scalar: ``x'*y`` is the inner
                          product, ``x*y'`` the outer product, ``A*x`` a matrix-vector product
``.*  ./  .^``            elementwise product, quotient and power (same shapes, or one side a scalar)
``+  -``                  sum and difference (same shapes; a scalar broadcasts against a vector or matrix)
``/``                     division by a scalar
``^``                     a power of a scalar; ``A^k`` (integer ``k``) is a matrix power, ``A^-1`` the inverse
``-x``, ``( )``, numbers  unary minus, grouping, ``2``, ``0.5``, ``1e-3``
``vector(1)``             the vector of ones, ``matrix(1)`` the matrix of ones (``vector(0)``, ``matrix(0)``:
                          zeros), ``eye`` the identity; their sizes follow from where they are used
functions                 ``exp log sin cos tanh sqrt abs sign sigmoid relu softplus erf`` (elementwise),
                          ``sum mean`` (of all entries), ``norm1`` (sum of absolute values), ``norm2``
                          (Euclidean; Frobenius for a matrix), ``tr det logdet inv diag`` (``diag`` of a vector
                          is a diagonal matrix, of a matrix its diagonal), ``softmax logsumexp`` (of a vector),
                          ``max min`` (of all entries with one argument, elementwise with two)
========================  ===================================================================================

Types are strings: ``"scalar"``, ``"vector(n)"``, ``"matrix(n,p)"`` (``"matrix(n)"``: square) and ``"spd(n)"``,
a symmetric positive definite matrix (it changes only how the verifier draws values and what the kernels
check; gradients treat the entries as free, as torch does). Several lines ``name = expr`` (or separated by
``;``) make a program: each line may use the names defined above it, and the last line, an equation or a
bare expression, is the loss, a scalar. ``#`` starts a comment.

Errors are one line (:class:`ParseError`, a :class:`~derive.program.ModelError`): the line and column and what
was expected there, an unknown function with the known ones, an undeclared name with the declared ones, and
a shape mismatch with both shapes (:class:`ExpressionShapeError`, also a :class:`~derive.tensor.ShapeError`).
Text that would make reading or SymPy's exact arithmetic run away is refused the same way, before anything is
computed: nesting deeper than 200 levels (parentheses, signs, a chain of 200 operations: split it into lines),
a matrix power beyond ``A^32``, and constants that are not finite real numbers of float64 or too large to
write exactly (``1e400``, ``1/0``, ``x ./ 0``, ``(-1)^0.5``, ``log(0)``, ``exp(1000)``, ``2^2^2^2^2^2``).
Variables and equations print as SymPy prints symbols: ``mu`` as :math:`\mu`, ``W1`` as :math:`W_{1}`.
"""

from __future__ import annotations

import keyword
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import sympy as sp

from . import nn
from .program import Builder, Model, ModelError
from .tensor import Const, Eye, Node, ShapeError

__all__ = ["parse", "parse_type", "ParseError", "ExpressionShapeError", "FUNCTIONS", "TYPES"]


class ParseError(ModelError):
    """The text is not an expression of the language, or uses a name or function that is not known."""


class ExpressionShapeError(ParseError, ShapeError):
    """The shapes in an expression do not fit; the message names both."""


#: the type strings (``n``, ``p`` stand for dimension names)
TYPES = ("scalar", "vector(n)", "matrix(n,p)", "matrix(n)", "spd(n)")

#: sizes the verifier draws for every dimension of a parsed model, and the default size
DIM_DEFAULT, DIM_RANGE = 3, (1, 4)

#: how deeply an expression may nest (parentheses, calls, operator chains): deeper text is refused, not
#: read by recursion that would overflow (a longer chain splits into lines ``name = expr``)
MAX_DEPTH = 200

#: the largest |k| of a matrix power ``A^k`` (it is written as k - 1 products)
MAX_MATRIX_POWER = 32

#: names the generated kernels use for themselves (a variable of the expression cannot take them)
RESERVED = frozenset({"math", "np", "torch", "ops", "kernel", "loss", "grad", "hessian", "out", "self"})


# --------------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------------

_NUMBER = r"(?:\d+\.\d+|\d+\.(?![*/^\d])|\.\d+|\d+)(?:[eE][+-]?\d+)?"
_TOKEN = re.compile(rf"(?P<num>{_NUMBER})|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>\.\*|\./|\.\^|[-+*/^'(),=;])"
                    r"|(?P<nl>\n)|(?P<space>[ \t\r]+|#[^\n]*)")


@dataclass(frozen=True)
class Token:
    kind: str  # num, name, op, end (of a line), eof
    text: str
    line: int
    col: int  # 1-based


def _where(line: int, col: int, lines: int) -> str:
    return f"column {col}" if lines == 1 else f"line {line}, column {col}"


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text``, lines ended by ``end`` tokens (a newline or ``;``); a character outside the
    language ends them with a ``bad`` token holding the message."""
    out: list[Token] = []
    line, start, pos = 1, 0, 0
    nlines = text.count("\n") + 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            hint = (" (strings and Python code are not part of the language)" if ch in "\"[]{}:@!<>&|~`$%\\" else
                    " (after '.', one of .* ./ .^)" if ch == "." else "")
            msg = (f"{_where(line, pos - start + 1, nlines)}: unexpected character {ch!r}{hint}; "
                   "expected a name, a number, an operator (' * .* ./ .^ + - / ^), '(' or ')'")
            out.append(Token("bad", msg, line, pos - start + 1))  # raised when the parser reaches it
            return out
        kind = m.lastgroup or ""
        col = pos - start + 1
        if kind == "nl":
            out.append(Token("end", "newline", line, col))
            line, start = line + 1, m.end()
        elif kind == "op" and m.group() == ";":
            out.append(Token("end", ";", line, col))
        elif kind != "space":
            out.append(Token(kind, m.group(), line, col))
        pos = m.end()
    out.append(Token("eof", "end of text", line, pos - start + 1))
    return out


# --------------------------------------------------------------------------------------------------
# Syntax tree
# --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Expr:
    line: int
    col: int


@dataclass(eq=False)
class Num(Expr):
    value: Fraction
    text: str


@dataclass(eq=False)
class Name(Expr):
    name: str


@dataclass(eq=False)
class Filled(Expr):
    """``vector(1)``, ``matrix(1)`` (ones; 0: zeros) or ``eye`` (the identity)."""

    what: str  # vector, matrix, eye
    value: int


@dataclass(eq=False)
class Call(Expr):
    fn: str
    args: list[Expr]


@dataclass(eq=False)
class Unary(Expr):
    op: str
    x: Expr


@dataclass(eq=False)
class Transpose(Expr):
    x: Expr


@dataclass(eq=False)
class Binary(Expr):
    op: str
    a: Expr
    b: Expr


@dataclass
class Statement:
    name: str | None
    expr: Expr
    line: int
    col: int


# --------------------------------------------------------------------------------------------------
# Functions: name -> (arities, kind)
# --------------------------------------------------------------------------------------------------

_ELEMENTWISE: dict[str, Callable[[Node], Node]] = {
    "exp": nn.exp, "log": nn.log, "sin": nn.sin, "cos": nn.cos, "tanh": nn.tanh, "sqrt": nn.sqrt, "abs": nn.abs,
    "sign": nn.sign, "sigmoid": nn.sigmoid, "relu": nn.relu, "softplus": nn.softplus, "erf": nn.erf,
}

#: the functions of the language and their numbers of arguments
FUNCTIONS: dict[str, tuple[int, ...]] = {
    **{k: (1,) for k in _ELEMENTWISE},
    "sum": (1,), "mean": (1,), "norm1": (1,), "norm2": (1,), "tr": (1,), "det": (1,), "logdet": (1,),
    "inv": (1,), "diag": (1,), "softmax": (1,), "logsumexp": (1,), "max": (1, 2), "min": (1, 2),
}

_SPECIAL = ("vector", "matrix", "eye")


class _Parser:
    """Recursive descent over the tokens::

        program   := line (END line)*          line := [NAME '='] expr
        expr      := term (('+' | '-') term)*
        term      := unary (('*' | '/' | '.*' | './') unary)*
        unary     := ('-' | '+') unary | power
        power     := postfix (('^' | '.^') unary)?
        postfix   := primary "'"*
        primary   := NUMBER | NAME | NAME '(' expr (',' expr)* ')' | '(' expr ')'
    """

    def __init__(self, text: str):
        self.toks = tokenize(text)
        self.i = 0
        self.lines = text.count("\n") + 1
        self.depth = 0

    def deeper(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError(f"{self.where(self.tok)}: the expression nests more than {MAX_DEPTH} levels deep "
                             "(parentheses, calls, signs or powers); split it into lines name = expr")

    # -- helpers ----------------------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        t = self.toks[self.i]
        if t.kind == "bad":  # a character outside the language: reported where reading reaches it
            raise ParseError(t.text)
        return t

    def where(self, t: Token | Expr) -> str:
        return _where(t.line, t.col, self.lines)

    def error(self, expected: str, t: Token | None = None) -> ParseError:
        t = t or self.tok
        got = t.text if t.kind in ("eof", "end") and t.text != ";" else repr(t.text)
        return ParseError(f"{self.where(t)}: expected {expected}, got {got}")

    def accept(self, *ops: str) -> Token | None:
        t = self.tok
        if t.kind == "op" and t.text in ops:
            self.i += 1
            return t
        return None

    def expect(self, op: str, expected: str) -> Token:
        t = self.accept(op)
        if t is None:
            raise self.error(expected)
        return t

    # -- grammar ----------------------------------------------------------------------------------
    def program(self) -> list[Statement]:
        out: list[Statement] = []
        while self.tok.kind != "eof":
            if self.tok.kind == "end":
                self.i += 1
                continue
            out.append(self.statement())
            if self.tok.kind not in ("end", "eof"):
                raise self.error("an operator (' * .* ./ .^ + - / ^) or the end of the line")
        if not out:
            raise ParseError("the text holds no expression")
        return out

    def statement(self) -> Statement:
        t = self.tok
        nxt = self.toks[self.i + 1]
        if t.kind == "name" and nxt.kind == "op" and nxt.text == "=":
            self.i += 2
            if self.tok.kind in ("end", "eof"):
                raise self.error(f"an expression after '{t.text} ='")
            return Statement(t.text, self.expr(), t.line, t.col)
        return Statement(None, self.expr(), t.line, t.col)

    def expr(self) -> Expr:
        self.deeper()
        a = self.term()
        while (t := self.accept("+", "-")) is not None:
            a = Binary(t.line, t.col, t.text, a, self.term())
        self.depth -= 1
        return a

    def term(self) -> Expr:
        a = self.unary()
        while (t := self.accept("*", "/", ".*", "./")) is not None:
            a = Binary(t.line, t.col, t.text, a, self.unary())
        return a

    def unary(self) -> Expr:
        self.deeper()
        t = self.accept("-", "+")
        if t is not None:
            x = self.unary()
            out = x if t.text == "+" else Unary(t.line, t.col, "-", x)
        else:
            out = self.power()
        self.depth -= 1
        return out

    def power(self) -> Expr:
        a = self.postfix()
        t = self.accept("^", ".^")
        if t is not None:
            a = Binary(t.line, t.col, t.text, a, self.unary())
        return a

    def postfix(self) -> Expr:
        a = self.primary()
        while (t := self.accept("'")) is not None:
            a = Transpose(t.line, t.col, a)
        return a

    def primary(self) -> Expr:
        t = self.tok
        if t.kind == "num":
            if len(t.text) > 40:
                raise ParseError(f"{self.where(t)}: the number {t.text[:20]}... has more than 40 characters; "
                                 "write it with an exponent, e.g. 1.5e-30")
            _, _, exp10 = t.text.lower().partition("e")
            if (exp10 and abs(int(exp10)) > 330) or not math.isfinite(float(t.text)):
                raise ParseError(f"{self.where(t)}: the number {t.text} is outside the range of float64 (the kernels "
                                 "compute in floating point); write a number up to about 1.8e308")
            self.i += 1
            return Num(t.line, t.col, Fraction(t.text), t.text)  # decimal text to an exact rational
        if self.accept("("):
            e = self.expr()
            self.expect(")", "')' to close the '(' at " + self.where(t))
            return e
        if t.kind == "name":
            self.i += 1
            if t.text == "eye":
                return Filled(t.line, t.col, "eye", 1)
            if self.accept("("):
                return self.call(t)
            if t.text in FUNCTIONS or t.text in ("vector", "matrix"):
                raise self.error(f"'(' after the function {t.text}")
            return Name(t.line, t.col, t.text)
        raise self.error("an operand (a name, a number, a function call or '(')")

    def call(self, t: Token) -> Expr:
        if t.text in ("vector", "matrix"):
            v = self.tok
            if v.kind != "num" or v.text not in ("0", "1"):
                raise self.error(f"1 (ones) or 0 (zeros) in {t.text}(...): its size follows from where it is used")
            self.i += 1
            self.expect(")", f"')' after {t.text}({v.text}")
            return Filled(t.line, t.col, t.text, int(v.text))
        if t.text not in FUNCTIONS:
            raise ParseError(f"{self.where(t)}: unknown function {t.text!r}; the known functions are: "
                             f"{', '.join(FUNCTIONS)} (and vector(1), matrix(1), eye)")
        args = [self.expr()]
        while self.accept(","):
            args.append(self.expr())
        self.expect(")", f"',' or ')' in the arguments of {t.text}")
        if len(args) not in FUNCTIONS[t.text]:
            n = " or ".join(str(k) for k in FUNCTIONS[t.text])
            raise ParseError(f"{self.where(t)}: {t.text} takes {n} argument{'s' if n != '1' else ''}, got {len(args)}")
        return Call(t.line, t.col, t.text, args)


# --------------------------------------------------------------------------------------------------
# Types and shape inference (unification over dimensions)
# --------------------------------------------------------------------------------------------------

#: kinds of values: a scalar, a column vector, a row vector (a transposed vector), a matrix
SCALAR, COL, ROW, MATRIX = "scalar", "vector", "row vector", "matrix"


@dataclass(frozen=True)
class Decl:
    """A declared type: kind, dimension names, domain."""

    kind: str
    dims: tuple[str, ...]
    domain: str = "real"


_TYPE = re.compile(r"\s*(scalar|vector|matrix|spd)\s*(?:\(\s*([^()]*?)\s*\))?\s*$")


def parse_type(name: str, text: Any) -> Decl:
    """The declaration of variable ``name`` from its type string (``"vector(n)"``)."""
    if not isinstance(text, str):
        raise TypeError(f"the type of {name} must be a string such as 'vector(n)', got {type(text).__name__}")
    m = _TYPE.match(text)
    if m is None:
        raise ParseError(f"type of {name}: {text!r} is not a type; the types are {', '.join(TYPES)} "
                         "(n, p: dimension names)")
    kind, inner = m.group(1), m.group(2)
    dims = tuple(d.strip() for d in inner.split(",")) if inner is not None else ()
    for d in dims:
        if not d.isidentifier() or keyword.iskeyword(d) or d.startswith("_"):
            raise ParseError(f"type of {name}: dimension {d!r} in {text!r} must be a name such as n or p "
                             "(sizes are chosen when the model is compiled or verified)")
    want = {"scalar": (0,), "vector": (1,), "matrix": (1, 2), "spd": (1,)}[kind]
    if len(dims) not in want:
        example = {"scalar": "scalar", "vector": "vector(n)", "matrix": "matrix(n,p)", "spd": "spd(n)"}[kind]
        raise ParseError(f"type of {name}: {text!r} needs {' or '.join(map(str, want))} dimension name(s), "
                         f"e.g. {example!r}")
    if kind == "scalar":
        return Decl(SCALAR, ())
    if kind == "vector":
        return Decl(COL, dims)
    if kind == "spd":
        return Decl(MATRIX, (dims[0], dims[0]), "spd")
    return Decl(MATRIX, dims if len(dims) == 2 else (dims[0], dims[0]))


@dataclass
class Type:
    kind: str
    dims: tuple[Any, ...]  # dimension terms: a str (declared) or an int (unknown, to be unified)


@dataclass
class _Dims:
    """Union-find over dimension terms; declared names are the roots' values."""

    parent: dict[Any, Any] = field(default_factory=dict)
    fresh: int = 0

    def new(self) -> int:
        self.fresh += 1
        return self.fresh

    def find(self, d: Any) -> Any:
        while d in self.parent:
            d = self.parent[d]
        return d

    def unify(self, a: Any, b: Any) -> bool:
        a, b = self.find(a), self.find(b)
        if a == b:
            return True
        if isinstance(a, str) and isinstance(b, str):
            return False
        if isinstance(a, str):
            a, b = b, a
        self.parent[a] = b  # an unknown joins the other (a declared name stays the root)
        return True

    def show(self, t: Type) -> str:
        ds = [self.find(d) for d in t.dims]
        txt = ",".join(d if isinstance(d, str) else "?" for d in ds)
        return {SCALAR: "scalar", COL: f"vector({txt})", ROW: f"vector({txt})' (a row)",
                MATRIX: f"matrix({txt})"}[t.kind]


class _Checker:
    """Infers the type of every expression; raises :class:`ExpressionShapeError` where shapes cannot fit."""

    def __init__(self, env: dict[str, Type], where: Callable[[Expr], str]):
        self.env = env
        self.dims = _Dims()
        self.types: dict[int, Type] = {}
        self.where = where
        self.filled: list[Filled] = []
        self.consts: dict[int, float] = {}  # id of a constant scalar subexpression -> its value
        self.exact: dict[int, Fraction] = {}  # ... and its exact value, where it is rational

    def fail(self, e: Expr, what: str) -> ExpressionShapeError:
        return ExpressionShapeError(f"{self.where(e)}: {what}")

    def same(self, e: Expr, a: Type, b: Type, what: str) -> None:
        """``a`` and ``b`` must have the same kind and dimensions (for ``what``)."""
        if a.kind != b.kind or not all(self.dims.unify(x, y) for x, y in zip(a.dims, b.dims)):
            raise self.fail(e, f"{what} needs equal shapes, got {self.dims.show(a)} and {self.dims.show(b)}")

    def infer(self, e: Expr) -> Type:
        t = self._infer(e)
        self.types[id(e)] = t
        if t.kind == SCALAR:
            self.fold(e)
        return t

    def bad(self, e: Expr, what: str) -> ParseError:
        return ParseError(f"{self.where(e)}: {what}")

    def fold(self, e: Expr) -> None:
        """The value of a constant scalar subexpression (``2^-1``, ``log(2)``), computed in floats (and exactly
        where it is rational) to refuse, before SymPy sees it, a constant that is not a finite real number of
        float64 or a power too large to write exactly."""
        c, q = self.consts, self.exact
        v: float | None = None
        r: Fraction | None = None
        try:
            if isinstance(e, Num):
                v, r = float(e.value), e.value
            elif isinstance(e, Unary) and id(e.x) in c:
                v, r = -c[id(e.x)], (-q[id(e.x)] if id(e.x) in q else None)
            elif isinstance(e, Binary) and id(e.a) in c and id(e.b) in c:
                a, b = c[id(e.a)], c[id(e.b)]
                ra, rb = q.get(id(e.a)), q.get(id(e.b))
                if (e.op in ("/", "./") and b == 0) or (e.op in ("^", ".^") and a == 0 and b < 0):
                    raise self.bad(e, "division by zero in a constant")
                if e.op in ("^", ".^"):
                    if a < 0 and b != int(b):
                        raise self.bad(e, f"({_show_number(a)})^{_show_number(b)} is not a real number")
                    bits = max(ra.numerator.bit_length(), ra.denominator.bit_length()) if ra is not None else 1
                    if a not in (0.0, 1.0, -1.0) and abs(b) * bits > 4096:
                        raise self.bad(e, f"the constant {_show_number(a)}^{_show_number(b)} is too large to "
                                           "write exactly (over 4096 bits)")
                    v = a**b
                    if ra is not None and rb is not None and rb.denominator == 1:
                        r = ra ** int(rb)
                else:
                    v = {"+": a + b, "-": a - b, "*": a * b, ".*": a * b, "/": a / b, "./": a / b}[e.op]
                    if ra is not None and rb is not None:
                        r = {"+": ra + rb, "-": ra - rb, "*": ra * rb, ".*": ra * rb, "/": ra / rb,
                             "./": ra / rb}[e.op]
            elif isinstance(e, Call) and e.fn in _FLOAT and len(e.args) == 1 and id(e.args[0]) in c:
                x = c[id(e.args[0])]
                try:
                    v = _FLOAT[e.fn](x)
                except (ValueError, ZeroDivisionError):
                    raise self.bad(e, f"{e.fn}({_show_number(x)}) is not a finite real number") from None
        except OverflowError:
            raise self.bad(e, "a constant overflows float64 (its magnitude is above about 1.8e308)") from None
        if v is None:
            return
        if isinstance(v, complex) or not math.isfinite(v):
            raise self.bad(e, "a constant is not a finite real number of float64")
        if r is not None and max(r.numerator.bit_length(), r.denominator.bit_length()) > 4096:
            raise self.bad(e, "a constant is too large to write exactly (over 4096 bits)")
        c[id(e)] = v
        if r is not None:
            q[id(e)] = r

    def _infer(self, e: Expr) -> Type:
        if isinstance(e, Num):
            return Type(SCALAR, ())
        if isinstance(e, Name):
            if e.name not in self.env:
                known = ", ".join(self.env) or "(none)"
                raise ParseError(f"{self.where(e)}: unknown name {e.name!r}; the known names are: {known} (declare "
                                 f"it, e.g. {e.name}='vector(n)', or define it on an earlier line)")
            return self.env[e.name]
        if isinstance(e, Filled):
            self.filled.append(e)
            if e.what == "vector":
                return Type(COL, (self.dims.new(),))
            if e.what == "eye":
                d = self.dims.new()
                return Type(MATRIX, (d, d))
            return Type(MATRIX, (self.dims.new(), self.dims.new()))
        if isinstance(e, Transpose):
            t = self.infer(e.x)
            return {SCALAR: t, COL: Type(ROW, t.dims), ROW: Type(COL, t.dims),
                    MATRIX: Type(MATRIX, t.dims[::-1])}[t.kind]
        if isinstance(e, Unary):
            return self.infer(e.x)
        if isinstance(e, Binary):
            return self.binary(e, self.infer(e.a), self.infer(e.b))
        if isinstance(e, Call):
            return self.call(e, [self.infer(a) for a in e.args])
        raise AssertionError(type(e))

    def binary(self, e: Binary, a: Type, b: Type) -> Type:
        op, show = e.op, self.dims.show
        if op in ("/", "./") and self.consts.get(id(e.b)) == 0:
            raise self.bad(e, "division by zero (the divisor is the constant 0)")
        if op in ("+", "-", ".*", "./"):
            if a.kind == SCALAR:
                return b
            if b.kind == SCALAR:
                return a
            self.same(e, a, b, f"'{op}'")
            return a
        if op == "*":
            if a.kind == SCALAR:
                return b
            if b.kind == SCALAR:
                return a
            rule = {(ROW, COL): SCALAR, (COL, ROW): MATRIX, (MATRIX, COL): COL, (ROW, MATRIX): ROW,
                    (MATRIX, MATRIX): MATRIX}.get((a.kind, b.kind))
            if rule is None:
                hint = (" (x'*y is the inner product, x*y' the outer product, x.*y the elementwise product)"
                        if a.kind in (COL, ROW) and b.kind in (COL, ROW) else
                        " (a vector multiplies a matrix from the left as a row: x'*A)" if b.kind == MATRIX else
                        " (a matrix multiplies a column vector: A*x)")
                raise self.fail(e, f"'*' cannot multiply {show(a)} by {show(b)}{hint}")
            if rule == MATRIX and a.kind == COL:  # outer product
                return Type(MATRIX, (a.dims[0], b.dims[0]))
            inner_a, inner_b = a.dims[-1], b.dims[0]
            if not self.dims.unify(inner_a, inner_b):
                raise self.fail(e, f"'*' needs the inner dimensions to agree: {show(a)} times {show(b)} "
                                   f"({self.dims.find(inner_a)} and {self.dims.find(inner_b)} differ)")
            if rule == SCALAR:
                return Type(SCALAR, ())
            if rule == COL:
                return Type(COL, (a.dims[0],))
            if rule == ROW:
                return Type(ROW, (b.dims[1],))
            return Type(MATRIX, (a.dims[0], b.dims[1]))
        if op == "/":
            if b.kind != SCALAR:
                raise self.fail(e, f"'/' divides by a scalar, got {show(a)} / {show(b)} (use ./ for an "
                                   "elementwise quotient)")
            return a
        if op == ".^":
            if a.kind == SCALAR:  # a scalar base broadcasts against the exponents: 2.^x
                return b
            if b.kind != SCALAR:
                self.same(e, a, b, "'.^'")
            return a
        if op == "^":
            if b.kind != SCALAR:
                raise self.fail(e, f"'^' needs a scalar exponent, got {show(b)}")
            if a.kind == SCALAR:
                return a
            if a.kind == MATRIX and isinstance(e.b, (Num, Unary)) and _integer(e.b) is not None:
                if not self.dims.unify(a.dims[0], a.dims[1]):
                    raise self.fail(e, f"a matrix power needs a square matrix, got {show(a)}")
                k = _integer(e.b)
                assert k is not None
                if abs(k) > MAX_MATRIX_POWER:
                    raise self.bad(e, f"a matrix power A^k is written as |k| - 1 products; |k| may be at most "
                                       f"{MAX_MATRIX_POWER}, got {k}")
                return a
            raise self.fail(e, f"'^' raises a scalar (or a square matrix to an integer power), got {show(a)} "
                               "(use .^ for an elementwise power)")
        raise AssertionError(op)

    def call(self, e: Call, ts: list[Type]) -> Type:
        f, show = e.fn, self.dims.show
        t = ts[0]
        if f in _ELEMENTWISE:
            return t
        if f in ("sum", "mean", "norm1", "norm2"):
            return Type(SCALAR, ())
        if f in ("max", "min"):
            if len(ts) == 1:
                return Type(SCALAR, ())
            return self.binary(Binary(e.line, e.col, "+", e.args[0], e.args[1]), ts[0], ts[1])
        if f in ("tr", "det", "logdet", "inv"):
            if t.kind != MATRIX or not self.dims.unify(t.dims[0], t.dims[1]):
                raise self.fail(e, f"{f} needs a square matrix, got {show(t)}")
            return t if f == "inv" else Type(SCALAR, ())
        if f == "diag":
            if t.kind in (COL, ROW):
                return Type(MATRIX, (t.dims[0], t.dims[0]))
            if t.kind == MATRIX and self.dims.unify(t.dims[0], t.dims[1]):
                return Type(COL, (t.dims[0],))
            raise self.fail(e, f"diag takes a vector (a diagonal matrix) or a square matrix (its diagonal), "
                               f"got {show(t)}")
        if f in ("softmax", "logsumexp"):
            if t.kind not in (COL, ROW):
                raise self.fail(e, f"{f} takes a vector, got {show(t)}")
            return t if f == "softmax" else Type(SCALAR, ())
        raise AssertionError(f)


def _show_number(v: float) -> str:
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else f"{v:.10g}"


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


#: the elementwise functions in floats, to fold constants (a ValueError: outside the function's domain)
_FLOAT: dict[str, Callable[[float], float]] = {
    "exp": math.exp, "log": math.log, "sin": math.sin, "cos": math.cos, "tanh": math.tanh, "sqrt": math.sqrt,
    "abs": abs, "sign": lambda x: float((x > 0) - (x < 0)), "sigmoid": lambda x: 1 / (1 + math.exp(-x)) if x > -700 else 0.0,
    "relu": lambda x: max(x, 0.0), "softplus": _softplus, "erf": math.erf,
}


def _integer(e: Expr) -> int | None:
    """The integer a literal exponent stands for (``2``, ``-1``), else None."""
    if isinstance(e, Unary) and isinstance(e.x, Num):
        k = _integer(e.x)
        return None if k is None else -k
    if isinstance(e, Num) and e.value.denominator == 1:
        return int(e.value)
    return None


# --------------------------------------------------------------------------------------------------
# Building the tensor program
# --------------------------------------------------------------------------------------------------


class _Build:
    def __init__(self, checker: _Checker, dims: Mapping[str, sp.Symbol], values: dict[str, Node]):
        self.c = checker
        self.dims = dims
        self.values = values

    def dim(self, e: Expr, d: Any) -> sp.Symbol:
        r = self.c.dims.find(d)
        if not isinstance(r, str):
            what = "eye" if isinstance(e, Filled) and e.what == "eye" else f"{getattr(e, 'what', '')}(1)"
            raise ParseError(f"{self.c.where(e)}: the size of {what} does not follow from where it is used "
                             "(use it beside a declared vector or matrix, e.g. vector(1)'*x)")
        return self.dims[r]

    def shape(self, e: Expr) -> tuple[sp.Symbol, ...]:
        return tuple(self.dim(e, d) for d in self.c.types[id(e)].dims)

    def kind(self, e: Expr) -> str:
        return self.c.types[id(e)].kind

    def build(self, e: Expr) -> Node:
        if isinstance(e, Num):
            return Const(sp.Rational(e.value.numerator, e.value.denominator))
        if isinstance(e, Name):
            return self.values[e.name]
        if isinstance(e, Filled):
            if e.what == "eye":
                return Eye(self.shape(e)[0])
            return Const(e.value, self.shape(e))
        if isinstance(e, Transpose):
            x = self.build(e.x)
            return x.T if self.kind(e.x) == MATRIX else x  # vectors only change orientation
        if isinstance(e, Unary):
            return -self.build(e.x)
        if isinstance(e, Binary):
            return self.binary(e)
        if isinstance(e, Call):
            return self.call(e)
        raise AssertionError(type(e))

    def binary(self, e: Binary) -> Node:
        op, ka, kb = e.op, self.kind(e.a), self.kind(e.b)
        if self._product(e):
            return self.chain(e)
        if op in ("^", ".^") and isinstance(e.b, (Num, Unary)) and _number(e.b) is not None:
            a, k = self.build(e.a), _number(e.b)
            assert k is not None
            if op == "^" and ka == MATRIX:
                return _matrix_power(a, int(k))
            return a ** sp.Rational(k.numerator, k.denominator)
        a, b = self.build(e.a), self.build(e.b)
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op in (".*",) or (op == "*" and SCALAR in (ka, kb)):
            return a * b
        if op in ("/", "./"):
            return a / b
        return nn.power(a, b)  # a tensor or a symbolic scalar exponent

    def _product(self, e: Expr) -> bool:
        return isinstance(e, Binary) and e.op == "*" and SCALAR not in (self.kind(e.a), self.kind(e.b))

    def factors(self, e: Expr) -> list[Expr]:
        """The factors of a chain of matrix products ``A*B*x`` (scalar products end a chain)."""
        if self._product(e):
            assert isinstance(e, Binary)
            return self.factors(e.a) + self.factors(e.b)
        return [e]

    def chain(self, e: Binary) -> Node:
        """A chain of matrix products as one contraction (printed ``x^\top A B y``, not nested)."""
        fs = self.factors(e)
        nodes = [self.build(f) for f in fs]
        kinds = [self.kind(f) for f in fs]
        ins: list[tuple[int, ...]] = []
        fresh = iter(range(2 * len(fs)))
        prev: int | None = None  # the previous factor's column index (None: a column vector's "1")
        for k in kinds:
            left = (prev if prev is not None else next(fresh)) if k in (COL, MATRIX) else None
            right = next(fresh) if k in (ROW, MATRIX) else None
            ins.append(tuple(x for x in (left, right) if x is not None))
            prev = right
        flat = [x for t in ins for x in t]
        out = tuple(x for x in dict.fromkeys(flat) if flat.count(x) == 1)  # the first row and last column
        return nn.einsum(ins, tuple(out), nodes)  # a tensor or a symbolic scalar exponent

    def call(self, e: Call) -> Node:
        f = e.fn
        xs = [self.build(a) for a in e.args]
        x = xs[0]
        if f in _ELEMENTWISE:
            return _ELEMENTWISE[f](x)
        if len(xs) == 2:
            return (nn.maximum if f == "max" else nn.minimum)(xs[0], xs[1])
        simple: dict[str, Callable[[Node], Node]] = {
            "sum": nn.sum_, "mean": nn.mean, "norm1": nn.norm1, "norm2": nn.norm, "tr": nn.trace, "det": nn.det,
            "logdet": nn.logdet, "inv": nn.inv, "diag": nn.diag, "softmax": nn.softmax, "logsumexp": nn.logsumexp,
        }
        if f in simple:
            return simple[f](x)
        if f in ("max", "min"):  # of all entries
            return _max_all(x) if f == "max" else -_max_all(-x)
        raise AssertionError(f)


def _number(e: Expr) -> Fraction | None:
    if isinstance(e, Unary) and isinstance(e.x, Num):
        return -e.x.value
    if isinstance(e, Num):
        return e.value
    return None


def _matrix_power(a: Node, k: int) -> Node:
    if k == 0:
        return Eye(a.shape[0])
    base = nn.inv(a) if k < 0 else a
    out = base
    for _ in range(abs(k) - 1):
        out = out @ base
    return out


def _max_all(x: Node) -> Node:
    """The largest entry (of a matrix: the largest of its rows' maxima)."""
    while x.ndim:
        x = nn.max_(x, axis=-1)
    return x


# --------------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------------

_LOSS_NAMES = ("C", "L", "f", "loss_value")


def parse(text: str, wrt: str | Iterable[str] | None = None, **types: str) -> Model:
    r"""A model from an expression (or a program of ``name = expr`` lines) in matrixcalculus.org's language.

    Args:
        text: the expression, e.g. ``"sum(log(1 + exp(-y .* (X*w))))"``; lines ``name = expr`` (or ``;``)
            make a program whose last line is the loss. See :mod:`derive.parse` for the language.
        wrt: the variables to differentiate (a name or several); by default every declared variable the
            text uses. The others are inputs without a gradient.
        **types: the type of every variable: ``"scalar"``, ``"vector(n)"``, ``"matrix(n,p)"`` or ``"spd(n)"``.

    Returns:
        A :class:`~derive.program.Model` whose loss is the expression itself (no mean over samples); its
        parameters are the ``wrt`` variables, its Hessians (:attr:`~derive.program.Model.hessian_wrt`) those
        in the scalar and vector ones; ``Model.rebuild`` is this call.

    Raises:
        ParseError: one line naming the line and column and what was expected there, an unknown function
            (with the known ones) or an undeclared name (with the declared ones).
        ExpressionShapeError: shapes that do not fit, with both shapes.

    Example:
        >>> import derive
        >>> m = derive.parse("x'*A*x", x="vector(n)", A="matrix(n,n)", wrt="x")
        >>> derive.latex(derive.grad(m, "x"))
        'g_{x} = A x + A^\\top x'
        >>> derive.latex(derive.hessian(m, "x")[0])
        'H_{x} = A + A^\\top'
    """
    if not isinstance(text, str):
        raise TypeError(f"derive.parse takes the expression as a string, got {type(text).__name__}")
    wrt_names = [wrt] if isinstance(wrt, str) else (list(wrt) if wrt is not None else None)
    if wrt_names is not None and not all(isinstance(w, str) for w in wrt_names):
        raise TypeError(f"wrt must be a name or a list of names, got {wrt!r}")
    decls = {name: parse_type(name, t) for name, t in types.items()}
    for var in decls:
        if not var.isidentifier() or keyword.iskeyword(var) or var.startswith("_") or var in RESERVED:
            raise ParseError(f"variable name {var!r} cannot be used (a keyword or a name the generated code "
                             f"uses: {', '.join(sorted(RESERVED))})")
        if var in FUNCTIONS or var in _SPECIAL:
            raise ParseError(f"variable name {var!r} is the name of a function of the language")
    dim_names = sorted({d for dec in decls.values() for d in dec.dims})
    bad = [d for d in dim_names if d in RESERVED or d in FUNCTIONS or d in _SPECIAL]
    if bad:
        raise ParseError(f"dimension name {bad[0]!r} cannot be used (a function or a name the generated code uses)")
    clash = set(dim_names) & set(decls)
    if clash:
        raise ParseError(f"{', '.join(sorted(clash))} is used both as a variable and as a dimension; rename one")

    p = _Parser(text)
    statements = p.program()
    for st in statements:
        depth, deepest = _depth(st.expr)
        if depth > MAX_DEPTH:
            raise ParseError(f"{p.where(deepest)}: the expression is {depth} operations deep (a long chain such as "
                             f"a + b + c + ...); at most {MAX_DEPTH}: split it into lines name = expr")

    env: dict[str, Type] = {k: Type(d.kind, d.dims) for k, d in decls.items()}
    checker = _Checker(env, p.where)
    used: set[str] = set()
    defined: list[tuple[Statement, str]] = []
    for i, st in enumerate(statements):
        used |= {e.name for e in _walk(st.expr) if isinstance(e, Name) and e.name in decls}
        t = checker.infer(st.expr)
        last = i == len(statements) - 1
        name = st.name
        if name is None:
            if not last:
                raise ParseError(f"{p.where(st.expr)}: expected 'name = ...' (only the last line, the loss, may "
                                 "be a bare expression)")
            name = next(n for n in _LOSS_NAMES if n not in env)
        elif name in env:
            what = "declared variable" if name in decls else "name defined on an earlier line"
            raise ParseError(f"line {st.line}: {name!r} is a {what}; give the equation another name")
        elif (not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_") or name in RESERVED
              or name in FUNCTIONS or name in _SPECIAL or name in dim_names):
            raise ParseError(f"line {st.line}: {name!r} cannot name an equation (a keyword, a function, a "
                             "dimension or a name the generated code uses)")
        env[name] = t
        defined.append((st, name))
    loss_t = checker.types[id(statements[-1].expr)]
    if loss_t.kind != SCALAR:
        raise ExpressionShapeError(f"the loss (the {'last line' if len(statements) > 1 else 'expression'}) must be "
                                   f"a scalar, got {checker.dims.show(loss_t)} (sum(...) or norm2(...) make one)")
    if wrt_names is None:
        wrt_names = [k for k in decls if k in used]
    for w in wrt_names:
        if w not in decls:
            raise ParseError(f"wrt: {w!r} is not a declared variable; declared: {', '.join(decls) or '(none)'}")
        if w not in used:
            raise ParseError(f"wrt: the expression does not use {w!r}")
    if not wrt_names:
        raise ParseError("nothing to differentiate: the expression uses no declared variable")

    one_line = " ; ".join(ln.strip() for ln in text.strip().splitlines() if ln.strip())
    b = Builder("expression", one_line, "own expression")
    dims = {d: b.dim(d, DIM_DEFAULT, *DIM_RANGE) for d in dim_names if any(d in decls[k].dims for k in used)}
    values: dict[str, Node] = {}
    for k, dec in decls.items():
        if k not in used:
            continue
        shape = tuple(dims[d] for d in dec.dims)
        values[k] = (b.param(k, shape, _tex(k), domain=dec.domain) if k in wrt_names else
                     b.input(k, shape, _tex(k), domain=dec.domain))
    builder = _Build(checker, dims, values)
    for st, name in defined:
        node = builder.build(st.expr)
        _check_constants(node, f"line {st.line}" if len(statements) > 1 else "the expression")
        values[name] = b.eq(name, node, _tex(name))
    hess = tuple(w for w in wrt_names if decls[w].kind in (SCALAR, COL))
    m = b.model(reduction="sum", hessian=hess)
    args = [repr(text)] + ([f"wrt={wrt_names!r}"] if wrt is not None else [])
    args += [f"{k}={v!r}" for k, v in types.items()]
    m.rebuild = f"derive.parse({', '.join(args)})"
    return m


def _tex(name: str) -> str:
    """The LaTeX of a name as SymPy writes symbols: ``mu`` -> ``\\mu``, ``W1`` -> ``W_{1}``, ``x_hat`` -> ``x_{hat}``."""
    return sp.latex(sp.Symbol(name))


def _children(e: Expr) -> list[Expr]:
    return [c for c in (getattr(e, "x", None), getattr(e, "a", None), getattr(e, "b", None), *getattr(e, "args", ()))
            if isinstance(c, Expr)]


def _walk(e: Expr) -> Iterable[Expr]:
    stack = [e]
    while stack:
        x = stack.pop()
        yield x
        stack.extend(reversed(_children(x)))


def _depth(e: Expr) -> tuple[int, Expr]:
    """The depth of the tree of ``e`` and its deepest node (counted without recursion)."""
    best, deepest = 0, e
    stack = [(e, 1)]
    while stack:
        x, d = stack.pop()
        if d > best:
            best, deepest = d, x
        stack.extend((c, d + 1) for c in _children(x))
    return best, deepest


def _check_constants(node: Node, where: str) -> None:
    """No constant of the built equation is infinite, undefined or complex (a safety net behind the folding of
    constants in the checker: SymPy's exact arithmetic would otherwise carry ``zoo`` or ``I`` into the kernels)."""
    from .tensor import walk

    bad = (sp.zoo, sp.nan, sp.oo, sp.I)
    for n in walk([node]):
        for attr in ("value", "fn", "coef"):
            v = getattr(n, attr, None)
            if isinstance(v, sp.Basic) and v.has(*bad):
                raise ParseError(f"{where}: a constant of the expression is not a finite real number ({v}); "
                                 "check divisions by zero and roots or logarithms of negative numbers")

