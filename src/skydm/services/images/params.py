"""DALI request parameters: case-insensitive names, repeated values, strict parsing."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from skydm.errors import BadValueError


class Params:
    """The parameters of one request: ``(name, value)`` pairs, names case-insensitive (DALI)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            self._values.setdefault(name.upper(), []).append(value)

    def all(self, name: str) -> list[str]:
        """Every value given for ``name`` (in order)."""
        return list(self._values.get(name.upper(), []))

    def one(self, name: str) -> str | None:
        """The single value of ``name``, None when absent; an error when given twice."""
        values = self._values.get(name.upper(), [])
        if len(values) > 1:
            raise BadValueError(name, values, "a single value")
        return values[0] if values else None

    def names(self) -> list[str]:
        """The parameter names given (upper case)."""
        return list(self._values)

    def items(self) -> list[tuple[str, str]]:
        """Every ``(NAME, value)`` pair."""
        return [(k, v) for k, values in self._values.items() for v in values]


@dataclass(frozen=True)
class Interval:
    """A closed interval ``lo..hi``; infinite ends are open-ended (DALI interval syntax)."""

    lo: float
    hi: float

    def overlaps(self, lo: float | None, hi: float | None) -> bool:
        """True when ``[lo, hi]`` (None: unknown, never matching) overlaps this interval."""
        if lo is None or hi is None:
            return False
        return lo <= self.hi and hi >= self.lo


def parse_interval(name: str, text: str) -> Interval:
    """``"lo hi"`` (``-Inf``/``+Inf`` allowed) or a single value as an :class:`Interval`."""
    parts = text.split()
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or any(math.isnan(v) for v in values) or values[0] > values[1]:
        raise BadValueError(name, text, "an interval 'lo hi' with lo <= hi (-Inf/+Inf allowed)")
    return Interval(values[0], values[1])


def parse_int(name: str, text: str, *, minimum: int = 0) -> int:
    """A whole number >= ``minimum``."""
    try:
        value = int(text)
    except ValueError:
        raise BadValueError(name, text, f"a whole number >= {minimum}") from None
    if value < minimum:
        raise BadValueError(name, text, f"a whole number >= {minimum}")
    return value
