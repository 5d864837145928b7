"""The catalog report: one self-contained HTML page about every committed catalog of one model version,
for a person to open in a browser. Every image is a data: URI; no style, script or font comes from
elsewhere.

It shows the class shares per batch against the training split, confidence and entropy histograms,
per class the most and least confident galaxies, the most uncertain ones (highest entropy), the model
card (scores, calibration, its figures), each batch's drift and warnings, and, with ``explain``, where
the model looked (maps drawn by the ``explainer`` the caller passes: ``inference.explain.explain_keys``,
which needs torch, sits above this layer, so the CLI and export-flow hand it in). The page depends only on
the store's contents, so writing it again over the same catalogs writes nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator

from galaxy_models.catalogs import figures
from galaxy_models.catalogs.drift import drift_reference
from galaxy_models.catalogs.export import merged_catalog, write_output
from galaxy_models.catalogs.manifest import CatalogManifest, read_catalog_manifest
from galaxy_models.data.images import DEFAULT_MAX_IMAGE_BYTES
from galaxy_models.domain import CLASS_NAMES, ModelRef, ModelRefText
from galaxy_models.registry.cards import ModelCard, model_prefix, resolve
from galaxy_models.storage import KeyNotFoundError, LocalStore, ObjectTooLargeError, Store, open_store

# (store, card, image keys) -> image key -> PNG panel; keys it could not map are left out
Explainer = Callable[[Store, ModelCard, Sequence[str]], dict[str, bytes]]
EXTENSIONS = (".html", ".htm")
MAX_FIGURE_BYTES = 16 * 1024 * 1024
_COLUMNS = ["galaxy_id", "batch_id", "source_key", "predicted_class", "confidence", "entropy"]


class ReportConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    store: str = Field("./galaxy-data", description="store holding catalogs/ and models/")
    model: ModelRefText = Field("cs_resnet50", description="model name, optionally NAME@VERSION (default: production)")
    out: str | None = Field(
        None, description="local .html path or s3:// URI; default exports/<name>-<version>-report.html"
    )
    explain: bool = Field(True, description="embed where the model looked for every gallery galaxy (loads torch)")
    per_class: int = Field(8, ge=1, le=64, description="most and least confident galaxies shown per class")
    uncertain: int = Field(24, ge=1, le=256, description="most uncertain (highest entropy) galaxies shown")
    thumbnail_size: int = Field(112, ge=32, le=424, description="side of a gallery thumbnail, pixels")
    workers: int = Field(8, ge=1, le=64, description="threads reading gallery images")
    max_image_bytes: int = Field(DEFAULT_MAX_IMAGE_BYTES, ge=1, description="larger image files are not read")

    @field_validator("out")
    @classmethod
    def _html_out(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("s3://") and Path(value.removeprefix("file://")).expanduser().is_dir():
            raise ValueError(f"output path {value!r} is a directory; name a .html file in it")
        if not value.lower().endswith(EXTENSIONS):
            raise ValueError(f"the report is an HTML page: name a .html file, not {value!r}")
        return value

    @property
    def ref(self) -> ModelRef:
        return ModelRef.parse(self.model)


class ReportSummary(BaseModel):
    model_name: str
    model_version: str
    out: str
    batches: list[str]
    rows: int
    readable: int
    galleries: dict[str, int] = Field(description="gallery id -> galaxies shown")
    placeholders: int = Field(description="gallery galaxies whose image could not be read (placeholder tiles)")
    explained: int | None = Field(description="gallery galaxies with a map; None when explain was off")
    bytes: int
    seconds: float


@dataclass(frozen=True)
class Tile:
    """One galaxy in a gallery: its catalog row, its thumbnail (or why there is none) and its map's anchor."""

    galaxy_id: str
    batch_id: str
    source_key: str
    label: str
    confidence: float
    entropy: float
    image: str | None
    note: str | None
    anchor: str | None


