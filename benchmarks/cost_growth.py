"""Cost growth: classify 1k, 5k and 20k real survey images on this CPU and show that the time grows
linearly with the number of images and the peak memory stays flat.

For each size N a temporary store is built with one incoming batch of N images: the real survey
JPEGs of ../shared/gz2/survey (6,587 in three batches), repeated under new galaxy ids where N needs
more (``<id>-r<k>.jpg``; hard links where the file system allows, else copies), and the published
model (the production version of ``--model`` in ``--store``, else its newest) in the same layout
(``models/<name>/<version>/`` copied, ``production.json`` written, and the model's dataset linked for
the drift reference and the precision check). Then ``galaxy-pipeline classify --store <tmp> --model
<name> --device cpu --json`` runs in a fresh process and is measured from outside: wall time, and
peak RSS and CPU time from that process's own rusage (``os.wait4``), so one size's peak never leaks
into the next.

The one-off costs are told apart from inside that process (its CLI is run unchanged; the wrapper
only times calls): start-up (Python, torch and the library imported); the choice of serving
precision (``--precision auto``: classify checks bf16, or an int8 copy, against fp32 on the model's
validation split once per model and records it in the card; every temporary store starts from the
published card, so every size pays it; the engines it builds are in it); and the model loads and
engine builds outside that check (OpenVINO's ``torch.export`` + compile by default). The rest,
the per-image part, is what should grow linearly; the fit ``time = a + b*N`` is given for the whole
wall time (``a`` then holds the one-off costs), the per-image part and the CPU time. Repeated images
are the same bytes, so the page cache serves them as it would any warm store.

    .venv/bin/python benchmarks/cost_growth.py [--sizes 1000 5000 20000] [--engine auto]
    .venv/bin/python benchmarks/cost_growth.py --sizes 100 300     # a quick check that it works

``--engine``, ``--precision``, ``--batch-size`` and ``--workers`` go to ``classify`` as they are;
unset, classify's own defaults apply (``--precision auto``).

Each size runs alone: run it on a quiet machine, as other work on the same cores slows the wall time
(the CPU-seconds column is less sensitive to that).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from itertools import count, islice
from pathlib import Path

from galaxy_models.domain import galaxy_id_from_key, is_name
from galaxy_models.registry.cards import list_versions, model_prefix, production_version, promote, read_card
from galaxy_models.storage import LocalStore

SURVEY = Path(__file__).resolve().parents[2] / "shared" / "gz2" / "survey"
BATCH = "cost-growth"

# Runs the console script's ``main`` unchanged in the child and times, from inside, its start-up (imports),
# the choice of serving precision (classify's once-per-model check of bf16/int8 against fp32 on the
# validation split, with the engines it builds) and the model loads + engine builds outside that check
# (``_cached_engine``: once per process); the timings go to the file $COST_GROWTH_TIMINGS. A hook the
# library no longer has is left out (its time is then in the per-image part) and its timing is None.
WRAPPER = """
import json, os, sys, time
started = time.perf_counter()
import galaxy_models.inference.classify as classify
from galaxy_models.cli import main
timings = {"startup_seconds": time.perf_counter() - started, "precision_check_seconds": 0.0, "engine_seconds": 0.0}
checking = []
build, choose = getattr(classify, "_cached_engine", None), getattr(classify, "choose_serving_precision", None)
def timed_build(*args, **kwargs):
    begun = time.perf_counter()
    engine, card = build(*args, **kwargs)
    if not checking:
        timings["engine_seconds"] += time.perf_counter() - begun
    timings["engine"], timings["precision"] = engine.name, getattr(engine, "precision", None)
    return engine, card
def timed_choose(*args, **kwargs):
    begun = time.perf_counter()
    checking.append(True)
    try:
        return choose(*args, **kwargs)
    finally:
        checking.pop()
        timings["precision_check_seconds"] += time.perf_counter() - begun
hooks = (("_cached_engine", timed_build, build, "engine_seconds"),
         ("choose_serving_precision", timed_choose, choose, "precision_check_seconds"))
for name, hook, original, timing in hooks:
    if original is None:
        timings[timing] = None
    else:
        setattr(classify, name, hook)
sys.argv = ["galaxy-pipeline", *sys.argv[1:]]
try:
    main()
finally:
    timings["in_process_seconds"] = time.perf_counter() - started
    with open(os.environ["COST_GROWTH_TIMINGS"], "w") as out:
        json.dump(timings, out)
