"""The selective scan in two Triton kernels, registered as torch operators (torch.library.custom_op).

Same signature and semantics as variants/scan.py (h0 included). The forward saves the state at the
start of every chunk, (b, l / chunk, d, n); the backward recomputes each chunk's states from it into a
scratch box of min(chunk, l) states and runs the adjoint recurrence backwards through it:

    lambda_t = a_{t+1} * lambda_{t+1} + gy_t C_t        (a_t = exp(delta_t A), the decay)
    dC_t = sum_d gy_t h_t       dB_t = sum_d lambda_t delta_t u_t       d(delta u)_t = sum_n lambda_t B_t
    d(delta_t A) = lambda_t h_{t-1} a_t     ddelta_t = sum_n d(delta_t A) A + d(delta u)_t u_t
    dA = sum_{b,t} d(delta_t A) delta_t     du_t = d(delta u)_t delta_t + gy_t D     dh0 = a_0 lambda_0

Gradients that sum over channels (dB, dC) or over batch rows (dA) are written as per-program partials
and summed by torch afterwards: no atomics, so every gradient is deterministic (dD is one torch sum).
Saved memory: the inputs and the chunk-start states, O(b l d + b (l / chunk) d n), as chunked_ckpt.
The kernels accumulate in float32, or in float64 when an input is float64 (never a silent float32 run).

The two operators (mbsbench::selective_scan_fwd / _bwd) carry fake implementations and an autograd formula,
so FakeTensorMode, torch.compile (fullgraph) and torch.export see one opaque op instead of a Python launch.
Kernels launch under the tensors' CUDA device (Triton launches on torch's current device otherwise), or on
CPU tensors under Triton's interpreter (TRITON_INTERPRET=1: slow, for tests).
"""

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from variants.errors import MbsbenchError

TRITON = importlib.util.find_spec("triton") is not None  # without importing it (CUDA builds of torch ship it)
BLOCK_D = 32  # channels per program
LAUNCHES = {"count": 0, "dry": False}  # launches so far in this process (bench profile reads the difference)
LAUNCH_OPTIONS = {"enable_fp_fusion": True}  # Triton's default so far, stated: 3.10 changes it


@contextmanager
def counting_only() -> Iterator[None]:
    """Count launches without running the kernels (outputs left unset): an op count of a step on a machine
    without CUDA. The aten ops around them are the same with or without the kernels, on any device."""
    before = LAUNCHES["dry"]
    LAUNCHES["dry"] = True
    try:
        yield
    finally:
        LAUNCHES["dry"] = before


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@lru_cache(maxsize=2)
def jit(interpret: bool) -> dict:
    """The kernels decorated for this process: interpreted (CPU) or compiled (CUDA), by name."""
    from variants.scan_triton_kernels import jit_kernels

    return jit_kernels(interpret)


@dataclass(frozen=True)
class Launch:
    """One kernel launch: the kernel's name, its grid, positional arguments and constexprs."""

    kernel: str
    grid: tuple[int, int]
    args: tuple
    meta: dict


