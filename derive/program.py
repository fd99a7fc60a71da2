"""Models as programs of named tensor equations, in the book's notation.

A model is built by a small function with a :class:`Builder`: it declares dimensions, parameters and
inputs, then writes the equations one per line, as the book does (``z = W x + b``, ``\\hat y =
S_softmax(z)``, ``C = ...``). Equations are written *per sample* (column vectors, as in the book); inputs
marked ``batched`` get a leading sample axis in the arrays and in the generated code, and the loss is
``C = 1/n sum_i C_i`` (``reduction="mean"``) or ``sum_i C_i`` (``reduction="sum"``, layer entries).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from .primitives.base import RESERVED_NAMES, check_name
from .tensor import Node, ShapeError, Var, as_expr, fmt_shape, walk

__all__ = ["Equation", "Equations", "Model", "Builder", "ModelError"]


class ModelError(ValueError):
    """A model is used with wrong names, sizes or options; the message says what to fix."""


@dataclass(frozen=True)
class Equation:
    """``lhs = rhs``; ``kind`` is forward, adjoint, grad, hessian, tangent or update."""

    lhs: Var
    rhs: Node
    kind: str = "forward"
    note: str = ""
    #: The sample dimension that the batch form of a gradient or Hessian reduces over (else ``None``).
    batch_dim: Any = None
    #: How the batch form reduces: ``mean`` or ``sum``.
    reduction: str = "mean"

    @property
    def name(self) -> str:
        return self.lhs.name

    def _repr_latex_(self) -> str:
        from .latex import latex

        return "$" + latex(self) + "$"

    def __repr__(self) -> str:
        return f"<Equation {self.lhs.name} = ... {fmt_shape(self.lhs.shape)} [{self.kind}]>"


class Equations(list[Equation]):
    """A program: a list of equations that Jupyter shows as aligned LaTeX (``derive.backprop(m)``,
    ``m.equations``); otherwise an ordinary list."""

    def _repr_latex_(self) -> str:
        from .latex import latex

        return "$$" + latex(list(self)) + "$$" if self else "$$\\text{(no equations)}$$"


@dataclass(frozen=True)
class Scan:
    """A recurrence over a symbolic number of steps (see :class:`Model`).

    A model that is one recurrence (``Model.scan``) uses the first four fields: its equations are the step.
    A program of several recurrences (``Model.scans``, made with :meth:`Builder.scan`) also names each
    scan's step equations, its step loss (or none), its direction, the carries that start from the final
    state of an earlier scan, and the stacked states of earlier scans it reads whole.

    Attributes:
        time: the time dimension T of the scan.
        carries: (previous-state input, the equation or sequence input giving its next value); a carry
            whose next value is a sequence input (teacher forcing: ``y^{<t-1>}``) is data, not differentiated.
        sequences: the inputs read at step t (arrays (T, n, ...)).
        weight: the weight of each step's loss (1/T).
        name: the scan's name (programs of several scans).
        equations: the names of its step equations (empty: all of the model's).
        loss: the name of its step loss (``None``: the scan has no loss of its own).
        reverse: it runs t = T, ..., 1 and its carries hold the state of step t + 1.
        init: (carry, equation of an earlier scan): the carry starts from that equation's final value.
        stacks: (stacked variable (T, ...), equation of an earlier scan): all of its steps as one tensor.
    """

    time: sp.Symbol
    carries: tuple[tuple[str, str], ...]
    sequences: tuple[str, ...]
    weight: sp.Expr
    name: str = ""
    equations: tuple[str, ...] = ()
    loss: str | None = None
    reverse: bool = False
    init: tuple[tuple[str, str], ...] = ()
    stacks: tuple[tuple[Var, str], ...] = ()


@dataclass
class Model:
    """A zoo entry: named dimensions, parameters, inputs and the forward program.

    Attributes:
        name: the zoo name.
        title: a one-line description.
        section: the book section.
        dims: dimension name -> SymPy symbol.
        defaults: default sizes of the dimensions (small, so verification is fast).
        params: parameter name -> tensor symbol.
        inputs: input name -> tensor symbol (per-sample shape when ``batched``).
        equations: the forward program, in order; the last defines the loss.
        reduction: ``mean`` or ``sum`` over the sample axis, for per-sample models.
        sample: the sample dimension (``n``) of per-sample models, else ``None``.
        options: the options the entry was built with.
        diff_inputs: inputs whose gradient is reported too (layer entries).
        hessian_wrt: parameters whose Hessian is meaningful for this entry.
        newton: whether compiled kernels also return one Newton step.
        ranges: per dimension, the (min, max) sizes the verifier draws.
    """

    name: str
    title: str
    section: str
    dims: dict[str, sp.Symbol]
    defaults: dict[str, int]
    params: dict[str, Var]
    inputs: dict[str, Var]
    equations: list[Equation]
    reduction: str = "mean"
    sample: sp.Symbol | None = None
    options: dict[str, Any] = field(default_factory=dict)
    diff_inputs: tuple[str, ...] = ()
    hessian_wrt: tuple[str, ...] = ()
    newton: bool = False
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    adjoint_names: dict[str, tuple[str, str]] = field(default_factory=dict)
    inline_adjoints: frozenset[str] = frozenset()
    kinks: bool = False
    #: the hard value modes the verifier draws besides normal and small values ("large": inputs of a few
    #: hundred, i.e. logits of order 1e3, where stable forms matter)
    hard: tuple[str, ...] = ("large",)
    #: whether a finite difference of the loss is a meaningful check (False for ReLU-then-max-pool
    #: networks: piecewise linear with pieces at the scale of any usable step)
    finite_differences: bool = True
    #: numeric values of the named constants (hyperparameters) that the equations use as symbols
    constants: dict[str, float] = field(default_factory=dict)
    #: update programs: state name -> the equation giving its next value (empty for losses)
    update: dict[str, str] = field(default_factory=dict)
    #: recurrences: the equations are one time step ``t``; ``scan`` holds the time dimension T, the carries
    #: (previous-state input -> the equation of its next value), the inputs with a time axis (arrays
    #: (T, n, ...)), and the weight of each step's loss (1/T)
    scan: Scan | None = None
    #: programs of several recurrences (a stacked or bidirectional RNN, an encoder and a decoder): the scans
    #: in order, each naming its step equations (``m.equations`` holds them all, scan after scan)
    scans: tuple[Scan, ...] = ()
    #: printing hints for the book's notation (read by :mod:`derive.latex`, never by the engine):
    #: ``columns`` (dimensions printed as the column axis of a matrix: time steps, as X in R^{p x T}),
    #: ``index`` (dimension -> index style, e.g. ``{H: "h"}`` prints heads as W_q^h, ``{n: "(i)"}`` samples
    #: as z^{(i)}), ``symbols`` (constant name -> its LaTeX, e.g. ``p_keep -> p_{\mathrm{keep}}``)
    notation: dict[str, Any] = field(default_factory=dict)
    #: an independent torch forward to verify against: ``f(**tensors, **options) -> scalar loss`` on
    #: batch-first torch tensors named as the params and inputs (the PyTorch front end sets the user's
    #: module here); ``verify.check`` uses it before the zoo's references and the eager evaluation
    reference: Callable[..., Any] | None = None
    #: Python code that rebuilds this model, e.g. ``derive.models.get('conv2d', stride=2)`` or
    #: ``derive.parse("x'*A*x", x="vector(n)", A="matrix(n,n)")``; ``Reproduce:`` lines of reports use it
    rebuild: str | None = None

    @property
    def is_update(self) -> bool:
        """Whether this is an update program (an optimizer): state in, next state out, no loss."""
        return bool(self.update)

    @property
    def loss_var(self) -> Var:
        return self.equations[-1].lhs

    @property
    def loss(self) -> Node:
        """The right-hand side of the last equation, the loss (per sample for per-sample models)."""
        return self.equations[-1].rhs

    @property
    def recurrences(self) -> tuple[Scan, ...]:
        """The scans of the program: ``(scan,)`` for a recurrence, ``scans`` for several, else empty."""
        return (self.scan,) if self.scan is not None else self.scans

    @property
    def carries(self) -> list[str]:
        """The previous-state inputs of the recurrences (empty otherwise): internal, never arrays."""
        return [k for sc in self.recurrences for k, _ in sc.carries]

    @property
    def grad_names(self) -> list[str]:
        """Every parameter, then the differentiable inputs: the names of the gradient entries."""
        if self.update:
            return []
        if self.recurrences:
            return list(self.params)
        return list(self.params) + list(self.diff_inputs)

    def time_of(self, name: str) -> sp.Symbol | None:
        """The time dimension of the scan that reads input ``name`` as a sequence (else ``None``)."""
        for sc in self.recurrences:
            if name in sc.sequences:
                return sc.time
        return None

    def tensor(self, name: str) -> Var:
        """The parameter or input called ``name``."""
        if name in self.params:
            return self.params[name]
        if name in self.inputs:
            return self.inputs[name]
        known = ", ".join([*self.params, *self.inputs]) or "(none)"
        raise ModelError(f"{self.name} has no parameter or input {name!r}; it has: {known}")

    def sizes(self, **sizes: int) -> dict[sp.Symbol, int]:
        """Dimension symbol -> size, from the defaults overridden by ``sizes``."""
        unknown = set(sizes) - set(self.dims)
        if unknown:
            raise ModelError(f"{self.name} has no dimension {', '.join(sorted(unknown))}; "
                             f"its dimensions are: {', '.join(self.dims) or '(none)'}")
        out: dict[sp.Symbol, int] = {}
        for k, sym in self.dims.items():
            v = sizes.get(k, self.defaults.get(k))
            if v is None:
                raise ModelError(f"{self.name} needs the size of dimension {k!r}: pass {k}=...")
            if not isinstance(v, (int,)) or isinstance(v, bool) or v < 1:
                raise ModelError(f"dimension {k} of {self.name} must be a positive integer, got {v!r}")
            out[sym] = int(v)
        return out

    def array_shape(self, var: Var, sizes: Mapping[sp.Symbol, int]) -> tuple[int, ...]:
        """Concrete array shape of a tensor symbol (with the leading sample axis if batched, and the time
        axis before it for the sequences of a recurrence)."""
        shape = tuple(int(as_expr(d).subs(sizes)) for d in var.shape)
        for d, k in zip(var.shape, shape):
            if k < 1:
                raise ShapeError(self.too_small(var.name, d, k, sizes))
        if var.batched:
            assert self.sample is not None
            shape = (sizes[self.sample], *shape)
        time = self.time_of(var.name)
        if time is not None:
            shape = (sizes[time], *shape)
        return shape

    def too_small(self, name: str, d: Any, k: int, sizes: Mapping[Any, int]) -> str:
        """The message for an axis of ``name`` whose size ``d`` comes out as ``k < 1`` at ``sizes``: the
        sizes given, the model's window options (a kernel larger than the padded input), and the fix."""
        used = ", ".join(f"{s} = {sizes[s]}" for s in sorted(as_expr(d).free_symbols, key=str) if s in sizes)
        opts = ", ".join(f"{o}={self.options[o]!r}" for o in ("kernel", "stride", "padding", "dilation")
                         if o in self.options)
        why = f" with {opts}" if opts else ""
        return (f"{self.name}: {name} would have an axis of size {d} = {k} at {used}{why}: the input is "
                f"smaller than the window; give larger inputs (or a smaller kernel, more padding)")

    def array_dims(self, var: Var) -> tuple[Any, ...]:
        """The symbolic shape of ``var``'s array (sample and time axes included)."""
        dims = ((self.sample,) if var.batched else ()) + tuple(var.shape)
        time = self.time_of(var.name)
        if time is not None:
            dims = (time, *dims)
        return dims

    def shapes(self, **sizes: int) -> dict[str, tuple[int, ...]]:
        """Array shape of every parameter and input, e.g. ``m.shapes(n=8, p=3, K=4)``."""
        sz = self.sizes(**sizes)
        return {name: self.array_shape(v, sz) for name, v in {**self.params, **self.inputs}.items()
                if name not in self.carries}

    def __post_init__(self) -> None:
        if not isinstance(self.equations, Equations):
            self.equations = Equations(self.equations)

    def _repr_latex_(self) -> str:
        from .latex import latex

        return "$$" + latex(self) + "$$"

    def __repr__(self) -> str:
        return (f"<Model {self.name}{f' ({self.section})' if self.section else ''}: params {list(self.params)}, "
                f"inputs {list(self.inputs)}>")


class Builder:
    r"""Writes a model of one's own: declare dimensions, parameters and inputs, then the equations in order.

    The model is a program of named tensor equations over *symbolic* dimensions, exactly as the zoo's
    entries are (they are written with this class too), so :func:`derive.grad`, :func:`derive.backprop`,
    :func:`derive.hessian`, :func:`derive.latex`, :func:`numeric.compile` and :func:`verify.check` take it
    as they take a zoo entry. :func:`verify.check` needs no reference for it: the forward program is
    evaluated eagerly in PyTorch and differentiated by ``torch.autograd``.

    Args:
        name: the model's name (it names the generated kernel; an identifier reads best).
        title: a one-line description (default: the name); only printed in headers.
        section: where it comes from, e.g. a book section (default ``"own model"``); only printed in headers.
        options: the options it was built with (reported by :attr:`Model.options`).

    Steps:
        1. :meth:`dim` for every dimension (its default size and the range the verifier draws sizes from);
           :meth:`samples` for the sample dimension of a per-sample model.
        2. :meth:`param` for what is differentiated (``g_<name>`` in the results), :meth:`input` for data;
           ``domain=`` says how the verifier draws values (``real``, ``spd``, ``simplex``, ``unit``,
           ``positive``, ``labels`` for integer class indices ...) and what the kernels check.
        3. :meth:`eq` for each equation ``name = rhs``, built from :mod:`derive.nn` (``W @ x`` is a matrix
           product, ``+ - * /`` are elementwise with broadcasting of scalars); the last one is the loss, a
           scalar. :meth:`const` names a hyperparameter.
        4. :meth:`model` finishes it: ``reduction``, the inputs whose gradient is reported too
           (``diff_inputs``) and the parameters whose Hessian is meaningful (``hessian``).

    Per-sample models and the batch axis:
        Equations are written *per sample*, as the book writes them: ``x`` is one sample's column vector,
        ``z = W x + b``. Declare the sample dimension with :meth:`samples` and mark the data
        ``batched=True``: the arrays then carry a leading sample axis (``X`` of shape ``(n, p)``, row ``i``
        the sample :math:`x^{(i)}`, PyTorch's batch-first layout), the generated code works on the whole
        batch, and the loss is the mean of the per-sample losses, :math:`C = \frac{1}{n} \sum_i C^{(i)}`
        (``reduction="mean"``; ``"sum"`` for their sum). Parameters are shared by all samples. The
        per-sample gradients print as the book writes them (``g_W = \delta x^\top``) and, with
        ``derive.latex(..., batch=True)``, averaged over the batch in matrix form with samples as columns
        (``g_W = \frac{1}{n} \Delta X^\top``). Without :meth:`samples` the model is one expression and
        the loss is its last equation itself (:func:`derive.parse` makes such models).

    Example:
        A model with no batch axis, its gradient and Hessian:

        >>> import derive
        >>> from derive import nn
        >>> b = derive.Builder("ridge")
        >>> n, p = b.dim("n", 5), b.dim("p", 3)
        >>> w = b.param("w", (p,))
        >>> X, y = b.input("X", (n, p)), b.input("y", (n,))
        >>> lam = b.const("lam", 0.1, tex=r"\lambda")
        >>> r = b.eq("r", X @ w - y)
        >>> C = b.eq("C", nn.dot(r, r) + lam * nn.dot(w, w))
        >>> m = b.model(reduction="sum", hessian=["w"])
        >>> derive.latex(derive.grad(m, "w"))
        'g_{w} = 2 (\\lambda w + X^\\top r)'
        >>> derive.latex(derive.hessian(m, "w")[0])
        'H_{w} = 2 (\\lambda I + X^\\top X)'

        A per-sample two-layer network with a batch axis (arrays ``X`` of shape ``(n, p)``, ``Y`` of
        shape ``(n, q)``), its per-sample and batch gradients:

        >>> b = derive.Builder("two_layer", "a two-layer regression network")
        >>> n = b.samples("n", 4)
        >>> p, h, q = b.dim("p", 3), b.dim("h", 4), b.dim("q", 2)
        >>> W1, W2 = b.param("W1", (h, p), "W_1"), b.param("W2", (q, h), "W_2")
        >>> x = b.input("X", (p,), "x", batched=True)
        >>> y = b.input("Y", (q,), "y", batched=True)
        >>> a = b.eq("a", nn.tanh(W1 @ x), "a", adjoint=("zeta", r"\zeta"))
        >>> C = b.eq("C", nn.norm2(W2 @ a - y), "C")
        >>> m = b.model()
        >>> m.shapes(n=8, p=3, h=4, q=2)["X"]
        (8, 3)
        >>> derive.latex(derive.grad(m, "W2"))
        'g_{W_2} = 2 (W_2 a - y) a^\\top'
        >>> derive.latex(derive.grad(m, "W2"), batch=True).split(",")[0]
        'g_{W_2} = \\frac{2}{n} (W_2 A - Y) A^\\top'
    """

    def __init__(self, name: str, title: str | None = None, section: str | None = None,
                 options: Mapping[str, Any] | None = None):
        if not isinstance(name, str) or not name:
            raise ModelError(f"a model's name must be a non-empty string, got {name!r}")
        self.name = name
        self.title = name if title is None else title
        self.section = "own model" if section is None else section
        self.options = dict(options or {})
        self.dims: dict[str, sp.Symbol] = {}
        self.defaults: dict[str, int] = {}
        self.ranges: dict[str, tuple[int, int]] = {}
        self.params: dict[str, Var] = {}
        self.inputs: dict[str, Var] = {}
        self.equations: list[Equation] = Equations()
        self.adjoints: dict[str, tuple[str, str]] = {}
        self.inline: set[str] = set()
        self.sample: sp.Symbol | None = None
        self.constants: dict[str, float] = {}
        self.notation: dict[str, Any] = {}
        self._names: set[str] = set()
        self._scans: list[Scan] = []
        self._scan_start = 0
        self._stacks: dict[Var, str] = {}
        #: the left-hand sides defined so far -> their right-hand sides (read by _centered_axis)
        self._defs: dict[Var, Node] = {}
        self._defs_n = 0

    def dim(self, name: str, default: int, lo: int = 1, hi: int = 5, tex: str | None = None) -> sp.Symbol:
        """Declare a dimension with its default size and the range the verifier draws from."""
        for what, v in (("default size", default), ("lo", lo), ("hi", hi)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ModelError(f"{self.name}: dimension {name!r}: {what} must be a positive integer, got {v!r}")
        if lo > hi:
            raise ModelError(f"{self.name}: dimension {name!r}: lo={lo} is above hi={hi}")
        if not isinstance(tex or name, str):
            raise ModelError(f"{self.name}: a dimension's name must be a string, got {type(tex or name).__name__}")
        sym = sp.Symbol(tex or name, integer=True, positive=True)
        if not str(sym).isidentifier() or str(sym) in self._names:
            raise ModelError(f"{self.name}: dimension {str(sym)!r} must be a Python identifier distinct from the "
                             f"parameter and input names (generated code reads it off an array shape)")
        self._claim(str(sym), "dimension")
        self.dims[name] = sym
        self.defaults[name] = default
        self.ranges[name] = (lo, hi)
        return sym

    def samples(self, name: str = "n", default: int = 5, lo: int = 1, hi: int = 6) -> sp.Symbol:
        """Declare the sample dimension: batched inputs carry it as their leading array axis."""
        self.sample = self.dim(name, default, lo, hi)
        return self.sample

    def const(self, name: str, value: float, tex: str | None = None) -> sp.Symbol:
        """A named constant (a hyperparameter): a symbol in the equations, ``value`` in the kernels.

        The LaTeX follows SymPy's names (``alpha`` prints as ``\\alpha``, ``beta1`` as ``\\beta_{1}``) unless
        ``tex`` is given; the printed equations list the values once below them.
        """
        import math

        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ModelError(f"{self.name}: constant {name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ModelError(f"{self.name}: constant {name} must be finite, got {value!r}")
        self._claim(name, "constant")
        self.constants[name] = float(value)
        if tex is not None:
            self.notation.setdefault("symbols", {})[name] = tex
        return sp.Symbol(name, real=True)

    def _claim(self, name: str, what: str = "name") -> None:
        """Take ``name`` for a variable of the generated code: a valid, unused, unreserved identifier."""
        try:
            check_name(name, f"{self.name}: {what}")
        except (TypeError, ValueError) as e:
            raise ModelError(str(e)) from None
        if name in RESERVED_NAMES:
            raise ModelError(f"{self.name}: {what} {name!r} is reserved: the generated code uses "
                             f"{', '.join(sorted(RESERVED_NAMES))}; choose another name (e.g. {name}_)")
        if name in self._names:
            raise ModelError(f"{self.name}: the name {name!r} is used twice")
        self._names.add(name)

    def param(self, name: str, shape: Sequence[Any], tex: str | None = None, grad_tex: str | None = None,
              domain: str = "real") -> Var:
        """A parameter; its gradient is reported as ``g_<name>``. ``domain`` is ``real``, or e.g. ``spd``
        (a symmetric positive definite matrix: checked by the kernels, drawn so by the verifier; its gradient
        treats the entries as free, as torch does)."""
        if domain == "labels":
            raise ModelError(f"{self.name}: parameter {name!r} cannot hold integer labels (they have no "
                             f"gradient); declare it with Builder.input(..., domain='labels')")
        self._claim(name, "parameter")
        self._claim("g_" + name)  # its gradient's name in generated code
        v = Var(name, tuple(shape), "param", tex, domain=domain)
        self.params[name] = v
        if grad_tex:
            self.adjoints[name] = ("g_" + name, grad_tex)
        return v

    def input(self, name: str, shape: Sequence[Any], tex: str | None = None, batched: bool = False,
              domain: str = "real", adjoint: tuple[str, str] | None = None) -> Var:
        """An input; ``batched`` inputs are per-sample tensors with a leading sample axis in arrays."""
        if batched and self.sample is None:
            raise ModelError(f"{self.name}: declare the sample dimension before batched input {name!r}")
        self._claim(name, "input")
        v = Var(name, tuple(shape), "input", tex, batched=batched, domain=domain)
        self.inputs[name] = v
        if adjoint:
            self._claim(adjoint[0])
            self.adjoints[name] = adjoint
        return v

    def eq(self, name: str, rhs: Node, tex: str | None = None, adjoint: tuple[str, str] | str | None = None,
           note: str = "") -> Var:
        """Append the equation ``name = rhs``; ``adjoint`` names its adjoint as (identifier, LaTeX), or is
        ``"inline"`` to keep its adjoint inside the equations that use it."""
        from .tensor import Map, check_scalar

        if not isinstance(rhs, Node):
            raise TypeError(f"{self.name}: equation {name!r} needs a tensor expression, got {type(rhs).__name__}")
        for n in walk([rhs]):
            if isinstance(n, Map):
                check_scalar(n.fn, f"equation {name!r} of {self.name}")
        self._claim(name, "equation")
        batched = any(isinstance(n, Var) and n.batched for n in walk([rhs]))
        axis = self._centered_axis(rhs)
        v = Var(name, rhs.shape, "var", tex, batched=batched,
                domain=f"centered:{axis}" if axis is not None else "real")
        self.equations.append(Equation(v, rhs, "forward", note))
        if isinstance(adjoint, str):
            if adjoint != "inline":
                raise ModelError(f"{self.name}: adjoint of {name!r} must be (identifier, LaTeX) or 'inline'")
            self.inline.add(name)
        elif adjoint:
            self._claim(adjoint[0])  # adjoints are variables of the generated code too: names stay unique
            self.adjoints[name] = adjoint
        return v

    def _centered_axis(self, rhs: Node) -> int | None:
        """The axis along which ``rhs`` sums to zero, when that follows from its form: ``x - mean(x)``
        broadcast back along the axis, or a centered tensor scaled by something constant along it."""
        from .tensor import ARG, Einsum, Map, _centered, _constant_along

        if not isinstance(rhs, Map) or rhs.ndim == 0:
            return None
        if self._defs_n != len(self.equations):  # kept up to date, not rebuilt per equation (quadratic in depth)
            for eq in self.equations[self._defs_n:]:
                self._defs[eq.lhs] = eq.rhs
            self._defs_n = len(self.equations)
        defs = self._defs
        fn, args = rhs.fn, rhs.args
        if fn.is_Add and len(fn.args) == 2 and len(args) == 2:
            for i, j in ((0, 1), (1, 0)):
                if fn != ARG[i] - ARG[j]:
                    continue
                b = args[j]
                if b.ndim == 0 and args[i].ndim == 1:  # a vector minus its own mean (a scalar)
                    src0 = defs.get(b, b) if isinstance(b, Var) else b
                    if (isinstance(src0, Einsum) and len(src0.operands) == 1 and src0.operands[0] is args[i]
                            and src0.coef == 1 / args[i].shape[0]):
                        return 0
                if not (isinstance(b, Einsum) and len(b.operands) == 1):
                    continue
                spread = [p for p, lab in enumerate(b.out) if all(lab not in l for l in b.ins)]
                if len(spread) != 1:
                    continue
                src = b.operands[0]
                src = defs.get(src, src) if isinstance(src, Var) else src
                if (isinstance(src, Einsum) and len(src.operands) == 1 and src.operands[0] is args[i]
                        and src.coef == 1 / args[i].shape[spread[0]]
                        and len(src.out) == args[i].ndim - 1):
                    return spread[0]
        if fn.is_Mul:
            for i, a in enumerate(args):
                for p in range(rhs.ndim):
                    if (_centered(a, p) and sp.Mul.make_args(fn).count(ARG[i]) == 1
                            and all(_constant_along(b, p) is not None for j, b in enumerate(args) if j != i)
                            and not any(ARG[i] in f.free_symbols and f != ARG[i] for f in sp.Mul.make_args(fn))):
                        return p
        return None

    def gradient(self, of: Var, wrt: Var, name: str, tex: str | None = None) -> Var:
        r"""Append the derived gradient :math:`\nabla_{w} f` of the scalar ``of`` with respect to ``wrt`` to the
        program, as equations (a gradient inside a program: a gradient penalty, a Lipschitz constraint).

        The gradient is derived by reverse mode over the equations written so far (``of`` and the equations
        it depends on), exactly as :func:`derive.backprop` derives a loss's gradient, and appended as
        ordinary equations; the program stays a program, so the loss's own gradient (``derive.backprop`` of
        the whole model) differentiates these equations again: second derivatives, derived, not written.

        Equations are per sample: for a per-sample ``of`` (the critic's value :math:`D(\hat x^{(i)})`) the
        gradient is per sample too, :math:`\nabla_{\hat x^{(i)}} D(\hat x^{(i)})`.

        Args:
            of: a scalar: the left-hand side of an equation of this program.
            wrt: a parameter, an input or the left-hand side of an earlier equation.
            name: the identifier of the gradient (an equation name).
            tex: its LaTeX (default ``\nabla_{w} f`` from the two names).

        Returns:
            The gradient, a variable shaped like ``wrt``. Intermediate adjoints that several uses share are
            named ``<name>_<variable>`` and print as :math:`\partial_{v} f`.

        Raises:
            ModelError: ``of`` is not a scalar equation of this program, or ``wrt`` is not a tensor of it.

        Example:
            >>> import derive
            >>> from derive import nn
            >>> b = derive.Builder("penalty", "a gradient penalty", "own model")
            >>> n = b.samples("n", 3)
            >>> p = b.dim("p", 2)
            >>> w = b.param("w", (p,))
            >>> x = b.input("X", (p,), "x", batched=True)
            >>> f = b.eq("f", nn.tanh(nn.dot(w, x)), "f")
            >>> g = b.gradient(f, x, "g_x")
            >>> derive.latex(b.equations[-1])
            '\\nabla_{x} f = (1 - f^{2}) w'
        """
        from .autodiff import backprop
        from .tensor import substitute

        lhs = {eq.lhs: i for i, eq in enumerate(self.equations)}
        if not isinstance(of, Var) or of not in lhs:
            known = ", ".join(eq.lhs.name for eq in self.equations) or "(none yet)"
            raise ModelError(f"{self.name}: Builder.gradient takes the gradient of an equation of the program "
                             f"(one of: {known}), got {of!r}")
        if of.shape != ():
            raise ShapeError(f"{self.name}: Builder.gradient needs a scalar (per sample) to differentiate; "
                             f"{of.name} has shape {fmt_shape(of.shape)} (sum it first)")
        known_vars = {**self.params, **self.inputs, **{eq.lhs.name: eq.lhs for eq in self.equations}}
        if not isinstance(wrt, Var) or known_vars.get(wrt.name) is not wrt:
            raise ModelError(f"{self.name}: Builder.gradient differentiates with respect to a parameter, an input "
                             f"or an equation of the program ({', '.join(known_vars) or 'none'}), got {wrt!r}")
        if wrt in lhs and lhs[wrt] >= lhs[of]:
            raise ModelError(f"{self.name}: {of.name} does not depend on {wrt.name}, which is defined after it")
        grad_tex = tex or rf"\nabla_{{{wrt.tex}}} {of.tex}"
        # the sub-program from wrt to of (earlier equations do not depend on wrt: their variables are leaves)
        start = lhs[wrt] + 1 if wrt in lhs else 0
        sub = Model(name=f"{self.name}.{name}", title="", section="", dims=self.dims, defaults=self.defaults,
                    params={}, inputs={wrt.name: wrt}, equations=list(self.equations[start : lhs[of] + 1]),
                    reduction="sum", sample=self.sample, diff_inputs=(wrt.name,),
                    adjoint_names={wrt.name: (name, grad_tex)}, inline_adjoints=frozenset(self.inline))
        mapping: dict[Node, Node] = {}
        out: Var | None = None
        for eq in backprop(sub):
            rhs = substitute(eq.rhs, mapping) if mapping else eq.rhs
            if eq.kind == "grad":
                out = self.eq(name, rhs, grad_tex)
            else:  # a shared intermediate adjoint: named after the gradient, printed as a partial derivative
                base = eq.lhs.name[: -len("_bar")] if eq.lhs.name.endswith("_bar") else eq.lhs.name
                src = known_vars.get(base)
                part = rf"\partial_{{{src.tex if src is not None else base}}} {of.tex}"
                mapping[eq.lhs] = self.eq(f"{name}_{base}", rhs, part)
        assert out is not None
        return out

    def model(self, reduction: str = "mean", diff_inputs: Sequence[str] = (), hessian: Sequence[str] = (),
              newton: bool = False, kinks: bool = False, hard: Sequence[str] = ("large",)) -> Model:
        """Finish the model; the last equation is the loss (a scalar, per sample in a per-sample model).

        Args:
            reduction: ``"mean"`` (the loss is the mean of the per-sample losses) or ``"sum"``; a model
                without :meth:`samples` has one "sample", so both give the last equation itself.
            diff_inputs: inputs whose gradient is reported too (``grad`` holds them beside the parameters).
            hessian: parameters whose Hessian :func:`derive.hessian` and ``numeric.compile(hessian=...)`` give.
            newton: whether compiled kernels also return one Newton step (needs ``hessian``).
            kinks: whether the model has non-smooth points (ReLU, abs, max): the verifier then also draws
                values at the kinks (compared with torch under its subgradient conventions) and allows the
                finite difference a looser tolerance.
            hard: the hard value cases the verifier adds for per-sample models (``"large"``: large values,
                e.g. saturated logits).
        """
        if not self.equations:
            raise ModelError(f"{self.name} has no equations")
        loss = self.equations[-1].lhs
        if loss.shape != ():
            raise ShapeError(f"{self.name}: the last equation must be a scalar loss, "
                             f"got shape {fmt_shape(loss.shape)}")
        return Model(
            name=self.name, title=self.title, section=self.section, dims=self.dims, defaults=self.defaults,
            params=self.params, inputs=self.inputs, equations=self.equations, reduction=reduction,
            sample=self.sample, options=self.options, diff_inputs=tuple(diff_inputs),
            hessian_wrt=tuple(hessian), newton=newton, ranges=self.ranges, adjoint_names=self.adjoints,
            kinks=kinks, constants=self.constants, hard=tuple(hard), inline_adjoints=frozenset(self.inline),
            notation=self.notation,
        )

    def state(self, name: str, shape: Sequence[Any], tex: str | None = None, domain: str = "real") -> Var:
        """A state variable of an update program (``theta``, ``v``, ``s``, ``t``); ``domain="count"`` for a
        step count (a non-negative integer, checked by the kernels)."""
        self._claim(name, "state")
        v = Var(name, tuple(shape), "param", tex, domain=domain)
        self.params[name] = v
        return v

    def scan_model(self, time: sp.Symbol, carries: Mapping[str, Var], sequences: Sequence[str],
                   weight: Any, kinks: bool = False) -> Model:
        """Finish a recurrence: the equations are one step; ``carries`` maps each previous-state input
        (``h^{<t-1>}``, zero at t = 0) to the equation of its next value; ``sequences`` are the inputs with
        a time axis; the loss is ``weight * sum_t`` of the last equation (per sample, then averaged)."""
        taken = {n for n in self._names if n == "t" or any(n == f"{s}_t" for s in sequences)}
        if taken:
            raise ModelError(f"{self.name}: the name {sorted(taken)[0]!r} is reserved in a recurrence (the generated "
                             f"loop uses t and <sequence>_t); choose another name")
        model = self.model(kinks=kinks, hard=())
        for k, v in carries.items():
            if k not in self.inputs or v.shape != self.inputs[k].shape:
                raise ModelError(f"{self.name}: carry {k!r} must be an input shaped like {v.name}")
        model.scan = Scan(time, tuple((k, v.name) for k, v in carries.items()), tuple(sequences), as_expr(weight, 'a step weight'))
        return model

    # -- programs of several recurrences ------------------------------------------------------------
    def scan(self, name: str, time: sp.Symbol, carries: Mapping[str, Var], sequences: Sequence[str] = (),
             loss: Var | None = None, weight: Any = None, reverse: bool = False,
             init: Mapping[str, Var] | None = None) -> Scan:
        """Close a scan of a program of several recurrences: the equations written since the previous scan
        are its step at a general t.

        Args:
            name: the scan's name (an identifier: it names the loops of the generated code).
            time: its time dimension.
            carries: previous-state input -> its next value: an equation of this step, or a sequence input
                (teacher forcing: the step reads ``y^{<t-1>}``, zero at the first step; data, not differentiated).
            sequences: the inputs it reads at step t (arrays (T, n, ...)).
            loss: its step loss ``C^{<t>}`` (a scalar equation of the step), if it has one; the program's loss
                sums ``weight * sum_t C^{<t>}`` over the scans that have one.
            weight: the weight of each step's loss (default 1/T).
            reverse: run t = T, ..., 1; its carries then hold the state of step t + 1 (a bidirectional RNN).
            init: carry -> an equation of an earlier scan that is a carried state: the carry starts from its
                final value (a decoder starting from the encoder's last state) instead of zero.

        Equations of earlier scans with the same time dimension are read at the same step t (a stacked
        layer reads the states of the layer below, a head reads both directions); :meth:`stack` gives all
        steps of one as a tensor (attention over the encoder states).
        """
        if not name.isidentifier():
            raise ModelError(f"{self.name}: scan name {name!r} must be a Python identifier")
        if any(sc.name == name for sc in self._scans):
            raise ModelError(f"{self.name}: the scan name {name!r} is used twice")
        step = self.equations[self._scan_start:]
        if not step:
            raise ModelError(f"{self.name}: scan {name!r} has no equations; write its step before closing it")
        own = {eq.lhs.name: eq.lhs for eq in step}
        earlier = {n: sc for sc in self._scans for n in sc.equations}
        for k in sequences:
            if k not in self.inputs:
                raise ModelError(f"{self.name}: sequence {k!r} of scan {name!r} is not an input; inputs: "
                                 f"{', '.join(self.inputs) or '(none)'}")
            for sc in self._scans:
                if k in sc.sequences and sc.time != time:
                    raise ModelError(f"{self.name}: input {k!r} is read over {sc.time} by scan {sc.name!r} and "
                                     f"over {time} by {name!r}; a sequence has one time axis")
        pairs = []
        for k, v in carries.items():
            if k not in self.inputs or v.shape != self.inputs[k].shape:
                raise ModelError(f"{self.name}: carry {k!r} must be an input shaped like {v.name}")
            if v.name not in own and v.name not in sequences:
                raise ModelError(f"{self.name}: the next value of carry {k!r} must be an equation of scan "
                                 f"{name!r} or one of its sequences, got {v.name!r}")
            pairs.append((k, v.name))
        finals = {nxt: sc for sc in self._scans for _, nxt in sc.carries if nxt in sc.equations}
        starts = []
        for k, v in (init or {}).items():
            if k not in carries:
                raise ModelError(f"{self.name}: init names {k!r}, which is not a carry of scan {name!r}")
            if v.name not in finals:
                raise ModelError(f"{self.name}: carry {k!r} can start from the final state of an earlier scan "
                                 f"(one of: {', '.join(finals) or '(none)'}), not {v.name!r}")
            if v.shape != self.inputs[k].shape:
                raise ShapeError(f"{self.name}: carry {k!r} has shape {fmt_shape(self.inputs[k].shape)}, its "
                                 f"start {v.name} has {fmt_shape(v.shape)}")
            starts.append((k, v.name))
        stacks = []
        for n in walk([eq.rhs for eq in step]):
            if not isinstance(n, Var):
                continue
            if n.name in earlier and earlier[n.name].time != time:
                raise ModelError(f"{self.name}: scan {name!r} reads {n.name} of scan {earlier[n.name].name!r} "
                                 f"step by step, but their times differ ({earlier[n.name].time} and {time}); "
                                 f"read all of its steps with Builder.stack")
            if n in self._stacks and (n, self._stacks[n]) not in stacks:
                stacks.append((n, self._stacks[n]))
        if loss is not None and (loss.name not in own or loss.shape != ()):
            raise ModelError(f"{self.name}: the loss of scan {name!r} must be a scalar equation of its step")
        w = as_expr(weight if weight is not None else (1 / time if loss is not None else 0), "a step weight")
        sc = Scan(time, tuple(pairs), tuple(sequences), w, name, tuple(own), loss.name if loss else None,
                  bool(reverse), tuple(starts), tuple(stacks))
        self._scans.append(sc)
        self._scan_start = len(self.equations)
        return sc

    def stack(self, name: str, source: Var, tex: str | None = None) -> Var:
        """All steps of ``source`` (an equation of a closed scan) as one tensor of shape ``(T, ...)``, e.g.
        the encoder states ``H = [h^{<1>}, ..., h^{<T>}]`` that a decoder attends over."""
        sc = next((sc for sc in self._scans if source.name in sc.equations), None)
        if sc is None:
            raise ModelError(f"{self.name}: {source.name!r} is not an equation of a closed scan; stack the "
                             f"states of a scan after closing it with Builder.scan")
        self._claim(name)
        v = Var(name, (sc.time, *source.shape), "var", tex, batched=source.batched)
        self._stacks[v] = source.name
        return v

    def scans_model(self, kinks: bool = False) -> Model:
        """Finish a program of several recurrences (each closed with :meth:`scan`)."""
        if not self._scans:
            raise ModelError(f"{self.name}: no scan was closed; use Builder.scan, or Builder.scan_model for "
                             f"a single recurrence")
        if self._scan_start != len(self.equations):
            left = ", ".join(eq.lhs.name for eq in self.equations[self._scan_start:])
            raise ModelError(f"{self.name}: equations {left} belong to no scan; close them with Builder.scan")
        if not any(sc.loss for sc in self._scans):
            raise ModelError(f"{self.name}: no scan has a loss; pass loss= to Builder.scan")
        last = self._scans[-1]
        if last.loss != self.equations[-1].lhs.name:
            raise ModelError(f"{self.name}: the last equation must be the loss of the last scan")
        model = self.model(kinks=kinks, hard=())
        model.scans = tuple(self._scans)
        return model

    def update_model(self, next_state: Mapping[str, Var]) -> Model:
        """Finish an update program: ``next_state`` maps each state name to the variable of its next value."""
        missing = [k for k in self.params if k not in next_state]
        if missing:
            raise ModelError(f"{self.name}: no next value for state {', '.join(missing)}")
        defined = {eq.lhs.name for eq in self.equations}
        for k, v in next_state.items():
            if v.name not in defined:
                raise ModelError(f"{self.name}: the next value of {k} must be an equation, got {v.name!r}")
            if v.shape != self.params[k].shape:
                raise ShapeError(f"{self.name}: next {k} has shape {fmt_shape(v.shape)}, the state has "
                                 f"{fmt_shape(self.params[k].shape)}")
        return Model(
            name=self.name, title=self.title, section=self.section, dims=self.dims, defaults=self.defaults,
            params=self.params, inputs=self.inputs, equations=self.equations, sample=self.sample,
            options=self.options, ranges=self.ranges, constants=self.constants,
            update={k: v.name for k, v in next_state.items()}, notation=self.notation,
        )