"""


def survey_images() -> list[Path]:
    images = sorted(SURVEY.glob("batch-*/*.jpg"))
    if not images:
        raise SystemExit(f"the real survey images are not at {SURVEY}")
    ids = [galaxy_id_from_key(p.name) for p in images]
    bad = [i for i in ids if not is_name(f"{i}-r999")]  # the longest repeat id must be valid too
    if bad or len(set(ids)) != len(ids):
        raise SystemExit(f"survey file names that are not unique galaxy ids: {bad[:5] or 'duplicates'}")
    return images


def link_or_copy(source: Path, target: Path) -> bool:
    """Hard-link ``source`` to ``target`` (True), or copy it where the file system refuses (False)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return True
    except OSError:
        shutil.copyfile(source, target)
        return False


def build_store(root: Path, images: list[Path], n: int, source: LocalStore, name: str, version: str) -> int:
    """A store at ``root`` with the model and one incoming batch of ``n`` images; returns how many were copied."""
    store = LocalStore(root)
    copied = 0
    repeated = ((repeat, path) for repeat in count() for path in images)
    for repeat, path in islice(repeated, n):
        gid = path.stem if repeat == 0 else f"{path.stem}-r{repeat}"
        copied += not link_or_copy(path, store.path(f"incoming/{BATCH}/{gid}.jpg"))
    for key in source.list(f"{model_prefix(name, version)}/"):  # copied: classify records checks in the card
        target = store.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.path(key), target)
    card = read_card(store, name, version)
    dataset, dataset_version = card.dataset.get("name"), card.dataset.get("version")
    if dataset and dataset_version:  # the drift reference, and the split classify checks a precision on
        for key in source.list(f"datasets/{dataset}/{dataset_version}/"):
            link_or_copy(source.path(key), store.path(key))
    promote(store, name, version, force=True)
    return copied


