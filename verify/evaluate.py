r"""The generic reference: any model's forward program evaluated eagerly in PyTorch.

For a model without a reference of its own (a Builder-made or parsed model), :func:`eager_reference`
evaluates the forward equations in torch, one primitive at a time, and ``torch.autograd`` differentiates
that evaluation. It never looks at the derived adjoint, and it does not go through the code generator: each
primitive of :data:`derive.tensor.PRIMITIVES` and each scalar function of an elementwise map's SymPy
expression is mapped here to torch operations directly (``Abs`` to ``torch.abs``, ``maximum`` to
``torch.maximum``, a gather by integer labels to ``torch.gather``, ``LogDet`` to ``torch.logdet``, ...), so its
derivatives, conventions at kinks included, are PyTorch's own.

Per-sample models are evaluated one sample at a time (``torch.func.vmap`` over the batch axis of the batched
tensors), exactly as their equations are written, and reduced by the model's ``reduction``; a recurrence
runs its step equations for t = 1, ..., T from a zero state, as a loop.

What this reference cannot do: it evaluates the program as written, so a literal ``log(softmax(z))``
overflows at logits of 1e3 as any eager evaluation does. :func:`check` therefore draws no ``large`` values
for a model checked against it (see ``verify.check``).
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Mapping
from typing import Any

import sympy as sp
import torch
import torch.nn.functional as F

from derive import functions as DF
from derive.program import Model
from derive.tensor import (
    ARG,
    ArgMaxMask,
    AxisOp,
    CausalMask,
    Const,
    Det,
    DiagMatrix,
    DiagPart,
    Einsum,
    Embed,
    Eye,
    Fold,
    IndexGrid,
    Inv,
    LogDet,
    LogSoftmax,
    LogSumExp,
    Map,
    Max,
    Node,
    Norm,
    OneHot,
    Pad,
    Reshape,
    Slice,
    Softmax,
    Solve,
    StopGrad,
    Take,
    Trace,
    Unfold,
    Var,
    as_expr,
    walk,
)

__all__ = ["eager_reference", "evaluate", "UnsupportedReference"]

Tensor = torch.Tensor


class UnsupportedReference(ValueError):
    """The eager evaluator has no torch form for part of this model; pass ``reference=`` instead."""


# --------------------------------------------------------------------------------------------------
# Scalar functions: SymPy -> torch, one entry per function (derivatives are torch's own)
# --------------------------------------------------------------------------------------------------


def _t(x: Any, like: Tensor) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(x, dtype=like.dtype, device=like.device)


def _step(x: Tensor) -> Tensor:
    return (x > 0).to(x.dtype)


_SCALAR: dict[type, Callable[..., Tensor]] = {
    sp.exp: torch.exp,
    sp.log: torch.log,
    sp.tanh: torch.tanh,
    sp.sin: torch.sin,
    sp.cos: torch.cos,
    sp.sqrt: torch.sqrt,
    sp.floor: torch.floor,
    sp.Abs: torch.abs,
    sp.sign: torch.sign,
    sp.erf: torch.erf,
    DF.sigmoid: torch.sigmoid,
    DF.softplus: lambda x: torch.logaddexp(x, torch.zeros_like(x)),
    DF.relu: torch.relu,
    DF.step: _step,
    DF.leaky_relu: lambda x, s: F.leaky_relu(x, float(s)),
    DF.leaky_step: lambda x, s: torch.where(x > 0, torch.ones_like(x), torch.full_like(x, float(s))),
    DF.maximum: torch.maximum,
    DF.minimum: torch.minimum,
    DF.clamp: torch.clamp,
    DF.where: lambda c, a, b: torch.where(c != 0, a, b),
    DF.half_step: lambda x: torch.heaviside(x, torch.full_like(x, 0.5)),
    DF.between: lambda x, lo, hi: ((x >= lo) & (x <= hi)).to(x.dtype),
    DF.power: torch.pow,
    DF.inv0: lambda x: torch.where(x == 0, torch.zeros_like(x), 1 / torch.where(x == 0, torch.ones_like(x), x)),
}
# the table covers every function the engine accepts (asserted at import, as the function table is the one
# list of what models may use)
assert set(DF.SCALAR_FUNCTIONS) <= set(_SCALAR), sorted(c.__name__ for c in set(DF.SCALAR_FUNCTIONS) - set(_SCALAR))
_NO_TENSOR_ARGS = (DF.leaky_relu, DF.leaky_step)


def _scalar(expr: sp.Expr, env: Mapping[sp.Symbol, Any], like: Tensor) -> Any:
    """The value of a SymPy scalar expression whose symbols are tensors, sizes or constants (in ``env``)."""
    if expr.is_Symbol:
        try:
            return env[expr]
        except KeyError:
            raise UnsupportedReference(f"the eager reference has no value for the symbol {expr}") from None
    if expr.is_Integer:
        return int(expr)
    if expr.is_Number:
        return float(expr)
    if expr.is_NumberSymbol:
        return float(expr)
    if expr.is_Add:
        terms = [_scalar(a, env, like) for a in expr.args]
        out = terms[0]
        for t in terms[1:]:
            out = out + t
        return out
    if expr.is_Mul:
        factors = [_scalar(a, env, like) for a in expr.args]
        out = factors[0]
        for f in factors[1:]:
            out = out * f
        return out
    if expr.is_Pow:
        base, e = expr.args
        b = _scalar(base, env, like)
        if e == sp.S.Half and isinstance(b, Tensor):
            return torch.sqrt(b)
        if e == -1:
            return 1 / b
        x = _scalar(e, env, like)
        if not isinstance(b, Tensor) and not isinstance(x, Tensor):  # sizes and constants
            return b**x
        return torch.pow(_t(b, like), x)
    if isinstance(expr, DF.ActivationBase):
        return _scalar(expr.concrete(), env, like)
    fn = _SCALAR.get(type(expr))
    if fn is None:
        raise UnsupportedReference(f"the eager reference has no torch form of {type(expr).__name__}()")
    if isinstance(expr, _NO_TENSOR_ARGS):
        # the slope: a number or a named constant (a hyperparameter) of the model, or an array (a learned
        # slope, as PReLU's), which autograd differentiates through the selection
        x = _t(_scalar(expr.args[0], env, like), like)
        s = _scalar(expr.args[1], env, like)
        if not isinstance(s, Tensor):
            return fn(x, float(s))
        if isinstance(expr, DF.leaky_relu):
            return torch.where(x > 0, x, s * x)
        return torch.where(x > 0, torch.ones_like(x), s * torch.ones_like(x))
    args = [_scalar(a, env, like) for a in expr.args]
    if not any(isinstance(a, Tensor) for a in args):
        return float(fn(*[torch.as_tensor(float(a), dtype=like.dtype) for a in args]))
    return fn(*[_t(a, like) for a in args])


# --------------------------------------------------------------------------------------------------
# Nodes: one torch form per primitive
# --------------------------------------------------------------------------------------------------

_LETTERS = string.ascii_letters


class _Evaluator:
    """Evaluates the nodes of one (per-sample) program; ``env`` holds tensors of named Vars, and the sizes
    and constants that scalar expressions refer to."""

    def __init__(self, env: dict[Any, Any], like: Tensor):
        self.env = env
        self.like = like

    def size(self, d: Any) -> int:
        v = _scalar(as_expr(d), self.env, self.like)
        return int(v)

    def shape(self, shape: tuple[Any, ...]) -> tuple[int, ...]:
        return tuple(self.size(d) for d in shape)

    def value(self, root: Node) -> Tensor:
        memo: dict[int, Tensor] = {}
        for n in walk([root], stop=lambda x: isinstance(x, Var)):
            memo[id(n)] = self.one(n, [memo[id(c)] for c in n.children()] if not isinstance(n, Var) else [])
        return memo[id(root)]

    def one(self, n: Node, args: list[Tensor]) -> Tensor:
        like = self.like
        if isinstance(n, Var):
            try:
                v = self.env[n.name]
            except KeyError:
                raise UnsupportedReference(f"the eager reference has no value for {n.name}") from None
            # integer inputs (labels, steps) as values in the working dtype: torch's true division of an integer
            # tensor would give the default float32; indices are read with .long() where they index
            if isinstance(v, Tensor) and not (v.is_floating_point() or v.is_complex()):
                return v.to(like.dtype)
            return v
        if isinstance(n, Const):
            v = _scalar(n.value, self.env, like)
            return (v if isinstance(v, Tensor) else torch.tensor(float(v), dtype=like.dtype, device=like.device)
                    ).expand(self.shape(n.shape))
        if isinstance(n, Eye):
            return torch.eye(self.size(n.shape[0]), dtype=like.dtype, device=like.device)
        if isinstance(n, CausalMask):
            tq, tk = self.shape(n.shape)
            upper = torch.ones(tq, tk, dtype=torch.bool, device=like.device).triu(1)
            return torch.zeros(tq, tk, dtype=like.dtype, device=like.device).masked_fill(upper, -math.inf)
        if isinstance(n, IndexGrid):
            shape = self.shape(n.shape)
            view = [1] * len(shape)
            view[n.axis] = shape[n.axis]
            grid = torch.arange(n.start, n.start + shape[n.axis], dtype=like.dtype, device=like.device)
            return grid.reshape(view).expand(shape)
        if isinstance(n, Map):
            env = {**self.env, **{ARG[i]: a for i, a in enumerate(args)}}
            out = _scalar(n.fn, env, like)
            return _t(out, like).expand(self.shape(n.shape))
        if isinstance(n, Einsum):
            return self.einsum(n, args)
        if isinstance(n, AxisOp):
            return self.axis_op(n, args[0])
        if isinstance(n, StopGrad):
            return args[0].detach()
        if isinstance(n, Take):
            return args[0].select(n.axis, n.index)
        if isinstance(n, Embed):
            x = args[0].unsqueeze(n.axis)
            size = self.size(n.size)
            before = list(x.shape)
            before[n.axis] = n.index
            after = list(x.shape)
            after[n.axis] = size - n.index - 1
            zb = torch.zeros(before, dtype=x.dtype, device=x.device)
            za = torch.zeros(after, dtype=x.dtype, device=x.device)
            return torch.cat([zb, x, za], n.axis)
        if isinstance(n, OneHot):
            size = self.size(n.size)
            idx = args[0].long().unsqueeze(n.axis)
            view = [1] * idx.ndim
            view[n.axis] = size
            return (idx == torch.arange(size, device=like.device).reshape(view)).to(like.dtype)
        if isinstance(n, Unfold):
            return self.unfold(n, args[0])
        if isinstance(n, Fold):
            return self.fold(n, args[0])
        if isinstance(n, Inv):
            return torch.linalg.inv(args[0])
        if isinstance(n, Det):
            return torch.linalg.det(args[0])
        if isinstance(n, LogDet):
            return torch.logdet(args[0])
        if isinstance(n, Solve):
            a, b = args
            if b.ndim == 1:
                return torch.linalg.solve(a, b.unsqueeze(-1)).squeeze(-1)
            return torch.linalg.solve(a, b.reshape(b.shape[0], -1)).reshape(b.shape)
        if isinstance(n, Trace):
            return torch.diagonal(args[0]).sum()
        if isinstance(n, DiagMatrix):
            return torch.diag_embed(args[0])
        if isinstance(n, DiagPart):
            return torch.diagonal(args[0])
        if isinstance(n, Norm):
            return torch.linalg.vector_norm(args[0])
        if isinstance(n, Reshape):
            return args[0].reshape(self.shape(n.shape))
        if isinstance(n, Slice):
            return args[0].narrow(n.axis, self.size(n.start), self.size(n.stop) - self.size(n.start))
        if isinstance(n, Pad):
            x = args[0]
            lead = self.size(n.start)  # zeros before x along the axis, and after it
            trail = self.size(n.size) - lead - int(x.shape[n.axis])
            return torch.nn.functional.pad(x, (0, 0) * (x.ndim - n.axis - 1) + (lead, trail))
        raise UnsupportedReference(f"the eager reference has no torch form of the primitive {type(n).__name__}")

    def einsum(self, e: Einsum, args: list[Tensor]) -> Tensor:
        gathered = self._gather(e, args)
        if gathered is not None:
            return gathered
        present = {lab for l in e.ins for lab in l}
        inner_out = tuple(lab for lab in e.out if lab in present)
        spec = ",".join("".join(_LETTERS[i] for i in l) for l in e.ins) + "->" + "".join(_LETTERS[i] for i in inner_out)
        out = torch.einsum(spec, *args) if args else torch.ones((), dtype=self.like.dtype, device=self.like.device)
        if inner_out != e.out:  # broadcast labels: only in the output
            view = [out.shape[inner_out.index(lab)] if lab in inner_out else 1 for lab in e.out]
            perm = [inner_out.index(lab) for lab in e.out if lab in inner_out]
            out = out.permute(perm).reshape(view).expand(self.shape(e.shape))
        coef = _scalar(e.coef, self.env, self.like)
        return out * coef if coef != 1 else out

    def _gather(self, e: Einsum, args: list[Tensor]) -> Tensor | None:
        """``x . e_y`` (a contraction with a one-hot encoding along its class axis) as ``torch.gather``: a
        lookup, where an infinity elsewhere in ``x`` does not become NaN."""
        if len(e.operands) != 2:
            return None
        k = next((i for i, o in enumerate(e.operands) if isinstance(o, OneHot)), None)
        if k is None:
            return None
        oh = e.operands[k]
        assert isinstance(oh, OneHot)
        lx, lo = e.ins[1 - k], e.ins[k]
        cls = lo[oh.axis]
        rest_o = lo[: oh.axis] + lo[oh.axis + 1 :]
        if (cls in e.out or lx.count(cls) != 1 or len(set(lx)) != len(lx) or len(set(lo)) != len(lo)
                or set(rest_o) - set(lx)):
            return None
        x = args[1 - k]
        ax = lx.index(cls)
        kept = lx[:ax] + lx[ax + 1 :]
        # the labels (one per position of x without its class axis; broadcast where they have fewer axes)
        idx = self.env[oh.index.name].long()
        view = [idx.shape[rest_o.index(lab)] if lab in rest_o else 1 for lab in kept]
        perm = [rest_o.index(lab) for lab in kept if lab in rest_o]
        idx = idx.permute(perm).reshape(view).expand([x.shape[lx.index(lab)] for lab in kept])
        picked = torch.gather(x, ax, idx.unsqueeze(ax)).squeeze(ax)
        if set(kept) != set(e.out) or len(kept) != len(e.out):
            spec = "".join(_LETTERS[i] for i in kept) + "->" + "".join(_LETTERS[i] for i in e.out)
            if not set(e.out) <= set(kept):
                return None
            picked = torch.einsum(spec, picked)
        else:
            picked = picked.permute([kept.index(lab) for lab in e.out])
        coef = _scalar(e.coef, self.env, self.like)
        return picked * coef if coef != 1 else picked

    def axis_op(self, n: AxisOp, x: Tensor) -> Tensor:
        if isinstance(n, Softmax):
            return torch.softmax(x, n.axis)
        if isinstance(n, LogSoftmax):
            return torch.log_softmax(x, n.axis)
        if isinstance(n, LogSumExp):
            return torch.logsumexp(x, n.axis)
        if isinstance(n, Max):  # torch.max(dim) routes the gradient to the first maximum
            return torch.max(x, n.axis).values
        if isinstance(n, ArgMaxMask):
            idx = torch.argmax(x, n.axis, keepdim=True)
            return torch.zeros_like(x).scatter(n.axis, idx, 1.0).detach()
        raise UnsupportedReference(f"the eager reference has no torch form of {type(n).__name__}")

    def _windows(self, n: Unfold | Fold) -> tuple[int, int, int, int, int, int]:
        kh, kw = n.kernel  # sizes, or dimensions read off the weight's shape (conv2d without kernel=)
        return self.size(kh), self.size(kw), n.stride, n.padding, n.dilation, 0

    def unfold(self, n: Unfold, x: Tensor) -> Tensor:
        """Windows (C, kh, kw, OH, OW) of an image (C, H, W), by slicing the padded image."""
        kh, kw, s, p, d, _ = self._windows(n)
        H, W = x.shape[-2:]
        oh = (H + 2 * p - d * (kh - 1) - 1) // s + 1
        ow = (W + 2 * p - d * (kw - 1) - 1) // s + 1
        xp = F.pad(x, (p, p, p, p), value=n.fill) if p else x
        rows = []
        for i in range(kh):
            cols = []
            for j in range(kw):
                cols.append(xp[..., i * d : i * d + s * (oh - 1) + 1 : s, j * d : j * d + s * (ow - 1) + 1 : s])
            rows.append(torch.stack(cols, -3))
        out = torch.stack(rows, -4)
        return out.reshape(*out.shape[:-4], kh * kw, oh, ow) if n.flat else out

    def fold(self, n: Fold, p: Tensor) -> Tensor:
        """The adjoint of :meth:`unfold`: windows summed back onto the image."""
        kh, kw, s, pad, d, _ = self._windows(n)
        C, H, W = self.shape(n.image)
        if p.ndim == 4:
            p = p.reshape(p.shape[0], kh, kw, *p.shape[-2:])
        oh, ow = p.shape[-2:]
        out = torch.zeros(C, H + 2 * pad, W + 2 * pad, dtype=p.dtype, device=p.device)
        for i in range(kh):
            for j in range(kw):
                part = torch.zeros_like(out)
                part[..., i * d : i * d + s * (oh - 1) + 1 : s, j * d : j * d + s * (ow - 1) + 1 : s] = p[:, i, j]
                out = out + part
        return out[..., pad : pad + H, pad : pad + W]


# --------------------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------------------


def _sizes(m: Model, tensors: Mapping[str, Tensor]) -> dict[sp.Symbol, int]:
    """Dimension symbol -> size, read off the arrays' shapes."""
    sizes: dict[sp.Symbol, int] = {}
    for name, v in {**m.params, **m.inputs}.items():
        if name not in tensors or name in m.carries:
            continue
        for d, s in zip(m.array_dims(v), tensors[name].shape):
            if isinstance(d, sp.Symbol):
                sizes[d] = int(s)
    return sizes


