"""Selective-scan implementations, one free function each, all with one signature.

    scan(u, delta, A, B, C, D, h0=None, *, chunk_size=32) -> y

u, delta: (b, l, d); A: (d, n); B, C: (b, l, n); D: (d,); h0: (b, d, n) or None; y: (b, l, d).
Recurrence (zero-order hold on A, Euler on B, as in Mamba):
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = C_t . h_t + D * u_t
`selective_scan_ref` is the oracle every other implementation is tested against.

`SCANS` holds one `ScanEntry` per scan: its function, its layout, where it runs, whether it computes float64
inputs in float64, and whether and after which probe `auto` may pick it. A new scan is one entry and one file.
"""

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import unset_fake_temporarily

from variants.errors import MbsbenchError, error_line
from variants.scan_ckpt import selective_scan_chunked_ckpt, selective_scan_chunked_ckpt_time_major
from variants.scan_cpu import missing_compiler, selective_scan_cpu_fused, selective_scan_cpu_fused_time_major
from variants.scan_triton import TRITON, selective_scan_triton

try:  # the fused CUDA kernel is optional; "cuda" says how to get it when missing
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_selective_scan_fn
except ImportError:  # pragma: no cover - depends on the machine
    _mamba_selective_scan_fn = None


def selective_scan_ref(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None,
    *, chunk_size: int = 32,
) -> Tensor:
    """Plain loop over time, one step at a time: the oracle (run it in float64)."""
    batch, length, d = u.shape
    h = u.new_zeros(batch, d, A.shape[1]) if h0 is None else h0
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, t, :, None] * A)  # (b, d, n)
        h = decay * h + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]  # (b, d, n)
        ys.append((h * C[:, t, None, :]).sum(-1) + D * u[:, t])  # (b, d)
    return torch.stack(ys, dim=1)  # (b, l, d)


def _scan_loop(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h: Tensor, indexed: bool = False,
) -> tuple[Tensor, Tensor]:
    """Materialize (b, l, d, n) discretization, loop over time under autograd; y without D."""
    decay = torch.exp(delta.unsqueeze(-1) * A)  # (b, l, d, n)
    drive = (delta * u).unsqueeze(-1) * B.unsqueeze(2)  # (b, l, d, n)
    ys = []
    if indexed:  # the reference's own loop: each step's slice backward zero-fills a full-size buffer
        steps = ((decay[:, t], drive[:, t], C[:, t]) for t in range(u.shape[1]))
    else:  # one unbind: its backward stacks the step gradients once (same math, O(l) not O(l^2))
        steps = zip(decay.unbind(1), drive.unbind(1), C.unbind(1))
    for decay_t, drive_t, c_t in steps:
        h = decay_t * h + drive_t  # (b, d, n)
        ys.append(torch.einsum("bdn,bn->bd", h, c_t))
    return torch.stack(ys, dim=1), h


def _initial_state(u: Tensor, A: Tensor, h0: Tensor | None) -> Tensor:
    return u.new_zeros(u.shape[0], u.shape[2], A.shape[1]) if h0 is None else h0


def selective_scan_naive(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None,
    *, chunk_size: int = 32, indexed: bool = False,
) -> Tensor:
    """The reference's full-sequence scan: (b, l, d, n) tensors, autograd keeps every step."""
    y, _ = _scan_loop(u, delta, A, B, C, _initial_state(u, A, h0), indexed)
    return y + D * u


def selective_scan_chunked(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None,
    *, chunk_size: int = 32, indexed: bool = False,
) -> Tensor:
    """The reference's chunked scan: (b, chunk, d, n) at a time, but autograd still keeps every chunk."""
    h = _initial_state(u, A, h0)
    ys = []
    for start in range(0, u.shape[1], chunk_size):
        part = slice(start, start + chunk_size)
        y, h = _scan_loop(u[:, part], delta[:, part], A, B[:, part], C[:, part], h, indexed)
        ys.append(y)
    return torch.cat(ys, dim=1) + D * u


