"""Commands on catalogs: ``classify`` and ``catalog export``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from galaxy_models.cli.app import (
    JsonOption,
    StoreOption,
    app,
    catalog_app,
    echo_err,
    existing_store,
    png_out,
    table,
)

if TYPE_CHECKING:
    from galaxy_models.catalogs.drift import BatchDrift
    from galaxy_models.inference.classify import ClassifyReport

ModelOption = Annotated[str, typer.Option(help="NAME or NAME@VERSION (default version: production)")]
DecodeOption = Annotated[
    str, typer.Option(help="auto (torchvision on a GPU, else pillow), pillow or torchvision (JPEGs on the device)")
]
PrecisionOption = Annotated[
    str,
    typer.Option(
        help="auto (the fastest of int8, bf16 that agrees with fp32 on >= 99.5% of the model's validation "
        "classes; checked once, recorded in its card), fp32, bf16 or int8 (openvino; builds the int8 copy)"
    ),
]
TtaOption = Annotated[
    bool, typer.Option("--tta", help="average the 8 rotated and mirrored views of each image (about 8x the compute)")
]
EmbeddingsOption = Annotated[
    bool,
    typer.Option(
        "--embeddings", help="store each galaxy's 64-number embedding (PCA of the pooled features) for `similar`"
    ),
]


@app.command()
def classify(
    store: StoreOption,
    model: ModelOption = "cs_resnet50",
    batch: Annotated[
        list[str] | None, typer.Option(help="batch id (repeatable; default: every batch without a catalog)")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 64,
    workers: Annotated[int, typer.Option(help="image reading and decoding threads")] = 4,
    decode: DecodeOption = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    engine: Annotated[str, typer.Option(help="auto (openvino on a CPU where installed), torch or openvino")] = "auto",
    precision: PrecisionOption = "auto",
    tta: TtaOption = False,
    embeddings: EmbeddingsOption = False,
    as_json: JsonOption = False,
) -> None:
    """Classify survey batches into catalogs/<batch_id>/<model_version>/ (Parquet parts + manifest)."""
    from galaxy_models.catalogs.incoming import require_images
    from galaxy_models.inference.config import ClassifyConfig
    from galaxy_models.registry.cards import resolve

    config = ClassifyConfig(
        store=store, model=model, batches=tuple(batch) if batch else None, batch_size=batch_size, workers=workers,
        decode=decode, device=device, engine=engine, precision=precision, tta=tta, embeddings=embeddings,
    )  # fmt: skip
    target = existing_store(store)
    card = resolve(target, config.ref)  # an unknown model or one without production is told before torch loads
    for batch_id in config.batches or ():
        require_images(target, batch_id)
    from galaxy_models.inference.classify import classify_pending

    report = classify_pending(config, card=card, progress=not as_json, log=echo_err)
    if as_json:
        typer.echo(json.dumps(report.summary()))
        return
    _print_classified(report, target.uri)


def _print_classified(report: ClassifyReport, store_uri: str) -> None:
    """The table of what ``classify`` did, one row per batch."""
    from galaxy_models.domain import FLAGS
    from galaxy_models.inference.probabilities import card_temperature

    card = report.card
    if not report.batches:
        typer.echo(f"nothing to classify: every batch has a catalog for {card.name}/{card.version}")
        return
    rows = [
        [r.manifest.batch_id, str(r.manifest.rows), *(str(r.manifest.flags.get(f, 0)) for f in FLAGS),
         _drift_cell(r.manifest.drift), "written" if r.committed else "already there"]
        for r in report.batches
    ]  # fmt: skip
    headers = ["batch", "rows", *(f.replace("_", " ") for f in FLAGS), "drift (JS)", "catalog"]
    typer.echo(table(headers, rows))
    views = {"8 dihedral views (TTA)" if r.manifest.tta else "one view" for r in report.batches}
    typer.echo(
        f"model {card.name}/{card.version}, temperature {card_temperature(card):.3f}, {' / '.join(sorted(views))}; "
        f"catalogs under {store_uri.rstrip('/')}/catalogs/"
    )


def _drift_cell(drift: BatchDrift | None) -> str:
    if drift is None:
        return "-"
    return f"{drift.js_divergence:.3f}" + (" DRIFTED" if drift.drifted else "")


@catalog_app.command("export")
def catalog_export(
    store: StoreOption,
    format: Annotated[
        str | None,
        typer.Option(help="csv, parquet, fits or votable (default: from --out's extension, else parquet)"),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            help="local path or s3:// URI (default: exports/ in the store); .csv, .parquet/.pq, "
            ".fits/.fit/.fts (.gz: gzip-compressed), .vot/.votable/.xml; the figure: that name with .png instead"
        ),
    ] = None,
    model: ModelOption = "cs_resnet50",
    as_json: JsonOption = False,
) -> None:
    """Merge every batch's catalog for one model version into one CSV, Parquet, FITS or VOTable file,
    and a PNG beside it (exports/demo.csv -> exports/demo.png). CSV leaves out the embedding column;
    FITS and VOTable carry units, column descriptions and the model, its version and temperature."""
    from galaxy_models.catalogs.export import ExportConfig, export_catalogs

    config = ExportConfig(store=store, format=format, out=out, model=model)
    existing_store(store)
    summary = export_catalogs(config)
    if as_json:
        typer.echo(summary.model_dump_json())
        return
    rows = [[label, str(n)] for label, n in summary.classes.items()]
    rows += [[f"flag {flag}", str(n)] for flag, n in summary.flags.items()]
    typer.echo(table(["class", "galaxies"], rows))
    typer.echo(f"{summary.rows} rows from {len(summary.batches)} batch(es) -> {summary.out} (figure: {summary.figure})")
    if summary.left_out:
        typer.echo(f"left out (the format cannot hold them): {', '.join(summary.left_out)}")


@app.command()
def similar(
    store: StoreOption,
    galaxy: Annotated[str, typer.Option(help="the galaxy id to start from")],
    k: Annotated[int, typer.Option(min=1, help="how many galaxies to return, the galaxy itself first")] = 12,
    model: ModelOption = "cs_resnet50",
    out: Annotated[Path | None, typer.Option(help="also draw them as a gallery into this PNG file")] = None,
    as_json: JsonOption = False,
) -> None:
    """The galaxies nearest to one galaxy in embedding space, across every catalog of a model version
    (classify --embeddings first)."""
    from galaxy_models.catalogs.similarity import embedded_catalog, gallery_png, nearest
    from galaxy_models.domain import ModelRef
    from galaxy_models.registry.cards import resolve

    target = existing_store(store)
    if out is not None:
        png_out(out, f"{galaxy}-similar.png")
    card = resolve(target, ModelRef.parse(model))
    neighbours = nearest(embedded_catalog(target, card.name, card.version), galaxy, k)
    if out is not None:
        title = f"nearest to galaxy {galaxy} ({card.name}/{card.version})"
        out.write_bytes(gallery_png(target, neighbours, title, crop_size=card.preprocessing.crop_size))
    if as_json:
        typer.echo(json.dumps([n.model_dump() for n in neighbours]))
        return
    rows = [
        [n.galaxy_id, n.batch_id, n.predicted_label, f"{n.confidence:.3f}", f"{n.distance:.3f}"] for n in neighbours
    ]
    typer.echo(table(["galaxy", "batch", "class", "confidence", "distance"], rows))
    if out is not None:
        typer.echo(f"gallery: {out}")
