"""Cut-outs of catalogued galaxies for people to look at: the image a catalog row names, read with
the classifier's size cap and checks and centre-cropped as it was classified, or why there is none."""

from __future__ import annotations

from PIL import Image

from galaxy_models.data.images import DEFAULT_MAX_IMAGE_BYTES, ImageRejected, crop_image, read_image_bytes
from galaxy_models.storage import KeyNotFoundError, Store


def cutout(
    store: Store, key: str, *, crop_size: int, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
) -> tuple[Image.Image | None, str | None]:
    """(the RGB centre crop of ``key``, None), or (None, why not: gone from the store or unreadable)."""
    try:
        data = read_image_bytes(store, key, max_bytes)
        crop, _ = crop_image(data, name=key.rsplit("/", 1)[-1], crop_size=crop_size)
    except KeyNotFoundError:
        return None, "image gone from the store"
    except ImageRejected as err:
        return None, f"unreadable: {err.reason}"
    return crop, None
