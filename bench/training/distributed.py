"""Data-parallel training under torchrun: which rank this is, the process group, and the few collectives
the trainer needs so that every rank takes the same decisions at the same step.

World size 1 (no torchrun) is the single-process path: every function here is then a no-op.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from variants.errors import MbsbenchError, first_line

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


LAUNCHED = "MBSBENCH_LAUNCHED"  # set for the ranks launch_ranks starts: it reports a lost peer's cause itself
PEER_LOST_EXIT = 3


def peer_lost(err: BaseException) -> bool:
    """Whether a collective failed because another rank is gone (gloo and NCCL raise plain RuntimeErrors)."""
    import torch.distributed as dist

    text = str(err)
    return isinstance(err, dist.DistError) or (isinstance(err, RuntimeError) and (
        "gloo" in text or "NCCL" in text or "Connection reset by peer" in text or "Connection closed by peer" in text))


def stop_on_lost_peer(err: BaseException, ranks: Ranks) -> None:
    """In a rank whose peer is gone: quiet when our launcher will say which rank died, else one line."""
    if ranks.world == 1 or not peer_lost(err):
        return
    if os.environ.get(LAUNCHED):
        raise SystemExit(PEER_LOST_EXIT) from None
    raise MbsbenchError(f"rank {ranks.rank}: another rank is gone ({first_line(err, 160)}); "
                        "the same command with --resume continues from the last checkpoint") from None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_ranks(nproc: int, argv: list[str]) -> int:
    """`bench run ARGV` as `nproc` ranks on this machine, as torchrun --standalone starts them (the same
    environment) but without its 40-line report: rank 0 speaks; the first rank to fail stops the others and
    its one-line error is ours. The exit code: 0, 2 for an error, 128 + N for a rank killed by signal N."""
    env = os.environ | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(nproc),
                        "LOCAL_WORLD_SIZE": str(nproc), "GROUP_RANK": "0", LAUNCHED: "1"}
    with tempfile.TemporaryDirectory() as folder:
        logs = [Path(folder) / f"rank{rank}.err" for rank in range(nproc)]
        ranks = []
        for rank in range(nproc):
            with open(logs[rank], "w") as err:  # rank 0 writes to the terminal; the others' words are kept
                ranks.append(subprocess.Popen([sys.executable, "-m", "bench", *argv], stderr=None if rank == 0
                                              else err, env=env | {"RANK": str(rank), "LOCAL_RANK": str(rank)}))
        try:
            failed = _first_failure(ranks)
        except KeyboardInterrupt:  # Ctrl-C reached the ranks too; a SIGTERM to us alone is passed on
            for p in ranks:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in ranks:
                p.wait()
            raise
        return 0 if failed is None else _report(failed, ranks[failed].returncode, logs[failed])


def _first_failure(ranks: list[subprocess.Popen]) -> int | None:
    """Wait for every rank; on the first failure, the others get a moment to end alike, then a SIGTERM."""
    while all(p.poll() in (None, 0) for p in ranks) and any(p.poll() is None for p in ranks):
        time.sleep(0.2)
    if all(p.poll() == 0 for p in ranks):
        return None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(p.poll() is None for p in ranks):
        time.sleep(0.2)
    for p in ranks:
        if p.poll() is None:
            p.terminate()
    for p in ranks:
        p.wait()
    # the cause first: a rank killed, then rank 0's error (said already), then another rank's
    order = sorted(range(len(ranks)), key=lambda r: (ranks[r].returncode >= 0, ranks[r].returncode != 2, r))
    return next((r for r in order if ranks[r].returncode not in (0, PEER_LOST_EXIT, -signal.SIGTERM)), order[0])


def _report(rank: int, code: int, log: Path) -> int:
    """What the failed rank said, as the launcher's words (rank 0's are on the terminal already)."""
    said = log.read_text() if rank else ""
    if code < 0:
        name = signal.Signals(-code).name
        print(f"error: rank {rank} died of {name}; the other ranks were stopped; the same command with --resume "
              "continues from the last checkpoint", file=sys.stderr)
        return 128 - code
    errors = [line for line in said.splitlines() if line.startswith("error: ")]
    if errors:
        print(f"error: rank {rank}: {errors[-1][len('error: '):]}", file=sys.stderr)
    elif said:
        print(said, end="", file=sys.stderr)  # not one of our errors (a bug): the rank's own traceback
    return 2 if code == 2 else code
