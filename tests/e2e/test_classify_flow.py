"""classify-flow and export-flow on a temporary Prefect server; the Dask runner (a 2-worker
LocalCluster) gives the same catalog as the default runner."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from galaxy_models.catalogs.export import ExportConfig
from galaxy_models.catalogs.manifest import read_catalog, read_catalog_manifest
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.storage import LocalStore


def _catalogs(root: Path, version: str) -> dict[str, pa.Table]:
    store = LocalStore(root)
    tables = {}
    for batch in ("synthetic-batch-001", "synthetic-batch-002"):
        manifest = read_catalog_manifest(store, batch, version)
        assert manifest is not None
        tables[batch] = read_catalog(store, manifest).drop(["processed_at"]).sort_by("source_key")
    return tables


@pytest.mark.usefixtures("prefect_server")
def test_dask_runner_matches_the_default_runner_and_export_follows(trained_store: Path, tmp_path: Path) -> None:
    from flows.classify import classify_flow
    from flows.export import export_flow

    default_root, dask_root = tmp_path / "default", tmp_path / "dask"
    shutil.copytree(trained_store, default_root)
    shutil.copytree(trained_store, dask_root)
    common = {"model": "cs_resnet_tiny", "part_size": 12, "workers": 2}
    plain = classify_flow(ClassifyConfig.model_validate({"store": str(default_root), **common}))
    dask = classify_flow(
        ClassifyConfig.model_validate({"store": str(dask_root), "runner": "dask", "dask_workers": 2, **common})
    )
    assert plain["batches"].keys() == dask["batches"].keys() == {"synthetic-batch-001", "synthetic-batch-002"}
    version = plain["version"]
    expected, got = _catalogs(default_root, version), _catalogs(dask_root, version)
    for batch, table in expected.items():
        # identical rows; probabilities equal up to float rounding (other thread counts, other sums)
        floats = [n for n in table.column_names if n.startswith("p_") or n in ("confidence", "entropy")]
        assert got[batch].drop(floats).equals(table.drop(floats)), batch
        for name in floats:
            a = got[batch].column(name).to_numpy(zero_copy_only=False)
            b = table.column(name).to_numpy(zero_copy_only=False)
            np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"{batch} {name}")
    assert classify_flow(ClassifyConfig.model_validate({"store": str(default_root), **common}))["batches"] == {}
    out = tmp_path / "catalog.csv"
    config = ExportConfig(store=str(default_root), model="cs_resnet_tiny", format="csv", out=str(out))
    summary = export_flow(config, maps=False)  # the maps have their own tests (tests/catalogs/test_report.py)
    assert summary["rows"] == sum(t.num_rows for t in expected.values())
    assert out.read_text().count("\n") == summary["rows"] + 1
    report = Path(summary["report"])  # the catalog report, beside the default exports in the store
    assert report.parent == default_root / "exports"
    assert report.read_text().startswith("<!DOCTYPE html>")
