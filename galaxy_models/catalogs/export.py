"""Exporting: every committed catalog of one model version -> one CSV or Parquet file, a summary and
a figure (class distribution and confidence histogram)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from galaxy_models.catalogs.manifest import read_catalog, read_catalog_manifest
from galaxy_models.catalogs.schema import CATALOG_SCHEMA
from galaxy_models.domain import CLASS_NAMES, ModelRef, ModelRefText
from galaxy_models.registry.cards import resolve
from galaxy_models.storage import (
    KeyNotFoundError,
    LocalStore,
    ObjectTooLargeError,
    Store,
    UnsafeObjectError,
    open_store,
    split_uri,
)

FORMATS = ("csv", "parquet")
EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
DEFAULT_FORMAT = "parquet"


class ExportConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    store: str = Field("./galaxy-data", description="store holding catalogs/ and models/")
    model: ModelRefText = Field("cs_resnet50", description="model name, optionally NAME@VERSION (default: production)")
    format: Literal["csv", "parquet"] | None = Field(
        None, description="csv or parquet; None: from the extension of out, else parquet"
    )
    out: str | None = Field(None, description="local path or s3:// URI; default exports/<name>-<version>.<format>")

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
                f"format {self.format!r} contradicts out {self.out!r} (a .{implied} file): "
                "leave the format out or change the extension"
            )
        return self

    @property
    def implied_format(self) -> str | None:
        """The format the extension of ``out`` names, if it names one."""
        if self.out is None:
            return None
        return EXTENSIONS.get(os.path.splitext(self.out.rstrip("/"))[1].lower())

    @property
    def output_format(self) -> str:
        return self.format or self.implied_format or DEFAULT_FORMAT

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


def merged_catalog(store: Store, name: str, version: str) -> tuple[pa.Table, list[str]]:
    """All committed catalogs of ``name``/``version``, batch by batch. Batches are found under
    catalogs/ (a batch whose incoming/ folder was cleared keeps its catalog); ones without a complete
    catalog for that version are left out (and not listed)."""
    suffix = f"/{version}/_manifest.json"
    batches = sorted(k.split("/")[1] for k in store.list("catalogs/") if k.endswith(suffix) and k.count("/") == 3)
    tables, found = [], []
    for batch in batches:
        manifest = read_catalog_manifest(store, batch, version)
        if manifest is not None and manifest.model_name == name:
            tables.append(read_catalog(store, manifest))
            found.append(batch)
    return (pa.concat_tables(tables) if tables else CATALOG_SCHEMA.empty_table()), found


def encode(table: pa.Table, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "csv":
        pacsv.write_csv(table, buffer)
    elif fmt == "parquet":
        pq.write_table(table, buffer, compression="zstd")
    else:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    return buffer.getvalue()


def _write(target: str, data: bytes) -> str:
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


def distribution_png(table: pa.Table, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = [c for c in table.column("predicted_class").to_pylist() if c is not None]
    counts = np.bincount(np.asarray(classes, dtype=int), minlength=len(CLASS_NAMES)) if classes else np.zeros(5)
    confidence = np.asarray([c for c in table.column("confidence").to_pylist() if c is not None], dtype=float)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.bar(CLASS_NAMES, counts, color="tab:blue")
    for x, n in enumerate(counts):
        left.text(x, n, f"{int(n)}", ha="center", va="bottom", fontsize=8)
    left.set_ylabel("galaxies")
    left.set_title("predicted class")
    right.hist(confidence, bins=np.linspace(0.2, 1.0, 33), color="tab:orange")
    right.set_xlabel("confidence (top class probability)")
    right.set_ylabel("galaxies")
    right.set_title("confidence")
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def export_catalogs(config: ExportConfig) -> ExportSummary:
    """Merge, write the file and its figure (``<out>.png``), and summarise.

    Raises:
        ModelNotFoundError: if the model or version is not published (or none is in production).
        ValueError: if no batch has a complete catalog for that version.
    """
    store = open_store(config.store)
    card = resolve(store, config.ref)
    fmt = config.output_format
    target = config.out or store.url(f"exports/{card.name}-{card.version}.{fmt}")
    if target.startswith("file://"):
        target = target[len("file://") :]
    if not target.startswith("s3://") and Path(target).expanduser().is_dir():
        raise ValueError(
            f"output path {target!r} is a directory; name a file in it, e.g. "
            f"{os.path.join(target, f'{card.name}-{card.version}.{fmt}')!r}"
        )
    table, batches = merged_catalog(store, card.name, card.version)
    if not batches:
        raise ValueError(f"no complete catalog for {card.name}/{card.version} in {store.uri}; run classify first")
    out = _write(target, encode(table, fmt))
    title = f"{card.name} {card.version}: {table.num_rows} galaxies"
    figure = _write(f"{target}.png", distribution_png(table, title))
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
    )
