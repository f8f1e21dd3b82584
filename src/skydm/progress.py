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
        self._finished = False

    def advance(self, n: int = 1, note: str = "") -> None:
        """Count ``n`` more items done, printing a line if it is time to."""
        self.done += n
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        if self.quiet or (now - self._last < self.interval and not finished):
            return
        self._last = now
        self._print(now, note, final=finished)

    def finish(self, note: str = "") -> None:
        """Print the final state, ending the line.

        On a terminal, intermediate lines end in a carriage return so that
        the next one overwrites them; without this last line the first line
        of the command's own output would be printed over the progress.
        """
        if not self.quiet and not self._finished:
            self._print(time.monotonic(), note, final=True)

    def _print(self, now: float, note: str, *, final: bool) -> None:
        # Work counted only by a note (rows streamed, a job's phase) shows no count.
        count = f"{self.done}/{self.total} " if self.total is not None else ""
        count = count or (f"{self.done} " if self.done else "")
        tail = f" {note}" if note else ""
        tty = sys.stderr.isatty()
        end = "\n" if final or not tty else "\r"
        # On a terminal, clear the rest of a longer line printed before.
        clear = "\r\033[K" if tty else ""
        print(
            f"{clear}{self.desc}: {count}({now - self._start:.1f} s){tail}",
            end=end,
            file=sys.stderr,
            flush=True,
        )
        self._finished = final


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


def plural(n: int | None, word: str, words: str | None = None) -> str:
    """``"1 row"``, ``"2 rows"`` (``words`` for an irregular plural)."""
    return f"{n} {word if n == 1 else (words or word + 's')}"
