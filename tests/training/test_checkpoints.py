"""TrainingState: the one place that writes and restores a checkpoint's keys."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from galaxy_models.models.serialization import load_checkpoint
from galaxy_models.storage import LocalStore
from galaxy_models.training.checkpoints import Trainables, TrainingState
from galaxy_models.training.runs import EpochLog


def _trainables(seed: int) -> Trainables:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return Trainables(
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
    )


def _epoch(epoch: int, f1: float) -> EpochLog:
    return EpochLog(
        epoch=epoch, lr=0.1, train_loss=1.0, val_loss=1.0, val_accuracy=f1, val_f1=f1, images_per_second=10.0,
        seconds=2.0,
    )  # fmt: skip


def test_record_keeps_the_best_epoch() -> None:
    state = TrainingState()
    assert state.record(_epoch(0, 0.5))
    assert not state.record(_epoch(1, 0.4))
    assert state.record(_epoch(2, 0.6))
    assert (state.epoch, state.best_epoch, state.best_f1, state.seconds) == (3, 2, 0.6, 6.0)


def test_save_then_restore_brings_back_modules_state_and_generators(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    saved = _trainables(seed=1)
    loss = saved.model(torch.ones(2, 4)).sum()
    loss.backward()
    saved.optimizer.step()
    saved.scheduler.step()
    state = TrainingState()
    state.record(_epoch(0, 0.7))
    random.seed(5)
    torch.manual_seed(5)
    state.save(store, "runs/x/checkpoint.pt", saved)
    expected = (random.random(), torch.rand(1))

    fresh = _trainables(seed=2)
    restored = TrainingState.restore(store, "runs/x/checkpoint.pt", fresh)
    assert restored is not None
    assert (restored.epoch, restored.best_epoch, restored.best_f1, restored.history) == (1, 0, 0.7, state.history)
    assert restored.threads == torch.get_num_threads()
    assert (random.random(), torch.rand(1)) == expected  # the generators continue where they were saved
    for name, tensor in saved.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[name], tensor)
    assert fresh.scheduler.state_dict() == saved.scheduler.state_dict()
    assert set(load_checkpoint(store, "runs/x/checkpoint.pt")) == {
        "model", "optimizer", "scheduler", "scaler", "epoch", "best_f1", "best_epoch", "history", "seconds", "rng",
        "threads",
    }  # fmt: skip
    assert TrainingState.restore(store, "runs/y/checkpoint.pt", fresh) is None
