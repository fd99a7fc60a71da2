"""Who owns the top-level packages ``derive``, ``numeric`` and ``verify``.

dlmath installs three top-level import packages beside ``dlmath`` itself. Other distributions on the
package index use the same names (``pip install verify`` installs an unrelated project), and pip lets a
later install overwrite files of an earlier one without a word: dlmath's ``verify/__init__.py`` replaced
by a stranger's, or deleted when the stranger is uninstalled. :func:`problems` finds these cases and
:func:`require` turns them into one ``ImportError`` line that names the cause and the fix.

A package is dlmath's when ``import NAME`` resolves to ``NAME/__init__.py`` beside this ``dlmath``
package and that file is dlmath's: every ``__init__.py`` of dlmath calls :func:`require`, a foreign one
does not. The check reads three small files once per process; the distribution that owns a clashing
name is looked up (``importlib.metadata``) only to word the message.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

__all__ = ["PACKAGES", "PackageConflict", "problems", "require"]

#: dlmath's top-level packages besides ``dlmath``.
PACKAGES = ("derive", "numeric", "verify")

_HOME = Path(__file__).resolve().parent.parent  # where dlmath's packages sit, side by side
_MARK = "_packages.require("  # the call every __init__.py of dlmath makes


class PackageConflict(ImportError):
    """Another distribution owns (or has overwritten or deleted) one of dlmath's top-level packages."""


def _owners(name: str) -> list[str]:
    """The distributions other than dlmath that declare the top-level name ``name``, as 'name version'."""
    import importlib.metadata as md

    found = []
    for dist in sorted(set(md.packages_distributions().get(name, [])) - {"dlmath"}):
        try:
            found.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            found.append(dist)
    return found


def _problem(name: str) -> str | None:
    ours = _HOME / name / "__init__.py"
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    owners = _owners(name) if origin is None or origin != ours or _MARK not in _read(ours) else []
    who = f"the distribution {' and '.join(repr(o) for o in owners)}" if owners else "another distribution"
    if not ours.is_file():
        return (f"dlmath's package {name!r} is broken: {ours} is missing (deleted when {who}, which also "
                f"installs a top-level {name!r}, was uninstalled?). Fix: pip install --force-reinstall "
                f"--no-deps dlmath")
    if origin is not None and origin != ours:
        if owners:
            fix = f"pip uninstall {owners[0].split()[0]}, or keep it in another environment"
            what = who
        else:
            fix = f"rename or move {origin}, or take its folder off sys.path"
            what = "a module that is not dlmath's"
        return f"'import {name}' finds {origin} ({what}) instead of dlmath's {ours}. Fix: {fix}"
    if _MARK not in _read(ours):
        fix = (f"pip uninstall {owners[0].split()[0]}, then pip install --force-reinstall --no-deps dlmath"
               if owners else "pip install --force-reinstall --no-deps dlmath")
        return (f"dlmath's package {name!r} was overwritten: {ours} belongs to {who}, which installs a "
                f"top-level {name!r} too (dlmath and it cannot share one environment). Fix: {fix}")
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


@lru_cache(maxsize=1)
def problems() -> tuple[str, ...]:
    """One line per top-level package of dlmath that is not dlmath's own, each with its fix (empty if none)."""
    if Path(__file__).suffix != ".py":  # frozen or bytecode-only (zipapp, PyInstaller): no sources to read
        return ()
    return tuple(p for p in (_problem(name) for name in PACKAGES) if p)


def require() -> None:
    """Raise :class:`PackageConflict` (one line: the cause and the fix) unless all of dlmath's top-level
    packages are dlmath's. Called first by the ``__init__.py`` of ``derive``, ``numeric`` and ``verify``,
    and before ``dlmath.derive``, ``dlmath.numeric`` or ``dlmath.verify`` is imported."""
    found = problems()
    if found:
        raise PackageConflict(found[0] if len(found) == 1 else " | ".join(found))
