"""``derive.from_torch``: PyTorch code captured with ``torch.export`` as a dlmath program.

The module (or plain function) is exported with every input dimension dynamic (``torch.export.Dim.AUTO``: the
sizes the code pins, such as a layer's width, become numbers; the others, such as the batch size, become
dimension symbols), decomposed to core ATen operations (``run_decompositions``), and each operation is mapped
onto dlmath's primitives through the table of :mod:`derive.frontends.torch_ops`. A custom
``torch.autograd.Function`` is traced through its forward: the program is the math of the forward, and the
user's hand-written backward is what ``verify.check`` compares with its derivative.

Names (the one mapping, documented in ``docs/torch_code.rst``):

* parameters and buffers take their ``named_parameters()`` / ``named_buffers()`` names with dots replaced by
  underscores (``fc1.weight`` -> ``fc1_weight``); they print in the book's letters where the owning module
  says what they are (a ``Linear`` or convolution's ``weight``/``bias`` -> ``W``/``b``, a norm's -> ``gamma``/
  ``beta``), subscripted by the module's trailing number (``fc1.weight`` -> ``W_1``) or else its name;
* inputs take the forward's argument names (``x``; ``args_0, args_1`` for ``*args``);
* dynamic dimensions are ``n`` (the first), then ``N_1``, ``N_2``, ...;
* one equation per captured layer step: the output of each leaf module (``z_1 = W_1 x + b_1``), and values
  used more than once; a norm's mean and standard deviation (``mu_1``, ``sigma_1``), attention's queries,
  keys, values and output (``Q``, ``K``, ``V``, ``U``); everything else fuses into the expressions.

A scalar output is the loss ``C``. Any other output makes a layer model: an upstream gradient ``G`` (one
``G_k`` per output for several) and ``C = sum(G * out)``, whose gradient is the vector-Jacobian product.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import sympy as sp

from ..program import Builder, Model, ModelError
from ..tensor import Node, ShapeError, Var, as_expr, einsum
from .torch_ops import OPS, Unsupported

__all__ = ["from_torch", "TorchReference", "param_identifier"]

_ACTIVATIONS = {"ReLU", "GELU", "Tanh", "Sigmoid", "SiLU", "Softplus", "LeakyReLU", "ELU", "Mish", "Hardtanh"}
_NORMS = {"LayerNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "RMSNorm", "GroupNorm", "InstanceNorm1d"}
_LINEAR = {"Linear", "Conv1d", "Conv2d", "Conv3d", "Bilinear"}


def param_identifier(fqn: str) -> str:
    """The identifier of a parameter or buffer: its ``named_parameters()`` name with dots as underscores
    (``fc1.weight`` -> ``fc1_weight``, ``layers.0.w`` -> ``layers_0_w``)."""
    ident = re.sub(r"\W", "_", fqn)
    return ident if ident.isidentifier() else "p_" + ident


def _subscript(path: str) -> str:
    """A module path as a subscript: its trailing number (``fc1`` -> ``1``), else its name in roman."""
    m = re.fullmatch(r"[A-Za-z_]*?(\d+)", path)
    if m:
        return m.group(1)
    return r"\mathrm{" + path.replace("_", r"\_") + "}"


def _name_tex(name: str) -> str:
    """LaTeX of a plain name: ``W1`` -> ``W_{1}``, ``x`` -> ``x``, ``gamma`` -> ``\\gamma``."""
    m = re.fullmatch(r"([A-Za-z]+)_?(\d+)", name)
    greek = {"alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "sigma", "tau", "phi", "omega"}
    if m:
        base = "\\" + m.group(1) if m.group(1) in greek else m.group(1)
        return f"{base}_{{{m.group(2)}}}"
    if name in greek:
        return "\\" + name
    if re.fullmatch(r"[A-Za-z]", name):
        return name
    return r"\mathrm{" + name.replace("_", r"\_") + "}"


def _param_tex(fqn: str, types: dict[str, str]) -> str:
    path, _, attr = fqn.rpartition(".")
    kind = types.get(path, "")
    norm = kind in _NORMS or "Norm" in kind
    if not path:
        if attr in ("weight", "bias"):
            return (r"\gamma" if attr == "weight" else r"\beta") if norm else ("W" if attr == "weight" else "b")
        return _name_tex(attr)
    sub = _subscript(path)
    if attr in ("weight", "bias"):
        letter = (r"\gamma" if attr == "weight" else r"\beta") if norm else "W" if attr == "weight" else "b"
        return f"{letter}_{{{sub}}}"
    for suffix, letter in (("_weight", "W"), ("_bias", "b")):
        if attr.endswith(suffix):
            tag = r"\mathrm{" + attr[: -len(suffix)].replace("_", r"\_") + "}"
            return f"{letter}_{{{tag},{sub}}}"
    return r"\mathrm{" + attr.replace("_", r"\_") + "}_{" + sub + "}"


class _FunctionModule:
    """Placeholder type; the real wrapper is built in :func:`_wrap` (it needs torch)."""


def _wrap(fn: Callable[..., Any]) -> Any:
    import torch

    class FunctionModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fn = fn

        def forward(self, *args: Any) -> Any:
            return self.fn(*args)

    return FunctionModule()


def _user_line(node: Any) -> str:
    """The user's source line that made an fx node (the innermost frame outside torch), from its stack trace."""
    import torch

    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)', trace)
    torch_dir = os.path.dirname(torch.__file__)
    here = os.path.dirname(os.path.abspath(__file__))
    user = [f for f in frames if not f[0].startswith((torch_dir, here)) and "/torch/" not in f[0]]
    pick = user[-1] if user else (frames[-1] if frames else None)
    if pick is None:
        return "(no source line recorded)"
    file, line, func, code = pick
    return f"{os.path.basename(file)}:{line} in {func}: {code.strip()}"


