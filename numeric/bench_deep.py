"""Benchmarks for deep networks and sequence layers (part of ``dlmath bench``).

Sections:

* ``scaling``: build, derivation and compilation of ``mlp`` for L = 1 ... 1000 layers, cold, with the time
  per layer: time and program size must grow linearly in L (no expression swell, no whole-program scan per
  layer).
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


#: the depths of the scaling table (``--quick``: up to 128)
DEPTHS = (1, 4, 16, 32, 128, 512, 1000)


def bench_scaling(settings: Settings) -> int:
    """Cold build, derivation and compilation of ``mlp`` at depths up to 1000: the time per layer of each
    must stay flat (linear in L)."""
    from derive.autodiff import count_nodes

    quick = settings.rounds < 5
    depths = tuple(L for L in DEPTHS if not quick or L <= 128)
    rows, per_layer = [], {}
    for L in depths:
        best = [float("inf")] * 3
        # small depths take a few milliseconds: best of rounds; the deep ones once (seconds each)
        for _ in range(max(1, settings.derive_rounds) if L <= 32 else 1):
            derive.clear_caches()  # the zoo's cache too: every step is cold
            numeric.clear_cache()
            t0 = time.perf_counter()
            m = derive.models.get("mlp", layers=L)
            t1 = time.perf_counter()
            bp = derive.backprop(m)
            t2 = time.perf_counter()
            k = numeric.compile(m, "numpy")
            t3 = time.perf_counter()
            best = [min(b, t) for b, t in zip(best, (t1 - t0, t2 - t1, t3 - t2))]
        code = sum(1 for line in k.source.splitlines() if line.strip() and not line.lstrip().startswith(("#", '"')))
        per_layer[L] = [b / L for b in best]
        rows.append([str(L), *(f"{b * 1e3:.1f}" for b in best), *(f"{b / L * 1e3:.2f}" for b in best),
                     str(len(m.equations) + len(bp)), str(count_nodes(list(m.equations) + list(bp))), str(code)])
    print("== scaling: mlp at depth L, cold caches: build (derive.models.get), derive (derive.backprop), "
          "compile (numeric.compile, numpy) ==")
    print(format_table(["L", "build ms", "derive ms", "compile ms", "build ms/L", "derive ms/L", "compile ms/L",
                        "equations", "expression nodes", "code lines"], rows))
    lo, hi = (32 if 32 in per_layer else depths[0]), depths[-1]
    ratios = ", ".join(f"{what} {h / max(l, 1e-12):.2f}x" for what, l, h in
                       zip(("build", "derive", "compile"), per_layer[lo], per_layer[hi]))
    print(f"time per layer at L={hi} over L={lo}: {ratios} (1x: linear in depth; a quadratic step would show "
          f"{hi / lo:.0f}x)")
    print("derivation never depends on the numeric sizes; program size (equations, nodes, code) grows linearly.")
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
