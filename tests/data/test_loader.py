"""The shard loader: exactly-once evaluation, equal batches per rank (real gloo DDP), S3, strictness."""

from __future__ import annotations

import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import webdataset as wds
from PIL import Image
from torchvision.transforms.v2 import functional as F

from galaxy_models.data.augmentation import Augmentation, colour_table, orient, recolour
from galaxy_models.data.ingest import IngestConfig, ingest
from galaxy_models.data.loader import make_loader
from galaxy_models.data.manifest import DatasetManifest, read_manifest
from galaxy_models.data.shards import S3Opener, register_s3_scheme, shard_urls
from galaxy_models.models.preprocessing import Preprocessing, standardize
from galaxy_models.storage import LocalStore, S3Config, S3Store
from galaxy_models.synth.survey import SynthConfig, synthesize_survey


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, DatasetManifest]:
    root = tmp_path_factory.mktemp("data")
    synthesize_survey(SynthConfig(store=str(root), n=160, seed=9, workers=2), progress=False)
    raw = root / "raw" / "synthetic"
    store = LocalStore(root)
    config = IngestConfig(
        images=str(raw / "images"), labels=str(raw / "labels.csv"), store=store.uri, name="syn", samples_per_shard=10
    )
    return store, ingest(config, progress=False).manifest


def test_eval_loader_yields_every_sample_once(dataset: tuple[LocalStore, DatasetManifest]) -> None:
    store, manifest = dataset
    labels: list[int] = []
    for images, y in make_loader(store, manifest, "train", batch_size=8, train=False, workers=2):
        assert images.shape[1:] == (3, 224, 224)
        assert images.dtype == torch.uint8
        labels += y.tolist()
    assert len(labels) == manifest.split_size("train")
    assert {str(k): labels.count(k) for k in range(5)} == manifest.totals["train"]


def test_train_loader_gives_full_batches_for_one_epoch(dataset: tuple[LocalStore, DatasetManifest]) -> None:
    store, manifest = dataset
    loader = make_loader(store, manifest, "train", batch_size=16, train=True, workers=2, seed=1)
    batches = list(loader)
    assert len(batches) == manifest.split_size("train") // 16
    assert all(x.shape == (16, 3, 224, 224) for x, _ in batches)
    pixels = standardize(torch.cat([x for x, _ in batches]), Preprocessing.from_manifest(manifest))
    assert abs(float(pixels.mean())) < 0.5  # standardised with the training split's statistics


def test_colour_off_is_identity() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    off = Augmentation(brightness=0.0, contrast=0.0)
    assert colour_table(pixels, off, random.Random(0)) is None
    assert np.array_equal(recolour(pixels, off, random.Random(0)), pixels)


@pytest.mark.parametrize("seed", range(6))
def test_recolour_matches_torchvision_brightness_then_contrast(seed: int) -> None:
    """The lookup table reproduces torchvision's own adjust_brightness then adjust_contrast on a
    GZ2-like image (dark sky, bright core) to within the rounding and the sampled grey mean."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    core = 230.0 * torch.exp(-((yy - 30) ** 2 + (xx - 34) ** 2) / 120.0)
    image = (core + 12.0 + 6.0 * torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(seed))).to(torch.uint8)
    aug = Augmentation(brightness=0.3, contrast=0.3)
    got = torch.from_numpy(recolour(image.permute(1, 2, 0).contiguous().numpy(), aug, random.Random(seed)))
    got = got.permute(2, 0, 1)
    rng = random.Random(seed)
    b, c = rng.uniform(0.7, 1.3), rng.uniform(0.7, 1.3)
    expected = F.adjust_contrast(F.adjust_brightness(image, b), c)
    assert (got.int() - expected.int()).abs().max() <= 2
    assert not torch.equal(got, image)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_orient_rotates_and_flips(interpolation: str) -> None:
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:, :8] = 255  # a bright band on the left edge
    flips_only = Augmentation(rotation=False, interpolation=interpolation)  # type: ignore[arg-type]
    outcomes = {orient(pixels, flips_only, random.Random(s))[:, -4:].mean() > 200 for s in range(20)}
    assert outcomes == {True, False}  # sometimes flipped to the right edge, sometimes not
    rotated = orient(pixels, Augmentation(flips=False, interpolation=interpolation), random.Random(1))  # type: ignore[arg-type]
    assert rotated.shape == pixels.shape
    assert not np.array_equal(rotated, pixels)
    assert pixels[:, :8].min() == 255  # the input is untouched
    still = orient(pixels, Augmentation(rotation=False, flips=False), random.Random(0))
    assert np.array_equal(still, pixels)


def test_standardize() -> None:
    prep = Preprocessing(crop_size=32, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    torch.testing.assert_close(standardize(white, prep), torch.full((1, 3, 2, 2), 2.0))
    buffer = torch.empty(1, 3, 2, 2)
    assert standardize(torch.zeros_like(white), prep, out=buffer) is buffer
    torch.testing.assert_close(buffer, torch.full((1, 3, 2, 2), -2.0))
    with pytest.raises(TypeError, match="uint8"):
        standardize(white.float(), prep)


class _FixedRandom(random.Random):
    """random() and uniform() return fixed values: to check orient's geometry exactly."""

    def __init__(self, draw: float, angle: float) -> None:
        super().__init__(0)
        self.draw, self.angle = draw, angle

    def random(self) -> float:
        return self.draw

    def uniform(self, a: float, b: float) -> float:
        return self.angle


