"""Publishing a finished run into the model registry: its best weights, a card with the metrics and
the figures (among them one Grad-CAM panel per class of the validation split, ``explain_<class>.png``).
Publishing the same run again returns the existing card and writes nothing."""

from __future__ import annotations

from datetime import UTC, datetime

from galaxy_models.calibration import Calibration
from galaxy_models.domain import CLASS_NAMES
from galaxy_models.inference.explain import validation_panels
from galaxy_models.metrics import Metrics
from galaxy_models.models.serialization import load_checkpoint
from galaxy_models.registry.cards import ModelCard, ModelNotFoundError, read_card
from galaxy_models.registry.weights import publish
from galaxy_models.storage import Store
from galaxy_models.training.figures import confusion_png, curves_png, reliability_png
from galaxy_models.training.runs import TrainRun, run_manifest


def publish_run(
    store: Store, run: TrainRun, metrics: dict[str, Metrics], calibration: Calibration | None = None
) -> ModelCard:
    """The card of ``run`` in the registry, publishing the run first if it is not there yet.
    ``calibration`` (``calibrating.calibrate_run``) goes into the card, with its reliability diagram."""
    try:
        return read_card(store, run.name, run.run_id)
    except ModelNotFoundError:
        pass
    title = f"{run.architecture} on {run.dataset}/{run.dataset_version}"
    figures = {f"confusion_{split}.png": confusion_png(m, f"{title}, {split}") for split, m in metrics.items()}
    figures["training_curves.png"] = curves_png([h.model_dump() for h in run.history], title)
    if calibration is not None:
        figures["reliability.png"] = reliability_png(calibration, title)
    card = ModelCard(
        name=run.name,
        version=run.run_id,
        architecture=run.architecture,
        parameters=run.parameters,
        class_names=list(CLASS_NAMES),
        preprocessing=run.preprocessing,
        config=run.config.model_dump(mode="json"),
        dataset=run.dataset_reference(),
        metrics=metrics,
        calibration=calibration,
        best_epoch=run.best_epoch,
        history=[h.model_dump() for h in run.history],
        hardware=run.hardware,
        training_seconds=run.training_seconds,
        training_images_per_second=run.images_per_second,
        figures=sorted(figures),
        created_at=datetime.now(UTC),
    )
    weights = load_checkpoint(store, run.best_key)["model"]
    figures.update(validation_panels(store, card, weights, run_manifest(store, run)))
    publish(store, card, weights, figures)
    return read_card(store, run.name, run.run_id)
