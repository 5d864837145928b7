"""One image: checks, conversions and the centre crop."""

from __future__ import annotations

import io

import numpy as np
import pytest
from badimages import corpus, good_rgb, jpeg, png
from PIL import Image

from galaxy_models.data.images import ImageRejected, crop_image, prepare_image, to_rgb

CORPUS = corpus()


@pytest.mark.parametrize("name", [n for n, (_, reason) in CORPUS.items() if reason])
def test_bad_images_are_rejected_with_a_reason(name: str) -> None:
    data, reason = CORPUS[name]
    with pytest.raises(ImageRejected) as info:
        prepare_image(data, name=name)
    assert reason is not None
    assert reason in info.value.reason


@pytest.mark.parametrize(("name", "mode"), [("cmyk.jpg", "CMYK"), ("grey.jpg", "L")])
def test_grey_and_cmyk_are_converted_to_rgb(name: str, mode: str) -> None:
    prepared = prepare_image(CORPUS[name][0], name=name)
    assert prepared.source_mode == mode
    assert Image.open(io.BytesIO(prepared.jpeg)).mode == "RGB"


def test_crop_is_the_centre_224() -> None:
    # A frame whose centre 224x224 is white and the rest black: the crop must be all white.
    source = np.zeros((424, 424, 3), dtype=np.uint8)
    source[100:324, 100:324] = 255
    prepared = prepare_image(jpeg(Image.fromarray(source), quality=100), name="x.jpg")
    crop = np.asarray(Image.open(io.BytesIO(prepared.jpeg)))
    assert crop.shape == (224, 224, 3)
    assert crop[4:-4, 4:-4].min() > 240
    assert prepared.channel_mean[0] > 0.95


def test_png_is_accepted_when_named_png() -> None:
    prepared = prepare_image(png(good_rgb()), name="123.png")
    assert Image.open(io.BytesIO(prepared.jpeg)).format == "JPEG"


def test_pillow_bomb_guard_is_an_error_not_a_warning() -> None:
    huge = png(Image.new("1", (12000, 12000)))  # 144M pixels: Pillow warns above 89M
    with pytest.raises(ImageRejected, match="decompression bomb"):
        prepare_image(huge, name="huge.png", max_pixels=10**10)


def test_unsupported_extension() -> None:
    with pytest.raises(ImageRejected, match=r"unsupported file type '\.fits'"):
        prepare_image(b"SIMPLE  =", name="x.fits")


def test_any_size_when_not_fixed() -> None:
    prepared = prepare_image(jpeg(good_rgb(size=300)), name="a.jpg", expected_size=None, crop_size=200)
    assert Image.open(io.BytesIO(prepared.jpeg)).size == (200, 200)


def test_16_bit_grey_is_scaled_to_8_bits_not_clipped() -> None:
    values = np.tile(np.linspace(0, 65535, 424, dtype=np.uint16), (424, 1))
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    crop, mode = crop_image(png(image), name="g16.png", crop_size=224)
    pixels = np.asarray(crop)
    assert mode == "I;16"
    assert pixels.shape == (224, 224, 3)
    expected = np.rint(values[100:324, 100:324].astype(np.float32) / 257).astype(np.uint8)
    np.testing.assert_array_equal(pixels[..., 0], expected)
    assert 100 < pixels.mean() < 155  # a mid-grey ramp; Pillow's own conversion makes it almost all 255


def test_floating_point_images_are_refused() -> None:
    image = Image.fromarray(np.ones((424, 424), dtype=np.float32))
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")
    with pytest.raises(ImageRejected):
        crop_image(buffer.getvalue(), name="f.png", crop_size=224)
    with pytest.raises(ImageRejected, match="floating-point image"):
        to_rgb(image)
