"""Write a synthetic sky survey into a store, laid out as real survey data arrives.

``raw/<survey>/images/<GalaxyID>.jpg`` and ``raw/<survey>/labels.csv`` (the Kaggle vote table, written
last) form the labelled set; ``incoming/<batch_id>/<GalaxyID>.jpg`` are new unlabelled batches, and
``raw/<survey>/truth/<batch_id>.csv`` keeps their true classes for evaluating a classifier later.
``raw/<survey>/survey.json`` and ``incoming/<batch_id>/survey.json`` say the images are synthetic
(``lineage``), so a model trained on them warns when it classifies a real survey, and the reverse.

Every image is a pure function of (seed, galaxy), so the output does not depend on the number of
worker processes, and a re-run with the same settings skips images that already exist.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from galaxy_models.domain import CLASS_NAMES, Name
from galaxy_models.labels import NO_CLASS, assign_classes
from galaxy_models.lineage import SURVEY_FILE, SurveyProvenance
from galaxy_models.progress import progress_counter
from galaxy_models.storage import Store, open_store
from galaxy_models.synth.galaxies import encode_jpeg, render_galaxy
from galaxy_models.synth.volunteers import simulate_votes

_ID_RANGE = (100_000, 1_000_000)  # six-digit GalaxyIDs, like Kaggle's


class SynthConfig(BaseModel):
    """What ``galaxy-pipeline synth`` makes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    store: str = Field(description="store URI: local directory or s3://bucket/prefix")
    n: int = Field(ge=1, le=500_000, description="labelled-survey galaxies (images + votes)")
    survey: Name = Field("synthetic", description="name under raw/")
    incoming_batches: int = Field(0, ge=0, le=1000, description="unlabelled batches to put under incoming/")
    batch_size: int = Field(100, ge=1, le=100_000, description="images per incoming batch")
    seed: int = Field(0, ge=0, description="everything random derives from this")
    unlabelled_fraction: float = Field(
        0.25, ge=0.0, lt=1.0, description="share of the labelled survey whose votes match no Table I class"
    )
    class_fractions: tuple[float, float, float, float, float] = Field(
        (0.2, 0.2, 0.2, 0.2, 0.2),
        description="mix of morphologies (round, in-between, cigar, edge-on, spiral)",
    )
    jpeg_quality: int = Field(90, ge=50, le=100)
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        if any(f < 0 for f in self.class_fractions) or not np.isclose(sum(self.class_fractions), 1.0):
            raise ValueError(f"class_fractions must be non-negative and sum to 1, got {self.class_fractions!r}")
        total = self.n + self.incoming_batches * self.batch_size
        if total > _ID_RANGE[1] - _ID_RANGE[0]:
            raise ValueError(f"{total} galaxies requested; at most {_ID_RANGE[1] - _ID_RANGE[0]} fit the ID space")
        return self

    def batch_id(self, index: int) -> str:
        return f"{self.survey}-batch-{index + 1:03d}"


@dataclass(frozen=True)
class _Job:
    key: str
    morphology: int
    seed: tuple[int, ...]
    quality: int


@dataclass
class SynthReport:
    """What a synth run wrote, for the CLI and the demo to print."""

    store: str
    labels_key: str
    images_written: int = 0
    images_skipped: int = 0
    seconds: float = 0.0
    batches: dict[str, int] = field(default_factory=dict)
    label_counts: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images_written / self.seconds if self.seconds > 0 else 0.0


def _render(job: _Job) -> tuple[str, bytes]:
    image = render_galaxy(job.morphology, np.random.default_rng(job.seed))
    return job.key, encode_jpeg(image, job.quality)


