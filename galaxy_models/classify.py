"""Classifying survey batches: ``incoming/<batch_id>/`` images -> a catalog per model version.

Per part of a batch (a fixed slice of its image keys, see ``catalogs``): read the files from the
store with a pool of threads, check and centre-crop them exactly as ingest does (an image that fails
gets a row flagged ``unreadable`` with the reason, never silence), then run the model on batches
with the preprocessing its card records, through an inference engine (``engines``): bf16 autocast and
channels-last on a GPU; OpenVINO on a CPU (bf16 where the CPU has it), or eager fp32 PyTorch.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, Field, field_validator
from tqdm import tqdm

from galaxy_models.catalogs import (
    CATALOG_SCHEMA,
    PROBABILITY_COLUMNS,
    SHORT_LABELS,
    CatalogManifest,
    CatalogPart,
    CatalogPlan,
    commit_catalog,
    describe_part,
    fix_plan,
    part_key,
    read_catalog_manifest,
    write_part,
)
from galaxy_models.data import to_model_input
from galaxy_models.engines import Engine, EngineName, create_engine
from galaxy_models.images import ImageRejected, crop_image
from galaxy_models.labels import GALAXY_ID_PATTERN
from galaxy_models.model_store import ModelCard, check_name, load_model, model_prefix, read_card
from galaxy_models.storage import Store, open_store

INCOMING = "incoming"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class ClassifyConfig(BaseModel):
    """What to classify, with which model, and how."""

    store: str = Field("./galaxy-data", description="store with incoming/ and models/; catalogs/ is written there")
    model: str = Field("cs_resnet50", description="model name under models/, optionally NAME@VERSION")
    batches: list[str] | None = Field(None, description="batch ids; None: every batch without a complete catalog")
    batch_size: int = Field(64, ge=1, description="images per forward pass")
    part_size: int = Field(1000, ge=1, description="images per catalog part (and per inference task)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    engine: EngineName = Field("auto", description="auto: openvino on a CPU where installed, else torch")
    workers: int = Field(4, ge=1, description="threads reading and decoding images")
    low_confidence: float = Field(0.5, ge=0, le=1, description="flag rows whose top probability is below this")
    runner: Literal["default", "dask"] = Field("default", description="dask: parts run on a Dask cluster")
    dask_address: str | None = Field(None, description="scheduler address; None: a LocalCluster on this host")
    dask_workers: int = Field(2, ge=1, description="LocalCluster worker processes")

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        name, _, version = value.partition("@")
        check_name(name)
        if version:
            check_name(version, "model version")
        return value

    @field_validator("batches")
    @classmethod
    def _check_batches(cls, value: list[str] | None) -> list[str] | None:
        for batch in value or []:
            check_name(batch, "batch id")
        return value

    @property
    def model_name(self) -> str:
        return self.model.partition("@")[0]

    @property
    def model_version(self) -> str | None:
        return self.model.partition("@")[2] or None


def list_batches(store: Store) -> list[str]:
    return sorted({k.split("/")[1] for k in store.list(f"{INCOMING}/") if k.count("/") >= 2})


def batch_images(store: Store, batch_id: str) -> list[str]:
    prefix = f"{INCOMING}/{check_name(batch_id, 'batch id')}/"
    return [k for k in store.list(prefix) if k.lower().endswith(IMAGE_EXTENSIONS) and k.count("/") == 2]


def pending_batches(store: Store, model_version: str) -> list[str]:
    """Batches with images and no complete catalog for ``model_version``."""
    batches = [b for b in list_batches(store) if batch_images(store, b)]
    return [b for b in batches if read_catalog_manifest(store, b, model_version) is None]


def resolve_card(store: Store, config: ClassifyConfig) -> ModelCard:
    return read_card(store, config.model_name, config.model_version)


def device_for(config: ClassifyConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(config.device)


_ENGINE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _cached_engine(
    store_uri: str, name: str, version: str, device: str, engine: EngineName
) -> tuple[Engine, ModelCard]:
    """One compiled copy of a model per process (a Dask worker runs many parts); callers hold
    ``_ENGINE_LOCK`` so that threads classifying at once build it once."""
    model, card = load_model(open_store(store_uri), name, version)
    return create_engine(model, torch.device(device), card.preprocessing.input_size, engine), card


@dataclass
class _Decoded:
    key: str
    pixels: np.ndarray | None  # (H, W, 3) uint8
    reason: str | None


def _decode(store: Store, key: str, crop_size: int) -> _Decoded:
    name = key.rsplit("/", 1)[-1]
    galaxy_id = name.rsplit(".", 1)[0]
    if not GALAXY_ID_PATTERN.fullmatch(galaxy_id):
        return _Decoded(key, None, f"file name {name!r} is not a valid galaxy id")
    try:
        crop, _ = crop_image(store.read_bytes(key), name=name, crop_size=crop_size)
    except ImageRejected as err:
        return _Decoded(key, None, err.reason)
    return _Decoded(key, np.asarray(crop), None)


def _decoded_batches(
    store: Store, keys: Sequence[str], crop_size: int, batch_size: int, workers: int
) -> Iterator[list[_Decoded]]:
    """Images read and decoded by ``workers`` threads (Pillow releases the GIL), in key order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded = pool.map(functools.partial(_decode, store, crop_size=crop_size), keys)
        batch: list[_Decoded] = []
        for item in decoded:
            batch.append(item)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


