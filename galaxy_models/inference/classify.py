"""Classifying survey batches: ``incoming/<batch_id>/`` images -> a catalog per model version.

Per part of a batch (a fixed slice of its image keys, see ``catalogs.manifest``): read the files from
the store with a pool of threads, check and centre-crop them exactly as ingest does (an image that
fails gets a row flagged ``unreadable`` with the reason, never silence; one that has gone since the
batch was planned, a row flagged ``missing``; ``decoding``: on a GPU, JPEGs are decoded there in
batches), then run the model on batches with the preprocessing its card records, through an
inference engine (``engines``): bf16 autocast and channels-last on a GPU; OpenVINO on a CPU (bf16 where
the CPU has it), or eager fp32.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from galaxy_models.catalogs.drift import BatchDrift, batch_drift, drift_reference
from galaxy_models.catalogs.incoming import (
    INCOMING,
    SkippedBatch,
    late_arrivals,
    pending_batches,
    require_images,
    scan_batches,
)
from galaxy_models.catalogs.manifest import (
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
from galaxy_models.catalogs.objects import BatchObjects, ObjectsError, objects_sha256, read_objects
from galaxy_models.catalogs.schema import EMBEDDING_SIZE, PROBABILITY_COLUMNS, catalog_rows
from galaxy_models.data.images import DEFAULT_MAX_IMAGE_BYTES
from galaxy_models.domain import galaxy_id_from_key
from galaxy_models.inference.config import ClassifyConfig, DecodeName, EngineName
from galaxy_models.inference.decoding import GONE as GONE  # re-exported: its rows' reason
from galaxy_models.inference.decoding import Decoded, decode_device, decoded_batches, stack_crops
from galaxy_models.inference.embeddings import Projection, WithFeatures, load_projection
from galaxy_models.inference.engines import Engine, engine_for
from galaxy_models.inference.precision import PrecisionChoice, choose_precision, serving_engine
from galaxy_models.inference.probabilities import DIHEDRAL_VIEWS, card_temperature, class_probabilities
from galaxy_models.lineage import lineage_warning, survey_kind
from galaxy_models.models.preprocessing import to_model_input
from galaxy_models.progress import progress_counter
from galaxy_models.registry.cards import ModelCard, model_prefix, read_card, resolve
from galaxy_models.registry.weights import load_model
from galaxy_models.steps import IN_PROCESS, Steps
from galaxy_models.storage import Store, open_store


def resolve_card(store: Store, config: ClassifyConfig) -> ModelCard:
    return resolve(store, config.ref)


def device_for(config: ClassifyConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(config.device)


_ENGINE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _cached_engine(
    store_uri: str, name: str, version: str, device: str, engine: EngineName, precision: str, embeddings: bool
) -> tuple[Engine, ModelCard]:
    """One compiled copy of a model per process and precision (a Dask worker runs many parts); callers
    hold ``_ENGINE_LOCK`` so that threads classifying at once build it once. ``precision``: fp32, bf16 or
    int8, as ``choose_serving_precision`` decided. With ``embeddings`` the engine returns the logits
    followed by the pooled features (``embeddings.WithFeatures``). No argument has a default: lru_cache
    keys on the arguments as passed, so a call leaving one out would build a second engine."""
    store = open_store(store_uri)
    model, card = load_model(store, name, version)
    network = WithFeatures(model) if embeddings else model
    outputs = len(card.class_names) + (int(getattr(model, "num_features", 0)) if embeddings else 0)
    on = torch.device(device)
    return serving_engine(store, card, network, on, engine_for(on, engine), precision, outputs=outputs), card


def choose_serving_precision(config: ClassifyConfig, card: ModelCard) -> PrecisionChoice:
    """The precision the parts of this run serve ``card``'s model in (``inference.precision``): ``auto``
    checks the faster ones against fp32 once per model and records the checks in its card."""
    store = open_store(config.store)
    device = device_for(config)

    def build(precision: str) -> Engine:
        with _ENGINE_LOCK:
            return _cached_engine(store.uri, card.name, card.version, str(device), config.engine, precision, False)[0]

    def network() -> torch.nn.Module:
        return load_model(store, card.name, card.version)[0]

    return choose_precision(store, card, network, device, config.engine, config.precision, build)


@functools.lru_cache(maxsize=4)
def _cached_projection(store_uri: str, name: str, version: str) -> Projection:
    store = open_store(store_uri)
    return load_projection(store, read_card(store, name, version))


def _logits_keeping_features(
    engine: Engine, classes: int, features: list[torch.Tensor], inputs: torch.Tensor
) -> torch.Tensor:
    """The logits of a ``WithFeatures`` engine's output; its pooled features are appended to ``features``."""
    out = engine(inputs)
    features.append(out[:, classes:])
    return out[:, :classes]


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
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    tta: bool = False,
    progress: Callable[[int], object] | None = None,
    objects: BatchObjects | None = None,
    projection: Projection | None = None,
    decode: DecodeName = "auto",
) -> pa.Table:
    """Catalog rows for ``keys`` (one per key, in order). Probabilities are softmax(logits / T) with the
    card's temperature; with ``tta``, averaged over the 8 dihedral views (``probabilities``).
    ``objects``: the batch's sidecar, joined on galaxy id. ``projection``: the engine returns logits
    and pooled features (``WithFeatures``), and each row gets its projected embedding (with ``tta``,
    of the features averaged over the views). ``decode``: which decoder reads the images (``decoding``)."""
    source_keys: list[str] = []
    reasons: list[str | None] = []
    missing: list[bool] = []
    probabilities: list[np.ndarray] = []
    embeddings: list[np.ndarray] = []
    crop_size = card.preprocessing.crop_size
    device = decode_device(decode, engine.device)
    for batch in decoded_batches(store, keys, crop_size, batch_size, workers, max_image_bytes, device):
        p, e = _infer(engine, card, batch, tta, projection)
        probabilities.append(p)
        embeddings.append(e)
        source_keys += [d.key for d in batch]
        reasons += [d.reason for d in batch]
        missing += [d.missing for d in batch]
        if progress:
            progress(len(batch))
    p_all = np.concatenate(probabilities) if probabilities else np.zeros((0, len(PROBABILITY_COLUMNS)), np.float32)
    e_all = np.concatenate(embeddings) if embeddings else np.zeros((0, EMBEDDING_SIZE), np.float32)
    return catalog_rows(
        batch_id, source_keys, reasons, p_all,
        model_name=card.name, model_version=card.version, low_confidence=low_confidence, missing=missing,
        objects=objects.table if objects is not None else None,
        embeddings=e_all if projection is not None else None,
    )  # fmt: skip


