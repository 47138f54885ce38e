"""`python -m bench.doctor`: the flags of the GPU check (the checks are in bench/doctor.py)."""

import argparse
import sys
from pathlib import Path

from bench.cli.shell import OneLineParser, version_text


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m bench.doctor", description="check every CUDA path of mbsbench on this "
                           "machine (a few minutes); without CUDA, --dry-run checks the rest",
                           epilog="examples:\n  python -m bench.doctor\n  python -m bench.doctor --dry-run --out "
                                  "dry.json", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument("--dry-run", action="store_true", help="no CUDA: the CPU-side checks on tiny shapes, and the "
                                                              "list of CUDA checks skipped")
    parser.add_argument("--out", default="doctor.json", help="the JSON report (default doctor.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the checks, print the table, write the JSON; exit 1 when a check failed, 2 on a usage error."""
    import torch

    from bench import doctor

    args = make_parser().parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here: python -m bench.doctor --dry-run checks what needs none", file=sys.stderr)
        return 2
    report = doctor.run(args.dry_run)
    doctor.write(report, Path(args.out))
    print(doctor.table(report))
    bad = doctor.failed(report)
    if bad:
        print(f"error: {len(bad)} checks failed (see {args.out})", file=sys.stderr)
    return 1 if bad else 0
