"""How fast int8 can go on this CPU: where an int8 CS_ResNet50's time goes, op by op.

For one published model (default: the real-data CS_ResNet50 whose int8 copy passes its check at
224 px), in a scratch store with its dataset, served at ``--size``:

1. the int8 copy built and checked as ``galaxy-pipeline models quantize`` does;
2. eager fp32 PyTorch, OpenVINO fp32 and the int8 copy timed alone on the same preprocessed survey
   images (median of ``--rounds`` interleaved rounds);
3. one profiled pass of the int8 copy (OpenVINO's per-node counters, ``PERF_COUNT``), its time summed
   by the kind of node that ran, and the bound that follows: the images/s the int8 copy would reach if
   everything but its convolutions took no time at all, against eager fp32.

    .venv/bin/python benchmarks/int8_ceiling.py [--model NAME@VERSION] [--size 224] [--images 256]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import openvino as ov
import torch
from precision import DEFAULT_MODELS, SURVEY, forward_inputs, forward_rate, scratch_store, survey_store

from galaxy_models.inference.engines import OpenVINOEngine, TorchEngine
from galaxy_models.inference.precision import ensure_int8_copy
from galaxy_models.inference.quantization import read_int8_copy
from galaxy_models.registry.weights import load_model


def node_seconds(graph: ov.Model, inputs: list[torch.Tensor], threads: int) -> Counter[str]:
    """Seconds each kind of executed node took over one pass of ``inputs`` (after one warm-up batch)."""
    properties = {"PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                  "INFERENCE_PRECISION_HINT": "f32"}  # fmt: skip
    request = ov.Core().compile_model(graph, "CPU", properties).create_infer_request()
    request.infer({0: inputs[0].numpy()})
    seconds: Counter[str] = Counter()
    for x in inputs:
        request.infer({0: x.numpy()})
        for node in request.profiling_info:
            if node.status == node.Status.EXECUTED:
                seconds[node.node_type] += node.real_time.total_seconds()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODELS[1], help="NAME@VERSION in --store")
    parser.add_argument("--store", type=Path, default=Path("benchmarks/out/gz2-store"))
    parser.add_argument("--size", type=int, default=224, help="serve the model at this side")
    parser.add_argument("--images", type=int, default=256, help="survey images timed")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/int8_ceiling.json"))
    args = parser.parse_args()
    threads = torch.get_num_threads()
    name, version = args.model.split("@")
    paths = sorted(SURVEY.glob("batch-*/*.jpg"))[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        survey, keys = survey_store(Path(tmp) / "survey", paths)
        store = scratch_store(args.store, name, version, Path(tmp) / "store", args.size)
        model, card = load_model(store, name, version)
        check = ensure_int8_copy(store, card, model)
        copy = read_int8_copy(store, card)
        if copy is None:
            raise SystemExit(f"no usable int8 copy of {args.model} after building one")
        inputs = forward_inputs(survey, keys, card, args.batch_size)
    size = card.preprocessing.input_size
    engines = {
        "eager fp32 (torch)": TorchEngine(model, torch.device("cpu"), precision="fp32"),
        "openvino fp32": OpenVINOEngine(model, size, precision="fp32"),
        "openvino int8": OpenVINOEngine(copy[0], size, precision="int8", outputs=len(card.class_names)),
    }
    for engine in engines.values():
        engine(inputs[0])  # warm-up
    rounds: dict[str, list[float]] = {label: [] for label in engines}
    for _ in range(args.rounds):
        for label, engine in engines.items():
            rounds[label].append(forward_rate(engine, inputs))
    rates = {label: statistics.median(r) for label, r in rounds.items()}
    eager = rates["eager fp32 (torch)"]
    seconds = node_seconds(copy[0], inputs, threads)
    total = sum(seconds.values())
    images = sum(len(x) for x in inputs)
    bound = images / seconds["Convolution"]

    print(f"\n{args.model} at {size} px: {images} survey images, batch {args.batch_size}, {threads} CPU threads, "
          f"median of {args.rounds} rounds; int8 check {check.agreeing}/{check.images} on val\n")  # fmt: skip
    print("| engine | images/s | vs eager fp32 |\n| --- | ---: | ---: |")
    for label, value in rates.items():
        print(f"| {label} | {value:.1f} | {value / eager:.2f}x |")
    print(f"| int8, convolutions alone (everything else free) | {bound:.1f} | {bound / eager:.2f}x |")
    print("\n| int8 node kind | ms per image | share |\n| --- | ---: | ---: |")
    for kind, value in seconds.most_common(8):
        print(f"| {kind} | {1e3 * value / images:.2f} | {100 * value / total:.1f}% |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "date": datetime.now(UTC).isoformat(), "machine": platform.processor() or platform.machine(),
        "cpu_threads": threads, "model": args.model, "input_size": size, "images": images,
        "int8_check": check.model_dump(mode="json"), "images_per_second": rates, "rounds": rounds,
        "int8_node_seconds": dict(seconds), "convolutions_alone_images_per_second": bound,
        "convolutions_alone_vs_eager_fp32": bound / eager,
    }, indent=2))  # fmt: skip
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
