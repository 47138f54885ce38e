"""The chunked checkpointed selective scan: inputs and chunk-start states saved, each chunk recomputed in backward.

Same signature as every scan (variants/scan.py). Training memory O(b*l*d + b*(l/chunk)*d*n) instead of
O(b*l*d*n); the backward runs the adjoint recurrence chunk by chunk in place of autograd through every step.
"""

import torch
from torch import Tensor


def selective_scan_chunked_ckpt(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None,
    *, chunk_size: int = 32,
) -> Tensor:
    """Chunked scan that keeps only inputs and chunk-boundary states; backward recomputes each chunk.

    Saved memory O(b*l*d + b*(l/chunk)*d*n) instead of O(b*l*d*n); backward runs the adjoint
    recurrence chunk by chunk in place of autograd through every step.
    """
    u, delta, B, C = (t.transpose(0, 1) for t in (u, delta, B, C))
    return selective_scan_chunked_ckpt_time_major(u, delta, A, B, C, D, h0, chunk_size=chunk_size).transpose(0, 1)


def selective_scan_chunked_ckpt_time_major(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None,
    *, chunk_size: int = 32,
) -> Tensor:
    """`selective_scan_chunked_ckpt` on time-major tensors: u, delta (l, b, d), B, C (l, b, n) -> y (l, b, d).

    Time-major, a chunk is a contiguous slice; the state is held as (n, d), so that every broadcast
    and reduction runs along the contiguous d axis.
    """
    if h0 is None:
        h0 = u.new_zeros(u.shape[1], u.shape[2], A.shape[1])
    u, delta, B, C = (t.contiguous() for t in (u, delta, B, C))
    return _ChunkedCheckpointScan.apply(u, delta, A, B, C, D, h0, chunk_size)


