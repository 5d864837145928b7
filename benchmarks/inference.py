"""Survey inference, JPEG bytes -> catalog rows: the project's path against plain eager PyTorch.

Both classify the same real survey images (../shared/gz2/survey) with the same CS_ResNet50 weights at
224x224 (the paper's input: the centre crop of the 424x424 image, standardised as the model card says):

- baseline: a simple loop, as one would first write it: Pillow opens each file, converts to RGB,
  crops, ``to_tensor`` and ``normalize``; batches go through the eager fp32 model (NCHW) under
  ``no_grad``; softmax (with the card's temperature, as the project applies it); rows appended to a
  list and made a pyarrow table.
- project: ``galaxy_models.classify.classify_images`` (threads read, check and crop the files while
  the engine runs) with the chosen engine; ``auto`` is OpenVINO in the CPU's best precision (bf16 on
  CPUs with AVX512-BF16 or AMX), and ``torch`` (eager fp32 in the project's pipeline) is timed too,
  which separates what the pipeline gains from what the engine gains.

The engine's one-off conversion and compilation is timed apart and reported. Agreement is the share
of images given the same class as the baseline, with the largest probability difference.

    .venv/bin/python benchmarks/inference.py [--n 512] [--batch-size 32] [--rounds 2]
    .venv/bin/python benchmarks/inference.py --untrained     # random weights, when no model is published

The default model is the production (else newest) ``cs_resnet50`` in the store that
``benchmarks/train_real.py`` fills.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from galaxy_models.catalogs.schema import PROBABILITY_COLUMNS
from galaxy_models.inference.classify import classify_images
from galaxy_models.inference.engines import Engine, create_engine
from galaxy_models.inference.probabilities import card_temperature
from galaxy_models.models.architectures import create_model
from galaxy_models.models.preprocessing import Preprocessing
from galaxy_models.registry.cards import ModelCard, list_versions, production_version
from galaxy_models.registry.weights import load_model
from galaxy_models.storage import LocalStore

SURVEY = Path(__file__).resolve().parents[2] / "shared" / "gz2" / "survey"
CLASS_COLUMNS = list(PROBABILITY_COLUMNS)


def baseline(
    paths: list[Path], model: torch.nn.Module, pre: Preprocessing, batch_size: int, temperature: float = 1.0
) -> pa.Table:
    """The plain loop: Pillow, per-image torchvision functional transforms, eager fp32 batches; the
    card's temperature, as the project applies it, so that the probabilities compare."""
    rows: list[dict[str, object]] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        tensors = []
        for path in chunk:
            image = Image.open(io.BytesIO(path.read_bytes())).convert("RGB")
            image = TF.center_crop(image, [pre.crop_size, pre.crop_size])
            tensors.append(TF.normalize(TF.to_tensor(image), pre.mean, pre.std))
        with torch.no_grad():
            p = torch.softmax(model(torch.stack(tensors)) / temperature, dim=1).numpy()
        for path, probs in zip(chunk, p, strict=True):
            row: dict[str, object] = {"galaxy_id": path.stem, "predicted_class": int(probs.argmax())}
            row.update({c: float(v) for c, v in zip(CLASS_COLUMNS, probs, strict=True)})
            row["confidence"] = float(probs.max())
            rows.append(row)
    return pa.Table.from_pylist(rows)


