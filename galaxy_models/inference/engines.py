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
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from galaxy_models.inference.config import EngineName

OpenVINOPrecision = Literal["auto", "fp32", "bf16", "int8"]

# torch.export traces through process-wide dispatch state: two exports at once corrupt it
_EXPORT_LOCK = threading.Lock()


class Engine(Protocol):
    name: str
    precision: str
    device: torch.device
    channels_last: bool

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor: ...


class TorchEngine:
    """Eager PyTorch: fp32 on a CPU; bf16 autocast and channels-last on a GPU (``precision``
    overrides: ``fp32`` or ``bf16`` autocast on either). ``compile`` (default: on a GPU): the forward pass
    through ``torch.compile`` (fused kernels); the first batch, and the first of another size, compile it."""

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        *,
        precision: Literal["auto", "fp32", "bf16"] = "auto",
        compile: bool | None = None,
    ) -> None:
        self.device = device
        self.channels_last = device.type == "cuda"
        if device.type == "cuda":  # batches keep their shape: cuDNN's autotuned kernels pay after the first
            torch.backends.cudnn.benchmark = True
        if precision == "auto":
            precision = "bf16" if device.type == "cuda" else "fp32"
        self.dtype = torch.bfloat16 if precision == "bf16" else None
        self.precision: str = precision
        model = model.eval().to(device)
        self.model = model.to(memory_format=torch.channels_last) if self.channels_last else model
        self.compiled = device.type == "cuda" if compile is None else compile
        self._forward = torch.compile(self.model) if self.compiled else self.model

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self._forward(inputs).float().cpu()


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def cpu_has_bf16() -> bool:
    """Whether OpenVINO finds native bf16 instructions (AVX512-BF16 or AMX) on this CPU."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def to_openvino(model: nn.Module, input_size: int) -> Any:
    """The model as an OpenVINO graph (``openvino.Model``), batch size left free: ``torch.export``
    then ``openvino.convert_model``, in fp32."""
    import openvino as ov

    example = torch.zeros(2, 3, input_size, input_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with _EXPORT_LOCK, torch.no_grad():  # export must not see inference-mode tensors
        exported = torch.export.export(model.eval().float(), (example,), dynamic_shapes=({0: batch},))
        return ov.convert_model(exported)


class OpenVINOEngine:
    """The model compiled by OpenVINO for this CPU, in fp32, bf16 (where the CPU has it natively) or int8
    (a graph quantised by ``inference.quantization``, passed in as an ``openvino.Model``)."""

    name = "openvino"
    device = torch.device("cpu")
    channels_last = False

    def __init__(
        self,
        model: nn.Module | Any,
        input_size: int,
        *,
        precision: OpenVINOPrecision = "auto",
        outputs: int | None = None,
    ) -> None:
        import openvino as ov

        if precision == "auto":
            precision = "bf16" if cpu_has_bf16() else "fp32"
        if precision not in ("fp32", "bf16", "int8"):
            raise ValueError(f"unknown OpenVINO precision {precision!r}; known: auto, fp32, bf16, int8")
        if precision == "int8" and isinstance(model, nn.Module):
            raise ValueError("precision 'int8' needs a quantised OpenVINO graph (inference.quantization), not a module")
        self.precision: str = precision
        self.outputs = outputs  # keep only the first columns of the output (an int8 copy also gives features)
        graph = to_openvino(model, input_size) if isinstance(model, nn.Module) else model
        properties = {
            # int8 graphs: the layers left in float run in fp32, so int8 is the only rounding added
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",  # one stream on every core: batches arrive one at a time
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),  # as many as torch would use (Dask sets 1)
        }
        self._compiled = ov.Core().compile_model(graph, "CPU", properties)
        self._local = threading.local()  # an infer request serves one thread at a time

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        x = np.ascontiguousarray(inputs.detach().float().cpu().numpy())
        result = np.array(request.infer({0: x})[0], dtype=np.float32)
        return torch.from_numpy(result if self.outputs is None else result[:, : self.outputs].copy())


def engine_for(device: torch.device, engine: EngineName) -> Literal["torch", "openvino"]:
    """The engine ``engine`` names on ``device`` (``auto``: OpenVINO on a CPU where installed).

    Raises:
        ValueError: for OpenVINO on a GPU, or OpenVINO asked for and not installed.
    """
    if engine == "auto":
        return "openvino" if device.type == "cpu" and openvino_available() else "torch"
    if engine == "openvino":
        if device.type != "cpu":
            raise ValueError(f"engine 'openvino' runs on the CPU, not on device {device.type!r}")
        if not openvino_available():
            raise ValueError("engine 'openvino' was asked for but the openvino package is not installed")
    return engine


def create_engine(
    model: nn.Module,
    device: torch.device,
    input_size: int,
    engine: EngineName = "auto",
    precision: Literal["auto", "fp32", "bf16"] = "auto",
) -> Engine:
    """The engine asked for, in ``precision``; ``auto`` prefers OpenVINO on a CPU when it is installed,
    and the device's fastest precision (bf16 where the hardware has it), unchecked: classification
    checks a reduced precision against fp32 before it serves a model in it (``inference.precision``)."""
    if engine_for(device, engine) == "openvino":
        return OpenVINOEngine(model, input_size, precision=precision)
    return TorchEngine(model, device, precision=precision)
