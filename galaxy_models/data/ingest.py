"""Ingest: survey images + vote table in object storage -> a labelled, split, verified dataset version.

The steps are separate functions so that ``flows/ingest.py`` can run each as a Prefect task;
``ingest`` chains them for the CLI and for use without a server. The dataset version is derived
from the content (labels file hash, image list, settings), so a re-run with the same inputs finds
the complete manifest and writes nothing, and a run interrupted before its manifest is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from galaxy_models.data.images import (
    DEFAULT_MAX_IMAGE_BYTES,
    ImageRejected,
    PreparedImage,
    prepare_image,
    read_image_bytes,
)
from galaxy_models.data.manifest import (
    MANIFEST,
    DatasetManifest,
    IngestCounts,
    Normalization,
    QuarantineEntry,
    ShardInfo,
    dataset_prefix,
    parse_manifest,
)
from galaxy_models.data.pseudo import PseudoLabels, load_pseudo_labels
from galaxy_models.data.splits import SPLITS, CrossValidation, SplitRatios, stratified_split
from galaxy_models.data.writer import write_shards
from galaxy_models.domain import CLASS_NAMES, Name, galaxy_id_from_key, is_name
from galaxy_models.labels import ID_COLUMN, NO_CLASS, VOTE_COLUMNS, assign_classes, parse_votes
from galaxy_models.lineage import SurveyKind, survey_kind
from galaxy_models.progress import progress_counter
from galaxy_models.steps import IN_PROCESS, Steps
from galaxy_models.storage import Store, check_key, open_store, read_uri, split_uri

# Shards are built in a temporary folder named after the ingesting process, so that the next ingest
# can remove the folders a killed one left behind.
WORKDIR_PREFIX = "galaxy-ingest-"


def remove_stale_workdirs() -> list[str]:
    """Remove the work folders of ingest processes that no longer run; returns their paths."""
    removed = []
    with os.scandir(tempfile.gettempdir()) as entries:
        for entry in entries:
            owner = entry.name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
            if not entry.name.startswith(WORKDIR_PREFIX) or not owner.isdigit() or _running(int(owner)):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class IngestConfig(BaseModel):
    """Parameters of ingest-flow and ``galaxy-pipeline ingest``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    images: str = Field(description="URI of the folder holding <GalaxyID>.jpg images (local path or s3://)")
    labels: str = Field(description="URI of the Kaggle-format vote table (CSV)")
    store: str = Field(description="store URI the dataset is written to")
    name: Name = Field("gz2", description="dataset name under datasets/")
    split: SplitRatios = Field(default_factory=SplitRatios, description="fractions of each class per split")
    seed: int = Field(0, ge=0, description="seed of the stratified split")
    cross_validation: CrossValidation | None = Field(
        None, description="make the test split one fold of a stratified k-fold partition (one dataset per fold)"
    )
    crop_size: int = Field(224, ge=32, le=4096, description="side of the stored centre crop (paper: 224)")
    expected_size: int | None = Field(424, ge=1, description="required square image side; None accepts any")
    jpeg_quality: int = Field(95, ge=50, le=100, description="JPEG quality of stored crops")
    samples_per_shard: int = Field(1000, ge=1, le=1_000_000)
    max_image_bytes: int = Field(DEFAULT_MAX_IMAGE_BYTES, ge=1, description="larger image files are quarantined unread")
    survey: Literal["auto", "real", "synthetic"] = Field(
        "auto", description="kind of survey; auto: what a survey.json beside the vote table says, else real"
    )
    pseudo_labels: str | None = Field(
        None,
        description="URI of a catalog (CSV or Parquet: galaxy_id, predicted_class, confidence) whose confident "
        "predictions label images that match no Table I rule; those join the training split only",
    )
    pseudo_min_confidence: float = Field(0.9, gt=0, le=1, description="confidence a pseudo-label needs")
    workers: int = Field(default_factory=lambda: 2 * (os.cpu_count() or 1), ge=1, le=256, description="threads")

    def content_settings(self) -> dict[str, Any]:
        """The settings that change the dataset's bytes (not where it comes from or how fast).
        ``cross_validation`` is left out when unset, so datasets ingested before it existed keep
        their versions."""
        excluded = {"images", "labels", "store", "workers", "survey", "pseudo_labels"}  # the table's hash counts
        if self.cross_validation is None:
            excluded.add("cross_validation")
        if self.pseudo_labels is None:
            excluded.add("pseudo_min_confidence")
        return self.model_dump(mode="json", exclude=excluded)


