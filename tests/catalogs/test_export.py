"""Export: every committed catalog of one model version -> one CSV or Parquet file and a figure."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from badimages import CORPUS_BATCH as BATCH
from badimages import corpus
from typer.testing import CliRunner

from galaxy_models.catalogs.export import ExportConfig, export_catalogs
from galaxy_models.cli import app
from galaxy_models.inference.classify import classify_batch
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.storage import LocalStore

runner = CliRunner()


def _config(root: Path) -> ClassifyConfig:
    return ClassifyConfig(store=str(root), model="cs_resnet_tiny", workers=2, part_size=16)


def test_export_csv_and_parquet(root: Path, tmp_path: Path) -> None:
    store = LocalStore(root)
    for batch in (BATCH, "synthetic-batch-002"):
        classify_batch(_config(root), batch, progress=False)
    parquet = export_catalogs(ExportConfig(store=str(root), model="cs_resnet_tiny", out=str(tmp_path / "all.parquet")))
    assert parquet.batches == [BATCH, "synthetic-batch-002"]
    table = pq.read_table(tmp_path / "all.parquet")
    assert table.num_rows == parquet.rows == 60 + len(corpus())
    assert sum(parquet.classes.values()) + parquet.flags["unreadable"] == parquet.rows
    assert Path(parquet.figure).read_bytes().startswith(b"\x89PNG")
    result = runner.invoke(
        app, ["catalog", "export", "--store", str(root), "--model", "cs_resnet_tiny", "--format", "csv",
              "--out", str(tmp_path / "all.csv"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"] == table.num_rows
    csv = pacsv.read_csv(io.BytesIO((tmp_path / "all.csv").read_bytes()))
    assert csv.num_rows == table.num_rows
    assert sorted(csv.column("source_key").to_pylist()) == sorted(table.column("source_key").to_pylist())
    bad = runner.invoke(
        app, ["catalog", "export", "--store", str(root), "--model", "cs_resnet_tiny", "--format", "xls"]
    )
    assert bad.exit_code == 2
    assert "unknown export format 'xls'" in bad.output
    assert store.exists("catalogs/synthetic-batch-002/" + parquet.model_version + "/_manifest.json")


def test_the_format_follows_the_extension_unless_given() -> None:
    assert ExportConfig(out="x.csv").output_format == "csv"
    assert ExportConfig(out="s3://b/x.parquet").output_format == "parquet"
    assert ExportConfig(out="x.dat").output_format == "parquet"
    assert ExportConfig(out="x.dat", format="csv").output_format == "csv"
    assert ExportConfig().output_format == "parquet"
    with pytest.raises(ValueError, match="format 'parquet' contradicts out 'x.csv'"):
        ExportConfig(out="x.csv", format="parquet")


def test_exporting_twice_writes_nothing_the_second_time(root: Path, tmp_path: Path) -> None:
    classify_batch(_config(root), "synthetic-batch-002", progress=False)
    out = tmp_path / "exports"
    config = ExportConfig(store=str(root), model="cs_resnet_tiny", out=str(out / "all.parquet"))
    first = export_catalogs(config)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert set(stamps) == {"all.parquet", "all.parquet.png"}
    second = export_catalogs(config)
    assert second == first
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing rewritten