def _op_name(target: Any) -> tuple[str, str]:
    schema = getattr(target, "_schema", None)
    if schema is None:
        return str(target), str(target)
    base = schema.name.split("::")[-1]
    overload = getattr(target, "_overloadname", "default")
    return f"{base}.{overload}", base


class TorchReference:
    """The original PyTorch code as the independent reference of a captured model: ``ref(**tensors)`` runs
    the module (through ``torch.func.functional_call`` with the given parameters) and returns the loss (the
    scalar output, or ``sum(G * out)``); torch autograd through it uses any hand-written backward.

    ``diagnose`` is called by ``verify.check`` when a kernel disagrees with it: finite differences of the
    forward decide which side is wrong.
    """

    def __init__(self, module: Any, params: dict[str, str], buffers: dict[str, str], inputs: list[str],
                 labels: set[str], fixed: dict[int, Any], arity: int, grads: list[str], outputs: list[str] | None,
                 custom: list[str]):
        self.module, self.params, self.buffers = module, params, buffers
        self.inputs, self.labels, self.fixed, self.arity = inputs, labels, fixed, arity
        self.grads, self.outputs, self.custom = grads, outputs, custom

    def forward(self, **tensors: Any) -> Any:
        import torch

        state = {fqn: tensors[ident] for ident, fqn in {**self.params, **self.buffers}.items()}
        args: list[Any] = []
        names = iter(self.inputs)
        for i in range(self.arity):
            if i in self.fixed:
                args.append(self.fixed[i])
            else:
                name = next(names)
                t = tensors[name]
                args.append(t.long() if name in self.labels else t)
        return torch.func.functional_call(self.module, state, tuple(args))

    def __call__(self, **tensors: Any) -> Any:
        out = self.forward(**tensors)
        if self.outputs is None:
            return out
        from torch.utils._pytree import tree_leaves

        outs = tree_leaves(out)  # nested outputs (an LSTM's out, (h, c)) in the order torch.export flattens them
        return sum((tensors[g] * o).sum() for g, o in zip(self.outputs, outs))

    def diagnose(self, arrays: dict[str, Any], kernel: dict[str, Any]) -> str | None:
        """Which side of a disagreement is wrong, from a central finite difference of the forward at the
        worst entry; ``None`` where there is nothing to add."""
        import numpy as np
        import torch

        t = {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in arrays.items()}
        leaves = {k: t[k].clone().requires_grad_(True) for k in self.grads}
        loss = self(**{**t, **leaves})
        got = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        ref = {k: (g.detach().numpy() if g is not None else np.zeros(np.shape(arrays[k]))) for k, g in zip(leaves, got)}
        worst: tuple[float, str, tuple[int, ...]] | None = None
        for k in self.grads:
            kg = kernel["grad"].get(k)
            if kg is None:
                continue
            kg = kg.detach().cpu().numpy() if hasattr(kg, "detach") else np.asarray(kg)
            if kg.shape != ref[k].shape or not kg.size:
                continue
            scale = max(1.0, float(np.max(np.abs(ref[k]))))
            err = np.abs(kg - ref[k]) / (np.abs(ref[k]) + scale)
            i = int(np.nanargmax(np.where(np.isfinite(err), err, np.inf)))
            idx = tuple(int(v) for v in np.unravel_index(i, kg.shape))
            if worst is None or err.flat[i] > worst[0]:
                worst = (float(err.flat[i]), k, idx)
        if worst is None or worst[0] <= 1e-8:
            return None
        _, k, idx = worst
        kv = float((kernel["grad"][k].detach().cpu().numpy() if hasattr(kernel["grad"][k], "detach")
                    else np.asarray(kernel["grad"][k]))[idx])
        rv = float(ref[k][idx])

        def loss_at(step: float) -> float:
            moved = dict(t)
            x = t[k].clone()
            x[idx] += step
            moved[k] = x
            with torch.no_grad():
                return float(self(**moved))

        x0 = float(t[k][idx])
        h = 1e-5 * max(1.0, abs(x0))
        fd1 = (loss_at(h) - loss_at(-h)) / (2 * h)
        fd2 = (loss_at(h / 2) - loss_at(-h / 2)) / h
        fd = (4 * fd2 - fd1) / 3
        tol = 1e-5 * max(1.0, abs(fd)) + abs(fd1 - fd2)
        kernel_ok, ref_ok = abs(kv - fd) <= tol, abs(rv - fd) <= tol
        where = f"index {idx}" if idx else "its only entry"
        values = (f"your backward gives {rv:.12g}, the derivative of your forward {kv:.12g}, finite differences "
                  f"{fd:.12g}")
        if kernel_ok and not ref_ok:
            who = "your backward" if self.custom else "torch autograd on your code"
            fns = f" (autograd.Function {', '.join(self.custom)})" if self.custom else ""
            return (f"{who} for `{k}` disagrees with the derivative of your forward (and with finite "
                    f"differences) at {where}{fns}: {values}; the backward is wrong")
        if ref_ok and not kernel_ok:
            return (f"dlmath's derivative of your forward for `{k}` disagrees with your backward and with finite "
                    f"differences at {where}: {values}; this is a dlmath bug, please report it")
        return f"at {where} of `{k}`: {values}; finite differences do not decide between them"


