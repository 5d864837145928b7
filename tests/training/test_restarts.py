"""A dead training process does not kill the run: torchrun restarts both gloo processes, they resume
from the last checkpoint, and (deterministic on CPU) the run ends with the weights of a run that was
never interrupted."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from galaxy_models.models.serialization import load_checkpoint
from galaxy_models.storage import LocalStore
from galaxy_models.training.config import TrainConfig
from galaxy_models.training.launch import launch
from galaxy_models.training.runs import TrainRun

KILLER = Path(__file__).with_name("kill_rank.py")


@contextmanager
def killing_rank(root: Path, marker: str, rank: int) -> Iterator[list[str]]:
    """While the block runs, a separate process (no thread in this one) SIGKILLs the first attempt's
    process of ``rank`` once the run in ``root`` has written its first checkpoint; its report line is
    appended to the yielded list when the block ends."""
    outcome: list[str] = []
    with subprocess.Popen(
        [sys.executable, str(KILLER), str(root), marker, str(rank)], stdout=subprocess.PIPE, text=True
    ) as killer:
        try:
            yield outcome
        finally:
            if killer.poll() is None:
                killer.terminate()
            stdout, _ = killer.communicate(timeout=30)
            outcome.append(stdout.strip() or f"the killer exited with {killer.returncode} and said nothing")


def _final_weights(root: Path, run: TrainRun) -> dict[str, torch.Tensor]:
    return load_checkpoint(LocalStore(root), f"{run.prefix}/checkpoint.pt")["model"]


def test_a_killed_process_is_restarted_and_the_run_ends_as_if_never_interrupted(
    synthetic_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"preset": "smoke", "epochs": 3, "batch_size": 16, "deterministic": True, "workers": 0}
    roots = {name: tmp_path / name for name in ("interrupted", "clean")}
    for root in roots.values():
        shutil.copytree(synthetic_dataset, root)
    marker = uuid.uuid4().hex
    monkeypatch.setenv("GALAXY_TEST_JOB", marker)  # torchrun hands the environment to its processes
    interrupted = TrainConfig(store=str(roots["interrupted"]), max_restarts=1, **settings)  # type: ignore[arg-type]
    lines: list[str] = []
    with killing_rank(roots["interrupted"], marker, 1) as outcome:
        run = launch(interrupted, processes=2, log=lines.append)
    assert outcome[0].startswith("killed rank 1"), outcome
    assert any(line.startswith("resuming") or " resuming " in line for line in lines), lines[-40:]
    assert [h.epoch for h in run.history] == [0, 1, 2]
    clean = launch(TrainConfig(store=str(roots["clean"]), **settings), processes=2, log=lambda _: None)  # type: ignore[arg-type]
    assert clean.run_id == run.run_id  # the restart budget is not part of the run's identity
    got, expected = _final_weights(roots["interrupted"], run), _final_weights(roots["clean"], clean)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_without_restarts_a_dead_process_fails_the_run(
    synthetic_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from galaxy_models.training.launch import TrainingFailed

    root = tmp_path / "store"
    shutil.copytree(synthetic_dataset, root)
    marker = uuid.uuid4().hex
    monkeypatch.setenv("GALAXY_TEST_JOB", marker)
    config = TrainConfig(preset="smoke", store=str(root), epochs=3, batch_size=16, workers=0, max_restarts=0)
    with killing_rank(root, marker, 1) as outcome, pytest.raises(TrainingFailed, match="torchrun exited with"):
        launch(config, processes=2, log=lambda _: None)
    assert outcome[0].startswith("killed rank 1"), outcome
