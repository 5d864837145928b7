"""A batch's sidecar table: sky coordinates and survey ids that join its catalog rows.

Contract: ``incoming/<batch_id>/_objects.csv`` (or ``_objects.parquet``, not both), one row per galaxy:

    GalaxyID  required; the image's file name without extension (``incoming/<batch>/<GalaxyID>.jpg``)
    ra        right ascension in degrees, 0 <= ra < 360 (J2000)
    dec       declination in degrees, -90 <= dec <= 90
    objid     the survey's own object id, kept as text (SDSS ids overflow a float)

``ra`` and ``dec`` come together. Other columns are ignored and listed in the catalog manifest. A row
that fails a check (bad or duplicate GalaxyID, a coordinate out of range, not a number or given
alone, no image of that name in the batch) joins nothing and is reported with its line number and
the reason; the galaxy keeps its catalog row, with null coordinates. The file is read with a size
cap and its sha256 is fixed in the batch's catalog plan, so every part joins the same table.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Collection
from dataclasses import dataclass

import pyarrow as pa
from pydantic import BaseModel, Field

from galaxy_models.domain import is_name
from galaxy_models.storage import AccessDeniedError, ObjectTooLargeError, Store, UnsafeObjectError

OBJECTS_FILES = ("_objects.csv", "_objects.parquet")
MAX_OBJECTS_BYTES = 256 * 1024 * 1024
MAX_LISTED_PROBLEMS = 100
ID_COLUMN = "GalaxyID"
KNOWN_COLUMNS = ("ra", "dec", "objid")


class ObjectsError(ValueError):
    """A sidecar table that cannot be used at all (not CSV/Parquet, no GalaxyID column, two files, over
    the size cap, a link or other non-file, changed since the plan). Its batch is not classified
    until the table is fixed: a catalog without the coordinates the survey meant to give would
    never gain them."""


class ObjectProblem(BaseModel):
    line: int = Field(description="1-based data row of the sidecar (the header is not counted)")
    galaxy_id: str
    reason: str


class ObjectsReport(BaseModel):
    """What the catalog manifest says about the batch's sidecar."""

    source: str
    sha256: str
    rows: int
    joined: int = Field(description="rows whose columns joined a catalog row")
    columns: list[str] = Field(description="the known columns the sidecar has")
    ignored_columns: list[str]
    images_without_row: int
    problems: int
    listed_problems: list[ObjectProblem] = Field(description=f"the first {MAX_LISTED_PROBLEMS} problems")


@dataclass(frozen=True)
class BatchObjects:
    """The sidecar's good rows (columns galaxy_id, ra, dec, objid) and what was found wrong."""

    table: pa.Table
    report: ObjectsReport


def objects_key(store: Store, batch_id: str) -> str | None:
    """The batch's sidecar key, or None without one.

    Raises:
        ObjectsError: if the batch has both a CSV and a Parquet sidecar.
    """
    listed = set(store.list(f"incoming/{batch_id}/"))  # listed like the images: a link is found, then refused
    found = [f"incoming/{batch_id}/{name}" for name in OBJECTS_FILES if f"incoming/{batch_id}/{name}" in listed]
    if len(found) > 1:
        raise ObjectsError(f"batch {batch_id!r} has two sidecar tables ({', '.join(found)}); keep one")
    return found[0] if found else None


def objects_sha256(store: Store, batch_id: str) -> str | None:
    key = objects_key(store, batch_id)
    return None if key is None else hashlib.sha256(_read(store, key)).hexdigest()


def _read(store: Store, key: str) -> bytes:
    """The sidecar's bytes; ``ObjectsError`` for one over the cap or not a regular file (never followed)."""
    try:
        return store.read_bytes(key, max_bytes=MAX_OBJECTS_BYTES)
    except (ObjectTooLargeError, UnsafeObjectError, AccessDeniedError) as err:
        raise ObjectsError(f"the sidecar {store.url(key)} cannot be read: {err}") from err


