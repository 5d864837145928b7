"""Embeddings: each galaxy's pooled feature vector (the input of the model's linear head), projected
to ``EMBEDDING_SIZE`` (64) dimensions for similarity search.

The projection is a PCA (scikit-learn, full SVD, so it is deterministic) fitted on the features of
the model's own training split, and kept with the model as ``models/<name>/<version>/embedding_pca.npz``
(mean, components, explained variance). It is fitted the first time a catalog asks for embeddings
and written once (first writer wins), so every catalog of a model version uses the same projection.
Where the training split has fewer samples than 64, the missing components are zero.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from galaxy_models.catalogs.schema import EMBEDDING_SIZE
from galaxy_models.inference.agreement import NoSplitError, split_images
from galaxy_models.models.preprocessing import to_model_input
from galaxy_models.models.resnet import ResNet
from galaxy_models.progress import progress_bar
from galaxy_models.registry.cards import ModelCard, model_prefix
from galaxy_models.storage import KeyNotFoundError, Store

PCA_FILE = "embedding_pca.npz"
MAX_PCA_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Projection:
    mean: np.ndarray  # (F,)
    components: np.ndarray  # (EMBEDDING_SIZE, F); rows beyond the fitted rank are zero
    explained_variance_ratio: np.ndarray  # (EMBEDDING_SIZE,)
    samples: int

    def transform(self, features: np.ndarray) -> np.ndarray:
        """(N, F) pooled features -> (N, EMBEDDING_SIZE) float32."""
        if features.ndim != 2 or features.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features must be (N, {self.mean.shape[0]}), got {features.shape}")
        return ((features - self.mean) @ self.components.T).astype(np.float32)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer, mean=self.mean, components=self.components,
            explained_variance_ratio=self.explained_variance_ratio, samples=np.array(self.samples),
        )  # fmt: skip
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Projection:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return cls(
                mean=arrays["mean"], components=arrays["components"],
                explained_variance_ratio=arrays["explained_variance_ratio"], samples=int(arrays["samples"]),
            )  # fmt: skip


class WithFeatures(nn.Module):
    """A ResNet whose output is its logits followed by its pooled features: (N, K + F). One forward
    pass serves both, and any engine (``engines``) can run it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, ResNet):
            raise ValueError(f"{type(model).__name__} is not a ResNet of galaxy_models.models: it has no embeddings")
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(x)
        return torch.cat([self.model.head(features), features], dim=1)


def fit_projection(features: np.ndarray) -> Projection:
    """PCA of (N, F) features to EMBEDDING_SIZE components (zero-padded below that rank)."""
    from sklearn.decomposition import PCA

    n, width = features.shape
    if n < 2:
        raise ValueError(f"a projection needs at least 2 training images, got {n}")
    pca = PCA(n_components=min(EMBEDDING_SIZE, n, width), svd_solver="full").fit(features.astype(np.float64))
    components = np.zeros((EMBEDDING_SIZE, width))
    components[: pca.n_components_] = pca.components_
    ratio = np.zeros(EMBEDDING_SIZE)
    ratio[: pca.n_components_] = pca.explained_variance_ratio_
    return Projection(mean=pca.mean_, components=components, explained_variance_ratio=ratio, samples=n)


def training_features(store: Store, card: ModelCard, model: nn.Module, *, batch_size: int = 64) -> np.ndarray:
    """Pooled features of every image of the model's training split (no augmentation), on the CPU.

    Raises:
        KeyNotFoundError: if the training dataset is not in ``store``.
    """
    name = card.dataset.get("name", "")
    features = []
    model = model.eval()
    try:
        with torch.inference_mode():
            batches = split_images(store, card, "train", batch_size=batch_size)  # streamed, read once
            for images in progress_bar(batches, desc=f"embedding projection ({name} train)", unit="batch"):
                x = to_model_input(images, card.preprocessing, torch.device("cpu"), False)
                features.append(model.forward_features(x).float().numpy())  # type: ignore[operator]
    except NoSplitError as err:
        raise KeyNotFoundError(
            f"embeddings for {card.name}/{card.version} need a projection fitted on its training split: {err}"
        ) from err
    return np.concatenate(features) if features else np.zeros((0, 0))


def projection_key(card: ModelCard) -> str:
    return f"{model_prefix(card.name, card.version)}/{PCA_FILE}"


def load_projection(store: Store, card: ModelCard, model: nn.Module | None = None) -> Projection:
    """The model's projection, fitted and stored first if it has none (``model``: the loaded network,
    to spare loading it again)."""
    key = projection_key(card)
    try:
        return Projection.from_bytes(store.read_bytes(key, max_bytes=MAX_PCA_BYTES))
    except KeyNotFoundError:
        pass
    if model is None:
        from galaxy_models.registry.weights import load_model

        model, _ = load_model(store, card.name, card.version)
    projection = fit_projection(training_features(store, card, model))
    if store.create_if_absent(key, projection.to_bytes()):
        return projection
    return Projection.from_bytes(store.read_bytes(key, max_bytes=MAX_PCA_BYTES))