def from_torch(module_or_function: Any, *example_args: Any, name: str | None = None) -> Model:
    """Capture PyTorch code as a dlmath model (``torch.export``, dynamic dimensions, core ATen).

    Args:
        module_or_function: a ``torch.nn.Module`` or a plain function of tensors (it may call custom
            ``torch.autograd.Function``\\ s: they are traced through their forward).
        example_args: example inputs to the forward; floating tensors are captured in float64. Every
            dimension the code does not pin stays symbolic, so the model runs at any batch size.
        name: the model's name (default: the module's class or the function's name).

    Returns:
        A :class:`~derive.program.Model` whose ``reference`` runs the original code (so ``verify.check``
        compares the derived gradients with torch autograd through it, hand-written backwards included).

    Raises:
        ModelError: the code cannot be captured, or uses an operation outside the ATen table (the message
            names the operation and the line of your code that called it).

    Example:
        >>> import torch, derive
        >>> m = derive.from_torch(torch.nn.Linear(3, 2), torch.randn(4, 3))  # doctest: +SKIP
        >>> print(derive.latex(m.equations[0]))  # doctest: +SKIP
        z^{(i)} = W x^{(i)} + b
    """
    import torch

    if isinstance(module_or_function, torch.nn.Module):
        module = copy.deepcopy(module_or_function)
        forward = module_or_function.forward
        label = name or type(module_or_function).__name__
    elif callable(module_or_function):
        module = _wrap(module_or_function)
        forward = module_or_function
        fn_name = getattr(module_or_function, "__name__", None)
        label = name or (fn_name if isinstance(fn_name, str) else "function")
        label = label if label.isidentifier() else "function"
    else:
        raise TypeError(f"from_torch takes a torch.nn.Module or a function, not {type(module_or_function).__name__}")
    if not example_args:
        raise ModelError(f"from_torch({label}) needs example arguments for the forward, e.g. "
                         f"from_torch(module, torch.randn(8, 3))")
    module = module.double()
    module.train(module_or_function.training if isinstance(module_or_function, torch.nn.Module) else False)
    args = tuple(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in example_args)
    names = _arg_names(forward, args)
    tensor_pos = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    specs = [{d: torch.export.Dim.AUTO for d in range(a.dim())} if isinstance(a, torch.Tensor) else None
             for a in args]
    dynamic: Any = (tuple(specs),) if not isinstance(module_or_function, torch.nn.Module) else tuple(specs)
    ep = _export(module, args, dynamic, label, strict=False)
    custom = _custom_functions(module, args)

    def convert(program: Any) -> Model:
        replace: dict[Any, Any] = {}
        for _ in range(16):
            try:
                return _Converter(program, module, label, names, tensor_pos, args, custom, replace).model()
            except _Restart as r:
                replace[r.symbol] = r.value
        raise ModelError(f"{label}: the sizes of the inputs could not be related (a dlmath bug, please report it)")

    try:
        # whole layers first (linear, layer_norm, attention: one operation each, as the book writes them)
        return convert(ep)
    except NotInTable:
        pass
    try:  # then the core ATen operations they decompose into
        ep = _decompose(ep, label)
        return convert(ep)
    except NotInTable as e:
        # torch.export's non-strict trace records only the forward's own line: the strict (Dynamo) trace
        # has the user's whole stack, so the refusal names the line that called the operation
        line = _strict_line(module, args, dynamic, e.node)
        raise ModelError(e.message(line)) from None


#: operations whose tensor operands broadcast against each other (their trailing sizes must agree)
_BROADCASTING = {"add", "sub", "rsub", "mul", "div", "where", "pow", "maximum", "minimum", "eq", "ne", "gt", "ge",
                 "lt", "le", "logical_and", "logical_or", "mse_loss", "binary_cross_entropy_with_logits",
                 "l1_loss", "smooth_l1_loss", "huber_loss", "expand", "broadcast_tensors", "clamp", "atan2"}


def _size_pairs(base: str, args: Sequence[Any]) -> list[tuple[Any, Any]]:
    """The sizes an operation needs equal: a view's element counts, a product's inner sizes, and the aligned
    trailing sizes of broadcast operands."""
    tensors = [a for a in args if isinstance(a, Node)]
    if base in ("view", "reshape", "_unsafe_view") and tensors and len(args) > 1 \
            and isinstance(args[1], (list, tuple)) and all(as_expr(d) != -1 for d in args[1]):
        return [(sp.Mul(*tensors[0].shape), sp.Mul(*(as_expr(d) for d in args[1])))]
    if base in ("linear",) and len(tensors) >= 2:
        return [(tensors[0].shape[-1], tensors[1].shape[-1])]
    if base in ("mm", "bmm", "matmul", "addmm") and len(tensors) >= 2:
        x, y = tensors[-2:]
        return [(x.shape[-1], y.shape[-2] if y.ndim > 1 else y.shape[-1])]
    if base in ("cross_entropy_loss", "nll_loss", "nll_loss_forward") and len(tensors) >= 2 and tensors[0].ndim > 1:
        return [(tensors[0].shape[0], tensors[1].shape[0])]
    if base == "cat" and args and isinstance(args[0], (list, tuple)):
        tensors = [a for a in args[0] if isinstance(a, Node)]
    elif base not in _BROADCASTING:
        return []
    pairs = []
    for t in tensors[1:]:
        for a, b in zip(reversed(tensors[0].shape), reversed(t.shape)):
            if as_expr(a) != 1 and as_expr(b) != 1:
                pairs.append((a, b))
    return pairs


class _Restart(Exception):
    """Two sizes torch.export kept apart are one: convert again with ``symbol`` replaced by ``value``."""

    def __init__(self, symbol: Any, value: Any):
        super().__init__(f"{symbol} = {value}")
        self.symbol, self.value = symbol, value


