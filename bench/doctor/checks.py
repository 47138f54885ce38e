"""The doctor's checks: every CUDA path of mbsbench on a GPU machine in a few minutes, each check isolated.

Imports only torch and numpy (a lent GPU machine has no registry access: no mlflow, pesq, pystoi or
soundfile). Without CUDA, the dry run exercises every path that does not need it (on tiny shapes) and
lists the CUDA checks it skipped. A check that raises is a row with its error; the others go on.

Checks: versions; what scan=auto picks on the device (and why it passed the others over); every scan
against the float64 oracle (output and all gradients); the CUDA peak memory instrument on a known
allocation; the max-batch bisection on real OOMs on an emulated 12 GB card (its context and library
workspaces included); profile rows of original, optimized and bsrnn at batch 6, 2 s with each scan that
runs here (peak memory, step times, RTF, ops); whether original trains at batch 6, 2 s within 12 GB with
chunked_ckpt + checkpoint_blocks, and with triton (the reference ran out of memory at batch 2); bench plan's
predicted CUDA peaks beside the measured ones.
"""

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy
import torch

from bench.console import status
from bench.devices import resolve_device
from bench.planning import plan as planner
from bench.profiling.contention import timing_conditions
from bench.profiling.instruments import MIB, LiveTensorPeak, cuda_peak_bytes
from bench.profiling.memory import MemoryCurve, emulated_card, is_oom, max_batch_cuda, release
from bench.profiling.ops import count_ops
from bench.profiling.steps import measure_step
from bench.profiling.workload import ProfileSettings, make_workload, measured_model
from bench.text import format_table
from variants.errors import error_line, first_line
from variants.registry import build_config
from variants.scan import SCANS, auto_report, cuda_scan_available, runnable_scans, selective_scan_ref
from variants.scan_triton import TRITON, counting_only, interpreted

CARD_GB = 12.0  # the reference's GPU
VARIANTS = ("original", "optimized", "bsrnn")
ORACLE_TOL = 1e-4  # float32 against float64, relative to the largest value


@dataclass
class Report:
    """Every check's rows, and what was skipped and why."""

    mode: str
    rows: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def add(self, check: str, **values) -> None:
        self.rows.append({"check": check} | values)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "seconds": round(time.monotonic() - self.started, 1), "rows": self.rows,
                "skipped": self.skipped}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
           "cuda": str(torch.version.cuda), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else
           "none", "triton": "not installed", "mamba_ssm": "importable" if cuda_scan_available() else "absent"}
    if TRITON:
        import triton

        out["triton"] = triton.__version__
    return out


def check_versions(report: Report, device: str) -> None:
    report.add("versions", device=device, **versions())


def check_auto(report: Report, device: str) -> None:
    """What scan=auto picks on this device, and why it passed the others over."""
    for name, problem in auto_report(torch.device(device)):
        report.add("scan=auto here", scan=name, picked=problem is None, reason=problem or "-")


def oracle_scans(device: str) -> list[str]:
    """The scans that run here; on the CPU also those Triton's interpreter runs (TRITON_INTERPRET=1)."""
    names = runnable_scans(device)
    if interpreted():
        names += [name for name, entry in SCANS.items() if entry.interpreter and name not in names]
    return names


