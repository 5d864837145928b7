"""Where the model looked: Grad-CAM and CBAM spatial attention for single galaxies.

For each cut-out: the predicted class and its calibrated probability (softmax of the logits over the
card's temperature); a Grad-CAM map of the predicted class's logit on the output of the last stage
(captum's ``LayerGradCam``, negative evidence clipped as in Selvaraju et al., upsampled bilinearly to
the cut-out with ``LayerAttribution.interpolate``); and, for CBAM models, the spatial-attention gate
(``SpatialAttention.gate``, in [0, 1]) of the last bottleneck of each of the last two stages, recomputed
by a forward hook from that module's input during the prediction pass and upsampled the same way.
Plain ResNets have no gate: their panels show the cut-out and Grad-CAM only.

The maps are coarse: the last two stages see the model input at 1/16 and 1/32 of its side (4x4 and
2x2 at the smoke preset's 64 px, 14x14 and 7x7 at the paper's 224); panels say which grid they show.
Panels are drawn on matplotlib's Agg canvas without pyplot: no global figure state is touched.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch
from captum.attr import LayerAttribution, LayerGradCam
from PIL import Image
from torch import nn

from galaxy_models.catalogs.incoming import IMAGE_EXTENSIONS, INCOMING, GalaxyNotFoundError, list_batches
from galaxy_models.catalogs.manifest import read_catalog, read_catalog_manifest
from galaxy_models.data.images import ImageRejected, crop_image, read_image_bytes
from galaxy_models.data.manifest import DatasetManifest
from galaxy_models.data.shards import iter_shard_members
from galaxy_models.domain import check_name, galaxy_id_from_key, is_name
from galaxy_models.inference.probabilities import card_temperature, class_probabilities
from galaxy_models.models.architectures import create_model
from galaxy_models.models.attention import SpatialAttention
from galaxy_models.models.preprocessing import to_model_input
from galaxy_models.registry.cards import ModelCard
from galaxy_models.registry.weights import load_model
from galaxy_models.storage import KeyNotFoundError, Store

# Images per forward and backward pass: bounds what autograd keeps for Grad-CAM (CS_ResNet50 at 224 px
# keeps about 210 MiB an image; the tiny models at 64 px a few hundred KiB).
BATCH_SIZE = 8
READ_THREADS = 8
# Panel layout, in pixels at DPI: each picture's side, the gaps, the room above the pictures for the
# heading and the two-line captions; the Grad-CAM overlay's opacity.
TILE, GAP, HEADER, DPI = 160, 6, 54, 100
HEAT_ALPHA = 0.45
MIN_WIDTH = 3 * (TILE + GAP) + GAP
PNG_LEVEL = 4  # zlib level: 6 (the default) is 3x slower here for 5% smaller files


@dataclass(frozen=True)
class AttentionMap:
    """A CBAM spatial-attention gate: ``weights`` (H, W) in [0, 1] at the cut-out's size, from a
    ``grid`` of the stage's own resolution."""

    stage: int  # 1-4, as in the paper's figures
    grid: tuple[int, int]
    weights: np.ndarray


@dataclass(frozen=True)
class Explanation:
    """One galaxy: its cut-out (H, W, 3) uint8, the predicted class and calibrated probability, the
    Grad-CAM map (H, W) float32 (>= 0, unnormalised) and the CBAM gates (none for plain ResNets)."""

    galaxy_id: str
    image: np.ndarray
    predicted_class: int
    class_name: str
    probability: float
    gradcam: np.ndarray
    gradcam_grid: tuple[int, int]
    attention: tuple[AttentionMap, ...]


