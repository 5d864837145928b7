"""Tensors in the store (model weights, training checkpoints): written whole or not at all, read
without running pickled code.

``torch.load(weights_only=True)`` only rebuilds tensors and plain containers (dicts, lists,
tuples, numbers, strings); a file whose pickle would import or call anything else is refused. So a
checkpoint holds state dicts, numbers and RNG states, never objects.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch

from galaxy_models.storage import Store


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or is not what it should be."""


def save_checkpoint(store: Store, key: str, state: dict[str, Any]) -> None:
    """Serialise in memory, then one atomic store write: a crash leaves the previous checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    store.write_bytes(key, buffer.getvalue())


def load_checkpoint(store: Store, key: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``.

    Raises:
        KeyNotFoundError: if there is no checkpoint at ``key``.
        CheckpointError: if the file is not a weights-only checkpoint (for example a pickle that
            would run code on load) or is damaged.
    """
    data = store.read_bytes(key)
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(f"refused to load {store.url(key)}: not a weights-only checkpoint ({err})") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{store.url(key)} holds a {type(state).__name__}, not a checkpoint dict")
    return state
