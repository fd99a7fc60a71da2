"""The tensor IR's base: nodes (interned, immutable), their errors, graph walks and substitution.

Every primitive is a :class:`Node` subclass that holds, in one place, its shape rule, its reverse-mode rule
(``vjp``), its forward-mode rule (``jvp``), its LaTeX (``latex``) and its NumPy/PyTorch lowering (``lower``).
Shapes are tuples of SymPy expressions in the model's dimension symbols.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeAlias

import sympy as sp

Dim: TypeAlias = sp.Expr
Shape: TypeAlias = tuple[sp.Expr, ...]
Label: TypeAlias = Any  # einsum index labels: ints after canonicalisation, any hashable while building


class ShapeError(ValueError):
    """Shapes do not fit; the message names both shapes."""


class UnsupportedError(ValueError):
    """A construct dlmath cannot differentiate or lower; the message names it."""


def fmt_shape(shape: Shape) -> str:
    """``(n, p)`` style text of a shape."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


#: names the generated modules themselves use (imports, the kernel, its result): a model's tensors,
#: dimensions and constants may not take them
RESERVED_NAMES = frozenset({"np", "torch", "ops", "math", "loss", "kernel", "tape"})


def check_name(name: Any, what: str = "a name") -> str:
    """``name`` if it can name a variable of generated Python code, else a ``ValueError`` saying why.

    Refused: non-strings, non-identifiers, Python keywords (``lambda``, ``None``), names starting with ``__``,
    and names Python would read as another name (it NFKC-normalises identifiers: ``µ``, the micro sign,
    becomes ``μ``, the Greek letter, so a kernel argument ``µ`` could not be passed by that name).
    """
    import keyword
    import unicodedata

    if not isinstance(name, str):
        raise TypeError(f"{what} must be a string (a Python identifier), got {type(name).__name__}")
    if not name.isidentifier():
        raise ValueError(f"{what} {name!r} is not a valid Python identifier (letters, digits and _, "
                         f"not starting with a digit)")
    if keyword.iskeyword(name):
        raise ValueError(f"{what} {name!r} is a Python keyword; choose another name (e.g. {name}_)")
    if name.startswith("__"):
        raise ValueError(f"{what} {name!r} starts with '__' (reserved for Python): use an identifier without it")
    norm = unicodedata.normalize("NFKC", name)
    if norm != name:
        raise ValueError(f"{what} {name!r} is not in Python's normal form: Python reads it as {norm!r} "
                         f"(NFKC); write {norm!r}, or an ASCII name")
    return name


def as_expr(x: Any, what: str = "a size") -> sp.Expr:
    """A SymPy expression from an int, a SymPy expression or a float; never from a string.

    Text is refused: a string that reached SymPy's parser could run code (``sympify`` evaluates it).
    """
    if isinstance(x, sp.Basic):
        return x  # type: ignore[return-value]
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        if isinstance(x, str):
            raise TypeError(f"{what} must be a number or a dimension symbol, not the string {x!r}")
        try:
            import numbers

            if isinstance(x, numbers.Integral):
                return sp.Integer(int(x))
            if isinstance(x, numbers.Real):
                return sp.Float(float(x))
        except TypeError:
            pass
        raise TypeError(f"{what} must be a number or a dimension symbol, got {type(x).__name__}")
    return sp.Integer(x) if isinstance(x, int) else sp.Float(x)


def as_number(x: Any, what: str = "a number") -> sp.Expr:
    """An exact SymPy number for an int or float (0.1 -> 1/10 where that is the same float), a SymPy
    expression unchanged; strings and non-finite values are refused (never parsed or simplified as text)."""
    import math
    from fractions import Fraction

    if isinstance(x, sp.Basic):
        return x  # type: ignore[return-value]
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        if isinstance(x, str):
            raise TypeError(f"{what} must be a number, not the string {x!r}")
        try:
            x = float(x)
        except (TypeError, ValueError):
            raise TypeError(f"{what} must be a number, got {type(x).__name__}") from None
    if isinstance(x, int):
        return sp.Integer(x)
    if not math.isfinite(x):
        raise ValueError(f"{what} must be finite, got {x!r}")
    r = Fraction(x).limit_denominator(10**6)
    if float(r) == x:
        return sp.Rational(r.numerator, r.denominator)
    return sp.Float(x)


# --------------------------------------------------------------------------------------------------
# Nodes (hash-consed: structurally equal nodes are the same object)
# --------------------------------------------------------------------------------------------------

_INTERN: dict[tuple[Any, ...], Node] = {}
_SERIAL = itertools.count()


