"""Instruments: wall-clock timing, saved-for-backward bytes, peak live tensor bytes.

Each is calibrated in tests/test_measure.py against a known sleep or a known allocation.
"""

import statistics
import time
import weakref
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bench.profiling.contention import CpuWindow
from variants.scan_triton import LAUNCHES

MIB = 2**20


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels on CUDA; nothing to wait for on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, device: str = "cpu") -> dict[str, Any]:
    """Median, min and max seconds of fn() over repeats, after warm-up calls (synchronized on CUDA), and the
    conditions of the timing: other processes' cores in use meanwhile, whether that made it contended."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    with CpuWindow() as window:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats,
            "other_cores": window.other_cores, "contended": window.contended}


class _StorageLedger:
    """Bytes of distinct storages seen, each counted once while it lives."""

    def __init__(self) -> None:
        self.refs: dict[int, weakref.ref] = {}
        self.current = 0
        self.peak = 0

    def add(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = id(storage)
        known = self.refs.get(key)
        if known is not None and known() is storage:
            return
        nbytes = storage.nbytes()
        # a weakref callback, not weakref.finalize: the same release at a third of the cost per storage
        self.refs[key] = weakref.ref(storage, partial(self._release, key, nbytes))
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def _release(self, key: int, nbytes: int, ref: weakref.ref) -> None:
        self.current -= nbytes
        if self.refs.get(key) is ref:
            del self.refs[key]


class TensorOutputs(TorchDispatchMode):
    """Calls `seen(tensor)` with every tensor an op returns, the op running as it would."""

    def __init__(self, seen: Callable[[torch.Tensor], None]) -> None:
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):  # most ops: one tensor, no pytree walk
            self.seen(out)
            return out
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self.seen(item)
        return out


class LiveTensorPeak(TensorOutputs):
    """Peak bytes of live tensor storages while active (CPU or CUDA, any allocator).

    Every op's outputs are recorded; a storage stops counting when it is freed. Storages that
    existed before (parameters, inputs) count only if passed as `baseline`.
    """

    def __init__(self, baseline: Iterable[torch.Tensor] = ()) -> None:
        self.ledger = _StorageLedger()
        super().__init__(self.ledger.add)
        for tensor in baseline:
            self.ledger.add(tensor)

    @property
    def peak_bytes(self) -> int:
        return self.ledger.peak

    @property
    def current_bytes(self) -> int:
        return self.ledger.current


class SavedTensorBytes:
    """Bytes of distinct storages autograd saves for backward inside the block (saved-tensor hooks)."""

    def __init__(self) -> None:
        self.ledger = _StorageLedger()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.ledger.add(tensor)
        return tensor

    @property
    def total_bytes(self) -> int:
        """Bytes saved and still alive, counted at their most (a storage saved twice counts once)."""
        return self.ledger.peak

    def __enter__(self) -> "SavedTensorBytes":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def cuda_peak_bytes(fn: Callable[[], Any], device: str = "cuda") -> int:
    """Peak bytes the CUDA caching allocator held for tensors during fn(), reset before it."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device)


class OpCounter(TorchDispatchMode):
    """Aten ops dispatched while active, forward and backward (on a GPU each is at least one kernel launch), and the
    Triton kernels launched meanwhile (`launches`, set on exit; counted without running under counting_only)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[str, int] = {}
        self.launches = 0
        self._launched_before = 0

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    def __enter__(self) -> "OpCounter":
        self._launched_before = LAUNCHES["count"]
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        self.launches = LAUNCHES["count"] - self._launched_before
        super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__
        self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **(kwargs or {}))
