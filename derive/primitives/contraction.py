"""Contractions: ``coef * sum prod_k A_k[...]`` (matmul, outer products, transposes, sums, traces and
broadcasting), simplified as they are built."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import sympy as sp

from .base import Dim, Label, Node, Shape, ShapeError, _intern, _key, as_expr, fmt_shape
from .leaves import Const, Eye, Var, is_zero, zeros

# --------------------------------------------------------------------------------------------------
# Contractions
# --------------------------------------------------------------------------------------------------


def _dims(labels: Sequence[Label], shape: Shape) -> dict[Label, Dim]:
    return dict(zip(labels, shape))


class Einsum(Node):
    """``coef * sum over labels not in out of prod_k operands[k][ins[k]]``, output indexed by ``out``.

    Labels that appear only in ``out`` broadcast (their sizes are kept in ``dims``).
    """

    kind = "einsum"
    ins: tuple[tuple[int, ...], ...]
    out: tuple[int, ...]
    operands: tuple[Node, ...]
    dims: tuple[Dim, ...]
    coef: sp.Expr

    def children(self) -> tuple[Node, ...]:
        return self.operands

    def with_children(self, children: Sequence[Node]) -> Node:
        return einsum(self.ins, self.out, children, dims=self.index_dims(), coef=self.coef)

    def index_dims(self) -> dict[Label, Dim]:
        return dict(enumerate(self.dims))

    def vjp(self, g: Node, out: Node) -> list[Node | None]:
        res: list[Node | None] = []
        for k in range(len(self.operands)):
            ins = [l for j, l in enumerate(self.ins) if j != k] + [self.out]
            ops = [o for j, o in enumerate(self.operands) if j != k] + [g]
            dims = self.index_dims()
            target: list[Any] = []
            for pos, lab in enumerate(self.ins[k]):
                if lab in target:  # a repeated index (a diagonal, a trace): the adjoint is diagonal there
                    fresh = ("_diag", k, pos)
                    dims[fresh] = dims[lab]
                    ins.append((lab, fresh))  # type: ignore[arg-type]
                    ops.append(Eye(dims[lab]))
                    target.append(fresh)
                else:
                    target.append(lab)
            res.append(einsum(ins, tuple(target), ops, dims=dims, coef=self.coef))
        return res

    def jvp(self, tangents: Sequence[Node | None], tshape: Shape, out: Node) -> Node | None:
        tl = tuple(range(len(self.dims), len(self.dims) + len(tshape)))
        dims = self.index_dims() | _dims(tl, tshape)
        terms = []
        for k, t in enumerate(tangents):
            if is_zero(t):
                continue
            ins = [l + tl if j == k else l for j, l in enumerate(self.ins)]
            ops: list[Node] = [t if (j == k and t is not None) else o for j, o in enumerate(self.operands)]
            terms.append(einsum(ins, self.out + tl, ops, dims=dims, coef=self.coef))
        return add_all(terms, self.shape + tshape)

    def latex(self, args: Sequence[str], printer: Any) -> str:
        return printer.einsum_latex(self, args)

    def lower(self, args: Sequence[str], backend: str, ctx: Any) -> str:
        return ctx.einsum_code(self, args)


def einsum(
    ins: Sequence[Sequence[Label]],
    out: Sequence[Label],
    operands: Sequence[Node],
    dims: dict[Label, Dim] | None = None,
    coef: Any = 1,
) -> Node:
    """Build (and simplify) a contraction. Labels may be any hashable; ``dims`` gives sizes of labels
    that appear only in ``out`` (broadcast axes)."""
    ins_l = [tuple(l) for l in ins]
    out_t = tuple(out)
    ops = list(operands)
    coef = as_expr(coef)
    if len(ins_l) != len(ops):
        raise ShapeError(f"einsum has {len(ins_l)} index groups for {len(ops)} operands")
    size: dict[Label, Dim] = dict(dims or {})
    for l, o in zip(ins_l, ops):
        if len(l) != o.ndim:
            raise ShapeError(f"einsum indices {l} do not fit an operand of shape {fmt_shape(o.shape)}")
        for lab, d in zip(l, o.shape):
            if lab in size and sp.simplify(size[lab] - d) != 0:
                raise ShapeError(f"einsum index {lab!r} has size {size[lab]} in one operand and {d} in "
                                 f"another (operand shape {fmt_shape(o.shape)})")
            size[lab] = d
    for lab in out_t:
        if lab not in size:
            raise ShapeError(f"einsum output index {lab!r} has no size")
    if len(set(out_t)) != len(out_t):
        raise ShapeError(f"einsum output indices {out_t} repeat")
    fresh = itertools.count()

    def new_label() -> tuple[str, int]:
        return ("_f", next(fresh))

    changed = True
    while changed:
        changed = False
        for k, (l, o) in enumerate(zip(ins_l, ops)):
            elsewhere = set(out_t).union(*(set(m) for j, m in enumerate(ins_l) if j != k))
            if isinstance(o, Const):
                coef *= o.value
                for lab in set(l) - elsewhere:
                    coef *= size[lab]
                del ins_l[k], ops[k]
                changed = True
                break
            if isinstance(o, Einsum) and not _flattens(o) and o.coef != 1:
                # a nested contraction stays a node, but its scalar moves out to the parent
                coef *= o.coef
                ops[k] = einsum(o.ins, o.out, o.operands, dims=o.index_dims())
                changed = True
                break
            if isinstance(o, Einsum) and _flattens(o):
                ren: dict[int, Label] = {}
                for pos, lab in enumerate(o.out):
                    ren[lab] = l[pos]
                for lab in range(len(o.dims)):
                    if lab not in ren:
                        ren[lab] = new_label()
                        size[ren[lab]] = o.dims[lab]
                coef *= o.coef
                # a broadcast axis of the inner contraction that the outer one sums over multiplies by its
                # size (sum_i of a value that does not depend on i): it vanishes from every operand below
                inner_used = {x for m in o.ins for x in m}
                others = set(out_t).union(*(set(m) for j, m in enumerate(ins_l) if j != k))
                for pos, lab in enumerate(o.out):
                    if lab not in inner_used and l[pos] not in others:
                        coef *= size[l[pos]]
                new_ins = [tuple(ren[x] for x in m) for m in o.ins]
                ins_l[k : k + 1] = new_ins
                ops[k : k + 1] = list(o.operands)
                changed = True
                break
            if isinstance(o, Eye):
                a, b = l
                if a == b:
                    del ins_l[k], ops[k]
                    if a not in elsewhere:
                        coef *= size[a]
                    changed = True
                    break
                if any(a in m and b in m for j, m in enumerate(ins_l) if j != k):
                    continue
                if a in out_t and b in out_t:
                    continue
                keep, drop = (a, b) if (b not in out_t) else (b, a)
                del ins_l[k], ops[k]
                ins_l = [tuple(keep if x == drop else x for x in m) for m in ins_l]
                out_t = tuple(keep if x == drop else x for x in out_t)
                changed = True
                break
            if isinstance(o, Map) and len(o.args) >= 1:
                c, rest = o.fn.as_independent(*ARG[: len(o.args)], as_Add=False)
                if c != 1 and rest != o.fn:
                    coef *= c
                    ops[k] = map_(rest, o.args, o.shape)
                    changed = True
                    break
            unit = _unit_axis(o)
            if unit is not None and l:
                last = l[unit]
                if last not in elsewhere and l.count(last) == 1:
                    for lab in set(l[:unit] + l[unit + 1 :]) - elsewhere:
                        coef *= size[lab]
                    del ins_l[k], ops[k]
                    changed = True
                    break
        if changed:
            continue
        # a one-hot encoding contracted with one other operand along its class axis is a gather: that pair
        # becomes one nested node (x_y), which other factors can then cancel against
        if len(ops) > 2:
            for k, (l, o) in enumerate(zip(ins_l, ops)):
                if not isinstance(o, OneHot):
                    continue
                cls = l[o.axis]
                users = [j for j, m in enumerate(ins_l) if j != k and cls in m]
                if cls in out_t or len(users) != 1 or ins_l[users[0]].count(cls) != 1 or l.count(cls) != 1:
                    continue
                j = users[0]
                keep = set(out_t).union(*(set(m) for i, m in enumerate(ins_l) if i not in (j, k)))
                pair_out = tuple(dict.fromkeys(x for x in ins_l[j] + l if x != cls and x in keep))
                if set(ins_l[j] + l) - {cls} - set(pair_out):
                    continue  # the pair has other sums of its own
                inner = einsum([ins_l[j], l], pair_out, [ops[j], o], dims=size)
                for i in sorted((j, k), reverse=True):
                    del ins_l[i], ops[i]
                ins_l.append(pair_out)
                ops.append(inner)
                changed = True
                break
            if changed:
                continue
        # Hadamard products: operands indexed identically become one elementwise map
        seen: dict[tuple[Label, ...], int] = {}
        for k, l in enumerate(ins_l):
            if l in seen and len(set(l)) == len(l) and (isinstance(ops[k], Map) or isinstance(ops[seen[l]], Map)):
                j = seen[l]
                merged = map_(ARG[0] * ARG[1], [ops[j], ops[k]])
                if _fewer_leaves(merged, ops[j], ops[k]):
                    ops[j] = merged
                    del ins_l[k], ops[k]
                    changed = True
                    break
            seen[l] = k
    split = _split_sums(ins_l, out_t, ops, size, coef)
    if split is not None:
        return split
    coef = sp.simplify(coef) if coef.free_symbols else coef
    out_shape = tuple(size[l] for l in out_t)
    if coef == 0:
        return zeros(out_shape)
    if not ops:
        return Const(coef, out_shape)
    if len(ops) == 1 and ins_l[0] == out_t:
        return map_(coef * ARG[0], ops, out_shape) if coef != 1 else ops[0]
    # canonical labels: 0, 1, ... by first appearance
    canon: dict[Label, int] = {}
    for lab in itertools.chain(*ins_l, out_t):
        canon.setdefault(lab, len(canon))
    c_ins = tuple(tuple(canon[x] for x in l) for l in ins_l)
    c_out = tuple(canon[x] for x in out_t)
    c_dims = tuple(size[lab] for lab in canon)
    ops_t = tuple(ops)

    def init(n: Any) -> None:
        n.ins, n.out, n.operands, n.dims, n.coef, n.shape = c_ins, c_out, ops_t, c_dims, coef, out_shape

    return _intern(Einsum, (c_ins, c_out, _key(ops_t), c_dims, coef), init)


def _unit_axis(o: Node) -> int | None:
    """The axis along which ``o`` sums to 1, where its domain says so: the last axis of a probability
    vector (``simplex`` or ``one_hot``, checked at the kernel boundary), the class axis of a one-hot encoding."""
    if isinstance(o, Var) and o.domain in ("simplex", "one_hot") and o.ndim:
        return o.ndim - 1
    if isinstance(o, OneHot):
        return o.axis
    return None


def _flattens(o: Einsum) -> bool:
    """Whether a nested contraction is merged into its parent: when it only multiplies and broadcasts (no
    sum of its own), or holds an identity to contract away. A nested product with its own sum (U V^T) stays
    a node, so that it is computed once and shared."""
    inner_sums = {l for ls in o.ins for l in ls} - set(o.out)
    return not inner_sums or any(isinstance(x, (Eye, Const)) for x in o.operands)


def _constant_along(a: Node, pos: int) -> Node | None:
    """If elementwise operand ``a`` is constant along its axis ``pos`` (a broadcast there, or a scalar),
    the operand without that axis; else ``None``."""
    if a.ndim == 0:
        return a
    if isinstance(a, Const):
        return Const(a.value, a.shape[:pos] + a.shape[pos + 1 :])
    if isinstance(a, Einsum):
        lab = a.out[pos]
        if all(lab not in l for l in a.ins):
            return einsum(a.ins, a.out[:pos] + a.out[pos + 1 :], a.operands, dims=a.index_dims(), coef=a.coef)
    return None


def _centered(n: Node, pos: int) -> bool:
    """Whether ``n`` sums to zero along its axis ``pos`` (declared through its domain)."""
    return isinstance(n, Var) and n.domain == f"centered:{pos}"


def _split_sums(ins_l: list[tuple[Label, ...]], out_t: tuple[Label, ...], ops: list[Node],
                size: dict[Label, Dim], coef: sp.Expr) -> Node | None:
    """Sums of elementwise products: pull factors that are constant along the summed index out of the
    sum, split sums of sums (linearity) where that lets a term vanish, and drop sums of centered tensors.
    Returns the rewritten contraction, or ``None`` when nothing applies."""
    for k, (l, o) in enumerate(zip(ins_l, ops)):
        others = set(out_t).union(*(set(m) for j, m in enumerate(ins_l) if j != k))
        summed = [p for p, lab in enumerate(l) if lab not in others and l.count(lab) == 1]
        if not summed:
            continue
        for p in summed:
            if _centered(o, p):
                return zeros(tuple(size[x] for x in out_t))
        if not isinstance(o, Map):
            continue
        terms = sp.Add.make_args(sp.expand(o.fn)) if o.fn.is_Add else None
        if terms is not None and len(terms) > 1:
            parts = [einsum(ins_l, out_t, ops[:k] + [map_(t, o.args, o.shape)] + ops[k + 1 :], dims=size, coef=coef)
                     for t in terms]
            if any(is_zero(x) for x in parts) or any(_pulled(x, ops) for x in parts):
                return add_all(parts, tuple(size[x] for x in out_t)) or zeros(tuple(size[x] for x in out_t))
            continue
        for p in summed:
            const_args = {i: _constant_along(a, p) for i, a in enumerate(o.args)}
            factors = sp.Mul.make_args(o.fn)
            inside: list[sp.Expr] = []
            outside: list[sp.Expr] = []
            for f in factors:
                syms = [i for i in range(len(o.args)) if ARG[i] in f.free_symbols]
                (outside if syms and all(const_args[i] is not None for i in syms) else inside).append(f)
            if not outside or not inside:
                continue
            out_fn = sp.Mul(*outside)
            used = sorted({i for i in range(len(o.args)) if ARG[i] in out_fn.free_symbols})
            reduced = [const_args[i] for i in used]
            out_fn = out_fn.xreplace({ARG[i]: ARG[j] for j, i in enumerate(used)})
            lab_out = l[:p] + l[p + 1 :]
            shape_out = tuple(size[x] for x in lab_out)
            outer_op = map_(out_fn, [r for r in reduced if r is not None], shape_out)
            inner_op = map_(sp.Mul(*inside), o.args, o.shape)
            return einsum(ins_l[:k] + [l, lab_out] + ins_l[k + 1 :], out_t,
                          ops[:k] + [inner_op, outer_op] + ops[k + 1 :], dims=size, coef=coef)
    return None


def _pulled(x: Node | None, before: list[Node]) -> bool:
    return isinstance(x, Einsum) and len(x.operands) > len(before)


def _leaves(n: Node) -> int:
    return len(n.args) if isinstance(n, Map) else 1


def _fewer_leaves(merged: Node, a: Node, b: Node) -> bool:
    """Merging two Hadamard factors pays only when the product simplifies (shares or cancels leaves)."""
    if not isinstance(merged, Map):
        return True
    return len(merged.args) < _leaves(a) + _leaves(b) or (
        sp.count_ops(merged.fn) < sum(sp.count_ops(x.fn) for x in (a, b) if isinstance(x, Map)) + 1)


def broadcast_to(x: Node, shape: Shape) -> Node:
    """Broadcast ``x`` to ``shape`` (its shape must be a trailing part of ``shape``, NumPy style)."""
    if x.shape == shape:
        return x
    k = len(shape) - x.ndim
    if k < 0 or tuple(shape[k:]) != x.shape:
        raise ShapeError(f"cannot broadcast shape {fmt_shape(x.shape)} to {fmt_shape(shape)}: "
                         "the smaller shape must match the trailing dimensions")
    labels = tuple(range(len(shape)))
    return einsum([labels[k:]], labels, [x], dims=_dims(labels, shape))


def sum_all(x: Node) -> Node:
    return einsum([tuple(range(x.ndim))], (), [x])


def sum_(x: Node, axis: int | Sequence[int] | None = None) -> Node:
    """Sum over ``axis`` (all axes by default)."""
    axes = _axes(x, axis)
    labels = tuple(range(x.ndim))
    return einsum([labels], tuple(l for l in labels if l not in axes), [x])


def mean(x: Node, axis: int | Sequence[int] | None = None) -> Node:
    """Mean over ``axis`` (all axes by default)."""
    axes = _axes(x, axis)
    n = sp.Mul(*(x.shape[a] for a in axes))
    labels = tuple(range(x.ndim))
    return einsum([labels], tuple(l for l in labels if l not in axes), [x], coef=1 / n)


def _axes(x: Node, axis: int | Sequence[int] | None) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(x.ndim))
    axs = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(_axis(x, a) for a in axs)


def _axis(x: Node, axis: int) -> int:
    if not -x.ndim <= axis < max(x.ndim, 1):
        raise ShapeError(f"axis {axis} is out of range for shape {fmt_shape(x.shape)}")
    return axis % x.ndim if x.ndim else 0


def matmul(a: Node, b: Node) -> Node:
    """Matrix-matrix, matrix-vector, vector-matrix or vector-vector product."""
    if a.ndim not in (1, 2) or b.ndim not in (1, 2):
        raise ShapeError(f"@ takes vectors and matrices, got {fmt_shape(a.shape)} @ {fmt_shape(b.shape)}")
    if sp.simplify(a.shape[-1] - b.shape[0]) != 0:
        raise ShapeError(f"@ needs the inner dimensions to agree: {fmt_shape(a.shape)} @ {fmt_shape(b.shape)}")
    la = ("i", "k") if a.ndim == 2 else ("k",)
    lb = ("k", "j") if b.ndim == 2 else ("k",)
    out = tuple(x for x in la[:-1] + lb[1:])
    return einsum([la, lb], out, [a, b])


def dot(a: Node, b: Node) -> Node:
    """Inner product of two vectors, ``a^T b``."""
    return matmul(a, b)


def outer(a: Node, b: Node) -> Node:
    """Outer product ``a b^T`` of two vectors."""
    return einsum([("i",), ("j",)], ("i", "j"), [a, b])


# the families refer to each other: imported once this module's definitions exist
from .elementwise import ARG, Map, add_all, map_  # noqa: E402
from .indexing import OneHot  # noqa: E402
