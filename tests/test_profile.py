"""Profiler: MAC counts against hand counts and ptflops, memory against known allocations, OOM as a result."""

import warnings

import pytest
import torch
from torch import nn

from bench.profiling import memory as profile
from bench.profiling.macs import count_macs, matmul_macs
from bench.profiling.memory import MemoryCurve, peak_bytes
from bench.profiling.ops import count_ops
from bench.profiling.steps import measure_step
from bench.profiling.workload import ProfileSettings, make_workload
from variants.errors import MbsbenchError
from variants.registry import build, build_config, resolve


def test_linear_macs_by_hand() -> None:
    layer = nn.Linear(10, 20)
    assert matmul_macs(lambda: layer(torch.randn(3, 10))) == 3 * 10 * 20


def test_conv1d_macs_by_hand() -> None:
    conv = nn.Conv1d(4, 8, kernel_size=3)
    assert matmul_macs(lambda: conv(torch.randn(1, 4, 50))) == 4 * 8 * 3 * 48


def test_lstm_macs_by_hand() -> None:
    """4 gates x hidden x (input + hidden) per step; oneDNN off so the LSTM is counted at all."""
    lstm = nn.LSTM(5, 7, batch_first=True)
    assert matmul_macs(lambda: lstm(torch.randn(1, 11, 5))) == 4 * 7 * (5 + 7) * 11


def test_depthwise_conv_in_a_mamba_block_counts() -> None:
    conv = nn.Conv1d(16, 16, 4, groups=16, padding=3)
    assert matmul_macs(lambda: conv(torch.randn(2, 16, 10))) == 2 * 16 * 4 * 13


@pytest.mark.parametrize("name", ["optimized", "bsrnn"])
def test_matmul_macs_agree_with_ptflops(name: str) -> None:
    from ptflops import get_model_complexity_info

    model = build(name).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs, _ = get_model_complexity_info(
            model, (16000,), as_strings=False, print_per_layer_stat=False, backend="pytorch", verbose=False
        )
    ours = count_macs(model, resolve(name), 1.0, "cpu")["matmul_macs_g_per_s"] * 1e9
    # ptflops also counts norms and activations, which we leave out: it may be a little higher
    assert ours <= theirs <= ours * 1.05


def test_scan_macs_follow_the_formula() -> None:
    cfg = resolve("optimized")
    macs = count_macs(build("optimized").eval(), cfg, 0.5, "cpu")
    frames, bands = 8000 // 128 + 1, 31
    per_block = 4 * bands * frames * cfg.d_inner * cfg.d_state + bands * frames * cfg.d_inner
    assert macs["scan_macs_g_per_s"] * 1e9 * 0.5 == pytest.approx(cfg.temporal_layers * per_block)
    assert count_macs(build("bsrnn").eval(), resolve("bsrnn"), 0.25, "cpu")["scan_macs_g_per_s"] == 0