def evaluate(m: Model, tensors: Mapping[str, Tensor]) -> Tensor:
    """The loss of ``m`` on batch-first torch tensors, by eager evaluation of its forward program."""
    if m.is_update:
        raise UnsupportedReference(f"{m.name} is an update program: verify it against torch.optim, or pass "
                                   "reference=")
    like = next(iter(tensors.values()))
    sizes = _sizes(m, tensors)
    base: dict[Any, Any] = {**sizes, **{sp.Symbol(k, real=True): v for k, v in m.constants.items()}}
    batched = [k for k, v in {**m.params, **m.inputs}.items() if v.batched and k in tensors]
    plain = {k: t for k, t in tensors.items() if k not in batched}
    seqs = {k for sc in m.recurrences for k in sc.sequences}

    def one_sample(*per_sample: Tensor) -> Tensor:
        env = {**base, **plain, **dict(zip(batched, per_sample))}
        ev = _Evaluator(env, like)
        if m.scans:
            return _scans(m, env, ev, sizes, like)
        if m.scan is None:
            for eq in m.equations:
                env[eq.lhs.name] = ev.value(eq.rhs)
            return env[m.loss_var.name]
        # a recurrence: the step's equations for t = 1..T, the previous state 0 at the first step
        steps = {k: env[k] for k in seqs}
        for prev, _ in m.scan.carries:
            v = m.inputs[prev]
            env[prev] = torch.zeros(ev.shape(v.shape), dtype=like.dtype, device=like.device)
        weight = _scalar(m.scan.weight, env, like)
        total: Any = 0.0
        for t in range(sizes[m.scan.time]):
            env.update({k: s[t] for k, s in steps.items()})
            for eq in m.equations:
                env[eq.lhs.name] = ev.value(eq.rhs)
            total = total + weight * env[m.loss_var.name]
            env.update({prev: env[nxt] for prev, nxt in m.scan.carries})
        return total

    if m.sample is None or not batched:
        loss = one_sample()
        if m.sample is not None:  # a per-sample model with no batched tensor: one value for every sample
            loss = loss * (1 if m.reduction == "mean" else sizes[m.sample])
        return loss
    dims = tuple(1 if k in seqs else 0 for k in batched)  # sequences are time-major: (T, n, ...)
    per = torch.func.vmap(one_sample, in_dims=dims)(*[tensors[k] for k in batched])
    return per.mean() if m.reduction == "mean" or m.recurrences else per.sum()


