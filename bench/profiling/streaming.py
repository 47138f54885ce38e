"""Streaming figures of a causal variant: latency, compute per hop, real-time factor, state, the DNS rule."""

import statistics
import tempfile
import time
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


def measure_stream(cfg: ModelConfig, seconds: float = 10.0, runtime: str = "torch", seed: int = 0) -> dict:
    """Push `seconds` of noise one hop at a time (batch 1) and time each push (the model stepped by torch, or its
    exported ONNX step by onnxruntime); the probe's latency beside it."""
    model = build_model(cfg).eval()
    check_streamable(model)
    found = probe(build_model(cfg), cfg, (seed,))
    if not found.causal:
        raise MbsbenchError(f"cannot stream this model: it reads ahead in {', '.join(found.reads_ahead)}")
    hop = cfg.hop
    wav = torch.randn(1, int(seconds * cfg.sample_rate), generator=torch.Generator().manual_seed(seed)) * 0.1
    with tempfile.TemporaryDirectory() as folder:
        runner = OnnxStep(export_onnx(FrameStep(model), Path(folder) / "step.onnx"), FrameStep(model)) \
            if runtime == "onnxruntime" else None
        engine = StreamingEnhancer(model, runner=runner)
    times = []
    with CpuWindow() as window:
        for index, start in enumerate(range(0, wav.shape[1] - hop + 1, hop)):
            began = time.perf_counter()
            engine.push(wav[:, start:start + hop])
            if index >= WARMUP_HOPS:
                times.append(time.perf_counter() - began)
    if not times:
        raise MbsbenchError(f"--seconds {seconds}: fewer than {WARMUP_HOPS} hops; expected a longer stream")
    hop_ms = 1000 * hop / cfg.sample_rate
    ms = sorted(1000 * t for t in times)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    row = {"device": device_name("cpu"), "seconds": seconds, "latency_ms": found.latency_ms, "hop_ms": hop_ms,
           "hop_compute_median_ms": statistics.median(ms), "hop_compute_p99_ms": p99, "hop_compute_max_ms": ms[-1],
           "rtf": statistics.fmean(ms) / hop_ms, "state_kib": engine.state_bytes() / 1024, "hops_timed": len(ms),
           "threads": torch.get_num_threads(), "runtime": runtime}
    row["dns_rule"] = "pass" if found.latency_ms <= DNS_LATENCY_MS and ms[-1] < hop_ms else "fail"
    _, contended, label = timing_label([{"other_cores": window.other_cores, "contended": window.contended}])
    return row | {"timing": label, "timing_contended": contended, "timing_other_cores": window.other_cores}
