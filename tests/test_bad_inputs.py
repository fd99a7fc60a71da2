"""One table of bad and edge inputs over the whole surface: the API (zoo options, Builder, derive.parse),
compiled kernels, verify and the CLI (issue 7).

Every row states its outcome and the test asserts it exactly:

- ``Raises(type, *needles)``: that exception type exactly (not a subclass, not a parent), with a message of
  one line that contains every needle (the offending input, and the fix where there is one);
- ``Cli(argv, *needles)``: the CLI, run in-process through ``verify.cli.main``, exits with 2 and writes one
  line ``dlmath <cmd>: error: ...`` to stderr (nothing else, no traceback) containing every needle;
- ``Agrees(fn)``: a valid edge input: ``fn`` computes with dlmath and compares with torch autograd on an
  independent reference (``verify.resolve_reference``), at float64's tolerance.

Cheap by construction: tiny sizes, models cached across rows, ``examples=1`` where ``verify.check`` runs, and
no subprocess except for Ctrl-C (the last test).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

import derive
import numeric
import verify
from derive import nn
from derive.models.specs import OptionError, OptionTypeError, Unchecked
from derive.parse import ExpressionShapeError, ParseError
from derive.program import ModelError
from derive.tensor import ShapeError
from numeric import InputError
from verify.check import Mismatch
from verify.cli import main

get = derive.models.get

# ---------------------------------------------------------------------------------------------------
# the three kinds of rows
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raises:
    fn: Callable[[], Any]
    exc: type[BaseException]
    needles: tuple[str, ...]


@dataclass(frozen=True)
class Cli:
    argv: tuple[str, ...]
    needles: tuple[str, ...]


@dataclass(frozen=True)
class Agrees:
    fn: Callable[[], None]


CASES: list[Any] = []


def raises(id: str, fn: Callable[[], Any], exc: type[BaseException], *needles: str) -> None:
    CASES.append(pytest.param(Raises(fn, exc, needles), id=id))


def cli(id: str, argv: Sequence[str], *needles: str) -> None:
    CASES.append(pytest.param(Cli(tuple(argv), needles), id="cli-" + id))


def agrees(id: str, fn: Callable[[], None]) -> None:
    CASES.append(pytest.param(Agrees(fn), id="ok-" + id))


# ---------------------------------------------------------------------------------------------------
# shared, cached material
# ---------------------------------------------------------------------------------------------------

RNG_SEED = 7


@functools.cache
def model(name: str, **opts: Any) -> derive.Model:
    """A zoo entry (``"mlp_labels"``: mlp with integer class labels)."""
    return get("mlp", targets="labels") if name == "mlp_labels" else get(name, **opts)


#: the sizes the rows below are written for (softmax_regression: X (5, 3), W (4, 3), Y (5, 4))
SIZES: dict[str, dict[str, int]] = {"softmax_regression": {"n": 5, "p": 3, "K": 4}, "layer_norm": {"n": 4, "p": 3},
                                    "batch_norm": {"n": 5, "N": 3}, "mlp": {"n": 5}, "mlp_labels": {"n": 5},
                                    "rnn": {"T": 4, "n": 2, "p": 3, "m": 3, "q": 3}, "dqn": {"n": 4},
                                    "linear_regression": {"n": 6, "p": 3}}


def arrays(name: str, **sizes: int) -> dict[str, np.ndarray]:
    """Valid float64 arrays for a zoo entry: probability rows for simplex inputs, a step count, one-hot rows,
    masks of 0/1, values in (0, 1) for the unit domain."""
    m = model(name)
    rng = np.random.default_rng(RNG_SEED)
    out = {}
    for k, shape in m.shapes(**{**SIZES.get(name, {}), **sizes}).items():
        v = m.tensor(k)
        x = rng.normal(size=shape)
        if v.domain == "simplex":
            x = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
        elif v.domain in ("unit",):
            x = rng.uniform(0.05, 0.95, size=shape)
        elif v.domain == "labels":
            x = rng.integers(0, 2, size=shape).astype(np.float64)
        elif v.domain == "count":
            x = np.full(shape, 3.0)
        elif v.domain in ("mask",):
            x = (rng.uniform(size=shape) < 0.5).astype(np.float64)
        elif v.domain == "one_hot":
            x = np.eye(shape[-1])[rng.integers(0, shape[-1], size=shape[:-1])] if shape else np.ones(shape)
        out[k] = x
    return out


def kernel(name: str, backend: str = "numpy") -> numeric.Kernel:
    return numeric.compile(model(name), backend)


def call(name: str, backend: str = "numpy", sizes: dict[str, int] | None = None, **changes: Any) -> Any:
    """Call the entry's kernel on valid arrays with ``changes`` applied (``None`` removes an array)."""
    a: dict[str, Any] = {**arrays(name, **(sizes or {})), **changes}
    a = {k: v for k, v in a.items() if v is not None}
    if backend == "torch":
        a = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in a.items()}
    return kernel(name, backend)(**a)


def autograd(m: derive.Model, a: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and gradients from torch autograd on the entry's independent reference (not the derivation)."""
    ref, _ = verify.resolve_reference(m)
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in a.items()}
    leaves = {k: t[k].clone().requires_grad_(True) for k in m.grad_names}
    loss = ref(**{**t, **leaves}, **m.options)
    gs = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return float(loss), {k: (g.numpy() if g is not None else np.zeros(a[k].shape)) for k, g in zip(leaves, gs)}


def assert_agrees(m: derive.Model, a: dict[str, np.ndarray], backend: str = "numpy") -> None:
    loss, grads = autograd(m, a)
    f = numeric.compile(m, backend)
    out = f(**({k: torch.tensor(v) for k, v in a.items()} if backend == "torch" else a))
    err, idx = verify.compare(out["loss"], loss)
    assert err <= 1e-10, f"loss {out['loss']!r} vs autograd {loss!r}"
    for k, want in grads.items():
        err, idx = verify.compare(out["grad"][k], want)
        assert err <= 1e-10, f"{k}: {out['grad'][k]!r} vs autograd {want!r} (worst at {idx})"


# ---------------------------------------------------------------------------------------------------
# 1. zoo options (derive.models.get): type, range, choices, and no code from option strings
# ---------------------------------------------------------------------------------------------------

CODE = "__import__('pathlib').Path('DLMATH_RAN_CODE').touch() or 0.1"

