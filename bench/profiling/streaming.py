"""Streaming figures of a causal variant: latency, compute per hop, real-time factor, state, the DNS rule."""

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.devices import device_name
from bench.export import OnnxStep, export_onnx
from bench.profiling.causality import probe
from bench.profiling.contention import CpuWindow, timing_label
from variants.config import ModelConfig
from variants.errors import MbsbenchError
from variants.registry import build_model
from variants.streaming import FrameStep, StreamingEnhancer, check_streamable

DNS_LATENCY_MS = 40.0  # the DNS challenge's real-time track: algorithmic latency at most 40 ms
WARMUP_HOPS = 20  # hops pushed before the timing (the first ones emit nothing and allocate)


RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class StreamSettings:
    """How a stream is measured: seconds of noise, pushed `chunk` samples at a time (a multiple of the hop; 0:
    one hop), stepped by torch or by the exported ONNX step in onnxruntime."""

    seconds: float = 10.0
    chunk: int = 0
    runtime: str = "torch"
    seed: int = 0


def measure_stream(cfg: ModelConfig, settings: StreamSettings) -> dict:
    """Push the noise chunk by chunk (batch 1) and time each push, per hop; the probe's latency beside it."""
    model = build_model(cfg).eval()
    check_streamable(model)
    chunk = settings.chunk or cfg.hop
    if chunk % cfg.hop:
        raise MbsbenchError(f"--chunk {chunk}: expected a multiple of the hop ({cfg.hop} samples)")
    found = probe(build_model(cfg), cfg, (settings.seed,))
    if not found.causal:
        raise MbsbenchError(f"cannot stream this model: it reads ahead in {', '.join(found.reads_ahead)}")
    noise = torch.Generator().manual_seed(settings.seed)
    wav = torch.randn(1, int(settings.seconds * cfg.sample_rate), generator=noise) * 0.1
    with tempfile.TemporaryDirectory() as folder:
        step = FrameStep(model)
        runner = OnnxStep(export_onnx(step, Path(folder) / "step.onnx"), step) if settings.runtime == "onnxruntime" \
            else None
        engine = StreamingEnhancer(model, runner=runner)
    ms, window = _timed_pushes(engine, wav, chunk, chunk // cfg.hop)
    hop_ms = 1000 * cfg.hop / cfg.sample_rate
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    row = {"device": device_name("cpu"), "seconds": settings.seconds, "chunk": chunk, "latency_ms": found.latency_ms,
           "hop_ms": hop_ms, "hop_compute_median_ms": statistics.median(ms), "hop_compute_p99_ms": p99,
           "hop_compute_max_ms": ms[-1], "rtf": statistics.fmean(ms) / hop_ms, "state_kib": engine.state_bytes() / 1024,
           "pushes_timed": len(ms), "threads": torch.get_num_threads(), "runtime": settings.runtime}
    row["dns_rule"] = "pass" if found.latency_ms <= DNS_LATENCY_MS and ms[-1] < hop_ms else "fail"
    _, contended, label = timing_label([{"other_cores": window.other_cores, "contended": window.contended}])
    return row | {"timing": label, "timing_contended": contended, "timing_other_cores": window.other_cores}


def _timed_pushes(engine: StreamingEnhancer, wav: torch.Tensor, chunk: int, hops: int) -> tuple[list[float], CpuWindow]:
    """Milliseconds per hop of each push after the warm-up (sorted), and the CPU window they ran in."""
    times = []
    with CpuWindow() as window:
        for index, start in enumerate(range(0, wav.shape[1] - chunk + 1, chunk)):
            began = time.perf_counter()
            engine.push(wav[:, start:start + chunk])
            if index * hops >= WARMUP_HOPS:
                times.append((time.perf_counter() - began) / hops)
    if not times:
        raise MbsbenchError(f"a stream of {wav.shape[1]} samples: fewer than {WARMUP_HOPS} hops after the "
                            "warm-up; expected a longer --seconds")
    return sorted(1000 * t for t in times), window
