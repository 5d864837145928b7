"""Survey batches waiting for classification: ``incoming/<batch_id>/<GalaxyID>.jpg``.

A batch is a folder directly under ``incoming/`` whose name is a valid ID; its images are the
``.jpg``, ``.jpeg`` and ``.png`` files directly inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from galaxy_models.catalogs.manifest import read_catalog_manifest, read_plan
from galaxy_models.domain import NAME_RULE, check_name, is_name
from galaxy_models.storage import KeyNotFoundError, Store

INCOMING = "incoming"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class BatchNotFoundError(KeyNotFoundError):
    """No such batch under incoming/, or one without images."""


class GalaxyNotFoundError(KeyNotFoundError):
    """A galaxy ID that the catalogs (or incoming batches) asked about do not hold."""


@dataclass(frozen=True)
class SkippedBatch:
    """A folder under incoming/ that is not a batch, and why."""

    folder: str
    reason: str


def scan_batches(store: Store) -> tuple[list[str], list[SkippedBatch]]:
    """The batches under incoming/, and the folders skipped because their name is not a valid batch
    id (one odd folder must not stop every batch)."""
    folders = sorted({k.split("/")[1] for k in store.list(f"{INCOMING}/") if k.count("/") >= 2})
    skipped = [
        SkippedBatch(folder, f"folder name {folder!r} is not a valid batch id (use {NAME_RULE})")
        for folder in folders
        if not is_name(folder)
    ]
    return [f for f in folders if is_name(f)], skipped


def list_batches(store: Store) -> list[str]:
    """The valid batch ids under incoming/ (see ``scan_batches`` for the folders left out)."""
    return scan_batches(store)[0]


def batch_images(store: Store, batch_id: str) -> list[str]:
    """The image keys of a batch, sorted; empty if the batch has none (or does not exist)."""
    prefix = f"{INCOMING}/{check_name(batch_id, 'batch id')}/"
    return [k for k in store.list(prefix) if k.lower().endswith(IMAGE_EXTENSIONS) and k.count("/") == 2]


def require_images(store: Store, batch_id: str) -> list[str]:
    """``batch_images``, or ``BatchNotFoundError`` saying whether the batch is missing or has no images."""
    keys = batch_images(store, batch_id)
    if keys:
        return keys
    folder = store.url(f"{INCOMING}/{batch_id}")
    if not store.list(f"{INCOMING}/{batch_id}/"):
        known = ", ".join(list_batches(store)) or "none"
        raise BatchNotFoundError(f"batch {batch_id!r} does not exist: no folder {folder}/ (batches: {known})")
    raise BatchNotFoundError(
        f"batch {batch_id!r} has no images: {folder}/ holds no {', '.join(IMAGE_EXTENSIONS)} files"
    )


def pending_batches(store: Store, model_version: str) -> list[str]:
    """Batches with images and no complete catalog for ``model_version`` (invalid folders left out)."""
    batches = [b for b in list_batches(store) if batch_images(store, b)]
    return [b for b in batches if read_catalog_manifest(store, b, model_version) is None]


def late_arrivals(store: Store, batch_id: str, model_version: str) -> list[str]:
    """Images of the batch that are not in its catalog for ``model_version``: they arrived after the
    catalog was planned (none if no run has planned it yet). A catalog never grows once planned."""
    plan = read_plan(store, batch_id, model_version)
    if plan is None:
        return []
    planned = set(plan.source_keys)
    return [k for k in batch_images(store, batch_id) if k not in planned]
