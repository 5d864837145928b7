"""Start-up time of the command line: how long each command takes from the shell, end to end.

Target (issue 10): under 1.5 s on the 2-core CPU for the commands that need no model (``--help``,
``--version``, ``labels summarize``, ``models versions``, ``datasets verify``, ``catalog export``,
any error); ``models list`` builds every architecture and loads torch, shown for comparison.
Each command runs ``--repeat`` times through the installed ``galaxy-pipeline`` script, in a fresh
process each time, on a small store this script makes (synthetic survey, a one-epoch tiny model,
one classified batch). A last run of each checks whether torch was imported.

    python benchmarks/cli_startup.py [--repeat 7] [--out benchmarks/out/cli_startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from galaxy_models.data.ingest import IngestConfig, ingest
from galaxy_models.inference.classify import classify_pending
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.synth.survey import SynthConfig, synthesize_survey
from galaxy_models.training.config import TrainConfig
from galaxy_models.training.pipeline import train_evaluate_publish

TARGET_SECONDS = 1.5
MODEL = "cs_resnet_tiny"
WATCH = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write('\\nTORCH\\n' if 'torch' in sys.modules else '\\nNO-TORCH\\n'))\n"
    "sys.argv[0] = 'galaxy-pipeline'\n"
    "from galaxy_models.cli import main\n"
    "main()\n"
)


def prepare(root: Path) -> None:
    """A store with a dataset, a promoted model and one catalog."""
    synthesize_survey(SynthConfig(store=str(root), n=160, incoming_batches=1, batch_size=40, seed=3), progress=False)
    raw = root / "raw" / "synthetic"
    ingest(
        IngestConfig(images=str(raw / "images"), labels=str(raw / "labels.csv"), store=str(root), name="synthetic",
                     samples_per_shard=20),
        progress=False,
    )  # fmt: skip
    config = TrainConfig(preset="smoke", store=str(root), epochs=1, workers=0)
    train_evaluate_publish(config, promote_it=True, log=lambda _: None, progress=False)
    classify_pending(ClassifyConfig(store=str(root), model=MODEL), progress=False)


def commands(root: Path, out: Path) -> dict[str, tuple[list[str], bool]]:
    """name -> (arguments, whether the target applies). Names starting with "error" must exit 2,
    the rest 0."""
    store = str(root)
    return {
        "--help": (["--help"], True),
        "--version": (["--version"], True),
        "labels summarize": (["labels", "summarize", str(root / "raw/synthetic/labels.csv")], True),
        "models versions": (["models", "versions", MODEL, "--store", store], True),
        "datasets verify": (["datasets", "verify", "--store", store, "--name", "synthetic"], True),
        "catalog export": (["catalog", "export", "--store", store, "--model", MODEL, "--out", str(out)], True),
        "error: no such store": (["classify", "--store", str(root / "missing")], True),
        "error: unknown model": (["classify", "--store", store, "--model", "nope"], True),
        "models list (loads torch)": (["models", "list"], False),
    }


def time_command(executable: str, args: list[str], repeat: int, expected_code: int) -> list[float]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = subprocess.run([executable, *args], capture_output=True, text=True, check=False)
        seconds.append(time.perf_counter() - started)
        if result.returncode != expected_code:
            raise SystemExit(f"{args} exited with {result.returncode}, expected {expected_code}:\n{result.stderr}")
    return seconds


def loads_torch(args: list[str]) -> bool:
    result = subprocess.run([sys.executable, "-c", WATCH, *args], capture_output=True, text=True, check=False)
    return result.stderr.strip().endswith("\nTORCH") or result.stderr.strip() == "TORCH"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/cli_startup.json"))
    args = parser.parse_args()
    executable = str(Path(sys.executable).with_name("galaxy-pipeline"))
    with tempfile.TemporaryDirectory(prefix="cli-startup-") as tmp:
        root = Path(tmp) / "store"
        print("preparing a store (synthetic survey, one-epoch model, one catalog)...", file=sys.stderr)
        prepare(root)
        rows = []
        for name, (arguments, targeted) in commands(root, Path(tmp) / "catalog.parquet").items():
            seconds = time_command(executable, arguments, args.repeat, 2 if name.startswith("error") else 0)
            rows.append(
                {
                    "command": name,
                    "median_s": round(statistics.median(seconds), 3),
                    "min_s": round(min(seconds), 3),
                    "max_s": round(max(seconds), 3),
                    "torch": loads_torch(arguments),
                    "target_s": TARGET_SECONDS if targeted else None,
                    "meets_target": (statistics.median(seconds) < TARGET_SECONDS) if targeted else None,
                }
            )
    print(f"\nCLI start-up, {args.repeat} runs each, CPU {os.cpu_count()} cores (median / min / max seconds)\n")
    print("| command | median s | min s | max s | torch imported | under 1.5 s |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    for r in rows:
        met = "n/a" if r["meets_target"] is None else ("yes" if r["meets_target"] else "NO")
        print(
            f"| {r['command']} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['max_s']:.2f} | "
            f"{'yes' if r['torch'] else 'no'} | {met} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"repeat": args.repeat, "target_s": TARGET_SECONDS, "rows": rows}, indent=2))
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