def _scans(m: Model, env: dict[Any, Any], ev: _Evaluator, sizes: dict[sp.Symbol, int], like: Tensor) -> Any:
    """One sample of a program of several scans: each scan's step for its t = 1..T (T..1 when reversed), in
    order; later scans read the states of earlier ones at the same t, stacked, or (a carry's start) final."""
    by_name = {eq.lhs.name: eq for eq in m.equations}
    history: dict[str, list[Tensor]] = {}
    final: dict[str, Tensor] = {}
    total: Any = 0.0
    sequences = {k: env[k] for sc in m.scans for k in sc.sequences}  # whole, before any step reads one
    for sc in m.scans:
        T = sizes[sc.time]
        steps = {k: sequences[k] for k in sc.sequences}
        starts = dict(sc.init)
        for prev, _ in sc.carries:
            if prev in starts:
                env[prev] = final[starts[prev]]
            else:
                env[prev] = torch.zeros(ev.shape(m.inputs[prev].shape), dtype=like.dtype, device=like.device)
        for sv, src in sc.stacks:
            env[sv.name] = torch.stack(history[src], 0)
        used = {v.name for n in sc.equations for v in walk([by_name[n].rhs]) if isinstance(v, Var)}
        upstream = used & set(history)
        weight = _scalar(sc.weight, env, like) if sc.loss else 0.0
        own: dict[str, list[Any]] = {n: [None] * T for n in sc.equations}
        order = range(T - 1, -1, -1) if sc.reverse else range(T)
        for t in order:
            env.update({k: s[t] for k, s in steps.items()})
            env.update({n: history[n][t] for n in upstream})
            for n in sc.equations:
                env[n] = ev.value(by_name[n].rhs)
                own[n][t] = env[n]
            if sc.loss:
                total = total + weight * env[sc.loss]
            env.update({prev: env[nxt] for prev, nxt in sc.carries})
        for prev, nxt in sc.carries:
            final[nxt] = env[prev]
        history.update(own)
    return total


def eager_reference(m: Model) -> Callable[..., Tensor]:
    """A reference ``f(**tensors, **options) -> loss`` for any loss program: its forward evaluated eagerly
    in torch (options are ignored: the model was built with them)."""

    def reference(**kwargs: Any) -> Tensor:
        tensors = {k: v for k, v in kwargs.items() if isinstance(v, Tensor)}
        return evaluate(m, tensors)

    reference.__doc__ = f"The forward program of {m.name}, evaluated eagerly in torch."
    return reference
