"""The selective scan as a C kernel for the CPU, compiled on first use and registered as torch operators.

One loop per batch row over time, the state (n, d) held in the cache and the decay computed where it is used
(variants/scan_cpu_kernel.c); the forward saves the chunk-start states, as chunked_ckpt does, and the backward
recomputes each chunk and runs the adjoint recurrence. It needs a C compiler with OpenMP (gcc); the shared
library is built once per source, compiler and CPU into the user cache's kernels/ (MBSBENCH_CACHE, else
~/.cache/mbsbench, as bench.cache.default_cache).
"""

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from variants.errors import MbsbenchError

SOURCE = Path(__file__).with_name("scan_cpu_kernel.c")
# -ffast-math lets the compiler vectorize exp and reorder sums; it is left off the link, where gcc before 13
# would add crtfastmath.o (flush-to-zero for the whole process) even to a shared library
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c11")
LINK_FLAGS = ("-shared", "-fopenmp", "-lm")


def compiler() -> str | None:
    """The C compiler: $CC, else cc, gcc or clang on the PATH."""
    named = os.environ.get("CC")
    return shutil.which(named) if named else next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), None)


def _cpu_flags() -> str:
    """This CPU's feature flags: a library built with -march=native must not load on another CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")


def _cache_dir() -> Path:
    """The user cache's kernels/ (bench.cache.default_cache, which variants may not import)."""
    return Path(os.environ.get("MBSBENCH_CACHE", Path.home() / ".cache" / "mbsbench")) / "kernels"


def _build(cc: str, target: Path) -> None:
    """Compile and link the kernel into `target` atomically (concurrent builders each write their own temp)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / "scan.o", Path(tmp) / "scan.so"
        for command in ([cc, *COMPILE_FLAGS, "-c", str(SOURCE), "-o", str(obj)], [cc, str(obj), "-o", str(lib),
                                                                                   *LINK_FLAGS]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                first = (done.stderr.strip().splitlines() or ["no message"])[0]
                raise MbsbenchError(f"scan='cpu_fused': {Path(cc).name} could not build the kernel: {first}")
        os.replace(lib, target)


def missing_compiler() -> str:
    """What is missing to build the kernel ('' when a C compiler is found)."""
    if compiler() is not None:
        return ""
    named = os.environ.get("CC")
    return f"$CC={named!r} is not on the PATH" if named else "no C compiler (cc, gcc or clang) on the PATH"


@functools.cache
def kernel_library() -> ctypes.CDLL:
    """The compiled kernel, built on first use; an error naming what is missing when it cannot be."""
    if missing := missing_compiler():
        raise MbsbenchError(f"scan='cpu_fused' builds a C kernel with OpenMP (gcc): {missing}; use scan=chunked_ckpt")
    cc = compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\n".join([SOURCE.read_text(), version, *COMPILE_FLAGS, *LINK_FLAGS,
                                    _cpu_flags()]).encode()).hexdigest()[:16]
    target = _cache_dir() / key / "scan_cpu.so"
    if not target.exists():
        try:
            _build(cc, target)
        except OSError as err:
            raise MbsbenchError(f"scan='cpu_fused': cannot write its kernel into {target.parent} ({err.strerror}); "
                                "set MBSBENCH_CACHE to a writable folder") from err
    lib = ctypes.CDLL(str(target))
    for name in ("scan_forward_f32", "scan_forward_f64", "scan_backward_f32", "scan_backward_f64"):
        getattr(lib, name).restype = None
    return lib


def _call(name: str, sizes: tuple[int, ...], tensors: list[Tensor]) -> None:
    """One kernel call on contiguous tensors of one dtype, with torch's thread count."""
    suffix = "f64" if tensors[0].dtype == torch.float64 else "f32"
    fn = getattr(kernel_library(), f"{name}_{suffix}")
    fn(*(ctypes.c_int64(s) for s in sizes), ctypes.c_int(torch.get_num_threads()),
       *(ctypes.c_void_p(t.data_ptr()) for t in tensors))


