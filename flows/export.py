"""export-flow: the catalogs of one model version -> one CSV, Parquet, FITS or VOTable file, a summary and a figure,
then the catalog report (one HTML page) beside the default exports in the store."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.steps import PrefectSteps
from galaxy_models.catalogs.export import ExportConfig, export_catalogs
from galaxy_models.catalogs.report import ReportConfig, write_report
from galaxy_models.inference.explain import explain_keys
from galaxy_models.reports import artifact_key, export_markdown, export_rows, report_markdown


@flow(name="export-flow", log_prints=True)
def export_flow(config: ExportConfig = ExportConfig(), maps: bool = True) -> dict[str, Any]:  # noqa: B008
    """``maps``: the report shows where the model looked for its gallery galaxies (loads the model)."""
    steps = PrefectSteps()
    summary = steps.run("export", export_catalogs, config)
    exported = f"{summary.model_name}@{summary.model_version}"  # the version exported, even if production moves
    report_config = ReportConfig(store=config.store, model=exported, explain=maps)
    report = steps.run("report", write_report, report_config, explainer=explain_keys if maps else None)
    key = artifact_key("export", summary.model_name)
    create_table_artifact(
        table=export_rows(summary), key=f"{key}-summary", description=f"{summary.rows} rows in {summary.out}"
    )
    create_markdown_artifact(markdown=export_markdown(summary) + report_markdown(report), key=f"{key}-report")
    print(f"wrote {summary.rows} rows to {summary.out}; report: {report.out} ({report.seconds:.1f} s)")
    return {**summary.model_dump(), "report": report.out}
