"""The GPU benchmark that ``benchmarks/gpu.sh`` runs in one device lease, step by step:

- ``train``: training images/s of ResNet50 and CS_ResNet50, eager, on uint8 batches already on the
  device (the loader is not measured): standardise, forward and backward under bf16 autocast in
  channels-last, SGD step; the loop's own settings (``configure_backends``, ``autocast_dtype_for``).
- ``compile``: the same with ``torch.compile`` (inductor on a GPU; the first step, which compiles, is
  timed apart).
- ``loader``: the real shard loader (``make_loader``, as many workers as ``loader_workers`` gives a
  training process) alone, then feeding CS_ResNet50's training steps: the share of the wall time
  spent waiting for data says whether the GPU is starved.
- ``sanity``: a short real-data run through ``train_evaluate_publish`` (torchrun, evaluation,
  calibration, publishing): the loss must fall and the validation accuracy beat the majority class.
- ``infer_shards``: inference images/s, shard loader -> model (``predict``: bf16 autocast, channels-last).
- ``infer_jpeg``: inference images/s from JPEG bytes through ``classify_pending`` with the model the
  sanity step published: each ``decode`` the ClassifyConfig offers, after one warm-up batch.

Results go to JSON after every step (``$OUT/gpu.json`` where OUT is set, else
``benchmarks/out/gpu.json``; ``gpu-dry-run.json`` with ``--dry-run``); ``--steps report`` prints them
as one markdown table. ``--dry-run`` runs the same steps on the CPU at tiny sizes on a dataset it
makes (from ../shared/gz2, else GalSim); ``--prepare DIR`` fills the folder gpu.sh carries to the
device (the real labelled set ingested, survey JPEGs).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GZ2 = ROOT.parent / "shared" / "gz2"
DATASET = "gz2"
STEPS = ("train", "compile", "loader", "sanity", "infer_shards", "infer_jpeg")
# Packages the device image lacks (KINDS.md lists what it has): carried as wheels, pinned to this venv.
WHEELS = (
    "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions",
    "webdataset", "braceexpand", "captum",
)  # fmt: skip
TARGET_IMAGES_PER_SECOND = 4000.0  # issue 15: CS_ResNet50 training on one H100/H200
TARGET_RATIO = 0.9  # ... at >= 0.9x ResNet50


@dataclass(frozen=True)
class Sizes:
    models: tuple[str, str]  # (plain, with CBAM)
    image_size: int  # side of the synthetic batches
    batch_size: int  # synthetic, loader and inference batches
    seconds: float  # timed part of each throughput measurement
    warmup: int  # steps after the first before timing
    least: int  # timed steps at least
    workers: int | None  # loader workers (None: what a training process gets, ``loader_workers``)
    sanity_model: str
    sanity_epochs: int
    sanity_batch: int
    jpeg_copies: int  # each carried JPEG is classified under this many galaxy ids


GPU = Sizes(("resnet50", "cs_resnet50"), 224, 256, 6.0, 8, 3, None, "cs_resnet50", 10, 64, 8)
DRY = Sizes(("resnet_tiny", "cs_resnet_tiny"), 32, 16, 0.0, 0, 1, 1, "cs_resnet_tiny", 1, 8, 1)


class Bench:
    """One invocation: the sizes, the device, where the data and the results are."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.dry = bool(args.dry_run)
        self.sizes = DRY if self.dry else GPU
        self.device = torch.device("cuda" if torch.cuda.is_available() and not self.dry else "cpu")
        if not self.dry and self.device.type != "cuda":
            raise SystemExit("no CUDA device: run with --dry-run on a CPU")
        if self.dry:  # tiny tensors: a second thread only spins, worse on a shared CPU
            torch.set_num_threads(1)
        self.out = Path(args.out)
        self.work = Path(args.work)
        self.carry = Path(args.carry)
        self.results = json.loads(self.out.read_text()) if self.out.is_file() else {}
        self.results.setdefault("steps", {})
        self.results["meta"] = self.meta()

    def meta(self) -> dict[str, Any]:
        import torch

        cuda = self.device.type == "cuda"
        return {
            "dry_run": self.dry,
            "device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})",
            "torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else None,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "sizes": asdict(self.sizes),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.results, indent=2))

    def run(self, name: str, step: Callable[[dict[str, Any]], None]) -> bool:
        """Run one step; what it records goes to the JSON as it is recorded, its error too."""
        record: dict[str, Any] = {"status": "running"}
        self.results["steps"][name] = record
        started = time.perf_counter()
        try:
            step(record)
            record["status"] = "ok"
        except Exception as err:
            record.update(status="error", error=f"{type(err).__name__}: {err}")
            traceback.print_exc()
        record["seconds"] = round(time.perf_counter() - started, 2)
        self.save()
        print(f"[gpu_bench] {name}: {record['status']} in {record['seconds']} s", flush=True)
        return record["status"] == "ok"

    # --- data ---

    def store_root(self) -> Path:
        """The work copy of the carried store (runs and models are written there), made once."""
        root = self.work / "store"
        if not (root / "datasets" / DATASET).is_dir():
            if self.dry:
                prepare(self.work, tiny=True)
            else:
                if not (self.carry / "store" / "datasets" / DATASET).is_dir():
                    raise FileNotFoundError(f"no dataset {DATASET} in {self.carry}/store: run gpu.sh --prepare first")
                shutil.copytree(self.carry / "store", root, dirs_exist_ok=True)
                shutil.copytree(self.carry / "jpegs", self.work / "jpegs", dirs_exist_ok=True)
        return root

    def dataset(self) -> tuple[Any, Any]:
        from galaxy_models.training.config import TrainConfig
        from galaxy_models.training.runs import resolve_dataset

        return resolve_dataset(TrainConfig(store=str(self.store_root()), dataset=DATASET))

    def loader_workers(self) -> int:
        from galaxy_models.training.config import TrainConfig
        from galaxy_models.training.loop import loader_workers

        if self.sizes.workers is not None:
            return self.sizes.workers
        return loader_workers(TrainConfig(), self.device, 1)  # what a training process with defaults gets

    # --- timing ---

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def throughput(self, step: Callable[[], object], images: int) -> dict[str, float]:
        """Images/s of ``step`` after a first step (timed apart: compilation, cuDNN autotuning) and a
        warm-up; the timed steps are as many as fill ``seconds`` at the warm-up's pace."""
        started = time.perf_counter()
        step()
        self.sync()
        first = time.perf_counter() - started
        for _ in range(self.sizes.warmup):
            step()
        self.sync()
        started = time.perf_counter()
        step()
        self.sync()
        count = max(self.sizes.least, math.ceil(self.sizes.seconds / max(time.perf_counter() - started, 1e-6)))
        started = time.perf_counter()
        for _ in range(count):
            step()
        self.sync()
        seconds = time.perf_counter() - started
        return {
            "images_per_second": round(count * images / seconds, 1),
            "steps": count,
            "first_step_seconds": round(first, 2),
        }

    def training_step(self, architecture: str, *, compiled: bool) -> Callable[..., object]:
        """One training step of ``architecture`` as the loop takes it, on a given uint8 batch."""
        import torch
        from torch import nn

        from galaxy_models.domain import CLASS_NAMES
        from galaxy_models.models.architectures import create_model
        from galaxy_models.models.preprocessing import Preprocessing, to_model_input
        from galaxy_models.training.config import TrainConfig
        from galaxy_models.training.loop import autocast_dtype_for, build_optimizer, configure_backends

        config = TrainConfig(model=architecture)
        configure_backends(config, self.device)
        channels_last = self.device.type == "cuda"  # TrainConfig.channels_last=None
        dtype = autocast_dtype_for(config, self.device)
        model = create_model(architecture, num_classes=len(CLASS_NAMES)).to(self.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(config, model)
        # inductor on a GPU; on the dry run's CPU, dynamo's trace alone (a C++ build would take minutes)
        net = torch.compile(model, backend="inductor" if self.device.type == "cuda" else "eager") if compiled else model
        loss_function = nn.CrossEntropyLoss()
        preprocessing = Preprocessing(crop_size=self.sizes.image_size, mean=[0.1] * 3, std=[0.15] * 3)

        def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            x = to_model_input(images, preprocessing, self.device, channels_last)
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_function(net(x), labels.to(self.device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss.detach()

        return step

    def synthetic_batch(self) -> tuple[Any, Any]:
        import torch

        size, batch = self.sizes.image_size, self.sizes.batch_size
        generator = torch.Generator(device=self.device).manual_seed(0)
        images = torch.randint(
            0, 256, (batch, 3, size, size), dtype=torch.uint8, device=self.device, generator=generator
        )
        return images, torch.randint(0, 5, (batch,), device=self.device, generator=generator)

    def free(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # --- steps ---

    def train(self, record: dict[str, Any], *, compiled: bool) -> None:
        images, labels = self.synthetic_batch()
        # CS_ResNet50 first: the target's network is measured even if time runs out during the other
        for architecture in reversed(self.sizes.models):
            step = self.training_step(architecture, compiled=compiled)
            record[architecture] = self.throughput(functools.partial(step, images, labels), len(labels))
            self.save()
            self.free()
        plain, cbam = (record[m]["images_per_second"] for m in self.sizes.models)
        record["ratio"] = round(cbam / plain, 3)
        record["batch_size"], record["image_size"] = len(labels), self.sizes.image_size

    def loader(self, record: dict[str, Any]) -> None:
        from galaxy_models.data.loader import make_loader

        store, manifest = self.dataset()
        workers = self.loader_workers()
        batch = self.sizes.batch_size
        loader = make_loader(store, manifest, "train", batch_size=batch, train=True, workers=workers)
        record.update(
            workers=workers, batch_size=batch, pinned=bool(loader.pipeline[0].pin_memory), image_size=manifest.crop_size
        )
        record["train_images"] = manifest.split_size("train")
        images = sum(len(y) for _, y in loader)  # the first pass starts the workers
        record["loader_only"] = _timed_passes(loader, self.sizes.seconds, lambda _batch: None)
        record["loader_only"]["first_pass_images"] = images
        architecture = self.sizes.models[1]
        step = self.training_step(architecture, compiled=False)
        _timed_passes(loader, 0.0, lambda batch: step(*batch))  # cuDNN autotuning for this shape
        self.sync()
        fed = _timed_passes(loader, self.sizes.seconds, lambda batch: step(*batch), sync=self.sync)
        record["fed_architecture"], record["fed"] = architecture, fed
        synthetic = self.results["steps"].get("train", {}).get(architecture, {}).get("images_per_second")
        if synthetic and self.sizes.image_size == manifest.crop_size:
            record["fed_vs_synthetic"] = round(fed["images_per_second"] / synthetic, 3)
        self.free()

    def infer_shards(self, record: dict[str, Any]) -> None:
        import torch

        from galaxy_models.data.loader import make_loader
        from galaxy_models.domain import CLASS_NAMES
        from galaxy_models.models.architectures import create_model
        from galaxy_models.models.preprocessing import Preprocessing
        from galaxy_models.training.evaluation import predict

        store, manifest = self.dataset()
        preprocessing = Preprocessing.from_manifest(manifest)
        workers = self.loader_workers()
        loader = make_loader(
            store, manifest, "train", batch_size=self.sizes.batch_size, train=False, workers=workers, distributed=False
        )
        cuda = self.device.type == "cuda"
        dtype = torch.bfloat16 if cuda else None
        record.update(workers=workers, batch_size=self.sizes.batch_size, image_size=manifest.crop_size)
        for architecture in reversed(self.sizes.models):
            model = create_model(architecture, num_classes=len(CLASS_NAMES)).to(self.device)
            if cuda:
                model = model.to(memory_format=torch.channels_last)

            def one_pass(model: Any = model) -> int:
                labels, _ = predict(model, loader, preprocessing, self.device, channels_last=cuda, autocast_dtype=dtype)
                return len(labels)

            one_pass()  # workers start, cuDNN tunes
            record[architecture] = _repeat(one_pass, self.sizes.seconds)
            self.save()
            del model
            self.free()

    def sanity(self, record: dict[str, Any]) -> None:
        from galaxy_models.steps import IN_PROCESS
        from galaxy_models.training.config import TrainConfig
        from galaxy_models.training.pipeline import train_evaluate_publish

        _, manifest = self.dataset()
        s = self.sizes
        workers = {} if s.workers is None else {"workers": s.workers}
        config = TrainConfig(
            store=str(self.store_root()), dataset=DATASET, model=s.sanity_model, name="gpu-sanity",
            epochs=s.sanity_epochs, batch_size=s.sanity_batch, image_size=manifest.crop_size, min_val_f1=0.0, **workers,
        )  # fmt: skip
        lines: list[str] = []
        steps = _TrainingInProcess() if self.dry else IN_PROCESS
        outcome = train_evaluate_publish(config, log=lines.append, progress=False, steps=steps)
        run, card = outcome.run, outcome.card
        val = manifest.totals["val"]
        chance = max(val.values()) / sum(val.values())
        best = max(h.val_accuracy for h in run.history)
        record.update(
            model=f"{card.name}@{card.version}", architecture=run.architecture, epochs=len(run.history),
            steps=len(run.history) * (manifest.split_size("train") // s.sanity_batch), batch_size=s.sanity_batch,
            first_loss=round(run.history[0].train_loss, 4), last_loss=round(run.history[-1].train_loss, 4),
            best_val_accuracy=round(best, 4), majority_class_accuracy=round(chance, 4),
            test_accuracy=round(card.metrics["test"].accuracy, 4), test_f1=round(card.metrics["test"].f1, 4),
            training_images_per_second=round(run.images_per_second, 1), log_tail=lines[-5:],
        )  # fmt: skip
        record["passed"] = self.dry or (record["last_loss"] < record["first_loss"] and best > chance)
        if not record["passed"]:
            raise AssertionError(f"the loss did not fall or validation accuracy {best:.3f} <= chance {chance:.3f}")

    def infer_jpeg(self, record: dict[str, Any]) -> None:
        from galaxy_models.inference.classify import classify_pending
        from galaxy_models.inference.config import ClassifyConfig

        sanity = self.results["steps"].get("sanity", {})
        if "model" not in sanity:
            raise RuntimeError("needs the model the sanity step publishes; that step failed or did not run")
        root = self.store_root()
        jpegs = sorted((self.work / "jpegs").glob("*.jpg"))
        decodes = ["default"]
        if "decode" in ClassifyConfig.model_fields:  # the GPU decoding option, where classify has it
            decodes = ["pillow", "auto"]
        # On the device, bf16 asked for by name: the lease has no time for auto's check, which compiles an
        # fp32 engine and a bf16 one for 225 validation images. The dry run goes through auto's check.
        precision = "auto" if self.dry else "bf16"
        record.update(images=len(jpegs) * self.sizes.jpeg_copies, batch_size=self.sizes.batch_size, precision=precision)
        workers = os.cpu_count() or 1
        for run, decode in enumerate(["warm-up", *decodes]):
            batch_id = f"gpu-bench-{run}"
            for copy in range(self.sizes.jpeg_copies):
                for index, path in enumerate(jpegs):  # distinct galaxy ids, same bytes
                    target = root / "incoming" / batch_id / f"{copy + 1}{index:07d}.jpg"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)
            options: dict[str, Any] = {} if decode in ("default", "warm-up") else {"decode": decode}
            config = ClassifyConfig(
                store=str(root), model=sanity["model"], batches=(batch_id,), batch_size=self.sizes.batch_size,
                part_size=record["images"], device=self.device.type, engine="torch", workers=workers,
                precision=precision, **options,
            )  # fmt: skip
            lines: list[str] = []
            started = time.perf_counter()
            report = classify_pending(config, progress=False, log=lines.append)
            seconds = time.perf_counter() - started
            (result,) = report.batches
            if result.manifest.rows != record["images"]:
                raise AssertionError(f"{result.manifest.rows} catalog rows for {record['images']} images")
            key = "warm_up" if decode == "warm-up" else f"decode_{decode}"
            record[key] = {"images_per_second": round(record["images"] / seconds, 1), "seconds": round(seconds, 2)}
            record[key]["flags"] = result.manifest.flags
            record[key]["warnings"] = list(result.manifest.warnings)
            record[key]["notes"] = [line for line in lines if line.startswith("note:")]
            self.save()


class _TrainingInProcess:
    """The dry run's steps: its training step in this process (``loop.train``, what each torchrun
    process runs) rather than under torchrun, whose start-up costs the CPU more than the tiny run."""

    def run(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if name == "train":
            from galaxy_models.training.loop import train

            return train(*args, progress=False, log=kwargs.get("log", print))
        return fn(*args, **kwargs)

    def map(self, name: str, fn: Callable[..., Any], calls: Any, /) -> list[Any]:
        return [fn(*call) for call in calls]


def _timed_passes(
    loader: Any, seconds: float, consume: Callable[[Any], object], sync: Callable[[], None] | None = None
) -> dict[str, float]:
    """Whole passes over ``loader`` until ``seconds`` have gone (at least one); images/s and the share
    of the time spent waiting for the next batch."""
    images, waited, passes = 0, 0.0, 0
    started = time.perf_counter()
    while True:
        passes += 1
        batches: Iterator[Any] = iter(loader)
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - asked
            if batch is None:
                break
            consume(batch)
            images += len(batch[1])
        if time.perf_counter() - started >= seconds:
            break
    if sync is not None:
        sync()
    elapsed = time.perf_counter() - started
    return {
        "images_per_second": round(images / elapsed, 1),
        "data_wait_share": round(waited / elapsed, 3),
        "passes": passes,
    }


def _repeat(one_pass: Callable[[], int], seconds: float) -> dict[str, float]:
    images = 0
    started = time.perf_counter()
    while images == 0 or time.perf_counter() - started < seconds:
        images += one_pass()
    return {"images_per_second": round(images / (time.perf_counter() - started), 1)}


def prepare(folder: Path, *, tiny: bool) -> None:
    """``folder``/store with the real labelled set ingested as dataset ``gz2`` (224 px crops, 64 per
    shard, so 16 loader workers all have shards) and ``folder``/jpegs with 256 real survey JPEGs.
    ``tiny`` (the dry run): 120 labelled images at 32 px, 4 per shard, 8 JPEGs; GalSim renders a
    small survey where ../shared/gz2 is absent."""
    from galaxy_models.data.ingest import IngestConfig, ingest

    store, jpegs = folder / "store", folder / "jpegs"
    jpegs.mkdir(parents=True, exist_ok=True)
    labelled, survey = GZ2 / "labelled", GZ2 / "survey" / "batch-001"
    if (labelled / "training_solutions_rev1.csv").is_file():
        images, labels, sources = labelled / "images", labelled / "training_solutions_rev1.csv", survey
        if tiny:
            images = folder / "raw"
            images.mkdir(exist_ok=True)
            for path in sorted((labelled / "images").glob("*.jpg"))[:120]:
                shutil.copyfile(path, images / path.name)
    elif tiny:
        from galaxy_models.synth.survey import SynthConfig, synthesize_survey

        synth = SynthConfig(store=str(folder / "synth"), n=48, seed=3, workers=1, incoming_batches=1, batch_size=8)
        synthesize_survey(synth, progress=False)
        raw = folder / "synth" / "raw" / "synthetic"
        images, labels, sources = raw / "images", raw / "labels.csv", folder / "synth" / "incoming" / synth.batch_id(0)
    else:
        raise SystemExit(f"the real GZ2 data is not at {GZ2}")
    config = IngestConfig(
        images=str(images), labels=str(labels), store=str(store), name=DATASET, crop_size=32 if tiny else 224,
        samples_per_shard=4 if tiny else 64, workers=2,
    )  # fmt: skip
    ingest(config, progress=False)
    for path in sorted(sources.glob("*.jpg"))[: 8 if tiny else 256]:
        shutil.copyfile(path, jpegs / path.name)


Row = tuple[str, str, str, str, str]  # step, network, mode, images/s, notes


def report(results: dict[str, Any], pytest_rc: int | None, pytest_summary: str) -> tuple[str, bool]:
    """One markdown table of every step, and whether all of them passed."""
    steps, meta = results.setdefault("steps", {}), results.get("meta", {})
    if pytest_rc is not None:  # 5: no test was collected
        status = "ok" if pytest_rc in (0, 5) else "error"
        steps["pytest"] = {"status": status, "rc": pytest_rc, "summary": pytest_summary}
    models = meta.get("sizes", {}).get("models", list(GPU.models))
    rows: list[Row] = []
    for name in ("pytest", *STEPS):
        step = steps.get(name)
        if step is None or step.get("status") != "ok":
            error = "missing: not run, or its process timed out" if step is None else step.get("error", step["status"])
            rows += _partial_rows(name, step or {}, models)
            rows.append((name, "", "", "FAILED", str(error)[:160]))
        else:
            rows += _rows(name, step, models)
    kind = "dry run: CPU, tiny sizes" if meta.get("dry_run") else "device"
    title = (
        f"GPU benchmark ({kind}): {meta.get('device')}, torch {meta.get('torch')}, CUDA {meta.get('cuda')}, "
        f"{meta.get('cpus')} CPUs, {meta.get('date')}"
    )
    lines = [title, "", "| step | network | mode | images/s | notes |", "| --- | --- | --- | ---: | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines), all(row[3] != "FAILED" for row in rows)


def _partial_rows(name: str, step: dict[str, Any], models: list[str]) -> list[Row]:
    """What a training step that did not finish had measured (it saves each network as it goes)."""
    if name not in ("train", "compile"):
        return []
    mode = "torch.compile" if name == "compile" else "eager"
    return [
        ("train, batches on device", model, mode, _rate(step[model]), "measured before the step stopped")
        for model in models
        if isinstance(step.get(model), dict) and "images_per_second" in step[model]
    ]


def _rate(measured: dict[str, Any]) -> str:
    return f"{measured['images_per_second']:,.0f}"


def _rows(name: str, step: dict[str, Any], models: list[str]) -> list[Row]:
    """The table rows of one step that ran."""
    if name == "pytest":
        return [(name, "", "-m gpu", "", f"exit {step['rc']}: {step['summary']}")]
    if name in ("train", "compile"):
        rows = []
        for model in models:
            first = step[model]["first_step_seconds"]
            note = f"batch {step['batch_size']}, {step['image_size']} px; first step {first:.1f} s"
            if model == models[1] and tuple(models) == GPU.models:
                meets = step[model]["images_per_second"] >= TARGET_IMAGES_PER_SECOND and step["ratio"] >= TARGET_RATIO
                note += f"; {step['ratio']:.2f}x {models[0]}: {'meets' if meets else 'misses'} the target"
            mode = "torch.compile" if name == "compile" else "eager"
            rows.append(("train, batches on device", model, mode, _rate(step[model]), note))
        return rows
    if name == "loader":
        # each pass restarts the workers' shard streams: with a small set, a lower bound of their rate
        loader_note = f"pinned: {step['pinned']}; passes of {step['train_images']} images"
        fed = step["fed"]
        note = f"waits for data {100 * fed['data_wait_share']:.0f}% of the time"
        if "fed_vs_synthetic" in step:
            note += f"; {step['fed_vs_synthetic']:.2f}x the batches on device"
        return [
            (
                "loader alone",
                "",
                f"{step['workers']} loader workers",
                _rate(step["loader_only"]),
                loader_note,
            ),
            ("train from shards", step["fed_architecture"], "eager", _rate(fed), note),
        ]
    if name == "sanity":
        note = (
            f"{step['steps']} steps: loss {step['first_loss']:.3f} -> {step['last_loss']:.3f}; best val accuracy "
            f"{100 * step['best_val_accuracy']:.1f}% (majority class {100 * step['majority_class_accuracy']:.1f}%); "
            f"test accuracy {100 * step['test_accuracy']:.1f}%"
        )
        rate = _rate({"images_per_second": step["training_images_per_second"]})
        return [("sanity, real data", step["architecture"], "train_evaluate_publish", rate, note)]
    if name == "infer_shards":
        note = f"batch {step['batch_size']}, {step['workers']} workers"
        return [("infer from shards", model, "predict", _rate(step[model]), note) for model in models]
    note = f"classify_pending, {step['images']} images, batch {step['batch_size']}, precision {step.get('precision')}"
    return [
        ("infer from JPEG bytes", "sanity model", key.replace("decode_", "decode="), _rate(value), note)
        for key, value in step.items()
        if key.startswith("decode_")
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated: {', '.join(STEPS)}, report")
    parser.add_argument("--fresh", action="store_true", help="start a new JSON file instead of adding to it")
    parser.add_argument("--carry", default=str(ROOT / ".carry" / "gpu"), help="the carried folder (gpu.sh --prepare)")
    parser.add_argument("--work", default=None, help="scratch folder shared by the invocations of one run")
    parser.add_argument("--out", default=None, help="JSON path (default: $OUT or benchmarks/out, gpu.json)")
    parser.add_argument("--prepare", metavar="DIR", help="fill the carry folder DIR and exit")
    parser.add_argument("--requirements", action="store_true", help="print the wheels to carry, pinned, and exit")
    parser.add_argument("--pytest-rc", type=int, default=None)
    parser.add_argument("--pytest-summary", default="")
    args = parser.parse_args(argv)
    if args.requirements:
        from importlib.metadata import version

        print(" ".join(f"{name}=={version(name)}" for name in WHEELS))
        return 0
    if args.prepare:
        prepare(Path(args.prepare), tiny=False)
        return 0
    name = "gpu-dry-run.json" if args.dry_run else "gpu.json"
    args.out = args.out or str(Path(os.environ.get("OUT") or ROOT / "benchmarks" / "out") / name)
    steps = args.steps.split(",")
    if args.fresh:
        with contextlib.suppress(FileNotFoundError):
            os.remove(args.out)
    if steps == ["report"]:
        results = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
        table, ok = report(results, args.pytest_rc, args.pytest_summary)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(table)
        return 0 if ok else 1
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps {unknown}; known: {', '.join(STEPS)}, report")
    with contextlib.ExitStack() as stack:
        if args.work is None:  # gpu.sh passes one folder to all its invocations; alone, a temporary one
            import tempfile

            args.work = stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-bench-"))
        return _run_steps(Bench(args), steps)


def _run_steps(bench: Bench, steps: list[str]) -> int:
    actions: dict[str, Callable[[dict[str, Any]], None]] = {
        "train": lambda r: bench.train(r, compiled=False),
        "compile": lambda r: bench.train(r, compiled=True),
        "loader": bench.loader,
        "sanity": bench.sanity,
        "infer_shards": bench.infer_shards,
        "infer_jpeg": bench.infer_jpeg,
    }
    passed = [bench.run(step, actions[step]) for step in steps]
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
