"""Export: every committed catalog of one model version -> one CSV, Parquet, FITS or VOTable file and a
figure beside it."""

from __future__ import annotations

import io
import json
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.io.votable import parse_single_table
from astropy.table import Table
from badimages import CORPUS_BATCH as BATCH
from badimages import corpus
from PIL import Image
from typer.testing import CliRunner

from galaxy_models.catalogs.export import ExportConfig, distribution_figure, export_catalogs, figure_path
from galaxy_models.catalogs.formats import Provenance, encode
from galaxy_models.catalogs.schema import PROBABILITY_COLUMNS, catalog_rows
from galaxy_models.cli import app
from galaxy_models.inference.classify import classify_batch
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.registry.cards import resolve
from galaxy_models.storage import LocalStore

runner = CliRunner()
PROVENANCE_KEYS = ("ORIGIN", "PIPEVER", "MODEL", "MODELVER", "TEMPCAL", "NROWS", "NBATCH")


def _config(root: Path) -> ClassifyConfig:
    return ClassifyConfig(store=str(root), model="cs_resnet_tiny", workers=2, part_size=16)


def test_export_csv_and_parquet(root: Path, tmp_path: Path) -> None:
    store = LocalStore(root)
    for batch in (BATCH, "synthetic-batch-002"):
        classify_batch(_config(root), batch, progress=False)
    parquet = export_catalogs(ExportConfig(store=str(root), model="cs_resnet_tiny", out=str(tmp_path / "all.parquet")))
    assert parquet.batches == [BATCH, "synthetic-batch-002"]
    assert parquet.left_out == []
    table = pq.read_table(tmp_path / "all.parquet")
    assert table.num_rows == parquet.rows == 60 + len(corpus())
    assert sum(parquet.classes.values()) + parquet.flags["unreadable"] == parquet.rows
    assert parquet.figure == str(tmp_path / "all.png")
    assert Image.open(parquet.figure).size[0] > 0  # a PNG that decodes
    result = runner.invoke(
        app, ["catalog", "export", "--store", str(root), "--model", "cs_resnet_tiny", "--format", "csv",
              "--out", str(tmp_path / "all.csv"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["rows"] == table.num_rows
    assert summary["left_out"] == [c for c in table.column_names if pa.types.is_nested(table.schema.field(c).type)]
    csv = pacsv.read_csv(io.BytesIO((tmp_path / "all.csv").read_bytes()))
    assert csv.num_rows == table.num_rows
    assert csv.column_names == [c for c in table.column_names if c not in summary["left_out"]]
    assert sorted(csv.column("source_key").to_pylist()) == sorted(table.column("source_key").to_pylist())
    bad = runner.invoke(
        app, ["catalog", "export", "--store", str(root), "--model", "cs_resnet_tiny", "--format", "xls"]
    )
    assert bad.exit_code == 2
    assert "unknown export format 'xls'" in bad.output
    assert store.exists("catalogs/synthetic-batch-002/" + parquet.model_version + "/_manifest.json")


def test_fits_and_votable_hold_the_parquet_rows_and_the_provenance(root: Path, tmp_path: Path) -> None:
    for batch in (BATCH, "synthetic-batch-002"):  # BATCH holds the bad images: rows with nulls
        classify_batch(_config(root), batch, progress=False)
    base = {"store": str(root), "model": "cs_resnet_tiny"}
    parquet = pq.read_table(export_catalogs(ExportConfig(**base, out=str(tmp_path / "all.parquet"))).out)
    card = resolve(LocalStore(root), ExportConfig(**base).ref)
    expected = {
        "ORIGIN": "galaxy-pipeline", "MODEL": card.name, "MODELVER": card.version, "NROWS": parquet.num_rows,
        "NBATCH": 2, "TEMPCAL": card.calibration.temperature if card.calibration else 1.0,
    }  # fmt: skip
    assert parquet.column("flag").to_pylist().count("unreadable") > 0
    for name in ("all.fits", "all.fits.gz", "all.vot"):
        summary = export_catalogs(ExportConfig(**base, out=str(tmp_path / name)))
        assert summary.figure == str(tmp_path / "all.png")
        assert summary.left_out == []
        fmt = "votable" if name.endswith(".vot") else "fits"
        _assert_same_rows(Table.read(summary.out, format=fmt), parquet, from_fits=fmt == "fits")
        metadata = _fits_header(summary.out) if fmt == "fits" else _votable_params(summary.out)
        assert set(PROVENANCE_KEYS) <= set(metadata)
        assert {key: metadata[key] for key in expected} == pytest.approx(expected)
    assert (tmp_path / "all.fits.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip


def _fits_header(path: str) -> dict[str, Any]:
    return dict(fits.getheader(path, "CATALOG"))


def _votable_params(path: str) -> dict[str, Any]:
    params = {p.name: p.value for p in parse_single_table(path).params}
    return {key: v.item() if isinstance(v, np.generic) else v for key, v in params.items()}


def _assert_same_rows(got: Table, expected: pa.Table, *, from_fits: bool) -> None:
    """Every column of ``expected`` (a catalog table) read back from FITS or VOTable: the same values,
    the same nulls (masked; an empty string for strings), the units of ra and dec."""
    assert got.colnames == expected.column_names
    assert len(got) == expected.num_rows
    for field in expected.schema:
        column, values = got[field.name], expected.column(field.name).to_pylist()
        mask = np.ma.getmaskarray(column)
        if pa.types.is_string(field.type):
            strings = ["" if v is None else v for v in values]
            if from_fits:
                strings = [s.encode("ascii", "backslashreplace").decode() for s in strings]
            assert np.ma.filled(column, "").tolist() == strings, field.name
        elif pa.types.is_timestamp(field.type):
            assert column.tolist() == [v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") for v in values]
        elif pa.types.is_fixed_size_list(field.type):
            assert mask.all(axis=1).tolist() == [v is None for v in values], field.name
            for row, value in zip(column, values, strict=True):
                if value is not None:
                    np.testing.assert_allclose(np.ma.filled(row, np.nan), np.asarray(value, dtype=float), rtol=1e-6)
        else:
            assert mask.tolist() == [v is None for v in values], field.name
            present = np.asarray([v for v in values if v is not None], dtype=float)
            np.testing.assert_allclose(np.asarray(column[~mask], dtype=float), present, rtol=1e-6, err_msg=field.name)
    for name in ("ra", "dec"):
        if name in got.colnames:
            assert got[name].unit == "deg"
    if not from_fits:  # FITS writes TUNITn = '' for them, which astropy reads as no unit
        assert all(got[p].unit == "" for p in PROBABILITY_COLUMNS)


def _catalog_with_sky_and_embedding() -> pa.Table:
    """Three rows, one unreadable, with ra/dec/objid and a 64-float embedding column (added to the
    schema unless the catalog schema has them already), nulls in each, a non-ASCII reason."""
    p = np.array([[0.1, 0.2, 0.3, 0.2, 0.2], [np.nan] * 5, [0.9, 0.025, 0.025, 0.025, 0.025]])
    keys = ["incoming/b1/g1.jpg", "incoming/b1/g2.jpg", "incoming/b1/g3.jpg"]
    base = catalog_rows("b1", keys, [None, "unreadable: café.jpg", None], p,
                        model_name="m", model_version="v1", low_confidence=0.5)  # fmt: skip
    extra = {
        "ra": pa.array([150.25, None, 10.5], type=pa.float64()),
        "dec": pa.array([2.5, None, -30.125], type=pa.float64()),
        "objid": pa.array(["1237648", None, "1237649"], type=pa.string()),
        "embedding": pa.array([list(np.linspace(-1, 1, 64)), None, [0.5] * 64], type=pa.list_(pa.float32(), 64)),
    }
    fields = [f for f in base.schema if f.name not in extra] + [pa.field(n, a.type) for n, a in extra.items()]
    columns = {f.name: extra[f.name] if f.name in extra else base.column(f.name) for f in fields}
    return pa.table(columns, schema=pa.schema(fields, metadata=base.schema.metadata))


def test_list_and_sky_columns_in_every_format() -> None:
    table = _catalog_with_sky_and_embedding()
    provenance = Provenance("m", "v1", 1.25, table.num_rows, 1, "0.1.0")
    csv = pacsv.read_csv(io.BytesIO(encode(table, "csv", provenance)))
    assert csv.column_names == [c for c in table.column_names if c != "embedding"]
    assert csv.column("ra").to_pylist() == [150.25, None, 10.5]
    for fmt in ("fits", "votable"):
        data = encode(table, fmt, provenance)
        assert encode(table, fmt, provenance) == data  # nothing of "now" in the bytes
        got = Table.read(io.BytesIO(data), format=fmt)
        _assert_same_rows(got, table, from_fits=fmt == "fits")
        assert (got["predicted_class"].dtype.kind, got["predicted_class"].dtype.itemsize) == ("i", 2)
        assert "nats" in got["entropy"].description
    header = fits.open(io.BytesIO(encode(table, "fits", provenance)))["CATALOG"].header
    assert (header["MODEL"], header["MODELVER"], header["TEMPCAL"], header["NBATCH"]) == ("m", "v1", 1.25, 1)
    assert (header["TTYPE4"], header["TFORM4"], header["TNULL4"]) == ("predicted_class", "I", -32768)  # int16
    embedding = table.column_names.index("embedding") + 1
    assert (header[f"TFORM{embedding}"], header[f"TDIM{embedding}"]) == ("64E", "(64)")
    vot = Table.read(io.BytesIO(encode(table, "votable", provenance)), format="votable")
    assert vot["reason"][1] == "unreadable: café.jpg"


def test_the_format_follows_the_extension_unless_given() -> None:
    assert ExportConfig(out="x.csv").output_format == "csv"
    assert ExportConfig(out="s3://b/x.parquet").output_format == "parquet"
    assert ExportConfig(out="x.dat").output_format == "parquet"
    assert ExportConfig(out="x.dat", format="csv").output_format == "csv"
    assert ExportConfig().output_format == "parquet"
    for name in ("x.fits", "x.FIT", "x.fts", "x.fits.gz"):
        assert ExportConfig(out=name).output_format == "fits"
    for name in ("x.vot", "x.votable", "x.xml"):
        assert ExportConfig(out=name).output_format == "votable"
    assert ExportConfig(out="x.fits.gz").gzipped
    assert not ExportConfig(out="x.fits").gzipped
    with pytest.raises(ValueError, match="format 'parquet' contradicts out 'x.csv'"):
        ExportConfig(out="x.csv", format="parquet")
    with pytest.raises(ValueError, match="format 'fits' contradicts out 'x.vot'"):
        ExportConfig(out="x.vot", format="fits")
    with pytest.raises(ValueError, match="out 'x.png' is where the export's figure goes"):
        ExportConfig(out="x.png", format="csv")


def test_the_figure_goes_beside_the_export_without_its_extension() -> None:
    assert figure_path("exports/demo.csv") == "exports/demo.png"
    assert figure_path("/data/x.fits.gz") == "/data/x.png"
    assert figure_path("s3://bucket/exports/x.VOT") == "s3://bucket/exports/x.png"
    assert figure_path("x.dat") == "x.png"
    assert figure_path("run.v2/catalog") == "run.v2/catalog.png"


def test_the_figure_has_integer_counts_and_the_threshold() -> None:
    table = _catalog_with_sky_and_embedding()  # 2 classified rows: matplotlib would tick at 0.25
    figure = distribution_figure(table, "t", thresholds=[0.5, 0.5])
    left, right = figure.axes[:2]
    for axes in (left, right):
        assert all(float(t).is_integer() for t in axes.get_yticks()), axes.get_yticks()
    assert [list(line.get_xdata()) for line in right.get_lines()] == [[0.5, 0.5]]  # drawn once
    legend = right.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == ["low-confidence threshold 0.5"]


def test_exporting_twice_writes_nothing_the_second_time(root: Path, tmp_path: Path) -> None:
    classify_batch(_config(root), "synthetic-batch-002", progress=False)
    out = tmp_path / "exports"
    names = ("all.parquet", "all.csv", "all.fits", "all.fits.gz", "all.vot")  # one figure, all.png, for all
    configs = [ExportConfig(store=str(root), model="cs_resnet_tiny", out=str(out / n)) for n in names]
    first = [export_catalogs(config) for config in configs]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert set(stamps) == {*names, "all.png"}
    second = [export_catalogs(config) for config in configs]
    assert second == first
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing rewritten
