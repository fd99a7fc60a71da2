"""Which values a generated kernel returns may share memory with its arguments or with one another.

Autograd never hands back a caller's tensor, or a view of one, as a gradient: every gradient is a new array. A
generated kernel can: ``sum(x .* y)`` has ``g_x = y``, ``sum(A * x)`` has ``g_A`` a broadcast view of ``x``,
``sum(A' .* B)`` has ``g_B`` a transposed view of ``A``. Such a result is a silent hazard: an update loop that
writes ``x`` before it reads ``g_y`` (``x -= lr * g_x`` first) reads the new ``x`` as ``y``'s gradient. The
analysis here reads the kernel's body (the generator's own code, parsed by :mod:`ast`, never run) and tracks,
for every name, the arrays it may be a view of (its *roots*): an argument is its own root, a new array (an
arithmetic result, a reduction, a product, a call that computes) is a new root, and a view (a bare name, ``.T``,
indexing, ``reshape``, ``broadcast_to``, an in-place method's result, ...) has the roots of what it views.
Anything it does not know to be new counts as a view of every array it mentions (a needless copy at worst,
never a missed alias). A returned value whose roots meet an argument's, or an earlier returned value's, is
returned through ``ops.own`` (a copy).
"""

from __future__ import annotations

import ast
import itertools
import textwrap
from collections.abc import Iterable, Sequence

#: module names whose attributes are functions, not arrays
_MODULES = frozenset({"np", "torch", "ops", "math", "F"})

#: functions (``np.<f>``, ``torch.<f>``, ``torch.ops.aten.<f>``) whose result may be a view of their array arguments
_VIEW_FUNCTIONS = frozenset({
    "alias", "as_strided", "as_tensor", "asanyarray", "asarray", "ascontiguousarray", "asfortranarray", "atleast_1d",
    "atleast_2d", "atleast_3d", "broadcast_arrays", "broadcast_tensors", "broadcast_to", "chunk", "conj",
    "detach", "diagonal", "einsum", "expand", "expand_dims", "flatten", "flip", "fliplr", "flipud", "from_numpy",
    "imag", "matrix_transpose", "moveaxis", "movedim", "narrow", "permute", "permute_dims", "positive", "ravel",
    "real", "require", "reshape", "resolve_conj", "resolve_neg", "rot90", "select", "sliding_window_view",
    "split", "squeeze", "swapaxes", "swapdims", "t", "tensor_split", "transpose", "unbind", "unflatten",
    "unsqueeze", "view", "view_as_complex", "view_as_real", "written_over",
})

#: methods whose result may be (a view of) the array they are called on, besides the in-place ones (``add_``)
_VIEW_METHODS = _VIEW_FUNCTIONS | frozenset({
    "T", "astype", "contiguous", "cpu", "cuda", "double", "expand_as", "float", "half", "mT", "numpy", "reshape_as",
    "to", "type", "type_as", "unfold", "view_as",
})

#: builtins whose result may be one of their arguments
_PICKING_BUILTINS = frozenset({"max", "min"})


