"""The library's pipeline steps as Prefect tasks (see ``galaxy_models.steps``).

Each step becomes a task run named after the step; ``map`` submits its calls as concurrent tasks,
in a sub-flow when a task runner is given (a Dask cluster for classify-flow's parts). Caching is
off: every step is idempotent in the store itself, and hashing images or tables for a cache key
would cost more than the work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

T = TypeVar("T")


class PrefectSteps:
    def __init__(self, task_runner: Any = None) -> None:
        self.task_runner = task_runner

    def run(self, name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return task(fn, name=name, cache_policy=NO_CACHE)(*args, **kwargs)

    def map(self, name: str, fn: Callable[..., T], calls: Sequence[tuple[Any, ...]], /) -> list[T]:
        step = task(fn, name=name, cache_policy=NO_CACHE)

        def submit_all() -> list[T]:
            futures = [step.submit(*call) for call in calls]
            return [future.result() for future in futures]

        if self.task_runner is None:
            return submit_all()
        return flow(submit_all, name=f"{name}s", task_runner=self.task_runner)()
