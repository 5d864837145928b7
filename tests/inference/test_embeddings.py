"""Embeddings: classify --embeddings stores a 64-number vector per readable galaxy (the PCA fitted on
the training split, kept with the model), and `similar` finds a galaxy's neighbours, itself first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from galaxy_models.catalogs.manifest import read_catalog
from galaxy_models.catalogs.schema import EMBEDDING_SIZE
from galaxy_models.catalogs.similarity import embedded_catalog, nearest, neighbour_agreement
from galaxy_models.cli import app
from galaxy_models.data.manifest import read_manifest
from galaxy_models.inference.classify import classify_batch, classify_pending
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.inference.embeddings import Projection, projection_key
from galaxy_models.registry.cards import read_card
from galaxy_models.storage import LocalStore

runner = CliRunner()


def test_embeddings_have_the_documented_shape_and_similar_finds_the_galaxy_first(root: Path, tmp_path: Path) -> None:
    store = LocalStore(root)
    config = ClassifyConfig(store=str(root), model="cs_resnet_tiny", workers=2, part_size=16, embeddings=True)
    report = classify_pending(config, progress=False, log=lambda _: None)
    card = read_card(store, "cs_resnet_tiny")
    projection = Projection.from_bytes(store.read_bytes(projection_key(card)))
    assert projection.components.shape[0] == EMBEDDING_SIZE
    train = read_manifest(store, card.dataset["name"], card.dataset["version"]).split_size("train")
    assert projection.samples == train  # fitted on the training split
    for result in report.batches:
        assert result.manifest.embeddings
        for row in read_catalog(store, result.manifest).to_pylist():
            if row["flag"] in ("unreadable", "missing"):
                assert row["embedding"] is None
            else:
                assert len(row["embedding"]) == EMBEDDING_SIZE
                assert np.isfinite(row["embedding"]).all()
    catalog = embedded_catalog(store, card.name, card.version)
    assert catalog.vectors.shape == (catalog.rows.num_rows, EMBEDDING_SIZE)
    first = catalog.rows.column("galaxy_id")[5].as_py()
    neighbours = nearest(catalog, first, 12)
    assert len(neighbours) == 12
    assert neighbours[0].galaxy_id == first
    assert neighbours[0].distance == 0.0
    assert [n.distance for n in neighbours[1:]] == sorted(n.distance for n in neighbours[1:])
    agreement = neighbour_agreement(catalog, k=5)
    assert 0.0 <= agreement.overall <= 1.0
    assert agreement.galaxies == catalog.rows.num_rows

    out = tmp_path / "similar.png"
    result = runner.invoke(
        app, ["similar", "--store", str(root), "--model", "cs_resnet_tiny", "--galaxy", first, "--k", "6",
              "--out", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert next(n["galaxy_id"] for n in listed) == first
    assert len(listed) == 6
    assert Image.open(out).size[0] > 300
    unknown = runner.invoke(app, ["similar", "--store", str(root), "--model", "cs_resnet_tiny", "--galaxy", "424242"])
    assert unknown.exit_code == 2
    assert "galaxy '424242' has no embedded row" in unknown.stderr


def test_similar_without_embeddings_says_how_to_get_them(root: Path) -> None:
    config = ClassifyConfig(store=str(root), model="cs_resnet_tiny", workers=2, part_size=16)
    classify_batch(config, "synthetic-batch-002", progress=False)
    result = runner.invoke(app, ["similar", "--store", str(root), "--model", "cs_resnet_tiny", "--galaxy", "1"])
    assert result.exit_code == 2
    assert "classify with --embeddings first" in result.stderr
    zero = runner.invoke(app, ["similar", "--store", str(root), "--galaxy", "1", "--k", "0"])
    assert zero.exit_code == 2
    assert "--k" in zero.stderr
