"""The ``report`` command: one self-contained HTML page about a model version's catalogs."""

from __future__ import annotations

from typing import Annotated

import typer

from galaxy_models.cli.app import JsonOption, StoreOption, app, existing_store
from galaxy_models.cli.catalogs import ModelOption


@app.command()
def report(
    store: StoreOption,
    model: ModelOption = "cs_resnet50",
    out: Annotated[
        str | None,
        typer.Option(help="local .html path or s3:// URI (default: exports/<name>-<version>-report.html in the store)"),
    ] = None,
    explain: Annotated[
        bool, typer.Option("--explain/--no-explain", help="embed where the model looked for each gallery galaxy")
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Write the catalog report: class shares, confidence, galleries, model card, drift (one HTML file)."""
    from galaxy_models.catalogs.report import ReportConfig, write_report

    config = ReportConfig(store=store, model=model, out=out, explain=explain)
    existing_store(store)
    explainer = None
    if explain:  # the maps need torch and the model
        from galaxy_models.inference.explain import explain_keys

        explainer = explain_keys
    summary = write_report(config, explainer=explainer)
    if as_json:
        typer.echo(summary.model_dump_json())
        return
    typer.echo(
        f"report on {summary.model_name}/{summary.model_version}: {summary.rows} rows from {len(summary.batches)} "
        f"batch(es), {sum(summary.galleries.values())} gallery tiles, {summary.bytes / 1e6:.1f} MB "
        f"-> {summary.out} ({summary.seconds:.1f} s)"
    )
