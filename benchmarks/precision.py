"""Reduced precision on the CPU, per model: eager fp32 against OpenVINO fp32, bf16 and int8, on the
real survey, JPEG bytes to catalog rows, in one run.

For each published model named (default: two real-data CS_ResNet50s of the benchmark store that
``benchmarks/train_real.py`` fills), in a scratch store holding the model and its dataset:

1. the precision checks classification runs (``inference.precision``): bf16 and the int8 copy
   against fp32 on the model's validation split, as recorded in its card, and what ``auto`` picks;
2. the int8 copy built as ``galaxy-pipeline models quantize`` builds it (NNCF, calibrated on 300
   training-split images), timed;
3. every image of ``../shared/gz2/survey`` (6,587 JPEGs) classified by ``classify_images`` with each
   engine at the model's own input size; images/s, speed-up over eager fp32 and the share of images
   given eager fp32's class, with the largest probability difference.

    .venv/bin/python benchmarks/precision.py [--models cs_resnet50@cae9bdd0b24dfa63 ...] [--n 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from galaxy_models.catalogs.schema import PROBABILITY_COLUMNS
from galaxy_models.inference.classify import choose_serving_precision, classify_images
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.inference.engines import Engine, OpenVINOEngine, TorchEngine
from galaxy_models.inference.precision import ensure_int8_copy
from galaxy_models.inference.quantization import read_int8_copy
from galaxy_models.registry.cards import ModelCard, read_card
from galaxy_models.registry.weights import load_model
from galaxy_models.storage import LocalStore

SURVEY = Path(__file__).resolve().parents[2] / "shared" / "gz2" / "survey"
DEFAULT_MODELS = ["cs_resnet50@cae9bdd0b24dfa63", "cs_resnet50-logit_adjusted-pretrained@702132926857e56e"]


def scratch_store(source: Path, name: str, version: str, root: Path, size: int | None) -> LocalStore:
    """A store with the model (copied: checks are written into its card) and its dataset (linked).
    ``size``: the side the model is served at, written into the copy's card (None: the card's own)."""
    shutil.copytree(source / "models" / name / version, root / "models" / name / version)
    card = read_card(LocalStore(root), name, version)
    if size is not None:  # the weights at another input size: every precision is served and checked at it
        served = card.preprocessing.model_copy(
            update={"image_size": None if size == card.preprocessing.crop_size else size}
        )
        card_key = root / "models" / name / version / "card.json"
        card_key.write_text(card.model_copy(update={"preprocessing": served}).model_dump_json(indent=2))
    dataset = Path("datasets") / card.dataset["name"] / card.dataset["version"]
    shutil.copytree(source / dataset, root / dataset, copy_function=lambda s, d: Path(d).hardlink_to(s))
    return LocalStore(root)


def forward_inputs(survey: LocalStore, keys: list[str], card: ModelCard, batch: int = 64) -> list[torch.Tensor]:
    """Model inputs of ``keys`` (decoded, cropped, standardised once), for timing the engines alone."""
    from galaxy_models.data.images import crop_image
    from galaxy_models.models.preprocessing import to_model_input

    crops = [np.asarray(crop_image(survey.read_bytes(k), name=k, crop_size=card.preprocessing.crop_size)[0])
             for k in keys]  # fmt: skip
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
    return [
        to_model_input(images[i : i + batch], card.preprocessing, torch.device("cpu"))
        for i in range(0, len(keys), batch)
    ]


def survey_store(root: Path, paths: list[Path]) -> tuple[LocalStore, list[str]]:
    """A store at ``root`` holding the survey JPEGs ``paths`` as one incoming batch, and their keys."""
    survey = LocalStore(root)
    keys = [f"incoming/survey/{p.name}" for p in paths]
    for key, path in zip(keys, paths, strict=True):
        survey.write_bytes(key, path.read_bytes())
    return survey, keys


def forward_rate(engine: Engine, inputs: list[torch.Tensor]) -> float:
    """Images/s of ``engine`` alone over ``inputs`` (preprocessed batches), one pass."""
    started = time.perf_counter()
    with torch.inference_mode():
        for x in inputs:
            engine(x)
    return sum(len(x) for x in inputs) / (time.perf_counter() - started)


def probabilities(table: pa.Table) -> np.ndarray:
    return np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in PROBABILITY_COLUMNS], axis=1)


def measure(args: argparse.Namespace, ref: str, survey: LocalStore, keys: list[str]) -> dict[str, object]:
    name, version = ref.split("@")
    with tempfile.TemporaryDirectory() as tmp:
        store = scratch_store(args.store, name, version, Path(tmp), args.size)
        model, card = load_model(store, name, version)
        size = card.preprocessing.input_size
        started = time.perf_counter()
        int8_check = ensure_int8_copy(store, card, model, calibration_images=args.calibration_images)
        build_seconds = time.perf_counter() - started
        choice = choose_serving_precision(ClassifyConfig(store=str(store.root), model=ref, engine="openvino"), card)
        checks = read_card(store, name, version).precision_checks
        copy = read_int8_copy(store, card)
        assert copy is not None
        engines: dict[str, Engine] = {
            "eager fp32 (torch)": TorchEngine(model, torch.device("cpu"), precision="fp32"),
            "openvino fp32": OpenVINOEngine(model, size, precision="fp32"),
            "openvino bf16": OpenVINOEngine(model, size, precision="bf16"),
            "openvino int8": OpenVINOEngine(copy[0], size, precision="int8", outputs=len(card.class_names)),
        }
        rows: list[dict[str, object]] = []
        reference: np.ndarray | None = None
        base_rate = base_forward = 0.0
        inputs = forward_inputs(survey, keys[: args.forward_images], card)
        for label, engine in engines.items():
            forward = forward_rate(engine, inputs)
            base_forward = base_forward or forward
            started = time.perf_counter()
            table = classify_images(survey, "survey", keys, engine, card, batch_size=args.batch_size, workers=2)
            seconds = time.perf_counter() - started
            p = probabilities(table)
            if reference is None:
                reference, base_rate = p, len(keys) / seconds
            rate = len(keys) / seconds
            rows.append({
                "engine": label, "images": len(keys), "seconds": round(seconds, 2), "images_per_second": rate,
                "speedup": rate / base_rate, "forward_images_per_second": forward,
                "forward_speedup": forward / base_forward,
                "same_class": float((p.argmax(1) == reference.argmax(1)).mean()),
                "differing": int((p.argmax(1) != reference.argmax(1)).sum()),
                "max_probability_difference": float(np.abs(p - reference).max()),
            })  # fmt: skip
            print(f"  {ref} {label}: {rate:.1f} images/s", flush=True)
    return {
        "model": ref, "input_size": size, "val_f1": card.metrics["val"].f1, "int8_build_seconds": build_seconds,
        "checks": {k: c.model_dump(mode="json") for k, c in checks.items()}, "auto": choice.precision,
        "auto_notes": list(choice.notes), "int8_check_passed": int8_check.passed, "engines": rows,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="NAME@VERSION in --store")
    parser.add_argument("--store", type=Path, default=Path("benchmarks/out/gz2-store"))
    parser.add_argument("--n", type=int, default=0, help="survey images (0: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--size", type=int, default=None, help="serve the models at this side (default: their own)")
    parser.add_argument("--forward-images", type=int, default=512, help="images for the engine-only timing")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/precision.json"))
    args = parser.parse_args()
    paths = sorted(SURVEY.glob("batch-*/*.jpg"))
    paths = paths[: args.n] if args.n else paths
    with tempfile.TemporaryDirectory() as tmp:
        survey, keys = survey_store(Path(tmp), paths)
        results = [measure(args, ref, survey, keys) for ref in args.models]
    threads = torch.get_num_threads()
    print(f"\n{len(paths)} real survey images, JPEG bytes to catalog rows, {threads} CPU threads, "
          f"batch {args.batch_size}\n")  # fmt: skip
    print("| model (val macro-F1) | input | engine | JPEG to rows, images/s | speed-up | forward only, images/s "
          "| speed-up | same class as eager fp32 | max Δp |")  # fmt: skip
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        for e in r["engines"]:  # type: ignore[attr-defined]
            print(
                f"| {r['model']} ({r['val_f1']:.3f}) | {r['input_size']} px | {e['engine']} | "
                f"{e['images_per_second']:.1f} | {e['speedup']:.2f}x | {e['forward_images_per_second']:.1f} | "
                f"{e['forward_speedup']:.2f}x | {100 * e['same_class']:.2f}% "
                f"({e['differing']} differ) | {e['max_probability_difference']:.3f} |"
            )
    print("\n| model | check (validation split, against fp32) | agreeing | passed | auto serves |")
    print("| --- | --- | ---: | --- | --- |")
    for r in results:
        for key, c in r["checks"].items():  # type: ignore[attr-defined]
            print(
                f"| {r['model']} | {key} | {c['agreeing']}/{c['images']} | "
                f"{'yes' if c['agreeing'] >= c['threshold'] * c['images'] else 'no'} | {r['auto']} |"
            )
        print(f"\n{r['model']}: int8 copy built in {r['int8_build_seconds']:.1f} s; auto notes: {r['auto_notes']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "date": datetime.now(UTC).isoformat(), "machine": platform.processor() or platform.machine(),
        "cpu_threads": threads, "images": len(paths), "results": results,
    }, indent=2))  # fmt: skip
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