class Node:
    """Base of all tensor expressions. Nodes are immutable and interned (``a == b`` iff ``a is b``)."""

    shape: Shape
    serial: int
    kind: ClassVar[str] = "node"

    def children(self) -> tuple[Node, ...]:
        return ()

    def with_children(self, children: Sequence[Node]) -> Node:
        """This node rebuilt on new children (through the simplifying constructors)."""
        return self

    # -- rules; every primitive overrides these --------------------------------------------------
    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        """Adjoint contributions to each child, given the adjoint ``g`` of this node.

        ``out`` stands for this node's value (a ``Var`` when the node is a named equation), so that
        rules such as ``sigma' = sigma (1 - sigma)`` are written in terms of the named output.
        """
        raise NotImplementedError

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        """Tangent of this node (shape ``self.shape + tshape``) from the children's tangents."""
        raise NotImplementedError

    def latex(self, args: Sequence[str], printer: Any) -> str:
        raise NotImplementedError

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        raise NotImplementedError

    @property
    def ndim(self) -> int:
        return len(self.shape)

    # -- operator sugar for writing models --------------------------------------------------------
    def __add__(self, other: Any) -> Node:
        return _ops().binary(lambda a, b: a + b, self, other)

    def __radd__(self, other: Any) -> Node:
        return _ops().binary(lambda a, b: a + b, other, self)

    def __sub__(self, other: Any) -> Node:
        return _ops().binary(lambda a, b: a - b, self, other)

    def __rsub__(self, other: Any) -> Node:
        return _ops().binary(lambda a, b: a - b, other, self)

    def __mul__(self, other: Any) -> Node:
        return _ops().binary(lambda a, b: a * b, self, other)

    def __rmul__(self, other: Any) -> Node:
        return _ops().binary(lambda a, b: a * b, other, self)

    def __truediv__(self, other: Any) -> Node:
        return _ops().binary(lambda a, b: a / b, self, other)

    def __rtruediv__(self, other: Any) -> Node:
        return _ops().binary(lambda a, b: a / b, other, self)

    def __neg__(self) -> Node:
        ew = _ops()
        return ew.map_(-ew.ARG[0], [self])

    def __pow__(self, k: Any) -> Node:
        if isinstance(k, Node):
            return _ops().binary(_tensor_power, self, k)
        ew = _ops()
        return ew.map_(ew.ARG[0] ** as_expr(k, "an exponent"), [self])

    def __rpow__(self, base: Any) -> Node:
        return _ops().binary(_tensor_power, base, self)

    def __matmul__(self, other: Node) -> Node:
        from .contraction import matmul

        return matmul(self, other)

    @property
    def T(self) -> Node:
        if self.ndim != 2:
            raise ShapeError(f".T needs a matrix, got shape {fmt_shape(self.shape)}")
        from .contraction import einsum

        return einsum([(0, 1)], (1, 0), [self])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {fmt_shape(self.shape)}>"

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other


def _tensor_power(a: Any, b: Any) -> Any:
    """``a ** b`` for a tensor exponent: ``functions.power`` (PyTorch's derivatives at a zero base)."""
    from ..functions import power

    return power(a, b)


def _ops() -> Any:
    """The elementwise family (operator sugar builds maps; imported late: it is built on this module)."""
    from . import elementwise

    return elementwise


def _intern(cls: type, key: tuple[Any, ...], init: Callable[[Any], None]) -> Any:
    full = (cls, *key)
    node: Any = _INTERN.get(full)
    if node is None:
        node = object.__new__(cls)
        init(node)
        node.serial = next(_SERIAL)
        _INTERN[full] = node
    return node


def _key(x: Any) -> Any:
    """Intern key of a field: nodes by identity, tuples recursively."""
    if isinstance(x, Node):
        return ("node", id(x))
    if isinstance(x, tuple):
        return tuple(_key(v) for v in x)
    return x


def walk(roots: Iterable[Node], stop: Callable[[Node], bool] = lambda n: False) -> list[Node]:
    """Nodes reachable from ``roots`` in topological order (children first), not entering ``stop`` nodes."""
    order: list[Node] = []
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(r, False) for r in roots]
    while stack:
        n, done = stack.pop()
        if done:
            order.append(n)
            continue
        if id(n) in seen:
            continue
        seen.add(id(n))
        stack.append((n, True))
        if not stop(n):
            for c in reversed(n.children()):
                if id(c) not in seen:
                    stack.append((c, False))
    return order


def substitute(root: Node, mapping: dict[Node, Node]) -> Node:
    """``root`` with nodes replaced per ``mapping`` (rebuilt through the simplifying constructors)."""
    memo: dict[int, Node] = {}
    for n in walk([root], stop=lambda m: m in mapping):
        if n in mapping:
            memo[id(n)] = mapping[n]
        elif n.children():
            kids = [memo[id(c)] for c in n.children()]
            memo[id(n)] = n if all(a is b for a, b in zip(kids, n.children())) else n.with_children(kids)
        else:
            memo[id(n)] = n
    return memo[id(root)]
