"""Peak resident set of one step, measured in a fresh process (this module is also that process)."""

import json
import resource
import subprocess
import sys

from bench.profiling.memory import MemoryExceededError
from bench.profiling.workload import ProfileSettings, make_workload
from variants.config import ModelConfig
from variants.registry import build_model


def peak_rss_subprocess(cfg: ModelConfig, settings: ProfileSettings, mode: str) -> float:
    """Peak resident set (MiB) of a fresh process that builds the model and runs one step."""
    probe = {"config": cfg.to_dict(), "mode": mode, "batch": settings.batch, "seconds": settings.seconds,
             "dtype": settings.dtype}
    command = [sys.executable, "-m", "bench.profiling.rss", json.dumps(probe)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["killed"])[-1]
        raise MemoryExceededError(f"RSS probe failed ({proc.returncode}): {last[:200]}")
    return json.loads(proc.stdout)["peak_rss_mib"]


def try_peak_rss(cfg: ModelConfig, settings: ProfileSettings, mode: str) -> float | None:
    """peak_rss_subprocess, or None when the probe ran out of memory."""
    try:
        return peak_rss_subprocess(cfg, settings, mode)
    except MemoryExceededError:
        return None


def peak_rss_mib() -> float:
    """This process's resident high-water mark: VmHWM (ru_maxrss is inherited from the parent across fork)."""
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    """The probe: build the model from the JSON in argv[1], run one step, print the peak RSS as JSON."""
    import torch

    probe = json.loads(sys.argv[1])  # written by peak_rss_subprocess: an internal process, not a user CLI
    cfg = ModelConfig.from_dict(probe["config"])
    torch.manual_seed(0)
    work = make_workload(build_model(cfg), cfg, probe["batch"], probe["seconds"], "cpu", probe["dtype"])
    before = peak_rss_mib()
    work.step(probe["mode"])()
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), "rss_before_steps_mib": before}))


if __name__ == "__main__":
    main()
