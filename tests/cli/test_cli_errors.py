"""Every user mistake is one line on stderr with exit status 2, saying what is wrong and what to do;
commands that need no model start without torch; --version and GALAXY_STORE."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from clicheck import mistake
from typer.testing import CliRunner

from galaxy_models.cli import app
from galaxy_models.inference.classify import classify_pending
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.registry.cards import list_versions
from galaxy_models.storage import LocalStore

runner = CliRunner()
MODEL = "cs_resnet_tiny"


def test_unknown_architecture_lists_the_known_ones_before_torchrun(synthetic_dataset: Path) -> None:
    mistake(["train", "--store", str(synthetic_dataset), "--model", "resnet99"], "'resnet99'", "cs_resnet50")
    assert not (synthetic_dataset / "runs" / "resnet99").exists()


def test_unknown_model_and_unpromoted_model_are_told_apart(root: Path) -> None:
    for command in (["classify"], ["catalog", "export"]):
        mistake([*command, "--store", str(root), "--model", "nope"], "no model 'nope'", "published models: " + MODEL)
    (root / "models" / MODEL / "production.json").unlink()
    (version,) = list_versions(LocalStore(root), MODEL)
    for command in (["classify"], ["catalog", "export"]):
        line = mistake([*command, "--store", str(root), "--model", MODEL], "has no production version", version)
        assert f"galaxy-pipeline models promote {MODEL} {version} --store " in line


def test_a_store_that_does_not_exist_or_is_empty(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for args in (["models", "versions", MODEL], ["classify"], ["datasets", "verify"], ["catalog", "export"]):
        mistake([*args, "--store", str(missing)], "does not exist", "--store")
    empty = tmp_path / "empty"
    empty.mkdir()
    mistake(["models", "versions", MODEL, "--store", str(empty)], "is empty", "--store")
    assert not missing.exists()


def test_a_batch_that_does_not_exist_or_is_empty(root: Path) -> None:
    base = ["classify", "--store", str(root), "--model", MODEL]
    mistake([*base, "--batch", "batch-999"], "batch 'batch-999' does not exist", "synthetic-batch-002")
    (root / "incoming" / "empty-batch").mkdir()
    (root / "incoming" / "empty-batch" / "notes.txt").write_text("no images here")
    mistake([*base, "--batch", "empty-batch"], "batch 'empty-batch' has no images")
    mistake([*base, "--batch", "../etc"], "invalid batch id '../etc'")


def test_export_out_and_format_mistakes(root: Path, tmp_path: Path) -> None:
    base = ["catalog", "export", "--store", str(root), "--model", MODEL]
    mistake([*base, "--out", str(tmp_path)], "is a directory", f"{tmp_path}/{MODEL}-")
    mistake([*base, "--format", "csv", "--out", str(tmp_path / "x.parquet")], "'csv'", "x.parquet")
    mistake([*base, "--format", "fits", "--out", str(tmp_path / "x.csv")], "'fits'", "x.csv")
    mistake([*base, "--format", "votable", "--out", str(tmp_path / "x.fits.gz")], "'votable'", "x.fits.gz")
    mistake([*base, "--format", "parquet", "--out", str(tmp_path / "x.vot")], "'parquet'", "x.vot")
    mistake([*base, "--format", "xls"], "unknown export format 'xls'", "csv, parquet, fits, votable")
    mistake([*base, "--format", "FITS"], "unknown export format 'FITS'")
    mistake([*base, "--out", str(tmp_path / "x.png")], "x.png", "is where the export's figure goes")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("x.")]  # nothing written


def test_the_out_extension_picks_the_format(root: Path, tmp_path: Path) -> None:
    classify_pending(ClassifyConfig(store=str(root), model=MODEL, batches=("synthetic-batch-002",)), progress=False)
    result = runner.invoke(
        app, ["catalog", "export", "--store", str(root), "--model", MODEL, "--out", str(tmp_path / "c.csv")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c.csv").read_text().startswith('"galaxy_id"')
    for name, start in (("c.fits", b"SIMPLE  ="), ("c.vot", b"<?xml"), ("c.fits.gz", b"\x1f\x8b")):
        result = runner.invoke(
            app, ["catalog", "export", "--store", str(root), "--model", MODEL, "--out", str(tmp_path / name)]
        )
        assert result.exit_code == 0, result.output
        assert (tmp_path / name).read_bytes().startswith(start), name
    assert sorted(p.name for p in tmp_path.glob("c.*")) == ["c.csv", "c.fits", "c.fits.gz", "c.png", "c.vot"]


def test_a_label_file_that_is_not_text(tmp_path: Path) -> None:
    image = tmp_path / "labels.csv"
    image.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)))
    mistake(["labels", "summarize", str(image)], str(image), "not a text CSV file")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("GalaxyID,Class1.1\n1,caf\xe9\n".encode("latin-1"))
    mistake(["labels", "summarize", str(latin)], "not a UTF-8 text CSV file")


def test_unknown_setting_suggests_the_closest_field(tmp_path: Path) -> None:
    mistake(["train", "--store", str(tmp_path), "--set", "epoch=3"], "unknown setting 'epoch'", "did you mean 'epochs'")
    mistake(["train", "--store", str(tmp_path), "--set", "weight_decy=0.1"], "did you mean 'weight_decay'")
    mistake(["train", "--store", str(tmp_path), "--set", "lr"], "--set expects key=value")


def test_invalid_choices_are_listed(tmp_path: Path) -> None:
    store = str(tmp_path)
    mistake(["classify", "--store", store, "--device", "gpu"], "device 'gpu' is not one of 'auto', 'cpu' or 'cuda'")
    mistake(["classify", "--store", store, "--engine", "tensorrt"], "engine 'tensorrt'", "'openvino'")
    mistake(["train", "--store", store, "--set", "optimizer=lion"], "optimizer 'lion'", "'sgd' or 'adamw'")
    mistake(["train", "--store", store, "--preset", "fast"], "unknown preset 'fast'", "paper, smoke")
    mistake(["classify", "--store", store, "--model", "a@"], "nothing after '@'")


def test_usage_mistakes_are_one_line_too(tmp_path: Path) -> None:
    mistake(["clasify"], "No such command 'clasify'")
    mistake(["classify"], "Missing option '--store'")
    mistake(["classify", "--store", str(tmp_path), "--batch-size", "many"], "'--batch-size'", "integer")


def test_version_and_the_store_from_the_environment(root: Path) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("galaxy-pipeline 0.")
    listed = runner.invoke(app, ["models", "versions", MODEL, "--json"], env={"GALAXY_STORE": str(root)})
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output)["production"] in list_versions(LocalStore(root), MODEL)


# --- start-up without torch -------------------------------------------------------------------------

_WATCH = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write('\\nTORCH-LOADED\\n' if 'torch' in sys.modules else '\\nNO-TORCH\\n'))\n"
    "sys.argv[0] = 'galaxy-pipeline'\n"
    "from galaxy_models.cli import main\n"
    "main()\n"
)


def _run_watched(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WATCH, *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, **env}, check=False,
    )  # fmt: skip


def test_commands_that_need_no_model_do_not_load_torch(root: Path, tmp_path: Path) -> None:
    classify_pending(ClassifyConfig(store=str(root), model=MODEL, batches=("synthetic-batch-002",)), progress=False)
    labels = root / "raw" / "synthetic" / "labels.csv"
    commands = [
        ["--help"],
        ["--version"],
        ["labels", "summarize", str(labels)],
        ["models", "versions", MODEL, "--store", str(root)],
        ["models", "promote", MODEL, list_versions(LocalStore(root), MODEL)[0], "--store", str(root)],
        ["datasets", "verify", "--store", str(root), "--name", "synthetic"],
        ["catalog", "export", "--store", str(root), "--model", MODEL, "--out", str(tmp_path / "c.parquet")],
        ["classify", "--store", str(tmp_path / "nowhere")],  # an error
        ["classify", "--store", str(root), "--model", "nope"],  # an error past the store check
        ["classify", "--store", str(root), "--model", MODEL, "--batch", "batch-999"],
    ]
    for args in commands:
        result = _run_watched(args)
        assert result.stderr.strip().endswith("NO-TORCH"), (args, result.stderr[-2000:])
    assert (tmp_path / "c.parquet").is_file()