for _id, _name, _opts, _exc, _needles in [
    ("attention-causal-str", "attention", {"causal": "false"}, OptionTypeError, ("causal", "'false'", "True or False")),
    ("attention-causal-int", "attention", {"causal": 1}, OptionTypeError, ("causal", "1", "True or False")),
    ("mha-causal-str", "multihead_attention", {"causal": "yes"}, OptionTypeError, ("causal", "'yes'")),
    ("mha-heads-0", "multihead_attention", {"heads": 0}, OptionError, ("heads", "0", "from 1 to 64")),
    ("transformer-heads-65", "transformer_block", {"heads": 65}, OptionError, ("heads", "65", "64")),
    ("transformer-eps-neg", "transformer_block", {"eps": -1e-5}, OptionError, ("eps", "-1e-05", ">= 0")),
    ("maxpool-stride-0", "max_pool2d", {"stride": 0}, OptionError, ("stride", "0", ">= 1")),
    ("maxpool-stride-neg", "max_pool2d", {"stride": -2}, OptionError, ("stride", "-2")),
    ("maxpool-kernel-0", "max_pool2d", {"kernel": 0}, OptionError, ("kernel", "0")),
    ("maxpool-kernel-tuple", "max_pool2d", {"kernel": (2, 2)}, OptionTypeError, ("kernel", "(2, 2)", "integer")),
    ("maxpool-padding-neg", "max_pool2d", {"padding": -1}, OptionError, ("padding", "-1")),
    ("avgpool-stride-float", "avg_pool2d", {"stride": 1.5}, OptionTypeError, ("stride", "1.5")),
    ("mlp-layers-true", "mlp", {"layers": True}, OptionTypeError, ("layers", "True", "integer")),
    ("mlp-layers-0", "mlp", {"layers": 0}, OptionError, ("layers", "0", "from 1 to")),
    ("mlp-layers-neg", "mlp", {"layers": -3}, OptionError, ("layers", "-3")),
    ("mlp-layers-100000", "mlp", {"layers": 100000}, OptionError, ("layers", "100000", "2000")),
    ("mlp-layers-float", "mlp", {"layers": 2.5}, OptionTypeError, ("layers", "2.5")),
    ("mlp-layers-str", "mlp", {"layers": "3"}, OptionTypeError, ("layers", "'3'")),
    ("mlp-activation", "mlp", {"activation": "swish"}, OptionError, ("activation", "'swish'", "'sigmoid'")),
    ("mlp-activation-none", "mlp", {"activation": None}, OptionTypeError, ("activation", "None")),
    ("mlp-output", "mlp", {"output": "hinge"}, OptionError, ("output", "'hinge'", "'softmax_ce'")),
    ("mlp-widths-short", "mlp", {"layers": 3, "widths": (3, 4)}, ModelError, ("widths", "(3, 4)", "4")),
    ("mlp-widths-zero", "mlp", {"layers": 2, "widths": (3, 0, 3)}, OptionError, ("widths", "(3, 0, 3)", ">= 1")),
    ("mlp-widths-str", "mlp", {"widths": "3,4,3"}, OptionTypeError, ("widths", "'3,4,3'")),
    ("mlp-widths-bool", "mlp", {"layers": 1, "widths": (True, 2)}, OptionTypeError, ("widths", "True")),
    ("mlp-targets", "mlp", {"targets": "probs"}, ModelError, ("targets", "'probs'", "probabilities")),
    ("mlp-targets-output", "mlp", {"targets": "labels", "output": "identity_mse"}, ModelError,
     ("targets", "labels", "softmax_ce")),
    ("conv2d-kernel-int", "conv2d", {"kernel": 3}, OptionTypeError, ("kernel", "3", "tuple of 2 integers")),
    ("conv2d-kernel-0", "conv2d", {"kernel": (0, 3)}, OptionError, ("kernel", "(0, 3)", ">= 1")),
    ("conv2d-kernel-3d", "conv2d", {"kernel": (3, 3, 3)}, OptionError, ("kernel", "(3, 3, 3)", "2 integers")),
    ("conv2d-stride-0", "conv2d", {"stride": 0}, OptionError, ("stride", "0", ">= 1")),
    ("conv2d-padding-neg", "conv2d", {"padding": -1}, OptionError, ("padding", "-1", ">= 0")),
    ("conv2d-dilation-0", "conv2d", {"dilation": 0}, OptionError, ("dilation", "0", ">= 1")),
    ("cnn-channels-0", "cnn", {"channels": 0}, OptionError, ("channels", "0")),
    ("cnn-classes-1", "cnn", {"classes": 1}, OptionError, ("classes", "1", "from 2")),
    ("leaky-slope-nan", "leaky_relu", {"slope": float("nan")}, OptionError, ("slope", "nan", "finite")),
    ("leaky-slope-inf", "leaky_relu", {"slope": float("inf")}, OptionError, ("slope", "inf", "finite")),
    ("leaky-slope-str", "leaky_relu", {"slope": "0.1"}, OptionTypeError, ("slope", "'0.1'", "number")),
    ("leaky-slope-code", "leaky_relu", {"slope": CODE}, OptionTypeError, ("slope", "__import__", "number")),
    ("leaky-slope-complex", "leaky_relu", {"slope": 1j}, OptionTypeError, ("slope", "1j")),
    ("leaky-slop-typo", "leaky_relu", {"slop": 0.1}, ModelError, ("slop", "slope=0.01")),
    ("elu-alpha-str", "elu", {"alpha": "1"}, OptionTypeError, ("alpha", "'1'")),
    ("gelu-approximate", "gelu", {"approximate": "fast"}, ModelError, ("approximate", "'fast'", "'tanh'")),
    ("dropout-pkeep-0", "dropout", {"p_keep": 0}, OptionError, ("p_keep", "0", "> 0")),
    ("dropout-pkeep-big", "dropout", {"p_keep": 1.5}, OptionError, ("p_keep", "1.5", "<= 1")),
    ("dropout-pkeep-nan", "dropout", {"p_keep": float("nan")}, OptionError, ("p_keep", "nan")),
    ("batchnorm-eps-neg", "batch_norm", {"eps": -1e-5}, OptionError, ("eps", "-1e-05", ">= 0")),
    ("batchnorm-eps-nan", "batch_norm", {"eps": float("nan")}, OptionError, ("eps", "nan")),
    ("layernorm-eps-neg", "layer_norm", {"eps": -1.0}, OptionError, ("eps", "-1", ">= 0")),
    ("layernorm-eps-str", "layer_norm", {"eps": "1e-5"}, OptionTypeError, ("eps", "'1e-5'")),
    ("adam-beta1-1", "adam", {"beta1": 1}, OptionError, ("beta1", "1", "< 1")),
    ("adam-beta1-neg", "adam", {"beta1": -0.1}, OptionError, ("beta1", "-0.1", ">= 0")),
    ("adam-beta2-1", "adam", {"beta2": 1.0}, OptionError, ("beta2", "1", "< 1")),
    ("adam-eps-neg", "adam", {"eps": -1e-8}, OptionError, ("eps", "-1e-08", ">= 0")),
    ("adam-lr-neg", "adam", {"lr": -0.1}, OptionError, ("lr", "-0.1", ">= 0")),
    ("adam-lr-nan", "adam", {"lr": float("nan")}, OptionError, ("lr", "nan")),
    ("adam-wd-neg", "adam", {"weight_decay": -1}, OptionError, ("weight_decay", "-1")),
    ("adamw-beta1-1", "adamw", {"beta1": 1}, OptionError, ("beta1", "1", "< 1")),
    ("momentum-beta-1", "momentum", {"beta": 1}, OptionError, ("beta", "1", "< 1")),
    ("momentum-form", "momentum", {"form": "keras"}, OptionError, ("form", "'keras'", "'book'")),
    ("nesterov-beta-0", "nesterov", {"beta": 0}, OptionError, ("beta", "0", "> 0")),
    ("rmsprop-gamma-1", "rmsprop", {"gamma": 1}, OptionError, ("gamma", "1", "< 1")),
    ("adagrad-eps-neg", "adagrad", {"eps": -1}, OptionError, ("eps", "-1")),
    ("sgd-lr-inf", "sgd", {"lr": float("inf")}, OptionError, ("lr", "inf")),
    ("rnn-activation", "rnn", {"activation": "gelu"}, OptionError, ("activation", "'gelu'", "'tanh'")),
    ("gru-variant", "gru", {"variant": "keras"}, OptionError, ("variant", "'keras'", "'torch'")),
    ("posenc-M-0", "positional_encoding", {"M": 0}, OptionError, ("M", "0", "> 0")),
    ("ridge-lam-neg", "ridge_regression", {"lam": -1}, OptionError, ("lam", "-1", ">= 0")),
    ("autoencoder-activation", "shallow_autoencoder", {"activation": "gelu"}, OptionError,
     ("activation", "'gelu'", "'identity'")),
    ("residual-activation", "residual_block", {"activation": 3}, OptionTypeError, ("activation", "3")),
    ("rosenbrock-no-options", "rosenbrock", {"layers": 3}, ModelError, ("layers", "(none)")),
    ("softmax-regression-targets", "softmax_regression", {"targets": "soft"}, ModelError, ("targets", "'soft'")),
]:
    raises(f"option-{_id}", functools.partial(get, _name, **_opts), _exc, *_needles)