@dataclass(frozen=True)
class LabelTable:
    votes: pd.DataFrame
    classes: np.ndarray
    sha256: str
    uri: str


@dataclass
class JoinResult:
    """Which listed images are candidates for the dataset, and what happened to the rest."""

    candidates: pd.DataFrame  # galaxy_id, source_key, label, row
    images_listed: int
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    without_label: list[str] = field(default_factory=list)
    without_class: list[str] = field(default_factory=list)
    pseudo_labelled: pd.DataFrame = field(default_factory=pd.DataFrame)  # as candidates; train split only
    labels_without_image: list[str] = field(default_factory=list)

    def require_candidates(self, images_uri: str) -> None:
        """Raise ``ValueError`` explaining where the images went if none can enter the dataset."""
        if self.candidates.empty:
            raise ValueError(
                f"nothing to ingest from {images_uri}: {self.images_listed} images listed, "
                f"{len(self.without_label)} without a vote-table row, {len(self.without_class)} without a "
                f"Table I class, {len(self.quarantine)} quarantined"
            )


@dataclass
class SplitResult:
    split: str
    shards: list[ShardInfo]
    quarantine: list[QuarantineEntry]
    converted_to_rgb: int
    channel_sums: np.ndarray  # sum of per-image channel means (3,) and of mean squares (3,)
    pseudo_labelled: int = 0  # sharded images whose class is a pseudo-label


def resolve_survey_kind(config: IngestConfig) -> SurveyKind:
    """The kind of survey being ingested: as configured, or what ``survey.json`` beside the vote table says."""
    if config.survey != "auto":
        return config.survey
    folder, _ = split_uri(config.labels)
    return survey_kind(open_store(folder), "")


def load_labels(uri: str) -> LabelTable:
    """Read and validate the vote table and apply Table I. Invalid tables raise ``ValueError``."""
    data = read_uri(uri)
    votes = parse_votes(data, uri)
    try:
        classes = assign_classes(votes)
    except ValueError as err:
        raise ValueError(f"invalid vote table {uri}: {err}") from err
    return LabelTable(votes, classes, hashlib.sha256(data).hexdigest(), uri)


def list_images(uri: str) -> list[str]:
    """Every object under the images folder (keys relative to it), sorted."""
    return open_store(uri).list()