def selective_scan_seed(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None,
    *, chunk_size: int = 32,
) -> Tensor:
    """The reference's chunked scan with its six clamps (flag scan_clamps='seed'); not the default."""
    h = _initial_state(u, A, h0)
    ys = []
    for start in range(0, u.shape[1], chunk_size):
        part = slice(start, start + chunk_size)
        # seed bug: clamps that zero gradients outside their ranges and keep extra copies
        decay = torch.exp(torch.clamp(delta[:, part].unsqueeze(-1) * A, -10.0, 0.0)).clamp(0.0, 0.999)
        drive = (torch.clamp(delta[:, part], 0.0, 1.0).unsqueeze(-1) * B[:, part].unsqueeze(2)).clamp(-10.0, 10.0)
        steps = zip(decay.unbind(1), drive.unbind(1), C[:, part].unbind(1), u[:, part].unbind(1))
        for decay_t, drive_t, c_t, u_t in steps:
            h = torch.clamp(decay_t * h + drive_t * u_t.unsqueeze(-1), -100.0, 100.0)  # (b, d, n)
            ys.append(torch.clamp(torch.einsum("bdn,bn->bd", h, c_t) + D * u_t, -50.0, 50.0))
    return torch.stack(ys, dim=1)


def selective_scan_cuda(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None,
    *, chunk_size: int = 32,
) -> Tensor:
    """mamba_ssm's fused CUDA kernel; an error naming what is missing when it cannot run."""
    if _mamba_selective_scan_fn is None:
        raise MbsbenchError("scan='cuda' needs the mamba_ssm package on a CUDA machine: pip install mamba-ssm")
    if not u.is_cuda:
        raise MbsbenchError(f"scan='cuda' needs CUDA tensors, got device {u.device}; use scan=auto or chunked_ckpt")
    if h0 is not None:
        raise MbsbenchError("scan='cuda': mamba_ssm's kernel takes no initial state h0")
    if u.dtype == torch.float64:
        raise MbsbenchError("scan='cuda': mamba_ssm's kernel computes in float32, not float64; use scan=triton or "
                            "chunked_ckpt for a float64 run")
    y = _mamba_selective_scan_fn(
        u.transpose(1, 2).contiguous(), delta.transpose(1, 2).contiguous(), A.contiguous(),
        B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), D.float(),
    )  # (b, d, l)
    return y.transpose(1, 2)


def _mamba_problem(device: torch.device) -> str | None:
    del device  # importable or not, on any CUDA device
    return None if _mamba_selective_scan_fn is not None else "the mamba_ssm package does not import"


_FIRST_LAUNCH: dict[int, str | None] = {}  # CUDA device index -> why the Triton kernels failed there, or None


def _triton_problem(device: torch.device) -> str | None:
    """Why the Triton kernels cannot compile and run on this CUDA device (probed once per device), or None.

    A first launch needs a C compiler, Python's headers and libcuda besides the triton package; a slim
    container may lack any of them, and `auto` must then pick another scan instead of failing in the model.
    """
    if not TRITON:
        return "the triton package is not installed"
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _FIRST_LAUNCH:
        _FIRST_LAUNCH[index] = _first_triton_launch(torch.device("cuda", index))
    return _FIRST_LAUNCH[index]


def _first_triton_launch(device: torch.device) -> str | None:
    """Compile and run both kernels on a tiny scan on the device; compare with the float64 loop."""
    return _first_call(selective_scan_triton, device)


def _first_call(scan: Callable[..., Tensor], device: torch.device) -> str | None:
    """Why a scan's first forward and backward on a tiny problem failed or differ from the float64 loop, or None."""
    with _real_autograd():
        ref = _tiny_problem()
        try:
            inputs = [t.float().to(device).requires_grad_() for t in ref]
            y = scan(*inputs, chunk_size=2)
            y.sum().backward()
            err = (y.detach().double().cpu() - selective_scan_ref(*ref)).abs().max().item()
        except Exception as caught:  # any failure of a first build, compile or launch rules the scan out
            return error_line(caught)
    return None if err < 1e-4 else f"the first call differs from the float64 loop by {err:.1e}"


def _cpu_fused_problem(device: torch.device) -> str | None:
    """Why the C kernel cannot build and run on this machine (probed once per process), or None."""
    del device  # one CPU per process
    return _first_cpu_call()


@cache
def _first_cpu_call() -> str | None:
    """Build the C kernel, run both directions on a tiny scan and compare with the float64 loop."""
    if missing := missing_compiler():
        return f"the C kernel cannot be built: {missing}"
    return _first_call(selective_scan_cpu_fused, torch.device("cpu"))


@contextmanager
def _real_autograd() -> Iterator[None]:
    """Real tensors with autograd on: a probe's real call and backward must run even when auto is first resolved
    inside a fake-tensor trace, a no_grad block (inference, counting MACs) or inference mode."""
    with unset_fake_temporarily(), torch.inference_mode(False), torch.enable_grad():
        yield


