r"""Data-parallel training on torch.distributed.

Within a mini-batch, everything message passing computes is per sample (the forward moments,
the output function, the downward fields b, BP's cavity state, AMP's memory) except the field
message of every layer, H_in = Σ_a (...), a sum over the samples (and, in a convolution, over
the output positions). So each process takes a contiguous shard of every global mini-batch,
computes the H_in of its samples, and one all-reduce (SUM) of the H_in of every layer gives
every process the field update of the whole batch: the same step as one process on the
whole batch, up to the summation order. The reduction goes through the model's
``h_in_reduction`` hook (:class:`bpkernels.sequential.BPSequential`), all layers flattened
into one buffer per call.

Launch any training under ``torchrun`` (or initialise torch.distributed yourself before
:func:`bpkernels.fit`): Gloo between CPU processes, NCCL between GPUs (one per process).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

# The largest flat buffer one all-reduce call carries (elements); above it, several buckets.
BUCKET_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel run: rank, world size, backend."""

    rank: int
    world_size: int
    backend: str

    @classmethod
    def current(cls) -> "DataParallel | None":
        """The running process group, or None outside torch.distributed (or with one process)."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        world = dist.get_world_size()
        return cls(dist.get_rank(), world, dist.get_backend()) if world > 1 else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, t: Tensor) -> Tensor:
        """This rank's contiguous part of t along dim 0: the first (P mod W) ranks take
        ⌈P/W⌉ rows, the others ⌊P/W⌋ (``torch.tensor_split``)."""
        return torch.tensor_split(t, self.world_size)[self.rank]

    def all_reduce_(self, tensors: list[Tensor]) -> None:
        """Sums every tensor over the ranks, in place, with one all-reduce per bucket of at
        most BUCKET_ELEMENTS elements (one call for every network in this package's tests
        and benchmarks). The tensors share a dtype and a device."""
        bucket: list[Tensor] = []
        size = 0
        for t in tensors:
            if bucket and size + t.numel() > BUCKET_ELEMENTS:
                self._reduce_bucket(bucket)
                bucket, size = [], 0
            bucket.append(t)
            size += t.numel()
        if bucket:
            self._reduce_bucket(bucket)

    @staticmethod
    def _reduce_bucket(bucket: list[Tensor]) -> None:
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in bucket:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def sum(self, value: Tensor) -> Tensor:
        """The sum of a tensor over the ranks (a new tensor)."""
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def check_same(self, name: str, value) -> None:
        """Raises on every rank unless every rank passes the same value (e.g. a seed)."""
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        if any(v != values[0] for v in values):
            raise RuntimeError(f"data-parallel ranks disagree on {name}: {values}")


def init_from_environment(device: torch.device) -> torch.device:
    """Initialises the default process group from torchrun's environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT) if it is set and not initialised yet: NCCL for CUDA devices (the
    GPU LOCAL_RANK for this process), Gloo for the CPU. Returns this process's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def is_main_process() -> bool:
    """True outside a data-parallel run and on rank 0: the process that writes files."""
    data_parallel = DataParallel.current()
    return data_parallel is None or data_parallel.is_main
