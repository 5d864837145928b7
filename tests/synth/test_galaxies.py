"""GalSim renderings: format, determinism, and that each class looks like its morphology."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from galaxy_models.synth.galaxies import IMAGE_SIZE, encode_jpeg, galaxy_components, render, render_galaxy


def shape_of(morphology: int, seed: int) -> tuple[float, float]:
    """(axis ratio, blue/red ratio) of the galaxy alone, measured from its light's second moments."""
    rng = np.random.default_rng(seed)
    image = render(galaxy_components(morphology, rng), rng).astype(float)
    centre = image[112:312, 112:312]
    light = centre.sum(axis=2)
    sky = np.median(image[:60, :60].sum(axis=2))
    # Light above 20% of the peak: the inner isophotes, where noise does not round the shape off.
    weight = np.clip(light - sky - 0.2 * (light.max() - sky), 0, None)
    y, x = np.mgrid[: light.shape[0], : light.shape[1]]
    total = weight.sum()
    mx, my = (weight * x).sum() / total, (weight * y).sum() / total
    cov = np.cov(np.stack([x.ravel() - mx, y.ravel() - my]), aweights=weight.ravel())
    low, high = np.linalg.eigvalsh(cov)
    mask = weight > 0
    colour = centre[..., 2][mask].sum() / centre[..., 0][mask].sum()
    return float(np.sqrt(low / high)), float(colour)


def test_image_format() -> None:
    image = render_galaxy(4, np.random.default_rng(1))
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert image.dtype == np.uint8
    decoded = Image.open(io.BytesIO(encode_jpeg(image)))
    assert decoded.format == "JPEG"
    assert decoded.mode == "RGB"
    assert decoded.size == (IMAGE_SIZE, IMAGE_SIZE)


def test_same_seed_same_image_other_seed_other_image() -> None:
    a = render_galaxy(2, np.random.default_rng([3, 7]))
    b = render_galaxy(2, np.random.default_rng([3, 7]))
    c = render_galaxy(2, np.random.default_rng([3, 8]))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_galaxy_is_centred_and_bright_against_the_sky() -> None:
    image = render_galaxy(0, np.random.default_rng(5)).astype(float).sum(axis=2)
    centre = image[202:222, 202:222].mean()
    corner = np.median(image[:60, :60])
    assert centre > 5 * max(corner, 1.0)


def test_smooth_classes_are_ordered_by_axis_ratio() -> None:
    ratios = {m: np.median([shape_of(m, s)[0] for s in range(8)]) for m in (0, 1, 2, 3)}
    assert ratios[0] > 0.8
    assert 0.45 < ratios[1] < 0.8
    assert ratios[2] < 0.45
    assert ratios[3] < 0.45  # edge-on disks are thin too


def test_disks_are_bluer_than_smooth_galaxies() -> None:
    smooth = np.median([shape_of(0, s)[1] for s in range(6)])
    spiral = np.median([shape_of(4, s)[1] for s in range(6)])
    assert spiral > smooth + 0.15


def test_unknown_morphology_is_named() -> None:
    with pytest.raises(ValueError, match="unknown morphology 7"):
        galaxy_components(7, np.random.default_rng(0))
