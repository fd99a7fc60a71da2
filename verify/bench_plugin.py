"""Benchmark section ``plugin``: what dlmath's pytest plugin costs a pytest run that does not use it.

The plugin loads in every pytest run of an environment where dlmath is installed (entry point ``pytest11``),
so it must not import PyTorch, hypothesis or SymPy before its fixture is used. Measured: a fresh project in a
temporary folder with one trivial test, ``python -m pytest -q -p no:cacheprovider`` run as a subprocess with
the plugin and with ``-p no:dlmath``, alternating within every round (the order swaps from round to round)
after a warm-up run of each; the figure is the median over rounds of the per-round ratio (with / without),
which cancels the machine's slow drifts. The issue's bound is 1.30. Also listed: the modules the plugin's
import adds (none of torch, hypothesis, sympy, numpy may be among them).

Run with ``dlmath bench --only plugin`` (``--rounds N``; ``--quick``: 3 rounds).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: the bound of issue 10 on (with plugin) / (without) for a trivial run
BOUND = 1.30
HEAVY = ("torch", "hypothesis", "sympy", "numpy", "derive", "numeric", "verify.check")

_TRIVIAL = "def test_trivial():\n    assert 1 + 1 == 2\n"


def _run(folder: str, with_plugin: bool) -> float:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *([] if with_plugin else ["-p", "no:dlmath"])]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - start
    if r.returncode != 0 or "1 passed" not in r.stdout:
        raise RuntimeError(f"the trivial run failed ({' '.join(cmd)}): {r.stdout[-500:]}{r.stderr[-500:]}")
    return took


def _added_modules() -> list[str]:
    """Modules that ``import dlmath.pytest_plugin`` adds to a process that has imported pytest."""
    code = ("import sys, pytest; before = set(sys.modules); import dlmath.pytest_plugin; "
            "print('\\n'.join(sorted(set(sys.modules) - before)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"importing the plugin failed: {r.stderr[-500:]}")
    return r.stdout.split()


def measure(rounds: int = 7) -> dict[str, Any]:
    """Times of the trivial run with and without the plugin, per round, and the median ratio."""
    with tempfile.TemporaryDirectory(prefix="dlmath-plugin-bench-") as folder:
        Path(folder, "test_trivial.py").write_text(_TRIVIAL)
        _run(folder, True)  # warm-up: the file system cache, byte-compiled files
        _run(folder, False)
        with_, without, ratios = [], [], []
        for i in range(rounds):
            order = (True, False) if i % 2 == 0 else (False, True)
            t = {w: _run(folder, w) for w in order}
            with_.append(t[True])
            without.append(t[False])
            ratios.append(t[True] / t[False])
    return {"with": with_, "without": without, "ratios": ratios, "ratio": statistics.median(ratios),
            "added": _added_modules()}


def bench_plugin(settings: Any) -> int:
    """The ``plugin`` section: one table, and 1 if the bound is exceeded or a heavy module is imported."""
    rounds = max(3, min(int(getattr(settings, "rounds", 7)), 11))
    print(f"plugin: a trivial pytest run with dlmath's plugin vs -p no:dlmath ({rounds} rounds, subprocesses, "
          f"median of per-round ratios; bound {BOUND:.2f})")
    try:
        r = measure(rounds)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"  error: {e}")
        return 1
    print(f"  {'run':<28s} {'median s':>9s} {'min s':>7s} {'max s':>7s}")
    for label, key in (("with the plugin", "with"), ("-p no:dlmath", "without")):
        v = r[key]
        print(f"  {label:<28s} {statistics.median(v):9.3f} {min(v):7.3f} {max(v):7.3f}")
    print(f"  ratio with/without: median {r['ratio']:.3f} (per round: "
          f"{', '.join(f'{x:.2f}' for x in r['ratios'])})")
    heavy = [m for m in r["added"] if m.split(".")[0] in HEAVY or m in HEAVY]
    print(f"  modules the plugin's import adds: {', '.join(r['added']) or 'none'}")
    problems = 0
    if r["ratio"] > BOUND:
        print(f"  MISMATCH: the plugin costs {100 * (r['ratio'] - 1):.0f}% (> {100 * (BOUND - 1):.0f}%)")
        problems += 1
    if heavy:
        print(f"  MISMATCH: the plugin imports {', '.join(heavy)} before its fixture is used")
        problems += 1
    print()
    return problems


if __name__ == "__main__":
    sys.exit(bench_plugin(None))
