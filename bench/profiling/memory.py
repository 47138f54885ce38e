"""Peak memory of steps, memory-vs-length curves, the largest batch under a budget; an OOM is a result."""

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from bench.devices import cuda_index
from bench.profiling.instruments import LiveTensorPeak, OpCounter, cuda_peak_bytes
from bench.profiling.workload import ProfileSettings, make_workload, samples
from variants.config import ModelConfig
from variants.errors import first_line

OOM_MARKERS = ("out of memory", "can't allocate memory", "DefaultCPUAllocator")
CPU_MEMORY_SHARE = 0.7  # a CPU measurement predicted above this share of available RAM is skipped


class MemoryExceededError(Exception):
    """A measurement that did not fit, real (allocator error) or predicted (CPU)."""


def is_oom(err: BaseException) -> bool:
    """True for an allocator's out-of-memory error (CUDA or CPU)."""
    return isinstance(err, torch.cuda.OutOfMemoryError | MemoryError) or any(m in str(err) for m in OOM_MARKERS)


def peak_bytes(run: Callable[[], None], resident: list[Tensor], device: str) -> int:
    """Peak bytes of one call: CUDA allocator peak, or peak live tensor bytes on CPU (resident counted)."""
    if torch.device(device).type == "cuda":
        return cuda_peak_bytes(run, device)
    with LiveTensorPeak(baseline=resident) as live:
        run()
    return live.peak_bytes


def _meminfo(*fields: str) -> int:
    """The sum of /proc/meminfo's fields in bytes (Linux), or a large number elsewhere."""
    try:
        with open("/proc/meminfo") as info:
            values = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in info}
        return sum(values[name] for name in fields)
    except (OSError, KeyError, ValueError, IndexError):
        return 2**62


def available_bytes() -> int:
    """MemAvailable of this machine (Linux), or a large number elsewhere."""
    return _meminfo("MemAvailable")


def swap_and_ram_bytes() -> int:
    """MemAvailable plus free swap: what a run may touch if it accepts being slow."""
    return _meminfo("MemAvailable", "SwapFree")


def release(device: str) -> None:
    """Give freed memory back between measurements (the CUDA cache too)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


class MemoryCurve:
    """Peak bytes of training and inference steps at (batch, seconds) points, with OOMs as results."""

    def __init__(self, model: nn.Module, cfg: ModelConfig, settings: ProfileSettings):
        self.model, self.cfg, self.settings = model, cfg, settings
        self.points: list[dict] = []

    def _predict(self, units: int, mode: str) -> None:
        done = [p for p in self.points if p["mode"] == mode and p["status"] == "ok"]
        if torch.device(self.settings.device).type == "cuda" or not done:
            return
        per_unit = max(p["peak_bytes"] / p["units"] for p in done)
        predicted, limit = per_unit * units, CPU_MEMORY_SHARE * available_bytes()
        if predicted > limit:
            raise MemoryExceededError(f"predicted {predicted / 2**30:.1f} GiB > {limit / 2**30:.1f} GiB of free RAM")

    def measure(self, batch: int, seconds: float, mode: str = "train",
                then: Callable[[Callable[[], None]], dict] | None = None) -> dict:
        """Measure (or predict the OOM of) one point; the point is recorded either way.

        The optimizer state primed (Workload.prime), then one instrumented step: its peak bytes, aten ops and
        Triton launches. `then(step)`, when given, runs on the same workload after it (the step's timing) and its
        dict is returned under "figures" (not kept in the curve).
        """
        s = self.settings
        point = {"mode": mode, "batch": batch, "seconds": seconds, "units": batch * samples(self.cfg, seconds)}
        figures = None
        try:
            self._predict(point["units"], mode)
            work = make_workload(self.model, self.cfg, batch, seconds, s.device, s.dtype)
            run = work.step(mode)
            if mode == "train":
                work.prime()  # the optimizer state, which then counts as resident, without a warm-up step
            with OpCounter() as ops:
                peak = peak_bytes(run, work.resident(), s.device)
            point |= {"status": "ok", "peak_bytes": peak, "fixed_bytes": work.fixed_bytes(), "ops": ops.total,
                      "triton_launches": ops.launches}
            figures = then(run) if then is not None else None
        except MemoryExceededError as err:
            point |= {"status": "oom", "reason": str(err)}
        except (RuntimeError, MemoryError) as err:
            if not is_oom(err):
                raise
            point |= {"status": "oom", "reason": first_line(err, 200)}
        finally:
            work = run = None
            release(s.device)
        self.points.append(point)
        return point | ({"figures": figures} if figures is not None else {})

    def find(self, batch: int, seconds: float, mode: str) -> dict | None:
        return next((p for p in self.points if (p["batch"], p["seconds"], p["mode"]) == (batch, seconds, mode)), None)


def max_batch_predicted(curve: MemoryCurve, seconds: float, budget_bytes: float) -> int | None:
    """Largest training batch under the budget from the measured points at `seconds`.

    Two or more batch sizes: the line through the smallest and largest. One: the line through it and
    its batch-independent part (parameters, gradients, optimizer state), measured exactly.
    """
    ok = sorted((p["batch"], p["peak_bytes"], p["fixed_bytes"]) for p in curve.points
                if p["mode"] == "train" and p["seconds"] == seconds and p["status"] == "ok")
    if not ok:
        return None
    (b1, p1, f1), (b2, p2, _) = ok[0], ok[-1]
    if b2 != b1:
        slope = (p2 - p1) / (b2 - b1)
        fixed = p1 - slope * b1
    else:
        slope, fixed = (p1 - f1) / b1, f1
    return max(int((budget_bytes - fixed) // slope), 0)


def outside_pool_bytes(device: str) -> int:
    """Device memory in use beyond torch's pool: the CUDA context, library handles (and any other process's)."""
    index = cuda_index(device)
    free, total = torch.cuda.mem_get_info(index)
    return total - free - torch.cuda.memory_reserved(index)


@contextmanager
def emulated_card(budget_bytes: float, device: str) -> Iterator[int]:
    """Cap torch's pool so that this GPU behaves like a card of `budget_bytes`; yields what the cap left out.

    A real card of that size also holds the CUDA context and library workspaces outside torch's pool
    (0.3-0.6 GiB), measured here after they exist: capping the pool alone would call too large a batch a fit.
    """
    index = cuda_index(device)
    outside = outside_pool_bytes(device)
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(max(budget_bytes - outside, 0) / total, 1.0), index)
    try:
        yield outside
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)


def fits_in_pool(model: nn.Module, cfg: ModelConfig, settings: ProfileSettings, batch: int) -> bool:
    """True when two training steps at this batch run without an out-of-memory error."""
    try:
        work = make_workload(model, cfg, batch, settings.seconds, settings.device, settings.dtype)
        work.train()
        work.train()
        return True
    except (RuntimeError, MemoryError) as err:
        if not is_oom(err):
            raise
        return False
    finally:
        work = None
        release(settings.device)


def max_batch_cuda(model: nn.Module, cfg: ModelConfig, settings: ProfileSettings, budget_bytes: float) -> int:
    """Largest training batch that runs on an emulated card of the budget: doubling, then bisection on real OOMs."""
    if not fits_in_pool(model, cfg, settings, 1):  # also creates the context and the cuBLAS/cuDNN handles
        return 0
    with emulated_card(budget_bytes, settings.device):
        low, high = 0, 1
        while high <= 4096 and fits_in_pool(model, cfg, settings, high):
            low, high = high, high * 2
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if fits_in_pool(model, cfg, settings, mid) else (low, mid)
        return low
