"""Process-group set-up for ``torchrun`` (DDP), with the same code path on one CPU or one GPU.

``torchrun --nproc_per_node=N stages/train_cls.py ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; a plain ``python stages/...`` run has none of them and runs as rank 0 of 1.
NCCL is used when CUDA is available, Gloo otherwise (CPU-only DDP works, slowly).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its global rank, the number of processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on the one process that logs and writes shared files (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistContext:
    """Initialise the default process group when launched by ``torchrun``; pick the device.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available, else CPU). Under CUDA each
            process takes GPU ``LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank, world_size, local_rank, torch_device)


def cleanup_distributed() -> None:
    """Destroy the process group if one was created."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_rows(*tensors: torch.Tensor, keep_local_grad: bool = False) -> tuple[torch.Tensor, ...]:
    """All-gather tensors with a leading dimension ``N_r`` that may differ between ranks.

    Every tensor of one call has the same ``N_r`` on a rank (e.g. ``(N_r, D)`` embeddings and
    ``(N_r,)`` labels). Sizes are gathered first, every rank pads to the largest ``N_r``, gathers,
    and trims; each result is the concatenation over ranks in rank order (identical on every rank).
    Without a process group (or with one rank) the tensors are returned as they are.

    Args:
        tensors: ``(N_r, ...)`` tensors on the process group's device.
        keep_local_grad: put this rank's own tensors (with their autograd history) into the result
            in place of their gathered copies, so gradients flow to the local rows; the other
            ranks' rows never carry gradients (``dist.all_gather`` is not differentiable).

    Returns:
        One ``(sum_r N_r, ...)`` tensor per input.
    """
    if not is_distributed():
        return tensors
    world, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    n_max = max(sizes)
    if n_max == 0:
        return tensors
    gathered = []
    for tensor in tensors:
        padded = torch.cat([tensor.detach(), tensor.new_zeros((n_max - tensor.shape[0],) + tensor.shape[1:])])
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        parts = [part[:size] for part, size in zip(parts, sizes)]
        if keep_local_grad:
            parts[rank] = tensor
        gathered.append(torch.cat(parts))
    return tuple(gathered)


def all_reduce_sum(tensor: torch.Tensor, keep_local_grad: bool = False) -> torch.Tensor:
    """Sum of ``tensor`` over all ranks (the tensor itself without a process group).

    With ``keep_local_grad`` the result is ``tensor + (sum over the other ranks, detached)``, so
    gradients flow to this rank's contribution only (``dist.all_reduce`` is not differentiable).
    The input is never modified.
    """
    if not is_distributed():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return tensor + (total - tensor.detach()) if keep_local_grad else total


def wrap_ddp(model: nn.Module, ctx: DistContext, find_unused_parameters: bool = False,
             sync_buffers: bool = True) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when the run has several processes, else as it is.

    ``sync_buffers=False`` copies rank 0's buffers only when wrapping, not before every forward pass
    (for memory banks that every rank already fills identically with all ranks' entries)."""
    if not ctx.distributed:
        return model
    device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                               find_unused_parameters=find_unused_parameters,
                                               forward_sync_buffers=sync_buffers)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
