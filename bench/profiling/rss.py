"""Peak resident set of one step, measured in a fresh process (this module is also that process)."""

import argparse
import json
import resource
import subprocess
import sys

from bench.profiling.memory import MemoryExceededError
from bench.profiling.workload import ProfileSettings
from variants.config import ModelConfig


def peak_rss_subprocess(cfg: ModelConfig, settings: ProfileSettings, mode: str) -> float:
    """Peak resident set (MiB) of a fresh process that builds the model and runs one step."""
    command = [
        sys.executable, "-m", "bench.profiling.rss", "--config", json.dumps(cfg.to_dict()), "--mode", mode,
        "--batch", str(settings.batch), "--seconds", str(settings.seconds), "--dtype", settings.dtype,
    ]
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
    """The probe: build the model from a config, run one step, print the peak RSS as JSON."""
    import torch

    from bench.profiling.workload import make_workload
    from variants.registry import build_model

    parser = argparse.ArgumentParser(prog="python -m bench.profiling.rss")
    parser.add_argument("--config", required=True, help="ModelConfig fields as JSON")
    parser.add_argument("--mode", choices=("train", "infer"), required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    cfg = ModelConfig.from_dict(json.loads(args.config))
    torch.manual_seed(0)
    work = make_workload(build_model(cfg), cfg, args.batch, args.seconds, "cpu", args.dtype)
    before = peak_rss_mib()
    work.step(args.mode)()
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), "rss_before_steps_mib": before}))


if __name__ == "__main__":
    main()