def join_labels_and_images(labels: LabelTable, image_keys: list[str], pseudo: PseudoLabels | None = None) -> JoinResult:
    """Match image files to vote-table rows by GalaxyID (the file name without extension). An image
    whose votes match no Table I rule takes its class from ``pseudo`` if that has a confident one."""
    row_of = {gid: i for i, gid in enumerate(labels.votes[ID_COLUMN].astype(str))}
    result = JoinResult(candidates=pd.DataFrame(), images_listed=len(image_keys))
    first_key: dict[str, str] = {}
    rows, pseudo_rows = [], []
    for key in image_keys:
        gid = galaxy_id_from_key(key)
        if not is_name(gid):
            result.quarantine.append(
                QuarantineEntry(source_key=key, galaxy_id=None, reason="file name is not a valid GalaxyID")
            )
            continue
        try:
            check_key(key)  # a backslash in a folder name, 'images//x.jpg' on S3: this key cannot be read
        except ValueError as err:
            result.quarantine.append(QuarantineEntry(source_key=key, galaxy_id=gid, reason=str(err)))
            continue
        if gid in first_key:
            reason = f"duplicate GalaxyID {gid}: {first_key[gid]} is used"
            result.quarantine.append(QuarantineEntry(source_key=key, galaxy_id=gid, reason=reason))
            continue
        first_key[gid] = key
        row = row_of.get(gid)
        if row is None:
            result.without_label.append(key)
        elif labels.classes[row] != NO_CLASS:
            rows.append((gid, key, int(labels.classes[row]), row))
        elif pseudo is not None and gid in pseudo.classes:
            pseudo_rows.append((gid, key, pseudo.classes[gid], row))
        else:
            result.without_class.append(key)
    columns = ["galaxy_id", "source_key", "label", "row"]
    result.candidates = pd.DataFrame(rows, columns=columns)
    result.pseudo_labelled = pd.DataFrame(pseudo_rows, columns=columns).assign(pseudo=True)
    result.labels_without_image = sorted(set(row_of) - set(first_key))
    return result


