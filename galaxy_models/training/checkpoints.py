"""What a training checkpoint holds, in one place: ``TrainingState`` writes and restores every key,
so exact resume can be reviewed here alone.

A checkpoint is weights-only (see ``models.serialization``): state dicts, numbers and the states of
every random generator training touches, never pickled objects.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from galaxy_models.models.serialization import load_checkpoint, save_checkpoint
from galaxy_models.storage import KeyNotFoundError, Store
from galaxy_models.training.runs import EpochLog


def rng_state() -> dict[str, Any]:
    """Every random generator training touches, in weights-only form."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Trainables:
    """The objects whose state a checkpoint carries."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


@dataclass
class TrainingState:
    """Where a run is and how it went: the next epoch, the best validation macro-F1 so far and its
    epoch, the history and the seconds spent."""

    epoch: int = 0
    best_f1: float = -1.0
    best_epoch: int = -1
    history: list[EpochLog] = field(default_factory=list)
    seconds: float = 0.0
    threads: int | None = None  # CPU threads of the process that wrote the checkpoint

    def record(self, entry: EpochLog) -> bool:
        """Add a finished epoch; True if it is the best so far."""
        self.history.append(entry)
        self.epoch = entry.epoch + 1
        self.seconds += entry.seconds
        improved = entry.val_f1 > self.best_f1
        if improved:
            self.best_f1, self.best_epoch = entry.val_f1, entry.epoch
        return improved

    def save(self, store: Store, key: str, trainables: Trainables) -> None:
        """One atomic write of everything needed to continue after this epoch."""
        save_checkpoint(
            store,
            key,
            {
                "model": trainables.model.state_dict(),
                "optimizer": trainables.optimizer.state_dict(),
                "scheduler": trainables.scheduler.state_dict(),
                "scaler": trainables.scaler.state_dict(),
                "epoch": self.epoch,
                "best_f1": self.best_f1,
                "best_epoch": self.best_epoch,
                "history": [h.model_dump() for h in self.history],
                "seconds": self.seconds,
                "rng": rng_state(),
                "threads": torch.get_num_threads(),
            },
        )

    @classmethod
    def restore(cls, store: Store, key: str, trainables: Trainables) -> TrainingState | None:
        """Load the checkpoint at ``key`` into ``trainables`` and every random generator; None if
        there is none (a fresh run)."""
        try:
            # on the CPU: the random generators' states must stay CPU byte tensors (set_rng_state refuses
            # CUDA ones), and load_state_dict moves weights and optimiser state to their parameters' device
            state = load_checkpoint(store, key, map_location="cpu")
        except KeyNotFoundError:
            return None
        trainables.model.load_state_dict(state["model"])
        trainables.optimizer.load_state_dict(state["optimizer"])
        trainables.scheduler.load_state_dict(state["scheduler"])
        trainables.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        return cls(
            epoch=state["epoch"],
            best_f1=state["best_f1"],
            best_epoch=state["best_epoch"],
            history=[EpochLog.model_validate(h) for h in state["history"]],
            seconds=state["seconds"],
            threads=state.get("threads"),
        )
