"""A batch's catalog: one row per survey image, in Parquet parts under ``catalogs/<batch_id>/<model_version>/``.

    _plan.json          the batch's image keys and how they are dealt into parts; first writer wins
    part-00000.parquet  rows of part 0; each part is written once (conditional create)
    _manifest.json      written last, conditionally: rows, parts with their sha256, the model card

A batch's catalog covers the images the batch held when its plan was written. An image added later
is not in it (``incoming.late_arrivals`` lists them: put them in a new batch to classify them); a
planned image that has gone when its part is read gets a row flagged ``missing``.

Everything that decides a part's rows is fixed by the plan, every part is created at most once,
and the manifest is committed with ``create_if_absent``: a killed run leaves parts that the next
run keeps and completes, two concurrent runs leave exactly one complete catalog, and readers trust
only the manifest.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from galaxy_models.catalogs.drift import BatchDrift
from galaxy_models.catalogs.objects import ObjectsReport
from galaxy_models.catalogs.schema import CATALOG_SCHEMA
from galaxy_models.domain import LOW_CONFIDENCE
from galaxy_models.storage import KeyNotFoundError, Store


class CatalogPlan(BaseModel):
    batch_id: str
    model_name: str
    model_version: str
    source_keys: list[str]
    part_size: int
    tta: bool = False  # test-time augmentation: decides the rows, so fixed here (older plans: off)
    low_confidence: float = LOW_CONFIDENCE  # rows below this top probability are flagged low_confidence
    embeddings: bool = False  # whether rows carry the model's PCA embedding (inference.embeddings)
    objects_sha256: str | None = None  # the batch's sidecar table (catalogs.objects) that every part joins

    def parts(self) -> list[list[str]]:
        keys = self.source_keys
        return [keys[i : i + self.part_size] for i in range(0, len(keys), self.part_size)]


class CatalogPart(BaseModel):
    key: str
    rows: int
    sha256: str


class CatalogManifest(BaseModel):
    batch_id: str
    model_name: str
    model_version: str
    model_card: str
    rows: int
    parts: list[CatalogPart]
    flags: dict[str, int]
    classes: dict[str, int]
    tta: bool = False  # whether the probabilities average the 8 dihedral views
    warnings: list[str] = []  # e.g. lineage: a model trained on a synthetic survey classifying a real one
    low_confidence: float = LOW_CONFIDENCE
    embeddings: bool = False
    objects: ObjectsReport | None = None  # the sidecar that was joined, and its rejected rows
    drift: BatchDrift | None = None  # class shares and confidence against the training data (catalogs.drift)
    created_at: datetime


def catalog_prefix(batch_id: str, model_version: str) -> str:
    return f"catalogs/{batch_id}/{model_version}"


def part_key(batch_id: str, model_version: str, index: int) -> str:
    return f"{catalog_prefix(batch_id, model_version)}/part-{index:05d}.parquet"


def read_catalog_manifest(store: Store, batch_id: str, model_version: str) -> CatalogManifest | None:
    try:
        data = store.read_bytes(f"{catalog_prefix(batch_id, model_version)}/_manifest.json")
    except KeyNotFoundError:
        return None
    return CatalogManifest.model_validate_json(data)


def _plan_key(batch_id: str, model_version: str) -> str:
    return f"{catalog_prefix(batch_id, model_version)}/_plan.json"


def fix_plan(store: Store, plan: CatalogPlan) -> CatalogPlan:
    """Write the plan if there is none; return the plan in force (an earlier run's, if any)."""
    key = _plan_key(plan.batch_id, plan.model_version)
    if store.create_if_absent(key, plan.model_dump_json().encode()):
        return plan
    return CatalogPlan.model_validate_json(store.read_bytes(key))


def read_plan(store: Store, batch_id: str, model_version: str) -> CatalogPlan | None:
    """The batch's plan for a model version, if a run has written one."""
    try:
        return CatalogPlan.model_validate_json(store.read_bytes(_plan_key(batch_id, model_version)))
    except KeyNotFoundError:
        return None


def table_to_parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table.cast(CATALOG_SCHEMA), buffer, compression="zstd")
    return buffer.getvalue()


