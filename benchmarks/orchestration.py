"""Load test of the orchestration: many classify-flow runs at once against one Prefect server, on
PostgreSQL and on SQLite.

For each database: `infra/serve.sh` starts the stack (server, pools, deployments, one worker on the
`cpu` pool) with PREFECT_DB set, and this script starts more process workers on the same pool (each
taking at most `--limit` runs at a time). A deployment `classify-flow/load` (no trigger, no schedule)
is registered, and `--runs` flow runs are submitted at once: classify-flow on `--batches` small
batches of a synthetic survey, each run naming one batch, every batch named by several runs. Then:

- every run must reach a final state within `--timeout`; runs still scheduled, pending or running
  then are reported as stuck;
- every batch must have exactly one committed catalog with one row per image (the store's
  conditional writes decide which run commits; the others find it there);
- runs per minute: runs over the time from the first submission to the last final state.

    .venv/bin/python benchmarks/orchestration.py [--runs 100] [--batches 20] [--workers 3] [--db postgres sqlite]

The store (a synthetic survey, `cs_resnet_tiny` trained for one epoch and promoted) is made once in
`benchmarks/out/orchestration-store`; each database run gets a fresh copy of its batches.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFECT = BIN / "prefect"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_store(root: Path, batches: int, batch_size: int) -> None:
    """A synthetic survey with ``batches`` incoming batches and a promoted one-epoch tiny model."""
    if (root / "models" / "cs_resnet_tiny" / "production.json").exists():
        return
    cli = str(BIN / "galaxy-pipeline")
    store = str(root)
    subprocess.run([cli, "synth", "--store", store, "--n", "200", "--incoming-batches", str(batches),
                    "--batch-size", str(batch_size), "--seed", "3"], check=True)  # fmt: skip
    raw = root / "raw" / "synthetic"
    subprocess.run([cli, "ingest", "--images", str(raw / "images"), "--labels", str(raw / "labels.csv"),
                    "--store", store, "--name", "synthetic", "--samples-per-shard", "50"], check=True)  # fmt: skip
    subprocess.run([cli, "train", "--store", store, "--preset", "smoke", "--epochs", "1", "--set", "min_val_f1=0",
                    "--promote"], check=True)  # fmt: skip


def fresh_copy(source: Path, target: Path) -> None:
    """The store without any catalog: every database run classifies the same batches from scratch."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("catalogs"))


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen[bytes], grace: float = 20) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for(log: Path, text: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while text not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"no {text!r} from {log}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(1)


async def submit_and_watch(
    deployment: str, store: Path, batches: list[str], runs: int, timeout: float
) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        target = await client.read_deployment_by_name(deployment)
        started = time.monotonic()
        ids = []
        for i in range(runs):
            config = {"store": str(store), "model": "cs_resnet_tiny", "batches": [batches[i % len(batches)]],
                      "engine": "torch", "workers": 1}  # fmt: skip
            run = await client.create_flow_run_from_deployment(target.id, parameters={"config": config})
            ids.append(run.id)
        submitted = time.monotonic() - started
        states: dict[str, int] = {}
        finished_at = started
        while True:
            found = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[target.id])),
                limit=runs + 10,
            )
            mine = [r for r in found if r.id in set(ids)]
            types = [r.state.type.value if r.state else "NONE" for r in mine]
            states = {t: types.count(t) for t in sorted(set(types))}
            done = sum(n for t, n in states.items() if t in FINAL)
            if done == runs:
                finished_at = time.monotonic()
                break
            if time.monotonic() - started > timeout:
                finished_at = time.monotonic()
                break
            await asyncio.sleep(2)
    elapsed = finished_at - started
    return {"runs": runs, "submit_seconds": submitted, "seconds": elapsed, "states": states}


def check_catalogs(store: Path, batches: list[str]) -> dict[str, Any]:
    """Each batch: exactly one committed catalog (manifest) whose rows equal its images."""
    from galaxy_models.catalogs.incoming import batch_images
    from galaxy_models.catalogs.manifest import read_catalog, read_catalog_manifest
    from galaxy_models.registry.cards import read_card
    from galaxy_models.storage import LocalStore

    local = LocalStore(store)
    version = read_card(local, "cs_resnet_tiny").version
    problems = []
    for batch in batches:
        manifests = list((store / "catalogs" / batch).glob("*/_manifest.json"))
        manifest = read_catalog_manifest(local, batch, version)
        if len(manifests) != 1 or manifest is None:
            problems.append(f"{batch}: {len(manifests)} committed catalogs")
            continue
        keys = read_catalog(local, manifest).column("source_key").to_pylist()
        if sorted(keys) != sorted(batch_images(local, batch)):
            problems.append(f"{batch}: {len(keys)} rows for {len(batch_images(local, batch))} images")
    return {"batches": len(batches), "problems": problems}


