"""Writing a synthetic survey into a store: layout, idempotence, workers, learnability."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from galaxy_models.labels import NO_CLASS, assign_classes, read_votes
from galaxy_models.models.architectures import create_model
from galaxy_models.storage import LocalStore, Store
from galaxy_models.synth.survey import SynthConfig, synthesize_survey


class CountingStore(LocalStore):
    """A local store that counts its writes."""

    writes: int = 0

    def write_bytes(self, key: str, data: bytes) -> None:
        self.writes += 1
        super().write_bytes(key, data)


def config(store: Store, **overrides: object) -> SynthConfig:
    options: dict[str, object] = {
        "store": store.uri,
        "n": 30,
        "incoming_batches": 2,
        "batch_size": 6,
        "workers": 1,
    }
    return SynthConfig(**(options | overrides))


def test_layout_in_both_backends(store: Store) -> None:
    report = synthesize_survey(config(store, seed=4), store=store, progress=False)
    images = store.list("raw/synthetic/images/")
    assert len(images) == 30
    assert report.images_written == 42
    votes = read_votes(io.BytesIO(store.read_bytes("raw/synthetic/labels.csv")))
    assert sorted(f"raw/synthetic/images/{gid}.jpg" for gid in votes["GalaxyID"]) == images
    assert set(report.batches) == {"synthetic-batch-001", "synthetic-batch-002"}
    for batch_id in report.batches:
        keys = [k for k in store.list(f"incoming/{batch_id}/") if k.endswith(".jpg")]
        assert len(keys) == 6
        assert store.exists(f"incoming/{batch_id}/survey.json")  # lineage: these images are synthetic
        truth = pd.read_csv(io.BytesIO(store.read_bytes(f"raw/synthetic/truth/{batch_id}.csv")), dtype=str)
        assert sorted(f"incoming/{batch_id}/{gid}.jpg" for gid in truth["GalaxyID"]) == keys
    # the incoming galaxies are new: none of them is in the labelled survey
    incoming_ids = {k.rsplit("/", 1)[1] for k in store.list("incoming/") if k.endswith(".jpg")}
    assert not incoming_ids & {k.rsplit("/", 1)[1] for k in images}
    image = Image.open(io.BytesIO(store.read_bytes(images[0])))
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (424, 424))
    classes = assign_classes(votes)
    assert sum(report.label_counts.values()) == int((classes != NO_CLASS).sum())


def test_rerun_writes_nothing(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    first = synthesize_survey(config(store), store=store, progress=False)
    writes = store.writes
    assert writes == 30 + 12 + 3 + 2 + 1  # images, batch images, survey.json files, truth tables, vote table
    second = synthesize_survey(config(store), store=store, progress=False)
    assert store.writes == writes
    assert second.images_written == 0
    assert second.images_skipped == first.images_written


def test_interrupted_run_is_completed(tmp_path: Path) -> None:
    """A run that stopped part way (here: half the images deleted, no vote table) is finished by
    the next, which renders only what is missing and gives the same files as one clean run."""
    store = LocalStore(tmp_path / "a")
    synthesize_survey(config(store), store=store, progress=False)
    images = store.list("raw/synthetic/images/")
    for key in images[::2]:
        store.delete(key)
    store.delete("raw/synthetic/labels.csv")
    report = synthesize_survey(config(store), store=store, progress=False)
    assert report.images_written == len(images[::2])
    clean = LocalStore(tmp_path / "b")
    synthesize_survey(config(clean), store=clean, progress=False)
    assert store.list() == clean.list()
    assert all(store.read_bytes(k) == clean.read_bytes(k) for k in store.list())


def test_output_does_not_depend_on_workers(tmp_path: Path) -> None:
    one, two = LocalStore(tmp_path / "one"), LocalStore(tmp_path / "two")
    synthesize_survey(config(one, n=24, incoming_batches=0), store=one, progress=False)
    synthesize_survey(config(two, n=24, incoming_batches=0, workers=2), store=two, progress=False)
    assert one.list() == two.list()
    assert all(one.read_bytes(k) == two.read_bytes(k) for k in one.list())


def test_config_errors_name_the_value(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="sum to 1"):
        SynthConfig(store=str(tmp_path), n=5, class_fractions=(0.5, 0.5, 0.5, 0.0, 0.0))
    with pytest.raises(ValidationError, match="survey"):
        SynthConfig(store=str(tmp_path), n=5, survey="../evil")
    with pytest.raises(ValidationError, match="n"):
        SynthConfig(store=str(tmp_path), n=0)


def load_split(store: Store, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    votes = read_votes(io.BytesIO(store.read_bytes("raw/synthetic/labels.csv")))
    classes = assign_classes(votes)
    images, labels = [], []
    for gid, label in zip(votes["GalaxyID"], classes, strict=True):
        if label == NO_CLASS:
            continue
        image = Image.open(io.BytesIO(store.read_bytes(f"raw/synthetic/images/{gid}.jpg")))
        image = image.crop((100, 100, 324, 324)).resize((size, size), Image.Resampling.BILINEAR)
        images.append(np.asarray(image, dtype=np.float32) / 255.0)
        labels.append(int(label))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return (x - x.mean()) / x.std(), torch.tensor(labels)


@pytest.mark.slow
def test_a_small_cnn_learns_the_classes(tmp_path: Path) -> None:
    """The survey must be learnable: resnet_tiny, trained for a few epochs on 320 images,
    classifies 100 new ones far better than chance (20%)."""
    store = LocalStore(tmp_path)
    synthesize_survey(
        config(store, n=420, incoming_batches=0, unlabelled_fraction=0.0, workers=2, seed=21),
        store=store,
        progress=False,
    )
    x, y = load_split(store)
    assert len(y) >= 410  # at least 99% of intended labels survive Table I
    train_x, train_y, test_x, test_y = x[:320], y[:320], x[320:], y[320:]
    torch.manual_seed(0)
    model = create_model("resnet_tiny")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _epoch in range(8):
        model.train()
        order = torch.randperm(len(train_y))
        for batch in order.split(32):
            images = train_x[batch]
            flips = torch.rand(len(batch)) < 0.5
            images[flips] = images[flips].flip(-1)
            loss = torch.nn.functional.cross_entropy(model(images), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    print(f"synthetic test accuracy {accuracy:.3f}")
    assert accuracy > 0.6, f"accuracy {accuracy:.2f} on the synthetic test split"
