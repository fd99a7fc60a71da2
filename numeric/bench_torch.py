"""Benchmark of PyTorch code captured by ``derive.from_torch`` (the ``torch`` section of ``dlmath bench``).

Two tables, side by side in one run:

* capture + derive + generate: ``derive.from_torch`` (torch.export, the ATen table), ``derive.backprop`` and
  ``numeric.compile(m, "torch")`` (code generation), cold caches, for a GELU MLP, RMSNorm and
  ``nn.TransformerEncoderLayer(d_model=16, nhead=2, dropout=0)`` (goal: under 5 s for the transformer layer);
* the generated torch forward+backward against torch eager autograd on the original module (the loss
  ``sum(G * out)``, gradients of every parameter and the input), float32 and float64.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch

import derive
import numeric

from .bench import Settings, format_table, race

__all__ = ["bench_torch", "CASES"]


class _MLP(torch.nn.Module):
    def __init__(self, p: int, h: int, q: int) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = torch.nn.Linear(p, h), torch.nn.Linear(h, h), torch.nn.Linear(h, q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.nn.functional.gelu
        return self.fc3(g(self.fc2(g(self.fc1(x)))))


def _transformer() -> torch.nn.Module:
    return torch.nn.TransformerEncoderLayer(d_model=16, nhead=2, dropout=0, batch_first=True)


#: name -> (the module, its example input for the capture, the timed input's shape: full run, quick run)
CASES: dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    "mlp (GELU, 256-256-256-10)": (lambda: _MLP(256, 256, 10), (8, 256), (4096, 256), (256, 256)),
    "rmsnorm (256)": (lambda: torch.nn.RMSNorm(256), (8, 256), (4096, 256), (256, 256)),
    "TransformerEncoderLayer(16, 2)": (_transformer, (2, 5, 16), (32, 64, 16), (4, 16, 16)),
}


def _capture(make: Callable[[], torch.nn.Module], example: tuple[int, ...]) -> tuple[derive.Model, list[float]]:
    """The model, and seconds of capture, derive (backprop) and generate (compile), cold caches."""
    derive.clear_caches()
    numeric.clear_cache()
    mod = make()
    t0 = time.perf_counter()
    m = derive.from_torch(mod, torch.randn(example))
    t1 = time.perf_counter()
    derive.backprop(m)
    t2 = time.perf_counter()
    numeric.compile(m, "torch", check=False)
    t3 = time.perf_counter()
    return m, [t1 - t0, t2 - t1, t3 - t2]


def bench_torch(settings: Settings) -> int:
    """Capture + derive + generate time, and generated forward+backward vs eager autograd on the module."""
    quick = settings.rounds < 5
    build, speed = [], []
    for name, (make, example, full, small) in CASES.items():
        best: list[float] | None = None
        m: Any = None
        for _ in range(max(1, settings.derive_rounds)):
            m, times = _capture(make, example)
            best = times if best is None or sum(times) < sum(best) else best
        assert best is not None
        build.append([name, f"{best[0] * 1e3:.0f}", f"{best[1] * 1e3:.0f}", f"{best[2] * 1e3:.0f}",
                      f"{sum(best):.2f}", str(len(m.equations)), ", ".join(str(d) for d in m.dims.values())])
        ref = m.reference
        kernel = numeric.compile(m, "torch", check=False)
        torch.manual_seed(0)
        base = make()
        for dtype in (torch.float32, torch.float64):
            mod = copy.deepcopy(base).to(dtype)
            state = {**dict(mod.named_parameters()), **dict(mod.named_buffers())}
            x = torch.randn(small if quick else full, dtype=dtype)
            with torch.no_grad():
                G = torch.randn(mod(x).shape, dtype=dtype)
            arrays = {k: state[fqn].detach() for k, fqn in {**ref.params, **ref.buffers}.items()}
            arrays[ref.inputs[0]] = x
            assert ref.outputs is not None
            arrays[ref.outputs[0]] = G
            params = [state[fqn] for fqn in ref.params.values()]

            def eager(mod: Any = mod, x: torch.Tensor = x, G: torch.Tensor = G, params: list[Any] = params) -> Any:
                xl = x.detach().requires_grad_(True)
                return torch.autograd.grad((mod(xl) * G).sum(), [*params, xl])

            def gen(k: Any = kernel, a: dict[str, torch.Tensor] = arrays) -> Any:
                return k.raw(**a)

            # the same numbers first: the generated gradients are torch autograd's on the module
            got, want = gen(), eager()
            tol = 1e-3 if dtype == torch.float32 else 1e-9
            for (k, _), w in zip([*ref.params.items(), (ref.inputs[0], None)], want):
                g = got["grad"][k]
                if not torch.allclose(g, w, rtol=tol, atol=tol * float(w.abs().max())):
                    print(f"{name} {dtype}: generated gradient {k} differs from autograd on the module")
                    return 1
            r = race({"gen": gen, "eager": eager}, settings)
            speed.append([name, "x".join(map(str, small if quick else full)), str(dtype).replace("torch.", ""),
                          f"{r.seconds['gen'] * 1e3:.2f}", f"{r.seconds['eager'] * 1e3:.2f}",
                          f"{r.ratio('gen', 'eager'):.2f}x", f"{r.spread(('gen', 'eager')) * 100:.0f}%"])
    print("== torch: your PyTorch code captured (derive.from_torch), cold caches, best of rounds ==")
    print(format_table(["module", "capture ms", "derive ms", "generate ms", "total s", "equations",
                        "symbolic dimensions"], build, left=(0, 6)))
    print("capture: torch.export + the ATen table; derive: derive.backprop; generate: numeric.compile(m, 'torch').")
    print("goal: under 5 s in all for the transformer layer.")
    print()
    print("== torch: generated forward+backward vs eager autograd on the original module ==")
    print(format_table(["module", "input", "dtype", "generated ms", "eager ms", "gen/eager", "ratio IQR"], speed,
                       left=(0, 1, 2)))
    print("both compute sum(G * module(x)) and its gradients for every parameter and x (medians, interleaved).")
    print()
    return 0