def _discretize(delta: Tensor, delta_u: Tensor, A_t: Tensor, B: Tensor, bufs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Decay exp(delta A) and drive delta u B of one time-major chunk, (c, b, n, d), written into bufs."""
    decay = torch.mul(delta.unsqueeze(2), A_t, out=bufs[0][: delta.shape[0]]).exp_()
    drive = torch.mul(delta_u.unsqueeze(2), B.unsqueeze(-1), out=bufs[1][: delta.shape[0]])
    return decay, drive


def _run_states(decay: Tensor, drive: Tensor, h: Tensor) -> Tensor:
    """States h_t of one chunk, written over `drive` in place: (c, b, n, d)."""
    drive[0].addcmul_(decay[0], h)
    for t in range(1, drive.shape[0]):
        drive[t].addcmul_(decay[t], drive[t - 1])
    return drive


def _contract_d(x: Tensor, states: Tensor) -> Tensor:
    """sum over d of x (c, b, d) times states (c, b, n, d): (c, b, n), as one batched matmul."""
    c, b, n, d = states.shape
    return torch.bmm(x.reshape(c * b, 1, d), states.view(c * b, n, d).transpose(1, 2)).view(c, b, n)


# Measured on a 2-core EPYC (1 MiB L2): with 2-4 MiB blocks the scan's time is flat in the chunk size
# (16-128); whole chunks as one block (6-24 MiB at chunk 32-128) made it 1.5-2.5x slower as they grew.
WORK_BLOCK_BYTES = 4 * 2**20


def _block_steps(like: Tensor, A_t: Tensor, chunk_size: int) -> int:
    """Time steps per work block: (steps, b, n, d) buffers of about WORK_BLOCK_BYTES stay in cache."""
    step_bytes = like.shape[1] * A_t.numel() * like.element_size()
    return max(1, min(chunk_size, like.shape[0], WORK_BLOCK_BYTES // step_bytes))


def _blocks(start: int, stop: int, steps: int) -> list[slice]:
    """[start, stop) in blocks of `steps`, the short one first: the backward recomputes the states of
    every block but the last twice, so the last should be a full one (32 -> 10 + 22, not 22 + 10)."""
    first = start + ((stop - start) % steps or steps)
    return [slice(start, first)] + [slice(s, s + steps) for s in range(first, stop, steps)]


def _work_buffers(count: int, steps: int, like: Tensor, A_t: Tensor) -> list[Tensor]:
    """(steps, b, n, d) buffers reused by every block: fresh ones would be page-faulted in each time."""
    return [like.new_empty((steps, like.shape[1], *A_t.shape)) for _ in range(count)]


def _block_states(inputs: tuple, block: slice, h: Tensor, bufs: list[Tensor]) -> Tensor:
    """States (steps, b, n, d) of one block from its initial state h, in bufs[1]."""
    delta, delta_u, A_t, B = inputs
    return _run_states(*_discretize(delta[block], delta_u[block], A_t, B[block], bufs), h)


class _ChunkedCheckpointScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u_t, delta_t, A, B_t, C_t, D, h0, chunk_size):  # time-major (l, b, d) and (l, b, n)
        A_t, length = A.t().contiguous(), u_t.shape[0]  # (n, d)
        inputs = (delta_t, delta_t * u_t, A_t, B_t)
        steps = _block_steps(u_t, A_t, chunk_size)
        y, starts, bufs = torch.empty_like(u_t), [], _work_buffers(3, steps, u_t, A_t)
        h = h0.transpose(1, 2)  # (b, n, d)
        for start in range(0, length, chunk_size):
            starts.append(h.clone())
            for block in _blocks(start, min(start + chunk_size, length), steps):
                bufs[1], bufs[2] = bufs[2], bufs[1]  # ping-pong: h, the last state, lives in the other buffer
                states = _block_states(inputs, block, h, bufs)
                torch.matmul(C_t[block].unsqueeze(2), states, out=y[block].unsqueeze(2))  # sum over n
                h = states[-1]
        ctx.save_for_backward(u_t, delta_t, A_t, B_t, C_t, D, torch.stack(starts))
        ctx.chunk_size = chunk_size
        return y.add_(D * u_t)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        u, delta, A_t, B, C, D, starts = ctx.saved_tensors
        gy, length, chunk_size = gy.contiguous(), u.shape[0], ctx.chunk_size  # (l, b, d)
        grads = [torch.empty_like(u), torch.empty_like(delta), torch.empty_like(B), torch.empty_like(C)]
        steps = _block_steps(u, A_t, chunk_size)
        grad_a, bufs = torch.zeros_like(A_t), _work_buffers(4, steps, u, A_t)
        inputs = (delta, delta * u, A_t, B)
        carry = torch.zeros_like(starts[0])  # dL/dh at the end of the current block from later ones
        for index in reversed(range(starts.shape[0])):
            start = index * chunk_size
            blocks = _blocks(start, min(start + chunk_size, length), steps)
            h_starts = [starts[index]]  # the state before each block, recomputed from the chunk's
            for block in blocks[:-1]:
                h_starts.append(_block_states(inputs, block, h_starts[-1], bufs)[-1].clone())
            for block, h_start in zip(reversed(blocks), reversed(h_starts)):
                block_inputs = (u[block], delta[block], inputs[1][block], A_t, B[block], C[block])
                carry = _chunk_backward([g[block] for g in grads], grad_a, block_inputs, h_start, gy[block],
                                        carry, bufs)
        grad_u, grad_delta, grad_b, grad_c = grads
        grad_u.addcmul_(gy, D)
        grad_d = (gy * u).sum(dim=(0, 1))
        return grad_u, grad_delta, grad_a.t(), grad_b, grad_c, grad_d, carry.transpose(1, 2), None


def _chunk_backward(out, grad_a, inputs, h_start, gy, carry, bufs) -> Tensor:
    """Adjoint of one time-major chunk: fill out = [du, ddelta, dB, dC], add to grad_a; return dL/dh_start.

    Works in four (c, b, n, d) buffers: decay, states, adjoint and one temporary.
    """
    u, delta, delta_u, A_t, B, C = inputs
    decay, drive = _discretize(delta, delta_u, A_t, B, bufs)
    states = _run_states(decay, drive, h_start)  # (c, b, n, d)
    adj = torch.mul(gy.unsqueeze(2), C.unsqueeze(-1), out=bufs[2][: len(u)])  # (c, b, n, d): local dL/dh_t
    adj[-1] += carry
    for t in range(adj.shape[0] - 2, -1, -1):
        adj[t].addcmul_(decay[t + 1], adj[t + 1])
    carry = adj[0] * decay[0]
    grad_u, grad_delta, grad_b, grad_c = out
    grad_c.copy_(_contract_d(gy, states))
    grad_b.copy_(_contract_d(delta_u, adj))
    adj_b = torch.matmul(B.unsqueeze(2), adj).squeeze(2)  # dL/d(delta u) = sum over n of B adj, (c, b, d)
    grad_log_decay = decay.mul_(adj)  # dL/d(delta A) = adj * h_{t-1} * decay, built in place
    grad_log_decay[1:] *= states[:-1]
    grad_log_decay[0] *= h_start
    scratch = bufs[3][: len(u)]
    torch.add(torch.mul(grad_log_decay, A_t, out=scratch).sum(2), adj_b * u, out=grad_delta)
    torch.mul(adj_b, delta, out=grad_u)
    grad_a += torch.mul(grad_log_decay, delta.unsqueeze(2), out=scratch).sum(dim=(0, 1))
    return carry