raises("get-unknown", lambda: get("no_such_model"), ModelError, "'no_such_model'", "Known models:", "mlp")
raises("get-typo", lambda: get("softmax_regresion"), ModelError, "Did you mean softmax_regression")
raises("get-not-a-string", lambda: get(3), TypeError, "string", "int")  # type: ignore[arg-type]


def _conv_too_small() -> Any:
    return model("conv2d", kernel=(9, 9)).shapes(H_in=4, W_in=4)


raises("conv2d-kernel-larger-than-input", _conv_too_small, ShapeError, "kernel=(9, 9)", "H_in = 4", "smaller")
raises("shapes-unknown-dim", lambda: model("softmax_regression").shapes(q=3), ModelError, "q", "n, p, K")
raises("shapes-zero", lambda: model("softmax_regression").shapes(p=0), ModelError, "dimension p", "0",
       "positive integer")
raises("shapes-bool", lambda: model("softmax_regression").shapes(n=True), ModelError, "dimension n", "True")

# ---------------------------------------------------------------------------------------------------
# 2. Builder
# ---------------------------------------------------------------------------------------------------


def _builder(step: Callable[[derive.Builder], Any]) -> Callable[[], Any]:
    def run() -> Any:
        b = derive.Builder("own", "a test model", "test")
        return step(b)

    return run


def _with_dims(b: derive.Builder) -> tuple[Any, Any]:
    n = b.samples("n", 3)
    p = b.dim("p", 2)
    return n, p


for _id, _step, _exc, _needles in [
    ("param-keyword", lambda b: b.param("lambda", ()), ModelError, ("'lambda'", "keyword", "lambda_")),
    ("param-None-keyword", lambda b: b.param("None", ()), ModelError, ("'None'", "keyword")),
    ("param-np", lambda b: b.param("np", ()), ModelError, ("'np'", "reserved")),
    ("param-torch", lambda b: b.param("torch", ()), ModelError, ("'torch'", "reserved")),
    ("param-ops", lambda b: b.param("ops", ()), ModelError, ("'ops'", "reserved")),
    ("param-math", lambda b: b.param("math", ()), ModelError, ("'math'", "reserved")),
    ("param-loss", lambda b: b.param("loss", ()), ModelError, ("'loss'", "reserved")),
    ("param-micro-sign", lambda b: b.param("\u00b5", ()), ModelError, ("'\u00b5'", "NFKC", "'\u03bc'")),
    ("param-ohm-sign", lambda b: b.param("\u2126", ()), ModelError, ("'\u2126'", "NFKC", "'\u03a9'")),
    ("param-dunder", lambda b: b.param("__x", ()), ModelError, ("'__x'", "__")),
    ("param-not-identifier", lambda b: b.param("a-b", ()), ModelError, ("'a-b'", "identifier")),
    ("param-not-a-string", lambda b: b.param(3, ()), ModelError, ("string", "int")),
    ("param-twice", lambda b: (b.param("w", ()), b.param("w", ())), ModelError, ("'w'", "twice")),
    ("param-grad-name-taken", lambda b: (b.param("g_w", ()), b.param("w", ())), ModelError, ("'g_w'", "twice")),
    ("param-labels", lambda b: b.param("w", (), domain="labels"), ModelError, ("'w'", "labels", "Builder.input")),
    ("param-shape-string", lambda b: b.param("w", ("n",)), TypeError, ("'n'", "string")),
    ("param-shape-code", lambda b: b.param("w", ("__import__('os')",)), TypeError, ("__import__", "string")),
    ("dim-zero", lambda b: b.dim("p", 0), ModelError, ("'p'", "default size", "0")),
    ("dim-bool", lambda b: b.dim("p", True), ModelError, ("'p'", "True")),
    ("dim-lo-above-hi", lambda b: b.dim("p", 2, 5, 3), ModelError, ("'p'", "lo=5", "hi=3")),
    ("dim-name-taken", lambda b: (b.param("w", ()), b.dim("w", 2)), ModelError, ("'w'",)),
    ("const-nan", lambda b: b.const("c", float("nan")), ModelError, ("constant c", "nan", "finite")),
    ("const-str", lambda b: b.const("c", "0.1"), ModelError, ("constant c", "'0.1'", "number")),
    ("input-batched-first", lambda b: b.input("X", (), batched=True), ModelError, ("'X'", "sample dimension")),
    ("eq-not-a-node", lambda b: b.eq("C", 3.0), TypeError, ("'C'", "float", "tensor expression")),
    ("model-no-equations", lambda b: b.model(), ModelError, ("own", "no equations")),
]:
    raises(f"builder-{_id}", _builder(_step), _exc, *_needles)


def _vector_loss(b: derive.Builder) -> Any:
    _, p = _with_dims(b)
    w = b.param("w", (p,))
    b.eq("C", nn.tanh(w), "C")
    return b.model()


def _gradient_of_vector(b: derive.Builder) -> Any:
    _, p = _with_dims(b)
    w = b.param("w", (p,))
    x = b.input("X", (p,), batched=True)
    f = b.eq("f", nn.tanh(w * x), "f")
    return b.gradient(f, x, "g")


def _eq_name_reserved(b: derive.Builder) -> Any:
    _, p = _with_dims(b)
    w = b.param("w", (p,))
    return b.eq("kernel", nn.dot(w, w))


def _eq_uses_dimension_name(b: derive.Builder) -> Any:
    _, p = _with_dims(b)
    w = b.param("w", (p,))
    return b.eq("p", nn.dot(w, w))


raises("builder-loss-not-scalar", _builder(_vector_loss), ShapeError, "scalar loss", "(p,)")
raises("builder-gradient-of-vector", _builder(_gradient_of_vector), ShapeError, "f has shape (p,)", "scalar")
raises("builder-eq-reserved", _builder(_eq_name_reserved), ModelError, "'kernel'", "reserved")
raises("builder-eq-dimension-name", _builder(_eq_uses_dimension_name), ModelError, "'p'", "twice")


def _label_with_cr() -> None:
    """A LaTeX label with ``\\r`` and code after it stays inside the comment of every generated module."""
    b = derive.Builder("own_cr", "a label with a carriage return", "test")
    _, p = _with_dims(b)
    w = b.param("w", (p,), "w\rimport os; os.system('echo ran')")
    x = b.input("X", (p,), "x\n__import__('os')", batched=True)
    b.eq("C", nn.dot(w, x), "C\u2028raise SystemExit")
    m = b.model()
    for backend in ("numpy", "torch"):
        src = numeric.source(m, backend)
        for line in src.splitlines():
            code = line.split("#", 1)[0]
            assert "import os" not in code and "__import__" not in code and "SystemExit" not in code, line
    a = {"w": np.array([1.0, 2.0]), "X": np.array([[1.0, 0.5], [0.0, 1.0], [2.0, 1.0]])}
    assert_agrees(m, a)


