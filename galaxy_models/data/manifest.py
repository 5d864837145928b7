"""The manifest of a dataset version: what its shards hold, and the only thing readers trust.

Layout: ``datasets/<name>/<version>/{split}-{000000..}.tar`` and ``manifest.json``, written last. A
version without a manifest is incomplete (a run was interrupted) and readers never open it. Each
sample is keyed by its GalaxyID (dot-free by validation) and holds ``jpg`` (the stored crop), ``cls``
(the Table I class) and ``json`` (vote fractions, source key, source colour mode).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from galaxy_models.storage import KeyNotFoundError, Store

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class ShardInfo(BaseModel):
    key: str = Field(description="object key relative to the store root")
    split: str
    samples: int
    classes: dict[str, int]
    sha256: str
    size_bytes: int
    sample_keys: list[str] = Field(description="sample keys (GalaxyIDs) in shard order")


class QuarantineEntry(BaseModel):
    source_key: str
    galaxy_id: str | None
    reason: str


class IngestCounts(BaseModel):
    """Every listed image ends up in exactly one of the four outcome counts."""

    images_listed: int
    sharded: int
    quarantined: int
    without_label: int
    without_class: int
    labels_without_image: int
    converted_to_rgb: int

    @property
    def adds_up(self) -> bool:
        return self.images_listed == self.sharded + self.quarantined + self.without_label + self.without_class


class Normalization(BaseModel):
    """Per-channel statistics of the training split's stored crops, in [0, 1] units."""

    mean: list[float]
    std: list[float]


class DatasetManifest(BaseModel):
    format: int = FORMAT_VERSION
    name: str
    version: str
    created_at: datetime
    images_uri: str
    labels_uri: str
    labels_sha256: str
    config: dict[str, Any]
    class_names: list[str]
    crop_size: int
    normalization: Normalization
    shards: list[ShardInfo]
    totals: dict[str, dict[str, int]] = Field(description="samples per split and class")
    counts: IngestCounts
    quarantine: list[QuarantineEntry]

    @property
    def prefix(self) -> str:
        return dataset_prefix(self.name, self.version)

    def split_shards(self, split: str) -> list[ShardInfo]:
        if split not in self.totals:
            raise ValueError(f"dataset {self.name}/{self.version} has no split {split!r}; it has {sorted(self.totals)}")
        return [s for s in self.shards if s.split == split]

    def split_size(self, split: str) -> int:
        return sum(s.samples for s in self.split_shards(split))


def dataset_prefix(name: str, version: str) -> str:
    return f"datasets/{name}/{version}"


def read_manifest(store: Store, name: str, version: str | None = None) -> DatasetManifest:
    """The manifest of a complete dataset version (the newest complete one if ``version`` is None)."""
    if version is None:
        complete = [k for k in store.list(f"datasets/{name}/") if k.endswith(f"/{MANIFEST}")]
        if not complete:
            raise KeyNotFoundError(f"no complete version of dataset {name!r} in {store.uri}")
        manifests = [DatasetManifest.model_validate_json(store.read_bytes(k)) for k in complete]
        return max(manifests, key=lambda m: m.created_at)
    try:
        return DatasetManifest.model_validate_json(store.read_bytes(f"{dataset_prefix(name, version)}/{MANIFEST}"))
    except KeyNotFoundError:
        raise KeyNotFoundError(
            f"dataset {name}/{version} in {store.uri} has no manifest: it does not exist or its ingest did not finish"
        ) from None