def write_report(config: ReportConfig, *, explainer: Explainer | None = None) -> ReportSummary:
    """Build the page and write it (nothing is written when ``out`` already holds the same page).
    ``explainer`` draws the maps when ``config.explain`` is on (``inference.explain.explain_keys``).

    Raises:
        ModelNotFoundError: if the model or version is not published (or none is in production).
        ValueError: if no batch has a complete catalog for that version, or ``explain`` is on and no
            ``explainer`` is given.
    """
    if config.explain and explainer is None:
        raise ValueError(
            "the report's maps need an explainer (galaxy_models.inference.explain.explain_keys); pass one or "
            "set explain=False"
        )
    start = time.perf_counter()
    store = open_store(config.store)
    card = resolve(store, config.ref)
    target = _target(config, store, card)
    table, batches = merged_catalog(store, card.name, card.version)
    if not batches:
        raise ValueError(f"no complete catalog for {card.name}/{card.version} in {store.uri}; run classify first")
    manifests = [m for b in batches if (m := read_catalog_manifest(store, b, card.version)) is not None]
    readable = table.select(_COLUMNS).filter(pc.is_valid(table.column("predicted_class")))
    galleries = _galleries(readable, config.per_class, config.uncertain)
    keys = list(dict.fromkeys(row["source_key"] for rows in galleries.values() for row in rows))
    thumbs = _thumbnails(store, keys, card.preprocessing.crop_size, config)
    panels = explainer(store, card, keys) if explainer is not None and config.explain else None
    anchors = _anchors(galleries) if panels is not None else {}
    tiles = {name: [_tile(row, thumbs, anchors) for row in rows] for name, rows in galleries.items()}
    maps = _panels(tiles, panels) if panels is not None else None
    page = {
        "class_names": CLASS_NAMES,
        "thumb": config.thumbnail_size,
        "cover": _cover(store, card, manifests, table.num_rows, readable.num_rows),
        "distribution": _distribution(store, card, manifests),
        "histograms": _histograms(readable, manifests),
        "classes": _classes(manifests, tiles),
        "uncertain": tiles["uncertain"],
        "card": _card(store, card),
        "drift": manifests,
        "explain": maps,
    }
    html = render(page).encode("utf-8")
    out = write_output(target, html)
    return ReportSummary(
        model_name=card.name, model_version=card.version, out=out, batches=batches, rows=table.num_rows,
        readable=readable.num_rows, galleries={name: len(ts) for name, ts in tiles.items()},
        placeholders=sum(thumbs[key][0] is None for key in keys),
        explained=None if maps is None else sum(e["image"] is not None for e in maps["entries"]),
        bytes=len(html), seconds=round(time.perf_counter() - start, 3),
    )  # fmt: skip


def render(page: dict[str, Any]) -> str:
    """The HTML of a page built by ``write_report`` (``report.html.j2``, autoescaped)."""
    import jinja2

    template = resources.files("galaxy_models.catalogs").joinpath("report.html.j2").read_text("utf-8")
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return environment.from_string(template).render(**page)


def _target(config: ReportConfig, store: Store, card: ModelCard) -> str:
    if config.out is None:
        key = f"exports/{card.name}-{card.version}-report.html"
        return os.fspath(store.path(key)) if isinstance(store, LocalStore) else store.url(key)
    return config.out.removeprefix("file://")


def _galleries(readable: pa.Table, per_class: int, uncertain: int) -> dict[str, list[dict[str, Any]]]:
    """Rows per gallery: for each class its ``per_class`` most confident rows and, from the rest, its
    ``per_class`` least confident; the ``uncertain`` rows of highest entropy. Ties: batch, galaxy ID."""
    ties = [("batch_id", "ascending"), ("galaxy_id", "ascending")]
    galleries = {}
    for k, label in enumerate(CLASS_NAMES):
        rows = readable.filter(pc.equal(readable.column("predicted_class"), k))
        ranked = pc.sort_indices(rows, sort_keys=[("confidence", "descending"), *ties])
        galleries[f"{label}-most"] = rows.take(ranked[:per_class]).to_pylist()
        galleries[f"{label}-least"] = rows.take(ranked[max(per_class, len(ranked) - per_class) :]).to_pylist()[::-1]
    order = pc.sort_indices(readable, sort_keys=[("entropy", "descending"), *ties])
    galleries["uncertain"] = readable.take(order[:uncertain]).to_pylist()
    return galleries


def _classes(manifests: Sequence[CatalogManifest], tiles: dict[str, list[Tile]]) -> list[dict[str, Any]]:
    return [
        {"label": c, "id": f"class-{c}", "count": sum(m.classes.get(str(k), 0) for m in manifests),
         "most": tiles[f"{c}-most"], "least": tiles[f"{c}-least"]}
        for k, c in enumerate(CLASS_NAMES)
    ]  # fmt: skip


def _thumbnails(
    store: Store, keys: Sequence[str], crop_size: int, config: ReportConfig
) -> dict[str, tuple[str | None, str | None]]:
    def one(key: str) -> tuple[str | None, str | None]:
        return figures.thumbnail(store, key, crop_size, config.thumbnail_size, config.max_image_bytes)

    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        return dict(zip(keys, pool.map(one, keys), strict=True))


