"""Running under ``torchrun``: ranks, collectives, the device, and tearing down.

Without ``torchrun`` every helper here is a no-op for a single process, so the
training code calls them unconditionally.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from typing import Callable, List, Tuple

import torch
from torch import Tensor, nn

from ..errors import OpenUnmixLikeError


def world() -> Tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside ``torchrun``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes files and logs (rank 0; before the process group is joined, the
    ``RANK`` torchrun gives it)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


# How long a collective waits for the slowest rank: rank 0 alone reads up to 1000 whole training tracks for
# the input statistics while the others wait to receive them (nccl's own default, 10 minutes, is too short).
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


def setup_distributed(device: torch.device) -> None:
    """Join the process group ``torchrun`` describes (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            # Each rank's own GPU as the current device: NCCL's collectives (and the tensors made with
            # device="cuda" below) use it; without this every rank would use GPU 0.
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                             timeout=COLLECTIVE_TIMEOUT)
        if not is_main():
            # Every rank reads the same files with the same options: rank 0 alone warns of what it finds
            # (files left out, ...); errors still come from the rank that meets them.
            logging.getLogger("openunmix_like").setLevel(logging.ERROR)


def broadcast_from_rank0(compute: Callable[[], Tuple[Tensor, Tensor]], nb_bins: int) -> Tuple[Tensor, Tensor]:
    """Compute on rank 0 only and share the result with every rank."""
    rank, size = world()
    if size == 1:
        return compute()
    on_gpu = torch.distributed.get_backend() == "nccl"  # nccl broadcasts CUDA tensors only
    device = "cuda" if on_gpu else "cpu"
    stats = torch.zeros(2, nb_bins, device=device)
    if rank == 0:
        mean, std = compute()
        stats = torch.stack([mean, std]).float().to(device)
    torch.distributed.broadcast(stats, src=0)
    stats = stats.cpu()  # the statistics are set on the model before it moves to its device
    return stats[0], stats[1]


def all_reduce_sum(values: List[float]) -> List[float]:
    """Sums over the ranks (the values themselves in a single process)."""
    if world()[1] == 1:
        return values
    on_gpu = torch.distributed.get_backend() == "nccl"  # nccl reduces CUDA tensors only
    t = torch.tensor(values, dtype=torch.float64, device="cuda" if on_gpu else "cpu")
    torch.distributed.all_reduce(t)
    return t.tolist()


def gather(state: Tensor) -> List[Tensor]:
    """Every rank's ``state`` (the same shape on each), in rank order, on the CPU; ``[state]`` in a single
    process."""
    size = world()[1]
    if size == 1:
        return [state]
    on_gpu = torch.distributed.get_backend() == "nccl"  # nccl gathers CUDA tensors only
    state = state.to("cuda" if on_gpu else "cpu")
    states = [torch.empty_like(state) for _ in range(size)]
    torch.distributed.all_gather(states, state)
    return [s.cpu() for s in states]


def same_on_every_rank(values: List[float]) -> bool:
    """Whether every rank has the same ``values`` (always, in a single process)."""
    if world()[1] == 1:
        return True
    gathered = gather(torch.tensor(values, dtype=torch.float64))
    return all(torch.equal(g, gathered[0]) for g in gathered)


def broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers of ``model`` (batch-norm statistics), which rank 0 saves.

    DDP shares them before each forward pass, but the pass then moves each rank's own copy with its
    own batch: without this, each rank would validate a slightly different model.
    """
    if world()[1] == 1:
        return
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, src=0)


def pick_device(device: str = None, no_cuda: bool = False) -> torch.device:
    """``--device`` if given, else CUDA when available (and not ``--no-cuda``); under torchrun the
    local rank's GPU."""
    if device:
        chosen = torch.device(device)
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise OpenUnmixLikeError("--device cuda: CUDA is not available on this machine; use --device cpu")
    else:
        chosen = torch.device("cuda" if torch.cuda.is_available() and not no_cuda else "cpu")
    if chosen.type == "cuda" and "LOCAL_RANK" in os.environ:
        chosen = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return chosen


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The model in DistributedDataParallel when there are several ranks, else itself."""
    if world()[1] == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


@contextlib.contextmanager
def distributed_session():
    """Tear the process group down when training ends (no-op without torchrun).

    Ranks first wait for each other, so none closes its connections while rank 0
    is still writing the last epoch's files or another rank is mid-collective.
    """
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if not failed:
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()
