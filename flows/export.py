"""export-flow: the catalogs of one model version -> one CSV or Parquet file, a summary and a figure."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from galaxy_models.export import ExportConfig, ExportSummary, export_catalogs


@task
def export(config: ExportConfig) -> ExportSummary:
    return export_catalogs(config)


@flow(name="export-flow", log_prints=True)
def export_flow(config: ExportConfig = ExportConfig()) -> dict[str, Any]:  # noqa: B008
    summary = export(config)
    key = f"export-{summary.model_name}".lower().replace("_", "-")
    rows = [{"class": label, "galaxies": n} for label, n in summary.classes.items()]
    rows += [{"class": f"flag: {flag}", "galaxies": n} for flag, n in summary.flags.items()]
    create_table_artifact(table=rows, key=f"{key}-summary", description=f"{summary.rows} rows in {summary.out}")
    create_markdown_artifact(
        markdown=(
            f"# Catalog export: {summary.model_name} {summary.model_version}\n\n"
            f"{summary.rows} galaxies from batches {', '.join(summary.batches)}.\n\n"
            f"- file: {summary.out}\n- class distribution and confidence histogram: {summary.figure}\n"
        ),
        key=f"{key}-report",
    )
    print(f"wrote {summary.rows} rows to {summary.out}")
    return summary.model_dump()
