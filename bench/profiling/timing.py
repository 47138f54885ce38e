"""Step times: median and spread of repeats, real-time factor, and where the time of one step goes."""

from collections.abc import Callable

import torch
from torch import nn

from bench.profiling.instruments import time_call
from bench.profiling.workload import ProfileSettings, make_workload
from variants.config import ModelConfig


def throughput(model: nn.Module, cfg: ModelConfig, settings: ProfileSettings, mode: str) -> dict:
    """Median step time, spread, real-time factor and audio seconds per second of one mode, and the other
    processes' cores in use while it was timed (contended when half a core or more)."""
    s = settings
    work = make_workload(model, cfg, s.batch, s.seconds, s.device, s.dtype)
    return step_throughput(work.step(mode), s, mode, s.warmup)


def step_throughput(step: Callable[[], None], settings: ProfileSettings, mode: str, warmup: int) -> dict:
    """throughput's figures of a bound step (`warmup` calls first: none when the step is already warm)."""
    s = settings
    timing = time_call(step, s.repeats, warmup, s.device)
    audio = s.batch * s.seconds
    return {
        f"{mode}_step_s": timing["median_s"],
        f"{mode}_step_min_s": timing["min_s"],
        f"{mode}_step_max_s": timing["max_s"],
        f"rtf_{mode}": timing["median_s"] / audio,
        f"{mode}_audio_s_per_s": audio / timing["median_s"],
        f"{mode}_other_cores": timing["other_cores"],
        f"{mode}_contended": timing["contended"],
    }


def top_ops_table(model: nn.Module, cfg: ModelConfig, settings: ProfileSettings, mode: str, rows: int = 15) -> str:
    """torch.profiler's table of the ops that took the most self time in one step (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    s = settings
    run = make_workload(model, cfg, s.batch, s.seconds, s.device, s.dtype).step(mode)
    run()
    cuda = torch.device(s.device).type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        run()
        if cuda:
            torch.cuda.synchronize(s.device)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=48)
