"""How a pipeline runs its steps.

Each pipeline (ingest, train -> evaluate -> publish, classify the pending batches) is written once,
in the library, as a sequence of named steps. Who runs it decides what a step is: ``IN_PROCESS``
calls each one directly (the CLI, the benchmarks, tests); ``flows/`` passes a ``Steps`` that runs
each as a Prefect task, so the server shows, retries and logs them one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Steps(Protocol):
    def run(self, name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run one step, ``fn(*args, **kwargs)``, and return its result."""
        ...

    def map(self, name: str, fn: Callable[..., T], calls: Sequence[tuple[Any, ...]], /) -> list[T]:
        """Run ``fn(*call)`` for every call, possibly concurrently; results in the order of ``calls``."""
        ...


class InProcess:
    """Every step a plain call, one after the other."""

    def run(self, name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return fn(*args, **kwargs)

    def map(self, name: str, fn: Callable[..., T], calls: Sequence[tuple[Any, ...]], /) -> list[T]:
        return [fn(*call) for call in calls]


IN_PROCESS: Steps = InProcess()
