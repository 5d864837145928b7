"""What an astronomer gets for the real survey: embeddings, drift and the catalog report, measured on
the 6,587 unlabelled GZ2 survey galaxies (``../shared/gz2/survey``, three batches).

1. The three batches are copied into the store's ``incoming/`` (once) and classified with
   ``--embeddings`` by a model trained on the labelled set (through ``classify_pending``, the path the
   CLI and classify-flow take).
2. Neighbour agreement: for each galaxy, the share of its k nearest neighbours in embedding space
   (itself excluded) that share its predicted class, averaged per predicted class, against the
   agreement random neighbours would give (the class's share of the survey).
3. Drift: each batch's Jensen-Shannon divergence from the training split's class shares and its
   mean confidence against the validation split's, as recorded in the catalog manifests.
4. The catalog report: the seconds ``write_report`` takes for the whole survey, and its size.

    .venv/bin/python benchmarks/survey_outputs.py --store benchmarks/out/gz2-store \\
        --model cs_resnet50-logit_adjusted-pretrained@62bf0c1498d52cd2
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from galaxy_models.catalogs.manifest import read_catalog_manifest
from galaxy_models.catalogs.similarity import embedded_catalog, neighbour_agreement
from galaxy_models.domain import CLASS_NAMES, ModelRef
from galaxy_models.inference.classify import classify_pending
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.registry.cards import resolve
from galaxy_models.storage import LocalStore

GZ2 = Path(__file__).resolve().parents[2] / "shared" / "gz2"
BATCHES = ("batch-001", "batch-002", "batch-003")


def copy_survey(store: Path) -> int:
    """Copy the survey batches into ``incoming/`` (files already there are kept); returns the images."""
    count = 0
    for batch in BATCHES:
        target = store / "incoming" / batch
        target.mkdir(parents=True, exist_ok=True)
        for image in sorted((GZ2 / "survey" / batch).glob("*.jpg")):
            if not (target / image.name).exists():
                shutil.copyfile(image, target / image.name)
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("benchmarks/out/gz2-store"))
    parser.add_argument("--model", required=True, help="NAME@VERSION of a model trained on the labelled set")
    parser.add_argument("--k", type=int, default=10, help="neighbours per galaxy")
    parser.add_argument("--no-report", dest="report", action="store_false", help="skip timing the report")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/survey_outputs.json"))
    args = parser.parse_args()
    if not (GZ2 / "survey").is_dir():
        raise SystemExit(f"{GZ2 / 'survey'} is missing: the real survey batches are needed")
    images = copy_survey(args.store)
    store = LocalStore(args.store)
    card = resolve(store, ModelRef.parse(args.model))
    config = ClassifyConfig(store=str(args.store), model=args.model, batches=BATCHES, embeddings=True)
    started = time.perf_counter()
    result = classify_pending(config, card=card, progress=True)
    classify_seconds = time.perf_counter() - started
    fresh = any(r.committed for r in result.batches)

    catalog = embedded_catalog(store, card.name, card.version)
    agreement = neighbour_agreement(catalog, k=args.k)
    print(f"\n{card.name}/{card.version}: {images} survey images, {agreement.galaxies} with an embedding")
    if fresh:
        print(f"classify with embeddings: {classify_seconds:.1f} s ({images / classify_seconds:.1f} images/s)\n")
    else:
        print("classify: the catalogs were already there (an earlier run made them)\n")
    print(f"| predicted class | galaxies | same class among {args.k} nearest | chance | ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    classes = catalog.classes
    for c, label in enumerate(CLASS_NAMES):
        same, chance = agreement.per_class[label], agreement.chance[label]
        cell = "n/a" if same is None else f"{100 * same:.1f}%"
        ratio = "n/a" if same is None or chance == 0 else f"{same / chance:.1f}x"
        print(f"| {label} | {int((classes == c).sum())} | {cell} | {100 * chance:.1f}% | {ratio} |")
    print(
        f"| all | {agreement.galaxies} | {100 * agreement.overall:.1f}% | {100 * agreement.overall_chance:.1f}% | "
        f"{agreement.overall / agreement.overall_chance:.1f}x |"
    )

    drift_rows = []
    print("\n| batch | rows | JS divergence (bits) | mean confidence | validation | drifted |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for batch in BATCHES:
        manifest = read_catalog_manifest(store, batch, card.version)
        if manifest is None or manifest.drift is None:
            continue
        d = manifest.drift
        drift_rows.append({"batch": batch, "rows": manifest.rows, **d.model_dump()})
        reference = "n/a" if d.reference_mean_confidence is None else f"{d.reference_mean_confidence:.3f}"
        print(
            f"| {batch} | {manifest.rows} | {d.js_divergence:.4f} | {d.mean_confidence or 0:.3f} | {reference} | "
            f"{'yes' if d.drifted else 'no'} |"
        )

    report: dict[str, object] = {}
    if args.report:
        from galaxy_models.catalogs.report import ReportConfig, write_report

        out = args.store / "exports" / f"{card.name}-{card.version}-report.html"
        started = time.perf_counter()
        from galaxy_models.inference.explain import explain_keys

        write_report(ReportConfig(store=str(args.store), model=args.model, out=str(out)), explainer=explain_keys)
        seconds = time.perf_counter() - started
        report = {"seconds": seconds, "bytes": out.stat().st_size, "out": str(out)}
        size = out.stat().st_size / 1e6
        print(f"\nreport for {agreement.galaxies} galaxies: {seconds:.1f} s, {size:.1f} MB -> {out}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(), "machine": platform.processor() or platform.machine(),
                "model": f"{card.name}/{card.version}", "images": images,
                "classify_seconds": classify_seconds if fresh else None,
                "neighbour_agreement": agreement.model_dump(), "drift": drift_rows, "report": report,
            },
            indent=2,
        )
    )  # fmt: skip
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
