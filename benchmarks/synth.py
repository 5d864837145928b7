"""Synthetic survey rendering speed: images/s with one worker and with all cores.

Renders galaxies into a temporary local store exactly as `galaxy-pipeline synth` does (GalSim
rendering, JPEG encoding, atomic writes), prints a table and writes JSON.

    .venv/bin/python benchmarks/synth.py [--n 600] [--out benchmarks/out/synth.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

from galaxy_models.storage import LocalStore
from galaxy_models.synth.survey import SynthConfig, synthesize_survey


def measure(n: int, workers: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(tmp)
        config = SynthConfig(store=store.uri, n=n, workers=workers, seed=1)
        report = synthesize_survey(config, store=store, progress=False)
    return {"workers": workers, "images": report.images_written, "seconds": round(report.seconds, 2),
            "images_per_second": round(report.images_per_second, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=600, help="images per measurement")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/synth.json"))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = [measure(args.n, 1)] + ([measure(args.n, cores)] if cores > 1 else [])
    print(f"{'workers':>7}  {'images':>6}  {'seconds':>7}  {'images/s':>8}")
    for row in rows:
        print(f"{row['workers']:>7}  {row['images']:>6}  {row['seconds']:>7}  {row['images_per_second']:>8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "synth",
        "cpu": platform.processor() or platform.machine(),
        "cores": cores,
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
