"""Shard loader vs a folder-of-JPEGs loader: training samples/s with the same workers, same run.

Both read the training split, centre-crop to 224, apply the paper's augmentation (rotation, flips,
brightness, contrast, standardisation) and batch. The baseline is the usual ImageFolder recipe:
one 424x424 JPEG per sample decoded with Pillow, torchvision transforms image by image. Ours reads
pre-cropped 224x224 JPEGs from WebDataset shards and keeps every step 8-bit: rotation and mirror
as one OpenCV resampling, brightness and contrast as one 256-entry lookup table, uint8 batches;
the standardisation to float runs in the main process, as a training step would, and is timed.
Both rotate with nearest-neighbour resampling (torchvision's default) and keep their workers
across epochs. Uses the real GZ2 data in ../shared/gz2 when present, else a synthetic survey.

    .venv/bin/python benchmarks/loader.py [--workers 2] [--batch-size 64] [--epochs 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from galaxy_models.data.ingest import IngestConfig, ingest, load_labels
from galaxy_models.data.loader import make_loader
from galaxy_models.data.manifest import DatasetManifest
from galaxy_models.models.preprocessing import Preprocessing, standardize
from galaxy_models.storage import LocalStore
from galaxy_models.synth.survey import SynthConfig, synthesize_survey

GZ2 = Path(__file__).resolve().parents[2] / "shared" / "gz2" / "labelled"


class JpegFolder(Dataset):
    """The ImageFolder-style baseline: path -> Pillow decode -> per-image transforms."""

    def __init__(self, items: list[tuple[Path, int]], mean: list[float], std: list[float]) -> None:
        self.items = items
        self.transform = v2.Compose(
            [
                v2.CenterCrop(224),
                v2.RandomRotation(180, interpolation=v2.InterpolationMode.NEAREST),  # torchvision's default
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(),
                v2.ColorJitter(brightness=0.2, contrast=0.2),
                v2.PILToTensor(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean, std),
            ]
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label


def timed(
    loader: object, epochs: int, to_input: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> dict[str, float]:
    """Samples/s over whole epochs, worker start-up included (a training run pays it too).

    ``to_input`` is whatever the training step still does to a batch before the model sees it; it is
    timed here, in the main process, on the CPU.
    """
    samples, start = 0, time.perf_counter()
    for _ in range(epochs):
        for images, _labels in loader:  # type: ignore[attr-defined]
            x = to_input(images) if to_input else images
            if x.dtype != torch.float32:
                raise TypeError(f"benchmark loaders must deliver model input, got {x.dtype}")
            samples += x.shape[0]
    seconds = time.perf_counter() - start
    return {"samples": samples, "seconds": round(seconds, 2), "samples_per_second": round(samples / seconds, 1)}


def prepare(workdir: Path) -> tuple[LocalStore, DatasetManifest, Path, str]:
    if (GZ2 / "training_solutions_rev1.csv").is_file():
        images, labels, source = (
            GZ2 / "images",
            GZ2 / "training_solutions_rev1.csv",
            "real GZ2 (../shared/gz2/labelled)",
        )
    else:
        synthesize_survey(SynthConfig(store=str(workdir), n=2000, seed=3), progress=False)
        images, labels = workdir / "raw/synthetic/images", workdir / "raw/synthetic/labels.csv"
        source = "synthetic survey (real GZ2 not found)"
    store = LocalStore(workdir / "store")
    config = IngestConfig(images=str(images), labels=str(labels), store=store.uri, name="bench", samples_per_shard=200)
    return store, ingest(config, progress=False).manifest, images, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/loader.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # the workers are the parallelism, as in training
    with tempfile.TemporaryDirectory() as tmp:
        store, manifest, images, source = prepare(Path(tmp))
        train = manifest.split_shards("train")
        table = load_labels(manifest.labels_uri)  # the baseline's labels, for the same samples
        ids = table.votes["GalaxyID"].astype(str).tolist()
        label_of = dict(zip(ids, table.classes.tolist(), strict=True))
        items = [(images / f"{k}.jpg", int(label_of[k])) for s in train for k in s.sample_keys]
        norm = manifest.normalization
        baseline = DataLoader(
            JpegFolder(items, norm.mean, norm.std), batch_size=args.batch_size, shuffle=True,
            num_workers=args.workers, drop_last=True, persistent_workers=args.workers > 0,
        )  # fmt: skip
        preprocessing = Preprocessing.from_manifest(manifest)
        buffer = torch.empty(args.batch_size, 3, 224, 224)  # reused, as a CPU training step can
        names = (
            "baseline: folder of 424x424 JPEGs, PIL + per-image transforms",
            "shards: 224 crops in WebDataset, 8-bit augmentation",
        )
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        # Interleaved rounds, fresh loaders each: this machine's speed drifts by 10% between minutes.
        for _ in range(args.rounds):
            runs[names[0]].append(timed(baseline, args.epochs))
            shard_loader = make_loader(
                store, manifest, "train", batch_size=args.batch_size, train=True, workers=args.workers
            )
            runs[names[1]].append(
                timed(shard_loader, args.epochs, lambda images: standardize(images, preprocessing, out=buffer))
            )
    rows = {name: min(results, key=lambda r: r["seconds"]) for name, results in runs.items()}
    ratios = sorted(
        s["samples_per_second"] / b["samples_per_second"] for b, s in zip(runs[names[0]], runs[names[1]], strict=True)
    )
    speedup = statistics.median(ratios)
    print(f"data: {source}; train split {manifest.split_size('train')} samples; workers {args.workers}; "
          f"batch {args.batch_size}; epochs {args.epochs}; best of {args.rounds} interleaved rounds")  # fmt: skip
    print(f"{'loader':<64}  {'samples':>7}  {'seconds':>7}  {'samples/s':>9}")
    for name, row in rows.items():
        print(f"{name:<64}  {row['samples']:>7}  {row['seconds']:>7}  {row['samples_per_second']:>9}")
    print(f"speed-up per round (same workers, so per core): {', '.join(f'{r:.2f}x' for r in ratios)}; "
          f"median {speedup:.2f}x")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "loader", "data": source, "workers": args.workers, "batch_size": args.batch_size,
        "epochs": args.epochs, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "rounds": runs, "rows": rows, "speedups": [round(r, 3) for r in ratios], "speedup": round(speedup, 2),
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
