"""The model registry, kept in the store next to the data:

    models/<name>/<version>/model.pt       weights only (a state dict; loaded with weights_only=True)
    models/<name>/<version>/*.png          confusion matrices and training curves
    models/<name>/<version>/card.json      written last: a version without a card does not exist
    models/<name>/production.json          which version is promoted, replaced by compare-and-swap

A version is the training run's id, so publishing the same run twice writes nothing new.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from typing import Any

import torch
from pydantic import BaseModel, Field
from torch import nn

from galaxy_models.checkpoints import load_checkpoint
from galaxy_models.data import Preprocessing
from galaxy_models.evaluation import Metrics, confusion_png, curves_png
from galaxy_models.labels import CLASS_NAMES
from galaxy_models.registry import create_model
from galaxy_models.storage import KeyNotFoundError, Store
from galaxy_models.training import TrainRun

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class ModelCard(BaseModel):
    """What a published model is, how it was made, and how well it does."""

    name: str
    version: str
    architecture: str
    parameters: int
    class_names: list[str]
    preprocessing: Preprocessing
    config: dict[str, Any]
    dataset: dict[str, str] = Field(description="name, version and manifest_sha256 of the training data")
    metrics: dict[str, Metrics] = Field(description="per split: val, test")
    best_epoch: int
    history: list[dict[str, float]]
    hardware: dict[str, Any]
    training_seconds: float
    training_images_per_second: float
    figures: list[str] = Field(description="PNG files beside the card")
    created_at: datetime


class Production(BaseModel):
    version: str
    promoted_at: datetime
    previous: str | None = None


class ModelNotFoundError(KeyNotFoundError):
    """No such model name or version in the registry."""


def check_name(value: str, what: str = "model name") -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: use letters, digits, '_' and '-' (at most 64, not first)")
    return value


def model_prefix(name: str, version: str) -> str:
    return f"models/{check_name(name)}/{check_name(version, 'model version')}"


def publish(store: Store, card: ModelCard, state_dict: dict[str, torch.Tensor], figures: dict[str, bytes]) -> bool:
    """Write weights and figures, then the card. Returns False (writing nothing) if the version exists.

    A crash before the card leaves files no reader looks at; the next publish writes them again.
    """
    prefix = model_prefix(card.name, card.version)
    if store.exists(f"{prefix}/card.json"):
        return False
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    store.write_bytes(f"{prefix}/model.pt", buffer.getvalue())
    for filename, png in figures.items():
        store.write_bytes(f"{prefix}/{filename}", png)
    card = card.model_copy(update={"figures": sorted(figures)})
    return store.create_if_absent(f"{prefix}/card.json", card.model_dump_json(indent=2).encode())


def read_card(store: Store, name: str, version: str | None = None) -> ModelCard:
    """The card of ``version``, or of the production version if ``version`` is None.

    Raises:
        ModelNotFoundError: naming what is missing.
    """
    if version is None:
        version = production_version(store, name)
        if version is None:
            raise ModelNotFoundError(f"model {name!r} has no production version in {store.uri}; promote one first")
    try:
        return ModelCard.model_validate_json(store.read_bytes(f"{model_prefix(name, version)}/card.json"))
    except KeyNotFoundError:
        known = ", ".join(list_versions(store, name)) or "none"
        raise ModelNotFoundError(f"model {name}/{version} is not in {store.uri} (versions: {known})") from None


def list_versions(store: Store, name: str) -> list[str]:
    """Published versions of ``name``, oldest first."""
    prefix = f"models/{check_name(name)}/"
    versions = [k[len(prefix) :].split("/")[0] for k in store.list(prefix) if k.endswith("/card.json")]
    cards = [ModelCard.model_validate_json(store.read_bytes(f"{prefix}{v}/card.json")) for v in versions]
    return [c.version for c in sorted(cards, key=lambda c: c.created_at)]


def list_models(store: Store) -> list[str]:
    names = {k.split("/")[1] for k in store.list("models/") if k.endswith("/card.json")}
    return sorted(names)


def production_version(store: Store, name: str) -> str | None:
    try:
        return Production.model_validate_json(store.read_bytes(f"models/{check_name(name)}/production.json")).version
    except KeyNotFoundError:
        return None


class PromotionConflict(RuntimeError):
    """Another promotion of the same model landed between our read and our write."""


def promote(store: Store, name: str, version: str) -> Production:
    """Make ``version`` the production model of ``name`` with a conditional write: of two concurrent
    promotions exactly one succeeds, the other raises ``PromotionConflict`` and changes nothing.

    Raises:
        ModelNotFoundError: if the version is not published.
        PromotionConflict: if production.json changed while this call ran.
    """
    read_card(store, name, version)  # it must exist
    key = f"models/{check_name(name)}/production.json"
    try:
        data, tag = store.read_tagged(key)
        previous: str | None = Production.model_validate_json(data).version
    except KeyNotFoundError:
        tag, previous = None, None
    production = Production(version=version, promoted_at=datetime.now(UTC), previous=previous)
    if not store.replace_if(key, production.model_dump_json(indent=2).encode(), tag):
        raise PromotionConflict(f"production.json of {name!r} changed during the promotion of {version!r}; retry")
    return production


def load_model(store: Store, name: str, version: str | None = None) -> tuple[nn.Module, ModelCard]:
    """The published model (the production version if ``version`` is None) in eval mode, and its card.
    Weights load with ``weights_only=True``."""
    card = read_card(store, name, version)
    state = load_checkpoint(store, f"{model_prefix(card.name, card.version)}/model.pt")
    model = create_model(card.architecture, num_classes=len(card.class_names))
    model.load_state_dict(state)
    return model.eval(), card


def publish_run(store: Store, run: TrainRun, metrics: dict[str, Metrics]) -> ModelCard:
    """Publish a finished run: its best weights, a card with the metrics, and the figures.
    Publishing the same run again returns the existing card and writes nothing."""
    try:
        return read_card(store, run.name, run.run_id)
    except ModelNotFoundError:
        pass
    title = f"{run.architecture} on {run.dataset}/{run.dataset_version}"
    figures = {f"confusion_{split}.png": confusion_png(m, f"{title}, {split}") for split, m in metrics.items()}
    figures["training_curves.png"] = curves_png([h.model_dump() for h in run.history], title)
    card = ModelCard(
        name=run.name,
        version=run.run_id,
        architecture=run.architecture,
        parameters=run.parameters,
        class_names=list(CLASS_NAMES),
        preprocessing=run.preprocessing,
        config=run.config.model_dump(mode="json"),
        dataset={"name": run.dataset, "version": run.dataset_version, "manifest_sha256": run.manifest_sha256},
        metrics=metrics,
        best_epoch=run.best_epoch,
        history=[h.model_dump() for h in run.history],
        hardware=run.hardware,
        training_seconds=run.training_seconds,
        training_images_per_second=run.images_per_second,
        figures=sorted(figures),
        created_at=datetime.now(UTC),
    )
    weights = load_checkpoint(store, run.best_key)["model"]
    publish(store, card, weights, figures)
    return read_card(store, run.name, run.run_id)
