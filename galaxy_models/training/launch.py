"""Starting training: ``launch`` runs ``torchrun --nproc-per-node=N`` over this module, whose ``main``
is what every child process executes (``python -m galaxy_models.training.launch CONFIG.json``)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable

from galaxy_models.training.config import TrainConfig
from galaxy_models.training.loop import train
from galaxy_models.training.runs import TrainRun, read_run, record_config, resolve_dataset


class TrainingFailed(RuntimeError):
    """torchrun (or a training process under it) exited with an error."""


def launch(
    config: TrainConfig,
    *,
    processes: int | None = None,
    log: Callable[[str], None] = print,
    extra_args: list[str] | None = None,
) -> TrainRun:
    """Run ``train`` under ``torchrun --nproc-per-node=N`` (N: one per GPU, or 1) and return the run.

    If a process dies, torchrun stops the others and starts them all again, up to
    ``config.max_restarts`` times; they resume from the run's last checkpoint.

    ``extra_args`` go to torchrun before the script, e.g. ``["--nnodes=2", "--rdzv-endpoint=host:29400",
    "--rdzv-id=job1"]`` to join a multi-node job (``--standalone`` is used otherwise). torchrun's output
    is passed to ``log`` line by line.

    Raises:
        ValueError: if the batch does not split evenly over the processes.
        TrainingFailed: if torchrun fails; the message carries the last lines of its output.
    """
    count = processes or config.process_count()
    if config.batch_size % count:
        raise ValueError(f"batch_size {config.batch_size} does not split evenly over {count} processes")
    store, manifest = resolve_dataset(config)  # fail here, not in every child, if the data is missing
    record_config(store, config, config.run_id(manifest, count))  # or if the store is read-only
    with tempfile.TemporaryDirectory(prefix="galaxy-train-") as tmp:
        config_path = os.path.join(tmp, "config.json")
        with open(config_path, "w") as f:
            f.write(config.model_dump_json())
        rendezvous = extra_args if extra_args else ["--standalone"]
        command = [
            sys.executable, "-m", "torch.distributed.run", *rendezvous, f"--nproc-per-node={count}",
            f"--max-restarts={config.max_restarts}", "-m", "galaxy_models.training.launch", config_path,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "GALAXY_NO_PROGRESS": "1"}
        tail: list[str] = []
        # Bytes, decoded line by line: a child's odd byte cannot stop the run, and no text-mode
        # decoder state is shared with anything else in this process.
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as child:
            for raw in child.stdout or []:
                line = raw.decode("utf-8", errors="replace").rstrip()
                log(line)
                tail = [*tail[-39:], line]
            code = child.wait()
        if code != 0:
            raise TrainingFailed(f"torchrun exited with {code}:\n" + "\n".join(tail))
    run = read_run(store, config.run_name, config.run_id(manifest, count))
    if run is None:
        raise TrainingFailed("torchrun finished but the run left no run.json")
    return run


def main(argv: list[str] | None = None) -> None:
    """Entry point of each torchrun child: ``python -m galaxy_models.training.launch CONFIG.json``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m galaxy_models.training.launch CONFIG.json")
    with open(args[0]) as f:
        config = TrainConfig.model_validate_json(f.read())
    train(config, progress=os.environ.get("GALAXY_NO_PROGRESS") != "1")


if __name__ == "__main__":
    main()