@pytest.mark.parametrize(
    ("mirror", "angle", "same_as"),
    [
        (False, 0.0, []),
        (True, 0.0, [Image.Transpose.FLIP_LEFT_RIGHT]),
        (False, 90.0, [Image.Transpose.ROTATE_270]),  # clockwise; the direction is immaterial
        (False, 180.0, [Image.Transpose.ROTATE_180]),
        (True, 90.0, [Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_270]),
    ],
)
def test_orient_is_pixel_exact(mirror: bool, angle: float, same_as: list[Image.Transpose]) -> None:
    """Rotation and mirror as one affine map land on pixel centres: quarter turns equal Pillow's
    lossless transposes."""
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    got = orient(pixels, Augmentation(), _FixedRandom(0.1 if mirror else 0.9, angle))
    expected = image
    for step in same_as:
        expected = expected.transpose(step)
    assert np.array_equal(got, np.asarray(expected))


@pytest.mark.parametrize(
    ("draws", "expected"),
    [
        ((0.9, 0.9), lambda a: a),
        ((0.1, 0.9), lambda a: a[:, ::-1]),
        ((0.9, 0.1), lambda a: a[::-1]),
        ((0.1, 0.1), lambda a: a[::-1, ::-1]),
    ],
)
def test_flips_without_rotation_are_exact(draws: tuple[float, float], expected: object) -> None:
    """With rotation off, the first draw mirrors left-right and the second flips up-down."""
    pixels = np.random.default_rng(1).integers(0, 256, (24, 16, 3), dtype=np.uint8)
    rng = random.Random(0)
    values = iter(draws)
    rng.random = lambda: next(values)  # type: ignore[method-assign]
    got = orient(pixels, Augmentation(rotation=False), rng)
    assert np.array_equal(got, expected(pixels))  # type: ignore[operator]


