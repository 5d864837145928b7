"""The networks of published models: weights written before their card, loaded weights-only into
the registered architecture the card names."""

from __future__ import annotations

import torch
from torch import nn

from galaxy_models.models.architectures import create_model
from galaxy_models.models.serialization import load_checkpoint, save_checkpoint
from galaxy_models.registry.cards import ModelCard, model_prefix, read_card
from galaxy_models.storage import Store


def publish(store: Store, card: ModelCard, state_dict: dict[str, torch.Tensor], figures: dict[str, bytes]) -> bool:
    """Write weights and figures, then the card. Returns False (writing nothing) if the version exists.

    A crash before the card leaves files no reader looks at; the next publish writes them again.
    """
    prefix = model_prefix(card.name, card.version)
    if store.exists(f"{prefix}/card.json"):
        return False
    save_checkpoint(store, f"{prefix}/model.pt", state_dict)
    for filename, png in figures.items():
        store.write_bytes(f"{prefix}/{filename}", png)
    card = card.model_copy(update={"figures": sorted(figures)})
    return store.create_if_absent(f"{prefix}/card.json", card.model_dump_json(indent=2).encode())


def load_model(store: Store, name: str, version: str | None = None) -> tuple[nn.Module, ModelCard]:
    """The published model (the production version if ``version`` is None) in eval mode, and its card.
    Weights load with ``weights_only=True``."""
    card = read_card(store, name, version)
    state = load_checkpoint(store, f"{model_prefix(card.name, card.version)}/model.pt")
    model = create_model(card.architecture, num_classes=len(card.class_names))
    model.load_state_dict(state)
    return model.eval(), card
