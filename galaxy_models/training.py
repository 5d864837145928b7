"""Training any registered model on a dataset version's shards, on one CPU or many GPUs.

One process per device, started by ``torchrun`` (``launch``); each runs ``train``, which joins the
process group torchrun describes in the environment (NCCL on GPUs, gloo on CPUs) and wraps the
model in DDP. A run lives under ``runs/<name>/<run id>/`` in the store:

- ``checkpoint.pt``: everything needed to continue (model, optimizer, scheduler, scaler, next
  epoch, best score so far, history, RNG states), rewritten atomically after every epoch;
- ``best.pt``: the weights of the epoch with the best validation macro-F1;
- ``run.json``: written last, when the run has finished; a run that has one is not trained again.

The run id is a hash of the configuration and the dataset version, so starting the same run again
after a crash, on any machine that sees the store, resumes it. Data order and augmentation depend
only on (seed, epoch) and the checkpoint restores every generator, so on CPU with
``deterministic=True`` a resumed run ends with the weights an uninterrupted one would have had.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from tqdm import tqdm

from galaxy_models.checkpoints import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from galaxy_models.data import Augmentation, Preprocessing, make_loader, to_model_input
from galaxy_models.evaluation import Metrics, compute_metrics, predict
from galaxy_models.labels import CLASS_NAMES
from galaxy_models.registry import count_parameters, create_model
from galaxy_models.shards import DatasetManifest, read_manifest
from galaxy_models.storage import KeyNotFoundError, Store, check_key, open_store

Preset = Literal["paper", "smoke"]

PRESETS: dict[str, dict[str, Any]] = {
    # Table IV: 100 epochs, learning rate 0.01, batch 128, "regularisation" (weight decay here), 224 crops.
    "paper": {"epochs": 100, "batch_size": 128, "lr": 0.01, "image_size": 224, "weight_decay": 5e-4},
    # Seconds on a laptop CPU: the tiny CBAM network on 64-pixel inputs, for tests and the demo.
    "smoke": {
        "model": "cs_resnet_tiny",
        "dataset": "synthetic",
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.05,
        "image_size": 64,
        "workers": 1,
    },
}


class TrainConfig(BaseModel):
    """Everything that decides a training run. ``preset`` fills the fields not given explicitly."""

    model_config = ConfigDict(extra="forbid")

    preset: Preset | None = Field(None, description="paper (Table IV) or smoke (seconds on a CPU)")
    store: str = Field("./galaxy-data", description="store holding the dataset; runs and models go there too")
    dataset: str = Field("gz2", description="dataset name under datasets/")
    dataset_version: str | None = Field(None, description="a version of it; None: the newest complete one")
    model: str = Field("cs_resnet50", description="a registered architecture")
    name: str | None = Field(None, description="name under models/ and runs/ (default: the architecture)")
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=1, description="global batch, split evenly over the processes")
    lr: float = Field(0.01, gt=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = Field("cosine", description="learning rate over epochs")
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up from lr/10")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="balanced: loss weights inverse to training-class frequency (cigars are 2%)"
    )
    image_size: int = Field(224, ge=16, description="side the model sees; below the crop size it is resized")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 autocast on CUDA")
    channels_last: bool | None = Field(None, description="None: on CUDA only")
    compile: bool = Field(False, description="torch.compile the model")
    seed: int = 0
    deterministic: bool = Field(False, description="deterministic kernels (slower); exact resume on CPU")
    workers: int = Field(2, ge=0, description="DataLoader workers per process")
    processes: int | None = Field(None, ge=1, description="processes on this node; None: one per GPU, or 1")
    augmentation: Augmentation = Field(default_factory=Augmentation)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset"):
            if data["preset"] not in PRESETS:
                raise ValueError(f"unknown preset {data['preset']!r}; presets: {', '.join(PRESETS)}")
            return {**PRESETS[data["preset"]], **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        check_key(self.run_name)
        check_key(self.dataset)
        return self

    @property
    def run_name(self) -> str:
        return self.name or self.model

    def run_id(self, manifest: DatasetManifest, processes: int) -> str:
        """Same settings on the same dataset version -> same id. The worker count only says how
        data is read; the process count is part of the id, since each process keeps its own batch
        norm statistics over its share of the batch."""
        settings = self.model_dump(mode="json", exclude={"workers", "preset", "store", "processes"})
        settings["dataset_version"] = manifest.version
        settings["processes"] = processes
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        return digest[:16]

    def process_count(self) -> int:
        if self.processes is not None:
            return self.processes
        return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


class EpochLog(BaseModel):
    epoch: int
    lr: float
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_f1: float
    images_per_second: float
    seconds: float


class TrainRun(BaseModel):
    """What a finished run leaves in ``run.json``."""

    name: str
    run_id: str
    prefix: str
    architecture: str
    parameters: int
    config: TrainConfig
    dataset: str
    dataset_version: str
    manifest_sha256: str
    preprocessing: Preprocessing
    best_epoch: int
    best_val_f1: float
    history: list[EpochLog]
    training_seconds: float
    images_per_second: float = Field(description="training images per second over the run (all processes)")
    hardware: dict[str, Any]
    finished_at: datetime

    @property
    def best_key(self) -> str:
        return f"{self.prefix}/best.pt"


def run_prefix(name: str, run_id: str) -> str:
    return f"runs/{name}/{run_id}"


def manifest_sha256(store: Store, manifest: DatasetManifest) -> str:
    return hashlib.sha256(store.read_bytes(f"{manifest.prefix}/manifest.json")).hexdigest()


def resolve_dataset(config: TrainConfig) -> tuple[Store, DatasetManifest]:
    store = open_store(config.store)
    return store, read_manifest(store, config.dataset, config.dataset_version)


def read_run(store: Store, name: str, run_id: str) -> TrainRun | None:
    try:
        return TrainRun.model_validate_json(store.read_bytes(f"{run_prefix(name, run_id)}/run.json"))
    except KeyNotFoundError:
        return None


class _Processes:
    """This process's place in the job torchrun started (or a job of one)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def mean(self, value: float) -> float:
        return sum(self.gather(value)) / self.world

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _lr_factor(config: TrainConfig) -> Callable[[int], float]:
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


