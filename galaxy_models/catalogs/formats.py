"""Catalog file formats: CSV, Parquet, FITS and VOTable bytes from the catalog's rows, and the
extensions that name them.

What each format holds:

- Parquet: the catalog as stored, every column, nulls as nulls.
- CSV: every column but lists (``embedding``: pyarrow's CSV writer has no list type); a null is an
  empty field.
- FITS (one BINTABLE HDU, ``EXTNAME = 'CATALOG'``) and VOTable (1.4, TABLEDATA), written with
  astropy.table: strings stay strings, and a null string is an empty one (neither format has a null
  string; astropy reads an empty FITS string back as masked); FITS is ASCII, so other characters are
  backslash-escaped (``é`` -> ``\\xe9``). Null numbers are masked: floats are NaN in FITS and empty
  cells in VOTable; integers are empty cells in VOTable and ``TNULLn`` (the type's minimum) in FITS.
  ``predicted_class`` is int16 (neither format has a signed byte), so its null is -32768 in FITS.
  ``processed_at`` is an ISO-8601 UTC string (``2025-01-31T12:00:00.123456Z``). A fixed-size list of
  numbers (``embedding``) is a fixed-width array column (FITS ``64E``, VOTable ``arraysize="64"``)
  whose null rows are fully masked; other nested columns are left out. Units: ``ra`` and ``dec`` in
  deg, probabilities and ``confidence`` dimensionless; ``entropy`` is in nats, which astropy has no
  unit for, so it has none and its description says so. Every known column has a description (FITS:
  ``TCOMMn`` and astropy's column metadata; VOTable: ``DESCRIPTION``). The provenance (``Provenance``)
  is in the FITS header and, under the same names, in the VOTable's ``PARAM``s: ``ORIGIN``
  (galaxy-pipeline), ``PIPEVER`` (its version), ``MODEL``, ``MODELVER``, ``TEMPCAL`` (the model
  card's calibration temperature, 1 without one), ``NROWS`` and ``NBATCH``.

Every format is a function of the rows and the provenance only (no date of writing, gzip with
mtime 0), so an export run again over the same catalogs writes nothing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from galaxy_models.catalogs.schema import CATALOG_SCHEMA, PROBABILITY_COLUMNS
from galaxy_models.domain import CLASS_NAMES
from galaxy_models.registry.cards import ModelCard

if TYPE_CHECKING:
    from astropy.table import Table

FORMATS = ("csv", "parquet", "fits", "votable")
EXTENSIONS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".fits.gz": "fits",
    ".fit.gz": "fits",
    ".fts.gz": "fits",
    ".vot": "votable",
    ".votable": "votable",
    ".xml": "votable",
}
DEFAULT_EXTENSIONS = {"csv": ".csv", "parquet": ".parquet", "fits": ".fits", "votable": ".vot"}
DEFAULT_FORMAT = "parquet"

_UNITS = {"ra": "deg", "dec": "deg", "confidence": "", **dict.fromkeys(PROBABILITY_COLUMNS, "")}
_DESCRIPTIONS = {
    "galaxy_id": "galaxy ID: the image file name without its extension",
    "batch_id": "survey batch the image came in",
    "source_key": "storage key of the image",
    "predicted_class": f"predicted class 0-{len(CLASS_NAMES) - 1}; null: no prediction (see flag)",
    "predicted_label": "name of the predicted class",
    **{p: f"probability of class {c} (calibrated)" for p, c in zip(PROBABILITY_COLUMNS, CLASS_NAMES, strict=True)},
    "confidence": "probability of the predicted class",
    "entropy": f"class-probability entropy in nats (ln {len(CLASS_NAMES)}: uniform)",
    "flag": "ok, low_confidence, unreadable or missing",
    "reason": "why the image has no prediction",
    "model_name": "model that classified the image",
    "model_version": "version of that model",
    "processed_at": "when the image was classified (ISO-8601, UTC)",
    "ra": "right ascension (J2000) in degrees, from the batch's sidecar table",
    "dec": "declination (J2000) in degrees, from the batch's sidecar table",
    "objid": "survey object ID, from the batch's sidecar table",
    "embedding": "image embedding from the model",
}


def extension(out: str) -> str | None:
    """The longest key of ``EXTENSIONS`` that the file name in ``out`` ends with, if any."""
    name = out.rstrip("/").rsplit("/", 1)[-1].lower()
    matches = [ext for ext in EXTENSIONS if name.endswith(ext) and len(name) > len(ext)]
    return max(matches, key=len) if matches else None


@dataclass(frozen=True)
class Provenance:
    """What made an export: written into FITS headers and VOTable PARAMs."""

    model_name: str
    model_version: str
    temperature: float
    rows: int
    batches: int
    pipeline_version: str

    def entries(self) -> list[tuple[str, str | int | float, str]]:
        """(key, value, description) of each item: FITS header keys, and the names of VOTable PARAMs."""
        return [
            ("ORIGIN", "galaxy-pipeline", "software that wrote this file"),
            ("PIPEVER", self.pipeline_version, "galaxy-pipeline version"),
            ("MODEL", self.model_name, "model that classified the rows"),
            ("MODELVER", self.model_version, "model version"),
            ("TEMPCAL", self.temperature, "calibration temperature (1: none)"),
            ("NROWS", self.rows, "rows in the catalog"),
            ("NBATCH", self.batches, "survey batches in the catalog"),
        ]

    @classmethod
    def of(cls, card: ModelCard, rows: int, batches: int) -> Provenance:
        # inference.probabilities.card_temperature reads the same, but importing it loads torch
        temperature = card.calibration.temperature if card.calibration is not None else 1.0
        return cls(card.name, card.version, temperature, rows, batches, pipeline_version())


def pipeline_version() -> str:
    try:
        return version("galaxy-pipeline")
    except PackageNotFoundError:  # a checkout on sys.path without installation
        return "unknown"


def left_out(schema: pa.Schema, fmt: str) -> list[str]:
    """The columns ``fmt`` cannot hold: nested ones for CSV; for FITS and VOTable, nested ones other
    than fixed-size lists of numbers."""
    if fmt == "parquet":
        return []
    return [f.name for f in schema if pa.types.is_nested(f.type) and (fmt == "csv" or not _numeric_list(f.type))]


def _numeric_list(kind: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(kind) and (
        pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)
    )


def encode(table: pa.Table, fmt: str, provenance: Provenance | None = None) -> bytes:
    """``table`` in ``fmt``, less the columns ``left_out`` names; FITS and VOTable carry ``provenance``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    table = table.drop_columns(left_out(table.schema, fmt))
    buffer = io.BytesIO()
    if fmt == "csv":
        pacsv.write_csv(table, buffer)
    elif fmt == "parquet":
        pq.write_table(table, buffer, compression="zstd")
    elif fmt == "fits":
        _write_fits(astropy_table(table, ascii_only=True), provenance, buffer)
    else:
        _write_votable(astropy_table(table), provenance, buffer)
    return buffer.getvalue()


