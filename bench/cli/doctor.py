"""`python -m bench.doctor`: the flags of the GPU check (the checks are in bench/doctor/)."""

import argparse
import os
import sys
from pathlib import Path

from bench.cli.common import comma_list
from bench.cli.shell import OneLineParser, version_text

TARGETS = (80, 86, 89, 90)  # A100, RTX 30xx / A10, RTX 40xx / L4, H100 / H200


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m bench.doctor", description="check every CUDA path of mbsbench on this "
                           "machine (a few minutes); without CUDA, --dry-run checks the rest and --compile-only "
                           "compiles every Triton kernel for real GPU targets",
                           epilog="examples:\n  python -m bench.doctor\n  python -m bench.doctor --dry-run --out "
                                  "dry.json\n  python -m bench.doctor --compile-only --targets 80,86,89,90",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_text())
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="no CUDA: the CPU-side checks on tiny shapes, and the "
                                                            "list of CUDA checks skipped")
    mode.add_argument("--compile-only", action="store_true", help="no GPU needed: compile every Triton kernel at "
                      "every specialization the project launches with Triton's own compiler, one row per kernel "
                      "and target (registers, spills, shared memory, offset width); exit 0 only when all compile")
    parser.add_argument("--targets", type=comma_list(int, 70), default=TARGETS,
                        help="with --compile-only: compute capabilities x 10 to compile for (default "
                             f"{','.join(map(str, TARGETS))})")
    parser.add_argument("--out", default="doctor.json", help="the JSON report, written even when a check fails "
                                                             "(default doctor.json)")
    return parser


def compile_only(targets: tuple[int, ...], out: Path) -> int:
    """Compile every kernel for every target; print the table, write every specialization's row."""
    import json

    from bench.console import status
    from bench.doctor import kernels
    from bench.text import format_table

    rows: list[dict] = []
    try:
        rows = kernels.compile_all(targets, progress=lambda row: status(
            f"compiled {row['kernel']} for {row['target']} ({row['inputs']}, BLOCK_N {row['BLOCK_N']}, h0 "
            f"{row.get('HAS_H0', '-')}): {'ok' if row['ok'] else 'FAILED'}"))
    finally:
        out.write_text(json.dumps({"mode": "compile-only", "rows": rows}, indent=2, default=str))
    summary = kernels.summary(rows)
    columns = ["kernel", "target", "compiled", "registers", "spill_bytes", "spilling", "shared_bytes", "offsets",
               "seconds", "ok", "error"]
    print(f"Triton kernels compiled ahead of time (no GPU), {len(rows)} specializations\n")
    print(format_table(summary, columns, right=["compiled", "registers", "spill_bytes", "shared_bytes", "seconds"]))
    bad = [row for row in summary if not row["ok"]]
    if bad:
        print(f"error: {len(bad)} kernel x target rows failed (see {out})", file=sys.stderr)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    """Run the checks, print the table, write the JSON; exit 1 when a check failed, 2 on a usage error."""
    args = make_parser().parse_args(argv)
    if args.compile_only:
        if os.environ.pop("TRITON_INTERPRET", None) == "1" and "triton" in sys.modules:
            print("error: --compile-only needs a process where Triton's interpreter was never on: run it without "
                  "TRITON_INTERPRET=1", file=sys.stderr)
            return 2
        return compile_only(args.targets, Path(args.out))
    import torch

    from bench.doctor.checks import Report, failed, run_doctor, table, write

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here: python -m bench.doctor --dry-run checks what needs none, and "
              "--compile-only compiles the kernels for real GPUs", file=sys.stderr)
        return 2
    report = Report("starting")
    try:
        run_doctor(args.dry_run, report)
    finally:
        write(report, Path(args.out))
    print(table(report))
    bad = failed(report)
    if bad:
        print(f"error: {len(bad)} checks failed (see {args.out})", file=sys.stderr)
    return 1 if bad else 0
