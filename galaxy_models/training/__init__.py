"""Training: configs and presets, the loop, torchrun launch, checkpoints, evaluation, publishing.

``pipeline.train_evaluate_publish`` is the one story the CLI, train-flow and the benchmarks run.
"""
