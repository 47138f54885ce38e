"""Every selective scan against the float64 sequential reference: outputs and all gradients.

Tolerances (relative: max abs error over max abs value): 1e-10 in float64, 1e-4 in float32.
"""

import pytest
import torch

from variants.errors import MbsbenchError
from variants.scan import INDEXED_LOOPS, SCANS, choose_scan, cuda_scan_available, selective_scan_ref
from variants.scan_cpu import compiler

ALL_CPU = {**{k: v.fn for k, v in SCANS.items() if k not in ("cuda", "triton")}, **INDEXED_LOOPS}
CPU_SCANS = list(ALL_CPU)
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def make_inputs(length: int, dtype: torch.dtype, batch: int = 2, d: int = 6, n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(length)
    u = torch.randn(batch, length, d, generator=g)
    delta = torch.nn.functional.softplus(torch.randn(batch, length, d, generator=g) - 1.0)
    A = -(torch.rand(d, n, generator=g) * 3 + 0.1)
    B, C = torch.randn(batch, length, n, generator=g), torch.randn(batch, length, n, generator=g)
    D, h0 = torch.randn(d, generator=g), torch.randn(batch, d, n, generator=g)
    return [t.to(dtype).requires_grad_() for t in (u, delta, A, B, C, D, h0)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def reference(length: int) -> tuple[list[torch.Tensor], torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
    inputs = make_inputs(length, torch.float64)
    y = selective_scan_ref(*inputs)
    gy = torch.randn_like(y)
    return inputs, y, torch.autograd.grad(y, inputs, gy), gy


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("length", [1, 7, 31, 32, 33, 251, 1000])
@pytest.mark.parametrize("name", CPU_SCANS)
def test_scan_matches_reference(name: str, length: int, dtype: torch.dtype) -> None:
    if length > 251 and name in INDEXED_LOOPS:
        pytest.skip("the reference's indexed loops are O(l^2) in backward: checked up to l = 251")
    chunk_sizes = [1, 5, 32, 64, length + 3] if length <= 251 else [32, 64]
    assert_matches_reference(ALL_CPU[name], length, dtype, chunk_sizes)


def assert_matches_reference(scan, length: int, dtype: torch.dtype, chunk_sizes: list[int]) -> None:
    """Output and all seven gradients of scan at each chunk size within TOL of the float64 loop."""
    ref_inputs, y_ref, grads_ref, gy = reference(length)
    inputs = [t.detach().to(dtype).requires_grad_() for t in ref_inputs]
    for chunk in chunk_sizes:
        y = scan(*inputs, chunk_size=chunk)
        grads = torch.autograd.grad(y, inputs, gy.to(dtype))
        assert rel_err(y, y_ref) < TOL[dtype], f"output, chunk {chunk}"
        for label, g, g_ref in zip(["u", "delta", "A", "B", "C", "D", "h0"], grads, grads_ref):
            assert rel_err(g, g_ref) < TOL[dtype], f"grad {label}, chunk {chunk}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("block_steps", [1, 3, 8])
def test_chunked_ckpt_work_blocks_within_a_chunk(
    block_steps: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks smaller than the chunk (the backward recomputes each block's start) give the same numbers."""
    import variants.scan_ckpt as scan_module

    step_bytes = 2 * 6 * 4 * torch.finfo(dtype).bits // 8  # b * d * n * element size of make_inputs
    monkeypatch.setattr(scan_module, "WORK_BLOCK_BYTES", block_steps * step_bytes)
    assert scan_module._block_steps(torch.empty(53, 2, 6, dtype=dtype), torch.empty(4, 6), 64) == block_steps
    assert_matches_reference(SCANS["chunked_ckpt"].fn, 53, dtype, [5, 16, 64])


@pytest.mark.parametrize("name", CPU_SCANS)
def test_scan_without_initial_state(name: str) -> None:
    inputs = make_inputs(19, torch.float64)[:6]
    y = ALL_CPU[name](*inputs, chunk_size=5)
    assert rel_err(y, selective_scan_ref(*inputs)) < 1e-10


def saved_bytes(name: str, batch: int, length: int, d: int, n: int, chunk: int) -> int:
    """Bytes autograd keeps for backward of one scan call (saved-tensor hooks)."""
    inputs = make_inputs(length, torch.float32, batch=batch, d=d, n=n)[:6]
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        SCANS[name].fn(*inputs, chunk_size=chunk)
    return total


def test_chunked_ckpt_keeps_inputs_and_boundary_states_only() -> None:
    b, length, d, n, chunk = 2, 64, 16, 8, 16
    inputs = 2 * b * length * d + d * n + 2 * b * length * n + d  # u, delta, A, B, C, D
    boundary = (length // chunk) * b * d * n  # h at the start of each chunk
    assert saved_bytes("chunked_ckpt", b, length, d, n, chunk) == 4 * (inputs + boundary)


@pytest.mark.parametrize("name", ["naive", "chunked"])
def test_loop_scans_keep_every_state(name: str) -> None:
    b, length, d, n = 2, 64, 16, 8
    assert saved_bytes(name, b, length, d, n, 16) >= 4 * 2 * b * length * d * n  # (b, l, d, n) twice or more


def test_chunked_ckpt_saved_bytes_grow_with_l_d_not_l_d_n() -> None:
    small = saved_bytes("chunked_ckpt", 2, 64, 64, 4, 64)
    more_state = saved_bytes("chunked_ckpt", 2, 64, 64, 32, 64)
    longer = saved_bytes("chunked_ckpt", 2, 256, 64, 4, 256)
    assert more_state / small < 2  # n x8: only B, C, A and one boundary state grow
    assert longer / small == pytest.approx(4, rel=0.05)
    assert saved_bytes("naive", 2, 64, 32, 32, 64) / saved_bytes("naive", 2, 64, 32, 4, 64) > 6


def test_auto_picks_a_cpu_scan() -> None:
    assert choose_scan("auto", torch.device("cpu")) == ("cpu_fused" if compiler() else "chunked_ckpt")
    assert choose_scan("naive", torch.device("cpu")) == "naive"


@pytest.mark.skipif(cuda_scan_available(), reason="mamba_ssm with CUDA is installed here")
def test_cuda_scan_explains_what_is_missing() -> None:
    with pytest.raises(MbsbenchError, match=r"mamba_ssm|CUDA"):
        SCANS["cuda"].fn(*make_inputs(4, torch.float32)[:6])


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_scan_available(), reason="needs mamba_ssm and a CUDA device")
def test_cuda_scan_matches_reference() -> None:
    inputs = [t.detach().float().cuda().requires_grad_() for t in make_inputs(251, torch.float64)[:6]]
    y = SCANS["cuda"].fn(*inputs)
    y_ref = selective_scan_ref(*[t.detach().double().cpu() for t in inputs])
    assert rel_err(y.cpu(), y_ref) < 1e-4


def test_scan_bench_cli(capsys: pytest.CaptureFixture) -> None:
    from bench.__main__ import main

    argv = ["scan", "--frames", "64", "--repeats", "1", "--no-track", "--format", "json",
            "--scans", "naive,chunked,chunked_ckpt"]
    assert main(argv) == 0
    import json

    rows = json.loads(capsys.readouterr().out)["rows"]
    by = {(r["shape"], r["scan"]): r for r in rows}
    assert len(rows) == 9
    for row in rows:
        assert row["max_rel_err"] < 1e-4 and row["fwd_s"] > 0 and row["peak_live_mib"] > 0
    naive, ckpt = by[("original time", "naive")], by[("original time", "chunked_ckpt")]
    assert ckpt["saved_mib"] < naive["saved_mib"] / 8
    assert by[("original time", "chunked")]["saved_mib"] == pytest.approx(naive["saved_mib"], rel=0.01)
