"""Where a run executes: devices, data/distributed parallelism, mixed precision, and the allocator setting.

One process on CPU or one GPU; one process driving all visible GPUs through
`torch.nn.DataParallel`; or one process per GPU (or CPU worker) under ``torchrun``
with `DistributedDataParallel` (NCCL on GPU, gloo on CPU).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Runtime", "setup_runtime", "keep_freed_memory"]

logger = logging.getLogger(__name__)

@dataclass
class Runtime:
    """The devices and process group of this process.

    Attributes:
        device: where this process puts its model and batches.
        n_gpu: GPUs this process drives (DataParallel when > 1, else 0 or 1).
        rank, world_size: position in the torchrun process group (0 and 1 without one).
        local_rank: GPU index of this process under torchrun, -1 otherwise.
        fp16: mixed precision (fp16 with loss scaling on GPU, bf16 on CPU).
    """

    device: torch.device
    n_gpu: int = 0
    rank: int = 0
    world_size: int = 1
    local_rank: int = -1
    fp16: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process logs to the console, writes files and saves checkpoints."""
        return self.rank == 0

    def autocast(self):
        """Context for forward passes: autocast when ``fp16`` is on, a no-op otherwise."""
        if not self.fp16:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self) -> Optional[torch.amp.GradScaler]:
        """A loss scaler for fp16 on GPU; None elsewhere (bf16 needs none)."""
        if self.fp16 and self.device.type == "cuda":
            return torch.amp.GradScaler("cuda")
        return None

    def wrap(self, module: nn.Module) -> nn.Module:
        """Wrap a trainable module for this runtime (DDP, DataParallel or as is).

        DDP looks for parameters that a step did not use, because a stage's loss may
        leave some (e.g. the classifier during intermediate KD) out of the graph.
        """
        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(
                module, device_ids=device_ids, find_unused_parameters=True
            )
        if self.n_gpu > 1:
            return nn.DataParallel(module)
        return module

    def wrap_frozen(self, module: nn.Module) -> nn.Module:
        """Wrap a module that is only run forward (the teacher): DataParallel over several GPUs."""
        if not self.distributed and self.n_gpu > 1:
            return nn.DataParallel(module)
        return module

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order (``[obj]`` without a process group)."""
        if not self.distributed:
            return [obj]
        gathered: List[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def max_over_ranks(self, value: int) -> int:
        """The largest ``value`` over all ranks (``value`` itself without a process group)."""
        if not self.distributed:
            return value
        device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        tensor = torch.tensor([value], dtype=torch.long, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def broadcast_object(self, obj: Any) -> Any:
        """The main process's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def close(self, wait_for_peers: bool = False) -> None:
        """Leave the torchrun process group. ``wait_for_peers`` (this rank's run ended well): first wait for every
        rank to get here. torch's Gloo teardown can abort the rank that leaves while a peer still holds the group
        (``terminate called without an active exception``: exit -6 after a finished run; docs/DESIGN.md, "Run
        directories")."""
        if not (self.distributed and dist.is_initialized()):
            return
        try:
            if wait_for_peers:
                dist.barrier()
        finally:
            dist.destroy_process_group()


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    """The CPU's model name (``lscpu``'s "Model name"; "unknown" where ``/proc/cpuinfo`` does not say)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    The simulation allocates and frees the same tens-of-MB tensors every time chunk. By default
    glibc serves blocks above its mmap threshold with fresh ``mmap`` pages and trims freed heap
    memory, so every chunk pays page faults for zeroed pages (about a fifth of a CPU eval forward).
    Raising both thresholds keeps those blocks in the heap (the resident size stays at its peak).
    Only on glibc, and not where the user set ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
    or ``SPIKINGBERT_MALLOC=system``. Returns whether the settings were applied.
    """
    if (os.environ.get("SPIKINGBERT_MALLOC", "").lower() == "system"
            or "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3                   # glibc's mallopt parameter numbers
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, (1 << 31) - 1))


def setup_runtime(no_cuda: bool = False, local_rank: int = -1, fp16: bool = False) -> Runtime:
    """Pick devices and join the torchrun process group when there is one.

    Under ``torchrun`` the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``)
    defines the group; ``--local_rank`` is accepted for the older launcher. Also applies
    `keep_freed_memory`.
    """
    keep_freed_memory()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and not no_cuda
    if world_size > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", local_rank if local_rank >= 0 else 0))
        if use_cuda:
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return Runtime(
            device=device,
            n_gpu=1 if use_cuda else 0,
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=local_rank,
            fp16=fp16,
        )
    if use_cuda:
        return Runtime(device=torch.device("cuda"), n_gpu=torch.cuda.device_count(), fp16=fp16)
    return Runtime(device=torch.device("cpu"), fp16=fp16)
