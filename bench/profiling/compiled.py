"""Compiled steps: the model under torch.compile (inductor), timed beside eager, its compile time kept apart.

The first call of each mode (inference, training) pays the compilation: that wall time is `compile_s_<mode>`,
never folded into the steady-state step time, which is timed afterwards like the eager one. On this CPU the
trade is a poor one (README, "Compiled steps"): the scans' loops unroll into one large graph.
"""

import time

import torch
from torch import nn

from bench.compiling import compile_model
from bench.profiling.instruments import synchronize, time_call
from bench.profiling.workload import ProfileSettings, make_workload
from variants.config import ModelConfig


def compiled_figures(model: nn.Module, cfg: ModelConfig, settings: ProfileSettings, mode: str) -> dict:
    """First-call (compile) seconds and steady-state step times of the compiled model, per mode, and how many
    times it compiled again after its first graph (grad mode and shapes are guards)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    out: dict = {"compiled": mode}
    s = settings
    compiled = compile_model(model, mode)
    for step_mode in ("infer", "train"):
        step = make_workload(compiled, cfg, s.batch, s.seconds, s.device, s.dtype).step(step_mode)
        start = time.perf_counter()
        step()
        synchronize(s.device)
        out[f"compile_s_{step_mode}"] = time.perf_counter() - start
        timing = time_call(step, s.repeats, s.warmup, s.device)
        out[f"compiled_{step_mode}_step_s"] = timing["median_s"]
    out["recompiles"] = max(counters["frames"]["ok"] - 1, 0)
    out["compiled_graphs"] = counters["stats"]["unique_graphs"]
    return out
