"""A batch's sidecar table (``_objects.csv``/``.parquet``): its coordinates and ids join the catalog;
bad rows are reported with their line and reason and never silently dropped; no sidecar, no change."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from badimages import CORPUS_BATCH as BATCH

from galaxy_models.catalogs.manifest import read_catalog
from galaxy_models.catalogs.objects import ObjectsError, read_objects
from galaxy_models.inference.classify import classify_batch, classify_pending
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.storage import LocalStore

IDS = ["100", "101", "102", "103", "104", "105", "106", "107", "108"]

SIDECAR = """GalaxyID,ra,dec,objid,survey_field
100,150.25,2.5,587722981741363294,a
101,359.999,-89.9,587722981741363295,b
102,360.0,10,1,c
103,12.5,91,2,d
104,abc,10,3,e
105,10.0,,4,f
106,11,12,5,g
106,11,12,6,g
999,1,2,7,h
bad id,1,2,8,i
107,,,9,j
"""


def _store(tmp_path: Path, text: str = SIDECAR, name: str = "_objects.csv") -> LocalStore:
    store = LocalStore(tmp_path)
    store.write_bytes(f"incoming/b1/{name}", text.encode())
    return store


def test_good_rows_join_and_each_bad_row_is_reported_with_its_line(tmp_path: Path) -> None:
    objects = read_objects(_store(tmp_path), "b1", IDS)
    assert objects is not None
    rows = {r["galaxy_id"]: r for r in objects.table.to_pylist()}
    assert rows["100"] == {"galaxy_id": "100", "ra": 150.25, "dec": 2.5, "objid": "587722981741363294"}
    assert rows["101"]["ra"] == pytest.approx(359.999)
    assert rows["107"] == {"galaxy_id": "107", "ra": None, "dec": None, "objid": "9"}  # an id without coordinates
    report = objects.report
    assert report.rows == 11
    assert report.joined == 3
    assert report.columns == ["ra", "dec", "objid"]
    assert report.ignored_columns == ["survey_field"]
    problems = {(p.line, p.galaxy_id): p.reason for p in report.listed_problems}
    assert report.problems == len(problems) == 8
    assert "ra '360.0'" in problems[(3, "102")]
    assert "[0, 360)" in problems[(3, "102")]
    assert "dec '91'" in problems[(4, "103")]
    assert "ra 'abc'" in problems[(5, "104")]
    assert "only ra" in problems[(6, "105")]
    assert "appears 2 times" in problems[(7, "106")]
    assert "appears 2 times" in problems[(8, "106")]
    assert "no image of galaxy 999" in problems[(9, "999")]
    assert "not a valid galaxy id" in problems[(10, "bad id")]
    assert report.images_without_row == len(IDS) - 3  # 102-106 and 108 keep their rows, without coordinates


def test_parquet_sidecar_and_the_refusals(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"GalaxyID": ["100"], "ra": [10.0], "dec": [-5.0]}), buffer)
    store = LocalStore(tmp_path)
    store.write_bytes("incoming/b1/_objects.parquet", buffer.getvalue())
    objects = read_objects(store, "b1", IDS)
    assert objects is not None
    assert objects.table.to_pylist() == [{"galaxy_id": "100", "ra": 10.0, "dec": -5.0, "objid": None}]
    with pytest.raises(ObjectsError, match="changed since the batch's catalog was planned"):
        read_objects(store, "b1", IDS, expected_sha256="0" * 64)
    store.write_bytes("incoming/b1/_objects.csv", b"GalaxyID,ra\n100,1\n")
    with pytest.raises(ObjectsError, match="two sidecar tables"):
        read_objects(store, "b1", IDS)
    with pytest.raises(ObjectsError, match="has no GalaxyID column"):
        read_objects(_store(tmp_path / "x", "id,ra,dec\n100,1,2\n"), "b1", IDS)
    assert read_objects(LocalStore(tmp_path / "none"), "b1", IDS) is None


def test_classify_joins_the_sidecar_and_reports_its_bad_rows(root: Path) -> None:
    store = LocalStore(root)
    ids = sorted(p.stem for p in (root / "incoming" / BATCH).glob("*.jpg") if p.stem.isdigit())
    good, bad, without = ids[0], ids[1], ids[2]
    store.write_bytes(
        f"incoming/{BATCH}/_objects.csv",
        f"GalaxyID,ra,dec,objid\n{good},150.5,-2.25,1237648720693755918\n{bad},400,0,7\n".encode(),
    )
    config = ClassifyConfig(store=str(root), model="cs_resnet_tiny", workers=2, part_size=16)
    manifest, _ = classify_batch(config, BATCH, progress=False)
    rows = {r["galaxy_id"]: r for r in read_catalog(store, manifest).to_pylist()}
    assert len(rows) == manifest.rows  # every image keeps its row
    assert (rows[good]["ra"], rows[good]["dec"], rows[good]["objid"]) == (150.5, -2.25, "1237648720693755918")
    assert rows[bad]["ra"] is None
    assert rows[without]["ra"] is None
    assert manifest.objects is not None
    assert manifest.objects.joined == 1
    (problem,) = manifest.objects.listed_problems
    assert (problem.line, problem.galaxy_id) == (2, bad)
    assert "ra '400'" in problem.reason
    assert any("1 row(s) rejected" in w for w in manifest.warnings)
    other, _ = classify_batch(config, "synthetic-batch-002", progress=False)  # no sidecar: as before, no coordinates
    assert other.objects is None
    assert set(read_catalog(store, other).column("ra").to_pylist()) == {None}


def test_a_sidecar_that_cannot_be_used_holds_back_its_batch_only(root: Path) -> None:
    outside = root.parent / "elsewhere.csv"
    outside.write_text("GalaxyID,ra,dec\n1,2,3\n")
    (root / "incoming" / BATCH / "_objects.csv").symlink_to(outside)  # never followed
    warnings: list[str] = []
    report = classify_pending(ClassifyConfig(store=str(root), model="cs_resnet_tiny", workers=2), log=warnings.append)
    assert [r.manifest.batch_id for r in report.batches] == ["synthetic-batch-002"]
    (skipped,) = report.skipped
    assert skipped.folder == BATCH
    assert "_objects.csv cannot be read" in skipped.reason
    assert any(BATCH in w and "cannot be read" in w for w in warnings)
    assert not (root / "catalogs" / BATCH).exists()  # nothing planned: fixing the sidecar lets it run
    with pytest.raises(ObjectsError, match="cannot be read"):  # named on the command line: an error
        classify_batch(ClassifyConfig(store=str(root), model="cs_resnet_tiny", workers=2), BATCH, progress=False)
