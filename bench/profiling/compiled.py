"""Compiled steps: the model under torch.compile (inductor), timed beside eager, its compile time kept apart.

The first call of each mode (inference, training) pays the compilation: that wall time is `compile_s_<mode>`,
never folded into the steady-state step time, which is timed afterwards like the eager one. On this CPU the
trade is a poor one (README, "Compiled steps"): the scans' loops unroll into one large graph.
"""

import shutil
import sys
import time

import torch
from torch import nn

from bench.profiling.instruments import synchronize, time_call
from bench.profiling.workload import ProfileSettings, make_workload
from variants.config import ModelConfig
from variants.errors import MbsbenchError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
CXX_COMPILERS = ("g++", "c++", "clang++")


def compile_unavailable(mode: str, device: str) -> str:
    """Why torch.compile cannot run here in this mode ('' where it can): what is missing, named."""
    if mode not in COMPILE_MODES:
        return f"--compile {mode!r}: expected one of {', '.join(COMPILE_MODES)}"
    if sys.platform == "win32":
        return "--compile: torch.compile's inductor backend is not supported on Windows"
    if mode == "reduce-overhead" and torch.device(device).type != "cuda":
        return "--compile reduce-overhead: CUDA graphs need a CUDA device; use default or max-autotune here"
    if torch.device(device).type == "cpu" and not any(shutil.which(name) for name in CXX_COMPILERS):
        return f"--compile: inductor needs a C++ compiler on the CPU and none of {', '.join(CXX_COMPILERS)} is on PATH"
    return ""


def check_compile(mode: str | None, device: str) -> None:
    """A one-line refusal before any work, never a silent fallback to eager."""
    reason = compile_unavailable(mode, device) if mode else ""
    if reason:
        raise MbsbenchError(reason)


def compiled_figures(model: nn.Module, cfg: ModelConfig, settings: ProfileSettings, mode: str) -> dict:
    """First-call (compile) seconds and steady-state step times of the compiled model, per mode, and how many
    times it compiled again after its first graph (grad mode and shapes are guards)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    out: dict = {"compiled": mode}
    s = settings
    with torch._dynamo.config.patch(allow_rnn=True):  # bsrnn's LSTMs: traced, not a graph break
        compiled = torch.compile(model, mode=mode)
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