agrees("builder-label-with-line-breaks", _label_with_cr)

# ---------------------------------------------------------------------------------------------------
# 3. derive.parse
# ---------------------------------------------------------------------------------------------------

for _id, _text, _decl, _exc, _needles in [
    ("dangling-operator", "x+", {"x": "vector(n)"}, ParseError, ("column 3", "operand")),
    ("unclosed-call", "sum(x", {"x": "vector(n)"}, ParseError, ("column 6", "')'")),
    ("import", "__import__('os').system('echo hi')", {}, ParseError, ("'__import__'", "known functions")),
    ("attribute", "x.__class__", {"x": "vector(n)"}, ParseError, ("column",)),
    ("lambda", "(lambda: 0)()", {}, ParseError, ("column",)),
    ("undeclared", "sum(x .* y)", {"x": "vector(n)"}, ParseError, ("'y'", "known names are: x")),
    ("unknown-function", "gamma(x)", {"x": "scalar"}, ParseError, ("'gamma'", "known functions")),
    ("inner-dims", "x'*A*x", {"x": "vector(n)", "A": "matrix(m,p)"}, ExpressionShapeError,
     ("'*'", "n and m differ")),
    ("elementwise-shapes", "sum(x .* y)", {"x": "vector(n)", "y": "vector(m)"}, ExpressionShapeError,
     ("vector(n)", "vector(m)")),
    ("not-scalar", "x", {"x": "vector(n)"}, ExpressionShapeError, ("scalar",)),
    ("bad-type", "sum(x)", {"x": "tensor(n)"}, ParseError, ("'tensor(n)'", "vector(n)")),
    ("type-with-code", "sum(x)", {"x": "vector(__import__('os'))"}, ParseError, ("__import__", "not a type")),
    ("type-not-string", "sum(x)", {"x": 3}, TypeError, ("x", "int")),
    ("divide-by-zero", "x/0", {"x": "scalar"}, ParseError, ("column 2", "division by zero")),
    ("empty", "", {}, ParseError, ("no expression",)),
    ("only-spaces", "   ", {}, ParseError, ("no expression",)),
]:
    raises(f"parse-{_id}", functools.partial(derive.parse, _text, **_decl), _exc, *_needles)

raises("parse-wrt-unknown", lambda: derive.parse("sum(x)", x="vector(n)", wrt=["q"]), ParseError, "'q'",
       "declared: x")
raises("parse-not-text", lambda: derive.parse(3), TypeError, "int")  # type: ignore[arg-type]


def _parsed_logistic() -> None:
    m = derive.parse("sum(log(1 + exp(-y .* (X*w))))", X="matrix(n,p)", w="vector(p)", y="vector(n)", wrt=["w"])
    rng = np.random.default_rng(0)
    a = {"X": rng.normal(size=(4, 3)), "w": rng.normal(size=3), "y": np.array([1.0, -1.0, 1.0, -1.0])}
    loss, grads = autograd(m, a)
    out = numeric.compile(m)(**a)
    assert verify.compare(out["loss"], loss)[0] <= 1e-10
    assert verify.compare(out["grad"]["w"], grads["w"])[0] <= 1e-10


agrees("parse-logistic", _parsed_logistic)

# ---------------------------------------------------------------------------------------------------
# 4. kernels: compile options and devices
# ---------------------------------------------------------------------------------------------------

SR = "softmax_regression"
raises("compile-not-a-model", lambda: numeric.compile(SR), TypeError, "takes a model", "str")  # type: ignore
raises("compile-backend", lambda: numeric.compile(model(SR), "jax"), ValueError, "'jax'", "numpy, torch")
raises("compile-device-numpy", lambda: numeric.compile(model(SR), "numpy", device="cpu"), ValueError,
       "device=", "backend='torch'")
raises("compile-hessian-str", lambda: numeric.compile(model("rosenbrock"), hessian="theta"), TypeError,  # type: ignore
       "hessian=", "'theta'", "list")
raises("compile-hessian-unknown", lambda: numeric.compile(model("rosenbrock"), hessian=["q"]), ValueError,
       "'q'", "theta")
raises("compile-fuse-str", lambda: numeric.compile(model(SR), "torch", fuse="yes"), TypeError,  # type: ignore
       "fuse='yes'")
raises("compile-fuse-numpy", lambda: numeric.compile(model(SR), "numpy", fuse=True), ValueError, "fuse=True",
       "backend='torch'")
raises("compile-check-int", lambda: numeric.compile(model(SR), check=1), TypeError, "check=1")  # type: ignore
raises("compile-hessian-update-rule", lambda: numeric.compile(model("adam"), hessian=["theta"]), ValueError,
       "adam", "Hessians", "hessian=['theta']")
raises("compile-hessian-recurrence", lambda: numeric.compile(model("rnn"), hessian=["W_hh"]), ValueError, "rnn",
       "recurrences")
raises("source-not-a-model", lambda: numeric.source("mlp"), TypeError, "takes a model")  # type: ignore

for _dev, _needles in [("mps", ("'mps'", "device='cpu'")), ("bogus", ("'bogus'", "'cpu'")),
                       ("CUDA", ("'CUDA'", "'cuda'")), ("gpu", ("'gpu'", "'cuda'")), ("meta", ("meta", "'cpu'")),
                       ("", ("''", "'cpu'")), ("cuda:-1", ("'cuda:-1'",)), ("cpu cuda", ("'cpu cuda'",))]:
    raises(f"compile-device-{_dev or 'empty'}", functools.partial(numeric.compile, model(SR), "torch", device=_dev),
           ValueError, *_needles)
raises("compile-device-bool", lambda: numeric.compile(model(SR), "torch", device=True), TypeError, "True")
raises("compile-device-float", lambda: numeric.compile(model(SR), "torch", device=1.5), TypeError, "float")
raises("compile-device-negative", lambda: numeric.compile(model(SR), "torch", device=-1), ValueError, "-1", ">= 0")


def _device_ok(device: Any, want: str | None) -> Callable[[], None]:
    def run() -> None:
        f = numeric.compile(model(SR), "torch", device=device)
        assert f.device == want, f.device
        a = arrays(SR)
        if want in (None, "cpu"):
            assert_agrees(model(SR), a, "torch")

    return run


agrees("compile-device-torch-device", _device_ok(torch.device("cpu"), "cpu"))
agrees("compile-device-None", _device_ok(None, None))
agrees("compile-device-cpu-str", _device_ok("cpu", "cpu"))
if torch.cuda.is_available():
    agrees("compile-device-0", _device_ok(0, "cuda:0"))
else:  # device=0 is cuda:0, as torch reads it: accepted where there is one, a clear error where not
    raises("compile-device-0-without-cuda", lambda: numeric.compile(model(SR), "torch", device=0), ValueError,
           "'cuda:0'", "no CUDA device", "device='cpu'")

# ---------------------------------------------------------------------------------------------------
# 5. kernels: arrays (names, shapes, dtypes, requires grad, empty, non-finite, out of domain)
# ---------------------------------------------------------------------------------------------------