class Allocates(nn.Module):
    """A dummy model that allocates a known 16 MiB scratch tensor in its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scratch = torch.ones(4, 1024, 1024)  # 16 MiB
        return x * self.scale + scratch.mean()


def test_peak_finds_a_known_allocation() -> None:
    model = Allocates()
    x = torch.randn(10)
    peak = peak_bytes(lambda: model(x), [*model.parameters(), x], "cpu")
    assert peak == pytest.approx(16 * 2**20, rel=0.1)


def test_original_trains_with_more_memory_than_optimized() -> None:
    settings = ProfileSettings(batch=1, seconds=0.1, rss=False)
    peaks = {}
    for name in ("original", "optimized"):
        cfg = resolve(name)
        point = MemoryCurve(build(name), cfg, settings).measure(1, 0.1, "train")
        assert point["status"] == "ok"
        peaks[name] = point["peak_bytes"]
    assert peaks["original"] > 2 * peaks["optimized"]


@pytest.mark.parametrize(("name", "mode"),
                         [("optimized", "train"), ("optimized", "infer"), ("optimized_seed", "train")])
def test_one_workload_gives_a_steps_memory_ops_and_timing(name: str, mode: str) -> None:
    """measure_step: the optimizer state primed, one instrumented call, the timed repeats (1 + repeats whole
    forwards, not 5 + repeats); its peak and op count are those of the separate measurements, which warm up with a
    whole step (optimized_seed: its D is unused, so no gradient of it may be primed either)."""
    cfg = build_config(name, feature_dim=16, temporal_layers=1)
    settings = ProfileSettings(batch=2, seconds=0.5, repeats=2)
    model = build(name, feature_dim=16, temporal_layers=1)
    forwards = []
    model.register_forward_hook(lambda _module, args, _out: forwards.append(args[0].shape))
    point, figures = measure_step(MemoryCurve(model, cfg, settings), mode)
    assert forwards.count((2, 8000)) == 1 + settings.repeats
    work = make_workload(model, cfg, 2, 0.5, "cpu", "float32")
    run = work.step(mode)
    run()  # a whole warm-up step, where measure_step primes the optimizer
    warm = peak_bytes(run, work.resident(), "cpu")
    assert figures[f"peak_mem_{mode}_mib"] * 2**20 == point["peak_bytes"] == warm
    assert figures[f"ops_{mode}_step"] == count_ops(model, cfg, settings, mode)[f"ops_{mode}_step"] > 100
    assert figures[f"{mode}_step_min_s"] <= figures[f"{mode}_step_s"] <= figures[f"{mode}_step_max_s"]
    assert "figures" not in point


def test_predicted_oom_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = build_config("optimized", feature_dim=32)
    curve = MemoryCurve(build("optimized", feature_dim=32), cfg, ProfileSettings(batch=1, seconds=0.1))
    assert curve.measure(1, 0.1)["status"] == "ok"
    monkeypatch.setattr(profile, "available_bytes", lambda: 1000)
    point = curve.measure(4, 0.1)
    assert point["status"] == "oom" and "predicted" in point["reason"]
    assert len(curve.points) == 2


def test_real_allocator_oom_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99999999999 bytes")

    cfg = build_config("optimized", feature_dim=32)
    curve = MemoryCurve(build("optimized", feature_dim=32), cfg, ProfileSettings(batch=1, seconds=0.1))
    monkeypatch.setattr(profile, "peak_bytes", explode)
    point = curve.measure(1, 0.1)
    assert point["status"] == "oom" and "can't allocate" in point["reason"]


def test_max_batch_from_a_line() -> None:
    curve = MemoryCurve(None, resolve("optimized"), ProfileSettings())
    curve.points = [
        {"mode": "train", "batch": 1, "seconds": 2.0, "status": "ok", "peak_bytes": 3 * 2**30, "fixed_bytes": 0},
        {"mode": "train", "batch": 3, "seconds": 2.0, "status": "ok", "peak_bytes": 7 * 2**30, "fixed_bytes": 0},
    ]
    # 1 GiB fixed + 2 GiB per utterance: 12 GiB fits 5
    assert profile.max_batch_predicted(curve, 2.0, 12 * 2**30) == 5
    # one point: the line through it and its measured batch-independent part
    curve.points = [{"mode": "train", "batch": 2, "seconds": 2.0, "status": "ok", "peak_bytes": 5 * 2**30,
                     "fixed_bytes": 2**30}]
    assert profile.max_batch_predicted(curve, 2.0, 12 * 2**30) == 5


@pytest.mark.parametrize(
    "kwargs,fragment",
    [({"batch": 0}, "--batch 0"), ({"seconds": -1.0}, "length -1.0 s"), ({"dtype": "fp8"}, "--dtype 'fp8'"),
     ({"budget_gb": 0.0}, "--budget-gb 0.0")],
)
def test_bad_settings(kwargs: dict, fragment: str) -> None:
    with pytest.raises(MbsbenchError, match=fragment):
        ProfileSettings(**kwargs)


@pytest.mark.processes  # the probe is a fresh process per measurement
def test_rss_probe_measures_its_own_process() -> None:
    """A fresh process's peak RSS is its own, not inherited from a parent that used more."""
    import numpy as np

    from bench.profiling.rss import peak_rss_mib, peak_rss_subprocess

    ballast = np.ones(2**30 // 8)  # 1 GiB touched in this process
    parent = peak_rss_mib()
    cfg = build_config("optimized", feature_dim=16, temporal_layers=1)
    small = peak_rss_subprocess(cfg, ProfileSettings(batch=1, seconds=0.1), "infer")
    big = peak_rss_subprocess(cfg, ProfileSettings(batch=4, seconds=2.0), "train")
    assert ballast.sum() > 0 and parent > 1024
    assert 50 < small < parent - 500
    assert small < big