def _chunks(length: int, chunk_size: int) -> int:
    return -(-length // chunk_size)


@torch.library.custom_op("mbsbench::selective_scan_cpu_fwd", mutates_args=())
def scan_cpu_forward(u: Tensor, delta: Tensor, A_t: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor,
                     chunk_size: int) -> tuple[Tensor, Tensor]:
    """Time-major y (l, b, d) and the chunk-start states (chunks, b, n, d)."""
    y, starts = _forward_outputs(u, A_t, chunk_size)
    inputs = [t.contiguous() for t in (u, delta, A_t, B, C, D, h0)]
    _call("scan_forward", (*u.shape, A_t.shape[0], chunk_size), [*inputs, y, starts])
    return y, starts


def _forward_outputs(u: Tensor, A_t: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    (length, b, _), (n, d) = u.shape, A_t.shape
    return u.new_empty(length, b, d), u.new_empty(_chunks(length, chunk_size), b, n, d)


@scan_cpu_forward.register_fake
def _scan_cpu_forward_fake(u, _delta, A_t, _B, _C, _D, _h0, chunk_size):
    return _forward_outputs(u, A_t, chunk_size)


@torch.library.custom_op("mbsbench::selective_scan_cpu_bwd", mutates_args=())
def scan_cpu_backward(u: Tensor, delta: Tensor, A_t: Tensor, B: Tensor, C: Tensor, D: Tensor, starts: Tensor,
                      gy: Tensor, chunk_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """du, ddelta (l, b, d), dB, dC (l, b, n), dA per row (b, n, d) and dh0 (b, n, d); the caller sums dA's rows."""
    out = _backward_outputs(u, B, A_t)
    inputs = [t.contiguous() for t in (u, delta, A_t, B, C, D, starts, gy)]
    _call("scan_backward", (*u.shape, A_t.shape[0], chunk_size), [*inputs, *out])
    return out


def _backward_outputs(u: Tensor, B: Tensor, A_t: Tensor) -> tuple[Tensor, ...]:
    rows = (u.shape[1], *A_t.shape)
    return u.new_empty(u.shape), u.new_empty(u.shape), u.new_empty(B.shape), u.new_empty(B.shape), \
        u.new_empty(rows), u.new_empty(rows)  # contiguous: the inputs may be transposed views


@scan_cpu_backward.register_fake
def _scan_cpu_backward_fake(u, _delta, A_t, B, _C, _D, _starts, _gy, _chunk_size):
    return _backward_outputs(u, B, A_t)


def _setup_context(ctx, inputs, output) -> None:
    u, delta, A_t, B, C, D, _h0, chunk_size = inputs
    ctx.save_for_backward(u, delta, A_t, B, C, D, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.chunk_size = chunk_size


def _backward(ctx, gy: Tensor, _starts_grad: Tensor | None) -> tuple:
    u, delta, A_t, B, C, D, starts = ctx.saved_tensors
    du, ddelta, dB, dC, dA_rows, dh0 = scan_cpu_backward(u, delta, A_t, B, C, D, starts, gy, ctx.chunk_size)
    return du, ddelta, dA_rows.sum(0), dB, dC, (gy * u).sum(dim=(0, 1)), dh0, None


scan_cpu_forward.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_cpu_fused_time_major(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None,
    *, chunk_size: int = 32,
) -> Tensor:
    """`selective_scan_cpu_fused` on time-major tensors: u, delta (l, b, d), B, C (l, b, n) -> y (l, b, d).

    float32 and float64 compute in their own dtype; other dtypes in float32.
    """
    if u.device.type != "cpu":
        raise MbsbenchError(f"scan='cpu_fused' runs on CPU tensors, got {u.device}; use scan=auto")
    if chunk_size < 1:  # the kernel divides by it
        raise MbsbenchError(f"scan='cpu_fused': chunk_size {chunk_size}: expected a positive integer")
    given = u.dtype
    dtype = given if given in (torch.float32, torch.float64) else torch.float32
    u, delta, A, B, C, D = (t.to(dtype) for t in (u, delta, A, B, C, D))
    h0 = u.new_zeros(u.shape[1], A.shape[1], A.shape[0]) if h0 is None else h0.to(dtype).transpose(1, 2)
    y, _ = scan_cpu_forward(u, delta, A.t(), B, C, D, h0, chunk_size)
    return y.to(given)


def selective_scan_cpu_fused(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None,
    *, chunk_size: int = 32,
) -> Tensor:
    """The selective scan as one compiled C loop per batch row (batch-major tensors, the common signature)."""
    u, delta, B, C = (t.transpose(0, 1) for t in (u, delta, B, C))
    return selective_scan_cpu_fused_time_major(u, delta, A, B, C, D, h0, chunk_size=chunk_size).transpose(0, 1)
