"""How ``verify.check`` calls an implementation: fresh copies, the user's names and layouts, in-place
modifications, and implementations given as an ``nn.Module`` or a ``torch.autograd.Function``.

Every call gets fresh copies of the example's arrays (so ``w -= lr * dw; return w`` is an ordinary update and
cannot change the example), renamed by ``names`` (dlmath's name -> the implementation's keyword and result
key) and transposed by ``layouts`` (a weight stored the other way round). After the call the copies are
compared with what was handed over: an input changed in place is reported by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from derive.program import Model
from derive.tensor import LABELS

__all__ = ["Adapter", "upstream_inputs", "as_callable", "layout_perm"]

#: parameter names of common torch modules and functions, tried when ``names`` does not map a tensor
ALIASES = {"W": ("weight",), "b": ("bias",), "gamma": ("weight",), "beta": ("bias",)}


def upstream_inputs(m: Model) -> list[str]:
    """The upstream-gradient inputs of a layer entry (``G``, ``G_h``, ``G_c``): the loss is their inner
    product with the layer's outputs."""
    return [k for k in m.inputs if k == "G" or k.startswith("G_")]


def _axis_names(m: Model, name: str) -> list[str]:
    """dlmath's names of the axes of array ``name``: the model's dimension names (``n`` for samples)."""
    sym_to_name = {v: k for k, v in m.dims.items()}
    out = []
    for d in m.array_dims(m.tensor(name)):
        out.append(sym_to_name.get(d, str(d)))
    return out


def layout_perm(m: Model, name: str, spec: Any) -> tuple[int, ...]:
    """The axis permutation that turns dlmath's array ``name`` into the implementation's layout.

    ``spec`` is a permutation (``(1, 0)``), ``"T"`` (all axes reversed), or the implementation's axis order
    as comma-separated names: ``"in,out"`` for a 2-D weight stored (in, out) where dlmath stores (out, in), or
    the model's dimension names (``"p,K"`` for softmax_regression's ``W`` of shape (K, p)).
    """
    nd = len(m.array_dims(m.tensor(name)))
    if isinstance(spec, str) and spec.strip().upper() in ("T", "TRANSPOSE", "TRANSPOSED"):
        return tuple(reversed(range(nd)))
    if isinstance(spec, str) and all(p.strip().isdigit() for p in spec.split(",")):
        spec = tuple(int(p) for p in spec.split(","))
    if isinstance(spec, str):
        want = [s.strip() for s in spec.split(",")]
        ours = _axis_names(m, name)
        generic = ["out", "in"] if nd == 2 else None
        for names in ([ours] + ([generic] if generic else [])):
            if sorted(want) == sorted(names) and len(set(names)) == nd:
                return tuple(names.index(w) for w in want)
        known = ",".join(ours) + (" (or out,in)" if generic else "")
        raise ValueError(f"layouts[{name!r}] = {spec!r}: dlmath's axes of {name} are {known}; give the "
                         f"implementation's order of those names, a permutation such as (1, 0), or 'T'")
    if isinstance(spec, Sequence) and sorted(int(i) for i in spec) == list(range(nd)):
        return tuple(int(i) for i in spec)
    raise ValueError(f"layouts[{name!r}] = {spec!r} is not a layout of a {nd}-axis array: give a permutation "
                     f"of {tuple(range(nd))}, 'T', or axis names such as 'in,out'")


@dataclass
class Call:
    """One call of the implementation: its result in dlmath's names and layouts, and what it did."""

    out: Any
    #: dlmath names of the inputs the implementation changed in place, with (index, before, after)
    modified: dict[str, tuple[tuple[int, ...], float, float, int]]


