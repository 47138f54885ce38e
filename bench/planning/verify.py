"""The tracer checked on this machine: a traced step's live-tensor peak beside the one real CPU tensors reach."""

import gc
from dataclasses import replace

from bench.planning.plan import MIB, replayed
from bench.profiling.memory import peak_bytes, swap_and_ram_bytes
from bench.profiling.workload import make_workload, measured_model
from variants.config import ModelConfig
from variants.errors import MbsbenchError

CPU_SCANS = ("auto", "chunked_ckpt", "chunked", "naive")  # what a CPU runs ('auto': the variant's own choice)
HEADROOM = 1.1  # the step's tensors plus the interpreter, the allocator's slack and the model's copy


def verified_config(cfg: ModelConfig, scan: str) -> ModelConfig:
    """The config the CPU check runs: the variant's own scan for 'auto', else the one asked for."""
    if scan not in CPU_SCANS:
        raise MbsbenchError(f"--verify runs the step on this CPU: --scan {scan!r} needs a GPU; expected one of "
                            f"{', '.join(CPU_SCANS)}")
    return cfg if scan == "auto" else replace(cfg, scan=scan)


def require_room(cfg: ModelConfig, batch: int, seconds: float, mode: str = "train") -> int:
    """The traced live peak of the step (bytes); a one-line refusal when RAM and swap cannot hold it."""
    traced = replayed(cfg, batch, seconds, mode, "float32").peak_live
    room = swap_and_ram_bytes()
    if traced * HEADROOM > room:
        raise MbsbenchError(f"--verify: the step needs about {traced * HEADROOM / MIB:,.0f} MiB of real memory; this "
                            f"machine has {room / MIB:,.0f} MiB available (RAM and swap)")
    return traced


def cpu_check(cfg: ModelConfig, batch: int, seconds: float, mode: str = "train") -> dict:
    """Traced (no allocator) and measured peak live-tensor bytes of one float32 step on this CPU, and the error.

    The measured step is the one `bench profile --device cpu` measures: after a warm-up that creates the
    optimizer state, parameters, optimizer state and input counted as resident.
    """
    traced = require_room(cfg, batch, seconds, mode)
    work = make_workload(measured_model(cfg, "cpu"), cfg, batch, seconds, "cpu", "float32")
    run = work.step(mode)
    run()
    measured = peak_bytes(run, work.resident(), "cpu")
    del work, run
    gc.collect()
    return {"verify_scan": cfg.scan, "traced_live_peak_mib": traced / MIB, "measured_live_peak_mib": measured / MIB,
            "verify_error_pct": 100 * (traced - measured) / measured}
