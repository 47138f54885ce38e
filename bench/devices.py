"""Device selection and description."""

import os
import platform
import sys
from pathlib import Path

from variants.errors import MbsbenchError


def resolve_device(name: str) -> str:
    """'cpu', 'cuda', 'cuda:N' or 'auto' -> 'cpu' or 'cuda:N', always with its index; a clear error otherwise.

    A bare 'cuda' means torch's current device; torch's per-device calls (memory fraction, peak stats) refuse
    a device without an index, so none leaves here.
    """
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MbsbenchError(f"unknown device {name!r}; expected cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise MbsbenchError(f"unsupported device {name!r}; expected cpu, cuda, cuda:N or auto")
    if device.type == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise MbsbenchError(f"device {name!r} asked for, but this machine has no CUDA device (use --device cpu)")
    index, count = cuda_index(device), torch.cuda.device_count()
    if index >= count:
        raise MbsbenchError(f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return f"cuda:{index}"


def cuda_index(device) -> int:
    """The index of a CUDA device ('cuda', 'cuda:N' or a torch.device): a bare 'cuda' is the current device."""
    import torch

    device = torch.device(device)
    return torch.cuda.current_device() if device.index is None else device.index


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (cgroup v2 cpu.max, or v1 cfs quota), None when unlimited."""
    try:
        own = next((line.split("::", 1)[1].strip() for line in Path("/proc/self/cgroup").read_text().splitlines()
                    if line.startswith("0::")), "/")
    except OSError:
        own = "/"
    for folder in (root / own.lstrip("/"), root):
        try:
            limit, period = (folder / "cpu.max").read_text().split()[:2]
            return None if limit == "max" else int(limit) / int(period)
        except (OSError, ValueError):
            continue
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        return None if quota <= 0 else quota / int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None


def usable_cores(root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may run on: its CPU affinity, capped by its container's CPU quota (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    return max(1, min(cores, int(quota))) if quota else cores


def use_threads(threads: int | None, processes: int = 1) -> int:
    """Set torch's CPU threads; the number set. None: OMP_NUM_THREADS when the user set it, else the usable cores
    shared by the processes on this machine (`processes`, or torchrun's LOCAL_WORLD_SIZE in a rank).

    Before torch is imported, OMP_NUM_THREADS says it (torch reads it at import, and torchrun's ranks inherit
    it), so that a bad flag is still refused without loading torch; after, torch.set_num_threads.
    """
    given = os.environ.get("OMP_NUM_THREADS", "")
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", processes))
    count = threads or (int(given) if given.isdigit() and int(given) > 0 else max(1, usable_cores() // processes))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)
    else:
        os.environ["OMP_NUM_THREADS"] = str(count)
    return count


def device_name(device: str) -> str:
    """Human-readable device: GPU model, or CPU model with the torch thread count."""
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"CPU {cpu} ({torch.get_num_threads()} threads)"


# --precision (run) and --dtype (profile) name the same thing: the dtype autocast computes in (fp64: the
# whole model in float64, no autocast: for checks of exactness, e.g. one process against several)
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp64": "float64", "float32": "float32",
              "bfloat16": "bfloat16"}


def autocast(device: str, precision: str):
    """torch.autocast to bfloat16 on the device ('bf16' / 'bfloat16'); a no-op otherwise."""
    import torch

    dtype = PRECISIONS[precision]
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def parameter_dtype(precision: str):
    """The dtype of a model's weights under a precision: float64 for fp64, else float32."""
    import torch

    return torch.float64 if PRECISIONS[precision] == "float64" else torch.float32
