"""Declared option specs of the zoo entries: the type, range and choices of every option, checked by
:func:`derive.models.get` before an entry builds anything.

A spec is a small value object with one method, ``check(value) -> value``, that returns the normalised value
or raises :class:`OptionError` (a wrong value) or :class:`OptionTypeError` (a wrong kind) with a message
naming the option, what it got and the valid values. The kinds:

- :class:`Int` (``lo``/``hi`` inclusive), :class:`Real` (finite; ``lo``/``hi`` with ``open_lo``/``open_hi``),
  :class:`Bool` (``True``/``False`` only: the string ``'false'`` is refused, not read as true),
  :class:`Choice` (one of a few strings), :class:`Ints` (a tuple of integers, of a fixed ``length`` or any),
  :class:`Maybe` (``None`` or another spec).

The zoo's entries declare their specs in the one table :data:`ZOO` below (entry -> option -> spec). An
entry registered elsewhere (a chapter module of its own) may instead pass them where it registers::

    @register("leaky_relu", "§5.3", "leaky ReLU activation layer", options={"slope": Real()})
    def leaky_relu_layer(slope: float = 0.01) -> Model: ...

An option with no declared spec gets one from its default (:func:`infer`: ``bool`` -> :class:`Bool`,
``int`` -> :class:`Int`, ``float`` -> :class:`Real`, ``str`` -> :class:`Text`, any string, which the builder
then checks against its choices; a tuple of ints -> :class:`Ints` of that length; ``None`` ->
:class:`Unchecked`), so that adding a keyword never breaks the zoo. Declare the spec whenever the default's
type is not the whole story (a range, a fixed set of strings, ``None`` allowed):
``tests/test_bad_inputs.py`` fails on an :class:`Unchecked` option and checks that every spec accepts its
default.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..program import ModelError

__all__ = ["Spec", "Int", "Real", "Bool", "Choice", "Text", "Ints", "Maybe", "Unchecked", "OptionError",
           "OptionTypeError", "infer", "ZOO", "MAX_LAYERS"]

#: the deepest ``mlp`` the zoo builds (build, derivation and compilation are linear in depth; see
#: ``numeric/bench_deep.py``): far beyond any textbook network, and it bounds a typo such as layers=100000
MAX_LAYERS = 2000


class OptionError(ModelError):
    """An option has a value outside its declared range or choices."""


class OptionTypeError(OptionError, TypeError):
    """An option has the wrong kind of value (a string where a number is expected, a bool for an int)."""


def _got(v: Any) -> str:
    kind = type(v).__name__
    return f"{v!r} ({kind})" if not isinstance(v, (int, float)) or isinstance(v, bool) else repr(v)


class Spec:
    """Base of the option specs: ``check(value)`` returns the normalised value or raises."""

    def check(self, entry: str, name: str, v: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def _type(self, entry: str, name: str, v: Any) -> OptionTypeError:
        return OptionTypeError(f"{entry}: option {name} must be {self.describe()}, got {_got(v)}")

    def _range(self, entry: str, name: str, v: Any) -> OptionError:
        return OptionError(f"{entry}: option {name} must be {self.describe()}, got {v!r}")


@dataclass(frozen=True)
class Int(Spec):
    """An integer (not a bool) in ``[lo, hi]``."""

    lo: int | None = None
    hi: int | None = None

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"an integer from {self.lo} to {self.hi}"
        if self.lo is not None:
            return f"an integer >= {self.lo}"
        if self.hi is not None:
            return f"an integer <= {self.hi}"
        return "an integer"

    def check(self, entry: str, name: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise self._type(entry, name, v)
        v = int(v)
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            raise self._range(entry, name, v)
        return v


@dataclass(frozen=True)
class Real(Spec):
    """A finite real number (an int or a float, not a bool or a string) in the given interval."""

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False

    def describe(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.open_lo else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.open_hi else '<='} {self.hi:g}")
        return "a finite number" + (" " + " and ".join(parts) if parts else "")

    def check(self, entry: str, name: str, v: Any) -> float | int:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise self._type(entry, name, v)
        x = v if isinstance(v, int) else float(v)
        if not math.isfinite(x):
            raise self._range(entry, name, v)
        if self.lo is not None and (x < self.lo or (self.open_lo and x == self.lo)):
            raise self._range(entry, name, v)
        if self.hi is not None and (x > self.hi or (self.open_hi and x == self.hi)):
            raise self._range(entry, name, v)
        return x


@dataclass(frozen=True)
class Bool(Spec):
    """``True`` or ``False`` (a NumPy bool is accepted; strings and numbers are not)."""

    def describe(self) -> str:
        return "True or False"

    def check(self, entry: str, name: str, v: Any) -> bool:
        if isinstance(v, bool):
            return v
        if type(v).__name__ == "bool_":  # numpy.bool_
            return bool(v)
        raise self._type(entry, name, v)


@dataclass(frozen=True)
class Choice(Spec):
    """One of the given strings."""

    values: tuple[str, ...]

    def __init__(self, *values: str):
        object.__setattr__(self, "values", tuple(values))

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)

    def check(self, entry: str, name: str, v: Any) -> str:
        if not isinstance(v, str):
            raise self._type(entry, name, v)
        if v not in self.values:
            raise self._range(entry, name, v)
        return v


@dataclass(frozen=True)
class Text(Spec):
    """Any string (the builder checks it further)."""

    def describe(self) -> str:
        return "a string"

    def check(self, entry: str, name: str, v: Any) -> str:
        if not isinstance(v, str):
            raise self._type(entry, name, v)
        return v


@dataclass(frozen=True)
class Unchecked(Spec):
    """No declared spec and a default (``None``) that says nothing: the value is passed on as given."""

    def describe(self) -> str:
        return "any value"

    def check(self, entry: str, name: str, v: Any) -> Any:
        return v


@dataclass(frozen=True)
class Ints(Spec):
    """A tuple (or list) of integers, each >= ``lo``; exactly ``length`` of them when given."""

    length: int | None = None
    lo: int | None = None

    def describe(self) -> str:
        n = f"{self.length} " if self.length is not None else ""
        each = f" >= {self.lo}" if self.lo is not None else ""
        return f"a tuple of {n}integers{each}"

    def check(self, entry: str, name: str, v: Any) -> tuple[int, ...]:
        if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
            raise self._type(entry, name, v)
        if any(isinstance(x, bool) or not isinstance(x, numbers.Integral) for x in v):
            raise self._type(entry, name, v)
        out = tuple(int(x) for x in v)
        if self.length is not None and len(out) != self.length:
            raise self._range(entry, name, v)
        if self.lo is not None and any(x < self.lo for x in out):
            raise self._range(entry, name, v)
        return out


@dataclass(frozen=True)
class Maybe(Spec):
    """``None`` or a value of ``spec``."""

    spec: Spec

    def describe(self) -> str:
        return f"None or {self.spec.describe()}"

    def check(self, entry: str, name: str, v: Any) -> Any:
        if v is None:
            return None
        try:
            return self.spec.check(entry, name, v)
        except OptionTypeError:
            raise self._type(entry, name, v) from None
        except OptionError:
            raise self._range(entry, name, v) from None


def infer(default: Any) -> Spec:
    """The spec an undeclared option gets from its default."""
    if isinstance(default, bool):
        return Bool()
    if isinstance(default, int):
        return Int()
    if isinstance(default, float):
        return Real()
    if isinstance(default, str):
        return Text()
    if isinstance(default, tuple) and default and all(isinstance(x, int) and not isinstance(x, bool) for x in default):
        return Ints(length=len(default))
    return Unchecked()


_ACTS = ("sigmoid", "tanh", "relu", "leaky_relu", "softplus")
#: the named activations of :func:`derive.nn.activation` (the autoencoder takes any of them)
_ALL_ACTS = ("sigmoid", "tanh", "relu", "leaky_relu", "softplus", "identity", "exp", "square")
_LR = Real(lo=0)
_EPS = Real(lo=0)
_DECAY = Real(lo=0, hi=1, open_hi=True)  # a moving-average factor: 1 would never move (Adam: 1 - 1^t = 0)

#: The declared options of the zoo's entries: entry -> option -> spec.
ZOO: dict[str, dict[str, Spec]] = {
    "ridge_regression": {"lam": Real(lo=0)},
    "shallow_autoencoder": {"activation": Choice(*_ALL_ACTS)},
    "leaky_relu": {"slope": Real()},
    "mlp": {"layers": Int(lo=1, hi=MAX_LAYERS), "widths": Maybe(Ints(lo=1)), "activation": Choice(*_ACTS),
            "output": Choice("softmax_ce", "sigmoid_bce", "identity_mse")},
    "dropout": {"p_keep": Real(lo=0, hi=1, open_lo=True)},
    "residual_block": {"activation": Choice(*_ACTS)},
    "batch_norm": {"eps": _EPS},
    "conv2d": {"kernel": Maybe(Ints(length=2, lo=1)), "stride": Int(lo=1), "padding": Int(lo=0), "dilation": Int(lo=1)},
    "max_pool2d": {"kernel": Int(lo=1), "stride": Maybe(Int(lo=1)), "padding": Int(lo=0)},
    "avg_pool2d": {"kernel": Int(lo=1), "stride": Maybe(Int(lo=1)), "padding": Int(lo=0)},
    "cnn": {"channels": Int(lo=1, hi=64), "classes": Int(lo=2, hi=1000)},
    "layer_norm": {"eps": _EPS},
    "attention": {"causal": Bool()},
    "multihead_attention": {"heads": Int(lo=1, hi=64), "causal": Bool()},
    "transformer_block": {"heads": Int(lo=1, hi=64), "eps": _EPS},
    "rnn": {"activation": Choice(*_ACTS)},
    "gru": {"variant": Choice("book", "torch")},
    "positional_encoding": {"M": Real(lo=0, open_lo=True)},
    "sgd": {"lr": _LR, "weight_decay": Real(lo=0)},
    "momentum": {"lr": _LR, "beta": _DECAY, "form": Choice("book", "torch")},
    # torch's Nesterov needs a momentum > 0
    "nesterov": {"lr": _LR, "beta": Real(lo=0, hi=1, open_lo=True, open_hi=True)},
    "adagrad": {"lr": _LR, "eps": _EPS},
    "rmsprop": {"lr": _LR, "gamma": _DECAY, "eps": _EPS},
    "adam": {"lr": _LR, "beta1": _DECAY, "beta2": _DECAY, "eps": _EPS, "weight_decay": Real(lo=0)},
    "adamw": {"lr": _LR, "beta1": _DECAY, "beta2": _DECAY, "eps": _EPS, "weight_decay": Real(lo=0)},
}
