"""Model cards and production versions: which models are published, how they were made, which
one serves. JSON in the store, so reading needs no torch (see the package docstring for the layout).

A version is the training run's id, so publishing the same run twice writes nothing new.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from galaxy_models.calibration import Calibration
from galaxy_models.domain import ModelRef, check_name
from galaxy_models.metrics import Metrics
from galaxy_models.models.preprocessing import Preprocessing
from galaxy_models.storage import KeyNotFoundError, Store

# The share of the validation split's classes a reduced precision must give exactly as fp32 does
# before ``auto`` serves the model in it (``inference.precision``).
MIN_PRECISION_AGREEMENT = 0.995


class PrecisionCheck(BaseModel):
    """How a reduced precision of a model (bf16, int8) agreed with fp32 on its validation split:
    recorded in the card by the first engine that needed to know, so the check runs once per model."""

    precision: str
    split: str = "val"
    images: int = Field(description="images of the split compared")
    agreeing: int = Field(description="images given the same class as in fp32")
    max_probability_difference: float
    threshold: float = MIN_PRECISION_AGREEMENT
    reference: str = Field(description="what the classes were compared with")
    runtime: str = Field(description="the runtime and version that ran the reduced precision")
    artifact_sha256: str | None = Field(None, description="sha256 of what was checked: the weights, or the int8 copy")
    checked_at: datetime

    @property
    def agreement(self) -> float:
        return self.agreeing / self.images if self.images else 0.0

    @property
    def passed(self) -> bool:
        return self.images > 0 and self.agreement >= self.threshold

    def describe(self) -> str:
        return (
            f"{self.precision} gave {self.agreeing} of {self.images} images of the {self.split} split the fp32 class "
            f"({100 * self.agreement:.2f}%, needs {100 * self.threshold:.1f}%)"
        )


class ModelCard(BaseModel):
    """What a published model is, how it was made, and how well it does."""

    name: str
    version: str
    architecture: str
    parameters: int
    class_names: list[str]
    preprocessing: Preprocessing
    config: dict[str, Any]
    dataset: dict[str, str] = Field(description="name, version, manifest_sha256 and manifest_seal of the training data")
    metrics: dict[str, Metrics] = Field(description="per split: val, test")
    calibration: Calibration | None = Field(
        None, description="temperature fitted on val, applied by inference; None (older cards): T = 1"
    )
    best_epoch: int
    history: list[dict[str, float]]
    hardware: dict[str, Any]
    training_seconds: float
    training_images_per_second: float
    figures: list[str] = Field(description="PNG files beside the card")
    created_at: datetime
    precision_checks: dict[str, PrecisionCheck] = Field(
        default_factory=dict, description="reduced precisions checked against fp32 (bf16, int8), by name"
    )


def record_precision_check(store: Store, card: ModelCard, name: str, check: PrecisionCheck) -> ModelCard:
    """Add ``check`` to the published card under ``name`` (compare-and-swap: a concurrent record is kept)."""
    key = f"{model_prefix(card.name, card.version)}/card.json"
    for _ in range(5):
        data, tag = store.read_tagged(key)
        current = ModelCard.model_validate_json(data)
        updated = current.model_copy(update={"precision_checks": {**current.precision_checks, name: check}})
        if store.replace_if(key, updated.model_dump_json(indent=2).encode(), tag):
            return updated
    raise RuntimeError(f"{store.url(key)} kept changing while its {check.precision} check was recorded; retry")


class Production(BaseModel):
    version: str
    promoted_at: datetime
    previous: str | None = None


class ModelNotFoundError(KeyNotFoundError):
    """No such model name or version in the registry."""


def model_prefix(name: str, version: str) -> str:
    return f"models/{check_name(name, 'model name')}/{check_name(version, 'model version')}"


def read_card(store: Store, name: str, version: str | None = None) -> ModelCard:
    """The card of ``version``, or of the production version if ``version`` is None.

    Raises:
        ModelNotFoundError: saying whether the model, the version or a production version is missing,
            what is published instead, and (for a missing production version) the command that promotes one.
    """
    if version is None:
        version = production_version(store, name)
        if version is None:
            versions = _versions_or_raise(store, name)
            raise ModelNotFoundError(
                f"model {name!r} has no production version in {store.uri} (versions: {', '.join(versions)}); "
                f"promote one with: galaxy-pipeline models promote {name} {versions[-1]} --store {store.uri}"
            )
    try:
        return ModelCard.model_validate_json(store.read_bytes(f"{model_prefix(name, version)}/card.json"))
    except KeyNotFoundError:
        versions = _versions_or_raise(store, name)
        raise ModelNotFoundError(
            f"model {name}/{version} is not in {store.uri} (versions: {', '.join(versions)})"
        ) from None


def _versions_or_raise(store: Store, name: str) -> list[str]:
    versions = list_versions(store, name)
    if not versions:
        published = ", ".join(list_models(store)) or "none"
        raise ModelNotFoundError(
            f"no model {name!r} in {store.uri} (published models: {published}); train and publish it first, "
            f"e.g. galaxy-pipeline train --model {name} --store {store.uri}, or run its train-flow deployment"
        )
    return versions


def resolve(store: Store, ref: ModelRef) -> ModelCard:
    """The card a ``NAME`` or ``NAME@VERSION`` reference names (see ``read_card``)."""
    return read_card(store, ref.name, ref.version)


def list_versions(store: Store, name: str) -> list[str]:
    """Published versions of ``name``, oldest first."""
    prefix = f"models/{check_name(name, 'model name')}/"
    versions = [k[len(prefix) :].split("/")[0] for k in store.list(prefix) if k.endswith("/card.json")]
    cards = [ModelCard.model_validate_json(store.read_bytes(f"{prefix}{v}/card.json")) for v in versions]
    return [c.version for c in sorted(cards, key=lambda c: c.created_at)]


def list_models(store: Store) -> list[str]:
    names = {k.split("/")[1] for k in store.list("models/") if k.endswith("/card.json")}
    return sorted(names)


def production_version(store: Store, name: str) -> str | None:
    try:
        data = store.read_bytes(f"models/{check_name(name, 'model name')}/production.json")
    except KeyNotFoundError:
        return None
    return Production.model_validate_json(data).version


class PromotionConflict(RuntimeError):
    """Another promotion of the same model landed between our read and our write."""


class PromotionRefused(ValueError):
    """The promotion gate refused a model: below the floor, or worse than production on the same data."""


# The validation macro-F1 a model needs to be promoted when neither the caller nor the card's
# training config sets one: above what a network predicting one class for everything scores on
# GZ2's five classes (at most 0.1), below any model worth serving.
DEFAULT_MIN_VAL_F1 = 0.2


def promotion_refusal(card: ModelCard, production: ModelCard | None, floor: float | None = None) -> str | None:
    """Why ``card`` must not replace ``production`` as the served model, or None if it may.

    The gate: a validation macro-F1 at least ``floor`` (default: the ``min_val_f1`` the card's
    training config set, else ``DEFAULT_MIN_VAL_F1``), and at least production's when both were
    validated on the same data (same dataset version and manifest seal; scores on other data do
    not compare).
    """
    val = card.metrics.get("val")
    if val is None:
        return "its card has no validation score"
    floor = card.config.get("min_val_f1", DEFAULT_MIN_VAL_F1) if floor is None else floor
    if val.f1 < floor:
        return f"its validation macro-F1 {val.f1:.3f} is below the floor {floor:.3f} (min_val_f1)"
    if production is None or production.version == card.version or production.dataset != card.dataset:
        return None
    current = production.metrics.get("val")
    if current is not None and val.f1 < current.f1:
        return (
            f"its validation macro-F1 {val.f1:.3f} is below production {production.version}'s {current.f1:.3f} "
            "on the same dataset"
        )
    return None


def promote(store: Store, name: str, version: str, *, floor: float | None = None, force: bool = False) -> Production:
    """Make ``version`` the production model of ``name`` with a conditional write: of two concurrent
    promotions exactly one succeeds, the other raises ``PromotionConflict`` and changes nothing.
    Promoting the version that is already production changes nothing and returns the record in force.
    Unless ``force``, the version must pass the gate (``promotion_refusal``; ``floor`` overrides the
    validation macro-F1 floor its card's config set).

    Raises:
        ModelNotFoundError: if the version is not published.
        PromotionRefused: if the gate refuses it, saying why and how to force it.
        PromotionConflict: if production.json changed while this call ran.
    """
    card = read_card(store, name, version)
    key = f"models/{check_name(name, 'model name')}/production.json"
    try:
        data, tag = store.read_tagged(key)
        current = Production.model_validate_json(data)
    except KeyNotFoundError:
        tag, current = None, None
    if current is not None and current.version == version:
        return current  # already production: rewriting would point `previous` at itself and lose the rollback
    refusal = None if force else promotion_refusal(card, _production_card(store, name, current), floor)
    if refusal is not None:
        raise PromotionRefused(
            f"not promoting {name}/{version}: {refusal}; promote it anyway with "
            f"galaxy-pipeline models promote {name} {version} --force --store {store.uri}"
        )
    previous = current.version if current is not None else None
    production = Production(version=version, promoted_at=datetime.now(UTC), previous=previous)
    if not store.replace_if(key, production.model_dump_json(indent=2).encode(), tag):
        raise PromotionConflict(f"production.json of {name!r} changed during the promotion of {version!r}; retry")
    return production


def _production_card(store: Store, name: str, production: Production | None) -> ModelCard | None:
    """The card of the version in production, if there is one and it is still published."""
    if production is None:
        return None
    try:
        return read_card(store, name, production.version)
    except ModelNotFoundError:
        return None