def read_objects(
    store: Store, batch_id: str, image_ids: Collection[str], *, expected_sha256: str | None = None
) -> BatchObjects | None:
    """The batch's sidecar checked against its images' galaxy ids, or None without one.

    Raises:
        ObjectsError: if it cannot be parsed, lacks a GalaxyID column, or is not the file whose
            sha256 the batch's plan fixed (``expected_sha256``).
    """
    key = objects_key(store, batch_id)
    if key is None:
        if expected_sha256 is not None:
            raise ObjectsError(f"the sidecar of batch {batch_id!r} has gone since its catalog was planned")
        return None
    data = _read(store, key)
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise ObjectsError(
            f"{store.url(key)} changed since the batch's catalog was planned (sha256 {digest[:12]}, planned "
            f"{expected_sha256[:12]}); put the new table beside a new batch"
        )
    raw = _parse(data, key, store.url(key))
    return _check(raw, set(image_ids), store.url(key), digest)


def _parse(data: bytes, key: str, where: str) -> dict[str, list[str | None]]:
    """Column name -> values as text (None for empty cells)."""
    import pandas as pd

    try:
        if key.endswith(".parquet"):
            frame = pd.read_parquet(io.BytesIO(data)).astype("string")
        else:
            frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_values=[""])
    except Exception as err:  # pandas raises many types for a file that is not a table
        raise ObjectsError(f"{where} is not a readable {key.rsplit('.', 1)[-1]} table: {err}") from err
    if ID_COLUMN not in frame.columns:
        raise ObjectsError(f"{where} has no {ID_COLUMN} column (columns: {', '.join(map(str, frame.columns))})")
    return {str(c): [None if pd.isna(v) else str(v).strip() for v in frame[c]] for c in frame.columns}


def _check(raw: dict[str, list[str | None]], image_ids: set[str], where: str, digest: str) -> BatchObjects:
    ids = raw[ID_COLUMN]
    columns = [c for c in KNOWN_COLUMNS if c in raw]
    good: dict[str, list[object]] = {"galaxy_id": [], "ra": [], "dec": [], "objid": []}
    problems: list[ObjectProblem] = []
    counts = {gid: ids.count(gid) for gid in set(ids) if gid is not None}
    for i, gid in enumerate(ids):
        row = {c: raw[c][i] for c in columns}
        reason = _row_problem(gid, row, counts, image_ids)
        if reason is not None:
            problems.append(ObjectProblem(line=i + 1, galaxy_id=gid or "", reason=reason))
            continue
        good["galaxy_id"].append(gid)
        good["ra"].append(_degrees(row.get("ra")))
        good["dec"].append(_degrees(row.get("dec")))
        good["objid"].append(row.get("objid"))
    table = pa.table(
        {"galaxy_id": pa.array(good["galaxy_id"], pa.string()), "ra": pa.array(good["ra"], pa.float64()),
         "dec": pa.array(good["dec"], pa.float64()), "objid": pa.array(good["objid"], pa.string())}
    )  # fmt: skip
    report = ObjectsReport(
        source=where,
        sha256=digest,
        rows=len(ids),
        joined=table.num_rows,
        columns=columns,
        ignored_columns=[c for c in raw if c != ID_COLUMN and c not in KNOWN_COLUMNS],
        images_without_row=len(image_ids - {str(g) for g in good["galaxy_id"]}),
        problems=len(problems),
        listed_problems=problems[:MAX_LISTED_PROBLEMS],
    )
    return BatchObjects(table, report)


def _row_problem(
    gid: str | None, row: dict[str, str | None], counts: dict[str, int], image_ids: set[str]
) -> str | None:
    if gid is None or not is_name(gid):
        return f"{ID_COLUMN} {gid!r} is not a valid galaxy id"
    if counts[gid] > 1:
        return f"{ID_COLUMN} {gid} appears {counts[gid]} times; none of its rows is used"
    if gid not in image_ids:
        return f"no image of galaxy {gid} in the batch"
    ra, dec = row.get("ra"), row.get("dec")
    if (ra is None) != (dec is None):
        return f"ra and dec come together; this row has only {'ra' if dec is None else 'dec'}"
    if ra is not None and dec is not None:
        ra_value, dec_value = _degrees(ra), _degrees(dec)
        if ra_value is None or not 0 <= ra_value < 360:
            return f"ra {ra!r} is not a number of degrees in [0, 360)"
        if dec_value is None or not -90 <= dec_value <= 90:
            return f"dec {dec!r} is not a number of degrees in [-90, 90]"
    return None


def _degrees(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
