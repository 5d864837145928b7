"""Drift: how a batch's predicted classes and confidence compare with what the model was trained on.

A model trained on one class mix and image quality is least trustworthy where a batch differs from
both. Each catalog manifest records, for its batch:

- the Jensen-Shannon divergence (base 2, so in [0, 1]) between the batch's predicted class shares and
  the training split's class shares (read from the dataset manifest; the model card's validation +
  test support, stratified like the training split, where the dataset is not in the store);
- the drop in mean confidence against the calibrated mean confidence on the validation split (the
  card's calibration; skipped for a card without one).

A batch is flagged ``drifted`` when either passes its threshold (``ClassifyConfig.drift_threshold``,
``confidence_drop``). Batches are real selections of the sky, not the training split, so a modest
divergence is expected; the thresholds mark the batches worth a look before their catalog is used.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field

from galaxy_models.data.manifest import ManifestSealError, read_manifest
from galaxy_models.domain import CLASS_NAMES
from galaxy_models.registry.cards import ModelCard
from galaxy_models.storage import KeyNotFoundError, Store

DEFAULT_JS_THRESHOLD = 0.1
DEFAULT_CONFIDENCE_DROP = 0.1


class DriftReference(BaseModel):
    """What a batch is compared with: the model's training class shares and validation confidence."""

    source: str
    class_shares: dict[str, float] = Field(description="class label -> share of the training split")
    mean_confidence: float | None = Field(description="calibrated mean top probability on the validation split")


class BatchDrift(BaseModel):
    reference: str
    reference_shares: dict[str, float]
    batch_shares: dict[str, float] = Field(description="class label -> share of the batch's readable rows")
    js_divergence: float = Field(description="Jensen-Shannon divergence of the class shares, bits, in [0, 1]")
    mean_confidence: float | None
    reference_mean_confidence: float | None
    confidence_drop: float | None = Field(description="reference minus batch mean confidence")
    js_threshold: float
    confidence_threshold: float
    drifted: bool
    reasons: list[str]


def drift_reference(store: Store, card: ModelCard) -> DriftReference:
    """The training split's class shares (dataset manifest, else the card's val + test support) and the
    card's calibrated validation confidence."""
    name, version = card.dataset.get("name"), card.dataset.get("version")
    counts: list[float] | None = None
    source = ""
    if name and version:
        try:
            totals = read_manifest(store, name, version).totals.get("train", {})
            counts = [float(totals.get(str(k), 0)) for k in range(len(CLASS_NAMES))]
            source = f"train split of datasets/{name}/{version}"
        except (KeyNotFoundError, ManifestSealError):
            counts = None
    if counts is None or sum(counts) == 0:
        support = [m.support for m in card.metrics.values()]
        counts = [float(sum(s[k] for s in support)) for k in range(len(CLASS_NAMES))]
        source = f"{' + '.join(card.metrics)} support on the card of {card.name}/{card.version}"
    total = sum(counts) or 1.0
    return DriftReference(
        source=source,
        class_shares={label: n / total for label, n in zip(CLASS_NAMES, counts, strict=True)},
        mean_confidence=_validation_confidence(card),
    )


def _validation_confidence(card: ModelCard) -> float | None:
    if card.calibration is None or "val" not in card.calibration.splits:
        return None
    bins = [b for b in card.calibration.splits["val"].bins_after if b.count and b.confidence is not None]
    total = sum(b.count for b in bins)
    return sum(b.count * (b.confidence or 0.0) for b in bins) / total if total else None


def js_divergence(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Jensen-Shannon divergence of two class distributions over CLASS_NAMES, in bits."""
    from scipy.spatial.distance import jensenshannon

    a = np.array([p.get(c, 0.0) for c in CLASS_NAMES], dtype=float)
    b = np.array([q.get(c, 0.0) for c in CLASS_NAMES], dtype=float)
    if a.sum() == 0 or b.sum() == 0:
        return 0.0
    return float(jensenshannon(a, b, base=2) ** 2)


def batch_drift(
    table: pa.Table,
    reference: DriftReference,
    *,
    js_threshold: float = DEFAULT_JS_THRESHOLD,
    confidence_threshold: float = DEFAULT_CONFIDENCE_DROP,
) -> BatchDrift:
    """The drift of one batch's catalog rows (``catalogs.schema``) from ``reference``."""
    classes = [c for c in table.column("predicted_class").to_pylist() if c is not None]
    confidence = [c for c in table.column("confidence").to_pylist() if c is not None]
    counts = np.bincount(np.asarray(classes, dtype=int), minlength=len(CLASS_NAMES)) if classes else None
    shares = {
        label: (float(counts[k]) / len(classes) if counts is not None else 0.0) for k, label in enumerate(CLASS_NAMES)
    }
    divergence = js_divergence(shares, reference.class_shares) if classes else 0.0
    mean = float(np.mean(confidence)) if confidence else None
    drop = reference.mean_confidence - mean if mean is not None and reference.mean_confidence is not None else None
    reasons = []
    if divergence > js_threshold:
        reasons.append(f"class shares diverge from the training split's (JS {divergence:.3f} > {js_threshold:g} bits)")
    if drop is not None and drop > confidence_threshold:
        reasons.append(
            f"mean confidence {mean:.3f} is {drop:.3f} below the validation split's "
            f"{reference.mean_confidence:.3f} (threshold {confidence_threshold:g})"
        )
    return BatchDrift(
        reference=reference.source,
        reference_shares=reference.class_shares,
        batch_shares=shares,
        js_divergence=divergence,
        mean_confidence=mean,
        reference_mean_confidence=reference.mean_confidence,
        confidence_drop=drop,
        js_threshold=js_threshold,
        confidence_threshold=confidence_threshold,
        drifted=bool(reasons),
        reasons=reasons,
    )
