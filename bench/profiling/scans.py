"""`bench scan`: every selective-scan implementation on the shapes the models use: time, memory, error."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from bench.console import status
from bench.profiling.contention import timing_label
from bench.profiling.instruments import MIB, LiveTensorPeak, SavedTensorBytes, time_call
from variants.registry import lookup
from variants.scan import INDEXED_LOOPS, SCANS, runnable_scans, selective_scan_ref

FRAMES_2S = 251  # 2 s at hop 128, centered STFT


@dataclass(frozen=True)
class ScanShape:
    """One scan call of a model: b = sequences, l = steps, d = channels, n = state size."""

    name: str
    b: int
    l: int  # noqa: E741 - the paper's symbol
    d: int
    n: int


def model_shapes(batch: int = 1, frames: int = FRAMES_2S) -> list[ScanShape]:
    """Time scan of original and optimized (b = batch * 31 bands) and the band scan of original (l = 31)."""
    return [
        ScanShape("original time", batch * 31, frames, 256, 16),
        ScanShape("optimized time", batch * 31, frames, 128, 12),
        ScanShape("original band", batch * frames, 31, 256, 16),
    ]


def scan_inputs(shape: ScanShape, dtype: torch.dtype, device: str, seed: int = 0) -> list[Tensor]:
    """Inputs distributed as in an initialised model: delta in [1e-3, 0.1], A = -(1..n)."""
    g = torch.Generator().manual_seed(seed)
    b, steps, d, n = shape.b, shape.l, shape.d, shape.n
    u = torch.randn(b, steps, d, generator=g)
    delta = torch.exp(torch.empty(b, steps, d).uniform_(-6.9, -2.3, generator=g))
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)
    B, C = torch.randn(b, steps, n, generator=g), torch.randn(b, steps, n, generator=g)
    D = torch.ones(d)
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (u, delta, A, B, C, D)]


BENCH_SCANS: dict[str, Callable] = {**INDEXED_LOOPS, **{name: entry.fn for name, entry in SCANS.items()}}


def available_scans(device: str) -> list[str]:
    """Scan names that can run on this device: the reference's indexed loops, then every scan whose entry runs here."""
    return [*INDEXED_LOOPS, *runnable_scans(device)]


def _chosen(known: list[str], requested: tuple[str, ...] | None) -> list[str]:
    """The requested scans (each checked against known), or all of known."""
    for name in requested or ():
        lookup({k: k for k in known}, name, "scan")
    return list(requested) if requested else known


def bench_scan_names(device: str, requested: tuple[str, ...] | None = None) -> list[str]:
    """The scans `bench scan` measures: the requested ones, or every one available on the device."""
    return _chosen(available_scans(device), requested)


def step_scans(device: str, requested: tuple[str, ...] | None = None) -> list[str]:
    """The scans a model can train with here (not the reference's indexed loops): requested, or all."""
    return _chosen([n for n in available_scans(device) if n not in INDEXED_LOOPS], requested)


def _rel_err(a: Tensor, b: Tensor) -> float:
    return ((a.double().cpu() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def reference_outputs(inputs: list[Tensor], grad_out: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Float64 reference output and input gradients, computed on CPU."""
    ref_in = [t.detach().double().cpu().requires_grad_() for t in inputs]
    y = selective_scan_ref(*ref_in)
    return y.detach(), torch.autograd.grad(y, ref_in, grad_out.double().cpu())


def measure_scan(fn: Callable, inputs: list[Tensor], chunk: int, repeats: int, device: str) -> dict:
    """Forward and forward+backward time, saved-for-backward bytes and peak live bytes of one scan."""
    no_grad = [t.detach() for t in inputs]
    grad_out = torch.ones_like(inputs[0])

    def forward() -> None:
        with torch.no_grad():
            fn(*no_grad, chunk_size=chunk)

    def train() -> None:
        torch.autograd.grad(fn(*inputs, chunk_size=chunk), inputs, grad_out)

    with SavedTensorBytes() as saved:
        y = fn(*inputs, chunk_size=chunk)
    del y
    with LiveTensorPeak(baseline=inputs) as live:
        train()
    timings = [time_call(forward, repeats, 1, device), time_call(train, repeats, 1, device)]
    return {
        "fwd_s": timings[0]["median_s"],
        "fwd_bwd_s": timings[1]["median_s"],
        "saved_mib": saved.total_bytes / MIB,
        "peak_live_mib": live.peak_bytes / MIB,
        "timing": timing_label(timings)[2],
    }


def bench_scans(
    shapes: list[ScanShape], names: list[str], chunk: int = 32, repeats: int = 3,
    device: str = "cpu", dtype: torch.dtype = torch.float32, check: bool = True, rows: list | None = None,
) -> list[dict]:
    """One row per (shape, scan): timings, memory and max relative error against float64, appended to `rows`
    as each is measured (a caller that passes its list keeps the rows done when interrupted)."""
    rows, total = ([] if rows is None else rows), len(shapes) * len(names)
    for shape in shapes:
        inputs = scan_inputs(shape, dtype, device)
        grad_out = torch.randn_like(inputs[0])
        where = f"{shape.name} (b {shape.b}, l {shape.l}, d {shape.d}, n {shape.n})"
        if check:
            status(f"{where}: the float64 reference ...")
        ref = reference_outputs(inputs, grad_out) if check else None
        for name in names:
            status(f"[{len(rows) + 1}/{total}] {where}: {name} ...")
            row = {"shape": shape.name, "scan": name, "b": shape.b, "l": shape.l, "d": shape.d, "n": shape.n}
            row |= measure_scan(BENCH_SCANS[name], inputs, chunk, repeats, device)
            if ref is not None:
                y = BENCH_SCANS[name](*inputs, chunk_size=chunk)
                grads = torch.autograd.grad(y, inputs, grad_out)
                row["max_rel_err"] = max([_rel_err(y, ref[0])] + [_rel_err(g, r) for g, r in zip(grads, ref[1])])
            rows.append(row)
    return rows
