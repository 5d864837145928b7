"""Synthetic SDSS-like galaxy images made with GalSim, one morphology per class of Table I.

Each image is 424 x 424 RGB at SDSS's 0.396"/pixel, like the Kaggle GZ2 cut-outs: a centred galaxy
(smooth Sersic profiles whose axis ratio decides round / in-between / cigar; an inclined exponential
disk with a bulge for edge-on; a face-on disk with logarithmic spiral arms and a bulge for spiral),
convolved with a Moffat PSF, with random size, flux and orientation, sometimes field stars and
background galaxies, Gaussian sky noise per band, and an asinh stretch to 8 bits as in SDSS colour
composites. Everything random comes from the ``numpy.random.Generator`` passed in, so an image is a
pure function of its seed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import galsim
import numpy as np
from PIL import Image

IMAGE_SIZE = 424
PIXEL_SCALE = 0.396  # arcsec per pixel (SDSS)
# Relaxed accuracy: ~4 ms per Sersic instead of ~25 ms, invisible after noise and 8-bit stretch.
_GSPARAMS = galsim.GSParams(folding_threshold=1e-2, maxk_threshold=3e-3, kvalue_accuracy=1e-4)
# (R, G, B) flux ratios: old stars (bulges, ellipticals) are red, star-forming disks blue.
OLD_STARS = np.array([1.0, 0.72, 0.48])
YOUNG_STARS = np.array([0.72, 0.82, 1.0])
STAR_COLOURS = (np.array([1.0, 0.85, 0.7]), np.array([0.85, 0.9, 1.0]), np.array([1.0, 1.0, 0.95]))
# Axis ratio q = b/a of the smooth classes (gaps between ranges keep the classes distinct).
SMOOTH_AXIS_RATIO = {0: (0.82, 1.0), 1: (0.45, 0.72), 2: (0.16, 0.36)}
SKY_SIGMA = 1.0  # per band, in the flux units used below
SOFTENING = 3.0  # asinh softening, in units of SKY_SIGMA
WHITE = 150.0  # flux per pixel that maps to 255


@dataclass(frozen=True)
class Component:
    """One light profile, its colour and where its centre sits relative to the image centre."""

    profile: galsim.GSObject
    colour: np.ndarray
    offset: tuple[float, float] = (0.0, 0.0)  # pixels
    stamp: int = 128  # side of the square it is drawn into, pixels


def _stamp_size(half_light_px: float, factor: float = 8.0) -> int:
    size = int(np.ceil(factor * half_light_px + 24))
    return min(IMAGE_SIZE, size + size % 2)


def _angle(rng: np.random.Generator) -> galsim.Angle:
    return float(rng.uniform(0.0, np.pi)) * galsim.radians


def _total_flux(rng: np.random.Generator, half_light_px: float) -> float:
    # Surface brightness at the half-light radius between 3 and 15 sky sigmas.
    return float(rng.uniform(6.0, 25.0) * 2.0 * np.pi * half_light_px**2)


def _smooth(label: int, rng: np.random.Generator) -> list[Component]:
    hlr = float(rng.uniform(5.0, 11.0))  # arcsec
    n = float(rng.choice([2.0, 2.5, 3.0, 3.5, 4.0]))
    q = float(rng.uniform(*SMOOTH_AXIS_RATIO[label]))
    hlr_px = hlr / PIXEL_SCALE
    profile = (
        galsim.Sersic(n=n, half_light_radius=hlr, trunc=4.0 * hlr, flux_untruncated=True, gsparams=_GSPARAMS)
        .withFlux(_total_flux(rng, hlr_px))
        .shear(q=q, beta=_angle(rng))
    )
    return [Component(profile, OLD_STARS * rng.uniform(0.95, 1.05, 3), stamp=_stamp_size(hlr_px))]


def _edge_on(rng: np.random.Generator) -> list[Component]:
    hlr = float(rng.uniform(7.0, 13.0))
    hlr_px = hlr / PIXEL_SCALE
    flux = _total_flux(rng, hlr_px) * 0.6
    bulge_fraction = float(rng.uniform(0.1, 0.35))
    beta = _angle(rng)
    disk = galsim.InclinedExponential(
        float(rng.uniform(84.0, 90.0)) * galsim.degrees,
        half_light_radius=hlr,
        scale_h_over_r=float(rng.uniform(0.06, 0.14)),
        flux=flux * (1 - bulge_fraction),
        gsparams=_GSPARAMS,
    ).rotate(beta)
    bulge = galsim.Sersic(n=2.0, half_light_radius=0.25 * hlr, flux=flux * bulge_fraction, gsparams=_GSPARAMS).shear(
        q=float(rng.uniform(0.6, 0.9)), beta=beta + 90 * galsim.degrees
    )
    stamp = _stamp_size(hlr_px, 8.0)
    return [Component(disk, YOUNG_STARS * 0.9 + OLD_STARS * 0.1, stamp=stamp), Component(bulge, OLD_STARS)]


def _spiral_arms(rng: np.random.Generator, scale_px: float, stamp: int) -> np.ndarray:
    """A face-on exponential disk modulated by m logarithmic arms (numpy; GalSim interpolates it)."""
    y, x = np.mgrid[:stamp, :stamp] - (stamp - 1) / 2.0
    r = np.hypot(x, y) + 1.0
    theta = np.arctan2(y, x)
    arms = int(rng.choice([2, 2, 2, 3, 4]))
    pitch = np.radians(rng.uniform(12.0, 30.0))
    phase = arms * (theta - np.log(r) / np.tan(pitch)) + rng.uniform(0, 2 * np.pi)
    contrast = float(rng.uniform(0.6, 0.95))
    # Arms sharpen with a power of the cosine; the disk's inner part stays smooth.
    wave = (0.5 * (1.0 + np.cos(phase))) ** 3
    ramp = np.clip(r / (0.6 * scale_px), 0.0, 1.0)
    return np.exp(-r / scale_px) * (1.0 - contrast * ramp + 2.5 * contrast * ramp * wave)


def _spiral(rng: np.random.Generator) -> list[Component]:
    hlr = float(rng.uniform(8.0, 14.0))
    hlr_px = hlr / PIXEL_SCALE
    scale_px = hlr_px / 1.678  # exponential scale length from the half-light radius
    stamp = _stamp_size(hlr_px, 7.0)
    flux = _total_flux(rng, hlr_px) * 0.8
    bulge_fraction = float(rng.uniform(0.08, 0.3))
    inclination = np.radians(rng.uniform(0.0, 45.0))
    beta = _angle(rng)
    disk = (
        galsim.InterpolatedImage(
            galsim.Image(_spiral_arms(rng, scale_px, stamp), scale=PIXEL_SCALE),
            # The pattern is already smooth and padded by the stamp: skip GalSim's k-space
            # extent search and pad less (44 -> ~12 ms a spiral).
            calculate_maxk=False,
            calculate_stepk=False,
            pad_factor=2.0,
            gsparams=_GSPARAMS,
        )
        .withFlux(flux * (1 - bulge_fraction))
        .shear(q=float(np.cos(inclination)), beta=beta)
    )
    bulge = galsim.Sersic(n=2.5, half_light_radius=0.18 * hlr, flux=flux * bulge_fraction, gsparams=_GSPARAMS)
    return [Component(disk, YOUNG_STARS, stamp=stamp), Component(bulge, OLD_STARS)]


def _neighbours(rng: np.random.Generator) -> list[Component]:
    """Field stars and small background galaxies away from the centre, as in real cut-outs."""
    found = []
    for _ in range(rng.poisson(0.8)):
        radius, angle = rng.uniform(50, 200), rng.uniform(0, 2 * np.pi)
        star = galsim.DeltaFunction(flux=float(10 ** rng.uniform(2.0, 4.0)))
        colour = STAR_COLOURS[int(rng.integers(len(STAR_COLOURS)))]
        found.append(Component(star, colour, (radius * np.cos(angle), radius * np.sin(angle)), stamp=48))
    if rng.random() < 0.3:
        radius, angle = rng.uniform(70, 200), rng.uniform(0, 2 * np.pi)
        hlr = float(rng.uniform(0.8, 2.5))
        galaxy = galsim.Exponential(half_light_radius=hlr, flux=_total_flux(rng, hlr / PIXEL_SCALE), gsparams=_GSPARAMS)
        galaxy = galaxy.shear(q=float(rng.uniform(0.3, 1.0)), beta=_angle(rng))
        found.append(Component(galaxy, OLD_STARS, (radius * np.cos(angle), radius * np.sin(angle)), stamp=64))
    return found


def galaxy_components(morphology: int, rng: np.random.Generator) -> list[Component]:
    """The light profiles of one galaxy of the given class (0 round ... 4 spiral)."""
    if morphology in SMOOTH_AXIS_RATIO:
        return _smooth(morphology, rng)
    if morphology == 3:
        return _edge_on(rng)
    if morphology == 4:
        return _spiral(rng)
    raise ValueError(f"unknown morphology {morphology!r}; expected 0-4")


def render(components: list[Component], rng: np.random.Generator) -> np.ndarray:
    """Draw components through one PSF onto a noisy sky; returns uint8 (424, 424, 3)."""
    psf = galsim.Moffat(beta=3.5, fwhm=float(rng.uniform(1.1, 1.8)), gsparams=_GSPARAMS)
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    centre = IMAGE_SIZE / 2.0
    for comp in components:
        # Integer pixel placement plus a sub-pixel GalSim offset keeps the centre exact.
        cx, cy = centre + comp.offset[0], centre + comp.offset[1]
        x0, y0 = int(np.floor(cx)) - comp.stamp // 2, int(np.floor(cy)) - comp.stamp // 2
        stamp = (
            galsim.Convolve(comp.profile, psf)
            .drawImage(nx=comp.stamp, ny=comp.stamp, scale=PIXEL_SCALE, offset=(cx % 1.0, cy % 1.0))
            .array
        )
        xs, ys = (
            slice(max(x0, 0), min(x0 + comp.stamp, IMAGE_SIZE)),
            slice(max(y0, 0), min(y0 + comp.stamp, IMAGE_SIZE)),
        )
        part = stamp[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        canvas[ys, xs] += part[..., None] * comp.colour[None, None, :].astype(np.float32)
    # float32 and in place: the sky and the stretch are most of a frame's cost outside GalSim.
    noise = rng.standard_normal(canvas.shape, dtype=np.float32)
    noise *= np.float32(SKY_SIGMA)
    canvas += noise
    canvas *= np.float32(1.0 / SOFTENING)
    np.arcsinh(canvas, out=canvas)
    canvas *= np.float32(255.0 / np.arcsinh(WHITE / SOFTENING))
    np.clip(canvas, 0.0, 255.0, out=canvas)
    return canvas.astype(np.uint8)


def render_galaxy(morphology: int, rng: np.random.Generator) -> np.ndarray:
    """A full 424 x 424 RGB cut-out of a galaxy of the given class, with neighbours and noise."""
    return render(galaxy_components(morphology, rng) + _neighbours(rng), rng)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of a uint8 RGB array (SDSS cut-outs are JPEGs too)."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
