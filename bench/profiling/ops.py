"""Launches per step: the aten ops one training or inference step dispatches, and the Triton kernels it launches.

Python-level loops over time or bands show up here: on a GPU each aten op costs at least one kernel
launch (5-20 us from Python), whatever the batch. The count does not depend on the device: on a
machine without CUDA the Triton kernels are counted without being run (scan_triton.counting_only).
"""

from contextlib import nullcontext

import torch

from bench.profiling.instruments import OpCounter
from bench.profiling.workload import ProfileSettings, make_workload
from variants.config import ModelConfig
from variants.scan_triton import counting_only


def count_ops(model, cfg: ModelConfig, settings: ProfileSettings, mode: str) -> dict[str, int]:
    """{'ops_MODE_step': aten ops, 'triton_launches_MODE_step': Triton launches} of one step after a warm-up."""
    s = settings
    run = make_workload(model, cfg, s.batch, s.seconds, s.device, s.dtype).step(mode)
    with counting_only() if torch.device(s.device).type != "cuda" else nullcontext():
        run()  # warm-up: optimizer state, lazy initialisations
        with OpCounter() as counter:
            run()
    return {f"ops_{mode}_step": counter.total, f"triton_launches_{mode}_step": counter.launches}
