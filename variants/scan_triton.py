"""The selective scan as two Triton kernels (forward, backward): a program per (batch row, block of channels),
the time loop inside the kernel, the state h (channels x n) in registers, float32 accumulation.

Same signature and semantics as variants/scan.py (h0 included). The forward saves the state at the
start of every chunk, (b, l / chunk, d, n); the backward recomputes each chunk's states from it into a
chunk-sized scratch buffer and runs the adjoint recurrence backwards through it:

    lambda_t = a_{t+1} * lambda_{t+1} + gy_t C_t        (a_t = exp(delta_t A), the decay)
    dC_t = sum_d gy_t h_t       dB_t = sum_d lambda_t delta_t u_t       d(delta u)_t = sum_n lambda_t B_t
    d(delta_t A) = lambda_t h_{t-1} a_t     ddelta_t = sum_n d(delta_t A) A + d(delta u)_t u_t
    dA = sum_{b,t} d(delta_t A) delta_t     du_t = d(delta u)_t delta_t + gy_t D     dh0 = a_0 lambda_0

Gradients that sum over channels (dB, dC) or over batch rows (dA) are written as per-program partials
and summed by torch afterwards: no atomics, so every gradient is deterministic (dD is one torch sum).
Saved memory: the inputs and the chunk-start states, O(b l d + b (l / chunk) d n), as chunked_ckpt.

Runs on CUDA tensors, or on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1: slow, for tests).
Kernels are built at first use, so the interpreter is chosen by the environment at that moment.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch
from torch import Tensor

from variants.errors import MbsbenchError

BLOCK_D = 32  # channels per program
LAUNCHES = {"count": 0, "dry": False}  # launches so far in this process (bench profile reads the difference)


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


def triton_available() -> bool:
    """True when triton imports (CUDA builds of torch ship it; the CPU wheel needs `pip install triton`)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@lru_cache(maxsize=2)
