"""Test-time augmentation (TTA) on the real GZ2 labelled set: what averaging the 8 dihedral views
gains (accuracy, macro-F1, ECE, Brier) and costs (classify's images/s), with and without the card's
temperature.

Quality: the validation and test galaxies of the dataset version the model was trained on, read as
JPEGs from ``../shared/gz2/labelled/images`` and classified through classify's own path
(``classify_images``: threads read, check and centre-crop, the engine runs, temperature and TTA are
applied), with labels from Table I applied to the vote table. Four ways: one view or 8, each with the
card's temperature (what catalogs carry) and with T = 1 (the raw softmax). The temperature was fitted
on one view of the validation split, so the validation rows are not an independent check of it.

Cost: images/s of ``classify_images`` on the first ``--n`` images of a real survey batch, one view
against 8, median of ``--rounds`` interleaved rounds, the engine compiled beforehand.

    .venv/bin/python benchmarks/tta.py --store benchmarks/out/tta-store --model cs_resnet50 [--engine auto]

The model: a CS_ResNet50 trained on the labelled set (``RESULTS.md`` gives the command).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from galaxy_models.calibration import brier_score, expected_calibration_error
from galaxy_models.catalogs.schema import PROBABILITY_COLUMNS
from galaxy_models.data.manifest import read_manifest
from galaxy_models.inference.classify import classify_images
from galaxy_models.inference.engines import Engine, create_engine
from galaxy_models.inference.probabilities import card_temperature
from galaxy_models.labels import assign_classes, read_votes
from galaxy_models.registry.cards import ModelCard, list_versions, production_version
from galaxy_models.registry.weights import load_model
from galaxy_models.storage import LocalStore
from galaxy_models.training.evaluation import compute_metrics

GZ2 = Path(__file__).resolve().parents[2] / "shared" / "gz2"


def split_images(
    store: LocalStore, card: ModelCard, splits: tuple[str, ...]
) -> dict[str, tuple[list[str], np.ndarray]]:
    """Split -> (image file names, Table I classes) of the dataset version the model was trained on."""
    manifest = read_manifest(store, card.dataset["name"], card.dataset["version"])
    votes = read_votes(str(GZ2 / "labelled" / "training_solutions_rev1.csv"))
    classes = dict(zip(votes["GalaxyID"].astype(str), assign_classes(votes).tolist(), strict=True))
    result = {}
    for split in splits:
        ids = [i for shard in manifest.shards if shard.split == split for i in shard.sample_keys]
        result[split] = ([f"{i}.jpg" for i in ids], np.array([classes[i] for i in ids], dtype=np.int64))
    return result


def probabilities(
    images: LocalStore, keys: list[str], engine: Engine, card: ModelCard, tta: bool, args: argparse.Namespace
) -> np.ndarray:
    table = classify_images(
        images, "bench", keys, engine, card, batch_size=args.batch_size, workers=args.workers, tta=tta
    )
    return np.stack([table.column(c).to_numpy() for c in PROBABILITY_COLUMNS], axis=1).astype(np.float64)


def quality(
    images: LocalStore,
    splits: dict[str, tuple[list[str], np.ndarray]],
    engine: Engine,
    card: ModelCard,
    args: argparse.Namespace,
) -> list[dict[str, object]]:
    """Scores per split, view count and temperature."""
    raw = card.model_copy(update={"calibration": None})
    rows: list[dict[str, object]] = []
    for split, (keys, labels) in splits.items():
        for tta in (False, True):
            for calibrated, model_card in ((True, card), (False, raw)):
                p = probabilities(images, keys, engine, model_card, tta, args)
                metrics = compute_metrics(labels, p.argmax(axis=1))  # macro over the classes present, as the card
                rows.append(
                    {
                        "split": split, "views": 8 if tta else 1, "temperature": card_temperature(model_card),
                        "calibrated": calibrated, "images": len(keys), "accuracy": metrics.accuracy,
                        "macro_f1": metrics.f1, "cigar_recall": metrics.per_class_accuracy[2],
                        "ece": expected_calibration_error(p, labels), "brier": brier_score(p, labels),
                    }
                )  # fmt: skip
    return rows


def cost(engine: Engine, card: ModelCard, args: argparse.Namespace) -> list[dict[str, object]]:
    """classify_images' images/s on survey images, one view against 8."""
    survey = LocalStore(args.survey)
    keys = sorted(k for k in survey.list() if k.endswith(".jpg"))[: args.n]
    if len(keys) < args.n:
        raise SystemExit(f"{args.survey} has {len(keys)} JPEGs, fewer than --n {args.n}")
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits both alike
        for tta in (False, True):
            started = time.perf_counter()
            classify_images(
                survey, "bench", keys, engine, card, batch_size=args.batch_size, workers=args.workers, tta=tta
            )
            seconds[tta].append(time.perf_counter() - started)
    return [
        {
            "views": 8 if tta else 1,
            "images": args.n,
            "seconds": statistics.median(s),
            "images_per_second": args.n / statistics.median(s),
        }
        for tta, s in seconds.items()
    ]