def with_pseudo_labelled(train: pd.DataFrame, pseudo_labelled: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The training split with the pseudo-labelled images added, shuffled so shards mix them."""
    if pseudo_labelled.empty:
        return train
    merged = pd.concat([train.assign(pseudo=False), pseudo_labelled], ignore_index=True)
    return merged.sort_values("galaxy_id", kind="stable").sample(frac=1, random_state=seed).reset_index(drop=True)


def dataset_version(
    config: IngestConfig, labels: LabelTable, image_keys: list[str], pseudo: PseudoLabels | None = None
) -> str:
    """A version name derived from the content: labels hash (and pseudo-label table's), image list
    and content settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps(config.content_settings(), sort_keys=True).encode())
    digest.update(labels.sha256.encode())
    if pseudo is not None:
        digest.update(b"pseudo:" + pseudo.sha256.encode())
    for key in image_keys:
        digest.update(key.encode() + b"\n")
    return "v" + digest.hexdigest()[:16]


def find_complete(store: Store, name: str, version: str) -> DatasetManifest | None:
    key = f"{dataset_prefix(name, version)}/{MANIFEST}"
    return parse_manifest(store.read_bytes(key), store.url(key), name, version) if store.exists(key) else None


Candidate = tuple[str, str, int, int, bool]  # galaxy_id, source_key, label, vote-table row, pseudo-labelled


def _prepare(images: Store, config: IngestConfig, row: Candidate) -> tuple[Candidate, PreparedImage | ImageRejected]:
    """One candidate image read, checked and cropped, or the reason it was refused."""
    try:
        return row, prepare_image(
            read_image_bytes(images, row[1], config.max_image_bytes),
            name=row[1],
            crop_size=config.crop_size,
            expected_size=config.expected_size,
            quality=config.jpeg_quality,
        )
    except ImageRejected as err:
        return row, err


def _sample(
    gid: str, label: int, source_uri: str, prepared: PreparedImage, votes: np.ndarray, pseudo: bool = False
) -> dict[str, Any]:
    """A WebDataset sample: the crop, its class, and what it came from (a pseudo-label says so)."""
    metadata: dict[str, Any] = {
        "galaxy_id": gid,
        "class": label,
        "class_name": CLASS_NAMES[label],
        "source_key": source_uri,
        "source_mode": prepared.source_mode,
        "votes": dict(zip(VOTE_COLUMNS, votes.round(9).tolist(), strict=True)),
    }
    if pseudo:
        metadata["label_source"] = "pseudo"
    return {"__key__": gid, "jpg": prepared.jpeg, "cls": label, "json": metadata}


T = TypeVar("T")
R = TypeVar("R")

# Images per ingest thread that may be submitted and not yet taken by the shard writer: enough to keep
# every thread busy while the writer closes and uploads a shard, few enough that memory stays flat.
WINDOW_PER_WORKER = 4


def bounded_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """``pool.map(fn, items)`` with at most ``window`` items submitted and not yet consumed.

    ``Executor.map`` submits every item at once (``buffersize`` only arrives in Python 3.14), so its
    results pile up in memory whenever the workers run ahead of the consumer. Here the next item is
    submitted only when the consumer comes back for another result. Results come in input order; a
    call's exception is raised when its result is reached, and the work not yet started is then
    cancelled (also when the consumer stops early). Nothing is submitted before the first result is
    asked for.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    source = iter(items)
    pending: deque[Future[R]] = deque(pool.submit(fn, item) for item in islice(source, window))
    try:
        while pending:
            yield pending.popleft().result()
            # the consumer is back for the next result: the one it took leaves room for another item
            pending.extend(pool.submit(fn, item) for item in islice(source, 1))
    finally:
        for future in pending:
            future.cancel()


def shard_split(
    config: IngestConfig,
    store: Store,
    version: str,
    split: str,
    members: pd.DataFrame,
    labels: LabelTable,
    *,
    workdir: Path | None = None,
    progress: bool = True,
) -> SplitResult:
    """Read, check and crop one split's images in parallel threads and write its shards (built in
    ``workdir``, a temporary directory by default, before each is uploaded). At most
    ``WINDOW_PER_WORKER * config.workers`` images are in the threads or waiting for the writer, so
    memory stays flat however large the split."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-") as temporary:
            return shard_split(
                config, store, version, split, members, labels, workdir=Path(temporary), progress=progress
            )
    images = open_store(config.images)
    result = SplitResult(split, [], [], 0, np.zeros(6))
    votes = labels.votes[list(VOTE_COLUMNS)].to_numpy(dtype=float)

    def samples() -> Iterator[dict[str, Any]]:
        flagged = members.assign(pseudo=members["pseudo"].eq(True) if "pseudo" in members else False)
        rows = list(flagged[["galaxy_id", "source_key", "label", "row", "pseudo"]].itertuples(index=False, name=None))
        with (
            ThreadPoolExecutor(config.workers) as pool,
            progress_counter(total=len(rows), desc=f"ingest {split}", unit="img", enabled=progress) as bar,
        ):
            prepare, window = partial(_prepare, images, config), WINDOW_PER_WORKER * config.workers
            for (gid, key, label, row, pseudo), prepared in bounded_map(pool, prepare, rows, window):
                bar.update()
                if isinstance(prepared, ImageRejected):
                    result.quarantine.append(QuarantineEntry(source_key=key, galaxy_id=gid, reason=prepared.reason))
                    continue
                result.converted_to_rgb += prepared.source_mode != "RGB"
                result.pseudo_labelled += bool(pseudo)
                result.channel_sums += np.array([*prepared.channel_mean, *prepared.channel_sq_mean])
                yield _sample(gid, label, images.url(key), prepared, votes[row], pseudo=bool(pseudo))

    prefix = dataset_prefix(config.name, version)
    result.shards = write_shards(
        store, prefix, split, samples(), samples_per_shard=config.samples_per_shard, workdir=workdir
    )
    return result