for _be in ("numpy", "torch"):
    raises(f"call-{_be}-wrong-shape", functools.partial(call, SR, _be, W=np.zeros((4, 2))), InputError,
           "dimension p", "3 in X", "2 in W")
    raises(f"call-{_be}-wrong-rank", functools.partial(call, SR, _be, W=np.zeros(4)), InputError,
           "W", "(K, p)", "(4,)")
    raises(f"call-{_be}-missing", functools.partial(call, SR, _be, b=None), InputError, "missing b", "W, b, X, Y")
    raises(f"call-{_be}-unexpected", functools.partial(call, SR, _be, bias=np.zeros(4)), InputError,
           "unexpected bias")
    raises(f"call-{_be}-mixed-dtypes", functools.partial(call, SR, _be, W=np.zeros((4, 3), np.float32)), InputError,
           "W float32", "X float64", "one float dtype")
    raises(f"call-{_be}-complex", functools.partial(call, SR, _be, X=np.zeros((5, 3), complex)), InputError,
           "array X", "complex128", "float32 or float64")
    raises(f"call-{_be}-empty-batch", functools.partial(call, SR, _be, X=np.zeros((0, 3)), Y=np.zeros((0, 4))),
           InputError, "dimension n is 0", "at least one sample")
    raises(f"call-{_be}-nan", functools.partial(call, SR, _be, X=np.full((5, 3), np.nan)), InputError,
           "array X", "NaN", "finite")
    raises(f"call-{_be}-inf", functools.partial(call, SR, _be, W=np.full((4, 3), np.inf)), InputError,
           "array W", "infinity", "finite")
    raises(f"call-{_be}-not-simplex", functools.partial(call, SR, _be, Y=np.full((5, 4), 0.3)), InputError,
           "Y", "row 0", "sums to 1.2", "normalise")
    raises(f"call-{_be}-layernorm-overflow", functools.partial(call, "layer_norm", _be,
                                                               Z=np.full((4, 3), 1e200) * [1, 2, 3]),
           InputError, "Z", "3e+200", "rescale Z")
    raises(f"call-{_be}-adam-t-negative", functools.partial(call, "adam", _be, t=np.array(-1.0)), InputError,
           "t", "-1", "step count")
    raises(f"call-{_be}-adam-t-fraction", functools.partial(call, "adam", _be, t=np.array(0.5)), InputError,
           "t", "0.5", "step count")

raises("call-requires-grad-numpy", lambda: call(SR, "numpy", X=torch.ones(5, 3, dtype=torch.float64,
                                                                          requires_grad=True)),
       InputError, "array X", "requires grad", "X.detach()")
raises("call-text", lambda: call(SR, X="1, 2, 3"), InputError, "array X", "text")
raises("call-ragged", lambda: call(SR, X=[[1.0, 2.0, 3.0], [1.0]]), InputError, "array X", "cannot be read")
raises("call-None-array", lambda: call(SR, X=np.array([[None] * 3] * 5)), InputError, "array X", "object")
raises("call-0d-for-vector", lambda: call(SR, b=np.float64(1.0)), InputError, "b", "(K,)", "()")
raises("call-batch-conflict", lambda: call(SR, Y=np.full((6, 4), 0.25)), InputError, "dimension n", "5", "6")
raises("call-float16", lambda: call(SR, X=np.zeros((5, 3), np.float16)), InputError, "array X", "float16",
       "float32 or float64")
raises("call-spd-not-symmetric", lambda: numeric.compile(derive.parse("x'*A*x", x="vector(n)", A="spd(n)"))(
    x=np.ones(3), A=np.triu(np.ones((3, 3)))), InputError, "A", "spd", "not symmetric")
raises("call-spd-indefinite", lambda: numeric.compile(derive.parse("x'*A*x", x="vector(n)", A="spd(n)"))(
    x=np.ones(3), A=-np.eye(3)), InputError, "A", "not positive definite")
raises("call-fixed-dim", lambda: kernel("rosenbrock")(theta=np.zeros(3)), InputError, "theta", "(2,)", "(3,)")
raises("call-positional", lambda: kernel(SR)(np.zeros(3)), TypeError, "by name", "W=")
raises("call-mlp-not-simplex", lambda: call("mlp", Y=np.random.default_rng(0).uniform(size=(5, 3))), InputError,
       "Y", "sums to", "normalise")
raises("call-mlp-negative-row", lambda: call("mlp", Y=np.tile([0.5, 0.6, 0.0], (5, 1))), InputError, "Y", "1.1")
raises("call-rnn-not-simplex", lambda: call("rnn", Y=np.full((4, 2, 3), 0.5)), InputError, "Y", "sums to 1.5")
for _be in ("numpy", "torch"):  # the derivation uses one-hot rows (it selects Q(s)_a): checked, not folded silently
    raises(f"call-{_be}-dqn-not-one-hot", functools.partial(call, "dqn", _be, A=np.full((4, 3), 0.5)), InputError,
           "A", "one-hot", "row 0", "numpy.eye")
raises("call-dqn-two-ones", lambda: call("dqn", A=np.tile([1.0, 1.0, 0.0], (4, 1))), InputError, "A", "[1., 1., 0.]")
raises("call-dqn-zero-row", lambda: call("dqn", A=np.zeros((4, 3))), InputError, "A", "row 0", "one-hot")
raises("call-cnn-not-simplex", lambda: call("cnn", Y=np.full(model("cnn").shapes()["Y"], 0.5)), InputError, "Y",
       "sums to", "normalise")
raises("call-gru-not-simplex", lambda: call("gru", Y=np.full(model("gru").shapes()["Y"], 0.5)), InputError, "Y",
       "sums to", "normalise")
raises("call-rnn-T-0", lambda: call("rnn", X=np.zeros((0, 2, 3)), Y=np.zeros((0, 2, 3))), InputError,
       "dimension T is 0", "at least one time step")
raises("call-rnn-n-0", lambda: call("rnn", X=np.zeros((4, 0, 3)), Y=np.zeros((4, 0, 3))), InputError,
       "dimension n is 0", "at least one sample")
raises("call-batchnorm-overflow", lambda: call("batch_norm", Z=np.full((5, 3), 1e300)), InputError, "Z",
       "rescale")
raises("call-batchnorm-inf", lambda: call("batch_norm", Z=np.full((5, 3), np.inf)), InputError, "Z", "infinity")
raises("call-labels-out-of-range", lambda: call("mlp_labels", y=np.array([0.0, 1.0, 2.0, 3.0, 0.0])),
       InputError, "y", "labels 0, 1, ..., 2", "3")
raises("call-labels-fraction", lambda: call("mlp_labels", y=np.array([0.0, 1.5, 2.0, 1.0, 0.0])), InputError,
       "y", "integer labels", "1.5")
raises("call-labels-negative", lambda: call("mlp_labels", y=np.array([0.0, -1.0, 2.0, 1.0, 0.0])), InputError,
       "y", "-1")
raises("call-conv-input-smaller-than-kernel",
       lambda: numeric.compile(model("conv2d", kernel=(3, 3)))(
           **{**{k: np.zeros(s) for k, s in model("conv2d", kernel=(3, 3)).shapes().items()},
              "X": np.zeros((2, 2, 2, 2))}), InputError, "3", "kernel")


def _agree_entry(name: str, backend: str = "numpy", sizes: dict[str, int] | None = None,
                 **changes: Any) -> Callable[[], None]:
    def run() -> None:
        a = {**arrays(name, **(sizes or {})), **changes}
        assert_agrees(model(name), a, backend)

    return run


