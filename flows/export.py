"""export-flow: the catalogs of one model version -> one CSV or Parquet file, a summary and a figure."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.steps import PrefectSteps
from galaxy_models.catalogs.export import ExportConfig, export_catalogs
from galaxy_models.reports import artifact_key, export_markdown, export_rows


@flow(name="export-flow", log_prints=True)
def export_flow(config: ExportConfig = ExportConfig()) -> dict[str, Any]:  # noqa: B008
    summary = PrefectSteps().run("export", export_catalogs, config)
    key = artifact_key("export", summary.model_name)
    create_table_artifact(
        table=export_rows(summary), key=f"{key}-summary", description=f"{summary.rows} rows in {summary.out}"
    )
    create_markdown_artifact(markdown=export_markdown(summary), key=f"{key}-report")
    print(f"wrote {summary.rows} rows to {summary.out}")
    return summary.model_dump()
