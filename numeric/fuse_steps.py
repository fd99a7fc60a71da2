"""``fuse=True`` for recurrences: compile the step, loop in Python.

Tracing a generated recurrence whole (``torch.compile`` of the kernel) would unroll its loops over the T
steps: minutes of compilation for T = 64, and again for every T. Instead, the statements of each loop body
that compute tensors are moved into a function of their own, which ``torch.compile`` compiles once for all
sizes (``dynamic=True``); the loop stays in Python and calls it at each step. What stays in the loop is the
bookkeeping around the step: reading row t of a sequence (``X_t = X[t]``), the tape the backward loop reads
(``tape.append``, ``tape[t]``), the per-step values stored for after the loop.

The rewrite works on the syntax tree of dlmath's own generated module (validated identifiers only, see
:func:`numeric.kernel.run_generated`): a statement belongs to the step unless it mentions ``t`` (other than
as a row index of a tensor, ``N[t]``, which is read in the loop and passed in) or a list; the step's arguments
are the names it reads before it assigns them, its results the names it assigns that anything outside it reads.
"""

from __future__ import annotations

import ast

__all__ = ["compile_steps"]

_LIST_METHODS = {"append", "extend", "insert", "pop"}


def compile_steps(source: str, min_statements: int = 2) -> str:
    """``source`` (a generated module with a ``kernel`` function) with the tensor statements of each loop over
    ``t`` in compiled step functions; unchanged when there is no such loop."""
    tree = ast.parse(source)
    kernel = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "kernel")
    assigned = {a.arg for a in kernel.args.args}
    for node in ast.walk(kernel):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            assigned.add(node.id)
    lists = _list_names(kernel)
    steps: list[ast.stmt] = []
    for loop in [n for n in ast.walk(kernel) if isinstance(n, ast.For)]:
        if not (isinstance(loop.target, ast.Name) and loop.target.id == "t"):
            continue
        body: list[ast.stmt] = []
        run: list[ast.stmt] = []
        originals: list[ast.stmt] = []
        for stmt in loop.body:
            pure = _pure(stmt, lists)
            if pure is None:
                body.extend(_flush(run, originals, kernel, assigned, steps, min_statements))
                run, originals = [], []
                body.append(stmt)
            else:
                rows, stmt2 = pure
                for name, var in rows:  # N[t] read in the loop, passed to the step
                    body.append(ast.parse(f"{var} = {name}[t]").body[0])
                    assigned.add(var)
                run.append(stmt2)
                originals.append(stmt)
        body.extend(_flush(run, originals, kernel, assigned, steps, min_statements))
        loop.body = body
    if not steps:
        return source
    index = tree.body.index(kernel)
    tree.body[index:index] = steps
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def _list_names(fn: ast.FunctionDef) -> set[str]:
    """Names bound to Python lists in ``fn`` (the tape, the per-step stores)."""
    out: set[str] = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign):
            v: ast.expr = node.value.left if isinstance(node.value, ast.BinOp) else node.value  # [None] * T
            if isinstance(v, ast.List):
                out.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return out


class _Rows(ast.NodeTransformer):
    """``N[t]`` -> a name read before the step."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        self.generic_visit(node)
        if (isinstance(node.value, ast.Name) and isinstance(node.slice, ast.Name) and node.slice.id == "t"
                and isinstance(node.ctx, ast.Load)):
            var = self.rows.setdefault(node.value.id, f"{node.value.id}__row")
            return ast.copy_location(ast.Name(var, ast.Load()), node)
        return node


def _pure(stmt: ast.stmt, lists: set[str]) -> tuple[list[tuple[str, str]], ast.stmt] | None:
    """(the rows N[t] it reads, the statement reading them as names) if ``stmt`` computes tensors only."""
    if not isinstance(stmt, (ast.Assign, ast.Delete, ast.AugAssign, ast.Expr)):
        return None
    if isinstance(stmt, ast.Assign) and not all(_plain_target(t) for t in stmt.targets):
        return None
    if isinstance(stmt, ast.Expr):
        return None
    rows = _Rows()
    stmt2 = rows.visit(ast.parse(ast.unparse(stmt)).body[0])
    for node in ast.walk(stmt2):
        if isinstance(node, ast.Name) and (node.id == "t" or node.id in lists):
            return None
        if isinstance(node, ast.Attribute) and node.attr in _LIST_METHODS:
            return None
    if any(name in lists for name in rows.rows):
        return None
    return list(rows.rows.items()), stmt2


def _plain_target(t: ast.expr) -> bool:
    if isinstance(t, ast.Name):
        return True
    return isinstance(t, ast.Tuple) and all(isinstance(e, ast.Name) for e in t.elts)


def _flush(run: list[ast.stmt], originals: list[ast.stmt], kernel: ast.FunctionDef, assigned: set[str],
           steps: list[ast.stmt], min_statements: int) -> list[ast.stmt]:
    """``run`` (rewritten copies of the loop's statements ``originals``) as a call of a new compiled step
    function (appended to ``steps``), or as it is."""
    computing = [s for s in run if isinstance(s, (ast.Assign, ast.AugAssign)) and not isinstance(s.value, ast.Name)]
    if len(computing) < min_statements:  # a carry update (h_prev = h) is no step to compile
        return run
    inputs: list[str] = []
    stored: set[str] = set()
    deleted: set[str] = set()
    for stmt in run:
        loads = [n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
        for name in loads:
            if name not in stored and name in assigned and name not in inputs:
                inputs.append(name)
        for n in ast.walk(stmt):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                stored.add(n.id)
                deleted.discard(n.id)
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Del):
                deleted.add(n.id)
    inside = {id(n) for stmt in [*run, *originals] for n in ast.walk(stmt)}
    read_outside = {n.id for n in ast.walk(kernel) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                    and id(n) not in inside}
    # a name the run reads before it assigns it is carried to the next step: a result too
    outputs = [name for name in sorted(stored - deleted) if name in read_outside or name in inputs]
    if not outputs:
        return run
    name = f"_step{len(steps) // 2 + 1}"
    ret = ", ".join(outputs) + ","
    fn = ast.parse(f"def {name}({', '.join(inputs)}):\n    return ({ret})").body[0]
    assert isinstance(fn, ast.FunctionDef)
    fn.body[0:0] = run
    steps.append(fn)
    steps.append(ast.parse(f"{name} = torch.compile({name}, dynamic=True)").body[0])
    call = ast.parse(f"({ret}) = {name}({', '.join(inputs)})").body[0]
    return [call]