class Adapter:
    """Calls ``fn`` on fresh copies of an example's arrays in the implementation's names and layouts."""

    def __init__(self, m: Model, fn: Callable[..., Any], backend: str, device: str,
                 names: Mapping[str, str] | None = None, layouts: Mapping[str, Any] | None = None):
        self.m, self.fn, self.backend, self.device = m, fn, backend, device
        self.names = dict(names or {})
        known = [*m.params, *m.inputs, *(["g"] if m.is_update else [])]
        for k in [*self.names, *(layouts or {})]:
            if k not in known:
                raise ValueError(f"{m.name} has no parameter or input {k!r} to rename or lay out; it has: "
                                 f"{', '.join(known)}")
        for k, v in self.names.items():
            if not isinstance(v, str) or not v.isidentifier():
                raise ValueError(f"names[{k!r}] must be the implementation's keyword (an identifier), got {v!r}")
        self.perms = {k: layout_perm(m, k, v) for k, v in (layouts or {}).items()}
        self.back = {v: k for k, v in self.names.items()}
        self.labels = {k for k, t in {**m.params, **m.inputs}.items() if t.domain == LABELS}

    def _to_impl(self, k: str, v: np.ndarray) -> Any:
        if k in self.labels:  # integer class indices are handed over as integers (usable as indices)
            a = np.array(v, copy=True).astype(np.int64)
            return torch.tensor(a, device=self.device) if self.backend == "torch" else a
        a = np.array(v, dtype=np.float64, copy=True)
        if k in self.perms:
            a = np.ascontiguousarray(np.transpose(a, self.perms[k]))
        return torch.tensor(a, device=self.device) if self.backend == "torch" else a

    def _from_impl(self, k: str, v: Any) -> Any:
        if k in self.perms and v is not None and np.ndim(_arr(v)) == len(self.perms[k]):
            return np.transpose(_arr(v), np.argsort(self.perms[k]))
        return v

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> Call:
        sent = {k: self._to_impl(k, v) for k, v in arrays.items()}
        before = {k: _arr(v).copy() for k, v in sent.items()}
        out = self.fn(**{self.names.get(k, k): v for k, v in sent.items()})
        modified: dict[str, tuple[tuple[int, ...], float, float, int]] = {}
        for k, v in sent.items():
            now = _arr(v)
            if now.shape != before[k].shape or not np.array_equal(now, before[k], equal_nan=True):
                if now.shape != before[k].shape:
                    modified[k] = ((), float("nan"), float("nan"), int(before[k].size))
                    continue
                diff = ~((now == before[k]) | (np.isnan(now) & np.isnan(before[k])))
                idx = tuple(int(i) for i in np.argwhere(diff)[0])
                if k in self.perms:  # report the index in dlmath's layout
                    idx = tuple(idx[self.perms[k].index(a)] for a in range(len(idx)))
                    b0 = float(np.transpose(before[k], np.argsort(self.perms[k]))[idx])
                    n0 = float(np.transpose(now, np.argsort(self.perms[k]))[idx])
                else:
                    b0, n0 = float(before[k][idx]), float(now[idx])
                modified[k] = (idx, b0, n0, int(diff.sum()))
        return Call(self._rename_out(out), modified)

    def _ours(self, key: str) -> str:
        """dlmath's name for the implementation's result key ``key``."""
        return self.back.get(key, key)

    def _rename_out(self, out: Any) -> Any:
        if not isinstance(out, dict):
            return out
        if self.m.is_update:
            return {self._ours(k): self._from_impl(self._ours(k), v) for k, v in out.items()}
        res = dict(out)
        if isinstance(out.get("grad"), dict):
            res["grad"] = {self._ours(k): self._from_impl(self._ours(k), v) for k, v in out["grad"].items()}
        return res


def _arr(v: Any) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().to(torch.float64).numpy() if v.dtype.is_floating_point else v.detach().cpu().numpy()
    return np.asarray(v)


# -- implementations given as an nn.Module or a torch.autograd.Function ------------------------------------


def _is_function(impl: Any) -> bool:
    return isinstance(impl, type) and issubclass(impl, torch.autograd.Function)


