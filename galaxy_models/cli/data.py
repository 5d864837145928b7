"""Commands on survey data: ``labels summarize``, ``synth``, ``ingest``, ``datasets verify``."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from galaxy_models.cli.app import JsonOption, StoreOption, app, datasets_app, existing_store, labels_app, table
from galaxy_models.cli.errors import UserError


@labels_app.command("summarize")
def labels_summarize(
    csv: Annotated[str, typer.Argument(help="vote table: local path or s3://bucket/key")],
    as_json: JsonOption = False,
) -> None:
    """Count galaxies per Table I class in a Kaggle-format vote table."""
    from galaxy_models.domain import CLASS_NAMES
    from galaxy_models.labels import assign_classes, class_counts, parse_votes
    from galaxy_models.storage import StorageError, read_uri

    try:
        summary = class_counts(assign_classes(parse_votes(read_uri(csv), csv)))
    except (ValueError, OSError, StorageError) as err:
        raise UserError(str(err) if csv in str(err) else f"{csv}: {err}") from err
    if as_json:
        typer.echo(json.dumps(summary))
        return
    counts: dict[str, int] = summary["counts"]  # type: ignore[assignment]
    total = int(summary["total"])  # type: ignore[call-overload]
    rows = [[f"{k} {name}", str(counts[str(k)])] for k, name in enumerate(CLASS_NAMES)]
    rows += [["no class", str(summary["unlabelled"])], ["total", str(total)]]
    rows = [[label, n, f"{100 * int(n) / total:.1f}%"] for label, n in rows]
    typer.echo(table(["class", "galaxies", "share"], rows))


@app.command()
def synth(
    store: StoreOption,
    n: Annotated[int, typer.Option(help="galaxies in the labelled survey")],
    survey: Annotated[str, typer.Option(help="survey name (raw/<survey>/)")] = "synthetic",
    incoming_batches: Annotated[int, typer.Option(help="unlabelled batches under incoming/")] = 0,
    batch_size: Annotated[int, typer.Option(help="images per incoming batch")] = 100,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    workers: Annotated[int | None, typer.Option(help="render processes (default: all cores)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Render a synthetic SDSS-like survey with GalSim and its Galaxy Zoo 2 vote table."""
    from galaxy_models.synth.survey import SynthConfig, synthesize_survey

    config = SynthConfig(
        store=store, n=n, survey=survey, incoming_batches=incoming_batches, batch_size=batch_size, seed=seed,
        workers=workers or os.cpu_count() or 1,
    )  # fmt: skip
    report = synthesize_survey(config, progress=not as_json)
    if as_json:
        summary = {
            "store": report.store, "labels": report.labels_key, "images_written": report.images_written,
            "images_skipped": report.images_skipped, "images_per_second": round(report.images_per_second, 1),
            "workers": config.workers, "label_counts": report.label_counts, "incoming_batches": report.batches,
        }  # fmt: skip
        typer.echo(json.dumps(summary))
        return
    typer.echo(
        f"wrote {report.images_written} images ({report.images_skipped} already there) to {report.store} "
        f"at {report.images_per_second:.1f} images/s with {config.workers} worker(s)"
    )
    typer.echo(f"vote table: {report.labels_key}; Table I classes: {report.label_counts}")
    for batch_id, size in report.batches.items():
        typer.echo(f"incoming batch {batch_id}: {size} images")


@app.command()
def ingest(
    images: Annotated[str, typer.Option(help="folder of <GalaxyID>.jpg images: local path or s3://bucket/prefix")],
    labels: Annotated[str, typer.Option(help="Kaggle-format vote table: local path or s3://bucket/key")],
    store: StoreOption,
    name: Annotated[str, typer.Option(help="dataset name")] = "gz2",
    seed: Annotated[int, typer.Option(help="seed of the stratified split")] = 0,
    samples_per_shard: Annotated[int, typer.Option(help="samples per WebDataset shard")] = 1000,
    workers: Annotated[int | None, typer.Option(help="image threads (default: 2 per core)")] = None,
    pseudo_labels: Annotated[
        str | None,
        typer.Option(
            help="catalog (CSV/Parquet: galaxy_id, predicted_class, confidence) labelling images with no "
            "Table I class; they join the training split only"
        ),
    ] = None,
    pseudo_min_confidence: Annotated[float, typer.Option(help="confidence a pseudo-label needs")] = 0.9,
    as_json: JsonOption = False,
) -> None:
    """Label, split, check, crop and shard a survey into a dataset version (no Prefect server needed)."""
    from galaxy_models.data.ingest import IngestConfig
    from galaxy_models.data.ingest import ingest as run_ingest
    from galaxy_models.reports import ingest_summary, split_table

    config = IngestConfig(
        images=images, labels=labels, store=store, name=name, seed=seed, samples_per_shard=samples_per_shard,
        workers=workers or 2 * (os.cpu_count() or 1), pseudo_labels=pseudo_labels,
        pseudo_min_confidence=pseudo_min_confidence,
    )  # fmt: skip
    result = run_ingest(config, progress=not as_json)
    manifest = result.manifest
    if as_json:
        typer.echo(json.dumps(ingest_summary(manifest, result.manifest_uri)))
        return
    splits = split_table(manifest)
    typer.echo(table(list(splits[0]), [[str(v) for v in row.values()] for row in splits]))
    c = manifest.counts
    typer.echo(
        f"\n{c.images_listed} images listed: {c.sharded} sharded, {c.quarantined} quarantined, "
        f"{c.without_label} without a vote-table row, {c.without_class} without a Table I class"
        + (f"; {c.pseudo_labelled} of the sharded are pseudo-labelled (training split)" if c.pseudo_labelled else "")
    )
    for entry in manifest.quarantine[:20]:
        typer.echo(f"  quarantined {entry.source_key}: {entry.reason}")
    state = "written" if result.created else "already complete, nothing written"
    typer.echo(f"dataset {manifest.name}/{manifest.version} ({state}): {result.manifest_uri}")


@datasets_app.command("verify")
def datasets_verify(
    store: StoreOption,
    name: Annotated[str, typer.Option(help="dataset name")] = "gz2",
    version: Annotated[str | None, typer.Option(help="dataset version (default: newest complete)")] = None,
) -> None:
    """Check every shard of a dataset version against its manifest (size, sha256, sample keys)."""
    from galaxy_models.data.manifest import read_manifest
    from galaxy_models.data.shards import verify_dataset

    target = existing_store(store)
    manifest = read_manifest(target, name, version)
    checked = verify_dataset(target, manifest)
    typer.echo(f"{manifest.name}/{manifest.version}: {checked} shards match the manifest")
