"""The galaxy-pipeline command line: labels summarize and synth (models list is in test_models)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from galaxy_models.cli import app
from galaxy_models.storage import S3Config, S3Store

runner = CliRunner()


def test_labels_summarize_real_gz2_json(gz2_dir: Path) -> None:
    result = runner.invoke(
        app, ["labels", "summarize", str(gz2_dir / "labelled" / "training_solutions_rev1.csv"), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "counts": {"0": 1779, "1": 1703, "2": 116, "3": 807, "4": 1643},
        "unlabelled": 6869,
        "total": 12917,
    }


def test_labels_summarize_table(gz2_dir: Path) -> None:
    result = runner.invoke(app, ["labels", "summarize", str(gz2_dir / "labelled" / "training_solutions_rev1.csv")])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert any(line.startswith("2 cigar") and " 116 " in line for line in lines)
    assert any(line.startswith("total") and "12917" in line for line in lines)


def test_labels_summarize_from_s3(
    s3_bucket: str, s3_config: S3Config, gz2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    S3Store(s3_bucket, "", s3_config).write_bytes(
        "raw/gz2/labels.csv", (gz2_dir / "labelled" / "training_solutions_rev1.csv").read_bytes()
    )
    # boto3 picks the endpoint and credentials up from the environment, as in production.
    monkeypatch.setenv("AWS_ENDPOINT_URL", str(s3_config.endpoint_url))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    result = runner.invoke(app, ["labels", "summarize", f"s3://{s3_bucket}/raw/gz2/labels.csv", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["counts"]["3"] == 807


def test_labels_summarize_bad_table_names_file_and_row(tmp_path: Path, gz2_dir: Path) -> None:
    frame = pd.read_csv(gz2_dir / "labelled" / "training_solutions_rev1.csv", nrows=20)
    frame.loc[5, "Class2.2"] = float("nan")
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    result = runner.invoke(app, ["labels", "summarize", str(path)])
    assert result.exit_code == 2
    assert "bad.csv" in result.output
    assert "Class2.2" in result.output
    assert "row 5" in result.output


def test_labels_summarize_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["labels", "summarize", str(tmp_path / "nope.csv")])
    assert result.exit_code == 2
    assert "nope.csv" in result.output


def test_synth_json_then_summarize(tmp_path: Path) -> None:
    store = tmp_path / "data"
    result = runner.invoke(
        app,
        ["synth", "--store", str(store), "--n", "20", "--incoming-batches", "1", "--batch-size", "5",
         "--seed", "3", "--workers", "1", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["images_written"] == 25
    assert summary["incoming_batches"] == {"synthetic-batch-001": 5}
    counted = runner.invoke(app, ["labels", "summarize", str(store / "raw/synthetic/labels.csv"), "--json"])
    assert json.loads(counted.output)["total"] == 20
    assert sum(json.loads(counted.output)["counts"].values()) == sum(summary["label_counts"].values())


def test_synth_rejects_bad_options(tmp_path: Path) -> None:
    result = runner.invoke(app, ["synth", "--store", str(tmp_path), "--n", "5", "--survey", "a/b"])
    assert result.exit_code == 2
    assert "survey" in result.output


def test_console_script_is_installed() -> None:
    exe = shutil.which("galaxy-pipeline") or str(Path(__file__).parents[2] / ".venv/bin/galaxy-pipeline")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    for command in ("labels", "models", "synth"):
        assert command in result.stdout


def test_train_promote_and_versions(synthetic_dataset: Path, tmp_path: Path) -> None:
    """`galaxy-pipeline train` through torchrun, then the registry commands, on a copy of the
    synthetic store; a second identical train publishes nothing new."""
    root = tmp_path / "store"
    shutil.copytree(synthetic_dataset, root)
    args = ["train", "--store", str(root), "--preset", "smoke", "--epochs", "1", "--set", "workers=0", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["name"] == "cs_resnet_tiny"
    assert set(summary["metrics"]) == {"val", "test"}
    assert (root / "models" / "cs_resnet_tiny" / summary["version"] / "model.pt").is_file()
    again = json.loads(runner.invoke(app, args).output.strip().splitlines()[-1])
    assert again["version"] == summary["version"]
    promote = ["models", "promote", "cs_resnet_tiny", summary["version"], "--store", str(root)]
    refused = runner.invoke(app, [*promote, "--min-val-f1", "1"])
    assert refused.exit_code == 2
    assert "is below the floor 1.000" in refused.stderr
    assert "--force" in refused.stderr
    promoted = runner.invoke(app, [*promote, "--min-val-f1", "0"])
    assert promoted.exit_code == 0, promoted.output
    assert f"production is now {summary['version']}" in promoted.output
    listing = runner.invoke(app, ["models", "versions", "cs_resnet_tiny", "--store", str(root)])
    assert listing.exit_code == 0, listing.output
    assert f"*{summary['version']}" in listing.output
    missing = runner.invoke(app, ["models", "promote", "cs_resnet_tiny", "nope", "--store", str(root)])
    assert missing.exit_code == 2
    assert "cs_resnet_tiny/nope is not in" in missing.output


def test_train_names_a_bad_setting(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--store", str(tmp_path), "--set", "optimizer=lion"])
    assert result.exit_code == 2
    assert "optimizer" in result.output
    (tmp_path / "notes.txt").write_text("a store without datasets")
    result = runner.invoke(app, ["train", "--store", str(tmp_path), "--preset", "smoke"])
    assert result.exit_code == 2
    assert "no complete version of dataset 'synthetic'" in result.output