def _kernels(_interpret: bool):
    """The two kernels, decorated now: triton.jit reads TRITON_INTERPRET when it decorates (one pair per mode)."""
    import triton
    import triton.language as tl

    @triton.jit
    def forward_kernel(u, delta, A, B, C, D, h0, y, starts, L, DIM, N, CHUNK,
                       su_b, su_l, sd_b, sd_l, sB_b, sB_l, sC_b, sC_l, n_chunks,
                       HAS_H0: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
        b = tl.program_id(0)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        n = tl.arange(0, BLOCK_N)
        md, mn = d < DIM, n < N
        m2 = md[:, None] & mn[None, :]
        a_mat = tl.load(A + d[:, None] * N + n[None, :], mask=m2, other=0.0).to(tl.float32)
        d_skip = tl.load(D + d, mask=md, other=0.0).to(tl.float32)
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        if HAS_H0:
            h = tl.load(h0 + b * DIM * N + d[:, None] * N + n[None, :], mask=m2, other=0.0).to(tl.float32)
        for t in range(0, L):
            if t % CHUNK == 0:
                tl.store(starts + (b * n_chunks + t // CHUNK) * DIM * N + d[:, None] * N + n[None, :], h, mask=m2)
            u_t = tl.load(u + b * su_b + t * su_l + d, mask=md, other=0.0).to(tl.float32)
            dl_t = tl.load(delta + b * sd_b + t * sd_l + d, mask=md, other=0.0).to(tl.float32)
            b_t = tl.load(B + b * sB_b + t * sB_l + n, mask=mn, other=0.0).to(tl.float32)
            c_t = tl.load(C + b * sC_b + t * sC_l + n, mask=mn, other=0.0).to(tl.float32)
            h = tl.exp(dl_t[:, None] * a_mat) * h + (dl_t * u_t)[:, None] * b_t[None, :]
            y_t = tl.sum(h * c_t[None, :], axis=1) + d_skip * u_t
            tl.store(y + (b * L + t) * DIM + d, y_t, mask=md)

    @triton.jit
    def backward_kernel(u, delta, A, B, C, D, gy, starts, scratch, du, ddelta, dA_part, dB_part, dC_part, dh0,
                        L, DIM, N, CHUNK, su_b, su_l, sd_b, sd_l, sB_b, sB_l, sC_b, sC_l, n_chunks,
                        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
        b = tl.program_id(0)
        pd = tl.program_id(1)
        n_dblocks = tl.num_programs(1)
        d = pd * BLOCK_D + tl.arange(0, BLOCK_D)
        n = tl.arange(0, BLOCK_N)
        md, mn = d < DIM, n < N
        m2 = md[:, None] & mn[None, :]
        tile = d[:, None] * N + n[None, :]
        a_mat = tl.load(A + tile, mask=m2, other=0.0).to(tl.float32)
        d_skip = tl.load(D + d, mask=md, other=0.0).to(tl.float32)
        box = scratch + (b * n_dblocks + pd) * CHUNK * BLOCK_D * BLOCK_N  # this program's chunk of states
        sbox = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + n[None, :]
        lam = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        a_next = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        grad_a = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        for i in range(0, n_chunks):
            c = n_chunks - 1 - i
            t0 = c * CHUNK
            steps = tl.minimum(CHUNK, L - t0)
            start = tl.load(starts + (b * n_chunks + c) * DIM * N + tile, mask=m2, other=0.0)
            h = start
            for s in range(0, steps):  # recompute the chunk's states
                t = t0 + s
                u_t = tl.load(u + b * su_b + t * su_l + d, mask=md, other=0.0).to(tl.float32)
                dl_t = tl.load(delta + b * sd_b + t * sd_l + d, mask=md, other=0.0).to(tl.float32)
                b_t = tl.load(B + b * sB_b + t * sB_l + n, mask=mn, other=0.0).to(tl.float32)
                h = tl.exp(dl_t[:, None] * a_mat) * h + (dl_t * u_t)[:, None] * b_t[None, :]
                tl.store(box + s * BLOCK_D * BLOCK_N + sbox, h)
            for j in range(0, steps):  # the adjoint, backwards through the chunk
                s = steps - 1 - j
                t = t0 + s
                u_t = tl.load(u + b * su_b + t * su_l + d, mask=md, other=0.0).to(tl.float32)
                dl_t = tl.load(delta + b * sd_b + t * sd_l + d, mask=md, other=0.0).to(tl.float32)
                b_t = tl.load(B + b * sB_b + t * sB_l + n, mask=mn, other=0.0).to(tl.float32)
                c_t = tl.load(C + b * sC_b + t * sC_l + n, mask=mn, other=0.0).to(tl.float32)
                g_t = tl.load(gy + (b * L + t) * DIM + d, mask=md, other=0.0).to(tl.float32)
                h_t = tl.load(box + s * BLOCK_D * BLOCK_N + sbox)
                h_prev = tl.load(box + tl.maximum(s - 1, 0) * BLOCK_D * BLOCK_N + sbox)
                h_prev = tl.where(s > 0, h_prev, start)  # before the chunk's first step: its start state
                lam = a_next * lam + g_t[:, None] * c_t[None, :]
                a_t = tl.exp(dl_t[:, None] * a_mat)
                tl.store(dC_part + ((b * n_dblocks + pd) * L + t) * N + n,
                         tl.sum(tl.where(m2, g_t[:, None] * h_t, 0.0), axis=0), mask=mn)
                tl.store(dB_part + ((b * n_dblocks + pd) * L + t) * N + n,
                         tl.sum(tl.where(m2, lam * (dl_t * u_t)[:, None], 0.0), axis=0), mask=mn)
                d_xu = tl.sum(lam * b_t[None, :], axis=1)
                d_log_a = lam * h_prev * a_t
                tl.store(ddelta + (b * L + t) * DIM + d, tl.sum(d_log_a * a_mat, axis=1) + d_xu * u_t, mask=md)
                tl.store(du + (b * L + t) * DIM + d, d_xu * dl_t + g_t * d_skip, mask=md)
                grad_a += d_log_a * dl_t[:, None]
                a_next = a_t
        tl.store(dh0 + b * DIM * N + tile, a_next * lam, mask=m2)
        tl.store(dA_part + b * DIM * N + tile, grad_a, mask=m2)

    return forward_kernel, backward_kernel


def _strides(*tensors: Tensor) -> list[int]:
    """(batch, time) strides of (b, l, .) tensors; the last axis must be contiguous."""
    out = []
    for t in tensors:
        assert t.stride(-1) == 1, "the channel axis must be contiguous"
        out += [t.stride(0), t.stride(1)]
    return out


def _launch(kernel, grid, *args, **meta) -> None:
    LAUNCHES["count"] += 1
    if not LAUNCHES["dry"]:
        kernel[grid](*args, **meta)


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, h0, chunk_size):
        forward_kernel, _ = _kernels(interpreted()) if not LAUNCHES["dry"] else (None, None)
        b, length, d = u.shape
        n = A.shape[1]
        u, delta, B, C = (t if t.stride(-1) == 1 else t.contiguous() for t in (u, delta, B, C))
        A, D = A.contiguous(), D.contiguous()
        n_chunks = -(-length // chunk_size)
        y = torch.empty(b, length, d, device=u.device, dtype=torch.float32)
        starts = torch.empty(b, n_chunks, d, n, device=u.device, dtype=torch.float32)
        h0_arg = h0.contiguous() if h0 is not None else starts  # unused when HAS_H0 is false
        grid = (b, -(-d // BLOCK_D))
        _launch(forward_kernel, grid, u, delta, A, B, C, D, h0_arg, y, starts, length, d, n, chunk_size,
                *_strides(u, delta, B, C), n_chunks, HAS_H0=h0 is not None, BLOCK_D=BLOCK_D,
                BLOCK_N=max(triton_next_power_of_2(n), 2))
        ctx.save_for_backward(u, delta, A, B, C, D, starts)
        ctx.chunk_size, ctx.has_h0, ctx.h0_dtype = chunk_size, h0 is not None, h0.dtype if h0 is not None else None
        return y.to(u.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        _, backward_kernel = _kernels(interpreted()) if not LAUNCHES["dry"] else (None, None)
        u, delta, A, B, C, D, starts = ctx.saved_tensors
        b, length, d = u.shape
        n, chunk = A.shape[1], ctx.chunk_size
        gy = gy.contiguous()
        n_dblocks, block_n = -(-d // BLOCK_D), max(triton_next_power_of_2(n), 2)
        f32 = {"device": u.device, "dtype": torch.float32}
        scratch = torch.empty(b, n_dblocks, chunk, BLOCK_D, block_n, **f32)
        du, ddelta = torch.empty(b, length, d, **f32), torch.empty(b, length, d, **f32)
        dA_part, dh0 = torch.empty(b, d, n, **f32), torch.empty(b, d, n, **f32)
        dB_part, dC_part = torch.empty(b, n_dblocks, length, n, **f32), torch.empty(b, n_dblocks, length, n, **f32)
        _launch(backward_kernel, (b, n_dblocks), u, delta, A, B, C, D, gy, starts, scratch, du, ddelta, dA_part,
                dB_part, dC_part, dh0, length, d, n, chunk, *_strides(u, delta, B, C), starts.shape[1],
                BLOCK_D=BLOCK_D, BLOCK_N=block_n)
        grad_d = (gy.float() * u.float()).sum(dim=(0, 1))
        return (du.to(u.dtype), ddelta.to(delta.dtype), dA_part.sum(0).to(A.dtype), dB_part.sum(1).to(B.dtype),
                dC_part.sum(1).to(C.dtype), grad_d.to(D.dtype), dh0.to(ctx.h0_dtype) if ctx.has_h0 else None, None)


def triton_next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def selective_scan_triton(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None,
    *, chunk_size: int = 32,
) -> Tensor:
    """The selective scan in two Triton kernels; float32 accumulation, float32 or bf16 inputs."""
    if not triton_available() and not LAUNCHES["dry"]:
        raise MbsbenchError("scan='triton' needs the triton package: it ships with CUDA builds of torch; with the "
                            "CPU wheel, pip install triton (or pip install -e '.[triton]')")
    if not u.is_cuda and not interpreted() and not LAUNCHES["dry"]:
        raise MbsbenchError(f"scan='triton' runs on CUDA tensors (got {u.device}); on the CPU only under Triton's "
                            "interpreter: set TRITON_INTERPRET=1 (slow: for tests), or use scan=chunked_ckpt")
    return _TritonScan.apply(u, delta, A, B, C, D, h0, chunk_size)