class _Roots:
    """Per name, the roots it may view; a fresh root per new array (a counter, never a user name)."""

    def __init__(self, args: Iterable[str]) -> None:
        self.of: dict[str, frozenset[str]] = {a: frozenset({a}) for a in args}
        self._fresh = (f"#new{i}" for i in itertools.count())

    def new(self) -> frozenset[str]:
        return frozenset({next(self._fresh)})

    def expr(self, node: ast.expr) -> frozenset[str]:
        """The roots the value of ``node`` may view."""
        if isinstance(node, ast.Name):
            return self.of.get(node.id, frozenset())
        if isinstance(node, ast.Constant):
            return frozenset()
        if isinstance(node, (ast.BinOp, ast.Compare, ast.BoolOp)):
            return self.new()
        if isinstance(node, ast.UnaryOp):  # (torch's unary + is torch.positive: the tensor itself)
            return self.expr(node.operand) if isinstance(node.op, ast.UAdd) else self.new()
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id in _MODULES:
                return frozenset()  # (np.pi, torch.float64)
            return self.expr(node.value)  # .T, .mT, .real, and anything else read off an array
        if isinstance(node, ast.Subscript):
            return self.expr(node.value)
        if isinstance(node, ast.IfExp):
            return self.expr(node.body) | self.expr(node.orelse)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return self._union(node.elts)
        if isinstance(node, ast.Call):
            return self._call(node)
        return self._mentioned(node)

    def _call(self, node: ast.Call) -> frozenset[str]:
        out = [k.value for k in node.keywords if k.arg == "out"]
        if out:  # (torch.mul(a, b, out=c) is c)
            return self.expr(out[0])
        f = node.func
        if isinstance(f, ast.Name):
            return self._union(node.args) if f.id in _PICKING_BUILTINS else self.new()
        if not isinstance(f, ast.Attribute):
            return self._mentioned(node)
        base = f.value
        while isinstance(base, ast.Attribute):
            base = base.value
        if isinstance(base, ast.Name) and base.id in _MODULES:  # a function: np.f, torch.ops.aten.f, ops.f
            if f.attr == "einsum":  # (one operand: a transpose or a diagonal can be a view; two: a product)
                return self._union(node.args[1:]) if len(node.args) == 2 else self.new()
            return self._union(node.args) if f.attr in _VIEW_FUNCTIONS else self.new()
        inplace = f.attr.endswith("_") and not f.attr.startswith("_")
        if f.attr in _VIEW_METHODS or inplace:
            return self.expr(f.value)
        return self.new()  # (.sum(), .clone(), .copy(), .exp() ...)

    def _union(self, nodes: Iterable[ast.expr]) -> frozenset[str]:
        return frozenset().union(*(self.expr(a) for a in nodes))

    def _mentioned(self, node: ast.AST) -> frozenset[str]:
        return frozenset().union(*(self.of.get(n.id, frozenset()) for n in ast.walk(node) if isinstance(n, ast.Name)))

    def bind(self, target: ast.expr, roots: frozenset[str], value: ast.expr | None) -> None:
        if isinstance(target, ast.Name):
            self.of[target.id] = roots
        elif isinstance(target, (ast.Tuple, ast.List)):
            if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts):
                for t, v in zip(target.elts, value.elts):
                    self.bind(t, self.expr(v), v)
            else:  # a, b = f(...) where f computes: each a new array; else each may view what the value views
                fresh = isinstance(value, ast.Call) and all(r.startswith("#new") for r in roots)
                for t in target.elts:
                    self.bind(t, self.new() if fresh else roots, None)
        elif isinstance(target, ast.Starred):
            self.bind(target.value, roots, None)
        # (a subscript or attribute target writes into an existing array: no name changes what it views)

    def run(self, stmts: Sequence[ast.stmt]) -> None:
        for s in stmts:
            if isinstance(s, ast.Assign):
                roots = self.expr(s.value)
                for t in s.targets:
                    self.bind(t, roots, s.value)
            elif isinstance(s, ast.AnnAssign) and s.value is not None:
                self.bind(s.target, self.expr(s.value), s.value)
            elif isinstance(s, ast.AugAssign):  # x += y: x is the same array (numpy and torch write in place)
                continue
            elif isinstance(s, (ast.For, ast.While)):
                if isinstance(s, ast.For):
                    self.bind(s.target, self.expr(s.iter), None)
                for _ in range(2):  # twice: what a name views after one step can carry into the next
                    before = dict(self.of)
                    self.run(s.body)
                    self._merge(before)
                self.run(s.orelse)
            elif isinstance(s, ast.If):
                before = dict(self.of)
                self.run(s.body)
                after = self.of
                self.of = dict(before)
                self.run(s.orelse)
                for k, v in after.items():
                    self.of[k] = self.of.get(k, frozenset()) | v
            elif isinstance(s, (ast.With, ast.Try)):
                self.run(s.body)
            # (expressions, del, pass, return: no name changes what it views)

    def _merge(self, before: dict[str, frozenset[str]]) -> None:
        for k, v in before.items():
            self.of[k] = self.of.get(k, frozenset()) | v


def owned_return(args: Sequence[str], body: Sequence[str], ret: str) -> str:
    """``ret`` (the text of the kernel's returned expression) with every returned value that may share memory
    with an argument, or with a value returned before it, wrapped in ``ops.own`` (a copy); ``ret`` itself where
    none does. ``body``: the kernel's body lines, as generated (indented)."""
    roots = _Roots(args)
    roots.run(ast.parse(textwrap.dedent("\n".join(body))).body)
    tree = ast.parse(ret, mode="eval")
    taken = frozenset(args)
    wrap: list[ast.expr] = []

    def visit(node: ast.expr) -> None:
        nonlocal taken
        if isinstance(node, ast.Dict):
            for v in node.values:
                visit(v)
            return
        r = roots.expr(node)
        if r & taken:
            wrap.append(node)
        else:
            taken |= r

    visit(tree.body)
    lines = ret.splitlines(keepends=True)
    starts = list(itertools.accumulate((len(ln) for ln in lines), initial=0))
    for node in sorted(wrap, key=lambda n: (n.lineno, n.col_offset), reverse=True):  # (from the end: offsets hold)
        a = starts[node.lineno - 1] + node.col_offset
        b = starts[(node.end_lineno or node.lineno) - 1] + (node.end_col_offset or 0)
        ret = f"{ret[:a]}ops.own({ret[a:b]}){ret[b:]}"
    return ret
