"""The Triton scan against the float64 sequential reference, under Triton's interpreter on the CPU.

The same oracle as every scan (tests/test_scan.py): output and the gradients of all seven inputs, odd
lengths, length 1 and lengths longer than a chunk, with and without h0; float32 to 1e-4, float64 to 1e-10
(computed in float64), and bf16 inputs to 2e-2. Shapes are small: the interpreter runs every program in
Python. CUDA tests run the compiled kernels at the models' shapes (marked cuda: skipped without a GPU).
"""

import os
import subprocess
import sys

import pytest
import torch
from test_scan import TOL, make_inputs, reference, rel_err

from bench.profiling.instruments import LiveTensorPeak
from variants.scan import choose_scan, selective_scan_ref
from variants.scan_triton import LAUNCHES, TRITON, selective_scan_triton

pytestmark = pytest.mark.skipif(not TRITON, reason="triton is not installed")
BF16_TOL = 2e-2


@pytest.fixture
def interpreter() -> None:
    """CPU tests of the kernels: conftest chose the interpreter before triton was imported (no CUDA here)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the kernels run compiled on this machine: the cuda tests check them")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("length,chunks", [(1, [1, 4]), (7, [5, 10]), (33, [5, 32])])
def test_triton_matches_reference(interpreter, length: int, chunks: list[int], dtype: torch.dtype) -> None:
    """float64 inputs are computed in float64 (1e-10), not rounded through a float32 kernel (9.3e-6 before)."""
    ref_inputs, y_ref, grads_ref, gy = reference(length)
    inputs = [t.detach().to(dtype).requires_grad_() for t in ref_inputs]
    for chunk in chunks:
        y = selective_scan_triton(*inputs, chunk_size=chunk)
        grads = torch.autograd.grad(y, inputs, gy.to(dtype))
        assert y.dtype == dtype and rel_err(y, y_ref) < TOL[dtype], f"output, chunk {chunk}"
        for label, g, g_ref in zip(["u", "delta", "A", "B", "C", "D", "h0"], grads, grads_ref):
            assert g.dtype == dtype and rel_err(g, g_ref) < TOL[dtype], f"grad {label}, chunk {chunk}"


def test_backward_scratch_follows_the_shorter_of_chunk_and_length(interpreter) -> None:
    """The band scan has 31 steps: a chunk of 128 must not size the backward's scratch (4.1x before). The
    scratch is an output of the backward operator, so the live-memory peak of the backward sees it."""
    inputs = [t.detach().float().requires_grad_() for t in make_inputs(9, torch.float64, d=40, n=16)[:6]]
    peaks = {}
    for chunk in (9, 64):
        y = selective_scan_triton(*inputs, chunk_size=chunk)
        with LiveTensorPeak() as live:
            torch.autograd.grad(y, inputs, torch.ones_like(y))
        peaks[chunk] = live.peak_bytes
    scratch = 2 * 2 * 9 * 32 * 16 * 4  # batch 2 x 2 channel blocks x 9 steps x BLOCK_D x BLOCK_N, float32
    assert peaks[64] == peaks[9] and scratch < peaks[9] < 2 * scratch


def test_triton_without_h0_and_with_bf16_inputs(interpreter) -> None:
    inputs = [t.detach().float().requires_grad_() for t in make_inputs(19, torch.float64)[:6]]
    y = selective_scan_triton(*inputs, chunk_size=8)
    y_ref = selective_scan_ref(*[t.detach().double() for t in inputs])
    assert rel_err(y, y_ref) < TOL[torch.float32] and y.dtype == torch.float32
    low = [t.detach().bfloat16().requires_grad_() for t in inputs]
    y_low = selective_scan_triton(*low, chunk_size=8)
    grads = torch.autograd.grad(y_low, low, torch.ones_like(y_low))
    assert y_low.dtype == torch.bfloat16 and rel_err(y_low, y_ref) < BF16_TOL  # float32 inside: bf16 rounding only
    assert all(g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads)


def test_two_launches_per_training_call(interpreter) -> None:
    inputs = [t.detach().float().requires_grad_() for t in make_inputs(9, torch.float64)]
    before = LAUNCHES["count"]
    y = selective_scan_triton(*inputs, chunk_size=4)
    y.sum().backward()
    assert LAUNCHES["count"] - before == 2  # one forward kernel, one backward kernel


def test_triton_on_cpu_without_the_interpreter_says_what_to_set() -> None:
    code = ("import torch, sys; sys.path.insert(0, 'tests'); from variants.scan_triton import selective_scan_triton;"
            "x = [torch.randn(1, 4, 2), torch.rand(1, 4, 2), -torch.rand(2, 3), torch.randn(1, 4, 3),"
            " torch.randn(1, 4, 3), torch.ones(2)]; selective_scan_triton(*x)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0 and "set TRITON_INTERPRET=1" in proc.stderr
    assert "MbsbenchError" in proc.stderr  # the one-line error the CLIs print


def test_auto_picks_triton_only_on_cuda() -> None:
    assert choose_scan("auto", torch.device("cpu")) != "triton"
    assert choose_scan("triton", torch.device("cpu")) == "triton"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("b,length,d,n", [(31, 251, 256, 16), (31, 251, 128, 12), (251, 31, 256, 16)])
def test_triton_on_cuda_at_model_shapes(b: int, length: int, d: int, n: int) -> None:
    inputs = make_inputs(length, torch.float64, batch=b, d=d, n=n)
    y_ref = selective_scan_ref(*inputs)
    gy = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad(y_ref, inputs, gy)
    cuda = [t.detach().float().cuda().requires_grad_() for t in inputs]
    y = selective_scan_triton(*cuda, chunk_size=32)
    grads = torch.autograd.grad(y, cuda, gy.float().cuda())
    assert rel_err(y.cpu(), y_ref) < TOL[torch.float32]
    assert all(rel_err(g.cpu(), r) < TOL[torch.float32] for g, r in zip(grads, grads_ref))
