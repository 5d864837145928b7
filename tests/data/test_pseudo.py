"""Pseudo-labels: a catalog's confident predictions label the images whose votes match no Table I
rule; they join the training split only, never override a Table I class, and change the version."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from galaxy_models.data.ingest import IngestConfig, ingest, join_labels_and_images, list_images, load_labels
from galaxy_models.data.pseudo import load_pseudo_labels
from galaxy_models.data.shards import verify_dataset
from galaxy_models.storage import LocalStore
from galaxy_models.synth.survey import SynthConfig, synthesize_survey


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pseudo-survey")
    synthesize_survey(SynthConfig(store=str(root), n=120, seed=11, workers=2), progress=False)
    return root / "raw" / "synthetic"


def _catalog(survey: Path, path: Path) -> tuple[list[str], list[str], list[str]]:
    """A catalog of every image (as classify writes it): a confident class for half the galaxies
    without a Table I class, an unsure one for the rest, and a (wrong) confident class for the
    galaxies that have one. Returns those three groups of IDs."""
    labels = load_labels(str(survey / "labels.csv"))
    joined = join_labels_and_images(labels, list_images(str(survey / "images")))
    unmatched = sorted(k.rsplit("/", 1)[-1].removesuffix(".jpg") for k in joined.without_class)
    confident, unsure = unmatched[::2], unmatched[1::2]
    labelled = sorted(joined.candidates["galaxy_id"])
    rows = [(gid, 2, 0.97) for gid in confident] + [(gid, 4, 0.55) for gid in unsure]
    rows += [(gid, (int(c) + 1) % 5, 0.99) for gid, c in zip(labelled, joined.candidates["label"], strict=True)]
    rows.append(("123456", None, None))  # an unreadable image: no prediction
    pd.DataFrame(rows, columns=["galaxy_id", "predicted_class", "confidence"]).to_csv(path, index=False)
    return confident, unsure, labelled


def _samples(root: Path, shards: list) -> dict[str, dict]:
    found = {}
    for shard in shards:
        with tarfile.open(root / shard.key) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    stream = tar.extractfile(member)
                    assert stream is not None
                    found[member.name.removesuffix(".json")] = json.loads(stream.read())
    return found


def test_confident_pseudo_labels_join_the_training_split_only(survey: Path, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.csv"
    confident, unsure, _ = _catalog(survey, catalog)
    assert len(confident) >= 3, "the synthetic survey should have galaxies without a Table I class"
    common = {"images": str(survey / "images"), "labels": str(survey / "labels.csv"), "samples_per_shard": 40}
    plain = ingest(IngestConfig(store=str(tmp_path / "plain"), **common), progress=False).manifest  # type: ignore[arg-type]
    root = tmp_path / "store"
    config = IngestConfig(store=str(root), pseudo_labels=str(catalog), **common)  # type: ignore[arg-type]
    manifest = ingest(config, progress=False).manifest

    assert manifest.version != plain.version
    assert manifest.pseudo_labels_sha256 is not None
    counts = manifest.counts
    assert counts.adds_up
    assert counts.pseudo_labelled == len(confident)
    assert counts.without_class == plain.counts.without_class - len(confident)
    assert counts.sharded == plain.counts.sharded + len(confident)
    for split in ("val", "test"):  # untouched: the same galaxies with the same classes
        assert manifest.totals[split] == plain.totals[split]
        assert sorted(k for s in manifest.shards if s.split == split for k in s.sample_keys) == sorted(
            k for s in plain.shards if s.split == split for k in s.sample_keys
        )
    assert sum(manifest.totals["train"].values()) == sum(plain.totals["train"].values()) + len(confident)
    assert manifest.totals["train"]["2"] == plain.totals["train"]["2"] + len(confident)

    train = _samples(root, [s for s in manifest.shards if s.split == "train"])
    plain_train = _samples(tmp_path / "plain", [s for s in plain.shards if s.split == "train"])
    assert {g for g, s in train.items() if s.get("label_source") == "pseudo"} == set(confident)
    assert all(train[g]["class"] == 2 for g in confident)
    assert not set(unsure) & set(train)
    for gid, sample in plain_train.items():  # a Table I class is never replaced
        assert train[gid]["class"] == sample["class"]
        assert "label_source" not in train[gid]
    assert verify_dataset(LocalStore(root), manifest) == len(manifest.shards)
    assert not ingest(config, progress=False).created  # the same catalog again: the same version, found


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("galaxy_id,predicted_class\n1,2\n", "lacks column(s) confidence"),
        ("galaxy_id,predicted_class,confidence\n1,2,0.9\n1,3,0.95\n", "duplicate galaxy IDs ['1']"),
        ("galaxy_id,predicted_class,confidence\n1,7,0.9\n", "predicted_class 7 (galaxy 1) is not a class 0-4"),
        ("galaxy_id,predicted_class,confidence\n1,2,1.5\n", "confidence 1.5 of 1 is not in [0, 1]"),
        ("galaxy_id,predicted_class,confidence\n../x,2,0.9\n", "invalid galaxy IDs ['../x']"),
    ],
)
def test_a_bad_catalog_is_refused_naming_the_file(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(table)
    with pytest.raises(ValueError, match="pseudo-label catalog .*catalog.csv") as err:
        load_pseudo_labels(str(path), 0.9)
    assert message in str(err.value)


def test_a_parquet_catalog_reads_like_a_csv(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "galaxy_id": ["10", "11", "12"],
            "predicted_class": np.array([1, 3, None], dtype=object),
            "confidence": [0.95, 0.5, None],
        }
    )
    frame.to_parquet(tmp_path / "c.parquet")
    pseudo = load_pseudo_labels(str(tmp_path / "c.parquet"), 0.9)
    assert pseudo.classes == {"10": 1}
    assert pseudo.rows == 3


def test_the_cli_ingests_with_a_catalog(survey: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from galaxy_models.cli import app

    catalog = tmp_path / "catalog.csv"
    confident, _, _ = _catalog(survey, catalog)
    args = ["ingest", "--images", str(survey / "images"), "--labels", str(survey / "labels.csv")]
    args += ["--store", str(tmp_path / "store"), "--pseudo-labels", str(catalog), "--pseudo-min-confidence", "0.96"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"{len(confident)} of the sharded are pseudo-labelled (training split)" in result.output