def accumulator(*tensors: Tensor) -> torch.dtype:
    """float64 when an input is float64, else float32 (bf16 and float32 inputs)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def block_n(n: int) -> int:
    return max(1 << (n - 1).bit_length(), 2)


def _strides(*tensors: Tensor) -> list[int]:
    """(batch, time) strides of (b, l, .) tensors; the last axis must be contiguous."""
    out = []
    for t in tensors:
        assert t.stride(-1) == 1, "the channel axis must be contiguous"
        out += [t.stride(0), t.stride(1)]
    return out


def _inner_contiguous(*tensors: Tensor) -> list[Tensor]:
    return [t if t.stride(-1) == 1 else t.contiguous() for t in tensors]


def forward_outputs(u: Tensor, A: Tensor, acc: torch.dtype, chunk_size: int) -> tuple[Tensor, Tensor]:
    """y (b, l, d) and the chunk-start states (b, ceil(l / chunk), d, n), unset, in the accumulator dtype."""
    b, length, d = u.shape
    n_chunks = -(-length // chunk_size)
    return u.new_empty((b, length, d), dtype=acc), u.new_empty((b, n_chunks, d, A.shape[1]), dtype=acc)


def forward_launch(inputs: list[Tensor], h0: Tensor | None, chunk_size: int) -> tuple[Launch, Tensor, Tensor]:
    """The forward kernel's launch on (u, delta, A, B, C, D), and its outputs y and starts."""
    u, delta, A, B, C, D = inputs
    acc = accumulator(*inputs)
    y, starts = forward_outputs(u, A, acc, chunk_size)
    b, length, d = u.shape
    n = A.shape[1]
    args = (u, delta, A, B, C, D, starts if h0 is None else h0, y, starts, length, d, n, chunk_size,
            *_strides(u, delta, B, C), starts.shape[1])  # starts stands in for an absent h0 (never read)
    meta = {"HAS_H0": h0 is not None, "ACC": _tl_dtype(acc), "BLOCK_D": BLOCK_D, "BLOCK_N": block_n(n)}
    return Launch("forward", (b, -(-d // BLOCK_D)), args, meta), y, starts


def backward_scratch_shape(u: Tensor, A: Tensor, chunk_size: int) -> tuple[int, ...]:
    """(b, d blocks, min(chunk, l), BLOCK_D, BLOCK_N): one chunk of recomputed states per program."""
    b, length, d = u.shape
    return b, -(-d // BLOCK_D), min(chunk_size, length), BLOCK_D, block_n(A.shape[1])


BACKWARD_OUTPUTS = ("du", "ddelta", "dA_part", "dB_part", "dC_part", "dh0", "scratch")


def backward_outputs(u: Tensor, A: Tensor, acc: torch.dtype, chunk_size: int) -> dict[str, Tensor]:
    """The backward kernel's buffers, unset, in the accumulator dtype: the gradients (dA, dB, dC as per-program
    partials) and the scratch of recomputed states, in BACKWARD_OUTPUTS order."""
    b, length, d = u.shape
    n, n_dblocks = A.shape[1], -(-d // BLOCK_D)
    shapes = [(b, length, d), (b, length, d), (b, d, n), (b, n_dblocks, length, n), (b, n_dblocks, length, n),
              (b, d, n), backward_scratch_shape(u, A, chunk_size)]
    return {name: u.new_empty(shape, dtype=acc) for name, shape in zip(BACKWARD_OUTPUTS, shapes)}


def backward_launch(inputs: list[Tensor], gy: Tensor, starts: Tensor, chunk_size: int) -> tuple[Launch, dict]:
    """The backward kernel's launch and its output buffers (scratch included)."""
    u, delta, A, B, C, D = inputs
    acc = accumulator(*inputs)
    out = backward_outputs(u, A, acc, chunk_size)
    scratch_shape = out["scratch"].shape
    length, d = u.shape[1:]
    args = (u, delta, A, B, C, D, gy, starts, out["scratch"], out["du"], out["ddelta"], out["dA_part"],
            out["dB_part"], out["dC_part"], out["dh0"], length, d, A.shape[1], chunk_size, scratch_shape[2],
            *_strides(u, delta, B, C), starts.shape[1])
    meta = {"ACC": _tl_dtype(acc), "BLOCK_D": BLOCK_D, "BLOCK_N": scratch_shape[4]}
    return Launch("backward", tuple(scratch_shape[:2]), args, meta), out


def _tl_dtype(dtype: torch.dtype):
    """The triton.language dtype of the accumulator (its name where triton is absent: counted launches only)."""
    if not TRITON:
        return str(dtype)
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def run(launch: Launch, device: torch.device) -> None:
    """Launch under the tensors' CUDA device (Triton launches on the current one), or interpreted on the CPU."""
    LAUNCHES["count"] += 1
    if LAUNCHES["dry"]:
        return
    kernel = jit(interpreted())[launch.kernel]
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        kernel[launch.grid](*launch.args, **launch.meta, **LAUNCH_OPTIONS)


@torch.library.custom_op("mbsbench::selective_scan_fwd", mutates_args=())
def scan_forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None,
                 chunk_size: int) -> tuple[Tensor, Tensor]:
    """y (b, l, d) and the chunk-start states, both in the accumulator dtype."""
    inputs = _inner_contiguous(u, delta, A.contiguous(), B, C, D.contiguous())
    launch, y, starts = forward_launch(inputs, None if h0 is None else h0.contiguous(), chunk_size)
    run(launch, u.device)
    return y, starts


@scan_forward.register_fake
def _scan_forward_fake(u, delta, A, B, C, D, h0, chunk_size):
    return forward_outputs(u, A, accumulator(u, delta, A, B, C, D), chunk_size)


@torch.library.custom_op("mbsbench::selective_scan_bwd", mutates_args=())
def scan_backward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, gy: Tensor, starts: Tensor,
                  chunk_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward kernel's buffers (BACKWARD_OUTPUTS), in the accumulator dtype.

    The partial sums and the casts are left to the autograd formula, where dispatch modes (the op counter, the
    live-memory peak) and torch.compile see them; the scratch is returned for the same reason (its memory).
    """
    inputs = _inner_contiguous(u, delta, A.contiguous(), B, C, D.contiguous())
    launch, out = backward_launch(inputs, gy.contiguous(), starts, chunk_size)
    run(launch, u.device)
    return tuple(out[name] for name in BACKWARD_OUTPUTS)


@scan_backward.register_fake
def _scan_backward_fake(u, delta, A, B, C, D, gy, starts, chunk_size):
    return tuple(backward_outputs(u, A, starts.dtype, chunk_size).values())


def _setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, h0, chunk_size = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.chunk_size, ctx.h0_dtype = chunk_size, None if h0 is None else h0.dtype


def _backward(ctx, gy: Tensor, _starts_grad: Tensor | None) -> tuple:
    u, delta, A, B, C, D, starts = ctx.saved_tensors
    du, ddelta, dA_part, dB_part, dC_part, dh0, _ = scan_backward(u, delta, A, B, C, D, gy, starts, ctx.chunk_size)
    grad_d = (gy.to(starts.dtype) * u.to(starts.dtype)).sum(dim=(0, 1))
    return (du.to(u.dtype), ddelta.to(delta.dtype), dA_part.sum(0).to(A.dtype), dB_part.sum(1).to(B.dtype),
            dC_part.sum(1).to(C.dtype), grad_d.to(D.dtype), None if ctx.h0_dtype is None else dh0.to(ctx.h0_dtype),
            None)


scan_forward.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_triton(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None,
    *, chunk_size: int = 32,
) -> Tensor:
    """The selective scan in two Triton kernels: float32 accumulation for float32 and bf16 inputs, else float64."""
    if not TRITON and not LAUNCHES["dry"]:
        raise MbsbenchError("scan='triton' needs the triton package: it ships with CUDA builds of torch; with the "
                            "CPU wheel, pip install triton (or pip install -e '.[triton]')")
    if not u.is_cuda and not interpreted() and not LAUNCHES["dry"] and not is_fake(u):  # a fake one launches nothing
        raise MbsbenchError(f"scan='triton' runs on CUDA tensors (got {u.device}); on the CPU only under Triton's "
                            "interpreter: set TRITON_INTERPRET=1 (slow: for tests), or use scan=chunked_ckpt")
    y, _ = scan_forward(u, delta, A, B, C, D, h0, chunk_size)
    return y.to(u.dtype)
