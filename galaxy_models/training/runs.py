"""Training runs in the store: ``runs/<name>/<run id>/`` and the ``run.json`` a finished run leaves.

- ``checkpoint.pt``: everything needed to continue (see ``checkpoints.TrainingState``), rewritten
  atomically after every epoch;
- ``best.pt``: the weights of the epoch with the best validation macro-F1;
- ``run.json``: written last, when the run has finished; a run that has one is not trained again.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from galaxy_models.data.manifest import DatasetManifest, ManifestSealError, read_manifest
from galaxy_models.models.preprocessing import Preprocessing
from galaxy_models.storage import KeyNotFoundError, Store, open_store
from galaxy_models.training.config import TrainConfig


class EpochLog(BaseModel):
    epoch: int
    lr: float
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_f1: float
    images_per_second: float
    seconds: float


class TrainRun(BaseModel):
    """What a finished run leaves in ``run.json``."""

    name: str
    run_id: str
    prefix: str
    architecture: str
    parameters: int
    config: TrainConfig
    dataset: str
    dataset_version: str
    manifest_sha256: str
    manifest_seal: str = Field(description="the dataset manifest's seal: the content the run trained on")
    survey: str | None = Field(None, description="real or synthetic: the kind of survey the data came from")
    preprocessing: Preprocessing
    best_epoch: int
    best_val_f1: float
    history: list[EpochLog]
    training_seconds: float
    images_per_second: float = Field(description="training images per second over the run (all processes)")
    hardware: dict[str, Any]
    finished_at: datetime

    def dataset_reference(self) -> dict[str, str]:
        """What a model card records of the training data: name, version, manifest hash and seal, and
        the kind of survey (lineage: classify warns when a batch is of the other kind)."""
        reference = {
            "name": self.dataset, "version": self.dataset_version, "manifest_sha256": self.manifest_sha256,
            "manifest_seal": self.manifest_seal,
        }  # fmt: skip
        return reference if self.survey is None else {**reference, "survey": self.survey}

    @property
    def best_key(self) -> str:
        return f"{self.prefix}/best.pt"


def run_prefix(name: str, run_id: str) -> str:
    return f"runs/{name}/{run_id}"


def record_config(store: Store, config: TrainConfig, run_id: str) -> None:
    """Save the resolved config beside the run. Also the run's first write: a store that cannot be
    written to fails here, before any epoch is trained."""
    store.write_bytes(f"{run_prefix(config.run_name, run_id)}/config.json", config.model_dump_json(indent=2).encode())


def manifest_sha256(store: Store, manifest: DatasetManifest) -> str:
    return hashlib.sha256(store.read_bytes(f"{manifest.prefix}/manifest.json")).hexdigest()


def resolve_dataset(config: TrainConfig) -> tuple[Store, DatasetManifest]:
    store = open_store(config.store)
    return store, read_manifest(store, config.dataset, config.dataset_version)


def run_manifest(store: Store, run: TrainRun) -> DatasetManifest:
    """The manifest a finished run trained on, refused if it is not the content the run recorded
    (a manifest rebuilt or re-sealed since then describes other data)."""
    manifest = read_manifest(store, run.dataset, run.dataset_version)
    if manifest.seal != run.manifest_seal:
        raise ManifestSealError(
            f"dataset {run.dataset}/{run.dataset_version} is not what run {run.name}/{run.run_id} trained on: "
            f"its manifest's seal is {manifest.seal[:20]}..., the run recorded {run.manifest_seal[:20]}..."
        )
    return manifest


def read_run(store: Store, name: str, run_id: str) -> TrainRun | None:
    try:
        return TrainRun.model_validate_json(store.read_bytes(f"{run_prefix(name, run_id)}/run.json"))
    except KeyNotFoundError:
        return None


def mean_rate(history: list[EpochLog]) -> float:
    """Training images per second over all epochs (time-weighted)."""
    if not history:
        return 0.0
    images = sum(h.images_per_second * h.seconds for h in history)
    return images / sum(h.seconds for h in history)