def run_size(args: argparse.Namespace, images: list[Path], n: int, name: str, version: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix=f"cost-growth-{n}-", dir=args.tmp) as tmp:
        root = Path(tmp) / "store"
        started = time.perf_counter()
        copied = build_store(root, images, n, LocalStore(args.store), name, version)
        build_seconds = time.perf_counter() - started
        command = [sys.executable, "-c", WRAPPER, "classify", "--store", str(root), "--model", name,
                   "--device", "cpu", "--engine", args.engine, "--json"]  # fmt: skip
        if args.batch_size:
            command += ["--batch-size", str(args.batch_size)]
        if args.workers:
            command += ["--workers", str(args.workers)]
        if args.precision:
            command += ["--precision", args.precision]
        timings_file = Path(tmp) / "timings.json"
        env = {**os.environ, "COST_GROWTH_TIMINGS": str(timings_file)}
        with open(Path(tmp) / "stdout", "wb") as out, open(Path(tmp) / "stderr", "wb") as err:
            started = time.perf_counter()
            child = subprocess.Popen(command, stdout=out, stderr=err, env=env)
            watchdog = threading.Timer(args.timeout, child.kill)  # a hung run fails instead of waiting forever
            watchdog.start()
            try:
                _, status, usage = os.wait4(child.pid, 0)
            except BaseException:
                child.kill()
                child.wait()
                raise
            finally:
                watchdog.cancel()
            seconds = time.perf_counter() - started
            child.returncode = os.waitstatus_to_exitcode(status)
        stdout = (Path(tmp) / "stdout").read_text()
        stderr = (Path(tmp) / "stderr").read_text()
        if child.returncode != 0:
            why = f"killed after --timeout {args.timeout:.0f} s" if seconds >= args.timeout else child.returncode
            raise SystemExit(f"classify of {n} images failed ({why}):\n{stderr[-4000:]}")
        summary = json.loads(stdout.strip().splitlines()[-1])
        rows = summary["batches"][BATCH]["rows"]
        if rows != n:
            raise SystemExit(f"classify of {n} images wrote {rows} rows")
        timings = json.loads(timings_file.read_text())
    parts = ("startup_seconds", "precision_check_seconds", "engine_seconds")
    one_off = sum(timings[k] or 0.0 for k in parts)  # a part not timed (None) stays in the per-image part
    return {
        "images": n, "seconds": seconds, "images_per_second": n / seconds, "seconds_per_1k": 1000 * seconds / n,
        "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
        **{k: timings[k] for k in parts}, "one_off_seconds": one_off,
        "per_image_seconds": seconds - one_off, "per_image_seconds_per_1k": 1000 * (seconds - one_off) / n,
        "engine": timings.get("engine"), "precision": timings.get("precision"),
        "flags": summary["batches"][BATCH]["flags"],
        "store_build_seconds": build_seconds, "copied_not_linked": copied, "warnings": stderr.strip().splitlines(),
    }  # fmt: skip


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """``y = a + b*x`` by least squares, with R^2 (1 for two points)."""
    if len(xs) < 2:
        return {}
    b, a = statistics.linear_regression(xs, ys)
    mean = statistics.fmean(ys)
    total = sum((y - mean) ** 2 for y in ys)
    residual = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    return {"a_seconds": a, "b_seconds_per_image": b, "r2": 1 - residual / total if total else 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000], help="images per run")
    parser.add_argument("--store", type=Path, default=Path("benchmarks/out/gz2-store"), help="where the model is")
    parser.add_argument("--model", default="cs_resnet50")
    parser.add_argument("--engine", default="auto", choices=["auto", "torch", "openvino"])
    parser.add_argument("--precision", default=None, help="passed to classify (default: its own, auto)")
    parser.add_argument("--batch-size", type=int, default=None, help="passed to classify (default: its own)")
    parser.add_argument("--workers", type=int, default=None, help="passed to classify (default: its own)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one size may run before it is killed")
    parser.add_argument("--tmp", type=Path, default=None, help="where the temporary stores go (default: the system's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/cost_growth.json"))
    args = parser.parse_args()
    if any(n < 1 for n in args.sizes):
        raise SystemExit("--sizes must be positive")
    images = survey_images()
    source = LocalStore(args.store)
    published = list_versions(source, args.model)  # oldest first
    version = production_version(source, args.model) or (published[-1] if published else None)
    if version is None:
        raise SystemExit(f"no published {args.model!r} in {args.store}: run benchmarks/train_real.py")
    card = read_card(source, args.model, version)

    results = []
    for n in sorted(args.sizes):
        print(f"classifying {n} images ...", file=sys.stderr, flush=True)
        results.append(run_size(args, images, n, args.model, version))
        r = results[-1]
        print(f"  {r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)

    sizes = [float(r["images"]) for r in results]
    fit_total = linear_fit(sizes, [r["seconds"] for r in results])
    fit_per_image = linear_fit(sizes, [r["per_image_seconds"] for r in results])
    fit_cpu = linear_fit(sizes, [r["cpu_seconds"] for r in results])
    rss_ratio = results[-1]["peak_rss_mib"] / results[0]["peak_rss_mib"]
    engine = f"{results[0]['engine']} ({results[0]['precision']})"
    threads = os.cpu_count()
    print(f"\n{card.name}/{card.version} (input {card.preprocessing.input_size} px), engine {engine}, "
          f"{threads} CPU cores; real survey images from {SURVEY} ({len(images)}, repeated where needed); "
          "each size in a fresh `galaxy-pipeline classify` process\n")  # fmt: skip
    print("| images | seconds | images/s | s per 1k | one-off s: start-up + precision check + load/compile "
          "| per-image part, s per 1k "
          "| CPU s | peak RSS MiB |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['images']:,} | {r['seconds']:.1f} | {r['images_per_second']:.1f} | {r['seconds_per_1k']:.1f} | "
            f"{r['startup_seconds']:.1f} + {_seconds(r['precision_check_seconds'])} + "
            f"{_seconds(r['engine_seconds'])} | {r['per_image_seconds_per_1k']:.1f} | "
            f"{r['cpu_seconds']:.0f} | {r['peak_rss_mib']:.0f} |"
        )
    print()
    for label, fit in (("wall time", fit_total), ("per-image part", fit_per_image), ("CPU time", fit_cpu)):
        if fit:
            print(f"- {label}: {fit['a_seconds']:.1f} s + {1000 * fit['b_seconds_per_image']:.2f} s per 1k images, "
                  f"R² {fit['r2']:.4f}")  # fmt: skip
    print(f"- peak RSS at {results[-1]['images']:,} vs {results[0]['images']:,} images: {rss_ratio:.2f}x")
    warnings = sorted({w for r in results for w in r["warnings"]})
    if warnings:
        print("- classify said: " + "; ".join(warnings))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(), "machine": platform.processor() or platform.machine(),
                "cpu_cores": threads, "model": f"{card.name}/{card.version}", "engine": engine,
                "survey_images": len(images), "args": {k: str(v) for k, v in vars(args).items()},
                "results": results, "fit_wall": fit_total, "fit_per_image": fit_per_image, "fit_cpu": fit_cpu,
                "peak_rss_ratio_largest_vs_smallest": rss_ratio,
            },
            indent=2,
        )
    )  # fmt: skip
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