def explain_images(
    model: nn.Module,
    card: ModelCard,
    images: np.ndarray | Sequence[np.ndarray | Image.Image],
    *,
    galaxy_ids: Sequence[str] | None = None,
    batch_size: int = BATCH_SIZE,
) -> list[Explanation]:
    """Explanations of cut-outs of one size (uint8 (N, H, W, 3), or RGB PIL images) by ``model``, a
    ResNet of the registry with ``card``'s weights, on whatever device it is; one forward pass (with the
    gate hooks) and one Grad-CAM forward and backward pass per ``batch_size`` images. Puts the model in
    eval mode.

    Raises:
        ValueError: if the images are not (H, W, 3) uint8 of one size, ``galaxy_ids`` does not match
            them, or the model has no ResNet stages.
    """
    crops = _as_crops(images)
    ids = [str(i) for i in range(len(crops))] if galaxy_ids is None else list(galaxy_ids)
    if len(ids) != len(crops):
        raise ValueError(f"{len(ids)} galaxy ids for {len(crops)} images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    stages = _stages(model)
    model.eval()
    explanations: list[Explanation] = []
    for start in range(0, len(crops), batch_size):
        chunk = crops[start : start + batch_size]
        explanations += _explain_batch(model, stages, card, chunk, ids[start : start + batch_size])
    return explanations


def _as_crops(images: np.ndarray | Sequence[np.ndarray | Image.Image]) -> list[np.ndarray]:
    crops = [np.asarray(i.convert("RGB")) if isinstance(i, Image.Image) else np.asarray(i) for i in images]
    for index, crop in enumerate(crops):
        if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3 or crop.shape != crops[0].shape:
            raise ValueError(
                f"image {index} is {crop.dtype} {crop.shape}; expected uint8 (H, W, 3) images of one size "
                f"{crops[0].shape}"
            )
    return crops


def _stages(model: nn.Module) -> nn.Sequential:
    stages = getattr(model, "stages", None)
    if not isinstance(stages, nn.Sequential) or len(stages) < 2:
        raise ValueError(f"cannot explain a {type(model).__name__}: Grad-CAM needs a ResNet's stages")
    return stages


def _explain_batch(
    model: nn.Module, stages: nn.Sequential, card: ModelCard, crops: list[np.ndarray], ids: list[str]
) -> list[Explanation]:
    device = next(model.parameters()).device
    size = crops[0].shape[:2]
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
    inputs = to_model_input(batch, card.preprocessing, device)
    with _spatial_gates(stages) as gates, torch.no_grad():
        probabilities = class_probabilities(model, inputs, temperature=card_temperature(card))
    predicted = probabilities.argmax(dim=1)
    cam = LayerGradCam(model, stages[-1]).attribute(inputs, target=predicted.to(device), relu_attributions=True)
    grid = (int(cam.shape[2]), int(cam.shape[3]))
    cams = LayerAttribution.interpolate(cam.detach(), size, interpolate_mode="bilinear")[:, 0].float().cpu().numpy()
    maps = {
        stage: (
            (int(gate.shape[2]), int(gate.shape[3])),
            LayerAttribution.interpolate(gate, size, interpolate_mode="bilinear")[:, 0].float().cpu().numpy(),
        )
        for stage, gate in sorted(gates.items())
    }
    return [
        Explanation(
            galaxy_id=galaxy_id,
            image=crop,
            predicted_class=int(predicted[i]),
            class_name=card.class_names[int(predicted[i])],
            probability=float(probabilities[i, predicted[i]]),
            gradcam=cams[i],
            gradcam_grid=grid,
            attention=tuple(AttentionMap(stage, g, weights[i]) for stage, (g, weights) in maps.items()),
        )
        for i, (galaxy_id, crop) in enumerate(zip(ids, crops, strict=True))
    ]


@contextmanager
def _spatial_gates(stages: nn.Sequential) -> Iterator[dict[int, torch.Tensor]]:
    """Stage number -> the spatial gate of that stage's last bottleneck, for the last two stages of a
    CBAM model (nothing for a plain ResNet), filled by the forward passes run inside the block."""
    gates: dict[int, torch.Tensor] = {}
    handles = []
    for number in (len(stages) - 1, len(stages)):
        last_unit = list(stages[number - 1].children())[-1]
        spatial = next((m for m in last_unit.modules() if isinstance(m, SpatialAttention)), None)
        if spatial is not None:
            handles.append(spatial.register_forward_hook(partial(_keep_gate, gates, number)))
    try:
        yield gates
    finally:
        for handle in handles:
            handle.remove()


def _keep_gate(
    gates: dict[int, torch.Tensor], stage: int, module: SpatialAttention, inputs: tuple[Any, ...], output: Any
) -> None:
    gates[stage] = module.gate(inputs[0]).detach()


def panel_png(explanation: Explanation, title: str | None = None) -> bytes:
    """One explanation as a PNG strip of ``TILE``-pixel pictures: the cut-out, the cut-out under its
    Grad-CAM map (jet, scaled to its maximum) and the spatial-attention gates (viridis, a fixed 0-1
    scale), each captioned with the grid it comes from; headed ``title`` (default: the galaxy ID), the
    predicted class and its probability.

    The pictures are composed in NumPy and placed pixel for pixel (``figimage``), so matplotlib only
    lays out text: a few times faster than an axes per picture, which matters for a report of many."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tiles = _tiles(explanation)
    strip = len(tiles) * (TILE + GAP) + GAP
    width, height = max(strip, MIN_WIDTH), TILE + HEADER + GAP  # room for a long heading over two pictures
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    canvas = FigureCanvasAgg(figure)
    heading = f"{title or f'galaxy {explanation.galaxy_id}'}: predicted {explanation.class_name}"
    figure.text(0.5, 1 - 4 / height, f"{heading}, p = {explanation.probability:.2f}", ha="center", va="top", fontsize=9)
    for index, (caption, pixels) in enumerate(tiles):
        left = (width - strip) // 2 + GAP + index * (TILE + GAP)
        figure.figimage(pixels, xo=left, yo=GAP, origin="upper")
        figure.text((left + TILE / 2) / width, (GAP + TILE + 2) / height, caption, ha="center", va="bottom", fontsize=8)
    canvas.draw()
    buffer = io.BytesIO()  # RGB, not matplotlib's RGBA: a third smaller, and quicker to compress
    Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def _tiles(explanation: Explanation) -> list[tuple[str, np.ndarray]]:
    """(caption, (TILE, TILE, 3) uint8 RGB) of each picture of a panel."""
    from matplotlib import colormaps

    image = np.asarray(Image.fromarray(explanation.image).resize((TILE, TILE), Image.Resampling.BILINEAR)) / 255.0
    cam = _resized(explanation.gradcam)
    heat = colormaps["jet"](cam / (cam.max() or 1.0))[..., :3]
    height, width = explanation.image.shape[:2]
    tiles = [
        (f"cut-out\n{width}x{height} px", image),
        (f"Grad-CAM\nlast stage, {_grid(explanation.gradcam_grid)}", (1 - HEAT_ALPHA) * image + HEAT_ALPHA * heat),
    ]
    for gate in explanation.attention:
        caption = f"spatial attention (0-1)\nstage {gate.stage}, {_grid(gate.grid)}"
        tiles.append((caption, colormaps["viridis"](np.clip(_resized(gate.weights), 0, 1))[..., :3]))
    return [(caption, np.rint(255 * np.clip(rgb, 0, 1)).astype(np.uint8)) for caption, rgb in tiles]


def _resized(values: np.ndarray) -> np.ndarray:
    """A float (H, W) map resampled to TILE x TILE (bilinear, antialiased when shrinking)."""
    picture = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))  # mode "F"
    return np.asarray(picture.resize((TILE, TILE), Image.Resampling.BILINEAR))


def _grid(grid: tuple[int, int]) -> str:
    return f"{grid[0]}x{grid[1]}"


def explain_keys(store: Store, card: ModelCard, keys: Sequence[str]) -> dict[str, bytes]:
    """Panels (key -> PNG) of the images at ``keys`` (e.g. ``incoming/<batch>/<id>.jpg``), read and
    centre-cropped as the classifier does, by the published model ``card`` describes. A key whose
    image is gone, unreadable or not named by a valid galaxy ID is left out."""
    keys = list(dict.fromkeys(keys))
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        read = dict(zip(keys, pool.map(partial(_read_crop, store, card), keys), strict=True))
    crops = {key: crop for key, crop in read.items() if crop is not None}
    if not crops:
        return {}
    model, _ = load_model(store, card.name, card.version)
    explanations = explain_images(model, card, list(crops.values()), galaxy_ids=[galaxy_id_from_key(k) for k in crops])
    return {key: panel_png(explanation) for key, explanation in zip(crops, explanations, strict=True)}


def explain_galaxy(store: Store, card: ModelCard, galaxy_id: str) -> tuple[str, Explanation]:
    """The image key of ``galaxy_id`` (``find_galaxy``) and its explanation by the model of ``card``.

    Raises:
        ValueError: if the ID is invalid or its image cannot be read (saying why).
        GalaxyNotFoundError: if the galaxy is nowhere in the store.
    """
    key = find_galaxy(store, card, galaxy_id)
    try:
        crop = _crop(store, card, key)
    except ImageRejected as err:
        raise ValueError(f"cannot explain galaxy {galaxy_id!r}: {store.url(key)} is unreadable: {err.reason}") from None
    model, _ = load_model(store, card.name, card.version)
    return key, explain_images(model, card, [crop], galaxy_ids=[galaxy_id])[0]


def _crop(store: Store, card: ModelCard, key: str) -> np.ndarray:
    """The cut-out the classifier sees of ``key``: the size-capped read and the ingest checks and crop."""
    crop, _ = crop_image(
        read_image_bytes(store, key), name=key.rsplit("/", 1)[-1], crop_size=card.preprocessing.crop_size
    )
    return np.asarray(crop)


def _read_crop(store: Store, card: ModelCard, key: str) -> np.ndarray | None:
    if not is_name(galaxy_id_from_key(key)):
        return None
    try:
        return _crop(store, card, key)
    except (ImageRejected, KeyNotFoundError):
        return None


def find_galaxy(store: Store, card: ModelCard, galaxy_id: str) -> str:
    """The image key of ``galaxy_id``: its source in a committed catalog of ``card``'s version (batches
    in name order; the first whose image is still there), else ``incoming/<batch>/<id>.(jpg|jpeg|png)``.

    Raises:
        ValueError: if ``galaxy_id`` is not a valid ID.
        GalaxyNotFoundError: naming the galaxy and the store, if it is in neither.
    """
    check_name(galaxy_id, "galaxy id")
    for key in _catalogued_keys(store, card.version, galaxy_id):
        if store.exists(key):
            return key
    for batch in list_batches(store):
        for key in store.list(f"{INCOMING}/{batch}/{galaxy_id}."):
            if key.count("/") == 2 and key.lower().endswith(IMAGE_EXTENSIONS) and galaxy_id_from_key(key) == galaxy_id:
                return key
    raise GalaxyNotFoundError(
        f"galaxy {galaxy_id!r} is in no catalog of {card.name}/{card.version} and in no batch under "
        f"{store.url(INCOMING)}/"
    )


def _catalogued_keys(store: Store, version: str, galaxy_id: str) -> list[str]:
    """Source keys of ``galaxy_id``'s rows in the committed catalogs of ``version``."""
    suffix = f"/{version}/_manifest.json"
    batches = sorted({k.split("/")[1] for k in store.list("catalogs/") if k.count("/") == 3 and k.endswith(suffix)})
    keys: list[str] = []
    for batch in batches:
        manifest = read_catalog_manifest(store, batch, version)
        if manifest is None:
            continue
        table = read_catalog(store, manifest)
        keys += table.filter(pc.equal(table["galaxy_id"], galaxy_id)).column("source_key").to_pylist()
    return keys


