"""The fuzzing budget shared by the property-based tests (import as ``from fuzzing import ...``).

Each fuzz target runs ``budget(n)`` generated cases: ``n`` by default (CI's
bounded budget, a couple of minutes for every target together), scaled by
``SKYDM_FUZZ_SCALE`` (e.g. ``SKYDM_FUZZ_SCALE=20`` for a long local campaign).
Cases are drawn from a fixed seed so that a CI failure replays exactly;
``SKYDM_FUZZ_SEED`` chooses another sequence.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, seed, settings

F = TypeVar("F", bound=Callable[..., Any])


def budget(n: int, *, function_fixtures: bool = False) -> Callable[[F], F]:
    """Hypothesis settings for a fuzz target of ``n`` cases (times ``SKYDM_FUZZ_SCALE``).

    ``function_fixtures``: the test uses function-scoped fixtures (capsys,
    monkeypatch) that it resets itself at the start of every case.
    """
    checks = [HealthCheck.too_slow, HealthCheck.data_too_large]
    if function_fixtures:
        checks.append(HealthCheck.function_scoped_fixture)
    scale = float(os.environ.get("SKYDM_FUZZ_SCALE", "1"))
    chosen = settings(
        max_examples=max(1, round(n * scale)),
        deadline=None,  # the machine is shared; time limits would make failures random
        derandomize="SKYDM_FUZZ_SEED" not in os.environ,
        suppress_health_check=checks,
        database=None,
    )

    def wrap(test: F) -> F:
        wrapped = chosen(test)
        if "SKYDM_FUZZ_SEED" in os.environ:
            wrapped = seed(int(os.environ["SKYDM_FUZZ_SEED"]))(wrapped)
        return wrapped  # type: ignore[no-any-return]

    return wrap
