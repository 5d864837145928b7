"""Peak memory of ingest against the number of images: it must not grow with the size of a split.

For each size (default 2,000 and 20,000 images) a survey folder is built in a temporary directory
from the real GZ2 labelled set: the images that have a Table I class, repeated as often as needed
under new GalaxyIDs (hard links, or copies where linking is refused; never symlinks, which the
local store refuses) with a vote table whose rows are the originals' rows, byte for byte, under the
new IDs. Every image is therefore a candidate that is read, checked, cropped and sharded. Each
size is then ingested in a fresh Python process (IngestConfig defaults, 1,000 samples a shard,
local store), which reports its peak resident set size (``ru_maxrss``) before and after the
ingest. ``--modes unbounded`` replaces the bounded submission window with the old
``ThreadPoolExecutor.map`` over the whole split, to show what the window saves. Needs ../shared/gz2.

    .venv/bin/python benchmarks/ingest_memory.py [--sizes 2000 20000] [--modes bounded unbounded]
        [--workers N] [--out benchmarks/out/ingest_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GZ2 = Path(__file__).resolve().parents[2] / "shared" / "gz2" / "labelled"
FIRST_ID = 9_000_000  # above every real GalaxyID (at most 999,967), so no new ID meets a real one
MODES = ("bounded", "unbounded")


def classified_rows() -> list[tuple[str, str]]:
    """(GalaxyID, rest of its CSV line) of every labelled image that has a Table I class."""
    from galaxy_models.labels import NO_CLASS, assign_classes, parse_votes

    table = GZ2 / "training_solutions_rev1.csv"
    classes = assign_classes(parse_votes(table.read_bytes(), str(table)))
    lines = table.read_text().splitlines()[1:]
    with_image = {p.stem for p in (GZ2 / "images").glob("*.jpg")}
    rows = [tuple(line.split(",", 1)) for line in lines]
    return [
        (gid, rest) for (gid, rest), cls in zip(rows, classes, strict=True) if cls != NO_CLASS and gid in with_image
    ]


def build_survey(root: Path, n: int, sources: list[tuple[str, str]]) -> tuple[Path, Path]:
    """``n`` images named by new GalaxyIDs, each a real classified image, and their vote table."""
    images = root / "images"
    images.mkdir(parents=True)
    header = (GZ2 / "training_solutions_rev1.csv").read_text().split("\n", 1)[0]
    lines = [header]
    for i in range(n):
        gid, rest = sources[i % len(sources)]
        new = str(FIRST_ID + i)
        try:
            os.link(GZ2 / "images" / f"{gid}.jpg", images / f"{new}.jpg")
        except OSError:  # another file system, or linking refused: copy
            shutil.copyfile(GZ2 / "images" / f"{gid}.jpg", images / f"{new}.jpg")
        lines.append(f"{new},{rest}")
    labels = root / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    return images, labels


def _max_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def child(images: str, labels: str, store: str, mode: str, workers: int | None) -> dict[str, Any]:
    """One ingest in this process (run through ``--child``); returns its numbers, RSS in MiB: the
    peak before the ingest, before the first split is sharded (labels read, images listed, joined,
    split: memory per row of the vote table) and at the end (what reading and sharding added)."""
    import galaxy_models.data.ingest as ingest_module
    from galaxy_models.data.ingest import IngestConfig, ingest

    if mode == "unbounded":  # the old submission: every row at once, results kept until consumed
        ingest_module.bounded_map = lambda pool, fn, items, window: pool.map(fn, items)
    marks: dict[str, float] = {}
    shard_split = ingest_module.shard_split

    def marked_shard_split(*args: Any, **kwargs: Any) -> Any:
        marks.setdefault("before_shards", _max_rss_mib())
        return shard_split(*args, **kwargs)

    ingest_module.shard_split = marked_shard_split
    extra = {} if workers is None else {"workers": workers}
    config = IngestConfig(images=images, labels=labels, store=store, samples_per_shard=1000, **extra)
    before = _max_rss_mib()
    start = time.perf_counter()
    counts = ingest(config, progress=True).manifest.counts
    seconds = time.perf_counter() - start
    peak = _max_rss_mib()
    return {
        "workers": config.workers,
        "images_listed": counts.images_listed,
        "sharded": counts.sharded,
        "seconds": round(seconds, 1),
        "images_per_second": round(counts.sharded / seconds, 1),
        "rss_before_mib": before,
        "rss_before_shards_mib": marks["before_shards"],
        "peak_rss_mib": peak,
        "growth_mib": round(peak - before, 1),
        "sharding_growth_mib": round(peak - marks["before_shards"], 1),
    }


def measure(n: int, mode: str, workers: int | None, sources: list[tuple[str, str]]) -> dict[str, Any]:
    """Build an ``n``-image survey and ingest it in a fresh process; that process's numbers."""
    with tempfile.TemporaryDirectory(prefix="ingest-memory-") as tmp:
        images, labels = build_survey(Path(tmp) / "survey", n, sources)
        command = [sys.executable, __file__, "--child", str(images), str(labels), str(Path(tmp) / "store"), mode]
        if workers is not None:
            command += ["--workers", str(workers)]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)  # stderr: progress lines
        row = json.loads(done.stdout.strip().splitlines()[-1])
    if row["sharded"] != n:
        raise RuntimeError(f"{n} images built but {row['sharded']} sharded")
    return {"images": n, "mode": mode, **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000], help="images per run")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="submission of the work")
    parser.add_argument("--workers", type=int, default=None, help="ingest threads (default: IngestConfig's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/ingest_memory.json"))
    parser.add_argument("--child", nargs=4, metavar=("IMAGES", "LABELS", "STORE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        images, labels, store, mode = args.child
        print(json.dumps(child(images, labels, store, mode, args.workers)))
        return
    if not (GZ2 / "training_solutions_rev1.csv").is_file():
        sys.exit(f"needs the real GZ2 labelled set at {GZ2}")
    sources = classified_rows()
    rows = [measure(n, mode, args.workers, sources) for n in args.sizes for mode in args.modes]
    print(f"{len(sources)} real classified GZ2 images, repeated; {rows[0]['workers']} threads, {os.cpu_count()} cores")
    print("peak RSS in MiB: at the start, before sharding (labels, list, join, split), at the end")
    columns = ("images", "mode", "seconds", "images/s", "start", "pre-shard", "peak", "growth", "shard growth")
    keys = ("images", "mode", "seconds", "images_per_second", "rss_before_mib", "rss_before_shards_mib",
            "peak_rss_mib", "growth_mib", "sharding_growth_mib")  # fmt: skip
    print("".join(f"{c:>13}" for c in columns))
    for row in rows:
        print("".join(f"{row[k]:>13}" for k in keys))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "ingest_memory", "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "source_images": len(sources), "samples_per_shard": 1000, "rows": rows,
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