def validation_panels(
    store: Store, card: ModelCard, weights: dict[str, torch.Tensor], manifest: DatasetManifest, split: str = "val"
) -> dict[str, bytes]:
    """``explain_<class name>.png`` -> panel, one per class present in ``split`` of the dataset: its first
    sample of that Table I class (in shard order), explained by ``card``'s architecture with ``weights``.

    Raises:
        ValueError: if the dataset has no such split, or a stored crop cannot be read.
    """
    samples = _first_of_each_class(store, manifest, split)
    if not samples:
        return {}
    model = create_model(card.architecture, num_classes=len(card.class_names))
    model.load_state_dict(weights)
    crops = [_stored_crop(manifest, gid, jpeg) for gid, jpeg in samples.values()]
    ids = [gid for gid, _ in samples.values()]
    explanations = explain_images(model, card, crops, galaxy_ids=ids)
    return {
        f"explain_{card.class_names[label]}.png": panel_png(
            explanation, f"{split} galaxy {explanation.galaxy_id} (true class {card.class_names[label]})"
        )
        for label, explanation in zip(samples, explanations, strict=True)
    }


def _first_of_each_class(store: Store, manifest: DatasetManifest, split: str) -> dict[int, tuple[str, bytes]]:
    """Class -> (galaxy ID, stored JPEG) of the first sample of that class in ``split``, in class order.
    Only shards whose manifest entry counts a class still wanted are read, each until nothing is."""
    wanted = {int(label) for label, n in manifest.totals.get(split, {}).items() if n > 0}
    found: dict[int, tuple[str, bytes]] = {}
    for shard in manifest.split_shards(split):
        if not wanted & {int(label) for label, n in shard.classes.items() if n > 0}:
            continue
        with store.open_read(shard.key) as stream:
            for label, galaxy_id, jpeg in _labelled_samples(stream, shard.key):
                if label in wanted:
                    found[label] = (galaxy_id, jpeg)
                    wanted.discard(label)
                if not wanted:
                    break
        if not wanted:
            break
    return dict(sorted(found.items()))


def _labelled_samples(stream: Any, shard: str) -> Iterator[tuple[int, str, bytes]]:
    """(class, galaxy ID, stored JPEG) of each sample of a shard stream, once both members are read
    (a sample's members are adjacent, in either order)."""
    current, sample = "", dict[str, bytes]()
    for name, data in iter_shard_members(stream, shard):
        galaxy_id, _, extension = name.partition(".")
        if galaxy_id != current:
            current, sample = galaxy_id, {}
        sample[extension] = data
        if extension in ("jpg", "cls") and "jpg" in sample and "cls" in sample:
            yield int(sample["cls"].decode()), galaxy_id, sample["jpg"]


def _stored_crop(manifest: DatasetManifest, galaxy_id: str, jpeg: bytes) -> np.ndarray:
    try:
        crop, _ = crop_image(
            jpeg, name=f"{galaxy_id}.jpg", crop_size=manifest.crop_size, expected_size=manifest.crop_size
        )
    except ImageRejected as err:
        raise ValueError(f"sample {galaxy_id!r} of dataset {manifest.name}/{manifest.version}: {err.reason}") from None
    return np.asarray(crop)