def _tiny_problem() -> list[Tensor]:
    """u, delta, A, B, C, D of a tiny float64 scan (batch 1, length 5, d 3, n 4)."""
    g = torch.Generator().manual_seed(0)
    ref = [torch.rand(1, 5, 3, generator=g, dtype=torch.float64) for _ in range(2)]
    ref += [-torch.rand(3, 4, generator=g, dtype=torch.float64) - 0.5]
    return ref + [torch.randn(1, 5, 4, generator=g, dtype=torch.float64) for _ in range(2)] + [torch.ones(3).double()]


@dataclass(frozen=True)
class ScanEntry:
    """One selective scan and its facts."""

    name: str
    fn: Callable[..., Tensor]  # the common signature, batch-major (b, l, .) tensors
    devices: tuple[str, ...] = ("cpu", "cuda")  # device types it runs on
    float64: bool = True  # computes float64 inputs in float64 (else it must not run a float64 model)
    takes_h0: bool = True  # accepts an initial state
    time_major: Callable[..., Tensor] | None = None  # the same scan on (l, b, .) tensors, when it has one
    probe: Callable[[torch.device], str | None] | None = None  # why it cannot run on a device it lists, or None
    interpreter: bool = False  # also runs on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1: tests)

    def problem(self, device: torch.device, dtype: torch.dtype = torch.float32) -> str | None:
        """Why this scan cannot run on the device for inputs of this dtype, or None when it can."""
        if device.type not in self.devices:
            return f"scan={self.name} runs on {' or '.join(self.devices)} tensors, not {device.type}"
        if dtype == torch.float64 and not self.float64:
            return f"scan={self.name} computes in float32, and this run is float64"
        return self.probe(device) if self.probe is not None else None


SCANS: dict[str, ScanEntry] = {entry.name: entry for entry in (
    ScanEntry("naive", selective_scan_naive),
    ScanEntry("chunked", selective_scan_chunked),
    ScanEntry("chunked_ckpt", selective_scan_chunked_ckpt, time_major=selective_scan_chunked_ckpt_time_major),
    ScanEntry("cuda", selective_scan_cuda, devices=("cuda",), float64=False, takes_h0=False, probe=_mamba_problem),
    ScanEntry("triton", selective_scan_triton, devices=("cuda",), probe=_triton_problem, interpreter=True),
    ScanEntry("cpu_fused", selective_scan_cpu_fused, devices=("cpu",), time_major=selective_scan_cpu_fused_time_major,
              probe=_cpu_fused_problem),
)}
SEED_SCAN = ScanEntry("seed", selective_scan_seed)  # chosen by the flag scan_clamps='seed', never by name
# what auto tries, first that can run wins; chunked_ckpt always can
AUTO_ORDER = ("cuda", "triton", "cpu_fused", "chunked_ckpt")


# The reference's per-step indexing, kept only so that `bench scan` can measure what it costs.
INDEXED_LOOPS: dict[str, Callable[..., Tensor]] = {
    "naive_indexed": partial(selective_scan_naive, indexed=True),
    "chunked_indexed": partial(selective_scan_chunked, indexed=True),
}


def scan_entry(name: str) -> ScanEntry:
    """The entry of a resolved scan name ('seed' included)."""
    return SEED_SCAN if name == "seed" else SCANS[name]


def runnable_scans(device: torch.device | str, dtype: torch.dtype = torch.float32) -> list[str]:
    """The scans that can run on this device for inputs of this dtype, probes included."""
    device = torch.device(device)
    return [name for name, entry in SCANS.items() if entry.problem(device, dtype) is None]


def auto_report(device: torch.device, dtype: torch.dtype = torch.float32) -> list[tuple[str, str | None]]:
    """(scan, why auto passed it over or None) in auto's order, up to the one it picks."""
    report = []
    for name in AUTO_ORDER:
        report.append((name, SCANS[name].problem(device, dtype)))
        if report[-1][1] is None:
            break
    return report


def cuda_scan_available() -> bool:
    """True when mamba_ssm imports and a CUDA device is present."""
    return _mamba_selective_scan_fn is not None and torch.cuda.is_available()


def choose_scan(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """Resolve 'auto' for a device and input dtype: the first of AUTO_ORDER that can run there (on CUDA mamba_ssm's
    kernel, then the Triton kernels once a first launch worked; on the CPU the C kernel once it built and ran; then
    chunked_ckpt). Other names pass through."""
    if name != "auto":
        return name
    report = auto_report(device, dtype)
    chosen = report[-1][0]
    if chosen == "chunked_ckpt":  # the fast scan of this device could not run: say why
        passed = dict(report)["triton" if device.type == "cuda" else "cpu_fused"]
        if passed is not None:
            warnings.warn(f"scan=auto on {device}: {passed}; the model runs with chunked_ckpt", stacklevel=2)
    return chosen
