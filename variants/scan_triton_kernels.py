"""The two Triton kernels of the selective scan (forward, backward), as plain functions: `jit_kernels` decorates them.

A program per (batch row, block of BLOCK_D channels); the time loop runs inside the kernel with the state h
(BLOCK_D x BLOCK_N) in registers, accumulated in ACC (float32, or float64 for float64 inputs).

Every pointer offset is one int64 expression (`ptr + (offset)`): a buffer may hold more than 2**31 elements
(the backward's scratch of original's band scan does from batch 66 at 2 s), and Triton computes int32
arithmetic in 32 bits. The loop counter is int32 in the compiled kernel and a Python int under the
interpreter; adding the int64 `zero` makes it int64 in both. `bench.doctor --compile-only` reads the
offset width of every pointer addition back from the compiled IR.

The backward recomputes each chunk's states from the saved chunk-start state into a scratch box of STEPS
(= min(chunk, length)) states per program, then runs the adjoint backwards through it (variants/scan_triton.py
has the equations).
"""

import inspect

import triton
import triton.language as tl


def scan_forward_kernel(u, delta, A, B, C, D, h0, y, starts, L, DIM, N, CHUNK,
                        su_b, su_l, sd_b, sd_l, sB_b, sB_l, sC_b, sC_l, n_chunks,
                        HAS_H0: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    zero = b * 0  # int64: promotes the loop counter
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N) + zero
    md, mn = d < DIM, n < N
    m2 = md[:, None] & mn[None, :]
    tile = d[:, None] * N + n[None, :]
    a_mat = tl.load(A + tile, mask=m2, other=0.0).to(ACC)
    d_skip = tl.load(D + d, mask=md, other=0.0).to(ACC)
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    if HAS_H0:
        h = tl.load(h0 + (b * DIM * N + tile), mask=m2, other=0.0).to(ACC)
    for step in range(0, L):
        t = step + zero
        if t % CHUNK == 0:
            tl.store(starts + ((b * n_chunks + t // CHUNK) * DIM * N + tile), h, mask=m2)
        u_t = tl.load(u + (b * su_b + t * su_l + d), mask=md, other=0.0).to(ACC)
        dl_t = tl.load(delta + (b * sd_b + t * sd_l + d), mask=md, other=0.0).to(ACC)
        b_t = tl.load(B + (b * sB_b + t * sB_l + n), mask=mn, other=0.0).to(ACC)
        c_t = tl.load(C + (b * sC_b + t * sC_l + n), mask=mn, other=0.0).to(ACC)
        h = tl.exp(dl_t[:, None] * a_mat) * h + (dl_t * u_t)[:, None] * b_t[None, :]
        y_t = tl.sum(h * c_t[None, :], axis=1) + d_skip * u_t
        tl.store(y + ((b * L + t) * DIM + d), y_t, mask=md)


def scan_backward_kernel(u, delta, A, B, C, D, gy, starts, scratch, du, ddelta, dA_part, dB_part, dC_part, dh0,
                         L, DIM, N, CHUNK, STEPS, su_b, su_l, sd_b, sd_l, sB_b, sB_l, sC_b, sC_l, n_chunks,
                         ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    zero = b * 0
    pd = tl.program_id(1).to(tl.int64)
    n_dblocks = tl.num_programs(1)
    d = pd * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N) + zero
    md, mn = d < DIM, n < N
    m2 = md[:, None] & mn[None, :]
    tile = d[:, None] * N + n[None, :]
    a_mat = tl.load(A + tile, mask=m2, other=0.0).to(ACC)
    d_skip = tl.load(D + d, mask=md, other=0.0).to(ACC)
    box = (b * n_dblocks + pd) * STEPS * BLOCK_D * BLOCK_N  # where this program's chunk of states starts
    sbox = (tl.arange(0, BLOCK_D) + zero)[:, None] * BLOCK_N + n[None, :]
    part = (b * n_dblocks + pd) * L  # this program's rows of the dB and dC partials
    lam = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    a_next = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    grad_a = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i + zero
        t0 = c * CHUNK
        steps = tl.minimum(CHUNK, L - t0)
        start = tl.load(starts + ((b * n_chunks + c) * DIM * N + tile), mask=m2, other=0.0)
        h = start
        for s_step in range(0, steps):  # recompute the chunk's states
            s = s_step + zero
            t = t0 + s
            u_t = tl.load(u + (b * su_b + t * su_l + d), mask=md, other=0.0).to(ACC)
            dl_t = tl.load(delta + (b * sd_b + t * sd_l + d), mask=md, other=0.0).to(ACC)
            b_t = tl.load(B + (b * sB_b + t * sB_l + n), mask=mn, other=0.0).to(ACC)
            h = tl.exp(dl_t[:, None] * a_mat) * h + (dl_t * u_t)[:, None] * b_t[None, :]
            tl.store(scratch + (box + s * BLOCK_D * BLOCK_N + sbox), h)
        for j in range(0, steps):  # the adjoint, backwards through the chunk
            s = steps - 1 - j + zero
            t = t0 + s
            u_t = tl.load(u + (b * su_b + t * su_l + d), mask=md, other=0.0).to(ACC)
            dl_t = tl.load(delta + (b * sd_b + t * sd_l + d), mask=md, other=0.0).to(ACC)
            b_t = tl.load(B + (b * sB_b + t * sB_l + n), mask=mn, other=0.0).to(ACC)
            c_t = tl.load(C + (b * sC_b + t * sC_l + n), mask=mn, other=0.0).to(ACC)
            g_t = tl.load(gy + ((b * L + t) * DIM + d), mask=md, other=0.0).to(ACC)
            h_t = tl.load(scratch + (box + s * BLOCK_D * BLOCK_N + sbox))
            h_prev = tl.load(scratch + (box + tl.maximum(s - 1, 0) * BLOCK_D * BLOCK_N + sbox))
            h_prev = tl.where(s > 0, h_prev, start)  # before the chunk's first step: its start state
            lam = a_next * lam + g_t[:, None] * c_t[None, :]
            a_t = tl.exp(dl_t[:, None] * a_mat)
            tl.store(dC_part + ((part + t) * N + n), tl.sum(tl.where(m2, g_t[:, None] * h_t, 0.0), axis=0), mask=mn)
            tl.store(dB_part + ((part + t) * N + n),
                     tl.sum(tl.where(m2, lam * (dl_t * u_t)[:, None], 0.0), axis=0), mask=mn)
            d_xu = tl.sum(lam * b_t[None, :], axis=1)
            d_log_a = lam * h_prev * a_t
            tl.store(ddelta + ((b * L + t) * DIM + d), tl.sum(d_log_a * a_mat, axis=1) + d_xu * u_t, mask=md)
            tl.store(du + ((b * L + t) * DIM + d), d_xu * dl_t + g_t * d_skip, mask=md)
            grad_a += d_log_a * dl_t[:, None]
            a_next = a_t
    tl.store(dh0 + (b * DIM * N + tile), a_next * lam, mask=m2)
    tl.store(dA_part + (b * DIM * N + tile), grad_a, mask=m2)


KERNELS = {"forward": scan_forward_kernel, "backward": scan_backward_kernel}


def runtime_args(fn) -> list[str]:
    """The parameters that are not constexpr: none is specialized on its value or alignment, so one compiled
    kernel serves every shape (no recompile per length or batch) and the compile-only check covers what runs."""
    return [name for name, p in inspect.signature(fn).parameters.items() if p.annotation is not tl.constexpr]


def jit_kernels(interpret: bool) -> dict:
    """Both kernels decorated by triton.jit, interpreted (CPU tensors, for tests) or compiled for a GPU."""
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = interpret
        return {name: triton.jit(fn, do_not_specialize=runtime_args(fn)) for name, fn in KERNELS.items()}
