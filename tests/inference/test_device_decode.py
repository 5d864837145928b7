"""Decoding on the engine's device (``inference.decoding``): the torchvision path, run on the CPU here,
gives the Pillow path's catalog rows exactly, bad files included; what the batch decoder refuses is
decoded one by one, then by Pillow; the reading threads stay a bounded window ahead."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from badimages import corpus, good_rgb, jpeg, png
from PIL import Image

from galaxy_models.data.images import crop_image
from galaxy_models.inference import decoding
from galaxy_models.inference.classify import classify_images
from galaxy_models.inference.decoding import decode_device, decoded_batches, read_ahead
from galaxy_models.inference.engines import TorchEngine
from galaxy_models.registry.weights import load_model
from galaxy_models.storage import LocalStore

BATCH = "device-batch"
CPU = torch.device("cpu")


def _store(tmp_path: Path, trained_store: Path) -> tuple[LocalStore, list[str], int]:
    """A batch of clean survey JPEGs and every kind of bad file; keys (one of them gone) and how many
    of them the device decoder should take."""
    store = LocalStore(tmp_path / "store")
    clean = sorted((trained_store / "incoming" / "synthetic-batch-002").glob("*.jpg"))[:6]
    files = {p.name: p.read_bytes() for p in clean}
    files |= {name: data for name, (data, _) in corpus().items()}
    files |= {
        "progressive.jpg": jpeg(good_rgb(5), progressive=True),
        "rgb.png": png(good_rgb(6)),
        "wide16.png": png(Image.fromarray((np.arange(424 * 424).reshape(424, 424) % 65536).astype(np.uint16))),
        "no_end_marker.jpg": jpeg(good_rgb(7))[:-2],
        "bad name!.jpg": jpeg(good_rgb(8)),
        "quality100.jpg": jpeg(good_rgb(9), quality=100, subsampling=0),
    }
    for name, data in files.items():
        store.write_bytes(f"incoming/{BATCH}/{name}", data)
    keys = sorted(f"incoming/{BATCH}/{name}" for name in files)
    keys.insert(3, f"incoming/{BATCH}/gone.jpg")  # planned, then deleted
    return store, keys, len(clean) + 1


def test_torchvision_decoding_gives_pillow_rows_exactly(
    tmp_path: Path, trained_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, keys, device_jpegs = _store(tmp_path, trained_store)
    model, card = load_model(LocalStore(trained_store), "cs_resnet_tiny")
    engine = TorchEngine(model, CPU)
    decoded: list[int] = []

    def counting(encoded: Any, **options: Any) -> Any:
        decoded.append(len(encoded) if isinstance(encoded, list) else 1)
        return real(encoded, **options)

    real = decoding.decode_jpeg
    monkeypatch.setattr(decoding, "decode_jpeg", counting)

    def rows(decode: Any) -> list[dict[str, Any]]:
        table = classify_images(store, BATCH, keys, engine, card, batch_size=8, workers=2, decode=decode)
        return [{k: v for k, v in row.items() if k != "processed_at"} for row in table.to_pylist()]

    pillow = rows("pillow")
    assert decoded == []
    device = rows("torchvision")
    assert sum(decoded) == device_jpegs  # the clean JPEGs took the device path, nothing else
    assert device == pillow  # every column: ids, flags, reasons, classes, probabilities to the bit
    by_id = {r["galaxy_id"]: r for r in device}
    assert by_id["gone"]["flag"] == "missing"
    assert "not a valid galaxy id" in by_id["bad name!"]["reason"]
    assert "truncated" in by_id["no_end_marker"]["reason"]
    for name in ("cmyk", "grey", "progressive", "rgb", "wide16", "quality100"):
        assert by_id[name]["flag"] in ("ok", "low_confidence"), by_id[name]
    assert sum(r["flag"] == "unreadable" for r in device) == 9  # 7 of the corpus, no end marker, bad name


def test_a_refused_batch_is_decoded_one_by_one_then_by_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path)
    images = {f"{i}.jpg": jpeg(good_rgb(i)) for i in range(4)}
    for name, data in images.items():
        store.write_bytes(f"incoming/b/{name}", data)
    refused, misread = images["1.jpg"], images["2.jpg"]
    calls: list[str] = []
    real = decoding.decode_jpeg

    def flaky(encoded: Any, **options: Any) -> Any:
        if isinstance(encoded, list):
            calls.append(f"batch of {len(encoded)}")
            raise RuntimeError("nvjpeg: unsupported")
        data = encoded.numpy().tobytes()
        calls.append("one")
        if data == refused:
            raise RuntimeError("nvjpeg: unsupported")
        image = real(encoded, **options)
        return image[:, :100] if data == misread else image  # another size than the header says

    pillow: list[str] = []

    def spied_crop(data: bytes, **options: Any) -> Any:
        pillow.append(options["name"])
        return crop_image(data, **options)

    monkeypatch.setattr(decoding, "decode_jpeg", flaky)
    monkeypatch.setattr(decoding, "crop_image", spied_crop)
    keys = [f"incoming/b/{name}" for name in images]
    [batch] = list(decoded_batches(store, keys, 224, batch_size=8, workers=2, max_bytes=1 << 20, device=CPU))
    assert calls == ["batch of 4", "one", "one", "one", "one"]
    assert pillow == ["1.jpg", "2.jpg"]
    for d, data in zip(batch, images.values(), strict=True):
        crop, _ = crop_image(data, name="x.jpg", crop_size=224)
        assert d.reason is None
        assert d.pixels is not None
        assert torch.equal(d.pixels, torch.from_numpy(np.array(crop)).permute(2, 0, 1))


def test_reads_stay_a_bounded_window_ahead() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def read(i: int) -> int:
        with lock:
            started.append(i)
        return i * 10

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = []
        for taken, value in enumerate(read_ahead(pool, read, range(50), ahead=5), start=1):
            assert len(started) <= taken + 5
            results.append(value)
    assert results == [i * 10 for i in range(50)]


@pytest.mark.parametrize(
    ("decode", "engine", "expected"),
    [("auto", "cpu", None), ("auto", "cuda", "cuda"), ("pillow", "cuda", None), ("torchvision", "cpu", "cpu")],
)
def test_decode_device(decode: Any, engine: str, expected: str | None) -> None:
    device = decode_device(decode, torch.device(engine))
    assert (device.type if device is not None else None) == expected


def test_the_torch_engine_compiles_on_a_gpu_only_by_default() -> None:
    model = torch.nn.Linear(2, 2)
    assert not TorchEngine(model, CPU).compiled
    assert TorchEngine(model, CPU, compile=True).compiled