class NotInTable(ModelError):
    """An operation without a rule in the ATen table (the front end then decomposes, then refuses)."""

    def __init__(self, label: str, op: str, node: Any):
        self.label, self.op, self.node = label, op, node
        super().__init__(self.message(_user_line(node)))

    def message(self, line: str) -> str:
        return (f"{self.label}: the operation aten.{self.op} (at {line}) is not in dlmath's ATen table; see "
                f"docs/torch_code.rst for the operations covered")


def _export(module: Any, args: Sequence[Any], dynamic: Any, label: str, strict: bool) -> Any:
    import torch

    try:
        return torch.export.export(module, tuple(args), dynamic_shapes=dynamic, strict=strict)
    except Exception as e:  # torch's own message, shortened to its first line, with what to do
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"torch.export could not capture {label}: {first} (from_torch needs code that "
                         f"torch.export can trace: no data-dependent Python control flow)") from None


def _decompose(ep: Any, label: str) -> Any:
    try:
        return ep.run_decompositions()
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"torch.export could not decompose {label} to core ATen: {first}") from None


def _strict_line(module: Any, args: Sequence[Any], dynamic: Any, node: Any) -> str:
    """The user's line of ``node`` from a strict (Dynamo) export, which keeps the whole user stack."""
    fallback = _user_line(node)
    try:
        ep = _export(module, args, dynamic, "", strict=True).run_decompositions()
    except Exception:
        return fallback
    same = [n for n in ep.graph.nodes if n.op == "call_function" and n.target == node.target]
    match = next((n for n in same if n.name == node.name), same[0] if same else None)
    return _user_line(match) if match is not None else fallback


def _arg_names(forward: Callable[..., Any], args: Sequence[Any]) -> list[str]:
    try:
        sig = inspect.signature(forward)
    except (TypeError, ValueError):
        return [f"x{i}" for i in range(len(args))]
    out: list[str] = []
    params = [p for p in sig.parameters.values() if p.name != "self"]
    for i in range(len(args)):
        if i < len(params) and params[i].kind in (params[i].POSITIONAL_ONLY, params[i].POSITIONAL_OR_KEYWORD):
            out.append(params[i].name)
        else:
            var = next((p.name for p in params if p.kind == p.VAR_POSITIONAL), "x")
            out.append(f"{var}_{i}")
    return out


def _custom_functions(module: Any, args: Sequence[Any]) -> list[str]:
    """The custom ``autograd.Function`` classes the forward calls (seen in the autograd graph it builds)."""
    import torch

    leaves = [a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
              for a in args]
    try:
        with torch.enable_grad():
            out = module(*leaves)
    except Exception:
        return []
    outs = out if isinstance(out, (tuple, list)) else (out,)
    seen: list[str] = []
    stack = [o.grad_fn for o in outs if isinstance(o, torch.Tensor) and o.grad_fn is not None]
    visited: set[int] = set()
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in visited:
            continue
        visited.add(id(fn))
        if isinstance(fn, torch.autograd.function.BackwardCFunction):
            nm = type(fn).__name__.removesuffix("Backward")
            if nm not in seen:
                seen.append(nm)
        nexts: Sequence[tuple[Any, int]] = fn.next_functions
        stack.extend(f for f, _ in nexts)
    return seen


