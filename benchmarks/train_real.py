"""ResNet50 against CS_ResNet50 on the real GZ2 labelled set, identical settings: the paper's
Table V (validation and test), per-class accuracy, parameters and training images/s.

Ingests ../shared/gz2/labelled into a local store (once), then trains each model through torchrun
(``train_evaluate_publish``, as the CLI and train-flow do), evaluates the best epoch's weights and
publishes them to the store's model registry.
Runs resume after an interruption: start the script again with the same arguments.

    .venv/bin/python benchmarks/train_real.py --image-size 112 --epochs 15 --batch-size 32
    .venv/bin/python benchmarks/train_real.py --preset paper --seeds 0 1 2     # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from galaxy_models.data.ingest import IngestConfig, ingest
from galaxy_models.metrics import Metrics, per_class_table, table_v
from galaxy_models.storage import LocalStore
from galaxy_models.training.config import TrainConfig
from galaxy_models.training.pipeline import train_evaluate_publish

GZ2 = Path(__file__).resolve().parents[2] / "shared" / "gz2" / "labelled"
MODELS = ("resnet50", "cs_resnet50")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("benchmarks/out/gz2-store"))
    parser.add_argument("--preset", choices=["paper"], default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/train_real.json"))
    args = parser.parse_args()
    if not (GZ2 / "training_solutions_rev1.csv").is_file():
        raise SystemExit(f"the real GZ2 data is not at {GZ2}")
    store = LocalStore(args.store)
    ingest(
        IngestConfig(
            images=str(GZ2 / "images"), labels=str(GZ2 / "training_solutions_rev1.csv"),
            store=store.uri, name="gz2", samples_per_shard=200,
        ),
        progress=False,
    )  # fmt: skip
    overrides = {
        k: v
        for k, v in {
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "image_size": args.image_size,
        }.items()
        if v is not None
    }  # fmt: skip
    results: dict[str, list[dict[str, object]]] = {m: [] for m in MODELS}
    for seed in args.seeds:
        for model in MODELS:
            config = TrainConfig(
                preset=args.preset or "paper", store=str(args.store), dataset="gz2", model=model,
                seed=seed, workers=args.workers, **overrides,
            )  # fmt: skip
            outcome = train_evaluate_publish(config, progress=False)
            run, card, metrics = outcome.run, outcome.card, outcome.card.metrics
            results[model].append(
                {
                    "seed": seed, "version": card.version, "parameters": run.parameters,
                    "best_epoch": run.best_epoch, "images_per_second": run.images_per_second,
                    "training_seconds": run.training_seconds, "hardware": run.hardware,
                    "metrics": {split: m.model_dump() for split, m in metrics.items()},
                }
            )  # fmt: skip
    report(results, args)


def _mean(runs: list[dict[str, object]], split: str) -> Metrics:
    """Mean metrics over seeds (confusion matrices summed)."""
    ms = [Metrics.model_validate(r["metrics"][split]) for r in runs]  # type: ignore[index]
    per_class = [
        statistics.mean(v for v in values if v is not None) if any(v is not None for v in values) else None
        for values in zip(*(m.per_class_accuracy for m in ms), strict=True)
    ]
    return Metrics(
        samples=ms[0].samples,
        accuracy=statistics.mean(m.accuracy for m in ms),
        precision=statistics.mean(m.precision for m in ms),
        recall=statistics.mean(m.recall for m in ms),
        f1=statistics.mean(m.f1 for m in ms),
        per_class_accuracy=per_class,
        support=ms[0].support,
        confusion=[[sum(m.confusion[i][j] for m in ms) for j in range(5)] for i in range(5)],
    )


def report(results: dict[str, list[dict[str, object]]], args: argparse.Namespace) -> None:
    device = results[MODELS[0]][0]["hardware"]
    for split in ("val", "test"):
        rows = {name: _mean(runs, split) for name, runs in results.items()}
        print(f"\n{split} split, mean of {len(args.seeds)} seed(s):")
        print(table_v(rows))
        print(per_class_table(rows))
        if len(args.seeds) > 1:
            for name, runs in results.items():
                accs = [100 * r["metrics"][split]["accuracy"] for r in runs]  # type: ignore[index]
                f1s = [100 * r["metrics"][split]["f1"] for r in runs]  # type: ignore[index]
                print(
                    f"{name}: accuracy {statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}, "
                    f"F1 {statistics.mean(f1s):.2f} ± {statistics.stdev(f1s):.2f}"
                )
    print("\n| model | parameters | training images/s | best epoch | training time |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, runs in results.items():
        r = runs[0]
        print(
            f"| {name} | {r['parameters']:,} | {statistics.mean(x['images_per_second'] for x in runs):.1f} | "  # type: ignore[misc]
            f"{r['best_epoch'] + 1} | {r['training_seconds'] / 60:.1f} min |"  # type: ignore[operator]
        )
    print(f"\nhardware: {device}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
