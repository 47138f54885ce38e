"""`bench profile`: every figure of a variant under stated conditions; profile_variants is the one loop."""

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace

import torch

from bench.compiling import compile_wait
from bench.console import status
from bench.devices import device_name
from bench.interrupts import ignore_interrupts
from bench.planning.plan import predicted_cuda
from bench.profiling.compiled import compiled_figures
from bench.profiling.contention import timing_conditions
from bench.profiling.macs import count_macs
from bench.profiling.memory import MemoryCurve, max_batch_cuda, max_batch_predicted
from bench.profiling.ops import count_ops
from bench.profiling.params import check_weights_fit
from bench.profiling.rss import try_peak_rss
from bench.profiling.steps import measure_step
from bench.profiling.workload import ProfileSettings, measured_model
from variants.config import ModelConfig
from variants.errors import MbsbenchError, error_line
from variants.layers import resolve_scan
from variants.registry import build_config
from variants.scan_triton import counting_only

COMPARE_VARIANTS = ("original", "optimized", "optimized_a", "bsrnn")


def _train_points(settings: ProfileSettings) -> list[tuple[int, float]]:
    """(batch, seconds) points of the training-memory curve, smallest first."""
    s = settings
    points = {(s.batch, s.seconds)} | {(s.batch, length) for length in s.lengths}
    return sorted(points, key=lambda p: p[0] * p[1])


def _step_figures(model, cfg: ModelConfig, s: ProfileSettings) -> tuple[dict, set[str]]:
    """Peak memory of training (every curve point) and inference, ops and timing of both steps at the
    settings' point, the largest batch in the budget, and the modes that fitted."""
    curve, out = MemoryCurve(model, cfg, s), {}
    for batch, seconds in _train_points(s):
        if (batch, seconds) == (s.batch, s.seconds):
            train, figures = measure_step(curve, "train")
            out |= figures
        else:
            curve.measure(batch, seconds, "train")
    infer, figures = measure_step(curve, "infer")
    out |= figures
    out |= {"status": "ok" if train["status"] == "ok" else "oom", "reason": train.get("reason", "")}
    out.setdefault("peak_mem_train_mib", None)
    out.setdefault("peak_mem_infer_mib", None)
    out["memory_curve"] = [{k: v for k, v in p.items() if k != "units"} for p in curve.points]
    budget = s.budget_gb * 2**30
    if torch.device(s.device).type == "cuda":
        out["max_batch_train"], out["max_batch_method"] = max_batch_cuda(model, cfg, s, budget), "measured"
    else:
        out["max_batch_train"], out["max_batch_method"] = max_batch_predicted(curve, s.seconds, budget), "predicted"
    return out, {p["mode"] for p in (train, infer) if p["status"] == "ok"}


def profile_variant(name: str, cfg: ModelConfig, settings: ProfileSettings) -> dict:
    """Every figure of one variant under the stated conditions; OOMs recorded, never raised."""
    s = settings
    model = measured_model(cfg, s.device)
    out: dict = {"variant": name, **asdict(s), "device": device_name(s.device), "threads": torch.get_num_threads()}
    out["params"] = sum(p.numel() for p in model.parameters())
    out["params_m"] = out["params"] / 1e6
    if s.ops_only:  # what needs no kernel to run: a Triton scan's op counts on a machine without CUDA
        with counting_only():
            out |= count_macs(model, cfg, s.seconds, s.device)
        return out | count_ops(model, cfg, s, "train") | count_ops(model, cfg, s, "infer") | {"status": "ok"}
    status("  MACs ...")
    out |= count_macs(model, cfg, s.seconds, s.device)
    status(f"  training and inference steps: a warm-up, peak memory and ops of one, {s.repeats} timed; max batch "
           f"in {s.budget_gb} GiB ...")
    steps, fitted = _step_figures(model, cfg, s)
    out |= steps
    if s.predict:
        status(f"  predicted CUDA peaks and max batch in {s.budget_gb} GiB (bench plan) ...")
        out |= predicted_cuda(cfg, s)
    if torch.device(s.device).type == "cpu" and s.rss:
        status("  peak RSS in fresh processes ...")
        for mode in ("train", "infer"):
            out[f"peak_rss_{mode}_mib"] = try_peak_rss(cfg, s, mode) if mode in fitted else None
    if s.compile and fitted == {"infer", "train"}:
        status(f"  compiled steps (torch.compile, mode {s.compile}): first call, then timed"
               f"{compile_wait(cfg.arch, resolve_scan(cfg, torch.device(s.device)))} ...")
        out |= compiled_figures(model, cfg, s, s.compile)
    return out | timing_conditions(out, s.strict_timing)


def failure_row(name: str, settings: ProfileSettings, err: Exception) -> dict:
    """The row of a profile that raised: its reason recorded, so that a sweep goes on."""
    reason = error_line(err, 300)
    status(f"  {name} failed: {reason}")
    return {"variant": name, "device": device_name(settings.device), "status": "error", "reason": reason,
            "memory_curve": []}


def profile_variants(configs: dict[str, ModelConfig], settings: ProfileSettings,
                     record: Callable[[dict, ModelConfig], str] | None = None, rows: list | None = None) -> list[dict]:
    """profile_variant of each (name, config) in turn, each recorded as it finishes and appended to `rows` (a caller
    that passes its list keeps the rows done when interrupted); a failure is a row."""
    rows = [] if rows is None else rows
    check_weights_fit(configs, settings.device)  # every one before the first is profiled
    for index, (name, cfg) in enumerate(configs.items(), 1):
        status(f"[{index}/{len(configs)}] profiling {name} ...")
        try:
            row = profile_variant(name, cfg, settings)
        except MbsbenchError:
            raise
        except Exception as err:  # a failure is a result: recorded with its reason
            row = failure_row(name, settings, err)
        if record is not None:
            row["run_id"] = record(row, cfg)
        rows.append(row)
    return rows


def compare_scans(names: list[str], scans: list[str], chunks: list[int], settings: ProfileSettings,
                  overrides: dict | None = None) -> list[dict]:
    """Step times and training peak memory of each variant with each scan (and chunk size).

    Each row runs in a fresh process: what one model leaves in the allocator (a raised mmap
    threshold, a fragmented heap) moved the next model's times by up to 50% in one process.
    """
    jobs = []
    for name in names:
        base = build_config(name, **(overrides or {}))
        combos = [(base.scan, base.chunk_size)] if base.arch != "mbsnet" else \
            [(scan, chunk) for scan in scans for chunk in (chunks if scan != "naive" else [base.chunk_size])]
        jobs += [(name, replace(base, scan=scan, chunk_size=chunk)) for scan, chunk in combos]
    rows = []
    for index, (name, cfg) in enumerate(jobs, 1):
        scan = cfg.scan if cfg.arch == "mbsnet" else "-"
        status(f"[{index}/{len(jobs)}] {name} scan={scan} chunk={cfg.chunk_size} ...")
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=ignore_interrupts) as pool:
            row = pool.submit(_compare_row, cfg, settings).result()
        rows.append({"variant": name, "scan": scan, "chunk": cfg.chunk_size} | row)
    return rows


def _compare_row(cfg: ModelConfig, settings: ProfileSettings) -> dict[str, float]:
    curve = MemoryCurve(measured_model(cfg, settings.device), cfg, settings)
    row = measure_step(curve, "infer")[1] | {"peak_mem_train_mib": None} | measure_step(curve, "train")[1]
    return row | timing_conditions(row, settings.strict_timing)