def write_part(store: Store, key: str, table: pa.Table) -> CatalogPart:
    """Create the part unless it exists; describe the part that is stored (ours or an earlier one)."""
    data = table_to_parquet(table)
    if not store.create_if_absent(key, data):
        return describe_part(store, key)
    return _describe(key, data)


def describe_part(store: Store, key: str) -> CatalogPart:
    return _describe(key, store.read_bytes(key))


def _describe(key: str, data: bytes) -> CatalogPart:
    return CatalogPart(key=key, rows=pq.read_metadata(io.BytesIO(data)).num_rows, sha256=_sha256(data))


def read_part(store: Store, key: str) -> pa.Table:
    return pq.read_table(io.BytesIO(store.read_bytes(key)), schema=CATALOG_SCHEMA)


def commit_catalog(
    store: Store,
    plan: CatalogPlan,
    parts: Sequence[CatalogPart],
    model_card: str,
    created_at: datetime,
    warnings: Sequence[str] = (),
    *,
    objects: ObjectsReport | None = None,
    assess_drift: Callable[[pa.Table], BatchDrift] | None = None,
) -> tuple[CatalogManifest, bool]:
    """Check the parts add up to the plan, then write the manifest if no run has. Returns the
    manifest in force and whether this call wrote it. ``objects`` (the sidecar's report) goes into
    the manifest; ``assess_drift`` turns the batch's rows into its drift record, and a drifted batch
    gets a warning.

    Raises:
        ValueError: if the parts do not hold exactly one row per planned image.
    """
    tables = [read_part(store, p.key) for p in parts]
    table = pa.concat_tables(tables) if tables else CATALOG_SCHEMA.empty_table()
    keys = table.column("source_key").to_pylist()
    if sorted(keys) != sorted(plan.source_keys) or len(set(keys)) != len(keys):
        raise ValueError(
            f"catalog {plan.batch_id}/{plan.model_version}: parts hold {len(keys)} rows for "
            f"{len(plan.source_keys)} planned images"
        )
    drift = assess_drift(table) if assess_drift is not None else None
    if drift is not None and drift.drifted:
        warnings = [*warnings, f"batch {plan.batch_id} drifts from the training data: {'; '.join(drift.reasons)}"]
    if objects is not None and objects.problems:
        warnings = [*warnings, f"{objects.source}: {objects.problems} row(s) rejected (manifest: objects)"]
    manifest = CatalogManifest(
        batch_id=plan.batch_id,
        model_name=plan.model_name,
        model_version=plan.model_version,
        model_card=model_card,
        rows=len(keys),
        parts=list(parts),
        flags=_counts(table.column("flag").to_pylist()),
        classes=_counts([str(c) for c in table.column("predicted_class").to_pylist() if c is not None]),
        tta=plan.tta,
        warnings=list(warnings),
        low_confidence=plan.low_confidence,
        embeddings=plan.embeddings,
        objects=objects,
        drift=drift,
        created_at=created_at,
    )
    key = f"{catalog_prefix(plan.batch_id, plan.model_version)}/_manifest.json"
    if store.create_if_absent(key, manifest.model_dump_json(indent=2).encode()):
        return manifest, True
    existing = read_catalog_manifest(store, plan.batch_id, plan.model_version)
    if existing is None:  # pragma: no cover - create_if_absent said it exists
        raise KeyNotFoundError(f"{key} vanished during the commit")
    return existing, False


def read_catalog(store: Store, manifest: CatalogManifest) -> pa.Table:
    """All rows of a committed catalog, checked against the manifest's sha256."""
    tables = []
    for part in manifest.parts:
        data = store.read_bytes(part.key)
        if _sha256(data) != part.sha256:
            raise ValueError(f"catalog part {store.url(part.key)} does not match its manifest (sha256)")
        tables.append(pq.read_table(io.BytesIO(data), schema=CATALOG_SCHEMA))
    return pa.concat_tables(tables) if tables else CATALOG_SCHEMA.empty_table()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _counts(values: Sequence[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return dict(sorted(counts.items()))