# valid edge inputs: agreement with torch autograd
agrees("softmax-regression-n1", _agree_entry(SR, sizes={"n": 1}))
agrees("softmax-regression-one-hot", _agree_entry(SR, Y=np.eye(4)[[0, 1, 2, 3, 0]]))
agrees("softmax-regression-signed-simplex", _agree_entry(SR, Y=np.tile([2.0, -1.0, 0.0, 0.0], (5, 1))))
agrees("softmax-regression-logits-1e3", _agree_entry(SR, X=np.random.default_rng(1).normal(size=(5, 3)) * 1e3))
agrees("softmax-regression-int-arrays", _agree_entry(SR, X=np.arange(15).reshape(5, 3) % 3))
agrees("softmax-regression-torch", _agree_entry(SR, "torch"))
agrees("softmax-regression-fortran-order", _agree_entry(SR, W=np.asfortranarray(arrays(SR)["W"])))


def _reversed_views(backend: str) -> Callable[[], None]:
    """Arrays that are reversed views (negative strides): the same result as their copies."""
    def run() -> None:
        a = arrays(SR)
        view = {**a, "X": a["X"][::-1].copy()[::-1], "W": a["W"][:, ::-1].copy()[:, ::-1]}
        assert any(s < 0 for s in view["X"].strides)
        want = numeric.compile(model(SR), backend)(**a)
        got = numeric.compile(model(SR), backend)(**view)
        for k in want["grad"]:
            assert verify.compare(got["grad"][k], want["grad"][k])[0] == 0.0

    return run


agrees("reversed-views-numpy", _reversed_views("numpy"))
agrees("reversed-views-torch", _reversed_views("torch"))
agrees("mlp-layers-1", lambda: assert_agrees(model("mlp", layers=1), {
    **{k: np.random.default_rng(2).normal(size=s) for k, s in model("mlp", layers=1).shapes().items()},
    "Y": np.full((5, 3), 1 / 3)}))
agrees("mlp-labels", _agree_entry("mlp_labels", y=np.array([0.0, 1.0, 2.0, 2.0, 0.0])))
agrees("layer-norm-1e100", _agree_entry("layer_norm", Z=np.random.default_rng(3).normal(size=(4, 3)) * 1e100))
agrees("layer-norm-constant-rows", _agree_entry("layer_norm", Z=np.ones((4, 3))))
agrees("batch-norm-n2", _agree_entry("batch_norm", sizes={"n": 2}))
agrees("rnn-T1", _agree_entry("rnn", sizes={"T": 1}))
agrees("dqn-one-hot-actions", _agree_entry("dqn"))
agrees("dqn-fractional-done", _agree_entry("dqn", done=np.full(4, 0.5)))
agrees("dropout-fractional-mask", _agree_entry("dropout", M=np.full((4, 4), 0.5)))
agrees("relu-at-zero", _agree_entry("relu", Z=np.zeros((4, 4))))
agrees("leaky-relu-negative-slope", lambda: assert_agrees(model("leaky_relu", slope=-0.5), {
    k: np.random.default_rng(4).normal(size=s) for k, s in model("leaky_relu", slope=-0.5).shapes().items()}))


def _adam_t0() -> None:
    """Adam from t = 0 (the first step), against torch.optim through verify.check."""
    verify.check(model("adam"), examples=1)


agrees("adam-t0-verify", _adam_t0)


def _requires_grad_torch() -> None:
    """A tensor that requires grad given to the torch kernel: the same values as without."""
    a = arrays(SR)
    t = {k: torch.tensor(v) for k, v in a.items()}
    out = kernel(SR, "torch")(**{**t, "X": t["X"].clone().requires_grad_(True)})
    _, grads = autograd(model(SR), a)
    for k, want in grads.items():
        assert verify.compare(out["grad"][k].detach(), want)[0] <= 1e-10


agrees("torch-kernel-requires-grad", _requires_grad_torch)

# ---------------------------------------------------------------------------------------------------
# 6. verify: tolerances, compare, implementations
# ---------------------------------------------------------------------------------------------------

LR = "linear_regression"


def _check(**kw: Any) -> Callable[[], Any]:
    return lambda: verify.check(model(LR), **{"examples": 1, **kw})


for _id, _kw, _exc, _needles in [
    ("rtol-nan", {"rtol": float("nan")}, ValueError, ("rtol", "nan")),
    ("rtol-negative", {"rtol": -1e-3}, ValueError, ("rtol", "-0.001")),
    ("rtol-zero", {"rtol": 0}, ValueError, ("rtol", "0")),
    ("rtol-one", {"rtol": 1.0}, ValueError, ("rtol", "1.0")),
    ("rtol-str", {"rtol": "1e-3"}, ValueError, ("rtol", "'1e-3'")),
    ("rtol-inf", {"rtol": float("inf")}, ValueError, ("rtol", "inf")),
    ("examples-0", {"examples": 0}, ValueError, ("examples", "0")),
    ("examples-float", {"examples": 1.5}, TypeError, ("examples", "1.5")),
    ("examples-bool", {"examples": True}, TypeError, ("examples", "True")),
    ("seed-negative", {"seed": -1}, ValueError, ("seed", "-1")),
    ("seed-float", {"seed": 1.5}, ValueError, ("seed", "1.5")),
    ("backend", {"backend": "jax"}, ValueError, ("'jax'", "numpy")),
    ("kinks", {"kinks": "left"}, ValueError, ("'left'", "'torch'", "'any'")),
    ("values", {"values": ("huge",)}, ValueError, ("'huge'", "normal")),
    ("device-bogus", {"device": "bogus"}, ValueError, ("'bogus'", "'cpu'")),
    ("device-meta", {"device": "meta"}, ValueError, ("meta",)),
    ("names-unknown", {"names": {"Q": "q"}, "implementation": lambda **a: a}, ValueError, ("'Q'", "theta, X, y")),
    ("layouts-bad", {"layouts": {"X": "a,b"}, "implementation": lambda **a: a}, ValueError, ("X", "'a,b'", "n,p")),
    ("implementation-not-callable", {"implementation": 3}, TypeError, ("implementation", "int")),
    ("reference-not-callable", {"reference": 3}, TypeError, ("reference=", "int")),
]:
    raises(f"check-{_id}", _check(**_kw), _exc, *_needles)

raises("check-rtol-nan-with-wrong-impl", lambda: verify.check(
    model(LR), implementation=lambda **a: {"loss": _lr_kernel(**a)["loss"],
                                           "grad": {k: 1.5 * v for k, v in _lr_kernel(**a)["grad"].items()}},
    rtol=float("nan"), examples=1), ValueError, "rtol", "nan")
raises("example-mode", lambda: verify.example(model(SR), seed=0, sizes={}, mode="huge"), ValueError, "'huge'",
       "normal")
raises("example-seed", lambda: verify.example(model(SR), seed=-1, sizes={}), ValueError, "seed", "-1")
raises("example-sizes", lambda: verify.example(model(SR), seed=0, sizes={"q": 3}), ModelError, "q", "n, p, K")
raises("check-not-a-model", lambda: verify.check(3.0), TypeError, "float")  # type: ignore[arg-type]
raises("check-unknown-name", lambda: verify.check("no_such_model", examples=1), ModelError, "'no_such_model'")

for _id, _got, _want, _rtol, _exc, _needles in [
    ("rtol-nan", [1.0], [1.0], float("nan"), ValueError, ("rtol", "nan")),
    ("rtol-negative", [1.0], [1.0], -1.0, ValueError, ("rtol", "-1")),
    ("rtol-str", [1.0], [1.0], "0.1", ValueError, ("rtol", "'0.1'")),
    ("shape", [1.0, 2.0], [1.0], 1e-10, ValueError, ("(2,)", "(1,)")),
]:
    raises(f"compare-{_id}", functools.partial(verify.compare, _got, _want, _rtol), _exc, *_needles)