def classify_images(
    store: Store,
    batch_id: str,
    keys: Sequence[str],
    engine: Engine,
    card: ModelCard,
    *,
    batch_size: int = 64,
    workers: int = 4,
    low_confidence: float = 0.5,
    progress: Callable[[int], object] | None = None,
) -> pa.Table:
    """Catalog rows for ``keys`` (one per key, in order)."""
    preprocessing = card.preprocessing
    rows: dict[str, list[object]] = {name: [] for name in ("source_key", "reason")}
    probabilities: list[np.ndarray] = []
    for batch in _decoded_batches(store, keys, preprocessing.crop_size, batch_size, workers):
        good = [d for d in batch if d.pixels is not None]
        p = np.full((len(batch), len(SHORT_LABELS)), np.nan, dtype=np.float32)
        if good:
            images = torch.from_numpy(np.stack([d.pixels for d in good])).permute(0, 3, 1, 2)  # type: ignore[misc]
            with torch.inference_mode():
                logits = engine(to_model_input(images, preprocessing, engine.device, engine.channels_last))
            p[[i for i, d in enumerate(batch) if d.pixels is not None]] = torch.softmax(logits, dim=1).numpy()
        probabilities.append(p)
        rows["source_key"] += [d.key for d in batch]
        rows["reason"] += [d.reason for d in batch]
        if progress:
            progress(len(batch))
    p_all = np.concatenate(probabilities) if probabilities else np.zeros((0, len(SHORT_LABELS)), np.float32)
    return _rows_table(batch_id, rows, p_all, card, low_confidence)


def _rows_table(
    batch_id: str, rows: dict[str, list[object]], p: np.ndarray, card: ModelCard, low_confidence: float
) -> pa.Table:
    readable = ~np.isnan(p).any(axis=1)
    predicted = np.where(readable, np.nan_to_num(p).argmax(axis=1), -1)
    confidence = np.where(readable, np.nan_to_num(p).max(axis=1), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = np.where(readable, -(np.where(p > 0, p * np.log(p), 0.0)).sum(axis=1), np.nan)
    flags = np.where(~readable, "unreadable", np.where(confidence < low_confidence, "low_confidence", "ok"))
    now = datetime.now(UTC)
    keys = [str(k) for k in rows["source_key"]]
    columns: dict[str, object] = {
        "galaxy_id": [k.rsplit("/", 1)[-1].rsplit(".", 1)[0] for k in keys],
        "batch_id": [batch_id] * len(keys),
        "source_key": keys,
        "predicted_class": pa.array(predicted, mask=~readable, type=pa.int8()),
        "predicted_label": pa.array(
            [SHORT_LABELS[c] if ok else None for c, ok in zip(predicted, readable, strict=True)], type=pa.string()
        ),
        **{name: pa.array(p[:, k], mask=~readable, type=pa.float32()) for k, name in enumerate(PROBABILITY_COLUMNS)},
        "confidence": pa.array(confidence, mask=~readable, type=pa.float32()),
        "entropy": pa.array(entropy, mask=~readable, type=pa.float32()),
        "flag": flags.tolist(),
        "reason": rows["reason"],
        "model_name": [card.name] * len(keys),
        "model_version": [card.version] * len(keys),
        "processed_at": pa.array([now] * len(keys), type=pa.timestamp("us", tz="UTC")),
    }
    return pa.table(columns, schema=CATALOG_SCHEMA)


def classify_part(config: ClassifyConfig, plan: CatalogPlan, index: int, *, progress: bool = False) -> CatalogPart:
    """Write part ``index`` of a batch's catalog unless it exists. Loads the model once per process."""
    store = open_store(config.store)
    key = part_key(plan.batch_id, plan.model_version, index)
    if store.exists(key):  # an earlier run wrote it: parts are written once
        return describe_part(store, key)
    keys = plan.parts()[index]
    device = device_for(config)
    with _ENGINE_LOCK:
        engine, card = _cached_engine(store.uri, plan.model_name, plan.model_version, str(device), config.engine)
    with tqdm(total=len(keys), desc=f"{plan.batch_id} part {index}", unit="img", disable=not progress) as bar:
        table = classify_images(
            store, plan.batch_id, keys, engine, card, batch_size=config.batch_size,
            workers=config.workers, low_confidence=config.low_confidence, progress=bar.update,
        )  # fmt: skip
    return write_part(store, key, table)


def plan_batch(store: Store, config: ClassifyConfig, card: ModelCard, batch_id: str) -> CatalogPlan:
    keys = batch_images(store, batch_id)
    if not keys:
        raise ValueError(f"batch {batch_id!r} has no images under {store.url(f'{INCOMING}/{batch_id}/')}")
    plan = CatalogPlan(
        batch_id=batch_id, model_name=card.name, model_version=card.version, source_keys=keys,
        part_size=config.part_size,
    )  # fmt: skip
    return fix_plan(store, plan)


def commit(store: Store, plan: CatalogPlan, parts: Sequence[CatalogPart]) -> tuple[CatalogManifest, bool]:
    card_uri = store.url(f"{model_prefix(plan.model_name, plan.model_version)}/card.json")
    return commit_catalog(store, plan, parts, card_uri, datetime.now(UTC))


def classify_batch(config: ClassifyConfig, batch_id: str, *, progress: bool = True) -> tuple[CatalogManifest, bool]:
    """Classify one batch into its catalog (no Prefect): returns the manifest and whether this call
    committed it (False: an earlier or concurrent run did)."""
    store = open_store(config.store)
    card = resolve_card(store, config)
    existing = read_catalog_manifest(store, batch_id, card.version)
    if existing is not None:
        return existing, False
    plan = plan_batch(store, config, card, batch_id)
    parts = [classify_part(config, plan, i, progress=progress) for i in range(len(plan.parts()))]
    return commit(store, plan, parts)
