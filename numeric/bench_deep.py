"""Benchmarks for deep networks and sequence layers (part of ``dlmath bench``).

Sections:

* ``scaling``: derivation of ``mlp`` for L = 1 ... 32 layers, cold: time and program size must grow
  linearly in L (no expression swell).
* ``layers``: one forward+backward of the generated torch kernel vs torch eager autograd on an
  independent torch formulation (``verify.references``-style ``torch.nn.functional`` code), for ``mlp``
  (n=4096, widths 256-256-256-10), ``batch_norm``, ``layer_norm`` and ``attention``, float32 and float64.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import derive
import numeric

from .bench import Settings, format_table, race

__all__ = ["bench_scaling", "bench_layers", "bench_size_independence"]


def bench_scaling(settings: Settings) -> int:
    """Cold derivation and generation of ``mlp`` at increasing depth."""
    from derive.autodiff import count_nodes

    depths = (1, 2, 4, 8) if settings.rounds < 5 else (1, 2, 4, 8, 16, 32)
    rows = []
    for L in depths:
        times, gen = [], []
        for _ in range(max(1, settings.derive_rounds)):
            derive.clear_caches()
            numeric.clear_cache()
            t0 = time.perf_counter()
            m = derive.models.get("mlp", layers=L)
            bp = derive.backprop(m)
            t1 = time.perf_counter()
            src = numeric.source(m, "torch")
            t2 = time.perf_counter()
            times.append(t1 - t0)
            gen.append(t2 - t1)
        code = sum(1 for line in src.splitlines() if line.strip() and not line.lstrip().startswith(("#", '"')))
        rows.append([str(L), f"{min(times) * 1e3:.1f}", f"{min(gen) * 1e3:.1f}", str(len(m.equations) + len(bp)),
                     str(count_nodes(list(m.equations) + list(bp))), str(code)])
    print("== scaling: mlp derivation, cold caches (best of rounds) ==")
    print(format_table(["L", "derive ms", "codegen ms", "equations", "expression nodes", "code lines"], rows))
    print("linear growth in L means no expression swell; derivation never depends on the numeric sizes.")
    print()
    return 0


def _mlp_eager(t: dict[str, torch.Tensor]) -> torch.Tensor:
    h = t["X"]
    for l in (1, 2, 3):
        h = F.linear(h, t[f"W{l}"], t[f"b{l}"])
        if l < 3:
            h = torch.sigmoid(h)
    return F.cross_entropy(h, t["Y"])


def _bn_eager(t: dict[str, torch.Tensor]) -> torch.Tensor:
    out = F.batch_norm(t["Z"], None, None, weight=t["gamma"], bias=t["beta"], training=True, eps=1e-5)
    return (t["G"] * out).sum()


def _ln_eager(t: dict[str, torch.Tensor]) -> torch.Tensor:
    out = F.layer_norm(t["Z"], (t["Z"].shape[-1],), t["gamma"], t["beta"], 1e-5)
    return (t["G"] * out).sum()


def _attn_eager(t: dict[str, torch.Tensor]) -> torch.Tensor:
    return (t["G"] * F.scaled_dot_product_attention(t["Q"], t["K"], t["V"])).sum()


def _conv_eager(t: dict[str, torch.Tensor]) -> torch.Tensor:
    return (t["G"] * F.conv2d(t["X"], t["W"], t["b"], padding=1)).sum()


def _lstm_eager(t: dict[str, torch.Tensor]) -> torch.Tensor:
    from verify.references import lstm

    return lstm(**t)


CASES: dict[str, tuple[dict[str, Any], dict[str, int], dict[str, int], Callable[[dict[str, torch.Tensor]], torch.Tensor]]] = {
    "mlp": ({"layers": 3, "widths": (256, 256, 256, 10)}, {"n": 4096}, {"n": 256}, _mlp_eager),
    "batch_norm": ({}, {"n": 4096, "N": 256}, {"n": 256, "N": 32}, _bn_eager),
    "layer_norm": ({}, {"n": 4096, "p": 256}, {"n": 256, "p": 32}, _ln_eager),
    "attention": ({}, {"n": 32, "T_q": 128, "T_k": 128, "d": 64, "d_v": 64},
                  {"n": 4, "T_q": 16, "T_k": 16, "d": 8, "d_v": 8}, _attn_eager),
    "conv2d": ({"kernel": (3, 3), "padding": 1}, {"n": 32, "C_in": 64, "C_out": 64, "H_in": 32, "W_in": 32},
               {"n": 4, "C_in": 4, "C_out": 4, "H_in": 8, "W_in": 8}, _conv_eager),
    "lstm": ({}, {"T": 64, "n": 32, "p": 256, "m": 256, "q": 10}, {"T": 8, "n": 4, "p": 8, "m": 8, "q": 3},
             _lstm_eager),
}


def _arrays(m: derive.Model, sizes: dict[str, int], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, shape in m.shapes(**sizes).items():
        v = m.tensor(name)
        x = torch.randn(shape, generator=g, dtype=dtype)
        if v.domain == "simplex":
            x = torch.softmax(x, -1)
        elif v.role == "param" and name.startswith("W"):
            x = x / max(1, int(torch.tensor(shape[1:]).prod())) ** 0.5
        out[name] = x
    return out


def bench_size_independence(settings: Settings) -> int:
    """Derivation time of the recurrences and convolutions: the sizes (T, image size) never enter it."""
    rows = []
    for name, opts in (("conv2d", {"kernel": (3, 3), "padding": 1}), ("max_pool2d", {}), ("cnn", {}),
                       ("rnn", {}), ("lstm", {}), ("gru", {}), ("attention", {}), ("transformer_block", {})):
        derive.clear_caches()
        t0 = time.perf_counter()
        m = derive.models.get(name, **opts)
        bp = derive.backprop(m)
        t1 = time.perf_counter()
        numeric.source(m, "torch")
        t2 = time.perf_counter()
        rows.append([name, f"{(t1 - t0) * 1e3:.1f}", f"{(t2 - t1) * 1e3:.1f}", str(len(bp)),
                     ", ".join(str(d) for d in m.dims.values())])
    print("== size independence: derivation is symbolic in every dimension (T, H, W, ...) ==")
    print(format_table(["model", "derive ms", "codegen ms", "adjoint eqs", "symbolic dimensions"], rows,
                       left=(0, 4)))
    print("the same derivation serves every T and image size; the generated code loops over the actual T.")
    print()
    return 0


def bench_layers(settings: Settings) -> int:
    """Generated torch forward+backward vs torch eager autograd, side by side."""
    quick = settings.rounds < 5
    rows = []
    for name, (opts, full, small, eager_loss) in CASES.items():
        m = derive.models.get(name, **opts)
        k_raw = numeric.compile(m, "torch", check=False)
        k_checked = numeric.compile(m, "torch")
        for dtype in (torch.float32, torch.float64):
            t = _arrays(m, small if quick else full, dtype)
            leaves = m.grad_names

            def eager(t: dict[str, torch.Tensor] = t, f: Any = eager_loss, leaves: list[str] = leaves) -> Any:
                req = {k: (v.requires_grad_(True) if k in leaves else v) for k, v in t.items()}
                return torch.autograd.grad(f(req), [req[k] for k in leaves])

            plain = {k: v.detach() for k, v in t.items()}
            def gen(k: Any = k_raw, a: dict[str, torch.Tensor] = plain) -> Any:
                return k.raw(**a)

            def checked(k: Any = k_checked, a: dict[str, torch.Tensor] = plain) -> Any:
                return k(**a)

            contenders: dict[str, Callable[[], Any]] = {"gen": gen, "checked": checked, "eager": eager}
            if not quick and name != "lstm":  # the loop over T would be unrolled by the compiler
                k_fused = numeric.compile(m, "torch", check=False, fuse=True)

                def fused(k: Any = k_fused, a: dict[str, torch.Tensor] = plain) -> Any:
                    return k.raw(**a)

                fused()  # compile outside the timing
                contenders["fused"] = fused
            r = race(contenders, settings)
            sz = ",".join(f"{k}={v}" for k, v in (small if quick else full).items())
            fused_ratio = f"{r.ratio('fused', 'eager'):.2f}x" if "fused" in r.seconds else "-"
            rows.append([name, sz, str(dtype).replace("torch.", ""), f"{r.seconds['gen'] * 1e3:.2f}",
                         f"{r.seconds['eager'] * 1e3:.2f}", f"{r.ratio('gen', 'eager'):.2f}x",
                         f"{r.ratio('checked', 'eager'):.2f}x", fused_ratio,
                         f"{r.spread(('gen', 'eager')) * 100:.0f}%"])
    print("== layers: generated torch forward+backward vs torch eager autograd ==")
    print(format_table(["model", "sizes", "dtype", "generated ms", "eager ms", "gen/eager", "checked/eager",
                        "fused/eager", "ratio IQR"], rows, left=(0, 1, 2)))
    print("gen: the generated function alone (numeric.compile(m).raw); checked: with the input checks;")
    print("fused: the generated module through torch.compile (numeric.compile(m, 'torch', fuse=True)).")
    print()
    return 0
