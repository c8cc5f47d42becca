"""Many processes (`torchrun`, `accelerate launch`): which process this is, its share of the
eval text, and the collectives that bring the shares back together.

Measuring forgetting under DDP or FSDP follows TRL's `LogCompletionsCallback`: every process
runs its own contiguous share of the sequences (`Shard`), padded so that every process runs
the same number of forward passes (FSDP gathers weights inside each one, so a process that
ran fewer would leave the others waiting), and the per-sequence sums are gathered
(`all_gather`) in process order, which is the one-process order. Without a process group
every function here is the identity, so one code path serves one process and many.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch


def start(device: torch.device) -> torch.device:
    """This process's device, starting the process group first (as accelerate, and so the
    Trainer, does: gloo on CPUs, NCCL on GPUs) when a launcher started several processes
    (`WORLD_SIZE` > 1: `torchrun`, `accelerate launch`); `device` itself with one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    from accelerate import PartialState

    return PartialState(cpu=device.type == "cpu").device


def world() -> tuple[int, int]:
    """`(rank, world size)` of this process; `(0, 1)` without an initialised process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on the process that writes files, logs and keeps records (rank 0)."""
    return world()[0] == 0


@dataclass(frozen=True)
class Shard:
    """Rows `[start, start + real)` of `n` are this process's; `size` is every process's
    share (`ceil(n / world)`), reached by repeating a row whose result is then dropped."""

    start: int
    real: int
    size: int

    @classmethod
    def of(cls, n: int, rank: int | None = None, size: int | None = None) -> Shard:
        """This process's share of `n` rows (or `rank`'s of `size` processes)."""
        if rank is None or size is None:
            rank, size = world()
        share = math.ceil(n / size)
        start = min(n, rank * share)
        return cls(start, min(n, start + share) - start, share)

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """This share of `rows` (a view where no padding is needed: a memory map stays one)."""
        mine = rows[self.start : self.start + self.real]
        if self.real == self.size or len(rows) == 0:
            return mine
        filler = rows[-1:] if self.real == 0 else mine[-1:]
        return torch.cat([mine, filler.expand(self.size - self.real, *rows.shape[1:])])


def all_gather(obj: Any) -> list[Any]:
    """`obj` from every process, in rank order, on every process (`[obj]` with one)."""
    import torch.distributed as dist

    if world()[1] == 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast(obj: Any) -> Any:
    """The main process's `obj`, on every process: one decision that all of them follow."""
    import torch.distributed as dist

    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sharded_reason(model: torch.nn.Module) -> str | None:
    """Why `model`'s weights cannot be used outside its own forward pass (FSDP2 has sharded
    them across processes as DTensors), or None. Such a model is measured through its own
    forward pass, which every process joins."""
    import torch.distributed as dist

    if not dist.is_available():  # a torch built without it has no DTensors either
        return None
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        return "its weights are sharded across processes (FSDP2)"
    return None


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why forgetting cannot be measured inside this run of `model`, or None: FSDP1 and
    DeepSpeed ZeRO-3 shard weights in ways no measurement here was built or tested for,
    and a forward pass some process skipped would hang every other one."""
    if any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()):
        return ("forgetting is not measured under FSDP1 (FullyShardedDataParallel): use FSDP2 "
                "(fsdp_version: 2 in accelerate's config, or fsdp_config={'version': 2})")
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:
        return None
    if is_deepspeed_zero3_enabled():
        return "forgetting is not measured under DeepSpeed ZeRO-3: use ZeRO-1 or 2, or FSDP2"
    return None
