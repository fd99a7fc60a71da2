"""The model zoo: every entry of the book that has a gradient, an update rule or a closed form.

``names()`` lists the entries; ``get(name, **options)`` builds one. Each entry is a small function that
returns a :class:`~derive.program.Model`; entries live in one module per book chapter. An entry registers
with its book section and a one-line title (``@register("softmax_regression", "§3.3", "...")``), so that
listing the zoo (``about``, ``dlmath list``) builds nothing.

Options are declared and checked: ``@register(..., options={"layers": Int(lo=1), "causal": Bool()})`` gives
each keyword of the builder a spec from :mod:`derive.models.specs` (``Int``, ``Real``, ``Bool``, ``Choice``,
``Ints``, ``Maybe``), and ``get`` checks every option given against it before building anything, with the
valid values in the message (``attention(causal='false')`` is refused, not read as true). An option with no
declared spec gets one from its default's type (see :func:`derive.models.specs.infer`): to add an option to
an entry, add the keyword and, where the default's type is not the whole story (a range, several choices),
its spec in ``options=``. ``spec(name)`` lists an entry's specs.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from ..program import Model, ModelError
from .specs import ZOO, Spec, infer

__all__ = ["names", "get", "register", "entry", "options", "about", "spec"]

_REGISTRY: dict[str, Callable[..., Model]] = {}
_SPECS: dict[str, dict[str, Spec]] = {}
_ABOUT: dict[str, tuple[str, str]] = {}
_CACHE: dict[tuple[str, tuple[tuple[str, Any], ...]], Model] = {}


def register(name: str, section: str = "", title: str = "", options: dict[str, Spec] | None = None,
             ) -> Callable[[Callable[..., Model]], Callable[..., Model]]:
    """Decorator: add a model-building function to the zoo under ``name``, with its book ``section``, a
    one-line ``title`` (those of the model it builds with its default options) and the ``options`` specs of
    its keywords (:mod:`derive.models.specs`; an undeclared one is inferred from its default)."""

    def deco(fn: Callable[..., Model]) -> Callable[..., Model]:
        if name in _REGISTRY:
            raise ValueError(f"zoo entry {name!r} is registered twice")
        params = inspect.signature(fn).parameters
        declared = {**ZOO.get(name, {}), **(options or {})}
        unknown = set(declared) - set(params)
        if unknown:
            raise ValueError(f"zoo entry {name!r} declares specs for {', '.join(sorted(unknown))}, which "
                             f"its builder does not take")
        specs = {k: declared.get(k) or infer(p.default) for k, p in params.items()}
        _REGISTRY[name] = fn
        _SPECS[name] = specs
        if section and title:
            _ABOUT[name] = (section, title)
        return fn

    return deco


def names() -> list[str]:
    """The names of all zoo entries, in book order."""
    return list(_REGISTRY)


def entry(name: str) -> Callable[..., Model]:
    """The builder function of a zoo entry (its signature lists the options and their defaults)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"unknown model {name!r}.{hint} Known models: {', '.join(_REGISTRY)}") from None


def about(name: str) -> tuple[str, str]:
    """The book section and the one-line title of an entry, without building it (where it registered them)."""
    entry(name)
    if name not in _ABOUT:
        m = get(name)
        return m.section, m.title
    return _ABOUT[name]


def options(name: str) -> dict[str, Any]:
    """The options of an entry with their defaults."""
    sig = inspect.signature(entry(name))
    return {k: p.default for k, p in sig.parameters.items()}


def spec(name: str) -> dict[str, Spec]:
    """The declared option specs of an entry (type, range, choices), by option name."""
    entry(name)
    return dict(_SPECS[name])


def get(name: str, **opts: Any) -> Model:
    """Build the zoo entry ``name`` with ``opts`` (e.g. ``get("leaky_relu", slope=0.1)``).

    Raises:
        ModelError: for an unknown name (listing the known ones), an unknown option (listing the entry's
            options) or an option value outside its declared spec (:class:`~derive.models.specs.OptionError`,
            an ``OptionTypeError`` -- also a ``TypeError`` -- for the wrong kind of value), with the valid
            values.
    """
    if not isinstance(name, str):
        raise TypeError(f"derive.models.get takes a zoo entry's name (a string), not {type(name).__name__}")
    fn = entry(name)
    known = options(name)
    bad = set(opts) - set(known)
    if bad:
        listed = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "(none)"
        raise ModelError(f"{name} has no option {', '.join(sorted(bad))}; its options are: {listed}")
    specs = _SPECS[name]
    opts = {k: specs[k].check(name, k, v) for k, v in opts.items()}
    key = (name, tuple(sorted((k, _hashable(v)) for k, v in opts.items())))
    if key not in _CACHE:
        m = fn(**opts)
        args = "".join(f", {k}={v!r}" for k, v in opts.items())
        m.rebuild = f"derive.models.get({name!r}{args})"
        _CACHE[key] = m
    return _CACHE[key]


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


# the chapters register their entries on import, in book order
from . import ch2, ch3, ch4, ch5, ch6, ch7, ch7_seq, optim  # noqa: E402,F401,I001
from . import ch8  # noqa: E402,F401  (Chapter 8 and Appendix B, after the optimizers of Chapter 4)
