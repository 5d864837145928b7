"""The networks of published models: weights written before their card, loaded weights-only into
the registered architecture the card names."""

from __future__ import annotations

import torch
from torch import nn

from galaxy_models.models.architectures import create_model
from galaxy_models.models.serialization import CheckpointError, load_checkpoint, save_checkpoint
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
    key = f"{model_prefix(card.name, card.version)}/model.pt"
    state = load_checkpoint(store, key)
    model = create_model(card.architecture, num_classes=len(card.class_names))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # torch lists every missing and unexpected key over many lines
        missing, unexpected = _key_difference(model.state_dict(), state)
        raise CheckpointError(
            f"{store.url(key)} does not hold {card.architecture} weights for {len(card.class_names)} classes "
            f"({missing} missing, {unexpected} unexpected or misshapen tensors); its card and weights disagree"
        ) from err
    return model.eval(), card


def _key_difference(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> tuple[int, int]:
    """Tensors the model needs that ``found`` lacks, and tensors of ``found`` it has no place for."""
    missing = sum(1 for k in expected if k not in found)
    unexpected = sum(1 for k, v in found.items() if k not in expected or expected[k].shape != getattr(v, "shape", None))
    return missing, unexpected
