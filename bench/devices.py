"""Device selection and description."""

import platform

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
