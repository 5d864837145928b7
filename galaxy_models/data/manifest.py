"""The manifest of a dataset version: what its shards hold, and the only thing readers trust.

Layout: ``datasets/<name>/<version>/{split}-{000000..}.tar`` and ``manifest.json``, written last. A
version without a manifest is incomplete (a run was interrupted) and readers never open it. Each
sample is keyed by its GalaxyID (dot-free by validation) and holds ``jpg`` (the stored crop), ``cls``
(the Table I class) and ``json`` (vote fractions, source key, source colour mode).

The manifest is sealed: its ``seal`` is a digest of everything else in it, checked on every read,
so an edit of its normalisation, totals or shard list stops readers instead of training on it.
Without a key the digest is SHA-256, which catches any edit that does not also recompute the seal;
runs and model cards record the seal, and a run id covers it, so a re-sealed manifest is never
mistaken for the one a model was trained on. With ``GALAXY_MANIFEST_KEY`` set (from a secret
store, never the object store) the seal is an HMAC-SHA256 that nobody without the key can forge.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from galaxy_models.storage import KeyNotFoundError, Store

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: sealed
SEAL_KEY_ENV = "GALAXY_MANIFEST_KEY"


class ManifestSealError(ValueError):
    """A manifest whose content does not match its seal (edited after ingest), or that cannot be checked."""


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
    pseudo_labelled: int = 0  # of ``sharded``: images in the training split labelled by a model's catalog

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
    survey: Literal["real", "synthetic"] = Field("real", description="the kind of survey the images came from")
    pseudo_labels_sha256: str | None = Field(None, description="sha256 of the pseudo-label catalog, if one was used")
    seal: str = Field("", description="'sha256:<hex>' or 'hmac-sha256:<hex>' of every other field")

    def sealed(self) -> DatasetManifest:
        """This manifest with its seal computed (the key, if any, from ``GALAXY_MANIFEST_KEY``)."""
        return self.model_copy(update={"seal": compute_seal(self)})

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


def compute_seal(manifest: DatasetManifest) -> str:
    """The digest of the manifest's content (every field but the seal), canonical JSON. Fields at
    their default are left out, so a field added later with a default keeps older seals valid (an
    edit away from a default, or to one, still changes the digest)."""
    content = manifest.model_dump(mode="json", exclude={"seal"}, exclude_defaults=True)
    body = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    key = os.environ.get(SEAL_KEY_ENV)
    if key:
        return "hmac-sha256:" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def check_seal(manifest: DatasetManifest, where: str) -> DatasetManifest:
    """``manifest`` if its seal matches its content, else ``ManifestSealError`` naming ``where``."""
    scheme = manifest.seal.partition(":")[0]
    keyed = bool(os.environ.get(SEAL_KEY_ENV))
    if scheme not in ("sha256", "hmac-sha256"):
        raise ManifestSealError(
            f"manifest {where} has no seal: it was written by an older galaxy-pipeline or edited; "
            "remove that version's folder and re-run ingest"
        )
    if scheme == "hmac-sha256" and not keyed:
        raise ManifestSealError(f"manifest {where} is sealed with a key: set {SEAL_KEY_ENV} to read it")
    if scheme == "sha256" and keyed:
        raise ManifestSealError(
            f"manifest {where} is sealed without a key but {SEAL_KEY_ENV} is set: only keyed seals are "
            "trusted then (re-run ingest with the key, or unset it to read unkeyed datasets)"
        )
    expected = compute_seal(manifest)
    if not hmac.compare_digest(manifest.seal, expected):
        raise ManifestSealError(
            f"manifest {where} was changed after ingest: its content does not match its seal "
            f"({manifest.seal[:20]}..., content gives {expected[:20]}...); remove that version's folder and "
            "re-run ingest to rebuild it"
        )
    return manifest


def parse_manifest(data: bytes, key: str, name: str, version: str) -> DatasetManifest:
    """A manifest read from ``key``, checked: valid JSON of the schema, sealed, and describing the
    dataset version whose folder holds it (a manifest copied into another version is refused)."""
    try:
        manifest = DatasetManifest.model_validate_json(data)
    except ValueError as err:
        raise ManifestSealError(f"manifest {key} is not a valid dataset manifest: {err}") from err
    check_seal(manifest, key)
    if (manifest.name, manifest.version) != (name, version):
        raise ManifestSealError(
            f"manifest {key} describes dataset {manifest.name}/{manifest.version}, not {name}/{version}"
        )
    return manifest


def read_manifest(store: Store, name: str, version: str | None = None) -> DatasetManifest:
    """The manifest of a complete dataset version (the newest complete one if ``version`` is None),
    its seal checked.

    Raises:
        KeyNotFoundError: if there is no such complete version.
        ManifestSealError: if the manifest was edited after ingest (or is unsealed).
    """
    if version is None:
        keys = [k.split("/") for k in store.list(f"datasets/{name}/")]
        complete = [parts[2] for parts in keys if len(parts) == 4 and parts[3] == MANIFEST]
        if not complete:
            raise KeyNotFoundError(f"no complete version of dataset {name!r} in {store.uri}")
        manifests = [read_manifest(store, name, v) for v in complete]
        return max(manifests, key=lambda m: m.created_at)
    key = f"{dataset_prefix(name, version)}/{MANIFEST}"
    try:
        return parse_manifest(store.read_bytes(key), store.url(key), name, version)
    except KeyNotFoundError:
        raise KeyNotFoundError(
            f"dataset {name}/{version} in {store.uri} has no manifest: it does not exist or its ingest did not finish"
        ) from None
