"""Library steps as Prefect tasks: the idempotent I/O steps retry with backoff, the others never."""

from __future__ import annotations

from collections import Counter

import pytest
from prefect import flow

from flows.steps import RETRY_DELAYS, PrefectSteps, retried

FAST = (0.1, 0.1, 0.1)


def test_which_steps_retry() -> None:
    for name in ("read-labels", "list-images", "write-train", "commit-manifest", "plan-batch", "classify-part",
                 "commit", "export", "report", "publish"):  # fmt: skip
        assert retried(name), name
    for name in ("train", "evaluate", "calibrate", "promote", "join", "split"):
        assert not retried(name), name
    assert list(RETRY_DELAYS) == sorted(RETRY_DELAYS)  # backoff: each wait longer than the last


@pytest.mark.usefixtures("prefect_server")
def test_an_idempotent_step_survives_a_transient_failure_and_training_does_not_repeat() -> None:
    attempts: Counter[str] = Counter()

    def flaky(name: str) -> int:
        attempts[name] += 1
        if attempts[name] == 1:
            raise ConnectionError(f"store unreachable during {name}")
        return attempts[name]

    @flow(name="retry-story")
    def story() -> tuple[int, list[int], str]:
        steps = PrefectSteps(retry_delays=FAST)
        committed = steps.run("commit", flaky, "commit")
        parts = steps.map("classify-part", flaky, [(f"part-{i}",) for i in range(3)])
        try:
            steps.run("train", flaky, "train")
        except ConnectionError:
            return committed, parts, "training failed once and was not retried"
        return committed, parts, "trained"

    assert story() == (2, [2, 2, 2], "training failed once and was not retried")
    assert attempts == {"commit": 2, "part-0": 2, "part-1": 2, "part-2": 2, "train": 1}
