"""Data-parallel training under torchrun: which rank this is, the process group, and the few collectives
the trainer needs so that every rank takes the same decisions at the same step.

World size 1 (no torchrun) is the single-process path: every function here is then a no-op.
"""

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from variants.errors import MbsbenchError

if TYPE_CHECKING:  # torch is imported where a collective runs: a world of one never needs it here
    from torch import nn

GROUP_TIMEOUT = timedelta(hours=2)  # rank 0 validates and checkpoints while the others wait at the next step


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank, world size, and the rank on this machine."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: it validates, checkpoints, evaluates, runs the metric pool and logs."""
        return self.rank == 0


SINGLE = Ranks()  # the world of one process


def from_environment() -> Ranks:
    """The ranks torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK), or a world of one."""
    try:
        return Ranks(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise MbsbenchError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None


def start(ranks: Ranks, device: str) -> str:
    """Join the process group (NCCL on CUDA, gloo on CPU); this rank's device (cuda:LOCAL_RANK on CUDA)."""
    if ranks.world == 1:
        return device
    import torch
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        if torch.cuda.device_count() <= ranks.local:
            raise MbsbenchError(f"rank {ranks.rank} wants cuda:{ranks.local}, but this machine has "
                                f"{torch.cuda.device_count()} CUDA devices")
        device = f"cuda:{ranks.local}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=GROUP_TIMEOUT)
    return device


def stop() -> None:
    """Leave the process group (after the last collective)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def mean(value: float, ranks: Ranks, device: str) -> float:
    """The mean of a number over the ranks (a step's loss: the mean of equal shares is the batch's mean)."""
    if ranks.world == 1:
        return value
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor) / ranks.world


def any_rank(flag: bool, ranks: Ranks, device: str) -> bool:
    """True on every rank when it is true on one (stop requests, budgets: every rank stops at one step)."""
    if ranks.world == 1:
        return flag
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor)


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        import torch.distributed as dist

        dist.barrier()


def data_parallel(module: "nn.Module", ranks: Ranks, device: str) -> "nn.Module":
    """The module a training step calls: itself, or DistributedDataParallel of it in a world of several."""
    if ranks.world == 1:
        return module
    import torch
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(device).index] if torch.device(device).type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """`bench run --nproc G ...` as the torchrun command that starts G ranks of `bench run ...`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "bench", *argv]
