"""ResNet50 against CS_ResNet50 on the real GZ2 labelled set, identical settings: the paper's
Table V (validation and test), per-class accuracy, parameters and training images/s; or, with
``--cv K``, stratified K-fold cross-validation of each model and training option.

Ingests ../shared/gz2/labelled into a local store (once), then trains each model through torchrun
(``train_evaluate_publish``, as the CLI and train-flow do), evaluates the best epoch's weights and
publishes them to the store's model registry.
Runs resume after an interruption: start the script again with the same arguments.

With ``--cv K`` each fold is its own dataset (``gz2-cvK-fF``: fold F is the test split, the other
folds are split 8:1 into train and val per class). Every requested model and ``--option`` is trained
on each fold and scored on its test split; the K test splits cover each of the 2,246 galaxies once,
so their confusion matrices add up to one out-of-fold matrix, whose Table V scores and per-class
recall get 95% bootstrap intervals (the only way to say anything about 39 cigars). Fold means and
spreads are printed beside them.

    .venv/bin/python benchmarks/train_real.py --image-size 112 --epochs 15 --batch-size 32
    .venv/bin/python benchmarks/train_real.py --preset paper --seeds 0 1 2     # on a GPU machine
    .venv/bin/python benchmarks/train_real.py --cv 5 --model cs_resnet50 --image-size 64 --epochs 8 \\
        --batch-size 32 --workers 1 --option baseline --option balanced --option logit_adjusted
    (add --folds 0 1 to run some folds now and the rest later; finished runs are found, not redone)

Options combine with ``+`` (``--option logit_adjusted+label_smoothing``). Two need more than settings:

- ``pretrained``: fine-tune from a model pre-trained on a GalSim synthetic survey of
  ``--pretrain-synthetic N`` galaxies for ``--pretrain-epochs`` epochs (rendered, ingested, trained
  and published in the same store once; ``TrainConfig.init_from``).
- ``pseudo``: add pseudo-labels to each fold's training split: the fold's ``--teacher`` variant
  (trained first if needed) classifies the labelled-set images that match no Table I rule (2,419
  here), and those predicted with calibrated confidence >= ``--pseudo-confidence`` join the training
  split (``IngestConfig.pseudo_labels``); validation and test keep only volunteer labels.

    .venv/bin/python benchmarks/train_real.py --cv 5 --folds 0 --model cs_resnet50 --image-size 64 \\
        --epochs 8 --batch-size 32 --workers 1 --option logit_adjusted+pretrained --pretrain-synthetic 2000
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from galaxy_models.catalogs.manifest import read_catalog
from galaxy_models.data.ingest import IngestConfig, ingest, join_labels_and_images, list_images, load_labels
from galaxy_models.data.splits import CrossValidation
from galaxy_models.inference.classify import classify_batch
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.metrics import Metrics, metrics_from_confusion, per_class_table, table_v, with_intervals
from galaxy_models.storage import LocalStore
from galaxy_models.synth.survey import SynthConfig, synthesize_survey
from galaxy_models.training.config import TrainConfig
from galaxy_models.training.pipeline import train_evaluate_publish

GZ2 = Path(__file__).resolve().parents[2] / "shared" / "gz2" / "labelled"
MODELS = ("resnet50", "cs_resnet50")
# Training options compared for the rare class: TrainConfig settings on top of the common ones.
OPTIONS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "balanced": {"class_weights": "balanced"},
    "logit_adjusted": {"loss": "logit_adjusted"},
    "label_smoothing": {"label_smoothing": 0.1},
    "pretrained": {},  # init_from: the GalSim pre-trained model, filled in at run time
    "pseudo": {},  # the dataset: the fold with pseudo-labels, chosen at run time
}
CIGAR = 2
UNMATCHED_BATCH = "gz2-unmatched"  # incoming/ batch of the labelled-set images without a Table I class


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("benchmarks/out/gz2-store"))
    parser.add_argument("--preset", choices=["paper"], default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--model", action="append", choices=MODELS, help=f"repeatable; default: {' and '.join(MODELS)}")
    parser.add_argument("--option", action="append", type=_option, help=f"repeatable, + combines; of {list(OPTIONS)}")
    parser.add_argument("--cv", type=int, default=None, metavar="K", help="stratified K-fold cross-validation")
    parser.add_argument("--folds", type=int, nargs="+", default=None, help="with --cv: only these folds (default all)")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/out/train_real[_cvK].json)")
    parser.add_argument("--pretrain-synthetic", type=int, default=2000, metavar="N", help="pretrained: galaxies")
    parser.add_argument("--pretrain-epochs", type=int, default=8, help="pretrained: epochs on the synthetic survey")
    parser.add_argument("--teacher", default="logit_adjusted", type=_option, help="pseudo: the teacher's option")
    parser.add_argument("--pseudo-confidence", type=float, default=0.9, help="pseudo: confidence a label needs")
    parser.add_argument(
        "--teacher-ref", default=None, help="pseudo, one fold: this published NAME@VERSION is the teacher (not trained)"
    )
    args = parser.parse_args()
    args.model = args.model or list(MODELS)
    args.option = args.option or ["baseline"]
    if args.cv is not None and len(args.seeds) != 1:
        parser.error("--cv takes one seed: the pooled bootstrap counts each galaxy once")
    if args.teacher_ref is not None and (args.folds is None or len(args.folds) != 1):
        parser.error("--teacher-ref names one fold's teacher: give exactly one --folds")
    if args.folds is not None and (args.cv is None or not set(args.folds) <= set(range(args.cv))):
        parser.error(f"--folds {args.folds} needs --cv K and folds between 0 and K-1")
    args.out = args.out or Path(f"benchmarks/out/train_real{'' if args.cv is None else f'_cv{args.cv}'}.json")
    return args


def _option(text: str) -> str:
    unknown = [part for part in text.split("+") if part not in OPTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown option(s) {unknown}; options: {list(OPTIONS)}")
    return text


def settings_of(option: str, model: str) -> dict[str, Any]:
    """Settings of ``option`` on top of plain cross-entropy (not the paper preset's loss), so that the
    baseline is the paper's own protocol."""
    settings: dict[str, Any] = {"model": model, "loss": "cross_entropy"}
    for part in option.split("+"):
        settings.update(OPTIONS[part])
    return settings


def variants(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Run name (the model, then the option's parts joined by '-', unless it is the baseline) -> settings."""
    return {
        (model if option == "baseline" else f"{model}-{option.replace('+', '-')}"): settings_of(option, model)
        for option in args.option
        for model in args.model
    }


def uses(name: str, part: str) -> bool:
    """Whether the variant ``name`` (``model-option1-option2``) includes the option ``part``."""
    return part in name.split("-")[1:]


def pretrained_model(args: argparse.Namespace, store: LocalStore, model: str) -> str:
    """``NAME@VERSION`` of ``model`` trained on a GalSim survey of ``--pretrain-synthetic`` galaxies
    (rendered, ingested, trained and published once; found afterwards)."""
    n = args.pretrain_synthetic
    survey = f"galsim-pretrain-{n}"
    raw = Path(args.store) / "raw" / survey
    if not (raw / "labels.csv").is_file():
        synthesize_survey(SynthConfig(store=store.uri, n=n, survey=survey, seed=1), progress=False)
    config = IngestConfig(
        images=str(raw / "images"), labels=str(raw / "labels.csv"), store=store.uri, name=survey,
        samples_per_shard=500, survey="synthetic",
    )  # fmt: skip
    ingest(config, progress=False)
    settings = {**settings_of("baseline", model), "epochs": args.pretrain_epochs}
    run = train_one(args, f"{model}-{survey}", settings, survey, args.seeds[0])
    return f"{model}-{survey}@{run['version']}"


def unmatched_batch(store: LocalStore) -> None:
    """Copy the labelled-set images whose votes match no Table I rule to incoming/<UNMATCHED_BATCH>/."""
    prefix = f"incoming/{UNMATCHED_BATCH}/"
    present = set(store.list(prefix))
    labels = load_labels(str(GZ2 / "training_solutions_rev1.csv"))
    joined = join_labels_and_images(labels, list_images(str(GZ2 / "images")))
    for key in joined.without_class:
        if prefix + key not in present:
            store.write_bytes(prefix + key, (GZ2 / "images" / key).read_bytes())


def pseudo_dataset(args: argparse.Namespace, store: LocalStore, model: str, fold: int) -> str:
    """The fold's dataset with pseudo-labels from the fold's teacher run (trained first if needed)."""
    k, dataset = args.cv, f"gz2-cv{args.cv}-f{fold}"
    if args.teacher_ref is not None:
        teacher_name, teacher_version = args.teacher_ref.split("@")
    else:
        teacher_name = model if args.teacher == "baseline" else f"{model}-{args.teacher}"
        teacher_version = train_one(args, teacher_name, settings_of(args.teacher, model), dataset, args.seeds[0])[
            "version"
        ]
    unmatched_batch(store)
    classify = ClassifyConfig(
        store=store.uri, model=f"{teacher_name}@{teacher_version}", batch_size=64, engine="torch", workers=2
    )
    manifest, _ = classify_batch(classify, UNMATCHED_BATCH, progress=False)
    catalog = read_catalog(store, manifest).to_pandas()[["galaxy_id", "predicted_class", "confidence"]]
    path = Path(args.store) / "pseudo" / f"{teacher_name}-{teacher_version}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    catalog.to_csv(path, index=False)
    confident = catalog[catalog["confidence"] >= args.pseudo_confidence]
    print(
        f"fold {fold}: teacher {teacher_name}@{teacher_version} labels {len(confident)} of {len(catalog)} "
        f"unmatched images with confidence >= {args.pseudo_confidence}: "
        f"{confident['predicted_class'].value_counts().sort_index().to_dict()}"
    )
    name = f"{dataset}-pseudo{round(100 * args.pseudo_confidence)}"
    config = IngestConfig(
        images=str(GZ2 / "images"), labels=str(GZ2 / "training_solutions_rev1.csv"), store=store.uri, name=name,
        samples_per_shard=200, cross_validation=CrossValidation(folds=k, fold=fold), pseudo_labels=str(path),
        pseudo_min_confidence=args.pseudo_confidence,
    )  # fmt: skip
    ingest(config, progress=False)
    return name


def ingest_gz2(store: LocalStore, name: str, cross_validation: CrossValidation | None = None) -> None:
    config = IngestConfig(
        images=str(GZ2 / "images"), labels=str(GZ2 / "training_solutions_rev1.csv"), store=store.uri, name=name,
        samples_per_shard=200, cross_validation=cross_validation,
    )  # fmt: skip
    ingest(config, progress=False)


def train_one(args: argparse.Namespace, name: str, settings: dict[str, Any], dataset: str, seed: int) -> dict[str, Any]:
    """Train, evaluate and publish one run; what the report needs from it."""
    overrides = {
        k: v
        for k, v in {
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "image_size": args.image_size,
        }.items()
        if v is not None
    }  # fmt: skip
    config = TrainConfig(
        preset=args.preset or "paper", store=str(args.store), dataset=dataset, name=name, seed=seed,
        workers=args.workers, **{**overrides, **settings},
    )  # fmt: skip
    outcome = train_evaluate_publish(config, progress=False)
    run, card = outcome.run, outcome.card
    return {
        "seed": seed, "dataset": dataset, "version": card.version, "parameters": run.parameters,
        "best_epoch": run.best_epoch, "images_per_second": run.images_per_second,
        "training_seconds": run.training_seconds, "hardware": run.hardware,
        "metrics": {split: m.model_dump() for split, m in card.metrics.items()},
    }  # fmt: skip


def main() -> None:
    args = parse_args()
    if not (GZ2 / "training_solutions_rev1.csv").is_file():
        raise SystemExit(f"the real GZ2 data is not at {GZ2}")
    store = LocalStore(args.store)
    if args.cv is not None:
        cross_validate(args, store)
        return
    ingest_gz2(store, "gz2")
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants(args)}
    for seed in args.seeds:
        for name, settings in variants(args).items():
            results[name].append(train_one(args, name, settings, "gz2", seed))
    report(results, args)


def cross_validate(args: argparse.Namespace, store: LocalStore) -> None:
    """Every variant on every fold, fold by fold (so an interrupted grid still compares the variants
    on the same folds), writing the JSON after each run; then the cross-validated tables."""
    k = args.cv
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants(args)}
    for fold in sorted(set(args.folds)) if args.folds is not None else range(k):
        dataset = f"gz2-cv{k}-f{fold}"
        ingest_gz2(store, dataset, CrossValidation(folds=k, fold=fold))
        for name, settings in variants(args).items():
            data = dataset
            if uses(name, "pretrained"):
                settings = {**settings, "init_from": pretrained_model(args, store, settings["model"])}
            if uses(name, "pseudo"):
                data = pseudo_dataset(args, store, settings["model"], fold)
            results[name].append({"fold": fold, **train_one(args, name, settings, data, args.seeds[0])})
            write_json(args, results)
    report_cv(results, args)


def pooled(runs: list[dict[str, Any]]) -> Metrics:
    """Out-of-fold test metrics: the folds' confusion matrices added, with bootstrap intervals."""
    confusion = np.sum([r["metrics"]["test"]["confusion"] for r in runs], axis=0)
    return with_intervals(metrics_from_confusion(confusion), n=2000, seed=0)


def _spread(values: list[float]) -> str:
    """Mean ± sample standard deviation over folds, and the range, in percent."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f} ({100 * min(values):.1f}-{100 * max(values):.1f})"


def report_cv(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    rows = {name: pooled(runs) for name, runs in results.items()}
    folds = {name: len(runs) for name, runs in results.items()}
    done = sorted({r["fold"] for runs in results.values() for r in runs})
    print(f"\n{args.cv}-fold cross-validation, folds {done}: test predictions pooled, 95% bootstrap intervals:")
    print(table_v(rows))
    print("\nPer-class recall, pooled:")
    print(per_class_table(rows))
    print("\nOver folds (mean ± sd, range), percent:")
    print("| variant | folds | accuracy | macro-F1 | cigar recall |\n| --- | ---: | ---: | ---: | ---: |")
    for name, runs in results.items():
        tests = [Metrics.model_validate(r["metrics"]["test"]) for r in runs]
        cigar = [m.per_class_accuracy[CIGAR] or 0.0 for m in tests]
        accuracy, f1 = _spread([m.accuracy for m in tests]), _spread([m.f1 for m in tests])
        print(f"| {name} | {folds[name]} | {accuracy} | {f1} | {_spread(cigar)} |")
    print(
        "\n| variant | training images/s | mean best epoch | training time, all folds |\n| --- | ---: | ---: | ---: |"
    )
    for name, runs in results.items():
        rate = statistics.mean(r["images_per_second"] for r in runs)
        epoch = statistics.mean(r["best_epoch"] + 1 for r in runs)
        print(f"| {name} | {rate:.1f} | {epoch:.1f} | {sum(r['training_seconds'] for r in runs) / 60:.1f} min |")
    print(f"\nhardware: {next(iter(results.values()))[0]['hardware']}")
    write_json(args, results, {name: m.model_dump() for name, m in rows.items()})


def write_json(args: argparse.Namespace, results: dict[str, Any], pooled_metrics: dict[str, Any] | None = None) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results, "pooled": pooled_metrics}
    args.out.write_text(json.dumps(document, indent=2))
    print(f"wrote {args.out}")


def _mean(runs: list[dict[str, Any]], split: str) -> Metrics:
    """Mean metrics over seeds (confusion matrices summed)."""
    ms = [Metrics.model_validate(r["metrics"][split]) for r in runs]
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
        # one seed: its bootstrap intervals; several: the spread over seeds is printed below instead
        intervals=ms[0].intervals if len(ms) == 1 else None,
        per_class_interval=ms[0].per_class_interval if len(ms) == 1 else None,
    )


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    device = next(iter(results.values()))[0]["hardware"]
    for split in ("val", "test"):
        rows = {name: _mean(runs, split) for name, runs in results.items()}
        print(f"\n{split} split, mean of {len(args.seeds)} seed(s):")
        print(table_v(rows))
        print(per_class_table(rows))
        if len(args.seeds) > 1:
            for name, runs in results.items():
                accs = [100 * r["metrics"][split]["accuracy"] for r in runs]
                f1s = [100 * r["metrics"][split]["f1"] for r in runs]
                print(
                    f"{name}: accuracy {statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}, "
                    f"F1 {statistics.mean(f1s):.2f} ± {statistics.stdev(f1s):.2f}"
                )
    print("\n| model | parameters | training images/s | best epoch | training time |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, runs in results.items():
        r = runs[0]
        print(
            f"| {name} | {r['parameters']:,} | {statistics.mean(x['images_per_second'] for x in runs):.1f} | "
            f"{r['best_epoch'] + 1} | {r['training_seconds'] / 60:.1f} min |"
        )
    print(f"\nhardware: {device}")
    write_json(args, results)


if __name__ == "__main__":
    main()