def _anchors(galleries: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """Image key -> HTML id of its map: ``explain-<galaxy_id>``, with the batch where IDs repeat."""
    anchors: dict[str, str] = {}
    for row in (row for rows in galleries.values() for row in rows):
        if row["source_key"] not in anchors:
            anchor = f"explain-{row['galaxy_id']}"
            if anchor in anchors.values():
                anchor = f"{anchor}-{row['batch_id']}-{len(anchors)}"
            anchors[row["source_key"]] = anchor
    return anchors


def _tile(row: dict[str, Any], thumbs: dict[str, tuple[str | None, str | None]], anchors: dict[str, str]) -> Tile:
    image, note = thumbs[row["source_key"]]
    return Tile(
        galaxy_id=row["galaxy_id"], batch_id=row["batch_id"], source_key=row["source_key"],
        label=CLASS_NAMES[row["predicted_class"]], confidence=row["confidence"], entropy=row["entropy"],
        image=image, note=note,
        anchor=anchors.get(row["source_key"]),
    )  # fmt: skip


def _panels(tiles: dict[str, list[Tile]], panels: dict[str, bytes]) -> dict[str, Any]:
    entries: dict[str, dict[str, Any]] = {}
    for tile in (t for ts in tiles.values() for t in ts):
        if tile.anchor is not None and tile.anchor not in entries:
            panel = panels.get(tile.source_key) if panels else None
            uri = figures.data_uri(figures.as_jpeg(panel)) if panel else None
            entries[tile.anchor] = {"tile": tile, "image": uri, "note": None if uri else "no map: image unreadable"}
    return {"entries": list(entries.values())}


def _cover(
    store: Store, card: ModelCard, manifests: Sequence[CatalogManifest], rows: int, readable: int
) -> dict[str, Any]:
    flags: dict[str, int] = {}
    for manifest in manifests:
        for flag, n in manifest.flags.items():
            flags[flag] = flags.get(flag, 0) + n
    newest = max(m.created_at for m in manifests)
    return {
        "model": card.name, "version": card.version, "architecture": card.architecture,
        "dataset": f"{card.dataset.get('name')}/{card.dataset.get('version')}", "store": store.uri,
        "batches": [m.batch_id for m in manifests], "rows": rows, "readable": readable,
        "flags": dict(sorted(flags.items())), "created": newest.isoformat(timespec="seconds"),
    }  # fmt: skip


def _distribution(store: Store, card: ModelCard, manifests: Sequence[CatalogManifest]) -> dict[str, Any]:
    reference = drift_reference(store, card)
    batches = {}
    for m in manifests:
        total = sum(m.classes.values())
        batches[m.batch_id] = {c: m.classes.get(str(k), 0) / total if total else 0.0 for k, c in enumerate(CLASS_NAMES)}
    rows: list[dict[str, Any]] = [
        {"name": f"training ({reference.source})", "readable": None, "shares": reference.class_shares}
    ]
    rows += [
        {"name": m.batch_id, "readable": sum(m.classes.values()), "shares": batches[m.batch_id]} for m in manifests
    ]
    return {"figure": figures.data_uri(figures.class_shares_png(batches, reference.class_shares)), "rows": rows}


def _histograms(readable: pa.Table, manifests: Sequence[CatalogManifest]) -> dict[str, Any]:
    confidence = readable.column("confidence").to_numpy()
    thresholds = sorted({m.low_confidence for m in manifests})
    return {
        "thresholds": thresholds,
        "confidence": figures.data_uri(figures.confidence_png(confidence, thresholds)),
        "entropy": figures.data_uri(figures.entropy_png(readable.column("entropy").to_numpy())),
    }


def _card(store: Store, card: ModelCard) -> dict[str, Any]:
    prefix = model_prefix(card.name, card.version)
    shown = []
    first = ("confusion", "reliability", "training_curves")  # then the rest, in the card's order
    for name in sorted(card.figures, key=lambda n: next((i for i, f in enumerate(first) if n.startswith(f)), 3)):
        try:
            uri = figures.data_uri(store.read_bytes(f"{prefix}/{name}", max_bytes=MAX_FIGURE_BYTES))
            note = None if uri else "not a PNG or JPEG image"
        except (KeyNotFoundError, ObjectTooLargeError) as err:
            uri, note = None, f"not read: {err}"
        shown.append({"name": name, "image": uri, "note": note})
    return {"card": card, "figures": shown, "url": store.url(f"{prefix}/card.json")}
