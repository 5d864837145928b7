"""Calibrated class probabilities: temperature scaling (Guo et al. 2017) and the scores that say
whether "confidence 0.8" means right 80% of the time.

A network trained with cross-entropy is usually over-confident. Temperature scaling divides the
logits by one scalar T > 0 fitted on the validation split (minimum negative log-likelihood), which
leaves every argmax, so accuracy and the confusion matrix, unchanged. Because log-softmax differs
from the logits by a constant per row, ``softmax(log p / T) == softmax(z / T)``: stored probabilities
are as good as logits for fitting and applying it.

The scores: expected calibration error (ECE) over 15 equal-width confidence bins, the multi-class
Brier score and the negative log-likelihood (NLL), before and after, kept in ``Calibration`` (part of
every model card, so pydantic only at import: reading a card loads no torch and not even numpy, which
the functions import when first called, as scipy is when a temperature is fitted).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import numpy as np

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
ECE_BINS = 15
# float32 softmax underflows to 0 far from the top class; log(0) would make one image's NLL infinite
_TINY = 1e-30


class ReliabilityBin(BaseModel):
    """One confidence bin of a reliability diagram."""

    model_config = ConfigDict(frozen=True)

    lower: float
    upper: float
    count: int
    confidence: float | None = Field(description="mean top probability of the bin's samples; None when empty")
    accuracy: float | None = Field(description="share of the bin's samples whose top class is right; None when empty")


class SplitCalibration(BaseModel):
    """Calibration scores of one split, before (raw softmax) and after temperature scaling."""

    model_config = ConfigDict(frozen=True)

    samples: int
    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float
    nll_before: float
    nll_after: float
    bins_before: list[ReliabilityBin]
    bins_after: list[ReliabilityBin]


class Calibration(BaseModel):
    """A model's temperature and what it did, per split; inference divides logits by ``temperature``."""

    model_config = ConfigDict(frozen=True)

    method: str = Field("temperature", description="temperature scaling (Guo et al. 2017)")
    temperature: float = Field(gt=0, description="logits are divided by this before the softmax")
    fitted_on: str = Field("val", description="the split whose negative log-likelihood T minimises")
    bins: int = Field(ECE_BINS, description="equal-width confidence bins of the ECE and the reliability diagram")
    splits: dict[str, SplitCalibration] = Field(description="per split (val, test): scores before and after")


def _scores(scores: np.ndarray) -> np.ndarray:
    """(N, K) class scores (logits, log-probabilities or probabilities) as float64, checked.

    Raises:
        ValueError: naming the shape, or saying that the scores hold NaN or +inf.
    """
    import numpy as np

    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] < 2:
        raise ValueError(f"need a non-empty (N, K>=2) array of class scores, got shape {s.shape}")
    if np.isnan(s).any() or np.isposinf(s).any():  # -inf is the log of a probability that underflowed
        raise ValueError(f"class scores hold {int(np.isnan(s).sum())} NaN and {int(np.isposinf(s).sum())} +inf values")
    return s


