"""The ``galaxy-pipeline`` command line."""

from __future__ import annotations

import io
import json
import os
from typing import Annotated

import typer

app = typer.Typer(help="Galaxy morphology classification pipeline (GZ2, CS_ResNet50).", no_args_is_help=True)
labels_app = typer.Typer(help="Galaxy Zoo 2 vote tables and Table I labels.", no_args_is_help=True)
models_app = typer.Typer(help="Model architectures and the published models in a store.", no_args_is_help=True)
app.add_typer(labels_app, name="labels")
datasets_app = typer.Typer(help="Dataset versions (WebDataset shards + manifest).", no_args_is_help=True)
catalog_app = typer.Typer(help="Classification catalogs.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
app.add_typer(models_app, name="models")
app.add_typer(datasets_app, name="datasets")

JsonOption = Annotated[bool, typer.Option("--json", help="print machine-readable JSON instead of a table")]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain text table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


@labels_app.command("summarize")
def labels_summarize(
    csv: Annotated[str, typer.Argument(help="vote table: local path or s3://bucket/key")],
    as_json: JsonOption = False,
) -> None:
    """Count galaxies per Table I class in a Kaggle-format vote table."""
    from galaxy_models.labels import CLASS_NAMES, assign_classes, class_counts, read_votes
    from galaxy_models.storage import StorageError, read_uri

    try:
        summary = class_counts(assign_classes(read_votes(io.BytesIO(read_uri(csv)))))
    except (ValueError, StorageError, OSError) as err:
        raise _fail(f"{csv}: {err}") from err
    if as_json:
        typer.echo(json.dumps(summary))
        return
    counts = summary["counts"]
    assert isinstance(counts, dict)  # for the type checker: class_counts builds it so
    total = int(summary["total"])  # type: ignore[call-overload]
    rows = [[f"{k} {name}", str(counts[str(k)])] for k, name in enumerate(CLASS_NAMES)]
    rows += [["no class", str(summary["unlabelled"])], ["total", str(total)]]
    rows = [[label, n, f"{100 * int(n) / total:.1f}%"] for label, n in rows]
    typer.echo(_table(["class", "galaxies", "share"], rows))


@models_app.command("list")
def models_list(as_json: JsonOption = False) -> None:
    """Registered models with their parameter counts and GMACs at 224x224."""
    from galaxy_models.registry import model_table

    rows = model_table()
    if as_json:
        typer.echo(json.dumps(rows))
        return
    typer.echo(
        _table(
            ["model", "parameters", "GMACs@224"],
            [[r["name"], f"{r['params']:,}", f"{r['gmacs']:.3f}"] for r in rows],
        )
    )


@app.command()
def synth(
    store: Annotated[str, typer.Option(help="store URI: local directory or s3://bucket/prefix")],
    n: Annotated[int, typer.Option(help="galaxies in the labelled survey")],
    survey: Annotated[str, typer.Option(help="survey name (raw/<survey>/)")] = "synthetic",
    incoming_batches: Annotated[int, typer.Option(help="unlabelled batches under incoming/")] = 0,
    batch_size: Annotated[int, typer.Option(help="images per incoming batch")] = 100,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    workers: Annotated[int | None, typer.Option(help="render processes (default: all cores)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Render a synthetic SDSS-like survey with GalSim and its Galaxy Zoo 2 vote table."""
    from pydantic import ValidationError

    from galaxy_models.storage import StorageError
    from galaxy_models.survey import SynthConfig, synthesize_survey

    try:
        config = SynthConfig(
            store=store,
            n=n,
            survey=survey,
            incoming_batches=incoming_batches,
            batch_size=batch_size,
            seed=seed,
            workers=workers or os.cpu_count() or 1,
        )
        report = synthesize_survey(config, progress=not as_json)
    except ValidationError as err:
        raise _fail(str(err)) from err
    except (ValueError, StorageError, OSError) as err:
        raise _fail(f"{store}: {err}") from err
    summary = {
        "store": report.store,
        "labels": report.labels_key,
        "images_written": report.images_written,
        "images_skipped": report.images_skipped,
        "images_per_second": round(report.images_per_second, 1),
        "workers": config.workers,
        "label_counts": report.label_counts,
        "incoming_batches": report.batches,
    }
    if as_json:
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
    store: Annotated[str, typer.Option(help="store URI to write datasets/<name>/<version>/ into")],
    name: Annotated[str, typer.Option(help="dataset name")] = "gz2",
    seed: Annotated[int, typer.Option(help="seed of the stratified split")] = 0,
    samples_per_shard: Annotated[int, typer.Option(help="samples per WebDataset shard")] = 1000,
    workers: Annotated[int | None, typer.Option(help="image threads (default: 2 per core)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Label, split, check, crop and shard a survey into a dataset version (no Prefect server needed)."""
    from pydantic import ValidationError

    from galaxy_models.ingest import IngestConfig
    from galaxy_models.ingest import ingest as run_ingest
    from galaxy_models.reports import ingest_summary, split_table
    from galaxy_models.storage import StorageError

    try:
        config = IngestConfig(
            images=images,
            labels=labels,
            store=store,
            name=name,
            seed=seed,
            samples_per_shard=samples_per_shard,
            workers=workers or 2 * (os.cpu_count() or 1),
        )
        result = run_ingest(config, progress=not as_json)
    except ValidationError as err:
        raise _fail(str(err)) from err
    except (ValueError, StorageError, OSError) as err:
        raise _fail(str(err)) from err
    manifest = result.manifest
    if as_json:
        typer.echo(json.dumps(ingest_summary(manifest, result.manifest_uri)))
        return
    table = split_table(manifest)
    typer.echo(_table(list(table[0]), [[str(v) for v in row.values()] for row in table]))
    c = manifest.counts
    typer.echo(
        f"\n{c.images_listed} images listed: {c.sharded} sharded, {c.quarantined} quarantined, "
        f"{c.without_label} without a vote-table row, {c.without_class} without a Table I class"
    )
    for entry in manifest.quarantine[:20]:
        typer.echo(f"  quarantined {entry.source_key}: {entry.reason}")
    state = "written" if result.created else "already complete, nothing written"
    typer.echo(f"dataset {manifest.name}/{manifest.version} ({state}): {result.manifest_uri}")


@datasets_app.command("verify")
def datasets_verify(
    store: Annotated[str, typer.Option(help="store URI")],
    name: Annotated[str, typer.Option(help="dataset name")] = "gz2",
    version: Annotated[str | None, typer.Option(help="dataset version (default: newest complete)")] = None,
) -> None:
    """Check every shard of a dataset version against its manifest (size, sha256, sample keys)."""
    from galaxy_models.shards import read_manifest, verify_dataset
    from galaxy_models.storage import StorageError, open_store

    try:
        target = open_store(store)
        manifest = read_manifest(target, name, version)
        checked = verify_dataset(target, manifest)
    except (ValueError, StorageError, OSError) as err:
        raise _fail(str(err)) from err
    typer.echo(f"{manifest.name}/{manifest.version}: {checked} shards match the manifest")


def _parse_settings(settings: list[str]) -> dict[str, object]:
    """``--set key=value`` pairs; values are read as JSON where they parse (numbers, booleans, objects)."""
    parsed: dict[str, object] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


@app.command()
def train(
    store: Annotated[str, typer.Option(help="store holding the dataset; runs/ and models/ are written there")],
    preset: Annotated[str | None, typer.Option(help="paper (Table IV settings) or smoke (seconds on a CPU)")] = None,
    dataset: Annotated[str | None, typer.Option(help="dataset name (default: the preset's, else gz2)")] = None,
    model: Annotated[str | None, typer.Option(help="registered architecture, e.g. cs_resnet50")] = None,
    epochs: Annotated[int | None, typer.Option(help="epochs")] = None,
    batch_size: Annotated[int | None, typer.Option(help="global batch size")] = None,
    lr: Annotated[float | None, typer.Option(help="base learning rate")] = None,
    image_size: Annotated[int | None, typer.Option(help="input side; smaller than the crop resizes it")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    processes: Annotated[int | None, typer.Option(help="processes for torchrun (default: one per GPU, or 1)")] = None,
    settings: Annotated[
        list[str] | None, typer.Option("--set", help="any other TrainConfig field, key=value (repeatable)")
    ] = None,
    promote_it: Annotated[bool, typer.Option("--promote", help="make the published model production")] = False,
    as_json: JsonOption = False,
) -> None:
    """Train a model with torchrun, evaluate its best epoch on val and test, publish it under models/."""
    from pydantic import ValidationError

    from galaxy_models.checkpoints import CheckpointError
    from galaxy_models.evaluation import table_v
    from galaxy_models.model_store import PromotionConflict, promote, publish_run
    from galaxy_models.storage import StorageError, open_store
    from galaxy_models.training import TrainConfig, evaluate_run, launch

    given = {
        "preset": preset, "store": store, "dataset": dataset, "model": model, "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "image_size": image_size, "seed": seed, "processes": processes,
    }  # fmt: skip
    try:
        config = TrainConfig.model_validate(
            {**{k: v for k, v in given.items() if v is not None}, **_parse_settings(settings or [])}
        )
        run = launch(config, log=(lambda _: None) if as_json else typer.echo)
        metrics = evaluate_run(run, workers=config.workers, progress=not as_json)
        card = publish_run(open_store(config.store), run, metrics)
        if promote_it:
            promote(open_store(config.store), card.name, card.version)
    except ValidationError as err:
        raise _fail(str(err)) from err
    except (ValueError, RuntimeError, StorageError, CheckpointError, OSError, PromotionConflict) as err:
        raise _fail(str(err)) from err
    location = open_store(config.store).url(f"models/{card.name}/{card.version}/card.json")
    if as_json:
        summary = {
            "name": card.name, "version": card.version, "card": location, "best_epoch": card.best_epoch,
            "promoted": promote_it,
            "training_images_per_second": card.training_images_per_second,
            "metrics": {split: m.model_dump() for split, m in card.metrics.items()},
        }  # fmt: skip
        typer.echo(json.dumps(summary))
        return
    for split, m in card.metrics.items():
        typer.echo(f"\n{split} ({m.samples} images):\n" + table_v({card.architecture: m}))
    typer.echo(f"\npublished {card.name}/{card.version}: {location}")
    if promote_it:
        typer.echo(f"{card.name}: production is now {card.version}")
    else:
        typer.echo(f"promote it with: galaxy-pipeline models promote {card.name} {card.version} --store {store}")


@models_app.command("versions")
def models_versions(
    name: Annotated[str, typer.Argument(help="model name under models/")],
    store: Annotated[str, typer.Option(help="store URI")],
    as_json: JsonOption = False,
) -> None:
    """Published versions of a model with their test scores; * marks production."""
    from galaxy_models.model_store import list_versions, production_version, read_card
    from galaxy_models.storage import StorageError, open_store

    try:
        target = open_store(store)
        cards = [read_card(target, name, v) for v in list_versions(target, name)]
        production = production_version(target, name)
    except (ValueError, StorageError, OSError) as err:
        raise _fail(str(err)) from err
    if as_json:
        typer.echo(json.dumps({"production": production, "versions": [c.model_dump(mode="json") for c in cards]}))
        return
    if not cards:
        raise _fail(f"no published versions of {name!r} in {target.uri}")
    rows = []
    for card in cards:
        score = card.metrics.get("test") or next(iter(card.metrics.values()))
        mark = "*" if card.version == production else ""
        rows.append(
            [f"{mark}{card.version}", card.architecture, card.created_at.strftime("%Y-%m-%d %H:%M"),
             f"{100 * score.accuracy:.2f}%", f"{100 * score.f1:.2f}%"]
        )  # fmt: skip
    typer.echo(_table(["version", "architecture", "created (UTC)", "test accuracy", "test macro-F1"], rows))


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="model name under models/")],
    version: Annotated[str, typer.Argument(help="published version to serve")],
    store: Annotated[str, typer.Option(help="store URI")],
) -> None:
    """Make a published version the production model (a conditional write: concurrent promotions
    cannot both land)."""
    from galaxy_models.model_store import PromotionConflict, promote
    from galaxy_models.storage import StorageError, open_store

    try:
        production = promote(open_store(store), name, version)
    except (ValueError, StorageError, OSError, PromotionConflict) as err:
        raise _fail(str(err)) from err
    before = f" (was {production.previous})" if production.previous else ""
    typer.echo(f"{name}: production is now {version}{before}")


@app.command()
def classify(
    store: Annotated[str, typer.Option(help="store with incoming/<batch_id>/ and models/")],
    model: Annotated[str, typer.Option(help="NAME or NAME@VERSION (default version: production)")] = "cs_resnet50",
    batch: Annotated[
        list[str] | None, typer.Option(help="batch id (repeatable; default: every batch without a catalog)")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 64,
    workers: Annotated[int, typer.Option(help="image reading and decoding threads")] = 4,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    engine: Annotated[str, typer.Option(help="auto (openvino on a CPU where installed), torch or openvino")] = "auto",
    as_json: JsonOption = False,
) -> None:
    """Classify survey batches into catalogs/<batch_id>/<model_version>/ (Parquet parts + manifest)."""
    from pydantic import ValidationError

    from galaxy_models.checkpoints import CheckpointError
    from galaxy_models.classify import ClassifyConfig, classify_batch, pending_batches, resolve_card
    from galaxy_models.storage import StorageError, open_store

    try:
        config = ClassifyConfig(
            store=store, model=model, batches=batch, batch_size=batch_size, workers=workers, device=device,
            engine=engine,
        )  # fmt: skip
        target = open_store(store)
        card = resolve_card(target, config)
        batches = config.batches if config.batches is not None else pending_batches(target, card.version)
        results = [classify_batch(config, b, progress=not as_json) for b in batches]
    except ValidationError as err:
        raise _fail(str(err)) from err
    except (ValueError, StorageError, CheckpointError, OSError) as err:
        raise _fail(str(err)) from err
    summary = {
        "model": card.name, "version": card.version,
        "batches": {m.batch_id: {"rows": m.rows, "flags": m.flags, "classes": m.classes, "committed": wrote}
                    for m, wrote in results},
    }  # fmt: skip
    if as_json:
        typer.echo(json.dumps(summary))
        return
    if not results:
        typer.echo(f"nothing to classify: every batch has a catalog for {card.name}/{card.version}")
        return
    rows = [
        [m.batch_id, str(m.rows), *(str(m.flags.get(f, 0)) for f in ("ok", "low_confidence", "unreadable")),
         "written" if wrote else "already there"]
        for m, wrote in results
    ]  # fmt: skip
    typer.echo(_table(["batch", "rows", "ok", "low confidence", "unreadable", "catalog"], rows))
    typer.echo(f"model {card.name}/{card.version}; catalogs under {target.uri.rstrip('/')}/catalogs/")


@catalog_app.command("export")
def catalog_export(
    store: Annotated[str, typer.Option(help="store with catalogs/ and models/")],
    format: Annotated[str, typer.Option(help="csv or parquet")] = "parquet",
    out: Annotated[str | None, typer.Option(help="local path or s3:// URI (default: exports/ in the store)")] = None,
    model: Annotated[str, typer.Option(help="NAME or NAME@VERSION (default version: production)")] = "cs_resnet50",
    as_json: JsonOption = False,
) -> None:
    """Merge every batch's catalog for one model version into one CSV or Parquet file (+ a PNG)."""
    from pydantic import ValidationError

    from galaxy_models.export import ExportConfig, export_catalogs
    from galaxy_models.storage import StorageError

    try:
        summary = export_catalogs(ExportConfig(store=store, format=format, out=out, model=model))
    except ValidationError as err:
        raise _fail(str(err)) from err
    except (ValueError, StorageError, OSError) as err:
        raise _fail(str(err)) from err
    if as_json:
        typer.echo(summary.model_dump_json())
        return
    rows = [[label, str(n)] for label, n in summary.classes.items()]
    rows += [[f"flag {flag}", str(n)] for flag, n in summary.flags.items()]
    typer.echo(_table(["class", "galaxies"], rows))
    typer.echo(f"{summary.rows} rows from {len(summary.batches)} batch(es) -> {summary.out} (figure: {summary.figure})")


if __name__ == "__main__":
    app()
