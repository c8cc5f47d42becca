"""Tensor memory a block of torch code allocates, on any device: the peak of live tensor
bytes (what `torch.cuda.max_memory_allocated` reports on a GPU, here on a CPU too) and the
largest single allocation.

torch keeps peak statistics only for its CUDA (and XPU, MPS) allocators, so this counts
allocations itself: a `TorchDispatchMode` sees every operator's outputs, an output whose
storage is none of its inputs' is a new allocation, and a finalizer on that storage says
when it is freed. Allocations made before the block (the weights) are not counted.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass
class Allocation:
    """One tensor storage a block allocated."""

    nbytes: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    op: str


@dataclass
class AllocationTracker(TorchDispatchMode):
    """`with AllocationTracker() as tracked: ...`, then `tracked.peak_bytes` (the most tensor
    bytes live at once, counted from the block's start) and `tracked.largest` (the biggest
    single allocation). `device` limits counting to one device type (`"cpu"`, `"cuda"`);
    with `keep`, every allocation is kept in `allocations`, in order."""

    device: str | None = None
    keep: bool = False
    allocations: list[Allocation] = field(default_factory=list, repr=False)
    live_bytes: int = 0
    peak_bytes: int = 0
    largest: Allocation | None = None
    _live: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and _storage_key(tensor) not in inputs:
                self._allocated(tensor, str(func))
        return out

    def _allocated(self, tensor: torch.Tensor, op: str) -> None:
        if self.device is not None and tensor.device.type != self.device:
            return
        storage = tensor.untyped_storage()
        key, nbytes = _storage_key(tensor), storage.nbytes()
        if nbytes == 0 or key in self._live:
            return
        self._live[key] = nbytes
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        allocation = Allocation(nbytes, tuple(tensor.shape), tensor.dtype, op)
        if self.keep:
            self.allocations.append(allocation)
        if self.largest is None or nbytes > self.largest.nbytes:
            self.largest = allocation
        weakref.finalize(storage, self._freed, key)

    def largest_with(self, size: int) -> int:
        """Elements of the largest kept allocation with a dimension of `size` (a vocabulary), or 0."""
        return max((math.prod(a.shape) for a in self.allocations if size in a.shape), default=0)

    def _freed(self, key: int) -> None:
        self.live_bytes -= self._live.pop(key, 0)


def _storage_key(tensor: torch.Tensor) -> int:
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # a tensor without storage (meta, a subclass)
        return id(tensor)


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(seen.values())