def build_manifest(
    config: IngestConfig,
    version: str,
    labels: LabelTable,
    joined: JoinResult,
    results: list[SplitResult],
    survey: SurveyKind = "real",
    pseudo: PseudoLabels | None = None,
) -> DatasetManifest:
    """Assemble the manifest; normalisation statistics come from the training split."""
    shards = [s for r in results for s in r.shards]
    totals = {
        r.split: {str(k): sum(s.classes.get(str(k), 0) for s in r.shards) for k in range(len(CLASS_NAMES))}
        for r in results
    }
    quarantine = joined.quarantine + [q for r in results for q in r.quarantine]
    train = next(r for r in results if r.split == "train")
    n_train = sum(s.samples for s in train.shards)
    mean = train.channel_sums[:3] / max(n_train, 1)
    std = np.sqrt(np.maximum(train.channel_sums[3:] / max(n_train, 1) - mean**2, 1e-12))
    counts = IngestCounts(
        images_listed=joined.images_listed,
        sharded=sum(s.samples for s in shards),
        quarantined=len(quarantine),
        without_label=len(joined.without_label),
        without_class=len(joined.without_class),
        labels_without_image=len(joined.labels_without_image),
        converted_to_rgb=sum(r.converted_to_rgb for r in results),
        pseudo_labelled=sum(r.pseudo_labelled for r in results),
    )
    if not counts.adds_up:
        raise RuntimeError(f"ingest counts do not add up: {counts.model_dump()}")
    return DatasetManifest(
        name=config.name,
        version=version,
        created_at=datetime.now(UTC),
        images_uri=open_store(config.images).uri,
        labels_uri=labels.uri,
        labels_sha256=labels.sha256,
        config=config.model_dump(mode="json", exclude={"workers"}),
        class_names=list(CLASS_NAMES),
        crop_size=config.crop_size,
        normalization=Normalization(mean=mean.round(6).tolist(), std=std.round(6).tolist()),
        shards=shards,
        totals=totals,
        counts=counts,
        quarantine=quarantine,
        survey=survey,
        pseudo_labels_sha256=None if pseudo is None else pseudo.sha256,
    ).sealed()


def commit_manifest(store: Store, manifest: DatasetManifest) -> DatasetManifest:
    """Write the manifest if no run has yet; the first complete manifest of a version wins."""
    key = f"{manifest.prefix}/{MANIFEST}"
    if store.create_if_absent(key, manifest.model_dump_json(indent=2).encode()):
        return manifest
    return parse_manifest(store.read_bytes(key), store.url(key), manifest.name, manifest.version)


@dataclass(frozen=True)
class IngestResult:
    manifest: DatasetManifest
    manifest_uri: str
    created: bool  # False when a complete manifest already existed


def ingest(
    config: IngestConfig, *, store: Store | None = None, progress: bool = True, steps: Steps = IN_PROCESS
) -> IngestResult:
    """Label, join, split, check, crop and shard, then commit the manifest; each a step of ``steps``
    (ingest-flow runs them as Prefect tasks). A version that is already complete is returned as it is."""
    store = store or open_store(config.store)
    remove_stale_workdirs()
    survey = resolve_survey_kind(config)  # a bad survey.json stops the run before any work
    labels = steps.run("read-labels", load_labels, config.labels)
    pseudo = None
    if config.pseudo_labels is not None:
        pseudo = steps.run("read-pseudo-labels", load_pseudo_labels, config.pseudo_labels, config.pseudo_min_confidence)
    image_keys = steps.run("list-images", list_images, config.images)
    joined = steps.run("join", join_labels_and_images, labels, image_keys, pseudo)
    version = dataset_version(config, labels, image_keys, pseudo)
    existing = steps.run("find-complete", find_complete, store, config.name, version)
    if existing is not None:
        return IngestResult(existing, store.url(f"{existing.prefix}/{MANIFEST}"), created=False)
    joined.require_candidates(config.images)
    cv = config.cross_validation
    splits = steps.run("split", stratified_split, joined.candidates, config.split, config.seed, cross_validation=cv)
    splits["train"] = with_pseudo_labelled(splits["train"], joined.pseudo_labelled, config.seed)
    results = [
        steps.run(f"write-{name}", shard_split, config, store, version, name, splits[name], labels, progress=progress)
        for name in SPLITS
    ]
    manifest = build_manifest(config, version, labels, joined, results, survey, pseudo)
    manifest = steps.run("commit-manifest", commit_manifest, store, manifest)
    return IngestResult(manifest, store.url(f"{manifest.prefix}/{MANIFEST}"), created=True)
