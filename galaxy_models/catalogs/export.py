"""Exporting: every committed catalog of one model version -> one CSV, Parquet, FITS or VOTable file,
a summary and a figure (class distribution and confidence histogram) beside it.

Without a format the extension of ``out`` decides (``EXTENSIONS``; any other extension gives Parquet):
``.csv``; ``.parquet``, ``.pq``; ``.fits``, ``.fit``, ``.fts`` and, gzip-compressed, ``.fits.gz``,
``.fit.gz``, ``.fts.gz``; ``.vot``, ``.votable``, ``.xml``. The figure is the same name with ``.png``
for that extension: ``exports/demo.csv`` -> ``exports/demo.png``, ``x.fits.gz`` -> ``x.png``.

What each format holds, its units and its header: ``formats``.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from galaxy_models.catalogs.formats import (
    DEFAULT_EXTENSIONS,
    DEFAULT_FORMAT,
    EXTENSIONS,
    FORMATS,
    Provenance,
    encode,
    extension,
    left_out,
)
from galaxy_models.catalogs.manifest import CatalogManifest, read_catalog, read_catalog_manifest
from galaxy_models.catalogs.schema import CATALOG_SCHEMA
from galaxy_models.domain import CLASS_NAMES, LOW_CONFIDENCE, ModelRef, ModelRefText
from galaxy_models.registry.cards import ModelCard, resolve
from galaxy_models.storage import (
    KeyNotFoundError,
    LocalStore,
    ObjectTooLargeError,
    Store,
    UnsafeObjectError,
    open_store,
    split_uri,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def figure_path(out: str) -> str:
    """Where the figure of an export to ``out`` goes: ``out`` with ``.png`` for its extension."""
    head, _, name = out.rstrip("/").rpartition("/")
    ext = extension(name)
    stem = name[: -len(ext)] if ext else os.path.splitext(name)[0]
    return f"{head}/{stem}.png" if head else f"{stem}.png"


class ExportConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    store: str = Field("./galaxy-data", description="store holding catalogs/ and models/")
    model: ModelRefText = Field("cs_resnet50", description="model name, optionally NAME@VERSION (default: production)")
    format: Literal["csv", "parquet", "fits", "votable"] | None = Field(
        None, description="csv, parquet, fits or votable; None: from the extension of out, else parquet"
    )
    out: str | None = Field(
        None,
        description="local path or s3:// URI (a .fits.gz name is gzip-compressed FITS); "
        "default exports/<name>-<version>.<csv|parquet|fits|vot>",
    )

    @field_validator("format", mode="before")
    @classmethod
    def _known_format(cls, value: Any) -> Any:
        if value is not None and value not in FORMATS:
            raise ValueError(f"unknown export format {value!r}; use one of {', '.join(FORMATS)}")
        return value

    @model_validator(mode="after")
    def _format_matches_out(self) -> ExportConfig:
        implied = self.implied_format
        if self.format is not None and implied is not None and implied != self.format:
            raise ValueError(
                f"format {self.format!r} contradicts out {self.out!r} (a {implied} file): "
                "leave the format out or change the extension"
            )
        if self.out is not None and figure_path(self.out).lower() == self.out.rstrip("/").lower():
            raise ValueError(
                f"out {self.out!r} is where the export's figure goes; "
                f"use the format's extension, e.g. {DEFAULT_EXTENSIONS[self.output_format]!r}"
            )
        return self

    @property
    def implied_format(self) -> str | None:
        """The format the extension of ``out`` names, if it names one."""
        ext = None if self.out is None else extension(self.out)
        return EXTENSIONS[ext] if ext else None

    @property
    def output_format(self) -> str:
        return self.format or self.implied_format or DEFAULT_FORMAT

    @property
    def gzipped(self) -> bool:
        """Whether the file is gzip-compressed: FITS to a name ending in ``.gz``."""
        return self.output_format == "fits" and self.out is not None and self.out.lower().endswith(".gz")

    @property
    def ref(self) -> ModelRef:
        return ModelRef.parse(self.model)


class ExportSummary(BaseModel):
    model_name: str
    model_version: str
    batches: list[str]
    rows: int
    classes: dict[str, int]
    flags: dict[str, int]
    out: str
    figure: str
    left_out: list[str] = Field(default_factory=list, description="columns the format cannot hold")


def committed_catalogs(store: Store, name: str, version: str) -> list[CatalogManifest]:
    """The manifests of every committed catalog of ``name``/``version``, by batch id. Batches are
    found under catalogs/ (a batch whose incoming/ folder was cleared keeps its catalog); ones without
    a complete catalog for that version are left out."""
    suffix = f"/{version}/_manifest.json"
    batches = sorted(k.split("/")[1] for k in store.list("catalogs/") if k.endswith(suffix) and k.count("/") == 3)
    manifests = (read_catalog_manifest(store, batch, version) for batch in batches)
    return [m for m in manifests if m is not None and m.model_name == name]


def merged_catalog(store: Store, name: str, version: str) -> tuple[pa.Table, list[str]]:
    """The rows of every committed catalog of ``name``/``version`` (``committed_catalogs``), batch by
    batch, and those batches."""
    manifests = committed_catalogs(store, name, version)
    tables = [read_catalog(store, m) for m in manifests]
    return (pa.concat_tables(tables) if tables else CATALOG_SCHEMA.empty_table()), [m.batch_id for m in manifests]


def write_output(target: str, data: bytes) -> str:
    """Write to a local path or an s3:// URI atomically, unless it already holds exactly ``data``
    (an export run again over the same catalogs writes nothing)."""
    if target.startswith("s3://"):
        root, key = split_uri(target)
        destination: Store = open_store(root)
        location = destination.url(key)
    else:
        path = Path(target).expanduser().absolute()
        destination, key, location = LocalStore(path.parent), path.name, os.fspath(path)
    if not _holds(destination, key, data):
        destination.write_bytes(key, data)
    return location


def _holds(store: Store, key: str, data: bytes) -> bool:
    try:
        return store.read_bytes(key, max_bytes=len(data)) == data
    except (KeyNotFoundError, ObjectTooLargeError, UnsafeObjectError):
        return False


def distribution_figure(table: pa.Table, title: str, *, thresholds: Sequence[float] = (LOW_CONFIDENCE,)) -> Figure:
    """Galaxies per predicted class (bars) and the confidence histogram with the low-confidence
    ``thresholds`` the rows were flagged with marked; both count axes have integer ticks."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    classes = [c for c in table.column("predicted_class").to_pylist() if c is not None]
    counts = np.bincount(np.asarray(classes, dtype=int), minlength=len(CLASS_NAMES))
    confidence = np.asarray([c for c in table.column("confidence").to_pylist() if c is not None], dtype=float)
    figure = Figure(figsize=(10, 3.8))
    left, right = figure.subplots(1, 2)
    left.bar(CLASS_NAMES, counts, color="tab:blue")
    for x, n in enumerate(counts):
        left.text(x, n, f"{int(n)}", ha="center", va="bottom", fontsize=8)
    left.set_ylabel("galaxies")
    left.set_title("predicted class")
    right.hist(confidence, bins=np.linspace(0.2, 1.0, 33), color="tab:orange")
    for threshold in sorted(set(thresholds)):
        right.axvline(threshold, color="black", linestyle="--", label=f"low-confidence threshold {threshold:g}")
    right.legend(loc="upper left", fontsize=8)
    right.set_xlabel("confidence (top class probability)")
    right.set_ylabel("galaxies")
    right.set_title("confidence")
    for axes in (left, right):
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(title)
    return figure


