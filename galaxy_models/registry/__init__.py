"""The model registry: published models, kept in the store next to the data.

    models/<name>/<version>/model.pt       weights only (a state dict; loaded with weights_only=True)
    models/<name>/<version>/*.png          confusion matrices and training curves
    models/<name>/<version>/card.json      written last: a version without a card does not exist
    models/<name>/production.json          which version is promoted, replaced by compare-and-swap

``cards`` reads and promotes (JSON only, no torch); ``weights`` writes and loads the networks.
Training publishes into it (``training.publishing``), inference reads from it.
"""
