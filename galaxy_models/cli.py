"""The ``galaxy-pipeline`` command line."""

from __future__ import annotations

import io
import json
import os
from typing import Annotated

import typer

app = typer.Typer(help="Galaxy morphology classification pipeline (GZ2, CS_ResNet50).", no_args_is_help=True)
labels_app = typer.Typer(help="Galaxy Zoo 2 vote tables and Table I labels.", no_args_is_help=True)
models_app = typer.Typer(help="Registered model architectures.", no_args_is_help=True)
app.add_typer(labels_app, name="labels")
app.add_typer(models_app, name="models")

JsonOption = Annotated[bool, typer.Option("--json", help="print machine-readable JSON instead of a table")]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain text table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

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


if __name__ == "__main__":
    app()
