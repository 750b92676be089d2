"""Data-parallel fits: the process group, each process's shard of a step, and who reports.

:class:`~polytask.Trainer` runs data-parallel with no change to the script when it is started
by ``torchrun`` (or when the script initialised a process group itself):

- the process group: an initialised one is used; otherwise, with ``WORLD_SIZE > 1`` in the
  environment (torchrun sets it with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
  ``MASTER_PORT``), it is initialised with ``gloo`` on the CPU and ``nccl`` on CUDA, each
  process on GPU ``LOCAL_RANK``;
- ``batch_size`` is the *global* batch: every process draws the same shuffle and schedule
  (same seed), cuts each step's rows into ``W`` contiguous slices and keeps its own
  (:func:`shard_bounds`), so an epoch has the same steps as on one process and ``W``
  processes make the update one process makes on the whole batch;
- each process's task losses are rescaled so that the global mean loss is their mean over the
  processes (``W * n_r / n`` times the process's mean; 1 with equal slices);
- the stop set is evaluated whole on every process (identical weights give identical stop
  losses, so early stopping decides the same everywhere without communication);
- every process returns the same :class:`~polytask.History`; :func:`is_main_process` tells a
  script which one writes reports and checkpoints.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group; torchrun's ``RANK`` before the
    trainer initialises the group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The number of processes (1 without a process group or torchrun's ``WORLD_SIZE``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process should write reports, files and logs: rank 0 of a data-parallel
    run, or the only process. Works before and after the trainer initialises the group.

    Examples
    --------
    >>> is_main_process()  # one process
    True
    """
    return rank() == 0


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel fit."""

    rank: int
    world: int

    def bounds(self, n: int) -> tuple[int, int]:
        return shard_bounds(n, self.rank, self.world)


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of a step's ``n`` rows that process ``rank`` of ``world`` keeps:
    contiguous slices whose sizes differ by at most one (the first ``n % world`` one larger).

    Examples
    --------
    >>> [shard_bounds(5, r, 2) for r in range(2)]
    [(0, 3), (3, 5)]
    """
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def setup(device: torch.device) -> tuple[Shard | None, torch.device]:
    """The fit's shard (None on one process) and its device, initialising the process group
    from torchrun's environment when no group is initialised yet. On CUDA each process takes
    GPU ``LOCAL_RANK`` (``device="cuda"``) unless a numbered device was given."""
    if not dist.is_available():
        return None, device
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None, device
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(
                f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {missing} are not set: start the "
                "script with torchrun, or initialise torch.distributed yourself"
            )
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
        atexit.register(_destroy)
    elif device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    world = dist.get_world_size()
    if world <= 1:
        return None, device
    return Shard(dist.get_rank(), world), device


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "Shard",
    "is_distributed",
    "is_main_process",
    "rank",
    "setup",
    "shard_bounds",
    "world_size",
]
