"""Ingest throughput on the real GZ2 labelled set: local store and S3 over HTTP (moto server).

One full ingest per store (read and validate the labels, list, join, Table I, split, read, check,
crop and re-encode every candidate image, write and upload the shards, commit the manifest), then
the same ingest again, which must find the manifest and write nothing. For S3 the images and the
vote table are uploaded to a moto server first (not timed), so every read and write crosses HTTP.
Needs ../shared/gz2 and the dev extras (moto).

    .venv/bin/python benchmarks/ingest.py [--workers N] [--out benchmarks/out/ingest.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3

from galaxy_models.data.ingest import IngestConfig, ingest
from galaxy_models.storage import LocalStore, S3Store, Store

GZ2 = Path(__file__).resolve().parents[2] / "shared" / "gz2" / "labelled"


def run_twice(config: IngestConfig, store: Store) -> dict[str, float | int]:
    start = time.perf_counter()
    first = ingest(config, store=store, progress=False)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    again = ingest(config, store=store, progress=False)
    rerun = time.perf_counter() - start
    if not first.created or again.created or again.manifest.version != first.manifest.version:
        raise RuntimeError("the second ingest should have found the first one's manifest and written nothing")
    counts = first.manifest.counts
    return {
        "images_listed": counts.images_listed,
        "sharded": counts.sharded,
        "quarantined": counts.quarantined,
        "seconds": round(seconds, 2),
        "listed_per_second": round(counts.images_listed / seconds, 1),
        "sharded_per_second": round(counts.sharded / seconds, 1),
        "rerun_seconds": round(rerun, 2),
    }


def moto_store() -> tuple[str, str, S3Store, object]:
    """A moto S3 server holding the labelled set; credentials and endpoint go in the environment, as
    a deployment would set them. Returns (images URI, labels URI, dataset store, server)."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    raw = S3Store(bucket, "raw/gz2")
    raw.upload_file("labels.csv", GZ2 / "training_solutions_rev1.csv")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: raw.write_bytes(f"images/{p.name}", p.read_bytes()), (GZ2 / "images").iterdir()))
    return f"s3://{bucket}/raw/gz2/images", f"s3://{bucket}/raw/gz2/labels.csv", S3Store(bucket, "data"), server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=None, help="ingest threads (default: IngestConfig's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/ingest.json"))
    args = parser.parse_args()
    if not (GZ2 / "training_solutions_rev1.csv").is_file():
        sys.exit(f"needs the real GZ2 labelled set at {GZ2}")
    extra = {} if args.workers is None else {"workers": args.workers}
    rows: dict[str, dict[str, float | int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        local = LocalStore(Path(tmp) / "store")
        config = IngestConfig(
            images=str(GZ2 / "images"), labels=str(GZ2 / "training_solutions_rev1.csv"), store=local.uri, **extra
        )
        workers = config.workers
        rows["local directory"] = run_twice(config, local)
        images, labels, s3, server = moto_store()
        try:
            rows["S3 over HTTP (moto server)"] = run_twice(
                IngestConfig(images=images, labels=labels, store=s3.uri, **extra), s3
            )
        finally:
            server.stop()  # type: ignore[attr-defined]
    print(f"real GZ2 labelled set ({GZ2}); {workers} ingest threads on {os.cpu_count()} cores")
    columns = ("listed", "sharded", "seconds", "listed/s", "sharded/s", "re-run s")
    print(f"{'store':<28}" + "".join(f"  {c:>9}" for c in columns))
    for name, r in rows.items():
        values = ("images_listed", "sharded", "seconds", "listed_per_second", "sharded_per_second", "rerun_seconds")
        print(f"{name:<28}" + "".join(f"  {r[v]:>9}" for v in values))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "ingest", "workers": workers, "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "rows": rows,
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
