"""The library's pipeline steps as Prefect tasks (see ``galaxy_models.steps``).

Each step becomes a task run named after the step; ``map`` submits its calls as concurrent tasks,
in a sub-flow when a task runner is given (a Dask cluster for classify-flow's parts). Caching is
off: every step is idempotent in the store itself, and hashing images or tables for a cache key
would cost more than the work.

Retries: the steps that read or write the store and can run again without harm (``RETRIED``: a
re-run finds what the first attempt wrote, or writes it once) get 3 retries with backoff, so a
throttled or briefly unreachable store costs a delay, not the run. Training, evaluation,
calibration and promotion never retry: a failed training run is resumed on purpose (its checkpoint),
the pure computations would fail the same way again, and a promotion must not be repeated blindly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

T = TypeVar("T")

# Idempotent steps that do I/O: ingest's reads, shard writes and manifest commit; classify's model and
# batch lookups, plan, parts, projection and commit; export and its report; publishing a run.
RETRIED = frozenset(
    {
        "read-labels", "read-pseudo-labels", "list-images", "find-complete", "commit-manifest",
        "find-model", "find-batches", "plan-batch", "classify-part", "embedding-projection", "commit",
        "find-late-arrivals", "export", "report", "publish",
    }
)  # fmt: skip
RETRIED_PREFIXES = ("write-",)  # ingest's shard writers, one per split (write-train, write-val, ...)
RETRIES = 3
RETRY_DELAYS = (2.0, 5.0, 15.0)  # seconds before the first, second and third retry


def retried(name: str) -> bool:
    """Whether the step called ``name`` is idempotent I/O, and so retried."""
    return name in RETRIED or name.startswith(RETRIED_PREFIXES)


class PrefectSteps:
    def __init__(self, task_runner: Any = None, *, retry_delays: Sequence[float] = RETRY_DELAYS) -> None:
        self.task_runner = task_runner
        self.retry_delays = list(retry_delays)

    def _task(self, name: str, fn: Callable[..., T]) -> Any:
        if not retried(name):
            return task(fn, name=name, cache_policy=NO_CACHE)
        return task(fn, name=name, cache_policy=NO_CACHE, retries=RETRIES, retry_delay_seconds=self.retry_delays)

    def run(self, name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return self._task(name, fn)(*args, **kwargs)

    def map(self, name: str, fn: Callable[..., T], calls: Sequence[tuple[Any, ...]], /) -> list[T]:
        step = self._task(name, fn)

        def submit_all() -> list[T]:
            futures = [step.submit(*call) for call in calls]
            return [future.result() for future in futures]

        if self.task_runner is None:
            return submit_all()
        return flow(submit_all, name=f"{name}s", task_runner=self.task_runner)()