def _compare_is(got: Any, want: Any, agree: bool) -> Callable[[], None]:
    def run() -> None:
        err, _ = verify.compare(got, want)
        assert (err <= 1e-10) == agree, (got, want, err)

    return run


for _id, _got, _want, _agree in [
    ("finite-vs-nan", [1.0], [np.nan], False), ("nan-vs-finite", [np.nan], [1.0], False),
    ("big-vs-inf", [1e300], [np.inf], False), ("inf-vs-big", [np.inf], [1e300], False),
    ("minus-inf-vs-inf", [-np.inf], [np.inf], False), ("nan-vs-inf", [np.nan], [np.inf], False),
    ("nan-vs-nan", [np.nan], [np.nan], True), ("inf-vs-inf", [np.inf, 1.0], [np.inf, 1.0], True),
    ("empty", np.zeros(0), np.zeros(0), True),
]:
    agrees(f"compare-{_id}", _compare_is(_got, _want, _agree))


def _lr_kernel(**a: Any) -> dict[str, Any]:
    return numeric.compile(model(LR))(**{k: np.array(v) for k, v in a.items()})


def _in_place(**a: Any) -> dict[str, Any]:
    out = _lr_kernel(**a)
    a["X"][...] = 0.0  # zeroes an input
    return out


def _per_sample(**a: Any) -> dict[str, Any]:
    out = _lr_kernel(**a)
    r = a["X"] @ a["theta"] - a["y"]
    return {"loss": r**2, "grad": out["grad"]}


def _float32_off(**a: Any) -> dict[str, Any]:
    out = _lr_kernel(**a)
    return {"loss": np.float32(out["loss"]), "grad": {k: (v * 1.01).astype(np.float32) for k, v in out["grad"].items()}}


def _raises(**a: Any) -> dict[str, Any]:
    raise ZeroDivisionError("division by zero")


for _id, _impl, _needles in [
    ("in-place", _in_place, ("modified `X` in place", "copy")),
    ("per-sample-loss", _per_sample, ("the loss", "per-sample", "shape", "mean")),
    ("float32", _float32_off, ("float32", "rtol=")),
    ("raises", _raises, ("raised ZeroDivisionError",)),
    ("returns-None", lambda **a: None, ("the result", "'loss' and 'grad'", "NoneType")),
    ("missing-grad", lambda **a: {"loss": _lr_kernel(**a)["loss"], "grad": {}}, ("gradient theta", "not returned")),
    ("wrong-grad-shape", lambda **a: {"loss": _lr_kernel(**a)["loss"], "grad": {"theta": np.zeros(7)}},
     ("gradient theta", "(7,)")),
]:
    CASES.append(pytest.param(Raises(functools.partial(verify.check, model(LR), implementation=_impl,
                                                       backend="numpy", examples=3), Mismatch, _needles),
                              id=f"check-impl-{_id}"))



def _private_cache(tmp: str) -> Callable[[], None]:
    """fuse=True points torch.compile's caches at a private per-user folder (mode 0700), not the shared /tmp."""
    def run() -> None:
        from numeric.kernel import _private_compile_cache

        keep = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
        try:
            os.environ["XDG_CACHE_HOME"] = os.path.abspath(tmp)
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            os.environ.pop("TRITON_CACHE_DIR", None)
            _private_compile_cache()
            for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
                d = os.environ[var]
                assert d.startswith(os.path.abspath(tmp)) and "dlmath" in d, d
                assert os.stat(d).st_mode & 0o077 == 0, oct(os.stat(d).st_mode)
        finally:
            for k, v in keep.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            try:
                from torch._inductor import config as inductor_config

                if keep["TORCHINDUCTOR_CACHE_DIR"] is not None and hasattr(inductor_config, "cache_dir"):
                    inductor_config.cache_dir = keep["TORCHINDUCTOR_CACHE_DIR"]  # type: ignore[attr-defined]
            except ImportError:
                pass

    return run


agrees("fuse-cache-private", _private_cache("xdg"))

# pytest --dlmath-examples: 0 (or text) is refused, not read as "the profile's default"
from verify.pytest_plugin import _examples  # noqa: E402

for _text in ("0", "-1", "many", "1.5"):
    CASES.append(pytest.param(Raises(functools.partial(_examples, _text), __import__("argparse").ArgumentTypeError,
                                     ("--dlmath-examples", _text, ">= 1")), id=f"pytest-dlmath-examples-{_text}"))

# ---------------------------------------------------------------------------------------------------
# 7. the CLI: exit 2, one line on stderr, nothing run from option strings
# ---------------------------------------------------------------------------------------------------

for _cmd in ("derive", "backprop", "codegen", "verify"):
    cli(f"{_cmd}-option-code", [_cmd, "leaky_relu", "-O", f"slope={CODE}"], "slope", "__import__", "number")
cli("derive-unknown-model", ["derive", "softmax_regresion"], "Did you mean softmax_regression")
cli("derive-unknown-option", ["derive", "leaky_relu", "-O", "slop=0.1"], "slop", "slope=0.01")
cli("derive-malformed-option", ["derive", "leaky_relu", "-O", "slope"], "'slope'", "key=value")
cli("derive-option-twice", ["derive", "leaky_relu", "-O", "slope=0.1", "-O", "slope=0.2"], "slope", "twice")
cli("derive-option-bad-key", ["derive", "leaky_relu", "-O", "1x=2"], "'1x'", "option name")
cli("derive-slope-nan", ["derive", "leaky_relu", "-O", "slope=nan"], "slope", "'nan'")
cli("derive-layers-true", ["derive", "mlp", "-O", "layers=True"], "layers", "True")
cli("derive-layers-huge", ["derive", "mlp", "-O", "layers=100000"], "layers", "100000")
cli("derive-causal-false", ["derive", "attention", "-O", "causal=false"], "causal", "'false'")
cli("derive-unknown-wrt", ["derive", "softmax_regression", "--wrt", "Q"], "'Q'", "W, b")
cli("derive-empty-model", ["derive", ""], "MODEL is empty")
cli("derive-expression-shapes", ["derive", "x'*A*x", "-V", "x=vector(n)", "-V", "A=matrix(m,p)"], "n and m differ")
cli("derive-expression-syntax", ["derive", "sum(x", "-V", "x=vector(n)"], "column 6")
cli("derive-expression-option", ["derive", "sum(x)", "-V", "x=vector(n)", "-O", "slope=1"], "-O", "-V")
cli("derive-bad-declaration", ["derive", "sum(x)", "-V", "x"], "'x'", "name=type")
cli("derive-declaration-twice", ["derive", "sum(x)", "-V", "x=vector(n)", "-V", "x=scalar"], "x", "twice")
cli("derive-format", ["derive", "mlp", "--format", "html"], "--format", "'html'")
cli("backprop-update-rule", ["backprop", "adam"], "adam", "update rule")
cli("hessian-three-wrt", ["hessian", "rosenbrock", "--wrt", "theta", "--wrt", "theta", "--wrt", "theta"], "--wrt",
    "got 3")
cli("hessian-unknown", ["hessian", "rosenbrock", "--wrt", "q"], "'q'", "theta")
cli("codegen-hessian-unknown", ["codegen", "rosenbrock", "--hessian", "q"], "'q'", "theta")
cli("codegen-backend", ["codegen", "mlp", "--backend", "jax"], "--backend", "'jax'")
cli("codegen-o-folder", ["codegen", "linear_regression", "-o", "."], "-o '.'", "folder", "kernel.py")
cli("codegen-o-dir", ["codegen", "linear_regression", "-o", "adir"], "-o 'adir'", "folder")
cli("codegen-o-missing-dir", ["codegen", "linear_regression", "-o", "missing/dir/k.py"], "'missing/dir'",
    "does not exist")
