"""Fresh-process probe: build a model from a config, run one step, print the peak RSS as JSON."""

import argparse
import json
import resource

import torch

from bench.profile import make_workload
from variants.config import ModelConfig
from variants.registry import build_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, help="ModelConfig fields as JSON")
    parser.add_argument("--mode", choices=("train", "infer"), required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    fields = json.loads(args.config)
    cfg = ModelConfig(**(fields | {"band_widths": tuple(fields["band_widths"])}))
    torch.manual_seed(0)
    work = make_workload(build_model(cfg), cfg, args.batch, args.seconds, "cpu", args.dtype)
    before = peak_rss_mib()
    work.train() if args.mode == "train" else work.infer()
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), "rss_before_steps_mib": before}))


def peak_rss_mib() -> float:
    """This process's resident high-water mark: VmHWM (ru_maxrss is inherited from the parent across fork)."""
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
