"""benchmarks/gpu.sh: its dry run (CPU, tiny sizes) finishes and records every step, and the GPU
checks it runs on the device (``-m gpu``: skipped without CUDA). The GPU tests use no conftest
fixture: gpu.sh runs them with ``--noconftest`` (the device image has no boto3 or moto)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu_bench.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_bench", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_dry_run_runs_every_step_and_writes_the_json(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads((tmp_path / "gpu-dry-run.json").read_text())
    steps = results["steps"]
    assert set(steps) == {"pytest", *_bench().STEPS}
    assert {name: step["status"] for name, step in steps.items()} == dict.fromkeys(steps, "ok")
    assert results["meta"]["dry_run"] is True
    assert any(key.startswith("decode_") for key in steps["infer_jpeg"])
    assert "| step | network | mode | images/s | notes |" in done.stdout
    assert not list(tmp_path.glob("gpu-bench.*")), "the scratch folder is removed"


def test_a_missing_or_failed_step_fails_the_report() -> None:
    bench = _bench()
    results: dict[str, Any] = {"meta": {"dry_run": True}, "steps": {"train": {"status": "error", "error": "x"}}}
    table, ok = bench.report(results, pytest_rc=1, pytest_summary="1 failed")
    assert not ok
    assert "| train |  |  | FAILED | x |" in table
    assert "| compile |  |  | FAILED | missing: not run, or its process timed out |" in table
    assert results["steps"]["pytest"] == {"status": "error", "rc": 1, "summary": "1 failed"}


# --- on the GPU machine (benchmarks/gpu.sh); skipped without CUDA ---


@pytest.fixture
def cuda() -> Any:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (benchmarks/gpu.sh runs it on the GPU machine)")
    return torch.device("cuda")


def _tiny_dataset(root: Path) -> tuple[Any, Any]:
    """Noise images with simulated votes, ingested (no GalSim, no ../shared: the device has neither)."""
    import numpy as np
    from PIL import Image

    from galaxy_models.data.ingest import IngestConfig, ingest
    from galaxy_models.storage import LocalStore
    from galaxy_models.synth.volunteers import simulate_votes

    rng = np.random.default_rng(0)
    ids = np.arange(100, 140)
    (root / "images").mkdir(parents=True)
    for galaxy in ids:
        pixels = rng.integers(0, 255, (424, 424, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(root / "images" / f"{galaxy}.jpg", quality=90)
    simulate_votes(ids, np.arange(len(ids)) % 5, rng).to_csv(root / "labels.csv", index=False)
    config = IngestConfig(
        images=str(root / "images"), labels=str(root / "labels.csv"), store=str(root / "store"), name="tiny",
        crop_size=64, samples_per_shard=4, workers=2,
    )  # fmt: skip
    return LocalStore(root / "store"), ingest(config, progress=False).manifest


@pytest.mark.gpu
def test_training_batches_come_pinned_and_reach_the_gpu_in_channels_last(cuda: Any, tmp_path: Path) -> None:
    import torch

    from galaxy_models.data.loader import make_loader
    from galaxy_models.models.preprocessing import Preprocessing, to_model_input
    from galaxy_models.training.config import TrainConfig
    from galaxy_models.training.loop import loader_workers

    store, manifest = _tiny_dataset(tmp_path)
    assert loader_workers(TrainConfig(), cuda, 1) >= min(2, (os.cpu_count() or 1) - 1)
    assert loader_workers(TrainConfig(workers=0), cuda, 1) == 0
    loader = make_loader(store, manifest, "train", batch_size=4, train=True, workers=1)
    images, labels = next(iter(loader))
    assert images.is_pinned()
    assert labels.is_pinned()
    x = to_model_input(images, Preprocessing.from_manifest(manifest), cuda, channels_last=True)
    assert x.is_cuda
    assert x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    unpinned = make_loader(store, manifest, "val", batch_size=4, train=False, workers=0, pin_memory=False)
    assert not next(iter(unpinned))[0].is_pinned()


@pytest.mark.gpu
def test_a_bf16_channels_last_training_step_of_cs_resnet50(cuda: Any) -> None:
    import torch

    from galaxy_models.models.architectures import create_model

    model = create_model("cs_resnet50", num_classes=5).to(cuda).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(8, 3, 96, 96, device=cuda).contiguous(memory_format=torch.channels_last)
    y = torch.arange(8, device=cuda) % 5
    first = next(model.parameters())
    before = first.detach().clone()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(before, first)


@pytest.mark.gpu
def test_the_compiled_cbam_network_agrees_with_eager(cuda: Any) -> None:
    import torch

    from galaxy_models.models.architectures import create_model

    torch.manual_seed(0)
    model = create_model("cs_resnet_tiny", num_classes=5).to(cuda).eval().to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 64, 64, device=cuda).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        eager = torch.softmax(model(x).float(), dim=1)
        compiled = torch.softmax(torch.compile(model)(x).float(), dim=1)
    assert (eager - compiled).abs().max().item() < 0.02  # bf16 rounding, fused differently


@pytest.mark.gpu
def test_a_checkpoint_written_on_the_gpu_resumes_there(cuda: Any, tmp_path: Path) -> None:
    """A restarted GPU run: weights and optimiser state come back on the GPU, the random generators
    (CUDA's too) come back as they were saved."""
    import torch

    from galaxy_models.storage import LocalStore
    from galaxy_models.training.checkpoints import Trainables, TrainingState

    def trainables() -> Trainables:
        model = torch.nn.Linear(4, 3).to(cuda)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return Trainables(model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False))

    store = LocalStore(tmp_path)
    saved = trainables()
    saved.model(torch.randn(2, 4, device=cuda)).sum().backward()
    saved.optimizer.step()
    TrainingState(epoch=1).save(store, "runs/gpu/checkpoint.pt", saved)
    expected = torch.cuda.get_rng_state()
    torch.randn(3, device=cuda)  # moves the CUDA generator on
    fresh = trainables()
    restored = TrainingState.restore(store, "runs/gpu/checkpoint.pt", fresh)
    assert restored is not None
    assert restored.epoch == 1
    assert torch.equal(fresh.model.weight, saved.model.weight)
    assert fresh.model.weight.is_cuda
    assert fresh.optimizer.state[fresh.model.weight]["momentum_buffer"].is_cuda
    assert torch.equal(torch.cuda.get_rng_state(), expected)