class _Converter:
    """Walks the exported graph, mapping each ATen node through the table and writing the equations."""

    def __init__(self, ep: Any, module: Any, label: str, names: list[str], tensor_pos: list[int],
                 args: Sequence[Any], custom: list[str], replace: dict[Any, Any] | None = None):
        self.ep, self.module, self.label, self.names = ep, module, label, names
        self.replace: dict[Any, Any] = dict(replace or {})
        self.current: Any = None
        self.hints: dict[Any, int] = {}
        self.tensor_pos, self.args, self.custom = tensor_pos, args, custom
        ident = re.sub(r"\W", "_", label)
        self.b = Builder(ident if ident.isidentifier() else "torch_model", f"captured from PyTorch: {label}",
                         "PyTorch code")
        self.env: dict[str, Any] = {}
        self.symbols: dict[Any, sp.Symbol] = {}
        self.taken: set[str] = set()
        self.types = {p: type(m).__name__ for p, m in module.named_modules()}
        #: which parameters autograd gives gradients for (a frozen one, requires_grad=False, is held fixed)
        self.trainable = {p: t.requires_grad for p, t in module.named_parameters(remove_duplicate=False)} \
            if hasattr(module, "named_parameters") else {}
        self.tex: dict[int, str] = {}
        self.hidden = 0
        self.consts: dict[tuple[str, float], sp.Expr] = {}

    # -- names ---------------------------------------------------------------------------------------
    def _fresh(self, base: str) -> str:
        base = base if base.isidentifier() else "v_" + re.sub(r"\W", "_", base)
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    def _dim(self, s: Any) -> Any:
        """A torch size (int or SymInt) as a SymPy expression in the model's dimensions."""
        import torch

        if isinstance(s, int):
            return sp.Integer(s)
        if isinstance(s, torch.SymInt):
            expr = self._torch_expr(s.node.expr)
            for sym in sorted(expr.free_symbols, key=str):
                if sym not in self.symbols:
                    self._new_dim(sym, None)
            return expr.xreplace(self.symbols)
        raise Unsupported(f"a size of type {type(s).__name__}")

    def _torch_expr(self, expr: Any) -> Any:
        """A size in torch's symbols, with the sizes found equal substituted and torch's integer functions
        (``FloorDiv``, ``CleanDiv``, ...) as SymPy's own (``floor``)."""
        from torch.utils._sympy import functions as tf

        for _ in range(len(self.replace) + 1):
            nxt = expr.xreplace(self.replace)
            if nxt == expr:
                break
            expr = nxt
        plain: dict[Any, Callable[..., Any]] = {
            tf.FloorDiv: lambda a, b: sp.floor(a / b), tf.CleanDiv: lambda a, b: a / b,
            tf.CeilDiv: lambda a, b: sp.ceiling(a / b), tf.IntTrueDiv: lambda a, b: a / b,
            tf.PythonMod: lambda a, b: sp.Mod(a, b), tf.Mod: lambda a, b: sp.Mod(a, b),
            tf.FloorToInt: sp.floor, tf.CeilToInt: sp.ceiling, tf.Max: sp.Max, tf.Min: sp.Min,
        }
        for fn, rep in plain.items():
            if expr.has(fn):
                expr = expr.replace(fn, rep)
        return expr

    def _unify(self, pairs: Sequence[tuple[Any, Any]]) -> None:
        """Sizes that torch.export took as independent although the code only runs when they are equal (the
        key's batch and the query's in attention; a -1 in a view that pins a size): the first equation of
        ``pairs`` (dlmath's size against the size torch's code needs) solved for one dimension, where the
        solution is another dimension or a number and holds at the example sizes, restarts the conversion with
        that dimension substituted (:class:`_Restart`); otherwise nothing happens."""
        inv = {d: t for t, d in self.symbols.items()}
        hints = {d: self.hints.get(t) for t, d in self.symbols.items()}
        at_hints = {k: sp.Integer(v) for k, v in hints.items() if v is not None}
        newest = list(inv)
        for a, b in pairs:
            diff = sp.expand(as_expr(a) - as_expr(b))
            if diff == 0 or not diff.free_symbols & set(inv):
                continue
            if diff.xreplace(at_hints) != 0:
                continue  # sizes that differ at the example too: a real mismatch, reported as it is
            syms = sorted(diff.free_symbols & set(inv), key=lambda x: -newest.index(x))
            # products of sizes (a flattened batch against another flattened batch): factor by factor, in the
            # order the sizes were met, where the examples agree
            fa, fb = (sorted(sp.Mul.make_args(as_expr(e)), key=lambda x: newest.index(x) if x in inv else -1)
                      for e in (a, b))
            if len(fa) == len(fb) > 1:
                for u, w in zip(fa, fb):
                    if u != w and u in inv and w in inv and hints.get(u) is not None and hints.get(u) == hints.get(w):
                        old_, new_ = (u, w) if newest.index(u) > newest.index(w) else (w, u)
                        raise _Restart(inv[old_], inv[new_])
            if not diff.has(sp.floor, sp.ceiling, sp.Mod):
                for d in syms:
                    try:
                        sols = sp.solve(diff, d)
                    except (NotImplementedError, ValueError, TypeError):
                        continue
                    for sol in sols:
                        ok_form = (sol.is_Symbol and sol in inv) or (sol.is_Integer and sol > 0)
                        if ok_form and hints.get(d) is not None and sol.xreplace(at_hints) == hints[d]:
                            raise _Restart(inv[d], sol.xreplace(inv))
            # no size follows from the others (a flatten feeding a Linear pins H W only jointly): the
            # newest size in the equation is the example's, as torch's code needs
            d = next((x for x in syms if hints.get(x) is not None), None)
            if d is not None:
                raise _Restart(inv[d], sp.Integer(hints[d]))

    def _new_dim(self, sym: Any, example: int | None) -> sp.Symbol:
        first = not self.symbols
        nm = self._fresh("n" if first else f"N{len(self.symbols)}")
        rng = self.ep.range_constraints.get(sym)
        lo = 2
        if rng is not None:
            try:
                lo = max(1, int(rng.lower))
            except (TypeError, ValueError, OverflowError):
                lo = 2
        default = max(lo, example or 3)
        d = self.b.dim(nm, default, lo, max(lo + 2, min(default, 6)), tex=None)
        if not first:
            self.b.notation.setdefault("symbols", {})
        self.symbols[sym] = d
        return d

    # -- the graph -----------------------------------------------------------------------------------
    def model(self) -> Model:
        import torch

        sig = self.ep.graph_signature
        from torch.export.graph_signature import InputKind

        specs = {s.arg.name: s for s in sig.input_specs}
        params: dict[str, str] = {}
        buffers: dict[str, str] = {}
        inputs: list[str] = []
        labels: set[str] = set()
        user_i = 0
        placeholders = [n for n in self.ep.graph.nodes if n.op == "placeholder"]
        # user inputs first: their dynamic dimensions get the first names (n for the first axis of the first)
        order = sorted(placeholders, key=lambda n: specs[n.name].kind != InputKind.USER_INPUT)
        n_user = sum(specs[n.name].kind == InputKind.USER_INPUT for n in placeholders)
        # each argument a placeholder (numbers too), or the tensors only
        positions = list(range(len(self.args))) if n_user == len(self.args) else list(self.tensor_pos)
        for node in order:
            spec = specs[node.name]
            val = node.meta.get("val")
            if spec.kind == InputKind.USER_INPUT:
                pos = positions[user_i]
                user_i += 1
                if not isinstance(val, torch.Tensor):
                    fixed = self.args[pos] if pos < len(self.args) else None
                    if isinstance(fixed, (int, float, bool)) and not isinstance(fixed, torch.Tensor):
                        self.env[node.name] = fixed  # a number argument: fixed at its example value
                        continue
                    raise ModelError(f"{self.label}: input {node.name} is not a tensor ({type(val).__name__}); "
                                     f"pass tensors (or numbers, held fixed) as example arguments")
                nm = self._fresh(self.names[pos])
                for s in val.shape:
                    if isinstance(s, torch.SymInt) and s.node.expr.is_Symbol and s.node.hint is not None:
                        self.hints[s.node.expr] = int(s.node.hint)
                for s in val.shape:
                    if isinstance(s, torch.SymInt):
                        e = self._torch_expr(s.node.expr)
                        if e.is_Symbol and e not in self.symbols:
                            self._new_dim(e, self.hints.get(e))
                shape = tuple(self._dim(s) for s in val.shape)
                if val.dtype.is_floating_point:
                    v = self.b.input(nm, shape, _name_tex(nm))
                elif val.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
                    v = self.b.input(nm, shape, _name_tex(nm), domain="labels")
                    labels.add(nm)
                else:
                    raise ModelError(f"{self.label}: input {nm} has dtype {val.dtype}; from_torch takes floating "
                                     f"tensors and integer index tensors")
                inputs.append(nm)
                self.env[node.name] = v
            elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
                fqn = spec.target
                nm = self._fresh(param_identifier(fqn))
                self.taken.add("g_" + nm)
                shape = tuple(self._dim(s) for s in val.shape)
                tex = _param_tex(fqn, self.types)
                if spec.kind == InputKind.PARAMETER and self.trainable.get(fqn, True):
                    self.env[node.name] = self.b.param(nm, shape, tex)
                    params[nm] = fqn
                elif spec.kind == InputKind.PARAMETER:  # frozen (requires_grad=False): held fixed, as a buffer
                    self.env[node.name] = self.b.input(nm, shape, tex)
                    buffers[nm] = fqn
                else:
                    domain = "positive" if fqn.endswith("running_var") else "real"
                    if not val.dtype.is_floating_point:
                        self.env[node.name] = None  # an integer counter (num_batches_tracked): unused by the math
                        continue
                    self.env[node.name] = self.b.input(nm, shape, tex, domain=domain)
                    buffers[nm] = fqn
            elif spec.kind == InputKind.CONSTANT_TENSOR:
                const = self.ep.constants.get(spec.target)
                if const is not None and const.dim() == 0:
                    from ..tensor import Const

                    self.env[node.name] = Const(sp.Float(float(const)) if const.is_floating_point()
                                                else sp.Integer(int(const)), ())
                else:
                    raise ModelError(f"{self.label}: the code holds a constant tensor {spec.target} of shape "
                                     f"{tuple(const.shape) if const is not None else '?'}; dlmath programs hold no "
                                     f"numbers: make it a parameter or a buffer, or an input")
            else:
                raise ModelError(f"{self.label}: unsupported input kind {spec.kind} ({node.name})")
        for k in (*inputs, *params, *buffers):
            self.taken.add(k)
        from . import torch_ops

        token = torch_ops.CONSTANT.set(self._const)
        token_step = torch_ops.STEP.set(self._step)
        try:
            return self._convert(inputs, params, buffers, labels)
        finally:
            torch_ops.CONSTANT.reset(token)
            torch_ops.STEP.reset(token_step)

    def _step(self, name: str, value: Node, tex: str) -> Node:
        """An intermediate of the current layer step as its own equation (``mu_1 = ...``), subscripted by the
        module's number or name."""
        if self.current is None or not isinstance(value, Node) or isinstance(value, Var):
            return value
        scope = self._scope(self.current)
        leaf = scope[-1] if scope else ""
        sub = _subscript(leaf) if leaf else ""
        full = f"{tex}_{{{sub}}}" if sub else tex
        if any(t == full for t in self.tex.values()):
            self.hidden += 1
            full = f"{tex}_{{{sub + ',' if sub else ''}{self.hidden}}}"
        ident = self._fresh(f"{name}_{re.sub(r'[^0-9A-Za-z]', '', leaf)}" if leaf else name)
        var = self.b.eq(ident, value, full)
        self.tex[id(var)] = full
        return var

    def _const(self, name: str, value: float) -> sp.Expr:
        key = (name, value)
        if key not in self.consts:
            nm = self._fresh(name)
            self.consts[key] = self.b.const(nm, value)
        return self.consts[key]

    def _convert(self, inputs: list[str], params: dict[str, str], buffers: dict[str, str],
                 labels: set[str]) -> Model:
        from torch.export.graph_signature import OutputKind

        sig = self.ep.graph_signature
        nodes = [n for n in self.ep.graph.nodes if n.op == "call_function"]
        out_node = next(n for n in self.ep.graph.nodes if n.op == "output")
        user_outs = [a for a, s in zip(out_node.args[0], sig.output_specs) if s.kind == OutputKind.USER_OUTPUT]
        out_names = {a.name for a in user_outs if hasattr(a, "name")}
        for n in nodes:
            self.current = n
            self.env[n.name] = self._call(n)
            self._check_shape(n)
            if n.name not in out_names and self._is_step(n):
                self.env[n.name] = self._equation(n)
        outs = [self.env[a.name] if hasattr(a, "name") else a for a in user_outs]
        if any(not isinstance(o, Node) for o in outs):
            raise ModelError(f"{self.label}: the forward must return tensors")
        float_inputs = [k for k in inputs if k not in labels]
        if len(outs) == 1 and outs[0].shape == ():
            self._loss(outs[0], user_outs[0])
            outputs = None
        else:
            outputs = []
            last = []
            for o, fx in zip(outs, user_outs):
                v = o if isinstance(o, Var) else self._equation(fx, value=o)
                last.append(v)
            terms = []
            for k, v in enumerate(last):
                g = self._fresh("G" if len(last) == 1 else f"G{k + 1}")
                gt = r"\zeta" if len(last) == 1 else rf"\zeta_{{{k + 1}}}"
                G = self.b.input(g, v.shape, gt)
                outputs.append(g)
                labs = tuple(range(v.ndim))
                terms.append(einsum([labs, labs], (), [G, v]))
            total = terms[0]
            for t in terms[1:]:
                total = total + t
            self.b.eq(self._fresh("C"), total, "C")
        if self.symbols:
            first = next(iter(self.symbols.values()))
            first_input = self.b.inputs.get(inputs[0]) if inputs else None
            if (first_input is not None and first_input.shape and first_input.shape[0] == first
                    and self._per_sample(first)):
                self.b.notation.setdefault("index", {})[first] = "(i)"
        m = self.b.model(reduction="sum", diff_inputs=tuple(float_inputs))
        m.reference = TorchReference(self.module, params, buffers, inputs, labels,
                                     {i: a for i, a in enumerate(self.args) if i not in self.tensor_pos},
                                     len(self.args), m.grad_names, outputs, self.custom)
        m.options = {}
        return m

    def _per_sample(self, d: sp.Symbol) -> bool:
        """Whether every reshape, slice and pad keeps dimension ``d`` as its own leading axis: then the
        equations read per sample (``z^{(i)}``), as the book writes them."""
        from ..tensor import Pad, Reshape, Slice, walk

        for n in walk([eq.rhs for eq in self.b.equations]):
            if isinstance(n, Reshape):
                a, b = n.x.shape, n.shape
                if any(d in as_expr(x).free_symbols for x in (*a, *b)) and not (
                        a and b and a[0] == d and b[0] == d and all(d not in as_expr(x).free_symbols
                                                                  for x in (*a[1:], *b[1:]))):
                    return False
            if isinstance(n, (Slice, Pad)) and (n.axis == 0 and d in as_expr(n.x.shape[0]).free_symbols):
                return False
        return True

    def _loss(self, value: Node, fx: Any) -> None:
        self.b.eq(self._fresh("C"), value, "C")

    def _call(self, n: Any) -> Any:
        import operator

        import torch

        target = n.target
        args = [self._value(a) for a in n.args]
        kwargs = {k: self._value(v) for k, v in n.kwargs.items()}
        if any(isinstance(a, torch.fx.Node) and self.env.get(a.name, 0) is None for a in n.args):
            return None  # bookkeeping on an integer buffer (num_batches_tracked += 1): no part of the math
        if target is operator.getitem:
            return args[0][args[1]]
        py: dict[Any, Callable[..., Any]] = {operator.mul: lambda a, b: a * b, operator.add: lambda a, b: a + b, operator.sub: lambda a, b: a - b,
              operator.truediv: lambda a, b: as_expr(a) / b, operator.floordiv: lambda a, b: sp.floor(as_expr(a) / b),
              operator.pow: lambda a, b: as_expr(a) ** b, operator.neg: lambda a: -a,
              torch.sym_float: lambda a: a, torch.sym_int: lambda a: a, torch.sym_sqrt: lambda a: sp.sqrt(a)}
        if target in py:
            return py[target](*args)
        full, base = _op_name(target)
        if base in ("sym_size",):
            return args[0].shape[args[1] % args[0].ndim]
        if base == "sym_numel":
            return sp.Mul(*args[0].shape)
        if base in ("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size", "sym_constrain_range"):
            return None
        rule = OPS.get(full) or OPS.get(base)
        if base in ("_to_copy", "to", "type_as"):
            src, val = n.args[0].meta.get("val"), n.meta.get("val")
            if (isinstance(src, torch.Tensor) and isinstance(val, torch.Tensor) and src.dtype.is_floating_point
                    and not val.dtype.is_floating_point):
                rule = None
        if base in ("native_dropout", "bernoulli", "rand", "randn", "rand_like", "randn_like"):
            raise ModelError(f"{self.label}: {base} at {_user_line(n)} is random; capture the module in eval mode "
                             f"(module.eval()) or with dropout=0")
        if rule is None:
            raise NotInTable(self.label, full, n)
        try:
            return rule(*args, **kwargs)
        except ShapeError as e:
            self._unify(_size_pairs(base, args))
            raise ModelError(f"{self.label}: aten.{full} (at {_user_line(n)}) is not supported here: {e}") from None
        except (Unsupported, ValueError, TypeError, AttributeError, IndexError) as e:
            raise ModelError(f"{self.label}: aten.{full} (at {_user_line(n)}) is not supported here: {e}") from None

    def _value(self, a: Any) -> Any:
        import torch

        if isinstance(a, torch.fx.Node):
            return self.env[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(self._value(x) for x in a)
        if isinstance(a, torch.SymInt):
            return self._dim(a)
        return a

    def _check_shape(self, n: Any) -> None:
        import torch

        val, got = n.meta.get("val"), self.env[n.name]
        if isinstance(val, torch.Tensor) and isinstance(got, Node):
            want = tuple(self._dim(s) for s in val.shape)
            if len(want) != got.ndim or any(sp.simplify(a - b) != 0 for a, b in zip(want, got.shape)):
                if len(want) == got.ndim:
                    self._unify(list(zip(got.shape, want)))
                full, _ = _op_name(n.target)
                raise ModelError(f"{self.label}: dlmath's form of aten.{full} (at {_user_line(n)}) has shape "
                                 f"{tuple(got.shape)} where torch has {want}; this is a dlmath bug, please report it")

    def _scope(self, n: Any) -> list[str]:
        stack = n.meta.get("nn_module_stack") or {}
        return [p for p, _ in stack.values()]

    def _is_step(self, n: Any) -> bool:
        """Whether node ``n`` ends a captured layer step (a module's output) or is used several times."""
        from ..tensor import Const, Einsum, Reshape

        v = self.env[n.name]
        if not isinstance(v, Node) or isinstance(v, (Var, Const)) or v.shape == () and not n.users:
            return False
        if self._attention_role(n):
            return True
        cheap = isinstance(v, (Einsum, Reshape)) and all(isinstance(c, (Var, Const)) for c in v.children()) \
            and (not isinstance(v, Einsum) or len(v.operands) == 1)
        if cheap:
            return False
        scope = self._scope(n)
        leaf = scope[-1] if scope else ""
        users = self._users(n)
        for u in users:
            su = self._scope(u)
            if leaf and leaf not in su:  # the output of a module
                return True
            if su and su[-1] and su[-1] not in scope:  # the input of a module (an activation between layers)
                return True
        return len(users) > 1

    def _attention_role(self, n: Any) -> str:
        """The book's letter of an attention step: the queries, keys and values handed to scaled dot-product
        attention (``Q``, ``K``, ``V``, one block per head), its output ``U``, and the attention weights ``A``
        (a softmax inside a ``MultiheadAttention``); "" for any other node."""
        if n.op != "call_function":
            return ""
        _, base = _op_name(n.target)
        if base == "scaled_dot_product_attention":
            return "U"
        if base in ("softmax", "_softmax") and any(self.types.get(p) == "MultiheadAttention" for p in self._scope(n)):
            return "A"
        for u in self._users(n):
            if u.op == "call_function" and _op_name(u.target)[1] == "scaled_dot_product_attention":
                for role, a in zip("QKV", u.args[:3]):
                    if a is n or (hasattr(a, "op") and n in self._sources(a)):
                        return role
        return ""

    def _sources(self, a: Any) -> list[Any]:
        """``a`` and the nodes it passes on unchanged (identities, getitem)."""
        out = [a]
        while hasattr(a, "op") and a.op == "call_function" and (self._passes(a) or self._is_identity(a)):
            a = a.args[0]
            out.append(a)
        return out

    def _users(self, n: Any) -> list[Any]:
        """The users of ``n``, looking through those that pass its value on unchanged (getitem, identities)."""
        out: list[Any] = []
        for u in n.users:
            if u.op != "call_function":
                out.append(u)
            elif self._passes(u) or self._is_identity(u):
                out.extend(self._users(u))
            else:
                out.append(u)
        return out

    def _is_identity(self, u: Any) -> bool:
        """An operation that returns its input unchanged (a copy, a contiguous view, dropout with p = 0)."""
        from . import torch_ops

        full, base = _op_name(u.target)
        rule = OPS.get(full) or OPS.get(base)
        if rule is torch_ops._identity:
            return True
        if rule is torch_ops._dropout:
            p = u.args[1] if len(u.args) > 1 else u.kwargs.get("p", 0.5)
            train = u.args[2] if len(u.args) > 2 else u.kwargs.get("train", False)
            return p == 0 or not train
        return False

    def _passes(self, u: Any) -> bool:
        """A user that only forwards its input (getitem of a tuple)."""
        import operator

        return u.target is operator.getitem

    def _equation(self, n: Any, value: Node | None = None) -> Var:
        v = self.env[n.name] if value is None else value
        scope = self._scope(n)
        leaf = scope[-1] if scope else ""
        kind = self.types.get(leaf, "")
        role = self._attention_role(n)
        if role:
            many = sum(t == "MultiheadAttention" for t in self.types.values()) > 1
            tex = f"{role}_{{{_subscript(leaf)}}}" if many and leaf else role
            if any(t == tex for t in self.tex.values()):
                self.hidden += 1
                tex = f"{role}_{{{self.hidden}}}"
            ident = self._fresh(role)
        elif leaf:
            ident = self._fresh(param_identifier(leaf))
            sub = _subscript(leaf)
            if kind in _LINEAR:
                tex = f"z_{{{sub}}}"
            elif kind in _ACTIVATIONS:
                src = [a for a in n.args if hasattr(a, "name") and isinstance(self.env.get(a.name), Var)]
                prev = self.tex.get(id(self.env[src[0].name])) if src else None
                m = re.fullmatch(r"z_\{(.+)\}", prev or "")
                tex = f"a_{{{m.group(1)}}}" if m else f"a_{{{sub}}}"
            elif kind in _NORMS or "Norm" in kind:
                tex = rf"\hat{{z}}_{{{sub}}}"
            else:
                tex = f"h_{{{sub}}}"
            if any(t == tex for t in self.tex.values()):
                self.hidden += 1
                tex = f"{tex[:-1]},{self.hidden}}}"
        else:
            from ..tensor import Map

            prev = self.tex.get(id(v.args[0])) if isinstance(v, Map) and len(v.args) == 1 else None
            m = re.fullmatch(r"z_\{(.+)\}", prev or "")
            if m and not any(t == f"a_{{{m.group(1)}}}" for t in self.tex.values()):
                ident, tex = self._fresh(f"a_{re.sub(r'[^0-9A-Za-z]', '', m.group(1))}"), f"a_{{{m.group(1)}}}"
            else:
                self.hidden += 1
                ident = self._fresh(f"h{self.hidden}")
                tex = f"h_{{{self.hidden}}}"
        var = self.b.eq(ident, v, tex)
        self.tex[id(var)] = tex
        return var
