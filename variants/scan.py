"""Selective-scan implementations, one free function each, all with one signature.

    scan(u, delta, A, B, C, D, h0=None, *, chunk_size=32) -> y

u, delta: (b, l, d); A: (d, n); B, C: (b, l, n); D: (d,); h0: (b, d, n) or None; y: (b, l, d).
Recurrence (zero-order hold on A, Euler on B, as in Mamba):
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = C_t . h_t + D * u_t
`selective_scan_ref` is the oracle every other implementation is tested against.
"""

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from variants.errors import MbsbenchError

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


def selective_scan_chunked_ckpt(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None,
    *, chunk_size: int = 32,
) -> Tensor:
    """Chunked scan that keeps only inputs and chunk-boundary states; backward recomputes each chunk.

    Saved memory O(b*l*d + b*(l/chunk)*d*n) instead of O(b*l*d*n); backward runs the adjoint
    recurrence chunk by chunk in place of autograd through every step.
    """
    if h0 is None:
        h0 = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    return _ChunkedCheckpointScan.apply(u, delta, A, B, C, D, h0, chunk_size)


def _discretize(u: Tensor, delta: Tensor, A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """Time-major decay exp(delta A) and drive delta B u, both (c, b, d, n), contiguous."""
    delta_t = delta.transpose(0, 1)  # (c, b, d)
    decay = torch.exp(delta_t.unsqueeze(-1) * A)  # (c, b, d, n)
    drive = (delta_t * u.transpose(0, 1)).unsqueeze(-1) * B.transpose(0, 1).unsqueeze(2)  # (c, b, d, n)
    return decay, drive


def _run_states(decay: Tensor, drive: Tensor, h: Tensor) -> Tensor:
    """States h_t of one chunk, written over `drive` in place: (c, b, d, n)."""
    drive[0].addcmul_(decay[0], h)
    for t in range(1, drive.shape[0]):
        drive[t].addcmul_(decay[t], drive[t - 1])
    return drive


class _ChunkedCheckpointScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, h0, chunk_size):
        ys, starts = [], []
        h = h0
        for start in range(0, u.shape[1], chunk_size):
            part = slice(start, start + chunk_size)
            starts.append(h)
            decay, drive = _discretize(u[:, part], delta[:, part], A, B[:, part])
            states = _run_states(decay, drive, h)  # (c, b, d, n)
            ys.append(torch.einsum("cbdn,bcn->bcd", states, C[:, part]))
            h = states[-1].clone()
        ctx.save_for_backward(u, delta, A, B, C, D, torch.stack(starts))
        ctx.chunk_size = chunk_size
        return torch.cat(ys, dim=1) + D * u

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        u, delta, A, B, C, D, starts = ctx.saved_tensors
        grads = [torch.empty_like(u), torch.empty_like(delta), torch.zeros_like(A)]
        grads += [torch.empty_like(B), torch.empty_like(C)]
        carry = torch.zeros_like(starts[0])  # dL/dh at the end of the current chunk from later ones
        for index in reversed(range(starts.shape[0])):
            part = slice(index * ctx.chunk_size, (index + 1) * ctx.chunk_size)
            carry = _chunk_backward(
                [g[:, part] for g in (grads[0], grads[1], grads[3], grads[4])], grads[2],
                u[:, part], delta[:, part], A, B[:, part], C[:, part], starts[index], gy[:, part], carry,
            )
        grads[0] += gy * D
        grad_d = (gy * u).sum(dim=(0, 1))
        return grads[0], grads[1], grads[2], grads[3], grads[4], grad_d, carry, None


def _chunk_backward(out, grad_a, u, delta, A, B, C, h_start, gy, carry) -> Tensor:
    """Adjoint of one chunk: fill out = [du, ddelta, dB, dC] slices, add to grad_a; return dL/dh_start.

    Peak memory is about four (c, b, d, n) buffers: decay, states, adjoint and one temporary.
    """
    decay, drive = _discretize(u, delta, A, B)
    states = _run_states(decay, drive, h_start)  # (c, b, d, n)
    gy_t = gy.transpose(0, 1)  # (c, b, d)
    adj = gy_t.unsqueeze(-1) * C.transpose(0, 1).unsqueeze(2)  # (c, b, d, n): local dL/dh_t
    adj[-1] += carry
    for t in range(adj.shape[0] - 2, -1, -1):
        adj[t].addcmul_(decay[t + 1], adj[t + 1])
    carry = adj[0] * decay[0]
    grad_u, grad_delta, grad_b, grad_c = out
    grad_c.copy_(torch.einsum("cbdn,cbd->bcn", states, gy_t))
    grad_log_decay = decay.mul_(adj)  # dL/d(delta A) = adj * h_{t-1} * decay, built in place
    grad_log_decay[1:] *= states[:-1]
    grad_log_decay[0] *= h_start
    delta_t, u_t = delta.transpose(0, 1), u.transpose(0, 1)
    adj_b = torch.einsum("cbdn,cbn->cbd", adj, B.transpose(0, 1))  # dL/d(delta u), (c, b, d)
    grad_delta.copy_(((grad_log_decay * A).sum(-1) + adj_b * u_t).transpose(0, 1))
    grad_u.copy_((adj_b * delta_t).transpose(0, 1))
    grad_b.copy_(torch.einsum("cbdn,cbd->bcn", adj, delta_t * u_t))
    grad_a += torch.einsum("cbdn,cbd->dn", grad_log_decay, delta_t)
    return carry


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
    y = _mamba_selective_scan_fn(
        u.transpose(1, 2).contiguous(), delta.transpose(1, 2).contiguous(), A.contiguous(),
        B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), D.float(),
    )  # (b, d, l)
    return y.transpose(1, 2)


SCANS: dict[str, Callable[..., Tensor]] = {
    "naive": selective_scan_naive,
    "chunked": selective_scan_chunked,
    "chunked_ckpt": selective_scan_chunked_ckpt,
    "cuda": selective_scan_cuda,
}


# The reference's per-step indexing, kept only so that `bench scan` can measure what it costs.
INDEXED_LOOPS: dict[str, Callable[..., Tensor]] = {
    "naive_indexed": partial(selective_scan_naive, indexed=True),
    "chunked_indexed": partial(selective_scan_chunked, indexed=True),
}


def cuda_scan_available() -> bool:
    """True when mamba_ssm imports and a CUDA device is present."""
    return _mamba_selective_scan_fn is not None and torch.cuda.is_available()


def choose_scan(name: str, device: torch.device) -> str:
    """Resolve 'auto' to a concrete scan name for a device; other names pass through."""
    if name != "auto":
        return name
    if device.type == "cuda" and _mamba_selective_scan_fn is not None:
        return "cuda"
    return "chunked_ckpt"
