"""python -m bench: list, params, profile, scan, plan, latency, stream, export, data, evaluate, metrics, run, ablate."""

from bench.cli.latency import add_export_command, add_latency_command, add_stream_command
from bench.cli.measure import add_measure_commands
from bench.cli.models import add_model_commands
from bench.cli.plan import add_plan_command
from bench.cli.quality import add_quality_commands
from bench.cli.run import add_run_commands
from bench.cli.shell import exit_now, make_root, run_main


def make_parser():
    parser, sub = make_root("python -m bench", "mbsbench: measure MBS-Net variants",
                              "  python -m bench list\n  python -m bench profile --variant optimized\n"
                              "  python -m bench run --variant optimized\n  python -m bench COMMAND --help")
    add_model_commands(sub)
    add_measure_commands(sub)
    add_plan_command(sub)
    add_latency_command(sub)
    add_stream_command(sub)
    add_export_command(sub)
    add_quality_commands(sub)
    add_run_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(make_parser, argv)


if __name__ == "__main__":
    exit_now(main())
