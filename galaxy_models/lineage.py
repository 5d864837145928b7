"""Where images come from: a real sky survey or a synthetic one, and the warning when a model
trained on one kind classifies the other.

A synthetic survey says so in a ``survey.json`` beside what it writes: ``raw/<survey>/survey.json``
next to its vote table, and ``incoming/<batch_id>/survey.json`` in each batch folder. Anything
without one is a real survey, as images from a telescope arrive without such a file. Ingest records
the kind in the dataset manifest, training carries it into the model card, and classify compares the
card's kind with the batch's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from galaxy_models.storage import KeyNotFoundError, Store

SurveyKind = Literal["real", "synthetic"]
SURVEY_FILE = "survey.json"
MAX_SURVEY_FILE_BYTES = 1 << 16


class SurveyProvenance(BaseModel):
    """What ``survey.json`` says about the images beside it."""

    kind: SurveyKind
    generator: str | None = Field(None, description="what made a synthetic survey, e.g. galaxy-pipeline synth")
    seed: int | None = None


def survey_kind(store: Store, folder: str) -> SurveyKind:
    """The kind of the images in ``folder`` of ``store`` (a key prefix, no trailing slash): what its
    ``survey.json`` says, else real.

    Raises:
        ValueError: if there is a ``survey.json`` that is not a valid provenance record, naming it.
    """
    key = f"{folder}/{SURVEY_FILE}" if folder else SURVEY_FILE
    try:
        data = store.read_bytes(key, max_bytes=MAX_SURVEY_FILE_BYTES)
    except KeyNotFoundError:
        return "real"
    try:
        return SurveyProvenance.model_validate_json(data).kind
    except ValueError as err:
        raise ValueError(f"{store.url(key)} is not a valid survey provenance record: {err}") from err


def lineage_warning(model: str, trained_on: str | None, batch: str, batch_kind: SurveyKind) -> str | None:
    """A warning when ``model``, trained on a ``trained_on`` survey, classifies a batch of the other
    kind; None when the kinds agree or the card predates lineage (``trained_on`` None)."""
    if trained_on is None or trained_on == batch_kind:
        return None
    return (
        f"model {model} was trained on a {trained_on} survey but batch {batch} is {batch_kind}: "
        "its classes and probabilities may not carry over"
    )
