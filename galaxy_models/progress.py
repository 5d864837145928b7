"""Progress of long work: a live bar on a terminal, plain periodic lines everywhere else.

A bar redrawn with carriage returns is unreadable in a cron mail, a CI log or a Prefect worker's
log, so where stderr is not a terminal the same calls print one line every ``interval`` seconds
(``GALAXY_PROGRESS_INTERVAL``, default 30) and one when the work ends.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
DEFAULT_INTERVAL = 30.0


def on_terminal() -> bool:
    return sys.stderr.isatty()


class LineProgress:
    """Counts work and prints ``desc: n/total unit (p%), r unit/s`` lines to stderr, at most one per
    ``interval`` seconds, plus a last one on ``close`` if anything was counted since the previous."""

    def __init__(self, *, total: int | None, desc: str, unit: str, interval: float) -> None:
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.n = 0
        self._started = self._printed_at = time.monotonic()
        self._printed_n = 0
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._printed_at >= self.interval:
            self._print()

    def close(self) -> None:
        if not self._closed and self.n != self._printed_n:
            self._print()
        self._closed = True

    def _print(self) -> None:
        now = time.monotonic()
        rate = self.n / max(now - self._started, 1e-9)
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        print(f"{self.desc}: {done} {self.unit}{share}, {rate:.1f} {self.unit}/s", file=sys.stderr, flush=True)
        self._printed_at, self._printed_n = now, self.n

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress_counter(*, total: int | None, desc: str, unit: str = "it", enabled: bool = True) -> Any:
    """A context manager counting work with ``update(n)``: a tqdm bar on a terminal, periodic lines
    otherwise, nothing when ``enabled`` is False."""
    if not enabled:
        return _Silent()
    if on_terminal():
        return tqdm(total=total, desc=desc, unit=unit, leave=False)
    interval = float(os.environ.get("GALAXY_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
    return LineProgress(total=total, desc=desc, unit=unit, interval=interval)


def progress_bar(
    items: Iterable[T], *, desc: str, unit: str = "it", total: int | None = None, enabled: bool = True
) -> Iterator[T]:
    """``items``, counted as they are consumed (see ``progress_counter``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_counter(total=total, desc=desc, unit=unit, enabled=enabled) as counter:
        for item in items:
            yield item
            counter.update(1)
