"""The pytest plugin of dlmath (entry point ``pytest11``): the ``dlmath_verify`` fixture.

The fixture and its options come from :mod:`verify.pytest_plugin`. The plugin loads in every pytest run
of the environment, dlmath's or not; so if another distribution has taken over ``derive``, ``numeric``
or ``verify`` (see :mod:`dlmath._packages`), it does not break those runs: it warns once, in one line
with the fix, and ``dlmath_verify`` fails with the same line wherever it is used.
"""

from __future__ import annotations

from typing import Any

import pytest

from . import _packages

PROBLEMS = _packages.problems()

if not PROBLEMS:
    from verify.pytest_plugin import dlmath_verify, pytest_addoption  # noqa: F401  (registered by pytest)
else:

    def pytest_configure(config: Any) -> None:
        for line in PROBLEMS:
            config.issue_config_time_warning(pytest.PytestConfigWarning(f"dlmath: {line}"), stacklevel=2)

    @pytest.fixture
    def dlmath_verify() -> Any:
        """Unavailable: dlmath's packages are not its own in this environment (the message says why)."""
        pytest.fail(f"dlmath: {PROBLEMS[0]}", pytrace=False)