def _class_weights(config: TrainConfig, manifest: DatasetManifest) -> torch.Tensor | None:
    if config.class_weights == "none":
        return None
    counts = np.array([manifest.totals["train"].get(str(k), 0) for k in range(len(CLASS_NAMES))], dtype=float)
    weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP and ``torch.compile`` wrappers (their state dicts have prefixes)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def _hardware(processes: _Processes) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": processes.device.type,
        "processes": processes.world,
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }
    if processes.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(processes.device)
    return info


def train(config: TrainConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> TrainRun:
    """Train (or resume, or find finished) the run ``config`` describes, in this process.

    Under torchrun every process calls this; rank 0 writes to the store and logs.
    """
    processes = _Processes()
    try:
        return _train(config, processes, progress=progress and processes.main, log=log)
    finally:
        processes.close()


def _train(config: TrainConfig, processes: _Processes, *, progress: bool, log: Callable[[str], None]) -> TrainRun:
    store, manifest = resolve_dataset(config)
    run_id = config.run_id(manifest, processes.world)
    prefix = run_prefix(config.run_name, run_id)
    finished = read_run(store, config.run_name, run_id)
    if finished is not None:
        if processes.main:
            log(f"run {prefix} already finished (best epoch {finished.best_epoch + 1}); nothing to do")
        return finished
    if config.batch_size % processes.world:
        raise ValueError(f"batch_size {config.batch_size} does not split evenly over {processes.world} processes")
    device = processes.device
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    channels_last = device.type == "cuda" if config.channels_last is None else config.channels_last
    autocast_dtype = _autocast_dtype(config, device)
    preprocessing = Preprocessing.from_manifest(manifest, config.image_size)

    model = create_model(config.model, num_classes=len(CLASS_NAMES)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    parameters = count_parameters(model)
    optimizer: torch.optim.Optimizer
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    weights = _class_weights(config, manifest)
    criterion = nn.CrossEntropyLoss(
        weight=None if weights is None else weights.to(device), label_smoothing=config.label_smoothing
    )

    start_epoch, best_f1, best_epoch = 0, -1.0, -1
    history: list[EpochLog] = []
    elapsed = 0.0
    try:
        state = load_checkpoint(store, f"{prefix}/checkpoint.pt", map_location=device)
    except KeyNotFoundError:
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_f1, best_epoch = state["epoch"], state["best_f1"], state["best_epoch"]
        history = [EpochLog.model_validate(h) for h in state["history"]]
        elapsed = state["seconds"]
        restore_rng_state(state["rng"])
        if processes.main:
            log(f"resuming {prefix} at epoch {start_epoch + 1} of {config.epochs}")
            threads = state.get("threads", torch.get_num_threads())
            if config.deterministic and device.type == "cpu" and threads != torch.get_num_threads():
                log(
                    f"note: the checkpoint was written with {threads} CPU threads, this process has "
                    f"{torch.get_num_threads()}; the result will not match an uninterrupted run bit for bit"
                )
    elif processes.main:
        log(
            f"training {config.model} ({parameters:,} parameters) on {manifest.name}/{manifest.version} "
            f"({manifest.split_size('train')} training images) -> {prefix}, {processes.world} process(es) on {device}"
        )

    net: nn.Module = model
    if processes.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)  # type: ignore[assignment]

    per_process = config.batch_size // processes.world
    loader = make_loader(
        store, manifest, "train", batch_size=per_process, train=True, workers=config.workers,
        seed=config.seed, epoch=start_epoch, augmentation=config.augmentation,
    )  # fmt: skip
    val_loader = make_loader(store, manifest, "val", batch_size=per_process, train=False, workers=config.workers)
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        net.train()
        loss_sum = torch.zeros((), device=device)
        seen = 0
        batches = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for images, labels in batches:
            x = to_model_input(images, preprocessing, device, channels_last)
            y = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = criterion(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach() * len(y)
            seen += len(y)
        train_seconds = time.perf_counter() - started
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        images_per_second = processes.world * seen / train_seconds
        train_loss = processes.mean(float(loss_sum) / max(seen, 1))

        y_val, probabilities = predict(
            net, val_loader, preprocessing, device, channels_last=channels_last, autocast_dtype=autocast_dtype
        )
        gathered = processes.gather((y_val, probabilities))
        y_all = np.concatenate([g[0] for g in gathered])
        p_all = np.concatenate([g[1] for g in gathered])
        val = compute_metrics(y_all, p_all.argmax(axis=1))
        log_p = torch.log(torch.from_numpy(p_all).clamp_min(1e-12))
        val_loss = float(nn.functional.nll_loss(log_p, torch.from_numpy(y_all)))
        elapsed += time.perf_counter() - started
        entry = EpochLog(
            epoch=epoch, lr=lr, train_loss=train_loss, val_loss=val_loss, val_accuracy=val.accuracy,
            val_f1=val.f1, images_per_second=images_per_second, seconds=time.perf_counter() - started,
        )  # fmt: skip
        history.append(entry)
        improved = val.f1 > best_f1
        if improved:
            best_f1, best_epoch = val.f1, epoch
        if processes.main:
            if improved:
                save_checkpoint(store, f"{prefix}/best.pt", {"model": _unwrap(model).state_dict()})
            save_checkpoint(
                store,
                f"{prefix}/checkpoint.pt",
                {
                    "model": _unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch + 1,
                    "best_f1": best_f1,
                    "best_epoch": best_epoch,
                    "history": [h.model_dump() for h in history],
                    "seconds": elapsed,
                    "rng": rng_state(),
                    "threads": torch.get_num_threads(),
                },
            )
            log(
                f"epoch {epoch + 1}/{config.epochs}: loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                f"val accuracy {100 * val.accuracy:.2f}%, val macro-F1 {100 * val.f1:.2f}%, "
                f"{images_per_second:.1f} images/s{' (best)' if improved else ''}"
            )
        processes.barrier()

    run = TrainRun(
        name=config.run_name,
        run_id=run_id,
        prefix=prefix,
        architecture=config.model,
        parameters=parameters,
        config=config,
        dataset=manifest.name,
        dataset_version=manifest.version,
        manifest_sha256=manifest_sha256(store, manifest),
        preprocessing=preprocessing,
        best_epoch=best_epoch,
        best_val_f1=best_f1,
        history=history,
        training_seconds=elapsed,
        images_per_second=_mean_rate(history) if history else 0.0,
        hardware=_hardware(processes),
        finished_at=datetime.now(UTC),
    )
    if processes.main:
        store.write_bytes(f"{prefix}/run.json", run.model_dump_json(indent=2).encode())
        log(f"finished {prefix}: best validation macro-F1 {100 * best_f1:.2f}% at epoch {best_epoch + 1}")
    processes.barrier()
    return run


def _mean_rate(history: list[EpochLog]) -> float:
    """Training images per second over all epochs (time-weighted)."""
    images = sum(h.images_per_second * h.seconds for h in history)
    return images / sum(h.seconds for h in history)


def launch(
    config: TrainConfig,
    *,
    processes: int | None = None,
    log: Callable[[str], None] = print,
    extra_args: list[str] | None = None,
) -> TrainRun:
    """Run ``train`` under ``torchrun --nproc-per-node=N`` (N: one per GPU, or 1) and return the run.

    ``extra_args`` go to torchrun before the script, e.g. ``["--nnodes=2", "--rdzv-endpoint=host:29400",
    "--rdzv-id=job1"]`` to join a multi-node job (``--standalone`` is used otherwise). torchrun's output
    is passed to ``log`` line by line.

    Raises:
        ValueError: if the batch does not split evenly over the processes.
        RuntimeError: if torchrun fails; the message carries the last lines of its output.
    """
    count = processes or config.process_count()
    if config.batch_size % count:
        raise ValueError(f"batch_size {config.batch_size} does not split evenly over {count} processes")
    store, manifest = resolve_dataset(config)  # fail here, not in every child, if the data is missing
    with tempfile.TemporaryDirectory(prefix="galaxy-train-") as tmp:
        config_path = os.path.join(tmp, "config.json")
        with open(config_path, "w") as f:
            f.write(config.model_dump_json())
        rendezvous = extra_args if extra_args else ["--standalone"]
        command = [
            sys.executable, "-m", "torch.distributed.run", *rendezvous, f"--nproc-per-node={count}",
            "-m", "galaxy_models.training", config_path,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "GALAXY_NO_PROGRESS": "1"}
        tail: list[str] = []
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as child:
            for line in child.stdout or []:
                log(line.rstrip())
                tail = [*tail[-39:], line.rstrip()]
            code = child.wait()
        if code != 0:
            raise RuntimeError(f"torchrun exited with {code}:\n" + "\n".join(tail))
    run = read_run(store, config.run_name, config.run_id(manifest, count))
    if run is None:
        raise RuntimeError("torchrun finished but the run left no run.json")
    return run


def evaluate_run(
    run: TrainRun, splits: tuple[str, ...] = ("val", "test"), *, workers: int = 2, progress: bool = False
) -> dict[str, Metrics]:
    """Scores of a finished run's best weights on each split, in this process (GPU if there is one)."""
    store = open_store(run.config.store)
    manifest = read_manifest(store, run.dataset, run.dataset_version)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model = create_model(run.architecture, num_classes=len(CLASS_NAMES))
    model.load_state_dict(load_checkpoint(store, run.best_key)["model"])
    model.to(device)
    results = {}
    for split in splits:
        loader = make_loader(
            store, manifest, split, batch_size=run.config.batch_size, train=False, workers=workers, distributed=False
        )
        labels, probabilities = predict(
            model, loader, run.preprocessing, device, progress=progress, description=f"evaluate {split}"
        )
        results[split] = compute_metrics(labels, probabilities.argmax(axis=1))
    return results


def main(argv: list[str] | None = None) -> None:
    """Entry point for torchrun: ``python -m galaxy_models.training CONFIG.json``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m galaxy_models.training CONFIG.json")
    with open(args[0]) as f:
        config = TrainConfig.model_validate_json(f.read())
    train(config, progress=os.environ.get("GALAXY_NO_PROGRESS") != "1")


if __name__ == "__main__":
    main()