def distribution_png(table: pa.Table, title: str, *, thresholds: Sequence[float] = (LOW_CONFIDENCE,)) -> bytes:
    """``distribution_figure`` as PNG bytes (the same for the same rows)."""
    buffer = io.BytesIO()
    distribution_figure(table, title, thresholds=thresholds).savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def _target(config: ExportConfig, store: Store, card: ModelCard) -> str:
    """Where the export goes: ``config.out`` or exports/ in the store; never a directory."""
    name = f"{card.name}-{card.version}{DEFAULT_EXTENSIONS[config.output_format]}"
    target = config.out or store.url(f"exports/{name}")
    if target.startswith("file://"):
        target = target[len("file://") :]
    if not target.startswith("s3://") and Path(target).expanduser().is_dir():
        raise ValueError(
            f"output path {target!r} is a directory; name a file in it, e.g. {os.path.join(target, name)!r}"
        )
    return target


def export_catalogs(config: ExportConfig) -> ExportSummary:
    """Merge, write the file and its figure (``figure_path``), and summarise.

    Raises:
        ModelNotFoundError: if the model or version is not published (or none is in production).
        ValueError: if no batch has a complete catalog for that version.
    """
    store = open_store(config.store)
    card = resolve(store, config.ref)
    fmt = config.output_format
    target = _target(config, store, card)
    manifests = committed_catalogs(store, card.name, card.version)
    if not manifests:
        raise ValueError(f"no complete catalog for {card.name}/{card.version} in {store.uri}; run classify first")
    table = pa.concat_tables([read_catalog(store, m) for m in manifests])
    batches = [m.batch_id for m in manifests]
    data = encode(table, fmt, Provenance.of(card, table.num_rows, len(batches)))
    out = write_output(target, gzip.compress(data, mtime=0) if config.gzipped else data)
    title = f"{card.name} {card.version}: {table.num_rows} galaxies"
    png = distribution_png(table, title, thresholds=[m.low_confidence for m in manifests])
    figure = write_output(figure_path(target), png)
    classes = table.column("predicted_label").to_pylist()
    flags = table.column("flag").to_pylist()
    return ExportSummary(
        model_name=card.name,
        model_version=card.version,
        batches=batches,
        rows=table.num_rows,
        classes={label: classes.count(label) for label in CLASS_NAMES},
        flags={flag: flags.count(flag) for flag in sorted(set(flags))},
        out=out,
        figure=figure,
        left_out=left_out(table.schema, fmt),
    )