def astropy_table(table: pa.Table, *, ascii_only: bool = False) -> Table:
    """``table`` as an astropy Table of masked columns, with units and descriptions (see the module
    docstring for each type). ``ascii_only`` backslash-escapes other characters in strings.

    Raises:
        ValueError: naming a column of a type with no astropy equivalent.
    """
    from astropy.table import MaskedColumn, Table

    columns = []
    for field, chunked in zip(table.schema, table.columns, strict=True):
        values, mask, fill = _numpy(chunked.combine_chunks(), field, ascii_only)
        description = (field.metadata or {}).get(b"description", b"").decode() or _DESCRIPTIONS.get(field.name)
        columns.append(
            MaskedColumn(
                values, name=field.name, mask=mask, fill_value=fill, unit=_UNITS.get(field.name),
                description=description,
            )
        )  # fmt: skip
    return Table(columns)


def _numpy(array: pa.Array, field: pa.Field, ascii_only: bool) -> tuple[np.ndarray, np.ndarray, Any]:
    """(values, mask, fill value) of one column."""
    kind, nulls = field.type, array.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        strings = ["" if s is None else s for s in array.to_pylist()]
        if ascii_only:
            strings = [s.encode("ascii", "backslashreplace").decode("ascii") for s in strings]
        return np.array(strings, dtype=str), nulls, ""
    if pa.types.is_timestamp(kind):
        stamps = pc.fill_null(array, pa.scalar(0, type=kind)).to_numpy(zero_copy_only=False)
        text = np.datetime_as_string(stamps, unit=kind.unit)
        suffix = "Z" if kind.tz is not None else ""  # arrow keeps UTC instants whatever the zone
        return np.array([f"{t}{suffix}" for t in text.tolist()], dtype=str), nulls, ""
    if _numeric_list(kind):
        width = kind.list_size
        inner = array.values.slice(array.offset * width, len(array) * width)
        values, mask, fill = _numpy(inner, pa.field("values", kind.value_type), ascii_only)
        return values.reshape(-1, width), mask.reshape(-1, width) | nulls[:, None], fill
    if pa.types.is_floating(kind):
        return pc.fill_null(array, np.nan).to_numpy(zero_copy_only=False), nulls, np.nan
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        values = pc.fill_null(array, pa.scalar(0, type=kind).cast(kind)).to_numpy(zero_copy_only=False)
        if values.dtype == np.int8:  # FITS and VOTable have no signed byte
            values = values.astype(np.int16)
        if values.dtype == np.bool_:
            return values, nulls, False
        info = np.iinfo(values.dtype)
        return values, nulls, info.min if info.min < 0 else info.max
    raise ValueError(f"column {field.name!r} of type {kind} has no FITS or VOTable equivalent")


def _write_fits(table: Table, provenance: Provenance | None, buffer: io.BytesIO) -> None:
    # Table.write, not fits.table_to_hdu: only it adds astropy's column metadata (descriptions)
    table.meta.update(
        {f"TCOMM{i}": column.description for i, column in enumerate(table.itercols(), 1) if column.description}
    )
    entries = provenance.entries() if provenance else []
    table.meta.update({key: (value, comment) for key, value, comment in entries})
    table.write(buffer, format="fits", name="CATALOG")


def _write_votable(table: Table, provenance: Provenance | None, buffer: io.BytesIO) -> None:
    from astropy.io.votable.tree import Param, VOTableFile

    document = VOTableFile.from_table(table, table_id="catalog")
    element = document.get_first_table()
    element.description = CATALOG_SCHEMA.metadata[b"description"].decode()
    for name, value, description in provenance.entries() if provenance else []:
        kind = {str: {"datatype": "char", "arraysize": "*"}, int: {"datatype": "long"}}.get(
            type(value), {"datatype": "double"}
        )
        param = Param(document, name=name, value=value, **kind)
        param.description = description
        element.params.append(param)
    document.to_xml(buffer)
