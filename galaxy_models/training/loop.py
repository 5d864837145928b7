"""The training loop, in named steps: configure the backends, prepare the model and optimiser,
restore a checkpoint, train one epoch, validate, save; and a ``TrainRun`` record at the end.

One process per device, started by ``torchrun`` (``launch``); each runs ``train``, which joins the
process group torchrun describes and wraps the model in DDP. The run id is a hash of the
configuration and the dataset version, so starting the same run again after a crash, on any
machine that sees the store, resumes it. Data order and augmentation depend only on (seed, epoch)
and the checkpoint restores every generator (``checkpoints.TrainingState``), so on CPU with
``deterministic=True`` a resumed run ends with the weights an uninterrupted one would have had.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import torch
from torch import nn

from galaxy_models.data.loader import make_loader
from galaxy_models.data.manifest import DatasetManifest
from galaxy_models.domain import CLASS_NAMES, ModelRef
from galaxy_models.metrics import Metrics
from galaxy_models.models.architectures import count_parameters, create_model
from galaxy_models.models.preprocessing import Preprocessing, to_model_input
from galaxy_models.models.serialization import save_checkpoint
from galaxy_models.progress import progress_bar
from galaxy_models.registry.weights import load_model
from galaxy_models.storage import Store
from galaxy_models.training.checkpoints import Trainables, TrainingState
from galaxy_models.training.config import TrainConfig
from galaxy_models.training.distributed import Processes
from galaxy_models.training.evaluation import compute_metrics, predict
from galaxy_models.training.losses import criterion
from galaxy_models.training.runs import (
    EpochLog,
    TrainRun,
    manifest_sha256,
    mean_rate,
    read_run,
    record_config,
    resolve_dataset,
    run_prefix,
)

Log = Callable[[str], None]


@dataclass
class _Run:
    """What one process holds for a run once it is prepared."""

    config: TrainConfig
    processes: Processes
    store: Store
    manifest: DatasetManifest
    run_id: str
    prefix: str
    preprocessing: Preprocessing
    channels_last: bool
    autocast_dtype: torch.dtype | None
    trainables: Trainables
    criterion: nn.Module
    parameters: int


def train(config: TrainConfig, *, progress: bool = True, log: Log = print) -> TrainRun:
    """Train (or resume, or find finished) the run ``config`` describes, in this process.

    Under torchrun every process calls this; rank 0 writes to the store and logs.
    """
    processes = Processes()
    try:
        return _train(config, processes, progress=progress and processes.main, log=log)
    finally:
        processes.close()


def _train(config: TrainConfig, processes: Processes, *, progress: bool, log: Log) -> TrainRun:
    store, manifest = resolve_dataset(config)
    run_id = config.run_id(manifest, processes.world)
    finished = read_run(store, config.run_name, run_id)
    if finished is not None:
        if processes.main:
            log(f"run {finished.prefix} already finished (best epoch {finished.best_epoch + 1}); nothing to do")
        return finished
    if config.batch_size % processes.world:
        raise ValueError(f"batch_size {config.batch_size} does not split evenly over {processes.world} processes")
    if processes.main:
        record_config(store, config, run_id)
    configure_backends(config, processes.device)
    run = _prepare(config, processes, store, manifest, run_id)
    restored = TrainingState.restore(store, f"{run.prefix}/checkpoint.pt", run.trainables)
    if processes.main:
        _announce(run, restored, log)
    state = restored or TrainingState()
    net = processes.wrap(run.trainables.model)
    if config.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    per_process = config.batch_size // processes.world
    workers = loader_workers(config, processes.device, processes.world)
    loader = make_loader(
        store, manifest, "train", batch_size=per_process, train=True, workers=workers,
        seed=config.seed, epoch=state.epoch, augmentation=config.augmentation,
    )  # fmt: skip
    val_loader = make_loader(store, manifest, "val", batch_size=per_process, train=False, workers=workers)
    for epoch in range(state.epoch, config.epochs):
        started = time.perf_counter()
        lr, train_loss, images_per_second = _train_epoch(run, net, loader, epoch, progress)
        val, val_loss = _validate(run, net, val_loader)
        entry = EpochLog(
            epoch=epoch, lr=lr, train_loss=train_loss, val_loss=val_loss, val_accuracy=val.accuracy,
            val_f1=val.f1, images_per_second=images_per_second, seconds=time.perf_counter() - started,
        )  # fmt: skip
        improved = state.record(entry)
        if processes.main:
            _save(run, state, improved)
            log(_epoch_line(entry, config.epochs, improved))
        processes.barrier()
    return _finish(run, state, log)


def configure_backends(config: TrainConfig, device: torch.device) -> None:
    """Deterministic kernels if asked for (exact resume), else the fast ones (cuDNN autotuning, TF32)."""
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def loader_workers(config: TrainConfig, device: torch.device, world: int) -> int:
    """DataLoader workers per process: ``config.workers``, raised on CUDA to the host's cores per
    process less one (the training process's own). A GPU step outruns a couple of JPEG decoders, and
    a starved GPU trains no faster than the CPUs feeding it. 0 (load in the training process) stays 0."""
    if device.type != "cuda" or config.workers == 0:
        return config.workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(config.workers, cores // world - 1)


def _prepare(config: TrainConfig, processes: Processes, store: Store, manifest: DatasetManifest, run_id: str) -> _Run:
    """Seed, then build the model, optimiser, schedule, gradient scaler and loss on this process's device."""
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    device = processes.device
    channels_last = config.channels_last is not False  # None: the default, channels-last
    autocast_dtype = autocast_dtype_for(config, device)
    model = create_model(config.model, num_classes=len(CLASS_NAMES))
    if config.init_from is not None:
        load_initial_weights(model, store, config)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config, model)
    trainables = Trainables(
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config)),
        scaler=torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16),
    )
    loss = criterion(config, manifest).to(device)
    return _Run(
        config=config, processes=processes, store=store, manifest=manifest, run_id=run_id,
        prefix=run_prefix(config.run_name, run_id),
        preprocessing=Preprocessing.from_manifest(manifest, config.image_size),
        channels_last=channels_last, autocast_dtype=autocast_dtype, trainables=trainables, criterion=loss,
        parameters=count_parameters(model),
    )  # fmt: skip


