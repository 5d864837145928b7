"""Similarity search over catalog embeddings: the galaxies nearest to one galaxy, across every batch
classified by one model version with ``classify --embeddings``.

Neighbours are scikit-learn's exact nearest neighbours in the 64-dimensional PCA embedding
(``inference.embeddings``), by Euclidean distance; the query galaxy comes first (distance 0). No
torch: the embeddings are read from the catalogs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from galaxy_models.catalogs.export import merged_catalog
from galaxy_models.catalogs.incoming import GalaxyNotFoundError
from galaxy_models.domain import CLASS_NAMES, check_name
from galaxy_models.storage import Store

ROW_COLUMNS = ("galaxy_id", "batch_id", "source_key", "predicted_class", "predicted_label", "confidence")


class Neighbour(BaseModel):
    galaxy_id: str
    batch_id: str
    source_key: str
    predicted_label: str
    confidence: float
    distance: float


@dataclass(frozen=True)
class EmbeddedCatalog:
    """The rows of a model version's catalogs that have an embedding, and those embeddings."""

    rows: pa.Table  # ROW_COLUMNS
    vectors: np.ndarray  # (N, 64) float32

    @property
    def classes(self) -> np.ndarray:
        return np.asarray(self.rows.column("predicted_class").to_pylist(), dtype=int)


def embedded_catalog(store: Store, name: str, version: str) -> EmbeddedCatalog:
    """Every catalog row of ``name``/``version`` with an embedding.

    Raises:
        ValueError: if no catalog of that version has embeddings (classify without ``--embeddings``).
    """
    table, _ = merged_catalog(store, name, version)
    table = table.filter(pc.is_valid(table.column("embedding")))
    if table.num_rows == 0:
        raise ValueError(
            f"no catalog of {name}/{version} in {store.uri} has embeddings; classify with --embeddings first"
        )
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32)
    return EmbeddedCatalog(table.select(list(ROW_COLUMNS)), vectors.reshape(table.num_rows, -1))


def nearest(catalog: EmbeddedCatalog, galaxy_id: str, k: int) -> list[Neighbour]:
    """The ``k`` galaxies nearest to ``galaxy_id``, itself first.

    Raises:
        GalaxyNotFoundError: if the galaxy has no embedded row.
        ValueError: if ``k`` is not positive.
    """
    from sklearn.neighbors import NearestNeighbors

    check_name(galaxy_id, "galaxy id")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k!r}")
    ids = catalog.rows.column("galaxy_id").to_pylist()
    if galaxy_id not in ids:
        raise GalaxyNotFoundError(f"galaxy {galaxy_id!r} has no embedded row in the catalogs ({len(ids)} galaxies)")
    query = ids.index(galaxy_id)
    index = NearestNeighbors(n_neighbors=min(k, len(ids))).fit(catalog.vectors)
    distances, rows = index.kneighbors(catalog.vectors[query : query + 1])
    found = [(float(d), int(i)) for d, i in zip(distances[0], rows[0], strict=True) if i != query]
    order = [(0.0, query), *found][: len(rows[0])]  # itself first, even among exact duplicates
    table = catalog.rows.to_pylist()
    return [
        Neighbour(
            galaxy_id=table[i]["galaxy_id"], batch_id=table[i]["batch_id"], source_key=table[i]["source_key"],
            predicted_label=table[i]["predicted_label"], confidence=table[i]["confidence"], distance=d,
        )
        for d, i in order
    ]  # fmt: skip


class NeighbourAgreement(BaseModel):
    """How often a galaxy's nearest neighbours share its predicted class, per class, against chance."""

    k: int
    galaxies: int
    per_class: dict[str, float | None]  # share of the k neighbours (itself excluded) with the same class
    chance: dict[str, float]  # the class's share of all galaxies: the agreement of random neighbours
    overall: float
    overall_chance: float  # sum of squared class shares


def neighbour_agreement(catalog: EmbeddedCatalog, k: int = 10) -> NeighbourAgreement:
    """The share of each galaxy's ``k`` nearest neighbours (itself excluded) that share its predicted
    class, averaged per class, with the agreement random neighbours would give."""
    from sklearn.neighbors import NearestNeighbors

    classes = catalog.classes
    n = len(classes)
    if n <= k:
        raise ValueError(f"need more than k={k} embedded galaxies, got {n}")
    _, rows = NearestNeighbors(n_neighbors=k + 1).fit(catalog.vectors).kneighbors(catalog.vectors)
    same = (classes[rows[:, 1:]] == classes[:, None]).mean(axis=1)
    shares = np.bincount(classes, minlength=len(CLASS_NAMES)) / n
    return NeighbourAgreement(
        k=k,
        galaxies=n,
        per_class={
            label: (float(same[classes == c].mean()) if (classes == c).any() else None)
            for c, label in enumerate(CLASS_NAMES)
        },
        chance={label: float(shares[c]) for c, label in enumerate(CLASS_NAMES)},
        overall=float(same.mean()),
        overall_chance=float((shares**2).sum()),
    )


def gallery_png(store: Store, neighbours: list[Neighbour], title: str, *, crop_size: int) -> bytes:
    """The neighbours' cut-outs in a grid, each with its id, class and distance (an image that is gone
    or unreadable gets an empty tile saying so). ``crop_size``: the model's (``card.preprocessing``)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from galaxy_models.catalogs.thumbnails import cutout

    columns = min(6, len(neighbours))
    lines = -(-len(neighbours) // columns)
    figure, axes = plt.subplots(
        lines, columns, figsize=(2.0 * columns, 2.2 * lines + 0.4), squeeze=False, layout="constrained"
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, n in zip(axes.ravel(), neighbours, strict=False):
        image, reason = cutout(store, n.source_key, crop_size=crop_size)
        if image is None:
            ax.text(0.5, 0.5, reason or "", ha="center", va="center", fontsize=7, wrap=True)
        else:
            ax.imshow(image)
        ax.set_title(f"{n.galaxy_id}\n{n.predicted_label} {n.confidence:.2f}, d={n.distance:.2f}", fontsize=7)
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()
