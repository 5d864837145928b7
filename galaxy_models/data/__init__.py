"""Data: checking and cropping images, stratified splits, WebDataset shards and their manifest,
ingest (survey -> dataset version), training augmentation and the shard loader.

Import the module you need: ``images``, ``splits``, ``manifest`` and ``shards`` need no torch;
``writer`` and ``loader`` bring in webdataset and torch, ``augmentation`` OpenCV."""