cli("codegen-o-file-as-folder", ["codegen", "linear_regression", "-o", "afile/k.py"], "'afile'", "is a file")
cli("codegen-o-empty", ["codegen", "linear_regression", "-o", ""], "-o", "file name")
cli("codegen-o-spaces", ["codegen", "linear_regression", "-o", "  "], "-o", "file name")
cli("codegen-o-unwritable", ["codegen", "linear_regression", "-o", "/proc/dlmath_kernel.py"],
    "'/proc/dlmath_kernel.py'", "cannot write")
cli("trace-bad-values", ["trace", "autodiff_example", "--at", "theta=a,b"], "theta=a,b", "numbers")
cli("trace-wrong-shape", ["trace", "autodiff_example", "--at", "theta=1,2"], "theta", "(3,)", "(2,)")
cli("verify-all-layers-0", ["verify", "--all", "-O", "layers=0"], "mlp", "layers", "0")
cli("verify-all-causal-str", ["verify", "--all", "-O", "causal=maybe"], "causal", "'maybe'")
cli("verify-all-unknown-option", ["verify", "--all", "-O", "no_such_option=1"], "no_such_option")
cli("verify-all-and-model", ["verify", "softmax_regression", "--all"], "MODEL", "--all")
cli("verify-nothing", ["verify"], "MODEL", "--all")
cli("verify-rtol-nan", ["verify", "linear_regression", "--rtol", "nan"], "--rtol", "nan")
cli("verify-rtol-negative", ["verify", "linear_regression", "--rtol", "-1"], "--rtol", "-1")
cli("verify-rtol-text", ["verify", "linear_regression", "--rtol", "tight"], "--rtol", "'tight'")
cli("verify-examples-0", ["verify", "linear_regression", "--examples", "0"], "--examples", "at least 1")
cli("verify-examples-text", ["verify", "linear_regression", "--examples", "many"], "--examples", "'many'")
cli("verify-seed-negative", ["verify", "linear_regression", "--seed", "-1"], "--seed", "-1")
for _dev in ("mps", "bogus", "CUDA", "gpu", "meta"):
    cli(f"verify-device-{_dev}", ["verify", "linear_regression", "--device", _dev, "--examples", "1"], _dev)
cli("verify-backend", ["verify", "linear_regression", "--backend", "jax"], "'jax'")
cli("verify-values", ["verify", "linear_regression", "--values", "huge", "--examples", "1"], "'huge'")
cli("verify-targets-none", ["verify", "linear_regression", "--targets", "labels"], "--targets", "softmax_regression")
cli("verify-impl-form", ["verify", "linear_regression", "--impl", "nocolon"], "'nocolon'", "module:function")
cli("verify-impl-missing", ["verify", "linear_regression", "--impl", "dlmath_no_such_module_xyz:f"],
    "dlmath_no_such_module_xyz")
cli("verify-impl-not-callable", ["verify", "linear_regression", "--impl", "math:pi"], "'math:pi'", "not callable")
cli("verify-name-form", ["verify", "linear_regression", "--name", "theta"], "--name", "'theta'")
cli("verify-layout-form", ["verify", "linear_regression", "--layout", "X"], "--layout", "'X'")
cli("verify-examples-huge", ["verify", "linear_regression", "--examples", "100000000000000000000"], "--examples",
    "100000")
cli("verify-name-without-impl", ["verify", "linear_regression", "--name", "theta=w"], "--name", "--impl")
cli("verify-layout-without-impl", ["verify", "linear_regression", "--layout", "X=p,n"], "--layout", "--impl")
cli("codegen-hessian-update-rule", ["codegen", "adam", "--hessian", "theta"], "adam", "Hessians")
cli("bench-only", ["bench", "--only", "nosuch"], "--only", "'nosuch'")
cli("bench-rounds", ["bench", "--rounds", "0"], "--rounds", "0")
cli("verify-json-folder", ["verify", "linear_regression", "--examples", "1", "--json", "adir"], "--json", "adir")
cli("verify-all-with-V", ["verify", "--all", "-V", "x=vector(n)"], "-V")
cli("unknown-command", ["frobnicate"], "'frobnicate'", "derive")
cli("no-command", [], "COMMAND")


# ---------------------------------------------------------------------------------------------------
# the test
# ---------------------------------------------------------------------------------------------------


COMMANDS = ("list", "derive", "backprop", "hessian", "trace", "codegen", "verify", "bench")


def _one_line(text: str) -> str:
    assert text.strip(), "empty message"
    assert "\n" not in text.strip(), f"the message spans several lines: {text!r}"
    return text.strip()


def _run_cli(argv: Sequence[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(argv))
        except SystemExit as e:  # argparse's own errors
            rc = int(e.code or 0)
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # files the CLI rows name, and the marker that code from data would write
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("")
    if isinstance(case, Raises):
        with pytest.raises(BaseException) as ei:
            case.fn()
        assert type(ei.value) is case.exc, f"raised {type(ei.value).__name__}: {ei.value}; want {case.exc.__name__}"
        msg = str(ei.value)
        if case.exc is not Mismatch:  # a Mismatch is a full report (several lines): the needles anywhere in it
            _one_line(msg)
        for needle in case.needles:
            assert needle in msg, f"{needle!r} not in the message: {msg}"
    elif isinstance(case, Cli):
        rc, out, err = _run_cli(case.argv)
        assert rc == 2, f"dlmath {' '.join(case.argv)} exited {rc}; stderr: {err!r}"
        line = _one_line(err)
        assert "Traceback" not in err
        command = case.argv[0] if case.argv and case.argv[0] in COMMANDS else ""
        assert line.startswith(f"dlmath {command}: error: " if command else "dlmath: error: "), line
        for needle in case.needles:
            assert needle in line, f"{needle!r} not in: {line}"
    else:
        case.fn()
    assert not (tmp_path / "DLMATH_RAN_CODE").exists(), "code from an option string ran"
    assert not (tmp_path / ".hypothesis").exists(), "verify wrote .hypothesis/ into the working folder"


def test_table_size() -> None:
    """The issue asks for at least 150 rows; count them so that a shrinking table is noticed."""
    assert len(CASES) >= 150, len(CASES)


def test_every_zoo_option_has_a_spec_that_accepts_its_default() -> None:
    """No option is passed through unchecked (derive/models/specs.py promises this test)."""
    for name in derive.models.names():
        specs = derive.models.spec(name)
        for k, default in derive.models.options(name).items():
            assert not isinstance(specs[k], Unchecked), f"{name}: option {k} has no declared spec"
            specs[k].check(name, k, default)


def test_ctrl_c_is_one_line_and_130(tmp_path: Any) -> None:
    """SIGINT while a command runs: exit 130, one line on stderr, no traceback."""
    code = ("import sys, time\n"
            "from verify import cli\n"
            "def slow(args):\n"
            "    print('ready', flush=True)\n"
            "    time.sleep(60)\n"
            "    return 0\n"
            "cli.cmd_list = slow\n"
            "sys.exit(cli.main(['list']))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=tmp_path, env=env)
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, (p.returncode, err)
    assert "Traceback" not in err, err
    assert _one_line(err) == "dlmath list: interrupted", err
