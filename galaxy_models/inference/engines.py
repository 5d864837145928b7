"""Inference engines: what runs a published model's forward pass during classification.

``torch``: the model as it is, in eval mode under ``inference_mode``; on a GPU with bf16 autocast and
channels-last. ``openvino``: on a CPU, the model exported once per process (``torch.export``, batch size left
free), converted by OpenVINO and compiled for this CPU, in bf16 where the CPU has native bf16 instructions
(AVX512-BF16 or AMX) and fp32 elsewhere; OpenVINO's CPU plugin fuses the convolutions, batch norms
and activations and picks oneDNN kernels for the instruction set, which eager PyTorch does not.
``auto`` takes ``openvino`` on a CPU where OpenVINO is installed and ``torch`` otherwise.

Every engine takes the standardised float batch (N, 3, S, S), already on its ``device`` and in its memory
format, and returns float32 logits on the CPU.
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from galaxy_models.inference.config import EngineName

# torch.export traces through process-wide dispatch state: two exports at once corrupt it
_EXPORT_LOCK = threading.Lock()


class Engine(Protocol):
    name: str
    precision: str
    device: torch.device
    channels_last: bool

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor: ...


class TorchEngine:
    """Eager PyTorch: fp32 on a CPU; bf16 autocast and channels-last on a GPU."""

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.device = device
        self.channels_last = device.type == "cuda"
        self.dtype = torch.bfloat16 if device.type == "cuda" else None
        self.precision = "bf16" if self.dtype is not None else "fp32"
        model = model.eval().to(device)
        self.model = model.to(memory_format=torch.channels_last) if self.channels_last else model

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self.model(inputs).float().cpu()


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


class OpenVINOEngine:
    """The model compiled by OpenVINO for this CPU (bf16 where the CPU supports it natively)."""

    name = "openvino"
    device = torch.device("cpu")
    channels_last = False

    def __init__(
        self, model: nn.Module, input_size: int, *, precision: Literal["auto", "bf16", "f32"] = "auto"
    ) -> None:
        import openvino as ov

        core = ov.Core()
        if precision == "auto":
            precision = "bf16" if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"
        self.precision: str = precision
        example = torch.zeros(2, 3, input_size, input_size)
        batch = torch.export.Dim("batch", min=1, max=65536)
        with _EXPORT_LOCK, torch.no_grad():  # export must not see inference-mode tensors
            exported = torch.export.export(model.eval().float(), (example,), dynamic_shapes=({0: batch},))
            converted = ov.convert_model(exported)
        properties = {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",  # one stream on every core: batches arrive one at a time
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),  # as many as torch would use (Dask sets 1)
        }
        self._compiled = core.compile_model(converted, "CPU", properties)
        self._local = threading.local()  # an infer request serves one thread at a time

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        x = np.ascontiguousarray(inputs.detach().float().cpu().numpy())
        result = request.infer({0: x})
        return torch.from_numpy(np.array(result[0], dtype=np.float32))


def create_engine(model: nn.Module, device: torch.device, input_size: int, engine: EngineName = "auto") -> Engine:
    """The engine asked for; ``auto`` prefers OpenVINO on a CPU when it is installed."""
    if engine == "auto":
        engine = "openvino" if device.type == "cpu" and openvino_available() else "torch"
    if engine == "openvino":
        if device.type != "cpu":
            raise ValueError(f"engine 'openvino' runs on the CPU, not on device {device.type!r}")
        if not openvino_available():
            raise ValueError("engine 'openvino' was asked for but the openvino package is not installed")
        return OpenVINOEngine(model, input_size)
    return TorchEngine(model, device)