def _infer(
    engine: Engine, card: ModelCard, batch: list[Decoded], tta: bool, projection: Projection | None
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, embeddings) of a decoded batch, NaN rows where an image has no pixels."""
    classes = len(PROBABILITY_COLUMNS)
    p = np.full((len(batch), classes), np.nan, dtype=np.float32)
    e = np.full((len(batch), EMBEDDING_SIZE), np.nan, dtype=np.float32)
    crops = [(i, d.pixels) for i, d in enumerate(batch) if d.pixels is not None]
    if not crops:
        return p, e
    rows = [i for i, _ in crops]
    images = stack_crops([c for _, c in crops], engine.device)
    features: list[torch.Tensor] = []
    forward = functools.partial(_logits_keeping_features, engine, classes, features) if projection else engine
    with torch.inference_mode():
        inputs = to_model_input(images, card.preprocessing, engine.device, engine.channels_last)
        p[rows] = class_probabilities(
            forward, inputs, temperature=card_temperature(card), tta=tta, channels_last=engine.channels_last
        ).numpy()
    if projection is not None:
        pooled = features[0].view(DIHEDRAL_VIEWS if tta else 1, len(rows), -1).mean(dim=0)
        e[rows] = projection.transform(pooled.numpy())
    return p, e


def classify_part(config: ClassifyConfig, plan: CatalogPlan, index: int, progress: bool = True) -> CatalogPart:
    """Write part ``index`` of a batch's catalog unless it exists. Loads the model once per process."""
    store = open_store(config.store)
    key = part_key(plan.batch_id, plan.model_version, index)
    if store.exists(key):  # an earlier run wrote it: parts are written once
        return describe_part(store, key)
    keys = plan.parts()[index]
    device = device_for(config)
    if config.precision == "auto":  # called on its own, not by classify_batch (which chooses once)
        chosen = choose_serving_precision(config, read_card(store, plan.model_name, plan.model_version))
        config = config.model_copy(update={"precision": chosen.precision})
    with _ENGINE_LOCK:
        engine, card = _cached_engine(
            store.uri,
            plan.model_name,
            plan.model_version,
            str(device),
            config.engine,
            config.precision,
            plan.embeddings,
        )
        projection = _cached_projection(store.uri, plan.model_name, plan.model_version) if plan.embeddings else None
    objects = plan_objects(store, plan)
    with progress_counter(total=len(keys), desc=f"{plan.batch_id} part {index}", unit="img", enabled=progress) as bar:
        table = classify_images(
            store, plan.batch_id, keys, engine, card, batch_size=config.batch_size,
            workers=config.workers, low_confidence=plan.low_confidence, max_image_bytes=config.max_image_bytes,
            tta=plan.tta, progress=bar.update, objects=objects, projection=projection, decode=config.decode,
        )  # fmt: skip
    return write_part(store, key, table)