def server_errors(log: Path) -> dict[str, int]:
    """What went wrong inside the server while it served the load (it retries these itself)."""
    text = log.read_text(errors="replace")
    return {"tracebacks": text.count("Traceback (most recent call last)"),
            "database_locked": text.count("database is locked")}  # fmt: skip


def one_database(db: str, args: argparse.Namespace, source: Path, work: Path) -> dict[str, Any]:
    store = work / f"store-{db}"
    fresh_copy(source, store)
    batches = sorted(p.name for p in (store / "incoming").iterdir() if p.is_dir())[: args.batches]
    port = free_port()
    home = work / f"prefect-{db}"
    shutil.rmtree(home, ignore_errors=True)
    env = {
        **os.environ, "PREFECT_PORT": str(port), "PREFECT_HOME": str(home), "PREFECT": str(PREFECT),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "GALAXY_PIPELINE_HOME": str(REPO),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_DB": db, "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    if db == "postgres":
        cluster = work / "postgres"
        shutil.rmtree(cluster, ignore_errors=True)
        env |= {"PREFECT_POSTGRES_DIR": str(cluster), "PREFECT_POSTGRES_PORT": str(free_port())}
    logs = work / f"logs-{db}"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    # serve.sh's own worker serves the gpu pool (no runs go there): the load goes to the workers below,
    # each taking at most --limit runs at a time
    serve = start([str(REPO / "infra" / "serve.sh")], env | {"POOL": "gpu"}, logs / "serve.log")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        wait_for(logs / "serve.log", "worker: pool gpu", serve, 300)
        subprocess.run(
            [str(PREFECT), "--no-prompt", "deploy", "flows/classify.py:classify_flow", "--name", "load",
             "--pool", "cpu"],
            cwd=REPO, env=env, check=True, capture_output=True,
        )  # fmt: skip
        for i in range(args.workers):
            workers.append(
                start([str(PREFECT), "worker", "start", "--pool", "cpu", "--limit", str(args.limit)], env,
                      logs / f"worker-{i}.log")
            )  # fmt: skip
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            outcome = asyncio.run(submit_and_watch("classify-flow/load", store, batches, args.runs, args.timeout))
    finally:
        for worker in workers:
            stop(worker)
        stop(serve, grace=30)
    outcome["catalogs"] = check_catalogs(store, batches[: args.runs])  # the batches some run named
    outcome["server"] = server_errors(logs / "serve.log")
    outcome["database"] = db
    outcome["runs_per_minute"] = 60 * args.runs / outcome["seconds"]
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch")
    parser.add_argument("--workers", type=int, default=3, help="process workers on the cpu pool")
    parser.add_argument("--limit", type=int, default=2, help="flow runs at once per extra worker")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for every run to finish")
    parser.add_argument("--db", nargs="+", default=["postgres", "sqlite"], choices=["postgres", "sqlite"])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/out/orchestration"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/orchestration.json"))
    args = parser.parse_args()
    work = args.work.absolute()
    source = work / "source-store"
    make_store(source, args.batches, args.batch_size)
    results = [one_database(db, args, source, work) for db in args.db]
    print(f"\n{args.runs} classify-flow runs on {args.batches} batches of {args.batch_size} images, "
          f"{args.workers} process workers on one pool, each taking {args.limit} runs at a time\n")  # fmt: skip
    print("| database | runs | final states | stuck | runs/min | submit s | wall s | batches with one catalog "
          "| server tracebacks (database locked) |")  # fmt: skip
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in results:
        stuck = sum(n for t, n in r["states"].items() if t not in FINAL)
        ok = r["catalogs"]["batches"] - len(r["catalogs"]["problems"])
        states = ", ".join(f"{t.lower()} {n}" for t, n in r["states"].items())
        print(f"| {r['database']} | {r['runs']} | {states} | {stuck} | {r['runs_per_minute']:.1f} | "
              f"{r['submit_seconds']:.1f} | {r['seconds']:.0f} | {ok}/{r['catalogs']['batches']} | "
              f"{r['server']['tracebacks']} ({r['server']['database_locked']}) |")  # fmt: skip
        for problem in r["catalogs"]["problems"]:
            print(f"  {r['database']}: {problem}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": datetime.now(UTC).isoformat(), "machine": platform.machine(),
                                    "cpus": os.cpu_count(), "args": {k: str(v) for k, v in vars(args).items()},
                                    "results": results}, indent=2))  # fmt: skip
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
