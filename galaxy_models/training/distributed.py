"""This process's place in a training job that torchrun started (or a job of one process): rank,
world size, device, the process group (NCCL on GPUs, gloo on CPUs) and the collectives training
needs."""

from __future__ import annotations

import os
import platform
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class Processes:
    """Reads torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), picks the device and
    joins the process group when there is more than one process."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, store=_attempt_store(), rank=self.rank, world_size=self.world)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def mean(self, value: float) -> float:
        return sum(self.gather(value)) / self.world

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel when there is more than one process."""
        if self.world == 1:
            return model
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def hardware(self) -> dict[str, Any]:
        """What the run ran on, for the run record and the model card."""
        info: dict[str, Any] = {
            "device": self.device.type,
            "processes": self.world,
            "host": platform.node(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
        }
        if self.device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self.device)
        return info

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _attempt_store() -> dist.Store | None:
    """The rendezvous store for this attempt of the job, or None for torch's default (``env://``).

    After a process dies torchrun restarts them all, but on one node it hands the new processes the
    same agent store as the last attempt, with no per-attempt prefix (torch 2.14). The new rank 0
    then reads the dead attempt's addresses and the group never forms. A prefix holding
    ``TORCHELASTIC_RESTART_COUNT`` gives every attempt keys of its own.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    agent_store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timedelta(minutes=10)
    )
    return dist.PrefixStore(f"galaxy/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", agent_store)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP and ``torch.compile`` wrappers (their state dicts have prefixes)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model