def load_initial_weights(model: nn.Module, store: Store, config: TrainConfig) -> None:
    """Copy the weights of the published model ``config.init_from`` into ``model`` (fine-tuning).

    Raises:
        ValueError: if that model is another architecture than the run trains.
        ModelNotFoundError: if it is not published in ``store``.
    """
    ref = ModelRef.parse(str(config.init_from))
    pretrained, card = load_model(store, ref.name, ref.version)
    if card.architecture != config.model:
        raise ValueError(f"init_from {config.init_from} is a {card.architecture} model; this run trains {config.model}")
    model.load_state_dict(pretrained.state_dict())


def autocast_dtype_for(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(config: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the base learning rate at each epoch: warm-up, then the schedule."""

    def factor(epoch: int) -> float:
        if epoch < config.warmup_epochs:
            return 0.1 + 0.9 * epoch / config.warmup_epochs
        done = (epoch - config.warmup_epochs) / max(1, config.epochs - config.warmup_epochs)
        if config.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * done))
        if config.schedule == "step":  # x0.1 at half and three quarters of the run
            return 0.1 ** ((done >= 0.5) + (done >= 0.75))
        return 1.0

    return factor


def _announce(run: _Run, restored: TrainingState | None, log: Log) -> None:
    config, manifest, device = run.config, run.manifest, run.processes.device
    if restored is None:
        log(
            f"training {config.model} ({run.parameters:,} parameters) on {manifest.name}/{manifest.version} "
            f"({manifest.split_size('train')} training images) -> {run.prefix}, "
            f"{run.processes.world} process(es) on {device}"
            + (f", starting from the weights of {config.init_from}" if config.init_from else "")
        )
        return
    log(f"resuming {run.prefix} at epoch {restored.epoch + 1} of {config.epochs}")
    threads = restored.threads or torch.get_num_threads()
    if config.deterministic and device.type == "cpu" and threads != torch.get_num_threads():
        log(
            f"note: the checkpoint was written with {threads} CPU threads, this process has "
            f"{torch.get_num_threads()}; the result will not match an uninterrupted run bit for bit"
        )


def _train_epoch(
    run: _Run, net: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], epoch: int, progress: bool
) -> tuple[float, float, float]:
    """One pass over the training loader. Returns the epoch's learning rate, the mean training loss
    over every process, and the training images per second of the whole job."""
    config, device, t = run.config, run.processes.device, run.trainables
    started = time.perf_counter()
    net.train()
    loss_sum = torch.zeros((), device=device)
    seen = 0
    batches = progress_bar(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", enabled=progress)
    for images, labels in batches:
        x = to_model_input(images, run.preprocessing, device, run.channels_last)
        y = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=run.autocast_dtype, enabled=run.autocast_dtype is not None):
            loss = run.criterion(net(x), y)
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss).backward()
        t.scaler.step(t.optimizer)
        t.scaler.update()
        loss_sum += loss.detach() * len(y)
        seen += len(y)
    seconds = time.perf_counter() - started
    lr = t.optimizer.param_groups[0]["lr"]
    t.scheduler.step()
    return lr, run.processes.mean(float(loss_sum) / max(seen, 1)), run.processes.world * seen / seconds


def _validate(run: _Run, net: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[Metrics, float]:
    """Scores and loss on the validation split, gathered from every process."""
    labels, probabilities = predict(
        net, loader, run.preprocessing, run.processes.device,
        channels_last=run.channels_last, autocast_dtype=run.autocast_dtype,
    )  # fmt: skip
    gathered = run.processes.gather((labels, probabilities))
    y_all = np.concatenate([g[0] for g in gathered])
    p_all = np.concatenate([g[1] for g in gathered])
    log_p = torch.log(torch.from_numpy(p_all).clamp_min(1e-12))
    val_loss = float(nn.functional.nll_loss(log_p, torch.from_numpy(y_all)))
    return compute_metrics(y_all, p_all.argmax(axis=1)), val_loss


def _save(run: _Run, state: TrainingState, improved: bool) -> None:
    """The best weights when they improved, then the checkpoint (each one atomic write)."""
    if improved:
        save_checkpoint(run.store, f"{run.prefix}/best.pt", {"model": run.trainables.model.state_dict()})
    state.save(run.store, f"{run.prefix}/checkpoint.pt", run.trainables)


def _epoch_line(entry: EpochLog, epochs: int, improved: bool) -> str:
    return (
        f"epoch {entry.epoch + 1}/{epochs}: loss {entry.train_loss:.4f}, val loss {entry.val_loss:.4f}, "
        f"val accuracy {100 * entry.val_accuracy:.2f}%, val macro-F1 {100 * entry.val_f1:.2f}%, "
        f"{entry.images_per_second:.1f} images/s{' (best)' if improved else ''}"
    )


def _finish(run: _Run, state: TrainingState, log: Log) -> TrainRun:
    """The run record, written last by rank 0: a run with one is finished."""
    config, manifest = run.config, run.manifest
    record = TrainRun(
        name=config.run_name, run_id=run.run_id, prefix=run.prefix, architecture=config.model,
        parameters=run.parameters, config=config, dataset=manifest.name, dataset_version=manifest.version,
        manifest_sha256=manifest_sha256(run.store, manifest), manifest_seal=manifest.seal, survey=manifest.survey,
        preprocessing=run.preprocessing,
        best_epoch=state.best_epoch, best_val_f1=state.best_f1, history=state.history,
        training_seconds=state.seconds, images_per_second=mean_rate(state.history),
        hardware=run.processes.hardware(), finished_at=datetime.now(UTC),
    )  # fmt: skip
    if run.processes.main:
        run.store.write_bytes(f"{run.prefix}/run.json", record.model_dump_json(indent=2).encode())
        best = f"{100 * state.best_f1:.2f}% at epoch {state.best_epoch + 1}"
        log(f"finished {run.prefix}: best validation macro-F1 {best}")
    run.processes.barrier()
    return record
