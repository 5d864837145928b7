"""A dead training process does not kill the run: torchrun restarts both gloo processes, they resume
from the last checkpoint, and (deterministic on CPU) the run ends with the weights of a run that was
never interrupted."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch

from galaxy_models.models.serialization import load_checkpoint
from galaxy_models.storage import LocalStore
from galaxy_models.training.config import TrainConfig
from galaxy_models.training.launch import launch
from galaxy_models.training.runs import TrainRun


def _worker(marker: str, rank: int) -> int | None:
    """The pid of the first attempt's training process of ``rank`` in the job marked ``marker``."""
    wanted = {f"GALAXY_TEST_JOB={marker}".encode(), f"RANK={rank}".encode(), b"TORCHELASTIC_RESTART_COUNT=0"}
    for entry in Path("/proc").iterdir():
        try:
            environment = set((entry / "environ").read_bytes().split(b"\0")) if entry.name.isdigit() else set()
        except OSError:  # gone, or not ours
            continue
        if wanted <= environment:
            return int(entry.name)
    return None


def _kill_rank_after_checkpoint(root: Path, marker: str, rank: int, done: threading.Event) -> str:
    """Wait for the run's first checkpoint, then SIGKILL that attempt's process of ``rank``."""
    store = LocalStore(root)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not done.is_set():
        if any(k.endswith("/checkpoint.pt") for k in store.list("runs/")):
            pid = _worker(marker, rank)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                return f"killed rank {rank} (pid {pid})"
        time.sleep(0.05)
    return "the run ended before a process could be killed"


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
    done, outcome = threading.Event(), []
    killer = threading.Thread(
        target=lambda: outcome.append(_kill_rank_after_checkpoint(roots["interrupted"], marker, 1, done))
    )
    killer.start()
    lines: list[str] = []
    try:
        run = launch(interrupted, processes=2, log=lines.append)
    finally:
        done.set()
        killer.join()
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
    done = threading.Event()
    killer = threading.Thread(target=_kill_rank_after_checkpoint, args=(root, marker, 1, done))
    killer.start()
    try:
        with pytest.raises(TrainingFailed, match="torchrun exited with"):
            launch(config, processes=2, log=lambda _: None)
    finally:
        done.set()
        killer.join()
