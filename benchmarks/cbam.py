"""What CBAM costs: CS_ResNet50 against ResNet50, and the library's CBAM against the op-by-op reference.

Three models, random weights (seed 0), random data, fp32 on the CPU:

- ``resnet50`` and ``cs_resnet50`` from the registry, as training and inference build them;
- ``cs_resnet50 (reference CBAM)``: the same ``cs_resnet50`` with every CBAM swapped for the op-by-op
  implementation the library had before (``ReferenceCBAM`` below, the paper's equations written
  directly), loaded from the library module's state dict (``strict=True``), so the two compare like for
  like and the swap shows the state dicts are interchangeable.

Training throughput is forward, cross-entropy, backward and an SGD step (train mode) on one batch,
repeated ``--steps`` times; inference throughput is the forward pass in eval mode under
``inference_mode``. Rounds are interleaved (every model once per round, so drift hits them alike) and
the median round is reported, with the ratios to ResNet50 (the targets: CS_ResNet50 at least 0.9x for
training and 0.95x for inference). ``--openvino`` adds the inference throughput of the models compiled
by OpenVINO (``OpenVINOEngine``, the CPU engine of ``classify``) in the given precisions; ``--compile``
adds both networks under ``torch.compile`` (kinds ``train_compiled`` and ``inference_compiled``, each
against compiled ResNet50; the one-off compile time is reported, not counted).

    .venv/bin/python benchmarks/cbam.py [--size 112] [--batch-size 32] [--rounds 5] [--openvino fp32,bf16]
    .venv/bin/python benchmarks/cbam.py --size 64 --rounds 1 --steps 1 --openvino none   # a quick check

Wall-clock throughput is the measure; the ratios are also given in process CPU time (all threads),
which other processes on a shared CPU disturb less, and the load average is recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from galaxy_models.inference.engines import OpenVINOEngine, openvino_available
from galaxy_models.models.architectures import create_model
from galaxy_models.models.attention import CBAM


class ReferenceChannelAttention(nn.Module):
    """The op-by-op channel attention: ``x * sigmoid(mlp(avgpool(x)) + mlp(maxpool(x)))``."""

    def __init__(self, channels: int, *, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        peak = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + peak)


class ReferenceSpatialAttention(nn.Module):
    """The op-by-op spatial attention: ``x * sigmoid(bn(conv7x7([mean_c(x), max_c(x)])))``."""

    def __init__(self, *, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stacked = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.norm(self.conv(stacked)))


class ReferenceCBAM(nn.Module):
    """The library's CBAM before it was made cheap: same parameters, same state-dict keys."""

    def __init__(self, channels: int, *, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ReferenceChannelAttention(channels, reduction=reduction)
        self.spatial = ReferenceSpatialAttention(kernel_size=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


def with_reference_cbam(model: nn.Module) -> nn.Module:
    """``model`` with every library ``CBAM`` replaced by a ``ReferenceCBAM`` holding the same weights."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, CBAM):
                first = cast(nn.Conv2d, child.channel.mlp[0])
                reference = ReferenceCBAM(
                    first.in_channels,
                    reduction=first.in_channels // first.out_channels,
                    kernel_size=child.spatial.conv.kernel_size[0],
                )
                reference.load_state_dict(child.state_dict(), strict=True)
                setattr(parent, name, reference)
    return model


def build_models(channels_last: bool) -> dict[str, nn.Module]:
    models: dict[str, nn.Module] = {}
    for label, name in (("resnet50", "resnet50"), ("cs_resnet50", "cs_resnet50"), ("cs_resnet50_reference", None)):
        torch.manual_seed(0)
        model = with_reference_cbam(create_model("cs_resnet50")) if name is None else create_model(name)
        models[label] = model.to(memory_format=torch.channels_last) if channels_last else model
    return models


Timer = Callable[[], tuple[float, float]]  # one round: (wall seconds, process CPU seconds)


def train_timer(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> Timer:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def run() -> tuple[float, float]:
        model.train()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
        return time.perf_counter() - wall, time.process_time() - cpu

    return run


def inference_timer(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, steps: int) -> Timer:
    def run() -> tuple[float, float]:
        if isinstance(forward, nn.Module):
            forward.eval()
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            for _ in range(steps):
                forward(images)
        return time.perf_counter() - wall, time.process_time() - cpu

    return run


def measure(timers: dict[str, Timer], rounds: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds per round for each timer, rounds interleaved, after one warm-up call each."""
    for run in timers.values():
        run()
    seconds: dict[str, list[tuple[float, float]]] = {key: [] for key in timers}
    for _ in range(rounds):
        for key, run in timers.items():
            seconds[key].append(run())
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=112, help="input side in pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="batches per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--channels-last", action="store_true", help="models and inputs in channels-last")
    parser.add_argument("--openvino", default="fp32,bf16", help="OpenVINO precisions to time, or 'none'")
    parser.add_argument("--compile", action="store_true", help="also time both networks under torch.compile")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/cbam.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precisions = [p for p in args.openvino.split(",") if p and p != "none"]
    if unknown := set(precisions) - {"fp32", "bf16"}:
        raise SystemExit(f"--openvino takes fp32, bf16 or none, not {sorted(unknown)!r}")
    if precisions and not openvino_available():
        raise SystemExit("--openvino asks for OpenVINO, which is not installed; pass --openvino none")

    models = build_models(args.channels_last)
    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.size, args.size)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 5, (args.batch_size,))
    timers: dict[str, Timer] = {}
    compile_seconds: dict[str, float] = {}
    for label, model in models.items():
        timers[f"train/{label}"] = train_timer(model, images, labels, args.steps)
        timers[f"inference/{label}"] = inference_timer(model, images, args.steps)
    if args.compile:  # both networks, so the compiled ratio compares like with like
        for label in ("resnet50", "cs_resnet50"):
            torch.manual_seed(0)
            compiled = cast(nn.Module, torch.compile(create_model(label)))
            for kind, timer in (
                ("train_compiled", train_timer(compiled, images, labels, args.steps)),
                ("inference_compiled", inference_timer(compiled, images, args.steps)),
            ):
                started = time.perf_counter()
                timer()  # compiles
                compile_seconds[f"{kind}/{label}"] = time.perf_counter() - started
                timers[f"{kind}/{label}"] = timer
    for precision in precisions:
        for label in ("resnet50", "cs_resnet50"):
            key = f"openvino_{precision}/{label}"
            started = time.perf_counter()
            engine = OpenVINOEngine(models[label], args.size, precision=precision)
            compile_seconds[key] = time.perf_counter() - started
            timers[key] = inference_timer(engine, images.contiguous(), args.steps)

    load_before = os.getloadavg()
    seconds = measure(timers, args.rounds)
    load_after = os.getloadavg()
    images_per_round = args.batch_size * args.steps
    rate = {key: images_per_round / statistics.median(wall for wall, _ in s) for key, s in seconds.items()}
    cpu_rate = {key: images_per_round / statistics.median(cpu for _, cpu in s) for key, s in seconds.items()}
    rows = []
    for key in timers:
        kind, label = key.split("/")
        baseline, cpu_baseline = rate.get(f"{kind}/resnet50"), cpu_rate.get(f"{kind}/resnet50")
        reference = rate.get(f"{kind}/cs_resnet50_reference")
        # each round's ratio to ResNet50's time in the same round: drift on a shared CPU hits both alike
        rounds = seconds.get(f"{kind}/resnet50", [])
        paired = [base / wall for (wall, _), (base, _) in zip(seconds[key], rounds, strict=True)] if rounds else []
        rows.append(
            {
                "kind": kind, "model": label, "images_per_second": rate[key],
                "images_per_cpu_second": cpu_rate[key],
                "rounds_images_per_second": [images_per_round / wall for wall, _ in seconds[key]],
                "vs_resnet50": rate[key] / baseline if baseline else None,
                "vs_resnet50_cpu_time": cpu_rate[key] / cpu_baseline if cpu_baseline else None,
                "vs_resnet50_per_round": paired,
                "vs_reference_cbam": rate[key] / reference if reference and label != "resnet50" else None,
                "compile_seconds": compile_seconds.get(key),
            }
        )  # fmt: skip

    layout = "channels-last" if args.channels_last else "NCHW"
    print(
        f"\n{args.size}x{args.size} px, batch {args.batch_size}, {args.steps} batches a round, median of {args.rounds} "
        f"interleaved round(s), fp32 {layout}, {args.threads} torch threads, load average {load_before[0]:.1f} -> "
        f"{load_after[0]:.1f}\n"
    )
    print(
        "| kind | model | images/s | vs resnet50 | vs resnet50, CPU time | vs resnet50 per round: median (range) "
        "| vs reference CBAM | one-off compile |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['kind']} | {r['model']} | {r['images_per_second']:.1f} | {_ratio(r['vs_resnet50'])} | "
            f"{_ratio(r['vs_resnet50_cpu_time'])} | {_spread(r['vs_resnet50_per_round'])} | "
            f"{_ratio(r['vs_reference_cbam'])} | "
            + (f"{r['compile_seconds']:.0f} s |" if r["compile_seconds"] is not None else " |")
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(), "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__, "cpu_threads": args.threads, "load_average": [load_before, load_after],
                "args": {k: str(v) for k, v in vars(args).items()}, "results": rows,
            },
            indent=2,
        )
    )  # fmt: skip
    print(f"\nwrote {args.out}")


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})" if values else ""


if __name__ == "__main__":
    main()