def plan_batch(store: Store, config: ClassifyConfig, card: ModelCard, batch_id: str) -> CatalogPlan:
    """The batch's plan in force: its image keys dealt into parts (an earlier run's plan, if any).

    Raises:
        BatchNotFoundError: if the batch does not exist or has no images.
    """
    plan = CatalogPlan(
        batch_id=batch_id, model_name=card.name, model_version=card.version,
        source_keys=require_images(store, batch_id), part_size=config.part_size, tta=config.tta,
        low_confidence=config.low_confidence, embeddings=config.embeddings,
        objects_sha256=objects_sha256(store, batch_id),
    )  # fmt: skip
    return fix_plan(store, plan)


def plan_objects(store: Store, plan: CatalogPlan) -> BatchObjects | None:
    """The sidecar table the plan fixed (``catalogs.objects``), checked against the planned images."""
    if plan.objects_sha256 is None:
        return None
    ids = [galaxy_id_from_key(k) for k in plan.source_keys]
    return read_objects(store, plan.batch_id, ids, expected_sha256=plan.objects_sha256)


def commit(
    store: Store, config: ClassifyConfig, plan: CatalogPlan, parts: Sequence[CatalogPart], warnings: Sequence[str] = ()
) -> tuple[CatalogManifest, bool]:
    """Write the batch's manifest: its parts, the sidecar's report and the batch's drift (``catalogs.drift``)."""
    card = read_card(store, plan.model_name, plan.model_version)
    reference = drift_reference(store, card)
    objects = plan_objects(store, plan)

    def assess(table: pa.Table) -> BatchDrift:
        return batch_drift(
            table, reference, js_threshold=config.drift_threshold, confidence_threshold=config.confidence_drop
        )

    card_uri = store.url(f"{model_prefix(plan.model_name, plan.model_version)}/card.json")
    return commit_catalog(
        store, plan, parts, card_uri, datetime.now(UTC), warnings,
        objects=objects.report if objects is not None else None, assess_drift=assess,
    )  # fmt: skip


def batch_warnings(store: Store, card: ModelCard, batch_id: str) -> list[str]:
    """What the catalog of ``batch_id`` must say about how far to trust it: a model trained on a
    survey of the other kind (real or synthetic, ``lineage``)."""
    kind = survey_kind(store, f"{INCOMING}/{batch_id}")
    warning = lineage_warning(f"{card.name}/{card.version}", card.dataset.get("survey"), batch_id, kind)
    return [warning] if warning else []


@dataclass(frozen=True)
class BatchResult:
    manifest: CatalogManifest
    committed: bool  # False: an earlier or concurrent run had committed it


@dataclass(frozen=True)
class ClassifyReport:
    card: ModelCard
    batches: list[BatchResult]
    skipped: list[SkippedBatch] = field(default_factory=list)  # folders not classified (not batches, bad sidecar)
    late: dict[str, list[str]] = field(default_factory=dict)  # batch -> images that arrived after its plan

    def summary(self) -> dict[str, Any]:
        """What ``classify --json`` prints and classify-flow returns."""
        return {
            "model": self.card.name,
            "version": self.card.version,
            "temperature": card_temperature(self.card),
            "batches": {
                r.manifest.batch_id: {
                    "rows": r.manifest.rows, "flags": r.manifest.flags, "classes": r.manifest.classes,
                    "tta": r.manifest.tta, "committed": r.committed,
                }
                for r in self.batches
            },
            "skipped": {s.folder: s.reason for s in self.skipped},
            "not_in_catalog": {batch: len(keys) for batch, keys in self.late.items()},
        }  # fmt: skip


