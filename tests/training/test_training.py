"""Training: presets, a real run, resume after SIGKILL to the same weights, 2-process DDP through
torchrun (gloo), and checkpoints that refuse to run pickled code."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from galaxy_models.models.serialization import CheckpointError, load_checkpoint, save_checkpoint
from galaxy_models.storage import LocalStore
from galaxy_models.training.config import TrainConfig
from galaxy_models.training.evaluation import evaluate_run
from galaxy_models.training.launch import launch
from galaxy_models.training.loop import train
from galaxy_models.training.runs import TrainRun, read_run, run_prefix


def _copy(source: Path, tmp_path: Path, name: str = "store") -> Path:
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


def test_presets_fill_only_what_is_not_given() -> None:
    paper = TrainConfig(preset="paper")
    assert (paper.epochs, paper.batch_size, paper.lr, paper.image_size) == (100, 128, 0.01, 224)
    assert paper.loss == "logit_adjusted"  # the cross-validated winner (benchmarks/RESULTS.md)
    assert TrainConfig(preset="paper", loss="cross_entropy").loss == "cross_entropy"  # the paper's own
    smoke = TrainConfig(preset="smoke", epochs=3)
    assert (smoke.model, smoke.epochs, smoke.image_size) == ("cs_resnet_tiny", 3, 64)
    with pytest.raises(ValidationError, match="preset"):
        TrainConfig(preset="fast")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="invalid run name"):
        TrainConfig(name="../escape")
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(learning_rate=0.1)  # type: ignore[call-arg]


def test_a_smoke_run_trains_evaluates_and_is_not_repeated(synthetic_dataset: Path, tmp_path: Path) -> None:
    root = _copy(synthetic_dataset, tmp_path)
    config = TrainConfig(preset="smoke", store=str(root), epochs=3, workers=0)
    lines: list[str] = []
    run = train(config, progress=False, log=lines.append)
    assert [h.epoch for h in run.history] == [0, 1, 2]
    assert run.history[-1].train_loss < run.history[0].train_loss
    assert run.best_val_f1 == max(h.val_f1 for h in run.history)
    assert run.parameters == 552_869
    store = LocalStore(root)
    for name in ("checkpoint.pt", "best.pt", "run.json"):
        assert store.exists(f"{run.prefix}/{name}")
    assert any("val macro-F1" in line for line in lines)
    metrics = evaluate_run(run, workers=0)
    assert set(metrics) == {"val", "test"}
    assert metrics["val"].samples == _manifest(root).split_size("val")
    assert metrics["val"].f1 == pytest.approx(run.best_val_f1)  # the best epoch's weights, evaluated again
    assert metrics["test"].intervals is not None  # what the model card carries
    assert metrics["test"].intervals["f1"][0] <= metrics["test"].f1 <= metrics["test"].intervals["f1"][1]
    before = (root / run.prefix / "run.json").stat().st_mtime_ns
    again = train(config, progress=False, log=lines.append)
    assert again == run
    assert (root / run.prefix / "run.json").stat().st_mtime_ns == before
    assert "nothing to do" in lines[-1]


def _final_weights(root: Path, config: TrainConfig) -> dict[str, torch.Tensor]:
    store = LocalStore(root)
    runs = store.list("runs/")
    (checkpoint,) = [k for k in runs if k.endswith("checkpoint.pt")]
    state = load_checkpoint(store, checkpoint)
    assert state["epoch"] == config.epochs
    return state["model"]


def _training_command(config: TrainConfig, path: Path) -> list[str]:
    path.write_text(config.model_dump_json())
    return [sys.executable, "-m", "galaxy_models.training.launch", str(path)]


# Every phase runs in a fresh process with this environment: bit-for-bit equality needs the same
# intra-op thread count (float sums are split by thread) and nothing left behind by earlier tests.
TRAINING_ENV = {**os.environ, "GALAXY_NO_PROGRESS": "1", "OMP_NUM_THREADS": "2"}


def test_a_killed_run_resumes_to_the_same_weights(synthetic_dataset: Path, tmp_path: Path) -> None:
    """SIGKILL the training process after its first epoch's checkpoint; the restarted run continues
    from there and, deterministic on CPU, ends with exactly the weights of a run never interrupted."""
    common = {"preset": "smoke", "epochs": 3, "deterministic": True, "workers": 1}
    interrupted_root = _copy(synthetic_dataset, tmp_path, "interrupted")
    clean_root = _copy(synthetic_dataset, tmp_path, "clean")
    interrupted = TrainConfig(store=str(interrupted_root), **common)  # type: ignore[arg-type]
    clean = TrainConfig(store=str(clean_root), **common)  # type: ignore[arg-type]
    command = _training_command(interrupted, tmp_path / "interrupted.json")
    child = subprocess.Popen(
        command, env=TRAINING_ENV, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    store = LocalStore(interrupted_root)
    try:
        deadline = time.monotonic() + 120
        while not any(k.endswith("checkpoint.pt") for k in store.list("runs/")):
            assert child.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    (checkpoint,) = [k for k in store.list("runs/") if k.endswith("checkpoint.pt")]
    assert load_checkpoint(store, checkpoint)["epoch"] < 3
    assert not any(k.endswith("run.json") for k in store.list("runs/"))
    resumed = subprocess.run(command, env=TRAINING_ENV, capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = resumed.stdout.splitlines()
    assert any(line.startswith("resuming") for line in lines), lines
    assert not any(line.startswith("note:") for line in lines), lines
    (run_json,) = [k for k in store.list("runs/") if k.endswith("run.json")]
    assert [h["epoch"] for h in json.loads(store.read_bytes(run_json))["history"]] == [0, 1, 2]
    uninterrupted = subprocess.run(
        _training_command(clean, tmp_path / "clean.json"), env=TRAINING_ENV, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    got, expected = _final_weights(interrupted_root, interrupted), _final_weights(clean_root, clean)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_two_processes_with_torchrun_and_gloo(synthetic_dataset: Path, tmp_path: Path) -> None:
    root = _copy(synthetic_dataset, tmp_path)
    config = TrainConfig(preset="smoke", store=str(root), batch_size=16, workers=1)
    lines: list[str] = []
    run = launch(config, processes=2, log=lines.append)
    assert run.hardware["processes"] == 2
    assert len(run.history) == config.epochs
    assert read_run(LocalStore(root), run.name, run.run_id) == run
    assert run.prefix == run_prefix("cs_resnet_tiny", run.run_id)
    assert any("2 process(es)" in line for line in lines)
    # the run id records the process count: one process would be a different run
    single = TrainRun.model_validate(run.model_dump())
    assert single.run_id != config.run_id(_manifest(root), 1)


def _manifest(root: Path):  # type: ignore[no-untyped-def]
    from galaxy_models.data.manifest import read_manifest

    return read_manifest(LocalStore(root), "synthetic")


def test_an_uneven_batch_split_is_refused(synthetic_dataset: Path, tmp_path: Path) -> None:
    root = _copy(synthetic_dataset, tmp_path)
    with pytest.raises(ValueError, match="batch_size 15 does not split evenly over 2 processes"):
        launch(TrainConfig(preset="smoke", store=str(root), batch_size=15), processes=2, log=lambda _: None)


class _Exploit:
    """A pickle payload: unpickling it calls ``Path.touch`` on a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_runs_code_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    marker = tmp_path / "pwned"
    store.write_bytes("runs/m/x/checkpoint.pt", pickle.dumps({"model": _Exploit(marker)}))
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(store, "runs/m/x/checkpoint.pt")
    assert not marker.exists()
    # the same payload inside torch's zip format
    buffer_path = tmp_path / "evil.pt"
    torch.save({"model": _Exploit(marker)}, buffer_path)
    store.write_bytes("runs/m/x/checkpoint.pt", buffer_path.read_bytes())
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(store, "runs/m/x/checkpoint.pt")
    assert not marker.exists()
    save_checkpoint(store, "runs/m/x/checkpoint.pt", {"epoch": 1, "w": torch.ones(2)})
    assert load_checkpoint(store, "runs/m/x/checkpoint.pt")["epoch"] == 1


def test_bf16_autocast_and_channels_last_run_on_cpu(synthetic_dataset: Path, tmp_path: Path) -> None:
    """The GPU path's precision and memory-format switches, exercised on the CPU (bf16 autocast
    exists there too), with class weights, label smoothing, AdamW and warm-up."""
    root = _copy(synthetic_dataset, tmp_path)
    config = TrainConfig(
        preset="smoke", store=str(root), epochs=2, workers=0, precision="bf16", channels_last=True,
        class_weights="balanced", label_smoothing=0.1, optimizer="adamw", lr=0.003, warmup_epochs=1,
        schedule="step",
    )  # fmt: skip
    run = train(config, progress=False, log=lambda _: None)
    assert all(torch.isfinite(torch.tensor(h.train_loss)) for h in run.history)
    assert [round(h.lr, 6) for h in run.history] == [0.0003, 0.003]  # warm-up from lr/10
