"""Temperature scaling and calibration scores (``galaxy_models.calibration``): an over-confident model
is fixed by the fitted temperature, the scores match hand computations, and bad input is named."""

from __future__ import annotations

import numpy as np
import pytest

from galaxy_models.calibration import (
    MAX_TEMPERATURE,
    Calibration,
    brier_score,
    calibrate,
    calibration_table,
    expected_calibration_error,
    fit_temperature,
    log_probabilities,
    negative_log_likelihood,
    reliability_bins,
    scale,
)


def _calibrated_generator(n: int, seed: int = 0, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): a perfectly calibrated model by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(n, classes))
    p = scale(logits, 1.0)
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return logits, labels


def test_temperature_scaling_fixes_a_deliberately_over_confident_model() -> None:
    logits, labels = _calibrated_generator(6000)
    over_confident = 4 * logits
    raw = scale(over_confident, 1.0)
    temperature = fit_temperature(over_confident, labels)
    assert temperature == pytest.approx(4.0, rel=0.1)
    calibrated = scale(over_confident, temperature)
    before, after = expected_calibration_error(raw, labels), expected_calibration_error(calibrated, labels)
    assert before > 0.2
    assert after < 0.04
    assert after < before / 5
    assert brier_score(calibrated, labels) < brier_score(raw, labels)
    assert negative_log_likelihood(calibrated, labels) < negative_log_likelihood(raw, labels)
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(calibrated.argmax(axis=1), raw.argmax(axis=1))  # accuracy unchanged


def test_stored_probabilities_fit_the_same_temperature_as_logits() -> None:
    """softmax(log p / T) == softmax(z / T): what the card stores (probabilities) is enough."""
    logits, labels = _calibrated_generator(3000, seed=1)
    probabilities = scale(3 * logits, 1.0).astype(np.float32)  # what ``predict`` returns
    from_logits = fit_temperature(3 * logits, labels)
    from_probabilities = fit_temperature(log_probabilities(probabilities), labels)
    assert from_probabilities == pytest.approx(from_logits, rel=1e-3)
    np.testing.assert_allclose(scale(log_probabilities(probabilities), 2.0), scale(3 * logits, 2.0), atol=1e-5)


def test_a_calibrated_model_keeps_a_temperature_near_one() -> None:
    logits, labels = _calibrated_generator(6000, seed=2)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)


def test_the_temperature_is_clamped() -> None:
    """A model that is always wrong wants T -> infinity (a uniform guess); it stops at the bound."""
    logits = np.array([[5.0, 0.0, 0.0]] * 50)
    assert fit_temperature(logits, np.full(50, 1)) == pytest.approx(MAX_TEMPERATURE, rel=1e-3)


def test_scores_by_hand() -> None:
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    y = np.array([0, 1, 1, 1])
    # Brier: squared distances to the one-hot labels, summed over classes: 0.02, 0.72, 0.18, 0.08
    assert brier_score(p, y) == pytest.approx((0.02 + 0.72 + 0.18 + 0.08) / 4)
    assert negative_log_likelihood(p, y) == pytest.approx(-np.log([0.9, 0.4, 0.7, 0.8]).mean())
    # 15 bins (i/15, (i+1)/15], right edge included: 0.6 = 9/15 is in bin 8, 0.7 in 10, 0.8 = 12/15 in 11, 0.9 in 13
    bins = reliability_bins(p, y)
    assert len(bins) == 15
    assert sum(b.count for b in bins) == 4
    assert bins[0].lower == 0.0
    assert bins[-1].upper == 1.0
    full = {i: b for i, b in enumerate(bins) if b.count}
    assert sorted(full) == [8, 10, 11, 13]
    assert full[8].confidence == pytest.approx(0.6)
    assert full[8].accuracy == 0.0
    assert full[13].confidence == pytest.approx(0.9)
    assert full[13].accuracy == 1.0
    # ECE: |1-0.9| + |0-0.6| + |1-0.7| + |1-0.8|, each weighted 1/4
    assert expected_calibration_error(p, y) == pytest.approx((0.1 + 0.6 + 0.3 + 0.2) / 4)
    assert expected_calibration_error(p, y, bins=1) == pytest.approx(abs(0.75 - (0.9 + 0.6 + 0.7 + 0.8) / 4))


def test_calibrate_scores_every_split_before_and_after() -> None:
    logits, labels = _calibrated_generator(4000, seed=3)
    raw = scale(5 * logits, 1.0)
    predictions = {"val": (labels[:2000], raw[:2000]), "test": (labels[2000:], raw[2000:])}
    calibration = calibrate(predictions)
    assert calibration.fitted_on == "val"
    assert calibration.bins == 15
    assert calibration.temperature == pytest.approx(5.0, rel=0.15)
    for split in ("val", "test"):
        s = calibration.splits[split]
        assert s.samples == 2000
        assert s.ece_after < s.ece_before / 4
        assert s.brier_after < s.brier_before
        assert s.nll_after < s.nll_before
        assert sum(b.count for b in s.bins_after) == 2000
    assert Calibration.model_validate_json(calibration.model_dump_json()) == calibration
    table = calibration_table(calibration)
    assert f"T = {calibration.temperature:.3f}" in table
    assert "| test | 2000 |" in table


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fit_temperature(np.zeros((0, 5)), np.zeros(0, dtype=int)), "non-empty"),
        (lambda: fit_temperature(np.zeros((3, 5)), np.array([0, 1, 7])), r"labels \[7\] are outside 0-4"),
        (lambda: fit_temperature(np.zeros((3, 5)), np.array([0.0, 1.0, 2.0])), "integer labels"),
        (lambda: brier_score(np.full((2, 2), 1.5), np.array([0, 1])), "in \\[0, 1\\]"),
        (lambda: expected_calibration_error(np.full((2, 2), np.nan), np.array([0, 1])), "NaN"),
        (lambda: reliability_bins(np.full((2, 2), 0.5), np.array([0, 1]), bins=0), "bins must be at least 1"),
        (lambda: scale(np.zeros((2, 2)), 0.0), "temperature must be a positive number, got 0.0"),
        (lambda: calibrate({"test": (np.array([0]), np.array([[1.0, 0.0]]))}), "no 'val' split"),
    ],
)
def test_bad_inputs_are_named(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]