def classify_batch(
    config: ClassifyConfig, batch_id: str, *, card: ModelCard | None = None, progress: bool = True,
    steps: Steps = IN_PROCESS, precision: PrecisionChoice | None = None,
) -> tuple[CatalogManifest, bool]:  # fmt: skip
    """Classify one batch into its catalog: returns the manifest and whether this call committed it
    (False: an earlier or concurrent run did). Plan, parts and commit are steps of ``steps``.
    ``precision``: the run's choice (``classify_pending`` makes it once for all its batches); None:
    made here unless the config asks for fp32."""
    store = open_store(config.store)
    card = card or resolve_card(store, config)
    existing = read_catalog_manifest(store, batch_id, card.version)
    if existing is not None:
        return existing, False
    plan = steps.run("plan-batch", plan_batch, store, config, card, batch_id)
    warnings = batch_warnings(store, card, batch_id)
    if precision is None and config.precision != "fp32":  # before parts run in parallel
        precision = steps.run("choose-precision", choose_serving_precision, config, card)
    if precision is not None:
        warnings += precision.warnings
        config = config.model_copy(update={"precision": precision.precision})
    for setting in ("tta", "embeddings", "low_confidence"):  # an earlier, killed run's plan decides the rows
        if getattr(plan, setting) != getattr(config, setting):
            warnings.append(
                f"batch {batch_id} was planned with {setting}={getattr(plan, setting)} by an earlier run; "
                f"{setting}={getattr(config, setting)} ignored"
            )
    if plan.embeddings:  # fitted once, here, before parts run in parallel
        steps.run("embedding-projection", load_projection, store, card)
    calls = [(config, plan, i, progress) for i in range(len(plan.parts()))]
    parts = steps.map("classify-part", classify_part, calls)
    return steps.run("commit", commit, store, config, plan, parts, warnings)


def classify_pending(
    config: ClassifyConfig,
    *,
    card: ModelCard | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    steps: Steps = IN_PROCESS,
) -> ClassifyReport:
    """Classify the batches named in ``config`` (default: every batch with images and no complete
    catalog for the model version) with the model it names (default version: production). Folders
    under incoming/ that are not valid batch ids, and batches whose sidecar table cannot be used
    (``catalogs.objects``), are skipped with a warning to ``log`` and reported.
    ``card``: the model's card, when the caller has resolved it already."""
    store = open_store(config.store)
    card = card or steps.run("find-model", resolve_card, store, config)
    skipped: list[SkippedBatch] = []
    if config.batches is not None:
        batches = checked = list(config.batches)
    else:
        batches = steps.run("find-batches", pending_batches, store, card.version)
        checked, skipped = scan_batches(store)  # every batch is checked for late arrivals
    for folder in skipped:
        log(f"warning: skipped {INCOMING}/{folder.folder}/: {folder.reason}")
    choice = None
    if batches and config.precision != "fp32":  # chosen (an int8 copy built) once for the run, and said once
        choice = steps.run("choose-precision", choose_serving_precision, config, card)
        for note in choice.notes:
            log(f"note: {note}")
    results = []
    for batch_id in batches:
        try:
            manifest, committed = classify_batch(
                config, batch_id, card=card, progress=progress, steps=steps, precision=choice
            )
        except ObjectsError as err:
            if config.batches is not None:  # a batch asked for by name: its caller hears why
                raise
            skipped.append(SkippedBatch(batch_id, f"not classified: {err}"))  # one bad sidecar stops no other batch
            log(f"warning: skipped {INCOMING}/{batch_id}/: {skipped[-1].reason}")
            continue
        results.append(BatchResult(manifest, committed))
        for warning in manifest.warnings:
            log(f"warning: {warning}")
    late = steps.run("find-late-arrivals", find_late_arrivals, store, card.version, checked)
    for batch_id, keys in late.items():
        log(
            f"warning: {len(keys)} image(s) in {INCOMING}/{batch_id}/ arrived after its catalog was planned and are "
            f"not in it (first: {keys[0]}); move them to a new batch folder to classify them"
        )
    return ClassifyReport(card=card, batches=results, skipped=skipped, late=late)


def find_late_arrivals(store: Store, model_version: str, batches: Sequence[str]) -> dict[str, list[str]]:
    """Batch -> images not in its catalog for ``model_version`` because they came after it was
    planned, for each of ``batches``."""
    found = {b: late_arrivals(store, b, model_version) for b in batches}
    return {b: keys for b, keys in found.items() if keys}
