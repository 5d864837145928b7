"""Inference: engines that run a published model's forward pass, and classification of survey
batches into catalogs (``classify.classify_pending`` is what the CLI, classify-flow and the
benchmarks run). Nothing here imports training, torch.distributed's launcher, OpenCV or webdataset."""
