"""The real survey: ../shared/gz2/survey (three unlabelled batches) classified into catalogs by a
model trained on ../shared/gz2/labelled, then exported; prints the class distribution and flags.

The batches are copied into the store's ``incoming/`` (files already there are kept), the model is
the production version of ``--model`` in the store that ``benchmarks/train_real.py`` fills (if none
is promoted, its newest published version is promoted first), and classification is the project's
own ``classify_pending`` (as the CLI and classify-flow), so a re-run finds the catalogs and writes nothing.

    .venv/bin/python benchmarks/classify_survey.py [--model cs_resnet50]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from galaxy_models.catalogs.export import ExportConfig, export_catalogs
from galaxy_models.catalogs.incoming import batch_images
from galaxy_models.domain import CLASS_NAMES, FLAGS
from galaxy_models.inference.classify import classify_pending
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.registry.cards import list_versions, production_version, promote, read_card
from galaxy_models.storage import LocalStore

SURVEY = Path(__file__).resolve().parents[2] / "shared" / "gz2" / "survey"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("benchmarks/out/gz2-store"))
    parser.add_argument("--model", default="cs_resnet50")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/classify_survey.json"))
    args = parser.parse_args()
    batches = sorted(p.name for p in SURVEY.iterdir() if p.is_dir()) if SURVEY.is_dir() else []
    if not batches:
        raise SystemExit(f"the real survey batches are not at {SURVEY}")
    store = LocalStore(args.store)
    if production_version(store, args.model) is None:
        published = list_versions(store, args.model)  # oldest first
        if not published:
            raise SystemExit(f"no published {args.model!r} in {args.store}: run benchmarks/train_real.py")
        promote(store, args.model, published[-1])
    card = read_card(store, args.model)
    for batch in batches:
        for image in sorted((SURVEY / batch).glob("*.jpg")):
            key = f"incoming/{batch}/{image.name}"
            if not store.exists(key):
                store.write_bytes(key, image.read_bytes())
    config = ClassifyConfig(
        store=store.uri, model=f"{card.name}@{card.version}", engine=args.engine, workers=2, batches=tuple(batches)
    )
    started = time.perf_counter()
    report = classify_pending(config)
    for result in report.batches:
        state = "written" if result.committed else "already there"
        print(f"{result.manifest.batch_id}: {result.manifest.rows} rows ({state})")
    manifests = [result.manifest for result in report.batches]
    seconds = time.perf_counter() - started
    summary = export_catalogs(
        ExportConfig(store=store.uri, model=f"{card.name}@{card.version}", format="parquet",
                     out=str(args.store / "exports" / "survey.parquet")),
    )  # fmt: skip
    rows = sum(m.rows for m in manifests)
    images = sum(len(batch_images(store, b)) for b in batches)
    classes = {label: sum(m.classes.get(str(c), 0) for m in manifests) for c, label in enumerate(CLASS_NAMES)}
    flags = {flag: sum(m.flags.get(flag, 0) for m in manifests) for flag in FLAGS}
    print(f"\n{images} survey images in {len(batches)} batches, {rows} catalog rows, model {card.name}/{card.version}")
    print(f"(input {card.preprocessing.input_size} px; {seconds:.0f} s this run)\n")
    print("| class | galaxies | share |\n| --- | ---: | ---: |")
    for label, n in classes.items():
        print(f"| {label} | {n:,} | {100 * n / rows:.1f}% |")
    print("\n| flag | rows | share |\n| --- | ---: | ---: |")
    for flag, n in flags.items():
        print(f"| {flag} | {n:,} | {100 * n / rows:.1f}% |")
    print(f"\nexport: {summary.rows} rows -> {summary.out} (figure: {summary.figure})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"model": f"{card.name}/{card.version}", "images": images, "rows": rows, "seconds": seconds,
             "classes": classes, "flags": flags, "batches": [m.model_dump(mode="json") for m in manifests]},
            indent=2,
        )
    )  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