def as_callable(m: Model, impl: Any, names: Mapping[str, str] | None) -> tuple[Callable[..., Any], str, bool]:
    """``impl`` as ``f(**tensors) -> {"loss", "grad"}``, what it is, and whether it takes torch tensors.

    A plain callable is returned as it is. An ``nn.Module``'s parameters are matched to the model's by name
    (``names``, then the same name, then ``weight``/``bias`` for ``W``/``b``); its ``forward`` receives the
    model's other inputs (by its parameter names where they match, else in the model's order). A
    ``torch.autograd.Function`` is called through ``apply`` with the tensors its ``forward`` names. The loss
    is the module's scalar output, or for a layer entry ``sum(G * out)`` (one upstream input per output).
    """
    if not (isinstance(impl, torch.nn.Module) or _is_function(impl)):
        if not callable(impl):
            raise TypeError(f"implementation must be a callable f(**arrays) -> {{'loss', 'grad'}}, an nn.Module "
                            f"or a torch.autograd.Function, not {type(impl).__name__}")
        return impl, "the implementation", False
    if m.is_update:
        raise TypeError(f"{m.name} is an update rule: give a callable f(**state, g) -> next state, not "
                        f"{'an nn.Module' if isinstance(impl, torch.nn.Module) else 'an autograd.Function'}")
    names = dict(names or {})
    up = upstream_inputs(m)
    data = [k for k in m.inputs if k not in up and k not in m.carries]
    is_fn = _is_function(impl)
    kind = f"the autograd.Function {impl.__name__}" if is_fn else f"the module {type(impl).__name__}"

    def impl_name(k: str) -> list[str]:
        return [names[k]] if k in names else [k, *ALIASES.get(k, ())]

    pmap: dict[str, str] = {}  # dlmath param -> module parameter name
    if not is_fn:
        mod_params = dict(impl.named_parameters())
        for k in m.params:
            hit = next((c for c in impl_name(k) if c in mod_params), None)
            if hit is None:
                raise TypeError(f"{kind} has no parameter for {m.name}'s {k!r} (its parameters: "
                                f"{', '.join(mod_params) or 'none'}); map it with names={{{k!r}: '...'}}")
            pmap[k] = hit
        fwd = inspect.signature(impl.forward)
        argnames = [p.name for p in fwd.parameters.values()
                    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        wanted = data
    else:
        fwd = inspect.signature(impl.forward)
        argnames = [p.name for p in list(fwd.parameters.values())[1:]]  # after ctx
        wanted = [*m.params, *data]
    order = _bind(argnames, wanted, impl_name, kind, m)

    def f(**t: torch.Tensor) -> dict[str, Any]:
        leaves = {k: t[k].detach().clone().requires_grad_(True) for k in m.grad_names}
        vals = {**t, **leaves}
        args = [vals[k] for k in order]
        if is_fn:
            out = impl.apply(*args)
        else:
            out = torch.func.functional_call(impl, {pmap[k]: leaves[k] for k in m.params}, tuple(args))
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        if up:
            if len(outs) < len(up):
                raise TypeError(f"{kind} returned {len(outs)} output(s); {m.name} needs {len(up)} "
                                f"(one per upstream gradient {', '.join(up)})")
            loss = sum((vals[g] * o).sum() for g, o in zip(up, outs))
        else:
            loss = outs[0]
            if loss.ndim != 0:
                raise TypeError(f"{kind} returned shape {tuple(loss.shape)}; {m.name} has no upstream gradient "
                                "input, so its output must be the scalar loss")
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        return {"loss": loss.detach(),
                "grad": {k: (g if g is not None else torch.zeros_like(leaves[k])) for k, g in zip(leaves, grads)}}

    return f, kind, True


def _bind(argnames: list[str], wanted: list[str], impl_name: Callable[[str], list[str]], kind: str,
          m: Model) -> list[str]:
    """dlmath names for the implementation's positional parameters ``argnames``."""
    order: list[str] = []
    for a in argnames:
        hit = next((k for k in wanted if a in impl_name(k)), None)
        order.append(hit or "")
    if all(order) and sorted(order) == sorted(wanted):
        return order
    if len(argnames) >= len(wanted) and not any(order):  # unnamed: the model's order
        return list(wanted)
    if len(argnames) == len(wanted):
        rest = [k for k in wanted if k not in order]
        return [o or rest.pop(0) for o in order]
    raise TypeError(f"{kind}'s forward takes {', '.join(argnames) or 'nothing'}; {m.name} passes "
                    f"{', '.join(wanted)}: map them with names={{...}}")