def test_truncated_shard_stops_a_strict_loader(dataset: tuple[LocalStore, DatasetManifest], tmp_path: Path) -> None:
    store, manifest = dataset
    copy = LocalStore(tmp_path)
    for key in store.list(f"{manifest.prefix}/"):
        copy.write_bytes(key, store.read_bytes(key))
    shard = manifest.split_shards("val")[0]
    data = copy.read_bytes(shard.key)
    copy.write_bytes(shard.key, data[: len(data) // 2 + 100])
    with pytest.raises(Exception, match=r"(?i)truncat|unexpected end|read"):
        list(make_loader(copy, manifest, "val", batch_size=4, train=False, workers=0))
    # warn_and_continue drops the rest of the damaged shard, as webdataset documents
    lenient = sum(
        len(y) for _, y in make_loader(copy, manifest, "val", batch_size=4, train=False, workers=0, on_error="warn")
    )
    assert lenient < manifest.split_size("val")


def test_loader_and_webdataset_read_from_s3(
    dataset: tuple[LocalStore, DatasetManifest], s3_bucket: str, s3_config: S3Config
) -> None:
    store, manifest = dataset
    remote = S3Store(s3_bucket, "galaxy-data", s3_config)
    for key in store.list(f"{manifest.prefix}/"):
        remote.write_bytes(key, store.read_bytes(key))
    assert read_manifest(remote, "syn") == manifest
    opener = S3Opener(s3_config)
    count = sum(
        len(y) for _, y in make_loader(remote, manifest, "val", batch_size=4, train=False, workers=2, s3_opener=opener)
    )
    assert count == manifest.split_size("val")
    register_s3_scheme(s3_config)
    urls = shard_urls(remote, manifest.split_shards("val"))
    assert urls[0].startswith(f"s3://{s3_bucket}/galaxy-data/datasets/syn/")
    keys = [sample["__key__"] for sample in wds.WebDataset(urls, shardshuffle=False)]
    assert keys == [k for s in manifest.split_shards("val") for k in s.sample_keys]


def _rank_main(rank: int, world: int, init_file: str, root: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        store = LocalStore(root)
        manifest = read_manifest(store, "syn")
        train = make_loader(store, manifest, "train", batch_size=8, train=True, workers=1, seed=3)
        batches = [len(y) for _, y in train]
        seen = sum(len(y) for _, y in make_loader(store, manifest, "train", batch_size=8, train=False, workers=1))
        # every rank must be able to step in lock-step: an all_reduce per batch would hang otherwise
        for _ in batches:
            dist.all_reduce(torch.ones(1))
        Path(out, f"rank{rank}.json").write_text(json.dumps({"batches": batches, "eval_samples": seen}))
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_get_equal_batches_and_disjoint_shards(
    dataset: tuple[LocalStore, DatasetManifest], tmp_path: Path
) -> None:
    store, manifest = dataset
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(store.root), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    expected = manifest.split_size("train") // (8 * 2)
    assert [len(r["batches"]) for r in results] == [expected, expected]
    assert all(b == 8 for r in results for b in r["batches"])
    # evaluation splits the shards between ranks: together they see every sample once
    assert sum(r["eval_samples"] for r in results) == manifest.split_size("train")
    assert all(r["eval_samples"] < manifest.split_size("train") for r in results)


def test_train_loader_applies_orientation(dataset: tuple[LocalStore, DatasetManifest]) -> None:
    """With colour jitter off, training batches with rotation and flips must differ from those
    without: the orientation augmentation really runs."""
    store, manifest = dataset
    still = Augmentation(rotation=False, flips=False, brightness=0.0, contrast=0.0)
    turned = Augmentation(brightness=0.0, contrast=0.0)

    def sorted_pixels(augmentation: Augmentation) -> torch.Tensor:
        loader = make_loader(store, manifest, "val", batch_size=4, train=True, workers=0, augmentation=augmentation)
        batches = [x for x, _ in loader]
        flat = torch.cat(batches).flatten(1).float()
        return flat[flat.sum(1).argsort()]

    unturned = sorted_pixels(still)
    assert torch.isfinite(unturned).all()
    assert not torch.allclose(unturned, sorted_pixels(turned))


def test_workers_start_after_augmenting_in_process(dataset: tuple[LocalStore, DatasetManifest]) -> None:
    """Augmenting in the main process first, then forking DataLoader workers, must not hang them
    (an OpenCV thread pool resized after fork() deadlocks; the workers would wait forever)."""
    store, manifest = dataset
    for workers in (0, 2):
        loader = make_loader(store, manifest, "val", batch_size=4, train=True, workers=workers)
        images, _ = next(iter(loader))
        assert images.shape == (4, 3, 224, 224)


def test_an_epoch_depends_only_on_seed_and_epoch(dataset: tuple[LocalStore, DatasetManifest]) -> None:
    """What resuming relies on: a loader started at epoch 1 gives exactly the batches that a loader
    started at epoch 0 gives on its second pass, workers and all; and epochs differ."""
    store, manifest = dataset

    def epochs(first: int, passes: int) -> list[list[torch.Tensor]]:
        loader = make_loader(store, manifest, "train", batch_size=8, train=True, workers=2, seed=5, epoch=first)
        return [[torch.cat([x.flatten(), y]) for x, y in loader] for _ in range(passes)]

    uninterrupted = epochs(0, 2)
    resumed = epochs(1, 1)
    assert len(resumed[0]) == len(uninterrupted[1]) == manifest.split_size("train") // 8
    assert all(torch.equal(a, b) for a, b in zip(resumed[0], uninterrupted[1], strict=True))
    assert not torch.equal(uninterrupted[0][0], uninterrupted[1][0])


def test_shards_have_plain_ustar_headers(dataset: tuple[LocalStore, DatasetManifest]) -> None:
    """A float mtime once made every member carry a PAX header: twice the headers to parse."""
    store, manifest = dataset
    with tarfile.open(store.root / manifest.split_shards("train")[0].key) as tar:
        members = tar.getmembers()
    assert members
    assert all(m.pax_headers == {} and m.mtime == 0 for m in members)


def test_a_shard_changed_after_ingest_stops_training_and_evaluation(
    dataset: tuple[LocalStore, DatasetManifest], tmp_path: Path
) -> None:
    """One flipped digit in a sample's metadata: the tar and the JPEGs stay valid, so only the sha256
    the loader computes as it reads can tell."""
    store, manifest = dataset
    copy = LocalStore(tmp_path)
    for key in store.list(f"{manifest.prefix}/"):
        copy.write_bytes(key, store.read_bytes(key))
    assert len(list(make_loader(copy, manifest, "train", batch_size=4, train=True, workers=0))) > 0
    for split in ("train", "val"):
        shard = manifest.split_shards(split)[0]
        data = bytearray(copy.read_bytes(shard.key))
        at = data.index(b'"votes"') + data[data.index(b'"votes"') :].index(b"0.")
        data[at] = ord("1") if data[at] != ord("1") else ord("2")
        copy.write_bytes(shard.key, bytes(data))
    with pytest.raises(ValueError, match=r"shard .*val-000000.tar does not match its manifest entry"):
        list(make_loader(copy, manifest, "val", batch_size=4, train=False, workers=0))
    train = make_loader(copy, manifest, "train", batch_size=2, train=True, workers=1, seed=3)
    with pytest.raises(ValueError, match=r"shard .*train-\d+.tar does not match its manifest entry"):
        _passes(train, 3)  # each pass is an epoch; one of them reads the changed shard whole


def _passes(loader: object, epochs: int) -> None:
    for _ in range(epochs):
        list(loader)  # type: ignore[call-overload]
