"""Progress reporting for long-running work, on standard error."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Progress:
    """Report ``done/total`` for a task, at most every ``interval`` seconds.

    Library functions take an optional ``Progress`` and call :meth:`advance`;
    the CLI creates one that prints, tests pass ``None`` or a quiet one.
    """

    def __init__(
        self, desc: str, total: int | None = None, *, quiet: bool = False, interval: float = 0.5
    ) -> None:
        self.desc, self.total, self.quiet, self.interval = desc, total, quiet, interval
        self.done = 0
        self._start = time.monotonic()
        self._last = 0.0

    def advance(self, n: int = 1, note: str = "") -> None:
        """Count ``n`` more items done, printing a line if it is time to."""
        self.done += n
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        if self.quiet or (now - self._last < self.interval and not finished):
            return
        self._last = now
        of = f"/{self.total}" if self.total is not None else ""
        tail = f" {note}" if note else ""
        end = "\n" if finished or not sys.stderr.isatty() else "\r"
        print(
            f"{self.desc}: {self.done}{of} ({now - self._start:.1f} s){tail}",
            end=end,
            file=sys.stderr,
            flush=True,
        )


def progress(
    items: Iterable[T], desc: str, total: int | None = None, *, quiet: bool = False
) -> Iterator[T]:
    """Iterate over ``items`` while reporting progress."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    bar = Progress(desc, total, quiet=quiet)
    for item in items:
        yield item
        bar.advance()
