"""Inference engines: OpenVINO gives the eager model's answers, for any batch size, and the catalog
rows it yields agree with eager PyTorch's."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from galaxy_models.catalogs.incoming import batch_images
from galaxy_models.inference.classify import classify_images
from galaxy_models.inference.engines import OpenVINOEngine, TorchEngine, create_engine, openvino_available
from galaxy_models.models.architectures import create_model
from galaxy_models.registry.weights import load_model
from galaxy_models.storage import LocalStore

needs_openvino = pytest.mark.skipif(not openvino_available(), reason="the openvino package is not installed")


def _model() -> torch.nn.Module:
    torch.manual_seed(3)
    return create_model("cs_resnet_tiny", num_classes=5).eval()


@needs_openvino
def test_openvino_fp32_matches_eager_pytorch_for_any_batch_size() -> None:
    model = _model()
    engine = OpenVINOEngine(model, 64, precision="fp32")
    inputs = torch.randn(7, 3, 64, 64)
    with torch.inference_mode():
        expected = model(inputs)
    got = engine(inputs)
    assert got.dtype == torch.float32
    assert got.shape == (7, 5)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(engine(inputs[:1]), expected[:1], atol=1e-4, rtol=1e-4)


@needs_openvino
def test_openvino_in_the_cpus_best_precision_stays_close() -> None:
    model = _model()
    engine = OpenVINOEngine(model, 64)
    assert engine.precision in ("bf16", "fp32")
    inputs = torch.randn(16, 3, 64, 64)
    with torch.inference_mode():
        expected = torch.softmax(model(inputs), dim=1)
    got = torch.softmax(engine(inputs), dim=1)
    assert (got - expected).abs().max().item() < 0.05


def test_engine_choice() -> None:
    model = _model()
    cpu = torch.device("cpu")
    assert isinstance(create_engine(model, cpu, 64, "torch"), TorchEngine)
    if openvino_available():
        assert isinstance(create_engine(model, cpu, 64, "auto"), OpenVINOEngine)
    with pytest.raises(ValueError, match="engine 'openvino' runs on the CPU, not on device 'cuda'"):
        create_engine(model, torch.device("cuda"), 64, "openvino")


@needs_openvino
def test_catalog_rows_from_openvino_agree_with_eager_pytorch(trained_store: Path) -> None:
    store = LocalStore(trained_store)
    model, card = load_model(store, "cs_resnet_tiny")
    keys = batch_images(store, "synthetic-batch-002")
    size = card.preprocessing.input_size
    tables = {
        name: classify_images(
            store, "synthetic-batch-002", keys, create_engine(model, torch.device("cpu"), size, name),
            card, batch_size=16, workers=2,
        )
        for name in ("torch", "openvino")
    }  # fmt: skip
    eager, fast = (tables[n].to_pandas() for n in ("torch", "openvino"))
    assert list(eager["source_key"]) == list(fast["source_key"]) == keys
    columns = ["p_round", "p_in_between", "p_cigar", "p_edge_on", "p_spiral"]
    assert np.abs(eager[columns].to_numpy() - fast[columns].to_numpy()).max() < 0.05
    # classes may only differ where eager PyTorch itself had a near tie
    differ = eager["predicted_class"] != fast["predicted_class"]
    top2 = np.sort(eager[columns].to_numpy(), axis=1)[:, -2:]
    assert (top2[differ.to_numpy(), 1] - top2[differ.to_numpy(), 0] < 0.05).all()
    assert differ.mean() <= 0.05


@needs_openvino
def test_one_openvino_engine_serves_threads_at_once() -> None:
    model = _model()
    engine = OpenVINOEngine(model, 64, precision="fp32")
    inputs = [torch.randn(4, 3, 64, 64) for _ in range(4)]
    expected = [engine(x) for x in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(engine, inputs * 3))
    for i, result in enumerate(got):
        torch.testing.assert_close(result, expected[i % 4], atol=1e-6, rtol=1e-6)
