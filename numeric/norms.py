"""Normalisation layers found in a program and run as PyTorch's native kernels (torch backend).

A program normalises ``z`` when it holds, over axes ``A`` of ``z`` (of size ``N`` in all),

    mu = (1/N) sum_A z,   z_c = z - mu,   sigma = sqrt((1/N) sum_A z_c^2 + eps),   zbar = z_c / sigma,

optionally followed by ``ztilde = gamma * zbar + beta``. With ``A`` the per-sample axes (layer norm) these
are the values ``torch.native_layer_norm`` computes (``zbar``, or ``ztilde`` with the weight and bias, with
``mu`` and ``1/sigma``); with ``A`` the batch axis of a matrix (batch norm), ``torch.native_batch_norm``. An
adjoint equation equal to

    zeta_z = (1/sigma) (u - (1/N) sum_A u - zbar (1/N) sum_A (u zbar))

(the derivative of ``zbar`` in ``z`` applied to ``u``, the adjoint of ``zbar``) is then what the native
backward kernel computes, and with the affine step, the gradients of ``gamma`` (``sum u_up zbar``) and
``beta`` (``sum u_up``) too, from the adjoint ``u_up`` of ``ztilde`` (``u = gamma u_up``).

Nothing is taken on trust from names: every equation is read into a scalar expression over named values
and sums over ``A`` (an uninterpreted function), and the lowering is used only where that expression
equals the one above exactly (SymPy's ``cancel`` of the difference is 0). Anything else is lowered as
written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from derive.program import Equation
from derive.tensor import ARG as _ARG
from derive.tensor import Const, Einsum, Map, Node, Var, as_expr

__all__ = ["Norm", "find_norms", "match_backward"]

SUM = sp.Function("SUM_A")  # a sum over the normalised axes
SUMK = sp.Function("SUM_K")  # a sum over the other (per-sample) axes


@dataclass
class Norm:
    kind: str  # "layer" or "batch"
    z: Node
    mu: Var
    zc: Var
    sigma: Var
    zbar: Var
    eps: sp.Expr
    axes: tuple[int, ...]  # normalised positions of z's (per-sample) shape
    size: sp.Expr
    out: Var | None = None  # ztilde = gamma zbar + beta
    gamma: Var | None = None
    beta: Var | None = None
    first: Var | None = None  # the first of the program's equations the native call replaces
    names: dict[str, str] = field(default_factory=dict)  # mean, rstd temporaries


class _Sym:
    """Scalar expressions of tensors that are elementwise in ``z``'s layout (full) or constant along the
    normalised axes (group), with sums over the normalised axes as ``SUM_A``."""

    def __init__(self, full: tuple[Any, ...], axes: tuple[int, ...], batched: bool, low: Any):
        self.full = tuple(full)
        self.axes = axes
        self.keep = tuple(i for i in range(len(full)) if i not in axes)
        self.group = tuple(full[i] for i in self.keep)
        self.batched = batched
        self.low = low

    def layout(self, n: Node) -> str | None:
        if tuple(n.shape) == self.full and (self.group != self.full):
            return "full"
        if tuple(n.shape) == self.group:
            return "group"
        if self.group and tuple(n.shape) == tuple(self.full[i] for i in self.axes):
            return "weight"  # along the normalised axes, the same for every group (a layer norm's gamma)
        return None

    def positions(self, lay: str) -> list[int]:
        return list(range(len(self.full))) if lay == "full" else list(self.keep) if lay == "group" else \
            list(self.axes)

    def of(self, n: Node, ctx: dict[Node, sp.Expr]) -> sp.Expr | None:
        if n in ctx:
            return ctx[n]
        if isinstance(n, Const) and not n.shape:
            return as_expr(n.value)
        if isinstance(n, Var):
            return None
        if isinstance(n, Map):
            subs = {}
            for i, a in enumerate(n.args):
                if _ARG[i] not in n.fn.free_symbols:
                    continue
                v = self.of(a, ctx)
                if v is None:
                    return None
                subs[_ARG[i]] = v
            return n.fn.xreplace(subs)
        if isinstance(n, Einsum):
            return self._einsum(n, ctx)
        return None

    def _einsum(self, e: Einsum, ctx: dict[Node, sp.Expr]) -> sp.Expr | None:
        res = self.layout(e)
        if res is None:
            return None
        res_pos = self.positions(res)
        label_pos = {lab: res_pos[i] for i, lab in enumerate(e.out)}
        summed: set[int] = set()
        fulls: list[sp.Expr] = []
        groups: list[sp.Expr] = []
        for labels, op in zip(e.ins, e.operands):
            lay = self.layout(op)
            if lay is None:
                return None
            pos = self.positions(lay)
            for lab, p in zip(labels, pos):
                if lab in label_pos:
                    if label_pos[lab] != p:
                        return None
                else:
                    summed.add(p)
            v = self.of(op, ctx)
            if v is None:
                return None
            (fulls if lay == "full" else groups).append(v)
        if len(set(e.out)) != len(e.out):
            return None
        coef = as_expr(e.coef)
        if res == "full":
            if summed:
                return None
            return coef * sp.Mul(*fulls, *groups)
        if res == "weight":  # a sum over the other axes (a layer norm's gamma gradient, per sample)
            if not fulls or summed != set(self.keep):
                return None
            return coef * SUMK(sp.Mul(*fulls)) * sp.Mul(*groups)
        # a group-shaped result: a sum over the normalised axes (or a product of group-shaped operands)
        if not fulls:
            return None if summed else coef * sp.Mul(*groups)
        if summed != set(self.axes) or len(groups) != len(e.operands) - len(fulls):
            return None
        return coef * SUM(sp.Mul(*fulls)) * sp.Mul(*groups)


def _equal(a: sp.Expr | None, b: sp.Expr) -> bool:
    if a is None:
        return False
    try:
        return bool(sp.cancel(sp.expand(a - b)) == 0)
    except (sp.PolynomialError, TypeError, ValueError):
        return False


def _size(shape: Sequence[Any], axes: Sequence[int]) -> sp.Expr:
    out = sp.S.One
    for i in axes:
        out *= as_expr(shape[i])
    return out


def find_norms(forward: Sequence[Equation], low: Any) -> list[Norm]:
    """The normalisations in a forward program (see the module docstring), checked equation by equation."""
    defs = {eq.lhs: eq.rhs for eq in forward}
    found: list[Norm] = []
    Z, M, ZC, S = sp.symbols("Z M Z_c S", real=True)
    for eq in forward:
        zbar, rhs = eq.lhs, eq.rhs
        if not isinstance(rhs, Map) or len(rhs.args) != 2:
            continue
        zc = next((a for a in rhs.args if isinstance(a, Var) and a in defs and a.shape == zbar.shape), None)
        if zc is None or not isinstance(defs[zc], Map):
            continue
        other = next(a for a in rhs.args if a is not zc)
        sigma = other if isinstance(other, Var) else next(
            (o for o in getattr(other, "operands", ()) if isinstance(o, Var)), None)
        if sigma is None or sigma not in defs:
            continue
        shape = tuple(zbar.shape)
        k = len(sigma.shape)
        if zbar.batched and tuple(sigma.shape) == shape[:k] and k < len(shape):  # layer norm: trailing axes
            kind, axes = "layer", tuple(range(k, len(shape)))
        elif not zbar.batched and len(shape) == 2 and tuple(sigma.shape) == shape[1:]:  # batch norm
            kind, axes = "batch", (0,)
        else:
            continue
        if not shape or low.batched(zbar) != zbar.batched:
            continue
        sym = _Sym(shape, axes, zbar.batched, low)
        N = _size(shape, axes)
        if not _equal(sym.of(rhs, {zc: ZC, sigma: S}), ZC / S):
            continue
        zc_rhs = defs[zc]
        assert isinstance(zc_rhs, Map)
        mu_node = None
        z_node = None
        for z_cand in zc_rhs.args:
            if z_cand.shape != zbar.shape or low.batched(z_cand) != zbar.batched:
                continue
            mus = [a for a in zc_rhs.args if a is not z_cand]
            mu_cand = mus[0] if len(mus) == 1 else None
            mu = mu_cand if isinstance(mu_cand, Var) else next(
                (o for o in getattr(mu_cand, "operands", ()) if isinstance(o, Var)), None)
            if mu is None or mu not in defs:
                continue
            if _equal(sym.of(zc_rhs, {z_cand: Z, mu: M}), Z - M) and _equal(sym.of(defs[mu], {z_cand: Z}),
                                                                            SUM(Z) / N):
                mu_node, z_node = mu, z_cand
                break
        if mu_node is None or z_node is None:
            continue
        sig = sym.of(defs[sigma], {zc: ZC})
        if sig is None or not (sig.is_Pow and sig.exp == sp.S.Half):
            continue
        eps = sp.simplify(sig.base - SUM(ZC**2) / N)
        if eps.free_symbols & {Z, M, ZC, S} or eps.has(SUM) or not (eps.is_positive or eps.is_Symbol):
            continue
        found.append(Norm(kind, z_node, mu_node, zc, sigma, zbar, eps, axes, N))
    # the affine step: ztilde = gamma zbar + beta with gamma, beta fixed along the batch
    for nm in found:
        nm.first = nm.mu
        for eq in forward:
            rhs = eq.rhs
            if not isinstance(rhs, Map) or nm.zbar not in rhs.args or eq.lhs.shape != nm.zbar.shape:
                continue
            vs = [v for a in rhs.args if a is not nm.zbar
                  for v in ([a] if isinstance(a, Var) else getattr(a, "operands", ()))]
            want = nm.zbar.shape[len(nm.sigma.shape):] if nm.kind == "layer" else nm.zbar.shape[1:]
            if not all(isinstance(v, Var) and not v.batched and tuple(v.shape) == tuple(want) for v in vs) \
                    or len(vs) > 2:
                continue
            sym = _Sym(tuple(nm.zbar.shape), nm.axes, nm.zbar.batched, low)
            ZB, GM, BT = sp.symbols("Zbar Gamma Beta", real=True)
            for perm in ([vs[0], vs[1]], [vs[1], vs[0]]) if len(vs) == 2 else ([vs[0], None], [None, vs[0]]):
                g, b = perm
                ctx: dict[Node, sp.Expr] = {nm.zbar: ZB}
                if nm.kind == "layer":  # gamma (p,) against a per-sample zbar (p,): elementwise
                    if g is not None:
                        ctx[g] = GM
                    if b is not None:
                        ctx[b] = BT
                    val = sym.of(rhs, ctx)
                else:
                    val = _Sym(tuple(nm.zbar.shape), nm.axes, False, low).of(rhs, {**ctx, **(
                        {g: GM} if g is not None else {}), **({b: BT} if b is not None else {})})
                want_e = (GM if g is not None else 1) * ZB + (BT if b is not None else 0)
                if _equal(val, want_e):
                    nm.out, nm.gamma, nm.beta = eq.lhs, g, b
                    break
            if nm.out is not None:
                break
    return found


@dataclass
class Backward:
    """Adjoint equations one native backward call computes: ``targets[k]`` is the lhs computed as output k
    (0: the input's adjoint, 1: gamma's gradient, 2: beta's) and ``grad_out`` the upstream adjoint."""

    norm: Norm
    grad_out: Node
    weighted: bool
    targets: dict[int, Equation]


def match_backward(nm: Norm, adjoint: Sequence[Equation], low: Any, reduction: str) -> Backward | None:
    """The adjoint equations of ``nm`` that its native backward computes, or None."""
    U, ZB, S, GP, GM = sp.symbols("U Zbar S G_up Gamma", real=True)
    N = nm.size
    sym = _Sym(tuple(nm.zbar.shape), nm.axes, nm.zbar.batched, low)
    dz = (U - SUM(U) / N - ZB * SUM(U * ZB) / N) / S
    defs = {e.lhs: e.rhs for e in adjoint}
    for eq in adjoint:
        rhs = eq.rhs
        if eq.lhs.shape != nm.zbar.shape or not isinstance(rhs, Map):
            continue
        for u in [a for a in rhs.args if isinstance(a, Var) and a.shape == nm.zbar.shape and a is not nm.zbar]:
            if not _equal(sym.of(rhs, {u: U, nm.zbar: ZB, nm.sigma: S}), dz):
                continue
            # the affine step: u = gamma u_up, and the gradients of gamma and beta from u_up
            if nm.out is not None and nm.gamma is not None and u in defs and reduction == "sum":
                d = defs[u]
                order = [e.lhs for e in adjoint]
                for up in [a for a in getattr(d, "args", ()) if isinstance(a, Var) and a.shape == nm.zbar.shape]:
                    if not _equal(sym.of(d, {up: GP, nm.gamma: GM}), GP * GM):
                        continue
                    targets = {0: eq}
                    for e2 in adjoint:
                        if e2.kind != "grad":
                            continue
                        val = sym.of(e2.rhs, {up: GP, nm.zbar: ZB})
                        per = SUM if nm.kind == "batch" else SUMK if sym.group else (lambda x: x)
                        if _equal(val, per(GP * ZB)) and _grad_of(e2, nm.gamma):
                            targets[1] = e2
                        elif nm.beta is not None and _equal(val, per(GP)) and _grad_of(e2, nm.beta):
                            targets[2] = e2
                    first = min(order.index(t.lhs) for t in targets.values())
                    if up.role != "adjoint" or up in order[:first]:
                        return Backward(nm, up, True, targets)
            return Backward(nm, u, False, {0: eq})
    return None


def _grad_of(eq: Equation, v: Var) -> bool:
    return eq.lhs.name == f"g_{v.name}"