def _labelled(scores: np.ndarray, labels: np.ndarray, *, probabilities: bool) -> tuple[np.ndarray, np.ndarray]:
    """Checked (N, K) scores and (N,) int64 labels; with ``probabilities``, values must lie in [0, 1].

    Raises:
        ValueError: naming the shape, dtype or values that are wrong.
    """
    import numpy as np

    s = _scores(scores)
    if probabilities and (s.min() < -1e-6 or s.max() > 1 + 1e-6):  # float32 rounding
        raise ValueError(f"probabilities must lie in [0, 1], got values from {s.min()!r} to {s.max()!r}")
    y = np.asarray(labels)
    if y.shape != (s.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"need {s.shape[0]} integer labels, got a {y.dtype} array of shape {y.shape}")
    bad = sorted(set(y[(y < 0) | (y >= s.shape[1])].tolist()))
    if bad:
        raise ValueError(f"labels {bad} are outside 0-{s.shape[1] - 1}")
    return s, y.astype(np.int64)


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Natural log of probabilities, zeros clipped to a tiny value so every log is finite."""
    import numpy as np

    p = _scores(probabilities)
    return np.log(np.clip(p, _TINY, 1.0))


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    import numpy as np

    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def scale(scores: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(scores / T): calibrated probabilities from logits or log-probabilities.

    Raises:
        ValueError: if ``temperature`` is not a positive finite number, or the scores are malformed.
    """
    import numpy as np

    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    s = _scores(scores)
    return np.exp(_log_softmax(s / temperature))


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true class), nats (a probability of 0 counts as 1e-30)."""
    import numpy as np

    p, y = _labelled(probabilities, labels, probabilities=True)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], _TINY, 1.0)).mean())


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over samples of the summed squared difference to the one-hot
    label (0 is perfect, 2 the worst possible)."""
    import numpy as np

    p, y = _labelled(probabilities, labels, probabilities=True)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """Samples binned by their top probability into ``bins`` equal-width bins over [0, 1] (right edge
    included), with each bin's mean confidence and accuracy.

    Raises:
        ValueError: if ``bins`` is below 1, or the inputs are malformed.
    """
    import numpy as np

    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins!r}")
    p, y = _labelled(probabilities, labels, probabilities=True)
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 (impossible for a softmax) joins bin 0
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    result = []
    for i in range(bins):
        members = index == i
        n = int(members.sum())
        result.append(
            ReliabilityBin(
                lower=float(edges[i]), upper=float(edges[i + 1]), count=n,
                confidence=float(confidence[members].mean()) if n else None,
                accuracy=float(correct[members].mean()) if n else None,
            )
        )  # fmt: skip
    return result


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the sample-weighted mean over confidence bins of |accuracy - mean confidence| (Guo et al.
    2017; 15 equal-width bins by default)."""
    import numpy as np

    gaps = [
        b.count * abs(b.accuracy - b.confidence)
        for b in reliability_bins(probabilities, labels, bins)
        if b.accuracy is not None and b.confidence is not None
    ]
    return float(sum(gaps) / len(np.asarray(labels)))


def fit_temperature(scores: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the NLL of softmax(scores / T) on (scores, labels), searched over
    log T (bounded, Brent) within [0.05, 20].

    Args:
        scores: (N, K) logits or log-probabilities (see ``log_probabilities``).
        labels: (N,) true classes.

    Raises:
        ValueError: if the inputs are malformed or empty.
    """
    import numpy as np
    from scipy.optimize import minimize_scalar

    s, y = _labelled(scores, labels, probabilities=False)
    s = np.maximum(s, np.log(_TINY))  # -inf log-probabilities of exact zeros

    def nll(log_t: float) -> float:
        return float(-_log_softmax(s / np.exp(log_t))[np.arange(len(y)), y].mean())

    bounds = (np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE))
    result = minimize_scalar(nll, bounds=bounds, method="bounded", options={"xatol": 1e-4})
    return float(np.clip(np.exp(result.x), MIN_TEMPERATURE, MAX_TEMPERATURE))


def split_calibration(probabilities: np.ndarray, labels: np.ndarray, temperature: float) -> SplitCalibration:
    """Scores of one split's raw probabilities and of the same probabilities at ``temperature``."""
    after = scale(log_probabilities(probabilities), temperature)
    return SplitCalibration(
        samples=len(labels),
        ece_before=expected_calibration_error(probabilities, labels),
        ece_after=expected_calibration_error(after, labels),
        brier_before=brier_score(probabilities, labels),
        brier_after=brier_score(after, labels),
        nll_before=negative_log_likelihood(probabilities, labels),
        nll_after=negative_log_likelihood(after, labels),
        bins_before=reliability_bins(probabilities, labels),
        bins_after=reliability_bins(after, labels),
    )


def calibrate(predictions: Mapping[str, tuple[np.ndarray, np.ndarray]], fit_split: str = "val") -> Calibration:
    """Fit T on ``predictions[fit_split]`` and score every split before and after.

    Args:
        predictions: split -> (labels (N,), raw softmax probabilities (N, K)).
        fit_split: the split T is fitted on (never the test split: that would flatter the scores).

    Raises:
        ValueError: if ``fit_split`` is missing or empty, or any split's arrays are malformed.
    """
    if fit_split not in predictions:
        raise ValueError(f"no {fit_split!r} split to fit the temperature on (splits: {sorted(predictions)})")
    labels, probabilities = predictions[fit_split]
    temperature = fit_temperature(log_probabilities(probabilities), labels)
    splits = {split: split_calibration(p, y, temperature) for split, (y, p) in predictions.items() if len(y)}
    return Calibration(temperature=temperature, fitted_on=fit_split, splits=splits)


def calibration_table(calibration: Calibration) -> str:
    """A calibration in Markdown: the temperature, then per split ECE (percent), Brier score and NLL
    before and after it."""
    lines = [
        f"Temperature T = {calibration.temperature:.3f} (logits / T before the softmax), fitted on "
        f"{calibration.fitted_on}; ECE over {calibration.bins} equal-width confidence bins.",
        "",
        "| split | images | ECE before | ECE after | Brier before | Brier after | NLL before | NLL after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for split, s in calibration.splits.items():
        lines.append(
            f"| {split} | {s.samples} | {100 * s.ece_before:.2f}% | {100 * s.ece_after:.2f}% | {s.brier_before:.4f} "
            f"| {s.brier_after:.4f} | {s.nll_before:.4f} | {s.nll_after:.4f} |"
        )
    return "\n".join(lines)
