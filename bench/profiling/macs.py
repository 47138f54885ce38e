"""MACs per second of audio: matmuls, convolutions and LSTMs counted by torch, the selective scan by formula."""

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.profiling.workload import samples
from variants.config import ModelConfig
from variants.layers import SelectiveSSM

SSM_CHILDREN = ("conv1d", "x_proj_dt", "dt_proj", "B_proj", "C_proj")


@contextmanager
def flop_counter() -> Iterator[FlopCounterMode]:
    """FlopCounterMode under no_grad with oneDNN and cuDNN off: their fused LSTM kernels have no flop formula, so
    an LSTM would count 0 MACs; off, it runs as torch's own matmuls (the same math), which the counter sees."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # oneDNN's flag setter warns about Intel GPUs
        with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False), torch.backends.cudnn.flags(enabled=False), \
                FlopCounterMode(display=False) as counter:
            yield counter


def matmul_macs(run: Callable[[], object]) -> int:
    """MACs of the matmuls, convolutions and LSTMs in run()."""
    with flop_counter() as counter:
        run()
    return counter.get_total_flops() // 2


def count_macs(model: nn.Module, cfg: ModelConfig, seconds: float, device: str) -> dict[str, float]:
    """MACs per second of audio (batch 1): matmul/conv/LSTM from FlopCounterMode, the scan by formula.

    The scan's own readout einsum, which the counter sees inside each SSM, is moved from the
    matmul column to the formula column.
    """
    shapes: list[tuple[int, int, int, int]] = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: shapes.append((*args[0].shape, mod.A_log.shape[1])))
        for m in model.modules() if isinstance(m, SelectiveSSM)
    ]
    wav = torch.randn(1, samples(cfg, seconds), device=device)
    with flop_counter() as counter:
        model(wav)
    for hook in hooks:
        hook.remove()
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    scan_counted = 0
    for name in [n for n in per_module if n.endswith(".ssm") and n.startswith(root + ".")]:
        scan_counted += per_module[name] - sum(per_module.get(f"{name}.{c}", 0) for c in SSM_CHILDREN)
    matmul = (counter.get_total_flops() - scan_counted) / 2
    # per (b, l, d, n): delta*A, (delta*u)*B, the state update and the readout; plus D*u per (b, l, d)
    scan = sum(4 * b * steps * d * n + b * steps * d for b, steps, d, n in shapes)
    return {
        "matmul_macs_g_per_s": matmul / seconds / 1e9,
        "scan_macs_g_per_s": scan / seconds / 1e9,
        "macs_g_per_s": (matmul + scan) / seconds / 1e9,
    }