def _plan(config: SynthConfig) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Galaxy IDs, morphologies and intended classes, before anything is rendered."""
    rng = np.random.default_rng([config.seed, 0])
    total = config.n + config.incoming_batches * config.batch_size
    ids = (rng.choice(_ID_RANGE[1] - _ID_RANGE[0], size=total, replace=False) + _ID_RANGE[0]).astype(str)
    morphology = rng.choice(len(CLASS_NAMES), size=total, p=config.class_fractions)
    labelled = pd.DataFrame({"GalaxyID": ids[: config.n], "morphology": morphology[: config.n]})
    unlabelled = rng.random(config.n) < config.unlabelled_fraction
    labelled["intended_class"] = np.where(unlabelled, NO_CLASS, labelled["morphology"])
    batches = {}
    for b in range(config.incoming_batches):
        part = slice(config.n + b * config.batch_size, config.n + (b + 1) * config.batch_size)
        batches[config.batch_id(b)] = pd.DataFrame({"GalaxyID": ids[part], "morphology": morphology[part]})
    return labelled, batches


def _jobs(config: SynthConfig, frame: pd.DataFrame, prefix: str, existing: set[str]) -> list[_Job]:
    return [
        _Job(f"{prefix}/{gid}.jpg", int(m), (config.seed, 1, int(gid)), config.jpeg_quality)
        for gid, m in zip(frame["GalaxyID"], frame["morphology"], strict=True)
        if f"{prefix}/{gid}.jpg" not in existing
    ]


def _rendered(jobs: list[_Job], workers: int) -> Iterator[tuple[str, bytes]]:
    if workers == 1 or len(jobs) < 2 * workers:
        yield from map(_render, jobs)
        return
    # fork would copy GalSim's caches and a possibly threaded parent; spawn is the safe default.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_render, jobs, chunksize=16)


def synthesize_survey(config: SynthConfig, *, store: Store | None = None, progress: bool = True) -> SynthReport:
    """Render the planned survey into the store; the vote table is written after all its images."""
    store = store or open_store(config.store)
    labelled, batches = _plan(config)
    images_prefix = f"raw/{config.survey}/images"
    existing = set(store.list(f"{images_prefix}/")) | set(store.list("incoming/"))
    jobs = _jobs(config, labelled, images_prefix, existing)
    for batch_id, frame in batches.items():
        jobs += _jobs(config, frame, f"incoming/{batch_id}", existing)

    report = SynthReport(store=store.uri, labels_key=f"raw/{config.survey}/labels.csv")
    report.images_skipped = len(labelled) + sum(map(len, batches.values())) - len(jobs)
    start = time.perf_counter()
    with progress_counter(total=len(jobs), desc="rendering galaxies", unit="img", enabled=progress) as bar:
        for key, data in _rendered(jobs, config.workers):
            store.write_bytes(key, data)
            report.images_written += 1
            bar.update()
    report.seconds = time.perf_counter() - start

    provenance = SurveyProvenance(kind="synthetic", generator="galaxy-pipeline synth", seed=config.seed)
    for folder in [f"raw/{config.survey}", *(f"incoming/{b}" for b in batches)]:
        _write_if_changed(store, f"{folder}/{SURVEY_FILE}", provenance.model_dump_json().encode())
    for batch_id, frame in batches.items():
        truth = frame.rename(columns={"morphology": "true_class"})
        _write_if_changed(store, f"raw/{config.survey}/truth/{batch_id}.csv", _csv(truth))
        report.batches[batch_id] = len(frame)
    votes = simulate_votes(
        labelled["GalaxyID"].to_numpy(),
        labelled["intended_class"].to_numpy(),
        np.random.default_rng([config.seed, 2]),
    )
    _write_if_changed(store, report.labels_key, _csv(votes))
    classes = assign_classes(votes)
    report.label_counts = {name: int((classes == k).sum()) for k, name in enumerate(CLASS_NAMES)}
    return report


def _write_if_changed(store: Store, key: str, data: bytes) -> None:
    """Keep re-runs write-free: the tables are deterministic, so an identical one is left alone."""
    if not store.exists(key) or store.read_bytes(key) != data:
        store.write_bytes(key, data)


def _csv(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue().encode("utf-8")