def _oracle_inputs(b: int, length: int, d: int, n: int, h0: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(length)
    u = torch.randn(b, length, d, generator=g, dtype=torch.float64)
    delta = torch.nn.functional.softplus(torch.randn(b, length, d, generator=g, dtype=torch.float64) - 1.0)
    A = -(torch.rand(d, n, generator=g, dtype=torch.float64) * 3 + 0.1)
    B, C = (torch.randn(b, length, n, generator=g, dtype=torch.float64) for _ in range(2))
    D = torch.randn(d, generator=g, dtype=torch.float64)
    extra = [torch.randn(b, d, n, generator=g, dtype=torch.float64)] if h0 else []
    return [t.requires_grad_() for t in (u, delta, A, B, C, D, *extra)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double().cpu() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def check_scans(report: Report, device: str, shapes: list[tuple[int, int, int, int]]) -> None:
    """Every scan in float32 on the device against the float64 sequential loop: output and every gradient."""
    for b, length, d, n in shapes:
        for name in oracle_scans(device):
            ref_in = _oracle_inputs(b, length, d, n, SCANS[name].takes_h0)
            y_ref = selective_scan_ref(*ref_in)
            gy = torch.randn_like(y_ref)
            grads_ref = torch.autograd.grad(y_ref, ref_in, gy)
            inputs = [t.detach().float().to(device).requires_grad_() for t in ref_in]
            y = SCANS[name].fn(*inputs, chunk_size=32)
            grads = torch.autograd.grad(y, inputs, gy.float().to(device))
            err = max([_rel(y, y_ref.detach())] + [_rel(g, r) for g, r in zip(grads, grads_ref)])
            report.add("scan vs float64", scan=name, shape=f"b{b} l{length} d{d} n{n}", max_rel_err=err,
                       ok=err < ORACLE_TOL)


def check_memory_instrument(report: Report, device: str) -> None:
    """The peak instrument sees a known 256 MiB allocation (CUDA allocator peak, or live tensor bytes)."""
    size = 256 * MIB

    def allocate() -> None:
        block = torch.empty(size // 4, dtype=torch.float32, device=device)
        block.fill_(1.0)

    if torch.device(device).type == "cuda":
        measured = cuda_peak_bytes(allocate, device)
    else:
        with LiveTensorPeak() as live:
            allocate()
        measured = live.peak_bytes
    report.add("peak memory instrument", expected_mib=size / MIB, measured_mib=measured / MIB,
               ok=abs(measured - size) <= 0.05 * size)


def check_max_batch(report: Report, device: str) -> None:
    """The bisection on real OOMs on an emulated 12 GB card (optimized, 2 s crops)."""
    cfg = build_config("optimized", scan="chunked_ckpt")
    settings = ProfileSettings(batch=1, seconds=2.0, device=device, rss=False)
    found = max_batch_cuda(measured_model(cfg, device), cfg, settings, CARD_GB * 2**30)
    report.add("max batch in 12 GB (bisection on real OOMs)", variant="optimized", max_batch=found, ok=found >= 1)


def profile_rows(report: Report, device: str, batch: int, seconds: float, repeats: int) -> None:
    """Peak memory, step times, RTF and ops of each variant with each scan that runs here (not interpreted)."""
    settings = ProfileSettings(batch=batch, seconds=seconds, device=device, repeats=repeats, rss=False)
    for variant in VARIANTS:
        for scan in runnable_scans(device) if variant != "bsrnn" else ["-"]:
            cfg = build_config(variant, **({"scan": scan} if scan != "-" else {}))
            model = measured_model(cfg, device)
            row = {"variant": variant, "scan": scan, "batch": batch, "seconds": seconds}
            curve = MemoryCurve(model, cfg, settings)
            for mode in ("train", "infer"):
                point, figures = measure_step(curve, mode)
                row[f"peak_{mode}_mib"] = point["peak_bytes"] / MIB if point["status"] == "ok" else point["reason"]
                row |= {k: v for k, v in figures.items() if not k.startswith("peak_mem_")}
            row |= timing_conditions(row, strict=False)
            report.add("profile", **{k: v for k, v in row.items() if not k.endswith(("_min_s", "_max_s"))})
            del model
            release(device)


def triton_ops(report: Report, device: str) -> None:
    """Ops of a training step at batch 1, 2 s with scan=triton, its kernels counted without being run."""
    del device  # counted on the CPU: the count does not depend on the device
    settings = ProfileSettings(batch=1, seconds=2.0, rss=False)
    for variant, goal in (("original", 5000), ("optimized", 2000)):
        cfg = build_config(variant, scan="triton")
        with counting_only():
            ops = count_ops(measured_model(cfg, "cpu"), cfg, settings, "train")
        report.add("ops of a training step, scan=triton (counted)", variant=variant, **ops, goal=goal,
                   ok=ops["ops_train_step"] <= goal)


def fits_in_card(report: Report, device: str) -> None:
    """Does original train at batch 6, 2 s within 12 GB (chunked_ckpt + checkpoint_blocks; triton)?"""
    candidates = {"chunked_ckpt + checkpoint_blocks": {"scan": "chunked_ckpt", "checkpoint_blocks": True}}
    if "triton" in runnable_scans(device):
        candidates["triton"] = {"scan": "triton"}
        candidates["triton + checkpoint_blocks"] = {"scan": "triton", "checkpoint_blocks": True}
    for label, fields in candidates.items():
        cfg = build_config("original", **fields)
        model = measured_model(cfg, device)
        make_workload(model, cfg, 1, 0.5, device, "float32").train()  # the context and library handles exist
        with emulated_card(CARD_GB * 2**30, device) as outside:
            row = {"setup": label, "outside_pool_mib": outside / MIB}
            try:
                work = make_workload(model, cfg, 6, 2.0, device, "float32")
                row |= {"fits": True, "peak_mib": cuda_peak_bytes(work.train, device) / MIB}
            except (RuntimeError, MemoryError) as err:
                if not is_oom(err):
                    raise
                row |= {"fits": False, "reason": first_line(err, 120)}
            finally:
                work = model = None
                release(device)
        report.add("original, batch 6, 2 s, in 12 GB", **row)


PLANNED_STEPS = ((1, 1.0), (4, 1.0), (1, 2.0), (4, 2.0))  # (batch, seconds): two batches x two lengths


def predicted_vs_measured(report: Report, device: str) -> None:
    """bench plan's predicted CUDA peaks of a training step beside the allocator's measured ones: original,
    optimized and bsrnn with the scan a plan assumes (auto: Triton), at two batches and two lengths."""
    for variant in VARIANTS:
        cfg = planner.planned_config(build_config(variant), "auto")
        for batch, seconds in PLANNED_STEPS:
            row = {"variant": variant, "scan": cfg.scan, "batch": batch, "seconds": seconds}
            try:
                row |= _measured_step(cfg, batch, seconds, device)
            except (RuntimeError, MemoryError) as err:
                if not is_oom(err):
                    raise
                row["measured"] = f"out of memory: {first_line(err, 80)}"
            release(device)
            predicted = planner.replayed(cfg, batch, seconds, "train", "float32")
            row |= {"pred_alloc_mib": predicted.peak_allocated / MIB,
                    "pred_reserved_mib": predicted.peak_reserved / MIB}
            for kind in ("alloc", "reserved"):
                if f"{kind}_mib" in row:
                    row[f"{kind}_error"] = f"{100 * (row[f'pred_{kind}_mib'] / row[f'{kind}_mib'] - 1):+.1f}%"
            report.add("predicted vs measured CUDA peaks", **row)


def _measured_step(cfg, batch: int, seconds: float, device: str) -> dict:
    """The allocator's peaks of one training step after a warm-up step (Adam's state exists), as bench plan
    traces it: fresh allocator, model and batch built, peaks reset after the warm-up."""
    release(device)
    torch.cuda.reset_peak_memory_stats(device)
    work = make_workload(measured_model(cfg, device), cfg, batch, seconds, device, "float32")
    work.train()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    work.train()
    torch.cuda.synchronize(device)
    return {"alloc_mib": torch.cuda.max_memory_allocated(device) / MIB,
            "reserved_mib": torch.cuda.max_memory_reserved(device) / MIB}


SKIPPED_WITHOUT_CUDA = [
    "scans vs float64 on CUDA at the models' shapes (checked here on the CPU, tiny shapes)",
    "the CUDA allocator's peak memory (the live-tensor instrument was checked instead)",
    "max batch in 12 GB by bisection on real CUDA OOMs",
    "profile rows at batch 6, 2 s on the GPU (done here at batch 1, 0.1 s on the CPU)",
    "whether original trains at batch 6, 2 s within 12 GB",
    "bench plan's predicted CUDA peaks beside measured ones (original, optimized, bsrnn; batch 1/4 x 1/2 s)",
]


def plan(cuda: bool) -> list[tuple[str, Callable[[Report, str], None]]]:
    """The checks to run, by name: on a GPU at the models' shapes, else the CPU-side ones on tiny shapes."""
    common = [("versions", check_versions), ("scan=auto here", check_auto)]
    if cuda:
        shapes = [(31, 251, 128, 12), (8, 251, 256, 16), (251, 31, 256, 16)]
        return [*common, ("scan vs float64", partial(check_scans, shapes=shapes)),
                ("peak memory instrument", check_memory_instrument), ("max batch in 12 GB", check_max_batch),
                ("profile", partial(profile_rows, batch=6, seconds=2.0, repeats=2)),
                ("original, batch 6, 2 s, in 12 GB", fits_in_card),
                ("predicted vs measured CUDA peaks", predicted_vs_measured)]
    return [*common, ("scan vs float64", partial(check_scans, shapes=[(2, 37, 6, 4)])),
            ("peak memory instrument", check_memory_instrument),
            ("profile", partial(profile_rows, batch=1, seconds=0.1, repeats=1)),
            ("ops of a training step, scan=triton (counted)", triton_ops)]


def run(report: Report, checks: list[tuple[str, Callable[[Report, str], None]]], device: str) -> Report:
    """Every check in isolation: one that raises adds a row with its error and the others go on.

    Rows land in `report` as they come, so a caller that writes it in a `finally` keeps what was measured.
    """
    for index, (name, check) in enumerate(checks, 1):
        status(f"[{index}/{len(checks)}] {name} ...")
        try:
            check(report, device)
        except Exception as err:  # a failing check is a result: one row with its error, the rest go on
            report.add(name, ok=False, error=error_line(err, 300))
        release(device)
    return report


def run_doctor(dry: bool, report: Report) -> Report:
    """The whole doctor: on CUDA unless dry; without it the CPU-side checks and the list of what was skipped."""
    cuda = torch.cuda.is_available() and not dry
    device = resolve_device("cuda" if cuda else "cpu")
    report.mode = "cuda" if cuda else "dry run (cpu)"
    if not cuda:
        report.skipped += SKIPPED_WITHOUT_CUDA
        if "triton" not in oracle_scans("cpu"):
            report.skipped.append("scan=triton (needs CUDA, or TRITON_INTERPRET=1 and triton on the CPU)")
        else:
            report.skipped.append("profile rows of scan=triton (the interpreter runs its oracle check only)")
    return run(report, plan(cuda), device)


PROFILE_COLUMNS = ["variant", "scan", "peak_train_mib", "peak_infer_mib", "train_step_s", "infer_step_s",
                   "rtf_infer", "ops_train_step", "ops_infer_step", "triton_launches_train_step", "timing"]


def table(report: Report) -> str:
    """The report as one table per kind of check (every row, its figures, ok / fits where it has one)."""
    lines = [f"mbsbench doctor: {report.mode}, {time.monotonic() - report.started:.0f} s"]
    for check in dict.fromkeys(row["check"] for row in report.rows):
        rows = [row for row in report.rows if row["check"] == check]
        columns = list(dict.fromkeys(k for r in rows for k in r))[1:]
        if check == "profile":
            columns = PROFILE_COLUMNS + [c for c in ("ok", "error") if c in columns]
        lines += ["", check, format_table(rows, columns, right=[c for c in columns if c not in ("variant", "scan")])]
    lines += [""] + [f"skipped: {item}" for item in report.skipped]
    return "\n".join(lines)


def write(report: Report, path: Path) -> None:
    path.write_text(json.dumps(report.to_dict(), indent=2, default=str))


def failed(report: Report) -> list[dict]:
    return [row for row in report.rows if row.get("ok") is False]