def load(args: argparse.Namespace) -> tuple[torch.nn.Module, ModelCard | None, str]:
    if args.untrained:
        torch.manual_seed(0)
        return create_model("cs_resnet50", num_classes=5).eval(), None, "cs_resnet50, random weights (seed 0)"
    store = LocalStore(args.store)
    published = list_versions(store, args.model)  # oldest first
    version = production_version(store, args.model) or (published[-1] if published else None)
    if version is None:
        raise SystemExit(
            f"no published {args.model!r} in {args.store}: run benchmarks/train_real.py first, or pass --untrained"
        )
    model, card = load_model(store, args.model, version)
    return model, card, f"{card.name}/{card.version} (trained on {card.dataset['name']}/{card.dataset['version']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=SURVEY / "batch-001")
    parser.add_argument("--n", type=int, default=512, help="images per measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="the project's reading and decoding threads")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--store", type=Path, default=Path("benchmarks/out/gz2-store"))
    parser.add_argument("--model", default="cs_resnet50")
    parser.add_argument("--untrained", action="store_true", help="random weights instead of a published model")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/inference.json"))
    args = parser.parse_args()
    paths = sorted(args.images.glob("*.jpg"))[: args.n]
    if len(paths) < args.n:
        raise SystemExit(f"{args.images} has {len(paths)} JPEGs, fewer than --n {args.n}")
    model, card, described = load(args)
    model = model.float().eval()
    # at 224: the stored 224 crop as it is, whatever size the model was trained at
    pre = card.preprocessing if card else Preprocessing(crop_size=224, mean=[0.0] * 3, std=[1.0] * 3)
    pre = pre.model_copy(update={"crop_size": 224, "image_size": None})
    card = (card or ModelCard.model_construct(name="cs_resnet50", version="untrained")).model_copy(
        update={"preprocessing": pre}
    )
    threads = torch.get_num_threads()

    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(tmp)
        keys = [f"incoming/bench/{p.name}" for p in paths]
        for key, path in zip(keys, paths, strict=True):
            store.write_bytes(key, path.read_bytes())
        engines: dict[str, Engine] = {}
        compile_seconds: dict[str, float] = {}
        for name in ("torch", "auto"):
            started = time.perf_counter()
            engines[name] = create_engine(model, torch.device("cpu"), 224, name)  # type: ignore[arg-type]
            compile_seconds[name] = time.perf_counter() - started
        timings: dict[str, list[float]] = {"baseline": [], "torch": [], "auto": []}
        tables: dict[str, pa.Table] = {}
        for _ in range(args.rounds):  # interleaved, so drift hits every path alike
            started = time.perf_counter()
            tables["baseline"] = baseline(paths, model, pre, args.batch_size, card_temperature(card))
            timings["baseline"].append(time.perf_counter() - started)
            for name, engine in engines.items():
                started = time.perf_counter()
                tables[name] = classify_images(
                    store, "bench", keys, engine, card, batch_size=args.batch_size, workers=args.workers
                )
                timings[name].append(time.perf_counter() - started)

    reference = tables["baseline"]
    ref_p = np.stack([reference.column(c).to_numpy() for c in CLASS_COLUMNS], axis=1)
    base_rate = args.n / statistics.median(timings["baseline"])
    results = []
    for name, label in (
        ("baseline", "baseline: PIL loop, eager fp32 PyTorch"),
        ("torch", "project pipeline, engine torch (eager fp32)"),
        ("auto", f"project pipeline, engine {engines['auto'].name} ({engines['auto'].precision})"),
    ):
        table = tables[name]
        p = np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in CLASS_COLUMNS], axis=1)
        rate = args.n / statistics.median(timings[name])
        results.append(
            {
                "path": label, "images": args.n, "seconds": statistics.median(timings[name]),
                "images_per_second": rate, "speedup": rate / base_rate,
                "same_class": float((p.argmax(1) == ref_p.argmax(1)).mean()),
                "max_probability_difference": float(np.abs(p - ref_p).max()),
                "compile_seconds": compile_seconds.get(name, 0.0),
            }
        )  # fmt: skip
    print(f"\n{args.n} survey images from {args.images}, {described}, 224x224, batch {args.batch_size}, "
          f"{threads} torch threads, median of {args.rounds} round(s)\n")  # fmt: skip
    print("| path | images/s | speed-up | same class | max Δp | one-off compile |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['path']} | {r['images_per_second']:.1f} | {r['speedup']:.2f}x | {100 * r['same_class']:.2f}% | "
            f"{r['max_probability_difference']:.4f} | {r['compile_seconds']:.1f} s |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(), "machine": platform.processor() or platform.machine(),
                "cpu_threads": threads, "model": described, "args": {k: str(v) for k, v in vars(args).items()},
                "results": results,
            },
            indent=2,
        )
    )  # fmt: skip
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
