"""`make demo`, smaller: synthesize -> ingest -> train -> promote -> classify two new batches -> export."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.skipif(not (BIN / "galaxy-pipeline").exists(), reason=f"galaxy-pipeline is not installed in {BIN}")
def test_make_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    store = tmp_path / "demo-store"
    result = subprocess.run(
        # -o: the install step is this test's own environment, not something to redo
        ["make", "-o", ".venv/.installed", "demo", f"BIN={BIN}", f"STORE={store}", "DEMO_N=300", "DEMO_EPOCHS=2",
         "DEMO_MIN_VAL_F1=0", "DEMO_REPORT_FLAGS=--no-explain"],  # the maps have tests of their own
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "cs_resnet_tiny: production is now" in out
    assert "test (" in out  # accuracy on the synthetic test split
    assert "| Network | Accuracy |" in out
    assert "synthetic-batch-001" in out
    assert "synthetic-batch-002" in out
    csv = pacsv.read_csv(store / "exports" / "demo.csv")
    parquet = pq.read_table(store / "exports" / "demo.parquet")
    assert csv.num_rows == parquet.num_rows == 200  # two batches of 100, one row per image
    ids = sorted(str(g) for g in csv.column("galaxy_id").to_pylist())
    assert sorted(parquet.column("galaxy_id").to_pylist()) == ids
    assert (store / "exports" / "demo.png").is_file()
    assert len(list((store / "catalogs").glob("*/*/_manifest.json"))) == 2
    assert f"Exports and their figure: {store}/exports/demo.csv" in out
    assert f"Catalog report (HTML):    {store}/exports/report.html" in out
    assert (store / "exports" / "report.html").read_text().startswith("<!DOCTYPE html>")
    fits = Table.read(store / "exports" / "demo.fits")
    assert len(fits) == 200
    assert fits.meta["MODEL"] == "cs_resnet_tiny"
    assert len(parquet.column("embedding")[0]) == 64  # classified with --embeddings
