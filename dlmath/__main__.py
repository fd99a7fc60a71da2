"""``python -m dlmath`` and the ``dlmath`` console script: the command line of :mod:`verify.cli`.

Before anything else it checks that ``derive``, ``numeric`` and ``verify`` are dlmath's own packages
(see :mod:`dlmath._packages`): if another distribution has taken one over, it says so in one line with
the fix and exits with status 2, instead of failing inside a stranger's code.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import _packages


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dlmath`` command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:  # answered before the command line imports SymPy (the same text as its --version)
        from . import __version__

        print(f"dlmath {__version__}")
        return 0
    found = _packages.problems()
    if found:
        for line in found:
            print(f"dlmath: error: {line}", file=sys.stderr)
        return 2
    try:
        from verify.cli import main as cli  # imports SymPy: Ctrl-C may come while it loads
    except KeyboardInterrupt:
        print("dlmath: interrupted", file=sys.stderr)
        return 130
    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