def report(
    rows: list[dict[str, object]], rates: list[dict[str, object]], described: str, args: argparse.Namespace
) -> None:
    print(f"\n{described}; engine {args.engine_used}; batch {args.batch_size} ({8 * args.batch_size} views with TTA)\n")
    print("| split | views | probabilities | accuracy | macro-F1 | cigar recall | ECE | Brier |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        kind = f"T = {r['temperature']:.3f}" if r["calibrated"] else "raw (T = 1)"
        cigar = "n/a" if r["cigar_recall"] is None else f"{100 * r['cigar_recall']:.0f}%"  # type: ignore[operator]
        print(
            f"| {r['split']} | {r['views']} | {kind} | {100 * r['accuracy']:.2f}% | {100 * r['macro_f1']:.2f} | "  # type: ignore[operator]
            f"{cigar} | {100 * r['ece']:.2f}% | {r['brier']:.4f} |"  # type: ignore[operator]
        )
    print(f"\nclassify throughput, {args.n} survey images from {args.survey}, median of {args.rounds} rounds\n")
    print("| views | images/s | seconds | relative |")
    print("| ---: | ---: | ---: | ---: |")
    for r in rates:
        relative = r["images_per_second"] / rates[0]["images_per_second"]  # type: ignore[operator]
        print(f"| {r['views']} | {r['images_per_second']:.1f} | {r['seconds']:.2f} | {relative:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("benchmarks/out/tta-store"))
    parser.add_argument("--model", default="cs_resnet50", help="NAME (production, else newest) or NAME@VERSION")
    parser.add_argument("--engine", choices=["auto", "torch", "openvino"], default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="reading and decoding threads")
    parser.add_argument("--survey", type=Path, default=GZ2 / "survey" / "batch-001")
    parser.add_argument("--n", type=int, default=512, help="survey images per throughput measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/tta.json"))
    args = parser.parse_args()
    store = LocalStore(args.store)
    name, _, version = args.model.partition("@")
    published = list_versions(store, name)  # oldest first
    version = version or production_version(store, name) or (published[-1] if published else "")
    if not version:
        raise SystemExit(f"no published {name!r} in {args.store}: train one first (RESULTS.md gives the command)")
    model, card = load_model(store, name, version)
    size, temperature = card.preprocessing.input_size, card_temperature(card)
    described = f"{card.name}/{card.version} ({card.architecture}, {size} px, T = {temperature:.3f})"
    started = time.perf_counter()
    engine = create_engine(model, torch.device("cpu"), card.preprocessing.input_size, args.engine)
    args.engine_used = f"{engine.name} ({engine.precision}), compiled in {time.perf_counter() - started:.1f} s"
    splits = split_images(store, card, ("val", "test"))
    rows = quality(LocalStore(GZ2 / "labelled" / "images"), splits, engine, card, args)
    rates = cost(engine, card, args)
    report(rows, rates, described, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(), "machine": platform.processor() or platform.machine(),
                "cpu_threads": torch.get_num_threads(), "model": described, "engine": args.engine_used,
                "args": {k: str(v) for k, v in vars(args).items()}, "quality": rows, "throughput": rates,
            },
            indent=2,
        )
    )  # fmt: skip
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
