"""The ``dlmath`` command line: help, list, backprop, codegen, trace and verify, end to end.

Commands run in-process through ``verify.cli.main``; their output is checked against values computed
here independently (closed forms, ``numeric.compile``), never against pasted numbers.
"""

from __future__ import annotations

import importlib.util
import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

import derive
import numeric
from verify.cli import build_parser, main

SUBCOMMANDS = ["list", "derive", "backprop", "hessian", "trace", "codegen", "verify", "bench"]


def test_every_subcommand_is_tested_here() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(SUBCOMMANDS)  # type: ignore[union-attr]


@pytest.mark.parametrize("cmd", [None, *SUBCOMMANDS])
def test_help(cmd: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--help"] if cmd is None else [cmd, "--help"]
    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith("usage: dlmath" + ("" if cmd is None else f" {cmd}"))


def test_list_prints_every_zoo_entry_in_100_columns(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["entry", "book", "title"]
    first_words = [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
    assert first_words == derive.models.names()
    assert max(len(line) for line in out.splitlines()) <= 100
    for name in derive.models.names():
        m = derive.models.get(name)
        row = next(line for line in out.splitlines() if line.split() and line.split()[0] == name)
        assert row.split()[1] == m.section.split()[0]


def test_list_wide_adds_parameters_inputs_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--wide"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["entry", "book", "params", "inputs", "options", "title"]
    for name in derive.models.names():
        m = derive.models.get(name)
        row = next(line for line in out.splitlines() if line.split() and line.split()[0] == name)
        assert m.section in row and m.title in row
        for p in [*m.params, *m.inputs, *derive.models.options(name)]:
            assert p in row


def test_registered_section_and_title_are_the_built_models(capsys: pytest.CaptureFixture[str]) -> None:
    """``dlmath list`` reads the section and title each entry registers (building nothing): every entry
    registers them, and the section is the built model's."""
    from derive.models import _ABOUT

    assert set(_ABOUT) == set(derive.models.names()), "register every entry with its section and title"
    for name in derive.models.names():
        assert derive.models.about(name)[0] == derive.models.get(name).section, name


def test_backprop_softmax_regression_prints_the_closed_form(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backprop", "softmax_regression"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(r"\hat{y} - y" in line for line in lines), lines
    delta = next(line for line in lines if line.startswith(r"\delta ="))
    assert delta.replace(" ", "") == r"\delta=\hat{y}-y"
    assert any(line.startswith("g_{W} =") for line in lines) and any(line.startswith("g_{b} =") for line in lines)


def test_backprop_text_format(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backprop", "softmax_regression", "--format", "text"]) == 0
    out = capsys.readouterr().out
    assert "δ = y\u0302 - y" in out and "\\" not in out


def test_derive_and_hessian_print_equations(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["derive", "logistic_regression", "--wrt", "w"]) == 0
    out = capsys.readouterr().out
    assert r"\sigma(z)" in out and "g_{w}" in out
    assert main(["hessian", "logistic_regression", "--wrt", "w"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("H_{w} =") and r"\hat{y} (1 - \hat{y})" in out


def _load(path: Path, name: str) -> object:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name, backend", [("softmax_regression", "numpy"), ("softmax_regression", "torch"),
                                           ("logistic_regression", "numpy"), ("shallow_autoencoder", "torch")])
def test_codegen_output_file_is_an_importable_kernel(name: str, backend: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / f"gen_{name}_{backend}.py"
    assert main(["codegen", name, "--backend", backend, "-o", str(path)]) == 0
    assert str(path) in capsys.readouterr().out
    m = derive.models.get(name)
    assert path.read_text(encoding="utf-8") == numeric.source(m, backend)
    mod = _load(path, path.stem)
    rng = np.random.default_rng(7)
    arrays = {k: rng.normal(size=s) for k, s in m.shapes().items()}
    for k, v in arrays.items():  # probability targets where declared (the kernels check them)
        if m.tensor(k).domain == "simplex":
            arrays[k] = np.exp(v) / np.exp(v).sum(-1, keepdims=True)
    f = numeric.compile(m, backend)
    want = f(**arrays)
    args = f._convert(arrays)
    got = mod.kernel(**args)  # type: ignore[attr-defined]
    assert float(got["loss"]) == pytest.approx(want["loss"], rel=1e-14)
    assert set(got["grad"]) == set(want["grad"]) == set(m.grad_names)
    for k in m.grad_names:
        np.testing.assert_allclose(np.asarray(got["grad"][k]), np.asarray(want["grad"][k]), rtol=1e-14, atol=0)


def test_codegen_hessian_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gen_logistic_hessian.py"
    assert main(["codegen", "logistic_regression", "--hessian", "w", "-o", str(path)]) == 0
    mod = _load(path, path.stem)
    rng = np.random.default_rng(3)
    X, w, b, y = rng.normal(size=(7, 3)), rng.normal(size=3), np.array(0.3), rng.uniform(size=7)
    H = mod.kernel(w=w, b=b, X=X, y=y)["hessian"]["w"]  # type: ignore[attr-defined]
    s = 1 / (1 + np.exp(-(X @ w + b)))
    np.testing.assert_allclose(H, (X.T * (s * (1 - s))) @ X / len(y), rtol=1e-12)


def test_codegen_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["codegen", "softmax_regression", "--backend", "torch"]) == 0
    assert capsys.readouterr().out == numeric.source(derive.models.get("softmax_regression"), "torch")


def _section(out: str, mode: str) -> dict[str, list[float]]:
    """name -> numbers of one mode's block of `dlmath trace` output."""
    block = out.split(f"{mode} mode:")[1]
    other = "reverse mode:" if mode == "forward" else None
    if other and other in block:
        block = block.split(other)[0]
    vals: dict[str, list[float]] = {}
    for line in block.splitlines():
        m = re.match(r"\s*(\w+) = (.*)$", line)
        if m:
            vals[m.group(1)] = [float(x) for x in re.findall(r"-?\d+\.?\d*(?:e[+-]?\d+)?", m.group(2))]
    return vals


def test_trace_autodiff_example_matches_the_closed_form(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "autodiff_example"]) == 0
    out = capsys.readouterr().out
    t1, t2, t3 = 1.0, 2.0, 0.5
    loss = math.sin(t1 * t2) + math.exp(t2 + t3) - 2 * t3
    grad = [t2 * math.cos(t1 * t2), t1 * math.cos(t1 * t2) + math.exp(t2 + t3), math.exp(t2 + t3) - 2]
    fwd, rev = _section(out, "forward"), _section(out, "reverse")
    for vals in (fwd, rev):
        assert vals["a6"] == pytest.approx([loss], abs=1e-6)
        assert vals["a4"] == pytest.approx([math.sin(t1 * t2)], abs=1e-6)
        assert vals["a5"] == pytest.approx([math.exp(t2 + t3)], abs=1e-6)
    assert fwd["a6_dot"] == pytest.approx(grad, abs=1e-6)  # forward mode: the tangent of the output
    assert rev["g_theta"] == pytest.approx(grad, abs=1e-6)  # reverse mode: the adjoint of theta
    assert rev["a2_bar"] == pytest.approx([math.exp(t2 + t3)], abs=1e-6)
    assert rev["a1_bar"] == pytest.approx([math.cos(t1 * t2)], abs=1e-6)


def test_trace_at_other_values(capsys: pytest.CaptureFixture[str]) -> None:
    t1, t2, t3 = -0.3, 0.7, 1.1
    assert main(["trace", "autodiff_example", "--at", f"theta={t1},{t2},{t3}"]) == 0
    rev = _section(capsys.readouterr().out, "reverse")
    grad = [t2 * math.cos(t1 * t2), t1 * math.cos(t1 * t2) + math.exp(t2 + t3), math.exp(t2 + t3) - 2]
    assert rev["g_theta"] == pytest.approx(grad, abs=1e-6)


def test_verify_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "softmax_regression", "--examples", "3"]) == 0
    cap = capsys.readouterr()
    assert "softmax_regression: 3 examples passed" in cap.out and cap.err == ""


_IMPL = """
import numpy as np


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def impl(W, b, X, Y):
    W, b, X, Y = (np.asarray(a, dtype=np.float64) for a in (W, b, X, Y))
    n = X.shape[0]
    z = X @ W.T + b
    m = z.max(axis=1, keepdims=True)
    logp = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    delta = _softmax(z) - Y
    g_W = delta.T @ X / {DIVISOR}
    return {{"loss": -(Y * logp).sum() / n, "grad": {{"W": g_W, "b": delta.mean(0)}}}}
"""


@pytest.mark.parametrize("correct", [True, False], ids=["correct", "wrong_scale"])
def test_verify_impl(correct: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    modname = f"dlmath_user_impl_{'ok' if correct else 'bad'}_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{modname}.py").write_text(textwrap.dedent(_IMPL.format(DIVISOR="n" if correct else "(n + 1)")))
    monkeypatch.syspath_prepend(str(tmp_path))
    rc = main(["verify", "softmax_regression", "--impl", f"{modname}:impl", "--examples", "3"])
    cap = capsys.readouterr()
    if correct:
        assert rc == 0, cap.err
        assert "the implementation: gradients" in cap.out
    else:
        assert rc == 1, cap.out
        assert cap.err.startswith("FAIL softmax_regression:"), cap.err
        assert "gradient W" in cap.err and "the implementation" in cap.err, cap.err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import dlmath
    from dlmath.__main__ import main as entry

    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0
    assert capsys.readouterr().out.strip() == f"dlmath {dlmath.__version__}"
    assert entry(["--version"]) == 0  # the console script answers before importing the command line
    assert capsys.readouterr().out.strip() == f"dlmath {dlmath.__version__}"
